//! `kedge shim exec`: one process joining a running container (runc exec), blocking and
//! single-threaded like the shim (libcontainer clones and runs Rust in the child).
//!
//! The agent runs it as its own child with the caller's stdio on pipes; the joined process
//! inherits those pipes (or, with `--console-socket`, a pty whose master libcontainer sends
//! to that socket). The process is built from the container's own `process` (user, cwd,
//! env, capabilities, rlimits, no_new_privileges) with the args replaced and the extra env
//! added. Fd 3, when open, is the handshake: `ok <pid>` or `error <message>`, then closed.
//! It then waits for the process and exits with its code (128 + signal for a signal); a
//! SIGTERM, SIGINT or SIGHUP to `kedge shim exec` kills the process (probe timeouts,
//! dropped sessions).

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use super::files;

/// The arguments of `kedge shim exec` (hidden; the agent's [`super::exec`] passes them).
#[derive(Clone, Debug, clap::Args)]
pub struct ExecArgs {
    /// The container directory (the OCI bundle with config.json)
    #[arg(long)]
    pub dir: PathBuf,
    /// The container id
    #[arg(long)]
    pub id: String,
    /// libcontainer's state root
    #[arg(long)]
    pub root: PathBuf,
    /// Give the process a terminal; its master goes to this unix socket (SCM_RIGHTS)
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Extra environment, KEY=VALUE (overrides the container's)
    #[arg(long)]
    pub env: Vec<String>,
    /// The command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// The handshake fd the agent passes (see the module doc).
const HANDSHAKE_FD: i32 = 3;

/// The `kedge shim exec` entry point. Must run before any thread exists.
pub fn exec_main(args: ExecArgs) -> ExitCode {
    // fd 3 is the handshake only if the agent opened it; keep it out of the container.
    let handshake = if nix::fcntl::fcntl(HANDSHAKE_FD, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
        let _ = nix::fcntl::fcntl(
            HANDSHAKE_FD,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        // SAFETY: fd 3 is open (checked above) and nothing else in this process owns it.
        Some(File::from(unsafe { OwnedFd::from_raw_fd(HANDSHAKE_FD) }))
    } else {
        None
    };
    let report = |handshake: Option<File>, line: &str| {
        if let Some(mut file) = handshake {
            let _ = writeln!(file, "{line}");
        } else if let Some(message) = line.strip_prefix("error ") {
            eprintln!("kedge shim exec: {message}");
        }
    };
    let pid = match join(&args) {
        Ok(pid) => pid,
        Err(message) => {
            report(handshake, &format!("error {}", message.replace('\n', " ")));
            return ExitCode::from(126);
        }
    };
    report(handshake, &format!("ok {pid}"));
    match wait(pid) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("kedge shim exec: {message}");
            ExitCode::from(255)
        }
    }
}

/// Starts the process in the container; returns its pid (a child of this process).
fn join(args: &ExecArgs) -> Result<nix::unistd::Pid, String> {
    let process_path = args.dir.join(format!("exec-{}.json", std::process::id()));
    let process = process_for(&args.dir, args)?;
    let json = serde_json::to_vec(&process).map_err(|e| format!("encoding the process: {e}"))?;
    std::fs::write(&process_path, json)
        .map_err(|e| format!("cannot write {}: {e}", process_path.display()))?;
    // The process must start with default dispositions (Rust ignores SIGPIPE).
    // SAFETY: single-threaded; restoring a default disposition installs no handler.
    unsafe {
        let _ = signal::signal(Signal::SIGPIPE, SigHandler::SigDfl);
    }
    let mut builder = ContainerBuilder::new(args.id.clone(), SyscallType::default());
    let result = (|| {
        builder = builder.with_root_path(&args.root)?;
        if let Some(socket) = &args.console_socket {
            builder = builder.with_console_socket(Some(socket));
        }
        builder
            .validate_id()?
            .as_tenant()
            .with_process(Some(&process_path))
            .with_detach(args.console_socket.is_some())
            .build()
    })();
    let _ = std::fs::remove_file(&process_path);
    result.map_err(|e| e.to_string())
}

/// The container's own process with the exec's args, env and terminal.
fn process_for(dir: &Path, args: &ExecArgs) -> Result<oci_spec::runtime::Process, String> {
    let config = dir.join(files::CONFIG);
    let spec = oci_spec::runtime::Spec::load(&config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| format!("{} has no process", config.display()))?;
    let mut env = process.env().clone().unwrap_or_default();
    let tty = args.console_socket.is_some();
    let extra: Vec<String> = if tty && !args.env.iter().any(|e| e.starts_with("TERM=")) {
        // As containerd does for `exec -t`: programs need a terminal type.
        let mut extra = args.env.clone();
        extra.push("TERM=xterm".into());
        extra
    } else {
        args.env.clone()
    };
    for entry in extra {
        let key = entry.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    process
        .set_args(Some(args.args.clone()))
        .set_env(Some(env))
        .set_terminal(Some(tty))
        .set_console_size(None);
    Ok(process)
}

/// Waits for `pid`; forwards SIGTERM/SIGINT/SIGHUP as SIGKILL. Returns the exit code.
fn wait(pid: nix::unistd::Pid) -> Result<u8, String> {
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    mask.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;
    let signals = SignalFd::new(&mask).map_err(|e| format!("signalfd: {e}"))?;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok((128 + sig as i32) as u8),
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for {pid}: {e}")),
        }
        match signals.read_signal() {
            Ok(Some(info)) if info.ssi_signo != Signal::SIGCHLD as u32 => {
                let _ = signal::kill(pid, Signal::SIGKILL);
            }
            Ok(_) => {}
            Err(e) => return Err(format!("signalfd: {e}")),
        }
    }
}
