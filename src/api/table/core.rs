//! Tables of the core/v1 kinds other than pods and events: services, nodes, volumes,
//! controllers and the small config kinds.

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, NodeStatus, NodeSystemInfo, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
    ReplicationControllerSpec, ReplicationControllerStatus, Secret, ServiceAccount, ServiceSpec,
};
use serde_json::{json, Value};

use super::cells::{
    format_labels, host_port, int, list, load_balancer_points, map, primary_address, text, text_or,
};
use super::{col, doc, template_columns, Column, Doc, AGE};

fn count(object: &Value, fields: &[&str]) -> Value {
    let count: usize = fields
        .iter()
        .filter_map(|f| map(object, f).map(|m| m.len()))
        .sum();
    json!(count)
}

fn service_external_ip(service: &Value) -> String {
    let external: Vec<&str> = list(service, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    match text(service, "/spec/type") {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let points = load_balancer_points(&service["status"]);
            let mut all: Vec<&str> = points.split(',').filter(|p| !p.is_empty()).collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => text(service, "/spec/externalName").into(),
        _ => "<unknown>".into(),
    }
}

fn service_ports(service: &Value) -> String {
    let ports: Vec<String> = list(service, "/spec/ports")
        .iter()
        .map(|p| {
            let (port, protocol) = (int(p, "/port"), text(p, "/protocol"));
            match int(p, "/nodePort") {
                node_port if node_port > 0 => format!("{port}:{node_port}/{protocol}"),
                _ => format!("{port}/{protocol}"),
            }
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

/// Up to three `ip:port` endpoints, then `+ N more...` (`formatEndpoints`).
fn endpoints(object: &Value) -> String {
    let subsets = list(object, "/subsets");
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut all = Vec::new();
    for subset in subsets {
        let addresses = list(subset, "/addresses");
        let ips = addresses.iter().map(|a| text(a, "/ip"));
        match list(subset, "/ports") {
            [] => all.extend(ips.map(String::from)),
            ports => {
                for port in ports {
                    let number = int(port, "/port");
                    all.extend(addresses.iter().map(|a| host_port(text(a, "/ip"), number)));
                }
            }
        }
    }
    let shown = all[..all.len().min(3)].join(",");
    if all.len() > 3 {
        format!("{shown} + {} more...", all.len() - 3)
    } else {
        shown
    }
}

fn node_status(node: &Value) -> String {
    let ready = list(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| text(c, "/type") == "Ready");
    let mut status = vec![match ready {
        Some(c) if text(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled");
    }
    status.join(",")
}

/// Roles from `node-role.kubernetes.io/<role>` labels and the `kubernetes.io/role` label.
fn node_roles(node: &Value) -> String {
    let mut roles: Vec<&str> = map(node, "/metadata/labels")
        .into_iter()
        .flatten()
        .filter_map(
            |(key, value)| match key.strip_prefix("node-role.kubernetes.io/") {
                Some(role) if !role.is_empty() => Some(role),
                Some(_) => None,
                None if key == "kubernetes.io/role" => value.as_str().filter(|v| !v.is_empty()),
                None => None,
            },
        )
        .collect();
    roles.sort_unstable();
    roles.dedup();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, kind: &str) -> Value {
    list(node, "/status/addresses")
        .iter()
        .find(|a| text(a, "/type") == kind)
        .map_or("<none>", |a| text(a, "/address"))
        .into()
}

/// Access modes abbreviated in upstream's fixed order (`GetAccessModesAsString`).
fn access_modes(modes: &[Value]) -> String {
    let has = |mode: &str| modes.iter().any(|m| m.as_str() == Some(mode));
    [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ]
    .iter()
    .filter(|(mode, _)| has(mode))
    .map(|(_, short)| *short)
    .collect::<Vec<_>>()
    .join(",")
}

/// The storage class, from the beta annotation if present, else the spec field.
fn storage_class(object: &Value) -> Value {
    match map(object, "/metadata/annotations")
        .and_then(|a| a.get("volume.beta.kubernetes.io/storage-class"))
        .and_then(Value::as_str)
    {
        Some(class) => class.into(),
        None => text(object, "/spec/storageClassName").into(),
    }
}

/// The phase, or `Terminating` once deletion started.
fn phase(object: &Value) -> Value {
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating".into()
    } else {
        text(object, "/status/phase").into()
    }
}

fn quantity(object: &Value, pointer: &str) -> String {
    super::cells::scalar(object.pointer(pointer)).unwrap_or_else(|| "0".into())
}

/// `name: used/hard` for every hard limit, requests and limits apart.
fn quota(object: &Value, limits: bool) -> Value {
    let Some(hard) = map(object, "/status/hard") else {
        return "".into();
    };
    let mut names: Vec<&String> = hard.keys().collect();
    names.sort();
    let parts: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with("limits.") == limits)
        .map(|name| {
            let used = map(object, "/status/used")
                .and_then(|u| super::cells::scalar(u.get(name.as_str())));
            format!(
                "{name}: {}/{}",
                used.unwrap_or_else(|| "0".into()),
                super::cells::scalar(hard.get(name.as_str())).unwrap_or_default()
            )
        })
        .collect();
    parts.join(", ").into()
}

fn replication_controller() -> Vec<Column> {
    let [containers, images] = template_columns!("/spec/template/spec");
    vec![
        col(
            "Desired",
            doc::<ReplicationControllerSpec>("replicas"),
            |o| {
                json!(o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1))
            },
        )
        .typed("integer"),
        col(
            "Current",
            doc::<ReplicationControllerStatus>("replicas"),
            |o| json!(int(o, "/status/replicas")),
        )
        .typed("integer"),
        col(
            "Ready",
            doc::<ReplicationControllerStatus>("readyReplicas"),
            |o| json!(int(o, "/status/readyReplicas")),
        )
        .typed("integer"),
        AGE,
        containers,
        images,
        col(
            "Selector",
            doc::<ReplicationControllerSpec>("selector"),
            |o| format_labels(map(o, "/spec/selector")).into(),
        )
        .wide(),
    ]
}

pub(super) fn columns(group: &str, kind: &str) -> Option<Vec<Column>> {
    let columns = match (group, kind) {
        ("", "Namespace") => vec![
            col("Status", Doc::Text("The status of the namespace"), |o| {
                text(o, "/status/phase").into()
            }),
            AGE,
        ],
        ("", "ConfigMap") => vec![
            col("Data", doc::<ConfigMap>("data"), |o| count(o, &["/data", "/binaryData"])),
            AGE,
        ],
        ("", "Secret") => vec![
            // Upstream defaults an unset type to Opaque before printing.
            col("Type", doc::<Secret>("type"), |o| text_or(o, "/type", "Opaque").into()),
            col("Data", doc::<Secret>("data"), |o| count(o, &["/data"])),
            AGE,
        ],
        ("", "ServiceAccount") => vec![
            col("Secrets", doc::<ServiceAccount>("secrets"), |o| {
                json!(list(o, "/secrets").len())
            }),
            AGE,
        ],
        ("", "Service") => vec![
            col("Type", doc::<ServiceSpec>("type"), |o| text(o, "/spec/type").into()),
            col("Cluster-IP", doc::<ServiceSpec>("clusterIP"), |o| {
                primary_address(o, "/spec/clusterIPs", "", "/spec/clusterIP").into()
            }),
            col("External-IP", doc::<ServiceSpec>("externalIPs"), |o| {
                service_external_ip(o).into()
            }),
            col("Port(s)", doc::<ServiceSpec>("ports"), |o| service_ports(o).into()),
            AGE,
            col("Selector", doc::<ServiceSpec>("selector"), |o| {
                format_labels(map(o, "/spec/selector")).into()
            })
            .wide(),
        ],
        ("", "Endpoints") => vec![
            col("Endpoints", doc::<Endpoints>("subsets"), |o| endpoints(o).into()),
            AGE,
        ],
        ("", "Node") => vec![
            col("Status", Doc::Text("The status of the node"), |o| node_status(o).into()),
            col("Roles", Doc::Text("The roles of the node"), |o| node_roles(o).into()),
            AGE,
            col("Version", doc::<NodeSystemInfo>("kubeletVersion"), |o| {
                text(o, "/status/nodeInfo/kubeletVersion").into()
            }),
            col("Internal-IP", doc::<NodeStatus>("addresses"), |o| {
                node_address(o, "InternalIP")
            })
            .wide(),
            col("External-IP", doc::<NodeStatus>("addresses"), |o| {
                node_address(o, "ExternalIP")
            })
            .wide(),
            col("OS-Image", doc::<NodeSystemInfo>("osImage"), |o| {
                text_or(o, "/status/nodeInfo/osImage", "<unknown>").into()
            })
            .wide(),
            col("Kernel-Version", doc::<NodeSystemInfo>("kernelVersion"), |o| {
                text_or(o, "/status/nodeInfo/kernelVersion", "<unknown>").into()
            })
            .wide(),
            col(
                "Container-Runtime",
                doc::<NodeSystemInfo>("containerRuntimeVersion"),
                |o| text_or(o, "/status/nodeInfo/containerRuntimeVersion", "<unknown>").into(),
            )
            .wide(),
        ],
        ("", "PersistentVolume") => vec![
            col("Capacity", doc::<PersistentVolumeSpec>("capacity"), |o| {
                quantity(o, "/spec/capacity/storage").into()
            }),
            col("Access Modes", doc::<PersistentVolumeSpec>("accessModes"), |o| {
                access_modes(list(o, "/spec/accessModes")).into()
            }),
            col(
                "Reclaim Policy",
                doc::<PersistentVolumeSpec>("persistentVolumeReclaimPolicy"),
                |o| text(o, "/spec/persistentVolumeReclaimPolicy").into(),
            ),
            col("Status", doc::<PersistentVolumeStatus>("phase"), phase),
            col("Claim", doc::<PersistentVolumeSpec>("claimRef"), |o| {
                match o.pointer("/spec/claimRef").filter(|r| !r.is_null()) {
                    Some(r) => format!("{}/{}", text(r, "/namespace"), text(r, "/name")).into(),
                    None => "".into(),
                }
            }),
            col("StorageClass", Doc::Text("StorageClass of the pv"), storage_class),
            col(
                "VolumeAttributesClass",
                Doc::Text("VolumeAttributesClass of the pv"),
                |o| text_or(o, "/spec/volumeAttributesClassName", "<unset>").into(),
            ),
            col("Reason", doc::<PersistentVolumeStatus>("reason"), |o| {
                text(o, "/status/reason").into()
            }),
            AGE,
            col("VolumeMode", doc::<PersistentVolumeSpec>("volumeMode"), |o| {
                text_or(o, "/spec/volumeMode", "<unset>").into()
            })
            .wide(),
        ],
        ("", "PersistentVolumeClaim") => vec![
            col("Status", doc::<PersistentVolumeClaimStatus>("phase"), phase),
            col("Volume", doc::<PersistentVolumeClaimSpec>("volumeName"), |o| {
                text(o, "/spec/volumeName").into()
            }),
            col("Capacity", doc::<PersistentVolumeClaimStatus>("capacity"), |o| {
                match text(o, "/spec/volumeName") {
                    "" => "".into(),
                    _ => quantity(o, "/status/capacity/storage").into(),
                }
            }),
            col(
                "Access Modes",
                doc::<PersistentVolumeClaimStatus>("accessModes"),
                |o| match text(o, "/spec/volumeName") {
                    "" => "".into(),
                    _ => access_modes(list(o, "/status/accessModes")).into(),
                },
            ),
            col("StorageClass", Doc::Text("StorageClass of the pvc"), storage_class),
            col(
                "VolumeAttributesClass",
                Doc::Text("VolumeAttributesClass of the pvc"),
                |o| text_or(o, "/spec/volumeAttributesClassName", "<unset>").into(),
            ),
            AGE,
            col("VolumeMode", doc::<PersistentVolumeClaimSpec>("volumeMode"), |o| {
                text_or(o, "/spec/volumeMode", "<unset>").into()
            })
            .wide(),
        ],
        ("", "ReplicationController") => replication_controller(),
        ("", "ResourceQuota") => vec![
            col("Request", Doc::Text("Request represents a minimum amount of cpu/memory that a container may consume."), |o| quota(o, false)),
            col("Limit", Doc::Text("Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node."), |o| quota(o, true)),
            AGE,
        ],
        ("", "PodTemplate") => {
            // The same columns controllers show with -o wide, shown by default here.
            let [containers, images] = template_columns!("/template/spec");
            vec![
                Column {
                    priority: 0,
                    ..containers
                },
                Column {
                    priority: 0,
                    ..images
                },
                col(
                    "Pod Labels",
                    Doc::Text("The labels for the pod template."),
                    |o| format_labels(map(o, "/template/metadata/labels")).into(),
                ),
            ]
        }
        _ => return None,
    };
    Some(columns)
}

#[cfg(test)]
mod tests {
    use crate::api::table::tests::{cells_of, headers, strings};
    use serde_json::json;

    #[test]
    fn services_show_addresses_and_ports() {
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.5",
            "externalIPs": ["1.2.3.4"], "selector": {"app": "web"},
            "ports": [{"port": 443, "nodePort": 30443, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example.com"}]}}});
        assert_eq!(
            strings(&cells_of("", "v1", "services", lb)),
            [
                "lb",
                "LoadBalancer",
                "10.43.0.5",
                "5.6.7.8,lb.example.com,1.2.3.4",
                "443:30443/TCP",
                "<unknown>",
                "app=web"
            ]
        );
        let pending = json!({"metadata": {"name": "p"}, "spec": {"type": "LoadBalancer", "clusterIPs": ["fd00::1"]}});
        assert_eq!(
            strings(&cells_of("", "v1", "services", pending))[1..5],
            ["LoadBalancer", "fd00::1", "<pending>", "<none>"]
        );
        let external = json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        assert_eq!(
            strings(&cells_of("", "v1", "services", external))[2..4],
            ["<none>", "db.example.com"]
        );
    }

    #[test]
    fn nodes_show_status_roles_and_system_info() {
        let node = json!({"metadata": {"name": "n2", "labels": {"node-role.kubernetes.io/worker": "", "kubernetes.io/role": "gpu"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}], "nodeInfo": {"kubeletVersion": "v1.33.1"},
                       "addresses": [{"type": "ExternalIP", "address": "203.0.113.9"}]}});
        assert_eq!(
            strings(&cells_of("", "v1", "nodes", node)),
            [
                "n2",
                "NotReady,SchedulingDisabled",
                "gpu,worker",
                "<unknown>",
                "v1.33.1",
                "<none>",
                "203.0.113.9",
                "<unknown>",
                "<unknown>",
                "<unknown>"
            ]
        );
        let names: Vec<String> = headers("", "v1", "nodes")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
    }

    #[test]
    fn endpoints_volumes_and_quotas() {
        let ep = json!({"metadata": {"name": "web"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]}]});
        assert_eq!(
            strings(&cells_of("", "v1", "endpoints", ep))[1],
            "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more..."
        );
        let pv = json!({"metadata": {"name": "pv1", "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": "db", "name": "data"}, "storageClassName": "fast", "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}});
        assert_eq!(
            strings(&cells_of("", "v1", "persistentvolumes", pv)),
            [
                "pv1",
                "10Gi",
                "RWO,RWX",
                "Retain",
                "Terminating",
                "db/data",
                "fast",
                "<unset>",
                "",
                "<unknown>",
                "Filesystem"
            ]
        );
        let pending = json!({"metadata": {"name": "data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}});
        assert_eq!(
            strings(&cells_of("", "v1", "persistentvolumeclaims", pending)),
            [
                "data",
                "Pending",
                "",
                "",
                "",
                "",
                "<unset>",
                "<unknown>",
                "<unset>"
            ]
        );
        let quota = json!({"metadata": {"name": "q"}, "status": {"hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "4Gi"},
            "used": {"pods": "3", "limits.memory": "1Gi"}}});
        assert_eq!(
            strings(&cells_of("", "v1", "resourcequotas", quota))[1..3],
            ["pods: 3/10, requests.cpu: 0/2", "limits.memory: 1Gi/4Gi"]
        );
        let template = json!({"metadata": {"name": "t"}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}});
        assert_eq!(
            strings(&cells_of("", "v1", "podtemplates", template)),
            ["t", "a,b", "x,y", "app=web"]
        );
        assert!(headers("", "v1", "podtemplates")
            .iter()
            .all(|(_, priority)| *priority == 0));
        let secret = json!({"metadata": {"name": "s"}, "data": {"a": "eA=="}});
        assert_eq!(
            strings(&cells_of("", "v1", "secrets", secret))[1..3],
            ["Opaque", "1"]
        );
    }
}
