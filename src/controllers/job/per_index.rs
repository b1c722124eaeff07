//! `backoffLimitPerIndex` of Indexed Jobs: each index is retried up to its own limit, its
//! pods carrying how often the index failed before (`batch.kubernetes.io/
//! job-index-failure-count`); an index past its limit, or hit by a `FailIndex` rule, is
//! failed for good and listed in `status.failedIndexes`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::api::core::v1::Pod;

use super::failure_policy;

/// How often a pod's index had failed when the pod was created.
pub const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";

pub fn failure_count(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FAILURE_COUNT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a failed `pod` fails its index for good (upstream's `isIndexFailed`).
pub fn fails_index(spec: &JobSpec, pod: &Pod) -> bool {
    if let Some(policy) = &spec.pod_failure_policy {
        let verdict = failure_policy::judge(policy, pod);
        if verdict.fail_index {
            return true;
        }
        if !verdict.counts {
            return false;
        }
    }
    failure_count(pod) >= spec.backoff_limit_per_index.unwrap_or(0)
}

/// Per index, the failure count for its next pod and when its last failure happened (ms),
/// from its failed pods (`(index, pod, finished at)`; ignored failures left out).
pub fn last_failures<'a>(
    failed: impl Iterator<Item = (i32, &'a Pod, i64)>,
) -> BTreeMap<i32, (i32, i64)> {
    let mut last: BTreeMap<i32, (i32, i64)> = BTreeMap::new();
    for (index, pod, finished) in failed {
        let next = failure_count(pod) + 1;
        let entry = last.entry(index).or_insert((next, finished));
        if finished > entry.1 {
            *entry = (next, finished);
        }
        entry.0 = entry.0.max(next);
    }
    last
}

/// How long an index with `failures` failures, the last at `finished` (ms), still waits
/// before its next pod: `base` doubling per failure, up to `max`.
pub fn backoff_left(
    failures: i32,
    finished: i64,
    now: i64,
    base: Duration,
    max: Duration,
) -> Option<Duration> {
    if failures <= 0 {
        return None;
    }
    let backoff = base
        .saturating_mul(2u32.saturating_pow(failures as u32 - 1))
        .min(max);
    let elapsed = Duration::from_millis((now - finished).max(0) as u64);
    backoff.checked_sub(elapsed).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(count: Option<&str>) -> Pod {
        let annotations = count.map_or(json!({}), |c| json!({ FAILURE_COUNT: c }));
        serde_json::from_value(
            json!({"metadata": {"name": "p", "annotations": annotations},
            "status": {"phase": "Failed"}}),
        )
        .unwrap()
    }

    #[test]
    fn an_index_fails_past_its_own_limit() {
        let spec: JobSpec =
            serde_json::from_value(json!({"backoffLimitPerIndex": 1, "template": {}})).unwrap();
        assert!(!fails_index(&spec, &pod(None)));
        assert!(fails_index(&spec, &pod(Some("1"))));
        let (first, second) = (pod(None), pod(Some("1")));
        let last =
            last_failures([(0, &first, 1_000), (0, &second, 2_000), (3, &first, 500)].into_iter());
        assert_eq!(last[&0], (2, 2_000));
        assert_eq!(last[&3], (1, 500));
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(360);
        assert_eq!(
            backoff_left(2, 0, 5_000, base, max),
            Some(Duration::from_secs(15))
        );
        assert_eq!(backoff_left(1, 0, 10_000, base, max), None);
    }
}
