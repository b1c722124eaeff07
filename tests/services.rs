//! Services on a real node (a `kedge server` with its agent inside a test network
//! namespace, tests/common/agent.rs): the node's service proxy (kube-proxy's nftables mode,
//! src/net/proxy) load-balances ClusterIP and NodePort traffic over ready pods, rejects at
//! once what has nowhere to go, serves the node-local cluster DNS address over UDP, and
//! keeps to its own nftables table (UDP Services over pods and changing endpoints:
//! tests/service_endpoints.rs). All traffic stays inside the test's namespaces.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::agent::Node;
use common::kubectl::Kubectl;
use common::node_net::{nft_ruleset, on_node};
use common::workloads::{cluster_ip, labelled, until_ok, wait_all_ready, web_deployment};

/// Beside [`web_deployment`]`("web", 3)`: a NodePort Service `web` (80 → 8080, node port
/// 30080) over its pods, a Service `empty` whose selector matches nothing, and a client pod.
const MANIFESTS: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: v1
kind: Service
metadata:
  name: empty
spec:
  selector: {app: nothing}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: sticky
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: ["sleep", "3600"]
"#;

/// `count` fetches of `url` from the pod `from` (busybox's own `wget -T` crashes, hence
/// `timeout`): one line per fetch, the body or `FAILED <wget's error>`.
fn fetches(kubectl: &Kubectl<'_>, from: &str, url: &str, count: usize) -> Vec<String> {
    let script = format!(
        "for i in $(seq {count}); do timeout 10 wget -qO- {url} 2>/tmp/err || echo FAILED $(cat /tmp/err); done"
    );
    kubectl
        .ok(&["exec", from, "--", "sh", "-c", &script])
        .lines()
        .map(str::to_string)
        .collect()
}

