//! The cluster's PKI: the CA, the leaf certificates it signs and their renewal, the join
//! token, the admin kubeconfig, and the rustls configurations built from them.
//!
//! Owns the files under `<data-dir>/server/tls/`, `<data-dir>/server/token` and the written
//! kubeconfig. Must not touch: the network or the store (callers pass host addresses in and
//! take rustls configs out). Private keys are created 0600 and never logged; neither is the
//! token's secret.

mod ca;
mod files;
mod kubeconfig;
mod kubelet;
mod leaf;
mod options;
mod server;
mod service_account;
mod subject;
mod tls;
mod token;

use std::path::Path;

pub use ca::{Ca, CA_VALIDITY};
pub use kubeconfig::{parse_file_mode, write_kubeconfig};
pub use kubelet::{
    ensure_kubelet_pki, kubelet_sans, kubelet_server_config, save_kubelet_pki, KubeletPki,
};
#[cfg(test)]
pub(crate) use leaf::inspect;
pub use leaf::CertKeyPair;
pub use options::{host_addresses, PkiOptions};
pub use server::{ensure_server_pki, ServerPki, LEAF_VALIDITY, RENEW_BEFORE};
pub use service_account::{
    ensure_encryption_key, ensure_service_account_key, ENCRYPTION_KEY, SERVICE_ACCOUNT_KEY,
};
pub use tls::{client_config, server_config, UnverifiedServer};
pub use token::{ensure_token, JoinToken};

/// O of the certificates servers present to each other, so a server can tell a peer
/// server from a user.
pub const SERVER_GROUP: &str = "kedge:servers";
/// CN of the admin client certificate in the written kubeconfig.
pub const ADMIN_USER: &str = "system:admin";
/// O of the admin certificate: Kubernetes' superuser group, bound to cluster-admin.
pub const ADMIN_GROUP: &str = "system:masters";
/// CN of the client certificate the API server presents to kubelets (upstream's name).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
/// Prefix of a node's user name (`system:node:<node>`), as upstream's node authorizer.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The group of every node's identity.
pub const NODES_GROUP: &str = "system:nodes";

/// What went wrong in the PKI, with the file or the step it happened in.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory could not be read, written or created.
    #[error("{verb} {path}: {source}")]
    Io {
        verb: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Something went wrong while reading a particular file; `source` says what.
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: Box<PkiError>,
    },
    /// rcgen refused to generate a key or sign a certificate.
    #[error("generating a certificate: {0}")]
    Generate(String),
    /// A certificate or key is not valid PEM/DER, or the key does not belong to the
    /// certificate.
    #[error("parsing a certificate or key: {0}")]
    Parse(String),
    /// Only one of a certificate and its key exists: kedge will not silently replace the
    /// other half (for the CA that would orphan every certificate it signed).
    #[error(
        "{present} exists but {missing} does not; restore it, or remove both to create new ones"
    )]
    Incomplete { present: String, missing: String },
    /// rustls rejected the certificates or settings.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A join token is malformed, made for another CA, or conflicts with the stored one.
    #[error("join token: {0}")]
    Token(String),
    /// A file mode string such as `--write-kubeconfig-mode` is not valid.
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

    /// Adds the file the error happened in.
    pub(crate) fn in_file(self, path: &Path) -> PkiError {
        PkiError::InFile {
            path: path.display().to_string(),
            source: Box::new(self),
        }
    }
}
