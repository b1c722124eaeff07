//! One scheduling decision: filter every node, score the feasible ones, pick the best
//! (ties broken at random), and when none fits, try preemption and explain in upstream's
//! exact words why the pod stays pending.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::Rng;

use super::filter::{self, Failure, Prepared};
use super::preemption::{self, Victims, NOT_HELPFUL};
use super::score::score_nodes;
use super::snapshot::{NodeInfo, Snapshot};
use super::volumes::VolumeFilter;

/// What preemption concluded for a pod that fits nowhere.
#[derive(Debug, Clone)]
pub enum Preemption {
    /// The pod may not preempt; upstream's reason.
    NotEligible(&'static str),
    /// No node can make room; why, per node name.
    Failed(Vec<(String, Failure)>),
    /// Evicting these pods makes room: the pod is nominated to their node.
    Nominated(Victims),
}

/// Why a pod could not be placed (upstream's `FitError`); `Display` renders the
/// `FailedScheduling` event message and the `PodScheduled` condition message.
#[derive(Debug, Clone)]
pub struct Unschedulable {
    pub num_nodes: usize,
    /// Why the pod fits no node at all, before any node was looked at (upstream's
    /// PreFilter message: a missing PersistentVolumeClaim).
    pub pre_filter: Option<String>,
    /// Why each node was filtered out, by node name.
    pub filtered: Vec<(String, Failure)>,
    pub preemption: Preemption,
}

/// "N reason" entries sorted as strings, as upstream's `sortReasonsHistogram`.
fn histogram(failures: &[(String, Failure)]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, f) in failures {
        for r in &f.reasons {
            *counts.entry(r).or_default() += 1;
        }
    }
    let mut entries: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
    entries.sort();
    entries.join(", ")
}

fn write_fit(
    f: &mut fmt::Formatter<'_>,
    num_nodes: usize,
    failures: &[(String, Failure)],
) -> fmt::Result {
    write!(f, "0/{num_nodes} nodes are available:")?;
    if !failures.is_empty() {
        write!(f, " {}.", histogram(failures))?;
    }
    Ok(())
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        match &self.pre_filter {
            // Every node carries the same reason then; it is said once.
            Some(why) => write!(f, "0/{} nodes are available: {why}.", self.num_nodes)?,
            None => write_fit(f, self.num_nodes, &self.filtered)?,
        }
        match &self.preemption {
            Preemption::NotEligible(why) => write!(f, " preemption: {why}"),
            Preemption::Failed(statuses) => {
                f.write_str(" preemption: ")?;
                write_fit(f, self.num_nodes, statuses)
            }
            Preemption::Nominated(_) => Ok(()),
        }
    }
}

impl std::error::Error for Unschedulable {}

/// Places `pod` on the best node of `snap`, or says why it cannot be placed and which
/// pods to evict if preemption can make room. `pdbs` are the PodDisruptionBudgets that
/// preemption should try not to break; `rng` breaks ties between equally good nodes.
pub fn schedule(
    pod: &Pod,
    snap: &Snapshot,
    pdbs: &[PodDisruptionBudget],
    rng: &mut impl Rng,
) -> Result<String, Unschedulable> {
    schedule_with_volumes(pod, snap, pdbs, rng, VolumeFilter::default())
}

/// [`schedule`] for a pod with PersistentVolumeClaims: `volumes` says which nodes they
/// allow (see [`super::volumes`]).
pub fn schedule_with_volumes(
    pod: &Pod,
    snap: &Snapshot,
    pdbs: &[PodDisruptionBudget],
    rng: &mut impl Rng,
    volumes: VolumeFilter,
) -> Result<String, Unschedulable> {
    let prep = Prepared::new(pod, snap).with_volumes(volumes);
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut filtered = Vec::new();
    for node in &snap.nodes {
        match filter_with_nominated(&prep, snap, node) {
            Ok(()) => feasible.push(node),
            Err(why) => filtered.push((node.name().to_string(), why)),
        }
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].name().to_string());
    }
    if !feasible.is_empty() {
        let scores = score_nodes(pod, snap, &feasible);
        let best = scores.iter().copied().max().unwrap_or(0);
        let ties: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] == best).collect();
        let pick = ties[rng.random_range(0..ties.len())];
        return Ok(feasible[pick].name().to_string());
    }
    let preemption = if snap.nodes.is_empty() {
        Preemption::Failed(Vec::new())
    } else {
        preempt(pod, snap, &filtered, pdbs)
    };
    Err(Unschedulable {
        num_nodes: snap.nodes.len(),
        pre_filter: None,
        filtered,
        preemption,
    })
}

