//! What the collector does for one object, as upstream's attemptToDeleteItem and
//! attemptToOrphanWorker: always on the live object, never on the graph's word alone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::{Api, Client};
use serde_json::json;

use super::graph::{Identity, Node};
use super::{Collector, Kind};
use crate::api::object::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
use crate::controllers::events::EventType;
use crate::controllers::ControllerError;

/// Why an attempt failed; it is made again later.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Api(#[from] ControllerError),
    /// An owner reference names a kind the API does not serve (yet): not proof the owner
    /// is gone.
    #[error("owner {owner} of {dependent} is of a kind the API does not serve")]
    UnknownKind { owner: String, dependent: String },
    /// A cluster-scoped object names a namespaced owner: invalid, and no retry mends it;
    /// the object is left alone, as upstream.
    #[error("{dependent} is cluster-scoped but names the namespaced owner {owner}")]
    NamespacedOwner { owner: String, dependent: String },
}

/// How soon a failed attempt is made again.
const RETRY: Duration = Duration::from_secs(2);

pub(super) async fn run(collector: Arc<Collector>) {
    while collector.unsynced.load(Ordering::SeqCst) > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let uid = collector.queue.next().await;
        let node = collector.graph.lock().expect("graph").get(&uid).cloned();
        let Some(node) = node else { continue };
        match attempt(&collector, &node).await {
            Ok(()) => {}
            Err(error @ Failure::NamespacedOwner { .. }) => {
                tracing::info!(%error, "garbage collector: leaving the object alone");
            }
            Err(error) => {
                tracing::warn!(%error, "garbage collector; retrying");
                collector.retry(uid, RETRY);
            }
        }
    }
}

async fn attempt(collector: &Collector, node: &Node) -> Result<(), Failure> {
    if node.orphaning() {
        return Ok(orphan_dependents(collector, node).await?);
    }
    if node.deleting_dependents() {
        return Ok(delete_dependents(collector, node).await?);
    }
    if node.deleting {
        return Ok(());
    }
    delete_if_unowned(collector, node).await
}

fn api(client: &Client, id: &Identity) -> Api<DynamicObject> {
    match &id.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &id.resource),
        None => Api::all_with(client.clone(), &id.resource),
    }
}

fn describe(id: &Identity) -> String {
    match &id.namespace {
        Some(ns) => format!("{} {ns}/{}", id.resource.kind, id.name),
        None => format!("{} {}", id.resource.kind, id.name),
    }
}

/// The object as it is now; `None` when it is gone (or replaced by another of the same name).
async fn live(client: &Client, id: &Identity) -> Result<Option<DynamicObject>, ControllerError> {
    match api(client, id).get_opt(&id.name).await {
        Ok(found) => Ok(found.filter(|o| o.metadata.uid.as_deref() == Some(&id.uid))),
        Err(e) => Err(ControllerError::new(format!("reading {}", describe(id)))(e)),
    }
}

/// 404 and 409 mean someone else changed or removed the object: the watch brings the news.
fn settled<T>(result: Result<T, kube::Error>, action: String) -> Result<(), ControllerError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(ControllerError::new(action)(e)),
    }
}

/// What an owner reference points at now.
enum Owner {
    /// Exists and is not waiting for its dependents.
    Solid,
    /// Gone, replaced, or unreachable from the dependent's namespace.
    Dangling,
    /// Being deleted in the foreground.
    Waiting,
}

