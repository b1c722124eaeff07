//! `<agent>/containers/<id>/meta.json`: the kubelet's own record of each container it
//! created (which pod and container it is, its restart count, image, log file, and how the
//! instance before it ended). It is what lets a restarted agent find its pods' containers
//! again, and what the kubelet API reads to find logs.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::status::{Kind, Terminated};

/// One container instance's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerMeta {
    pub id: String,
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub kind: Kind,
    pub restart_count: i32,
    pub log_path: PathBuf,
    /// The image as written in the pod spec.
    pub spec_image: String,
    /// The image's normalised name, for `status.image`.
    pub image: String,
    /// `status.imageID`: a repo digest when known, else the image id.
    pub image_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_termination: Option<Terminated>,
    /// The previous instance's log file, for `kubectl logs --previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_log_path: Option<PathBuf>,
    /// Set when the runtime could not start the instance (its `StartError` termination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<Terminated>,
}

pub const FILE: &str = "meta.json";

/// `<agent>/containers`.
pub fn containers_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("containers")
}

/// Writes `meta.json` atomically (temp file + rename) so a crash never leaves half a file.
pub fn write(container_dir: &Path, meta: &ContainerMeta) -> io::Result<()> {
    let tmp = container_dir.join(".meta.json.tmp");
    let bytes = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, container_dir.join(FILE))
}

pub fn read(container_dir: &Path) -> io::Result<ContainerMeta> {
    let bytes = std::fs::read(container_dir.join(FILE))?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Every container dir with a readable meta.json (unreadable ones are logged and skipped:
/// a container dir whose meta.json was never written is a start that crashed midway).
pub fn scan(agent_dir: &Path) -> Vec<(PathBuf, ContainerMeta)> {
    let Ok(entries) = std::fs::read_dir(containers_dir(agent_dir)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        match read(&dir) {
            Ok(meta) => found.push((dir, meta)),
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "container dir without meta.json")
            }
        }
    }
    found
}

/// The images of every container the kubelet created, running or exited (their
/// `status.imageID`: a repo digest or image id): what image garbage collection keeps.
pub fn images_in_use(agent_dir: &Path) -> Vec<String> {
    let mut images: Vec<String> = scan(agent_dir)
        .into_iter()
        .map(|(_, meta)| meta.image_id)
        .collect();
    images.sort();
    images.dedup();
    images
}

/// `<agent>/logs/<ns>_<pod>_<uid>/<container>/<restartCount>.log`.
pub fn log_path(
    agent_dir: &Path,
    namespace: &str,
    pod: &str,
    uid: &str,
    container: &str,
    restart_count: i32,
) -> PathBuf {
    agent_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{uid}"))
        .join(container)
        .join(format!("{restart_count}.log"))
}

/// `<agent>/logs/<ns>_<pod>_<uid>`.
pub fn pod_log_dir(agent_dir: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    agent_dir
        .join("logs")
        .join(format!("{namespace}_{pod}_{uid}"))
}
