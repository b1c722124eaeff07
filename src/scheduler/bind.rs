//! Binding: the last step of a decision, run in the background so the loop can go on to
//! the next pod — POST a `Binding` to `pods/<name>/binding`, then the `Scheduled` event.
//! A failed binding is reported back to the loop, which forgets the assumed pod and
//! tries it again after its backoff.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, Semaphore};

use super::queue::{key, Key};
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
