//! `kedge server`: assembles one server process.
//!
//! Owns: the order things start and stop in — certificates and token ([`crate::pki`]), the
//! listener, the Raft node and store ([`crate::raft`], [`crate::store`]), the API
//! ([`crate::api`]), the admin kubeconfig — and signal handling.
//!
//! Must not touch: how any of those work inside.

pub(crate) mod options;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Response};

pub use options::ServerOptions;

use crate::api::registry::Registry;
use crate::api::{self, Api, PeerService, Router};
use crate::auth::service_account::ServiceAccountTokens;
use crate::auth::Authenticator;
use crate::client::HttpsClient;
use crate::controllers;
use crate::kubelet;
use crate::pki;
use crate::raft::{self, RaftConfig, RaftNode};
use crate::scheduler;
use crate::store::encryption::Encryption;
use crate::store::Store;

/// Where Secrets are stored: encrypted at rest.
const SECRETS_PREFIX: &str = "/registry/core/secrets/";

/// The Raft transport mounted on the API port, for servers only.
struct RaftPeers(Arc<RaftNode>);

impl PeerService for RaftPeers {
    fn prefix(&self) -> &'static str {
        raft::wire::PREFIX
    }

    fn group(&self) -> &'static str {
        pki::SERVER_GROUP
    }

    fn handle(&self, method: Method, path: String, body: Bytes) -> BoxFuture<'_, Response<Bytes>> {
        Box::pin(async move { raft::service::handle(&self.0, &method, &path, body).await })
    }
}

/// The URL clients on this host use to reach the API.
fn local_url(options: &ServerOptions, port: u16) -> String {
    let ip = if options.bind_address.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        options.bind_address
    };
    url_for(ip, port)
}

fn url_for(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
        v4 => format!("https://{v4}:{port}"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
    }
}

