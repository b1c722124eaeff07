//! The root CA publisher: every namespace has a `kube-root-ca.crt` ConfigMap holding the
//! cluster CA (`ca.crt`), so that pods can verify the API server; recreated when deleted and
//! put back when edited, as upstream's root-ca-cert-publisher does.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};

use super::ControllerError;

/// The ConfigMap every namespace gets.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// The key holding the CA certificate (PEM).
const KEY: &str = "ca.crt";
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's wording, so that `kubectl describe` reads the same.
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
    when using internal endpoints such as the internal service IP or kubernetes.default.svc. \
    No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Context {
    client: Client,
    ca_pem: String,
}

pub async fn run(client: Client, ca_pem: String) {
    let context = Context {
        client: client.clone(),
        ca_pem,
    };
    super::run_per_namespace::<ConfigMap, _, _, _>(
        "root-ca-cert-publisher",
        &client,
        CONFIG_MAP,
        reconcile,
        context,
    )
    .await;
}

async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let Some(name) = super::to_fill(&namespace) else {
        return Ok(Action::await_change());
    };
    let maps: Api<ConfigMap> = Api::namespaced(context.client.clone(), &name);
    let failed = || format!("publishing the {CONFIG_MAP} ConfigMap in namespace {name}");
    let data = BTreeMap::from([(KEY.to_string(), context.ca_pem.clone())]);
    let current = maps
        .get_opt(CONFIG_MAP)
        .await
        .map_err(ControllerError::new(failed()))?;
    let result = match current {
        None => {
            let map = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.to_string()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            maps.create(&PostParams::default(), &map).await
        }
        Some(map)
            if map.data.as_ref() == Some(&data)
                && map
                    .annotations()
                    .get(DESCRIPTION_ANNOTATION)
                    .is_some_and(|d| !d.is_empty()) =>
        {
            return Ok(Action::await_change());
        }
        Some(mut map) => {
            map.data = Some(data);
            map.annotations_mut()
                .insert(DESCRIPTION_ANNOTATION.to_string(), DESCRIPTION.to_string());
            maps.replace(CONFIG_MAP, &PostParams::default(), &map).await
        }
    };
    match result {
        Ok(_) => tracing::info!(namespace = %name, "published the cluster CA"),
        // Changed meanwhile (the watch brings it back here), or the namespace went.
        Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
        Err(e) => return Err(ControllerError::new(failed())(e)),
    }
    Ok(Action::await_change())
}
