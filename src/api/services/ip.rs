//! ClusterIP allocation: one `networking.k8s.io/v1` IPAddress object per allocated address,
//! named by the address and pointing at its Service, created only if absent.

use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};

use super::{AllocationError, Allocator, ServiceRef};
use crate::api::object;
use crate::api::rest::create::prepare_new;
use crate::store::{Consistency, ListOptions, StoreError};

/// Where IPAddress objects are stored (as the API's registry names them).
pub(super) const IP_ADDRESS_PREFIX: &str = "/registry/networking.k8s.io/ipaddresses/";
/// Random picks before falling back to a scan of what is taken.
const RANDOM_ATTEMPTS: usize = 16;

pub(super) fn ip_key(ip: Ipv4Addr) -> String {
    format!("{IP_ADDRESS_PREFIX}{ip}")
}

/// The IPAddress object recording that `owner` holds `ip`.
fn ip_address_object(ip: Ipv4Addr, owner: &ServiceRef) -> Value {
    let mut object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IPAddress",
        "metadata": {
            "name": ip.to_string(),
            "labels": {
                "ipaddress.kubernetes.io/ip-family": "IPv4",
                "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
            },
        },
        "spec": {"parentRef": {
            "group": "",
            "resource": "services",
            "namespace": owner.namespace,
            "name": owner.name,
        }},
    });
    prepare_new(&mut object, false, "IPAddress");
    object
}

/// The Service an IPAddress object names as its holder.
pub(super) fn holder(object: &Value) -> Option<ServiceRef> {
    let parent = object.pointer("/spec/parentRef")?;
    if parent.get("resource").and_then(Value::as_str) != Some("services") {
        return None;
    }
    Some(ServiceRef {
        namespace: parent.get("namespace")?.as_str()?.to_string(),
        name: parent.get("name")?.as_str()?.to_string(),
    })
}

impl Allocator {
    /// Allocates `requested`, or any free address, to `owner`.
    pub async fn allocate_ip(
        &self,
        requested: Option<Ipv4Addr>,
        owner: &ServiceRef,
    ) -> Result<Ipv4Addr, AllocationError> {
        if let Some(ip) = requested {
            if !self.usable(ip) {
                return Err(AllocationError::OutOfRange { what: "IP" });
            }
            return match self.claim(ip, owner).await? {
                true => Ok(ip),
                false => Err(AllocationError::Taken { what: "IP" }),
            };
        }
        for _ in 0..RANDOM_ATTEMPTS {
            let ip = self.random_ip();
            if self.claim(ip, owner).await? {
                return Ok(ip);
            }
        }
        // Crowded: pick from what is known to be free.
        let taken = self.taken_ips().await?;
        for ip in self.network.cidr.hosts().filter(|ip| self.usable(*ip)) {
            if !taken.contains(&ip) && self.claim(ip, owner).await? {
                return Ok(ip);
            }
        }
        Err(AllocationError::Full)
    }

    /// Gives `ip` back if `owner` holds it.
    pub async fn release_ip(&self, ip: Ipv4Addr, owner: &ServiceRef) -> Result<(), StoreError> {
        let key = ip_key(ip);
        let Some(kv) = self.store.get(&key, Consistency::Linearizable).await? else {
            return Ok(());
        };
        let object: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        if holder(&object).as_ref() != Some(owner) {
            return Ok(());
        }
        match self.store.delete(&key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether `ip` may be handed out: inside the range, not its network or broadcast
    /// address.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let cidr = &self.network.cidr;
        cidr.contains(&ip) && ip != cidr.network() && ip != cidr.broadcast()
    }

    /// A random address, from the upper part of the range first: the lower part is left to
    /// clients that ask for a specific address, as upstream does.
    fn random_ip(&self) -> Ipv4Addr {
        let cidr = &self.network.cidr;
        let size = u32::from(cidr.broadcast()) - u32::from(cidr.network()) + 1;
        let reserved = (size / 16).clamp(16, 256).min(size / 2);
        let offset = rand::rng().random_range(reserved.max(1)..size - 1);
        Ipv4Addr::from(u32::from(cidr.network()) + offset)
    }

    /// Records `owner` as holding `ip`; false if someone already does.
    async fn claim(&self, ip: Ipv4Addr, owner: &ServiceRef) -> Result<bool, StoreError> {
        let object = ip_address_object(ip, owner);
        match self
            .store
            .create(&ip_key(ip), object::encode(&object))
            .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn taken_ips(&self) -> Result<std::collections::HashSet<Ipv4Addr>, StoreError> {
        let page = self
            .store
            .list(
                IP_ADDRESS_PREFIX,
                ListOptions::default(),
                Consistency::Linearizable,
            )
            .await?;
        Ok(page
            .items
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(IP_ADDRESS_PREFIX)?.parse().ok())
            .collect())
    }
}
