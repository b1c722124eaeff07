//! Scores: how good is each feasible node? One function per upstream score plugin, each
//! normalized to 0..=100, summed with the default profile's weights.
//!
//! Weights as upstream's default profile: TaintToleration 3, NodeAffinity 2,
//! PodTopologySpread 2, InterPodAffinity 2, NodeResourcesFit (LeastAllocated over cpu and
//! memory) 1, NodeResourcesBalancedAllocation 1, ImageLocality 1.

use k8s_openapi::api::core::v1::Pod;

use super::interpod;
use super::resources::{pod_requests, Missing, Resources};
use super::selector::{term_matches, tolerates};
use super::snapshot::{NodeInfo, Snapshot};
use super::spread;

pub const MAX_NODE_SCORE: i64 = 100;

/// The weighted total score of each of `nodes` (feasible nodes, in order).
pub fn score_nodes(pod: &Pod, snap: &Snapshot, nodes: &[&NodeInfo]) -> Vec<i64> {
    let non_zero = pod_requests(pod, Missing::Default);
    let requests = pod_requests(pod, Missing::Zero);
    // Upstream skips BalancedAllocation for pods requesting no cpu or memory: every node
    // would look equally balanced to them, piling them onto one node (kubernetes#129138).
    let best_effort = requests.milli_cpu == 0 && requests.memory == 0;
    let images = ImageLocality::new(pod, snap);
    let mut total: Vec<i64> = nodes
        .iter()
        .map(|n| {
            let balanced = if best_effort {
                0
            } else {
                balanced_allocation(&requests, n)
            };
            least_allocated(&non_zero, n) + balanced + images.score(n)
        })
        .collect();
    let weighted = [
        (3, taint_toleration(pod, nodes)),
        (2, node_affinity(pod, nodes)),
        (2, spread::score(pod, snap, nodes)),
        (2, interpod::score(pod, snap, nodes)),
    ];
    for (w, scores) in weighted {
        for (t, s) in total.iter_mut().zip(scores) {
            *t += w * s;
        }
    }
    total
}

/// NodeResourcesFit, LeastAllocated: the share of cpu and memory left free once the pod
/// is placed (counting best-effort containers at 100m/200Mi).
pub fn least_allocated(pod: &Resources, node: &NodeInfo) -> i64 {
    let free = |alloc: i64, used: i64, want: i64| {
        let req = used + want;
        if alloc == 0 || req > alloc {
            0
        } else {
            (alloc - req) * MAX_NODE_SCORE / alloc
        }
    };
    let used = &node.non_zero_requested;
    let cpu = free(node.allocatable.milli_cpu, used.milli_cpu, pod.milli_cpu);
    let mem = free(node.allocatable.memory, used.memory, pod.memory);
    (cpu + mem) / 2
}

