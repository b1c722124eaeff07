//! The PersistentVolume binder (upstream's persistentvolume-binder): binds each pending
//! claim to the smallest Available volume that satisfies it (class, access modes, volume
//! mode, capacity, selector; a volume pre-bound through its `claimRef`, or a claim naming
//! its `volumeName`, first), keeps the phases of both sides (claims Pending/Bound/Lost,
//! volumes Available/Bound/Released/Failed), asks the class's provisioner for a volume when
//! none fits, and applies the reclaim policy once a bound claim is gone. Deleting the
//! volumes of a provisioner is that provisioner's job ([`super::local_path`]).
//!
//! Claims of a `WaitForFirstConsumer` class wait for the scheduler to pick a node
//! (`volume.kubernetes.io/selected-node`); then volumes whose node affinity admits that node
//! may bind, else the provisioner is asked.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::events::Recorder;
use super::volume_match::{
    best_match, bound_to, claim_phase, claim_ref, class_of_claim, class_of_volume, has_annotation,
    mismatch, reclaim_policy, volume_phase,
};
use super::ControllerError;

pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// How often an unbound claim is synced even without events (upstream's
/// `--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);
/// How soon a write that lost a race is tried again.
const AGAIN: Duration = Duration::from_millis(200);

struct Context {
    client: Client,
    recorder: Recorder,
}

