//! The agent's side of the shim (async): start a shim, read a container's status from its
//! directory, signal it, wait for its end, remove it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::files::{self, Exit, State};
use super::protocol::{Request, Response};
use super::{ContainerStatus, ShimError, ShimOptions};
use crate::runtime::spec::{self, ContainerConfig};

/// How long a shim may take to create and start its container.
const START_TIMEOUT: Duration = Duration::from_secs(60);

static SHIM_BINARY: RwLock<Option<PathBuf>> = RwLock::new(None);

/// The binary run as `<binary> shim ...`; by default this process's own executable (the
/// `kedge` binary). Tests that use this library from a test binary point it at `kedge`.
pub fn set_shim_binary(path: PathBuf) {
    if let Ok(mut binary) = SHIM_BINARY.write() {
        *binary = Some(path);
    }
}

pub(super) fn shim_binary() -> Result<PathBuf, ShimError> {
    if let Some(path) = SHIM_BINARY.read().ok().and_then(|b| b.clone()) {
        return Ok(path);
    }
    std::env::current_exe()
        .map_err(|e| ShimError::io("cannot find the kedge binary", "/proc/self/exe", e))
}

/// Writes `config.json` for `config` into `container_dir` (the OCI bundle, created if
/// missing) and starts a detached `kedge shim` for it; returns once the container's process
/// runs, or with [`ShimError::Start`] carrying libcontainer's message.
///
/// libcontainer's state lives in `<agent>/libcontainer`, found from the layout
/// `<agent>/containers/<id>` of `container_dir`.
pub async fn start(
    container_dir: &Path,
    config: &ContainerConfig,
    options: &ShimOptions,
) -> Result<(), ShimError> {
    let oci = spec::oci_spec(config)?;
    tokio::fs::create_dir_all(container_dir)
        .await
        .map_err(|e| ShimError::io("cannot create", container_dir, e))?;
    let config_path = container_dir.join(files::CONFIG);
    let json = serde_json::to_vec_pretty(&oci)
        .map_err(|e| ShimError::io("cannot encode", &config_path, std::io::Error::other(e)))?;
    tokio::fs::write(&config_path, json)
        .await
        .map_err(|e| ShimError::io("cannot write", &config_path, e))?;
    let root = libcontainer_root(container_dir)?;

    let shim_log_path = container_dir.join(files::SHIM_LOG);
    let shim_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shim_log_path)
        .map_err(|e| ShimError::io("cannot open", &shim_log_path, e))?;
    let mut command = tokio::process::Command::new(shim_binary()?);
    command
        .arg("shim")
        .arg("--dir")
        .arg(container_dir)
        .arg("--id")
        .arg(&config.id)
        .arg("--root")
        .arg(&root)
        .arg("--log-path")
        .arg(&options.log_path)
        .arg("--log-max-bytes")
        .arg(options.log_max_bytes.to_string())
        .arg("--log-max-files")
        .arg(options.log_max_files.to_string());
    if config.stdin {
        command.arg("--stdin");
    }
    if config.stdin_once {
        command.arg("--stdin-once");
    }
    command
        .current_dir(container_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(shim_log))
        .kill_on_drop(false);
    let mut child = command
        .spawn()
        .map_err(|e| ShimError::io("cannot run the shim for", container_dir, e))?;
    let mut handshake = String::new();
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| ShimError::Start("the shim has no stdout".into()))?;
    // The shim's parent exits at once; the daemon answers on the inherited pipe and closes it.
    let read = tokio::time::timeout(START_TIMEOUT, stdout.read_to_string(&mut handshake)).await;
    let _ = child.wait().await;
    match read {
        Err(_) => {
            return Err(ShimError::Start(format!(
                "the shim did not report within {}s (see {})",
                START_TIMEOUT.as_secs(),
                shim_log_path.display()
            )))
        }
        Ok(Err(e)) => {
            return Err(ShimError::io(
                "cannot read the shim's answer for",
                container_dir,
                e,
            ))
        }
        Ok(Ok(_)) => {}
    }
    let line = handshake.lines().next().unwrap_or("");
    if line.starts_with("ok ") {
        Ok(())
    } else if let Some(message) = line.strip_prefix("error ") {
        Err(ShimError::Start(message.to_string()))
    } else {
        let log = std::fs::read_to_string(&shim_log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(ShimError::Start(format!(
            "the shim exited without an answer; {}: {}",
            shim_log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )))
    }
}

