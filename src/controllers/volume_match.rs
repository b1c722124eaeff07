//! What a claim and a volume say about each other, for the PersistentVolume binder and
//! the provisioners: their classes, phases, sizes, and which volume fits a claim best
//! (upstream's `FindMatchingVolume` and `checkVolumeSatisfyClaim`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::scheduler::quantity;
use crate::scheduler::selector::{selector_matches, term_matches};

pub fn claim_ref(volume: &PersistentVolume) -> Option<&ObjectReference> {
    volume.spec.as_ref()?.claim_ref.as_ref()
}

pub fn has_annotation<K: ResourceExt>(object: &K, key: &str) -> bool {
    object.annotations().contains_key(key)
}

pub fn class_of_claim(claim: &PersistentVolumeClaim) -> String {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

pub fn class_of_volume(volume: &PersistentVolume) -> String {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

pub fn volume_phase(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether `volume` is reserved for exactly this claim (`IsVolumeBoundToClaim`).
pub fn bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    claim_ref(volume).is_some_and(|r| {
        r.name == claim.metadata.name
            && r.namespace == claim.metadata.namespace
            && r.uid
                .as_ref()
                .is_none_or(|uid| uid.is_empty() || Some(uid) == claim.metadata.uid.as_ref())
    })
}

pub fn requested(claim: &PersistentVolumeClaim) -> i64 {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(quantity::value)
        .unwrap_or(0)
}

pub fn capacity(volume: &PersistentVolume) -> i64 {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(quantity::value)
        .unwrap_or(0)
}

/// Why `volume` cannot serve `claim` (`checkVolumeSatisfyClaim`), if it cannot.
pub fn mismatch(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Option<String> {
    let (Some(spec), Some(want)) = (volume.spec.as_ref(), claim.spec.as_ref()) else {
        return Some("no spec".to_string());
    };
    if capacity(volume) < requested(claim) {
        return Some("requested PV is too small".to_string());
    }
    if class_of_volume(volume) != class_of_claim(claim) {
        return Some("storageClassName does not match".to_string());
    }
    let mode = |m: Option<&String>| m.map(String::as_str).unwrap_or("Filesystem").to_string();
    if mode(spec.volume_mode.as_ref()) != mode(want.volume_mode.as_ref()) {
        return Some("incompatible volumeMode".to_string());
    }
    let offered = spec.access_modes.as_deref().unwrap_or_default();
    if !want
        .access_modes
        .iter()
        .flatten()
        .all(|m| offered.contains(m))
    {
        return Some("incompatible accessMode".to_string());
    }
    None
}

/// Whether a volume's node affinity admits `node`.
pub fn admits(volume: &PersistentVolume, node: &Node) -> bool {
    let Some(required) = volume
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    else {
        return true;
    };
    let labels = node.labels().clone();
    required
        .node_selector_terms
        .iter()
        .any(|term| term_matches(term, &labels, &node.name_any()))
}

/// The volume to bind `claim` to (`FindMatchingVolume`): one pre-bound to it if it fits,
/// else the smallest fitting unclaimed one. With `delay` (a WaitForFirstConsumer class)
/// unclaimed volumes are only considered once a node is chosen, and must admit it.
pub fn best_match<'a>(
    claim: &PersistentVolumeClaim,
    volumes: &'a [PersistentVolume],
    delay: bool,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let selector = claim.spec.as_ref().and_then(|s| s.selector.as_ref());
    let mut best: Option<&PersistentVolume> = None;
    for volume in volumes {
        if volume.metadata.deletion_timestamp.is_some() || mismatch(volume, claim).is_some() {
            continue;
        }
        if bound_to(volume, claim) {
            return Some(volume);
        }
        if claim_ref(volume).is_some() || volume_phase(volume) != "Available" {
            continue;
        }
        match (delay, node) {
            (true, None) => continue,
            (_, Some(node)) if !admits(volume, node) => continue,
            _ => {}
        }
        if let Some(selector) = selector {
            if !selector_matches(selector, volume.labels()) {
                continue;
            }
        }
        if best.is_none_or(|b| capacity(volume) < capacity(b)) {
            best = Some(volume);
        }
    }
    best
}

pub fn reclaim_policy(volume: &PersistentVolume) -> &str {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain")
}

/// The storage a claim asks for, for the provisioner.
pub fn storage_request(claim: &PersistentVolumeClaim) -> BTreeMap<String, Quantity> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| BTreeMap::from([("storage".to_string(), q.clone())]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn volume(name: &str, size: &str, extra: serde_json::Value) -> PersistentVolume {
        let mut spec = json!({"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"disk": name}},
            "spec": spec, "status": {"phase": "Available"}}))
        .unwrap()
    }

    fn claim(size: &str, extra: serde_json::Value) -> PersistentVolumeClaim {
        let mut spec = json!({"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u"}, "spec": spec}),
        )
        .unwrap()
    }

    fn pick<'a>(claim: &PersistentVolumeClaim, volumes: &'a [PersistentVolume]) -> Option<&'a str> {
        best_match(claim, volumes, false, None).and_then(|v| v.metadata.name.as_deref())
    }

    #[test]
    fn the_smallest_fitting_volume_wins_and_prebinding_first() {
        let volumes = [
            volume("big", "10Gi", json!({})),
            volume("small", "2Gi", json!({})),
            volume("tiny", "1Mi", json!({})),
            volume("rwx", "2Gi", json!({"accessModes": ["ReadWriteMany"]})),
        ];
        assert_eq!(pick(&claim("1Gi", json!({})), &volumes), Some("small"));
        assert_eq!(
            pick(
                &claim("1Gi", json!({"accessModes": ["ReadWriteMany"]})),
                &volumes
            ),
            Some("rwx")
        );
        assert_eq!(pick(&claim("100Gi", json!({})), &volumes), None);
        let selected = claim("1Gi", json!({"selector": {"matchLabels": {"disk": "big"}}}));
        assert_eq!(pick(&selected, &volumes), Some("big"));
        let mut reserved = volumes.to_vec();
        reserved.push(volume(
            "mine",
            "50Gi",
            json!({"claimRef": {"name": "c", "namespace": "ns"}}),
        ));
        reserved.push(volume(
            "theirs",
            "1Gi",
            json!({"claimRef": {"name": "d", "namespace": "ns"}}),
        ));
        assert_eq!(pick(&claim("1Gi", json!({})), &reserved), Some("mine"));
    }

    #[test]
    fn delayed_binding_waits_for_a_node_its_volume_admits() {
        let pinned = volume(
            "pinned",
            "1Gi",
            json!({"nodeAffinity": {"required": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}),
        );
        let volumes = [pinned];
        let node = |name: &str| -> Node {
            serde_json::from_value(json!({"metadata": {"name": name,
                "labels": {"kubernetes.io/hostname": name}}}))
            .unwrap()
        };
        let c = claim("1Gi", json!({}));
        assert!(best_match(&c, &volumes, true, None).is_none());
        assert!(best_match(&c, &volumes, true, Some(&node("n2"))).is_none());
        assert!(best_match(&c, &volumes, true, Some(&node("n1"))).is_some());
    }
}
