//! The pod source: a watch on the pods bound to this node (`spec.nodeName=<node>`), one
//! worker task per pod uid fed the latest version of its pod, and at start the adoption of
//! containers found on disk (agent restart: running containers are kept, not restarted)
//! and the removal of those whose pod no longer exists.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::meta::{self, ContainerMeta};
use super::worker::{remove_instance, Shared, Worker};

struct Running {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// Runs the pod workers until the watch ends (never, in practice).
pub async fn run(shared: Arc<Shared>) {
    let agent_dir = shared.ctx.agent_dir.clone();
    let mut on_disk: HashMap<String, Vec<(PathBuf, ContainerMeta)>> = HashMap::new();
    {
        let dir = agent_dir.clone();
        let found = tokio::task::spawn_blocking(move || meta::scan(&dir))
            .await
            .unwrap_or_default();
        for (dir, meta) in found {
            on_disk
                .entry(meta.pod_uid.clone())
                .or_default()
                .push((dir, meta));
        }
        // Sandboxes whose containers are already gone count too.
        if let Ok(entries) = std::fs::read_dir(agent_dir.join("pods")) {
            for entry in entries.flatten() {
                on_disk
                    .entry(entry.file_name().to_string_lossy().into_owned())
                    .or_default();
            }
        }
    }
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", shared.ctx.node_name));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, Running> = HashMap::new();
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        workers.retain(|_, w| !w.task.is_finished());
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                dispatch(&shared, &mut workers, &mut on_disk, pod);
            }
            Ok(watcher::Event::InitDone) => {
                // Pods deleted while the watch was down.
                for (uid, worker) in &workers {
                    if !listed.contains(uid) {
                        worker.updates.send_replace(None);
                    }
                }
                // Containers of pods that no longer exist.
                for (uid, found) in on_disk.drain() {
                    if listed.contains(&uid) {
                        continue;
                    }
                    tracing::info!(
                        pod_uid = uid,
                        "removing the containers of a pod that is gone"
                    );
                    tokio::spawn(remove_orphans(shared.clone(), uid, found));
                }
            }
            Ok(watcher::Event::Apply(pod)) => dispatch(&shared, &mut workers, &mut on_disk, pod),
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(worker) = workers.get(&uid) {
                    worker.updates.send_replace(None);
                }
            }
            Err(error) => tracing::warn!(%error, "pod watch failed; retrying"),
        }
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    workers: &mut HashMap<String, Running>,
    on_disk: &mut HashMap<String, Vec<(PathBuf, ContainerMeta)>>,
    pod: Pod,
) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if let Some(worker) = workers.get(&uid) {
        if !worker.task.is_finished() {
            worker.updates.send_replace(Some(pod));
            return;
        }
    }
    let found = on_disk.remove(&uid).unwrap_or_default();
    let (updates, receiver) = watch::channel(Some(pod.clone()));
    let worker = Worker::new(shared.clone(), pod, found);
    let task = tokio::spawn(worker.run(receiver));
    workers.insert(uid, Running { updates, task });
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