pub(super) fn libcontainer_root(container_dir: &Path) -> Result<PathBuf, ShimError> {
    container_dir
        .parent()
        .and_then(Path::parent)
        .map(|agent| agent.join("libcontainer"))
        .ok_or_else(|| {
            ShimError::io(
                "expected <agent>/containers/<id>, got",
                container_dir,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })
}

/// The container's status from its directory: `exit.json`, else `state.json` with a live
/// shim, else `config.json` with a live shim (starting).
pub fn status(container_dir: &Path) -> ContainerStatus {
    if let Ok(Some(exit)) = files::read_json::<Exit>(&container_dir.join(files::EXIT)) {
        return exited(&exit);
    }
    let alive = shim_alive(container_dir);
    match files::read_json::<State>(&container_dir.join(files::STATE)) {
        Ok(Some(state)) if alive => ContainerStatus::Running {
            pid: state.pid,
            started_at: files::parse_rfc3339(&state.started_at).unwrap_or(std::time::UNIX_EPOCH),
        },
        _ if alive => ContainerStatus::Created,
        _ => ContainerStatus::Unknown,
    }
}

fn exited(exit: &Exit) -> ContainerStatus {
    let time = |t: &str| files::parse_rfc3339(t).unwrap_or(std::time::UNIX_EPOCH);
    ContainerStatus::Exited {
        exit_code: exit.exit_code,
        signal: exit.signal,
        reason: exit.reason,
        started_at: time(&exit.started_at),
        finished_at: time(&exit.finished_at),
    }
}

/// The shim's pid, if that process is alive and is this directory's shim (pids get reused).
fn shim_pid(container_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(container_dir.join(files::PID))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = container_dir.as_os_str().as_encoded_bytes();
    let is_ours = args.contains(&b"shim".as_slice()) && args.contains(&dir);
    // A zombie shim (exited, not yet reaped by init) has an empty cmdline: not alive.
    is_ours.then_some(pid)
}

fn shim_alive(container_dir: &Path) -> bool {
    shim_pid(container_dir).is_some()
}

async fn call(container_dir: &Path, request: &Request) -> Result<Response, ShimError> {
    Ok(exchange(container_dir, request).await?.0)
}

/// The reading half of a shim connection, after the answer line.
pub(super) type ShimReader = BufReader<tokio::net::unix::OwnedReadHalf>;

/// Sends one request line and reads the answer line, keeping the connection (attach goes on
/// with it).
pub(super) async fn exchange(
    container_dir: &Path,
    request: &Request,
) -> Result<(Response, ShimReader, tokio::net::unix::OwnedWriteHalf), ShimError> {
    let socket = container_dir.join(files::SOCKET);
    let stream = UnixStream::connect(&socket)
        .await
        .map_err(|e| ShimError::io("cannot connect to the shim at", &socket, e))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| {
        ShimError::io(
            "cannot encode a request for",
            &socket,
            std::io::Error::other(e),
        )
    })?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| ShimError::io("cannot write to the shim at", &socket, e))?;
    let mut reader = BufReader::new(read);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .await
        .map_err(|e| ShimError::io("cannot read from the shim at", &socket, e))?;
    if answer.is_empty() {
        return Err(ShimError::io(
            "the shim closed the connection at",
            &socket,
            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        ));
    }
    let answer = serde_json::from_str(&answer).map_err(|e| {
        ShimError::io(
            "bad answer from the shim at",
            &socket,
            std::io::Error::other(e),
        )
    })?;
    Ok((answer, reader, write))
}

