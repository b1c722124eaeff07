//! What a DaemonSet pass does, decided without API calls (upstream's `podsShouldBeOnNode`,
//! `manage` and `rollingUpdate`): which nodes need a pod, which pods go (failed ones,
//! extras, those on nodes they no longer belong on, old ones a rolling update replaces).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::controllers::pods::{is_deleting, is_ready, phase};

/// The cluster as one DaemonSet sees it.
pub struct Placement<'a> {
    /// Every node: whether a new pod should run there, whether a pod there may keep running.
    pub nodes: BTreeMap<String, (bool, bool)>,
    /// The DaemonSet's pods (finished pods already being deleted left out), by target node.
    pub pods: BTreeMap<String, Vec<&'a Pod>>,
}

/// Pods to create (by node) and to delete (by name).
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub create_on: Vec<String>,
    pub delete: Vec<String>,
    /// Finished pods found, for the events: (pod, node, failed?).
    pub finished: Vec<(String, String, bool)>,
}

/// Oldest first, bound pods before unbound ones (upstream's `podByCreationTimestampAndPhase`).
pub fn by_age(a: &&Pod, b: &&Pod) -> Ordering {
    let bound = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| !n.is_empty())
    };
    bound(b)
        .cmp(&bound(a))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b))
        })
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// Creations and deletions that put one pod on each node that should run one and none
/// elsewhere. With `surge`, a node may hold an old and a new pod while the new one starts.
pub fn manage(
    placement: &Placement,
    surge: bool,
    is_updated: impl Fn(&Pod) -> bool,
    is_available: impl Fn(&Pod) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    for (node, &(should_run, should_continue)) in &placement.nodes {
        let pods = placement.pods.get(node);
        match pods {
            None if should_run => plan.create_on.push(node.clone()),
            None => {}
            Some(pods) if should_continue => {
                let mut running = Vec::new();
                for pod in pods.iter().filter(|p| !is_deleting(p)) {
                    match phase(pod) {
                        "Failed" | "Succeeded" => {
                            plan.finished.push((
                                pod.name_any(),
                                node.clone(),
                                phase(pod) == "Failed",
                            ));
                            plan.delete.push(pod.name_any());
                        }
                        _ => running.push(*pod),
                    }
                }
                running.sort_by(by_age);
                if !surge {
                    plan.delete
                        .extend(running.iter().skip(1).map(|p| p.name_any()));
                    continue;
                }
                if running.is_empty() && should_run {
                    plan.create_on.push(node.clone());
                    continue;
                }
                // Surging: keep the oldest new pod and the oldest old one, the old one only
                // while it is ready and the new one not yet available.
                let (mut newest, mut oldest_old) = (None, None);
                for pod in running {
                    let slot = if is_updated(pod) {
                        &mut newest
                    } else {
                        &mut oldest_old
                    };
                    if slot.is_none() {
                        *slot = Some(pod);
                    } else {
                        plan.delete.push(pod.name_any());
                    }
                }
                if let (Some(new), Some(old)) = (newest, oldest_old) {
                    if !is_ready(old) || is_available(new) {
                        plan.delete.push(old.name_any());
                    }
                }
            }
            Some(pods) => {
                plan.delete.extend(
                    pods.iter()
                        .filter(|p| !is_deleting(p))
                        .map(|p| p.name_any()),
                );
            }
        }
    }
    // Unbound pods for nodes that are gone: nothing else would ever remove them.
    for (node, pods) in &placement.pods {
        if !placement.nodes.contains_key(node) {
            let unbound = pods.iter().filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none_or(|n| n.is_empty())
            });
            plan.delete.extend(unbound.map(|p| p.name_any()));
        }
    }
    plan
}

