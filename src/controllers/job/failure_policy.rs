//! `spec.podFailurePolicy`: which rule a failed pod matches (on its containers' exit codes or
//! its conditions, such as the `DisruptionTarget` a preemption or eviction leaves) and what
//! that does to the Job — fail it, ignore the failure, or count it against `backoffLimit`.

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;

/// What a pod failure amounts to under a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Set when a `FailJob` rule matched: the Job fails with this message.
    pub fail_job: Option<String>,
    /// Whether the failure counts against `backoffLimit` (false for `Ignore`).
    pub counts: bool,
    /// A `FailIndex` rule matched: the pod's index fails without further retries.
    pub fail_index: bool,
}

impl Verdict {
    /// A plain failure: counted, nothing more.
    pub const COUNT: Verdict = Verdict {
        fail_job: None,
        counts: true,
        fail_index: false,
    };
}

/// Matches a failed `pod` against the policy's rules in order; no rule matching counts the
/// failure, as upstream.
pub fn judge(policy: &PodFailurePolicy, pod: &Pod) -> Verdict {
    let status = pod.status.clone().unwrap_or_default();
    for (index, rule) in policy.rules.iter().enumerate() {
        let what = if let Some(codes) = &rule.on_exit_codes {
            let containers = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten());
            let Some((container, code)) = containers
                .filter_map(|c| Some((c, exit_code(c)?)))
                .find(|(c, code)| exit_code_matches(codes, c, *code))
            else {
                continue;
            };
            format!(
                "Container {} for pod {}/{} failed with exit code {code} matching {} rule at index {index}",
                container.name,
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                rule.action
            )
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let Some(condition) = status.conditions.iter().flatten().find(|c| {
                patterns
                    .iter()
                    .any(|p| p.type_ == c.type_ && p.status == c.status)
            }) else {
                continue;
            };
            format!(
                "Pod {}/{} has condition {} matching {} rule at index {index}",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                condition.type_,
                rule.action
            )
        } else {
            continue;
        };
        return match rule.action.as_str() {
            "FailJob" => Verdict {
                fail_job: Some(what),
                ..Verdict::COUNT
            },
            "Ignore" => Verdict {
                counts: false,
                ..Verdict::COUNT
            },
            "FailIndex" => Verdict {
                fail_index: true,
                ..Verdict::COUNT
            },
            _ => Verdict::COUNT,
        };
    }
    Verdict::COUNT
}

/// A terminated container's non-zero exit code; zero never matches a rule.
fn exit_code(container: &ContainerStatus) -> Option<i32> {
    let code = container.state.as_ref()?.terminated.as_ref()?.exit_code;
    (code != 0).then_some(code)
}

fn exit_code_matches(
    requirement: &PodFailurePolicyOnExitCodesRequirement,
    container: &ContainerStatus,
    code: i32,
) -> bool {
    if requirement
        .container_name
        .as_ref()
        .is_some_and(|name| *name != container.name)
    {
        return false;
    }
    let listed = requirement.values.contains(&code);
    match requirement.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(code: i32, conditions: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "conditions": conditions, "containerStatuses": [
                {"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": code}}}]}
        }))
        .unwrap()
    }

    fn policy(rules: serde_json::Value) -> PodFailurePolicy {
        serde_json::from_value(json!({ "rules": rules })).unwrap()
    }

    #[test]
    fn exit_codes_and_conditions_pick_the_first_matching_rule() {
        let policy = policy(json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [42]}},
        ]));
        let verdict = judge(&policy, &pod(42, json!([])));
        assert_eq!(
            verdict.fail_job.as_deref(),
            Some("Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1")
        );
        assert_eq!(judge(&policy, &pod(1, json!([]))), Verdict::COUNT);
        let disrupted = pod(42, json!([{"type": "DisruptionTarget", "status": "True"}]));
        assert_eq!(
            judge(&policy, &disrupted),
            Verdict {
                counts: false,
                ..Verdict::COUNT
            }
        );
    }
}
