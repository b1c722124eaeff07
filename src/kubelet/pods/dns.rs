//! The pod's `/etc/resolv.conf`, `/etc/hosts` and hostname, as upstream's `dns.Configurer`
//! and `managedHostsFileContent` write them.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// Upstream's limits: 3 nameservers, 32 search domains of at most 2048 characters in all.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The parsed parts of a resolv.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Reads `nameserver`, `search`/`domain` and `options` lines like upstream's `parseResolvConf`.
pub fn parse_resolv_conf(content: &str) -> DnsConfig {
    let mut config = DnsConfig::default();
    for line in content.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => {
                if let Some(ns) = fields.next() {
                    config.nameservers.push(ns.to_string());
                }
            }
            // The last search or domain line wins, as in glibc.
            Some("search") | Some("domain") => {
                config.searches = fields.map(str::to_string).collect();
            }
            Some("options") => config.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    config
}

/// What the kubelet knows to build a pod's DNS: cluster DNS servers and domain, and the
/// host's resolv.conf content (for `Default` and the search path tail).
#[derive(Debug, Clone)]
pub struct ClusterDns<'a> {
    pub servers: &'a [IpAddr],
    pub domain: &'a str,
    pub host_resolv_conf: &'a str,
}

/// The pod's resolv.conf content per `dnsPolicy` and `dnsConfig`.
pub fn resolv_conf(pod: &Pod, cluster: &ClusterDns) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host = parse_resolv_conf(cluster.host_resolv_conf);
    // ClusterFirst on the host network means Default; without cluster DNS, Default too.
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    } && !cluster.servers.is_empty();
    let mut config = match policy {
        "None" => DnsConfig::default(),
        _ if cluster_first => {
            let domain = cluster.domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ];
            searches.extend(host.searches.iter().cloned());
            DnsConfig {
                nameservers: cluster.servers.iter().map(|s| s.to_string()).collect(),
                searches,
                options: vec!["ndots:5".to_string()],
            }
        }
        _ => host,
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        config
            .nameservers
            .extend(extra.nameservers.iter().flatten().cloned());
        config
            .searches
            .extend(extra.searches.iter().flatten().cloned());
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            let text = match option.value.as_deref() {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            match config
                .options
                .iter_mut()
                .find(|o| o.split(':').next() == Some(name))
            {
                Some(existing) => *existing = text,
                None => config.options.push(text),
            }
        }
    }
    dedup(&mut config.nameservers);
    config.nameservers.truncate(MAX_NAMESERVERS);
    dedup(&mut config.searches);
    let mut searches = Vec::new();
    let mut chars = 0;
    for s in config.searches {
        if searches.len() == MAX_SEARCH || chars + s.len() > MAX_SEARCH_CHARS {
            break;
        }
        chars += s.len() + 1;
        searches.push(s);
    }
    let mut out = String::new();
    for ns in &config.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !config.options.is_empty() {
        out.push_str(&format!("options {}\n", config.options.join(" ")));
    }
    out
}

fn dedup(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.clone()));
}

/// The pod's hostname and domain (`GeneratePodHostNameAndDomain`): `spec.hostname` or the
/// pod name, cut to 63 characters; with `spec.subdomain`, the domain
/// `<subdomain>.<namespace>.svc.<cluster domain>`.
pub fn hostname_and_domain(pod: &Pod, cluster_domain: &str) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    let hostname = truncate_hostname(&name);
    let domain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            format!(
                "{sub}.{}.svc.{cluster_domain}",
                pod.metadata.namespace.as_deref().unwrap_or("default")
            )
        });
    (hostname, domain)
}

/// The hostname the container sees: the node's on the host network, the FQDN with
/// `setHostnameAsFQDN`, else the short name.
pub fn container_hostname(pod: &Pod, cluster_domain: &str, node_hostname: &str) -> String {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return node_hostname.to_string();
    }
    let (hostname, domain) = hostname_and_domain(pod, cluster_domain);
    match domain {
        Some(domain) if spec.and_then(|s| s.set_hostname_as_fqdn).unwrap_or(false) => {
            format!("{hostname}.{domain}")
        }
        _ => hostname,
    }
}

fn truncate_hostname(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    name[..63].trim_end_matches(['-', '.']).to_string()
}

/// `/etc/hosts` for a pod with its own network namespace (`managedHostsFileContent`).
pub fn hosts_file(pod: &Pod, pod_ips: &[String], cluster_domain: &str) -> String {
    let (hostname, domain) = hostname_and_domain(pod, cluster_domain);
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in pod_ips {
        match &domain {
            Some(domain) => out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    out.push_str(&host_aliases(pod));
    out
}

/// `/etc/hosts` for a host-network pod: the node's own file plus the pod's host aliases.
pub fn host_network_hosts_file(pod: &Pod, node_hosts: &str) -> String {
    let mut out = String::from("# Kubernetes-managed hosts file (host network).\n");
    out.push_str(node_hosts);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&host_aliases(pod));
    out
}

fn host_aliases(pod: &Pod) -> String {
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
        out.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = serde_json::json!([{"name": "c"}]);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "apps"},
            "spec": spec,
        }))
        .unwrap()
    }

    const HOST: &str = "# host\nnameserver 192.168.1.1\nsearch lan example.org\noptions edns0\n";

    fn cluster() -> (Vec<IpAddr>, &'static str) {
        (vec!["10.43.0.10".parse().unwrap()], "cluster.local")
    }

    #[test]
    fn cluster_first() {
        let (servers, domain) = cluster();
        let c = ClusterDns {
            servers: &servers,
            domain,
            host_resolv_conf: HOST,
        };
        assert_eq!(
            resolv_conf(&pod(serde_json::json!({})), &c),
            "nameserver 10.43.0.10\n\
             search apps.svc.cluster.local svc.cluster.local cluster.local lan example.org\n\
             options ndots:5\n"
        );
        // Host network without WithHostNet: the host's.
        assert_eq!(
            resolv_conf(&pod(serde_json::json!({"hostNetwork": true})), &c),
            "nameserver 192.168.1.1\nsearch lan example.org\noptions edns0\n"
        );
        assert!(resolv_conf(
            &pod(serde_json::json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &c
        )
        .starts_with("nameserver 10.43.0.10\n"));
    }

    #[test]
    fn none_with_dns_config() {
        let (servers, domain) = cluster();
        let c = ClusterDns {
            servers: &servers,
            domain,
            host_resolv_conf: HOST,
        };
        let p = pod(serde_json::json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.b"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&p, &c),
            "nameserver 1.2.3.4\nsearch a.b\noptions ndots:2 edns0\n"
        );
        let p =
            pod(serde_json::json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}));
        assert!(resolv_conf(&p, &c).ends_with("options ndots:1\n"));
    }

    #[test]
    fn hosts_and_hostname() {
        let p = pod(serde_json::json!({"hostname": "h", "subdomain": "s",
            "hostAliases": [{"ip": "1.1.1.1", "hostnames": ["one", "uno"]}]}));
        let hosts = hosts_file(&p, &["10.42.0.5".into()], "cluster.local");
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("10.42.0.5\th.s.apps.svc.cluster.local\th\n"));
        assert!(hosts.ends_with("\n# Entries added by HostAliases.\n1.1.1.1\tone\tuno\n"));
        assert_eq!(container_hostname(&p, "cluster.local", "node"), "h");
        let long = "a".repeat(62) + "-b";
        let p = pod(serde_json::json!({"hostname": long}));
        assert_eq!(hostname_and_domain(&p, "x").0, "a".repeat(62));
    }
}
