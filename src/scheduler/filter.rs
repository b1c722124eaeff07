//! Filters: may this pod run on this node? One function per upstream filter plugin, run in
//! the default profile's order, stopping at the first that fails (as upstream's framework).
//!
//! Each failure carries upstream's reason text (counted per node in the "0/N nodes are
//! available" message) and whether preemption could help: `UnschedulableAndUnresolvable`
//! failures (a taint, a selector, a missing label) make a node useless to preemption.
//!
//! A node's Ready condition is not looked at here, as upstream: the node lifecycle
//! controller turns NotReady/Unknown into the `node.kubernetes.io/not-ready` and
//! `node.kubernetes.io/unreachable` NoSchedule taints, which [`taint_toleration`] enforces
//! (and which the DefaultTolerationSeconds admission lets pods tolerate for NoExecute only).

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use super::interpod;
use super::resources::{pod_requests, Missing, Resources};
use super::selector::{term_matches, tolerated};
use super::snapshot::{host_ports, HostPort, NodeInfo, Snapshot};
use super::spread;
use super::volumes::VolumeFilter;

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_TOO_MANY_PODS: &str = "Too many pods";

/// Why a node was filtered out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Upstream's reason strings; NodeResourcesFit may give several.
    pub reasons: Vec<String>,
    /// Upstream's `UnschedulableAndUnresolvable`: evicting pods would not help.
    pub unresolvable: bool,
}

impl Failure {
    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Failure {
            reasons: vec![reason.into()],
            unresolvable: false,
        }
    }

    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Failure {
            reasons: vec![reason.into()],
            unresolvable: true,
        }
    }
}

pub type Status = Result<(), Failure>;

/// What the filters need to know about the pod and the cluster, computed once per pod
/// (upstream's PreFilter state).
pub struct Prepared<'a> {
    pub pod: &'a Pod,
    pub requests: Resources,
    pub ports: Vec<HostPort>,
    pub affinity: interpod::FilterState,
    pub spread: spread::FilterState,
    /// What the pod's PersistentVolumeClaims ask of a node.
    pub volumes: VolumeFilter,
}

impl<'a> Prepared<'a> {
    pub fn new(pod: &'a Pod, snapshot: &Snapshot) -> Self {
        Prepared {
            pod,
            requests: pod_requests(pod, Missing::Zero),
            ports: host_ports(pod),
            affinity: interpod::FilterState::new(pod, snapshot),
            spread: spread::FilterState::new(pod, snapshot),
            volumes: VolumeFilter::default(),
        }
    }

    pub fn with_volumes(mut self, volumes: VolumeFilter) -> Self {
        self.volumes = volumes;
        self
    }
}

/// Runs every filter in the default profile's order.
pub fn run(prep: &Prepared, node: &NodeInfo) -> Status {
    node_unschedulable(prep.pod, node)?;
    node_name(prep.pod, node)?;
    taint_toleration(prep.pod, node)?;
    node_affinity(prep.pod, node)?;
    node_ports(&prep.ports, node)?;
    node_resources_fit(&prep.requests, node)?;
    prep.volumes.filter(node)?;
    prep.spread.filter(node)?;
    prep.affinity.filter(node)
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating its unschedulable taint.
pub fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Status {
    let cordoned = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        value: None,
        time_added: None,
    };
    if cordoned && !tolerated(tolerations(pod), &taint) {
        return Err(Failure::unresolvable(ERR_UNSCHEDULABLE));
    }
    Ok(())
}

/// NodeName: a pod naming a node runs there only.
pub fn node_name(pod: &Pod, node: &NodeInfo) -> Status {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(want) if !want.is_empty() && want != node.name() => {
            Err(Failure::unresolvable(ERR_NODE_NAME))
        }
        _ => Ok(()),
    }
}

/// TaintToleration: the first NoSchedule/NoExecute taint the pod does not tolerate
/// rejects the node; PreferNoSchedule taints only lower the score.
pub fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Status {
    let taints = node.node.spec.as_ref().and_then(|s| s.taints.as_deref());
    let untolerated = taints.unwrap_or_default().iter().find(|t| {
        (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tolerations(pod), t)
    });
    match untolerated {
        Some(t) => Err(Failure::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

/// Whether a node satisfies the pod's `nodeSelector` and required node affinity.
pub fn matches_node_selector(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|sel| {
        sel.node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, node.name()))
    });
    selector_ok && affinity_ok
}

/// NodeAffinity: `nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution`.
pub fn node_affinity(pod: &Pod, node: &NodeInfo) -> Status {
    if matches_node_selector(pod, node) {
        Ok(())
    } else {
        Err(Failure::unresolvable(ERR_NODE_AFFINITY))
    }
}

/// NodePorts: every requested host port must be free on the node.
pub fn node_ports(wanted: &[HostPort], node: &NodeInfo) -> Status {
    let clash = wanted
        .iter()
        .any(|w| node.used_ports.iter().any(|u| u.conflicts(w)));
    if clash {
        Err(Failure::unschedulable(ERR_NODE_PORTS))
    } else {
        Ok(())
    }
}

