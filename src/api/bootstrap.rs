//! Objects every cluster starts with: the namespaces `default`, `kube-system`, `kube-public`
//! and `kube-node-lease`; the `kubernetes` ServiceCIDR; the `kubernetes` Service in
//! `default` at the first address of the service range, with Endpoints and an
//! EndpointSlice pointing at this API server; the `kube-dns` Service in `kube-system` at
//! the cluster DNS address (answered by every node's `net::dns`); the system
//! PriorityClasses.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::rest::create::prepare_new;
use super::services::{AllocationError, ServiceRef};
use super::{object, Api};
use crate::store::{Consistency, StoreError};

/// The namespaces Kubernetes creates at start.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates `object` (of resource `plural` in `group`) unless it exists; true if it did.
async fn create_missing(
    api: &Api,
    group: &str,
    plural: &str,
    mut object: Value,
) -> Result<bool, StoreError> {
    let resource = api
        .registry
        .get(group, "v1", plural)
        .unwrap_or_else(|| panic!("{plural} are a built-in kind"));
    let namespace = object::meta_str(&object, "namespace").map(str::to_string);
    let key = resource.key(namespace.as_deref(), object::name(&object));
    let has_status = resource.subresources.iter().any(|s| s == "status");
    let status = object.get("status").cloned();
    prepare_new(&mut object, has_status, &resource.kind);
    super::defaults::apply(&resource.kind, &mut object);
    if let Some(status) = status {
        object["status"] = status;
    }
    match api.store.create(&key, object::encode(&object)).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `object` or, when the stored one differs in `fields`, writes those.
async fn ensure_fields(
    api: &Api,
    group: &str,
    plural: &str,
    object: Value,
    fields: &[&str],
) -> Result<(), StoreError> {
    if create_missing(api, group, plural, object.clone()).await? {
        return Ok(());
    }
    let resource = api.registry.get(group, "v1", plural).expect("checked");
    let key = resource.key(
        object::meta_str(&object, "namespace"),
        object::name(&object),
    );
    let Some(kv) = api.store.get(&key, Consistency::Linearizable).await? else {
        return Ok(());
    };
    let mut stored: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    if fields.iter().all(|f| stored.get(f) == object.get(f)) {
        return Ok(());
    }
    for field in fields {
        stored[*field] = object.get(*field).cloned().unwrap_or(Value::Null);
    }
    match api
        .store
        .update(&key, object::encode(&stored), Some(kv.mod_revision))
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the system namespaces that are missing. Safe to run on every server at every
/// start: an existing namespace is left alone.
pub async fn ensure_namespaces(api: &Api) -> Result<(), StoreError> {
    for name in SYSTEM_NAMESPACES {
        let namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
        });
        if create_missing(api, "", "namespaces", namespace).await? {
            tracing::info!(namespace = name, "created system namespace");
        }
    }
    Ok(())
}

/// Creates the built-in PriorityClasses `system-node-critical` and
/// `system-cluster-critical` when missing, as upstream's API server does at start.
pub async fn ensure_priority_classes(api: &Api) -> Result<(), StoreError> {
    for (name, value, description) in super::rest::priority::SYSTEM_CLASSES {
        let class = json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "description": description,
        });
        if create_missing(api, "scheduling.k8s.io", "priorityclasses", class).await? {
            tracing::info!(priority_class = name, "created system PriorityClass");
        }
    }
    Ok(())
}

/// The `kubernetes` ServiceCIDR and Service, and the endpoints of this API server
/// (`address`:`port`).
pub async fn ensure_kubernetes_service(
    api: &Api,
    address: IpAddr,
    port: u16,
) -> Result<(), StoreError> {
    let network = api.services.network().clone();
    let service_cidr = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "ServiceCIDR",
        "metadata": {"name": "kubernetes"},
        "spec": {"cidrs": [network.cidr.to_string()]},
        "status": {"conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "",
            "message": "Kubernetes Service CIDR is ready",
            "lastTransitionTime": object::now(),
        }]},
    });
    create_missing(api, "networking.k8s.io", "servicecidrs", service_cidr).await?;

    let ip = network.first_ip();
    let owner = ServiceRef {
        namespace: "default".to_string(),
        name: "kubernetes".to_string(),
    };
    match api.services.allocate_ip(Some(ip), &owner).await {
        // Taken: by this Service on an earlier start.
        Ok(_) | Err(AllocationError::Taken { .. }) => {}
        Err(AllocationError::Store(e)) => return Err(e),
        Err(e) => return Err(StoreError::Internal(format!("allocating {ip}: {e}"))),
    }
    let service = selectorless_service(
        &owner,
        json!({"component": "apiserver", "provider": "kubernetes"}),
        ip,
        json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]),
    );
    ensure_fields(api, "", "services", service, &["spec"]).await?;

    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": [{
            "addresses": [{"ip": address.to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    ensure_fields(api, "", "endpoints", endpoints, &["subsets"]).await?;
    let address_type = if address.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"},
        },
        "addressType": address_type,
        "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure_fields(
        api,
        "discovery.k8s.io",
        "endpointslices",
        slice,
        &["endpoints", "ports"],
    )
    .await?;
    Ok(())
}

/// A single-stack IPv4 ClusterIP Service without a selector at `ip`: the `kubernetes` and
/// `kube-dns` Services the servers keep.
fn selectorless_service(
    owner: &ServiceRef,
    labels: serde_json::Value,
    ip: std::net::Ipv4Addr,
    ports: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": owner.name, "namespace": owner.namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip.to_string(),
            "clusterIPs": [ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
            "sessionAffinity": "None",
            "ports": ports,
        },
        "status": {"loadBalancer": {}},
    })
}

/// The `kube-dns` Service in `kube-system` at the cluster DNS address `ip`, as k3s's CoreDNS
/// manifest has it (labels, port names), for clients that look it up. It has no selector:
/// no pod backs it, each node's agent answers on its pod gateway (`net::dns`) and the
/// service proxy sends the address there. Created once; an existing one is left as it is.
pub async fn ensure_dns_service(api: &Api, ip: IpAddr) -> Result<(), StoreError> {
    let IpAddr::V4(v4) = ip else {
        tracing::warn!(%ip, "the cluster DNS address is not IPv4: no kube-dns Service");
        return Ok(());
    };
    let owner = ServiceRef {
        namespace: "kube-system".to_string(),
        name: "kube-dns".to_string(),
    };
    match api.services.allocate_ip(Some(v4), &owner).await {
        Ok(_) => {}
        // Taken: by this Service on an earlier start, or by a user's Service.
        Err(AllocationError::Taken { .. }) => {
            let resource = api.registry.get("", "v1", "services").expect("built-in");
            let key = resource.key(Some("kube-system"), "kube-dns");
            if api
                .store
                .get(&key, Consistency::Linearizable)
                .await?
                .is_none()
            {
                tracing::warn!(%ip, "the cluster DNS address is held by another Service: no kube-dns Service");
                return Ok(());
            }
        }
        Err(AllocationError::Store(e)) => return Err(e),
        Err(e) => {
            tracing::warn!(%ip, error = %e, "the cluster DNS address is outside the service range: no kube-dns Service");
            return Ok(());
        }
    }
    let service = selectorless_service(
        &owner,
        json!({
            "k8s-app": "kube-dns",
            "kubernetes.io/cluster-service": "true",
            "kubernetes.io/name": "CoreDNS",
        }),
        v4,
        json!([
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]),
    );
    if create_missing(api, "", "services", service).await? {
        tracing::info!(%ip, "created the kube-dns Service");
    }
    Ok(())
}
