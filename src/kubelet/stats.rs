//! The kubelet's `/stats/summary`: node and pod usage in upstream's `stats/v1alpha1`
//! `Summary` shape, from cgroup stats ([`crate::runtime::cgroups`]) of the containers this
//! agent runs. The kubelet API serves it; the API server's `metrics.k8s.io` reads it.
//!
//! Containers are found in `<agent>/containers/*/` (`meta.json` names the pod and
//! container, `config.json`'s `linux.cgroupsPath` the cgroup; running = `state.json` and no
//! `exit.json`); the pod cgroup is the container cgroup's parent.
//!
//! CPU rates (`usageNanoCores`) need two samples: a [`CpuSampler`] keeps the previous one
//! per cgroup; [`summary`] takes a second sample itself, a quarter second later, for
//! cgroups it has not seen yet.
//!
//! Must not touch: containers (read-only), the API.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::runtime::cgroups::{self, CgroupStats};

/// `stats/v1alpha1.Summary`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub fs: FsStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    pub start_time: String,
    pub containers: Vec<ContainerStats>,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    #[serde(rename = "process_stats")]
    pub process_stats: ProcessStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    pub cpu: CpuStats,
    pub memory: MemoryStats,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    pub usage_core_nano_seconds: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: String,
    pub available_bytes: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub inodes_free: u64,
    pub inodes: u64,
    pub inodes_used: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStats {
    #[serde(rename = "process_count")]
    pub process_count: u64,
}

/// The previous CPU sample of each cgroup (and of the node, as `""`), for rates.
#[derive(Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<String, (SystemTime, u64)>>,
}

impl CpuSampler {
    pub fn new() -> CpuSampler {
        CpuSampler::default()
    }

    fn seen(&self, key: &str) -> bool {
        self.last
            .lock()
            .map(|m| m.contains_key(key))
            .unwrap_or(false)
    }

    /// Records `usage_ns` at `time` for `key`; the rate since the previous sample in
    /// nanocores, if there was one.
    pub fn rate(&self, key: &str, time: SystemTime, usage_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().ok()?;
        let previous = last.insert(key.to_string(), (time, usage_ns));
        let (then, before) = previous?;
        let elapsed = time.duration_since(then).ok()?.as_nanos();
        if elapsed == 0 {
            return None;
        }
        let used = u128::from(usage_ns.saturating_sub(before));
        Some((used * 1_000_000_000 / elapsed) as u64)
    }
}

/// What `meta.json` of a container dir holds (written by the kubelet).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerMeta {
    pod_uid: String,
    namespace: String,
    pod: String,
    container: String,
    #[serde(default)]
    restart_count: u32,
}

/// A running container of this node.
#[derive(Clone, Debug)]
pub struct RunningContainer {
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub restart_count: u32,
    pub cgroup: String,
    pub started_at: String,
}

/// The running containers under `<agent>/containers`.
pub fn running_containers(agent_dir: &Path) -> Vec<RunningContainer> {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("containers")) else {
        return Vec::new();
    };
    let mut found: BTreeMap<(String, String), RunningContainer> = BTreeMap::new();
    for entry in entries.flatten() {
        let dir: PathBuf = entry.path();
        if dir.join("exit.json").exists() {
            continue;
        }
        let Ok(state) = std::fs::read(dir.join("state.json")) else {
            continue;
        };
        let state: serde_json::Value = serde_json::from_slice(&state).unwrap_or_default();
        let Some(meta) = std::fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<ContainerMeta>(&b).ok())
        else {
            continue;
        };
        let Some(cgroup) = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| {
                c.pointer("/linux/cgroupsPath")?
                    .as_str()
                    .map(str::to_string)
            })
        else {
            continue;
        };
        let container = RunningContainer {
            pod_uid: meta.pod_uid,
            namespace: meta.namespace,
            pod: meta.pod,
            container: meta.container,
            restart_count: meta.restart_count,
            cgroup: cgroup.trim_start_matches('/').to_string(),
            started_at: state["startedAt"].as_str().unwrap_or_default().to_string(),
        };
        let key = (container.pod_uid.clone(), container.container.clone());
        let newer = found
            .get(&key)
            .is_none_or(|c| c.restart_count < container.restart_count);
        if newer {
            found.insert(key, container);
        }
    }
    found.into_values().collect()
}