/// NodeResourcesFit: the pod's requests against allocatable minus what is bound. A request
/// above the node's whole allocatable can never fit, so that one is unresolvable.
pub fn node_resources_fit(req: &Resources, node: &NodeInfo) -> Status {
    let mut reasons = Vec::new();
    let mut unresolvable = false;
    if node.pods.len() as i64 + 1 > node.allowed_pods {
        reasons.push(ERR_TOO_MANY_PODS.to_string());
    }
    if !req.is_zero() {
        let alloc = &node.allocatable;
        let used = &node.requested;
        let mut check = |name: &str, want: i64, have: i64, in_use: i64| {
            if want > 0 && want > have - in_use {
                reasons.push(format!("Insufficient {name}"));
                unresolvable |= want > have;
            }
        };
        check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
        check("memory", req.memory, alloc.memory, used.memory);
        check(
            "ephemeral-storage",
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        );
        for (name, want) in &req.scalar {
            check(name, *want, alloc.get(name), used.get(name));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            reasons,
            unresolvable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{info, node, pod, with_host_port};
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec,
    };

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tainted(taints: Vec<Taint>) -> NodeInfo {
        let mut n = node("n1", &[("cpu", "1"), ("pods", "10")]);
        n.spec = Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        });
        info(n, vec![])
    }

    fn toleration(key: &str, effect: &str) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Default::default()
        }
    }

    #[test]
    fn cordoned_nodes_are_unschedulable_unless_tolerated() {
        let mut n = node("n1", &[("pods", "10")]);
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        let n = info(n, vec![]);
        let mut p = pod("p", None, &[]);
        assert_eq!(
            node_unschedulable(&p, &n),
            Err(Failure::unresolvable("node(s) were unschedulable"))
        );
        p.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            "node.kubernetes.io/unschedulable",
            "NoSchedule",
        )]);
        assert_eq!(node_unschedulable(&p, &n), Ok(()));
    }

    #[test]
    fn node_name_must_match() {
        let n = info(node("n1", &[]), vec![]);
        assert_eq!(node_name(&pod("p", Some("n1"), &[]), &n), Ok(()));
        assert_eq!(node_name(&pod("p", None, &[]), &n), Ok(()));
        assert_eq!(
            node_name(&pod("p", Some("n2"), &[]), &n),
            Err(Failure::unresolvable(
                "node(s) didn't match the requested node name"
            ))
        );
    }

    #[test]
    fn untolerated_no_schedule_and_no_execute_taints_reject() {
        let p = pod("p", None, &[]);
        let cp = tainted(vec![taint(
            "node-role.kubernetes.io/control-plane",
            "",
            "NoSchedule",
        )]);
        assert_eq!(
            taint_toleration(&p, &cp),
            Err(Failure::unresolvable(
                "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
            ))
        );
        let gpu = tainted(vec![taint("dedicated", "gpu", "NoExecute")]);
        assert_eq!(
            taint_toleration(&p, &gpu).unwrap_err().reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let soft = tainted(vec![taint("soft", "", "PreferNoSchedule")]);
        assert_eq!(taint_toleration(&p, &soft), Ok(()));
    }

    #[test]
    fn not_ready_and_unreachable_taints_are_enforced_as_upstream() {
        let unreachable = tainted(vec![taint(
            "node.kubernetes.io/unreachable",
            "",
            "NoSchedule",
        )]);
        let mut p = pod("p", None, &[]);
        assert_eq!(
            taint_toleration(&p, &unreachable).unwrap_err().reasons,
            vec!["node(s) had untolerated taint {node.kubernetes.io/unreachable: }"]
        );
        // The NoExecute toleration every pod gets by admission does not cover NoSchedule.
        p.spec.as_mut().unwrap().tolerations = Some(vec![toleration(
            "node.kubernetes.io/unreachable",
            "NoExecute",
        )]);
        assert!(taint_toleration(&p, &unreachable).is_err());
        p.spec.as_mut().unwrap().tolerations =
            Some(vec![toleration("node.kubernetes.io/unreachable", "")]);
        assert_eq!(taint_toleration(&p, &unreachable), Ok(()));
    }

    fn affinity_pod(terms: Vec<NodeSelectorTerm>) -> Pod {
        let mut p = pod("p", None, &[]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: terms,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let mut n = node("n1", &[]);
        n.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("disk".into(), "ssd".into());
        let n = info(n, vec![]);
        let mut p = pod("p", None, &[]);
        p.spec.as_mut().unwrap().node_selector = Some([("disk".into(), "ssd".into())].into());
        assert_eq!(node_affinity(&p, &n), Ok(()));
        p.spec.as_mut().unwrap().node_selector = Some([("disk".into(), "hdd".into())].into());
        assert_eq!(
            node_affinity(&p, &n),
            Err(Failure::unresolvable(
                "node(s) didn't match Pod's node affinity/selector"
            ))
        );
        let req = |key: &str, op: &str, v: &str| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(vec![v.into()]),
        };
        let expr = |r| NodeSelectorTerm {
            match_expressions: Some(vec![r]),
            match_fields: None,
        };
        // Terms are ORed.
        let p = affinity_pod(vec![
            expr(req("disk", "In", "hdd")),
            expr(req("disk", "In", "ssd")),
        ]);
        assert_eq!(node_affinity(&p, &n), Ok(()));
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", "n2")]),
        };
        assert!(node_affinity(&affinity_pod(vec![by_name]), &n).is_err());
    }

    #[test]
    fn host_ports_must_be_free() {
        let n = info(
            node("n1", &[]),
            vec![with_host_port(pod("a", Some("n1"), &[]), 80, None)],
        );
        let want = host_ports(&with_host_port(pod("p", None, &[]), 80, Some("10.0.0.1")));
        assert_eq!(
            node_ports(&want, &n),
            Err(Failure::unschedulable(
                "node(s) didn't have free ports for the requested pod ports"
            ))
        );
        let other = host_ports(&with_host_port(pod("p", None, &[]), 8080, None));
        assert_eq!(node_ports(&other, &n), Ok(()));
    }

    fn requests(p: &Pod) -> Resources {
        pod_requests(p, Missing::Zero)
    }

    #[test]
    fn resources_fit_against_allocatable_minus_requested() {
        let n = info(
            node("n1", &[("cpu", "2"), ("memory", "1Gi"), ("pods", "2")]),
            vec![pod(
                "a",
                Some("n1"),
                &[("cpu", "1500m"), ("memory", "512Mi")],
            )],
        );
        let fits = pod("p", None, &[("cpu", "500m"), ("memory", "512Mi")]);
        assert_eq!(node_resources_fit(&requests(&fits), &n), Ok(()));
        let too_big = pod("p", None, &[("cpu", "600m"), ("memory", "600Mi")]);
        assert_eq!(
            node_resources_fit(&requests(&too_big), &n),
            Err(Failure {
                reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()],
                unresolvable: false,
            })
        );
        let never = pod("p", None, &[("cpu", "3")]);
        assert!(
            node_resources_fit(&requests(&never), &n)
                .unwrap_err()
                .unresolvable
        );
    }

    #[test]
    fn pod_count_storage_and_extended_resources() {
        let full = info(
            node("n1", &[("cpu", "2"), ("pods", "1")]),
            vec![pod("a", Some("n1"), &[])],
        );
        assert_eq!(
            node_resources_fit(&requests(&pod("p", None, &[])), &full),
            Err(Failure::unschedulable("Too many pods"))
        );
        let n = info(
            node(
                "n1",
                &[
                    ("pods", "10"),
                    ("ephemeral-storage", "1Gi"),
                    ("example.com/gpu", "1"),
                ],
            ),
            vec![],
        );
        let p = pod(
            "p",
            None,
            &[
                ("ephemeral-storage", "2Gi"),
                ("example.com/gpu", "2"),
                ("example.com/fpga", "1"),
            ],
        );
        assert_eq!(
            node_resources_fit(&requests(&p), &n).unwrap_err().reasons,
            vec![
                "Insufficient ephemeral-storage",
                "Insufficient example.com/fpga",
                "Insufficient example.com/gpu"
            ]
        );
    }

    #[test]
    fn filters_stop_at_the_first_failure_in_profile_order() {
        let mut n = node("n1", &[("cpu", "1"), ("pods", "10")]);
        n.spec = Some(NodeSpec {
            taints: Some(vec![taint("dedicated", "gpu", "NoSchedule")]),
            ..Default::default()
        });
        let snap = Snapshot::new(vec![n], vec![]);
        let p = pod("p", None, &[("cpu", "2")]);
        let prep = Prepared::new(&p, &snap);
        // TaintToleration runs before NodeResourcesFit: only the taint is reported.
        assert_eq!(
            run(&prep, &snap.nodes[0]),
            Err(Failure::unresolvable(
                "node(s) had untolerated taint {dedicated: gpu}"
            ))
        );
    }

    #[test]
    fn a_not_ready_node_without_taints_still_fits_as_upstream() {
        use k8s_openapi::api::core::v1::NodeCondition;
        let mut n = node("n1", &[("cpu", "1"), ("pods", "10")]);
        n.status.as_mut().unwrap().conditions = Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "False".into(),
            ..Default::default()
        }]);
        let snap = Snapshot::new(vec![n], vec![]);
        let p = pod("p", None, &[]);
        // The node lifecycle controller's not-ready taint is what keeps pods away.
        assert_eq!(run(&Prepared::new(&p, &snap), &snap.nodes[0]), Ok(()));
    }
}