pub async fn run(client: Client) {
    let context = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), "persistentvolume-controller"),
    });
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    );
    let pending = claims.store();
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(client.clone()),
            watcher::Config::default(),
            move |volume: PersistentVolume| {
                // The claim a volume points at; an unclaimed volume may serve any pending
                // claim of its class.
                if let Some(claim) = claim_ref(&volume) {
                    let (Some(name), Some(namespace)) = (&claim.name, &claim.namespace) else {
                        return Vec::new();
                    };
                    return vec![ObjectRef::new(name).within(namespace)];
                }
                let class = class_of_volume(&volume);
                pending
                    .state()
                    .into_iter()
                    .filter(|c| {
                        !has_annotation(c.as_ref(), BIND_COMPLETED) && class_of_claim(c) == class
                    })
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect()
            },
        )
        .run(sync_claim, super::retry_later, context.clone());
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = volumes.store();
    let volumes = volumes
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
            move |claim: PersistentVolumeClaim| {
                // The volumes that point at this claim, and the one it names.
                let named = claim.spec.as_ref().and_then(|s| s.volume_name.clone());
                store
                    .state()
                    .into_iter()
                    .filter(|v| {
                        named.as_deref() == Some(v.name_any().as_str())
                            || claim_ref(v).is_some_and(|r| {
                                r.name == claim.metadata.name
                                    && r.namespace == claim.metadata.namespace
                            })
                    })
                    .map(|v| ObjectRef::from_obj(v.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(sync_volume, super::retry_later, context);
    tokio::join!(
        super::drive("persistentvolume-claims", claims),
        super::drive("persistentvolume-volumes", volumes),
    );
}

async fn sync_claim(
    claim: Arc<PersistentVolumeClaim>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let result = if has_annotation(claim.as_ref(), BIND_COMPLETED) {
        sync_bound_claim(&claim, &context).await
    } else {
        sync_unbound_claim(&claim, &context).await
    };
    match result {
        Err(e) if e.is_conflict() => Ok(Action::requeue(AGAIN)),
        // Unbound claims are looked at again now and then, as upstream's periodic resync:
        // what they wait for (a class, a node) may come without an event that wakes them.
        Ok(()) if !has_annotation(claim.as_ref(), BIND_COMPLETED) => Ok(Action::requeue(RESYNC)),
        other => other.map(|()| Action::await_change()),
    }
}

async fn sync_bound_claim(
    claim: &PersistentVolumeClaim,
    context: &Context,
) -> Result<(), ControllerError> {
    let Some(volume_name) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
        return lose(
            claim,
            context,
            "ClaimLost",
            "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!",
        )
        .await;
    };
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    let volume = volumes
        .get_opt(&volume_name)
        .await
        .map_err(ControllerError::new(format!(
            "reading PersistentVolume {volume_name}"
        )))?;
    match volume {
        None => {
            lose(
                claim,
                context,
                "ClaimLost",
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
            )
            .await
        }
        Some(volume) => match claim_ref(&volume) {
            Some(r) if r.uid.is_some() && r.uid != claim.metadata.uid => {
                lose(
                    claim,
                    context,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly",
                )
                .await
            }
            _ => bind(&volume, claim, context).await,
        },
    }
}

async fn lose(
    claim: &PersistentVolumeClaim,
    context: &Context,
    reason: &str,
    message: &str,
) -> Result<(), ControllerError> {
    if claim_phase(claim) != "Lost" {
        set_claim_status(claim, context, "Lost", None).await?;
        context.recorder.warning(claim, reason, message).await;
    }
    Ok(())
}

async fn sync_unbound_claim(
    claim: &PersistentVolumeClaim,
    context: &Context,
) -> Result<(), ControllerError> {
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    if let Some(name) = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
    {
        // The user asked for this volume.
        let Some(volume) = volumes
            .get_opt(&name)
            .await
            .map_err(ControllerError::new(format!(
                "reading PersistentVolume {name}"
            )))?
        else {
            return pending(claim, context).await;
        };
        if claim_ref(&volume).is_some() && !bound_to(&volume, claim) {
            // Claimed by someone else: the claim waits.
            return pending(claim, context).await;
        }
        if let Some(why) = mismatch(&volume, claim) {
            context
                .recorder
                .warning(
                    claim,
                    "VolumeMismatch",
                    &format!("Cannot bind to requested volume {name:?}: {why}"),
                )
                .await;
            return pending(claim, context).await;
        }
        return bind(&volume, claim, context).await;
    }

    let class_name = class_of_claim(claim);
    let class = match class_name.as_str() {
        "" => None,
        name => Api::<StorageClass>::all(context.client.clone())
            .get_opt(name)
            .await
            .map_err(ControllerError::new(format!("reading StorageClass {name}")))?,
    };
    let delay = class
        .as_ref()
        .and_then(|c| c.volume_binding_mode.as_deref())
        == Some("WaitForFirstConsumer");
    let selected = claim.annotations().get(SELECTED_NODE).cloned();
    let node = match &selected {
        Some(node) => Api::<Node>::all(context.client.clone())
            .get_opt(node)
            .await
            .map_err(ControllerError::new(format!("reading Node {node}")))?,
        None => None,
    };
    let all = volumes
        .list(&ListParams::default())
        .await
        .map_err(ControllerError::new("listing PersistentVolumes"))?
        .items;
    if let Some(volume) = best_match(claim, &all, delay, node.as_ref()) {
        return bind(volume, claim, context).await;
    }
    pending(claim, context).await?;
    if delay && selected.is_none() {
        context
            .recorder
            .normal(
                claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            )
            .await;
    } else if class_name.is_empty() {
        context
            .recorder
            .normal(
                claim,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            )
            .await;
    } else if let Some(class) = class {
        ask_provisioner(claim, &class, context).await?;
    } else {
        context
            .recorder
            .warning(
                claim,
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io {class_name:?} not found"),
            )
            .await;
    }
    Ok(())
}

/// Names the class's provisioner on the claim, the signal external provisioners act on.
async fn ask_provisioner(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    context: &Context,
) -> Result<(), ControllerError> {
    let provisioner = &class.provisioner;
    if claim.annotations().get(STORAGE_PROVISIONER) != Some(provisioner) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(
            context.client.clone(),
            &claim.namespace().unwrap_or_default(),
        );
        let patch = json!({"metadata": {
            "resourceVersion": claim.resource_version(),
            "annotations": {STORAGE_PROVISIONER: provisioner, BETA_STORAGE_PROVISIONER: provisioner},
        }});
        claims
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(ControllerError::new(format!(
                "naming the provisioner of PersistentVolumeClaim {}",
                claim.name_any()
            )))?;
    }
    context
        .recorder
        .normal(
            claim,
            "ExternalProvisioning",
            &format!("Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."),
        )
        .await;
    Ok(())
}