pub fn rfc3339(time: SystemTime) -> String {
    let time = time::OffsetDateTime::from(time);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time.format(&format).unwrap_or_default()
}

fn cpu(sampler: &CpuSampler, key: &str, time: SystemTime, usage_ns: u64) -> CpuStats {
    CpuStats {
        time: rfc3339(time),
        usage_nano_cores: sampler.rate(key, time, usage_ns),
        usage_core_nano_seconds: usage_ns,
    }
}

fn memory(stats: &CgroupStats, available: Option<u64>) -> MemoryStats {
    MemoryStats {
        time: rfc3339(stats.time),
        available_bytes: available,
        usage_bytes: stats.memory_usage_bytes,
        working_set_bytes: stats.memory_working_set_bytes,
        rss_bytes: stats.memory_rss_bytes,
        ..Default::default()
    }
}

fn fs_stats(path: &Path) -> FsStats {
    let time = rfc3339(SystemTime::now());
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let block = s.fragment_size();
            let capacity = s.blocks() * block;
            let available = s.blocks_available() * block;
            let free = s.blocks_free() * block;
            FsStats {
                time,
                available_bytes: available,
                capacity_bytes: capacity,
                used_bytes: capacity.saturating_sub(free),
                inodes_free: s.files_free(),
                inodes: s.files(),
                inodes_used: s.files().saturating_sub(s.files_free()),
            }
        }
        Err(_) => FsStats {
            time,
            ..Default::default()
        },
    }
}

fn boot_time() -> SystemTime {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    SystemTime::now() - Duration::from_secs_f64(uptime)
}

fn pod_cgroup(container_cgroup: &str) -> &str {
    container_cgroup
        .rsplit_once('/')
        .map_or(container_cgroup, |(parent, _)| parent)
}

/// One sample of everything: node, pod cgroups, container cgroups (by cgroup path).
fn sample(
    containers: &[RunningContainer],
) -> (Option<cgroups::NodeStats>, HashMap<String, CgroupStats>) {
    let node = cgroups::node_stats().ok();
    let mut groups = HashMap::new();
    for c in containers {
        for path in [c.cgroup.as_str(), pod_cgroup(&c.cgroup)] {
            if !groups.contains_key(path) {
                if let Ok(stats) = cgroups::stats(path) {
                    groups.insert(path.to_string(), stats);
                }
            }
        }
    }
    (node, groups)
}

