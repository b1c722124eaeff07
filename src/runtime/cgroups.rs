//! Pod cgroups and their stats, on cgroup v1 (one hierarchy per controller, including the
//! hybrid layout where a controller-less v2 hierarchy sits at `/sys/fs/cgroup/unified`)
//! and on the unified v2 hierarchy.
//!
//! Layout (see the agent contract): the parent `kedge`, Guaranteed pods at `kedge/pod<uid>`,
//! the others under `kedge/burstable` and `kedge/besteffort`; each container's own cgroup
//! `<pod cgroup>/<container id>` is created by libcontainer in the shim. The same relative
//! paths are used under every v1 controller and on v2.
//!
//! Files are written directly (the cgroup files are the interface; libcgroups' managers
//! would kill processes on remove and cannot prepare a cpuset parent for its children).
//! Owns: creating, limiting, removing and reading pod cgroups, and node-wide CPU/memory from
//! `/proc`. Must not touch: container cgroups' limits (the OCI spec's, applied by the shim).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The parent of every pod cgroup.
pub const ROOT: &str = "kedge";
/// v1 controllers pod cgroups are created in.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];
/// v2 controllers enabled for the `kedge` subtree.
const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];
/// cpu.shares of the besteffort parent, as the kubelet's (the minimum).
const MIN_SHARES: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy found: {0}")]
    NoHierarchy(String),
    #[error("cgroup {path} still has processes after {seconds}s")]
    Busy { path: PathBuf, seconds: u64 },
    #[error("invalid cgroup path {0:?}: relative, without `..`")]
    InvalidPath(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A pod's QoS class, which picks its cgroup parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name `status.qosClass` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// `kedge/pod<uid>`, `kedge/burstable/pod<uid>` or `kedge/besteffort/pod<uid>`.
pub fn qos_cgroup_path(qos: QosClass, pod_uid: &str) -> String {
    match qos {
        QosClass::Guaranteed => format!("{ROOT}/pod{pod_uid}"),
        QosClass::Burstable => format!("{ROOT}/burstable/pod{pod_uid}"),
        QosClass::BestEffort => format!("{ROOT}/besteffort/pod{pod_uid}"),
    }
}

/// A container's cgroup inside its pod's.
pub fn container_cgroup_path(pod_cgroup: &str, container_id: &str) -> String {
    format!("{pod_cgroup}/{container_id}")
}

/// A pod's limits, summed over its containers by the kubelet (cgroup units: shares,
/// microseconds, bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodResources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// One cgroup's usage, as cadvisor reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupStats {
    pub time: SystemTime,
    /// CPU time used since the cgroup was created.
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file pages: what the kubelet evicts on and `kubectl top` shows.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
    pub pids: u64,
}

/// The node's usage from `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStats {
    pub time: SystemTime,
    /// CPU time of every CPU since boot, idle and iowait excluded.
    pub cpu_usage_ns: u64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// MemTotal - MemFree.
    pub memory_usage_bytes: u64,
    /// Usage minus inactive file pages.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
}

/// Where the cgroup hierarchies are.
#[derive(Clone, Debug)]
pub enum Hierarchy {
    /// Controller name → its mount point.
    V1(HashMap<String, PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

impl Hierarchy {
    /// Reads `/proc/self/mountinfo`: v2 when `/sys/fs/cgroup` is itself cgroup2, v1
    /// otherwise (hybrid systems keep their controllers on v1).
    pub fn detect() -> Result<Hierarchy, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        Ok(Self::parse(&text))
    }

    fn parse(mountinfo: &str) -> Hierarchy {
        let mut v1 = HashMap::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            // `id parent major:minor root mountpoint options [optional...] - fstype source super`
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let tail: Vec<&str> = right.split(' ').collect();
            let (Some(mountpoint), Some(fstype)) = (fields.get(4), tail.first()) else {
                continue;
            };
            match *fstype {
                "cgroup2" if *mountpoint == "/sys/fs/cgroup" => {
                    v2 = Some(PathBuf::from(mountpoint));
                }
                "cgroup" => {
                    for option in tail.get(2).unwrap_or(&"").split(',') {
                        if V1_CONTROLLERS.contains(&option) {
                            v1.entry(option.to_string())
                                .or_insert_with(|| PathBuf::from(mountpoint));
                        }
                    }
                }
                _ => {}
            }
        }
        match v2 {
            Some(root) if v1.is_empty() => Hierarchy::V2(root),
            _ => Hierarchy::V1(v1),
        }
    }

