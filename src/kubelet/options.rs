//! The node flags `kedge server` and `kedge agent` share (k3s' names), and their parsing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::Taint;

/// Flags describing this host's node. Every flag also reads a `KEDGE_*` environment variable.
#[derive(Args, Clone, Debug)]
pub struct NodeOptions {
    /// Name of this node [default: the host name, lowercased]
    #[arg(long, env = "KEDGE_NODE_NAME")]
    pub node_name: Option<String>,

    /// IP address the node advertises (its InternalIP) [default: the advertise address, or
    /// the first non-loopback address of the host]
    #[arg(long, env = "KEDGE_NODE_IP")]
    pub node_ip: Option<IpAddr>,

    /// Label to register the node with, as key=value (repeatable)
    #[arg(long = "node-label", env = "KEDGE_NODE_LABEL", value_delimiter = ',', value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// Taint to register the node with, as key=value:Effect (repeatable)
    #[arg(long = "node-taint", env = "KEDGE_NODE_TAINT", value_delimiter = ',', value_parser = parse_taint)]
    pub node_taints: Vec<Taint>,

    /// Port of the kubelet API (logs, exec, port-forward)
    #[arg(long, env = "KEDGE_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,

    /// The resolv.conf whose nameservers are the cluster DNS's upstream resolvers and
    /// pods' with `dnsPolicy: Default` (k3s's `--resolv-conf`)
    #[arg(long, env = "KEDGE_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: std::path::PathBuf,

    /// Percent of the image file system's disk usage at or above which unused images are
    /// garbage-collected (100 disables image garbage collection)
    #[arg(long, env = "KEDGE_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85)]
    pub image_gc_high_threshold: u8,

    /// Percent of disk usage image garbage collection frees down to
    #[arg(long, env = "KEDGE_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80)]
    pub image_gc_low_threshold: u8,

    /// How often image garbage collection runs (e.g. 5m); for testing
    #[arg(long, env = "KEDGE_IMAGE_GC_PERIOD", default_value = "5m", hide = true,
          value_parser = crate::server::options::parse_duration)]
    pub image_gc_period: Duration,

    /// Do not run the service proxy on this node (as k3s's flag of the same name): no
    /// nftables table, no service route
    #[arg(long, env = "KEDGE_DISABLE_KUBE_PROXY")]
    pub disable_kube_proxy: bool,
}

impl NodeOptions {
    /// Checks what clap cannot check alone (upstream's kubelet config validation).
    pub fn validate(&self) -> Result<(), String> {
        let (high, low) = (self.image_gc_high_threshold, self.image_gc_low_threshold);
        if high > 100 {
            return Err(format!(
                "--image-gc-high-threshold {high} must be between 0 and 100, inclusive"
            ));
        }
        if low > 100 {
            return Err(format!(
                "--image-gc-low-threshold {low} must be between 0 and 100, inclusive"
            ));
        }
        if low >= high {
            return Err(format!(
                "--image-gc-low-threshold {low} must be less than --image-gc-high-threshold {high}"
            ));
        }
        if self.image_gc_period.is_zero() {
            return Err("--image-gc-period must be longer than 0".to_string());
        }
        Ok(())
    }

    /// `--node-name`, or the host name, lowercased (node names are DNS subdomains).
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(hostname)
            .to_ascii_lowercase()
    }

    /// `--node-label` as a map (a later repeat of a key wins).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.node_labels.iter().cloned().collect()
    }

    /// `--node-ip`, else `preferred` (the server's advertise address), else the host's first
    /// non-loopback address, else 127.0.0.1.
    pub fn node_ip(&self, preferred: Option<IpAddr>) -> IpAddr {
        self.node_ip
            .or(preferred)
            .or_else(first_host_address)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}

/// The host name as the kernel has it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The first IPv4 (then IPv6) address of the host that is neither loopback nor link-local.
fn first_host_address() -> Option<IpAddr> {
    let mut addresses: Vec<IpAddr> = crate::pki::host_addresses()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .collect();
    addresses.sort_by_key(|ip| ip.is_ipv6());
    addresses.into_iter().next()
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    if key.trim().is_empty() {
        return Err(format!("{s:?}: the label key is empty"));
    }
    Ok((key.trim().to_string(), value.trim().to_string()))
}

/// `key=value:Effect` or `key:Effect`, as kubelet's `--register-with-taints`.
fn parse_taint(s: &str) -> Result<Taint, String> {
    let (key_value, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!(
            "{s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = match key_value.split_once('=') {
        Some((key, value)) => (key, Some(value.to_string())),
        None => (key_value, None),
    };
    if key.is_empty() {
        return Err(format!("{s:?}: the taint key is empty"));
    }
    Ok(Taint {
        key: key.to_string(),
        value: value.filter(|v| !v.is_empty()),
        effect: effect.to_string(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeOptions,
    }

    #[test]
    fn flags_parse_like_k3s() {
        let cli = Cli::try_parse_from([
            "kedge",
            "--node-name",
            "Edge-1",
            "--node-label",
            "zone=a",
            "--node-label",
            "disk=ssd,gpu=no",
            "--node-taint",
            "dedicated=edge:NoSchedule",
            "--node-taint",
            "special:NoExecute",
        ])
        .unwrap()
        .node;
        assert_eq!(cli.node_name(), "edge-1");
        assert_eq!(cli.labels().len(), 3);
        assert_eq!(cli.labels()["disk"], "ssd");
        assert_eq!(cli.node_taints[0].key, "dedicated");
        assert_eq!(cli.node_taints[0].value.as_deref(), Some("edge"));
        assert_eq!(cli.node_taints[1].value, None);
        assert_eq!(cli.node_taints[1].effect, "NoExecute");
        assert_eq!(cli.kubelet_port, 10250);
        let preferred = IpAddr::from([10, 0, 0, 5]);
        assert_eq!(cli.node_ip(Some(preferred)), preferred);

        assert_eq!(
            (cli.image_gc_high_threshold, cli.image_gc_low_threshold),
            (85, 80)
        );
        assert_eq!(cli.image_gc_period, Duration::from_secs(300));
        assert_eq!(cli.validate(), Ok(()));

        assert!(Cli::try_parse_from(["kedge", "--node-taint", "a=b:Sometimes"]).is_err());
        assert!(Cli::try_parse_from(["kedge", "--node-taint", "a=b"]).is_err());
        assert!(Cli::try_parse_from(["kedge", "--node-label", "novalue"]).is_err());
    }

    #[test]
    fn image_gc_thresholds_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["kedge"];
            all.extend(args);
            Cli::try_parse_from(all).unwrap().node.validate()
        };
        assert_eq!(parse(&["--image-gc-high-threshold", "100"]), Ok(()));
        let error = parse(&["--image-gc-high-threshold", "101"]).unwrap_err();
        assert!(error.contains("between 0 and 100"), "{error}");
        let error = parse(&["--image-gc-low-threshold", "85"]).unwrap_err();
        assert_eq!(
            error,
            "--image-gc-low-threshold 85 must be less than --image-gc-high-threshold 85"
        );
        assert!(parse(&["--image-gc-period", "0s"]).is_err());
    }
}
