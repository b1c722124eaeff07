//! InterPodAffinity: required and preferred pod affinity / anti-affinity by topology.
//!
//! Counting is done once per pod, per topology pair (`topologyKey`, the node's value for
//! it), as upstream's PreFilter/PreScore do: then each node is answered by a map lookup.
//! Required terms cover both directions: the incoming pod's own terms, and the
//! anti-affinity of pods already running that the incoming pod would violate.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::filter::{Failure, Status};
use super::selector::{selector_matches, with_label_keys, Labels};
use super::snapshot::{NodeInfo, Snapshot};

pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Upstream's default `hardPodAffinityWeight`: how much an existing pod's required
/// affinity towards the incoming pod counts when scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Pair = (String, String);

/// A pod affinity term resolved against the pod that owns it.
struct Term {
    namespaces: Vec<String>,
    namespace_selector: Option<LabelSelector>,
    selector: Option<LabelSelector>,
    topology_key: String,
}

impl Term {
    fn new(t: &PodAffinityTerm, owner: &Pod) -> Self {
        let empty = Labels::new();
        let labels = owner.metadata.labels.as_ref().unwrap_or(&empty);
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(namespace(owner).to_string());
        }
        Term {
            namespaces,
            namespace_selector: t.namespace_selector.clone(),
            selector: t.label_selector.as_ref().map(|s| {
                with_label_keys(
                    s,
                    labels,
                    t.match_label_keys.as_deref().unwrap_or_default(),
                    t.mismatch_label_keys.as_deref().unwrap_or_default(),
                )
            }),
            topology_key: t.topology_key.clone(),
        }
    }

    /// Whether `pod` is one of the pods this term selects.
    fn matches(&self, pod: &Pod, snap: &Snapshot) -> bool {
        let ns = namespace(pod);
        let ns_ok = self.namespaces.iter().any(|n| n == ns)
            || self.namespace_selector.as_ref().is_some_and(|sel| {
                let empty = Labels::new();
                selector_matches(sel, snap.namespace_labels.get(ns).unwrap_or(&empty))
            });
        let empty = Labels::new();
        ns_ok
            && self.selector.as_ref().is_some_and(|sel| {
                selector_matches(sel, pod.metadata.labels.as_ref().unwrap_or(&empty))
            })
    }

    fn pair(&self, node: &NodeInfo) -> Option<Pair> {
        let value = node.labels().get(&self.topology_key)?;
        Some((self.topology_key.clone(), value.clone()))
    }
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The four term lists of a pod's `affinity`.
struct Terms {
    affinity: Vec<Term>,
    anti: Vec<Term>,
    preferred: Vec<(i64, Term)>,
    preferred_anti: Vec<(i64, Term)>,
}

