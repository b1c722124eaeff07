//! `kedge server` flags. Every flag also reads a `KEDGE_*` environment variable, as k3s
//! reads `K3S_*`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;

use crate::api::services::ServiceNetwork;
use crate::kubelet::ClusterNetwork;
use crate::raft::types::NodeId;

#[derive(Args, Clone, Debug)]
pub struct ServerOptions {
    /// Folder that holds all state (store, certificates, token)
    #[arg(
        long,
        short = 'd',
        env = "KEDGE_DATA_DIR",
        default_value = "/var/lib/kedge"
    )]
    pub data_dir: PathBuf,

    /// HTTPS port of the Kubernetes API (and of server-to-server traffic)
    #[arg(long, env = "KEDGE_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,

    /// Address to listen on
    #[arg(long, env = "KEDGE_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Address other servers reach this one at [default: the bind address, or 127.0.0.1 when
    /// binding to all addresses]
    #[arg(long, env = "KEDGE_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,

    /// Extra host names or IPs for the serving certificate (repeatable)
    #[arg(long = "tls-san", env = "KEDGE_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// Write the admin kubeconfig to this file
    #[arg(
        long,
        short = 'o',
        env = "KEDGE_KUBECONFIG_OUTPUT",
        default_value = "/etc/kedge/kedge.yaml"
    )]
    pub write_kubeconfig: PathBuf,

    /// File mode of the written kubeconfig, in octal
    #[arg(long, env = "KEDGE_KUBECONFIG_MODE", default_value = "0600")]
    pub write_kubeconfig_mode: String,

    /// Shared secret (or full K10 token) that nodes and servers join with; generated on
    /// first start when not given
    #[arg(long, short = 't', env = "KEDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// URL of an existing server to join instead of forming a new cluster
    #[arg(long, short = 's', env = "KEDGE_URL")]
    pub server: Option<String>,

    /// Run only the control plane, no node agent (kubelet) on this host
    #[arg(long, env = "KEDGE_DISABLE_AGENT")]
    pub disable_agent: bool,

    /// This host's node (used unless --disable-agent)
    #[command(flatten)]
    pub node: crate::kubelet::NodeOptions,

    /// Do not run the scheduler on this server (as k3s's flag of the same name)
    #[arg(long, env = "KEDGE_DISABLE_SCHEDULER")]
    pub disable_scheduler: bool,

    /// Do not run the controllers on this server (as k3s's flag of the same name)
    #[arg(long, env = "KEDGE_DISABLE_CONTROLLER_MANAGER")]
    pub disable_controller_manager: bool,

    /// Packaged components not to run, as k3s's `--disable` (repeatable or comma-separated):
    /// servicelb; k3s's coredns, traefik, local-storage, metrics-server and runtimes are
    /// accepted with a warning
    #[arg(long, env = "KEDGE_DISABLE", value_name = "COMPONENT", value_delimiter = ',', value_parser = Component::parse)]
    pub disable: Vec<Component>,

    /// IPv4 range Service ClusterIPs come from; its first address is the `kubernetes` Service
    #[arg(long, env = "KEDGE_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,

    /// Port range NodePort Services draw from
    #[arg(
        long,
        env = "KEDGE_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,

    /// IPv4 range pod IPs come from; each node gets a /24 of it
    #[arg(long, env = "KEDGE_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,

    /// How long a node may go without a heartbeat before it is marked Unknown and tainted
    /// unreachable (e.g. 40s, 2m)
    #[arg(long, env = "KEDGE_NODE_MONITOR_GRACE_PERIOD", default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: std::time::Duration,

    /// How long an Event is kept after its last update, as kube-apiserver's --event-ttl
    /// (e.g. 1h, 30m)
    #[arg(long, env = "KEDGE_EVENT_TTL", default_value = "1h", value_parser = parse_duration)]
    pub event_ttl: std::time::Duration,

    /// Cluster DNS domain
    #[arg(long, env = "KEDGE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// ClusterIP of the cluster DNS Service (kube-system/kube-dns), the nameserver of pods'
    /// resolv.conf [default: the 10th address of --service-cidr, 10.43.0.10]
    #[arg(long, env = "KEDGE_CLUSTER_DNS")]
    pub cluster_dns: Option<std::net::Ipv4Addr>,

    /// This server's Raft node id (unique in the cluster; fixed for the life of its data dir)
    #[arg(long, env = "KEDGE_RAFT_ID", default_value_t = 1)]
    pub raft_id: NodeId,

    /// Static initial membership for several servers, as ID=URL pairs
    /// (e.g. 1=https://10.0.0.1:6443,2=https://10.0.0.2:6443); used only when the store is
    /// empty. Without it the server forms a cluster of one.
    #[arg(long, env = "KEDGE_RAFT_PEERS", value_delimiter = ',', value_parser = parse_peer)]
    pub raft_peers: Vec<(NodeId, String)>,

    /// Snapshot the store (and drop the Raft log before it) every this many log entries
    #[arg(long, env = "KEDGE_RAFT_SNAPSHOT_EVERY", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub raft_snapshot_every: u64,

    /// Keep at least this many seconds of store history for watch resumption and paged lists
    #[arg(long, env = "KEDGE_STORE_HISTORY_SECONDS", default_value_t = 300)]
    pub store_history_seconds: u64,

    /// ... but at most this many revisions of it
    #[arg(long, env = "KEDGE_STORE_HISTORY_REVISIONS", default_value_t = 10_000)]
    pub store_history_revisions: u64,
}

