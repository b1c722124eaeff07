//! Pod volumes on the node: each volume of a pod is made ready under
//! `<agent>/pods/<uid>/volumes/<plugin>/<name>/` (upstream's plugin dir names, e.g.
//! `kubernetes.io~configmap`) or, for hostPath and persistentVolumeClaim, found on the host;
//! [`PodVolumes::mounts_for`] then gives a container its bind mounts (subPaths resolved).
//!
//! Where to start: [`prepare`] (all volumes of a pod, idempotent), [`refresh`] (configMap,
//! secret, downwardAPI and projected contents follow their sources; the kubelet calls it
//! periodically), [`cleanup`] (after the pod's containers are gone). Errors read as
//! upstream's FailedMount events: `MountVolume.SetUp failed for volume "x" : ...`.
//!
//! Owns: the pod's `volumes/` and `volume-subpaths/` dirs and the mounts in them. Must not
//! touch: anything a hostPath or claim points at beyond creating it (`...OrCreate`),
//! containers, or the pod object (no status writes: the kubelet records events).

mod atomic_writer;
mod local;
pub(crate) mod mounts;
mod ownership;
mod sources;
mod sub_path;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use kube::ResourceExt;

use crate::runtime::spec::{Mount, MountKind};

pub use atomic_writer::DATA_DIR;
pub use local::check_host_path;

use atomic_writer::Payload;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume could not be set up: the message of upstream's FailedMount event.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    SetUp { volume: String, message: String },
    /// A container's volumeMounts cannot be made (upstream reports these as
    /// CreateContainerConfigError).
    #[error("{0}")]
    Mount(String),
    #[error("cleaning up volumes in {path}: {message}")]
    Cleanup { path: PathBuf, message: String },
}

/// What volume setup needs from the kubelet.
#[derive(Clone)]
pub struct VolumeContext {
    pub client: kube::Client,
    /// `<agent>/pods/<pod uid>`.
    pub pod_dir: PathBuf,
    pub node_name: String,
    /// The node's allocatable memory: the size of a `medium: Memory` emptyDir without a
    /// sizeLimit, and what the downward API reports as an unset memory limit.
    pub allocatable_memory: u64,
    /// The node's allocatable CPU in millicores (the downward API's unset cpu limit).
    pub allocatable_cpu_millis: u64,
}

impl VolumeContext {
    /// A context whose allocatable resources are this host's (all CPUs, MemTotal).
    pub fn new(client: kube::Client, pod_dir: PathBuf, node_name: &str) -> VolumeContext {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let memory = crate::runtime::cgroups::node_stats()
            .map(|s| s.memory_total_bytes)
            .unwrap_or(0);
        VolumeContext {
            client,
            pod_dir,
            node_name: node_name.to_string(),
            allocatable_memory: memory,
            allocatable_cpu_millis: cpus * 1000,
        }
    }
}

/// One volume, ready on the host.
#[derive(Clone, Debug)]
pub struct PreparedVolume {
    pub path: PathBuf,
    /// configMap, secret, downwardAPI and projected volumes are always read-only, as
    /// upstream mounts them; a claim may be read-only too.
    pub readonly: bool,
    /// A disk emptyDir's sizeLimit in bytes: enforced by eviction, recorded here.
    pub size_limit: Option<u64>,
}

/// A pod's volumes, ready for its containers.
#[derive(Clone, Debug)]
pub struct PodVolumes {
    pod: Pod,
    pod_dir: PathBuf,
    pub volumes: HashMap<String, PreparedVolume>,
}

const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
const CONFIG_MAP: &str = "kubernetes.io~configmap";
const SECRET: &str = "kubernetes.io~secret";
const DOWNWARD_API: &str = "kubernetes.io~downward-api";
const PROJECTED: &str = "kubernetes.io~projected";

fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(plugin).join(name)
}

fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .as_ref()?
        .security_context
        .as_ref()?
        .fs_group
        .map(|g| g as u32)
}

