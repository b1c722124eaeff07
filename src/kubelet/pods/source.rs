//! The pod source: a watch on the pods bound to this node (`spec.nodeName=<node>`) and the
//! static pods read from their files, one worker task per pod uid fed the latest version of
//! its pod, and at start the adoption of containers found on disk (agent restart: running
//! containers are kept, not restarted) and the removal of those whose pod no longer exists.
//!
//! Mirror pods in the API are not pods to run: they stand for a static pod (UID = the
//! `config.mirror` hash), whose worker learns from them where to write its status. Deleting
//! a mirror pod touches no container. A static pod gone from its file stops gracefully, and
//! a new version of it (a new hash, the same name) starts once the old one has stopped, as
//! upstream's pod workers do for static pods of one full name.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::meta::{self, ContainerMeta};
use super::worker::{remove_instance, PodUpdate, Shared, Worker};
use crate::kubelet::static_pods::{is_mirror, mirror_of};

/// How often static pods waiting for their predecessor to stop are looked at.
const STATIC_START_CHECK: Duration = Duration::from_secs(1);

struct Running {
    updates: watch::Sender<Option<PodUpdate>>,
    task: JoinHandle<()>,
    /// Namespace and name.
    name: (String, String),
    /// A static pod told to stop (its file went or changed).
    stopping: bool,
}

impl Running {
    fn live(&self) -> bool {
        !self.task.is_finished()
    }
}

fn full_name(pod: &Pod) -> (String, String) {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Runs the pod workers until the watch ends (never, in practice).
pub async fn run(shared: Arc<Shared>) {
    let mut source = Source {
        on_disk: containers_on_disk(&shared.ctx.agent_dir).await,
        shared: shared.clone(),
        workers: HashMap::new(),
        statics: HashMap::new(),
        mirrors: HashMap::new(),
    };
    // Static pods first: they adopt their containers before orphans are removed.
    let mut static_pods = shared.ctx.static_pods.clone();
    let initial = static_pods.borrow_and_update().clone();
    source.set_statics(initial);
    let mut statics_open = true;

    let api: Api<Pod> = Api::all(shared.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", shared.ctx.node_name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed: HashSet<String> = HashSet::new();
    let mut listed_mirrors: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(STATIC_START_CHECK);
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { return };
                source.workers.retain(|_, w| w.live());
                match event {
                    Ok(watcher::Event::Init) => {
                        listed.clear();
                        listed_mirrors.clear();
                    }
                    Ok(watcher::Event::InitApply(pod)) => {
                        if is_mirror(&pod) {
                            if let (Some(hash), None) = (mirror_of(&pod), &pod.metadata.deletion_timestamp) {
                                listed_mirrors.insert(hash.to_string(), uid_of(&pod));
                            }
                        } else {
                            listed.insert(uid_of(&pod));
                            source.dispatch(pod);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        source.mirrors = std::mem::take(&mut listed_mirrors);
                        source.relisted(&listed);
                    }
                    Ok(watcher::Event::Apply(pod)) if is_mirror(&pod) => source.mirror_changed(&pod, false),
                    Ok(watcher::Event::Apply(pod)) => source.dispatch(pod),
                    Ok(watcher::Event::Delete(pod)) if is_mirror(&pod) => source.mirror_changed(&pod, true),
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(worker) = source.workers.get(&uid_of(&pod)) {
                            worker.updates.send_replace(None);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "pod watch failed; retrying"),
                }
            }
            changed = static_pods.changed(), if statics_open => {
                if changed.is_err() {
                    statics_open = false;
                    continue;
                }
                let pods = static_pods.borrow_and_update().clone();
                source.set_statics(pods);
            }
            _ = tick.tick() => {
                source.workers.retain(|_, w| w.live());
                let waiting: Vec<String> = source
                    .statics
                    .keys()
                    .filter(|uid| !source.workers.contains_key(*uid))
                    .cloned()
                    .collect();
                for uid in waiting {
                    source.update_static(&uid);
                }
            }
        }
    }
}

/// Container instances on disk by pod uid, and sandboxes whose containers are gone.
async fn containers_on_disk(
    agent_dir: &std::path::Path,
) -> HashMap<String, Vec<(PathBuf, ContainerMeta)>> {
    let mut on_disk: HashMap<String, Vec<(PathBuf, ContainerMeta)>> = HashMap::new();
    let dir = agent_dir.to_path_buf();
    let found = tokio::task::spawn_blocking(move || meta::scan(&dir))
        .await
        .unwrap_or_default();
    for (dir, meta) in found {
        on_disk
            .entry(meta.pod_uid.clone())
            .or_default()
            .push((dir, meta));
    }
    if let Ok(entries) = std::fs::read_dir(agent_dir.join("pods")) {
        for entry in entries.flatten() {
            on_disk
                .entry(entry.file_name().to_string_lossy().into_owned())
                .or_default();
        }
    }
    on_disk
}

struct Source {
    shared: Arc<Shared>,
    workers: HashMap<String, Running>,
    /// Found at start, until a worker adopts them or they are found orphaned.
    on_disk: HashMap<String, Vec<(PathBuf, ContainerMeta)>>,
    /// Static pods by UID.
    statics: HashMap<String, Pod>,
    /// Mirror pods' UIDs by the UID of the static pod they stand for.
    mirrors: HashMap<String, String>,
}

impl Source {
    /// Feeds a pod from the API to its worker, starting one if needed.
    fn dispatch(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        let update = PodUpdate {
            pod,
            mirror_uid: None,
        };
        match self.workers.get(&uid) {
            Some(worker) if worker.live() => {
                worker.updates.send_replace(Some(update));
            }
            _ => self.start(uid, update),
        }
    }

