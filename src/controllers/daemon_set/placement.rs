//! Which nodes a DaemonSet's pods belong on, and how its pods are pinned there, as
//! upstream's daemon controller and `daemon/util`: a node qualifies when the pod's
//! `nodeName` (if any), `nodeSelector` and required node affinity match it and it has no
//! NoSchedule/NoExecute taint the pod (with the DaemonSet default tolerations) does not
//! tolerate; a pod already there may stay through untolerated NoSchedule taints. Each pod
//! is pinned with the node-affinity term `matchFields metadata.name In [node]`, which the
//! scheduler then honours.
//!
//! Matching itself is the scheduler's ([`crate::scheduler::filter`], [`crate::scheduler::selector`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, PodTemplateSpec, Toleration,
};
use kube::ResourceExt;

use crate::controllers::revisions::POD_REVISION_LABEL;
use crate::scheduler::filter::matches_node_selector;
use crate::scheduler::selector::tolerated;
use crate::scheduler::NodeInfo;

/// The DaemonSet annotation upstream's API keeps the template generation in.
pub const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";
/// The pod label carrying that generation.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
/// The only field a node selector term may match.
const NODE_NAME_FIELD: &str = "metadata.name";

/// Adds the tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`):
/// it keeps running on not-ready and unreachable nodes, and is placed on nodes under
/// pressure or cordoned.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let toleration = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            value: None,
            toleration_seconds: None,
        };
        let same = |t: &Toleration| {
            t.key == toleration.key
                && t.operator.as_deref().unwrap_or("Equal") == "Exists"
                && t.effect == toleration.effect
                && t.value.as_deref().unwrap_or_default().is_empty()
        };
        match tolerations.iter_mut().find(|t| same(t)) {
            Some(existing) => *existing = toleration,
            None => tolerations.push(toleration),
        }
    }
}

/// The required node-affinity term pinning a pod to `node`.
fn node_name_term(node: &str) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: NODE_NAME_FIELD.into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    }
}

/// Replaces the pod's required node affinity with the term pinning it to `node` (upstream's
/// `ReplaceDaemonSetPodNodeNameNodeAffinity`; the node was chosen to satisfy the rest).
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![node_name_term(node)],
    });
}

/// The node a daemon pod is for: its `nodeName`, else the node its pinning term names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let [field] = term.match_fields.as_deref()? else {
        return None;
    };
    let values = field.values.as_deref().unwrap_or_default();
    match values {
        [node] if field.key == NODE_NAME_FIELD && field.operator == "In" => Some(node.clone()),
        _ => None,
    }
}

/// The DaemonSet's template generation, if its API recorded one.
pub fn template_generation(ds: &DaemonSet) -> Option<String> {
    ds.annotations()
        .get(TEMPLATE_GENERATION_ANNOTATION)
        .cloned()
}

/// The template new pods are made from: default tolerations, generation and revision labels
/// (upstream's `CreatePodTemplate`).
pub fn pod_template(ds: &DaemonSet, hash: &str) -> PodTemplateSpec {
    let mut template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    add_daemon_tolerations(template.spec.get_or_insert_with(PodSpec::default));
    let labels = template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    if let Some(generation) = template_generation(ds) {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), generation);
    }
    labels.insert(POD_REVISION_LABEL.into(), hash.into());
    template
}

/// Whether a pod is of the DaemonSet's current template (by revision hash or generation).
pub fn is_updated(pod: &Pod, hash: &str, generation: Option<&str>) -> bool {
    let labels = pod.labels();
    let hash_matches =
        !hash.is_empty() && labels.get(POD_REVISION_LABEL).map(String::as_str) == Some(hash);
    let generation_matches = generation.is_some()
        && labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str) == generation;
    hash_matches || generation_matches
}

/// Whether the DaemonSet should run a pod on `node`, and whether a pod already there may keep
/// running (upstream's `NodeShouldRunDaemonPod`).
pub fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let Some(template) = ds.spec.as_ref().map(|s| &s.template) else {
        return (false, false);
    };
    let mut spec = template.spec.clone().unwrap_or_default();
    let node_name = node.name_any();
    if spec
        .node_name
        .as_ref()
        .is_some_and(|n| !n.is_empty() && *n != node_name)
    {
        return (false, false);
    }
    add_daemon_tolerations(&mut spec);
    spec.node_name = Some(node_name);
    let pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: Some(spec),
        status: None,
    };
    if !matches_node_selector(&pod, &NodeInfo::new(node.clone())) {
        return (false, false);
    }
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let untolerated = |effects: &[&str]| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|t| effects.contains(&t.effect.as_str()) && !tolerated(tolerations, t))
    };
    if untolerated(&["NoSchedule", "NoExecute"]) {
        return (false, !untolerated(&["NoExecute"]));
    }
    (true, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ds(template_spec: serde_json::Value) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": {"name": "agent", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": template_spec}}
        }))
        .unwrap()
    }

    fn node(labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints}}))
        .unwrap()
    }

    #[test]
    fn selectors_and_taints_decide() {
        let plain = ds(json!({"containers": [{"name": "c", "image": "i"}]}));
        assert_eq!(
            should_run(&plain, &node(json!({}), json!([]))),
            (true, true)
        );
        let picky = ds(json!({"containers": [], "nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            should_run(&picky, &node(json!({}), json!([]))),
            (false, false)
        );
        assert_eq!(
            should_run(&picky, &node(json!({"disk": "ssd"}), json!([]))),
            (true, true)
        );
        let no_schedule = json!([{"key": "gpu", "value": "x", "effect": "NoSchedule"}]);
        assert_eq!(
            should_run(&plain, &node(json!({}), no_schedule)),
            (false, true)
        );
        let no_execute = json!([{"key": "gpu", "effect": "NoExecute"}]);
        assert_eq!(
            should_run(&plain, &node(json!({}), no_execute)),
            (false, false)
        );
        let cordon = json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]);
        assert_eq!(
            should_run(&plain, &node(json!({}), cordon)),
            (true, true),
            "default toleration"
        );
        let named = ds(json!({"containers": [], "nodeName": "n2"}));
        assert_eq!(
            should_run(&named, &node(json!({}), json!([]))),
            (false, false)
        );
    }

    #[test]
    fn pods_are_pinned_and_tolerate_node_conditions() {
        let set = ds(json!({"containers": [], "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 5}]}));
        let mut template = pod_template(&set, "h1");
        let spec = template.spec.as_mut().unwrap();
        let tolerations = spec.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 6);
        assert_eq!(tolerations[0].toleration_seconds, None, "replaced in place");
        pin_to_node(spec, "n7");
        let pod = Pod {
            spec: Some(spec.clone()),
            ..Pod::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels[POD_REVISION_LABEL], "h1");
        let pod = Pod {
            metadata: template.metadata.clone().unwrap(),
            ..Pod::default()
        };
        assert!(is_updated(&pod, "h1", None) && !is_updated(&pod, "h2", None));
    }
}
