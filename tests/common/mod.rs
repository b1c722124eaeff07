//! Shared harness of the integration tests: real `kedge server` processes on loopback, each
//! in its own temp data dir, and clients with certificates from their CA.
#![allow(dead_code)]

pub mod agent;
pub mod image;
pub mod kubectl;
pub mod node_net;
pub mod nodes;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kedge::client::HttpsClient;
use kedge::pki::{self, Ca, CertKeyPair};
use kedge::raft::remote::RemoteServer;

pub const KEDGE: &str = env!("CARGO_BIN_EXE_kedge");

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One `kedge server` process.
pub struct Server {
    pub data_dir: PathBuf,
    pub port: u16,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    starts: usize,
    /// The test host's network namespace the process runs in (None: the test's own).
    netns: Option<PathBuf>,
}

impl Server {
    /// A server in `data_dir` on `port`; not started.
    pub fn new(data_dir: &Path, port: u16, extra_args: &[String]) -> Server {
        let kubeconfig = data_dir.join("kubeconfig.yaml");
        let mut args = vec![
            "server".to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--https-listen-port".into(),
            port.to_string(),
            "--bind-address".into(),
            "127.0.0.1".into(),
            "--write-kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        // Control plane only: tests that run real containers add a node agent in a test
        // network namespace with `with_agent` (see `agent::Node`).
        args.push("--disable-agent".into());
        args.extend(extra_args.iter().cloned());
        Server {
            data_dir: data_dir.to_path_buf(),
            port,
            kubeconfig,
            log: data_dir.join("kedge.log"),
            args,
            child: None,
            starts: 0,
            netns: None,
        }
    }

    /// Runs the server inside the test host `host` (its network namespace), still without
    /// an agent. Its API is then reachable only from inside (`kubectl()` goes there).
    pub fn inside(mut self, host: &agent::TestHost) -> Server {
        self.netns = Some(host.netns().to_path_buf());
        self
    }

    /// Listens on every address of its host instead of only 127.0.0.1 (for agents in other
    /// test hosts, [`agent::TestHost::pair`]).
    pub fn listening_on_all(mut self) -> Server {
        if let Some(at) = self.args.iter().position(|a| a == "--bind-address") {
            self.args[at + 1] = "0.0.0.0".into();
        }
        self
    }

    /// Runs the server with its node agent in the test's own network namespace (for tests of
    /// the agent's API side that start no container; anything that runs pods uses
    /// [`Server::with_agent`]). Without the service proxy: it would program the machine's
    /// own namespace.
    pub fn with_local_agent(mut self) -> Server {
        // Before the agent creates its cgroup parents, to know whether it did.
        agent::preexisting_agent_cgroups();
        self.args.retain(|a| a != "--disable-agent");
        self.args.push("--disable-kube-proxy".into());
        self
    }

    /// Runs the server with its node agent inside the test host `host`, as node
    /// `host.name()` at `host.ip()`.
    pub fn with_agent(self, host: &agent::TestHost) -> Server {
        let mut server = self.with_local_agent();
        server.args.retain(|a| a != "--disable-kube-proxy");
        server.args.extend([
            "--node-name".to_string(),
            host.name().to_string(),
            "--node-ip".to_string(),
            host.ip().to_string(),
        ]);
        server.inside(host)
    }

    /// Starts the process (appending its output to `log`).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.starts += 1;
        let mut command = Command::new(KEDGE);
        if let Some(netns) = &self.netns {
            agent::enter_netns(&mut command, netns);
        }
        let child = command
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("kedge starts");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "kedge did not exit within 30 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("kedge exited with {status}; log:\n{}", self.log_text());
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The kubectl on PATH, as this server's admin.
    pub fn kubectl(&self) -> kubectl::Kubectl<'_> {
        kubectl::Kubectl {
            kubeconfig: &self.kubeconfig,
            binary: "kubectl",
            netns: self.netns.as_deref(),
        }
    }

    /// Writes a kubeconfig at `path` that reaches this server with only a bearer `token`
    /// (no client certificate).
    pub fn token_kubeconfig(&self, path: &Path, token: &str) {
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: u\n  user: {{token: \"{}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            self.url(),
            self.tls_dir().join("ca.crt").display(),
            token.trim()
        );
        std::fs::write(path, config).unwrap();
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("server/tls")
    }

    /// A client with this server's admin certificate.
    pub fn admin_client(&self) -> HttpsClient {
        let tls = self.tls_dir();
        let ca = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
        let admin = CertKeyPair::load(&tls, "admin").unwrap().unwrap();
        HttpsClient::new(pki::client_config(&ca, Some(&admin)).unwrap())
    }

    /// A kube-rs client with this server's admin certificate.
    pub fn kube_client(&self) -> kube::Client {
        let tls = self.tls_dir();
        let ca = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
        let admin = CertKeyPair::load(&tls, "admin").unwrap().unwrap();
        let config = pki::client_config(&ca, Some(&admin)).unwrap();
        kedge::client::remote::over_https(&self.url(), config).unwrap()
    }

    async fn answers_ready(&self) -> bool {
        self.admin_client()
            .get(&format!("{}/readyz", self.url()), Duration::from_secs(3))
            .await
            .is_ok_and(|r| r.status == 200)
    }

    /// Waits until `/readyz` answers 200 (panics with the log after `timeout`).
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "kedge exited with {status} while starting; log:\n{}",
                        self.log_text()
                    );
                }
            }
            // The certificate is written after the key: both are there once it is.
            if self.tls_dir().join("admin.crt").exists() {
                let ready = match &self.netns {
                    None => self.answers_ready().await,
                    // The API listens on the host's 127.0.0.1: ask from in there.
                    Some(netns) => agent::in_netns(netns, || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap()
                            .block_on(self.answers_ready())
                    }),
                };
                if ready {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "kedge not ready within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.args.iter().any(|a| a == "--disable-agent") {
            agent::remove_agent_cgroup_parents();
        }
    }
}

