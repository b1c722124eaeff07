//! A Service's other addresses on a real node (tests/common/agent.rs), as kube-proxy's
//! nftables mode serves them (src/net/proxy): `spec.externalIPs`, node ports under
//! `externalTrafficPolicy: Cluster` (masqueraded) and `Local` (the client's address kept),
//! and a LoadBalancer's `status.loadBalancer.ingress` address (the node's own, as ServiceLB
//! publishes) with `loadBalancerSourceRanges` dropping other sources. The client "outside"
//! is a second test host joined to the node by a veth; all traffic stays inside the test's
//! namespaces.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::agent::{Node, TestHost};
use common::workloads::{until_ok, wait_all_ready};

/// An address the test adds to the node's `lo` for `spec.externalIPs` (test hosts take
/// 192.0.2.1–250).
const EXTERNAL_IP: &str = "192.0.2.252";
/// Another address of the node, outside `loadBalancerSourceRanges`.
const OTHER_SOURCE: &str = "192.0.2.253";

/// One busybox httpd pod whose CGI `/cgi-bin/peer` answers the client's address as the
/// backend sees it, and the Services in front of it (`@NODE@` is the node's address).
const MANIFESTS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: peer
  labels: {app: peer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:1.35
    command:
    - sh
    - -c
    - |
      mkdir -p /www/cgi-bin
      printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho "$REMOTE_ADDR"\n' > /www/cgi-bin/peer
      chmod +x /www/cgi-bin/peer
      exec httpd -f -p 8080 -h /www
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: external
spec:
  selector: {app: peer}
  externalIPs: ["192.0.2.252"]
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: np-cluster
spec:
  type: NodePort
  externalTrafficPolicy: Cluster
  selector: {app: peer}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30081}
---
apiVersion: v1
kind: Service
metadata:
  name: np-local
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: peer}
  ports:
  - {port: 80, targetPort: 8080, nodePort: 30082}
---
apiVersion: v1
kind: Service
metadata:
  name: lb
spec:
  type: LoadBalancer
  selector: {app: peer}
  loadBalancerSourceRanges: ["@NODE@/32"]
  ports:
  - {port: 8081, targetPort: 8080}
"#;

/// `curl` of `url` inside `host` (from `source` if given): the body, or curl's exit code
/// and error.
fn fetch(host: &TestHost, url: &str, source: Option<&str>) -> Result<String, String> {
    let mut command = host.command("curl");
    command.args(["-sS", "--max-time", "3", url]);
    if let Some(source) = source {
        command.args(["--interface", source]);
    }
    let out = command.output().expect("curl runs (install curl)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{url}: curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The client address the backend saw, through `url` from `host`, once it answers.
async fn peer_seen(host: &TestHost, url: &str, source: Option<&str>) -> Ipv4Addr {
    let mut seen = None;
    until_ok(Duration::from_secs(30), url, || {
        let body = fetch(host, url, source)?;
        // busybox httpd listens on IPv6: `[::ffff:10.42.0.1]`.
        let address = body.trim_start_matches("[::ffff:").trim_end_matches(']');
        seen = Some(address.parse().map_err(|_| format!("{url}: {body}"))?);
        Ok(())
    })
    .await;
    seen.expect("answered")
}

fn add_address(host: &TestHost, address: &str) {
    let out = host
        .command("ip")
        .args(["addr", "add", &format!("{address}/32"), "dev", "lo"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn external_ips_node_port_policies_and_load_balancer_source_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let node_ip = node.host.ip();
    let client = node.host.neighbour();
    add_address(&node.host, EXTERNAL_IP);
    add_address(&node.host, OTHER_SOURCE);

    let manifests = MANIFESTS.replace("@NODE@", &node_ip.to_string());
    kubectl.ok_with(&["apply", "-f", "-"], Some(&manifests));
    // What ServiceLB would publish: the node's own address.
    let status = format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{node_ip}"}}]}}}}}}"#);
    kubectl.ok(&[
        "patch",
        "service",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    wait_all_ready(&kubectl, &["pod/peer"], "90s");

    // spec.externalIPs: an address of the node, reached from the node itself
    // (masqueraded: externalTrafficPolicy Cluster).
    let seen = peer_seen(
        &node.host,
        &format!("http://{EXTERNAL_IP}/cgi-bin/peer"),
        None,
    )
    .await;
    assert_ne!(seen.to_string(), EXTERNAL_IP);

    // Node ports from outside the node: Cluster masquerades, Local keeps the client's
    // address.
    let client_ip = client.ip();
    let cluster = peer_seen(
        &client,
        &format!("http://{node_ip}:30081/cgi-bin/peer"),
        None,
    )
    .await;
    assert_ne!(
        cluster, client_ip,
        "externalTrafficPolicy Cluster kept the source"
    );
    let local = peer_seen(
        &client,
        &format!("http://{node_ip}:30082/cgi-bin/peer"),
        None,
    )
    .await;
    assert_eq!(
        local, client_ip,
        "externalTrafficPolicy Local lost the source"
    );
    // The node itself still reaches a Local node port (kube-proxy's short-circuit).
    peer_seen(
        &node.host,
        &format!("http://{node_ip}:30082/cgi-bin/peer"),
        None,
    )
    .await;

    // The load balancer address (the node's) from an allowed source, the node itself.
    let lb = format!("http://{node_ip}:8081/cgi-bin/peer");
    peer_seen(&node.host, &lb, None).await;
    // Other sources are dropped: another address of the node, and the outside client.
    for (host, source) in [(&node.host, Some(OTHER_SOURCE)), (&client, None)] {
        let error = fetch(host, &lb, source).expect_err("a source outside the ranges answered");
        assert!(error.contains("exit Some(28)"), "{error}");
    }
    // Listed, the client gets through.
    let ranges =
        format!(r#"{{"spec":{{"loadBalancerSourceRanges":["{node_ip}/32","{client_ip}/32"]}}}}"#);
    kubectl.ok(&["patch", "service", "lb", "--type=merge", "-p", &ranges]);
    let seen = peer_seen(&client, &lb, None).await;
    assert_ne!(
        seen, client_ip,
        "externalTrafficPolicy Cluster kept the source"
    );
}
