//! The scheduler's view of the cluster for one decision: nodes and the pods bound to each.
//!
//! Like upstream's `NodeInfo` cache, each node carries the sum of its pods' requests (real
//! and "non-zero", see [`super::resources`]), the host ports in use and its pod count, so
//! filters and scorers never walk every pod to answer "does it fit". Pods that finished
//! (`Succeeded`/`Failed`) hold nothing and are left out, as upstream's informer does.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::quantity;
use super::resources::{pod_requests, Missing, Resources, PODS};
use super::selector::{selector_matches, Labels};

/// A host port a pod takes on its node: (host IP, protocol, port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

impl HostPort {
    /// Two host ports clash when protocol and port agree and either binds every address
    /// (upstream only treats `0.0.0.0`, the default, as binding every address).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip == "0.0.0.0";
        self.protocol == other.protocol
            && self.port == other.port
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// The host ports a pod asks for (its containers and sidecars; plain init containers
/// have exited before the pod runs).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|hp| *hp > 0)?;
            let ip = p.host_ip.clone().filter(|ip| !ip.is_empty());
            Some(HostPort {
                ip: ip.unwrap_or_else(|| "0.0.0.0".into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// One node and what is already on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Node,
    pub pods: Vec<Pod>,
    /// What the node offers: `status.allocatable`.
    pub allocatable: Resources,
    /// How many pods the node takes (`allocatable.pods`).
    pub allowed_pods: i64,
    /// Sum of the bound pods' requests.
    pub requested: Resources,
    /// Same, with missing cpu/memory requests counted at their scoring defaults.
    pub non_zero_requested: Resources,
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    pub fn new(node: Node) -> Self {
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let allowed_pods = alloc
            .and_then(|a| a.get(PODS))
            .map(quantity::value)
            .unwrap_or(0);
        NodeInfo {
            allocatable: alloc.map(Resources::from_list).unwrap_or_default(),
            allowed_pods,
            node,
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            used_ports: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &Labels {
        static EMPTY: Labels = BTreeMap::new();
        self.node.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn add_pod(&mut self, pod: Pod) {
        self.requested.add(&pod_requests(&pod, Missing::Zero));
        self.non_zero_requested
            .add(&pod_requests(&pod, Missing::Default));
        self.used_ports.extend(host_ports(&pod));
        self.pods.push(pod);
    }

    /// Takes a pod (by namespace and name) off the node, as preemption does when it tries
    /// evicting it. Returns the pod if it was there.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Pod> {
        let at = self
            .pods
            .iter()
            .position(|p| pod_key(p) == (namespace, name))?;
        let pod = self.pods.remove(at);
        self.requested.sub(&pod_requests(&pod, Missing::Zero));
        self.non_zero_requested
            .sub(&pod_requests(&pod, Missing::Default));
        for port in host_ports(&pod) {
            if let Some(i) = self.used_ports.iter().position(|p| *p == port) {
                self.used_ports.remove(i);
            }
        }
        Some(pod)
    }
}

/// A pod's (namespace, name).
pub fn pod_key(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether a pod has finished and so holds no resources.
fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The selector of a Service, ReplicationController, ReplicaSet or StatefulSet: pods it
/// selects are spread apart by default (upstream's `DefaultSelector`).
#[derive(Debug, Clone)]
pub struct WorkloadSelector {
    pub namespace: String,
    pub selector: LabelSelector,
}

/// All nodes, with their pods, and what a few plugins need beyond them: namespace labels
/// for pod affinity's `namespaceSelector`, workload selectors for default spreading.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeInfo>,
    pub namespace_labels: HashMap<String, Labels>,
    pub workload_selectors: Vec<WorkloadSelector>,
    /// Pending pods nominated to a node by preemption, not yet bound.
    pub nominated: Vec<Pod>,
}

impl Snapshot {
    /// Builds the view; finished pods, and pods neither bound nor nominated to a known
    /// node, are left out.
    pub fn new(nodes: Vec<Node>, pods: Vec<Pod>) -> Self {
        let mut snap = Snapshot {
            nodes: nodes.into_iter().map(NodeInfo::new).collect(),
            namespace_labels: HashMap::new(),
            workload_selectors: Vec::new(),
            nominated: Vec::new(),
        };
        let index: HashMap<String, usize> = snap
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name().to_string(), i))
            .collect();
        for pod in pods {
            if terminal(&pod) {
                continue;
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let nominated = pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref());
            match (node, nominated) {
                (Some(n), _) => {
                    if let Some(&i) = index.get(n) {
                        snap.nodes[i].add_pod(pod);
                    }
                }
                (None, Some(n)) if index.contains_key(n) => snap.nominated.push(pod),
                _ => {}
            }
        }
        snap
    }

    /// Pods nominated to `node` by an earlier preemption that `pod` must leave room for:
    /// those of at least its priority, other than itself (upstream's
    /// `RunFilterPluginsWithNominatedPods`).
    pub fn nominated_for<'s>(
        &'s self,
        node: &'s str,
        pod: &'s Pod,
    ) -> impl Iterator<Item = &'s Pod> {
        let prio = |p: &Pod| p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        self.nominated.iter().filter(move |p| {
            p.status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                == Some(node)
                && prio(p) >= prio(pod)
                && pod_key(p) != pod_key(pod)
        })
    }

    /// Records namespace labels for `namespaceSelector` in pod (anti-)affinity terms.
    pub fn with_namespace_labels(mut self, labels: HashMap<String, Labels>) -> Self {
        self.namespace_labels = labels;
        self
    }

    /// Records the selectors of Services and workloads, for default topology spreading.
    pub fn with_workload_selectors(mut self, selectors: Vec<WorkloadSelector>) -> Self {
        self.workload_selectors = selectors;
        self
    }

    /// All selectors in the pod's namespace that select it, ANDed into one; `None` when
    /// no Service or workload selects the pod. Empty selectors select nothing here.
    pub fn default_spread_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let empty = Labels::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut merged: Option<LabelSelector> = None;
        for w in &self.workload_selectors {
            let sel = &w.selector;
            let has_terms = sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || sel
                    .match_expressions
                    .as_ref()
                    .is_some_and(|e| !e.is_empty());
            if w.namespace != ns || !has_terms || !selector_matches(sel, labels) {
                continue;
            }
            let m = merged.get_or_insert_with(LabelSelector::default);
            if let Some(l) = &sel.match_labels {
                m.match_labels
                    .get_or_insert_with(Default::default)
                    .extend(l.clone());
            }
            if let Some(e) = &sel.match_expressions {
                m.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(e.clone());
            }
        }
        merged
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeInfo> {
        self.nodes.iter_mut().find(|n| n.name() == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scheduler::resources::tests::{container, list};
    use k8s_openapi::api::core::v1::{ContainerPort, NodeStatus, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn node(name: &str, alloc: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [("kubernetes.io/hostname".to_string(), name.to_string())]
                        .into_iter()
                        .collect(),
                ),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(list(alloc)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn pod(name: &str, node: Option<&str>, requests: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                containers: vec![container("c", requests)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A node's view with its pods placed.
    pub(crate) fn info(n: Node, pods: Vec<Pod>) -> NodeInfo {
        let mut i = NodeInfo::new(n);
        for p in pods {
            i.add_pod(p);
        }
        i
    }

    /// A pod labelled `app=<app>`.
    pub(crate) fn labelled(name: &str, node: Option<&str>, app: &str) -> Pod {
        let mut p = pod(name, node, &[]);
        p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        p
    }

    /// Nodes a1 and a2 in zone a, b1 in zone b, and x without a zone label.
    pub(crate) fn zoned_snapshot(pods: Vec<Pod>) -> Snapshot {
        let zoned = |name: &str, zone: Option<&str>| {
            let mut n = node(name, &[("pods", "10")]);
            if let Some(z) = zone {
                n.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert("zone".into(), z.into());
            }
            n
        };
        Snapshot::new(
            vec![
                zoned("a1", Some("a")),
                zoned("a2", Some("a")),
                zoned("b1", Some("b")),
                zoned("x", None),
            ],
            pods,
        )
    }

    pub(crate) fn with_host_port(mut p: Pod, port: i32, ip: Option<&str>) -> Pod {
        p.spec.as_mut().unwrap().containers[0].ports = Some(vec![ContainerPort {
            container_port: port,
            host_port: Some(port),
            host_ip: ip.map(Into::into),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn sums_bound_pods_and_skips_finished_ones() {
        let mut done = pod("done", Some("n1"), &[("cpu", "1")]);
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        let snap = Snapshot::new(
            vec![node("n1", &[("cpu", "4"), ("pods", "110")])],
            vec![
                pod("a", Some("n1"), &[("cpu", "500m")]),
                pod("b", Some("n1"), &[]),
                pod("pending", None, &[("cpu", "1")]),
                done,
            ],
        );
        let n = snap.node("n1").unwrap();
        assert_eq!(n.pods.len(), 2);
        assert_eq!(n.allowed_pods, 110);
        assert_eq!(n.allocatable.milli_cpu, 4000);
        assert_eq!(n.requested.milli_cpu, 500);
        assert_eq!(n.non_zero_requested.milli_cpu, 600);
    }

    #[test]
    fn removing_a_pod_gives_back_its_resources_and_ports() {
        let mut n = NodeInfo::new(node("n1", &[("cpu", "1")]));
        n.add_pod(with_host_port(
            pod("a", Some("n1"), &[("cpu", "1")]),
            80,
            None,
        ));
        assert_eq!(n.used_ports.len(), 1);
        assert!(n.remove_pod("default", "a").is_some());
        assert!(n.remove_pod("default", "a").is_none());
        assert_eq!(n.requested.milli_cpu, 0);
        assert!(n.used_ports.is_empty());
    }

    #[test]
    fn host_port_conflicts() {
        let hp = |ip: &str, proto: &str, port| HostPort {
            ip: ip.into(),
            protocol: proto.into(),
            port,
        };
        assert!(hp("0.0.0.0", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.1", "TCP", 80)));
        assert!(!hp("10.0.0.1", "TCP", 80).conflicts(&hp("10.0.0.2", "TCP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "UDP", 80)));
        assert!(!hp("0.0.0.0", "TCP", 80).conflicts(&hp("0.0.0.0", "TCP", 81)));
    }

    #[test]
    fn default_spread_selector_ands_the_selectors_that_select_the_pod() {
        let sel = |ns: &str, pairs: &[(&str, &str)]| WorkloadSelector {
            namespace: ns.into(),
            selector: LabelSelector {
                match_labels: Some(
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
        };
        let snap = Snapshot::default().with_workload_selectors(vec![
            sel("default", &[("app", "web")]),
            sel("default", &[("app", "web"), ("tier", "fe")]),
            sel("default", &[("app", "db")]),
            sel("prod", &[("app", "web")]),
            sel("default", &[]),
        ]);
        let mut p = labelled("p", None, "web");
        assert_eq!(
            snap.default_spread_selector(&p),
            Some(sel("default", &[("app", "web")]).selector)
        );
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "fe".into());
        assert_eq!(
            snap.default_spread_selector(&p),
            Some(sel("default", &[("app", "web"), ("tier", "fe")]).selector)
        );
        assert_eq!(
            snap.default_spread_selector(&labelled("q", None, "cache")),
            None
        );
    }
}
