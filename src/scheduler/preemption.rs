//! Preemption: which lower-priority pods to evict so that a pending pod fits.
//!
//! As upstream's DefaultPreemption: on each node where preemption might help, take away
//! every pod of lower priority; if the pod then fits, give pods back one by one, most
//! important first and PodDisruptionBudget-protected ones before the others, keeping
//! each one that still leaves room. What stays evicted are the victims. Among nodes, the
//! one whose victims break the fewest budgets, then have the lowest top priority, the
//! lowest priority sum, the fewest pods, and the latest start is chosen.

use std::cmp::Reverse;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::filter::{self, Failure, Prepared};
use super::selector::{selector_matches, Labels};
use super::snapshot::{pod_key, Snapshot};

pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
pub const NOT_ELIGIBLE_NEVER: &str = "not eligible due to preemptionPolicy=Never.";
pub const NOT_ELIGIBLE_TERMINATING: &str =
    "not eligible due to a terminating pod on the nominated node.";

/// A pod's priority (`spec.priority`, set from its PriorityClass at admission).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

fn start_time(pod: &Pod) -> Option<&Time> {
    pod.status.as_ref().and_then(|s| s.start_time.as_ref())
}

/// Orders pods most important first: higher priority, then the one running longer.
fn by_importance(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let start = |p: &Pod| start_time(p).map(|t| t.0);
    Reverse(priority(a))
        .cmp(&Reverse(priority(b)))
        .then_with(|| match (start(a), start(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
}

/// The pods to evict from one node, and how many disruption budgets that breaks.
#[derive(Debug, Clone)]
pub struct Victims {
    pub node: String,
    /// Most important first.
    pub pods: Vec<Pod>,
    pub pdb_violations: usize,
}

/// Splits pods (most important first) into those whose eviction would break a budget
/// and those that would not, spending each budget's `disruptionsAllowed` in that order.
fn split_by_pdb(pods: Vec<Pod>, pdbs: &[PodDisruptionBudget]) -> (Vec<Pod>, Vec<Pod>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .map(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let (mut violating, mut free) = (Vec::new(), Vec::new());
    for pod in pods {
        let (ns, name) = pod_key(&pod);
        let empty = Labels::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let mut breaks = false;
        for (i, pdb) in pdbs.iter().enumerate() {
            let same_ns = pdb.metadata.namespace.as_deref().unwrap_or("default") == ns;
            // A budget without a selector, or with an empty one, protects nothing here.
            let sel = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
            let selects = sel.is_some_and(|s| {
                (s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                    || s.match_expressions.as_ref().is_some_and(|m| !m.is_empty()))
                    && selector_matches(s, labels)
            });
            let already_disrupted = pdb
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .is_some_and(|d| d.contains_key(name));
            if same_ns && selects && !already_disrupted {
                allowed[i] -= 1;
                breaks |= allowed[i] < 0;
            }
        }
        if breaks {
            violating.push(pod);
        } else {
            free.push(pod);
        }
    }
    (violating, free)
}

/// Chooses the victims on `node` for `pod`, or says why evicting cannot make it fit.
pub fn select_victims(
    pod: &Pod,
    snap: &Snapshot,
    node: &str,
    pdbs: &[PodDisruptionBudget],
) -> Result<Victims, Failure> {
    // Pod (anti-)affinity and spreading depend on every node's pods; when neither is in
    // play, simulating evictions needs a copy of this one node only.
    let base = Prepared::new(pod, snap);
    let local = base.affinity.is_empty() && base.spread.is_empty();
    let mut sim = if local {
        let info = snap
            .node(node)
            .ok_or_else(|| Failure::unresolvable(NOT_HELPFUL))?;
        Snapshot {
            nodes: vec![info.clone()],
            ..Default::default()
        }
    } else {
        snap.clone()
    };
    let info = sim
        .node_mut(node)
        .ok_or_else(|| Failure::unresolvable(NOT_HELPFUL))?;
    let lower: Vec<(String, String)> = info
        .pods
        .iter()
        .filter(|p| priority(p) < priority(pod))
        .map(|p| {
            let (ns, name) = pod_key(p);
            (ns.to_string(), name.to_string())
        })
        .collect();
    if lower.is_empty() {
        return Err(Failure::unresolvable(NO_VICTIMS));
    }
    let mut removed: Vec<Pod> = lower
        .iter()
        .filter_map(|(ns, name)| info.remove_pod(ns, name))
        .collect();
    let fits = |sim: &Snapshot| {
        let info = sim.node(node).expect("node is in the snapshot");
        if local {
            filter::run(&base, info)
        } else {
            filter::run(&Prepared::new(pod, sim), info)
        }
    };
    fits(&sim)?;
    removed.sort_by(by_importance);
    let (violating, free) = split_by_pdb(removed, pdbs);
    let mut victims = Vec::new();
    let mut pdb_violations = 0;
    for (breaks, candidate) in violating
        .into_iter()
        .map(|p| (true, p))
        .chain(free.into_iter().map(|p| (false, p)))
    {
        let info = sim.node_mut(node).expect("node is in the snapshot");
        info.add_pod(candidate.clone());
        if fits(&sim).is_err() {
            let (ns, name) = pod_key(&candidate);
            let (ns, name) = (ns.to_string(), name.to_string());
            sim.node_mut(node).expect("node").remove_pod(&ns, &name);
            pdb_violations += usize::from(breaks);
            victims.push(candidate);
        }
    }
    if victims.is_empty() {
        return Err(Failure::unresolvable(NO_VICTIMS));
    }
    victims.sort_by(by_importance);
    Ok(Victims {
        node: node.to_string(),
        pods: victims,
        pdb_violations,
    })
}

/// Picks the node whose eviction does least harm (upstream's `pickOneNodeForPreemption`).
pub fn pick(candidates: Vec<Victims>) -> Option<Victims> {
    // Offset so that negative priorities still sum as "more pods is worse".
    let offset = i64::from(i32::MAX) + 1;
    let earliest_top_start = |v: &Victims| {
        let top = v.pods.first().map(priority);
        v.pods
            .iter()
            .filter(|p| Some(priority(p)) == top)
            .filter_map(|p| start_time(p).map(|t| t.0))
            .min()
    };
    candidates
        .into_iter()
        .enumerate()
        .min_by_key(|(i, v)| {
            (
                v.pdb_violations,
                v.pods.first().map(priority).unwrap_or(i32::MIN),
                v.pods
                    .iter()
                    .map(|p| i64::from(priority(p)) + offset)
                    .sum::<i64>(),
                v.pods.len(),
                Reverse(earliest_top_start(v)),
                *i,
            )
        })
        .map(|(_, v)| v)
}

/// Whether the pod may preempt at all; `Err` carries upstream's reason.
pub fn eligible(pod: &Pod, snap: &Snapshot) -> Result<(), &'static str> {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
        return Err(NOT_ELIGIBLE_NEVER);
    }
    // A pod that already evicted pods waits for them to go before evicting more.
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    if let Some(node) = nominated.and_then(|n| snap.node(n)) {
        let terminating = node
            .pods
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some() && priority(p) < priority(pod));
        if terminating {
            return Err(NOT_ELIGIBLE_TERMINATING);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{node, pod};
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn prio(name: &str, node: Option<&str>, cpu: &str, p: i32) -> Pod {
        let mut pd = pod(name, node, &[("cpu", cpu)]);
        pd.spec.as_mut().unwrap().priority = Some(p);
        pd.metadata.labels = Some([("app".to_string(), name.to_string())].into());
        pd
    }

    fn names(v: &Victims) -> Vec<&str> {
        v.pods
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect()
    }

    fn snap(pods: Vec<Pod>) -> Snapshot {
        Snapshot::new(vec![node("n1", &[("cpu", "3"), ("pods", "10")])], pods)
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        let s = snap(vec![
            prio("low", Some("n1"), "1", 1),
            prio("mid", Some("n1"), "1", 5),
            prio("high", Some("n1"), "1", 100),
        ]);
        let v = select_victims(&prio("p", None, "1", 50), &s, "n1", &[]).unwrap();
        assert_eq!(names(&v), vec!["low"]);
        let v = select_victims(&prio("p", None, "2", 50), &s, "n1", &[]).unwrap();
        assert_eq!(names(&v), vec!["mid", "low"]);
    }

    #[test]
    fn no_lower_priority_pods_means_no_victims() {
        let s = snap(vec![prio("high", Some("n1"), "3", 100)]);
        assert_eq!(
            select_victims(&prio("p", None, "1", 50), &s, "n1", &[]).unwrap_err(),
            Failure::unresolvable("No preemption victims found for incoming pod")
        );
    }

    #[test]
    fn still_not_fitting_reports_the_filter_reason() {
        let s = snap(vec![prio("low", Some("n1"), "1", 1)]);
        assert_eq!(
            select_victims(&prio("p", None, "4", 50), &s, "n1", &[])
                .unwrap_err()
                .reasons,
            vec!["Insufficient cpu"]
        );
    }

    fn pdb(app: &str, allowed: i32) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some(format!("{app}-pdb")),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), app.to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: allowed,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn budget_protected_pods_are_evicted_last() {
        let s = snap(vec![
            prio("guarded", Some("n1"), "1", 1),
            prio("other", Some("n1"), "1", 1),
            prio("third", Some("n1"), "1", 1),
        ]);
        let p = prio("p", None, "1", 50);
        let v = select_victims(&p, &s, "n1", &[pdb("guarded", 0)]).unwrap();
        assert_eq!(
            names(&v),
            vec!["third"],
            "guarded pods are given back first"
        );
        assert_eq!(v.pdb_violations, 0);
        let big = prio("p", None, "3", 50);
        let v = select_victims(&big, &s, "n1", &[pdb("guarded", 0)]).unwrap();
        assert_eq!(v.pods.len(), 3);
        assert_eq!(v.pdb_violations, 1);
        let v = select_victims(&big, &s, "n1", &[pdb("guarded", 1)]).unwrap();
        assert_eq!(v.pdb_violations, 0, "the budget allows one disruption");
    }

    fn victims(node: &str, prios: &[i32], violations: usize) -> Victims {
        Victims {
            node: node.into(),
            pods: prios.iter().map(|p| prio("v", None, "1", *p)).collect(),
            pdb_violations: violations,
        }
    }

    #[test]
    fn picks_the_least_harmful_node() {
        let pick_node = |c: Vec<Victims>| pick(c).unwrap().node;
        assert_eq!(
            pick_node(vec![victims("a", &[1], 1), victims("b", &[9, 9], 0)]),
            "b"
        );
        assert_eq!(
            pick_node(vec![victims("a", &[9], 0), victims("b", &[5, 5], 0)]),
            "b"
        );
        assert_eq!(
            pick_node(vec![victims("a", &[5, 4], 0), victims("b", &[5, 1], 0)]),
            "b"
        );
        assert_eq!(
            pick_node(vec![victims("a", &[5, 1, 1], 0), victims("b", &[5, 3], 0)]),
            "b"
        );
        assert_eq!(
            pick_node(vec![victims("a", &[5], 0), victims("b", &[5], 0)]),
            "a"
        );
        let mut later = victims("b", &[5], 0);
        later.pods[0].status = Some(PodStatus {
            start_time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(2000).unwrap(),
            )),
            ..Default::default()
        });
        let mut earlier = victims("a", &[5], 0);
        earlier.pods[0].status = Some(PodStatus {
            start_time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(1000).unwrap(),
            )),
            ..Default::default()
        });
        assert_eq!(
            pick_node(vec![earlier, later]),
            "b",
            "the most recently started victims"
        );
        assert!(pick(vec![]).is_none());
    }

    #[test]
    fn preemption_policy_never_is_not_eligible() {
        let s = snap(vec![]);
        let mut p = prio("p", None, "1", 50);
        assert_eq!(eligible(&p, &s), Ok(()));
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert_eq!(
            eligible(&p, &s),
            Err("not eligible due to preemptionPolicy=Never.")
        );
    }

    #[test]
    fn evicting_a_pod_whose_anti_affinity_blocks_the_incoming_one() {
        use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity};
        let mut guard = prio("guard", Some("n1"), "100m", 1);
        guard.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some([("app".to_string(), "p".to_string())].into()),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let s = snap(vec![guard, prio("bystander", Some("n1"), "100m", 1)]);
        let v = select_victims(&prio("p", None, "100m", 50), &s, "n1", &[]).unwrap();
        assert_eq!(
            names(&v),
            vec!["guard"],
            "only the pod whose rule blocks it goes"
        );
    }
}
