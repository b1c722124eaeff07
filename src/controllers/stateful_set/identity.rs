//! A StatefulSet pod's identity and storage: its name `<set>-<ordinal>`, the labels naming
//! it and its index, its hostname and subdomain (the headless Service's DNS name
//! `<pod>.<serviceName>`), and one PersistentVolumeClaim per `volumeClaimTemplates` entry,
//! named `<template>-<set>-<ordinal>` and mounted under the template's name.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use kube::ResourceExt;

use crate::controllers::ownership::controller_ref;
use crate::controllers::pods::from_template;
use crate::controllers::revisions::POD_REVISION_LABEL;

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The parent name and ordinal a pod's name encodes (`(.*)-([0-9]+)$`).
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, ordinal) = name.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, ordinal.parse().ok()?))
}

/// A pod's ordinal, if its name has one.
pub fn ordinal(pod: &Pod) -> Option<i32> {
    parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or_default()).map(|(_, o)| o)
}

/// Whether a pod's name makes it a member of `set`.
pub fn is_member(set: &StatefulSet, pod: &Pod) -> bool {
    parent_and_ordinal(pod.metadata.name.as_deref().unwrap_or_default())
        .is_some_and(|(parent, _)| parent == set.name_any())
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// The first ordinal (`spec.ordinals.start`, default 0).
pub fn start_ordinal(set: &StatefulSet) -> i32 {
    set.spec
        .as_ref()
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
}

pub fn replicas(set: &StatefulSet) -> i32 {
    set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Whether an ordinal is among the set's wanted pods.
pub fn in_range(set: &StatefulSet, ordinal: i32) -> bool {
    let start = start_ordinal(set);
    ordinal >= start && ordinal < start + replicas(set)
}

/// The revision a pod was made from.
pub fn revision_of(pod: &Pod) -> &str {
    pod.labels()
        .get(POD_REVISION_LABEL)
        .map(String::as_str)
        .unwrap_or_default()
}

/// The pod of `set` with `ordinal`, from `template` (the template of revision `revision`).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let mut pod = from_template(template, &controller_ref(set));
    pod.metadata.name = Some(pod_name(set, ordinal));
    pod.metadata.namespace = set.namespace();
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_REVISION_LABEL.into(), revision.into());
    update_identity(set, &mut pod);
    let service = set
        .spec
        .as_ref()
        .map(|s| s.service_name.clone())
        .unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = pod.metadata.name.clone();
        spec.subdomain = service.filter(|s| !s.is_empty());
    }
    update_storage(set, &mut pod);
    pod
}

/// The identity labels a member pod must carry.
pub fn identity_labels(pod_name: &str, ordinal: i32) -> [(&'static str, String); 2] {
    [
        (POD_NAME_LABEL, pod_name.to_string()),
        (POD_INDEX_LABEL, ordinal.to_string()),
    ]
}

/// Whether a pod has the identity its name gives it in `set`.
pub fn identity_matches(set: &StatefulSet, pod: &Pod) -> bool {
    let name = pod.name_any();
    let Some((parent, ordinal)) = parent_and_ordinal(&name) else {
        return false;
    };
    parent == set.name_any()
        && pod.namespace() == set.namespace()
        && identity_labels(&name, ordinal)
            .iter()
            .all(|(k, v)| pod.labels().get(*k) == Some(v))
}

fn update_identity(set: &StatefulSet, pod: &mut Pod) {
    let name = pod.name_any();
    let ordinal = parent_and_ordinal(&name).map_or(0, |(_, o)| o);
    pod.metadata.namespace = set.namespace();
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in identity_labels(&name, ordinal) {
        labels.insert(k.into(), v);
    }
}

/// The claims a member pod with `ordinal` mounts, by template name: the templates named
/// for the pod, labelled with the set's `matchLabels` (on top of the template's own).
pub fn claims(set: &StatefulSet, ordinal: i32) -> Vec<(String, PersistentVolumeClaim)> {
    let Some(spec) = set.spec.as_ref() else {
        return Vec::new();
    };
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .iter()
        .flatten()
        .map(|template| {
            let template_name = template.name_any();
            let mut claim = template.clone();
            claim.metadata.name = Some(claim_name(&template_name, &set.name_any(), ordinal));
            claim.metadata.namespace = set.namespace();
            let labels = claim.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.extend(match_labels.clone());
            claim.status = None;
            (template_name, claim)
        })
        .collect()
}

pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// Mounts the pod's claims, replacing template volumes of the same names.
fn update_storage(set: &StatefulSet, pod: &mut Pod) {
    let Some(ordinal) = ordinal(pod) else { return };
    let claims = claims(set, ordinal);
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    let mut volumes: Vec<Volume> = claims
        .iter()
        .map(|(template, claim)| Volume {
            name: template.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.name_any(),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    volumes.extend(
        spec.volumes
            .take()
            .into_iter()
            .flatten()
            .filter(|v| !claims.iter().any(|(t, _)| t == &v.name)),
    );
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u"},
            "spec": {
                "replicas": 2, "serviceName": "nginx",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                        "volumes": [{"name": "www", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn names_and_ordinals() {
        assert_eq!(parent_and_ordinal("web-12"), Some(("web", 12)));
        assert_eq!(parent_and_ordinal("my-web-0"), Some(("my-web", 0)));
        assert_eq!(parent_and_ordinal("web-x"), None);
        assert_eq!(parent_and_ordinal("web"), None);
        let set = set();
        assert!(in_range(&set, 1) && !in_range(&set, 2));
    }

    #[test]
    fn a_new_pod_has_identity_storage_and_revision() {
        let set = set();
        let template = set.spec.as_ref().unwrap().template.clone();
        let pod = new_pod(&set, &template, 1, "web-abc");
        assert_eq!(pod.name_any(), "web-1");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("web-"));
        let labels = pod.labels();
        assert_eq!(labels[POD_NAME_LABEL], "web-1");
        assert_eq!(labels[POD_INDEX_LABEL], "1");
        assert_eq!(labels[POD_REVISION_LABEL], "web-abc");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-1"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2, "www replaced, tmp kept");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "www-web-1"
        );
        assert!(identity_matches(&set, &pod));
        let (_, claim) = &claims(&set, 1)[0];
        assert_eq!(claim.labels()["app"], "web");
    }
}
