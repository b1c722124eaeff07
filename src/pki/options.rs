//! What the server's certificates must cover: this host's names and addresses, `--tls-san`,
//! and the in-cluster names of the `kubernetes` Service.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// What the server certificates must cover.
#[derive(Clone, Debug)]
pub struct PkiOptions {
    /// This host's name.
    pub hostname: String,
    /// `--tls-san` values: extra names or IPs clients use to reach the server.
    pub extra_sans: Vec<String>,
    /// The `kubernetes` Service's ClusterIP (first address of the service CIDR), which pods
    /// use to reach the API.
    pub service_ip: IpAddr,
    /// The cluster DNS domain, `cluster.local` by default.
    pub cluster_domain: String,
    /// Addresses of this host; see [`host_addresses`].
    pub host_addresses: Vec<IpAddr>,
}

impl PkiOptions {
    /// Every name and address clients may use to reach this server, sorted and without
    /// duplicates: loopback, the host's names and addresses, `--tls-san`, and the in-cluster
    /// names and ClusterIP of the `kubernetes` Service.
    pub fn serving_sans(&self) -> Vec<String> {
        let mut sans: BTreeSet<String> = [
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        sans.insert(format!("kubernetes.default.svc.{}", self.cluster_domain));
        sans.insert(self.service_ip.to_string());
        if !self.hostname.is_empty() {
            sans.insert(self.hostname.clone());
        }
        sans.extend(self.host_addresses.iter().map(IpAddr::to_string));
        sans.extend(
            self.extra_sans
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(normalize),
        );
        sans.into_iter().collect()
    }
}

/// The addresses of this host's interfaces, loopback included, sorted. IPv6 link-local
/// addresses are left out: they need a zone to be used and cannot be put in a certificate
/// usefully; so is the pod bridge's gateway address (it is the pods' router, and appears
/// only once pods run: it would re-issue the certificates at the next start).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter(|i| i.name != crate::net::cni::BRIDGE)
            .map(|i| i.ip())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing network interfaces; certificates will only cover loopback and configured names");
            Vec::new()
        }
    };
    addresses.retain(|ip| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(_) => true,
    });
    addresses.sort();
    addresses.dedup();
    addresses
}

/// SANs compared the way a TLS client matches them: IPs by value, DNS names without case.
pub(crate) fn normalize(san: &str) -> String {
    san.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|_| san.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_include_loopback_but_not_link_local() {
        let addresses = host_addresses();
        assert!(
            addresses.contains(&"127.0.0.1".parse().unwrap()),
            "{addresses:?}"
        );
        assert!(
            addresses
                .iter()
                .all(|ip| !ip.to_string().starts_with("fe80:")),
            "{addresses:?}"
        );
    }

    #[test]
    fn serving_sans_are_complete_sorted_and_deduplicated() {
        let options = PkiOptions {
            hostname: "edge-1".into(),
            extra_sans: vec![" Kedge.Example.org ".into(), "".into(), "127.0.0.1".into()],
            service_ip: "10.43.0.1".parse().unwrap(),
            cluster_domain: "corp.local".into(),
            host_addresses: vec!["127.0.0.1".parse().unwrap(), "fd00::0001".parse().unwrap()],
        };
        let sans = options.serving_sans();
        let mut want = vec![
            "10.43.0.1",
            "127.0.0.1",
            "::1",
            "edge-1",
            "fd00::1",
            "kedge.example.org",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.corp.local",
            "localhost",
        ];
        want.sort();
        assert_eq!(sans, want);
    }
}