/// A packaged component k3s's `--disable` names. Only ServiceLB is a component of kedge that
/// can be turned off; the others are accepted so that a k3s configuration starts kedge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    ServiceLb,
    CoreDns,
    Traefik,
    LocalStorage,
    MetricsServer,
    Runtimes,
}

impl Component {
    /// k3s's name of each component, as `--disable` takes it.
    const NAMES: [(&'static str, Component); 6] = [
        ("servicelb", Component::ServiceLb),
        ("coredns", Component::CoreDns),
        ("traefik", Component::Traefik),
        ("local-storage", Component::LocalStorage),
        ("metrics-server", Component::MetricsServer),
        ("runtimes", Component::Runtimes),
    ];

    fn parse(s: &str) -> Result<Component, String> {
        let name = s.trim();
        Component::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let known: Vec<&str> = Component::NAMES.iter().map(|(n, _)| *n).collect();
                format!("unknown component {name:?} (one of {})", known.join(", "))
            })
    }

    /// Why disabling this k3s component changes nothing in kedge; `None` for one that kedge
    /// really turns off.
    pub fn ignored_because(self) -> Option<&'static str> {
        match self {
            Component::ServiceLb => None,
            Component::CoreDns => {
                Some("kedge's cluster DNS is built into the node agent and stays on")
            }
            Component::LocalStorage => {
                Some("kedge's local-path provisioner is built into the controllers and stays on")
            }
            Component::Traefik | Component::MetricsServer | Component::Runtimes => {
                Some("kedge does not ship it, so there is nothing to disable")
            }
        }
    }

    /// k3s's name.
    pub fn name(self) -> &'static str {
        Component::NAMES
            .iter()
            .find(|(_, c)| *c == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }
}

/// A duration as `90`, `90s`, `500ms`, `2m` or `1h`.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 40s"))?;
    let millis = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_millis(number * millis))
}

fn parse_peer(s: &str) -> Result<(NodeId, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=URL"))?;
    let id: NodeId = id
        .trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a node id"))?;
    let url = url.trim();
    if !url.starts_with("https://") {
        return Err(format!("peer URL {url:?} must start with https://"));
    }
    Ok((id, url.trim_end_matches('/').to_string()))
}

impl ServerOptions {
    /// The address to put in URLs for this server.
    pub fn advertise_ip(&self) -> IpAddr {
        match self.advertise_address {
            Some(ip) => ip,
            None if self.bind_address.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.bind_address,
        }
    }

    /// The Service ranges from `--service-cidr` and `--service-node-port-range`.
    pub fn service_network(&self) -> Result<ServiceNetwork, String> {
        ServiceNetwork::parse(&self.service_cidr, &self.service_node_port_range)
            .map_err(|e| format!("--service-cidr/--service-node-port-range: {e}"))
    }

    /// `--cluster-cidr`, `--service-cidr`, `--cluster-dns` and `--cluster-domain`, checked:
    /// what this server's agent uses and what it tells joining agents.
    pub fn cluster_network(&self) -> Result<ClusterNetwork, String> {
        let cidr = |flag: &str, text: &str| {
            text.parse::<ipnet::Ipv4Net>()
                .map(|net| net.trunc())
                .map_err(|e| format!("--{flag} {text:?}: {e} (an IPv4 CIDR like 10.42.0.0/16)"))
        };
        let cluster_cidr = cidr("cluster-cidr", &self.cluster_cidr)?;
        let service_cidr = cidr("service-cidr", &self.service_cidr)?;
        // k3s's default: the 10th address of the service range.
        let tenth = service_cidr.hosts().nth(9);
        let cluster_dns = match (self.cluster_dns, tenth) {
            (Some(ip), _) if service_cidr.contains(&ip) => ip,
            (Some(ip), _) => {
                return Err(format!(
                    "--cluster-dns {ip} is not in --service-cidr {service_cidr}"
                ))
            }
            (None, Some(ip)) => ip,
            (None, None) => {
                return Err(format!(
                    "--service-cidr {service_cidr} is too small for the cluster DNS address"
                ))
            }
        };
        Ok(ClusterNetwork {
            cluster_cidr,
            service_cidr,
            cluster_dns: IpAddr::V4(cluster_dns),
            cluster_domain: self.cluster_domain.clone(),
        })
    }

    /// Whether `--disable` names `component`.
    pub fn disabled(&self, component: Component) -> bool {
        self.disable.contains(&component)
    }

    /// The first address of the service CIDR (the `kubernetes` Service's ClusterIP).
    pub fn service_ip(&self) -> Result<IpAddr, String> {
        Ok(IpAddr::V4(self.service_network()?.first_ip()))
    }

