//! ServiceLB (src/controllers/service_lb): LoadBalancer Services show the addresses of the
//! nodes that would run k3s's svclb pods under EXTERNAL-IP, a second Service asking for a
//! port another one holds stays `<pending>` with an event saying why until the port is
//! free, the address goes when a Service stops being a LoadBalancer, and `--disable
//! servicelb` leaves them all pending. The node's service proxy forwards the published
//! address to the pods. On a real node (inside a test network namespace) and
//! on simulated nodes for what needs several of them; kubectl is the judge.

mod common;

use std::time::{Duration, Instant};

use common::agent::{Node, TestHost};
use common::kubectl::Kubectl;
use common::nodes::{NodeSpec, SimulatedNodes};
use common::workloads::{until, until_ok, web_deployment};
use common::{started_server_with, LogDump, KEDGE};

/// The LoadBalancer Service `web` on port 8080 over [`web_deployment`]`("web", n)`'s pods.
const WEB: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
"#;

/// A LoadBalancer Service `name` over the `web` pods on `port`.
fn load_balancer(name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports:
  - {{name: http, port: {port}, targetPort: 8080}}
"#
    )
}

/// The EXTERNAL-IP column of `kubectl get service NAME`.
fn external_ip(kubectl: &Kubectl<'_>, service: &str) -> String {
    let row = kubectl.ok(&["get", "service", service, "--no-headers"]);
    row.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string()
}

/// Waits until `kubectl get service NAME` shows `want` under EXTERNAL-IP.
async fn until_external_ip(kubectl: &Kubectl<'_>, service: &str, want: &str) {
    until(
        kubectl,
        &["get", "service", service, "--no-headers"],
        Duration::from_secs(30),
        &format!("EXTERNAL-IP {want} on {service}"),
        |row| row.split_whitespace().nth(3) == Some(want),
    )
    .await;
}

/// `reason: message` of every event about the Service `name`, one a line.
const EVENTS: &str = r#"jsonpath={range .items[?(@.involvedObject.kind=="Service")]}{.involvedObject.name} {.reason}: {.message}{"\n"}{end}"#;

async fn until_event(kubectl: &Kubectl<'_>, service: &str, wanted: &str) -> String {
    let prefix = format!("{service} ");
    until(
        kubectl,
        &["get", "events", "-o", EVENTS],
        Duration::from_secs(30),
        &format!("an event on {service} with {wanted:?}"),
        |events| {
            events
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(wanted))
        },
    )
    .await
}