    /// The directories of cgroup `path` (one per v1 controller, one on v2).
    fn dirs(&self, path: &str) -> Vec<(Option<&str>, PathBuf)> {
        match self {
            Hierarchy::V1(mounts) => V1_CONTROLLERS
                .iter()
                .filter_map(|c| mounts.get(*c).map(|m| (Some(*c), m.join(path))))
                .collect(),
            Hierarchy::V2(root) => vec![(None, root.join(path))],
        }
    }

    fn v1(&self, controller: &str, path: &str) -> Option<PathBuf> {
        match self {
            Hierarchy::V1(mounts) => mounts.get(controller).map(|m| m.join(path)),
            Hierarchy::V2(_) => None,
        }
    }
}

/// The hierarchy of this host, detected once.
pub fn hierarchy() -> Result<&'static Hierarchy, CgroupError> {
    static HIERARCHY: OnceLock<Hierarchy> = OnceLock::new();
    if let Some(h) = HIERARCHY.get() {
        return Ok(h);
    }
    let detected = Hierarchy::detect()?;
    if let Hierarchy::V1(mounts) = &detected {
        if mounts.is_empty() {
            return Err(CgroupError::NoHierarchy(
                "neither cgroup v1 controllers nor a cgroup2 /sys/fs/cgroup are mounted".into(),
            ));
        }
    }
    Ok(HIERARCHY.get_or_init(|| detected))
}

