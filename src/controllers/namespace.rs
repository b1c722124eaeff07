//! The namespace controller: a namespace marked for deletion (Terminating) is emptied —
//! every namespaced resource the API serves, custom resources included, found through
//! discovery — then finalized (its `kubernetes` finalizer removed through
//! `namespaces/<name>/finalize`), after which the API removes it. On the way it records the
//! conditions upstream's controller records (NamespaceContentRemaining,
//! NamespaceFinalizersRemaining, ...), so `kubectl describe namespace` says what it waits on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};

use super::ControllerError;

/// The finalizer this controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
/// How soon a namespace whose content still waits (on finalizers, or pods stopping) is
/// looked at again.
const RECHECK: Duration = Duration::from_secs(1);

struct Context {
    client: Client,
}

pub async fn run(client: Client) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let results = Controller::new(namespaces, watcher::Config::default()).run(
        reconcile,
        super::retry_later,
        Arc::new(Context { client }),
    );
    super::drive("namespace", results).await;
}

/// What one pass over a namespace's content found.
#[derive(Default)]
struct Emptying {
    discovery_failure: Option<String>,
    /// Resource types whose deletion failed, with why.
    delete_failures: Vec<String>,
    /// Objects left, per resource (`plural.group`).
    remaining: BTreeMap<String, usize>,
    /// Objects left, per finalizer they wait on.
    finalizers: BTreeMap<String, usize>,
}

impl Emptying {
    fn done(&self) -> bool {
        self.discovery_failure.is_none()
            && self.delete_failures.is_empty()
            && self.remaining.is_empty()
    }

    /// The five conditions upstream's controller keeps, in its order: (type, failing, reason,
    /// message).
    fn conditions(&self) -> Vec<(&'static str, bool, &'static str, String)> {
        let counted = |counts: &BTreeMap<String, usize>, verb: &str| {
            counts
                .iter()
                .map(|(what, n)| format!("{what} {verb} {n} resource instances"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = vec![match &self.discovery_failure {
            Some(why) => (
                "NamespaceDeletionDiscoveryFailure",
                true,
                "DiscoveryFailed",
                format!("Discovery failed for some groups, 1 failing: {why}"),
            ),
            None => (
                "NamespaceDeletionDiscoveryFailure",
                false,
                "ResourcesDiscovered",
                "All resources successfully discovered".to_string(),
            ),
        }];
        out.push((
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".to_string(),
        ));
        out.push(if self.delete_failures.is_empty() {
            (
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".to_string(),
            )
        } else {
            (
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    self.delete_failures.len(),
                    self.delete_failures.join(", ")
                ),
            )
        });
        out.push(if self.remaining.is_empty() {
            (
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".to_string(),
            )
        } else {
            (
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!(
                    "Some resources are remaining: {}",
                    counted(&self.remaining, "has")
                ),
            )
        });
        out.push(if self.finalizers.is_empty() {
            (
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".to_string(),
            )
        } else {
            (
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    counted(&self.finalizers, "in")
                ),
            )
        });
        out
    }
}

fn waits_for_us(namespace: &Namespace) -> bool {
    super::terminating(namespace)
        && namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    if !waits_for_us(&namespace) {
        return Ok(Action::await_change());
    }
    let name = namespace.name_any();
    let emptying = empty(&context.client, &name).await;
    record(&context.client, &namespace, &emptying).await?;
    if !emptying.done() {
        return Ok(Action::requeue(RECHECK));
    }
    let mut finalized = (*namespace).clone();
    if let Some(finalizers) = finalized.spec.as_mut().and_then(|s| s.finalizers.as_mut()) {
        finalizers.retain(|f| f != FINALIZER);
    }
    let namespaces = Api::<Namespace>::all(context.client.clone());
    match namespaces
        .replace_subresource("finalize", &name, &PostParams::default(), &finalized)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "emptied and finalized the namespace"),
        // Gone already, or changed meanwhile (the watch brings it back).
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => return Err(ControllerError::new(format!("finalizing namespace {name}"))(e)),
    }
    Ok(Action::await_change())
}

/// Deletes what is in `namespace` and counts what is left.
async fn empty(client: &Client, namespace: &str) -> Emptying {
    let mut emptying = Emptying::default();
    let discovery = match Discovery::new(client.clone()).run().await {
        Ok(discovery) => discovery,
        Err(e) => {
            emptying.discovery_failure = Some(e.to_string());
            return emptying;
        }
    };
    for group in discovery.groups() {
        for (resource, capabilities) in group.recommended_resources() {
            if capabilities.scope != Scope::Namespaced
                || !capabilities.supports_operation(verbs::LIST)
                || !capabilities.supports_operation(verbs::DELETE)
            {
                continue;
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            if let Err(e) = delete_all(
                &api,
                capabilities.supports_operation(verbs::DELETE_COLLECTION),
            )
            .await
            {
                emptying
                    .delete_failures
                    .push(format!("{}: {e}", display(&resource)));
                continue;
            }
            match api.list(&ListParams::default()).await {
                Ok(left) if left.items.is_empty() => {}
                Ok(left) => {
                    emptying
                        .remaining
                        .insert(display(&resource), left.items.len());
                    for object in &left.items {
                        for finalizer in object.finalizers() {
                            *emptying.finalizers.entry(finalizer.clone()).or_default() += 1;
                        }
                    }
                }
                Err(e) => emptying
                    .delete_failures
                    .push(format!("{}: {e}", display(&resource))),
            }
        }
    }
    emptying
}

/// Deletes every object `api` lists: one deletecollection where served, else one by one.
async fn delete_all(api: &Api<DynamicObject>, collection: bool) -> Result<(), kube::Error> {
    if collection {
        return api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .map(|_| ());
    }
    for object in api.list(&ListParams::default()).await?.items {
        match api
            .delete(&object.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `plural.group` (the plural alone for the core group), as upstream names resources.
fn display(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

/// Writes the conditions into the namespace's status if they changed; an unchanged
/// condition keeps its lastTransitionTime.
async fn record(
    client: &Client,
    namespace: &Namespace,
    emptying: &Emptying,
) -> Result<(), ControllerError> {
    let current = namespace
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions: Vec<NamespaceCondition> = emptying
        .conditions()
        .into_iter()
        .map(|(type_, failing, reason, message)| {
            let status = if failing { "True" } else { "False" };
            let same = current.iter().find(|c| {
                c.type_ == type_
                    && c.status == status
                    && c.reason.as_deref() == Some(reason)
                    && c.message.as_deref() == Some(message.as_str())
            });
            same.cloned().unwrap_or_else(|| NamespaceCondition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: Some(reason.to_string()),
                message: Some(message),
                last_transition_time: Some(now.clone()),
            })
        })
        .collect();
    if conditions == current {
        return Ok(());
    }
    let mut updated = namespace.clone();
    updated
        .status
        .get_or_insert_with(Default::default)
        .conditions = Some(conditions);
    let name = namespace.name_any();
    match Api::<Namespace>::all(client.clone())
        .replace_status(&name, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => Ok(()),
        // Changed meanwhile or gone: the next pass records it.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(ControllerError::new(format!(
            "recording the deletion conditions of namespace {name}"
        ))(e)),
    }
}
