//! The pod sandbox: `<agent>/pods/<uid>/` with the pod's network namespace (`netns`, none
//! for host-network pods), and the `hostname`, `etc-hosts` and `resolv.conf` files that
//! every container of the pod gets bind-mounted at /etc/hostname, /etc/hosts and
//! /etc/resolv.conf. Creating it is idempotent; it survives agent restarts.
//!
//! Pod IPs: the worker connects a pod with its own namespace to the pod network
//! ([`crate::net::cni`]) once the namespace exists, and writes the hosts file again with the
//! address; host-network pods share the node's namespace and address.

use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use super::dns;
use crate::runtime::netns;

/// Files and namespace of one pod's sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub netns: Option<PathBuf>,
    pub hostname: String,
    pub hostname_file: PathBuf,
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
}

/// `<agent>/pods/<uid>`.
pub fn pod_dir(agent_dir: &Path, uid: &str) -> PathBuf {
    agent_dir.join("pods").join(uid)
}

/// Inputs that do not come from the pod.
pub struct SandboxInputs<'a> {
    pub agent_dir: &'a Path,
    pub cluster: dns::ClusterDns<'a>,
    pub node_hostname: &'a str,
    pub pod_ips: &'a [String],
}

pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Creates (or refreshes) the sandbox of `pod`. Blocking: call on a blocking thread.
pub fn ensure(pod: &Pod, inputs: &SandboxInputs) -> io::Result<Sandbox> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = pod_dir(inputs.agent_dir, uid);
    std::fs::create_dir_all(&dir)?;
    let host_network = is_host_network(pod);
    let netns = if host_network {
        None
    } else {
        let path = dir.join("netns");
        netns::create(&path)?;
        Some(path)
    };
    let hostname = dns::container_hostname(pod, inputs.cluster.domain, inputs.node_hostname);
    let hosts = if host_network {
        let node_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        dns::host_network_hosts_file(pod, &node_hosts)
    } else {
        dns::hosts_file(pod, inputs.pod_ips, inputs.cluster.domain)
    };
    let sandbox = Sandbox {
        hostname_file: dir.join("hostname"),
        hosts_file: dir.join("etc-hosts"),
        resolv_file: dir.join("resolv.conf"),
        netns,
        hostname: hostname.clone(),
    };
    write_if_changed(&sandbox.hostname_file, &format!("{hostname}\n"))?;
    write_if_changed(&sandbox.hosts_file, &hosts)?;
    write_if_changed(
        &sandbox.resolv_file,
        &dns::resolv_conf(pod, &inputs.cluster),
    )?;
    Ok(sandbox)
}

/// Rewrites a file in place only when its content changes: containers see it through a
/// bind mount of the file, which a rename would detach.
fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::write(path, content)
}

/// Removes the sandbox: network namespace, then the pod dir. Blocking.
pub fn remove(dir: &Path) -> io::Result<()> {
    netns::remove(&dir.join("netns"))?;
    // Never delete through a mount point (a volume left mounted would lose its data).
    if let Some(mount) = mount_under(dir) {
        return Err(io::Error::other(format!(
            "{} is still mounted; not removing the pod dir {}",
            mount,
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A mount point at or below `dir`, from /proc/self/mountinfo.
fn mount_under(dir: &Path) -> Option<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let prefix = dir.to_string_lossy().into_owned();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .find(|mount| *mount == prefix || mount.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
}

/// The node's hostname, for host-network pods.
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}
