//! A StatefulSet's PersistentVolumeClaims: created (before its pod) from the
//! `volumeClaimTemplates`, never deleted by this controller. Who else may delete them
//! follows `persistentVolumeClaimRetentionPolicy`, through owner references the garbage
//! collector acts on, as upstream: `whenDeleted: Delete` makes the set an owner of the
//! claims of its wanted pods, `whenScaled: Delete` makes a pod past the replica count the
//! owner of its claims; `Retain` (the default) keeps them owned by neither.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::identity::{claims, in_range};
use super::Context;
use crate::controllers::ControllerError;

/// Which owner a claim should have under the set's retention policy.
fn policy(set: &StatefulSet) -> (bool, bool) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |p: Option<&String>| p.is_some_and(|p| p == "Delete");
    (
        delete(policy.and_then(|p| p.when_deleted.as_ref())),
        delete(policy.and_then(|p| p.when_scaled.as_ref())),
    )
}

fn reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }
}

/// The owner references a claim of `pod` (of ordinal `ordinal`) should have: its others,
/// plus the set or the pod as the policy says.
fn wanted_owners(
    set: &StatefulSet,
    pod: Option<&Pod>,
    ordinal: i32,
    current: &[OwnerReference],
) -> Vec<OwnerReference> {
    let set_uid = set.uid().unwrap_or_default();
    let pod_uid = pod.and_then(|p| p.uid());
    let mut owners: Vec<OwnerReference> = current
        .iter()
        .filter(|r| r.uid != set_uid && Some(&r.uid) != pod_uid.as_ref())
        .cloned()
        .collect();
    let (when_deleted, when_scaled) = policy(set);
    let scaled_down = !in_range(set, ordinal);
    if when_scaled && scaled_down {
        owners.extend(pod.map(reference));
    } else if when_deleted {
        owners.push(reference(set));
    }
    owners
}

/// Creates the claims of the pod `pod_name` (ordinal `ordinal`) that do not exist yet.
pub async fn create_missing(
    context: &Context,
    set: &StatefulSet,
    pod_name: &str,
    ordinal: i32,
) -> Result<(), ControllerError> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    for (_, mut claim) in claims(set, ordinal) {
        let name = claim.name_any();
        let failed = || format!("creating PersistentVolumeClaim {name} for pod {pod_name}");
        let found = api.get_opt(&name).await;
        let result = match found {
            Ok(Some(_)) => continue,
            Ok(None) => {
                let owners = wanted_owners(set, None, ordinal, &[]);
                claim.metadata.owner_references = (!owners.is_empty()).then_some(owners);
                match api.create(&PostParams::default(), &claim).await {
                    Err(kube::Error::Api(status)) if status.code == 409 => continue,
                    other => other.map(|_| ()),
                }
            }
            Err(e) => Err(e),
        };
        let set_name = set.name_any();
        match result {
            Ok(()) => {
                let message =
                    format!("create Claim {name} Pod {pod_name} in StatefulSet {set_name} success");
                context
                    .recorder
                    .normal(set, "SuccessfulCreate", &message)
                    .await;
            }
            Err(e) => {
                let message = format!(
                    "create Claim {name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"
                );
                context
                    .recorder
                    .warning(set, "FailedCreate", &message)
                    .await;
                return Err(ControllerError::new(failed())(e));
            }
        }
    }
    Ok(())
}

/// Gives the existing claims of `pod` the owners the retention policy wants.
pub async fn match_retention_policy(
    context: &Context,
    set: &StatefulSet,
    pod: &Pod,
    ordinal: i32,
) -> Result<(), ControllerError> {
    let api: Api<PersistentVolumeClaim> =
        Api::namespaced(context.client.clone(), &set.namespace().unwrap_or_default());
    for (_, wanted) in claims(set, ordinal) {
        let name = wanted.name_any();
        let failed = || format!("updating the owners of PersistentVolumeClaim {name}");
        let Some(claim) = api
            .get_opt(&name)
            .await
            .map_err(ControllerError::new(failed()))?
        else {
            continue;
        };
        let current = claim.metadata.owner_references.clone().unwrap_or_default();
        let owners = wanted_owners(set, Some(pod), ordinal, &current);
        if owners == current {
            continue;
        }
        let patch = json!({"metadata": {"ownerReferences": owners, "uid": claim.uid()}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => return Err(ControllerError::new(failed())(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(when_deleted: &str, when_scaled: &str) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "uid": "set-uid"},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "",
                "template": {},
                "persistentVolumeClaimRetentionPolicy":
                    {"whenDeleted": when_deleted, "whenScaled": when_scaled}}
        }))
        .unwrap()
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-1", "uid": "pod-uid"}})).unwrap()
    }

    fn uids(refs: &[OwnerReference]) -> Vec<&str> {
        refs.iter().map(|r| r.uid.as_str()).collect()
    }

    #[test]
    fn owners_follow_the_retention_policy() {
        let pod = pod();
        let retain = set("Retain", "Retain");
        assert!(wanted_owners(&retain, Some(&pod), 0, &[]).is_empty());
        let on_delete = set("Delete", "Retain");
        assert_eq!(
            uids(&wanted_owners(&on_delete, Some(&pod), 0, &[])),
            ["set-uid"]
        );
        assert_eq!(
            uids(&wanted_owners(&on_delete, Some(&pod), 1, &[])),
            ["set-uid"]
        );
        let on_scale = set("Retain", "Delete");
        assert!(wanted_owners(&on_scale, Some(&pod), 0, &[]).is_empty());
        assert_eq!(
            uids(&wanted_owners(&on_scale, Some(&pod), 1, &[])),
            ["pod-uid"]
        );
        let both = set("Delete", "Delete");
        assert_eq!(uids(&wanted_owners(&both, Some(&pod), 0, &[])), ["set-uid"]);
        assert_eq!(uids(&wanted_owners(&both, Some(&pod), 1, &[])), ["pod-uid"]);
        let other = OwnerReference {
            uid: "other".into(),
            ..OwnerReference::default()
        };
        assert_eq!(
            uids(&wanted_owners(
                &retain,
                Some(&pod),
                0,
                &[other, reference(&retain)]
            )),
            ["other"]
        );
    }
}
