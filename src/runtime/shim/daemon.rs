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
use super::protocol::{self, Request, Response};
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
    /// The write end of the container's stdin (a tty's master), held open so that the
    /// container does not see EOF before someone attaches; non-blocking.
    stdin: Option<OwnedFd>,
    /// Attached input not yet taken by the container.
    stdin_pending: Vec<u8>,
    /// Close stdin once `stdin_pending` is written (stdinOnce).
    stdin_closing: bool,
    /// The tty's master, for resizing.
    console: Option<OwnedFd>,
    tty: bool,
    clients: Vec<Client>,
    log: LogFile,
}

/// One attached connection.
struct Client {
    stream: UnixStream,
    /// Frames not yet written (the client reads slower than the container writes).
    out: Vec<u8>,
    /// Bytes read but not yet a whole frame.
    input: Vec<u8>,
    /// It was given stdin (and has not ended it).
    stdin: bool,
}

/// A client that falls this far behind is detached rather than stalling the container.
const CLIENT_BACKLOG: usize = 8 << 20;
/// Attached input buffered for a container that does not read it.
const STDIN_BACKLOG: usize = 1 << 20;

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

    let tty = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let null = || -> Result<OwnedFd, String> {
        Ok(File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?
            .into())
    };
    let (container, stdout_r, stderr_r, stdin_w, console) = if tty {
        // libcontainer's init sends the pty master to this socket while it is created.
        let console_path = dir.join("console.sock");
        let _ = std::fs::remove_file(&console_path);
        let console_listener = UnixListener::bind(&console_path)
            .map_err(|e| format!("cannot bind {}: {e}", console_path.display()))?;
        let created = create(args, null()?, null()?, null()?, Some(&console_path));
        let _ = std::fs::remove_file(&console_path);
        let container = created?;
        let master = receive_console(&console_listener)?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        let stdin = if args.stdin {
            Some(dup(&master)?)
        } else {
            None
        };
        let console = dup(&master)?;
        (container, master, None, stdin, Some(console))
    } else {
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (stdin_r, stdin_w): (OwnedFd, Option<OwnedFd>) = if args.stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (null()?, None)
        };
        let container = create(args, stdin_r, stdout_w, stderr_w, None)?;
        (container, stdout_r, Some(stderr_r), stdin_w, None)
    };
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

    for fd in [Some(&stdout_r), stderr_r.as_ref(), stdin_w.as_ref()]
        .into_iter()
        .flatten()
    {
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
        stderr: stderr_r,
        stdin: stdin_w,
        stdin_pending: Vec::new(),
        stdin_closing: false,
        console,
        tty,
        clients: Vec::new(),
        log,
    })
}

