//! Tables of the cluster-infrastructure kinds: networking, discovery, RBAC bindings,
//! certificates, coordination, scheduling and storage.

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestSpec, CertificateSigningRequestStatus,
};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{IPAddressSpec, NetworkPolicySpec, ServiceCIDRSpec};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::{
    CSIDriverSpec, CSIStorageCapacity, StorageClass, VolumeAttachmentSource, VolumeAttachmentSpec,
    VolumeAttachmentStatus,
};
use serde_json::{json, Value};

use super::cells::{
    flag, format_selector, list, list_with_more, load_balancer_points, map, scalar, text, text_or,
};
use super::{col, doc, Column, Doc, AGE, NAME};
use crate::api::object::human_duration;

/// Up to three hosts of an ingress's rules, `*` when none names a host (`formatHosts`:
/// the "more" count is of rules, not hosts).
fn ingress_hosts(ingress: &Value) -> Value {
    let rules = list(ingress, "/spec/rules");
    let mut hosts: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        more = more || hosts.len() == 3;
        let host = text(rule, "/host");
        if !more && !host.is_empty() {
            hosts.push(host);
        }
    }
    match (hosts.is_empty(), more) {
        (true, _) => "*".into(),
        (false, true) => format!("{} + {} more...", hosts.join(","), rules.len() - 3).into(),
        (false, false) => hosts.join(",").into(),
    }
}

fn ingress_class_parameters(class: &Value) -> Value {
    let Some(parameters) = class.pointer("/spec/parameters").filter(|p| !p.is_null()) else {
        return "<none>".into();
    };
    let mut kind = text(parameters, "/kind").to_string();
    if let Some(group) = parameters.get("apiGroup").and_then(Value::as_str) {
        kind = format!("{kind}.{group}");
    }
    format!("{kind}/{}", text(parameters, "/name")).into()
}

fn slice_ports(slice: &Value) -> Value {
    let ports: Vec<String> = list(slice, "/ports")
        .iter()
        .map(|p| {
            match (
                p.get("port").and_then(Value::as_i64),
                p.get("name").and_then(Value::as_str),
            ) {
                (Some(port), _) => port.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => "*".to_string(),
            }
        })
        .collect();
    list_with_more(&ports, 3).into()
}

fn slice_endpoints(slice: &Value) -> Value {
    let addresses: Vec<String> = list(slice, "/endpoints")
        .iter()
        .flat_map(|e| list(e, "/addresses"))
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    list_with_more(&addresses, 3).into()
}

/// `resource.group/namespace/name` of the object an IP address is allocated to.
fn ip_address_parent(address: &Value) -> Value {
    let Some(parent) = address.pointer("/spec/parentRef").filter(|p| !p.is_null()) else {
        return "<none>".into();
    };
    let mut name = match text(parent, "/group") {
        "" => text(parent, "/resource").to_lowercase(),
        group => format!("{}.{group}", text(parent, "/resource")).to_lowercase(),
    };
    if !text(parent, "/namespace").is_empty() {
        name = format!("{name}/{}", text(parent, "/namespace"));
    }
    format!("{name}/{}", text(parent, "/name")).into()
}

/// Users, groups and service accounts of a binding's subjects, each `, `-joined.
fn subjects(binding: &Value, kind: &str) -> Value {
    let names: Vec<String> = list(binding, "/subjects")
        .iter()
        .filter(|s| text(s, "/kind") == kind)
        .map(|s| match kind {
            "ServiceAccount" if !text(s, "/namespace").is_empty() => {
                format!("{}/{}", text(s, "/namespace"), text(s, "/name"))
            }
            _ => text(s, "/name").to_string(),
        })
        .collect();
    names.join(", ").into()
}

fn binding(what: &'static str) -> Vec<Column> {
    let (users, groups, accounts) = match what {
        "roleBinding" => (
            Doc::Text("Users in the roleBinding"),
            Doc::Text("Groups in the roleBinding"),
            Doc::Text("ServiceAccounts in the roleBinding"),
        ),
        _ => (
            Doc::Text("Users in the clusterRoleBinding"),
            Doc::Text("Groups in the clusterRoleBinding"),
            Doc::Text("ServiceAccounts in the clusterRoleBinding"),
        ),
    };
    let role = match what {
        "roleBinding" => doc::<RoleBinding>("roleRef"),
        _ => doc::<ClusterRoleBinding>("roleRef"),
    };
    vec![
        col("Role", role, |o| {
            format!("{}/{}", text(o, "/roleRef/kind"), text(o, "/roleRef/name")).into()
        }),
        AGE,
        col("Users", users, |o| subjects(o, "User")).wide(),
        col("Groups", groups, |o| subjects(o, "Group")).wide(),
        col("ServiceAccounts", accounts, |o| {
            subjects(o, "ServiceAccount")
        })
        .wide(),
    ]
}