/// The answer for a pod that fits no node whatever the node (`why`, upstream's PreFilter
/// rejection): every node is unresolvable, so preemption cannot help either.
pub fn rejected_everywhere(pod: &Pod, snap: &Snapshot, why: String) -> Unschedulable {
    let filtered: Vec<(String, Failure)> = snap
        .nodes
        .iter()
        .map(|n| (n.name().to_string(), Failure::unresolvable(why.clone())))
        .collect();
    let preemption = if snap.nodes.is_empty() {
        Preemption::Failed(Vec::new())
    } else {
        preempt(pod, snap, &filtered, &[])
    };
    Unschedulable {
        num_nodes: snap.nodes.len(),
        pre_filter: Some(why),
        filtered,
        preemption,
    }
}

/// Filters a node as if the pods nominated to it were already there, and also as it is
/// (so that affinity to a nominated pod alone does not count), like upstream.
fn filter_with_nominated(prep: &Prepared, snap: &Snapshot, node: &NodeInfo) -> filter::Status {
    let mut nominated = snap.nominated_for(node.name(), prep.pod).peekable();
    if nominated.peek().is_some() {
        let mut with = node.clone();
        for p in nominated {
            with.add_pod(p.clone());
        }
        filter::run(prep, &with)?;
    }
    filter::run(prep, node)
}

