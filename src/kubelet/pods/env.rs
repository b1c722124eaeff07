//! A container's environment as upstream's `makeEnvironmentVariables` builds it: service
//! link variables, then `envFrom` (with prefix; every key, see [`build`]), then `env` in
//! order with `$(VAR)` expansion over what came before, `valueFrom` configMapKeyRef /
//! secretKeyRef (optional or not), fieldRef and resourceFieldRef (limits defaulting to the
//! node's allocatable, with divisor).
//!
//! The ConfigMaps and Secrets are fetched beforehand ([`Lookups`]) so that building the
//! environment is a pure function of the pod, and its errors carry upstream's messages
//! (the `CreateContainerConfigError` message a user sees).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::expansion::expand;
use crate::scheduler::quantity;

/// ConfigMaps and Secrets of the pod's namespace, by name; `None` = not found.
#[derive(Debug, Default, Clone)]
pub struct Lookups {
    pub config_maps: HashMap<String, Option<ConfigMap>>,
    pub secrets: HashMap<String, Option<Secret>>,
}

impl Lookups {
    /// Names of the ConfigMaps and Secrets `container`'s env and envFrom refer to.
    pub fn wanted(container: &Container) -> (Vec<String>, Vec<String>) {
        let mut config_maps = Vec::new();
        let mut secrets = Vec::new();
        for from in container.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.push(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for var in container.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(r) = &from.config_map_key_ref {
                config_maps.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
        config_maps.sort();
        config_maps.dedup();
        secrets.sort();
        secrets.dedup();
        (config_maps, secrets)
    }
}

/// Facts about the node and the pod's network the downward API exposes.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub host_ips: Vec<String>,
    pub pod_ips: Vec<String>,
    /// Node allocatable cpu and memory (limits default to them in resourceFieldRef).
    pub allocatable_cpu: Option<Quantity>,
    pub allocatable_memory: Option<Quantity>,
    pub allocatable_ephemeral_storage: Option<Quantity>,
}

/// Why a container's configuration cannot be built (`CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Environment entries in order, later ones replacing earlier ones of the same name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn entries(&self) -> &[(String, String)] {
        &self.0
    }

    /// `NAME=value` strings, as the OCI spec wants them.
    pub fn to_oci(&self) -> Vec<String> {
        self.0.iter().map(|(n, v)| format!("{n}={v}")).collect()
    }
}

/// Builds the environment of `container` in `pod` (service links first).
///
/// Every key of an `envFrom` ConfigMap or Secret becomes a variable, as upstream's kubelet
/// does since KEP-4369 (1.30, `RelaxedEnvironmentVariableValidation`): it no longer skips
/// keys that are not C-like names, so it no longer records `InvalidEnvironmentVariableNames`
/// either. The API server has validated the keys and the prefix.
pub fn build(
    pod: &Pod,
    container: &Container,
    service_env: &Env,
    lookups: &Lookups,
    facts: &Facts,
) -> Result<Env, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match lookups.config_maps.get(&r.name).cloned().flatten() {
                Some(cm) => cm.data.unwrap_or_default(),
                None if optional => continue,
                None => return Err(not_found("configmaps", &r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match lookups.secrets.get(&r.name).cloned().flatten() {
                Some(s) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                None if optional => continue,
                None => return Err(not_found("secrets", &r.name)),
            }
        } else {
            continue;
        };
        for (key, value) in data {
            env.set(&format!("{prefix}{key}"), value);
        }
    }

    for var in container.env.iter().flatten() {
        let value = var.value.as_deref().unwrap_or_default();
        let runtime_value = if !value.is_empty() {
            expand(value, |name| {
                env.get(name)
                    .or_else(|| service_env.get(name))
                    .map(str::to_string)
            })
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, &field.field_path, facts)?
            } else if let Some(resource) = &from.resource_field_ref {
                resource_value(
                    pod,
                    container,
                    resource.container_name.as_deref(),
                    &resource.resource,
                    resource.divisor.as_ref(),
                    facts,
                )?
            } else if let Some(r) = &from.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match lookups.config_maps.get(&r.name).cloned().flatten() {
                    None if optional => continue,
                    None => return Err(not_found("configmaps", &r.name)),
                    Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                }
            } else if let Some(r) = &from.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match lookups.secrets.get(&r.name).cloned().flatten() {
                    None if optional => continue,
                    None => return Err(not_found("secrets", &r.name)),
                    Some(s) => match s.data.and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                r.key, r.name
                            )))
                        }
                    },
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.set(&var.name, runtime_value);
    }

    // Service links come first, so the pod's own variables win.
    let mut all = service_env.clone();
    for (name, value) in env.0 {
        all.set(&name, value);
    }
    Ok(all)
}

