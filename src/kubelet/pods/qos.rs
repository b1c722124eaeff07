//! QoS classes (upstream's `GetPodQOS`), the cgroup paths that follow from them
//! (`kedge/pod<uid>`, `kedge/burstable/pod<uid>`, `kedge/besteffort/pod<uid>`, with one
//! child per container id), and container cgroup values from requests and limits
//! (`milliCPUToShares`, `milliCPUToQuota`, OOM score adjustment).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::scheduler::quantity;

/// Guaranteed, Burstable or BestEffort.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        for name in ["cpu", "memory"] {
            if let Some(q) = r
                .and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get(name))
            {
                let v = quantity::milli_value(q);
                if v != 0 {
                    *requests.entry(name).or_default() += v;
                }
            }
        }
        let mut found = 0;
        for name in ["cpu", "memory"] {
            if let Some(q) = r.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name)) {
                let v = quantity::milli_value(q);
                if v != 0 {
                    found += 1;
                    *limits.entry(name).or_default() += v;
                }
            }
        }
        if found != 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) {
        return "Guaranteed";
    }
    "Burstable"
}

/// The pod's cgroup path (relative, under each controller on v1, unified on v2).
pub fn pod_cgroup(pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    match qos_class(pod) {
        "Guaranteed" => format!("kedge/pod{uid}"),
        "Burstable" => format!("kedge/burstable/pod{uid}"),
        _ => format!("kedge/besteffort/pod{uid}"),
    }
}

/// Minimum cpu shares and quota, as upstream.
const MIN_SHARES: u64 = 2;
const SHARES_PER_CPU: u64 = 1024;
const QUOTA_PERIOD: u64 = 100_000;
const MIN_QUOTA: i64 = 1000;

/// A container's cgroup values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerResources {
    pub cpu_shares: u64,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
}

/// Shares from the cpu request (the limit when only that is set), quota from the limit,
/// memory limit from the memory limit.
pub fn container_resources(container: &Container) -> ContainerResources {
    let r = container.resources.as_ref();
    let get = |limits: bool, name: &str| {
        let list = if limits {
            r.and_then(|r| r.limits.as_ref())
        } else {
            r.and_then(|r| r.requests.as_ref())
        };
        list.and_then(|l| l.get(name))
    };
    let cpu_limit = get(true, "cpu")
        .map(quantity::milli_value)
        .filter(|v| *v > 0);
    let cpu_request = get(false, "cpu")
        .map(quantity::milli_value)
        .filter(|v| *v > 0)
        .or(cpu_limit);
    let shares = match cpu_request {
        Some(milli) => ((milli as u64).saturating_mul(SHARES_PER_CPU) / 1000).max(MIN_SHARES),
        None => MIN_SHARES,
    };
    let quota = cpu_limit.map(|milli| (milli * QUOTA_PERIOD as i64 / 1000).max(MIN_QUOTA));
    ContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: quota.map(|_| QUOTA_PERIOD),
        memory_limit: get(true, "memory").map(quantity::value).filter(|v| *v > 0),
    }
}

/// `GetContainerOOMScoreAdjust`: Guaranteed -997, BestEffort 1000, Burstable by the share
/// of node memory requested, in [2, 999] (1000 - 1 for would-be-guaranteed ones).
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity: i64) -> i32 {
    match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let request = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get("memory"))
                .map(quantity::value)
                .unwrap_or(0);
            if memory_capacity <= 0 {
                return 999;
            }
            let adj = 1000 - (1000 * request as i128 / memory_capacity as i128) as i64;
            adj.clamp(2, 999) as i32
        }
    }
}

/// The pod cgroup's limits: the sum of its containers' (upstream's pod-level cgroup). CPU
/// quota and memory limit only when every container has one, as upstream.
pub fn pod_resources(pod: &Pod) -> crate::runtime::cgroups::PodResources {
    let containers: Vec<ContainerResources> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(container_resources)
        .collect();
    let shares: u64 = containers.iter().map(|c| c.cpu_shares).sum();
    let quota: Option<i64> = containers.iter().map(|c| c.cpu_quota).sum();
    let memory: Option<i64> = containers.iter().map(|c| c.memory_limit).sum();
    crate::runtime::cgroups::PodResources {
        cpu_shares: Some(shares.max(MIN_SHARES)),
        cpu_quota: quota,
        cpu_period: quota.map(|_| QUOTA_PERIOD),
        memory_limit: memory,
        pids_limit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "resources": resources}]},
        }))
        .unwrap()
    }

    #[test]
    fn classes_and_paths() {
        assert_eq!(qos_class(&pod(serde_json::json!({}))), "BestEffort");
        assert_eq!(
            pod_cgroup(&pod(serde_json::json!({}))),
            "kedge/besteffort/podu"
        );
        let g = pod(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"},
                                        "requests": {"cpu": "1", "memory": "1Gi"}}));
        assert_eq!(qos_class(&g), "Guaranteed");
        assert_eq!(pod_cgroup(&g), "kedge/podu");
        let b = pod(serde_json::json!({"requests": {"cpu": "100m"}}));
        assert_eq!(qos_class(&b), "Burstable");
    }

    #[test]
    fn cgroup_values() {
        let p = pod(
            serde_json::json!({"limits": {"cpu": "500m", "memory": "64Mi"},
                                        "requests": {"cpu": "250m"}}),
        );
        let r = container_resources(&p.spec.unwrap().containers[0]);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.memory_limit, Some(64 << 20));
        let p = pod(serde_json::json!({"requests": {"cpu": "1m"}}));
        assert_eq!(
            container_resources(&p.spec.unwrap().containers[0]).cpu_shares,
            2
        );
    }
}
