//! Cluster DNS on a real node (a `kedge server` with its agent inside a test network
//! namespace, tests/common/agent.rs): a pod's `nslookup` against the node's DNS server on
//! the pod gateway (the first address of the node's pod CIDR; the service proxy sends the
//! cluster DNS address 10.43.0.10 there) for every record type of the Kubernetes DNS
//! specification, and forwarding of other names to the node's upstream resolver, which
//! the test runs itself on the node's loopback: no query leaves the test's namespaces.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::Node;
use common::kubectl::Kubectl;
use common::workloads::{until_ok, wait_all_ready};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};

const MANIFESTS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 8080 -h /www"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
  - {name: metrics, port: 9090, targetPort: 9090, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector: {app: db}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 2
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.35
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Service
metadata:
  name: alias
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: outside.test
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

/// An upstream resolver on the node's loopback (inside the test's namespace): answers
/// `outside.test.` with 203.0.113.7 (a documentation address) and NXDOMAIN otherwise.
struct Upstream {
    stop: Arc<AtomicBool>,
    queries: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    fn start(node: &Node) -> Upstream {
        let socket = common::agent::in_netns(node.host.netns(), || {
            UdpSocket::bind("127.0.0.1:53").expect("binding the test's upstream resolver")
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stopped, counted) = (stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let mut reply = Message::new();
                reply
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .add_queries(query.queries().to_vec());
                let q = &query.queries()[0];
                if q.name().to_ascii().eq_ignore_ascii_case("outside.test.") {
                    if q.query_type() == RecordType::A {
                        let a = RData::A(A(Ipv4Addr::new(203, 0, 113, 7)));
                        reply.add_answer(Record::from_rdata(q.name().clone(), 60, a));
                    }
                } else {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from);
            }
        });
        Upstream { stop, queries }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `nslookup [args] [server]` in the client pod (no server: the one of the pod's
/// `/etc/resolv.conf`, with its search path): (succeeded, output).
fn nslookup(kubectl: &Kubectl<'_>, server: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut command = vec!["exec", "client", "--", "nslookup"];
    command.extend_from_slice(args);
    command.extend(server);
    let out = kubectl.run(&command, None);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `nslookup` until its output contains every one of `expected` (caches fill, pods
/// become ready); returns the output.
async fn resolves(
    kubectl: &Kubectl<'_>,
    server: Option<&str>,
    args: &[&str],
    expected: &[&str],
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out) = nslookup(kubectl, server, args);
        // Through resolv.conf busybox asks every name of the search path at once and fails
        // if any is NXDOMAIN: there only the answer that names the expected record counts.
        if (ok || server.is_none()) && expected.iter().all(|e| out.contains(e)) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "nslookup {args:?} never showed {expected:?}; last:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn jsonpath(kubectl: &Kubectl<'_>, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let path = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &path]);
    kubectl.ok(&args)
}

#[tokio::test]
async fn pods_resolve_every_cluster_record_and_outside_names_through_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("upstream-resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let mut node = Node::start(dir.path(), &["--resolv-conf", resolv.to_str().unwrap()]).await;
    let upstream = Upstream::start(&node);
    let kubectl = node.kubectl();

    // The kube-dns Service, as k3s has it.
    let svc = kubectl.ok(&["get", "svc", "-n", "kube-system", "kube-dns"]);
    assert!(svc.contains("10.43.0.10"), "{svc}");
    assert!(svc.contains("53/UDP,53/TCP"), "{svc}");
    assert_eq!(
        jsonpath(
            &kubectl,
            &[
                "svc",
                "-n",
                "kube-system",
                "-l",
                "k8s-app=kube-dns,kubernetes.io/name=CoreDNS"
            ],
            "{.items[*].spec.ports[*].name}"
        ),
        "dns dns-tcp"
    );

    kubectl.ok_with(&["apply", "-f", "-"], Some(MANIFESTS));
    wait_all_ready(&kubectl, &["pod/web", "pod/client"], "120s");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !kubectl.run(&["get", "pod", "db-1"], None).status.success() {
        assert!(Instant::now() < deadline, "db-1 never created");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_all_ready(&kubectl, &["pod/db-0", "pod/db-1"], "120s");

    let cidr: ipnet::Ipv4Net = jsonpath(&kubectl, &["node", node.name()], "{.spec.podCIDR}")
        .parse()
        .unwrap();
    let gateway = Ipv4Addr::from(u32::from(cidr.network()) + 1).to_string();
    // Straight to the node's DNS server; `None` goes through the pod's resolv.conf.
    let gw = Some(gateway.as_str());
    let web_ip = jsonpath(&kubectl, &["svc", "web"], "{.spec.clusterIP}");
    let db0 = jsonpath(&kubectl, &["pod", "db-0"], "{.status.podIP}");
    let db1 = jsonpath(&kubectl, &["pod", "db-1"], "{.status.podIP}");
    let client_ip = jsonpath(&kubectl, &["pod", "client"], "{.status.podIP}");

    // The pod's resolv.conf: ClusterFirst.
    let resolv_conf = kubectl.ok(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv_conf.contains("nameserver 10.43.0.10"),
        "{resolv_conf}"
    );
    assert!(
        resolv_conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv_conf}"
    );
    assert!(resolv_conf.contains("options ndots:5"), "{resolv_conf}");

    // A ClusterIP Service: A, and SRV for its named ports.
    let web = "web.default.svc.cluster.local";
    resolves(&kubectl, gw, &[web], &[&format!("Address: {web_ip}")]).await;
    resolves(
        &kubectl,
        gw,
        &["-type=srv", "_http._tcp.web.default.svc.cluster.local"],
        &["0 100 80 web.default.svc.cluster.local"],
    )
    .await;
    resolves(
        &kubectl,
        gw,
        &["-type=srv", "_metrics._udp.web.default.svc.cluster.local"],
        &["0 100 9090 web.default.svc.cluster.local"],
    )
    .await;

    // A headless Service: its ready pods; the StatefulSet's pods by name; SRV per pod.
    let db = "db.default.svc.cluster.local";
    resolves(
        &kubectl,
        gw,
        &[db],
        &[&format!("Address: {db0}"), &format!("Address: {db1}")],
    )
    .await;
    resolves(
        &kubectl,
        gw,
        &["db-0.db.default.svc.cluster.local"],
        &[&format!("Address: {db0}")],
    )
    .await;
    resolves(
        &kubectl,
        gw,
        &["db-1.db.default.svc.cluster.local"],
        &[&format!("Address: {db1}")],
    )
    .await;
    resolves(
        &kubectl,
        gw,
        &["-type=srv", "_http._tcp.db.default.svc.cluster.local"],
        &[
            "0 50 8080 db-0.db.default.svc.cluster.local",
            "0 50 8080 db-1.db.default.svc.cluster.local",
        ],
    )
    .await;
    // The pod's own hostname and subdomain resolve inside the pod.
    let fqdn = kubectl.ok(&["exec", "db-0", "--", "hostname", "-f"]);
    assert_eq!(fqdn.trim(), "db-0.db.default.svc.cluster.local");

    // By short names, as a program in the pod asks: through the pod's resolv.conf (the
    // cluster DNS address, DNATed to the node's server) and its search path.
    resolves(
        &kubectl,
        None,
        &["web"],
        &[&format!("Name:\t{web}\nAddress: {web_ip}\n")],
    )
    .await;
    // A StatefulSet pod by `<hostname>.<subdomain>`, as programs resolve it (busybox's
    // nslookup applies the search path only to names without a dot).
    until_ok(Duration::from_secs(30), "db-1 by name", || {
        let url = "http://db-1.db:8080/";
        let out = kubectl.run(
            &["exec", "client", "--", "timeout", "5", "wget", "-qO-", url],
            None,
        );
        let body = String::from_utf8_lossy(&out.stdout);
        if body == "db-1\n" {
            Ok(())
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;

    // Pod names spell their address.
    let dashed = client_ip.replace('.', "-");
    resolves(
        &kubectl,
        gw,
        &[&format!("{dashed}.default.pod.cluster.local")],
        &[&format!("Address: {client_ip}")],
    )
    .await;

    // PTR: a ClusterIP names its Service, an endpoint its pod.
    resolves(
        &kubectl,
        gw,
        &[&web_ip],
        &["name = web.default.svc.cluster.local"],
    )
    .await;
    resolves(
        &kubectl,
        gw,
        &[&db0],
        &["name = db-0.db.default.svc.cluster.local"],
    )
    .await;

    // ExternalName: a CNAME (followed to the ClusterIP inside the cluster).
    resolves(
        &kubectl,
        gw,
        &["alias.default.svc.cluster.local"],
        &[
            "canonical name = web.default.svc.cluster.local",
            &format!("Address: {web_ip}"),
        ],
    )
    .await;

    // The schema version.
    resolves(
        &kubectl,
        gw,
        &["-type=txt", "dns-version.cluster.local"],
        &["1.1.0"],
    )
    .await;

    // A missing Service: NXDOMAIN; a name that exists without that type: NODATA.
    let (ok, out) = nslookup(&kubectl, gw, &["nope.default.svc.cluster.local"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    let (_, out) = nslookup(&kubectl, gw, &["-type=aaaa", web]);
    assert!(
        !out.contains("NXDOMAIN") && !out.contains("Address: "),
        "{out}"
    );

    // Outside the cluster: forwarded to the node's upstream resolver.
    let before = upstream.queries.load(Ordering::Relaxed);
    resolves(&kubectl, gw, &["outside.test"], &["Address: 203.0.113.7"]).await;
    // An ExternalName outside the cluster: the CNAME and, from upstream, its address.
    resolves(
        &kubectl,
        gw,
        &["ext.default.svc.cluster.local"],
        &["canonical name = outside.test", "Address: 203.0.113.7"],
    )
    .await;
    let (ok, out) = nslookup(&kubectl, gw, &["missing.test"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    assert!(upstream.queries.load(Ordering::Relaxed) > before);

    // The agent crashes and comes back: its DNS server answers again on the same address.
    node.kill_and_restart().await;
    let kubectl = node.kubectl();
    resolves(&kubectl, gw, &[web], &[&format!("Address: {web_ip}")]).await;
    resolves(
        &kubectl,
        gw,
        &["db-1.db.default.svc.cluster.local"],
        &[&format!("Address: {db1}")],
    )
    .await;
}

/// A sleeping busybox pod with `spec` lines (indented two spaces) added.
fn sleeper(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 1\n{spec}  containers:\n  - name: main\n    image: busybox:1.35\n    command: [\"sleep\", \"3600\"]\n"
    )
}

/// Pods' `/etc/resolv.conf` per `dnsPolicy`, as upstream's kubelet writes it; `Default`
/// takes the node's (`--resolv-conf`).
#[tokio::test]
async fn pods_get_the_resolv_conf_of_their_dns_policy() {
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("node-resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\nsearch example.test\n").unwrap();
    let node = Node::start(dir.path(), &["--resolv-conf", resolv.to_str().unwrap()]).await;
    let kubectl = node.kubectl();
    let pods = [
        ("cluster-first", ""),
        ("default", "  dnsPolicy: Default\n"),
        (
            "none",
            "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [192.0.2.53]\n    searches: [a.test]\n    options:\n    - {name: ndots, value: \"2\"}\n",
        ),
        (
            "host-cluster-first",
            "  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n",
        ),
        ("host-default", "  hostNetwork: true\n"),
    ];
    for (name, spec) in pods {
        kubectl.ok_with(&["apply", "-f", "-"], Some(&sleeper(name, spec)));
    }
    let names: Vec<String> = pods.iter().map(|(n, _)| format!("pod/{n}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_all_ready(&kubectl, &names, "120s");
    let resolv_conf = |pod: &str| kubectl.ok(&["exec", pod, "--", "cat", "/etc/resolv.conf"]);
    let cluster = "nameserver 10.43.0.10\nsearch default.svc.cluster.local svc.cluster.local cluster.local example.test\noptions ndots:5\n";
    let node_conf = "nameserver 127.0.0.1\nsearch example.test\n";
    assert_eq!(resolv_conf("cluster-first"), cluster);
    assert_eq!(resolv_conf("default"), node_conf);
    assert_eq!(
        resolv_conf("none"),
        "nameserver 192.0.2.53\nsearch a.test\noptions ndots:2\n"
    );
    assert_eq!(resolv_conf("host-cluster-first"), cluster);
    // ClusterFirst on the host network falls back to the node's.
    assert_eq!(resolv_conf("host-default"), node_conf);
}