/// `curl URL` from the node's own namespace: whether it answered, and the body (or error).
fn fetch_on_node(node: &Node, url: &str) -> (bool, String) {
    let out = node
        .host
        .command("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .unwrap();
    if out.status.success() {
        (true, String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        (false, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_node_address_is_published_and_forwarded_and_a_taken_port_waits_until_freed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let address = node.host.ip().to_string();
    let web = format!("{}---\n{WEB}", web_deployment("web", 3));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&web));

    until_external_ip(&kubectl, "web", &address).await;
    assert_eq!(
        kubectl.ok(&[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[*].ipMode}"
        ]),
        "VIP"
    );
    until_event(
        &kubectl,
        "web",
        &format!("UpdatedLoadBalancer: Updated LoadBalancer with new IPs: [] -> [{address}]"),
    )
    .await;

    // The node's service proxy forwards the address: from the node, it reaches the pods.
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let pods = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let url = format!("http://{address}:8080/");
    until_ok(
        Duration::from_secs(30),
        &format!("an answer from {url}"),
        || {
            let (ok, body) = fetch_on_node(&node, &url);
            if ok && pods.split_whitespace().any(|p| p == body.trim()) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;

    // The same port again: the node's port is taken, the newer Service waits, and says why.
    kubectl.ok_with(&["apply", "-f", "-"], Some(&load_balancer("web-b", 8080)));
    let events = until_event(&kubectl, "web-b", "didn't have free ports").await;
    let line = events.lines().find(|l| l.starts_with("web-b ")).unwrap();
    assert!(
        line.contains("UnAvailableLoadBalancer")
            && line.contains("8080/TCP is held by LoadBalancer Service default/web")
            && line.contains(node.name()),
        "{line}"
    );
    assert_eq!(external_ip(&kubectl, "web-b"), "<pending>");
    // Another port is free: a third Service gets the address at once.
    kubectl.ok_with(&["apply", "-f", "-"], Some(&load_balancer("web-c", 8081)));
    until_external_ip(&kubectl, "web-c", &address).await;
    assert_eq!(external_ip(&kubectl, "web-b"), "<pending>");

    // The holder goes: the waiting Service takes the port.
    kubectl.ok(&["delete", "service", "web"]);
    until_external_ip(&kubectl, "web-b", &address).await;
    until_ok(
        Duration::from_secs(30),
        "web-b serving the port",
        || match fetch_on_node(&node, &url) {
            (true, _) => Ok(()),
            (false, error) => Err(error),
        },
    )
    .await;

    // No longer a LoadBalancer: the address goes.
    kubectl.ok(&[
        "patch",
        "service",
        "web-b",
        "--type=merge",
        "-p",
        r#"{"spec": {"type": "ClusterIP"}}"#,
    ]);
    until_external_ip(&kubectl, "web-b", "<none>").await;
    until_ok(
        Duration::from_secs(30),
        "the port no longer forwarded",
        || match fetch_on_node(&node, &url) {
            (true, body) => Err(body),
            (false, _) => Ok(()),
        },
    )
    .await;
    assert_eq!(
        kubectl.ok(&[
            "get",
            "service",
            "web-b",
            "-o",
            "jsonpath={.status.loadBalancer}"
        ]),
        "{}"
    );
}

const ENABLE_LB: &str = "svccontroller.k3s.cattle.io/enablelb";

/// A control-plane-only server with the simulated nodes `sim-1` (172.30.0.1) and `sim-2`
/// (172.30.0.2); a node silent for 5 s turns NotReady.
async fn two_simulated_nodes(
    dir: &std::path::Path,
    flags: &[&str],
) -> (common::Server, LogDump, SimulatedNodes) {
    let mut args = vec!["--node-monitor-grace-period", "5s"];
    args.extend_from_slice(flags);
    let server = started_server_with(dir, &args).await;
    let logs = LogDump(vec![server.log.clone()]);
    let nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("sim-1"), NodeSpec::new("sim-2")],
        Duration::from_secs(1),
    )
    .await;
    (server, logs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_follow_node_labels_readiness_local_endpoints_external_ips_and_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _logs, nodes) = two_simulated_nodes(dir.path(), &[]).await;
    let kubectl = server.kubectl();
    let both = "172.30.0.1,172.30.0.2";
    let web = format!("{}---\n{WEB}", web_deployment("web", 1));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&web));
    until_external_ip(&kubectl, "web", both).await;
    // Settled: node heartbeats, the pod starting and re-syncs write nothing more.
    let version = || {
        kubectl.ok(&[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = version();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(version(), before);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A node labelled enablelb=true: only labelled nodes serve; unlabelled, all again.
    kubectl.ok(&["label", "node", "sim-2", &format!("{ENABLE_LB}=true")]);
    until_external_ip(&kubectl, "web", "172.30.0.2").await;
    kubectl.ok(&["label", "node", "sim-2", &format!("{ENABLE_LB}-")]);
    until_external_ip(&kubectl, "web", both).await;

    // externalTrafficPolicy: Local: only the node running the ready pod.
    until(
        &kubectl,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ],
        Duration::from_secs(30),
        "the web pod Ready",
        |s| s == "True",
    )
    .await;
    let on = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[0].spec.nodeName}",
    ]);
    let local = if on == "sim-1" {
        "172.30.0.1"
    } else {
        "172.30.0.2"
    };
    for (policy, want) in [("Local", local), ("Cluster", both)] {
        let patch = format!(r#"{{"spec": {{"externalTrafficPolicy": "{policy}"}}}}"#);
        kubectl.ok(&["patch", "service", "web", "--type=merge", "-p", &patch]);
        until_external_ip(&kubectl, "web", want).await;
    }

    // A node that stops reporting leaves; back, it returns.
    nodes.silence("sim-1");
    until_external_ip(&kubectl, "web", "172.30.0.2").await;
    nodes.revive("sim-1");
    until_external_ip(&kubectl, "web", both).await;

    // A node with an ExternalIP: ExternalIPs are published instead of InternalIPs.
    let addresses = r#"{"status": {"addresses": [
        {"type": "InternalIP", "address": "172.30.0.1"},
        {"type": "ExternalIP", "address": "203.0.113.7"},
        {"type": "Hostname", "address": "sim-1"}]}}"#;
    kubectl.ok(&[
        "patch",
        "node",
        "sim-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        addresses,
    ]);
    until_external_ip(&kubectl, "web", "203.0.113.7").await;

    // Another implementation's class is left alone: a later Service of ours gets its
    // address while that one stays pending.
    let classed = load_balancer("other", 81).replace(
        "type: LoadBalancer",
        "type: LoadBalancer\n  loadBalancerClass: example.com/lb",
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(&classed));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&load_balancer("ours", 82)));
    until_external_ip(&kubectl, "ours", "203.0.113.7").await;
    assert_eq!(external_ip(&kubectl, "other"), "<pending>");

    // A node that goes takes its address along.
    kubectl.ok(&["delete", "node", "sim-1"]);
    until_external_ip(&kubectl, "web", "172.30.0.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_servicelb_leaves_load_balancers_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _logs, _nodes) =
        two_simulated_nodes(dir.path(), &["--disable", "servicelb", "--disable=traefik"]).await;
    let kubectl = server.kubectl();
    kubectl.ok_with(&["apply", "-f", "-"], Some(&load_balancer("web", 8080)));
    // The controllers are running and have seen the Service (its EndpointSlice is there) …
    until(
        &kubectl,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ],
        Duration::from_secs(30),
        "the Service's EndpointSlice",
        |s| !s.trim().is_empty(),
    )
    .await;
    // … and ServiceLB, which answers within a second when it runs, never does.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(5) {
        assert_eq!(external_ip(&kubectl, "web"), "<pending>");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // k3s's components that kedge has no such thing for are accepted with a warning.
    assert!(
        server.log_text().contains("--disable traefik"),
        "{}",
        server.log_text()
    );
}

#[test]
fn an_unknown_component_to_disable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Inside a namespace of its own, in case it did start.
    let host = TestHost::new();
    let out = host
        .command(KEDGE)
        .args(["server", "--data-dir"])
        .arg(dir.path())
        .args(["--disable", "servicelb,klipper"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("unknown component \"klipper\"") && first.contains("servicelb"),
        "{stderr}"
    );
}