/// Upstream's PostFilter (DefaultPreemption) over the filter failures.
fn preempt(
    pod: &Pod,
    snap: &Snapshot,
    filtered: &[(String, Failure)],
    pdbs: &[PodDisruptionBudget],
) -> Preemption {
    if let Err(why) = preemption::eligible(pod, snap) {
        return Preemption::NotEligible(why);
    }
    let mut statuses = Vec::new();
    let mut candidates = Vec::new();
    for (node, why) in filtered {
        if why.unresolvable {
            statuses.push((node.clone(), Failure::unresolvable(NOT_HELPFUL)));
            continue;
        }
        match preemption::select_victims(pod, snap, node, pdbs) {
            Ok(v) => candidates.push(v),
            Err(failure) => statuses.push((node.clone(), failure)),
        }
    }
    match preemption::pick(candidates) {
        Some(v) => Preemption::Nominated(v),
        None => Preemption::Failed(statuses),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{node, pod};
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn control_plane(name: &str) -> k8s_openapi::api::core::v1::Node {
        let mut n = node(name, &[("cpu", "8"), ("memory", "8Gi"), ("pods", "110")]);
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "node-role.kubernetes.io/control-plane".into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            }]),
            ..Default::default()
        });
        n
    }

    fn worker(name: &str, cpu: &str) -> k8s_openapi::api::core::v1::Node {
        node(name, &[("cpu", cpu), ("memory", "8Gi"), ("pods", "110")])
    }

    #[test]
    fn places_the_pod_on_the_best_node() {
        let snap = Snapshot::new(
            vec![worker("busy", "2"), worker("idle", "2")],
            vec![pod("a", Some("busy"), &[("cpu", "1500m")])],
        );
        let p = pod("p", None, &[("cpu", "200m")]);
        assert_eq!(schedule(&p, &snap, &[], &mut rng()).unwrap(), "idle");
    }

    #[test]
    fn ties_are_broken_by_the_injected_rng() {
        let snap = Snapshot::new(
            vec![worker("a", "2"), worker("b", "2"), worker("c", "2")],
            vec![],
        );
        let p = pod("p", None, &[("cpu", "100m")]);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..32 {
            seen.insert(schedule(&p, &snap, &[], &mut StdRng::seed_from_u64(seed)).unwrap());
        }
        assert_eq!(
            seen.len(),
            3,
            "every equally good node gets picked: {seen:?}"
        );
        let once = schedule(&p, &snap, &[], &mut rng()).unwrap();
        assert_eq!(
            schedule(&p, &snap, &[], &mut rng()).unwrap(),
            once,
            "same seed, same pick"
        );
    }

    #[test]
    fn renders_upstreams_message_for_taints_and_resources() {
        let snap = Snapshot::new(
            vec![
                control_plane("cp1"),
                control_plane("cp2"),
                worker("w1", "1"),
            ],
            vec![],
        );
        let p = pod("p", None, &[("cpu", "2")]);
        let err = schedule(&p, &snap, &[], &mut rng()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }. preemption: 0/3 nodes are available: \
             3 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn resolvable_failures_without_victims_say_so() {
        let snap = Snapshot::new(
            vec![worker("w1", "2"), control_plane("cp")],
            vec![pod("a", Some("w1"), &[("cpu", "2")])],
        );
        let p = pod("p", None, &[("cpu", "1")]);
        assert_eq!(
            schedule(&p, &snap, &[], &mut rng()).unwrap_err().to_string(),
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint \
             {node-role.kubernetes.io/control-plane: }. preemption: 0/2 nodes are available: \
             1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn histogram_sorts_as_strings_like_upstream() {
        let many: Vec<(String, Failure)> = (0..10)
            .map(|i| {
                (
                    format!("n{i}"),
                    Failure::unresolvable("node(s) were unschedulable"),
                )
            })
            .chain((0..2).map(|_| ("x".to_string(), Failure::unschedulable("Too many pods"))))
            .collect();
        assert_eq!(
            histogram(&many),
            "10 node(s) were unschedulable, 2 Too many pods"
        );
    }

    #[test]
    fn preemption_nominates_a_node_and_names_victims() {
        let mut low = pod("low", Some("w1"), &[("cpu", "2")]);
        low.spec.as_mut().unwrap().priority = Some(0);
        let snap = Snapshot::new(vec![worker("w1", "2")], vec![low]);
        let mut p = pod("p", None, &[("cpu", "1")]);
        p.spec.as_mut().unwrap().priority = Some(1000);
        let err = schedule(&p, &snap, &[], &mut rng()).unwrap_err();
        match &err.preemption {
            Preemption::Nominated(v) => {
                assert_eq!(v.node, "w1");
                assert_eq!(v.pods[0].metadata.name.as_deref(), Some("low"));
            }
            other => panic!("expected a nomination, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        p.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert_eq!(
            schedule(&p, &snap, &[], &mut rng()).unwrap_err().to_string(),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
    }

    #[test]
    fn a_pre_filter_rejection_is_said_once() {
        let snap = Snapshot::new(vec![worker("a", "2"), worker("b", "2")], vec![]);
        let p = pod("p", None, &[]);
        let err = rejected_everywhere(&p, &snap, "persistentvolumeclaim \"x\" not found".into());
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: persistentvolumeclaim \"x\" not found. preemption: \
             0/2 nodes are available: 2 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn no_nodes_at_all() {
        let err =
            schedule(&pod("p", None, &[]), &Snapshot::default(), &[], &mut rng()).unwrap_err();
        assert_eq!(err.to_string(), "no nodes available to schedule pods");
    }

    #[test]
    fn room_is_kept_for_pods_nominated_by_preemption() {
        let mut nominated = pod("winner", None, &[("cpu", "2")]);
        nominated.spec.as_mut().unwrap().priority = Some(100);
        nominated.status = Some(k8s_openapi::api::core::v1::PodStatus {
            nominated_node_name: Some("w1".into()),
            ..Default::default()
        });
        let snap = Snapshot::new(vec![worker("w1", "2")], vec![nominated]);
        let mut p = pod("p", None, &[("cpu", "1")]);
        p.spec.as_mut().unwrap().priority = Some(100);
        assert_eq!(
            schedule(&p, &snap, &[], &mut rng())
                .unwrap_err()
                .to_string(),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: \
             1 No preemption victims found for incoming pod."
        );
        p.spec.as_mut().unwrap().priority = Some(1000);
        assert_eq!(
            schedule(&p, &snap, &[], &mut rng()).unwrap(),
            "w1",
            "a more important pod goes first"
        );
    }

    #[test]
    fn identical_pods_spread_evenly_as_they_are_bound() {
        let mut snap = Snapshot::new(
            vec![worker("a", "4"), worker("b", "4"), worker("c", "4")],
            vec![],
        );
        let mut r = rng();
        for i in 0..9 {
            let mut p = pod(
                &format!("p{i}"),
                None,
                &[("cpu", "250m"), ("memory", "256Mi")],
            );
            let name = schedule(&p, &snap, &[], &mut r).unwrap();
            p.spec.as_mut().unwrap().node_name = Some(name.clone());
            snap.node_mut(&name).unwrap().add_pod(p);
        }
        let counts: Vec<usize> = snap.nodes.iter().map(|n| n.pods.len()).collect();
        assert_eq!(counts, vec![3, 3, 3]);
    }
}