impl Terms {
    fn of(pod: &Pod) -> Self {
        let aff = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
            terms
                .into_iter()
                .flatten()
                .map(|t| Term::new(t, pod))
                .collect()
        };
        let weighted = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<(i64, Term)> {
            terms
                .into_iter()
                .flatten()
                .map(|w| (i64::from(w.weight), Term::new(&w.pod_affinity_term, pod)))
                .collect()
        };
        Terms {
            affinity: required(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            anti: required(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred: weighted(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti: weighted(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }

    fn is_empty(&self) -> bool {
        self.affinity.is_empty()
            && self.anti.is_empty()
            && self.preferred.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// Per-pod counts for the required terms (upstream's PreFilter state).
pub struct FilterState {
    affinity: Vec<Term>,
    anti: Vec<Term>,
    affinity_counts: HashMap<Pair, i64>,
    anti_counts: HashMap<Pair, i64>,
    existing_anti_counts: HashMap<Pair, i64>,
    /// The pod matches all of its own affinity terms: it may start a group alone.
    matches_own_affinity: bool,
}

impl FilterState {
    pub fn new(pod: &Pod, snap: &Snapshot) -> Self {
        let own = Terms::of(pod);
        let mut state = FilterState {
            matches_own_affinity: !own.affinity.is_empty()
                && own.affinity.iter().all(|t| t.matches(pod, snap)),
            affinity: own.affinity,
            anti: own.anti,
            affinity_counts: HashMap::new(),
            anti_counts: HashMap::new(),
            existing_anti_counts: HashMap::new(),
        };
        for node in &snap.nodes {
            for existing in &node.pods {
                let count = |terms: &[Term], counts: &mut HashMap<Pair, i64>, target: &Pod| {
                    for t in terms.iter().filter(|t| t.matches(target, snap)) {
                        if let Some(pair) = t.pair(node) {
                            *counts.entry(pair).or_default() += 1;
                        }
                    }
                };
                count(&state.affinity, &mut state.affinity_counts, existing);
                count(&state.anti, &mut state.anti_counts, existing);
                let theirs = Terms::of(existing);
                count(&theirs.anti, &mut state.existing_anti_counts, pod);
            }
        }
        state
    }

    /// Whether no required term is in play, so the filter passes every node.
    pub fn is_empty(&self) -> bool {
        self.affinity.is_empty() && self.anti.is_empty() && self.existing_anti_counts.is_empty()
    }

    /// The InterPodAffinity filter for one node.
    pub fn filter(&self, node: &NodeInfo) -> Status {
        if !self.satisfies_affinity(node) {
            return Err(Failure::unresolvable(ERR_AFFINITY));
        }
        let hit = |terms: &[Term], counts: &HashMap<Pair, i64>| {
            terms
                .iter()
                .filter_map(|t| t.pair(node))
                .any(|p| counts.get(&p).copied().unwrap_or(0) > 0)
        };
        if hit(&self.anti, &self.anti_counts) {
            return Err(Failure::unschedulable(ERR_ANTI_AFFINITY));
        }
        let existing = node.labels().iter().any(|(k, v)| {
            self.existing_anti_counts
                .get(&(k.clone(), v.clone()))
                .copied()
                .unwrap_or(0)
                > 0
        });
        if existing {
            return Err(Failure::unschedulable(ERR_EXISTING_ANTI_AFFINITY));
        }
        Ok(())
    }

    fn satisfies_affinity(&self, node: &NodeInfo) -> bool {
        let mut pods_exist = true;
        for t in &self.affinity {
            // Every topology key must be on the node, whether or not pods match.
            let Some(pair) = t.pair(node) else {
                return false;
            };
            if self.affinity_counts.get(&pair).copied().unwrap_or(0) <= 0 {
                pods_exist = false;
            }
        }
        // The first pod of a group that wants to be near itself may go anywhere with the
        // topology keys, as long as no other pod anywhere matches its terms.
        pods_exist || (self.affinity_counts.is_empty() && self.matches_own_affinity)
    }
}

/// Preferred (anti-)affinity scores, both directions, normalized to 0..=100 by min-max.
pub fn score(pod: &Pod, snap: &Snapshot, nodes: &[&NodeInfo]) -> Vec<i64> {
    let own = Terms::of(pod);
    let mut by_pair: HashMap<Pair, i64> = HashMap::new();
    for node in &snap.nodes {
        for existing in &node.pods {
            let mut add = |t: &Term, weight: i64, target: &Pod| {
                if t.matches(target, snap) {
                    if let Some(pair) = t.pair(node) {
                        *by_pair.entry(pair).or_default() += weight;
                    }
                }
            };
            for (w, t) in &own.preferred {
                add(t, *w, existing);
            }
            for (w, t) in &own.preferred_anti {
                add(t, -*w, existing);
            }
            let theirs = Terms::of(existing);
            if theirs.is_empty() {
                continue;
            }
            for t in &theirs.affinity {
                add(t, HARD_POD_AFFINITY_WEIGHT, pod);
            }
            for (w, t) in &theirs.preferred {
                add(t, *w, pod);
            }
            for (w, t) in &theirs.preferred_anti {
                add(t, -*w, pod);
            }
        }
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.labels()
                .iter()
                .filter_map(|(k, v)| by_pair.get(&(k.clone(), v.clone())))
                .sum()
        })
        .collect();
    let (min, max) = (
        raw.iter().copied().min().unwrap_or(0),
        raw.iter().copied().max().unwrap_or(0),
    );
    raw.iter()
        .map(|s| {
            if max > min {
                (100.0 * (s - min) as f64 / (max - min) as f64) as i64
            } else {
                0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{labelled, zoned_snapshot as snap};
    use k8s_openapi::api::core::v1::{Affinity, PodAffinity, PodAntiAffinity};

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), app.to_string())].into()),
                ..Default::default()
            }),
            topology_key: key.into(),
            ..Default::default()
        }
    }

