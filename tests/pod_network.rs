//! The pod network on a real node (a `kedge server` with its agent inside a test network
//! namespace, tests/common/agent.rs): pods get addresses from the node's pod CIDR, reach
//! each other by address over the bridge, keep their addresses across an agent crash, and
//! leave no veth or address allocation behind. All traffic stays inside the test's
//! namespaces. What a user sees comes from kubectl; the node's links from `ip -n <host>`
//! and its allocations from `<agent>/net/ipam`.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::agent::Node;
use common::kubectl::Kubectl;
use common::node_net::{allocations, bridge_ports, ip_in_host};
use common::workloads::until_ok;

/// A busybox pod; `server` ones answer HTTP on 8080 (busybox httpd, logging each client's
/// address) with their own name, and are Ready once the port accepts connections.
fn pod(name: &str, server: bool) -> String {
    let (script, probe) = if server {
        (
            format!("mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -v -p 8080 -h /www"),
            "    readinessProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n",
        )
    } else {
        ("exec sleep 3600".to_string(), "")
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", {script:?}]
{probe}"#
    )
}

fn apply_ready(kubectl: &Kubectl<'_>, pods: &[(&str, bool)]) {
    for (name, server) in pods {
        kubectl.ok_with(&["apply", "-f", "-"], Some(&pod(name, *server)));
    }
    let names: Vec<String> = pods.iter().map(|(n, _)| format!("pod/{n}")).collect();
    let mut args = vec!["wait", "--for=condition=Ready", "--timeout=90s"];
    args.extend(names.iter().map(String::as_str));
    let out = kubectl.run(&args, None);
    if !out.status.success() {
        let described = kubectl.run(&["describe", "pods"], None);
        panic!(
            "pods not Ready: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&described.stdout)
        );
    }
}

