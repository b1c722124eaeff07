//! The cluster DNS benchmark's second part: queries from inside a pod of a real node (see
//! the bench's doc). The node's `--resolv-conf` names 127.0.0.1, where a dnsmasq in the
//! node's namespace answers every `*.bench` name (kedge's upstream for forwarded names); a
//! second dnsmasq on the pod gateway, port 5353, serves the cluster names as static records
//! (the anchor: a plain authoritative server, no API caches behind it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::common::agent::{in_netns, Node};
use super::common::workloads::apply_and_wait_ready;
use super::{load, Report, POD_CLIENTS};

const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);
/// Where the anchor dnsmasq listens on the pod gateway.
const ANCHOR_PORT: u16 = 5353;
/// What the upstream dnsmasq answers for every `*.bench` name.
const UPSTREAM_ANSWER: &str = "192.0.2.200";

/// A pod (the load generator's namespace, and the Services' one endpoint), a ClusterIP
/// Service and a headless Service over it.
const MANIFESTS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: dns-client
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: main
    image: busybox:1.35
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80}
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {name: http, port: 80}
"#;

type Question = (Name, RecordType, ResponseCode);

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

/// A dnsmasq in the node's namespace with `args`, nothing else read (no config file,
/// resolv.conf or hosts file), logging to its stderr (dropped).
fn dnsmasq(node: &Node, dir: &Path, label: &str, args: &[String]) -> Child {
    node.host
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--log-facility=-",
        ])
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("{label}.pid")).display()
        ))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq runs (apt-get install dnsmasq-base)")
}

/// Asks `server` for `question` from inside `netns` until it answers as expected (the
/// endpoints and the anchor need a moment); panics after 30 s.
fn wait_for_answer(netns: &Path, server: SocketAddr, question: Question) {
    in_netns(netns, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut message = Message::new();
            message
                .set_id(1)
                .set_recursion_desired(true)
                .add_query(Query::query(question.0.clone(), question.1));
            socket.send_to(&message.to_vec().unwrap(), server).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                let reply = Message::from_vec(&buf[..len]).unwrap();
                if reply.response_code() == question.2
                    && (question.2 != ResponseCode::NoError || !reply.answers().is_empty())
                {
                    return;
                }
                last = format!("{:?} {:?}", reply.response_code(), reply.answers());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{server} never answered {question:?} as expected; last: {last}");
    })
}

pub fn run(quick: bool) {
    let per_cell = if quick { 1_000 } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\n").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(Node::start(
        &dir.path().join("node"),
        &["--resolv-conf", resolv_conf.to_str().unwrap()],
    ));
    let kubectl = node.kubectl();
    apply_and_wait_ready(&kubectl, MANIFESTS, "dns-client");
    let uid = kubectl.ok(&["get", "pod", "dns-client", "-o", "jsonpath={.metadata.uid}"]);
    let pod_ip = kubectl.ok(&["get", "pod", "dns-client", "-o", "jsonpath={.status.podIP}"]);
    let cluster_ip = kubectl.ok(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_name = format!("node/{}", node.name());
    let pod_cidr = kubectl.ok(&["get", &node_name, "-o", "jsonpath={.spec.podCIDR}"]);
    let gateway = kedge::net::cni::ipam::gateway(pod_cidr.parse().unwrap());
    // The pod's network namespace: the file its containers' namespace is bind-mounted on.
    let netns = node.agent_dir().join("pods").join(&uid).join("netns");

    let mut upstream = dnsmasq(
        &node,
        dir.path(),
        "upstream",
        &[
            "--listen-address=127.0.0.1".into(),
            "--port=53".into(),
            format!("--address=/bench/{UPSTREAM_ANSWER}"),
        ],
    );
    let mut anchor = dnsmasq(
        &node,
        dir.path(),
        "anchor",
        &[
            format!("--listen-address={gateway}"),
            format!("--port={ANCHOR_PORT}"),
            "--local=/cluster.local/".into(),
            format!("--host-record=web.default.svc.cluster.local,{cluster_ip}"),
            format!("--host-record=db.default.svc.cluster.local,{pod_ip}"),
        ],
    );

    let targets: [(&str, SocketAddr, bool); 3] = [
        (
            "kedge via 10.43.0.10 (DNAT)",
            SocketAddr::new(CLUSTER_DNS.into(), 53),
            true,
        ),
        (
            "kedge on the gateway (direct)",
            SocketAddr::new(gateway.into(), 53),
            true,
        ),
        (
            "dnsmasq on the gateway (anchor)",
            SocketAddr::new(gateway.into(), ANCHOR_PORT),
            false,
        ),
    ];
    type Scenario = (&'static str, Box<dyn Fn(usize, usize) -> Question + Sync>);
    let scenarios: [Scenario; 4] = [
        (
            "Service A (`web.default.svc.cluster.local`)",
            Box::new(|_, _| {
                let n = name("web.default.svc.cluster.local.");
                (n, RecordType::A, ResponseCode::NoError)
            }),
        ),
        (
            "headless A (`db.default.svc.cluster.local`)",
            Box::new(|_, _| {
                let n = name("db.default.svc.cluster.local.");
                (n, RecordType::A, ResponseCode::NoError)
            }),
        ),
        (
            "search-path miss (NXDOMAIN)",
            Box::new(|_, _| {
                let n = name("web.default.svc.cluster.local.default.svc.cluster.local.");
                (n, RecordType::A, ResponseCode::NXDomain)
            }),
        ),
        (
            "forwarded upstream, each name new (`q<i>.bench`)",
            // Names differ per target too: no target sees another's cached answers.
            Box::new(|target, i| {
                let n = name(&format!("q{i}-t{target}.bench."));
                (n, RecordType::A, ResponseCode::NoError)
            }),
        ),
    ];
    // Every target answers every name it serves before the clock starts (endpoints
    // propagate, dnsmasq starts); the warm-up names are not among the timed ones.
    for (t, (_, server, forwards)) in targets.iter().enumerate() {
        for (s, (_, question)) in scenarios.iter().enumerate() {
            if s < 3 || *forwards {
                wait_for_answer(&netns, *server, question(t, usize::MAX));
            }
        }
    }

    let mut rows = Vec::new();
    for (s, (label, question)) in scenarios.iter().enumerate() {
        let mut cells = Vec::new();
        for (t, (_, server, forwards)) in targets.iter().enumerate() {
            if s == 3 && !forwards {
                cells.push("—".to_string());
                continue;
            }
            let report: Report = load(
                *server,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                POD_CLIENTS,
                per_cell,
                &|i| question(t, i),
                Some(&netns),
            );
            cells.push(report.cells(false).replace(" | ", " / "));
        }
        rows.push((label, cells));
    }
    let _ = upstream.kill();
    let _ = upstream.wait();
    let _ = anchor.kill();
    let _ = anchor.wait();

    println!("\n## Cluster DNS from a pod\n");
    println!(
        "One pod on a real node; {POD_CLIENTS} clients in its network namespace, one UDP query \
         in flight each; {per_cell} queries per cell; queries/s / p50 ms / p99 ms.\n"
    );
    print!("| name asked |");
    for (label, _, _) in &targets {
        print!(" {label} |");
    }
    println!("\n| --- | --- | --- | --- |");
    for (label, cells) in rows {
        println!("| {label} | {} |", cells.join(" | "));
    }
}
