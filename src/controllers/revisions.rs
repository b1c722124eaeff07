//! ControllerRevisions: the history StatefulSets and DaemonSets keep of their pod
//! templates, which `kubectl rollout history/undo` read. As upstream, a revision's `data` is
//! the strategic merge patch that restores the template,
//! `{"spec":{"template":{…,"$patch":"replace"}}}`, its `revision` a number growing with each
//! change, and it is named `<owner>-<hash>`; a rollback (the template equal to an older
//! revision's again) renumbers that revision rather than writing a new one.
//!
//! Also here: the short hashes upstream names revisions and labels pods with, FNV-32 over
//! the data rendered in the alphabet of `rand.SafeEncodeString`.

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};

use super::ownership::{controller_ref, selector_query, Claimer};
use super::ControllerError;

/// The label StatefulSet revisions carry their data's hash in.
pub const HASH_LABEL: &str = "controller.kubernetes.io/hash";
/// The label naming the revision a pod was made from (and DaemonSet revisions' hash).
pub const POD_REVISION_LABEL: &str = "controller-revision-hash";
/// Upstream keeps revision names within 253 characters by cutting the owner's name here.
const MAX_PREFIX: usize = 223;

/// The revision data recording `template`: the patch that puts it back.
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision records.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// Whether a revision records exactly `data`.
pub fn records(revision: &ControllerRevision, data: &Value) -> bool {
    revision.data.as_ref().is_some_and(|d| &d.0 == data)
}

/// FNV-1, 32 bits (Go's `fnv.New32`).
fn fnv1_32(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash = hash.wrapping_mul(0x0100_0193);
        hash ^= u32::from(*byte);
    }
    hash
}

/// FNV-1a, 32 bits (Go's `fnv.New32a`).
fn fnv1a_32(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// A number in apimachinery's `SafeEncodeString` alphabet (no vowels, no bad words).
fn safe_encode(n: u32) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The hash of revision data, with the collision count mixed in (upstream's
/// `HashControllerRevision`): StatefulSet revision names.
pub fn data_hash(data: &Value, collision_count: i32) -> String {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    let probe = collision_count.to_string();
    safe_encode(fnv1_32(&[&bytes, probe.as_bytes()]))
}

/// The hash of a pod template, with the collision count mixed in (upstream's
/// `controller.ComputeHash`): DaemonSet revision names and `controller-revision-hash`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut count = [0u8; 8];
    count[..4].copy_from_slice(&(collision_count as u32).to_le_bytes());
    safe_encode(fnv1a_32(&[&bytes, &count]))
}

/// `<prefix>-<hash>`, the prefix cut to keep the name valid.
pub fn revision_name(prefix: &str, hash: &str) -> String {
    let cut = prefix
        .char_indices()
        .nth(MAX_PREFIX)
        .map_or(prefix, |(at, _)| &prefix[..at]);
    format!("{cut}-{hash}")
}

/// Oldest first: by number, then creation time, then name (upstream's `byRevision`).
pub fn sort(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(|a, b| {
        a.revision
            .cmp(&b.revision)
            .then_with(|| {
                let created = |r: &ControllerRevision| r.metadata.creation_timestamp.clone();
                created(a)
                    .partial_cmp(&created(b))
                    .unwrap_or(Ordering::Equal)
            })
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// The number the next new revision gets.
pub fn next_number(revisions: &[ControllerRevision]) -> i64 {
    revisions.iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// `owner`'s revisions, oldest first: those it controls that its selector matches, and the
/// orphans it adopts.
pub async fn history<O: Resource<DynamicType = ()>>(
    api: &Api<ControllerRevision>,
    owner: &O,
    selector: &LabelSelector,
) -> Result<Vec<ControllerRevision>, ControllerError> {
    let Some(query) = selector_query(selector) else {
        return Ok(Vec::new());
    };
    let listed = api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(ControllerError::new(format!(
            "listing the revisions of {}",
            owner.meta().name.as_deref().unwrap_or_default()
        )))?;
    let mut owned = Claimer::new(owner, selector)
        .claim(api, listed.items, || async { Ok(true) })
        .await
        .map_err(ControllerError::new(format!(
            "claiming the revisions of {}",
            owner.meta().name.as_deref().unwrap_or_default()
        )))?;
    sort(&mut owned);
    Ok(owned)
}

/// A new revision of `owner` recording `data` with number `number`, labelled with
/// `labels` plus `hash_label: <hash>`; not yet created.
pub fn new_revision<O: Resource<DynamicType = ()>>(
    owner: &O,
    labels: std::collections::BTreeMap<String, String>,
    data: Value,
    number: i64,
) -> ControllerRevision {
    ControllerRevision {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            namespace: owner.meta().namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: number,
    }
}

/// Creates `revision` as `<owner_name>-<hash>`, `hash` computed from the collision count;
/// when that name is taken by different data, counts a collision and tries the next name
/// (upstream's `CreateControllerRevision`). An existing revision with the same data is
/// returned as is.
pub async fn create(
    api: &Api<ControllerRevision>,
    owner_name: &str,
    mut revision: ControllerRevision,
    hash_label: &str,
    collision_count: &mut i32,
    hash: impl Fn(i32) -> String,
) -> Result<ControllerRevision, ControllerError> {
    let data = revision
        .data
        .as_ref()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    loop {
        let hash = hash(*collision_count);
        let name = revision_name(owner_name, &hash);
        revision.metadata.name = Some(name.clone());
        revision
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(hash_label.to_string(), hash);
        let failed = || format!("creating ControllerRevision {name}");
        match api.create(&PostParams::default(), &revision).await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let existing = api
                    .get(&name)
                    .await
                    .map_err(ControllerError::new(failed()))?;
                if records(&existing, &data) {
                    return Ok(existing);
                }
                *collision_count += 1;
            }
            Err(e) => return Err(ControllerError::new(failed())(e)),
        }
    }
}

/// Gives an existing revision a new number (a rollback to it).
pub async fn renumber(
    api: &Api<ControllerRevision>,
    revision: &ControllerRevision,
    number: i64,
) -> Result<ControllerRevision, ControllerError> {
    let name = revision.name_any();
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"revision": number})),
    )
    .await
    .map_err(ControllerError::new(format!(
        "renumbering ControllerRevision {name}"
    )))
}

