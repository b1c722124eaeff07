//! One container, one `kedge shim` process: the shim creates and starts the container with
//! youki's libcontainer, holds its stdio, writes its CRI-format log, reaps it, records how it
//! ended (`exit.json`), deletes it and exits. Containers outlive the agent (DESIGN.md rule 4):
//! the shim is detached from it (own session, not its child) and everything the agent needs
//! later is a file in the container directory or an answer on `shim.sock`.
//!
//! Owns: the `kedge shim` process ([`shim_main`], blocking, single-threaded, no tokio: it
//! must be, for libcontainer clones and runs Rust in the child), the agent's async client
//! ([`start`], [`status`], [`kill`], [`wait`], [`remove`], [`attach`], [`resize`]), the
//! control protocol ([`protocol`]) and the files `state.json`, `exit.json`, `shim.pid`
//! ([`files`]); exec: `kedge shim exec` ([`exec_main`], libcontainer's tenant builder), run
//! by the agent as its own child ([`exec`], [`exec_output`]), and pty handling.
//!
//! Must not touch: images and the rootfs mount (part A's `images`; [`remove`] only detaches
//! a rootfs still mounted so that removing the directory cannot reach into the image),
//! pod cgroups (only the container's own leaf cgroup, through libcontainer), Kubernetes types.

mod attach;
mod client;
mod daemon;
mod exec;
mod exec_client;
pub mod files;
mod logs;
pub mod protocol;
mod pty;

use std::path::PathBuf;
use std::time::SystemTime;

pub use attach::{attach, resize, AttachStreams};
pub use client::{kill, remove, set_shim_binary, start, status, wait};
pub use daemon::shim_main;
pub use exec::{exec_main, ExecArgs};
pub use exec_client::{
    exec, exec_output, ExecProcess, ExecReader, ExecRequest, ExecWriter, Resizer,
};

/// `kedge shim ...`: run one container ([`ShimArgs`]) or `kedge shim exec ...` ([`ExecArgs`]).
#[derive(Clone, Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ShimCommand {
    #[command(subcommand)]
    pub exec: Option<ShimSubcommand>,
    #[command(flatten)]
    pub run: Option<ShimArgs>,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum ShimSubcommand {
    /// Run a process in a running container (started by the node agent)
    Exec(ExecArgs),
}

/// The `kedge shim` entry point: dispatches to [`shim_main`] or [`exec_main`]. Must run
/// before any thread exists.
pub fn shim_command(command: ShimCommand) -> std::process::ExitCode {
    match (command.exec, command.run) {
        (Some(ShimSubcommand::Exec(args)), _) => exec_main(args),
        (None, Some(args)) => shim_main(args),
        (None, None) => {
            eprintln!("kedge shim: --dir, --id, --root and --log-path are required");
            std::process::ExitCode::from(2)
        }
    }
}

/// Where the container's log goes and how it rotates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimOptions {
    /// `<agent>/logs/<ns>_<pod>_<uid>/<container>/<restartCount>.log`
    pub log_path: PathBuf,
    /// Rotate when the file would pass this size (kubelet's containerLogMaxSize).
    pub log_max_bytes: u64,
    /// Files kept, the live one included (kubelet's containerLogMaxFiles).
    pub log_max_files: u32,
}

/// The arguments of `kedge shim` (hidden; the agent passes them, see [`start`]).
#[derive(Clone, Debug, clap::Args)]
pub struct ShimArgs {
    /// The container directory (`<agent>/containers/<id>`, the OCI bundle)
    #[arg(long)]
    pub dir: PathBuf,
    /// The container id
    #[arg(long)]
    pub id: String,
    /// libcontainer's state root (`<agent>/libcontainer`)
    #[arg(long)]
    pub root: PathBuf,
    /// The CRI log file
    #[arg(long)]
    pub log_path: PathBuf,
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    pub log_max_bytes: u64,
    #[arg(long, default_value_t = 5)]
    pub log_max_files: u32,
    /// Give the container a stdin pipe (held open by the shim) instead of /dev/null
    #[arg(long)]
    pub stdin: bool,
    /// Close the container's stdin after the first attach ends (next stage: attach)
    #[arg(long)]
    pub stdin_once: bool,
}

/// What the agent can know about a container from its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// config.json written, the shim is starting it.
    Created,
    Running {
        pid: i32,
        started_at: SystemTime,
    },
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        reason: ExitReason,
        started_at: SystemTime,
        finished_at: SystemTime,
    },
    /// No shim and no record of an exit (never started, or the shim died).
    Unknown,
}

/// Why a container ended, as the kubelet reports it in `state.terminated.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitReason {
    Completed,
    Error,
    OOMKilled,
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Spec(#[from] crate::runtime::spec::SpecError),
    /// The container could not be started; the message is libcontainer's.
    #[error("starting the container failed: {0}")]
    Start(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim of {} is not running (no exit recorded): {detail}", dir.display())]
    NotRunning { dir: PathBuf, detail: String },
    #[error("the container in {} is still running; kill it and wait first", dir.display())]
    StillRunning { dir: PathBuf },
    #[error("the exec in {} did not end within {after:?}; it was killed", dir.display())]
    Timeout {
        dir: PathBuf,
        after: std::time::Duration,
    },
    #[error("the shim of {} answered: {message}", dir.display())]
    Shim { dir: PathBuf, message: String },
}

impl ShimError {
    fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