async fn classify(
    collector: &Collector,
    dependent: &Identity,
    reference: &OwnerReference,
) -> Result<Owner, Failure> {
    let group = reference
        .api_version
        .split_once('/')
        .map_or("", |(group, _)| group);
    let kind = collector
        .kinds
        .lock()
        .expect("kinds")
        .get(&(group.to_string(), reference.kind.clone()))
        .cloned();
    let Some(Kind {
        resource,
        namespaced,
    }) = kind
    else {
        return Err(Failure::UnknownKind {
            owner: format!(
                "{}/{} {}",
                reference.api_version, reference.kind, reference.name
            ),
            dependent: describe(dependent),
        });
    };
    let namespace = if namespaced {
        match &dependent.namespace {
            Some(ns) => Some(ns.clone()),
            // A cluster-scoped object cannot be owned by a namespaced one.
            None => {
                invalid_namespace(collector, dependent, reference, None).await;
                return Err(Failure::NamespacedOwner {
                    owner: format!(
                        "{}/{} {}",
                        reference.api_version, reference.kind, reference.name
                    ),
                    dependent: describe(dependent),
                });
            }
        }
    } else {
        None
    };
    let owner = Identity {
        resource,
        namespace,
        name: reference.name.clone(),
        uid: reference.uid.clone(),
    };
    let Some(object) = live(&collector.client, &owner).await? else {
        let elsewhere = collector
            .graph
            .lock()
            .expect("graph")
            .elsewhere(&reference.uid, dependent.namespace.as_deref())
            .is_some();
        if elsewhere && namespaced {
            invalid_namespace(collector, dependent, reference, dependent.namespace.clone()).await;
        }
        return Ok(Owner::Dangling);
    };
    let finalizers = object.metadata.finalizers.unwrap_or_default();
    if object.metadata.deletion_timestamp.is_some()
        && finalizers.iter().any(|f| f == FOREGROUND_FINALIZER)
    {
        return Ok(Owner::Waiting);
    }
    Ok(Owner::Solid)
}

/// Upstream's OwnerRefInvalidNamespace warning on the dependent.
async fn invalid_namespace(
    collector: &Collector,
    dependent: &Identity,
    reference: &OwnerReference,
    namespace: Option<String>,
) {
    let namespace = namespace.unwrap_or_default();
    let message = format!(
        "ownerRef [{}/{}, namespace: {namespace}, name: {}, uid: {}] does not exist in namespace {namespace:?}",
        reference.api_version, reference.kind, reference.name, reference.uid
    );
    let regarding = ObjectReference {
        api_version: Some(dependent.resource.api_version.clone()),
        kind: Some(dependent.resource.kind.clone()),
        name: Some(dependent.name.clone()),
        namespace: dependent.namespace.clone(),
        uid: Some(dependent.uid.clone()),
        ..ObjectReference::default()
    };
    collector
        .recorder
        .publish(
            regarding,
            EventType::Warning,
            "OwnerRefInvalidNamespace",
            &message,
        )
        .await;
}

/// A dependent none of whose owners is left is deleted; references to gone owners are
/// dropped from one that still has an owner.
async fn delete_if_unowned(collector: &Collector, node: &Node) -> Result<(), Failure> {
    let id = &node.identity;
    let Some(latest) = live(&collector.client, id).await? else {
        return Ok(());
    };
    let references = latest.metadata.owner_references.clone().unwrap_or_default();
    if references.is_empty() {
        return Ok(());
    }
    let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
    for reference in &references {
        match classify(collector, id, reference).await? {
            Owner::Solid => solid.push(reference.uid.clone()),
            Owner::Dangling => dangling.push(reference.uid.clone()),
            Owner::Waiting => waiting.push(reference.uid.clone()),
        }
    }
    if !solid.is_empty() {
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(());
        }
        let kept: Vec<&OwnerReference> = references
            .iter()
            .filter(|r| solid.contains(&r.uid))
            .collect();
        return Ok(patch_metadata(
            &collector.client,
            &latest,
            id,
            json!({"ownerReferences": kept}),
        )
        .await?);
    }
    let has_dependents = !collector
        .graph
        .lock()
        .expect("graph")
        .dependents(&id.uid)
        .is_empty();
    let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
    let policy = if !waiting.is_empty() && has_dependents {
        // An owner waits on us, and we on ours: delete them first, in the foreground too.
        PropagationPolicy::Foreground
    } else if finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
        PropagationPolicy::Orphan
    } else if finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    tracing::info!(object = %describe(id), ?policy, "garbage collector: deleting an object whose owners are gone");
    let params = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(id.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let result = api(&collector.client, id).delete(&id.name, &params).await;
    Ok(settled_or_conflict(
        result,
        format!("deleting {}", describe(id)),
    )?)
}