/// The API server's NotFound message, which upstream passes through unchanged.
fn not_found(resource: &str, name: &str) -> ConfigError {
    ConfigError(format!("{resource} \"{name}\" not found"))
}

/// `podFieldSelectorRuntimeValue`.
pub fn field_value(pod: &Pod, path: &str, facts: &Facts) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    if let Some(key) = subscript(path, "metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(key).cloned())
            .unwrap_or_default());
    }
    if let Some(key) = subscript(path, "metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned())
            .unwrap_or_default());
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => facts.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => facts.host_ips.join(","),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        other => return Err(ConfigError(format!("unsupported fieldPath: {other}"))),
    })
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(path: &'a str, field: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(field)?.strip_prefix("['")?;
    rest.strip_suffix("']")
}

/// The downward API's `key="value"` lines, sorted by key.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

/// `containerResourceRuntimeValue` with limits defaulted to the node's allocatable.
pub fn resource_value(
    pod: &Pod,
    container: &Container,
    container_name: Option<&str>,
    resource: &str,
    divisor: Option<&Quantity>,
    facts: &Facts,
) -> Result<String, ConfigError> {
    let target = match container_name.filter(|n| !n.is_empty()) {
        Some(name) => super::spec_container(pod, name).unwrap_or(container),
        None => container,
    };
    let resources = target.resources.as_ref();
    let get = |limits: bool, name: &str| -> Option<Quantity> {
        let list = if limits {
            resources.and_then(|r| r.limits.as_ref())
        } else {
            resources.and_then(|r| r.requests.as_ref())
        };
        list.and_then(|l| l.get(name).cloned())
            .filter(|q| quantity::milli_value(q) != 0)
    };
    let zero = Quantity("0".into());
    let (value, cpu) = match resource {
        "limits.cpu" => (
            get(true, "cpu").or_else(|| facts.allocatable_cpu.clone()),
            true,
        ),
        "requests.cpu" => (get(false, "cpu"), true),
        "limits.memory" => (
            get(true, "memory").or_else(|| facts.allocatable_memory.clone()),
            false,
        ),
        "requests.memory" => (get(false, "memory"), false),
        "limits.ephemeral-storage" => (
            get(true, "ephemeral-storage").or_else(|| facts.allocatable_ephemeral_storage.clone()),
            false,
        ),
        "requests.ephemeral-storage" => (get(false, "ephemeral-storage"), false),
        other => {
            return Err(ConfigError(format!(
                "unsupported container resource : {other}"
            )))
        }
    };
    let value = value.unwrap_or(zero);
    let one = Quantity("1".into());
    let divisor = divisor.unwrap_or(&one);
    Ok(if cpu {
        let d = quantity::milli_value(divisor).max(1);
        ceil_div(quantity::milli_value(&value), d).to_string()
    } else {
        let d = quantity::value(divisor).max(1);
        ceil_div(quantity::value(&value), d).to_string()
    })
}

fn ceil_div(a: i64, b: i64) -> i64 {
    if a <= 0 {
        return a / b;
    }
    (a + b - 1) / b
}

