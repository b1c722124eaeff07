//! The Endpoints and EndpointSlice controllers against a real server with simulated nodes,
//! seen through kubectl: ready and not-ready addresses, named target ports resolved per
//! pod, publishNotReadyAddresses, pods leaving, Services without a selector left alone.

mod common;

use std::time::Duration;

use common::nodes::{NodeSpec, SimulatedNodes};
use common::{eventually, started_server, LogDump};
use serde_json::Value;

fn pod(name: &str, port: u16, ready: bool) -> String {
    let annotations = if ready {
        "{}"
    } else {
        r#"{"sim.kedge.io/ready": "false"}"#
    };
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
        "metadata": {{"name": "{name}", "labels": {{"app": "web"}}, "annotations": {annotations}}},
        "spec": {{"nodeName": "n1", "hostname": "{name}", "subdomain": "web",
            "containers": [{{"name": "c", "image": "busybox",
            "ports": [{{"name": "http", "containerPort": {port}}}]}}]}}}}"#
    )
}

const SERVICE: &str = r#"{"apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "labels": {"tier": "front"}},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `ip:port` of the ready and not-ready addresses of the Endpoints, sorted.
fn endpoint_addresses(endpoints: &Value) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for port in subset["ports"].as_array().into_iter().flatten() {
            for (list, out) in [
                ("addresses", &mut ready),
                ("notReadyAddresses", &mut not_ready),
            ] {
                for address in subset[list].as_array().into_iter().flatten() {
                    out.push(format!(
                        "{}:{}",
                        address["ip"].as_str().unwrap(),
                        port["port"]
                    ));
                }
            }
        }
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_endpoints_and_slices_of_their_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let _nodes = SimulatedNodes::start(
        server.kube_client(),
        vec![NodeSpec::new("n1").label("topology.kubernetes.io/zone", "z1")],
        Duration::from_secs(2),
    )
    .await;
    let kubectl = server.kubectl();
    kubectl.ok_with(&["apply", "-f", "-"], Some(SERVICE));
    // a and b resolve the named port to 8080, c to 9090; b never becomes ready.
    for (name, port, ready) in [("a", 8080, true), ("b", 8080, false), ("c", 9090, true)] {
        kubectl.ok_with(&["apply", "-f", "-"], Some(&pod(name, port, ready)));
    }
    let ip = |name: &str| kubectl.ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    eventually(Duration::from_secs(20), "pods running with IPs", || async {
        ["a", "b", "c"].iter().all(|p| !ip(p).is_empty())
    })
    .await;
    let (a, b, c) = (ip("a"), ip("b"), ip("c"));

    let mut expected_ready = vec![format!("{a}:8080"), format!("{c}:9090")];
    expected_ready.sort();
    eventually(Duration::from_secs(10), "endpoints of all pods", || async {
        let out = kubectl.run(&["get", "endpoints", "web", "-o", "json"], None);
        out.status.success()
            && endpoint_addresses(&json(&String::from_utf8_lossy(&out.stdout)))
                == (expected_ready.clone(), vec![format!("{b}:8080")])
    })
    .await;
    let endpoints = json(&kubectl.ok(&["get", "endpoints", "web", "-o", "json"]));
    assert_eq!(
        endpoints["subsets"].as_array().unwrap().len(),
        2,
        "{endpoints}"
    );
    assert_eq!(endpoints["metadata"]["labels"]["tier"], "front");
    assert_eq!(
        endpoints["metadata"]["labels"]["endpoints.kubernetes.io/managed-by"],
        "endpoint-controller"
    );
    assert!(endpoints["metadata"]["annotations"]
        ["endpoints.kubernetes.io/last-change-trigger-time"]
        .is_string());
    let address = endpoints["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .find(|a| a["targetRef"]["name"] == "a")
        .unwrap();
    assert_eq!(address["hostname"], "a", "{address}");
    assert_eq!(address["nodeName"], "n1");
    assert_eq!(address["targetRef"]["kind"], "Pod");

    // kubectl shows the ready ones.
    let table = kubectl.ok(&["get", "endpoints", "web", "--no-headers"]);
    assert!(
        table.contains(&format!("{a}:8080")) && table.contains(&format!("{c}:9090")),
        "{table}"
    );
    assert!(!table.contains(&b), "{table}");
    let describe = kubectl.ok(&["describe", "svc", "web"]);
    let line = describe
        .lines()
        .find(|l| l.starts_with("Endpoints:"))
        .unwrap_or_default();
    assert!(line.contains(&format!("{a}:8080")), "{describe}");

    // Slices: one per port mapping, labelled, owned by the Service, with conditions.
    let slices = || {
        json(&kubectl.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ]))["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    eventually(Duration::from_secs(10), "two slices", || async {
        slices().len() == 2
    })
    .await;
    let all = slices();
    let service_uid = kubectl.ok(&["get", "svc", "web", "-o", "jsonpath={.metadata.uid}"]);
    for slice in &all {
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(
            slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
            "endpointslice-controller.k8s.io"
        );
        assert!(slice["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-"));
        assert_eq!(
            slice["metadata"]["ownerReferences"][0]["uid"],
            service_uid.as_str()
        );
        assert_eq!(slice["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let slice_8080 = all
        .iter()
        .find(|s| s["ports"][0]["port"] == 8080)
        .expect("an 8080 slice");
    let by_ip = |ip: &str| {
        slice_8080["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["addresses"][0] == ip)
            .cloned()
            .unwrap_or_else(|| panic!("{ip} in {slice_8080}"))
    };
    assert_eq!(by_ip(&a)["conditions"]["ready"], true);
    assert_eq!(by_ip(&b)["conditions"]["ready"], false);
    assert_eq!(by_ip(&b)["conditions"]["serving"], false);
    assert_eq!(by_ip(&a)["nodeName"], "n1");
    assert_eq!(by_ip(&a)["zone"], "z1");
    assert_eq!(by_ip(&a)["targetRef"]["name"], "a");
    let table = kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert!(
        table.contains("IPv4") && table.contains("8080") && table.contains(&a),
        "{table}"
    );

    // Unchanged objects are not rewritten.
    let version = kubectl.ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    kubectl.ok(&["annotate", "svc", "web", "touched=yes"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        version,
        kubectl.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.metadata.resourceVersion}"
        ])
    );

    // publishNotReadyAddresses: b is published as ready too.
    kubectl.ok(&[
        "patch",
        "svc",
        "web",
        "-p",
        r#"{"spec": {"publishNotReadyAddresses": true}}"#,
    ]);
    let mut all_ready = vec![
        format!("{a}:8080"),
        format!("{b}:8080"),
        format!("{c}:9090"),
    ];
    all_ready.sort();
    eventually(Duration::from_secs(5), "b published", || async {
        endpoint_addresses(&json(&kubectl.ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "json",
        ]))) == (all_ready.clone(), vec![])
    })
    .await;
    eventually(Duration::from_secs(5), "b ready in its slice", || async {
        slices()
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .any(|e| e["addresses"][0] == b.as_str() && e["conditions"]["ready"] == true)
    })
    .await;

    // A deleted pod leaves, within about a second; its slice goes with it.
    kubectl.ok(&["delete", "pod", "c", "--wait=true", "--timeout=20s"]);
    eventually(Duration::from_secs(3), "c gone from endpoints", || async {
        !kubectl
            .ok(&["get", "endpoints", "web", "-o", "json"])
            .contains(&c)
    })
    .await;
    eventually(Duration::from_secs(3), "c's slice gone", || async {
        slices().len() == 1
    })
    .await;

    // The Service goes: so do its Endpoints and slices.
    kubectl.ok(&["delete", "svc", "web"]);
    eventually(Duration::from_secs(5), "endpoints deleted", || async {
        !kubectl
            .run(&["get", "endpoints", "web"], None)
            .status
            .success()
            && slices().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_selector_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let kubectl = server.kubectl();
    let manual = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
         "spec": {"ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"},
         "subsets": [{"addresses": [{"ip": "192.0.2.7"}], "ports": [{"port": 80}]}]}]}"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(manual));
    // A selector-less Service with no pods: a service with a selector and no pods gets an
    // empty placeholder slice, this one gets nothing.
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
            "spec": {"selector": {"app": "none"}, "ports": [{"port": 80}]}}"#,
        ),
    );
    eventually(Duration::from_secs(10), "placeholder slice", || async {
        let out = kubectl.ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=empty",
            "-o",
            "json",
        ]);
        json(&out)["items"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let endpoints = kubectl.ok(&[
        "get",
        "endpoints",
        "ext",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    assert_eq!(endpoints, "192.0.2.7");
    let slices = kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=ext",
        "-o",
        "name",
    ]);
    assert!(slices.trim().is_empty(), "{slices}");
    // The API server's own endpoints stay as the bootstrap wrote them.
    let kubernetes = json(&kubectl.ok(&["get", "endpointslice", "kubernetes", "-o", "json"]));
    assert!(kubernetes["metadata"]["labels"]
        .get("endpointslice.kubernetes.io/managed-by")
        .is_none());
    let kubernetes_slices = kubectl.ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=kubernetes",
        "-o",
        "name",
    ]);
    assert_eq!(
        kubernetes_slices.trim(),
        "endpointslice.discovery.k8s.io/kubernetes"
    );
}
