//! Server-side behaviour of built-in kinds beyond storage, through the real kubectl:
//! defaulting, per-kind validation and immutable fields, Service ClusterIP/NodePort
//! allocation, the `kubernetes` Service, scale, binding and eviction, `kubectl auth`, and
//! service account tokens as bearer credentials.

mod common;

use std::time::Duration;

use common::kubectl::Kubectl;
use common::{started_server, Server};

fn jsonpath(kubectl: &Kubectl<'_>, args: &[&str], path: &str) -> String {
    let template = format!("jsonpath={path}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", template.as_str()]);
    kubectl.ok(&all)
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: pinned}
spec:
  clusterIP: 10.43.0.200
  ports: [{port: 443, nodePort: 31000}]
  type: NodePort
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  selector: {app: db}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_addresses_and_ports_that_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = started_server(dir.path()).await;
    let k = server.kubectl();
    // The API server's own Service, as in every cluster.
    let ip = jsonpath(
        &k,
        &["get", "svc", "kubernetes"],
        "{.spec.clusterIP} {.spec.ports[0].port}",
    );
    assert_eq!(ip, "10.43.0.1 443");
    let endpoints = jsonpath(
        &k,
        &["get", "endpoints", "kubernetes"],
        "{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    );
    assert_eq!(endpoints, format!("127.0.0.1:{}", server.port));
    // The cluster DNS Service, as k3s's CoreDNS one (no selector: every node answers).
    let dns = "{.spec.clusterIP} {.spec.ports[*].name} {.spec.ports[*].protocol} {.metadata.labels.k8s-app} {.spec.selector}";
    let kube_dns = &["get", "svc", "-n", "kube-system", "kube-dns"];
    assert_eq!(
        jsonpath(&k, kube_dns, dns),
        "10.43.0.10 dns dns-tcp UDP TCP kube-dns "
    );

    k.ok_with(&["apply", "-f", "-"], Some(SERVICES));
    let web = jsonpath(&k, &["get", "svc", "web"], "{.spec.clusterIP} {.spec.ports[0].nodePort} {.spec.ports[1].nodePort} {.spec.ports[1].targetPort} {.spec.sessionAffinity} {.spec.externalTrafficPolicy} {.spec.ipFamilyPolicy}");
    let fields: Vec<&str> = web.split(' ').collect();
    let web_ip: std::net::Ipv4Addr = fields[0].parse().unwrap();
    assert_eq!(&web_ip.octets()[..2], &[10, 43], "{web}");
    let ports: Vec<u16> = fields[1..3].iter().map(|p| p.parse().unwrap()).collect();
    assert!(
        ports.iter().all(|p| (30000..=32767).contains(p)) && ports[0] != ports[1],
        "{web}"
    );
    assert_eq!(&fields[3..], &["53", "None", "Cluster", "SingleStack"]);
    assert_eq!(
        jsonpath(
            &k,
            &["get", "svc", "pinned"],
            "{.spec.clusterIP} {.spec.ports[0].nodePort}"
        ),
        "10.43.0.200 31000"
    );
    assert_eq!(
        jsonpath(&k, &["get", "svc", "headless"], "{.spec.clusterIPs}"),
        r#"["None"]"#
    );
    let addresses = k.ok(&["get", "ipaddresses", "-o", "name"]);
    for ip in ["10.43.0.1", "10.43.0.200", fields[0]] {
        assert!(
            addresses.contains(&format!("ipaddress.networking.k8s.io/{ip}")),
            "{addresses}"
        );
    }

    // Taken addresses and ports are refused with upstream's messages.
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dup"},"spec":{"clusterIP":"10.43.0.200","ports":[{"port":80}]}}"#));
    assert!(err.contains(r#"The Service "dup" is invalid: spec.clusterIPs: Invalid value: []string{"10.43.0.200"}: failed to allocate IP 10.43.0.200: provided IP is already allocated"#), "{err}");
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dup"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":31000}]}}"#));
    assert!(
        err.contains(
            r#"spec.ports[0].nodePort: Invalid value: 31000: provided port is already allocated"#
        ),
        "{err}"
    );
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"far"},"spec":{"clusterIP":"10.99.0.1","ports":[{"port":80}]}}"#));
    assert!(err.contains("the provided IP (10.99.0.1) is not in the valid range. The range of valid IPs is 10.43.0.0/16"), "{err}");
    let err = k.fails(
        &[
            "patch",
            "svc",
            "web",
            "-p",
            r#"{"spec":{"clusterIP":"10.43.0.99","clusterIPs":["10.43.0.99"]}}"#,
        ],
        None,
    );
    assert!(
        err.contains(
            r#"spec.clusterIPs[0]: Invalid value: []string{"10.43.0.99"}: may not change once set"#
        ),
        "{err}"
    );
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"noports"},"spec":{"selector":{"a":"b"}}}"#));
    assert!(
        err.contains(r#"The Service "noports" is invalid: spec.ports: Required value"#),
        "{err}"
    );

    // Changing the type to ClusterIP gives the NodePorts back; deleting gives the address back.
    k.ok(&[
        "patch",
        "svc",
        "pinned",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    assert_eq!(
        jsonpath(&k, &["get", "svc", "pinned"], "{.spec.ports[0].nodePort}"),
        ""
    );
    k.ok(&["delete", "svc", "pinned"]);
    common::eventually(
        Duration::from_secs(10),
        "the pinned address and port are free again",
        || async {
            server
                .kubectl()
                .run(
                    &[
                        "create",
                        "service",
                        "nodeport",
                        "again",
                        "--tcp=443",
                        "--node-port=31000",
                    ],
                    None,
                )
                .status
                .success()
        },
    )
    .await;

    // Allocations survive a restart: the same objects, nothing handed out twice.
    server.terminate();
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let k = server.kubectl();
    assert!(jsonpath(&k, &["get", "svc", "web"], "{.spec.clusterIP}").starts_with(fields[0]));
    let err = k.fails(&["create", "-f", "-"], Some(&format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup2"}},"spec":{{"clusterIP":"{}","ports":[{{"port":80}}]}}}}"#, fields[0])));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    assert_eq!(
        jsonpath(&k, kube_dns, dns),
        "10.43.0.10 dns dns-tcp UDP TCP kube-dns "
    );
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dns"},"spec":{"clusterIP":"10.43.0.10","ports":[{"port":53}]}}"#));
    assert!(err.contains("provided IP is already allocated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_defaulted_validated_and_scaled() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let k = server.kubectl();
    k.ok_with(
        &["apply", "-f", "-"],
        Some(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: db}}
spec:
  containers:
  - name: main
    image: busybox
    resources: {limits: {cpu: 100m, memory: 64Mi}}
    readinessProbe: {httpGet: {port: 80}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "nginx:1.27"}]
"#,
        ),
    );
    let pod = jsonpath(&k, &["get", "pod", "solo"], "{.spec.restartPolicy} {.spec.dnsPolicy} {.spec.schedulerName} {.spec.serviceAccountName} {.spec.containers[0].imagePullPolicy} {.spec.containers[0].readinessProbe.periodSeconds} {.status.phase} {.status.qosClass}");
    assert_eq!(
        pod,
        "Always ClusterFirst default-scheduler default Always 10 Pending Guaranteed"
    );
    let deployment = jsonpath(&k, &["get", "deploy", "web"], "{.spec.replicas} {.spec.strategy.rollingUpdate.maxSurge} {.spec.revisionHistoryLimit} {.spec.template.spec.containers[0].imagePullPolicy}");
    assert_eq!(deployment, "1 25% 10 IfNotPresent");

    // Validation and immutable fields, worded as upstream.
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[{"name":"Main"}]}}"#));
    assert!(err.contains(r#"The Pod "bad" is invalid: "#), "{err}");
    assert!(err.contains(r#"spec.containers[0].name: Invalid value: "Main": a lowercase RFC 1123 label must consist of"#), "{err}");
    assert!(
        err.contains("spec.containers[0].image: Required value"),
        "{err}"
    );
    let err = k.fails(&["create", "-f", "-"], Some(r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"mismatch"},"spec":{"selector":{"matchLabels":{"app":"a"}},"template":{"metadata":{"labels":{"app":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#));
    assert!(err.contains(r#"The Deployment "mismatch" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{"app":"b"}: `selector` does not match template `labels`"#), "{err}");
    let err = k.fails(&["set", "env", "pod/solo", "A=1"], None);
    assert!(err.contains("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{err}");
    k.ok(&["set", "image", "pod/solo", "main=busybox:1.36"]);

    // Server-side dry runs validate and default but write nothing.
    let out = k.ok_with(&["apply", "--dry-run=server", "-o", "jsonpath={.spec.replicas}", "-f", "-"], Some("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ghost}\nspec:\n  selector: {matchLabels: {app: g}}\n  template:\n    metadata: {labels: {app: g}}\n    spec: {containers: [{name: g, image: busybox}]}\n"));
    assert_eq!(out, "1");
    let err = k.fails(&["get", "deploy", "ghost"], None);
    assert!(
        err.contains(r#"deployments.apps "ghost" not found"#),
        "{err}"
    );
    let err = k.fails(&["create", "--dry-run=server", "-f", "-"], Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[]}}"#));
    assert!(err.contains("spec.containers: Required value"), "{err}");
    k.ok(&["delete", "pod", "solo", "--dry-run=server"]);
    k.ok(&["scale", "deploy", "web", "--replicas=9", "--dry-run=server"]);
    assert_eq!(
        jsonpath(&k, &["get", "deploy", "web"], "{.spec.replicas}"),
        "1"
    );
    assert!(jsonpath(&k, &["get", "pod", "solo"], "{.metadata.deletionTimestamp}").is_empty());

    // scale, through the scale subresource.
    let out = k.ok(&["scale", "deploy", "web", "--replicas=4"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    assert_eq!(
        jsonpath(
            &k,
            &["get", "deploy", "web"],
            "{.spec.replicas} {.metadata.generation}"
        ),
        "4 2"
    );
    let scale = k.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");
    let err = k.fails(
        &[
            "scale",
            "deploy",
            "web",
            "--replicas=2",
            "--current-replicas=3",
        ],
        None,
    );
    assert!(err.contains("Expected replicas to be 3, was 4"), "{err}");

    // binding, then eviction guarded by a disruption budget.
    let binding = r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"solo"},"target":{"kind":"Node","name":"node-a"}}"#;
    let path = "/api/v1/namespaces/default/pods/solo/binding";
    std::fs::write(dir.path().join("binding.json"), binding).unwrap();
    let binding_file = dir.path().join("binding.json").display().to_string();
    k.ok(&["create", "--raw", path, "-f", &binding_file]);
    assert_eq!(
        jsonpath(
            &k,
            &["get", "pod", "solo"],
            "{.spec.nodeName} {.status.conditions[0].type}"
        ),
        "node-a PodScheduled"
    );
    let err = k.fails(&["create", "--raw", path, "-f", &binding_file], None);
    assert!(
        err.contains(r#"pod solo is already assigned to node \"node-a\""#)
            || err.contains(r#"pod solo is already assigned to node "node-a""#),
        "{err}"
    );
    k.ok(&[
        "patch",
        "pod",
        "solo",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    k.ok_with(&["apply", "-f", "-"], Some("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: db}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: db}}\n"));
    k.ok(&["patch", "pdb", "db", "--subresource=status", "--type=merge", "-p", r#"{"status":{"observedGeneration":1,"disruptionsAllowed":0,"desiredHealthy":1,"currentHealthy":1,"expectedPods":1}}"#]);
    let eviction = dir.path().join("eviction.json");
    std::fs::write(
        &eviction,
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"solo"}}"#,
    )
    .unwrap();
    let eviction = eviction.display().to_string();
    let evict = "/api/v1/namespaces/default/pods/solo/eviction";
    let err = k.fails(&["create", "--raw", evict, "-f", &eviction], None);
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{err}"
    );
    k.ok(&[
        "patch",
        "pdb",
        "db",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"disruptionsAllowed":1}}"#,
    ]);
    k.ok(&["create", "--raw", evict, "-f", &eviction]);
    // Bound to a node: the pod is marked for graceful deletion, the budget charged.
    assert!(!jsonpath(&k, &["get", "pod", "solo"], "{.metadata.deletionTimestamp}").is_empty());
    assert_eq!(
        jsonpath(&k, &["get", "pdb", "db"], "{.status.disruptionsAllowed}"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_commands_and_service_account_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let k = server.kubectl();
    let whoami = k.ok(&["auth", "whoami"]);
    assert!(whoami.contains("Username    system:admin"), "{whoami}");
    assert!(
        whoami.contains("[system:masters system:authenticated]"),
        "{whoami}"
    );
    let bob = k.ok(&["auth", "whoami", "--as=bob", "--as-group=devs"]);
    assert!(
        bob.contains("Username    bob") && bob.contains("[devs system:authenticated]"),
        "{bob}"
    );
    assert_eq!(
        k.ok(&["auth", "can-i", "create", "deployments"]).trim(),
        "yes"
    );
    assert_eq!(
        k.ok(&[
            "auth",
            "can-i",
            "get",
            "pods",
            "--as=bob",
            "-n",
            "kube-system"
        ])
        .trim(),
        "yes"
    );
    let list = k.ok(&["auth", "can-i", "--list"]);
    assert!(list.contains("*.*"), "{list}");

    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: robot}\n"),
    );
    let token = k.ok(&["create", "token", "robot"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let err = k.fails(&["create", "token", "robot", "--duration=1m"], None);
    assert!(err.contains(r#"TokenRequest.authentication.k8s.io "robot" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"#), "{err}");
    let err = k.fails(&["create", "token", "nobody"], None);
    assert!(
        err.contains(r#"serviceaccounts "nobody" not found"#),
        "{err}"
    );

    // The token is a credential of its own: a kubeconfig with only the token.
    let token_config = dir.path().join("robot.yaml");
    server.token_kubeconfig(&token_config, &token);
    let robot = Kubectl {
        kubeconfig: &token_config,
        binary: "kubectl",
        netns: None,
    };
    let whoami = robot.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("system:serviceaccount:default:robot"),
        "{whoami}"
    );
    assert!(
        whoami.contains("system:serviceaccounts:default"),
        "{whoami}"
    );
    // A deleted account's tokens stop working.
    k.ok(&["delete", "serviceaccount", "robot"]);
    let err = robot.fails(&["get", "namespaces"], None);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = started_server(dir.path()).await;
    let k = server.kubectl();
    let plain = "correct-horse-battery-staple";
    k.ok_with(
        &["apply", "-f", "-"],
        Some(&format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {plain}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: open}}\ndata: {{note: {plain}}}\n")),
    );
    // What the store holds (as the Raft peers see it): ciphertext for the Secret only.
    let raw = common::store_client(&server)
        .range_all("/registry/core/", false)
        .await
        .unwrap();
    let value_of = |key: &str| {
        raw.items
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.clone())
            .unwrap_or_else(|| panic!("{key} is stored"))
    };
    let secret = value_of("/registry/core/secrets/default/db");
    assert!(secret.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{secret:?}");
    let encoded = base64_of(plain);
    let contains = |haystack: &[u8], needle: &str| {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(!contains(&secret, &encoded) && !contains(&secret, plain));
    assert!(contains(
        &value_of("/registry/core/configmaps/default/open"),
        plain
    ));
    // Nor is it anywhere in the database files once checkpointed (after a restart).
    server.terminate();
    let mut files = vec![dir.path().join("server/db")];
    let mut config_map_seen = false;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "redb") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, &encoded),
                "{} holds the secret in the clear",
                path.display()
            );
            config_map_seen |= contains(&bytes, plain);
        }
    }
    assert!(
        config_map_seen,
        "the scan reads the database: the ConfigMap is in it"
    );
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let k = server.kubectl();
    assert_eq!(
        jsonpath(&k, &["get", "secret", "db"], "{.data.password}"),
        encoded
    );
    let key = std::fs::metadata(dir.path().join("server/encryption.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_after_the_event_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path(), common::free_port(), &["--event-ttl=3s".into()]);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let k = server.kubectl();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    k.ok_with(
        &["create", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Event\nmetadata: {{name: short-lived}}\n\
             involvedObject: {{kind: Pod, name: p, namespace: default}}\n\
             reason: Testing\nmessage: gone soon\ntype: Normal\n\
             firstTimestamp: {now}\nlastTimestamp: {now}\n"
        )),
    );
    assert!(k.ok(&["get", "events"]).contains("gone soon"));
    common::eventually(Duration::from_secs(30), "the event to expire", || async {
        !k.ok(&["get", "events", "-o", "name"])
            .contains("short-lived")
    })
    .await;
}
