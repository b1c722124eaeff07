//! Cluster DNS benchmark, two parts.
//!
//! In-process: the node's DNS server (`kedge::net::dns`, the handler and sockets the agent
//! runs) on 127.0.0.1, answering from caches holding 1,000 ClusterIP Services and 100
//! headless Services of 10 ready endpoints each. 32 clients, each one UDP socket with one
//! query in flight (as a pod's resolver), ask a mix of A (ClusterIP), A (headless), SRV and
//! missing names (NXDOMAIN, as a pod's search path produces). No upstream resolver.
//!
//! From a pod ([`pod`]): a real node (a `kedge server` with its agent in a test network
//! namespace, as benches/pods.rs starts one), one pod behind a ClusterIP Service and a
//! headless one, and the load generator's client threads inside that pod's network
//! namespace, asking 10.43.0.10 (the `kube-dns` ClusterIP, DNATed by the service proxy to
//! the node's DNS server), the node's DNS server directly on the pod gateway (the DNAT's
//! cost is the difference), and Debian's dnsmasq serving the same names as static records
//! on the gateway (the anchor). Names: the Service, the headless Service, a search-path
//! NXDOMAIN, and names outside the cluster that kedge forwards to its upstream (a dnsmasq
//! on the node's loopback, named by the node's `--resolv-conf`; each name new, so every
//! query is a cache miss).
//!
//! Run: `sh packaging/deps.sh --bench && cargo bench --bench dns [-- --quick]` (quick: 100
//! Services and 5,000 queries in-process, 1,000 per cell from the pod; `--pod-only`,
//! `--in-process-only`). Prints a Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "dns/pod.rs"]
mod pod;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kedge::net::dns::records::Zone;
use kedge::net::dns::server::{listen, serve, Handler};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde_json::json;

const CLIENTS: usize = 32;
/// Clients from the pod: a few resolvers at once.
const POD_CLIENTS: usize = 4;

fn zone(services: usize, headless: usize) -> Zone {
    let mut s: Writer<Service> = Writer::default();
    let mut e: Writer<EndpointSlice> = Writer::default();
    for i in 0..services {
        let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
        let svc = json!({"metadata": {"name": format!("svc-{i}"), "namespace": "default"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
        s.apply_watcher_event(&Event::Apply(serde_json::from_value(svc).unwrap()));
    }
    for i in 0..headless {
        let name = format!("db-{i}");
        let svc = json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}});
        s.apply_watcher_event(&Event::Apply(serde_json::from_value(svc).unwrap()));
        let endpoints: Vec<_> = (0..10)
            .map(|j| {
                json!({"addresses": [format!("10.42.{}.{}", i, 10 + j)],
                    "hostname": format!("{name}-{j}"), "conditions": {"ready": true}})
            })
            .collect();
        let slice = json!({"metadata": {"name": format!("{name}-x"), "namespace": "default",
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]});
        e.apply_watcher_event(&Event::Apply(serde_json::from_value(slice).unwrap()));
    }
    Zone::new("cluster.local", s.as_reader(), e.as_reader()).unwrap()
}

/// The `i`th query of the mix: 50% ClusterIP A, 20% headless A, 10% SRV, 20% NXDOMAIN.
fn question(i: usize, services: usize, headless: usize) -> (Name, RecordType, ResponseCode) {
    let pick = i.wrapping_mul(2654435761) % 100;
    let n = i % services;
    let h = i % headless;
    let (name, kind, code) = match pick {
        0..50 => (
            format!("svc-{n}.default.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NoError,
        ),
        50..70 => (
            format!("db-{h}.default.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NoError,
        ),
        70..80 => (
            format!("_http._tcp.svc-{n}.default.svc.cluster.local."),
            RecordType::SRV,
            ResponseCode::NoError,
        ),
        _ => (
            format!("svc-{n}.default.svc.cluster.local.default.svc.cluster.local."),
            RecordType::A,
            ResponseCode::NXDomain,
        ),
    };
    (Name::from_ascii(name).unwrap(), kind, code)
}

/// One client: a UDP socket bound to `bind`, `count` queries (`question(i)` for i in
/// `from..`) one at a time; each answer's code is checked. Returns each query's latency.
fn client(
    server: SocketAddr,
    bind: IpAddr,
    from: usize,
    count: usize,
    question: &(dyn Fn(usize) -> (Name, RecordType, ResponseCode) + Sync),
) -> Vec<Duration> {
    let socket = UdpSocket::bind(SocketAddr::new(bind, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut latencies = Vec::with_capacity(count);
    let mut buf = [0u8; 4096];
    for i in from..from + count {
        let (name, kind, code) = question(i);
        let mut message = Message::new();
        message
            .set_id(i as u16)
            .set_recursion_desired(true)
            .add_query(Query::query(name, kind));
        let bytes = message.to_vec().unwrap();
        let started = Instant::now();
        socket.send_to(&bytes, server).unwrap();
        let (len, _) = socket.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no answer from {server} within 5 s to {:?}: {e}",
                message.queries()
            )
        });
        latencies.push(started.elapsed());
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.id(), i as u16);
        assert_eq!(
            reply.response_code(),
            code,
            "{server}: {:?}",
            message.queries()
        );
    }
    latencies
}

/// Throughput and latency of one load.
struct Report {
    qps: f64,
    latencies: Vec<Duration>,
}

impl Report {
    fn at(&self, p: f64) -> Duration {
        self.latencies[((self.latencies.len() as f64 - 1.0) * p).round() as usize]
    }

    /// `queries/s, p50, p99` (and max) as table cells.
    fn cells(&self, with_max: bool) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let mut cells = format!(
            "{:.0} | {} | {}",
            self.qps,
            ms(self.at(0.5)),
            ms(self.at(0.99))
        );
        if with_max {
            cells += &format!(" | {}", ms(self.at(1.0)));
        }
        cells
    }
}

/// `queries` queries spread over `clients` client threads, each started by `spawn` (which
/// may move it into a namespace first).
fn load(
    server: SocketAddr,
    bind: IpAddr,
    clients: usize,
    queries: usize,
    question: &(dyn Fn(usize) -> (Name, RecordType, ResponseCode) + Sync),
    netns: Option<&Path>,
) -> Report {
    let per_client = queries / clients;
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                scope.spawn(move || {
                    let work = || client(server, bind, c * per_client, per_client, question);
                    match netns {
                        Some(netns) => common::agent::in_netns(netns, work),
                        None => work(),
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed();
    latencies.sort();
    Report {
        qps: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    }
}

fn in_process(quick: bool) {
    let (services, headless, queries) = if quick {
        (100, 10, 5_000)
    } else {
        (1_000, 100, 100_000)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (udp, tcp) = listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = udp.local_addr().unwrap();
    let handler = Handler::new(zone(services, headless), None);
    runtime.spawn(async move { serve(handler, udp, tcp).await });
    let report = load(
        server,
        Ipv4Addr::LOCALHOST.into(),
        CLIENTS,
        queries,
        &|i| question(i, services, headless),
        None,
    );
    println!("## Cluster DNS (in-process server on loopback)\n");
    println!(
        "{services} ClusterIP Services, {headless} headless Services × 10 endpoints; \
         {CLIENTS} clients with one UDP query in flight each; {} queries \
         (50% A, 20% headless A, 10% SRV, 20% NXDOMAIN).\n",
        report.latencies.len()
    );
    println!("| queries/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|");
    println!("| {} |", report.cells(true));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if !args.iter().any(|a| a == "--pod-only") {
        in_process(quick);
    }
    if !args.iter().any(|a| a == "--in-process-only") {
        pod::run(quick);
    }
}