    /// The initial Raft membership: the flag's, or this server alone.
    pub fn initial_members(&self, own_url: &str) -> Result<BTreeMap<NodeId, String>, String> {
        if self.raft_peers.is_empty() {
            return Ok(BTreeMap::from([(self.raft_id, own_url.to_string())]));
        }
        let members: BTreeMap<NodeId, String> = self.raft_peers.iter().cloned().collect();
        if members.len() != self.raft_peers.len() {
            return Err("--raft-peers names a node id twice".to_string());
        }
        if !members.contains_key(&self.raft_id) {
            return Err(format!(
                "--raft-peers does not include this server's --raft-id {}",
                self.raft_id
            ));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerOptions,
    }

    #[test]
    fn defaults_follow_k3s() {
        let cli = Cli::try_parse_from(["kedge"]).unwrap().server;
        assert_eq!(cli.https_listen_port, 6443);
        assert_eq!(cli.data_dir, PathBuf::from("/var/lib/kedge"));
        assert_eq!(cli.write_kubeconfig, PathBuf::from("/etc/kedge/kedge.yaml"));
        assert_eq!(cli.service_ip().unwrap().to_string(), "10.43.0.1");
        assert_eq!(cli.advertise_ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn peers_are_parsed_and_checked() {
        let cli = Cli::try_parse_from([
            "kedge",
            "--raft-id",
            "2",
            "--raft-peers",
            "1=https://10.0.0.1:6443,2=https://10.0.0.2:6443/",
        ])
        .unwrap()
        .server;
        let members = cli.initial_members("https://ignored").unwrap();
        assert_eq!(members[&2], "https://10.0.0.2:6443");
        assert!(Cli::try_parse_from(["kedge", "--raft-peers", "x=https://a"]).is_err());
        assert!(Cli::try_parse_from(["kedge", "--raft-peers", "1=http://a"]).is_err());
        let cli = Cli::try_parse_from(["kedge", "--raft-id", "3", "--raft-peers", "1=https://a"])
            .unwrap()
            .server;
        assert!(cli.initial_members("https://b").is_err());
    }

    #[test]
    fn cluster_network_defaults_and_checks_like_k3s() {
        let network = |args: &[&str]| {
            let argv = std::iter::once("kedge").chain(args.iter().copied());
            Cli::try_parse_from(argv).unwrap().server.cluster_network()
        };
        let defaults = network(&[]).unwrap();
        assert_eq!(defaults.cluster_cidr.to_string(), "10.42.0.0/16");
        assert_eq!(defaults.service_cidr.to_string(), "10.43.0.0/16");
        assert_eq!(defaults.cluster_dns.to_string(), "10.43.0.10");
        assert_eq!(defaults.cluster_domain, "cluster.local");
        // The DNS address follows a changed service range unless given.
        let moved = network(&["--service-cidr", "10.96.0.0/12"]).unwrap();
        assert_eq!(moved.cluster_dns.to_string(), "10.96.0.10");
        let given = network(&[
            "--service-cidr",
            "10.96.0.0/12",
            "--cluster-dns",
            "10.96.0.53",
        ]);
        assert_eq!(given.unwrap().cluster_dns.to_string(), "10.96.0.53");
        let outside = network(&["--cluster-dns", "10.96.0.10"]).unwrap_err();
        assert!(
            outside.contains("not in --service-cidr 10.43.0.0/16"),
            "{outside}"
        );
        let bad = network(&["--cluster-cidr", "10.42.0.0"]).unwrap_err();
        assert!(bad.starts_with("--cluster-cidr \"10.42.0.0\""), "{bad}");
    }

    #[test]
    fn disable_takes_k3s_component_names_repeated_or_comma_separated() {
        let cli = Cli::try_parse_from([
            "kedge",
            "--disable",
            "traefik,servicelb",
            "--disable=metrics-server",
        ])
        .unwrap()
        .server;
        assert!(cli.disabled(Component::ServiceLb));
        assert_eq!(
            cli.disable,
            [
                Component::Traefik,
                Component::ServiceLb,
                Component::MetricsServer
            ]
        );
        assert!(Component::Traefik.ignored_because().is_some());
        assert!(!Cli::try_parse_from(["kedge"])
            .unwrap()
            .server
            .disabled(Component::ServiceLb));
        let error = Cli::try_parse_from(["kedge", "--disable", "servicelb,klipper"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("unknown component \"klipper\""), "{error}");
    }

    #[test]
    fn service_cidr_is_validated() {
        let bad = |cidr: &str| {
            Cli::try_parse_from(["kedge", "--service-cidr", cidr])
                .unwrap()
                .server
                .service_ip()
                .is_err()
        };
        assert!(bad("10.43.0.0"));
        assert!(bad("10.43.0.0/33"));
        assert!(bad("10.43.0.0/31"));
        assert!(bad("fd00::/64"));
        let ok = Cli::try_parse_from(["kedge", "--service-cidr", "10.96.5.7/12"])
            .unwrap()
            .server;
        assert_eq!(ok.service_ip().unwrap().to_string(), "10.96.0.1");
    }
}
