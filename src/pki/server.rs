//! The certificates of a `kedge server`: created on first start, reused after, re-issued at
//! start when they near expiry, no longer cover the host's names, or no longer fit the CA.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use super::ca::Ca;
use super::files::ensure_dir;
use super::leaf::CertKeyPair;
use super::options::{normalize, PkiOptions};
use super::{PkiError, ADMIN_GROUP, ADMIN_USER, KUBELET_CLIENT_USER, SERVER_GROUP};

/// Leaf certificates are valid this long ...
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// ... and re-issued at start when they expire within this (k3s' rule), so a server that
/// restarts at least every nine months never serves an expired certificate.
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// CN of the serving certificate, as upstream's apiserver uses.
const SERVING_CN: &str = "kube-apiserver";

/// Everything `kedge server` needs to serve and to call its peers.
#[derive(Debug)]
pub struct ServerPki {
    /// The cluster CA (with its key: the server signs node certificates).
    pub ca: Ca,
    /// What the API presents (`serving.crt`/`serving.key`).
    pub serving: CertKeyPair,
    /// `system:admin` in `system:masters`, for the written kubeconfig.
    pub admin: CertKeyPair,
    /// `kedge-server:<hostname>` in [`SERVER_GROUP`], for server-to-server calls.
    pub peer: CertKeyPair,
    /// [`KUBELET_CLIENT_USER`] in `system:masters`: what the API server presents to kubelets
    /// when it proxies logs, exec, attach and port-forward (`kubelet-client.crt`).
    pub kubelet_client: CertKeyPair,
}

/// Loads `tls_dir` (created 0700 if missing), creates what is missing, and re-issues any
/// leaf that expires within [`RENEW_BEFORE`], was not signed by the CA, has a key that does
/// not match, cannot be parsed, or (serving and peer) lacks one of
/// [`PkiOptions::serving_sans`]. The CA is never replaced once it exists. Files: `ca`,
/// `serving`, `admin`, `peer`, each `.crt` (0644) and `.key` (0600). Leaves are valid for
/// [`LEAF_VALIDITY`].
pub fn ensure_server_pki(tls_dir: &Path, options: &PkiOptions) -> Result<ServerPki, PkiError> {
    ensure_dir(tls_dir, 0o700)?;
    let ca = match Ca::load(tls_dir)? {
        Some(ca) => ca,
        None => {
            let ca = Ca::generate()?;
            ca.save(tls_dir)?;
            tracing::info!(dir = %tls_dir.display(), "created the cluster CA");
            ca
        }
    };
    let sans = options.serving_sans();
    let serving = ensure_leaf(&ca, tls_dir, "serving", &sans, || {
        ca.issue_serving(SERVING_CN, &sans, LEAF_VALIDITY)
    })?;
    let admin = ensure_leaf(&ca, tls_dir, "admin", &[], || {
        ca.issue_client(ADMIN_USER, &[ADMIN_GROUP], LEAF_VALIDITY)
    })?;
    let peer_name = format!("kedge-server:{}", options.hostname);
    let peer = ensure_leaf(&ca, tls_dir, "peer", &sans, || {
        ca.issue_peer(&peer_name, &[SERVER_GROUP], &sans, LEAF_VALIDITY)
    })?;
    let kubelet_client = ensure_leaf(&ca, tls_dir, "kubelet-client", &[], || {
        ca.issue_client(KUBELET_CLIENT_USER, &[ADMIN_GROUP], LEAF_VALIDITY)
    })?;
    Ok(ServerPki {
        ca,
        serving,
        admin,
        peer,
        kubelet_client,
    })
}

/// Loads leaf `name` from `dir`, or issues and saves a new one when [`why_reissue`] finds a
/// reason.
pub(super) fn ensure_leaf(
    ca: &Ca,
    dir: &Path,
    name: &str,
    wanted_sans: &[String],
    issue: impl FnOnce() -> Result<CertKeyPair, PkiError>,
) -> Result<CertKeyPair, PkiError> {
    let reason = match CertKeyPair::load(dir, name)? {
        None => "created".to_string(),
        Some(existing) => match why_reissue(ca, &existing, wanted_sans) {
            None => return Ok(existing),
            Some(reason) => reason,
        },
    };
    let pair = issue()?;
    pair.save(dir, name)?;
    tracing::info!(certificate = name, dir = %dir.display(), "{name} certificate {reason}");
    Ok(pair)
}