fn io_message(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Sets up every volume of `pod` (idempotent: what exists is kept, contents are
/// brought up to date). The first volume that fails stops it, with its FailedMount message.
pub async fn prepare(ctx: &VolumeContext, pod: &Pod) -> Result<PodVolumes, VolumeError> {
    let mut volumes = HashMap::new();
    let specs = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &specs {
        let prepared = set_up(ctx, pod, volume)
            .await
            .map_err(|message| VolumeError::SetUp {
                volume: volume.name.clone(),
                message,
            })?;
        volumes.insert(volume.name.clone(), prepared);
    }
    Ok(PodVolumes {
        pod: pod.clone(),
        pod_dir: ctx.pod_dir.clone(),
        volumes,
    })
}

/// Brings configMap, secret, downwardAPI and projected volumes up to date with their
/// sources (and renews service account tokens due for it); each update is atomic. A
/// volume that fails keeps its files and does not stop the others; the first failure is
/// returned.
pub async fn refresh(ctx: &VolumeContext, pod: &Pod) -> Result<(), VolumeError> {
    let specs = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut first_error = None;
    for volume in &specs {
        let atomic = volume.config_map.is_some()
            || volume.secret.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some();
        if !atomic {
            continue;
        }
        if let Err(message) = set_up(ctx, pod, volume).await {
            first_error.get_or_insert(VolumeError::SetUp {
                volume: volume.name.clone(),
                message,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Unmounts and removes the pod's volume dirs. Never follows a hostPath or claim: those
/// are never mounted under the pod dir, and nothing is removed while a mount remains.
pub async fn cleanup(pod_dir: &Path) -> Result<(), VolumeError> {
    let pod_dir = pod_dir.to_path_buf();
    tokio::task::spawn_blocking(move || cleanup_blocking(&pod_dir))
        .await
        .map_err(|e| VolumeError::Cleanup {
            path: PathBuf::new(),
            message: e.to_string(),
        })?
}

fn cleanup_blocking(pod_dir: &Path) -> Result<(), VolumeError> {
    for dir in [pod_dir.join("volume-subpaths"), pod_dir.join("volumes")] {
        let failed = |message: String| VolumeError::Cleanup {
            path: dir.clone(),
            message,
        };
        mounts::unmount_all(&dir).map_err(|e| failed(format!("unmounting: {e}")))?;
        let left = mounts::mounts_under(&dir).map_err(|e| failed(e.to_string()))?;
        if let Some(point) = left.first() {
            return Err(failed(format!("{} is still mounted", point.display())));
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Ok(())
}

async fn set_up(ctx: &VolumeContext, pod: &Pod, volume: &Volume) -> Result<PreparedVolume, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let name = &volume.name;
    let group = fs_group(pod);
    let prepared = |path: PathBuf, readonly: bool| PreparedVolume {
        path,
        readonly,
        size_limit: None,
    };
    if let Some(source) = &volume.empty_dir {
        let dir = volume_dir(&ctx.pod_dir, EMPTY_DIR, name);
        let created = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| io_message("mkdir", &dir, e))?;
        let limit = source
            .size_limit
            .as_ref()
            .map(|q| crate::scheduler::quantity::value(q).max(0) as u64);
        if source.medium.as_deref() == Some("Memory") {
            let size = limit.unwrap_or(ctx.allocatable_memory).max(1);
            mounts::mount_tmpfs(&dir, Some(size))
                .map_err(|e| io_message("mount tmpfs on", &dir, e))?;
        }
        if created {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| io_message("chmod", &dir, e))?;
            if let Some(gid) = group {
                ownership::set_group(&dir, gid, false).map_err(|e| io_message("chown", &dir, e))?;
            }
        }
        return Ok(PreparedVolume {
            path: dir,
            readonly: false,
            size_limit: limit.filter(|_| source.medium.as_deref() != Some("Memory")),
        });
    }
    if let Some(source) = &volume.host_path {
        let path = local::check_host_path(&source.path, source.type_.as_deref())?;
        return Ok(prepared(path, false));
    }
    if let Some(source) = &volume.persistent_volume_claim {
        let path = local::claim_path(ctx, &namespace, &source.claim_name).await?;
        return Ok(prepared(path, source.read_only.unwrap_or(false)));
    }
    let (plugin, memory, payload) = if let Some(source) = &volume.config_map {
        let config_map = sources::get_config_map(ctx, &namespace, &source.name).await?;
        let payload = sources::config_map_payload(
            config_map.as_ref(),
            &source.name,
            source.items.as_deref(),
            source.default_mode.unwrap_or(sources::DEFAULT_MODE),
            source.optional.unwrap_or(false),
        )?;
        (CONFIG_MAP, false, payload)
    } else if let Some(source) = &volume.secret {
        let secret_name = source.secret_name.clone().unwrap_or_default();
        let secret = sources::get_secret(ctx, &namespace, &secret_name).await?;
        let payload = sources::secret_payload(
            secret.as_ref(),
            &secret_name,
            source.items.as_deref(),
            source.default_mode.unwrap_or(sources::DEFAULT_MODE),
            source.optional.unwrap_or(false),
        )?;
        (SECRET, true, payload)
    } else if let Some(source) = &volume.downward_api {
        let payload = sources::downward_payload(
            ctx,
            pod,
            source.items.as_deref().unwrap_or_default(),
            source.default_mode.unwrap_or(sources::DEFAULT_MODE),
        )?;
        (DOWNWARD_API, false, payload)
    } else if let Some(source) = &volume.projected {
        let dir = volume_dir(&ctx.pod_dir, PROJECTED, name);
        (
            PROJECTED,
            true,
            projected_payload(ctx, pod, source, &dir).await?,
        )
    } else {
        return Err(format!(
            "volume {name:?} has a volume source kedge does not support (emptyDir, hostPath, configMap, secret, downwardAPI, projected and persistentVolumeClaim are)"
        ));
    };
    let dir = volume_dir(&ctx.pod_dir, plugin, name);
    std::fs::create_dir_all(&dir).map_err(|e| io_message("mkdir", &dir, e))?;
    // Secrets and projected tokens stay off the disk, as upstream's.
    if memory {
        mounts::mount_tmpfs(&dir, None).map_err(|e| io_message("mount tmpfs on", &dir, e))?;
    }
    atomic_writer::write(&dir, &payload, group)
        .map_err(|e| io_message("writing volume files in", &dir, e))?;
    Ok(prepared(dir, true))
}

async fn projected_payload(
    ctx: &VolumeContext,
    pod: &Pod,
    source: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    dir: &Path,
) -> Result<Payload, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let default_mode = source.default_mode.unwrap_or(sources::DEFAULT_MODE);
    let mut payload = Payload::new();
    for projection in source.sources.iter().flatten() {
        let part = if let Some(cm) = &projection.config_map {
            let object = sources::get_config_map(ctx, &namespace, &cm.name).await?;
            sources::config_map_payload(
                object.as_ref(),
                &cm.name,
                cm.items.as_deref(),
                default_mode,
                cm.optional.unwrap_or(false),
            )?
        } else if let Some(secret) = &projection.secret {
            let object = sources::get_secret(ctx, &namespace, &secret.name).await?;
            sources::secret_payload(
                object.as_ref(),
                &secret.name,
                secret.items.as_deref(),
                default_mode,
                secret.optional.unwrap_or(false),
            )?
        } else if let Some(downward) = &projection.downward_api {
            sources::downward_payload(
                ctx,
                pod,
                downward.items.as_deref().unwrap_or_default(),
                default_mode,
            )?
        } else if let Some(token) = &projection.service_account_token {
            let current = atomic_writer::read_current(dir, &token.path);
            let data = sources::token(ctx, pod, token, current).await?;
            let mut part = Payload::new();
            part.insert(
                token.path.clone(),
                atomic_writer::FileContent {
                    data,
                    mode: default_mode as u32,
                },
            );
            part
        } else {
            continue;
        };
        payload.extend(part);
    }
    Ok(payload)
}

impl PodVolumes {
    /// The prepared volume `name`.
    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }

    /// The bind mounts of `container`'s volumeMounts, subPaths prepared under
    /// `<pod dir>/volume-subpaths/<volume>/<container>/<index>`. Memory-backed volumes are
    /// tmpfs mounts on the host already, so every mount is a bind.
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Mount>, VolumeError> {
        let env = self.environment(container);
        let mut result = Vec::new();
        for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
            let volume = self.volumes.get(&mount.name).ok_or_else(|| {
                VolumeError::Mount(format!(
                    "cannot find volume {:?} to mount into container {:?}",
                    mount.name, container.name
                ))
            })?;
            let sub_path = match (&mount.sub_path, &mount.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(expr)) if !expr.is_empty() => Some(sub_path::expand(expr, &env)),
                _ => None,
            };
            let source = match sub_path {
                None => volume.path.clone(),
                Some(sub) => {
                    let target = self
                        .pod_dir
                        .join("volume-subpaths")
                        .join(&mount.name)
                        .join(&container.name)
                        .join(index.to_string());
                    sub_path::prepare(&volume.path, &sub, &target).map_err(VolumeError::Mount)?
                }
            };
            result.push(Mount {
                source,
                destination: PathBuf::from(&mount.mount_path),
                kind: MountKind::Bind,
                readonly: mount.read_only.unwrap_or(false) || volume.readonly,
            });
        }
        Ok(result)
    }

    /// The variables a subPathExpr may use: the container's literal and pod-field env.
    fn environment(&self, container: &Container) -> HashMap<String, String> {
        let mut env = HashMap::new();
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(from)) => from
                    .field_ref
                    .as_ref()
                    .and_then(|f| sources::field_value(&self.pod, &f.field_path).ok()),
                _ => None,
            };
            if let Some(value) = value {
                env.insert(var.name.clone(), value);
            }
        }
        env
    }
}
