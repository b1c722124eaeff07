//! Resource amounts as the scheduler counts them, and a pod's effective requests.
//!
//! A pod's request is computed as upstream's `PodRequests`: the sum of its containers, plus
//! its sidecars (init containers with `restartPolicy: Always`), against the largest single
//! init container (which runs alone, next to the sidecars started before it), plus the
//! pod's `overhead`. Scoring uses the "non-zero" variant, where a container without a cpu
//! or memory request counts as 100m / 200Mi so that best-effort pods still spread out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// Upstream's `DefaultMilliCPURequest`, used by scoring for containers without a cpu request.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Upstream's `DefaultMemoryRequest` (200Mi), likewise for memory.
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Amounts of resources: cpu in millicores, memory and storage in bytes, others in units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// Extended and hugepages resources, e.g. `example.com/gpu`, by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a resource list (requests, limits, allocatable, overhead).
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &Quantity) {
        match name {
            CPU => self.milli_cpu = quantity::milli_value(q),
            MEMORY => self.memory = quantity::value(q),
            EPHEMERAL_STORAGE => self.ephemeral_storage = quantity::value(q),
            // The pod count is not a request; allocatable pods are read by `NodeInfo`.
            PODS => {}
            _ if is_scalar(name) => {
                self.scalar.insert(name.to_string(), quantity::value(q));
            }
            _ => {}
        }
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Raises every amount to at least `other`'s.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// The amount of one resource by its API name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            CPU => self.milli_cpu,
            MEMORY => self.memory,
            EPHEMERAL_STORAGE => self.ephemeral_storage,
            _ => self.scalar.get(name).copied().unwrap_or(0),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// Extended resources (a domain-qualified name outside `kubernetes.io/`), hugepages and
/// attachable volumes: the resources fit-checked by name rather than by a fixed field.
pub fn is_scalar(name: &str) -> bool {
    if name.starts_with("hugepages-") || name.starts_with("attachable-volumes-") {
        return true;
    }
    match name.split_once('/') {
        Some((domain, _)) => {
            domain != "kubernetes.io"
                && !domain.ends_with(".kubernetes.io")
                && !name.starts_with("requests.")
        }
        None => false,
    }
}

/// How missing container requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// As zero: what the pod really reserves (filtering).
    Zero,
    /// As 100m cpu / 200Mi memory: what scoring assumes a best-effort container uses.
    Default,
}

fn container_requests(c: &Container, missing: Missing) -> Resources {
    let res = c.resources.as_ref();
    // The API server defaults requests to limits; do the same for objects that skipped it.
    let mut r = res
        .and_then(|r| r.limits.as_ref())
        .map(Resources::from_list)
        .unwrap_or_default();
    if let Some(reqs) = res.and_then(|r| r.requests.as_ref()) {
        for (name, q) in reqs {
            r.set(name, q);
        }
    }
    if missing == Missing::Default {
        let has = |name: &str| {
            res.and_then(|r| r.requests.as_ref())
                .is_some_and(|m| m.contains_key(name))
                || res
                    .and_then(|r| r.limits.as_ref())
                    .is_some_and(|m| m.contains_key(name))
        };
        if !has(CPU) {
            r.milli_cpu = DEFAULT_MILLI_CPU;
        }
        if !has(MEMORY) {
            r.memory = DEFAULT_MEMORY;
        }
    }
    r
}

/// The resources a pod reserves on its node.
pub fn pod_requests(pod: &Pod, missing: Missing) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut reqs = Resources::default();
    for c in &spec.containers {
        reqs.add(&container_requests(c, missing));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let own = container_requests(c, missing);
        let running_alongside = if c.restart_policy.as_deref() == Some("Always") {
            // A sidecar keeps running: it adds to the pod for good.
            reqs.add(&own);
            sidecars.add(&own);
            sidecars.clone()
        } else {
            let mut r = own;
            r.add(&sidecars);
            r
        };
        init_max.max_with(&running_alongside);
    }
    reqs.max_with(&init_max);
    if let Some(overhead) = spec.overhead.as_ref() {
        reqs.add(&Resources::from_list(overhead));
    }
    reqs
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    pub(crate) fn list(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    pub(crate) fn container(name: &str, requests: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: Some(list(requests)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers,
                init_containers: Some(init),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sums_containers_and_reads_extended_resources() {
        let p = pod(
            vec![
                container("a", &[("cpu", "100m"), ("memory", "1Gi")]),
                container("b", &[("cpu", "1.5"), ("example.com/gpu", "2")]),
            ],
            vec![],
        );
        let r = pod_requests(&p, Missing::Zero);
        assert_eq!(r.milli_cpu, 1600);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.get("example.com/gpu"), 2);
    }

    #[test]
    fn largest_init_container_wins_over_a_smaller_sum() {
        let p = pod(
            vec![container("a", &[("cpu", "200m")])],
            vec![
                container("i1", &[("cpu", "1")]),
                container("i2", &[("cpu", "500m"), ("memory", "1Mi")]),
            ],
        );
        let r = pod_requests(&p, Missing::Zero);
        assert_eq!(r.milli_cpu, 1000);
        assert_eq!(r.memory, 1 << 20);
    }

    #[test]
    fn sidecars_add_to_containers_and_to_later_init_containers() {
        let mut sidecar = container("s", &[("cpu", "300m")]);
        sidecar.restart_policy = Some("Always".into());
        let p = pod(
            vec![container("a", &[("cpu", "100m")])],
            vec![sidecar, container("i", &[("cpu", "800m")])],
        );
        // The later init container runs next to the sidecar: 800m + 300m = 1100m, above
        // containers + sidecars = 400m.
        assert_eq!(pod_requests(&p, Missing::Zero).milli_cpu, 1100);
    }

    #[test]
    fn overhead_is_added_and_limits_stand_in_for_missing_requests() {
        let mut p = pod(vec![container("a", &[])], vec![]);
        let spec = p.spec.as_mut().unwrap();
        spec.containers[0].resources = Some(ResourceRequirements {
            limits: Some(list(&[("cpu", "2")])),
            ..Default::default()
        });
        spec.overhead = Some(list(&[("cpu", "250m")]));
        assert_eq!(pod_requests(&p, Missing::Zero).milli_cpu, 2250);
    }

    #[test]
    fn non_zero_variant_defaults_cpu_and_memory_per_container() {
        let p = pod(
            vec![container("a", &[]), container("b", &[("cpu", "1")])],
            vec![],
        );
        let r = pod_requests(&p, Missing::Default);
        assert_eq!(r.milli_cpu, 1100);
        assert_eq!(r.memory, 2 * DEFAULT_MEMORY);
        assert_eq!(pod_requests(&p, Missing::Zero).milli_cpu, 1000);
        let empty = pod(vec![container("a", &[])], vec![]);
        assert!(pod_requests(&empty, Missing::Zero).is_zero());
    }

    #[test]
    fn which_names_are_scalar_resources() {
        assert!(is_scalar("example.com/gpu"));
        assert!(is_scalar("hugepages-2Mi"));
        assert!(!is_scalar("cpu"));
        assert!(!is_scalar("kubernetes.io/foo"));
        assert!(!is_scalar("node.kubernetes.io/foo"));
    }
}