/// `count` servers of one cluster under `root`, sharing `ca`, the service account signing
/// key and the Secrets encryption key (servers of a cluster share them; joining will hand
/// them over in a later release), with static Raft membership when there are several. Not
/// started.
pub fn cluster(root: &Path, ca: &Ca, count: usize, extra_args: &[&str]) -> Vec<Server> {
    let shared = root.join("shared-keys");
    std::fs::create_dir_all(&shared).unwrap();
    kedge::pki::ensure_encryption_key(&shared).unwrap();
    kedge::pki::ensure_service_account_key(&shared).unwrap();
    let ports: Vec<u16> = (0..count).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=https://127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let dir = root.join(format!("server-{}", i + 1));
            ca.save(&dir.join("server/tls")).unwrap();
            std::fs::copy(
                shared.join(kedge::pki::ENCRYPTION_KEY),
                dir.join("server").join(kedge::pki::ENCRYPTION_KEY),
            )
            .unwrap();
            std::fs::copy(
                shared.join(kedge::pki::SERVICE_ACCOUNT_KEY),
                dir.join("server/tls").join(kedge::pki::SERVICE_ACCOUNT_KEY),
            )
            .unwrap();
            let mut args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
            if count > 1 {
                args.extend([
                    "--raft-id".to_string(),
                    (i + 1).to_string(),
                    "--raft-peers".to_string(),
                    peers.clone(),
                ]);
            }
            Server::new(&dir, *port, &args)
        })
        .collect()
}

/// A client that servers accept as one of their own (group kedge:servers), from `ca`.
pub fn server_identity_client(ca: &Ca) -> HttpsClient {
    let identity = ca
        .issue_client(
            "kedge-test",
            &[pki::SERVER_GROUP],
            Duration::from_secs(3600),
        )
        .unwrap();
    HttpsClient::new(pki::client_config(ca.cert_pem(), Some(&identity)).unwrap())
}

/// A client for a server's store endpoints, with an identity from the server's own CA.
pub fn store_client(server: &Server) -> RemoteServer {
    let ca = Ca::load(&server.tls_dir())
        .unwrap()
        .expect("the server created its CA");
    RemoteServer::new(server_identity_client(&ca), &server.url())
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the tail of each server log if the test fails, so a CI failure explains itself.
pub struct LogDump(pub Vec<PathBuf>);

impl Drop for LogDump {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in &self.0 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("==== last lines of {}", log.display());
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A started, ready single server in `dir`, its controllers through their first pass: the
/// `default` namespace has what every namespace gets (its `default` ServiceAccount and the
/// `kube-root-ca.crt` ConfigMap), so that tests start from what a settled cluster shows.
pub async fn started_server(dir: &Path) -> Server {
    started_server_with(dir, &[]).await
}

/// [`started_server`] with extra `kedge server` flags.
pub async fn started_server_with(dir: &Path, args: &[&str]) -> Server {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut server = Server::new(dir, free_port(), &args);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let client = server.admin_client();
    for object in ["configmaps/kube-root-ca.crt", "serviceaccounts/default"] {
        let url = format!("{}/api/v1/namespaces/default/{object}", server.url());
        eventually(Duration::from_secs(30), &url, || async {
            client
                .get(&url, Duration::from_secs(3))
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
    }
    server
}

/// A started server in `dir` (see [`started_server`]) with `nodes` simulated, their leases
/// renewed every 2 s; the server's log is printed if the test fails while the [`LogDump`]
/// lives.
pub async fn server_with_nodes(
    dir: &Path,
    nodes: Vec<nodes::NodeSpec>,
) -> (Server, LogDump, nodes::SimulatedNodes) {
    let server = started_server(dir).await;
    let logs = LogDump(vec![server.log.clone()]);
    let nodes =
        nodes::SimulatedNodes::start(server.kube_client(), nodes, Duration::from_secs(2)).await;
    (server, logs, nodes)
}

/// Resident memory of process `pid`, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
