//! Controller references, as every workload controller keeps them (upstream's
//! `ControllerRefManager`): an owner *claims* the objects its selector matches — adopting
//! orphans by patching a controller ownerReference onto them, releasing (orphaning) the ones
//! it owns that no longer match — and acts only on what it then owns.
//!
//! Generic over the owned kind: the ReplicaSet controller claims Pods, the Deployment
//! controller claims ReplicaSets; StatefulSet, DaemonSet and Job controllers can claim Pods
//! (or ControllerRevisions) the same way.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::ControllerError;
use crate::scheduler::selector::selector_matches;

/// The controller ownerReference `owner` puts on what it creates or adopts: `controller` and
/// `blockOwnerDeletion` set, so that foreground deletion of the owner waits for it.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The ownerReference of `object` that names its controller, if any.
pub fn controller_of<K: Resource>(object: &K) -> Option<&OwnerReference> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Whether `object` is controlled by the object with `uid`.
pub fn controlled_by<K: Resource>(object: &K, uid: &str) -> bool {
    controller_of(object).is_some_and(|r| r.uid == uid)
}

/// Whether `selector` selects `object` by its labels. An empty selector selects everything
/// (callers refuse it where upstream does).
pub fn selects<K: Resource>(selector: &LabelSelector, object: &K) -> bool {
    let labels = object.meta().labels.clone().unwrap_or_default();
    selector_matches(selector, &labels)
}

/// A label selector as the `labelSelector` query parameter, for controllers that list
/// their objects from the API; `None` if it cannot be one (an unknown operator), in which
/// case nothing should be selected.
pub fn selector_query(selector: &LabelSelector) -> Option<String> {
    kube::core::Selector::try_from(selector.clone())
        .ok()
        .map(|s| s.to_string())
}

/// Who is claiming: the owner's identity and whether it may still adopt.
pub struct Claimer<'a> {
    /// The controller ownerReference adopted objects get.
    pub reference: OwnerReference,
    pub namespace: String,
    pub selector: &'a LabelSelector,
    /// The owner is being deleted: it adopts nothing and releases nothing.
    pub deleting: bool,
}

impl Claimer<'_> {
    pub fn new<'a, K: Resource<DynamicType = ()>>(
        owner: &K,
        selector: &'a LabelSelector,
    ) -> Claimer<'a> {
        Claimer {
            reference: controller_ref(owner),
            namespace: owner.namespace().unwrap_or_default(),
            selector,
            deleting: owner.meta().deletion_timestamp.is_some(),
        }
    }

    /// The objects of `candidates` (all of the owner's namespace, or any superset of what it
    /// could own) that the owner owns after adopting matching orphans and releasing owned
    /// objects that no longer match. `can_adopt` is asked once, before the first adoption:
    /// upstream re-reads the owner uncached there so that an owner deleted meanwhile adopts
    /// nothing.
    pub async fn claim<K, F, Fut>(
        &self,
        api: &Api<K>,
        candidates: Vec<K>,
        can_adopt: F,
    ) -> Result<Vec<K>, kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool, kube::Error>>,
    {
        let mut claimed = Vec::new();
        let mut can_adopt = Some(can_adopt);
        let mut adoptable = true;
        let mut first_error = None;
        for object in candidates {
            if object.namespace().unwrap_or_default() != self.namespace {
                continue;
            }
            let matches = selects(self.selector, &object);
            match controller_of(&object) {
                Some(owner) if owner.uid != self.reference.uid => continue,
                Some(_) => {
                    if matches {
                        claimed.push(object);
                    } else if !self.deleting {
                        if let Err(e) = self.release(api, &object).await {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                None => {
                    if self.deleting || !matches || object.meta().deletion_timestamp.is_some() {
                        continue;
                    }
                    if let Some(check) = can_adopt.take() {
                        adoptable = check().await?;
                    }
                    if !adoptable {
                        continue;
                    }
                    match self.adopt(api, &object).await {
                        Ok(adopted) => claimed.push(adopted),
                        Err(e) if gone(&e) => {}
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(claimed),
        }
    }

    /// Patches the owner's controller reference onto an orphan. The object's uid in the
    /// patch makes it fail if the object was replaced meanwhile.
    async fn adopt<K>(&self, api: &Api<K>, object: &K) -> Result<K, kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        let patch = json!({"metadata": {
            "ownerReferences": [self.reference],
            "uid": object.uid(),
        }});
        api.patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    }

    /// Removes the owner's reference from an object it no longer selects.
    async fn release<K>(&self, api: &Api<K>, object: &K) -> Result<(), kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        let patch = json!({"metadata": {
            "ownerReferences": [{"$patch": "delete", "uid": self.reference.uid}],
            "uid": object.uid(),
        }});
        match api
            .patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Gone, or no longer ours / replaced: nothing left to release.
            Err(e) if gone(&e) || status_code(&e) == Some(422) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The HTTP status of an API error.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether an API error says the object is not there (any more).
pub fn gone(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}

/// Whether an API error is a write conflict (stale resourceVersion, or already exists).
pub fn conflict(error: &kube::Error) -> bool {
    status_code(error) == Some(409)
}

/// The message of an API error as upstream prints it in events and conditions (the
/// Status message), or the error itself for transport failures.
pub fn message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

/// The pods `owner` (a workload of kind `kind`) controls or adopts among those in its
/// namespace matching `selector` and `wanted` (upstream's list-then-claim of the pod
/// controllers). Nothing when the selector selects nothing.
pub async fn claimed_pods<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    owner: &K,
    selector: &LabelSelector,
    wanted: impl Fn(&Pod) -> bool,
) -> Result<Vec<Pod>, ControllerError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &owner.namespace().unwrap_or_default());
    let Some(query) = selector_query(selector) else {
        return Ok(Vec::new());
    };
    let what = format!("the pods of {} {}", K::kind(&()), owner.name_any());
    let listed = api
        .list(&ListParams::default().labels(&query))
        .await
        .map_err(ControllerError::new(format!("listing {what}")))?;
    let candidates = listed.items.into_iter().filter(|p| wanted(p)).collect();
    Claimer::new(owner, selector)
        .claim(&api, candidates, || async { Ok(true) })
        .await
        .map_err(ControllerError::new(format!("claiming {what}")))
}
