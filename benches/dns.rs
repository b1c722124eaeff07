//! Cluster DNS benchmark: the node's DNS server (`kedge::net::dns`, the handler and sockets
//! the agent runs) on 127.0.0.1, answering from caches holding 1,000 ClusterIP Services and
//! 100 headless Services of 10 ready endpoints each. 32 clients, each one UDP socket with
//! one query in flight (as a pod's resolver), ask a mix of A (ClusterIP), A (headless),
//! SRV and missing names (NXDOMAIN, as a pod's search path produces). Reports queries/s
//! and p50/p99 latency. Only loopback traffic; no upstream resolver.
//!
//! Run: `cargo bench --bench dns [-- --quick]` (quick: 100 Services, 5,000 queries). Prints
//! a Markdown report for BENCHMARKS.md.

use std::net::{SocketAddr, UdpSocket};
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

fn client(
    server: SocketAddr,
    from: usize,
    count: usize,
    services: usize,
    headless: usize,
) -> Vec<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut latencies = Vec::with_capacity(count);
    let mut buf = [0u8; 4096];
    for i in from..from + count {
        let (name, kind, code) = question(i, services, headless);
        let mut message = Message::new();
        message
            .set_id(i as u16)
            .set_recursion_desired(true)
            .add_query(Query::query(name, kind));
        let bytes = message.to_vec().unwrap();
        let started = Instant::now();
        socket.send_to(&bytes, server).unwrap();
        let (len, _) = socket.recv_from(&mut buf).expect("an answer within 5 s");
        latencies.push(started.elapsed());
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.id(), i as u16);
        assert_eq!(reply.response_code(), code, "{:?}", message.queries());
    }
    latencies
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
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

    let per_client = queries / CLIENTS;
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                client(server, c * per_client, per_client, services, headless)
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    println!("## Cluster DNS (in-process server on loopback)\n");
    println!(
        "{services} ClusterIP Services, {headless} headless Services × 10 endpoints; \
         {CLIENTS} clients with one UDP query in flight each; {} queries \
         (50% A, 20% headless A, 10% SRV, 20% NXDOMAIN).\n",
        latencies.len()
    );
    println!("| queries/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|");
    println!(
        "| {:.0} | {} | {} | {} |",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0))
    );
}