/// NodeResourcesBalancedAllocation: nodes whose cpu and memory fill up evenly score
/// higher (100 minus the standard deviation of the used fractions).
pub fn balanced_allocation(pod: &Resources, node: &NodeInfo) -> i64 {
    let fractions: Vec<f64> = [
        (
            node.allocatable.milli_cpu,
            node.requested.milli_cpu + pod.milli_cpu,
        ),
        (node.allocatable.memory, node.requested.memory + pod.memory),
    ]
    .iter()
    .filter(|(alloc, _)| *alloc != 0)
    .map(|(alloc, req)| (*req as f64 / *alloc as f64).min(1.0))
    .collect();
    let std = match fractions.len() {
        2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

/// Scales raw scores so the best is 100 (or, `reverse`, the worst is 0), as upstream's
/// `DefaultNormalizeScore`.
fn normalize(raw: Vec<i64>, reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.into_iter()
        .map(|s| match (max, reverse) {
            (0, true) => MAX_NODE_SCORE,
            (0, false) => s,
            (_, false) => MAX_NODE_SCORE * s / max,
            (_, true) => MAX_NODE_SCORE - MAX_NODE_SCORE * s / max,
        })
        .collect()
}

/// NodeAffinity: the summed weights of the preferred terms a node matches.
pub fn node_affinity(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let preferred = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default();
    let raw = nodes
        .iter()
        .map(|n| {
            preferred
                .iter()
                .filter(|t| term_matches(&t.preference, n.labels(), n.name()))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .collect();
    normalize(raw, false)
}

/// TaintToleration: fewer untolerated PreferNoSchedule taints score higher.
pub fn taint_toleration(pod: &Pod, nodes: &[&NodeInfo]) -> Vec<i64> {
    let tolerations: Vec<_> = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    let raw = nodes
        .iter()
        .map(|n| {
            let taints = n.node.spec.as_ref().and_then(|s| s.taints.as_deref());
            taints
                .unwrap_or_default()
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
                .count() as i64
        })
        .collect();
    normalize(raw, true)
}

const MB: i64 = 1024 * 1024;
/// Below this, an image is cheap to pull anyway (upstream's minThreshold).
const IMAGE_MIN: i64 = 23 * MB;
/// Per container, above this the score saturates (upstream's maxContainerThreshold).
const IMAGE_MAX_PER_CONTAINER: i64 = 1000 * MB;

/// Whether a node's image name is `want` (already normalized) once the implied
/// `:latest` tag is added, as upstream compares them; without allocating per name.
fn same_image(name: &str, want: &str) -> bool {
    let tagged = name.rfind(':').unwrap_or(0) > name.rfind('/').unwrap_or(0) || name.contains('@');
    if tagged {
        name == want
    } else {
        want.strip_suffix(":latest") == Some(name)
    }
}

/// An image name with the implied `:latest` tag.
fn normalized_image(name: &str) -> String {
    if same_image(name, name) {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The size of `image` on a node, if the node reports having it.
fn image_size(node: &NodeInfo, image: &str) -> Option<i64> {
    let images = node
        .node
        .status
        .as_ref()
        .and_then(|s| s.images.as_deref())?;
    images
        .iter()
        .find(|i| i.names.iter().flatten().any(|n| same_image(n, image)))
        .map(|i| i.size_bytes.unwrap_or(0))
}

/// ImageLocality: nodes that already hold the pod's (big) images score higher, scaled by
/// how widespread each image is so that pods do not all pile onto one node.
pub struct ImageLocality {
    /// Each container image (normalized) with the share of nodes holding it.
    images: Vec<(String, f64)>,
    containers: i64,
}

impl ImageLocality {
    /// Counts, once per pod, how many nodes hold each of its images.
    pub fn new(pod: &Pod, snap: &Snapshot) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return ImageLocality {
                images: Vec::new(),
                containers: 0,
            };
        };
        let all = || {
            spec.init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
        };
        let total_nodes = snap.nodes.len().max(1) as f64;
        let images = all()
            .filter_map(|c| c.image.as_deref())
            .map(|img| {
                let img = normalized_image(img);
                let holders = snap
                    .nodes
                    .iter()
                    .filter(|n| image_size(n, &img).is_some())
                    .count();
                (img, holders as f64 / total_nodes)
            })
            .collect();
        ImageLocality {
            images,
            containers: all().count() as i64,
        }
    }

    pub fn score(&self, node: &NodeInfo) -> i64 {
        let sum: i64 = self
            .images
            .iter()
            .filter_map(|(img, spread)| Some((image_size(node, img)? as f64 * spread) as i64))
            .sum();
        let max = IMAGE_MAX_PER_CONTAINER * self.containers;
        if max <= IMAGE_MIN {
            return 0;
        }
        MAX_NODE_SCORE * (sum.clamp(IMAGE_MIN, max) - IMAGE_MIN) / (max - IMAGE_MIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{info, node, pod};
    use k8s_openapi::api::core::v1::{
        Affinity, ContainerImage, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm,
        NodeSpec, PreferredSchedulingTerm, Taint, Toleration,
    };

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let n = info(
            node("n1", &[("cpu", "4"), ("memory", "4Gi")]),
            vec![pod("a", Some("n1"), &[("cpu", "1"), ("memory", "1Gi")])],
        );
        let p = pod_requests(
            &pod("p", None, &[("cpu", "1"), ("memory", "1Gi")]),
            Missing::Default,
        );
        // cpu: (4000-2000)*100/4000 = 50; memory likewise.
        assert_eq!(least_allocated(&p, &n), 50);
        // A best-effort pod still counts as 100m / 200Mi.
        let be = pod_requests(&pod("p", None, &[]), Missing::Default);
        let empty = info(node("n2", &[("cpu", "1"), ("memory", "1000Mi")]), vec![]);
        assert_eq!(least_allocated(&be, &empty), (90 + 80) / 2);
        let over = pod_requests(
            &pod("p", None, &[("cpu", "8"), ("memory", "1Gi")]),
            Missing::Default,
        );
        assert_eq!(least_allocated(&over, &n), 25);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let n = info(node("n1", &[("cpu", "4"), ("memory", "4Gi")]), vec![]);
        let even = pod_requests(
            &pod("p", None, &[("cpu", "2"), ("memory", "2Gi")]),
            Missing::Zero,
        );
        assert_eq!(balanced_allocation(&even, &n), 100);
        let skewed = pod_requests(
            &pod("p", None, &[("cpu", "4"), ("memory", "0")]),
            Missing::Zero,
        );
        assert_eq!(balanced_allocation(&skewed, &n), 50);
    }

    #[test]
    fn preferred_node_affinity_weights_normalized() {
        let mut ssd = node("ssd", &[]);
        ssd.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("disk".into(), "ssd".into());
        let nodes = [info(ssd, vec![]), info(node("plain", &[]), vec![])];
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let mut p = pod("p", None, &[]);
        assert_eq!(node_affinity(&p, &refs), vec![0, 0]);
        p.spec.as_mut().unwrap().affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 30,
                        preference: NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "disk".into(),
                                operator: "In".into(),
                                values: Some(vec!["ssd".into()]),
                            }]),
                            match_fields: None,
                        },
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(node_affinity(&p, &refs), vec![100, 0]);
    }

    #[test]
    fn prefer_no_schedule_taints_lower_the_score() {
        let mut soft = node("soft", &[]);
        soft.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "spot".into(),
                effect: "PreferNoSchedule".into(),
                value: None,
                time_added: None,
            }]),
            ..Default::default()
        });
        let nodes = [info(soft, vec![]), info(node("plain", &[]), vec![])];
        let refs: Vec<&NodeInfo> = nodes.iter().collect();
        let mut p = pod("p", None, &[]);
        assert_eq!(taint_toleration(&p, &refs), vec![0, 100]);
        p.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some("spot".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        assert_eq!(taint_toleration(&p, &refs), vec![100, 100]);
    }

    #[test]
    fn image_locality_favours_nodes_with_big_images() {
        let mut has = node("has", &[]);
        has.status.as_mut().unwrap().images = Some(vec![ContainerImage {
            names: Some(vec!["registry.local/big:latest".into()]),
            size_bytes: Some(523 * MB),
        }]);
        let snap = Snapshot::new(vec![has, node("lacks", &[])], vec![]);
        let mut p = pod("p", None, &[]);
        p.spec.as_mut().unwrap().containers[0].image = Some("registry.local/big".into());
        // 523MB spread over half the nodes: 261.5MB, scaled between 23MB and 1000MB.
        assert_eq!(
            ImageLocality::new(&p, &snap).score(&snap.nodes[0]),
            100 * (261 * MB + MB / 2 - 23 * MB) / (977 * MB)
        );
        assert_eq!(ImageLocality::new(&p, &snap).score(&snap.nodes[1]), 0);
        assert_eq!(normalized_image("nginx"), "nginx:latest");
        assert_eq!(
            normalized_image("host:5000/nginx"),
            "host:5000/nginx:latest"
        );
        assert_eq!(normalized_image("nginx:1.25"), "nginx:1.25");
        assert!(same_image("nginx", "nginx:latest"));
        assert!(!same_image("nginx", "nginx:1.25"));
        assert!(same_image("nginx@sha256:ab", "nginx@sha256:ab"));
    }

    #[test]
    fn weighted_total_combines_plugins() {
        let snap = Snapshot::new(
            vec![
                node("big", &[("cpu", "8"), ("memory", "8Gi")]),
                node("small", &[("cpu", "1"), ("memory", "1Gi")]),
            ],
            vec![],
        );
        let p = pod("p", None, &[("cpu", "500m"), ("memory", "512Mi")]);
        let refs: Vec<&NodeInfo> = snap.nodes.iter().collect();
        let s = score_nodes(&p, &snap, &refs);
        assert!(s[0] > s[1], "{s:?}");
        // Taint (3×100) on both; least allocated and balanced differ.
        assert_eq!(s[1], 50 + 100 + 300);
        let best_effort = pod("p", None, &[]);
        let s = score_nodes(&best_effort, &snap, &refs);
        // No balanced-allocation share: least allocated (100m/200Mi assumed) and taints only.
        assert_eq!(s[1], (90 + 80) / 2 + 300);
    }
}
