//! PodTopologySpread: `topologySpreadConstraints`, hard (DoNotSchedule, a filter) and soft
//! (ScheduleAnyway, a score).
//!
//! Matching pods are counted per topology domain over the nodes that are eligible for the
//! pod (upstream's `nodeAffinityPolicy: Honor` and `nodeTaintsPolicy: Ignore` defaults) and
//! carry every constraint's key. Terminating pods and other namespaces do not count.
//! A pod declaring no constraint is scored with upstream's system defaults, against the
//! selectors of the Services and workloads it belongs to ([`Snapshot::workload_selectors`]).

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, Taint, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filter::{matches_node_selector, Failure, Status};
use super::selector::{selector_matches, tolerated, with_label_keys, Labels};
use super::snapshot::{NodeInfo, Snapshot};

pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// One constraint, its selector merged with `matchLabelKeys`.
struct Constraint {
    key: String,
    max_skew: i64,
    min_domains: Option<i64>,
    selector: Option<LabelSelector>,
    honor_affinity: bool,
    honor_taints: bool,
}

fn constraints(pod: &Pod, when: &str) -> Vec<Constraint> {
    let empty = Labels::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let list: &[TopologySpreadConstraint] = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or_default();
    list.iter()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c| Constraint {
            key: c.topology_key.clone(),
            max_skew: i64::from(c.max_skew),
            min_domains: c.min_domains.map(i64::from),
            selector: c.label_selector.as_ref().map(|s| {
                with_label_keys(
                    s,
                    labels,
                    c.match_label_keys.as_deref().unwrap_or_default(),
                    &[],
                )
            }),
            honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        })
        .collect()
}

impl Constraint {
    fn selects(&self, pod: &Pod, namespace: &str) -> bool {
        let empty = Labels::new();
        pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
            && pod.metadata.deletion_timestamp.is_none()
            && self.selector.as_ref().is_some_and(|s| {
                selector_matches(s, pod.metadata.labels.as_ref().unwrap_or(&empty))
            })
    }

    fn count_on(&self, node: &NodeInfo, namespace: &str) -> i64 {
        node.pods
            .iter()
            .filter(|p| self.selects(p, namespace))
            .count() as i64
    }

    /// Whether pods on `node` count towards this constraint's domains.
    fn counts_node(&self, pod: &Pod, node: &NodeInfo) -> bool {
        let taints_ok = !self.honor_taints || {
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            let taints: &[Taint] = node
                .node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default();
            taints.iter().all(|t| {
                !(t.effect == "NoSchedule" || t.effect == "NoExecute") || tolerated(tolerations, t)
            })
        };
        (!self.honor_affinity || matches_node_selector(pod, node)) && taints_ok
    }
}

fn has_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| node.labels().contains_key(&c.key))
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// Matching-pod counts per domain for the DoNotSchedule constraints.
pub struct FilterState {
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain value.
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: whether the incoming pod matches its own selector.
    self_match: Vec<i64>,
}

impl FilterState {
    pub fn new(pod: &Pod, snap: &Snapshot) -> Self {
        let cs = constraints(pod, "DoNotSchedule");
        let ns = namespace(pod);
        let mut counts = vec![HashMap::new(); cs.len()];
        for node in snap.nodes.iter().filter(|n| has_keys(n, &cs)) {
            for (i, c) in cs.iter().enumerate() {
                if c.counts_node(pod, node) {
                    let value = node.labels()[&c.key].clone();
                    *counts[i].entry(value).or_default() += c.count_on(node, ns);
                }
            }
        }
        let self_match = cs.iter().map(|c| i64::from(c.selects(pod, ns))).collect();
        FilterState {
            constraints: cs,
            counts,
            self_match,
        }
    }

    /// Whether the pod has no DoNotSchedule constraint, so the filter passes every node.
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty()
    }

    /// The PodTopologySpread filter for one node.
    pub fn filter(&self, node: &NodeInfo) -> Status {
        if self.constraints.is_empty() {
            return Ok(());
        }
        if !has_keys(node, &self.constraints) {
            return Err(Failure::unresolvable(ERR_MISSING_LABEL));
        }
        for (i, c) in self.constraints.iter().enumerate() {
            let domains = &self.counts[i];
            let mut min = domains.values().copied().min().unwrap_or(0);
            // Fewer domains than asked for: the missing ones count as empty.
            if c.min_domains.is_some_and(|m| (domains.len() as i64) < m) {
                min = 0;
            }
            let here = domains.get(&node.labels()[&c.key]).copied().unwrap_or(0);
            if here + self.self_match[i] - min > c.max_skew {
                return Err(Failure::unschedulable(ERR_CONSTRAINTS));
            }
        }
        Ok(())
    }
}