async fn pending(claim: &PersistentVolumeClaim, context: &Context) -> Result<(), ControllerError> {
    set_claim_status(claim, context, "Pending", None).await
}

/// Writes a claim's phase (and what its volume offers), when it differs.
async fn set_claim_status(
    claim: &PersistentVolumeClaim,
    context: &Context,
    phase: &str,
    volume: Option<&PersistentVolume>,
) -> Result<(), ControllerError> {
    let status = claim.status.clone().unwrap_or_default();
    let spec = volume.and_then(|v| v.spec.clone()).unwrap_or_default();
    let (modes, capacity) = match volume {
        Some(_) => (spec.access_modes.clone(), spec.capacity.clone()),
        None => (None, None),
    };
    if status.phase.as_deref() == Some(phase)
        && status.access_modes == modes
        && status.capacity == capacity
    {
        return Ok(());
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(
        context.client.clone(),
        &claim.namespace().unwrap_or_default(),
    );
    let patch = json!({"status": {"phase": phase, "accessModes": modes, "capacity": capacity}});
    claims
        .patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(ControllerError::new(format!(
            "updating the status of PersistentVolumeClaim {}",
            claim.name_any()
        )))?;
    Ok(())
}

/// Writes a volume's phase when it differs (with its transition time, as upstream).
async fn set_volume_phase(
    volume: &PersistentVolume,
    context: &Context,
    phase: &str,
    message: Option<&str>,
) -> Result<(), ControllerError> {
    if volume_phase(volume) == phase {
        return Ok(());
    }
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    let patch = json!({"status": {
        "phase": phase,
        "message": message,
        "lastPhaseTransitionTime": super::now(),
    }});
    volumes
        .patch_status(
            &volume.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(ControllerError::new(format!(
            "updating the phase of PersistentVolume {}",
            volume.name_any()
        )))?;
    Ok(())
}

/// Binds both sides, each write only if needed: the volume's claimRef, its phase, the
/// claim's volumeName and annotations, its status (upstream's `bind`).
async fn bind(
    volume: &PersistentVolume,
    claim: &PersistentVolumeClaim,
    context: &Context,
) -> Result<(), ControllerError> {
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    let namespace = claim.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    let reference = ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("PersistentVolumeClaim".to_string()),
        namespace: Some(namespace.clone()),
        name: Some(claim.name_any()),
        uid: claim.uid(),
        resource_version: claim.resource_version(),
        ..ObjectReference::default()
    };
    let mut volume = volume.clone();
    let current = claim_ref(&volume);
    if current.map(|r| (&r.name, &r.namespace, &r.uid))
        != Some((&reference.name, &reference.namespace, &reference.uid))
    {
        let by_controller = current.is_none();
        let spec = volume.spec.get_or_insert_with(Default::default);
        spec.claim_ref = Some(reference);
        if by_controller {
            volume
                .annotations_mut()
                .insert(BOUND_BY_CONTROLLER.to_string(), "yes".to_string());
        }
        volume = volumes
            .replace(&volume.name_any(), &PostParams::default(), &volume)
            .await
            .map_err(ControllerError::new(format!(
                "binding PersistentVolume {} to its claim",
                volume.name_any()
            )))?;
    }
    set_volume_phase(&volume, context, "Bound", None).await?;

    let mut claim = claim.clone();
    let wanted_name = Some(volume.name_any());
    let by_controller = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_ref())
        .is_none_or(|n| n.is_empty());
    if claim.spec.as_ref().and_then(|s| s.volume_name.clone()) != wanted_name
        || !has_annotation(&claim, BIND_COMPLETED)
    {
        claim.spec.get_or_insert_with(Default::default).volume_name = wanted_name;
        let annotations = claim.annotations_mut();
        annotations.insert(BIND_COMPLETED.to_string(), "yes".to_string());
        if by_controller {
            annotations.insert(BOUND_BY_CONTROLLER.to_string(), "yes".to_string());
        }
        claim = claims
            .replace(&claim.name_any(), &PostParams::default(), &claim)
            .await
            .map_err(ControllerError::new(format!(
                "binding PersistentVolumeClaim {namespace}/{}",
                claim.name_any()
            )))?;
    }
    set_claim_status(&claim, context, "Bound", Some(&volume)).await
}

