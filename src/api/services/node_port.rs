//! NodePort allocation: one kedge-private store key per allocated port, holding the
//! Service that owns it, created only if absent.

use rand::Rng;
use serde_json::{json, Value};

use super::{AllocationError, Allocator, ServiceRef};
use crate::api::object;
use crate::store::{Consistency, ListOptions, StoreError};

pub(super) const NODE_PORT_PREFIX: &str = "/registry/kedge.io/nodeports/";
/// Random picks before falling back to a scan of what is taken.
const RANDOM_ATTEMPTS: usize = 16;

pub(super) fn port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port:05}")
}

/// The owner recorded under a port key, and when it was taken.
pub(super) fn holder(value: &[u8]) -> Option<(ServiceRef, String)> {
    let record: Value = serde_json::from_slice(value).ok()?;
    Some((
        ServiceRef {
            namespace: record.get("namespace")?.as_str()?.to_string(),
            name: record.get("name")?.as_str()?.to_string(),
        },
        record.get("allocated")?.as_str()?.to_string(),
    ))
}

impl Allocator {
    /// Allocates `requested`, or any free port, to `owner`.
    pub async fn allocate_node_port(
        &self,
        requested: Option<u16>,
        owner: &ServiceRef,
    ) -> Result<u16, AllocationError> {
        let range = self.network.node_ports.clone();
        if let Some(port) = requested {
            if !range.contains(&port) {
                return Err(AllocationError::OutOfRange { what: "port" });
            }
            return match self.claim_port(port, owner).await? {
                true => Ok(port),
                false => Err(AllocationError::Taken { what: "port" }),
            };
        }
        for _ in 0..RANDOM_ATTEMPTS {
            let port = rand::rng().random_range(range.clone());
            if self.claim_port(port, owner).await? {
                return Ok(port);
            }
        }
        let page = self
            .store
            .list(
                NODE_PORT_PREFIX,
                ListOptions::default(),
                Consistency::Linearizable,
            )
            .await?;
        let taken: std::collections::HashSet<u16> = page
            .items
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(NODE_PORT_PREFIX)?.parse().ok())
            .collect();
        for port in range {
            if !taken.contains(&port) && self.claim_port(port, owner).await? {
                return Ok(port);
            }
        }
        Err(AllocationError::Full)
    }

    /// Gives `port` back if `owner` holds it.
    pub async fn release_node_port(&self, port: u16, owner: &ServiceRef) -> Result<(), StoreError> {
        let key = port_key(port);
        let Some(kv) = self.store.get(&key, Consistency::Linearizable).await? else {
            return Ok(());
        };
        if holder(&kv.value).map(|(service, _)| service).as_ref() != Some(owner) {
            return Ok(());
        }
        match self.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn claim_port(&self, port: u16, owner: &ServiceRef) -> Result<bool, StoreError> {
        let record = json!({
            "namespace": owner.namespace,
            "name": owner.name,
            "allocated": object::now(),
        });
        let value = bytes::Bytes::from(record.to_string());
        match self.store.create(&port_key(port), value).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
