//! Storage object in-use protection (upstream's pvc-protection and pv-protection
//! controllers): claims carry the `kubernetes.io/pvc-protection` finalizer and volumes
//! `kubernetes.io/pv-protection` (the API adds them at creation; these loops add them to
//! objects that lack them), and a deleted claim stays until no scheduled, unfinished pod
//! uses it, a deleted volume until it is no longer Bound.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::ControllerError;

pub const PVC_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_FINALIZER: &str = "kubernetes.io/pv-protection";

struct Context {
    client: Client,
}

pub async fn run(client: Client) {
    let context = Arc::new(Context {
        client: client.clone(),
    });
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        |pod: Pod| {
            let namespace = pod.namespace().unwrap_or_default();
            claims_of(&pod)
                .map(|name| ObjectRef::new(&name).within(&namespace))
                .collect::<Vec<_>>()
        },
    )
    .run(protect_claim, super::retry_later, context.clone());
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(protect_volume, super::retry_later, context);
    tokio::join!(
        super::drive("pvc-protection", claims),
        super::drive("pv-protection", volumes),
    );
}

/// The claims a pod's volumes name (ephemeral volumes' claims are `<pod>-<volume>`).
fn claims_of(pod: &Pod) -> impl Iterator<Item = String> + '_ {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                return Some(claim.claim_name.clone());
            }
            v.ephemeral
                .as_ref()
                .map(|_| format!("{}-{}", pod.name_any(), v.name))
        })
}

/// Whether a pod holds its claims: it is scheduled (the kubelet may be using them) and has
/// not finished.
fn holds(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

async fn protect_claim(
    claim: Arc<PersistentVolumeClaim>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let namespace = claim.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    if claim.metadata.deletion_timestamp.is_none() {
        return ensure_finalizer(&api, claim.as_ref(), PVC_FINALIZER).await;
    }
    if !claim.finalizers().iter().any(|f| f == PVC_FINALIZER) {
        return Ok(Action::await_change());
    }
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let name = claim.name_any();
    let in_use = pods
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::new(format!(
            "listing the pods of namespace {namespace}"
        )))?
        .items
        .iter()
        .any(|pod| holds(pod) && claims_of(pod).any(|c| c == name));
    if in_use {
        return Ok(Action::await_change());
    }
    remove_finalizer(&api, claim.as_ref(), PVC_FINALIZER).await
}

async fn protect_volume(
    volume: Arc<PersistentVolume>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let api: Api<PersistentVolume> = Api::all(context.client.clone());
    if volume.metadata.deletion_timestamp.is_none() {
        return ensure_finalizer(&api, volume.as_ref(), PV_FINALIZER).await;
    }
    let bound = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    if bound || !volume.finalizers().iter().any(|f| f == PV_FINALIZER) {
        return Ok(Action::await_change());
    }
    remove_finalizer(&api, volume.as_ref(), PV_FINALIZER).await
}

async fn ensure_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<Action, ControllerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if object.finalizers().iter().any(|f| f == finalizer) {
        return Ok(Action::await_change());
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(finalizer.to_string());
    write_finalizers(api, object, finalizers).await
}

async fn remove_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<Action, ControllerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let finalizers = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    write_finalizers(api, object, finalizers).await
}

/// Replaces the finalizers, only over the version read (a conflict looks again).
async fn write_finalizers<K>(
    api: &Api<K>,
    object: &K,
    finalizers: Vec<String>,
) -> Result<Action, ControllerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"resourceVersion": object.resource_version(), "finalizers": finalizers}});
    let what = format!(
        "updating the finalizers of {} {}",
        K::kind(&()),
        object.name_any()
    );
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            Ok(Action::requeue(std::time::Duration::from_millis(200)))
        }
        Err(e) => Err(ControllerError::new(what)(e)),
    }
}
