//! The scheduler inside `kedge server`, against simulated nodes, as a user sees it through
//! kubectl: pending pods get bound and run, where they fit; those that fit nowhere say
//! why, in upstream's words, until a node that fits appears; important pods preempt.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, started_server, LogDump, Server};

const HEARTBEAT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

/// A pod manifest with one container requesting `cpu`, plus `spec` fields merged in.
fn pod(name: &str, cpu: &str, spec: serde_json::Value) -> String {
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]},
    });
    if let serde_json::Value::Object(extra) = spec {
        for (k, v) in extra {
            pod["spec"][k] = v;
        }
    }
    pod.to_string()
}

fn create(server: &Server, manifest: &str) {
    server
        .kubectl()
        .ok_with(&["create", "-f", "-"], Some(manifest));
}

/// `pod name → node name` for every pod of the namespace, "" when unbound.
fn placements(server: &Server) -> BTreeMap<String, String> {
    let out = server.kubectl().ok(&[
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect()
}

/// The `STATUS` column of `kubectl get pod`.
fn phase(server: &Server, pod: &str) -> String {
    let out = server.kubectl().ok(&["get", "pod", pod, "--no-headers"]);
    out.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

async fn running(server: &Server, pod: &str) {
    eventually(WAIT, &format!("pod {pod} running"), || async {
        phase(server, pod) == "Running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_pods_are_bound_spread_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("n1"),
            NodeSpec::new("n2"),
            NodeSpec::new("n3"),
        ],
        HEARTBEAT,
    )
    .await;
    for i in 0..6 {
        create(
            &server,
            &pod(&format!("web-{i}"), "500m", serde_json::json!({})),
        );
    }
    for i in 0..6 {
        running(&server, &format!("web-{i}")).await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for node in placements(&server).values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node,
        [("n1", 2), ("n2", 2), ("n3", 2)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        "least-allocated scoring spreads identical pods"
    );

    let node = &placements(&server)["web-0"];
    let describe = server.kubectl().ok(&["describe", "pod", "web-0"]);
    let scheduled = describe
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["Normal", "Scheduled"]))
        .unwrap_or_else(|| panic!("no Scheduled event:\n{describe}"));
    assert!(
        scheduled.contains("default-scheduler")
            && scheduled.contains(&format!("Successfully assigned default/web-0 to {node}")),
        "{describe}"
    );
    let condition = server.kubectl().ok(&[
        "get",
        "pod",
        "web-0",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].status}",
    ]);
    assert_eq!(condition, "True");
    let holder = server.kubectl().ok(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert!(!holder.is_empty(), "the scheduler holds its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_go_only_where_they_fit_select_and_tolerate() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("small")
                .capacity("1", "2Gi")
                .label("disk", "hdd"),
            NodeSpec::new("big")
                .capacity("4", "8Gi")
                .label("disk", "ssd"),
            NodeSpec::new("gpu")
                .capacity("8", "16Gi")
                .taint("dedicated", "gpu", "NoSchedule"),
        ],
        HEARTBEAT,
    )
    .await;
    create(&server, &pod("large", "2", serde_json::json!({})));
    create(
        &server,
        &pod(
            "on-ssd",
            "100m",
            serde_json::json!({"nodeSelector": {"disk": "ssd"}}),
        ),
    );
    create(
        &server,
        &pod(
            "on-hdd",
            "100m",
            serde_json::json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]}
            ]}}}}),
        ),
    );
    create(
        &server,
        &pod(
            "tolerant",
            "100m",
            serde_json::json!({
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
                "nodeSelector": {"kubernetes.io/hostname": "gpu"},
            }),
        ),
    );
    for name in ["large", "on-ssd", "on-hdd", "tolerant"] {
        running(&server, name).await;
    }
    let placed = placements(&server);
    assert_eq!(
        placed["large"], "big",
        "the only untainted node with 2 CPUs"
    );
    assert_eq!(placed["on-ssd"], "big");
    assert_eq!(placed["on-hdd"], "small");
    assert_eq!(placed["tolerant"], "gpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_says_why_until_a_fitting_node_appears() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let control_plane = |name: &str| {
        NodeSpec::new(name).taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")
    };
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![
            NodeSpec::new("w1").capacity("1", "4Gi"),
            control_plane("cp1"),
            control_plane("cp2"),
        ],
        HEARTBEAT,
    )
    .await;
    create(&server, &pod("hungry", "2", serde_json::json!({})));
    let why = "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint \
               {node-role.kubernetes.io/control-plane: }. preemption: 0/3 nodes are available: \
               3 Preemption is not helpful for scheduling.";
    let kubectl = server.kubectl();
    eventually(WAIT, "a FailedScheduling event", || async {
        kubectl.ok(&["describe", "pod", "hungry"]).lines().any(|l| {
            l.split_whitespace()
                .take(2)
                .eq(["Warning", "FailedScheduling"])
        })
    })
    .await;
    let describe = kubectl.ok(&["describe", "pod", "hungry"]);
    let event = describe
        .lines()
        .find(|l| l.contains("FailedScheduling"))
        .unwrap();
    assert!(
        event.contains(&format!("default-scheduler  {why}")),
        "{describe}"
    );
    assert!(describe.contains("Status:           Pending"), "{describe}");
    eventually(WAIT, "the PodScheduled condition", || async {
        let condition = kubectl.ok(&[
            "get",
            "pod",
            "hungry",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")]}",
        ]);
        !condition.is_empty()
    })
    .await;
    let condition = |field: &str| {
        kubectl.ok(&[
            "get",
            "pod",
            "hungry",
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"PodScheduled\")].{field}}}"),
        ])
    };
    assert_eq!(condition("status"), "False");
    assert_eq!(condition("reason"), "Unschedulable");
    assert_eq!(condition("message"), why);

    let _more = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("w2").capacity("4", "8Gi")],
        HEARTBEAT,
    )
    .await;
    running(&server, "hungry").await;
    assert_eq!(placements(&server)["hungry"], "w2");
    let events = kubectl.ok(&["describe", "pod", "hungry"]);
    assert!(
        events.contains("Successfully assigned default/hungry to w2"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_important_pod_preempts_a_less_important_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("only").capacity("2", "4Gi")],
        HEARTBEAT,
    )
    .await;
    let kubectl = server.kubectl();
    kubectl.ok_with(
        &["create", "-f", "-"],
        Some(
            r#"{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "high"}, "value": 1000}"#,
        ),
    );
    create(&server, &pod("low", "1500m", serde_json::json!({})));
    running(&server, "low").await;
    create(
        &server,
        &pod(
            "high",
            "1500m",
            serde_json::json!({"priorityClassName": "high"}),
        ),
    );
    assert_eq!(
        kubectl.ok(&["get", "pod", "high", "-o", "jsonpath={.spec.priority}"]),
        "1000",
        "spec.priority comes from the PriorityClass"
    );
    let uid = kubectl.ok(&["get", "pod", "high", "-o", "jsonpath={.metadata.uid}"]);
    running(&server, "high").await;
    assert_eq!(
        placements(&server).get("high").map(String::as_str),
        Some("only")
    );
    eventually(WAIT, "the victim gone", || async {
        !kubectl.run(&["get", "pod", "low"], None).status.success()
    })
    .await;
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=low,reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert_eq!(events, format!("Preempted by pod {uid} on node only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_comes_from_the_priority_class() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    let classes = kubectl.ok(&["get", "priorityclasses", "--no-headers"]);
    let values: Vec<(&str, &str)> = classes
        .lines()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[0], cols[1])
        })
        .collect();
    assert_eq!(
        values,
        vec![
            ("system-cluster-critical", "2000000000"),
            ("system-node-critical", "2000001000")
        ]
    );

    create(
        &server,
        &pod(
            "critical",
            "10m",
            serde_json::json!({"priorityClassName": "system-node-critical"}),
        ),
    );
    create(&server, &pod("plain", "10m", serde_json::json!({})));
    let priority = |pod: &str| {
        kubectl.ok(&[
            "get",
            "pod",
            pod,
            "-o",
            "jsonpath={.spec.priority} {.spec.preemptionPolicy} {.spec.priorityClassName}",
        ])
    };
    assert_eq!(
        priority("critical"),
        "2000001000 PreemptLowerPriority system-node-critical"
    );
    assert_eq!(priority("plain"), "0 PreemptLowerPriority ");

    let refused = kubectl.fails(
        &["create", "-f", "-"],
        Some(&pod(
            "unknown",
            "10m",
            serde_json::json!({"priorityClassName": "nope"}),
        )),
    );
    assert!(
        refused.contains(
            "Error from server (Forbidden): error when creating \"STDIN\": pods \"unknown\" is \
             forbidden: no PriorityClass with name nope was found"
        ),
        "{refused}"
    );

    // A global default class gives its name and value to pods that name none.
    kubectl.ok_with(
        &["create", "-f", "-"],
        Some(
            r#"{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "batch"}, "value": 50, "globalDefault": true,
                "preemptionPolicy": "Never"}"#,
        ),
    );
    create(&server, &pod("defaulted", "10m", serde_json::json!({})));
    assert_eq!(priority("defaulted"), "50 Never batch");
    let refused = kubectl.fails(
        &["create", "-f", "-"],
        Some(&pod("given", "10m", serde_json::json!({"priority": 7}))),
    );
    assert!(
        refused.contains(
            "the integer value of priority (7) must not be provided in pod spec; priority \
             admission controller computed 50 from the given PriorityClass name"
        ),
        "{refused}"
    );
}
