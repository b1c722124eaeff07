//! The cluster's PKI: the CA, the certificates it signs and their renewal, the join token,
//! the admin kubeconfig, and the rustls configurations built from them.
//!
//! Must not touch: the network or the store. Private keys are written 0600 and never logged.

mod ca;
mod files;
mod kubeconfig;
mod server;
mod tls;
mod token;

use std::path::Path;

pub use ca::{Ca, CertKeyPair, CA_VALIDITY};
pub use kubeconfig::{parse_file_mode, write_kubeconfig};
pub use server::{ensure_server_pki, host_addresses, PkiOptions, ServerPki, LEAF_VALIDITY, RENEW_BEFORE};
pub use tls::{client_config, server_config};
pub use token::{ensure_token, JoinToken};

/// O of the certificates servers present to each other.
pub const SERVER_GROUP: &str = "kedge:servers";
/// The admin user of the written kubeconfig ...
pub const ADMIN_USER: &str = "system:admin";
/// ... in Kubernetes' superuser group.
pub const ADMIN_GROUP: &str = "system:masters";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{verb} {path}: {source}")]
    Io {
        verb: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate: {0}")]
    Generate(String),
    #[error("parsing a certificate or key: {0}")]
    Parse(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("join token: {0}")]
    Token(String),
    #[error("file mode: {0}")]
    Mode(String),
}

impl PkiError {
    pub(crate) fn io(path: &Path, verb: &'static str, source: std::io::Error) -> PkiError {
        PkiError::Io {
            verb,
            path: path.display().to_string(),
            source,
        }
    }
}