fn check_path(path: &str) -> Result<(), CgroupError> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(CgroupError::InvalidPath(path.to_string()));
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io(path))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Creates `dir` and its missing parents up to `mount`; on v1 cpuset each new level gets
/// its parent's cpus and mems (a cpuset cgroup starts empty, and nothing can join it).
fn create(mount: &Path, dir: &Path, cpuset: bool) -> Result<(), CgroupError> {
    let relative = dir.strip_prefix(mount).unwrap_or(dir);
    let mut current = mount.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        if current.is_dir() {
            continue;
        }
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&current)(e)),
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = read(&parent.join(file))?;
                write(&current.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Enables the pod controllers for the children of every level from the root down to
/// `dir`'s parent (v2 only lets a cgroup use a controller its parent delegates).
fn enable_v2_controllers(root: &Path, dir: &Path) -> Result<(), CgroupError> {
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    let mut current = root.to_path_buf();
    let depth = relative.components().count();
    for (i, component) in relative.components().enumerate() {
        if i + 1 == depth {
            break;
        }
        let available = read(&current.join("cgroup.controllers")).unwrap_or_default();
        let enabled = read(&current.join("cgroup.subtree_control")).unwrap_or_default();
        for controller in V2_CONTROLLERS {
            let has = |list: &str| list.split_whitespace().any(|c| c == *controller);
            if has(&available) && !has(&enabled) {
                write(
                    &current.join("cgroup.subtree_control"),
                    &format!("+{controller}"),
                )?;
            }
        }
        current.push(component);
        if !current.is_dir() {
            std::fs::create_dir(&current).map_err(io(&current))?;
        }
    }
    Ok(())
}

/// cgroup v1 cpu.shares → v2 cpu.weight, as the kubelet converts them.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Creates pod cgroup `path` (and the `kedge` parents it needs) and applies `resources`.
/// Idempotent: limits are rewritten every call.
pub fn ensure_pod_cgroup(path: &str, resources: &PodResources) -> Result<(), CgroupError> {
    check_path(path)?;
    let hierarchy = hierarchy()?;
    // The besteffort parent gets the smallest share, as the kubelet's.
    let besteffort = format!("{ROOT}/besteffort");
    if path.starts_with(&format!("{besteffort}/")) {
        ensure(hierarchy, &besteffort)?;
        let shares = PodResources {
            cpu_shares: Some(MIN_SHARES),
            ..Default::default()
        };
        apply(hierarchy, &besteffort, &shares)?;
    }
    ensure(hierarchy, path)?;
    apply(hierarchy, path, resources)
}

fn ensure(hierarchy: &Hierarchy, path: &str) -> Result<(), CgroupError> {
    match hierarchy {
        Hierarchy::V1(mounts) => {
            for (controller, dir) in hierarchy.dirs(path) {
                let controller = controller.unwrap_or_default();
                let mount = &mounts[controller];
                create(mount, &dir, controller == "cpuset")?;
            }
        }
        Hierarchy::V2(root) => {
            let dir = root.join(path);
            enable_v2_controllers(root, &dir)?;
            create(root, &dir, false)?;
        }
    }
    Ok(())
}

fn apply(hierarchy: &Hierarchy, path: &str, r: &PodResources) -> Result<(), CgroupError> {
    match hierarchy {
        Hierarchy::V1(_) => {
            let file = |controller: &str, name: &str| {
                hierarchy.v1(controller, path).map(|dir| dir.join(name))
            };
            if let (Some(shares), Some(f)) = (r.cpu_shares, file("cpu", "cpu.shares")) {
                write(&f, &shares.max(MIN_SHARES).to_string())?;
            }
            // The period first: a quota is checked against the current period.
            if let Some(f) = file("cpu", "cpu.cfs_period_us") {
                write(&f, &r.cpu_period.unwrap_or(100_000).to_string())?;
            }
            if let Some(f) = file("cpu", "cpu.cfs_quota_us") {
                write(
                    &f,
                    &r.cpu_quota.filter(|q| *q > 0).unwrap_or(-1).to_string(),
                )?;
            }
            if let Some(f) = file("memory", "memory.limit_in_bytes") {
                write(
                    &f,
                    &r.memory_limit.filter(|m| *m > 0).unwrap_or(-1).to_string(),
                )?;
            }
            if let Some(f) = file("pids", "pids.max") {
                let max = r.pids_limit.filter(|p| *p > 0);
                write(&f, &max.map_or("max".to_string(), |p| p.to_string()))?;
            }
        }
        Hierarchy::V2(root) => {
            let dir = root.join(path);
            let has = |name: &str| dir.join(name).exists();
            if let Some(shares) = r.cpu_shares.filter(|_| has("cpu.weight")) {
                write(
                    &dir.join("cpu.weight"),
                    &shares_to_weight(shares).to_string(),
                )?;
            }
            if has("cpu.max") {
                let quota = r
                    .cpu_quota
                    .filter(|q| *q > 0)
                    .map_or("max".to_string(), |q| q.to_string());
                let period = r.cpu_period.unwrap_or(100_000);
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if has("memory.max") {
                let max = r.memory_limit.filter(|m| *m > 0);
                write(
                    &dir.join("memory.max"),
                    &max.map_or("max".to_string(), |m| m.to_string()),
                )?;
            }
            if has("pids.max") {
                let max = r.pids_limit.filter(|p| *p > 0);
                write(
                    &dir.join("pids.max"),
                    &max.map_or("max".to_string(), |p| p.to_string()),
                )?;
            }
        }
    }
    Ok(())
}

/// Moves process `pid` into cgroup `path` (every controller).
pub fn add_process(path: &str, pid: u32) -> Result<(), CgroupError> {
    check_path(path)?;
    for (_, dir) in hierarchy()?.dirs(path) {
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Removes pod cgroup `path` and any container cgroups left in it, retrying for a few
/// seconds while processes are still leaving (rmdir answers EBUSY). A missing cgroup is
/// not an error. Processes are never killed here: that is the shim's job.
pub fn remove_pod_cgroup(path: &str) -> Result<(), CgroupError> {
    check_path(path)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, dir) in hierarchy()?.dirs(path) {
        loop {
            match remove_tree(&dir) {
                Ok(()) => break,
                Err(e) if Instant::now() < deadline && is_busy(&e) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) if is_busy(&e) => {
                    return Err(CgroupError::Busy {
                        path: dir,
                        seconds: 5,
                    })
                }
                Err(e) => return Err(io(&dir)(e)),
            }
        }
    }
    Ok(())
}

/// Every process in cgroup `path` and its descendants, over every hierarchy (for `kedge
/// killall`, which kills what a dead agent's shims left). A missing cgroup has none.
pub fn processes(path: &str) -> Result<Vec<u32>, CgroupError> {
    check_path(path)?;
    let mut pids = Vec::new();
    for (_, dir) in hierarchy()?.dirs(path) {
        collect_processes(&dir, &mut pids).map_err(io(&dir))?;
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_processes(dir: &Path, pids: &mut Vec<u32>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            collect_processes(&entry.path(), pids)?;
        }
    }
    Ok(())
}

fn is_busy(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EBUSY)
}

/// rmdir of `dir` after its child cgroups (cgroup dirs only hold kernel files, which go
/// with the directory).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `key value` lines (memory.stat, cpu.stat).
fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

fn number(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    Ok(text.trim().parse().unwrap_or(0))
}

/// Usage of cgroup `path` (a pod's or a container's).
pub fn stats(path: &str) -> Result<CgroupStats, CgroupError> {
    check_path(path)?;
    let time = SystemTime::now();
    match hierarchy()? {
        h @ Hierarchy::V1(_) => {
            let dir = |c: &str| {
                h.v1(c, path)
                    .ok_or_else(|| CgroupError::NoHierarchy(format!("no {c} controller")))
            };
            let cpu_usage_ns = number(&dir("cpuacct")?.join("cpuacct.usage"))?;
            let memory = dir("memory")?;
            let usage = number(&memory.join("memory.usage_in_bytes"))?;
            let stat_text = read(&memory.join("memory.stat"))?;
            let stat = flat_keyed(&stat_text);
            let inactive = stat.get("total_inactive_file").copied().unwrap_or(0);
            let rss = stat.get("total_rss").copied().unwrap_or(0);
            let pids = dir("pids")
                .and_then(|d| number(&d.join("pids.current")))
                .unwrap_or(0);
            Ok(CgroupStats {
                time,
                cpu_usage_ns,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage.saturating_sub(inactive),
                memory_rss_bytes: rss,
                pids,
            })
        }
        Hierarchy::V2(root) => {
            let dir = root.join(path);
            let cpu_text = read(&dir.join("cpu.stat"))?;
            let cpu = flat_keyed(&cpu_text);
            let usage = number(&dir.join("memory.current")).unwrap_or(0);
            let stat_text = read(&dir.join("memory.stat")).unwrap_or_default();
            let stat = flat_keyed(&stat_text);
            let inactive = stat.get("inactive_file").copied().unwrap_or(0);
            Ok(CgroupStats {
                time,
                cpu_usage_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage.saturating_sub(inactive),
                memory_rss_bytes: stat.get("anon").copied().unwrap_or(0),
                pids: number(&dir.join("pids.current")).unwrap_or(0),
            })
        }
    }
}

/// The node's CPU and memory from `/proc/stat` and `/proc/meminfo`.
pub fn node_stats() -> Result<NodeStats, CgroupError> {
    let time = SystemTime::now();
    let stat_path = Path::new("/proc/stat");
    let cpu_usage_ns = parse_proc_stat(&read(stat_path)?, clock_ticks());
    let meminfo = read(Path::new("/proc/meminfo"))?;
    let kib: HashMap<&str, u64> = meminfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim().trim_end_matches(" kB").trim();
            Some((k, v.parse::<u64>().ok()? * 1024))
        })
        .collect();
    let get = |k: &str| kib.get(k).copied().unwrap_or(0);
    let total = get("MemTotal");
    let usage = total.saturating_sub(get("MemFree"));
    Ok(NodeStats {
        time,
        cpu_usage_ns,
        memory_total_bytes: total,
        memory_available_bytes: get("MemAvailable"),
        memory_usage_bytes: usage,
        memory_working_set_bytes: usage.saturating_sub(get("Inactive(file)")),
        memory_rss_bytes: get("AnonPages"),
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The busy CPU time of the `cpu` line: user, nice, system, irq, softirq, steal.
fn parse_proc_stat(text: &str, ticks_per_second: u64) -> u64 {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .map(|i| fields.get(*i).copied().unwrap_or(0))
        .sum();
    busy.saturating_mul(1_000_000_000) / ticks_per_second.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_qos_layout() {
        assert_eq!(qos_cgroup_path(QosClass::Guaranteed, "u1"), "kedge/podu1");
        assert_eq!(
            qos_cgroup_path(QosClass::Burstable, "u1"),
            "kedge/burstable/podu1"
        );
        assert_eq!(
            container_cgroup_path(&qos_cgroup_path(QosClass::BestEffort, "u1"), "abc"),
            "kedge/besteffort/podu1/abc"
        );
        assert!(check_path("../etc").is_err());
        assert!(check_path("/kedge").is_err());
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10000);
    }

    #[test]
    fn mountinfo_tells_v1_from_v2() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let Hierarchy::V1(mounts) = Hierarchy::parse(hybrid) else {
            panic!("hybrid is v1")
        };
        assert_eq!(
            mounts["cpuacct"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        let unified = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert!(matches!(Hierarchy::parse(unified), Hierarchy::V2(_)));
    }

    #[test]
    fn proc_stat_counts_busy_time() {
        let text = "cpu  100 10 50 1000 20 5 5 10 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_proc_stat(text, 100), 1_800_000_000);
    }

    /// A real cgroup with a busy process: limits land in the files, stats grow, and the
    /// cgroup goes away once the process has left.
    #[test]
    fn a_busy_process_shows_in_stats() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let uid = format!("test{}", std::process::id());
        let path = qos_cgroup_path(QosClass::Burstable, &uid);
        let resources = PodResources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
        };
        ensure_pod_cgroup(&path, &resources).unwrap();
        ensure_pod_cgroup(&path, &resources).unwrap();
        match hierarchy().unwrap() {
            h @ Hierarchy::V1(_) => {
                let cpu = h.v1("cpu", &path).unwrap();
                assert_eq!(read(&cpu.join("cpu.shares")).unwrap().trim(), "512");
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")).unwrap().trim(), "50000");
                let memory = h.v1("memory", &path).unwrap();
                assert_eq!(
                    read(&memory.join("memory.limit_in_bytes")).unwrap().trim(),
                    (64u64 << 20).to_string()
                );
                if let Some(cpuset) = h.v1("cpuset", &path) {
                    assert!(!read(&cpuset.join("cpuset.cpus")).unwrap().trim().is_empty());
                }
            }
            Hierarchy::V2(root) => {
                let dir = root.join(&path);
                assert_eq!(read(&dir.join("cpu.max")).unwrap().trim(), "50000 100000");
            }
        }
        // A container cgroup inside the pod's, as libcontainer makes one.
        let container = container_cgroup_path(&path, "c1");
        ensure_pod_cgroup(&container, &PodResources::default()).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        add_process(&container, child.id()).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let pod = stats(&path).unwrap();
        let inner = stats(&container).unwrap();
        assert!(inner.cpu_usage_ns > 100_000_000, "{inner:?}");
        assert!(pod.cpu_usage_ns >= inner.cpu_usage_ns, "{pod:?} {inner:?}");
        assert!(pod.memory_usage_bytes > 0 && pod.memory_working_set_bytes > 0);
        assert_eq!(inner.pids, 1);
        child.kill().unwrap();
        child.wait().unwrap();
        remove_pod_cgroup(&path).unwrap();
        for (_, dir) in hierarchy().unwrap().dirs(&path) {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        let node = node_stats().unwrap();
        assert!(node.cpu_usage_ns > 0 && node.memory_total_bytes > node.memory_usage_bytes);
    }
}