/// Docker-link style variables for services (`enableServiceLinks`): for each service with
/// a cluster IP, `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT(_<PORTNAME>)` and the
/// `<NAME>_PORT*` family. `services` are the pod namespace's (when service links are on)
/// plus `default/kubernetes`, the master service, always.
pub fn service_env(services: &[Service]) -> Env {
    let mut env = Env::default();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for service in sorted {
        let Some(spec) = &service.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref() else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = service
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        env.set(&format!("{name}_SERVICE_HOST"), ip.to_string());
        env.set(&format!("{name}_SERVICE_PORT"), first.port.to_string());
        for port in ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                let port_name = port_name.to_uppercase().replace('-', "_");
                env.set(
                    &format!("{name}_SERVICE_PORT_{port_name}"),
                    port.port.to_string(),
                );
            }
        }
        let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".to_string())
        };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        env.set(
            &format!("{name}_PORT"),
            format!("{}://{host}:{}", protocol(first).to_lowercase(), first.port),
        );
        for port in ports {
            let proto = protocol(port);
            let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_uppercase());
            env.set(
                &prefix,
                format!("{}://{host}:{}", proto.to_lowercase(), port.port),
            );
            env.set(&format!("{prefix}_PROTO"), proto.to_lowercase());
            env.set(&format!("{prefix}_PORT"), port.port.to_string());
            env.set(&format!("{prefix}_ADDR"), ip.to_string());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(container: serde_json::Value) -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                          "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [container]},
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[test]
    fn values_expand_over_earlier_variables() {
        let (pod, c) = pod(serde_json::json!({"name": "c", "env": [
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        ]}));
        let facts = Facts {
            host_ips: vec!["10.0.0.1".into()],
            ..Facts::default()
        };
        let env = build(&pod, &c, &Env::default(), &Lookups::default(), &facts).unwrap();
        assert_eq!(env.get("B"), Some("a-$(NOPE)-$(A)"));
        assert_eq!(env.get("POD"), Some("p"));
        assert_eq!(env.get("APP"), Some("web"));
        assert_eq!(env.get("NODE"), Some("n1"));
        assert_eq!(env.get("HOST"), Some("10.0.0.1"));
    }

    #[test]
    fn missing_references_give_upstream_messages() {
        let (pod, c) = pod(serde_json::json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
        ]}));
        let err = build(
            &pod,
            &c,
            &Env::default(),
            &Lookups::default(),
            &Facts::default(),
        )
        .unwrap_err();
        assert_eq!(err.0, "configmaps \"cm\" not found");

        let mut lookups = Lookups::default();
        lookups.config_maps.insert(
            "cm".into(),
            Some(serde_json::from_value(serde_json::json!({"data": {"other": "v"}})).unwrap()),
        );
        let err = build(&pod, &c, &Env::default(), &lookups, &Facts::default()).unwrap_err();
        assert_eq!(err.0, "couldn't find key k in ConfigMap ns/cm");

        let (pod, c) = pod_optional();
        let env = build(
            &pod,
            &c,
            &Env::default(),
            &Lookups::default(),
            &Facts::default(),
        )
        .unwrap();
        assert_eq!(env.get("X"), None);
    }

    fn pod_optional() -> (Pod, Container) {
        pod(serde_json::json!({"name": "c", "env": [
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": true}}},
        ]}))
    }

    #[test]
    fn env_from_takes_every_key_with_its_prefix() {
        // Upstream 1.30+ (KEP-4369): keys that are not C-like names are kept, with no
        // InvalidEnvironmentVariableNames event; a prefix may start with a digit.
        let (pod, c) = pod(serde_json::json!({"name": "c",
            "envFrom": [
                {"prefix": "P_", "configMapRef": {"name": "cm"}},
                {"configMapRef": {"name": "cm"}},
                {"prefix": "1_", "secretRef": {"name": "s"}},
            ],
            "env": [{"name": "Y", "value": "$(P_a)"}]}));
        let mut lookups = Lookups::default();
        lookups.config_maps.insert(
            "cm".into(),
            Some(
                serde_json::from_value(
                    serde_json::json!({"data": {"a": "1", "1badkey": "2", "app.properties": "3"}}),
                )
                .unwrap(),
            ),
        );
        lookups.secrets.insert(
            "s".into(),
            Some(serde_json::from_value(serde_json::json!({"data": {"k-1": "c2Vj"}})).unwrap()),
        );
        let env = build(&pod, &c, &Env::default(), &lookups, &Facts::default()).unwrap();
        assert_eq!(env.get("P_a"), Some("1"));
        assert_eq!(env.get("Y"), Some("1"));
        assert_eq!(env.get("1badkey"), Some("2"));
        assert_eq!(env.get("P_1badkey"), Some("2"));
        assert_eq!(env.get("app.properties"), Some("3"));
        assert_eq!(env.get("1_k-1"), Some("sec"));
    }

    #[test]
    fn resource_fields_use_divisors_and_node_defaults() {
        let (pod, c) = pod(serde_json::json!({"name": "c",
            "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}}));
        let facts = Facts {
            allocatable_cpu: Some(Quantity("4".into())),
            ..Facts::default()
        };
        let v = |r: &str, d: Option<&str>| {
            let d = d.map(|d| Quantity(d.into()));
            resource_value(&pod, &c, None, r, d.as_ref(), &facts).unwrap()
        };
        assert_eq!(v("requests.cpu", None), "1");
        assert_eq!(v("requests.cpu", Some("1m")), "250");
        assert_eq!(v("requests.memory", Some("1Mi")), "64");
        assert_eq!(v("limits.cpu", None), "4");
    }

    #[test]
    fn service_links() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"clusterIP": "10.43.0.1", "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}
        }))
        .unwrap();
        let env = service_env(&[svc]);
        assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(env.get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(env.get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
        assert_eq!(env.get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
    }
}