/// Approved / Denied / Pending, then `,Failed` and `,Issued` (`extractCSRStatus`).
fn csr_condition(csr: &Value) -> Value {
    let has = |kind: &str| {
        list(csr, "/status/conditions")
            .iter()
            .any(|c| text(c, "/type") == kind)
    };
    let mut status = if has("Denied") {
        "Denied".to_string()
    } else if has("Approved") {
        "Approved".to_string()
    } else {
        "Pending".to_string()
    };
    if has("Failed") {
        status.push_str(",Failed");
    }
    if !text(csr, "/status/certificate").is_empty() {
        status.push_str(",Issued");
    }
    status.into()
}

fn is_default_class(class: &Value) -> bool {
    map(class, "/metadata/annotations").is_some_and(|a| {
        [
            "storageclass.kubernetes.io/is-default-class",
            "storageclass.beta.kubernetes.io/is-default-class",
        ]
        .iter()
        .any(|key| a.get(*key).and_then(Value::as_str) == Some("true"))
    })
}

fn storage_class() -> Vec<Column> {
    vec![
        Column {
            cell: |o| {
                let name = text(o, "/metadata/name");
                if is_default_class(o) {
                    format!("{name} (default)").into()
                } else {
                    name.into()
                }
            },
            ..NAME
        },
        col("Provisioner", doc::<StorageClass>("provisioner"), |o| {
            text(o, "/provisioner").into()
        }),
        col("ReclaimPolicy", doc::<StorageClass>("reclaimPolicy"), |o| {
            text_or(o, "/reclaimPolicy", "Delete").into()
        }),
        col(
            "VolumeBindingMode",
            doc::<StorageClass>("volumeBindingMode"),
            |o| text_or(o, "/volumeBindingMode", "Immediate").into(),
        ),
        col(
            "AllowVolumeExpansion",
            doc::<StorageClass>("allowVolumeExpansion"),
            |o| json!(flag(o, "/allowVolumeExpansion", false)),
        ),
        AGE,
    ]
}

fn csi_driver() -> Vec<Column> {
    let boolean = |name, field, pointer: fn(&Value) -> Value| {
        col(name, doc::<CSIDriverSpec>(field), pointer).typed("boolean")
    };
    vec![
        boolean("AttachRequired", "attachRequired", |o| {
            json!(flag(o, "/spec/attachRequired", true))
        }),
        boolean("PodInfoOnMount", "podInfoOnMount", |o| {
            json!(flag(o, "/spec/podInfoOnMount", false))
        }),
        boolean("StorageCapacity", "storageCapacity", |o| {
            json!(flag(o, "/spec/storageCapacity", false))
        }),
        col(
            "TokenRequests",
            doc::<CSIDriverSpec>("tokenRequests"),
            |o| match o.pointer("/spec/tokenRequests").and_then(Value::as_array) {
                None => "<unset>".into(),
                Some(requests) => requests
                    .iter()
                    .map(|r| text(r, "/audience"))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
            },
        ),
        boolean("RequiresRepublish", "requiresRepublish", |o| {
            json!(flag(o, "/spec/requiresRepublish", false))
        }),
        col("Modes", doc::<CSIDriverSpec>("volumeLifecycleModes"), |o| {
            let modes: Vec<&str> = list(o, "/spec/volumeLifecycleModes")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if modes.is_empty() {
                "<none>".into()
            } else {
                modes.join(",").into()
            }
        }),
        AGE,
    ]
}