/// Sends `signal` to the container's process. A container that already ended is not an
/// error.
pub async fn kill(container_dir: &Path, signal: i32) -> Result<(), ShimError> {
    if matches!(status(container_dir), ContainerStatus::Exited { .. }) {
        return Ok(());
    }
    match call(container_dir, &Request::Kill { signal }).await {
        Ok(answer) if answer.ok => Ok(()),
        Ok(answer) => Err(ShimError::Shim {
            dir: container_dir.to_path_buf(),
            message: answer.error.unwrap_or_default(),
        }),
        Err(e) => match status(container_dir) {
            ContainerStatus::Exited { .. } => Ok(()),
            _ if !shim_alive(container_dir) => Err(ShimError::NotRunning {
                dir: container_dir.to_path_buf(),
                detail: e.to_string(),
            }),
            _ => Err(e),
        },
    }
}

/// Waits until the container ended and returns its [`ContainerStatus::Exited`]; returns
/// [`ContainerStatus::Unknown`] if its shim is gone without recording an exit.
pub async fn wait(container_dir: &Path) -> Result<ContainerStatus, ShimError> {
    loop {
        match status(container_dir) {
            done @ ContainerStatus::Exited { .. } => return Ok(done),
            ContainerStatus::Unknown => {
                // The shim may have just written exit.json and left.
                return Ok(status(container_dir));
            }
            _ => {}
        }
        match call(container_dir, &Request::Wait).await {
            Ok(Response {
                exit: Some(exit), ..
            }) => return Ok(exited(&exit)),
            // Connection refused or closed: the shim is starting or ending; look again.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Removes an ended container: its libcontainer state and cgroup if the shim could not
/// (it died), a rootfs still mounted (detached), and the container directory.
pub async fn remove(container_dir: &Path) -> Result<(), ShimError> {
    // After exit.json the shim only removes its socket and exits: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shim_alive(container_dir) {
        if !matches!(status(container_dir), ContainerStatus::Exited { .. })
            || Instant::now() > deadline
        {
            return Err(ShimError::StillRunning {
                dir: container_dir.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = container_dir.to_path_buf();
    tokio::task::spawn_blocking(move || remove_blocking(&dir))
        .await
        .map_err(|e| ShimError::io("removing", container_dir, std::io::Error::other(e)))?
}

fn remove_blocking(dir: &Path) -> Result<(), ShimError> {
    if let Some(id) = dir.file_name() {
        if let Ok(root) = libcontainer_root(dir) {
            let state = root.join(id);
            if state.exists() {
                std::fs::remove_dir_all(&state)
                    .map_err(|e| ShimError::io("cannot remove", &state, e))?;
            }
        }
    }
    if let Ok(spec) = oci_spec::runtime::Spec::load(dir.join(files::CONFIG)) {
        if let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
            remove_cgroup(&path);
        }
    }
    let rootfs = dir.join("rootfs");
    if is_mount_point(&rootfs) {
        let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        if is_mount_point(&rootfs) {
            return Err(ShimError::io(
                "the rootfs is still mounted at",
                &rootfs,
                std::io::Error::from(std::io::ErrorKind::ResourceBusy),
            ));
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShimError::io("cannot remove", dir, e)),
    }
}

/// Removes the container's leaf cgroup (v2, or under every v1 controller); best effort, the
/// shim normally did it through libcontainer.
fn remove_cgroup(path: &Path) {
    let relative = path.strip_prefix("/").unwrap_or(path);
    if relative.as_os_str().is_empty() {
        return;
    }
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        let _ = std::fs::remove_dir(base.join(relative));
        return;
    }
    if let Ok(controllers) = std::fs::read_dir(base) {
        for controller in controllers.flatten() {
            let _ = std::fs::remove_dir(controller.path().join(relative));
        }
    }
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    match std::fs::metadata(parent) {
        Ok(parent_meta) => meta.dev() != parent_meta.dev() || meta.ino() == parent_meta.ino(),
        Err(_) => false,
    }
}
