//! The OCI runtime spec (`config.json`) of one container, built from a runtime-level
//! [`ContainerConfig`] with containerd's CRI defaults: default mounts, devices, capabilities,
//! masked and read-only paths, rlimits and the RuntimeDefault seccomp profile ([`seccomp`]).
//!
//! Owns: the mapping ContainerConfig → `oci_spec::runtime::Spec`. Must not touch: Kubernetes
//! types (the kubelet maps a pod's container onto a [`ContainerConfig`]), files or processes.
//!
//! The spec is written as the JSON of the OCI runtime schema and parsed by oci-spec, so the
//! code reads like the `config.json` it produces and oci-spec checks its shape.

pub mod seccomp;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// containerd's default capability set for non-privileged containers (14 capabilities).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, in the kernel's bit order (privileged containers get
/// all of those the agent itself holds, as containerd's `WithAllCurrentCapabilities`).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Paths upstream (containerd's CRI) masks in every non-privileged container.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths upstream mounts read-only in every non-privileged container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// `PATH` for a process whose environment has none (as Docker and containerd's `ctr`); the
/// runtime needs one to find the executable.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's RLIMIT_NOFILE for containers.
const NOFILE: u64 = 1_048_576;

/// [`NOFILE`], or what this process may set where that is lower: the kernel's ceiling
/// `fs.nr_open`, and its own hard limit when it lacks CAP_SYS_RESOURCE (an agent in an
/// unprivileged container); setrlimit above either fails and the container with it.
fn nofile(capabilities: u64) -> u64 {
    let mut limit = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(NOFILE, |max| max.min(NOFILE));
    const CAP_SYS_RESOURCE: u32 = 24;
    if capabilities & (1 << CAP_SYS_RESOURCE) == 0 {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } == 0 {
            limit = limit.min(current.rlim_max);
        }
    }
    limit
}

/// `wanted`, or this process's own score where `wanted` is lower and it lacks
/// CAP_SYS_RESOURCE (lowering a score needs it; the write would fail and the container with
/// it), as containerd does for an unprivileged runtime.
fn oom_score_adj(wanted: i32, capabilities: u64) -> i32 {
    const CAP_SYS_RESOURCE: u32 = 24;
    if capabilities & (1 << CAP_SYS_RESOURCE) != 0 {
        return wanted;
    }
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    wanted.max(own)
}

