//! `kedge killall`: what k3s-killall.sh does for k3s, for one data dir. With the server or
//! agent of that data dir stopped (it refuses otherwise), it kills the dir's container shims
//! and every process left in its pods' cgroups, unmounts everything under the dir (rootfs
//! overlays, volumes, the pods' network-namespace files: deepest first, lazily when busy),
//! which ends the pod namespaces, and takes the node's networking down: the pod network
//! ([`crate::net::cni::uninstall`]: veths, address allocations, the bridge) and the service
//! proxy's table, link and route ([`crate::net::proxy::uninstall`]). Nothing else: the
//! processes and mounts of other data dirs, and the data itself (a later `kedge server`
//! or `kedge agent` on the dir starts the pods again), are left alone. Idempotent.
//!
//! Also owns the data-dir lock: `kedge server` and `kedge agent` hold an exclusive flock on
//! `<data-dir>/kedge.lock` while they run; it is how killall knows that one is running,
//! and it keeps two of them off one data dir.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};

use crate::kubelet::volumes::mounts;
use crate::runtime::cgroups::{self, QosClass};
use crate::runtime::netns;

/// The lock file, in the data dir.
pub const LOCK_FILE: &str = "kedge.lock";
/// How long a starting server or agent waits for the lock (a predecessor still exiting).
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long killall waits for killed processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KillallError {
    #[error("a kedge server or agent is running on the data dir {0} (it holds {0}/kedge.lock): stop it first (systemctl stop kedge / kedge-agent)")]
    Running(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod cgroups: {0}")]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("pod processes still alive {seconds}s after SIGKILL: {pids:?}")]
    Survivors { seconds: u64, pids: Vec<u32> },
    #[error("the pod network: {0}")]
    Network(#[from] crate::net::cni::CniError),
    #[error("the service proxy: {0}")]
    Proxy(#[from] crate::net::proxy::ProxyError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KillallError {
    let path = path.display().to_string();
    move |source| KillallError::Io {
        action,
        path,
        source,
    }
}

/// The exclusive lock of a data dir, held by a running server or agent; released on drop
/// (or when the process dies).
pub struct DataDirLock {
    _lock: Flock<File>,
}

/// The lock if nobody holds it now; creates the data dir (mode 0700) and the file.
fn try_lock(data_dir: &Path) -> Result<Option<DataDirLock>, KillallError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io("creating", data_dir))?;
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("opening", &path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(DataDirLock { _lock: lock })),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(io("locking", &path)(e.into())),
    }
}

