//! Gives back ClusterIPs and NodePorts that no Service holds any more: at once for the
//! Services a watch sees deleted or changed, and by a periodic sweep for anything missed
//! (a crash between allocating and writing, history compacted under the watch).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;

use super::ip::{self, IP_ADDRESS_PREFIX};
use super::node_port::{self, NODE_PORT_PREFIX};
use super::strategy::{cluster_ips, node_ports};
use super::{Allocator, ServiceRef};
use crate::api::object;
use crate::store::{Consistency, ListOptions, Store, StoreError};

const SERVICES_PREFIX: &str = "/registry/core/services/";
/// How often everything is checked.
const SWEEP_EVERY: Duration = Duration::from_secs(300);
/// An allocation younger than this may belong to a Service whose write is in flight.
const GRACE_SECONDS: i64 = 60;

/// Runs until the task is dropped.
pub async fn run(store: Store, allocator: Allocator) {
    loop {
        if let Err(e) = sweep(&store, &allocator).await {
            tracing::warn!(error = %e, "sweeping service allocations failed");
        }
        let mut watcher = match store.watch(SERVICES_PREFIX, store.revision()) {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::warn!(error = %e, "watching services failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let next_sweep = tokio::time::sleep(SWEEP_EVERY);
        tokio::pin!(next_sweep);
        loop {
            tokio::select! {
                event = watcher.next() => match event {
                    Some(Ok(event)) => {
                        let Some(prev) = event.prev.as_ref().and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok()) else {
                            continue;
                        };
                        // What the Service holds now, not as of this event: a Service deleted
                        // and created again under the same name keeps what it holds anew.
                        let now = match store.get(&event.kv.key, Consistency::Linearizable).await {
                            Ok(Some(kv)) => serde_json::from_slice(&kv.value).unwrap_or_default(),
                            Ok(None) => Value::Null,
                            Err(_) => continue,
                        };
                        if let Err(e) = allocator.release_dropped(&prev, &now).await {
                            tracing::warn!(error = %e, "releasing service allocations failed");
                        }
                    }
                    Some(Err(_)) | None => break,
                },
                _ = &mut next_sweep => break,
            }
        }
    }
}

/// What every stored Service holds.
async fn holdings(
    store: &Store,
) -> Result<HashMap<(String, String), (Vec<Ipv4Addr>, Vec<u16>)>, StoreError> {
    let page = store
        .list(
            SERVICES_PREFIX,
            ListOptions::default(),
            Consistency::Linearizable,
        )
        .await?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .map(|service| {
            let owner = ServiceRef::of(&service);
            (
                (owner.namespace, owner.name),
                (cluster_ips(&service), node_ports(&service)),
            )
        })
        .collect())
}

fn old_enough(timestamp: Option<&str>) -> bool {
    timestamp
        .and_then(object::age_seconds)
        .is_none_or(|age| age >= GRACE_SECONDS)
}

/// Deletes allocations whose Service is gone or holds something else.
async fn sweep(store: &Store, allocator: &Allocator) -> Result<(), StoreError> {
    let services = holdings(store).await?;
    let holds = |owner: &ServiceRef| services.get(&(owner.namespace.clone(), owner.name.clone()));
    let addresses = store
        .list(
            IP_ADDRESS_PREFIX,
            ListOptions::default(),
            Consistency::Linearizable,
        )
        .await?;
    for kv in &addresses.items {
        let Ok(address) = serde_json::from_slice::<Value>(&kv.value) else {
            continue;
        };
        let Some(owner) = ip::holder(&address) else {
            continue;
        };
        let Ok(ip) = object::name(&address).parse::<Ipv4Addr>() else {
            continue;
        };
        let held = holds(&owner).is_some_and(|(ips, _)| ips.contains(&ip));
        if !held && old_enough(object::meta_str(&address, "creationTimestamp")) {
            tracing::info!(%ip, service = %format!("{}/{}", owner.namespace, owner.name), "releasing an orphaned ClusterIP");
            allocator.release_ip(ip, &owner).await?;
        }
    }
    let ports = store
        .list(
            NODE_PORT_PREFIX,
            ListOptions::default(),
            Consistency::Linearizable,
        )
        .await?;
    for kv in &ports.items {
        let Some((owner, allocated)) = node_port::holder(&kv.value) else {
            continue;
        };
        let Some(port) = kv
            .key
            .strip_prefix(NODE_PORT_PREFIX)
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let held = holds(&owner).is_some_and(|(_, ports)| ports.contains(&port));
        if !held && old_enough(Some(&allocated)) {
            tracing::info!(port, service = %format!("{}/{}", owner.namespace, owner.name), "releasing an orphaned NodePort");
            allocator.release_node_port(port, &owner).await?;
        }
    }
    Ok(())
}