/// This process's effective capabilities as a bit mask (all when unreadable).
fn current_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// A container as the runtime sees it: no Kubernetes types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerConfig {
    /// 32 lowercase hex characters; the libcontainer id and the cgroup leaf name.
    pub id: String,
    /// The process: entrypoint and arguments, already resolved against the image.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub hostname: String,
    /// The mounted root filesystem (overlay), absolute.
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub mounts: Vec<Mount>,
    /// Join this network namespace (the pod sandbox's); `None` = a new, empty one.
    pub netns: Option<PathBuf>,
    /// Join this PID namespace (the node's for `hostPID` pods, or that of the container an
    /// ephemeral container targets, to see its processes); `None` = a new one.
    pub pid_ns: Option<PathBuf>,
    /// Join this IPC namespace (the node's for `hostIPC` pods); `None` = a new one.
    pub ipc_ns: Option<PathBuf>,
    /// Relative to the cgroup root, e.g. `kedge/burstable/pod<uid>/<id>`.
    pub cgroups_path: String,
    pub resources: Resources,
    pub security: Security,
    pub oom_score_adj: Option<i32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Host path for binds; ignored for tmpfs.
    pub source: PathBuf,
    pub kind: MountKind,
    pub readonly: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A recursive bind mount of `source`.
    Bind,
    /// A fresh tmpfs, optionally size-limited in bytes.
    Tmpfs { size: Option<u64> },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    /// All capabilities, all devices allowed, nothing masked, no seccomp, rw /sys.
    pub privileged: bool,
    /// The final effective set, `CAP_...` names (the kubelet applies add/drop to
    /// [`DEFAULT_CAPABILITIES`]); ignored when privileged.
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
    pub seccomp_runtime_default: bool,
    /// Upstream's masked and read-only paths; ignored when privileged.
    pub masked_paths_default: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container {id}: {what}")]
    Invalid { id: String, what: String },
    #[error("container {id}: the generated OCI spec does not parse: {source}")]
    Schema {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// True when the host runs the unified cgroup v2 hierarchy only.
pub fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// What of the host's cgroups the spec depends on.
#[derive(Clone, Copy, Debug)]
struct Host {
    cgroup_v2: bool,
    /// The memory limit can bound memory+swap (v1 with swap accounting, v2 with swap on).
    swap_limit: bool,
    nofile: u64,
    /// The agent's effective capabilities (bit mask): the most a privileged container gets.
    capabilities: u64,
}

impl Host {
    fn detect() -> Host {
        let cgroup_v2 = cgroup_v2();
        let swap_limit = if cgroup_v2 {
            std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        let capabilities = current_capabilities();
        Host {
            cgroup_v2,
            swap_limit,
            nofile: nofile(capabilities),
            capabilities,
        }
    }
}

/// Builds the OCI runtime spec of `config` (see the module doc for the defaults applied).
pub fn oci_spec(config: &ContainerConfig) -> Result<oci_spec::runtime::Spec, SpecError> {
    let value = spec_json(config, Host::detect())?;
    serde_json::from_value(value).map_err(|source| SpecError::Schema {
        id: config.id.clone(),
        source,
    })
}

fn invalid(config: &ContainerConfig, what: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        id: config.id.clone(),
        what: what.into(),
    }
}

fn spec_json(config: &ContainerConfig, host: Host) -> Result<Value, SpecError> {
    if config.args.is_empty() {
        return Err(invalid(config, "no command: args are empty"));
    }
    if !config.rootfs.is_absolute() {
        return Err(invalid(
            config,
            format!("rootfs {} is not absolute", config.rootfs.display()),
        ));
    }
    let privileged = config.security.privileged;

    let capabilities: Vec<String> = if privileged {
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(bit, _)| host.capabilities & (1 << bit) != 0)
            .map(|(_, c)| c.to_string())
            .collect()
    } else {
        for cap in &config.security.capabilities {
            if !ALL_CAPABILITIES.contains(&cap.as_str()) {
                return Err(invalid(config, format!("unknown capability {cap}")));
            }
        }
        config.security.capabilities.clone()
    };

    let mut env = config.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.to_string());
    }
    let cwd = if config.cwd.is_empty() {
        "/"
    } else {
        &config.cwd
    };

    let mut process = json!({
        "terminal": config.tty,
        "user": {
            "uid": config.user.uid,
            "gid": config.user.gid,
            "additionalGids": config.user.additional_gids,
        },
        "args": config.args,
        "env": env,
        "cwd": cwd,
        // containerd sets no inheritable or ambient capabilities: a non-root process
        // execs with none, as upstream.
        "capabilities": {
            "bounding": capabilities,
            "effective": capabilities,
            "permitted": capabilities,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": host.nofile, "soft": host.nofile}],
        "noNewPrivileges": config.security.no_new_privileges && !privileged,
    });
    if let Some(adj) = config.oom_score_adj {
        process["oomScoreAdj"] = json!(oom_score_adj(adj, current_capabilities()));
    }

    let mut namespaces = vec![
        match &config.pid_ns {
            Some(path) => json!({"type": "pid", "path": path}),
            None => json!({"type": "pid"}),
        },
        match &config.ipc_ns {
            Some(path) => json!({"type": "ipc", "path": path}),
            None => json!({"type": "ipc"}),
        },
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &config.netns {
        Some(path) => namespaces.push(json!({"type": "network", "path": path})),
        None => namespaces.push(json!({"type": "network"})),
    }
    // As containerd: a private cgroup namespace only on the unified hierarchy.
    if host.cgroup_v2 {
        namespaces.push(json!({"type": "cgroup"}));
    }

    let mut resources = json!({
        // Deny every device, then libcgroups allows the default ones (null, zero, ...).
        "devices": [{"allow": privileged, "access": "rwm"}],
    });
    let r = &config.resources;
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = r.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = r.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
    }
    if let Some(period) = r.cpu_period {
        cpu.insert("period".into(), json!(period));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(limit) = r.memory_limit {
        // As the kubelet without node swap: memory+swap bounded by the same limit, so a
        // container over its limit is OOM-killed instead of swapping.
        resources["memory"] = if host.swap_limit {
            json!({"limit": limit, "swap": limit})
        } else {
            json!({"limit": limit})
        };
    }
    if let Some(limit) = r.pids_limit {
        resources["pids"] = json!({"limit": limit});
    }

    let cgroups_path = format!("/{}", config.cgroups_path.trim_start_matches('/'));
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": resources,
        "devices": default_devices(),
    });
    if !privileged && config.security.masked_paths_default {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if !privileged && config.security.seccomp_runtime_default {
        linux["seccomp"] = seccomp::runtime_default(&capabilities);
    }

    Ok(json!({
        "ociVersion": "1.2.0",
        "process": process,
        "root": {"path": config.rootfs, "readonly": config.readonly_rootfs},
        "hostname": config.hostname,
        "mounts": mounts(config)?,
        "linux": linux,
    }))
}