    fn with_affinity(
        mut p: Pod,
        affinity: Vec<PodAffinityTerm>,
        anti: Vec<PodAffinityTerm>,
    ) -> Pod {
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(affinity),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(anti),
                ..Default::default()
            }),
            ..Default::default()
        });
        p
    }

    fn verdicts(p: &Pod, s: &Snapshot) -> Vec<Status> {
        let st = FilterState::new(p, s);
        s.nodes.iter().map(|n| st.filter(n)).collect()
    }

    #[test]
    fn required_affinity_follows_matching_pods_by_topology() {
        let s = snap(vec![labelled("db", Some("a1"), "db")]);
        let p = with_affinity(
            labelled("web", None, "web"),
            vec![term("db", "zone")],
            vec![],
        );
        let v = verdicts(&p, &s);
        assert_eq!(v[0], Ok(()));
        assert_eq!(v[1], Ok(()), "same zone as the db pod");
        assert_eq!(
            v[2],
            Err(Failure::unresolvable(
                "node(s) didn't match pod affinity rules"
            ))
        );
        assert!(
            v[3].is_err(),
            "a node without the topology key never matches"
        );
    }

    #[test]
    fn first_pod_of_a_self_affine_group_may_start_anywhere_with_the_key() {
        let s = snap(vec![]);
        let p = with_affinity(
            labelled("web", None, "web"),
            vec![term("web", "zone")],
            vec![],
        );
        let v = verdicts(&p, &s);
        assert_eq!(v[..3], [Ok(()), Ok(()), Ok(())]);
        assert!(v[3].is_err());
    }

    #[test]
    fn required_anti_affinity_avoids_the_topology_domain() {
        let s = snap(vec![labelled("web-1", Some("a1"), "web")]);
        let p = with_affinity(
            labelled("web-2", None, "web"),
            vec![],
            vec![term("web", "zone")],
        );
        let v = verdicts(&p, &s);
        assert_eq!(
            v[1],
            Err(Failure::unschedulable(
                "node(s) didn't match pod anti-affinity rules"
            ))
        );
        assert_eq!(v[2], Ok(()));
        assert_eq!(v[3], Ok(()), "no topology key, no domain to share");
    }

    #[test]
    fn existing_pods_anti_affinity_protects_them() {
        let guard = with_affinity(
            labelled("guard", Some("b1"), "guard"),
            vec![],
            vec![term("web", "kubernetes.io/hostname")],
        );
        let s = snap(vec![guard]);
        let v = verdicts(&labelled("web", None, "web"), &s);
        assert_eq!(
            v[2],
            Err(Failure::unschedulable(
                "node(s) didn't satisfy existing pods anti-affinity rules"
            ))
        );
        assert_eq!(v[0], Ok(()));
        assert_eq!(verdicts(&labelled("other", None, "db"), &s)[2], Ok(()));
    }

    #[test]
    fn terms_look_in_the_pods_namespace_unless_told_otherwise() {
        let mut elsewhere = labelled("db", Some("a1"), "db");
        elsewhere.metadata.namespace = Some("prod".into());
        let s = snap(vec![elsewhere]);
        let p = with_affinity(
            labelled("web", None, "web"),
            vec![term("db", "zone")],
            vec![],
        );
        assert!(verdicts(&p, &s)[0].is_err());
        let mut t = term("db", "zone");
        t.namespaces = Some(vec!["prod".into()]);
        let p = with_affinity(labelled("web", None, "web"), vec![t], vec![]);
        assert_eq!(verdicts(&p, &s)[0], Ok(()));
    }

    #[test]
    fn preferred_terms_score_by_weight_both_ways() {
        let s = snap(vec![
            labelled("db", Some("a1"), "db"),
            labelled("cache", Some("b1"), "cache"),
        ]);
        let mut p = labelled("web", None, "web");
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            pod_affinity: Some(PodAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 10,
                        pod_affinity_term: term("db", "zone"),
                    },
                ]),
                ..Default::default()
            }),
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 5,
                        pod_affinity_term: term("cache", "zone"),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let nodes: Vec<&NodeInfo> = s.nodes.iter().collect();
        // a: +10, b: -5, x: 0 → normalized between -5 and 10.
        assert_eq!(score(&p, &s, &nodes), vec![100, 100, 0, 33]);
        let plain = labelled("plain", None, "plain");
        assert_eq!(score(&plain, &s, &nodes), vec![0, 0, 0, 0]);
    }
}
