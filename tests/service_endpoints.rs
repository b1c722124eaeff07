//! Services over pods whose endpoints change, on a real node (a `kedge server` with its
//! agent inside a test network namespace, tests/common/agent.rs): a UDP Service balances
//! over its pods and follows them as they come and go; an established TCP connection to a
//! surviving endpoint lives through scaling, deletions and a SIGKILL of the node; and the
//! node's network (kedge's nftables table, links, address allocations) is rebuilt as it
//! was after a restart and holds nothing of the pods and Services once they are gone.
//! The backends run the socat test image (tests/common/image.rs); the client is the test
//! itself in the node's namespace. All traffic stays inside the test's namespaces.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::agent::Node;
use common::kubectl::Kubectl;
use common::node_net::{bridge_ports, net_state, net_state_is, NetState};
use common::workloads::{cluster_ip, labelled, pod_ips, settled, until_ok, wait_all_ready};

/// What the `echo` pods run: an answer with the pod's name to each UDP datagram on 9000
/// (one socat per datagram, in a loop: with `fork`, socat's children race for the socket
/// and a loaded machine loses datagrams; `-t5` gives `hostname` time to answer), and on
/// TCP 9001 the pod's name, then an echo of what the connection sends.
const ECHO_SERVER: &str = "printf '#!/bin/sh\\nhostname\\nexec cat\\n' >/tmp/serve && chmod +x /tmp/serve && (while :; do socat -t5 UDP-RECVFROM:9000 SYSTEM:hostname; done) & exec socat TCP-LISTEN:9001,fork,reuseaddr EXEC:/tmp/serve";

/// The Service `echo` (selector `role: echo`) over [`ECHO_SERVER`] pods: a Deployment `echo`
/// of 3 and a lone pod `steady` (not the Deployment's: scaling never touches it).
fn echo_manifests() -> String {
    // One pod spec for both, as JSON (which YAML reads).
    let spec = serde_json::json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "main",
            "image": "socat:test",
            "command": ["sh", "-c", ECHO_SERVER],
            "readinessProbe": {"tcpSocket": {"port": 9001}, "periodSeconds": 1},
        }],
    });
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 3
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo, role: echo}}
    spec: {spec}
---
apiVersion: v1
kind: Pod
metadata:
  name: steady
  labels: {{app: steady, role: echo}}
spec: {spec}
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {{role: echo}}
  ports:
  - {{name: names, port: 9000, targetPort: 9000, protocol: UDP}}
  - {{name: echo, port: 9001, targetPort: 9001, protocol: TCP}}
"#
    )
}

/// Asks the UDP Service at `addr` from `socket`, like any UDP client (a resolver) up to 3
/// times, 1 s apart: the answer, or `NO ANSWER`.
fn ask(socket: &UdpSocket, addr: SocketAddr) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buffer = [0u8; 512];
    for _ in 0..3 {
        socket.send_to(b"who?\n", addr).unwrap();
        if let Ok(n) = socket.recv(&mut buffer) {
            return String::from_utf8_lossy(&buffer[..n]).trim().to_string();
        }
    }
    "NO ANSWER".to_string()
}

/// A UDP socket in the node's namespace on a port no earlier socket of this test process
/// had: a new flow, so a new pick of backend (an ephemeral port may be one an earlier
/// question used, whose flow the kernel still remembers for 30 s).
fn new_flow(node: &Node) -> UdpSocket {
    static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);
    let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
    common::agent::in_netns(node.host.netns(), || {
        UdpSocket::bind(("0.0.0.0", port)).unwrap()
    })
}

/// `count` questions to `addr` from the node itself, each on a new flow: the answers.
fn udp_answers(node: &Node, addr: SocketAddr, count: usize) -> Vec<String> {
    (0..count).map(|_| ask(&new_flow(node), addr)).collect()
}

