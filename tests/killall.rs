//! `kedge killall` (k3s-killall.sh's counterpart) on a real node inside a test network
//! namespace (tests/common/agent.rs): after the server is SIGKILLed with a pod and a Service
//! running, killall leaves no shim or container process, no mount under the data dir, no
//! pod network namespace, no kedge link and no kedge nftables table; it is idempotent,
//! refuses while the server runs, and the node starts its pods again afterwards; another
//! node on the same machine keeps running.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::agent::{mounts_under, pids_in, Node};
use common::workloads::{apply_and_wait_ready, until_ok};
use common::KEDGE;

/// A busybox httpd pod serving its own name and a Service `web` over it.
const MANIFESTS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: busybox:1.35
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

/// `kedge killall --data-dir DIR` inside the node's host.
fn killall(node: &Node) -> Output {
    node.host
        .command(KEDGE)
        .args(["killall", "--data-dir"])
        .arg(&node.server.data_dir)
        .output()
        .expect("kedge killall runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `program args` inside the node's host; its stdout, or why it failed.
fn in_host(node: &Node, program: &str, args: &[&str]) -> Result<String, String> {
    let out = node.host.command(program).args(args).output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(text(&out)),
    }
}

/// (device, inode) of a namespace file.
fn inode(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}

#[tokio::test(flavor = "multi_thread")]
async fn killall_stops_the_nodes_containers_and_removes_its_mounts_links_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    // Another node on the same machine, whose pod killall must leave alone.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Node::start(other_dir.path(), &[]).await;
    apply_and_wait_ready(&other.kubectl(), MANIFESTS, "web");
    let other_uid = other
        .kubectl()
        .ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]);
    let other_netns = other.agent_dir().join("pods").join(other_uid).join("netns");
    let other_namespace = HashSet::from([inode(&other_netns)]);
    let kubectl = node.kubectl();
    apply_and_wait_ready(&kubectl, MANIFESTS, "web");
    let uid = kubectl.ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]);
    let pod_netns = node.agent_dir().join("pods").join(&uid).join("netns");
    let pod_namespace = HashSet::from([inode(&pod_netns)]);
    assert!(!pids_in(&pod_namespace).is_empty(), "the pod's httpd runs");
    until_ok(Duration::from_secs(30), "the service rules", || {
        in_host(&node, "nft", &["list", "table", "ip", "kedge-proxy"]).map(|_| ())
    })
    .await;

    // While the server runs: refused, and nothing is touched.
    let refused = killall(&node);
    assert!(!refused.status.success(), "{}", text(&refused));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(message.trim().lines().count(), 1, "{message}");
    assert!(message.contains("is running"), "{message}");
    assert!(!pids_in(&pod_namespace).is_empty(), "the pod still runs");

    node.server.kill();
    let done = killall(&node);
    assert!(done.status.success(), "{}", text(&done));

    assert_eq!(node.host.pids(), Vec::<i32>::new(), "no shim is left");
    assert_eq!(pids_in(&pod_namespace), Vec::<i32>::new(), "no container");
    assert_eq!(
        mounts_under(dir.path()),
        vec![],
        "no mount under the data dir"
    );
    assert!(!pod_netns.exists(), "the pod's namespace file is gone");
    let links = in_host(&node, "ip", &["-o", "link", "show"]).unwrap();
    for gone in ["kedge0", "kedge-svc", "veth"] {
        assert!(!links.contains(gone), "{gone} is left:\n{links}");
    }
    let table = in_host(&node, "nft", &["list", "table", "ip", "kedge-proxy"]);
    assert!(table.is_err(), "the nftables table is left: {table:?}");
    let routes = in_host(&node, "ip", &["-o", "route", "show"]).unwrap();
    assert!(!routes.contains("10.43.0.0/16"), "{routes}");
    let allocations: Vec<_> = std::fs::read_dir(node.agent_dir().join("net/ipam"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        allocations
            .iter()
            .all(|name| name.parse::<std::net::Ipv4Addr>().is_err()),
        "address allocations are left: {allocations:?}"
    );
    assert!(
        !pids_in(&other_namespace).is_empty(),
        "the other node's pod runs on"
    );
    assert!(
        !mounts_under(other_dir.path()).is_empty(),
        "the other node keeps its mounts"
    );
    let other_links = other
        .host
        .command("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&other_links.stdout).contains("kedge0"));

    let again = killall(&node);
    assert!(again.status.success(), "a second run: {}", text(&again));
    assert!(text(&again).contains("killed 0 shims"), "{}", text(&again));

    // The node comes back and runs the pod again, reachable through its Service.
    node.server.start();
    node.wait_ready(Duration::from_secs(60)).await;
    let kubectl = node.kubectl();
    until_ok(
        Duration::from_secs(90),
        "the pod serving through its Service again",
        || {
            let out = kubectl.run(
                // busybox's own `wget -T` crashes; `timeout` bounds it instead.
                &[
                    "exec",
                    "web",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO-",
                    "http://web.default.svc.cluster.local",
                ],
                None,
            );
            match String::from_utf8_lossy(&out.stdout).trim() {
                "web" => Ok(()),
                _ => Err(text(&out)),
            }
        },
    )
    .await;
}
