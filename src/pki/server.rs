//! The certificates of a `kedge server`, created on first start, reused after, renewed when
//! they near expiry or no longer cover the host's names.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;

use super::ca::{Ca, CertKeyPair};
use super::files::ensure_dir;
use super::{PkiError, ADMIN_GROUP, ADMIN_USER, SERVER_GROUP};

/// Leaf certificates are valid this long ...
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// ... and re-issued at start when they expire within this.
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// What the serving certificate must cover.
#[derive(Clone, Debug)]
pub struct PkiOptions {
    pub hostname: String,
    /// `--tls-san` values.
    pub extra_sans: Vec<String>,
    /// The `kubernetes` Service's ClusterIP (first address of the service CIDR).
    pub service_ip: IpAddr,
    pub cluster_domain: String,
    pub host_addresses: Vec<IpAddr>,
}

impl PkiOptions {
    /// Every name and address clients may use to reach this server.
    pub fn serving_sans(&self) -> Vec<String> {
        let mut sans: BTreeSet<String> = ["127.0.0.1", "::1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            .into_iter()
            .map(str::to_string)
            .collect();
        sans.insert(format!("kubernetes.default.svc.{}", self.cluster_domain));
        sans.insert(self.service_ip.to_string());
        if !self.hostname.is_empty() {
            sans.insert(self.hostname.clone());
        }
        sans.extend(self.host_addresses.iter().map(IpAddr::to_string));
        sans.extend(self.extra_sans.iter().filter(|s| !s.is_empty()).cloned());
        sans.into_iter().collect()
    }
}

/// The addresses of this host's interfaces, loopback included (IPv6 link-local left out: it
/// is not routable without a zone).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|interfaces| interfaces.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    addresses.retain(|ip| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => true,
    });
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Everything a server needs.
pub struct ServerPki {
    pub ca: Ca,
    pub serving: CertKeyPair,
    pub admin: CertKeyPair,
    pub peer: CertKeyPair,
}

fn needs_renewal(pair: &CertKeyPair) -> Result<bool, PkiError> {
    Ok(pair.not_after()? - OffsetDateTime::now_utc() < RENEW_BEFORE)
}

/// Loads `name` from `dir`, or issues it with `issue` when missing, near expiry or
/// `stale` says it no longer fits.
fn ensure_leaf(
    dir: &Path,
    name: &str,
    stale: impl Fn(&CertKeyPair) -> Result<bool, PkiError>,
    issue: impl Fn() -> Result<CertKeyPair, PkiError>,
) -> Result<CertKeyPair, PkiError> {
    let reason = match CertKeyPair::load(dir, name)? {
        None => "created",
        Some(existing) if needs_renewal(&existing)? => "renewed (near expiry)",
        Some(existing) if stale(&existing)? => "re-issued (names changed)",
        Some(existing) => return Ok(existing),
    };
    let pair = issue()?;
    pair.save(dir, name)?;
    tracing::info!(certificate = name, "{reason} {name} certificate");
    Ok(pair)
}

/// Loads `tls_dir`, creating what is missing and renewing what must be renewed.
pub fn ensure_server_pki(tls_dir: &Path, options: &PkiOptions) -> Result<ServerPki, PkiError> {
    ensure_dir(tls_dir, 0o700)?;
    let ca = match Ca::load(tls_dir)? {
        Some(ca) => ca,
        None => {
            let ca = Ca::generate()?;
            ca.save(tls_dir)?;
            tracing::info!("created the cluster CA");
            ca
        }
    };
    let sans = options.serving_sans();
    let lacks_sans = |pair: &CertKeyPair| -> Result<bool, PkiError> {
        let present: BTreeSet<String> = pair.sans()?.into_iter().collect();
        Ok(sans.iter().any(|san| !present.contains(&normalize(san))))
    };
    let serving = ensure_leaf(tls_dir, "serving", &lacks_sans, || {
        ca.issue_serving("kube-apiserver", &sans, LEAF_VALIDITY)
    })?;
    let admin = ensure_leaf(tls_dir, "admin", |_| Ok(false), || {
        ca.issue_client(ADMIN_USER, &[ADMIN_GROUP], LEAF_VALIDITY)
    })?;
    let peer_name = format!("kedge-server:{}", options.hostname);
    let peer = ensure_leaf(tls_dir, "peer", &lacks_sans, || {
        ca.issue_peer(&peer_name, &[SERVER_GROUP], &sans, LEAF_VALIDITY)
    })?;
    Ok(ServerPki {
        ca,
        serving,
        admin,
        peer,
    })
}

/// IPs written the way the certificate parser prints them.
fn normalize(san: &str) -> String {
    san.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or_else(|_| san.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PkiOptions {
        PkiOptions {
            hostname: "edge-1".into(),
            extra_sans: vec![],
            service_ip: "10.43.0.1".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            host_addresses: vec!["192.168.1.20".parse().unwrap()],
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn first_start_creates_and_later_starts_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_server_pki(dir.path(), &options()).unwrap();
        for name in ["ca", "serving", "admin", "peer"] {
            let key = dir.path().join(format!("{name}.key"));
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{name}.key");
        }
        let second = ensure_server_pki(dir.path(), &options()).unwrap();
        assert_eq!(first.ca.cert_pem(), second.ca.cert_pem());
        assert_eq!(first.serving, second.serving);
        assert_eq!(first.admin, second.admin);
        let sans = second.serving.sans().unwrap();
        for wanted in [
            "127.0.0.1",
            "::1",
            "localhost",
            "edge-1",
            "192.168.1.20",
            "10.43.0.1",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(sans.iter().any(|s| s == wanted), "{wanted} missing from {sans:?}");
        }
    }

    #[test]
    fn near_expiry_and_new_names_reissue_leaves_not_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_server_pki(dir.path(), &options()).unwrap();
        let short = first
            .ca
            .issue_client(ADMIN_USER, &[ADMIN_GROUP], Duration::from_secs(30 * 24 * 3600))
            .unwrap();
        short.save(dir.path(), "admin").unwrap();
        let mut more = options();
        more.extra_sans.push("kedge.example.org".into());
        let second = ensure_server_pki(dir.path(), &more).unwrap();
        assert_ne!(second.admin, short, "an admin cert 30 days from expiry is renewed");
        assert_ne!(second.serving, first.serving, "a new --tls-san re-issues the serving cert");
        assert!(second.serving.sans().unwrap().contains(&"kedge.example.org".to_string()));
        assert_eq!(read(dir.path(), "ca.crt"), first.ca.cert_pem());
    }
}