/// A node's live pods split into its one new and one old pod; `None` when it holds more
/// (the manage step prunes those first).
fn new_and_old<'a>(
    pods: &[&'a Pod],
    is_updated: &impl Fn(&Pod) -> bool,
) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().filter(|p| !is_deleting(p)) {
        let slot = if is_updated(pod) { &mut new } else { &mut old };
        if slot.replace(*pod).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// The budgets of a rolling update.
pub struct Budget {
    pub max_surge: usize,
    pub max_unavailable: usize,
    pub desired: usize,
}

/// One step of a rolling update (upstream's `rollingUpdate`). Without surge, old pods are
/// deleted while no more than `max_unavailable` pods are unavailable (the manage step then
/// creates their replacements); with surge, new pods start beside old ones on up to
/// `max_surge` nodes and each old pod goes once its replacement is available.
pub fn rolling_update(
    placement: &Placement,
    budget: &Budget,
    is_updated: impl Fn(&Pod) -> bool,
    is_available: impl Fn(&Pod) -> bool,
) -> Plan {
    let mut plan = Plan::default();
    let mut nodes: BTreeMap<&String, Vec<&Pod>> = placement
        .nodes
        .iter()
        .filter(|(_, (should_run, _))| *should_run)
        .map(|(node, _)| (node, Vec::new()))
        .collect();
    for (node, pods) in &placement.pods {
        nodes.insert(node, pods.clone());
    }
    let should_run = |node: &str| placement.nodes.get(node).is_some_and(|(run, _)| *run);

    if budget.max_surge == 0 {
        let mut unavailable = 0;
        let mut candidates = Vec::new();
        for pods in nodes.values() {
            match new_and_old(pods, &is_updated) {
                None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !is_available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !is_available(old) {
                        plan.delete.push(old.name_any());
                        unavailable += 1;
                    } else if unavailable < budget.max_unavailable {
                        candidates.push(old.name_any());
                    }
                }
            }
        }
        let room = budget
            .max_unavailable
            .saturating_sub(unavailable)
            .min(candidates.len());
        plan.delete.extend(candidates.into_iter().take(room));
        return plan;
    }

    let (mut surging, mut available) = (0usize, 0usize);
    let (mut candidates, mut leaving) = (Vec::new(), Vec::new());
    for (node, pods) in &nodes {
        let Some((new, old)) = new_and_old(pods, &is_updated) else {
            surging += 1;
            continue;
        };
        if old.or(new).is_some_and(&is_available) {
            available += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !is_available(old) => {
                if should_run(node) {
                    plan.create_on.push((*node).clone());
                } else {
                    plan.delete.push(old.name_any());
                }
            }
            (None, Some(old)) => {
                if !should_run(node) {
                    leaving.push(old.name_any());
                } else if surging < budget.max_surge {
                    candidates.push((*node).clone());
                }
            }
            (Some(new), Some(old)) => {
                if is_available(new) {
                    plan.delete.push(old.name_any());
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes they no longer belong on go only once enough pods elsewhere are up.
    let spare = available.saturating_sub(budget.desired).min(leaving.len());
    plan.delete.extend(leaving.into_iter().take(spare));
    let room = budget
        .max_surge
        .saturating_sub(surging)
        .min(candidates.len());
    plan.create_on.extend(candidates.into_iter().take(room));
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: &str, revision: &str, ready: bool, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"rev": revision},
                "creationTimestamp": format!("2026-01-01T00:00:0{}Z", name.len() % 10)},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn updated(p: &Pod) -> bool {
        p.labels()["rev"] == "new"
    }

    fn placement<'a>(nodes: &[(&str, bool, bool)], pods: &'a [Pod]) -> Placement<'a> {
        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in pods {
            let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
            by_node.entry(node).or_default().push(p);
        }
        Placement {
            nodes: nodes
                .iter()
                .map(|(n, r, c)| (n.to_string(), (*r, *c)))
                .collect(),
            pods: by_node,
        }
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let pods = [
            pod("a", "n1", "new", true, "Running"),
            pod("bb", "n1", "new", true, "Running"),
            pod("c", "n3", "new", true, "Running"),
            pod("d", "n4", "new", false, "Failed"),
        ];
        let nodes = [
            ("n1", true, true),
            ("n2", true, true),
            ("n3", false, false),
            ("n4", true, true),
        ];
        let plan = manage(&placement(&nodes, &pods), false, updated, is_ready);
        assert_eq!(plan.create_on, ["n2"]);
        assert_eq!(plan.delete, ["bb", "c", "d"]);
        assert_eq!(plan.finished, [("d".to_string(), "n4".to_string(), true)]);
    }

    #[test]
    fn rolling_update_respects_max_unavailable() {
        let pods = [
            pod("a", "n1", "old", true, "Running"),
            pod("b", "n2", "old", true, "Running"),
            pod("c", "n3", "new", false, "Running"),
        ];
        let nodes = [("n1", true, true), ("n2", true, true), ("n3", true, true)];
        let budget = |u| Budget {
            max_surge: 0,
            max_unavailable: u,
            desired: 3,
        };
        let p = placement(&nodes, &pods);
        assert!(rolling_update(&p, &budget(1), updated, is_ready)
            .delete
            .is_empty());
        assert_eq!(
            rolling_update(&p, &budget(2), updated, is_ready).delete,
            ["a"]
        );
        assert_eq!(
            rolling_update(&p, &budget(3), updated, is_ready).delete,
            ["a", "b"]
        );
    }

    #[test]
    fn rolling_update_with_surge_starts_new_pods_first() {
        let pods = [
            pod("a", "n1", "old", true, "Running"),
            pod("b", "n2", "old", true, "Running"),
            pod("c", "n2", "new", true, "Running"),
        ];
        let nodes = [("n1", true, true), ("n2", true, true)];
        let budget = Budget {
            max_surge: 1,
            max_unavailable: 0,
            desired: 2,
        };
        let plan = rolling_update(&placement(&nodes, &pods), &budget, updated, is_ready);
        assert_eq!(plan.delete, ["b"]);
        assert_eq!(plan.create_on, ["n1"]);
        let plan = manage(&placement(&nodes, &pods), true, updated, is_ready);
        assert_eq!(plan.delete, ["b"], "the ready new pod replaces the old one");
    }
}