fn settled_or_conflict<T>(
    result: Result<T, kube::Error>,
    action: String,
) -> Result<(), ControllerError> {
    match result {
        // A failed uid precondition: another object by that name now.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        other => settled(other, action),
    }
}

/// An owner deleted in the foreground: its finalizer goes once no dependent blocks it;
/// until then its blocking dependents are deleted (the others were woken with it).
async fn delete_dependents(collector: &Collector, owner: &Node) -> Result<(), ControllerError> {
    let dependents = collector
        .graph
        .lock()
        .expect("graph")
        .dependents(&owner.identity.uid);
    let blocking: Vec<&Node> = dependents
        .iter()
        .filter(|d| {
            d.owners
                .iter()
                .any(|r| r.uid == owner.identity.uid && r.block_owner_deletion == Some(true))
        })
        .collect();
    if blocking.is_empty() {
        return remove_finalizer(collector, owner, FOREGROUND_FINALIZER).await;
    }
    for dependent in blocking {
        if !dependent.deleting_dependents() {
            collector.queue.add(dependent.identity.uid.clone());
        }
    }
    Ok(())
}

/// An owner deleted with `orphan`: its dependents lose their reference to it, then it loses
/// its finalizer.
async fn orphan_dependents(collector: &Collector, owner: &Node) -> Result<(), ControllerError> {
    let dependents = collector
        .graph
        .lock()
        .expect("graph")
        .dependents(&owner.identity.uid);
    for dependent in dependents {
        let id = &dependent.identity;
        let Some(latest) = live(&collector.client, id).await? else {
            continue;
        };
        let references = latest.metadata.owner_references.clone().unwrap_or_default();
        if !references.iter().any(|r| r.uid == owner.identity.uid) {
            continue;
        }
        let kept: Vec<&OwnerReference> = references
            .iter()
            .filter(|r| r.uid != owner.identity.uid)
            .collect();
        patch_metadata(
            &collector.client,
            &latest,
            id,
            json!({"ownerReferences": kept}),
        )
        .await?;
    }
    remove_finalizer(collector, owner, ORPHAN_FINALIZER).await
}

async fn remove_finalizer(
    collector: &Collector,
    node: &Node,
    finalizer: &str,
) -> Result<(), ControllerError> {
    let id = &node.identity;
    let Some(latest) = live(&collector.client, id).await? else {
        return Ok(());
    };
    let finalizers = latest.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
    patch_metadata(&collector.client, &latest, id, json!({"finalizers": kept})).await
}

/// Merges `metadata` into the object, on the condition that it did not change since read
/// (a conflict is an error: the attempt is made again on fresh data).
async fn patch_metadata(
    client: &Client,
    latest: &DynamicObject,
    id: &Identity,
    mut metadata: serde_json::Value,
) -> Result<(), ControllerError> {
    // An emptied list is removed, as upstream's (omitempty) encoding leaves no `[]` behind.
    if let Some(fields) = metadata.as_object_mut() {
        for value in fields.values_mut() {
            if value.as_array().is_some_and(Vec::is_empty) {
                *value = serde_json::Value::Null;
            }
        }
    }
    metadata["resourceVersion"] = json!(latest.metadata.resource_version);
    let patch = Patch::Merge(json!({ "metadata": metadata }));
    let result = api(client, id)
        .patch(&id.name, &PatchParams::default(), &patch)
        .await;
    settled(result, format!("updating the metadata of {}", describe(id)))
}
