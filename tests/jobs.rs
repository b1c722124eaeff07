//! The Job, CronJob and TTL-after-finished controllers inside `kedge server`, seen through
//! the real kubectl with simulated nodes playing the kubelet (pods annotated
//! `sim.kedge.io/exit-code` finish after `sim.kedge.io/run-seconds`).
//!
//! The scheduler places the pods on the simulated node. CronJob start times are not
//! waited for: a CronJob whose last start time lies in the past starts at once, and the
//! schedule arithmetic is unit-tested over fixed times (`controllers::cron_job`).

mod common;

use std::time::Duration;

use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, server_with_nodes, LogDump, Server};
use serde_json::{json, Value};

const NODE: &str = "sim-1";

async fn cluster(dir: &std::path::Path) -> (Server, SimulatedNodes, LogDump) {
    let node = NodeSpec::new(NODE).capacity("16", "32Gi").pods(200);
    let (server, logs, nodes) = server_with_nodes(dir, vec![node]).await;
    (server, nodes, logs)
}

/// A pod template (for the simulated node); `exit` (if any) after `seconds`.
fn template(exit: Option<i32>, seconds: u32) -> Value {
    let mut annotations = json!({"sim.kedge.io/run-seconds": seconds.to_string()});
    if let Some(code) = exit {
        annotations["sim.kedge.io/exit-code"] = json!(code.to_string());
    }
    json!({
        "metadata": {"labels": {"app": "batch"}, "annotations": annotations},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "busybox"}]},
    })
}

fn apply_job(kubectl: &Kubectl<'_>, name: &str, mut spec: Value, pod: Value) {
    spec["template"] = pod;
    let job =
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec});
    kubectl.ok_with(&["apply", "-f", "-"], Some(&job.to_string()));
}

fn get_json(kubectl: &Kubectl<'_>, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl.ok(&all)).unwrap()
}

fn wait_for(kubectl: &Kubectl<'_>, condition: &str, job: &str) {
    kubectl.ok(&[
        "wait",
        &format!("--for=condition={condition}"),
        &format!("job/{job}"),
        "--timeout=60s",
    ]);
}

fn condition<'a>(job: &'a Value, kind: &str) -> &'a Value {
    job["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .unwrap_or_else(|| panic!("no {kind} condition in {job}"))
}

fn pods_of(kubectl: &Kubectl<'_>, job: &str) -> Vec<Value> {
    let list = get_json(
        kubectl,
        &[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ],
    );
    list["items"].as_array().unwrap().clone()
}