/// Upstream's system-default constraints, used for scoring when a pod declares none:
/// spread the pods of the same Services and workloads over hostnames (maxSkew 3) and
/// zones (maxSkew 5). Without such an owner there is nothing to spread against.
fn system_defaults(pod: &Pod, snap: &Snapshot) -> Vec<Constraint> {
    let Some(selector) = snap.default_spread_selector(pod) else {
        return Vec::new();
    };
    [(HOSTNAME, 3), (ZONE, 5)]
        .into_iter()
        .map(|(key, max_skew)| Constraint {
            key: key.to_string(),
            max_skew,
            min_domains: None,
            selector: Some(selector.clone()),
            honor_affinity: true,
            honor_taints: false,
        })
        .collect()
}

/// The ScheduleAnyway score for the feasible `nodes`: fewer matching pods in a node's
/// domains scores higher. With declared constraints, nodes lacking one of their keys
/// score 0; with the system defaults, a missing key just does not count.
pub fn score(pod: &Pod, snap: &Snapshot, nodes: &[&NodeInfo]) -> Vec<i64> {
    let declared = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .is_some_and(|c| !c.is_empty());
    let cs = if declared {
        constraints(pod, "ScheduleAnyway")
    } else {
        system_defaults(pod, snap)
    };
    if cs.is_empty() {
        return vec![0; nodes.len()];
    }
    let ns = namespace(pod);
    let scored: Vec<bool> = nodes
        .iter()
        .map(|n| !declared || has_keys(n, &cs))
        .collect();
    // A missing label is the domain "" here, as upstream counts it.
    let value = |n: &NodeInfo, key: &str| n.labels().get(key).cloned().unwrap_or_default();
    // The domains of the scored nodes (hostname domains are counted per node directly).
    let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for (n, _) in nodes.iter().zip(&scored).filter(|(_, s)| **s) {
        for (i, c) in cs.iter().enumerate() {
            if c.key != HOSTNAME {
                counts[i].entry(value(n, &c.key)).or_insert(0);
            }
        }
    }
    for node in snap.nodes.iter().filter(|n| !declared || has_keys(n, &cs)) {
        for (i, c) in cs.iter().enumerate() {
            if c.key == HOSTNAME || !c.counts_node(pod, node) {
                continue;
            }
            if let Some(count) = counts[i].get_mut(&value(node, &c.key)) {
                *count += c.count_on(node, ns);
            }
        }
    }
    // A constraint over more domains weighs more: upstream's log(domains + 2).
    let weights: Vec<f64> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let domains = if c.key == HOSTNAME {
                scored.iter().filter(|s| **s).count()
            } else {
                counts[i].len()
            };
            ((domains + 2) as f64).ln()
        })
        .collect();
    let raw: Vec<i64> = nodes
        .iter()
        .zip(&scored)
        .map(|(n, ok)| {
            if !ok {
                return 0;
            }
            let total: f64 = cs
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let v = n.labels().get(&c.key)?;
                    let cnt = if c.key == HOSTNAME {
                        c.count_on(n, ns)
                    } else {
                        counts[i].get(v).copied().unwrap_or(0)
                    };
                    Some(cnt as f64 * weights[i] + (c.max_skew - 1) as f64)
                })
                .sum();
            total.round() as i64
        })
        .collect();
    let live = || {
        raw.iter()
            .zip(&scored)
            .filter(|(_, s)| **s)
            .map(|(r, _)| *r)
    };
    let (min, max) = (live().min().unwrap_or(0), live().max().unwrap_or(0));
    raw.iter()
        .zip(&scored)
        .map(|(r, ok)| match (*ok, max) {
            (false, _) => 0,
            (true, 0) => 100,
            (true, _) => 100 * (max + min - r) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{labelled, zoned_snapshot as snap};
    use crate::scheduler::snapshot::WorkloadSelector;

    fn web(name: &str, node: Option<&str>) -> Pod {
        labelled(name, node, "web")
    }

    fn spread(mut p: Pod, key: &str, max_skew: i32, when: &str, min_domains: Option<i32>) -> Pod {
        p.spec.as_mut().unwrap().topology_spread_constraints =
            Some(vec![TopologySpreadConstraint {
                label_selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                }),
                max_skew,
                min_domains,
                topology_key: key.into(),
                when_unsatisfiable: when.into(),
                ..Default::default()
            }]);
        p
    }

    #[test]
    fn do_not_schedule_keeps_skew_within_max() {
        let s = snap(vec![web("w1", Some("a1")), web("w2", Some("a2"))]);
        let p = spread(web("w3", None), "zone", 1, "DoNotSchedule", None);
        let st = FilterState::new(&p, &s);
        // zone a has 2, zone b 0: another in a gives skew 3.
        assert_eq!(
            st.filter(&s.nodes[0]),
            Err(Failure::unschedulable(ERR_CONSTRAINTS))
        );
        assert_eq!(st.filter(&s.nodes[2]), Ok(()));
        assert_eq!(
            st.filter(&s.nodes[3]),
            Err(Failure::unresolvable(
                "node(s) didn't match pod topology spread constraints (missing required label)"
            ))
        );
        let loose = spread(web("w3", None), "zone", 3, "DoNotSchedule", None);
        assert_eq!(FilterState::new(&loose, &s).filter(&s.nodes[0]), Ok(()));
    }

    #[test]
    fn min_domains_treats_missing_domains_as_empty() {
        let s = snap(vec![web("w1", Some("a1")), web("w2", Some("b1"))]);
        let p = spread(web("w3", None), "zone", 1, "DoNotSchedule", None);
        assert_eq!(FilterState::new(&p, &s).filter(&s.nodes[0]), Ok(()));
        let p = spread(web("w3", None), "zone", 1, "DoNotSchedule", Some(3));
        assert!(FilterState::new(&p, &s).filter(&s.nodes[0]).is_err());
    }

    #[test]
    fn terminating_pods_and_other_namespaces_do_not_count() {
        let mut gone = web("w1", Some("a1"));
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut other = web("w2", Some("a1"));
        other.metadata.namespace = Some("prod".into());
        let s = snap(vec![gone, other]);
        let p = spread(web("w3", None), "zone", 1, "DoNotSchedule", None);
        assert_eq!(FilterState::new(&p, &s).filter(&s.nodes[0]), Ok(()));
    }

    #[test]
    fn schedule_anyway_prefers_emptier_domains() {
        let s = snap(vec![web("w1", Some("a1")), web("w2", Some("a2"))]);
        let p = spread(web("w3", None), "zone", 1, "ScheduleAnyway", None);
        let nodes: Vec<&NodeInfo> = s.nodes.iter().collect();
        let scores = score(&p, &s, &nodes);
        assert_eq!(scores[2], 100);
        assert!(scores[0] < scores[2]);
        assert_eq!(scores[0], scores[1]);
        assert_eq!(scores[3], 0, "no zone label");
        // Filters never see ScheduleAnyway constraints.
        assert_eq!(FilterState::new(&p, &s).filter(&s.nodes[0]), Ok(()));
    }

    #[test]
    fn system_defaults_spread_a_workloads_pods_over_hostnames() {
        let s = snap(vec![
            web("w1", Some("a1")),
            web("w2", Some("a1")),
            web("w3", Some("a2")),
        ]);
        let nodes: Vec<&NodeInfo> = s.nodes.iter().collect();
        let p = web("w4", None);
        assert_eq!(
            score(&p, &s, &nodes),
            vec![0; 4],
            "no owner: nothing to spread against"
        );
        let owned = s.clone().with_workload_selectors(vec![WorkloadSelector {
            namespace: "default".into(),
            selector: LabelSelector {
                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
        }]);
        let scores = score(&p, &owned, &nodes);
        // Hostname only (no node has a zone): raw = count × ln(4 + 2) + 2.
        // a1: 2 → 6, a2: 1 → 4, b1 and x: 0 → 2; normalized 100 × (6 + 2 − raw) / 6.
        assert_eq!(scores, vec![33, 66, 100, 100]);
    }
}
