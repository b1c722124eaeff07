//! Finding a pod's containers on disk: the kubelet API needs a container's directory (is it
//! still running?), its log files and its pod's network namespace.
//!
//! Reads the bookkeeping the pod workers write, `<agent>/containers/<id>/meta.json`
//! (`{"podUid","namespace","pod","container","restartCount","logPath"}`), and the shim's
//! `exit.json` beside it. TODO(issue 5): use `crate::kubelet::pods::PodRegistry` once the
//! pod workers provide it, instead of scanning.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One container instance as the kubelet recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container id (the directory's name).
    pub id: String,
    /// `<agent>/containers/<id>`.
    pub dir: PathBuf,
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub restart_count: u32,
    /// This instance's CRI-format log file.
    pub log_path: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    pod_uid: String,
    namespace: String,
    pod: String,
    container: String,
    #[serde(default)]
    restart_count: u32,
    log_path: PathBuf,
}

impl ContainerRecord {
    /// Whether the container still runs: the shim writes `exit.json` when it ended, and the
    /// directory goes when the container is removed.
    pub fn running(&self) -> bool {
        self.dir.is_dir() && !self.dir.join("exit.json").exists()
    }

    /// The log of the instance before this one (`kubectl logs --previous`): logs are named
    /// `<restartCount>.log` in one directory per container.
    pub fn previous_log_path(&self) -> Option<PathBuf> {
        let previous = self.restart_count.checked_sub(1)?;
        Some(self.log_path.parent()?.join(format!("{previous}.log")))
    }
}

/// The containers under one agent directory.
#[derive(Clone, Debug)]
pub struct Containers {
    agent_dir: PathBuf,
}

impl Containers {
    pub fn new(agent_dir: &Path) -> Containers {
        Containers {
            agent_dir: agent_dir.to_path_buf(),
        }
    }

    /// Every recorded container instance (unreadable records are skipped: a container
    /// being created has no meta.json yet).
    pub fn all(&self) -> Vec<ContainerRecord> {
        let Ok(entries) = std::fs::read_dir(self.agent_dir.join("containers")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let dir = entry.path();
                let meta: Meta =
                    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
                Some(ContainerRecord {
                    id: entry.file_name().to_string_lossy().into_owned(),
                    dir,
                    pod_uid: meta.pod_uid,
                    namespace: meta.namespace,
                    pod: meta.pod,
                    container: meta.container,
                    restart_count: meta.restart_count,
                    log_path: meta.log_path,
                })
            })
            .collect()
    }

    /// The newest instance of `container` in pod `namespace/pod` (optionally of one pod
    /// UID): the running one when there is one, else the highest restart count.
    pub fn find(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: Option<&str>,
        container: &str,
    ) -> Option<ContainerRecord> {
        self.all()
            .into_iter()
            .filter(|c| c.namespace == namespace && c.pod == pod && c.container == container)
            .filter(|c| pod_uid.is_none_or(|uid| c.pod_uid == uid))
            .max_by_key(|c| (c.running(), c.restart_count))
    }

    /// The UID of pod `namespace/pod` if any container of it is recorded here.
    pub fn pod_uid(&self, namespace: &str, pod: &str) -> Option<String> {
        self.all()
            .into_iter()
            .filter(|c| c.namespace == namespace && c.pod == pod)
            .max_by_key(|c| (c.running(), c.restart_count))
            .map(|c| c.pod_uid)
    }

    /// The pod's network namespace, `<agent>/pods/<uid>/netns`, if it exists.
    pub fn netns(&self, pod_uid: &str) -> Option<PathBuf> {
        let path = self.agent_dir.join("pods").join(pod_uid).join("netns");
        path.exists().then_some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(agent: &Path, id: &str, container: &str, restart_count: u32, exited: bool) {
        let dir = agent.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let log = agent.join(format!("logs/ns_web_u1/{container}/{restart_count}.log"));
        std::fs::write(
            dir.join("meta.json"),
            serde_json::json!({
                "podUid": "u1", "namespace": "ns", "pod": "web", "container": container,
                "restartCount": restart_count, "logPath": log,
            })
            .to_string(),
        )
        .unwrap();
        if exited {
            std::fs::write(dir.join("exit.json"), "{}").unwrap();
        }
    }

    #[test]
    fn the_newest_instance_is_found_and_its_previous_log_named() {
        let agent = tempfile::tempdir().unwrap();
        record(agent.path(), "a", "app", 0, true);
        record(agent.path(), "b", "app", 1, false);
        record(agent.path(), "c", "sidecar", 0, false);
        std::fs::create_dir_all(agent.path().join("containers/d")).unwrap();
        let containers = Containers::new(agent.path());
        let app = containers.find("ns", "web", None, "app").unwrap();
        assert_eq!(app.id, "b");
        assert!(app.running());
        assert_eq!(
            app.previous_log_path().unwrap(),
            agent.path().join("logs/ns_web_u1/app/0.log")
        );
        let first = containers.find("ns", "web", Some("u1"), "sidecar").unwrap();
        assert_eq!(first.previous_log_path(), None);
        assert!(containers.find("ns", "web", Some("other"), "app").is_none());
        assert!(containers.find("ns", "web", None, "db").is_none());
        assert_eq!(containers.pod_uid("ns", "web").as_deref(), Some("u1"));
        assert_eq!(containers.netns("u1"), None);
    }
}