/// One fetch from the pod `from` that must fail: how long it took and wget's error.
fn refused(kubectl: &Kubectl<'_>, from: &str, url: &str) -> (Duration, String) {
    let started = Instant::now();
    let out = kubectl.run(
        &["exec", from, "--", "timeout", "10", "wget", "-qO-", url],
        None,
    );
    assert!(!out.status.success(), "{url} answered");
    (
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cluster_ip_and_node_port_balance_over_ready_pods_and_refuse_what_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    // Someone else's table on the node: the proxy must leave it alone.
    let bystander = on_node(
        &node,
        "nft",
        &["add table inet bystander; add chain inet bystander c; add rule inet bystander c counter"],
    );
    assert!(bystander.status.success());

    let manifests = format!("{}---\n{MANIFESTS}", web_deployment("web", 3));
    kubectl.ok_with(&["apply", "-f", "-"], Some(&manifests));
    wait_all_ready(&kubectl, &["pod/client"], "90s");
    let out = kubectl.run(
        &["rollout", "status", "deployment/web", "--timeout=90s"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pods = labelled(&kubectl, "app=web");
    assert_eq!(pods.len(), 3, "{pods:?}");
    let ip = cluster_ip(&kubectl, "web");
    let url = format!("http://{ip}/");

    // All three backends answer the Service's name, at random: the client pod resolves it
    // through its own /etc/resolv.conf (the cluster DNS address, DNATed to the node's DNS
    // server), then connects to the ClusterIP.
    until_ok(
        Duration::from_secs(30),
        "all 3 backends behind web.default.svc.cluster.local",
        || {
            let seen = fetches(
                &kubectl,
                "client",
                "http://web.default.svc.cluster.local",
                60,
            );
            let names: BTreeSet<String> = seen.iter().cloned().collect();
            if names == pods {
                Ok(())
            } else {
                Err(format!("{names:?}\n{}", nft_ruleset(&node)))
            }
        },
    )
    .await;

    // sessionAffinity: ClientIP: one client, one backend.
    let sticky = format!("http://{}/", cluster_ip(&kubectl, "sticky"));
    let seen: BTreeSet<String> = fetches(&kubectl, "client", &sticky, 20)
        .into_iter()
        .collect();
    assert!(
        seen.len() == 1 && pods.contains(seen.iter().next().unwrap()),
        "{seen:?}"
    );

    // Hairpin: a backend reaching its own Service, itself included.
    let me = pods.iter().next().unwrap().clone();
    let seen = fetches(&kubectl, &me, &url, 30);
    assert!(seen.iter().all(|s| pods.contains(s)), "{seen:?}");
    assert!(seen.contains(&me), "{me} never reached itself: {seen:?}");

    // From the node itself: the ClusterIP and the node port on the node's address.
    for target in [url.clone(), format!("http://{}:30080/", node.host.ip())] {
        let out = on_node(&node, "curl", &["-sS", "--max-time", "10", &target]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && pods.contains(body.trim()),
            "{target}: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Nowhere to go: refused at once, not a timeout.
    let empty = format!("http://{}/", cluster_ip(&kubectl, "empty"));
    for target in [empty, "http://10.43.255.254/".to_string()] {
        let (took, error) = refused(&kubectl, "client", &target);
        assert!(
            error.contains("Connection refused") && took < Duration::from_secs(5),
            "{target}: {error} after {took:?}"
        );
    }
    let out = on_node(
        &node,
        "curl",
        &["-sS", "--max-time", "10", "http://10.43.255.254/"],
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A deleted backend leaves the rotation.
    kubectl.ok(&["delete", "pod", &me, "--wait=false"]);
    until_ok(
        Duration::from_secs(30),
        "the deleted pod to leave the rotation",
        || {
            let seen = fetches(&kubectl, "client", &url, 30);
            let ok = seen.iter().all(|s| !s.starts_with("FAILED")) && !seen.contains(&me);
            if ok {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;

    // Gone with the Services: no chain of theirs; the other table untouched.
    kubectl.ok(&["delete", "service", "web", "empty", "sticky"]);
    kubectl.ok(&["delete", "deployment", "web"]);
    until_ok(
        Duration::from_secs(10),
        "the Services' chains to go",
        || {
            let ruleset = nft_ruleset(&node);
            if ["/web/", "/empty/", "/sticky/"]
                .iter()
                .any(|s| ruleset.contains(s))
            {
                Err(ruleset)
            } else {
                Ok(())
            }
        },
    )
    .await;
    let ruleset = nft_ruleset(&node);
    assert!(ruleset.contains("table inet bystander"), "{ruleset}");
    assert!(ruleset.contains("table ip kedge-proxy"), "{ruleset}");
}

/// The cluster DNS Service (kube-system/kube-dns, no endpoints) reaches the node-local DNS
/// server on the bridge gateway, over UDP: the `kubernetes` Service resolves through it.
#[tokio::test]
async fn udp_to_the_cluster_dns_address_reaches_the_node_local_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: ["sleep", "3600"]
"#,
        ),
    );
    wait_all_ready(&kubectl, &["pod/client"], "90s");
    let lookup = |kubectl: &Kubectl<'_>| {
        let args = [
            "exec",
            "client",
            "--",
            "timeout",
            "5",
            "nslookup",
            "kubernetes.default.svc.cluster.local",
            "10.43.0.10",
        ];
        let out = kubectl.run(&args, None);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.contains("Address: 10.43.0.1\n") {
            Ok(())
        } else {
            Err(text)
        }
    };
    until_ok(
        Duration::from_secs(20),
        "an answer through 10.43.0.10",
        || lookup(&kubectl),
    )
    .await;
    // The ruleset is rebuilt from the API when the agent starts again, even if the table
    // was lost meanwhile.
    node.server.kill();
    let deleted = on_node(&node, "nft", &["delete table ip kedge-proxy"]);
    assert!(deleted.status.success());
    node.server.start();
    node.wait_ready(Duration::from_secs(60)).await;
    let kubectl = node.kubectl();
    until_ok(
        Duration::from_secs(20),
        "an answer after the restart",
        || lookup(&kubectl),
    )
    .await;
}
