//! Core (`v1`) defaults: pods and pod specs, services, volumes, secrets.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::{default, each, object_at};

/// `stringData` is write-only convenience: merged into `data` (base64), then dropped.
pub(super) fn secret(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(strings)) = map.remove("stringData") {
        let data = map
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(data) = data.as_object_mut() {
            for (key, value) in strings {
                if let Some(text) = value.as_str() {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                    data.insert(key, Value::String(encoded));
                }
            }
        }
    }
    map.entry("type")
        .or_insert_with(|| Value::String("Opaque".to_string()));
}

/// A Pod: its spec's defaults, and what upstream's admission adds to every pod (the
/// `default` ServiceAccount, five minutes' toleration of unreachable and not-ready nodes;
/// priority 0 unless the create path's priority admission set it from a PriorityClass).
pub(super) fn pod(object: &mut Value) {
    let spec = object_at(object, "/spec");
    pod_spec(spec);
    default(spec, "serviceAccountName", json!("default"));
    let account = spec["serviceAccountName"].clone();
    default(spec, "serviceAccount", account);
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = object_at(spec, "/tolerations");
    if !tolerations.is_array() {
        *tolerations = json!([]);
    }
    let list = tolerations.as_array_mut().expect("an array");
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = list.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let key_matches = match t.get("key").and_then(Value::as_str) {
                None | Some("") => t.get("operator").and_then(Value::as_str) == Some("Exists"),
                Some(k) => k == key,
            };
            key_matches && (effect.is_empty() || effect == "NoExecute")
        });
        if !tolerated {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }));
        }
    }
}

/// The pod template at `pointer` (e.g. `/spec/template`).
pub(super) fn template_at(object: &mut Value, pointer: &str) {
    if object.pointer(pointer).is_some() {
        pod_spec(object_at(object, &format!("{pointer}/spec")));
    }
}

/// Defaults of a pod spec (upstream `SetDefaults_PodSpec` and its containers').
pub fn pod_spec(spec: &mut Value) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for list in ["/initContainers", "/containers", "/ephemeralContainers"] {
        each(spec, list, |c| container(c, host_network));
    }
    each(spec, "/volumes", volume);
}

fn container(container: &mut Value, host_network: bool) {
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let policy = if image_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default(container, "imagePullPolicy", json!(policy));
    default(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    default(container, "terminationMessagePolicy", json!("File"));
    default(container, "resources", json!({}));
    // Limits without requests: the requests equal the limits.
    if let Some(limits) = container
        .pointer("/resources/limits")
        .and_then(Value::as_object)
        .cloned()
    {
        let requests = object_at(container, "/resources/requests");
        for (resource, quantity) in limits {
            default(requests, &resource, quantity);
        }
    }
    each(container, "/ports", |port| {
        default(port, "protocol", json!("TCP"));
        if host_network {
            if let Some(container_port) = port.get("containerPort").cloned() {
                default(port, "hostPort", container_port);
            }
        }
    });
    each(container, "/env", |env| {
        if let Some(field_ref) = env.pointer_mut("/valueFrom/fieldRef") {
            default(field_ref, "apiVersion", json!("v1"));
        }
    });
    for probe_name in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(probe) = container.get_mut(probe_name).filter(|p| p.is_object()) {
            default(probe, "timeoutSeconds", json!(1));
            default(probe, "periodSeconds", json!(10));
            default(probe, "successThreshold", json!(1));
            default(probe, "failureThreshold", json!(3));
            handler(probe);
        }
    }
    for hook in ["/lifecycle/postStart", "/lifecycle/preStop"] {
        if let Some(handler_value) = container.pointer_mut(hook) {
            handler(handler_value);
        }
    }
}

fn handler(handler: &mut Value) {
    if let Some(get) = handler.get_mut("httpGet").filter(|g| g.is_object()) {
        default(get, "path", json!("/"));
        default(get, "scheme", json!("HTTP"));
    }
}

/// Whether an image reference names no tag and no digest, or the `latest` tag.
fn image_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn volume(volume: &mut Value) {
    for source in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(source) = volume.get_mut(source).filter(|s| s.is_object()) {
            default(source, "defaultMode", json!(420));
        }
    }
    if let Some(host_path) = volume.get_mut("hostPath").filter(|s| s.is_object()) {
        default(host_path, "type", json!(""));
    }
}

/// The QoS class upstream gives a pod spec: Guaranteed when every container limits cpu and
/// memory and requests what it limits, BestEffort when none asks for either, else Burstable.
pub fn pod_qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|list| spec.get(*list)?.as_array())
        .flatten()
        .collect();
    let quantities = |c: &Value, which: &str| -> Map<String, Value> {
        c.pointer(&format!("/resources/{which}"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| *k == "cpu" || *k == "memory")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let best_effort = containers
        .iter()
        .all(|c| quantities(c, "requests").is_empty() && quantities(c, "limits").is_empty());
    if best_effort {
        return "BestEffort";
    }
    let guaranteed = !containers.is_empty()
        && containers.iter().all(|c| {
            let limits = quantities(c, "limits");
            let requests = quantities(c, "requests");
            limits.len() == 2 && requests.iter().all(|(k, v)| limits.get(k) == Some(v))
        });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

pub(super) fn replication_controller(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "replicas", json!(1));
    default(spec, "minReadySeconds", json!(0));
    // Selector and labels default to the template's labels.
    if let Some(labels) = spec.pointer("/template/metadata/labels").cloned() {
        if spec
            .get("selector")
            .is_none_or(|s| s.as_object().is_none_or(Map::is_empty))
        {
            spec["selector"] = labels.clone();
        }
        let meta = object_at(object, "/metadata");
        if meta
            .get("labels")
            .is_none_or(|l| l.as_object().is_none_or(Map::is_empty))
        {
            meta["labels"] = labels;
        }
    }
    template_at(object, "/spec/template");
}

/// Service defaults that need no allocation (ClusterIPs and NodePorts come from
/// `crate::api::services`).
pub(super) fn service(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    if spec["sessionAffinity"] == "ClientIP" {
        let client_ip = object_at(spec, "/sessionAffinityConfig/clientIP");
        default(client_ip, "timeoutSeconds", json!(10800));
    }
    each(spec, "/ports", |port| {
        default(port, "protocol", json!("TCP"));
        let missing = port
            .get("targetPort")
            .is_none_or(|t| t.is_null() || t == &json!(0) || t == &json!(""));
        if missing {
            if let Some(number) = port.get("port").cloned() {
                port["targetPort"] = number;
            }
        }
    });
    let kind = spec["type"].as_str().unwrap_or_default().to_string();
    if kind == "NodePort" || kind == "LoadBalancer" {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if kind != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
}

pub(super) fn endpoints(object: &mut Value) {
    each(object, "/subsets", |subset| {
        each(subset, "/ports", |port| {
            default(port, "protocol", json!("TCP"))
        });
    });
}

pub(super) fn persistent_volume(object: &mut Value) {
    let spec = object_at(object, "/spec");
    default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
    default(spec, "volumeMode", json!("Filesystem"));
}

pub(super) fn persistent_volume_claim(object: &mut Value) {
    default(
        object_at(object, "/spec"),
        "volumeMode",
        json!("Filesystem"),
    );
}

/// Every namespace carries its name as a label, so selectors can pick namespaces by name.
pub(super) fn namespace(object: &mut Value) {
    let name = object.pointer("/metadata/name").cloned();
    if let Some(name) = name.filter(|n| n.as_str().is_some_and(|n| !n.is_empty())) {
        let labels = object_at(object, "/metadata/labels");
        labels["kubernetes.io/metadata.name"] = name;
    }
}