async fn sync_volume(
    volume: Arc<PersistentVolume>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    match sync_volume_once(&volume, &context).await {
        Err(e) if e.is_conflict() => Ok(Action::requeue(AGAIN)),
        other => other.map(|()| Action::await_change()),
    }
}

async fn sync_volume_once(
    volume: &PersistentVolume,
    context: &Context,
) -> Result<(), ControllerError> {
    let Some(reference) = claim_ref(volume) else {
        return set_volume_phase(volume, context, "Available", None).await;
    };
    if reference.uid.as_deref().unwrap_or_default().is_empty() {
        // Pre-bound: the claim's sync binds it.
        return set_volume_phase(volume, context, "Available", None).await;
    }
    let namespace = reference.namespace.clone().unwrap_or_default();
    let name = reference.name.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    let claim = claims
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(format!(
            "reading PersistentVolumeClaim {namespace}/{name}"
        )))?
        .filter(|c| c.metadata.uid == reference.uid);
    let Some(claim) = claim else {
        // The claim is gone: release the volume and apply its reclaim policy.
        if !matches!(volume_phase(volume), "Released" | "Failed") {
            set_volume_phase(volume, context, "Released", None).await?;
        }
        return reclaim(volume, context).await;
    };
    let claimed = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if claimed.is_empty() {
        // The claim's sync finishes the binding.
        return Ok(());
    }
    if claimed == volume.name_any() {
        return set_volume_phase(volume, context, "Bound", None).await;
    }
    // The claim went to another volume.
    if has_annotation(volume, PROVISIONED_BY) && reclaim_policy(volume) == "Delete" {
        if !matches!(volume_phase(volume), "Released" | "Failed") {
            set_volume_phase(volume, context, "Released", None).await?;
        }
        return reclaim(volume, context).await;
    }
    unbind(volume, context).await
}

/// Applies the reclaim policy of a released volume (`reclaimVolume`).
async fn reclaim(volume: &PersistentVolume, context: &Context) -> Result<(), ControllerError> {
    match reclaim_policy(volume) {
        "Retain" => Ok(()),
        // A provisioner deletes what it provisioned.
        "Delete" if has_annotation(volume, PROVISIONED_BY) => Ok(()),
        "Delete" => {
            let message = format!("error getting deleter volume plugin for volume {:?}: no deletable volume plugin matched", volume.name_any());
            fail(volume, context, "VolumeFailedDelete", &message).await
        }
        _ => {
            fail(
                volume,
                context,
                "VolumeFailedRecycle",
                "No recycler plugin found for the volume!",
            )
            .await
        }
    }
}

async fn fail(
    volume: &PersistentVolume,
    context: &Context,
    reason: &str,
    message: &str,
) -> Result<(), ControllerError> {
    if volume_phase(volume) != "Failed" {
        set_volume_phase(volume, context, "Failed", Some(message)).await?;
        context.recorder.warning(volume, reason, message).await;
    }
    Ok(())
}

/// Frees a volume whose claim is bound elsewhere: forgotten entirely if the controller
/// bound it, else kept reserved for the claim by name (`unbindVolume`).
async fn unbind(volume: &PersistentVolume, context: &Context) -> Result<(), ControllerError> {
    let mut volume = volume.clone();
    if has_annotation(&volume, BOUND_BY_CONTROLLER) {
        volume.spec.get_or_insert_with(Default::default).claim_ref = None;
        volume.annotations_mut().remove(BOUND_BY_CONTROLLER);
    } else if let Some(r) = volume.spec.as_mut().and_then(|s| s.claim_ref.as_mut()) {
        r.uid = None;
    }
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    let volume = volumes
        .replace(&volume.name_any(), &PostParams::default(), &volume)
        .await
        .map_err(ControllerError::new(format!(
            "unbinding PersistentVolume {}",
            volume.name_any()
        )))?;
    set_volume_phase(&volume, context, "Available", None).await
}
