//! One pod's worker: a reconcile loop over the pod's latest spec (from the watch) and its
//! containers' actual state (the shims' state files, polled every second like upstream's
//! PLEG relist, and woken early by spec changes and probe results).
//!
//! Each pass: sandbox → init containers in order (sidecars started and kept running) →
//! regular containers (restart policy, crash-loop back-off, liveness/startup kills) →
//! status. Deletion (deletionTimestamp, or the pod gone from the API): preStop hooks,
//! SIGTERM, the grace period, SIGKILL, sidecars last, then cleanup and the final delete.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::watch;

use super::action::Target;
use super::backoff::Backoff;
use super::dns::ClusterDns;
use super::env::Facts as EnvFacts;
use super::meta::{self, ContainerMeta};
use super::probes::{ProbeContext, Prober};
use super::sandbox::{self, Sandbox, SandboxInputs};
use super::status::{self, ContainerView, Instance, InstanceState, Kind, Terminated};
use super::{config, events, format, hooks, pull, qos, PodsContext};
use crate::controllers::events::Recorder;
use crate::kubelet::{static_pods, volumes};
use crate::runtime::cgroups;
use crate::runtime::images::ImageStore;
use crate::runtime::shim::{self, ContainerStatus, ExitReason, ShimOptions};

/// Upstream's minimum time a container gets between SIGTERM and SIGKILL.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// Default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: i64 = 30;
/// Log rotation (upstream's `containerLogMaxSize` 10Mi, `containerLogMaxFiles` 5).
const LOG_MAX_BYTES: u64 = 10 << 20;
const LOG_MAX_FILES: u32 = 5;
/// How long a container whose configuration failed waits before the next try.
const CONFIG_RETRY: Duration = Duration::from_secs(10);
/// How often container state is re-read (upstream's PLEG relist period).
const RELIST: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct Shared {
    pub client: kube::Client,
    pub ctx: PodsContext,
    pub images: ImageStore,
    pub recorder: Arc<Recorder>,
    pub node_hostname: String,
    pub memory_capacity: i64,
}

impl Shared {
    fn host_ips(&self) -> Vec<String> {
        vec![self.ctx.node_ip.to_string()]
    }
}

/// What a worker is fed: the pod's latest version and, for a static pod, the UID of its
/// mirror pod (where its status is written; None while there is none).
#[derive(Clone, Debug)]
pub struct PodUpdate {
    pub pod: Pod,
    pub mirror_uid: Option<String>,
}

/// The current instance of one container.
struct Current {
    dir: PathBuf,
    meta: ContainerMeta,
    state: InstanceState,
}

pub struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    current: HashMap<String, Current>,
    waiting: HashMap<String, (String, String)>,
    backoff: Backoff,
    prober: Prober,
    sandbox: Option<Sandbox>,
    last_written: Option<PodStatus>,
    /// Containers whose start failed wait until then before the next try (pull back-off,
    /// configuration errors), so a failing start does not repeat every second.
    retry_at: HashMap<String, Instant>,
    /// The pod's volumes once set up, and when they were last refreshed (configMap, secret,
    /// downward API and token contents follow their sources).
    volumes: Option<(Arc<volumes::PodVolumes>, Instant)>,
    /// Whether the pod's cgroup exists with its limits.
    pod_cgroup_ready: bool,
    /// A static pod's mirror pod's UID, and the UID `last_written` went to.
    mirror_uid: Option<String>,
    written_to: Option<String>,
    /// The pod's address on the pod network (pods with their own namespace), kept after
    /// the sandbox is gone as upstream keeps status.podIPs.
    pod_ip: Option<IpAddr>,
    /// A finished pod's address went back to the pool.
    network_released: bool,
}

/// How often mounted configMaps, secrets, downward API files and tokens are rewritten.
const VOLUME_REFRESH: Duration = Duration::from_secs(30);

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}
fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}
fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The pod's containers in start order: init containers (and sidecars), then regular ones,
/// then the ephemeral ones `kubectl debug` added.
pub fn spec_containers(pod: &Pod) -> Vec<(Container, Kind)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let mut out: Vec<(Container, Kind)> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let kind = if c.restart_policy.as_deref() == Some("Always") {
                Kind::Sidecar
            } else {
                Kind::Init
            };
            (c.clone(), kind)
        })
        .collect();
    out.extend(spec.containers.iter().map(|c| (c.clone(), Kind::Regular)));
    out.extend(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .filter_map(|c| Some((ephemeral_as_container(c)?, Kind::Ephemeral))),
    );
    out
}

/// An ephemeral container as the runtime runs it: the same fields as a container's
/// (targetContainerName aside, which only names whose processes it wants to see).
fn ephemeral_as_container(ephemeral: &EphemeralContainer) -> Option<Container> {
    let mut value = serde_json::to_value(ephemeral).ok()?;
    value.as_object_mut()?.remove("targetContainerName");
    serde_json::from_value(value).ok()
}