pub(super) fn columns(group: &str, kind: &str) -> Option<Vec<Column>> {
    let columns = match (group, kind) {
        ("networking.k8s.io", "Ingress") => vec![
            col("Class", Doc::Text("The name of the IngressClass resource that should be used for additional configuration"), |o| {
                text_or(o, "/spec/ingressClassName", "<none>").into()
            }),
            col("Hosts", Doc::Text("Hosts that incoming requests are matched against before the ingress rule"), ingress_hosts),
            col("Address", Doc::Text("Address is a list containing ingress points for the load-balancer"), |o| {
                load_balancer_points(&o["status"]).into()
            }),
            col("Ports", Doc::Text("Ports of TLS configurations that open"), |o| {
                if list(o, "/spec/tls").is_empty() { "80" } else { "80, 443" }.into()
            }),
            AGE,
        ],
        ("networking.k8s.io", "IngressClass") => vec![
            col("Controller", Doc::Text("Controller that is responsible for handling this class"), |o| {
                text(o, "/spec/controller").into()
            }),
            col("Parameters", Doc::Text("A reference to a resource with additional parameters"), ingress_class_parameters),
            AGE,
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            col("Pod-Selector", doc::<NetworkPolicySpec>("podSelector"), |o| {
                format_selector(Some(o.pointer("/spec/podSelector").unwrap_or(&json!({})))).into()
            }),
            AGE,
        ],
        ("networking.k8s.io", "IPAddress") => vec![col(
            "ParentRef",
            doc::<IPAddressSpec>("parentRef"),
            ip_address_parent,
        )],
        ("networking.k8s.io", "ServiceCIDR") => vec![
            col("CIDRs", doc::<ServiceCIDRSpec>("cidrs"), |o| {
                let cidrs: Vec<&str> = list(o, "/spec/cidrs")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                cidrs.join(",").into()
            }),
            AGE,
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            col("AddressType", doc::<EndpointSlice>("addressType"), |o| text(o, "/addressType").into()),
            col("Ports", doc::<EndpointSlice>("ports"), slice_ports),
            col("Endpoints", doc::<EndpointSlice>("endpoints"), slice_endpoints),
            AGE,
        ],
        ("rbac.authorization.k8s.io", "RoleBinding") => binding("roleBinding"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => binding("clusterRoleBinding"),
        ("certificates.k8s.io", "CertificateSigningRequest") => vec![
            AGE,
            col("SignerName", doc::<CertificateSigningRequestSpec>("signerName"), |o| {
                text_or(o, "/spec/signerName", "<none>").into()
            }),
            col("Requestor", doc::<CertificateSigningRequestSpec>("request"), |o| {
                text(o, "/spec/username").into()
            }),
            col("RequestedDuration", doc::<CertificateSigningRequestSpec>("expirationSeconds"), |o| {
                match o.pointer("/spec/expirationSeconds").and_then(Value::as_i64) {
                    Some(seconds) => human_duration(seconds).into(),
                    None => "<none>".into(),
                }
            }),
            col("Condition", doc::<CertificateSigningRequestStatus>("conditions"), csr_condition),
        ],
        ("coordination.k8s.io", "Lease") => vec![
            col("Holder", doc::<LeaseSpec>("holderIdentity"), |o| text(o, "/spec/holderIdentity").into()),
            AGE,
        ],
        ("scheduling.k8s.io", "PriorityClass") => vec![
            col("Value", doc::<PriorityClass>("value"), |o| json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)))
                .typed("integer"),
            col("Global-Default", doc::<PriorityClass>("globalDefault"), |o| {
                json!(flag(o, "/globalDefault", false))
            })
            .typed("boolean"),
            AGE,
            col("PreemptionPolicy", doc::<PriorityClass>("preemptionPolicy"), |o| {
                text(o, "/preemptionPolicy").into()
            }),
        ],
        ("storage.k8s.io", "StorageClass") => storage_class(),
        ("storage.k8s.io", "CSIDriver") => csi_driver(),
        ("storage.k8s.io", "CSINode") => vec![
            col("Drivers", Doc::Text("Drivers indicates the number of CSI drivers registered on the node"), |o| {
                json!(list(o, "/spec/drivers").len())
            })
            .typed("integer"),
            AGE,
        ],
        ("storage.k8s.io", "CSIStorageCapacity") => vec![
            col("StorageClassName", doc::<CSIStorageCapacity>("storageClassName"), |o| {
                text(o, "/storageClassName").into()
            }),
            col("Capacity", doc::<CSIStorageCapacity>("capacity"), |o| {
                scalar(o.get("capacity")).unwrap_or_else(|| "<unset>".into()).into()
            }),
        ],
        ("storage.k8s.io", "VolumeAttachment") => vec![
            Column { format: "name", ..col("Attacher", doc::<VolumeAttachmentSpec>("attacher"), |o| text(o, "/spec/attacher").into()) },
            col("PV", doc::<VolumeAttachmentSource>("persistentVolumeName"), |o| {
                text(o, "/spec/source/persistentVolumeName").into()
            }),
            col("Node", doc::<VolumeAttachmentSpec>("nodeName"), |o| text(o, "/spec/nodeName").into()),
            col("Attached", doc::<VolumeAttachmentStatus>("attached"), |o| {
                json!(flag(o, "/status/attached", false))
            })
            .typed("boolean"),
            AGE,
        ],
        _ => return None,
    };
    Some(columns)
}

#[cfg(test)]
mod tests {
    use crate::api::table::tests::{cells_of, strings};
    use serde_json::json;