/// Accepts libcontainer's console-socket connection and takes the pty master from it.
fn receive_console(listener: &UnixListener) -> Result<OwnedFd, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(format!("no terminal came from the container: {e}")),
        }
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    super::pty::recv_fd(stream.as_raw_fd()).map_err(|e| format!("receiving the terminal: {e}"))
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
    console_socket: Option<&Path>,
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
            .with_console_socket(console_socket)
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
            let ready = self.poll(&signals, timeout)?;
            if ready.signals {
                while let Ok(Some(_)) = signals.read_signal() {}
            }
            if ready.stdout {
                self.read_output(true, &mut out);
            }
            if ready.stderr {
                self.read_output(false, &mut err);
            }
            if ready.stdin {
                self.flush_stdin();
            }
            for index in ready.clients.into_iter().rev() {
                if !self.serve_client(index) {
                    self.detach(index);
                }
            }
            if ready.listener {
                while let Ok((stream, _)) = self.listener.accept() {
                    if let Some(waiter) = self.request(stream, exited.is_some()) {
                        waiters.push(waiter);
                    }
                }
            }
        }
        // Attached clients see the end of the output as the connection closing.
        for client in &mut self.clients {
            let _ = client.stream.set_nonblocking(false);
            let _ = client
                .stream
                .set_write_timeout(Some(Duration::from_secs(1)));
            let _ = client.stream.write_all(&client.out);
        }
        self.clients.clear();

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

    /// Waits (poll) for anything to do; which fds are ready.
    fn poll(&self, signals: &SignalFd, timeout: u16) -> Result<Ready, String> {
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        fn push<'a>(fds: &mut Vec<PollFd<'a>>, fd: Option<PollFd<'a>>) -> Option<usize> {
            fd.map(|fd| {
                fds.push(fd);
                fds.len() - 1
            })
        }
        let out_index = push(
            &mut fds,
            self.stdout
                .as_ref()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let err_index = push(
            &mut fds,
            self.stderr
                .as_ref()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let stdin_index = push(
            &mut fds,
            self.stdin
                .as_ref()
                .filter(|_| !self.stdin_pending.is_empty())
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLOUT)),
        );
        let first_client = fds.len();
        let take_input = self.stdin_pending.len() < STDIN_BACKLOG;
        for client in &self.clients {
            let mut flags = PollFlags::empty();
            if take_input {
                flags |= PollFlags::POLLIN;
            }
            if !client.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(client.stream.as_fd(), flags));
        }
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |i: usize| fds[i].any().unwrap_or(false);
        Ok(Ready {
            signals: ready(0),
            listener: ready(1),
            stdout: out_index.is_some_and(ready),
            stderr: err_index.is_some_and(ready),
            stdin: stdin_index.is_some_and(ready),
            clients: (first_client..fds.len())
                .filter(|i| ready(*i))
                .map(|i| i - first_client)
                .collect(),
        })
    }

    /// Queues output for every attached client and writes what each can take now.
    fn broadcast(&mut self, is_stdout: bool, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let stream = if is_stdout {
            protocol::STDOUT
        } else {
            protocol::STDERR
        };
        for index in (0..self.clients.len()).rev() {
            let client = &mut self.clients[index];
            protocol::frame(&mut client.out, stream, data);
            if !client.flush() || client.out.len() > CLIENT_BACKLOG {
                self.detach(index);
            }
        }
    }

    /// Handles a ready client: its pending output, its input. False: it is gone.
    fn serve_client(&mut self, index: usize) -> bool {
        if !self.clients[index].flush() {
            return false;
        }
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.clients[index].stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.clients[index].input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if self.clients[index].input.len() >= STDIN_BACKLOG {
                break;
            }
        }
        // Whole frames: stdin data, or an empty one for the end of input.
        let mut input = std::mem::take(&mut self.clients[index].input);
        let mut used = 0;
        while input.len() - used >= protocol::HEADER {
            let header = &input[used..used + protocol::HEADER];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if input.len() - used - protocol::HEADER < len {
                break;
            }
            let kind = header[0];
            let payload = &input[used + protocol::HEADER..used + protocol::HEADER + len];
            if kind == protocol::STDIN && self.clients[index].stdin {
                if payload.is_empty() {
                    self.clients[index].stdin = false;
                    if self.args.stdin_once {
                        self.stdin_closing = true;
                    }
                } else if self.stdin.is_some() && !self.stdin_closing {
                    self.stdin_pending.extend_from_slice(payload);
                }
            }
            used += protocol::HEADER + len;
        }
        input.drain(..used);
        self.clients[index].input = input;
        self.flush_stdin();
        true
    }

    /// A client went away; with stdinOnce the container's stdin ends with its first one.
    fn detach(&mut self, index: usize) {
        let client = self.clients.swap_remove(index);
        if client.stdin && self.args.stdin_once {
            self.stdin_closing = true;
            self.flush_stdin();
        }
    }

    /// Writes pending attached input to the container; closes its stdin when asked to.
    fn flush_stdin(&mut self) {
        let Some(fd) = self.stdin.as_ref() else {
            self.stdin_pending.clear();
            return;
        };
        while !self.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // The container closed its end: nothing more can be delivered.
                    self.stdin_pending.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.stdin_closing {
            self.stdin = None;
        }
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
            &self.stdout
        } else {
            &self.stderr
        };
        let Some(fd) = slot.as_ref().map(|fd| fd.as_raw_fd()) else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        let close = loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    if let Err(e) = stream.push(&mut self.log, &buf[..n]) {
                        eprintln!("writing the log: {e}");
                    }
                    self.broadcast(is_stdout, &buf[..n]);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break false,
                // A tty's master once the last holder of its other side is gone.
                Err(Errno::EIO) if self.tty => break true,
                Err(e) => {
                    eprintln!("reading the container's {}: {e}", stream.name);
                    break true;
                }
            }
        };
        if close {
            if is_stdout {
                self.stdout = None;
            } else {
                self.stderr = None;
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
            Ok(Request::Resize { cols, rows }) => match &self.console {
                Some(console) => match super::pty::resize(console.as_raw_fd(), cols, rows) {
                    Ok(()) => Response {
                        ok: true,
                        ..Response::default()
                    },
                    Err(e) => Response::error(format!("resize: {e}")),
                },
                None => Response::error("the container has no terminal"),
            },
            Ok(Request::Attach) if exited => Response::error("the container has ended"),
            Ok(Request::Attach) => {
                let stdin = self.stdin.is_some() && !self.stdin_closing;
                let answer = Response {
                    ok: true,
                    tty: Some(self.tty),
                    stdin: Some(stdin),
                    ..Response::default()
                };
                if respond(&mut stream, &answer).is_ok() && stream.set_nonblocking(true).is_ok() {
                    self.clients.push(Client {
                        stream,
                        out: Vec::new(),
                        input: Vec::new(),
                        stdin,
                    });
                }
                return None;
            }
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

struct Ready {
    signals: bool,
    listener: bool,
    stdout: bool,
    stderr: bool,
    stdin: bool,
    /// Indices into `clients`, ascending.
    clients: Vec<usize>,
}

impl Client {
    /// Writes what the connection takes now; false if it is gone.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }
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
