//! `kedge agent --server URL --token K10…`: the node agent alone, on a host without a
//! server. It joins as k3s' agents do ([`super::join`]): the CA from the server, checked
//! against the token's hash; a `system:node:<name>` client certificate for the token's
//! secret, and a serving certificate for its kubelet API (for the node's name and address);
//! the cluster's CIDRs and DNS settings; then the kubelet over HTTPS. Its files: `<data-dir>/agent/server-ca.crt`,
//! `client-kubelet.crt` and `client-kubelet.key` (0600), and `tls/` as a server's own agent
//! has it (`ca.crt`, `kubelet.crt`, `kubelet.key`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{create_private_dir, join, KubeletConfig, NodeOptions};
use crate::pki::{self, JoinToken};

/// `kedge agent` flags. Every flag also reads a `KEDGE_*` environment variable.
#[derive(Args, Clone, Debug)]
pub struct AgentOptions {
    /// URL of the server to join (https://host:6443)
    #[arg(long, short = 's', env = "KEDGE_URL")]
    pub server: String,

    /// The cluster's join token (K10…), as `kedge server` wrote it to <data-dir>/server/token
    #[arg(long, short = 't', env = "KEDGE_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Folder that holds the agent's state
    #[arg(
        long,
        short = 'd',
        env = "KEDGE_DATA_DIR",
        default_value = "/var/lib/kedge"
    )]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub node: NodeOptions,
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
    Ok(())
}

/// Joins the server and runs the node agent until SIGTERM or SIGINT.
pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    options.node.validate().map_err(anyhow::Error::msg)?;
    let server = options.server.trim_end_matches('/').to_string();
    if !server.starts_with("https://") {
        anyhow::bail!("--server {server:?} must be an https:// URL");
    }
    let token = JoinToken::parse(&options.token).context(
        "--token must be the full K10 token (from the server's <data-dir>/server/token): \
         its CA hash is how the agent knows it reached the right server",
    )?;
    let agent_dir = options.data_dir.join("agent");
    create_private_dir(&options.data_dir)?;
    create_private_dir(&agent_dir)?;
    let node_name = options.node.node_name();

    let ca_pem = join::fetch_ca(&server, &token)
        .await
        .with_context(|| format!("fetching the CA certificate of {server}"))?;
    std::fs::write(agent_dir.join("server-ca.crt"), &ca_pem)
        .with_context(|| format!("writing {}", agent_dir.join("server-ca.crt").display()))?;
    let identity = join::node_certificate(&server, &ca_pem, &token, &node_name)
        .await
        .with_context(|| format!("getting a client certificate for node {node_name}"))?;
    identity
        .save(&agent_dir, "client-kubelet")
        .context("saving the node's client certificate")?;
    // Only servers are configured with the cluster's CIDRs and DNS: the agent is told.
    let network = join::cluster_network(&server, &ca_pem, &token)
        .await
        .context("reading the cluster's network settings")?;
    tracing::info!(%server, node = %node_name, "joined the cluster");

    let tls = pki::client_config(&ca_pem, Some(&identity)).context("client TLS")?;
    let client = crate::client::remote::over_https(&server, tls).context("the API client")?;
    let mut config = KubeletConfig::from_options(
        client,
        &options.node,
        &options.data_dir,
        network,
        None,
        false,
    );
    // The API server dials the kubelet API at the node's address and checks its
    // certificate against the cluster CA: the server issues it.
    let serving =
        join::serving_certificate(&server, &ca_pem, &token, &node_name, &[config.node_ip])
            .await
            .with_context(|| {
                format!("getting a kubelet serving certificate for node {node_name}")
            })?;
    let tls_dir = agent_dir.join("tls");
    config.kubelet_tls = Some(
        pki::save_kubelet_pki(&tls_dir, &ca_pem, serving)
            .and_then(|pki| pki::kubelet_server_config(&pki))
            .with_context(|| format!("kubelet certificates in {}", tls_dir.display()))?,
    );
    tokio::select! {
        ended = super::run(config) => ended.context("the node agent stopped"),
        signalled = termination() => signalled,
    }
}
