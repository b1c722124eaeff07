//! [`PodRegistry`]: where a pod's containers, logs and network namespace are, for the
//! kubelet API (logs, exec, attach, port-forward). Pod workers keep it current; before a
//! worker has seen a pod (just after an agent restart) it falls back to the containers'
//! meta.json files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::meta::{self, ContainerMeta};

#[derive(Debug, Clone, Default)]
struct PodEntry {
    uid: String,
    netns: Option<PathBuf>,
    /// Container name → (dir, meta) of its current instance.
    containers: HashMap<String, (PathBuf, ContainerMeta)>,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone)]
pub struct PodRegistry {
    agent_dir: PathBuf,
    pods: Arc<RwLock<HashMap<(String, String), PodEntry>>>,
}

impl PodRegistry {
    pub fn new(agent_dir: &Path) -> PodRegistry {
        PodRegistry {
            agent_dir: agent_dir.to_path_buf(),
            pods: Arc::default(),
        }
    }

    /// The container's current instance dir (`<agent>/containers/<id>`).
    pub fn container_dir(&self, namespace: &str, pod: &str, container: &str) -> Option<PathBuf> {
        self.current(namespace, pod, container).map(|(dir, _)| dir)
    }

    /// The container's current log file, or with `previous` the one of the instance
    /// before it (None when it never restarted).
    pub fn log_path(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Option<PathBuf> {
        let (_, meta) = self.current(namespace, pod, container)?;
        if previous {
            meta.previous_log_path
        } else {
            Some(meta.log_path)
        }
    }

    /// The pod's network namespace file (None for host-network pods).
    pub fn netns(&self, namespace: &str, pod: &str) -> Option<PathBuf> {
        if let Ok(pods) = self.pods.read() {
            if let Some(entry) = pods.get(&(namespace.to_string(), pod.to_string())) {
                return entry.netns.clone();
            }
        }
        // Not (yet) known to a worker: the sandbox on disk of the pod's newest container.
        let (_, meta) = meta::scan(&self.agent_dir)
            .into_iter()
            .filter(|(_, m)| m.namespace == namespace && m.pod == pod)
            .max_by_key(|(_, m)| m.restart_count)?;
        let path = super::sandbox::pod_dir(&self.agent_dir, &meta.pod_uid).join("netns");
        path.exists().then_some(path)
    }

    /// The container's current instance: its dir and meta.json.
    pub fn current(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<(PathBuf, ContainerMeta)> {
        let key = (namespace.to_string(), pod.to_string());
        if let Ok(pods) = self.pods.read() {
            if let Some(found) = pods.get(&key).and_then(|e| e.containers.get(container)) {
                return Some(found.clone());
            }
        }
        // Not (yet) known to a worker: the newest instance on disk.
        meta::scan(&self.agent_dir)
            .into_iter()
            .filter(|(_, m)| m.namespace == namespace && m.pod == pod && m.container == container)
            .max_by_key(|(_, m)| m.restart_count)
    }

    /// Records the pod's sandbox and current container instances (from its worker).
    pub(crate) fn set_pod(
        &self,
        namespace: &str,
        pod: &str,
        uid: &str,
        netns: Option<PathBuf>,
        containers: Vec<(PathBuf, ContainerMeta)>,
    ) {
        let entry = PodEntry {
            uid: uid.to_string(),
            netns,
            containers: containers
                .into_iter()
                .map(|(dir, m)| (m.container.clone(), (dir, m)))
                .collect(),
        };
        if let Ok(mut pods) = self.pods.write() {
            pods.insert((namespace.to_string(), pod.to_string()), entry);
        }
    }

    /// Forgets the pod (only if `uid` is still the one registered under its name).
    pub(crate) fn remove_pod(&self, namespace: &str, pod: &str, uid: &str) {
        if let Ok(mut pods) = self.pods.write() {
            let key = (namespace.to_string(), pod.to_string());
            if pods.get(&key).is_some_and(|e| e.uid == uid) {
                pods.remove(&key);
            }
        }
    }
}