/// The node's `/stats/summary`: `agent_dir` is `<data-dir>/agent`, `sampler` the kubelet's
/// (kept between calls for CPU rates).
pub async fn summary(agent_dir: &Path, node_name: &str, sampler: &CpuSampler) -> Summary {
    let agent_dir = agent_dir.to_path_buf();
    let containers = {
        let dir = agent_dir.clone();
        tokio::task::spawn_blocking(move || running_containers(&dir))
            .await
            .unwrap_or_default()
    };
    let unseen = !sampler.seen("")
        || containers
            .iter()
            .any(|c| !sampler.seen(&c.cgroup) || !sampler.seen(pod_cgroup(&c.cgroup)));
    let take = {
        let containers = containers.clone();
        move || sample(&containers)
    };
    if unseen {
        let first = tokio::task::spawn_blocking(take.clone())
            .await
            .unwrap_or_default();
        record(sampler, &first);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (node, groups) = tokio::task::spawn_blocking(take).await.unwrap_or_default();
    let fs = tokio::task::spawn_blocking(move || fs_stats(&agent_dir))
        .await
        .unwrap_or_default();
    build(node_name, sampler, &containers, node, &groups, fs)
}

fn record(
    sampler: &CpuSampler,
    (node, groups): &(Option<cgroups::NodeStats>, HashMap<String, CgroupStats>),
) {
    if let Some(node) = node {
        sampler.rate("", node.time, node.cpu_usage_ns);
    }
    for (path, stats) in groups {
        sampler.rate(path, stats.time, stats.cpu_usage_ns);
    }
}

fn build(
    node_name: &str,
    sampler: &CpuSampler,
    containers: &[RunningContainer],
    node: Option<cgroups::NodeStats>,
    groups: &HashMap<String, CgroupStats>,
    fs: FsStats,
) -> Summary {
    let node = node.map_or_else(
        || NodeStats {
            node_name: node_name.to_string(),
            fs: fs.clone(),
            ..Default::default()
        },
        |n| NodeStats {
            node_name: node_name.to_string(),
            start_time: rfc3339(boot_time()),
            cpu: cpu(sampler, "", n.time, n.cpu_usage_ns),
            memory: MemoryStats {
                time: rfc3339(n.time),
                available_bytes: Some(n.memory_available_bytes),
                usage_bytes: n.memory_usage_bytes,
                working_set_bytes: n.memory_working_set_bytes,
                rss_bytes: n.memory_rss_bytes,
                ..Default::default()
            },
            fs: fs.clone(),
        },
    );
    let mut pods: BTreeMap<String, PodStats> = BTreeMap::new();
    for c in containers {
        let Some(stats) = groups.get(&c.cgroup) else {
            continue;
        };
        let pod_path = pod_cgroup(&c.cgroup);
        let pod = pods.entry(c.pod_uid.clone()).or_insert_with(|| {
            let pod_stats = groups.get(pod_path);
            PodStats {
                pod_ref: PodReference {
                    name: c.pod.clone(),
                    namespace: c.namespace.clone(),
                    uid: c.pod_uid.clone(),
                },
                start_time: c.started_at.clone(),
                cpu: pod_stats
                    .map(|s| cpu(sampler, pod_path, s.time, s.cpu_usage_ns))
                    .unwrap_or_default(),
                memory: pod_stats.map(|s| memory(s, None)).unwrap_or_default(),
                process_stats: ProcessStats {
                    process_count: pod_stats.map_or(0, |s| s.pids),
                },
                containers: Vec::new(),
            }
        });
        if c.started_at < pod.start_time {
            pod.start_time = c.started_at.clone();
        }
        pod.containers.push(ContainerStats {
            name: c.container.clone(),
            start_time: c.started_at.clone(),
            cpu: cpu(sampler, &c.cgroup, stats.time, stats.cpu_usage_ns),
            memory: memory(stats, None),
        });
    }
    Summary {
        node,
        pods: pods.into_values().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples() {
        let sampler = CpuSampler::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(sampler.rate("a", t0, 1_000), None);
        // Half a core for two seconds.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(sampler.rate("a", t1, 1_000_001_000), Some(500_000_000));
    }

    #[test]
    fn containers_are_read_from_their_dirs() {
        let agent = tempfile::tempdir().unwrap();
        let write = |id: &str, restart: u32, exited: bool| {
            let dir = agent.path().join("containers").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("meta.json"),
                format!(r#"{{"podUid":"u1","namespace":"default","pod":"web","container":"app","restartCount":{restart},"logPath":"/x"}}"#),
            )
            .unwrap();
            std::fs::write(
                dir.join("config.json"),
                format!(r#"{{"linux":{{"cgroupsPath":"kedge/besteffort/podu1/{id}"}}}}"#),
            )
            .unwrap();
            std::fs::write(
                dir.join("state.json"),
                r#"{"pid":1,"startedAt":"2026-01-01T00:00:00Z"}"#,
            )
            .unwrap();
            if exited {
                std::fs::write(dir.join("exit.json"), "{}").unwrap();
            }
        };
        write("aa", 0, true);
        write("bb", 1, false);
        let running = running_containers(agent.path());
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].cgroup, "kedge/besteffort/podu1/bb");
        assert_eq!(pod_cgroup(&running[0].cgroup), "kedge/besteffort/podu1");
    }
}