fn time(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The instant (on the monotonic clock) a wall-clock time corresponds to.
fn instant_of(t: &Time) -> Instant {
    let now = Timestamp::now();
    let ago = now.duration_since(t.0).unsigned_abs();
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Reads an instance's state from its shim's files.
fn observe(dir: &Path, meta: &ContainerMeta) -> InstanceState {
    if let Some(t) = &meta.start_error {
        return InstanceState::Exited(t.clone());
    }
    match shim::status(dir) {
        ContainerStatus::Created => InstanceState::Created,
        ContainerStatus::Running { started_at, .. } => InstanceState::Running {
            started_at: time(started_at),
        },
        ContainerStatus::Exited {
            exit_code,
            signal,
            reason,
            started_at,
            finished_at,
        } => InstanceState::Exited(Terminated {
            exit_code,
            signal,
            reason: match reason {
                ExitReason::Completed => "Completed",
                ExitReason::OOMKilled => "OOMKilled",
                _ => "Error",
            }
            .to_string(),
            message: None,
            started_at: Some(time(started_at)),
            finished_at: Some(time(finished_at)),
            container_id: status::container_id(&meta.id),
        }),
        ContainerStatus::Unknown => InstanceState::Exited(Terminated {
            exit_code: 137,
            signal: None,
            reason: "ContainerStatusUnknown".to_string(),
            message: Some(
                "The container could not be located when the pod was terminated".to_string(),
            ),
            started_at: None,
            finished_at: None,
            container_id: status::container_id(&meta.id),
        }),
    }
}

impl Worker {
    /// A worker for `pod`, adopting container instances found on disk (agent restart): the
    /// newest instance of each container is kept, older ones are removed.
    pub fn new(shared: Arc<Shared>, pod: Pod, found: Vec<(PathBuf, ContainerMeta)>) -> Worker {
        let mut current: HashMap<String, Current> = HashMap::new();
        let mut stale = Vec::new();
        for (dir, meta) in found {
            let newer = current
                .get(&meta.container)
                .is_none_or(|c| c.meta.restart_count < meta.restart_count);
            if newer {
                let state = observe(&dir, &meta);
                if let Some(old) =
                    current.insert(meta.container.clone(), Current { dir, meta, state })
                {
                    stale.push(old.dir);
                }
            } else {
                stale.push(dir);
            }
        }
        for dir in stale {
            tokio::spawn(async move { remove_instance(&dir).await });
        }
        Worker {
            shared,
            pod,
            current,
            waiting: HashMap::new(),
            backoff: Backoff::default(),
            prober: Prober::default(),
            sandbox: None,
            last_written: None,
            retry_at: HashMap::new(),
            volumes: None,
            pod_cgroup_ready: false,
            mirror_uid: None,
            written_to: None,
            pod_ip: None,
            network_released: false,
        }
    }

    /// Runs until the pod is gone and cleaned up.
    pub async fn run(mut self, mut updates: watch::Receiver<Option<PodUpdate>>) {
        loop {
            let latest = updates.borrow_and_update().clone();
            let Some(update) = latest else {
                // Gone from the API (force-deleted): stop what runs, quickly.
                self.terminate(Some(0)).await;
                self.cleanup().await;
                return;
            };
            let previous = self.pod.status.take();
            self.pod = update.pod;
            self.mirror_uid = update.mirror_uid;
            // A static pod without a mirror pod keeps the status it had.
            if self.pod.status.is_none() {
                self.pod.status = previous;
            }
            if self.pod.metadata.deletion_timestamp.is_some() {
                let grace = self.pod.metadata.deletion_grace_period_seconds;
                self.terminate(grace).await;
                self.write_status(true).await;
                self.cleanup().await;
                self.delete_object().await;
                return;
            }
            let wait = self.sync().await;
            let notify = self.prober.notify.clone();
            tokio::select! {
                changed = updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = notify.notified() => {}
            }
        }
    }

    fn refresh(&mut self) {
        for current in self.current.values_mut() {
            current.state = observe(&current.dir, &current.meta);
        }
    }

    fn target(&self) -> Target {
        Target {
            netns: self.sandbox.as_ref().and_then(|s| s.netns.clone()),
            pod_ip: if sandbox::is_host_network(&self.pod) {
                Some(self.shared.ctx.node_ip)
            } else {
                self.pod_ip
            },
        }
    }

    fn pod_ips(&self) -> Vec<String> {
        if sandbox::is_host_network(&self.pod) {
            self.shared.host_ips()
        } else {
            self.pod_ip.iter().map(IpAddr::to_string).collect()
        }
    }

    /// The sandbox (namespace, hostname, hosts and resolv.conf files) and, for a pod with its
    /// own namespace, its place on the pod network.
    async fn ensure_sandbox(&mut self) -> bool {
        let made = match self.write_sandbox().await {
            Ok(sandbox) => self.connect_network(sandbox).await,
            Err(error) => Err(error),
        };
        match made {
            Ok(s) => {
                self.sandbox = Some(s);
                true
            }
            Err(error) => {
                self.shared
                    .recorder
                    .warning(
                        &self.pod,
                        events::FAILED_CREATE_POD_SANDBOX,
                        &format!("Failed to create pod sandbox: {error}"),
                    )
                    .await;
                false
            }
        }
    }

    /// Gives the pod its address (the same one after an agent restart); the hosts file,
    /// which names it, is rewritten when it is new.
    async fn connect_network(&mut self, sandbox: Sandbox) -> Result<Sandbox, String> {
        let Some(netns) = sandbox.netns.clone() else {
            return Ok(sandbox);
        };
        let ip = self
            .shared
            .ctx
            .network
            .add(&uid(&self.pod), &netns)
            .await
            .map_err(|e| format!("failed to set up the pod network: {e}"))?;
        let known = self.pod_ip == Some(IpAddr::V4(ip));
        self.pod_ip = Some(IpAddr::V4(ip));
        self.network_released = false;
        if known {
            Ok(sandbox)
        } else {
            self.write_sandbox().await
        }
    }

    async fn write_sandbox(&self) -> Result<Sandbox, String> {
        let pod = self.pod.clone();
        let shared = self.shared.clone();
        let pod_ips = self.pod_ips();
        let made = tokio::task::spawn_blocking(move || {
            let host = std::fs::read_to_string(&shared.ctx.resolv_conf).unwrap_or_default();
            sandbox::ensure(
                &pod,
                &SandboxInputs {
                    agent_dir: &shared.ctx.agent_dir,
                    cluster: ClusterDns {
                        servers: &shared.ctx.cluster_dns,
                        domain: &shared.ctx.cluster_domain,
                        host_resolv_conf: &host,
                    },
                    node_hostname: &shared.node_hostname,
                    pod_ips: &pod_ips,
                },
            )
        })
        .await;
        match made {
            Ok(made) => made.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Disconnects the pod from the pod network (idempotent).
    async fn release_network(&mut self) {
        if let Err(error) = self.shared.ctx.network.del(&uid(&self.pod)).await {
            tracing::warn!(pod = %format::pod(&self.pod), %error, "releasing the pod's network failed");
        } else {
            self.network_released = true;
        }
    }

    fn volume_context(&self) -> volumes::VolumeContext {
        volumes::VolumeContext::new(
            self.shared.client.clone(),
            sandbox::pod_dir(&self.shared.ctx.agent_dir, &uid(&self.pod)),
            &self.shared.ctx.node_name,
        )
    }

    /// Sets the pod's volumes up (once) and refreshes their contents now and then; false
    /// (after a `FailedMount` event) while they cannot be set up.
    async fn ensure_volumes(&mut self) -> bool {
        let context = self.volume_context();
        match &self.volumes {
            Some((_, refreshed)) if refreshed.elapsed() < VOLUME_REFRESH => return true,
            Some((prepared, _)) => {
                let prepared = prepared.clone();
                if let Err(error) = volumes::refresh(&context, &self.pod).await {
                    tracing::debug!(%error, pod = %pod_name(&self.pod), "refreshing volumes failed");
                }
                self.volumes = Some((prepared, Instant::now()));
                return true;
            }
            None => {}
        }
        match volumes::prepare(&context, &self.pod).await {
            Ok(prepared) => {
                self.volumes = Some((Arc::new(prepared), Instant::now()));
                true
            }
            Err(error) => {
                self.shared
                    .recorder
                    .warning(&self.pod, events::FAILED_MOUNT, &error.to_string())
                    .await;
                false
            }
        }
    }

    /// Creates the pod-level cgroup with the pod's limits (once).
    fn ensure_pod_cgroup(&mut self) -> bool {
        if self.pod_cgroup_ready {
            return true;
        }
        let path = qos::pod_cgroup(&self.pod);
        match cgroups::ensure_pod_cgroup(&path, &qos::pod_resources(&self.pod)) {
            Ok(()) => {
                self.pod_cgroup_ready = true;
                true
            }
            Err(error) => {
                tracing::warn!(%error, %path, "creating the pod cgroup failed");
                false
            }
        }
    }

    /// One reconcile pass; returns how long to wait before the next.
    async fn sync(&mut self) -> Duration {
        self.refresh();
        let terminal_phase = matches!(
            self.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        if terminal_phase {
            // A finished pod keeps its status and logs; anything still running stops.
            if self
                .current
                .values()
                .any(|c| !matches!(c.state, InstanceState::Exited(_)))
            {
                self.terminate(None).await;
            }
            // As upstream stops a finished pod's sandbox: its address goes back to the pool
            // (status.podIP keeps showing it).
            if !self.network_released
                && self
                    .current
                    .values()
                    .all(|c| matches!(c.state, InstanceState::Exited(_)))
            {
                self.release_network().await;
            }
            self.publish_registry();
            return RELIST * 10;
        }
        if self.sandbox.is_none() && !self.ensure_sandbox().await {
            self.write_status(false).await;
            return RELIST * 5;
        }
        if !self.ensure_pod_cgroup() || !self.ensure_volumes().await {
            self.write_status(false).await;
            return RELIST * 5;
        }
        let restart_policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let containers = spec_containers(&self.pod);
        let mut wake = RELIST;

        // Init containers, in order; each regular one must succeed before the next.
        let mut initialized = true;
        for (container, kind) in containers
            .iter()
            .filter(|(_, k)| matches!(k, Kind::Init | Kind::Sidecar))
        {
            let state = self.current.get(&container.name).map(|c| c.state.clone());
            match (kind, state) {
                (_, None) => {
                    self.start(container, *kind).await;
                    initialized = false;
                    break;
                }
                (Kind::Init, Some(InstanceState::Exited(t))) if t.exit_code == 0 => continue,
                (Kind::Init, Some(InstanceState::Exited(t))) => {
                    if restart_policy != "Never" {
                        wake = wake.min(self.restart_with_backoff(container, *kind, &t).await);
                    }
                    initialized = false;
                    break;
                }
                (Kind::Init, Some(_)) => {
                    initialized = false;
                    break;
                }
                (Kind::Sidecar, Some(InstanceState::Exited(t))) => {
                    wake = wake.min(self.restart_with_backoff(container, *kind, &t).await);
                    initialized = false;
                    break;
                }
                (Kind::Sidecar, Some(InstanceState::Running { .. })) => {
                    self.watch_running(container, *kind).await;
                    let id = self.current[&container.name].meta.id.clone();
                    if !self.prober.started(container, &id) {
                        initialized = false;
                        break;
                    }
                }
                (_, Some(_)) => {
                    initialized = false;
                    break;
                }
            }
        }
        // A sidecar that crashes after initialization is restarted too.
        if initialized {
            for (container, kind) in containers.iter().filter(|(_, k)| *k == Kind::Sidecar) {
                if let Some(InstanceState::Exited(t)) =
                    self.current.get(&container.name).map(|c| c.state.clone())
                {
                    wake = wake.min(self.restart_with_backoff(container, *kind, &t).await);
                }
            }
        }

        if initialized {
            for (container, kind) in containers.iter().filter(|(_, k)| *k == Kind::Regular) {
                let state = self.current.get(&container.name).map(|c| c.state.clone());
                match state {
                    None => self.start(container, *kind).await,
                    Some(InstanceState::Exited(t)) => {
                        let restart = match restart_policy.as_str() {
                            "Always" => true,
                            "OnFailure" => t.exit_code != 0,
                            _ => false,
                        };
                        if restart {
                            wake = wake.min(self.restart_with_backoff(container, *kind, &t).await);
                        }
                    }
                    Some(InstanceState::Running { .. }) => {
                        self.watch_running(container, *kind).await
                    }
                    Some(InstanceState::Created) => {}
                }
            }
            // All regular containers done for good: the sidecars stop too.
            let all_done = restart_policy != "Always"
                && containers
                    .iter()
                    .filter(|(_, k)| *k == Kind::Regular)
                    .all(|(c, _)| match self.current.get(&c.name).map(|c| &c.state) {
                        Some(InstanceState::Exited(t)) => {
                            restart_policy == "Never" || t.exit_code == 0
                        }
                        _ => false,
                    });
            if all_done {
                self.stop_sidecars(None).await;
            }
        }
        // Ephemeral containers start whether or not the pod is initialized (one may be
        // what debugs a stuck init container), once each: they are never restarted.
        for (container, kind) in containers.iter().filter(|(_, k)| *k == Kind::Ephemeral) {
            if !self.current.contains_key(&container.name) {
                self.start(container, *kind).await;
            }
        }
        self.refresh();
        self.write_status(false).await;
        self.publish_registry();
        wake
    }

    /// Probes for a running container, and the kill when liveness or startup fails.
    async fn watch_running(&mut self, container: &Container, kind: Kind) {
        let Some(current) = self.current.get(&container.name) else {
            return;
        };
        let id = current.meta.id.clone();
        let dir = current.dir.clone();
        let ctx = ProbeContext {
            recorder: self.shared.recorder.clone(),
            pod: self.pod.clone(),
            target: self.target(),
        };
        self.prober.ensure(&ctx, container, kind, &id, dir);
        let failed = self
            .prober
            .failed(container, &id)
            .map(|(k, p)| (k, p.termination_grace_period_seconds));
        if let Some((probe_kind, probe_grace)) = failed {
            let message = format!(
                "Container {} failed {} probe, will be restarted",
                container.name,
                probe_kind.name().to_lowercase()
            );
            let grace = probe_grace.or_else(|| self.spec_grace());
            self.prober.stop(&container.name);
            self.kill(
                &container.name,
                Some(grace.unwrap_or(DEFAULT_GRACE)),
                Some(message),
            )
            .await;
        }
    }

    fn spec_grace(&self) -> Option<i64> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    }

    /// Restarts an exited container unless it is in crash-loop back-off; returns when to
    /// look again.
    async fn restart_with_backoff(
        &mut self,
        container: &Container,
        kind: Kind,
        ended: &Terminated,
    ) -> Duration {
        let key = container.name.clone();
        let finished = ended
            .finished_at
            .as_ref()
            .map(instant_of)
            .unwrap_or_else(Instant::now);
        let now = Instant::now();
        if self.backoff.in_backoff_since(&key, finished, now) {
            let delay = self.backoff.get(&key);
            let message = format!(
                "back-off {} restarting failed container={} pod={}",
                format::go_duration(delay),
                container.name,
                format::pod(&self.pod)
            );
            let first = self.waiting.get(&key).map(|w| w.0.as_str()) != Some("CrashLoopBackOff");
            if first {
                events::container(
                    &self.shared.recorder,
                    &self.pod,
                    kind,
                    &container.name,
                    true,
                    events::BACK_OFF,
                    &format!(
                        "Back-off restarting failed container {} in pod {}",
                        container.name,
                        format::pod(&self.pod)
                    ),
                )
                .await;
            }
            self.waiting
                .insert(key.clone(), ("CrashLoopBackOff".to_string(), message));
            let ready = self.backoff.ready_at(&key, finished).unwrap_or(now);
            return ready
                .saturating_duration_since(now)
                .max(Duration::from_millis(50));
        }
        self.backoff.next(&key, finished, now);
        self.start(container, kind).await;
        RELIST
    }

    /// Starts a new instance of `container` (the next restart count).
    async fn start(&mut self, container: &Container, kind: Kind) {
        let name = container.name.clone();
        let pod = self.pod.clone();
        let shared = self.shared.clone();
        let Some(sandbox) = self.sandbox.clone() else {
            return;
        };
        if self
            .retry_at
            .get(&name)
            .is_some_and(|at| Instant::now() < *at)
        {
            return;
        }
        self.retry_at.remove(&name);
        let previous = self.current.get(&name);
        let restart_count = previous.map(|p| p.meta.restart_count + 1).unwrap_or(0);
        let last_termination = previous.and_then(|p| match &p.state {
            InstanceState::Exited(t) => Some(t.clone()),
            _ => None,
        });
        let previous_log_path = previous.map(|p| p.meta.log_path.clone());

        // From finding the image until the container's meta.json names it, image garbage
        // collection must leave the image alone.
        let _pin = shared
            .ctx
            .image_pins
            .pin(container.image.as_deref().unwrap_or_default())
            .await;
        let image = match pull::ensure(&shared, &pod, container, kind, &mut self.backoff).await {
            Ok(image) => image,
            Err(waiting) => {
                let reference = container.image.clone().unwrap_or_default();
                let wait = match waiting.0.as_str() {
                    "ImagePullBackOff" => self.backoff.get(&format!("image:{reference}")),
                    "ErrImagePull" => Duration::from_secs(1),
                    _ => CONFIG_RETRY,
                };
                self.retry_at.insert(name.clone(), Instant::now() + wait);
                self.waiting.insert(name, waiting);
                return;
            }
        };
        // Image garbage collection removes the least recently used first.
        if let Err(error) = shared.images.mark_used(&image.id) {
            tracing::debug!(%error, "recording an image's use failed");
        }

        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = meta::containers_dir(&shared.ctx.agent_dir).join(&id);
        let log_path = meta::log_path(
            &shared.ctx.agent_dir,
            &namespace(&pod),
            &pod_name(&pod),
            &uid(&pod),
            &name,
            restart_count,
        );
        let config_error = |message: String| ("CreateContainerConfigError".to_string(), message);
        let mounted = {
            let images = shared.images.clone();
            let image = image.clone();
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                images.mount_rootfs(&image, &dir).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        };
        let rootfs = match mounted {
            Ok(rootfs) => rootfs,
            Err(message) => {
                self.fail_config(container, kind, &dir, config_error(message))
                    .await;
                return;
            }
        };
        let volume_mounts = match self.volumes.as_ref().map(|(v, _)| v.mounts_for(container)) {
            Some(Ok(mounts)) => mounts,
            Some(Err(error)) => {
                self.fail_config(container, kind, &dir, config_error(error.to_string()))
                    .await;
                return;
            }
            None => Vec::new(),
        };
        let (lookups, service_env) = config::lookups(&shared, &pod, container).await;
        let facts = EnvFacts {
            host_ips: shared.host_ips(),
            pod_ips: self.pod_ips(),
            ..EnvFacts::default()
        };
        let built = config::build(
            &pod,
            container,
            &lookups,
            &service_env,
            config::Inputs {
                id: &id,
                image: &image,
                rootfs,
                sandbox: &sandbox,
                volume_mounts,
                facts: &facts,
                memory_capacity: shared.memory_capacity,
                pid_ns: self.target_pid_namespace(&name),
            },
        );
        let config = match built {
            Ok(config) => config,
            Err(error) => {
                self.fail_config(container, kind, &dir, config_error(error.0))
                    .await;
                return;
            }
        };
        let mut meta = ContainerMeta {
            id: id.clone(),
            pod_uid: uid(&pod),
            namespace: namespace(&pod),
            pod: pod_name(&pod),
            container: name.clone(),
            kind,
            restart_count,
            log_path: log_path.clone(),
            spec_image: container.image.clone().unwrap_or_default(),
            image: image
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            image_id: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            last_termination,
            previous_log_path,
            start_error: None,
        };
        if let Err(error) = meta::write(&dir, &meta) {
            self.fail_config(container, kind, &dir, config_error(error.to_string()))
                .await;
            return;
        }
        if let Some(parent) = log_path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        events::container(
            &shared.recorder,
            &pod,
            kind,
            &name,
            false,
            events::CREATED,
            &format!("Created container: {name}"),
        )
        .await;
        let options = ShimOptions {
            log_path,
            log_max_bytes: LOG_MAX_BYTES,
            log_max_files: LOG_MAX_FILES,
        };
        match shim::start(&dir, &config, &options).await {
            Ok(()) => {
                events::container(
                    &shared.recorder,
                    &pod,
                    kind,
                    &name,
                    false,
                    events::STARTED,
                    &format!("Started container {name}"),
                )
                .await;
            }
            Err(error) => {
                let message = error.to_string();
                events::container(
                    &shared.recorder,
                    &pod,
                    kind,
                    &name,
                    true,
                    events::FAILED,
                    &format!("Error: {message}"),
                )
                .await;
                let now = Time(Timestamp::now());
                meta.start_error = Some(Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".to_string(),
                    message: Some(message),
                    started_at: Some(now.clone()),
                    finished_at: Some(now),
                    container_id: status::container_id(&id),
                });
                let _ = meta::write(&dir, &meta);
            }
        }
        let state = observe(&dir, &meta);
        let started = matches!(state, InstanceState::Running { .. });
        self.prober.stop(&name);
        if let Some(old) = self.current.insert(
            name.clone(),
            Current {
                dir: dir.clone(),
                meta,
                state,
            },
        ) {
            remove_instance(&old.dir).await;
        }
        self.waiting.remove(&name);
        if started {
            if let Some(handler) = container
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
            {
                let result = hooks::run(handler, &pod, container, &dir, &self.target()).await;
                if let Err(message) = result {
                    events::container(
                        &shared.recorder,
                        &pod,
                        kind,
                        &name,
                        true,
                        events::FAILED_POST_START_HOOK,
                        &message,
                    )
                    .await;
                    let grace = self.spec_grace();
                    self.kill(
                        &name,
                        grace.or(Some(DEFAULT_GRACE)),
                        Some("FailedPostStartHook".to_string()),
                    )
                    .await;
                }
            }
        }
    }

    /// For an ephemeral container with `targetContainerName`: the PID namespace of that
    /// container's running instance, so that it sees (and can debug) its processes.
    fn target_pid_namespace(&self, name: &str) -> Option<PathBuf> {
        let target = self
            .pod
            .spec
            .as_ref()?
            .ephemeral_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)?
            .target_container_name
            .as_deref()?;
        match shim::status(&self.current.get(target)?.dir) {
            ContainerStatus::Running { pid, .. } => {
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))
            }
            _ => None,
        }
    }

    async fn fail_config(
        &mut self,
        container: &Container,
        kind: Kind,
        dir: &Path,
        waiting: (String, String),
    ) {
        events::container(
            &self.shared.recorder,
            &self.pod,
            kind,
            &container.name,
            true,
            events::FAILED,
            &format!("Error: {}", waiting.1),
        )
        .await;
        self.waiting.insert(container.name.clone(), waiting);
        self.retry_at
            .insert(container.name.clone(), Instant::now() + CONFIG_RETRY);
        remove_instance(dir).await;
    }

    /// Stops one container: preStop, SIGTERM, the grace period, SIGKILL.
    async fn kill(&mut self, name: &str, grace: Option<i64>, message: Option<String>) {
        let Some(current) = self.current.get(name) else {
            return;
        };
        if matches!(current.state, InstanceState::Exited(_)) {
            return;
        }
        let spec = spec_containers(&self.pod)
            .into_iter()
            .find(|(c, _)| c.name == name);
        let kind = current.meta.kind;
        let dir = current.dir.clone();
        self.prober.stop(name);
        kill_instance(
            &self.shared,
            &self.pod,
            kind,
            name,
            &dir,
            spec.as_ref().map(|(c, _)| c),
            &self.target(),
            grace_of(grace, self.spec_grace()),
            message,
        )
        .await;
        self.refresh();
    }

    async fn stop_sidecars(&mut self, grace: Option<i64>) {
        let sidecars: Vec<String> = spec_containers(&self.pod)
            .into_iter()
            .filter(|(_, k)| *k == Kind::Sidecar)
            .map(|(c, _)| c.name)
            .rev()
            .collect();
        for name in sidecars {
            self.kill(&name, grace, None).await;
        }
    }

    /// Stops every container: regular ones together, then sidecars in reverse order.
    async fn terminate(&mut self, grace: Option<i64>) {
        let grace = grace_of(grace, self.spec_grace());
        let deadline = Instant::now() + grace;
        let target = self.target();
        let specs = spec_containers(&self.pod);
        let mut kills = Vec::new();
        for current in self.current.values() {
            if current.meta.kind == Kind::Sidecar
                || matches!(current.state, InstanceState::Exited(_))
            {
                continue;
            }
            let spec = specs.iter().find(|(c, _)| c.name == current.meta.container);
            kills.push(kill_instance(
                &self.shared,
                &self.pod,
                current.meta.kind,
                &current.meta.container,
                &current.dir,
                spec.map(|(c, _)| c),
                &target,
                grace,
                None,
            ));
        }
        futures::future::join_all(kills).await;
        let left = deadline.saturating_duration_since(Instant::now());
        let sidecars: Vec<(String, PathBuf)> = specs
            .iter()
            .filter(|(_, k)| *k == Kind::Sidecar)
            .rev()
            .filter_map(|(c, _)| {
                self.current
                    .get(&c.name)
                    .map(|cur| (c.name.clone(), cur.dir.clone()))
            })
            .collect();
        for (name, dir) in sidecars {
            let spec = specs.iter().find(|(c, _)| c.name == name).map(|(c, _)| c);
            kill_instance(
                &self.shared,
                &self.pod,
                Kind::Sidecar,
                &name,
                &dir,
                spec,
                &target,
                left,
                None,
            )
            .await;
        }
        // Orphans of containers no longer in the spec.
        let gone: Vec<PathBuf> = self
            .current
            .values()
            .filter(|c| !specs.iter().any(|(s, _)| s.name == c.meta.container))
            .map(|c| c.dir.clone())
            .collect();
        for dir in gone {
            let _ = shim::kill(&dir, libc::SIGKILL).await;
        }
        self.prober = Prober::default();
        self.refresh();
    }

    /// Removes everything the pod had on this node except nothing: containers, volumes,
    /// sandbox, logs.
    async fn cleanup(&mut self) {
        for (_, current) in self.current.drain() {
            remove_instance(&current.dir).await;
        }
        let uid = uid(&self.pod);
        let pod_dir = sandbox::pod_dir(&self.shared.ctx.agent_dir, &uid);
        if let Err(error) = volumes::cleanup(&pod_dir).await {
            tracing::warn!(%error, "cleaning up the pod's volumes failed");
        }
        let cgroup = qos::pod_cgroup(&self.pod);
        let _ = tokio::task::spawn_blocking(move || cgroups::remove_pod_cgroup(&cgroup)).await;
        self.release_network().await;
        self.volumes = None;
        self.pod_cgroup_ready = false;
        let logs = meta::pod_log_dir(
            &self.shared.ctx.agent_dir,
            &namespace(&self.pod),
            &pod_name(&self.pod),
            &uid,
        );
        let removed = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&logs);
            sandbox::remove(&pod_dir)
        })
        .await;
        if let Ok(Err(error)) = removed {
            tracing::warn!(pod = %format::pod(&self.pod), %error, "pod dir not removed");
        }
        self.shared
            .ctx
            .registry
            .remove_pod(&namespace(&self.pod), &pod_name(&self.pod), &uid);
    }

    /// The final step of a graceful deletion: remove the object (this uid only). A static
    /// pod's mirror pod is not the worker's: `static_pods` removes it with its file.
    async fn delete_object(&self) {
        if static_pods::is_static(&self.pod) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &namespace(&self.pod));
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid(&self.pod)),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod_name(&self.pod), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(error) => tracing::warn!(pod = %format::pod(&self.pod), %error, "pod not deleted"),
        }
    }

    fn views(&self) -> Vec<ContainerView> {
        spec_containers(&self.pod)
            .into_iter()
            .map(|(c, kind)| {
                let current = self.current.get(&c.name);
                let instance = current.map(|cur| Instance {
                    id: cur.meta.id.clone(),
                    image: cur.meta.image.clone(),
                    image_id: cur.meta.image_id.clone(),
                    restart_count: cur.meta.restart_count,
                    state: cur.state.clone(),
                    last_termination: cur.meta.last_termination.clone(),
                });
                let id = current.map(|c| c.meta.id.clone()).unwrap_or_default();
                ContainerView {
                    name: c.name.clone(),
                    kind,
                    spec_image: c.image.clone().unwrap_or_default(),
                    instance,
                    waiting: self.waiting.get(&c.name).cloned(),
                    started: self.prober.started(&c, &id),
                    ready: self.prober.ready(&c, &id),
                }
            })
            .collect()
    }

    /// Writes the status through pods/status when it changed.
    async fn write_status(&mut self, terminal: bool) {
        let facts = status::Facts {
            host_ips: self.shared.host_ips(),
            pod_ips: self.pod_ips(),
            sandbox_ready: self.sandbox.is_some() && !terminal,
            terminal,
        };
        let mut pod = self.pod.clone();
        // The last status written is newer than what the watch may have delivered.
        if let Some(last) = &self.last_written {
            let api_phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            let mut merged = last.clone();
            if matches!(api_phase.as_deref(), Some("Succeeded" | "Failed")) {
                merged.phase = api_phase;
            }
            // Conditions not owned by the kubelet come from the API.
            pod.status = Some(PodStatus {
                conditions: merge_conditions(
                    last.conditions.as_deref(),
                    pod.status.as_ref().and_then(|s| s.conditions.as_deref()),
                ),
                ..merged
            });
        }
        let status = status::generate(&pod, &self.views(), &facts, &Time(Timestamp::now()));
        // A static pod's status goes to its mirror pod, once there is one.
        let target = if static_pods::is_static(&self.pod) {
            self.mirror_uid.clone()
        } else {
            Some(uid(&self.pod))
        };
        let Some(target) = target else {
            return;
        };
        if self.last_written.as_ref() == Some(&status) && self.written_to.as_ref() == Some(&target)
        {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &namespace(&self.pod));
        let patch = serde_json::json!({
            "metadata": {"uid": target},
            "status": status,
        });
        match api
            .patch_status(
                &pod_name(&self.pod),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                self.last_written = Some(status);
                if updated.metadata.uid.as_ref() == Some(&target) {
                    self.pod.status = updated.status;
                }
                self.written_to = Some(target);
            }
            Err(error) => {
                tracing::debug!(pod = %format::pod(&self.pod), %error, "pod status not written")
            }
        }
    }

    fn publish_registry(&self) {
        self.shared.ctx.registry.set_pod(
            &namespace(&self.pod),
            &pod_name(&self.pod),
            &uid(&self.pod),
            self.sandbox.as_ref().and_then(|s| s.netns.clone()),
            self.current
                .values()
                .map(|c| (c.dir.clone(), c.meta.clone()))
                .collect(),
        );
    }
}