    #[test]
    fn networking_kinds() {
        let ingress = json!({"metadata": {"name": "web"}, "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example.com"]}],
            "rules": [{"host": "a.example.com"}, {}, {"host": "b.example.com"}, {"host": "c.example.com"}, {"host": "d.example.com"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
        assert_eq!(
            strings(&cells_of("networking.k8s.io", "v1", "ingresses", ingress)),
            [
                "web",
                "nginx",
                "a.example.com,b.example.com,c.example.com + 2 more...",
                "192.0.2.10",
                "80, 443",
                "<unknown>"
            ]
        );
        let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"port": 80}, {"name": "metrics"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
        assert_eq!(
            strings(&cells_of("discovery.k8s.io", "v1", "endpointslices", slice)),
            [
                "web-abc",
                "IPv4",
                "80,metrics",
                "10.0.0.1,10.0.0.2",
                "<unknown>"
            ]
        );
        let policy = json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}});
        assert_eq!(
            strings(&cells_of(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                policy
            ))[1],
            "<none>"
        );
    }

    #[test]
    fn service_addresses() {
        // Served once the API allocates Service addresses; the printers do not need it.
        let cells = |kind: &str, object: &serde_json::Value| -> Vec<serde_json::Value> {
            crate::api::table::columns("networking.k8s.io", kind)
                .iter()
                .map(|c| (c.cell)(object))
                .collect()
        };
        let address = json!({"metadata": {"name": "10.43.0.1"}, "spec": {"parentRef":
            {"group": "", "resource": "services", "namespace": "default", "name": "kubernetes"}}});
        assert_eq!(
            cells("IPAddress", &address),
            [json!("10.43.0.1"), json!("services/default/kubernetes")]
        );
        let cidr = json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.43.0.0/16", "fd00:43::/112"]}});
        assert_eq!(
            cells("ServiceCIDR", &cidr)[..2],
            [json!("kubernetes"), json!("10.43.0.0/16,fd00:43::/112")]
        );
        for kind in ["IPAddress", "ServiceCIDR"] {
            for column in crate::api::table::columns("networking.k8s.io", kind) {
                assert!(
                    !column.description.render().is_empty(),
                    "{kind} {}",
                    column.name
                );
            }
        }
    }

    #[test]
    fn rbac_and_certificates() {
        let binding = json!({"metadata": {"name": "view"}, "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}, {"kind": "Group", "name": "devs"},
                         {"kind": "ServiceAccount", "name": "ci", "namespace": "build"}]});
        assert_eq!(
            strings(&cells_of(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                binding
            )),
            [
                "view",
                "ClusterRole/view",
                "<unknown>",
                "alice, bob",
                "devs",
                "build/ci"
            ]
        );
        let csr = json!({"metadata": {"name": "node-csr"}, "spec": {"signerName": "kubernetes.io/kubelet-serving", "username": "system:node:n1",
            "expirationSeconds": 86400, "request": ""}, "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "Y2VydA=="}});
        assert_eq!(
            strings(&cells_of(
                "certificates.k8s.io",
                "v1",
                "certificatesigningrequests",
                csr
            )),
            [
                "node-csr",
                "<unknown>",
                "kubernetes.io/kubelet-serving",
                "system:node:n1",
                "24h",
                "Approved,Issued"
            ]
        );
    }

    #[test]
    fn storage_and_scheduling_kinds() {
        let class = json!({"metadata": {"name": "local", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"});
        assert_eq!(
            cells_of("storage.k8s.io", "v1", "storageclasses", class),
            [
                json!("local (default)"),
                json!("rancher.io/local-path"),
                json!("Delete"),
                json!("WaitForFirstConsumer"),
                json!(false),
                json!("<unknown>")
            ]
        );
        let driver = json!({"metadata": {"name": "csi.example.com"}, "spec": {"podInfoOnMount": true, "volumeLifecycleModes": ["Persistent", "Ephemeral"]}});
        assert_eq!(
            cells_of("storage.k8s.io", "v1", "csidrivers", driver),
            [
                json!("csi.example.com"),
                json!(true),
                json!(true),
                json!(false),
                json!("<unset>"),
                json!(false),
                json!("Persistent,Ephemeral"),
                json!("<unknown>")
            ]
        );
        let priority = json!({"metadata": {"name": "high"}, "value": 1000000, "globalDefault": false, "preemptionPolicy": "Never"});
        assert_eq!(
            cells_of("scheduling.k8s.io", "v1", "priorityclasses", priority),
            [
                json!("high"),
                json!(1000000),
                json!(false),
                json!("<unknown>"),
                json!("Never")
            ]
        );
        let lease = json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}});
        assert_eq!(
            strings(&cells_of("coordination.k8s.io", "v1", "leases", lease)),
            ["n1", "n1", "<unknown>"]
        );
    }
}
