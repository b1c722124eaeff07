//! The `kedge shim` process: blocking, single-threaded (std + nix poll, no tokio).
//!
//! Life: fork (the agent reaps only the short-lived parent) → setsid → child subreaper →
//! bind `shim.sock` → create and start the container with libcontainer, its stdout/stderr
//! on pipes the shim holds → report "ok <pid>" or "error <message>" on the handshake pipe
//! (the shim's stdout, read by the agent's `start`) → loop: log output, answer requests,
//! reap → drain the pipes → OOM check → delete the container (and its cgroup) → exit.json →
//! answer waiters → exit.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::files::{self, Exit, State};
use super::logs::{LogFile, Stream};
use super::protocol::{Request, Response};
use super::{ExitReason, ShimArgs};

/// How long output may still arrive after the container's init exited (processes that
/// escaped the pid namespace's teardown are not waited for longer).
const DRAIN: Duration = Duration::from_secs(2);

/// The `kedge shim` entry point; see the module doc. Must run before any thread exists.
pub fn shim_main(args: ShimArgs) -> ExitCode {
    // SAFETY: called from main before any other thread (no tokio, no logging thread).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return ExitCode::SUCCESS,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            handshake(&format!("error cannot fork the shim: {e}"));
            return ExitCode::FAILURE;
        }
    }
    // A session of its own: the agent's signals and terminal do not reach the container.
    let _ = nix::unistd::setsid();
    init_tracing();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kedge shim {}: {message}", args.id);
            ExitCode::FAILURE
        }
    }
}

/// libcontainer logs through `tracing`: its warnings and errors go to the shim's stderr,
/// which the agent points at `shim.log`. (fmt writes synchronously, no thread.)
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,libcgroups=error"))
        .try_init();
}

/// Writes the one handshake line, then points stdout at /dev/null so the agent sees EOF.
fn handshake(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

fn run(args: &ShimArgs) -> Result<(), String> {
    match prepare(args) {
        Ok(running) => running.serve(),
        Err(message) => {
            handshake(&format!("error {}", message.replace('\n', " ")));
            cleanup_failed(args);
            Err(message)
        }
    }
}

/// After a failed start: no half-created container may stay behind.
fn cleanup_failed(args: &ShimArgs) {
    let state_dir = args.root.join(&args.id);
    if state_dir.exists() {
        match Container::load(state_dir.clone()) {
            Ok(mut container) => {
                if let Err(e) = container.delete(true) {
                    eprintln!("deleting the failed container: {e}");
                }
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&state_dir);
            }
        }
    }
    let _ = std::fs::remove_file(args.dir.join(files::SOCKET));
}

struct Running {
    args: ShimArgs,
    container: Container,
    pid: Pid,
    started_at: SystemTime,
    cgroups_path: Option<PathBuf>,
    listener: UnixListener,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// The write end of the container's stdin, kept open so that the container does not see
    /// EOF before someone attaches (next stage).
    _stdin: Option<OwnedFd>,
    log: LogFile,
}

fn prepare(args: &ShimArgs) -> Result<Running, String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become a child subreaper: {e}"))?;
    let dir = &args.dir;
    files::write_atomic(
        &dir.join(files::PID),
        std::process::id().to_string().as_bytes(),
    )
    .map_err(|e| format!("cannot write {}: {e}", dir.join(files::PID).display()))?;

    let spec = oci_spec::runtime::Spec::load(dir.join(files::CONFIG))
        .map_err(|e| format!("cannot read {}: {e}", dir.join(files::CONFIG).display()))?;
    let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());

    let log = LogFile::open(&args.log_path, args.log_max_bytes, args.log_max_files)
        .map_err(|e| format!("cannot open the log {}: {e}", args.log_path.display()))?;

    let socket = dir.join(files::SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot chmod {}: {e}", socket.display()))?;

    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (stdin_r, stdin_w): (OwnedFd, Option<OwnedFd>) = if args.stdin {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        (null.into(), None)
    };

    let container = create(args, stdin_r, stdout_w, stderr_w)?;
    let started_at = SystemTime::now();
    let pid = container
        .pid()
        .ok_or_else(|| "libcontainer started the container but reports no pid".to_string())?;
    files::write_json(
        &dir.join(files::STATE),
        &State {
            pid: pid.as_raw(),
            started_at: files::rfc3339_nano(started_at),
        },
    )
    .map_err(|e| format!("cannot write state.json: {e}"))?;
    handshake(&format!("ok {pid}"));

    for fd in [stdout_r.as_fd(), stderr_r.as_fd()] {
        set_nonblocking(fd.as_raw_fd());
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    Ok(Running {
        args: args.clone(),
        container,
        pid,
        started_at,
        cgroups_path,
        listener,
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
        _stdin: stdin_w,
        log,
    })
}

fn set_nonblocking(fd: i32) {
    use nix::fcntl::{fcntl, FcntlArg};
    // SAFETY: fd is owned by the caller for the duration of this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    if let Ok(flags) = fcntl(borrowed.as_raw_fd(), FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        let _ = fcntl(borrowed.as_raw_fd(), FcntlArg::F_SETFL(flags));
    }
}