/// Runs a server until SIGTERM or SIGINT.
pub async fn run(options: ServerOptions) -> anyhow::Result<()> {
    if let Some(url) = &options.server {
        bail!(
            "joining an existing server ({url}) is not supported by this build yet; \
             to form a cluster of several servers now, start each with --raft-id and the same --raft-peers"
        );
    }
    options.node.validate().map_err(anyhow::Error::msg)?;
    let kubeconfig_mode =
        pki::parse_file_mode(&options.write_kubeconfig_mode).with_context(|| {
            format!(
                "--write-kubeconfig-mode {:?}",
                options.write_kubeconfig_mode
            )
        })?;
    let service_network = options.service_network().map_err(anyhow::Error::msg)?;
    let cluster_network = options.cluster_network().map_err(anyhow::Error::msg)?;
    let service_ip = std::net::IpAddr::V4(service_network.first_ip());
    let server_dir = options.data_dir.join("server");
    create_private_dir(&options.data_dir)?;
    create_private_dir(&server_dir)?;

    let mut host_addresses = pki::host_addresses();
    host_addresses.push(options.advertise_ip());
    if !options.bind_address.is_unspecified() {
        host_addresses.push(options.bind_address);
    }
    let pki_options = pki::PkiOptions {
        hostname: hostname(),
        extra_sans: options.tls_san.clone(),
        service_ip,
        cluster_domain: options.cluster_domain.clone(),
        host_addresses,
    };
    let tls_dir = server_dir.join("tls");
    let certs = pki::ensure_server_pki(&tls_dir, &pki_options)
        .with_context(|| format!("setting up certificates in {}", tls_dir.display()))?;
    let token = pki::ensure_token(&server_dir, certs.ca.cert_pem(), options.token.as_deref())
        .with_context(|| format!("setting up the join token in {}", server_dir.display()))?;
    // The join endpoints sign node certificates with their own copy of the CA.
    let join_ca = pki::Ca::load(&tls_dir)
        .context("loading the CA for the join endpoints")?
        .context("the CA was just created but is missing")?;

    let addr = SocketAddr::new(options.bind_address, options.https_listen_port);
    let listener = api::server::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let port = listener
        .local_addr()
        .context("reading the bound port")?
        .port();

    let client = HttpsClient::new(
        pki::client_config(certs.ca.cert_pem(), Some(&certs.peer)).context("client TLS")?,
    );
    let own_url = url_for(options.advertise_ip(), port);
    let mut raft_config = RaftConfig::single(options.raft_id, &own_url, &server_dir.join("db"));
    raft_config.initial_members = options
        .initial_members(&own_url)
        .map_err(anyhow::Error::msg)?;
    raft_config.history_window = Duration::from_secs(options.store_history_seconds);
    raft_config.history_revisions = options.store_history_revisions;
    raft_config.snapshot_every = options.raft_snapshot_every;
    let node = RaftNode::start(raft_config, client)
        .await
        .context("starting the store")?;
    let encryption_key = pki::ensure_encryption_key(&server_dir)
        .context("setting up the key Secrets are encrypted with")?;
    let encryption = Encryption::new("key1", &encryption_key, vec![SECRETS_PREFIX.to_string()])
        .context("loading the encryption key")?;
    let store = Store::new(node.engine().clone(), node.clone()).with_encryption(encryption);

    let mut api = Api::new(store.clone(), Registry::builtin(), service_network);
    // metrics.k8s.io reads every node's kubelet /stats/summary, as metrics-server does.
    let kubelets = api::metrics::Kubelets {
        client: HttpsClient::new(
            pki::client_config(certs.ca.cert_pem(), Some(&certs.kubelet_client))
                .context("kubelet client TLS")?,
        ),
    };
    api::metrics::install(&mut api, Some(Arc::new(kubelets)));
    let service_account_key = pki::ensure_service_account_key(&tls_dir)
        .context("setting up the service account signing key")?;
    let tokens = Arc::new(
        ServiceAccountTokens::new(
            &service_account_key,
            &options.cluster_domain,
            Arc::new(api::rest::token::StoreLookup(store.clone())),
        )
        .context("loading the service account signing key")?,
    );
    api.authenticator = Authenticator::new(vec![tokens.clone()]);
    api.tokens = Some(tokens);
    api.kubelet = Some(Arc::new(
        api::proxy::KubeletClient::new(certs.ca.cert_pem(), &certs.kubelet_client)
            .context("kubelet client TLS")?,
    ));
    let api = Arc::new(api);
    let router = Arc::new(
        Router::new(
            api.clone(),
            api.authenticator.clone(),
            Some(Arc::new(RaftPeers(node.clone()))),
        )
        .with_open_service(Arc::new(kubelet::join::JoinService::new(
            join_ca,
            &token,
            cluster_network.clone(),
        ))),
    );
    // Written before the API answers: whoever sees it ready can use the kubeconfig.
    let kubeconfig_url = local_url(&options, port);
    pki::write_kubeconfig(
        &options.write_kubeconfig,
        kubeconfig_mode,
        &kubeconfig_url,
        certs.ca.cert_pem(),
        &certs.admin,
    )
    .with_context(|| {
        format!(
            "writing the kubeconfig {}",
            options.write_kubeconfig.display()
        )
    })?;
    tracing::info!(path = %options.write_kubeconfig.display(), "wrote the admin kubeconfig");

    let tls = Arc::new(pki::server_config(&certs.ca, &certs.serving).context("server TLS")?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(api::server::serve(listener, tls, router.clone(), async {
        let _ = stop_rx.await;
    }));
    tracing::info!(%addr, port, "kedge API listening");

    let background = {
        let api = api.clone();
        let advertise_ip = options.advertise_ip();
        let cluster_dns = cluster_network.cluster_dns;
        let event_ttl = options.event_ttl;
        // Stable across restarts (a restarted leader takes its lease back at once) and unique
        // among the servers of a cluster, even on one host.
        let identity = format!("{}_{}", hostname(), options.raft_id);
        let ca_pem = certs.ca.cert_pem().to_string();
        let (disable_scheduler, disable_controller_manager) = (
            options.disable_scheduler,
            options.disable_controller_manager,
        );
        // This host's node agent, an in-process client of the API as its node.
        let agent = (!options.disable_agent)
            .then(|| {
                let node_name = options.node.node_name();
                let client = crate::client::local::in_process(
                    router.clone(),
                    &kubelet::join::node_user(&node_name),
                    &[kubelet::join::NODES_GROUP],
                );
                let preferred_ip = options
                    .advertise_address
                    .or((!options.bind_address.is_unspecified()).then_some(options.bind_address));
                let mut config = kubelet::KubeletConfig::from_options(
                    client,
                    &options.node,
                    &options.data_dir,
                    cluster_network.clone(),
                    preferred_ip,
                    true,
                );
                // A server signs its own agent's kubelet serving certificate.
                let tls_dir = config.agent_dir.join("tls");
                config.kubelet_tls = Some(
                    pki::ensure_kubelet_pki(
                        &certs.ca,
                        &tls_dir,
                        &config.node_name,
                        &[config.node_ip],
                    )
                    .and_then(|pki| pki::kubelet_server_config(&pki))
                    .with_context(|| format!("kubelet certificates in {}", tls_dir.display()))?,
                );
                anyhow::Ok(config)
            })
            .transpose()?;
        for component in &options.disable {
            if let Some(why) = component.ignored_because() {
                tracing::warn!(
                    component = component.name(),
                    "--disable {}: {why}",
                    component.name()
                );
            }
        }
        let settings = controllers::Settings {
            service_lb: !options.disabled(options::Component::ServiceLb),
            cluster_cidr: options.cluster_cidr.clone(),
            node_monitor_grace_period: options.node_monitor_grace_period,
            storage: controllers::local_path::Storage {
                dir: options.data_dir.join("storage"),
                // The node on this host: this server's own agent, or a `kedge agent` beside it.
                local_node: Some(options.node.node_name()),
            },
        };
        tokio::spawn(async move {
            while !api.store.ready().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Every server tries; whoever is first creates them.
            while let Err(e) = api::bootstrap::ensure_namespaces(&api).await {
                tracing::warn!(error = %e, "creating the system namespaces failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            while let Err(e) = api::bootstrap::ensure_priority_classes(&api).await {
                tracing::warn!(error = %e, "creating the system PriorityClasses failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            while let Err(e) =
                api::bootstrap::ensure_kubernetes_service(&api, advertise_ip, port).await
            {
                tracing::warn!(error = %e, "creating the kubernetes Service failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            while let Err(e) = api::bootstrap::ensure_dns_service(&api, cluster_dns).await {
                tracing::warn!(error = %e, "creating the kube-dns Service failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tokio::spawn(api::services::reconcile::run(
                api.store.clone(),
                api.services.clone(),
            ));
            // A quarter of the TTL late at most, and no more than a sweep a minute.
            let sweep_every =
                (event_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            tokio::spawn(api::event_ttl::run(
                api.store.clone(),
                event_ttl,
                sweep_every,
            ));
            tracing::info!(revision = api.store.revision(), "kedge is ready");
            if let Some(config) = agent {
                tokio::spawn(async move {
                    if let Err(e) = kubelet::run(config).await {
                        tracing::error!(error = %e, "the node agent stopped");
                    }
                });
            }
            tokio::spawn(api::crd::run(api));
            if !disable_scheduler {
                tokio::spawn(scheduler::run(router.clone(), identity.clone()));
            }
            if !disable_controller_manager {
                controllers::run(router, identity, ca_pem, settings).await;
            }
        })
    };

    termination().await;
    background.abort();
    let _ = stop_tx.send(());
    let _ = serving.await;
    node.shutdown().await;
    Ok(())
}

/// Creates `dir` (mode 0700) if missing; an existing one keeps its mode.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}
