//! Pods of workload controllers (Job, and any controller that stamps pods out of a
//! template): a pod from a template with a controller ownerReference, created and deleted
//! with upstream's `SuccessfulCreate` / `SuccessfulDelete` (or `FailedCreate` /
//! `FailedDelete`) events on the owner, and the pod predicates those controllers share.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use super::events::Recorder;

/// The ownerReference that makes `owner` the controller of what it creates.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `pod` is controlled by the object with `uid`.
pub fn controlled_by(pod: &Pod, uid: &str) -> bool {
    pod.owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A pod to create from `template` (labels, annotations, finalizers and spec), named
/// `generate_name` + a random suffix by the API.
pub fn from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    generate_name: String,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Creates `pod` in the owner's namespace and records the event upstream's PodControl does.
pub async fn create<K>(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: &K,
    pod: &Pod,
) -> Result<Pod, kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    match api.create(&PostParams::default(), pod).await {
        Ok(created) => {
            let message = format!("Created pod: {}", created.name_any());
            recorder.normal(owner, "SuccessfulCreate", &message).await;
            Ok(created)
        }
        Err(error) => {
            let message = format!("Error creating: {}", api_message(&error));
            recorder.warning(owner, "FailedCreate", &message).await;
            Err(error)
        }
    }
}

/// Deletes `pod` (gracefully; finalizers stay) and records the event. A pod already gone
/// is not an error.
pub async fn delete<K>(
    api: &Api<Pod>,
    recorder: &Recorder,
    owner: &K,
    pod: &Pod,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()>,
{
    let name = pod.name_any();
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {
            let message = format!("Deleted pod: {name}");
            recorder.normal(owner, "SuccessfulDelete", &message).await;
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => {
            let message = format!("Error deleting: {}", api_message(&error));
            recorder.warning(owner, "FailedDelete", &message).await;
            Err(error)
        }
    }
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The pod's phase, "" when unknown.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Neither finished nor being deleted (upstream's `FilterActivePods`).
pub fn is_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_none()
}

/// Being deleted but not finished (upstream's `CountTerminatingPods`).
pub fn is_terminating(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod's `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