/// Deletes revisions (already gone is fine).
pub async fn delete(
    api: &Api<ControllerRevision>,
    revisions: &[&ControllerRevision],
) -> Result<(), ControllerError> {
    for revision in revisions {
        let name = revision.name_any();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                return Err(ControllerError::new(format!(
                    "deleting ControllerRevision {name}"
                ))(e))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_fnv_and_safe_encoding() {
        // Go: fnv.New32() / New32a() over "hello".
        assert_eq!(fnv1_32(&[b"hello"]), 0xb6fa_7167);
        assert_eq!(fnv1a_32(&[b"hel", b"lo"]), 0x4f9f_2cab);
        // rand.SafeEncodeString("123")
        assert_eq!(safe_encode(123), "567");
    }

    #[test]
    fn data_patches_back_the_template() {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        let data = template_patch(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let text = serde_json::to_string(&data).unwrap();
        assert!(text.starts_with(r#"{"spec":{"template":{"$patch":"replace","metadata""#));
        let revision = ControllerRevision {
            data: Some(RawExtension(data.clone())),
            ..ControllerRevision::default()
        };
        assert_eq!(template_of(&revision), Some(template.clone()));
        assert!(records(&revision, &data));
        assert_ne!(data_hash(&data, 0), data_hash(&data, 1));
        assert_ne!(template_hash(&template, 0), template_hash(&template, 1));
    }

    #[test]
    fn names_and_order() {
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
        let rev = |name: &str, n: i64| {
            let mut r = ControllerRevision::default();
            r.metadata.name = Some(name.into());
            r.revision = n;
            r
        };
        let mut revs = vec![rev("b", 2), rev("c", 1), rev("a", 2)];
        sort(&mut revs);
        let names: Vec<String> = revs.iter().map(|r| r.name_any()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(next_number(&revs), 3);
    }
}