/// Why `pair` must be issued again, or `None` if it is fine as it is.
fn why_reissue(ca: &Ca, pair: &CertKeyPair, wanted_sans: &[String]) -> Option<String> {
    let check = || -> Result<Option<String>, PkiError> {
        if !pair.key_matches()? {
            return Ok(Some("re-issued: its key does not match it".into()));
        }
        if !pair.issued_by(ca.cert_der())? {
            return Ok(Some("re-issued: not signed by the cluster CA".into()));
        }
        let not_after = pair.not_after()?;
        if not_after - OffsetDateTime::now_utc() < RENEW_BEFORE {
            return Ok(Some(format!("renewed: it expires {not_after}")));
        }
        let present: BTreeSet<String> = pair.sans()?.iter().map(|s| normalize(s)).collect();
        let missing: Vec<&str> = wanted_sans
            .iter()
            .filter(|san| !present.contains(&normalize(san)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Ok(Some(format!("re-issued: it lacks {}", missing.join(", "))));
        }
        Ok(None)
    };
    check().unwrap_or_else(|e| Some(format!("re-issued: the old one is unreadable ({e})")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pki::leaf::inspect;

    const FILES: [&str; 8] = [
        "ca.crt",
        "ca.key",
        "serving.crt",
        "serving.key",
        "admin.crt",
        "admin.key",
        "peer.crt",
        "peer.key",
    ];

    fn options() -> PkiOptions {
        PkiOptions {
            hostname: "edge-1".into(),
            extra_sans: vec![],
            service_ip: "10.43.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            host_addresses: vec![
                "127.0.0.1".parse().unwrap(),
                "192.168.1.20".parse().unwrap(),
                "fd00::20".parse().unwrap(),
            ],
        }
    }

    fn snapshot(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
        FILES
            .iter()
            .map(|name| (*name, std::fs::read(dir.join(name)).unwrap()))
            .collect()
    }

    #[test]
    fn first_start_creates_everything_and_later_starts_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("server/tls");
        let first = ensure_server_pki(&tls, &options()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str| {
            std::fs::metadata(tls.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        for name in FILES {
            let want = if name.ends_with(".key") { 0o600 } else { 0o644 };
            assert_eq!(mode(name), want, "{name}");
        }
        let before = snapshot(&tls);
        assert_eq!(before["serving.crt"], first.serving.cert_pem.as_bytes());
        assert_eq!(before["admin.key"], first.admin.key_pem.as_bytes());

        let second = ensure_server_pki(&tls, &options()).unwrap();
        assert_eq!(snapshot(&tls), before, "a second start rewrites nothing");
        assert_eq!(second.ca.cert_pem(), first.ca.cert_pem());
        assert_eq!(second.serving, first.serving);
        assert_eq!(second.admin, first.admin);
        assert_eq!(second.peer, first.peer);
    }

    #[test]
    fn certificates_have_the_wanted_names_and_usages() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options();
        opts.extra_sans = vec!["kedge.example.org".into(), "203.0.113.7".into()];
        let pki = ensure_server_pki(dir.path(), &opts).unwrap();

        let serving = inspect(&pki.serving.cert_pem);
        let wanted = [
            "127.0.0.1",
            "::1",
            "localhost",
            "edge-1",
            "192.168.1.20",
            "fd00::20",
            "kedge.example.org",
            "203.0.113.7",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.43.0.1",
        ];
        for san in wanted {
            assert!(
                serving.sans.iter().any(|s| s == san),
                "{san} missing from {serving:?}"
            );
        }
        assert_eq!(serving.sans.len(), wanted.len(), "{serving:?}");
        assert!(serving.server_auth && !serving.client_auth, "{serving:?}");

        let admin = inspect(&pki.admin.cert_pem);
        assert_eq!(admin.common_name, ADMIN_USER);
        assert_eq!(admin.organizations, [ADMIN_GROUP]);
        assert!(admin.client_auth && !admin.server_auth, "{admin:?}");

        let peer = inspect(&pki.peer.cert_pem);
        assert_eq!(peer.common_name, "kedge-server:edge-1");
        assert_eq!(peer.organizations, [SERVER_GROUP]);
        assert!(peer.client_auth && peer.server_auth, "{peer:?}");
        assert_eq!(peer.sans, serving.sans);

        for pair in [&pki.serving, &pki.admin, &pki.peer] {
            let left = pair.not_after().unwrap() - OffsetDateTime::now_utc();
            assert!(left > LEAF_VALIDITY - Duration::from_secs(60) && left <= LEAF_VALIDITY);
            assert!(pair.issued_by(pki.ca.cert_der()).unwrap());
        }
    }

    #[test]
    fn a_leaf_near_expiry_is_renewed_and_the_ca_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_server_pki(dir.path(), &options()).unwrap();
        let before = snapshot(dir.path());
        let short = first
            .ca
            .issue_client(
                ADMIN_USER,
                &[ADMIN_GROUP],
                RENEW_BEFORE - Duration::from_secs(3600),
            )
            .unwrap();
        short.save(dir.path(), "admin").unwrap();

        let second = ensure_server_pki(dir.path(), &options()).unwrap();
        assert_ne!(
            second.admin, short,
            "an admin cert within 90 days of expiry is renewed"
        );
        assert!(second.admin.not_after().unwrap() > short.not_after().unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("admin.crt")).unwrap(),
            second.admin.cert_pem
        );
        let after = snapshot(dir.path());
        for name in ["ca.crt", "ca.key", "serving.crt", "serving.key", "peer.crt"] {
            assert_eq!(after[name], before[name], "{name} was left alone");
        }

        // Just outside the window: kept.
        let long = first
            .ca
            .issue_client(
                ADMIN_USER,
                &[ADMIN_GROUP],
                RENEW_BEFORE + Duration::from_secs(3600),
            )
            .unwrap();
        long.save(dir.path(), "admin").unwrap();
        assert_eq!(
            ensure_server_pki(dir.path(), &options()).unwrap().admin,
            long
        );
    }

    #[test]
    fn new_addresses_or_names_reissue_serving_and_peer_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_server_pki(dir.path(), &options()).unwrap();

        let mut moved = options();
        moved.host_addresses.push("10.0.0.5".parse().unwrap());
        let second = ensure_server_pki(dir.path(), &moved).unwrap();
        assert_ne!(
            second.serving, first.serving,
            "a new host address re-issues serving"
        );
        assert_ne!(second.peer, first.peer);
        assert_eq!(second.admin, first.admin);
        assert!(second
            .serving
            .sans()
            .unwrap()
            .contains(&"10.0.0.5".to_string()));

        let mut named = moved.clone();
        named.extra_sans.push("Kedge.Example.org".into());
        let third = ensure_server_pki(dir.path(), &named).unwrap();
        assert_ne!(
            third.serving, second.serving,
            "a new --tls-san re-issues serving"
        );
        assert!(third
            .serving
            .sans()
            .unwrap()
            .contains(&"kedge.example.org".to_string()));

        // Fewer names than the certificate has is fine: no churn.
        assert_eq!(
            ensure_server_pki(dir.path(), &options()).unwrap().serving,
            third.serving
        );
        assert_eq!(third.ca.cert_pem(), first.ca.cert_pem());
    }

    #[test]
    fn leaves_from_another_ca_or_unreadable_ones_are_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_server_pki(dir.path(), &options()).unwrap();
        let foreign = Ca::generate()
            .unwrap()
            .issue_client(ADMIN_USER, &[ADMIN_GROUP], LEAF_VALIDITY)
            .unwrap();
        foreign.save(dir.path(), "admin").unwrap();
        std::fs::write(dir.path().join("peer.crt"), "not a certificate").unwrap();
        std::fs::write(
            dir.path().join("serving.key"),
            first.admin.key_pem.as_bytes(),
        )
        .unwrap();

        let second = ensure_server_pki(dir.path(), &options()).unwrap();
        assert!(second.admin.issued_by(first.ca.cert_der()).unwrap());
        assert!(second.peer.issued_by(first.ca.cert_der()).unwrap());
        assert!(second.serving.key_matches().unwrap());
        assert_ne!(second.serving, first.serving);
    }

    #[test]
    fn a_missing_ca_key_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        ensure_server_pki(dir.path(), &options()).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        assert!(ensure_server_pki(dir.path(), &options()).is_err());
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);
    }
}
