//! Static pods: every manifest in `<agent>/pod-manifests/` (`*.yaml`, `*.yml`, `*.json`,
//! one Pod each; names starting with `.` are ignored, as upstream's file source does) is a
//! pod the kubelet runs on its own authority, named `<name>-<node>`, whose UID is a hash of
//! the manifest, the node and the source (upstream's `kubernetes.io/config.hash`).
//!
//! The folder is read again every few seconds and the static pods handed to the pod
//! workers ([`run`]'s channel): a changed file is a new pod (a new hash) that replaces the
//! old one, a removed file stops its pod. Each static pod is reflected in the API by a
//! mirror pod bound to this node and owned by the Node, annotated
//! `kubernetes.io/config.mirror: <hash>`, that carries its status; a mirror pod deleted by
//! hand comes back, and its containers are not touched (they belong to the file).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::node::NodeAgent;
use super::{KubeletConfig, KubeletError};

pub const CONFIG_SOURCE: &str = "kubernetes.io/config.source";
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";
pub const CONFIG_HASH: &str = "kubernetes.io/config.hash";
pub const CONFIG_SEEN: &str = "kubernetes.io/config.seen";

/// A static pod read from a manifest.
#[derive(Debug, Clone)]
pub struct StaticPod {
    pub file: PathBuf,
    pub hash: String,
    /// The pod as the kubelet runs it: its UID is `hash`.
    pub pod: Pod,
}

impl StaticPod {
    /// Its mirror pod: the same pod for the API (which gives it its own UID), annotated
    /// `config.mirror: <hash>` and owned by the Node (uid `node_uid`).
    pub fn mirror(&self, node_uid: String) -> Pod {
        let mut mirror = self.pod.clone();
        let meta = &mut mirror.metadata;
        meta.uid = None;
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(CONFIG_MIRROR.into(), self.hash.clone());
        meta.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            uid: node_uid,
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        mirror
    }
}

/// Whether `pod` is a mirror pod (of any node).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.annotations().contains_key(CONFIG_MIRROR)
}

/// Whether `pod` is a static pod as the kubelet runs it (from a file, not the API; not its
/// mirror).
pub fn is_static(pod: &Pod) -> bool {
    pod.annotations()
        .get(CONFIG_SOURCE)
        .is_some_and(|source| source != "api")
        && !is_mirror(pod)
}

/// The static pod a mirror pod stands for (its `config.mirror` hash, the static pod's UID).
pub fn mirror_of(pod: &Pod) -> Option<&str> {
    pod.annotations().get(CONFIG_MIRROR).map(String::as_str)
}

/// Reads one manifest into the static pod it stands for (name `<name>-<node>`, namespace
/// `default` unless given, bound to `node`, UID the hash).
pub fn read_manifest(file: &Path, node: &str) -> Result<StaticPod, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let is_json = file.extension().is_some_and(|e| e == "json");
    let mut pod: Pod = if is_json {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?
    };
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the pod has no metadata.name")?;
    // Upstream hashes the source, node and pod; the hash names this version of the pod.
    let mut hasher = Sha256::new();
    hasher.update(file.display().to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(node.as_bytes());
    hasher.update(b"\0");
    hasher.update(text.as_bytes());
    let hash = hex::encode(&hasher.finalize()[..16]);

    let meta = &mut pod.metadata;
    meta.name = Some(format!("{name}-{node}"));
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".to_string());
    }
    meta.uid = Some(hash.clone());
    meta.resource_version = None;
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(CONFIG_SOURCE.into(), "file".into());
    annotations.insert(CONFIG_HASH.into(), hash.clone());
    annotations.remove(CONFIG_MIRROR);
    annotations.insert(CONFIG_SEEN.into(), Timestamp::now().to_string());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.node_name = Some(node.to_string());
    // Upstream: static pods tolerate every NoExecute taint, so their node never evicts them.
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let all_no_execute = Toleration {
        operator: Some("Exists".into()),
        effect: Some("NoExecute".into()),
        ..Toleration::default()
    };
    if !tolerations.contains(&all_no_execute) {
        tolerations.push(all_no_execute);
    }
    pod.status = None;
    Ok(StaticPod {
        file: file.to_path_buf(),
        hash,
        pod,
    })
}

/// The manifests in `dir`, sorted (missing folder: none).
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let manifest = [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e));
            manifest && !name.starts_with('.') && p.is_file()
        })
        .collect();
    files.sort();
    files
}

/// The static pods of `dir` for `node`, by namespace and name, and the manifests that
/// could not be read (file, error).
fn read_all(dir: &Path, node: &str) -> (StaticPods, Vec<(PathBuf, String)>) {
    let mut pods = HashMap::new();
    let mut broken = Vec::new();
    for file in manifest_files(dir) {
        match read_manifest(&file, node) {
            Ok(static_pod) => {
                let key = (
                    static_pod.pod.namespace().unwrap_or_default(),
                    static_pod.pod.name_any(),
                );
                pods.insert(key, static_pod);
            }
            Err(error) => broken.push((file, error)),
        }
    }
    (pods, broken)
}

type StaticPods = HashMap<(String, String), StaticPod>;

/// The static pods of `config`'s manifest folder now: the pod workers' first set.
pub fn initial(config: &KubeletConfig) -> Vec<Pod> {
    read_all(&config.pod_manifests_dir(), &config.node_name)
        .0
        .into_values()
        .map(|s| s.pod)
        .collect()
}