/// Pod name → IP, from the IP column of `kubectl get pods -o wide` (found by the header's
/// offset: cells such as `1 (5s ago)` hold spaces).
fn wide_ips(kubectl: &Kubectl<'_>) -> Vec<(String, String)> {
    let table = kubectl.ok(&["get", "pods", "-o", "wide"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let offset = header
        .find(" IP ")
        .map(|at| at + 1)
        .unwrap_or_else(|| panic!("no IP column: {table}"));
    lines
        .map(|l| {
            let name = l.split_whitespace().next().unwrap_or_default();
            let ip = l
                .get(offset..)
                .unwrap_or_default()
                .split_whitespace()
                .next();
            (name.to_string(), ip.unwrap_or_default().to_string())
        })
        .collect()
}

fn pod_cidr(node: &Node) -> ipnet::Ipv4Net {
    let cidr = node
        .kubectl()
        .ok(&["get", "node", node.name(), "-o", "jsonpath={.spec.podCIDR}"]);
    cidr.parse().unwrap_or_else(|_| panic!("podCIDR {cidr:?}"))
}

/// `wget` from `from` to `http://ip:8080/`; the body. (busybox's own `wget -T` crashes,
/// hence `timeout`.)
fn fetch(kubectl: &Kubectl<'_>, from: &str, ip: &str) -> String {
    let url = format!("http://{ip}:8080/");
    kubectl.ok(&["exec", from, "--", "timeout", "10", "wget", "-qO-", &url])
}

/// Ok when `done`, else the node's ports, allocations and pods as the failure context.
fn state(node: &Node, done: bool) -> Result<(), String> {
    if done {
        return Ok(());
    }
    Err(format!(
        "bridge ports {:?}\nallocations {:?}\n{}",
        bridge_ports(node),
        allocations(node),
        String::from_utf8_lossy(
            &node
                .kubectl()
                .run(&["get", "pods", "-o", "wide"], None)
                .stdout
        )
    ))
}

#[tokio::test]
async fn pods_get_addresses_from_the_node_range_and_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let range = pod_cidr(&node);
    let gateway = Ipv4Addr::from(u32::from(range.network()) + 1);
    apply_ready(&kubectl, &[("web", true), ("client", false)]);

    let ips = wide_ips(&kubectl);
    assert_eq!(ips.len(), 2, "{ips:?}");
    let ip_of = |name: &str| -> String {
        ips.iter()
            .find(|(n, _)| n == name)
            .map(|(_, ip)| ip.clone())
            .unwrap_or_else(|| panic!("{name} in {ips:?}"))
    };
    let (web, client) = (ip_of("web"), ip_of("client"));
    assert_ne!(web, client);
    for ip in [&web, &client] {
        let ip: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("pod IP {ip:?}"));
        assert!(range.contains(&ip) && ip != gateway, "{ip} in {range}");
    }
    assert_eq!(
        kubectl.ok(&["get", "pod", "web", "-o", "jsonpath={.status.podIPs[*].ip}"]),
        web
    );

    // Pod to pod over the bridge, no NAT: the server sees the client's own address.
    assert_eq!(fetch(&kubectl, "client", &web), "hello from web\n");
    let log = kubectl.ok(&["logs", "web"]);
    assert!(log.contains(&format!("[::ffff:{client}]:")), "{log}");
    // Inside the pod: eth0 with the address, the MTU for the overlay, the default route
    // via the bridge; /etc/hosts names the pod's own address.
    let eth0 = kubectl.ok(&["exec", "client", "--", "ip", "addr", "show", "eth0"]);
    assert!(eth0.contains(&format!("inet {client}/24")), "{eth0}");
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    let routes = kubectl.ok(&["exec", "client", "--", "ip", "route"]);
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "{routes}"
    );
    let hosts = kubectl.ok(&["exec", "client", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{client}\tclient")), "{hosts}");

    // On the node: the bridge holds the gateway, one hairpin port per pod, and one
    // allocation per pod.
    let bridge = ip_in_host(&node, &["addr", "show", "kedge0"]);
    assert!(bridge.contains(&format!("inet {gateway}/24")), "{bridge}");
    assert_eq!(bridge_ports(&node).len(), 2, "{:?}", bridge_ports(&node));
    let details = ip_in_host(&node, &["-d", "link", "show", "master", "kedge0"]);
    assert_eq!(details.matches("hairpin on").count(), 2, "{details}");
    let mut expected: Vec<Ipv4Addr> = [&web, &client]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    expected.sort();
    assert_eq!(allocations(&node), expected);

    // Gone with the pods: no veth on the bridge, no allocation.
    kubectl.ok(&["delete", "pod", "web", "client", "--timeout=60s"]);
    until_ok(
        Duration::from_secs(30),
        "the pods' veths and addresses to go",
        || {
            state(
                &node,
                bridge_ports(&node).is_empty() && allocations(&node).is_empty(),
            )
        },
    )
    .await;
}

#[tokio::test]
async fn pods_keep_their_addresses_across_an_agent_crash_and_free_them_when_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    apply_ready(&node.kubectl(), &[("web", true), ("client", false)]);
    let before = wide_ips(&node.kubectl());
    let ports = bridge_ports(&node);
    assert_eq!(ports.len(), 2);

    node.kill_and_restart().await;
    // Past a few sync loops of the restarted agent.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kubectl = node.kubectl();
    apply_ready(&kubectl, &[("web", true), ("client", false)]);
    assert_eq!(wide_ips(&kubectl), before);
    assert_eq!(bridge_ports(&node), ports, "the same veths");
    let web = &before.iter().find(|(n, _)| n == "web").unwrap().1;
    assert_eq!(fetch(&kubectl, "client", web), "hello from web\n");
    assert_eq!(allocations(&node).len(), 2);

    // The restarted agent frees what a deleted pod held.
    kubectl.ok(&["delete", "pod", "web", "--timeout=60s"]);
    let client: Ipv4Addr = before
        .iter()
        .find(|(n, _)| n == "client")
        .unwrap()
        .1
        .parse()
        .unwrap();
    until_ok(
        Duration::from_secs(30),
        "web's veth and address to go",
        || {
            state(
                &node,
                bridge_ports(&node).len() == 1 && allocations(&node) == [client],
            )
        },
    )
    .await;
}