/// Creates and starts the container. The shim ignores SIGPIPE (Rust's default), and an
/// ignored signal stays ignored across exec: the container must start with the default.
fn create(
    args: &ShimArgs,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Container, String> {
    // SAFETY: single-threaded; restoring default dispositions installs no handler.
    unsafe {
        let _ = signal::signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
    let result = (|| {
        let mut container = ContainerBuilder::new(args.id.clone(), SyscallType::default())
            .with_root_path(&args.root)?
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .validate_id()?
            .as_init(&args.dir)
            .with_systemd(false)
            .with_detach(true)
            .build()?;
        container.start()?;
        Ok::<_, libcontainer::error::LibcontainerError>(container)
    })();
    // SAFETY: as above.
    unsafe {
        let _ = signal::signal(Signal::SIGPIPE, SigHandler::SigIgn);
    }
    result.map_err(|e| e.to_string())
}

impl Running {
    fn serve(mut self) -> Result<(), String> {
        // SIGCHLD through a signalfd: blocked only now, so the container did not inherit
        // the mask. A SIGCHLD that came before is caught by the first reap below.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| format!("sigprocmask: {e}"))?;
        let signals = SignalFd::with_flags(
            &mask,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .map_err(|e| format!("signalfd: {e}"))?;

        let mut out = Stream::new("stdout");
        let mut err = Stream::new("stderr");
        let mut waiters: Vec<UnixStream> = Vec::new();
        let mut exited: Option<(WaitStatus, SystemTime)> = None;
        let mut drain_until: Option<Instant> = None;

        loop {
            if exited.is_none() {
                exited = self.reap();
                if exited.is_some() {
                    drain_until = Some(Instant::now() + DRAIN);
                }
            }
            if let Some(deadline) = drain_until {
                if (self.stdout.is_none() && self.stderr.is_none()) || Instant::now() >= deadline {
                    break;
                }
            }
            let timeout: u16 = if drain_until.is_some() { 100 } else { 1000 };
            let (sig_ready, listen_ready, out_ready, err_ready) = {
                let mut fds = vec![
                    PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                ];
                let out_index = self.stdout.as_ref().map(|fd| {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                let err_index = self.stderr.as_ref().map(|fd| {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    fds.len() - 1
                });
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                let ready = |i: usize| fds[i].any().unwrap_or(false);
                (
                    ready(0),
                    ready(1),
                    out_index.is_some_and(ready),
                    err_index.is_some_and(ready),
                )
            };
            if sig_ready {
                while let Ok(Some(_)) = signals.read_signal() {}
            }
            if out_ready {
                self.read_output(true, &mut out);
            }
            if err_ready {
                self.read_output(false, &mut err);
            }
            if listen_ready {
                while let Ok((stream, _)) = self.listener.accept() {
                    if let Some(waiter) = self.request(stream, exited.is_some()) {
                        waiters.push(waiter);
                    }
                }
            }
        }

        for stream in [&mut out, &mut err] {
            if let Err(e) = stream.finish(&mut self.log) {
                eprintln!("writing the log: {e}");
            }
        }
        let (status, finished_at) = exited.ok_or("the loop ended without an exit")?;
        let oom = self.oom_killed();
        if let Err(e) = self.container.delete(true) {
            eprintln!("deleting the container: {e}");
        }
        let (exit_code, signal) = match status {
            WaitStatus::Exited(_, code) => (code, None),
            WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let reason = if oom {
            ExitReason::OOMKilled
        } else if exit_code == 0 {
            ExitReason::Completed
        } else {
            ExitReason::Error
        };
        let exit = Exit {
            exit_code,
            signal,
            reason,
            started_at: files::rfc3339_nano(self.started_at),
            finished_at: files::rfc3339_nano(finished_at),
        };
        files::write_json(&self.args.dir.join(files::EXIT), &exit)
            .map_err(|e| format!("cannot write exit.json: {e}"))?;
        let answer = Response {
            ok: true,
            pid: Some(self.pid.as_raw()),
            exit: Some(exit),
            ..Response::default()
        };
        for mut waiter in waiters {
            let _ = respond(&mut waiter, &answer);
        }
        let _ = std::fs::remove_file(self.args.dir.join(files::SOCKET));
        Ok(())
    }

    /// Reaps every exited child (the shim is a subreaper); returns the init's end.
    fn reap(&self) -> Option<(WaitStatus, SystemTime)> {
        let mut found = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(self.pid) {
                        found = Some((status, SystemTime::now()));
                    }
                }
            }
        }
        found
    }

    fn read_output(&mut self, is_stdout: bool, stream: &mut Stream) {
        let slot = if is_stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let Some(fd) = slot.as_ref() else { return };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    *slot = None;
                    return;
                }
                Ok(n) => {
                    if let Err(e) = stream.push(&mut self.log, &buf[..n]) {
                        eprintln!("writing the log: {e}");
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    eprintln!("reading the container's {}: {e}", stream.name);
                    *slot = None;
                    return;
                }
            }
        }
    }

    /// Answers one request; returns the connection if it waits for the exit.
    fn request(&mut self, stream: UnixStream, exited: bool) -> Option<UnixStream> {
        // A client gets a short, blocking read: the shim has no one else to serve meanwhile
        // except the log pipes, which the kernel buffers.
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            return None;
        }
        drop(reader);
        let mut stream = stream;
        let answer = match serde_json::from_str::<Request>(line.trim()) {
            Err(e) => Response::error(format!("bad request {:?}: {e}", line.trim())),
            Ok(Request::Status) => Response {
                ok: true,
                pid: Some(self.pid.as_raw()),
                ..Response::default()
            },
            Ok(Request::Kill { signal: number }) => self.kill(number, exited),
            Ok(Request::Wait) => return Some(stream),
        };
        let _ = respond(&mut stream, &answer);
        None
    }

    fn kill(&self, number: i32, exited: bool) -> Response {
        if exited {
            // Already ended; the exit is being recorded. Nothing left to signal.
            return Response {
                ok: true,
                ..Response::default()
            };
        }
        let sig = match Signal::try_from(number) {
            Ok(sig) => sig,
            Err(_) => return Response::error(format!("unknown signal {number}")),
        };
        // The init is the shim's unreaped child: its pid cannot have been reused.
        match signal::kill(self.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => Response {
                ok: true,
                ..Response::default()
            },
            Err(e) => Response::error(format!("kill {} {sig}: {e}", self.pid)),
        }
    }

    /// Did the kernel's OOM killer kill a process of this container's cgroup?
    fn oom_killed(&self) -> bool {
        let Some(path) = &self.cgroups_path else {
            return false;
        };
        let relative = path.strip_prefix("/").unwrap_or(path);
        let (file, dir) = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            ("memory.events", Path::new("/sys/fs/cgroup").join(relative))
        } else {
            (
                "memory.oom_control",
                Path::new("/sys/fs/cgroup/memory").join(relative),
            )
        };
        let mut text = String::new();
        if File::open(dir.join(file))
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            return false;
        }
        oom_kill_count(&text) > 0
    }
}

/// The `oom_kill N` line of cgroup v2 `memory.events` or v1 `memory.oom_control`.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

fn respond(stream: &mut UnixStream, answer: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

#[cfg(test)]
mod tests {
    #[test]
    fn oom_kill_count_reads_v1_and_v2() {
        assert_eq!(
            super::oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            2
        );
        assert_eq!(
            super::oom_kill_count("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            1
        );
        assert_eq!(super::oom_kill_count("oom_kill_disable 0\n"), 0);
    }
}