/// The Events about an object, one `reason: message` per line.
fn events_of(kubectl: &Kubectl<'_>, kind: &str, name: &str) -> String {
    let table = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind={kind},involvedObject.name={name}"),
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
        "--no-headers",
    ]);
    table
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(reason, message)| format!("{reason}: {}\n", message.trim()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_their_pods_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let kubectl = server.kubectl();

    // NonIndexed: 4 completions, 2 at a time.
    apply_job(
        &kubectl,
        "work",
        json!({"completions": 4, "parallelism": 2}),
        template(Some(0), 1),
    );
    wait_for(&kubectl, "complete", "work");
    let job = get_json(&kubectl, &["get", "job", "work"]);
    assert_eq!(job["status"]["succeeded"], 4, "{job}");
    assert!(job["status"]["active"].is_null(), "{job}");
    assert!(job["status"]["completionTime"].is_string() && job["status"]["startTime"].is_string());
    assert_eq!(job["status"]["uncountedTerminatedPods"], json!({}), "{job}");
    for kind in ["SuccessCriteriaMet", "Complete"] {
        let c = condition(&job, kind);
        assert_eq!(
            (c["status"].as_str(), c["reason"].as_str()),
            (Some("True"), Some("CompletionsReached"))
        );
        assert_eq!(c["message"], "Reached expected number of succeeded pods");
    }
    let row = kubectl.ok(&["get", "job", "work", "--no-headers"]);
    assert_eq!(row.split_whitespace().nth(2), Some("4/4"), "{row}");
    let pods = pods_of(&kubectl, "work");
    assert_eq!(pods.len(), 4, "one pod per completion, no more");
    let uid = job["metadata"]["uid"].as_str().unwrap();
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("work-") && name.len() == "work-".len() + 5,
            "{name}"
        );
        assert_eq!(pod["metadata"]["labels"]["app"], "batch");
        assert_eq!(
            pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"],
            uid
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], uid);
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert!(
            pod["metadata"]["finalizers"].is_null(),
            "counted pods are released: {pod}"
        );
        assert_eq!(pod["status"]["phase"], "Succeeded");
    }
    let events = events_of(&kubectl, "Job", "work");
    assert!(
        events.contains("SuccessfulCreate: Created pod: work-"),
        "{events}"
    );
    assert!(events.contains("Completed: Job completed"), "{events}");

    // Indexed: each index once, in the pod's name, hostname and annotation.
    apply_job(
        &kubectl,
        "idx",
        json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
        template(Some(0), 1),
    );
    wait_for(&kubectl, "complete", "idx");
    let job = get_json(&kubectl, &["get", "job", "idx"]);
    assert_eq!(job["status"]["completedIndexes"], "0-2", "{job}");
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    let mut seen: Vec<String> = pods_of(&kubectl, "idx")
        .iter()
        .map(|pod| {
            let index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
                index.as_str()
            );
            assert_eq!(pod["spec"]["hostname"], format!("idx-{index}"));
            assert!(pod["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("idx-{index}-")));
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // Suspended: no pods until resumed.
    apply_job(
        &kubectl,
        "paused",
        json!({"suspend": true}),
        template(Some(0), 1),
    );
    eventually(
        Duration::from_secs(20),
        "the Suspended condition",
        || async {
            let job = get_json(&kubectl, &["get", "job", "paused"]);
            job["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Suspended"
                        && c["status"] == "True"
                        && c["reason"] == "JobSuspended"
                })
            })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pods_of(&kubectl, "paused").is_empty());
    assert!(get_json(&kubectl, &["get", "job", "paused"])["status"]["startTime"].is_null());
    kubectl.ok(&[
        "patch",
        "job",
        "paused",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    wait_for(&kubectl, "complete", "paused");
    let job = get_json(&kubectl, &["get", "job", "paused"]);
    assert_eq!(condition(&job, "Suspended")["reason"], "JobResumed");
    let events = events_of(&kubectl, "Job", "paused");
    assert!(
        events.contains("Suspended") && events.contains("Resumed"),
        "{events}"
    );

    // Suspending a running Job stops its pods without counting them as failed.
    apply_job(
        &kubectl,
        "halt",
        json!({"parallelism": 2, "completions": 2}),
        template(None, 1),
    );
    eventually(Duration::from_secs(20), "halt's pods ready", || async {
        get_json(&kubectl, &["get", "job", "halt"])["status"]["ready"] == 2
    })
    .await;
    kubectl.ok(&[
        "patch",
        "job",
        "halt",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    eventually(Duration::from_secs(20), "halt's pods gone", || async {
        pods_of(&kubectl, "halt").is_empty()
    })
    .await;
    let job = get_json(&kubectl, &["get", "job", "halt"]);
    assert!(
        job["status"]["failed"].is_null() && job["status"]["active"].is_null(),
        "{job}"
    );
    assert_eq!(condition(&job, "Suspended")["status"], "True");
    let events = events_of(&kubectl, "Job", "halt");
    assert!(
        events.contains("SuccessfulDelete: Deleted pod: halt-"),
        "{events}"
    );

    // A Job deleted while its pod runs: nothing will count the pod, its finalizer goes.
    apply_job(&kubectl, "dropped", json!({}), template(None, 1));
    eventually(Duration::from_secs(20), "the pod of dropped", || async {
        pods_of(&kubectl, "dropped").len() == 1
    })
    .await;
    kubectl.ok(&["delete", "job", "dropped", "--wait=false"]);
    eventually(Duration::from_secs(20), "the orphan released", || async {
        pods_of(&kubectl, "dropped")
            .iter()
            .all(|pod| pod["metadata"]["finalizers"].is_null())
    })
    .await;

    // ttlSecondsAfterFinished: gone once finished that long.
    apply_job(
        &kubectl,
        "short",
        json!({"ttlSecondsAfterFinished": 1}),
        template(Some(0), 1),
    );
    wait_for(&kubectl, "complete", "short");
    eventually(
        Duration::from_secs(20),
        "the finished Job deleted",
        || async {
            let out = kubectl.run(&["get", "job", "short"], None);
            String::from_utf8_lossy(&out.stderr).contains("NotFound")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_fail_on_backoff_limit_deadline_and_pod_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let kubectl = server.kubectl();

    // Exit 1 twice with backoffLimit 1 (the retry comes after the 10s back-off).
    apply_job(
        &kubectl,
        "flaky",
        json!({"backoffLimit": 1}),
        template(Some(1), 1),
    );
    // A failing FailJob rule ends the Job at the first failure, whatever the backoffLimit.
    let policy = json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
    ]}});
    apply_job(&kubectl, "policy", policy, template(Some(42), 1));
    // Runs forever: the deadline stops it.
    apply_job(
        &kubectl,
        "slow",
        json!({"activeDeadlineSeconds": 2}),
        template(None, 1),
    );

    // Indexes that each fail past their own limit (0: no retry).
    let per_index = json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
        "backoffLimitPerIndex": 0});
    apply_job(&kubectl, "indexes", per_index, template(Some(1), 1));

    wait_for(&kubectl, "failed", "indexes");
    let job = get_json(&kubectl, &["get", "job", "indexes"]);
    assert_eq!(job["status"]["failedIndexes"], "0-2", "{job}");
    assert_eq!(job["status"]["failed"], 3, "{job}");
    let failed = condition(&job, "Failed");
    assert_eq!(failed["reason"], "FailedIndexes");
    assert_eq!(failed["message"], "Job has failed indexes");
    for pod in pods_of(&kubectl, "indexes") {
        assert_eq!(
            pod["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"],
            "0"
        );
    }

    wait_for(&kubectl, "failed", "policy");
    let job = get_json(&kubectl, &["get", "job", "policy"]);
    let failed = condition(&job, "Failed");
    assert_eq!(failed["reason"], "PodFailurePolicy");
    let pod = pods_of(&kubectl, "policy")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let message = format!("Container main for pod default/{pod} failed with exit code 42 matching FailJob rule at index 0");
    assert_eq!(failed["message"], message.as_str());
    assert_eq!(
        condition(&job, "FailureTarget")["reason"],
        "PodFailurePolicy"
    );
    assert_eq!(job["status"]["failed"], 1, "{job}");

    wait_for(&kubectl, "failed", "slow");
    let job = get_json(&kubectl, &["get", "job", "slow"]);
    let failed = condition(&job, "Failed");
    assert_eq!(failed["reason"], "DeadlineExceeded");
    assert_eq!(
        failed["message"],
        "Job was active longer than specified deadline"
    );
    assert!(job["status"]["active"].is_null(), "{job}");
    eventually(
        Duration::from_secs(20),
        "the deadline's pod gone",
        || async { pods_of(&kubectl, "slow").is_empty() },
    )
    .await;
    let events = events_of(&kubectl, "Job", "slow");
    assert!(
        events.contains("SuccessfulDelete: Deleted pod: slow-"),
        "{events}"
    );
    assert!(
        events.contains("DeadlineExceeded: Job was active longer than specified deadline"),
        "{events}"
    );

    wait_for(&kubectl, "failed", "flaky");
    let job = get_json(&kubectl, &["get", "job", "flaky"]);
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let failed = condition(&job, "Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    assert!(job["status"]["completionTime"].is_null());
    assert_eq!(pods_of(&kubectl, "flaky").len(), 2);
    let events = events_of(&kubectl, "Job", "flaky");
    assert!(
        events.contains("BackoffLimitExceeded: Job has reached the specified backoff limit"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_jobs_start_jobs_and_keep_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _nodes, _logs) = cluster(dir.path()).await;
    let kubectl = server.kubectl();

    // Schedules and time zones are checked at the API, as upstream.
    let bad = kubectl.fails(
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox",
            "--schedule=every day",
        ],
        None,
    );
    assert!(
        bad.contains("spec.schedule: Invalid value: \"every day\""),
        "{bad}"
    );
    // Fixed delays, as upstream's cron library takes them.
    kubectl.ok(&[
        "create",
        "cronjob",
        "hourly",
        "--image=busybox",
        "--schedule=@every 1h30m",
    ]);
    let bad = kubectl.fails(
        &[
            "create",
            "cronjob",
            "bad",
            "--image=busybox",
            "--schedule=@every 5",
        ],
        None,
    );
    assert!(
        bad.contains("spec.schedule: Invalid value: \"@every 5\""),
        "{bad}"
    );
    kubectl.ok(&["delete", "cronjob", "hourly"]);
    let cron_job = |name: &str, schedule: &str, extra: Value| {
        let mut spec = json!({"schedule": schedule, "jobTemplate": {"spec": {"template": template(Some(0), 1)}}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name}, "spec": spec}).to_string()
    };
    let bad_zone = cron_job("mars", "0 3 * * *", json!({"timeZone": "Mars/Olympus"}));
    let bad = kubectl.fails(&["apply", "-f", "-"], Some(&bad_zone));
    assert!(
        bad.contains(
            "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"
        ),
        "{bad}"
    );

    // kubectl create job --from=cronjob (client side) runs the template now.
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&cron_job(
            "nightly",
            "0 3 * * *",
            json!({"timeZone": "Europe/Berlin"}),
        )),
    );
    kubectl.ok(&["create", "job", "manual", "--from=cronjob/nightly"]);
    wait_for(&kubectl, "complete", "manual");

    // A CronJob whose last start time is long past starts the latest missed one at once;
    // once it completed, a history of 0 deletes it.
    let every5 = cron_job(
        "catchup",
        "*/5 * * * *",
        json!({"successfulJobsHistoryLimit": 0, "concurrencyPolicy": "Forbid"}),
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&every5));
    kubectl.ok(&[
        "patch",
        "cronjob",
        "catchup",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"lastScheduleTime":"2026-01-01T00:00:00Z"}}"#,
    ]);
    let mut job_name = String::new();
    eventually(Duration::from_secs(20), "the missed Job started", || {
        let out = kubectl.ok(&["get", "jobs", "-o", "name"]);
        job_name = out
            .lines()
            .find_map(|l| l.strip_prefix("job.batch/catchup-"))
            .map(|n| format!("catchup-{n}"))
            .unwrap_or_default();
        let found = !job_name.is_empty();
        async move { found }
    })
    .await;
    let minutes: i64 = job_name.trim_start_matches("catchup-").parse().unwrap();
    assert_eq!(minutes % 5, 0, "a start time of */5: {job_name}");
    let job = get_json(&kubectl, &["get", "job", &job_name]);
    let scheduled = job["metadata"]["annotations"]
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(scheduled.ends_with(":00Z"), "{scheduled}");
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "catchup");
    eventually(
        Duration::from_secs(30),
        "the Job seen completed and deleted",
        || async {
            let cj = get_json(&kubectl, &["get", "cronjob", "catchup"]);
            let gone = !kubectl
                .run(&["get", "job", &job_name], None)
                .status
                .success();
            gone && cj["status"]["lastSuccessfulTime"].is_string()
                && cj["status"]["active"]
                    .as_array()
                    .is_none_or(|a| a.is_empty())
        },
    )
    .await;
    let cj = get_json(&kubectl, &["get", "cronjob", "catchup"]);
    assert_eq!(cj["status"]["lastScheduleTime"], scheduled.as_str(), "{cj}");
    let events = events_of(&kubectl, "CronJob", "catchup");
    for expected in [
        format!("SuccessfulCreate: Created job {job_name}"),
        format!("SawCompletedJob: Saw completed job: {job_name}, condition: Complete"),
        format!("SuccessfulDelete: Deleted job {job_name}"),
        "TooManyMissedTimes: too many missed start times".to_string(),
    ] {
        assert!(events.contains(&expected), "{expected} in {events}");
    }
}