/// A node that goes down hard (a power cut): the agent is SIGKILLed, every container dies
/// and the pods' namespaces (and so their veths) vanish, while the address allocations
/// stay on disk. Back up, the agent frees them before the pods get new sandboxes: nothing
/// leaks, and the pods talk again on their new addresses.
#[tokio::test]
async fn after_a_node_crash_the_pods_old_addresses_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    apply_ready(&node.kubectl(), &[("web", true), ("client", false)]);
    let before = allocations(&node);
    assert_eq!(before.len(), 2);

    node.server.kill();
    let namespaces: Vec<std::path::PathBuf> = std::fs::read_dir(node.agent_dir().join("pods"))
        .unwrap()
        .map(|e| e.unwrap().path().join("netns"))
        .collect();
    common::agent::kill_in_namespaces(&namespaces);
    for netns in &namespaces {
        nix::mount::umount2(netns, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    until_ok(Duration::from_secs(10), "the pods' veths to vanish", || {
        state(&node, bridge_ports(&node).is_empty())
    })
    .await;
    assert_eq!(allocations(&node), before, "allocations outlive the crash");

    node.server.start();
    node.wait_ready(Duration::from_secs(60)).await;
    let kubectl = node.kubectl();
    // The containers restart (crash-loop back-off's first delay) in new sandboxes.
    until_ok(
        Duration::from_secs(90),
        "both pods back with new addresses",
        || {
            let ips = wide_ips(&kubectl);
            let back = ips.len() == 2
                && ips
                    .iter()
                    .all(|(_, ip)| ip.parse::<Ipv4Addr>().is_ok_and(|ip| !before.contains(&ip)));
            state(&node, back)
        },
    )
    .await;
    apply_ready(&kubectl, &[("web", true), ("client", false)]);
    let now = wide_ips(&kubectl);
    let mut expected: Vec<Ipv4Addr> = now.iter().map(|(_, ip)| ip.parse().unwrap()).collect();
    expected.sort();
    assert_eq!(
        allocations(&node),
        expected,
        "only the new addresses are held"
    );
    assert_eq!(bridge_ports(&node).len(), 2);
    let web = &now.iter().find(|(n, _)| n == "web").unwrap().1;
    assert_eq!(fetch(&kubectl, "client", web), "hello from web\n");
}

/// A pod that ran to completion gives its address back at once (as upstream stops a
/// finished pod's sandbox) while its status still shows the address it had.
#[tokio::test]
async fn a_finished_pod_gives_its_address_back_and_still_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let manifest = r#"apiVersion: v1
kind: Pod
metadata:
  name: once
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "ip -4 -o addr show eth0"]
"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(manifest));
    until_ok(
        Duration::from_secs(60),
        "the pod to succeed and its address to go back",
        || {
            let phase = kubectl.ok(&["get", "pod", "once", "-o", "jsonpath={.status.phase}"]);
            state(
                &node,
                phase == "Succeeded"
                    && allocations(&node).is_empty()
                    && bridge_ports(&node).is_empty(),
            )
        },
    )
    .await;
    let ip = kubectl.ok(&["get", "pod", "once", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10.42."), "podIP {ip:?}");
    let log = kubectl.ok(&["logs", "once"]);
    assert!(log.contains(&format!("inet {ip}/24")), "{log}");
}

/// `hostNetwork: true`: the pod shares the node's namespace and address; the pod network
/// gives it nothing (no veth, no allocation).
#[tokio::test]
async fn a_host_network_pod_uses_the_node_address() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let manifest = r#"apiVersion: v1
kind: Pod
metadata:
  name: on-host
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: ["sleep", "3600"]
"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(manifest));
    let out = kubectl.run(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/on-host",
            "--timeout=90s",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        wide_ips(&kubectl),
        [("on-host".to_string(), node.host.ip().to_string())]
    );
    let addresses = kubectl.ok(&["exec", "on-host", "--", "ip", "-4", "-o", "addr"]);
    assert!(
        addresses.contains(&format!("inet {}/32", node.host.ip())),
        "{addresses}"
    );
    assert!(allocations(&node).is_empty());
    assert!(bridge_ports(&node).is_empty());
}
