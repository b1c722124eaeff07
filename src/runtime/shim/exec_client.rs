//! The agent's side of exec: runs `kedge shim exec` as its own child (not through the
//! container's shim: the session lives as long as its caller), hands out the process's
//! stdio, and with a tty receives the pty master itself so that it can resize it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UnixListener;
use tokio::process::Child;

use super::client::{libcontainer_root, shim_binary};
use super::pty::{self, Pty};
use super::{ContainerStatus, ShimError};

/// How long joining a container may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A command to run in a running container (`kubectl exec`, exec probes, hooks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// Run on a pseudo-terminal: one stream for stdout and stderr, resizable.
    pub tty: bool,
    /// Give the caller a stdin writer; otherwise the process reads /dev/null.
    pub stdin: bool,
    /// Extra `KEY=VALUE` entries over the container's environment.
    pub env: Vec<String>,
}

pub type ExecWriter = Box<dyn AsyncWrite + Send + Unpin>;
pub type ExecReader = Box<dyn AsyncRead + Send + Unpin>;

/// A running exec. Dropping it before [`ExecProcess::wait`] kills the process (SIGTERM to
/// `kedge shim exec`, which SIGKILLs the process in the container).
pub struct ExecProcess {
    /// Closing (dropping or shutting down) it is EOF for a non-tty process; with a tty,
    /// shutting it down hangs the terminal up (SIGHUP), as containerd does.
    pub stdin: Option<ExecWriter>,
    /// With a tty: the terminal's output (stdout and stderr both).
    pub stdout: ExecReader,
    /// `None` with a tty.
    pub stderr: Option<ExecReader>,
    pty: Option<Pty>,
    child: Option<Child>,
}

impl ExecProcess {
    /// Sets the terminal size; an error without a tty.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        match &self.pty {
            Some(pty) => pty.resize(cols, rows),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the exec has no terminal",
            )),
        }
    }

    /// A handle that resizes this process's terminal from another task; `None` without a tty.
    pub fn resizer(&self) -> Option<Resizer> {
        self.pty.clone().map(Resizer)
    }

    /// Waits for the process; its exit code, 128 + the signal if a signal ended it.
    pub async fn wait(mut self) -> io::Result<i32> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("already waited"));
        };
        let status = child.wait().await?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255))
    }
}

/// Resizes an exec's terminal (see [`ExecProcess::resizer`]).
pub struct Resizer(Pty);

impl Resizer {
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        self.0.resize(cols, rows)
    }
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
        }
    }
}