/// containerd's default mounts, then the config's; a config mount replaces a default one at
/// the same destination (as the CRI plugin does, e.g. the pod's `/dev/shm`).
fn mounts(config: &ContainerConfig) -> Result<Vec<Value>, SpecError> {
    let sys_options = if config.security.privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let defaults = [
        (
            "/proc",
            "proc",
            "proc",
            json!(["nosuid", "noexec", "nodev"]),
        ),
        (
            "/dev",
            "tmpfs",
            "tmpfs",
            json!(["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ),
        (
            "/dev/pts",
            "devpts",
            "devpts",
            json!([
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ]),
        ),
        (
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            json!(["nosuid", "noexec", "nodev"]),
        ),
        (
            "/dev/shm",
            "tmpfs",
            "shm",
            json!(["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        ),
        ("/sys", "sysfs", "sysfs", sys_options.clone()),
        ("/sys/fs/cgroup", "cgroup", "cgroup", {
            let mut o = sys_options;
            if let Some(list) = o.as_array_mut() {
                list.push(json!("relatime"));
            }
            o
        }),
    ];
    let mut out = Vec::new();
    for (destination, kind, source, options) in defaults {
        if config
            .mounts
            .iter()
            .any(|m| m.destination == Path::new(destination))
        {
            continue;
        }
        out.push(json!({
            "destination": destination, "type": kind, "source": source, "options": options,
        }));
    }
    for mount in &config.mounts {
        if !mount.destination.is_absolute() {
            return Err(invalid(
                config,
                format!(
                    "mount destination {} is not absolute",
                    mount.destination.display()
                ),
            ));
        }
        let ro = if mount.readonly { "ro" } else { "rw" };
        out.push(match &mount.kind {
            MountKind::Bind => json!({
                "destination": mount.destination,
                "type": "bind",
                "source": mount.source,
                "options": ["rbind", "rprivate", ro],
            }),
            MountKind::Tmpfs { size } => {
                let mut options = vec![
                    json!("nosuid"),
                    json!("nodev"),
                    json!("mode=1777"),
                    json!(ro),
                ];
                if let Some(size) = size {
                    options.push(json!(format!("size={size}")));
                }
                json!({
                    "destination": mount.destination,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": options,
                })
            }
        });
    }
    Ok(out)
}

/// The devices every container gets (runc's and youki's defaults; `/dev/ptmx` comes from
/// the devpts mount).
fn default_devices() -> Value {
    let device = |path: &str, major: i64, minor: i64| {
        json!({"type": "c", "path": path, "major": major, "minor": minor,
               "fileMode": 0o666, "uid": 0, "gid": 0})
    };
    json!([
        device("/dev/null", 1, 3),
        device("/dev/zero", 1, 5),
        device("/dev/full", 1, 7),
        device("/dev/random", 1, 8),
        device("/dev/urandom", 1, 9),
        device("/dev/tty", 5, 0),
    ])
}

#[cfg(test)]
mod tests;
