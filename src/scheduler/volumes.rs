//! Volume binding, as upstream's VolumeBinding plugin sees a pod's PersistentVolumeClaims:
//!
//! - a claim that does not exist, is being deleted, or is unbound with `Immediate`
//!   binding makes the pod unschedulable on every node (PreFilter), in upstream's words;
//! - a bound claim restricts the pod to the nodes its PersistentVolume's `nodeAffinity`
//!   admits ("node(s) had volume node affinity conflict");
//! - an unbound claim of a `WaitForFirstConsumer` StorageClass follows the pod: once a
//!   node is picked, the claim is annotated `volume.kubernetes.io/selected-node` for the
//!   provisioner, and the pod is bound only when the claim is Bound (upstream's PreBind).
//!   Until then a claim promised to one node keeps the pod off the others, and a class's
//!   `allowedTopologies` limits where it may be provisioned.
//!
//! [`Volumes`] is the cache of claims, volumes and classes; [`VolumeFilter`] the per-pod,
//! per-node check the filters run. Static PersistentVolumes are not matched to
//! `WaitForFirstConsumer` claims here: such claims are left to dynamic provisioning.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim, Pod, TopologySelectorTerm,
};
use k8s_openapi::api::storage::v1::StorageClass;

use super::filter::{Failure, Status};
use super::queue::Key;
use super::selector::term_matches;
use super::snapshot::NodeInfo;

/// The annotation telling a provisioner on which node to provision a claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ERR_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const ERR_PV_NOT_EXIST: &str =
    "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
pub const UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";

/// What a pod's claims ask of a node.
#[derive(Debug, Clone, Default)]
pub struct VolumeFilter {
    /// The `nodeAffinity` terms of the volumes bound to the pod's claims: each volume's
    /// terms must admit the node.
    pub volume_affinity: Vec<Vec<NodeSelectorTerm>>,
    /// A bound claim's volume is missing.
    pub missing_volume: bool,
    /// Nodes that unbound delayed claims were already promised to.
    pub selected_nodes: Vec<String>,
    /// `allowedTopologies` of the classes that will provision the unbound delayed claims.
    pub allowed_topologies: Vec<Vec<TopologySelectorTerm>>,
}

impl VolumeFilter {
    /// Upstream's VolumeBinding Filter for one node.
    pub fn filter(&self, node: &NodeInfo) -> Status {
        if self.missing_volume {
            return Err(Failure::unresolvable(ERR_PV_NOT_EXIST));
        }
        let labels = node.labels();
        let admits = |terms: &Vec<NodeSelectorTerm>| {
            terms.iter().any(|t| term_matches(t, labels, node.name()))
        };
        if !self.volume_affinity.iter().all(admits) {
            return Err(Failure::unresolvable(ERR_NODE_CONFLICT));
        }
        let promised_elsewhere = self.selected_nodes.iter().any(|n| n != node.name());
        let topology_ok = |terms: &Vec<TopologySelectorTerm>| {
            terms.is_empty()
                || terms.iter().any(|term| {
                    term.match_label_expressions
                        .iter()
                        .flatten()
                        .all(|req| labels.get(&req.key).is_some_and(|v| req.values.contains(v)))
                })
        };
        if promised_elsewhere || !self.allowed_topologies.iter().all(topology_ok) {
            return Err(Failure::unresolvable(ERR_BIND_CONFLICT));
        }
        Ok(())
    }
}

/// A pod's claims as the scheduler sees them, when no claim rules the pod out everywhere.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    pub filter: VolumeFilter,
    /// Unbound `WaitForFirstConsumer` claims to be provisioned on the chosen node.
    pub to_provision: Vec<Key>,
}

/// The claims, volumes and classes the scheduler has seen.
#[derive(Debug, Default)]
pub struct Volumes {
    pub claims: HashMap<Key, PersistentVolumeClaim>,
    pub volumes: HashMap<String, PersistentVolume>,
    pub classes: HashMap<String, StorageClass>,
}

/// The claims a pod uses: (claim name, whether it is a generic ephemeral volume's).
fn pod_claims(pod: &Pod) -> Vec<(String, bool)> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(claim) = &v.persistent_volume_claim {
                Some((claim.claim_name.clone(), false))
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| (format!("{pod_name}-{}", v.name), true))
            }
        })
        .collect()
}

/// Whether a pod uses any PersistentVolumeClaim (most do not: no work for them).
pub fn has_claims(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
}

fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .or_else(|| {
            claim
                .metadata
                .annotations
                .as_ref()?
                .get("volume.beta.kubernetes.io/storage-class")
                .map(String::as_str)
        })
        .filter(|c| !c.is_empty())
}

fn bound_volume(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty())
}