/// The kubelet's own conditions from `ours`, the others from the API.
fn merge_conditions(
    ours: Option<&[k8s_openapi::api::core::v1::PodCondition]>,
    api: Option<&[k8s_openapi::api::core::v1::PodCondition]>,
) -> Option<Vec<k8s_openapi::api::core::v1::PodCondition>> {
    let owned = [
        "PodScheduled",
        "Ready",
        "Initialized",
        "ContainersReady",
        "PodReadyToStartContainers",
    ];
    let mut out: Vec<_> = api
        .unwrap_or_default()
        .iter()
        .filter(|c| !owned.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    out.extend(
        ours.unwrap_or_default()
            .iter()
            .filter(|c| owned.contains(&c.type_.as_str()))
            .cloned(),
    );
    Some(out)
}

/// The grace period: the given one (deletion), else the spec's, else 30 s; at least 2 s.
fn grace_of(given: Option<i64>, spec: Option<i64>) -> Duration {
    let secs = given.or(spec).unwrap_or(DEFAULT_GRACE).max(0) as u64;
    Duration::from_secs(secs).max(MIN_GRACE)
}

/// preStop (within the grace period), `Killing` event, SIGTERM, wait, SIGKILL.
#[allow(clippy::too_many_arguments)]
async fn kill_instance(
    shared: &Shared,
    pod: &Pod,
    kind: Kind,
    name: &str,
    dir: &Path,
    spec: Option<&Container>,
    target: &Target,
    grace: Duration,
    message: Option<String>,
) {
    let started = Instant::now();
    if let Some(handler) = spec
        .and_then(|c| c.lifecycle.as_ref())
        .and_then(|l| l.pre_stop.as_ref())
    {
        let container = spec.cloned().unwrap_or_default();
        match tokio::time::timeout(grace, hooks::run(handler, pod, &container, dir, target)).await {
            Ok(Err(message)) => {
                events::container(
                    &shared.recorder,
                    pod,
                    kind,
                    name,
                    true,
                    events::FAILED_PRE_STOP_HOOK,
                    &message,
                )
                .await
            }
            Ok(Ok(_)) => {}
            Err(_) => tracing::info!(
                container = name,
                "preStop hook did not finish within the grace period"
            ),
        }
    }
    let left = grace.saturating_sub(started.elapsed()).max(MIN_GRACE);
    events::container(
        &shared.recorder,
        pod,
        kind,
        name,
        false,
        events::KILLING,
        &message.unwrap_or_else(|| format!("Stopping container {name}")),
    )
    .await;
    if let Err(error) = shim::kill(dir, libc::SIGTERM).await {
        tracing::debug!(container = name, %error, "SIGTERM not delivered");
    }
    let waited = tokio::time::timeout(left, shim::wait(dir)).await;
    tracing::debug!(
        container = name,
        ?waited,
        ?left,
        "container stop after SIGTERM"
    );
    if waited.is_err() {
        let _ = shim::kill(dir, libc::SIGKILL).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), shim::wait(dir)).await;
    }
}

/// Removes an exited instance: its rootfs, runtime state and dir (logs stay).
pub async fn remove_instance(dir: &Path) {
    if matches!(shim::status(dir), ContainerStatus::Running { .. }) {
        let _ = shim::kill(dir, libc::SIGKILL).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), shim::wait(dir)).await;
    }
    let unmount_dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || ImageStore::unmount_rootfs(&unmount_dir)).await;
    if let Err(error) = shim::remove(dir).await {
        tracing::warn!(dir = %dir.display(), %error, "container not removed by its shim");
    }
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        // Only when nothing is mounted below any more (the rootfs is unmounted above).
        if !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&dir.to_string_lossy().into_owned())
        {
            let _ = std::fs::remove_dir_all(&dir);
        }
    })
    .await;
}