    fn start(&mut self, uid: String, update: PodUpdate) {
        let found = self.on_disk.remove(&uid).unwrap_or_default();
        let name = full_name(&update.pod);
        let worker = Worker::new(self.shared.clone(), update.pod.clone(), found);
        let (updates, receiver) = watch::channel(Some(update));
        let task = tokio::spawn(worker.run(receiver));
        let running = Running {
            updates,
            task,
            name,
            stopping: false,
        };
        self.workers.insert(uid, running);
    }

    /// After a (re)list: pods deleted while the watch was down stop, containers of pods
    /// that no longer exist go, static pods learn their mirror pods.
    fn relisted(&mut self, listed: &HashSet<String>) {
        for (uid, worker) in &self.workers {
            if !listed.contains(uid) && !self.statics.contains_key(uid) && !worker.stopping {
                worker.updates.send_replace(None);
            }
        }
        for (uid, found) in self.on_disk.drain() {
            if listed.contains(&uid) || self.statics.contains_key(&uid) {
                continue;
            }
            tracing::info!(
                pod_uid = uid,
                "removing the containers of a pod that is gone"
            );
            tokio::spawn(remove_orphans(self.shared.clone(), uid, found));
        }
        let statics: Vec<String> = self.statics.keys().cloned().collect();
        for uid in statics {
            self.update_static(&uid);
        }
    }

    /// The static pods now: new ones start, gone ones stop gracefully.
    fn set_statics(&mut self, pods: Vec<Pod>) {
        let latest: HashMap<String, Pod> = pods.into_iter().map(|p| (uid_of(&p), p)).collect();
        let old = std::mem::replace(&mut self.statics, latest);
        for (uid, pod) in old {
            if self.statics.contains_key(&uid) {
                continue;
            }
            if let Some(worker) = self.workers.get_mut(&uid) {
                tracing::info!(pod = %format!("{}/{}", worker.name.0, worker.name.1), "stopping a static pod whose manifest changed or went");
                let update = PodUpdate {
                    pod: stopping(pod),
                    mirror_uid: self.mirrors.get(&uid).cloned(),
                };
                worker.updates.send_replace(Some(update));
                worker.stopping = true;
            }
        }
        let uids: Vec<String> = self.statics.keys().cloned().collect();
        for uid in uids {
            self.update_static(&uid);
        }
    }

    /// A mirror pod appeared, changed or went: its static pod's worker learns.
    fn mirror_changed(&mut self, mirror: &Pod, deleted: bool) {
        let Some(hash) = mirror_of(mirror).map(str::to_string) else {
            return;
        };
        let uid = uid_of(mirror);
        if deleted || mirror.metadata.deletion_timestamp.is_some() {
            if self.mirrors.get(&hash) == Some(&uid) {
                self.mirrors.remove(&hash);
            }
        } else {
            self.mirrors.insert(hash.clone(), uid);
        }
        self.update_static(&hash);
    }

    /// Feeds a static pod (with its mirror's UID) to its worker, or starts it unless a
    /// static pod of the same name is still stopping (then a later tick does).
    fn update_static(&mut self, uid: &str) {
        let Some(pod) = self.statics.get(uid) else {
            return;
        };
        let update = PodUpdate {
            pod: pod.clone(),
            mirror_uid: self.mirrors.get(uid).cloned(),
        };
        let name = full_name(pod);
        match self.workers.get(uid) {
            Some(worker) if worker.live() && !worker.stopping => {
                worker.updates.send_if_modified(|current| {
                    let changed = current.as_ref().is_none_or(|c| {
                        c.mirror_uid != update.mirror_uid || c.pod.spec != update.pod.spec
                    });
                    if changed {
                        *current = Some(update.clone());
                    }
                    changed
                });
                return;
            }
            Some(worker) if worker.live() => return,
            _ => {}
        }
        let predecessor = self
            .workers
            .iter()
            .any(|(other, w)| other != uid && w.name == name && w.live());
        if !predecessor {
            self.start(uid.to_string(), update);
        }
    }
}

/// A static pod as deleted now, with its grace period (its file went or changed).
fn stopping(mut pod: Pod) -> Pod {
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    pod.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    pod
}

/// Stops and removes the containers, sandbox and logs of a pod the API no longer has.
async fn remove_orphans(shared: Arc<Shared>, uid: String, found: Vec<(PathBuf, ContainerMeta)>) {
    let mut log_dirs = HashSet::new();
    for (dir, meta) in &found {
        log_dirs.insert(meta::pod_log_dir(
            &shared.ctx.agent_dir,
            &meta.namespace,
            &meta.pod,
            &meta.pod_uid,
        ));
        remove_instance(dir).await;
    }
    if let Err(error) = shared.ctx.network.del(&uid).await {
        tracing::warn!(%error, pod_uid = uid, "releasing an orphaned pod's network failed");
    }
    let pod_dir = super::sandbox::pod_dir(&shared.ctx.agent_dir, &uid);
    if let Err(error) = crate::kubelet::volumes::cleanup(&pod_dir).await {
        tracing::warn!(%error, "cleaning up an orphaned pod's volumes failed");
    }
    let _ = tokio::task::spawn_blocking(move || {
        for dir in log_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Err(error) = super::sandbox::remove(&pod_dir) {
            tracing::warn!(%error, "orphaned pod dir not removed");
        }
    })
    .await;
}
