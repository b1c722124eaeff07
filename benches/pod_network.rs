//! Pod network setup and teardown time per pod: kedge's in-process CNI (`net::cni`: veth
//! pair, bridge port with hairpin, host-local address, `eth0` address and default route in
//! the pod's namespace) against the reference CNI plugins (Debian's
//! `containernetworking-plugins`: `bridge` + `host-local`, exec'd once per ADD and DEL as
//! containerd does), for the same N pod namespaces, in one test network namespace
//! (tests/common/agent.rs: only `lo`, no route anywhere).
//!
//! kedge's side needs the node's `spec.podCIDR`: a control-plane-only `kedge server` runs in
//! the same test namespace, the benchmark registers a Node object for which the node IPAM
//! controller allocates a range, and drives `PodNetwork::add`/`del` as the pod workers do
//! (sequentially; the first pod, which creates the bridge, is a warm-up and not counted).
//! Namespace creation (the sandbox's job) is outside both figures.
//!
//! Run: `sh packaging/deps.sh --bench && cargo bench --bench pod_network [-- --quick]`
//! (quick: 20 pods instead of 100). Prints a Markdown report for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::agent::{TestHost, API_PORT};
use common::Server;
use k8s_openapi::api::core::v1::Node;
use kedge::net::cni::PodNetwork;
use kedge::runtime::netns;
use kube::api::{Api, PostParams};
use serde_json::json;

/// The reference plugins, where Debian installs them.
const CNI_PATH: &str = "/usr/lib/cni";
const NODE: &str = "bench-node";

/// Sorted per-pod times of one operation.
struct Times(Vec<Duration>);

impl Times {
    fn new(mut times: Vec<Duration>) -> Times {
        times.sort();
        Times(times)
    }

    fn at(&self, p: f64) -> Duration {
        self.0[((self.0.len() as f64 - 1.0) * p).round() as usize]
    }

    fn cell(&self) -> String {
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let mean = self.0.iter().sum::<Duration>() / self.0.len() as u32;
        format!(
            "{} / {} / {} ms",
            ms(mean),
            ms(self.at(0.5)),
            ms(self.at(0.99))
        )
    }
}

/// `count` empty pod namespaces (bind-mounted files under `dir`), made inside `host`.
fn namespaces(host: &TestHost, dir: &Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    common::agent::in_netns(host.netns(), || {
        (0..count)
            .map(|i| {
                let path = dir.join(format!("pod{i}"));
                netns::create(&path).unwrap();
                path
            })
            .collect()
    })
}

fn remove_namespaces(paths: &[PathBuf]) {
    for path in paths {
        netns::remove(path).unwrap();
    }
}

/// kedge's `net::cni`: ADD then DEL times for each of `count` pods.
fn kedge(host: &TestHost, dir: &Path, count: usize) -> (Times, Times) {
    let mut server = Server::new(&dir.join("server"), API_PORT, &[]).inside(host);
    server.start();
    host.block_on(server.wait_ready(Duration::from_secs(60)));
    let pods = namespaces(host, &dir.join("netns"), count + 1);
    let (adds, dels) = host.block_on(async {
        let client = server.kube_client();
        let node = serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap();
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("registering the benchmark's Node");
        let network = PodNetwork::new(client, NODE, host.ip().into(), &dir.join("net"));
        network.pod_cidr().await.expect("the node's pod CIDR");
        // The first pod creates the bridge.
        network.add("warm-up", &pods[count]).await.unwrap();
        let mut adds = Vec::with_capacity(count);
        for (i, path) in pods[..count].iter().enumerate() {
            let started = Instant::now();
            network.add(&format!("pod-{i}"), path).await.unwrap();
            adds.push(started.elapsed());
        }
        let mut dels = Vec::with_capacity(count);
        for i in 0..count {
            let started = Instant::now();
            network.del(&format!("pod-{i}")).await.unwrap();
            dels.push(started.elapsed());
        }
        network.del("warm-up").await.unwrap();
        (adds, dels)
    });
    remove_namespaces(&pods);
    (Times::new(adds), Times::new(dels))
}

/// One exec of the reference `bridge` plugin (which execs `host-local`), as a container
/// runtime runs it: the network config on stdin, the rest in `CNI_*` variables.
fn cni(host: &TestHost, command: &str, id: &str, netns: &Path, config: &str) -> Duration {
    let started = Instant::now();
    let mut child = host
        .command(&format!("{CNI_PATH}/bridge"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CNI bridge plugin runs (apt-get install containernetworking-plugins)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "CNI {command} {id}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

/// The reference plugins: ADD then DEL times for each of `count` pods, on a bridge of their
/// own configured as kedge's (gateway on the bridge, hairpin, MTU 1450, no masquerade).
fn reference(host: &TestHost, dir: &Path, count: usize) -> (Times, Times) {
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": "cni-bench0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": dir.join("ipam"),
        },
    })
    .to_string();
    let pods = namespaces(host, &dir.join("netns"), count + 1);
    cni(host, "ADD", "warm-up", &pods[count], &config);
    let adds = (0..count)
        .map(|i| cni(host, "ADD", &format!("pod-{i}"), &pods[i], &config))
        .collect();
    let dels = (0..count)
        .map(|i| cni(host, "DEL", &format!("pod-{i}"), &pods[i], &config))
        .collect();
    cni(host, "DEL", "warm-up", &pods[count], &config);
    remove_namespaces(&pods);
    (Times::new(adds), Times::new(dels))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let count = if quick { 20 } else { 100 };
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::new();
    let (kedge_add, kedge_del) = kedge(&host, &dir.path().join("kedge"), count);
    let (cni_add, cni_del) = reference(&host, &dir.path().join("cni"), count);
    println!("{count} pods, one after another, in one test network namespace; mean / p50 / p99 per pod.\n");
    println!("| per pod | kedge (`net::cni`, in-process) | CNI `bridge` + `host-local` (exec'd) |");
    println!("| --- | --- | --- |");
    println!("| ADD | {} | {} |", kedge_add.cell(), cni_add.cell());
    println!("| DEL | {} | {} |", kedge_del.cell(), cni_del.cell());
}