/// For `kedge server` and `kedge agent`: the data dir's lock, waiting a few seconds for a
/// predecessor that is still exiting; an error if another process keeps it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, KillallError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        if let Some(lock) = try_lock(data_dir)? {
            return Ok(lock);
        }
        if Instant::now() > deadline {
            return Err(KillallError::Running(data_dir.display().to_string()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kedge killall` flags.
#[derive(clap::Args)]
pub struct KillallArgs {
    /// Folder that holds all state, as given to `kedge server` / `kedge agent`
    #[arg(
        long,
        short = 'd',
        env = "KEDGE_DATA_DIR",
        default_value = "/var/lib/kedge"
    )]
    pub data_dir: PathBuf,
}

/// What [`killall`] did.
#[derive(Debug, Default)]
pub struct Killed {
    pub shims: usize,
    pub container_processes: usize,
    pub unmounted: usize,
    pub veths: usize,
    pub addresses: usize,
    pub bridge: bool,
}

/// The subcommand: one summary line, or one error line and a non-zero exit.
pub fn run(args: KillallArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kedge killall: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(killall(&args.data_dir)) {
        Ok(k) => {
            println!(
                "kedge killall: {}: killed {} shims and {} container processes, {} unmounted, \
                 {} veths and {} pod addresses released{}, service proxy rules removed",
                args.data_dir.display(),
                k.shims,
                k.container_processes,
                k.unmounted,
                k.veths,
                k.addresses,
                if k.bridge { ", bridge removed" } else { "" },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kedge killall: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stops and removes everything the node agent of `data_dir` left running on the host (see
/// the module doc). Run in the node's network namespace; refuses while a server or agent
/// holds the data dir's lock, and holds it meanwhile so that none starts.
pub async fn killall(data_dir: &Path) -> Result<Killed, KillallError> {
    let mut killed = Killed::default();
    // A data dir that was never created has no processes or mounts, but the node's network
    // may still hold kedge's links and table (a data dir removed by hand).
    let _lock = match data_dir.exists() {
        true => Some(
            try_lock(data_dir)?
                .ok_or_else(|| KillallError::Running(data_dir.display().to_string()))?,
        ),
        false => None,
    };
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let agent_dir = data_dir.join("agent");

    killed.shims = kill_and_wait(&shims_of(&agent_dir));
    killed.container_processes = kill_pod_processes(&pod_uids(&agent_dir)?)?;
    killed.unmounted = unmount_under(&data_dir)?;
    for uid in pod_uids(&agent_dir)? {
        let path = agent_dir.join("pods").join(&uid).join("netns");
        netns::remove(&path).map_err(io("removing the namespace file", &path))?;
    }

    let network = crate::net::cni::uninstall(&agent_dir.join("net")).await?;
    killed.veths = network.veths.len();
    killed.addresses = network.addresses.len();
    killed.bridge = network.bridge;
    crate::net::proxy::uninstall().await?;
    Ok(killed)
}

/// The pods that have a sandbox folder (`<agent>/pods/<uid>`).
fn pod_uids(agent_dir: &Path) -> Result<Vec<String>, KillallError> {
    let dir = agent_dir.join("pods");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", &dir)(e)),
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

/// Live `kedge shim` (and `kedge shim exec`) processes of containers under
/// `<agent>/containers`: their `--dir` is there.
fn shims_of(agent_dir: &Path) -> Vec<u32> {
    let containers = agent_dir.join("containers");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.get(1) != Some(&&b"shim"[..]) {
                return false;
            }
            args.windows(2).any(|pair| {
                pair[0] == b"--dir"
                    && is_under(Path::new(&*String::from_utf8_lossy(pair[1])), &containers)
            })
        })
        .collect()
}

/// Whether `path` (as written, or resolved) is inside `dir` (resolved).
fn is_under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir) || path.canonicalize().is_ok_and(|p| p.starts_with(dir))
}

/// Kills every process in the cgroups of the pods `uids` (whatever their QoS class was),
/// waits for them to be gone and removes the cgroups; returns how many there were.
fn kill_pod_processes(uids: &[String]) -> Result<usize, KillallError> {
    let paths: Vec<String> = uids
        .iter()
        .flat_map(|uid| {
            [
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ]
            .map(|qos| cgroups::qos_cgroup_path(qos, uid))
        })
        .collect();
    let processes = || -> Result<Vec<u32>, KillallError> {
        let mut pids = Vec::new();
        for path in &paths {
            pids.extend(cgroups::processes(path)?);
        }
        Ok(pids)
    };
    let mut pids = processes()?;
    let count = pids.len();
    let deadline = Instant::now() + KILL_WAIT;
    while !pids.is_empty() {
        for pid in &pids {
            // A process that exited meanwhile (ESRCH) is what was wanted.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(50));
        pids = processes()?;
        if !pids.is_empty() && Instant::now() > deadline {
            return Err(KillallError::Survivors {
                seconds: KILL_WAIT.as_secs(),
                pids,
            });
        }
    }
    for path in &paths {
        cgroups::remove_pod_cgroup(path)?;
    }
    Ok(count)
}

/// SIGKILLs `pids` and waits (a while) until none is alive; returns how many there were.
fn kill_and_wait(pids: &[u32]) -> usize {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + KILL_WAIT;
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.len()
}

/// Running (not a zombie waiting for its parent).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Unmounts every mount point under `dir` (itself excluded), deepest first; a busy one
/// lazily (MNT_DETACH). Repeats until none is left (mounts stacked on one point).
fn unmount_under(dir: &Path) -> Result<usize, KillallError> {
    let mut count = 0;
    loop {
        let mountinfo = Path::new("/proc/self/mountinfo");
        // Deepest first; the dir itself is not killall's to unmount.
        let mounts: Vec<PathBuf> = mounts::mounts_under(dir)
            .map_err(io("reading", mountinfo))?
            .into_iter()
            .filter(|path| path != dir)
            .collect();
        if mounts.is_empty() {
            return Ok(count);
        }
        for path in mounts {
            match umount2(&path, MntFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EBUSY) => umount2(&path, MntFlags::MNT_DETACH)
                    .map_err(|e| io("unmounting", &path)(e.into()))?,
                // Gone with a parent detached before it.
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io("unmounting", &path)(e.into())),
            }
            count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_data_dir_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path()).unwrap();
        assert!(first.is_some());
        assert!(try_lock(dir.path()).unwrap().is_none());
        drop(first);
        assert!(try_lock(dir.path()).unwrap().is_some());
    }
}
