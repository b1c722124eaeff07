//! What the host is: its capacity, system identity and pressure signals, read from /proc,
//! /sys and /etc the way upstream's kubelet (through cAdvisor) reads them.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::NodeSystemInfo;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Upstream's default hard eviction threshold `memory.available<100Mi`: below it the node
/// reports MemoryPressure, and it is held back from allocatable.
pub const MEMORY_EVICTION_KIB: u64 = 100 * 1024;
/// Upstream's default `nodefs.available<10%`: below it the node reports DiskPressure.
pub const DISK_EVICTION_PERCENT: u64 = 10;
/// Upstream's default `--max-pods`.
pub const MAX_PODS: u32 = 110;

/// Go's name for this machine's architecture (`kubernetes.io/arch`, nodeInfo.architecture).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Online CPUs, from `/sys/devices/system/cpu/online` (`0-3,6`), as cAdvisor counts them.
pub fn online_cpus() -> u64 {
    let parsed = read_trimmed("/sys/devices/system/cpu/online").and_then(|list| {
        list.split(',')
            .map(|range| match range.split_once('-') {
                Some((a, b)) => Some(b.parse::<u64>().ok()? - a.parse::<u64>().ok()? + 1),
                None => range.parse::<u64>().ok().map(|_| 1),
            })
            .sum::<Option<u64>>()
    });
    parsed.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1)
    })
}

/// A `/proc/meminfo` field in KiB.
fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Total memory in KiB (MemTotal).
pub fn memory_total_kib() -> u64 {
    meminfo_kib("MemTotal").unwrap_or(0)
}

/// Available memory in KiB (MemAvailable), what the memory.available signal measures.
pub fn memory_available_kib() -> Option<u64> {
    meminfo_kib("MemAvailable")
}

/// Size and free bytes (for unprivileged users, as `df` shows) of the filesystem at `path`.
pub fn filesystem(path: &Path) -> Option<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let block = stat.fragment_size() as u64;
    Some((
        stat.blocks() as u64 * block,
        stat.blocks_available() as u64 * block,
    ))
}

/// Whether the filesystem at `path` has less than [`DISK_EVICTION_PERCENT`] free.
pub fn disk_pressure(path: &Path) -> bool {
    match filesystem(path) {
        Some((size, free)) if size > 0 => free * 100 < size * DISK_EVICTION_PERCENT,
        _ => false,
    }
}

/// Whether less than [`MEMORY_EVICTION_KIB`] of memory is available.
pub fn memory_pressure() -> bool {
    memory_available_kib().is_some_and(|kib| kib < MEMORY_EVICTION_KIB)
}

/// Node capacity and allocatable: allocatable holds back upstream's default hard eviction
/// thresholds (100Mi of memory, 10% of the node filesystem) as upstream's kubelet does.
pub fn resources(data_dir: &Path) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let cpu = online_cpus().to_string();
    let memory_kib = memory_total_kib();
    let disk = filesystem(data_dir).map(|(size, _)| size).unwrap_or(0);
    let common = [
        ("cpu", cpu),
        ("pods", MAX_PODS.to_string()),
        ("hugepages-1Gi", "0".to_string()),
        ("hugepages-2Mi", "0".to_string()),
    ];
    let mut capacity: BTreeMap<String, Quantity> = common
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect();
    let mut allocatable = capacity.clone();
    capacity.insert("memory".into(), Quantity(format!("{memory_kib}Ki")));
    capacity.insert(
        "ephemeral-storage".into(),
        Quantity(format!("{}Ki", disk / 1024)),
    );
    allocatable.insert(
        "memory".into(),
        Quantity(format!(
            "{}Ki",
            memory_kib.saturating_sub(MEMORY_EVICTION_KIB)
        )),
    );
    // Upstream subtracts a percentage and prints the plain byte count that results.
    let disk_kib_bytes = disk / 1024 * 1024;
    allocatable.insert(
        "ephemeral-storage".into(),
        Quantity((disk_kib_bytes - disk_kib_bytes * DISK_EVICTION_PERCENT / 100).to_string()),
    );
    (capacity, allocatable)
}

/// `PRETTY_NAME` of /etc/os-release (or /usr/lib/os-release), as `kubectl get nodes -o wide`
/// shows in OS-IMAGE.
fn os_image() -> String {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(value) = text.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")) {
                return value.trim().trim_matches('"').to_string();
            }
        }
    }
    "Linux".to_string()
}

/// nodeInfo as upstream fills it; `kubelet_version` is the API server's gitVersion.
pub fn system_info(kubelet_version: &str) -> NodeSystemInfo {
    let machine_id = read_trimmed("/etc/machine-id")
        .or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    NodeSystemInfo {
        // Readable by root only on most hosts; upstream falls back the same way.
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid")
            .map(|u| u.to_ascii_lowercase())
            .unwrap_or_else(|| machine_id.clone()),
        machine_id,
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        os_image: os_image(),
        container_runtime_version: format!("kedge://{}", env!("CARGO_PKG_VERSION")),
        kubelet_version: kubelet_version.to_string(),
        kube_proxy_version: kubelet_version.to_string(),
        operating_system: "linux".to_string(),
        architecture: go_arch().to_string(),
        ..NodeSystemInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_facts_are_read() {
        assert!(online_cpus() >= 1);
        assert!(memory_total_kib() > 0);
        let dir = tempfile::tempdir().unwrap();
        let (capacity, allocatable) = resources(dir.path());
        assert_eq!(capacity["pods"].0, "110");
        assert!(capacity["memory"].0.ends_with("Ki"));
        assert!(allocatable["ephemeral-storage"].0.parse::<u64>().unwrap() > 0);
        let info = system_info("v1.33.0+kedge0.1.0");
        assert_eq!(info.operating_system, "linux");
        assert!(!info.kernel_version.is_empty());
        assert!(info.container_runtime_version.starts_with("kedge://"));
    }
}