impl Volumes {
    /// Upstream's PreFilter: the pod's claims, or the message that makes it unschedulable
    /// on every node.
    pub fn prepare(&self, pod: &Pod) -> Result<PodVolumes, String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let mut out = PodVolumes::default();
        let mut unbound_immediate = false;
        for (name, ephemeral) in pod_claims(pod) {
            let key = (namespace.clone(), name.clone());
            let Some(claim) = self.claims.get(&key) else {
                return Err(if ephemeral {
                    format!(
                        "waiting for ephemeral volume controller to create the persistentvolumeclaim \"{name}\""
                    )
                } else {
                    format!("persistentvolumeclaim \"{name}\" not found")
                });
            };
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            if let Some(volume) = bound_volume(claim) {
                match self.volumes.get(volume) {
                    Some(pv) => {
                        let terms = pv
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_affinity.as_ref())
                            .and_then(|a| a.required.as_ref())
                            .map(|r| r.node_selector_terms.clone());
                        if let Some(terms) = terms {
                            out.filter.volume_affinity.push(terms);
                        }
                    }
                    None => out.filter.missing_volume = true,
                }
                continue;
            }
            let class = match claim_class(claim) {
                None => None,
                Some(class) => match self.classes.get(class) {
                    Some(c) => Some(c),
                    None => {
                        return Err(format!("storageclass.storage.k8s.io \"{class}\" not found"))
                    }
                },
            };
            let delayed = class
                .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"));
            if !delayed {
                unbound_immediate = true;
                continue;
            }
            if let Some(node) = claim
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SELECTED_NODE))
            {
                out.filter.selected_nodes.push(node.clone());
            }
            if let Some(topologies) = class.and_then(|c| c.allowed_topologies.clone()) {
                out.filter.allowed_topologies.push(topologies);
            }
            out.to_provision.push(key);
        }
        if unbound_immediate {
            return Err(UNBOUND_IMMEDIATE.to_string());
        }
        Ok(out)
    }

    /// Whether every one of `claims` is Bound (upstream's PreBind wait).
    pub fn all_bound(&self, claims: &[Key]) -> bool {
        claims.iter().all(|key| {
            self.claims.get(key).is_some_and(|c| {
                bound_volume(c).is_some()
                    && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            })
        })
    }

    /// Whether `claim` already carries the selected-node annotation for `node`.
    pub fn selected(&self, claim: &Key, node: &str) -> bool {
        self.claims
            .get(claim)
            .and_then(|c| c.metadata.annotations.as_ref())
            .and_then(|a| a.get(SELECTED_NODE))
            .is_some_and(|n| n == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{node, pod};
    use serde_json::json;

    fn claim(name: &str, class: Option<&str>, volume: Option<&str>) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"storageClassName": class, "volumeName": volume},
            "status": {"phase": if volume.is_some() { "Bound" } else { "Pending" }},
        }))
        .unwrap()
    }

    fn with_claim(name: &str) -> Pod {
        let mut p = pod("p", None, &[]);
        p.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(
            json!({"name": "data", "persistentVolumeClaim": {"claimName": name}}),
        )
        .unwrap()]);
        p
    }

    fn class(name: &str, mode: &str) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": name}, "provisioner": "rancher.io/local-path",
            "volumeBindingMode": mode,
        }))
        .unwrap()
    }

    fn volumes() -> Volumes {
        let mut v = Volumes::default();
        for c in [
            class("local", "WaitForFirstConsumer"),
            class("now", "Immediate"),
        ] {
            v.classes.insert(c.metadata.name.clone().unwrap(), c);
        }
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv-a"},
            "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]}]}}},
        }))
        .unwrap();
        v.volumes.insert("pv-a".into(), pv);
        for c in [
            claim("bound", Some("local"), Some("pv-a")),
            claim("lazy", Some("local"), None),
            claim("eager", Some("now"), None),
            claim("orphan", Some("local"), Some("pv-gone")),
        ] {
            v.claims
                .insert(("default".into(), c.metadata.name.clone().unwrap()), c);
        }
        v
    }

    fn worker(name: &str) -> NodeInfo {
        NodeInfo::new(node(name, &[("cpu", "1"), ("pods", "10")]))
    }

    #[test]
    fn missing_and_immediate_claims_rule_the_pod_out_everywhere() {
        let v = volumes();
        assert_eq!(
            v.prepare(&with_claim("nope")).unwrap_err(),
            "persistentvolumeclaim \"nope\" not found"
        );
        assert_eq!(
            v.prepare(&with_claim("eager")).unwrap_err(),
            UNBOUND_IMMEDIATE
        );
        assert!(v.prepare(&pod("plain", None, &[])).is_ok());
    }

    #[test]
    fn bound_claims_follow_their_volume() {
        let v = volumes();
        let p = v.prepare(&with_claim("bound")).unwrap();
        assert!(p.to_provision.is_empty());
        assert!(p.filter.filter(&worker("a")).is_ok());
        assert_eq!(
            p.filter.filter(&worker("b")).unwrap_err(),
            Failure::unresolvable(ERR_NODE_CONFLICT)
        );
        let p = v.prepare(&with_claim("orphan")).unwrap();
        assert_eq!(
            p.filter.filter(&worker("a")).unwrap_err(),
            Failure::unresolvable(ERR_PV_NOT_EXIST)
        );
    }

    #[test]
    fn delayed_claims_are_provisioned_where_the_pod_goes() {
        let mut v = volumes();
        let p = v.prepare(&with_claim("lazy")).unwrap();
        assert_eq!(p.to_provision, vec![("default".into(), "lazy".into())]);
        assert!(p.filter.filter(&worker("b")).is_ok());
        assert!(!v.all_bound(&p.to_provision));

        let key = ("default".to_string(), "lazy".to_string());
        let lazy = v.claims.get_mut(&key).unwrap();
        lazy.metadata.annotations = Some([(SELECTED_NODE.to_string(), "b".to_string())].into());
        assert!(v.selected(&key, "b"));
        let p = v.prepare(&with_claim("lazy")).unwrap();
        assert!(p.filter.filter(&worker("b")).is_ok());
        assert_eq!(
            p.filter.filter(&worker("a")).unwrap_err(),
            Failure::unresolvable(ERR_BIND_CONFLICT),
            "promised to another node"
        );
        let lazy = v.claims.get_mut(&key).unwrap();
        lazy.spec.as_mut().unwrap().volume_name = Some("pv-a".into());
        lazy.status.as_mut().unwrap().phase = Some("Bound".into());
        assert!(v.all_bound(&[key]));
    }
}