/// Hands the static pods of `<agent>/pod-manifests` to the pod workers through `pods`
/// (when their set of UIDs changes) and keeps their mirror pods in line, forever.
pub async fn run(config: KubeletConfig, node: NodeAgent, pods: watch::Sender<Vec<Pod>>) {
    let mut mirrors = Mirrors {
        config,
        node,
        reported: HashSet::new(),
    };
    loop {
        let desired = mirrors.desired();
        let latest: Vec<Pod> = desired.values().map(|s| s.pod.clone()).collect();
        pods.send_if_modified(|current| {
            let uids = |pods: &[Pod]| pods.iter().filter_map(|p| p.uid()).collect::<HashSet<_>>();
            let changed = uids(current) != uids(&latest);
            if changed {
                *current = latest;
            }
            changed
        });
        if let Err(error) = mirrors.sync(desired).await {
            tracing::warn!(%error, "syncing mirror pods failed; retrying");
        }
        tokio::time::sleep(mirrors.config.static_pod_poll).await;
    }
}

struct Mirrors {
    config: KubeletConfig,
    node: NodeAgent,
    /// Broken manifests already warned about, by file and modification, to warn once.
    reported: HashSet<(PathBuf, Option<std::time::SystemTime>)>,
}

impl Mirrors {
    fn desired(&mut self) -> StaticPods {
        let (pods, broken) = read_all(&self.config.pod_manifests_dir(), &self.config.node_name);
        for (file, error) in broken {
            let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
            if self.reported.insert((file.clone(), modified)) {
                tracing::warn!(file = %file.display(), %error, "cannot read a static pod manifest");
            }
        }
        pods
    }

    async fn sync(&mut self, mut desired: StaticPods) -> Result<(), KubeletError> {
        let node = self.config.node_name.clone();
        let client = self.config.client.clone();
        let existing = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(KubeletError::api(format!(
                "listing the pods of node {node}"
            )))?;
        for pod in existing.items.into_iter().filter(is_mirror) {
            let namespace = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let key = (namespace.clone(), name.clone());
            let current = mirror_of(&pod);
            let wanted = desired.get(&key).map(|s| s.hash.as_str());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            if wanted.is_some() && wanted == current && !deleting {
                desired.remove(&key);
                continue;
            }
            // Outdated, orphaned, or deleted by someone: as upstream, the mirror pod goes at
            // once (the static pod is the file, not the mirror) and comes back if its file
            // is still there.
            tracing::info!(pod = %format!("{namespace}/{name}"), "deleting a mirror pod whose manifest changed, went, or that was deleted");
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match Api::<Pod>::namespaced(client.clone(), &namespace)
                .delete(&name, &params)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
                Err(e) => {
                    return Err(KubeletError::api(format!(
                        "deleting mirror pod {namespace}/{name}"
                    ))(e))
                }
            }
            // Created again at the next pass, once the old one is gone.
            desired.remove(&key);
        }
        for ((namespace, name), static_pod) in desired {
            let mirror = static_pod.mirror(self.node.uid());
            match Api::<Pod>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &mirror)
                .await
            {
                Ok(_) => tracing::info!(
                    pod = %format!("{namespace}/{name}"),
                    file = %static_pod.file.display(),
                    "created the mirror pod of a static pod"
                ),
                // Another pod of that name, not a mirror: say so once per manifest version.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    let modified = std::fs::metadata(&static_pod.file)
                        .and_then(|m| m.modified())
                        .ok();
                    if self.reported.insert((static_pod.file.clone(), modified)) {
                        tracing::warn!(pod = %format!("{namespace}/{name}"), "a pod of the mirror pod's name exists and is not a mirror pod");
                    }
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, "cannot create a mirror pod");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(manifest_files(dir.path()), vec![file.clone()]);

        let static_pod = read_manifest(&file, "edge").unwrap();
        assert_eq!(static_pod.pod.name_any(), "web-edge");
        assert_eq!(static_pod.pod.namespace().as_deref(), Some("default"));
        // Upstream: the static pod's UID is its hash; its mirror has the API's own UID.
        assert_eq!(
            static_pod.pod.uid().as_deref(),
            Some(static_pod.hash.as_str())
        );
        let annotations = static_pod.pod.annotations();
        assert_eq!(annotations[CONFIG_SOURCE], "file");
        assert_eq!(annotations[CONFIG_HASH], static_pod.hash);
        assert!(is_static(&static_pod.pod) && !is_mirror(&static_pod.pod));
        let spec = static_pod.pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("edge"));
        let mirror = static_pod.mirror("node-uid".into());
        assert_eq!(mirror.uid(), None);
        assert_eq!(mirror_of(&mirror), Some(static_pod.hash.as_str()));
        assert!(is_mirror(&mirror) && !is_static(&mirror));
        let owner = &mirror.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "edge"));
        assert_eq!(owner.uid, "node-uid");
        let mirror = static_pod;

        assert_eq!(read_manifest(&file, "edge").unwrap().hash, mirror.hash);
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: kube-system\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n",
        )
        .unwrap();
        let changed = read_manifest(&file, "edge").unwrap();
        assert_ne!(changed.hash, mirror.hash);
        assert_eq!(changed.pod.namespace().as_deref(), Some("kube-system"));

        std::fs::write(&file, "metadata: {}\n").unwrap();
        assert!(read_manifest(&file, "edge").is_err());
    }
}
