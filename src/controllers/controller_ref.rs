//! Controller references: the `ownerReferences` entry (`controller: true`) that says which
//! workload owns a pod or a ControllerRevision, and claiming — upstream's
//! `ControllerRefManager`: a workload adopts the orphans its selector matches and releases
//! the objects it owns that its selector no longer matches.
//!
//! Adoption and release are merge patches carrying the object's uid as a precondition, so
//! an object deleted and recreated under the same name meanwhile is left alone.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::core::Selector;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::ControllerError;
use crate::scheduler::selector::selector_matches;

/// The controller reference `owner`'s children carry (upstream's `NewControllerRef`).
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The controller of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether `owner_uid` is the controller of an object.
pub fn controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

/// A label selector as the `labelSelector` query parameter; `None` if it cannot be one (an
/// unknown operator), in which case nothing should be selected.
pub fn selector_query(selector: &LabelSelector) -> Option<String> {
    Selector::try_from(selector.clone())
        .ok()
        .map(|s| s.to_string())
}

/// The children of `owner` among `candidates` (all of its namespace's objects of that kind,
/// or at least all its selector matches): those it controls and its selector still matches,
/// plus the orphans it adopts. Objects it controls that no longer match are released.
/// Objects being deleted are neither adopted nor released, as upstream.
pub async fn claim<O, C>(
    api: &Api<C>,
    owner: &O,
    selector: &LabelSelector,
    candidates: Vec<C>,
) -> Result<Vec<C>, ControllerError>
where
    O: Resource<DynamicType = ()>,
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let owner_uid = owner.meta().uid.clone().unwrap_or_default();
    let owner_deleting = owner.meta().deletion_timestamp.is_some();
    let mut claimed = Vec::new();
    for child in candidates {
        let matches = selector_matches(selector, child.labels());
        let deleting = child.meta().deletion_timestamp.is_some();
        match controller_of(child.meta()) {
            Some(r) if r.uid == owner_uid => {
                if matches || deleting {
                    claimed.push(child);
                } else {
                    release(api, &owner_uid, &child).await?;
                }
            }
            Some(_) => {}
            None if matches && !deleting && !owner_deleting => {
                if let Some(adopted) = adopt(api, owner, &child).await? {
                    claimed.push(adopted);
                }
            }
            None => {}
        }
    }
    Ok(claimed)
}

/// Adds `owner`'s controller reference to an orphan. `None` when the orphan went meanwhile.
async fn adopt<O, C>(api: &Api<C>, owner: &O, child: &C) -> Result<Option<C>, ControllerError>
where
    O: Resource<DynamicType = ()>,
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut refs = child.meta().owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": child.uid()}});
    match api
        .patch(
            &child.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(adopted) => Ok(Some(adopted)),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(None),
        Err(e) => Err(ControllerError::new(format!(
            "adopting {} {}",
            C::kind(&()),
            child.name_any()
        ))(e)),
    }
}

/// Removes the reference to `owner_uid` from an object.
async fn release<C>(api: &Api<C>, owner_uid: &str, child: &C) -> Result<(), ControllerError>
where
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let refs: Vec<&OwnerReference> = child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": child.uid()}});
    match api
        .patch(
            &child.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(ControllerError::new(format!(
            "releasing {} {}",
            C::kind(&()),
            child.name_any()
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;

    #[test]
    fn controller_reference_names_the_owner() {
        let mut set = StatefulSet::default();
        set.metadata.name = Some("web".into());
        set.metadata.uid = Some("u1".into());
        let r = controller_ref(&set);
        assert_eq!(
            (r.api_version.as_str(), r.kind.as_str(), r.name.as_str()),
            ("apps/v1", "StatefulSet", "web")
        );
        let meta = ObjectMeta {
            owner_references: Some(vec![r]),
            ..ObjectMeta::default()
        };
        assert!(controlled_by(&meta, "u1"));
        assert!(!controlled_by(&meta, "u2"));
    }

    #[test]
    fn selectors_become_queries() {
        let sel: LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap();
        assert_eq!(selector_query(&sel).as_deref(), Some("app=web"));
    }
}
