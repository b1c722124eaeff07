//! Finding a pod's containers for the kubelet API: a container's directory (is it still
//! running?), its log files and its pod's network namespace.
//!
//! Asks the pod workers' [`PodRegistry`], which knows each pod's current container
//! instances and sandbox, and for a pod no worker has seen yet (just after an agent
//! restart) reads the containers' `meta.json` on disk. `--previous` needs no scan of its own:
//! meta.json records the log of the instance before.

use std::path::PathBuf;

use crate::kubelet::pods::{ContainerMeta, PodRegistry};

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
    /// This instance's CRI-format log file.
    pub log_path: PathBuf,
    /// The log of the instance before this one (`kubectl logs --previous`), if any.
    pub previous_log_path: Option<PathBuf>,
}

impl ContainerRecord {
    fn new(dir: PathBuf, meta: ContainerMeta) -> ContainerRecord {
        ContainerRecord {
            id: meta.id,
            dir,
            pod_uid: meta.pod_uid,
            namespace: meta.namespace,
            pod: meta.pod,
            container: meta.container,
            log_path: meta.log_path,
            previous_log_path: meta.previous_log_path,
        }
    }

    /// Whether the container still runs: the shim writes `exit.json` when it ended, and the
    /// directory goes when the container is removed.
    pub fn running(&self) -> bool {
        self.dir.is_dir() && !self.dir.join("exit.json").exists()
    }
}

/// This node's containers, as the kubelet API looks them up.
#[derive(Clone, Debug)]
pub struct Containers {
    registry: PodRegistry,
}

impl Containers {
    pub fn new(registry: PodRegistry) -> Containers {
        Containers { registry }
    }

    /// The current instance of `container` in pod `namespace/pod` (of that pod UID, when
    /// the request names one).
    pub fn find(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: Option<&str>,
        container: &str,
    ) -> Option<ContainerRecord> {
        let (dir, meta) = self.registry.current(namespace, pod, container)?;
        if pod_uid.is_some_and(|uid| uid != meta.pod_uid) {
            return None;
        }
        Some(ContainerRecord::new(dir, meta))
    }

    /// The pod's network namespace file (none for a host-network pod), of that pod UID
    /// when the request names one.
    pub fn netns(&self, namespace: &str, pod: &str, pod_uid: Option<&str>) -> Option<PathBuf> {
        // The file is `<agent>/pods/<uid>/netns`: its dir names the pod instance.
        self.registry.netns(namespace, pod).filter(|path| {
            pod_uid.is_none_or(|uid| {
                path.parent().and_then(|dir| dir.file_name()) == Some(uid.as_ref())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Writes meta.json as the pod workers do.
    fn record(agent: &Path, id: &str, restart_count: i32, exited: bool) {
        let dir = agent.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let log = |n: i32| agent.join(format!("logs/ns_web_u1/app/{n}.log"));
        let previous = (restart_count > 0).then(|| log(restart_count - 1));
        std::fs::write(
            dir.join("meta.json"),
            serde_json::json!({
                "id": id, "podUid": "u1", "namespace": "ns", "pod": "web", "container": "app",
                "kind": "regular", "restartCount": restart_count, "logPath": log(restart_count),
                "previousLogPath": previous, "specImage": "busybox",
                "image": "docker.io/library/busybox:latest", "imageId": "sha256:0",
            })
            .to_string(),
        )
        .unwrap();
        if exited {
            std::fs::write(dir.join("exit.json"), "{}").unwrap();
        }
    }

    /// Before a worker has seen the pod (an agent restart), the registry reads the disk:
    /// the newest instance, its previous log, the pod's netns; once a worker registered
    /// the pod, what the worker said counts.
    #[test]
    fn found_through_the_pod_registry() {
        let agent = tempfile::tempdir().unwrap();
        record(agent.path(), "a", 0, true);
        record(agent.path(), "b", 1, false);
        std::fs::create_dir_all(agent.path().join("containers/c")).unwrap();
        let netns = agent.path().join("pods/u1/netns");
        std::fs::create_dir_all(netns.parent().unwrap()).unwrap();
        std::fs::write(&netns, "").unwrap();
        let registry = PodRegistry::new(agent.path());
        let containers = Containers::new(registry.clone());

        let app = containers.find("ns", "web", None, "app").unwrap();
        assert_eq!(app.id, "b");
        assert!(app.running());
        assert_eq!(
            app.previous_log_path.unwrap(),
            agent.path().join("logs/ns_web_u1/app/0.log")
        );
        assert!(containers.find("ns", "web", Some("u1"), "app").is_some());
        assert!(containers.find("ns", "web", Some("other"), "app").is_none());
        assert!(containers.find("ns", "web", None, "db").is_none());
        assert_eq!(containers.netns("ns", "web", None), Some(netns.clone()));
        assert_eq!(containers.netns("ns", "web", Some("u1")), Some(netns));
        assert_eq!(containers.netns("ns", "web", Some("u2")), None);
        assert_eq!(containers.netns("ns", "other", None), None);

        // A worker registers the pod as host-network, with the first instance current.
        let first = agent.path().join("containers/a");
        let meta: ContainerMeta =
            serde_json::from_slice(&std::fs::read(first.join("meta.json")).unwrap()).unwrap();
        registry.set_pod("ns", "web", "u1", None, vec![(first, meta)]);
        let app = containers.find("ns", "web", None, "app").unwrap();
        assert_eq!(app.id, "a");
        assert!(!app.running());
        assert_eq!(app.previous_log_path, None);
        assert_eq!(containers.netns("ns", "web", None), None);
    }
}
