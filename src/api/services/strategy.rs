//! What the API server does to a Service on create and update beyond plain storage: give it
//! a ClusterIP (and the family fields that go with it) and NodePorts, keep them across
//! updates that leave them out, refuse to change an assigned ClusterIP, and word failures
//! as upstream does.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::{AllocationError, Allocator, ServiceRef};
use crate::api::error::{ApiError, FieldError, Target};

/// The address of a headless Service.
const HEADLESS: &str = "None";

fn service_type(service: &Value) -> &str {
    service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn cluster_ip(service: &Value) -> Option<&str> {
    let spec = service.get("spec")?;
    spec.get("clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .or_else(|| spec.pointer("/clusterIPs/0").and_then(Value::as_str))
        .filter(|ip| !ip.is_empty())
}

/// The ClusterIPs a Service holds.
pub fn cluster_ips(service: &Value) -> Vec<Ipv4Addr> {
    let spec = service.get("spec");
    let mut ips: Vec<Ipv4Addr> = spec
        .and_then(|s| s.get("clusterIPs"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(spec.and_then(|s| s.get("clusterIP")))
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The NodePorts (and health-check node port) a Service holds.
pub fn node_ports(service: &Value) -> Vec<u16> {
    let mut ports: Vec<u16> = service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort")?.as_u64())
        .chain(
            service
                .pointer("/spec/healthCheckNodePort")
                .and_then(Value::as_u64),
        )
        .filter_map(|p| u16::try_from(p).ok().filter(|p| *p > 0))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn wants_node_ports(service: &Value) -> bool {
    match service_type(service) {
        "NodePort" => true,
        "LoadBalancer" => service
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

fn wants_health_check_port(service: &Value) -> bool {
    service_type(service) == "LoadBalancer"
        && service
            .pointer("/spec/externalTrafficPolicy")
            .and_then(Value::as_str)
            == Some("Local")
}

/// What this write allocated, so that a failure gives it back.
struct Claims<'a> {
    allocator: &'a Allocator,
    owner: ServiceRef,
    ips: Vec<Ipv4Addr>,
    ports: Vec<u16>,
}

impl Claims<'_> {
    async fn give_back(self) {
        for ip in self.ips {
            if let Err(e) = self.allocator.release_ip(ip, &self.owner).await {
                tracing::warn!(%ip, error = %e, "releasing a ClusterIP after a failed write; the reconciler will");
            }
        }
        for port in self.ports {
            if let Err(e) = self.allocator.release_node_port(port, &self.owner).await {
                tracing::warn!(port, error = %e, "releasing a NodePort after a failed write; the reconciler will");
            }
        }
    }
}

fn invalid(target: &Target, cause: FieldError) -> ApiError {
    ApiError::Invalid {
        target: target.clone(),
        causes: vec![cause],
    }
}

fn ip_error(allocator: &Allocator, ip: &str, error: AllocationError) -> FieldError {
    let detail = match error {
        AllocationError::OutOfRange { .. } => format!(
            "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
            allocator.network().cidr
        ),
        AllocationError::Taken { .. } => "provided IP is already allocated".to_string(),
        AllocationError::Full => "range is full".to_string(),
        AllocationError::Store(e) => format!("the store failed: {e}"),
    };
    FieldError::invalid_raw(
        "spec.clusterIPs",
        &format!("[]string{{{ip:?}}}"),
        &format!("failed to allocate IP {ip}: {detail}"),
    )
}

fn port_error(
    allocator: &Allocator,
    field: String,
    port: u16,
    error: AllocationError,
) -> FieldError {
    let range = allocator.network().node_ports.clone();
    let detail = match error {
        AllocationError::OutOfRange { .. } => format!(
            "provided port is not in the valid range. The range of valid ports is {}-{}",
            range.start(),
            range.end()
        ),
        AllocationError::Taken { .. } => "provided port is already allocated".to_string(),
        AllocationError::Full => "range is full".to_string(),
        AllocationError::Store(e) => format!("the store failed: {e}"),
    };
    FieldError::invalid_raw(&field, &port.to_string(), &detail)
}

/// Sets the ClusterIP and its companion fields.
fn set_cluster_ip(service: &mut Value, ip: &str) {
    let spec = &mut service["spec"];
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    spec["ipFamilies"] = json!(["IPv4"]);
    if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
}

fn drop_cluster_ip(service: &mut Value) {
    if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            spec.remove(field);
        }
    }
}

fn drop_node_ports(service: &mut Value) {
    if let Some(ports) = service
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
    {
        for port in ports {
            if let Some(port) = port.as_object_mut() {
                port.remove("nodePort");
            }
        }
    }
}

/// Allocates what `service` needs and does not hold yet (`held`: what its stored version
/// holds). On failure everything this call allocated is given back.
async fn allocate(
    allocator: &Allocator,
    target: &Target,
    service: &mut Value,
    held: &Value,
) -> Result<(), ApiError> {
    let mut claims = Claims {
        allocator,
        owner: ServiceRef::of(service),
        ips: Vec::new(),
        ports: Vec::new(),
    };
    match allocate_into(&mut claims, target, service, held).await {
        Ok(()) => Ok(()),
        Err(e) => {
            claims.give_back().await;
            Err(e)
        }
    }
}

async fn allocate_into(
    claims: &mut Claims<'_>,
    target: &Target,
    service: &mut Value,
    held: &Value,
) -> Result<(), ApiError> {
    let allocator = claims.allocator;
    if service_type(service) == "ExternalName" {
        drop_cluster_ip(service);
    } else if cluster_ip(service) == Some(HEADLESS) {
        set_cluster_ip(service, HEADLESS);
    } else {
        let requested = cluster_ip(service).map(str::to_string);
        let already = requested
            .as_deref()
            .is_some_and(|ip| cluster_ips(held).iter().any(|held| held.to_string() == ip));
        if !already {
            let parsed = match requested.as_deref() {
                None => None,
                Some(text) => Some(text.parse::<Ipv4Addr>().map_err(|_| {
                    invalid(
                        target,
                        FieldError::invalid(
                            "spec.clusterIPs[0]",
                            text,
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        ),
                    )
                })?),
            };
            let ip = allocator
                .allocate_ip(parsed, &claims.owner)
                .await
                .map_err(|e| {
                    let shown = requested.clone().unwrap_or_default();
                    invalid(target, ip_error(allocator, &shown, e))
                })?;
            claims.ips.push(ip);
            set_cluster_ip(service, &ip.to_string());
        } else if let Some(ip) = requested {
            set_cluster_ip(service, &ip);
        }
    }
    let held_ports = node_ports(held);
    if wants_node_ports(service) {
        let count = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for index in 0..count {
            let pointer = format!("/spec/ports/{index}/nodePort");
            let requested = service
                .pointer(&pointer)
                .and_then(Value::as_u64)
                .filter(|p| *p > 0);
            let requested = match requested {
                Some(port) => match u16::try_from(port) {
                    Ok(port) if held_ports.contains(&port) || claims.ports.contains(&port) => {
                        continue
                    }
                    Ok(port) => Some(port),
                    Err(_) => {
                        return Err(invalid(
                            target,
                            FieldError::invalid_raw(
                                &format!("spec.ports[{index}].nodePort"),
                                &port.to_string(),
                                "must be between 1 and 65535, inclusive",
                            ),
                        ))
                    }
                },
                None => None,
            };
            let port = allocator
                .allocate_node_port(requested, &claims.owner)
                .await
                .map_err(|e| {
                    let field = format!("spec.ports[{index}].nodePort");
                    invalid(
                        target,
                        port_error(allocator, field, requested.unwrap_or(0), e),
                    )
                })?;
            claims.ports.push(port);
            service["spec"]["ports"][index]["nodePort"] = json!(port);
        }
    } else {
        drop_node_ports(service);
    }
    if wants_health_check_port(service) {
        let requested = service
            .pointer("/spec/healthCheckNodePort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        if !requested.is_some_and(|p| held_ports.contains(&p)) {
            let port = allocator
                .allocate_node_port(requested, &claims.owner)
                .await
                .map_err(|e| {
                    let field = "spec.healthCheckNodePort".to_string();
                    invalid(
                        target,
                        port_error(allocator, field, requested.unwrap_or(0), e),
                    )
                })?;
            claims.ports.push(port);
            service["spec"]["healthCheckNodePort"] = json!(port);
        }
    } else if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("healthCheckNodePort");
    }
    Ok(())
}

/// A new Service: allocates its ClusterIP and NodePorts.
pub async fn prepare_create(
    allocator: &Allocator,
    target: &Target,
    service: &mut Value,
) -> Result<(), ApiError> {
    if service.get("spec").is_none() {
        return Ok(());
    }
    service["status"] = json!({"loadBalancer": {}});
    allocate(allocator, target, service, &Value::Null).await
}

/// An updated Service: keeps what it holds when the client left it out, refuses a changed
/// ClusterIP, drops what its new type does not use, allocates what it newly needs.
pub async fn prepare_update(
    allocator: &Allocator,
    target: &Target,
    current: &Value,
    service: &mut Value,
) -> Result<(), ApiError> {
    if service.get("spec").is_none() {
        return Ok(());
    }
    let old_type = service_type(current).to_string();
    let new_type = service_type(service).to_string();
    let old_ip = cluster_ip(current).map(str::to_string);
    // Fields the client left out keep their assigned values (upstream's
    // patchAllocatedValues), so `kubectl replace` of a manifest without them works.
    if new_type != "ExternalName" && cluster_ip(service).is_none() {
        if let Some(ip) = &old_ip {
            set_cluster_ip(service, ip);
        }
    }
    if new_type == "ExternalName"
        && old_type != "ExternalName"
        && cluster_ip(service) == old_ip.as_deref()
    {
        drop_cluster_ip(service);
    }
    if wants_node_ports(service) {
        keep_node_ports(current, service);
    }
    if wants_health_check_port(service) && service.pointer("/spec/healthCheckNodePort").is_none() {
        if let Some(port) = current.pointer("/spec/healthCheckNodePort") {
            service["spec"]["healthCheckNodePort"] = port.clone();
        }
    }
    if let (Some(old), Some(new)) = (&old_ip, cluster_ip(service)) {
        if old != new && old_type != "ExternalName" && new_type != "ExternalName" {
            return Err(invalid(
                target,
                FieldError::invalid_raw(
                    "spec.clusterIPs[0]",
                    &format!("[]string{{{new:?}}}"),
                    "may not change once set",
                ),
            ));
        }
    }
    if service.get("status").is_none() {
        service["status"] = current
            .get("status")
            .cloned()
            .unwrap_or(json!({"loadBalancer": {}}));
    }
    allocate(allocator, target, service, current).await
}

/// Ports without a nodePort take the one the same port (number and protocol) had.
fn keep_node_ports(current: &Value, service: &mut Value) {
    let old: Vec<(u64, String, u64)> = current
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.get("port")?.as_u64()?,
                p.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP")
                    .to_string(),
                p.get("nodePort")?.as_u64()?,
            ))
        })
        .collect();
    let Some(ports) = service
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for port in ports {
        if port
            .get("nodePort")
            .and_then(Value::as_u64)
            .is_some_and(|p| p > 0)
        {
            continue;
        }
        let number = port.get("port").and_then(Value::as_u64);
        let protocol = port
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP");
        if let Some((_, _, node_port)) = old
            .iter()
            .find(|(n, p, _)| Some(*n) == number && p == protocol)
        {
            port["nodePort"] = json!(node_port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_addresses_and_ports_are_read_from_the_spec() {
        let service = json!({"spec": {
            "type": "LoadBalancer", "clusterIP": "10.43.0.7", "clusterIPs": ["10.43.0.7"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
            "ports": [{"port": 80, "nodePort": 30080}, {"port": 443, "nodePort": 30443}],
        }});
        assert_eq!(cluster_ips(&service), vec![Ipv4Addr::new(10, 43, 0, 7)]);
        assert_eq!(node_ports(&service), vec![30080, 30443, 31000]);
        assert!(wants_node_ports(&service));
        assert!(wants_health_check_port(&service));
        assert!(cluster_ips(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }

    #[test]
    fn omitted_node_ports_are_kept_by_port_and_protocol() {
        let current = json!({"spec": {"ports": [
            {"port": 80, "protocol": "TCP", "nodePort": 30080},
            {"port": 53, "protocol": "UDP", "nodePort": 30053},
        ]}});
        let mut new = json!({"spec": {"ports": [
            {"port": 53, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}, {"port": 81},
        ]}});
        keep_node_ports(&current, &mut new);
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30053);
        assert_eq!(new["spec"]["ports"][1]["nodePort"], 30080);
        assert!(new["spec"]["ports"][2].get("nodePort").is_none());
    }
}