/// Starts `request` in the running container of `container_dir`; returns once the process
/// runs, or [`ShimError::Start`] with libcontainer's message (e.g. no such executable).
pub async fn exec(container_dir: &Path, request: ExecRequest) -> Result<ExecProcess, ShimError> {
    if !matches!(
        super::status(container_dir),
        ContainerStatus::Running { .. }
    ) {
        return Err(ShimError::NotRunning {
            dir: container_dir.to_path_buf(),
            detail: "exec needs a running container".into(),
        });
    }
    if request.args.is_empty() {
        return Err(ShimError::Start("exec needs a command".into()));
    }
    let id = container_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let root = libcontainer_root(container_dir)?;
    let console = if request.tty {
        let path = container_dir.join(format!(
            "exec-{}.sock",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let listener =
            UnixListener::bind(&path).map_err(|e| ShimError::io("cannot listen on", &path, e))?;
        Some((path, listener))
    } else {
        None
    };
    let result = spawn(container_dir, &id, &root, &request, console.as_ref()).await;
    if let Some((path, _)) = &console {
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn spawn(
    container_dir: &Path,
    id: &str,
    root: &Path,
    request: &ExecRequest,
    console: Option<&(std::path::PathBuf, UnixListener)>,
) -> Result<ExecProcess, ShimError> {
    let (handshake_r, handshake_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("pipe for", container_dir, e.into()))?;
    let mut command = tokio::process::Command::new(shim_binary()?);
    command
        .arg("shim")
        .arg("exec")
        .arg("--dir")
        .arg(container_dir)
        .arg("--id")
        .arg(id)
        .arg("--root")
        .arg(root);
    if let Some((path, _)) = console {
        command.arg("--console-socket").arg(path);
    }
    for env in &request.env {
        command.arg(format!("--env={env}"));
    }
    command.arg("--").args(&request.args);
    let tty = console.is_some();
    command
        .stdin(if request.stdin && !tty {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if tty { Stdio::null() } else { Stdio::piped() })
        .stderr(if tty { Stdio::null() } else { Stdio::piped() })
        .kill_on_drop(false);
    let raw = handshake_w.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; the copy at fd 3 is not close-on-exec.
    unsafe {
        command.as_std_mut().pre_exec(move || {
            nix::unistd::dup2(raw, 3).map_err(io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ShimError::io("cannot run `kedge shim exec` for", container_dir, e))?;
    drop(handshake_w);
    let line = match tokio::time::timeout(JOIN_TIMEOUT, read_all(handshake_r)).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => {
            return Err(ShimError::io(
                "reading the exec handshake of",
                container_dir,
                e,
            ))
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(ShimError::Start(format!(
                "joining the container took more than {}s",
                JOIN_TIMEOUT.as_secs()
            )));
        }
    };
    let line = line.lines().next().unwrap_or("").to_string();
    if let Some(message) = line.strip_prefix("error ") {
        let _ = child.wait().await;
        return Err(ShimError::Start(message.to_string()));
    }
    if !line.starts_with("ok ") {
        let status = child.wait().await;
        return Err(ShimError::Start(format!(
            "`kedge shim exec` ended without an answer ({status:?})"
        )));
    }
    let mut process = ExecProcess {
        stdin: None,
        stdout: Box::new(tokio::io::empty()),
        stderr: None,
        pty: None,
        child: None,
    };
    if let Some((_, listener)) = console {
        let master = tokio::time::timeout(Duration::from_secs(10), receive_master(listener))
            .await
            .map_err(|_| ShimError::Start("no terminal came from the container".into()))?
            .map_err(|e| ShimError::io("receiving the terminal of", container_dir, e))?;
        let pty = Pty::new(master).map_err(|e| ShimError::io("terminal of", container_dir, e))?;
        if request.stdin {
            process.stdin = Some(Box::new(pty.clone()));
        }
        process.stdout = Box::new(pty.clone());
        process.pty = Some(pty);
    } else {
        if let Some(stdin) = child.stdin.take() {
            process.stdin = Some(Box::new(stdin));
        }
        if let Some(stdout) = child.stdout.take() {
            process.stdout = Box::new(stdout);
        }
        process.stderr = child.stderr.take().map(|s| Box::new(s) as ExecReader);
    }
    process.child = Some(child);
    Ok(process)
}

async fn read_all(fd: OwnedFd) -> io::Result<String> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::from(fd).read_to_string(&mut text)?;
        Ok(text)
    })
    .await
    .map_err(io::Error::other)?
}

async fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    let (stream, _) = listener.accept().await?;
    loop {
        stream.readable().await?;
        match stream.try_io(tokio::io::Interest::READABLE, || {
            pty::recv_fd(stream.as_raw_fd())
        }) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Runs `args` without stdin and returns its exit code and output (stdout then stderr as
/// they came, interleaved), for exec probes and hooks; [`ShimError::Timeout`] (and the
/// process killed) if it runs longer than `timeout`.
pub async fn exec_output(
    container_dir: &Path,
    args: Vec<String>,
    timeout: Duration,
) -> Result<(i32, Vec<u8>), ShimError> {
    let run = async {
        let mut process = exec(
            container_dir,
            ExecRequest {
                args,
                ..ExecRequest::default()
            },
        )
        .await?;
        let mut stdout = std::mem::replace(&mut process.stdout, Box::new(tokio::io::empty()));
        let mut stderr = process.stderr.take();
        let mut output = Vec::new();
        let (mut out_done, mut err_done) = (false, stderr.is_none());
        let (mut a, mut b) = ([0u8; 8192], [0u8; 8192]);
        while !(out_done && err_done) {
            tokio::select! {
                n = stdout.read(&mut a), if !out_done => match n {
                    Ok(0) | Err(_) => out_done = true,
                    Ok(n) => output.extend_from_slice(&a[..n]),
                },
                n = async { match stderr.as_mut() { Some(s) => s.read(&mut b).await, None => Ok(0) } }, if !err_done => match n {
                    Ok(0) | Err(_) => err_done = true,
                    Ok(n) => output.extend_from_slice(&b[..n]),
                },
            }
        }
        let code = process
            .wait()
            .await
            .map_err(|e| ShimError::io("waiting for an exec in", container_dir, e))?;
        Ok((code, output))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(ShimError::Timeout {
            dir: container_dir.to_path_buf(),
            after: timeout,
        }),
    }
}
