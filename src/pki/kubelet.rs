//! The kubelet's certificates: its serving certificate (what the API server verifies when it
//! proxies logs, exec, attach and port-forward) and the CA it checks callers against. The
//! API server's side, its kubelet-client certificate, is issued with the rest of
//! [`super::ServerPki`].

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use super::ca::Ca;
use super::files::{ensure_dir, write_atomic};
use super::leaf::CertKeyPair;
use super::server::{ensure_leaf, LEAF_VALIDITY};
use super::tls::{chain_and_key, provider, roots};
use super::PkiError;

/// What a kubelet serves with: the cluster CA (to verify callers) and its serving pair.
#[derive(Clone, Debug)]
pub struct KubeletPki {
    pub ca_pem: String,
    pub serving: CertKeyPair,
}

/// The names a kubelet's serving certificate covers: the node name (a DNS SAN) and each
/// of its addresses.
pub fn kubelet_sans(node_name: &str, addresses: &[IpAddr]) -> Vec<String> {
    let mut sans = vec![node_name.to_string()];
    for address in addresses {
        let address = address.to_string();
        if !sans.contains(&address) {
            sans.push(address);
        }
    }
    sans
}

/// For a kubelet whose server holds the CA key (the local agent of a `kedge server`):
/// writes `ca.crt` and `kubelet.crt`/`kubelet.key` into `tls_dir` (created 0700), issuing
/// the serving certificate (CN `system:node:<node>`, O `system:nodes`) when missing, near
/// expiry, from another CA, or lacking one of the node's current names and addresses.
pub fn ensure_kubelet_pki(
    ca: &Ca,
    tls_dir: &Path,
    node_name: &str,
    addresses: &[IpAddr],
) -> Result<KubeletPki, PkiError> {
    ensure_dir(tls_dir, 0o700)?;
    write_atomic(&tls_dir.join("ca.crt"), ca.cert_pem().as_bytes(), 0o644)?;
    let sans = kubelet_sans(node_name, addresses);
    let serving = ensure_leaf(ca, tls_dir, "kubelet", &sans, || {
        ca.issue_kubelet_serving(node_name, &sans, LEAF_VALIDITY)
    })?;
    Ok(KubeletPki {
        ca_pem: ca.cert_pem().to_string(),
        serving,
    })
}

/// For a kubelet whose serving certificate a server issued at join (a `kedge agent`):
/// writes the files [`ensure_kubelet_pki`] writes, from the CA certificate and the pair.
pub fn save_kubelet_pki(
    tls_dir: &Path,
    ca_pem: &str,
    serving: CertKeyPair,
) -> Result<KubeletPki, PkiError> {
    ensure_dir(tls_dir, 0o700)?;
    write_atomic(&tls_dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
    serving.save(tls_dir, "kubelet")?;
    Ok(KubeletPki {
        ca_pem: ca_pem.to_string(),
        serving,
    })
}

/// The kubelet API's TLS: presents `serving`, and verifies client certificates against the
/// cluster CA when given. A caller without one completes the handshake and is answered 401
/// by the kubelet API (upstream's behaviour with anonymous auth off), not a TLS failure.
/// HTTP/1.1 only: the streaming endpoints are HTTP/1.1 upgrades.
pub fn kubelet_server_config(pki: &KubeletPki) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&pki.ca_pem)?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
    let (chain, key) = chain_and_key(&pki.serving)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| PkiError::Tls(format!("kubelet serving certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::leaf::inspect;
    use crate::pki::{ensure_server_pki, PkiOptions, ADMIN_GROUP, KUBELET_CLIENT_USER};

    #[test]
    fn the_kubelet_serving_certificate_names_the_node_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let tls = dir.path().join("agent/tls");
        let addresses: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap()];
        let first = ensure_kubelet_pki(&ca, &tls, "edge-1", &addresses).unwrap();
        let info = inspect(&first.serving.cert_pem);
        assert_eq!(info.common_name, "system:node:edge-1");
        assert_eq!(info.organizations, ["system:nodes"]);
        assert_eq!(info.sans, ["edge-1", "10.0.0.7"]);
        assert!(info.server_auth && !info.client_auth, "{info:?}");
        assert_eq!(
            std::fs::read_to_string(tls.join("ca.crt")).unwrap(),
            ca.cert_pem()
        );
        let again = ensure_kubelet_pki(&ca, &tls, "edge-1", &addresses).unwrap();
        assert_eq!(again.serving, first.serving);
        let moved =
            ensure_kubelet_pki(&ca, &tls, "edge-1", &["10.0.0.8".parse().unwrap()]).unwrap();
        assert_ne!(moved.serving, first.serving, "a new node IP re-issues it");
        kubelet_server_config(&moved).unwrap();
    }

    #[test]
    fn the_server_has_a_kubelet_client_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let options = PkiOptions {
            hostname: "edge-1".into(),
            extra_sans: vec![],
            service_ip: "10.43.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            host_addresses: vec!["127.0.0.1".parse().unwrap()],
        };
        let pki = ensure_server_pki(dir.path(), &options).unwrap();
        let info = inspect(&pki.kubelet_client.cert_pem);
        assert_eq!(info.common_name, KUBELET_CLIENT_USER);
        assert_eq!(info.organizations, [ADMIN_GROUP]);
        assert!(info.client_auth && !info.server_auth, "{info:?}");
        assert!(dir.path().join("kubelet-client.key").exists());
    }
}
