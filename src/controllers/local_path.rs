//! The built-in local-path provisioner, as k3s ships it: a default StorageClass
//! `local-path` (provisioner `rancher.io/local-path`, WaitForFirstConsumer, reclaim
//! Delete), created through the API at start if missing. A claim of that class, once the
//! scheduler has picked its node (`volume.kubernetes.io/selected-node`) and the binder has
//! asked for this provisioner, gets a hostPath volume `pvc-<claim uid>` at
//! `<data-dir>/storage/<claim uid>` pinned to that node; the binder then binds them.
//! Released volumes of the Delete policy are deleted.
//!
//! The directory lives on the node. Until node agents manage it, this server creates and
//! removes it only for the node that runs on this host ([`Storage::local_node`]); the
//! kubelet's hostPath `DirectoryOrCreate` creates it on other nodes.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectReference,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};

use super::events::Recorder;
use super::persistent_volume::{PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER};
use super::volume_match::storage_request;
use super::ControllerError;

pub const CLASS: &str = "local-path";
pub const PROVISIONER: &str = "rancher.io/local-path";
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// Where volumes live.
#[derive(Clone, Debug)]
pub struct Storage {
    /// `<data-dir>/storage`: each volume is a directory in it, named by its claim's uid.
    pub dir: PathBuf,
    /// The node that runs on this host (this server's own agent), whose directories this
    /// process creates and removes itself.
    pub local_node: Option<String>,
}

struct Context {
    client: Client,
    storage: Storage,
    recorder: Recorder,
}

pub async fn run(client: Client, storage: Storage) {
    ensure_class(&client).await;
    let context = Arc::new(Context {
        client: client.clone(),
        storage,
        recorder: Recorder::new(client.clone(), PROVISIONER),
    });
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(provision, super::retry_later, context.clone());
    let volumes = Controller::new(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(delete, super::retry_later, context);
    tokio::join!(
        super::drive("local-path-provisioner", claims),
        super::drive("local-path-deleter", volumes),
    );
}

/// Creates the default `local-path` StorageClass unless it exists (a user's edits stay).
async fn ensure_class(client: &Client) {
    let class: StorageClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))
    .expect("a valid StorageClass");
    let classes: Api<StorageClass> = Api::all(client.clone());
    loop {
        match classes.create(&PostParams::default(), &class).await {
            Ok(_) => tracing::info!(class = CLASS, "created the default StorageClass"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(error) => {
                tracing::warn!(%error, "creating the local-path StorageClass failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        return;
    }
}

/// The directory of a claim's volume.
fn volume_dir(storage: &Storage, claim_uid: &str) -> PathBuf {
    storage.dir.join(claim_uid)
}

async fn provision(
    claim: Arc<PersistentVolumeClaim>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let annotations = claim.annotations();
    let waiting = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(str::is_empty);
    let (Some(node), Some(uid)) = (annotations.get(SELECTED_NODE), claim.uid()) else {
        return Ok(Action::await_change());
    };
    if !waiting
        || claim.metadata.deletion_timestamp.is_some()
        || annotations.get(STORAGE_PROVISIONER).map(String::as_str) != Some(PROVISIONER)
    {
        return Ok(Action::await_change());
    }
    let class_name = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default();
    let Some(class) = Api::<StorageClass>::all(context.client.clone())
        .get_opt(&class_name)
        .await
        .map_err(ControllerError::new(format!(
            "reading StorageClass {class_name}"
        )))?
        .filter(|c| c.provisioner == PROVISIONER)
    else {
        return Ok(Action::await_change());
    };
    let name = format!("pvc-{uid}");
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    if volumes
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(format!(
            "reading PersistentVolume {name}"
        )))?
        .is_some()
    {
        return Ok(Action::await_change());
    }
    let namespace = claim.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", claim.name_any());
    context
        .recorder
        .normal(
            claim.as_ref(),
            "Provisioning",
            &format!("External provisioner is provisioning volume for claim {key:?}"),
        )
        .await;
    let dir = volume_dir(&context.storage, &uid);
    if context.storage.local_node.as_deref() == Some(node.as_str()) {
        if let Err(error) = create_dir(&dir) {
            let message = format!(
                "failed to provision volume with StorageClass {class_name:?}: creating {}: {error}",
                dir.display()
            );
            context
                .recorder
                .warning(claim.as_ref(), "ProvisioningFailed", &message)
                .await;
            return Ok(Action::requeue(std::time::Duration::from_secs(10)));
        }
    }
    let volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some([(PROVISIONED_BY.to_string(), PROVISIONER.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: claim.spec.as_ref().and_then(|s| s.access_modes.clone()),
            capacity: Some(storage_request(&claim)),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                namespace: Some(namespace.clone()),
                name: Some(claim.name_any()),
                uid: Some(uid.clone()),
                resource_version: claim.resource_version(),
                ..ObjectReference::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: dir.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME.to_string(),
                            operator: "In".to_string(),
                            values: Some(vec![node.clone()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_string()),
            ),
            storage_class_name: Some(class_name),
            volume_mode: claim.spec.as_ref().and_then(|s| s.volume_mode.clone()),
            mount_options: class.mount_options.clone(),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    };
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => {
            context
                .recorder
                .normal(
                    claim.as_ref(),
                    "ProvisioningSucceeded",
                    &format!("Successfully provisioned volume {name}"),
                )
                .await;
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(ControllerError::new(format!(
                "creating PersistentVolume {name} for claim {key}"
            ))(e))
        }
    }
    Ok(Action::await_change())
}

/// Creates a volume directory writable by any container user, as k3s's provisioner does.
fn create_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// The node a volume of ours is pinned to.
fn node_of(volume: &PersistentVolume) -> Option<&str> {
    let terms = &volume
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == HOSTNAME && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().map(String::as_str))
}

/// Deletes a released volume of ours whose policy is Delete: its directory (when on this
/// host), then the object.
async fn delete(
    volume: Arc<PersistentVolume>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let ours = volume.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER);
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let policy = volume
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
    if !ours
        || !released
        || policy != Some("Delete")
        || volume.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let path = volume
        .spec
        .as_ref()
        .and_then(|s| s.host_path.as_ref())
        .map(|h| PathBuf::from(&h.path));
    let local =
        node_of(&volume).is_some() && node_of(&volume) == context.storage.local_node.as_deref();
    if let Some(path) = path.filter(|p| local && p.starts_with(&context.storage.dir)) {
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                let message = format!(
                    "failed to delete volume {}: removing {}: {error}",
                    volume.name_any(),
                    path.display()
                );
                context
                    .recorder
                    .warning(volume.as_ref(), "VolumeFailedDelete", &message)
                    .await;
                return Ok(Action::requeue(std::time::Duration::from_secs(10)));
            }
        }
    }
    let volumes: Api<PersistentVolume> = Api::all(context.client.clone());
    match volumes
        .delete(&volume.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {
            tracing::info!(volume = %volume.name_any(), "deleted a released local-path volume")
        }
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(ControllerError::new(format!(
                "deleting PersistentVolume {}",
                volume.name_any()
            ))(e))
        }
    }
    Ok(Action::await_change())
}
