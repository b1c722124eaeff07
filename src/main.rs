//! The `kedge` command line: one binary for every role.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use kedge::kubelet::agent::{self, AgentOptions};
use kedge::server::{self, ServerOptions};

/// A whole Kubernetes cluster in one binary.
#[derive(Parser)]
#[command(name = "kedge", version, about, propagate_version = true)]
struct Cli {
    /// Log format
    #[arg(
        long,
        global = true,
        env = "KEDGE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: the Kubernetes API on a replicated store
    Server(Box<ServerOptions>),
    /// Run a node agent (kubelet) that joins a server
    Agent(Box<AgentOptions>),
    /// Run kubectl (found on PATH) against this host's cluster
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments passed to kubectl unchanged
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Import, list, remove and pull images of this node's image store
    Images(kedge::runtime::images::cli::ImagesArgs),
    /// Stop every container of this node and remove its mounts, pod network and service
    /// rules (as k3s-killall.sh; the server or agent must be stopped first)
    Killall(kedge::kubelet::killall::KillallArgs),
    /// Run one container (started by the node agent, not by hand)
    #[command(hide = true)]
    Shim(Box<kedge::runtime::shim::ShimCommand>),
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // openraft is chatty at info level about routine elections and snapshots.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Replaces this process with kubectl, pointed at the kedge kubeconfig unless the caller
/// chose one.
fn kubectl(args: Vec<OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new("kubectl");
    command.args(&args);
    let chose_kubeconfig = std::env::var_os("KUBECONFIG").is_some()
        || args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == "--kubeconfig" || a.starts_with("--kubeconfig="))
        });
    if !chose_kubeconfig {
        let path = std::env::var_os("KEDGE_KUBECONFIG_OUTPUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/kedge/kedge.yaml"));
        command.env("KUBECONFIG", path);
    }
    let error = command.exec();
    eprintln!("kedge: cannot run kubectl: {error} (is kubectl installed and on PATH?)");
    ExitCode::from(127)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Before any runtime or logging thread: the shim forks and libcontainer clones, which
        // is only sound single-threaded.
        Command::Shim(args) => kedge::runtime::shim::shim_command(*args),
        Command::Kubectl { args } => kubectl(args),
        Command::Images(args) => kedge::runtime::images::cli::run(args),
        Command::Killall(args) => kedge::kubelet::killall::run(args),
        Command::Server(options) => {
            init_logging(cli.log_format);
            let Some(_lock) = lock_data_dir(&options.data_dir) else {
                return ExitCode::FAILURE;
            };
            block_on(server::run(*options))
        }
        Command::Agent(options) => {
            init_logging(cli.log_format);
            let Some(_lock) = lock_data_dir(&options.data_dir) else {
                return ExitCode::FAILURE;
            };
            block_on(agent::run(*options))
        }
    }
}

/// The data dir's lock, held while the server or agent runs (`kedge killall` refuses while
/// it is held); reports why not.
fn lock_data_dir(data_dir: &std::path::Path) -> Option<kedge::kubelet::killall::DataDirLock> {
    kedge::kubelet::killall::lock_data_dir(data_dir)
        .map_err(|e| eprintln!("kedge: error: {e}"))
        .ok()
}

/// Runs `task` on a multi-threaded tokio runtime and reports its error.
fn block_on(task: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kedge: error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(task);
    // Tasks still running (components' loops, blocking reads) must not hold the exit up:
    // everything that needs flushing was flushed before `task` returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kedge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
