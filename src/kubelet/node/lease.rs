//! The node's heartbeat Lease `kube-node-lease/<node>`, as upstream's kubelet keeps it:
//! holder = the node, 40 s duration, renewed every 10 s, owned by the Node (so it goes
//! when the Node is deleted).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::kubelet::KubeletError;

/// The namespace node Leases live in.
pub const NAMESPACE: &str = "kube-node-lease";
/// Upstream's `nodeLeaseDurationSeconds`.
pub const DURATION_SECONDS: i32 = 40;

fn owner(node: &str, uid: &str) -> Option<Vec<OwnerReference>> {
    (!uid.is_empty()).then(|| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_string(),
            uid: uid.to_string(),
            ..OwnerReference::default()
        }]
    })
}

/// Creates or renews the Lease of `node` (whose Node has `uid`).
pub async fn renew(client: &Client, node: &str, uid: &str) -> Result<(), KubeletError> {
    let api = Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(DURATION_SECONDS),
        renew_time: Some(now),
        ..LeaseSpec::default()
    };
    let action = || format!("renewing Lease {NAMESPACE}/{node}");
    match api
        .get_opt(node)
        .await
        .map_err(KubeletError::api(action()))?
    {
        Some(mut lease) => {
            if owner(node, uid).is_some() {
                lease.metadata.owner_references = owner(node, uid);
            }
            let acquire_time = lease.spec.as_ref().and_then(|s| s.acquire_time.clone());
            lease.spec = Some(LeaseSpec {
                acquire_time,
                ..spec
            });
            api.replace(node, &PostParams::default(), &lease)
                .await
                .map_err(KubeletError::api(action()))?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    owner_references: owner(node, uid),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease)
                .await
                .map_err(KubeletError::api(action()))?;
        }
    }
    Ok(())
}