/// Waits until the UDP Service at `addr` answers from exactly the pods `backends`.
async fn udp_rotation_is(node: &Node, addr: SocketAddr, backends: &BTreeSet<String>) {
    until_ok(
        Duration::from_secs(30),
        &format!("UDP answers from exactly {backends:?}"),
        || {
            let answers = udp_answers(node, addr, 15 * backends.len());
            let seen: BTreeSet<String> = answers.into_iter().collect();
            if &seen == backends {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

/// A TCP connection from the node to an `echo` backend, kept open across the test.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The pod that answered (its first line).
    backend: String,
}

impl Connection {
    fn open(node: &Node, addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = common::agent::in_netns(node.host.netns(), || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut backend = String::new();
        reader.read_line(&mut backend)?;
        Ok(Connection {
            reader,
            writer: stream,
            backend: backend.trim().to_string(),
        })
    }

    /// Sends `line` and asserts it comes back.
    fn echoes(&mut self, line: &str) {
        writeln!(self.writer, "{line}").unwrap();
        let mut back = String::new();
        let read = self.reader.read_line(&mut back);
        assert!(
            matches!(read, Ok(n) if n > 0) && back.trim() == line,
            "the connection to {} sent {line:?}, got {back:?} ({read:?})",
            self.backend
        );
    }
}

/// A node with the socat test image as well as busybox.
async fn start_with_socat(dir: &Path) -> Node {
    common::image::socat_oci_archive(&dir.join("agent/images"));
    Node::start(dir, &[]).await
}

/// Applies [`echo_manifests`] and waits for its pods: their names, and the Service's UDP
/// and TCP addresses.
async fn apply_echo(kubectl: &Kubectl<'_>) -> (BTreeSet<String>, SocketAddr, SocketAddr) {
    kubectl.ok_with(&["apply", "-f", "-"], Some(&echo_manifests()));
    let mut backends = settled(kubectl, "app=echo", 3).await;
    wait_all_ready(kubectl, &["pod/steady"], "90s");
    backends.insert("steady".to_string());
    let ip: Ipv4Addr = cluster_ip(kubectl, "echo").parse().unwrap();
    (
        backends,
        SocketAddr::from((ip, 9000)),
        SocketAddr::from((ip, 9001)),
    )
}

#[tokio::test]
async fn udp_balances_connections_survive_endpoint_changes_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start_with_socat(dir.path()).await;
    let kubectl = node.kubectl();
    // The network of a node with only the built-in Services (once the proxy has synced
    // them) and, once it has had a pod, the bridge: how it must look when everything is
    // gone.
    until_ok(Duration::from_secs(30), "the proxy's first sync", || {
        let state = net_state(&node);
        if state.table.contains("default/kubernetes/") {
            Ok(())
        } else {
            Err(format!("{state:#?}"))
        }
    })
    .await;
    let empty = NetState {
        links: ["kedge-svc", "kedge0", "lo"].map(String::from).to_vec(),
        ..net_state(&node)
    };

    let (backends, udp, tcp) = apply_echo(&kubectl).await;

    // UDP: every backend answers, at random.
    udp_rotation_is(&node, udp, &backends).await;

    // A connection to `steady` (whichever backend a new connection lands on is random).
    let mut tries = Vec::new();
    let mut connection = loop {
        let connection = Connection::open(&node, tcp).unwrap();
        if connection.backend == "steady" {
            break connection;
        }
        tries.push(connection.backend);
        assert!(tries.len() < 50, "never reached steady: {tries:?}");
    };
    connection.echoes("hello");

    // Endpoints come and go; the connection stays, and UDP follows every change.
    kubectl.ok(&["scale", "deployment", "echo", "--replicas=5"]);
    let mut backends = settled(&kubectl, "app=echo", 5).await;
    backends.insert("steady".to_string());
    udp_rotation_is(&node, udp, &backends).await;
    connection.echoes("after scaling up");
    kubectl.ok(&["scale", "deployment", "echo", "--replicas=2"]);
    let mut backends = settled(&kubectl, "app=echo", 2).await;
    backends.insert("steady".to_string());
    udp_rotation_is(&node, udp, &backends).await;
    connection.echoes("after scaling down");
    // A deleted backend leaves the rotation (its replacement joins it), and a client that
    // keeps its port (a resolver, a syslog or statsd sender) moves off it at once: as
    // upstream kube-proxy, kedge deletes the conntrack entries of UDP flows to an endpoint
    // that is gone (else the flow would point at the deleted pod for as long as the client
    // keeps sending: the entry's 30 s timeout restarts with each datagram).
    let (kept, gone) = loop {
        let socket = new_flow(&node);
        let backend = ask(&socket, udp);
        if backend.starts_with("echo-") {
            break (socket, backend);
        }
    };
    kubectl.ok(&["delete", "pod", &gone, "--wait=false"]);
    until_ok(
        Duration::from_secs(30),
        &format!("the kept flow to leave the deleted {gone}"),
        || {
            let answer = ask(&kept, udp);
            if answer != "NO ANSWER" && answer != gone {
                Ok(())
            } else {
                Err(answer)
            }
        },
    )
    .await;
    until_ok(Duration::from_secs(60), "the replacement pod", || {
        let pods = labelled(&kubectl, "app=echo");
        if pods.len() == 2 && !pods.contains(&gone) {
            Ok(())
        } else {
            Err(format!("{pods:?}"))
        }
    })
    .await;
    let mut backends = settled(&kubectl, "app=echo", 2).await;
    backends.insert("steady".to_string());
    udp_rotation_is(&node, udp, &backends).await;
    connection.echoes("after a deletion");

    // SIGKILL and restart with pods and Services present: the table is rebuilt as it was
    // (no chain twice), no link or allocation more or less, and the connection lives on.
    let before = net_state(&node);
    assert_eq!(before.allocations, pod_ips(&kubectl));
    assert_eq!(bridge_ports(&node).len(), backends.len());
    node.kill_and_restart().await;
    let kubectl = node.kubectl();
    net_state_is(&node, &before, "the same network after the restart").await;
    connection.echoes("after the restart");
    udp_rotation_is(&node, udp, &backends).await;
    drop(connection);

    // Everything deleted: the network is that of an empty node again, also after a
    // restart.
    kubectl.ok(&["delete", "deployment", "echo"]);
    kubectl.ok(&["delete", "service", "echo"]);
    kubectl.ok(&["delete", "pod", "steady", "--wait=false"]);
    settled(&kubectl, "role=echo", 0).await;
    net_state_is(&node, &empty, "the network of an empty node").await;
    node.kill_and_restart().await;
    net_state_is(
        &node,
        &empty,
        "the network of an empty node after a restart",
    )
    .await;
}
