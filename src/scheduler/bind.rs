//! Binding: the last step of a decision, run in the background so the loop can go on to
//! the next pod — POST a `Binding` to `pods/<name>/binding`, then the `Scheduled` event.
//! A failed binding is reported back to the loop, which forgets the assumed pod and
//! tries it again after its backoff. Claims provisioned where the pod goes are first
//! annotated with the node ([`select_node`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, PersistentVolumeClaim, Pod};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, Semaphore};

use super::queue::{key, Key};
use super::volumes::SELECTED_NODE;
use crate::controllers::events::Recorder;

/// A binding the API refused.
#[derive(Debug)]
pub struct BindFailed {
    pub key: Key,
}

/// Binds `pod` to `node`, holding one of `permits` meanwhile.
pub async fn bind(
    client: Client,
    recorder: Arc<Recorder>,
    permits: Arc<Semaphore>,
    pod: Pod,
    node: String,
    failed: mpsc::UnboundedSender<BindFailed>,
) {
    let Ok(_permit) = permits.acquire_owned().await else {
        return;
    };
    let (namespace, name) = key(&pod);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("Node".to_string()),
            name: Some(node.clone()),
            ..ObjectReference::default()
        },
    };
    let result = Api::<Pod>::namespaced(client, &namespace)
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &name,
            &PostParams::default(),
            &binding,
        )
        .await;
    match result {
        Ok(_) => {
            let message = format!("Successfully assigned {namespace}/{name} to {node}");
            recorder.normal(&pod, "Scheduled", &message).await;
        }
        Err(error) => {
            let why = match &error {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            tracing::info!(pod = %format!("{namespace}/{name}"), %node, error = %why, "binding failed");
            let message = format!("running Bind plugin \"DefaultBinder\": {why}");
            recorder.warning(&pod, "FailedScheduling", &message).await;
            let _ = failed.send(BindFailed {
                key: (namespace, name),
            });
        }
    }
}

/// Upstream's PreBind for claims provisioned where the pod goes: annotates each of
/// `claims` with the chosen `node` for the provisioner. A refusal sends the pod back.
pub async fn select_node(
    client: Client,
    pod: Key,
    claims: Vec<Key>,
    node: String,
    failed: mpsc::UnboundedSender<BindFailed>,
) {
    for (namespace, name) in claims {
        let patch = serde_json::json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
        let result = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        if let Err(error) = result {
            tracing::info!(claim = %format!("{namespace}/{name}"), %node, %error, "selecting a node for a claim failed");
            let _ = failed.send(BindFailed { key: pod });
            return;
        }
    }
}
