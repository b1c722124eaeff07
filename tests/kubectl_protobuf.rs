//! kubectl 1.33's typed commands, which send protobuf request bodies, against a real
//! `kedge server`: what the user asked for is what reads back.

mod common;

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use common::kubectl::Kubectl;
use common::started_server;

/// The kubectl on PATH: 1.33, which sends protobuf for typed commands.
const KUBECTL: &str = "kubectl";

fn get(kubectl: &Kubectl<'_>, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&kubectl.ok(&all)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_create_commands_store_what_the_user_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = Kubectl {
        kubeconfig: &server.kubeconfig,
        binary: KUBECTL,
        netns: None,
    };
    let ns = ["-n", "proto"];

    kubectl.ok(&["create", "namespace", "proto"]);
    assert_eq!(
        get(&kubectl, &["namespace", "proto"])["metadata"]["name"],
        "proto"
    );

    kubectl.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "proto",
        "--from-literal=mode=fast",
        "--from-literal=level=3",
    ]);
    let cm = get(&kubectl, &["configmap", "settings", "-n", "proto"]);
    assert_eq!(cm["data"], json!({"mode": "fast", "level": "3"}));
    assert!(cm["metadata"]["creationTimestamp"].is_string(), "{cm}");

    kubectl.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "proto",
        "--from-literal=password=s3cret",
    ]);
    let secret = get(&kubectl, &["secret", "creds", "-n", "proto"]);
    assert_eq!(secret["type"], "Opaque");
    let password = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["password"].as_str().unwrap())
        .unwrap();
    assert_eq!(password, b"s3cret");

    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "proto",
        "--image=busybox",
        "--replicas=2",
    ]);
    let deployment = get(&kubectl, &["deployment", "web", "-n", "proto"]);
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    assert_eq!(spec["selector"], json!({"matchLabels": {"app": "web"}}));
    assert_eq!(
        spec["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
    let containers = spec["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0]["name"], "busybox");
    assert_eq!(containers[0]["image"], "busybox");
    // kubectl sends an empty strategy; whatever defaulting adds must be a valid strategy.
    let strategy = spec["strategy"].as_object().expect("strategy is an object");
    if let Some(kind) = strategy.get("type") {
        assert_eq!(kind, "RollingUpdate");
    }
    // Zero values Go's JSON leaves out are not stored as "" / 0 / false.
    assert!(spec.get("paused").is_none(), "{spec}");
    assert!(containers[0].get("workingDir").is_none(), "{spec}");

    kubectl.ok(&[
        "create",
        "job",
        "once",
        "-n",
        "proto",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    let job = get(&kubectl, &["job", "once", "-n", "proto"]);
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(pod_spec["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(pod_spec["restartPolicy"], "Never");

    kubectl.ok(&[
        "create",
        "role",
        "reader",
        "-n",
        "proto",
        "--verb=get,list",
        "--resource=pods",
    ]);
    let role = get(&kubectl, &["role", "reader", "-n", "proto"]);
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}])
    );
    kubectl.ok(&[
        "create",
        "rolebinding",
        "reader-alice",
        "-n",
        "proto",
        "--role=reader",
        "--user=alice",
    ]);
    let binding = get(&kubectl, &["rolebinding", "reader-alice", "-n", "proto"]);
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}])
    );

    kubectl.ok(&[
        "create",
        "priorityclass",
        "high",
        "--value=1000",
        "--description=important",
    ]);
    let class = get(&kubectl, &["priorityclass", "high"]);
    assert_eq!(class["value"], 1000);
    assert_eq!(class["description"], "important");
    assert_eq!(class["preemptionPolicy"], "PreemptLowerPriority");

    kubectl.ok(&[
        "create",
        "quota",
        "limits",
        "-n",
        "proto",
        "--hard=pods=10,cpu=2",
    ]);
    let quota = get(&kubectl, &["resourcequota", "limits", "-n", "proto"]);
    assert_eq!(quota["spec"]["hard"], json!({"pods": "10", "cpu": "2"}));

    // IntOrString both ways.
    kubectl.ok(&[
        "create",
        "poddisruptionbudget",
        "half",
        "-n",
        "proto",
        "--selector=app=web",
        "--min-available=50%",
    ]);
    let pdb = get(&kubectl, &["pdb", "half", "-n", "proto"]);
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_eq!(
        pdb["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    kubectl.ok(&[
        "create",
        "pdb",
        "one",
        "-n",
        "proto",
        "--selector=app=web",
        "--max-unavailable=1",
    ]);
    assert_eq!(
        get(&kubectl, &["pdb", "one", "-n", "proto"])["spec"]["maxUnavailable"],
        1
    );

    kubectl.ok(&[
        "run",
        "box",
        "-n",
        "proto",
        "--image=busybox",
        "--restart=Never",
        "--labels=run=box",
        "--",
        "sleep",
        "60",
    ]);
    let pod = get(&kubectl, &["pod", "box", "-n", "proto"]);
    assert_eq!(pod["metadata"]["labels"], json!({"run": "box"}));
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["containers"][0]["args"], json!(["sleep", "60"]));

    kubectl.ok_with(
        &["create", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: proto}\n\
             spec:\n  containers:\n  - name: main\n    image: busybox\n    args: [sleep, '60']\n",
        ),
    );
    let pod = get(&kubectl, &["pod", "one", "-n", "proto"]);
    assert_eq!(pod["spec"]["containers"][0]["args"], json!(["sleep", "60"]));

    for (kind, name) in [
        ("configmap", "settings"),
        ("secret", "creds"),
        ("deployment", "web"),
        ("job", "once"),
        ("role", "reader"),
        ("rolebinding", "reader-alice"),
        ("resourcequota", "limits"),
        ("pdb", "half"),
        ("pod", "box"),
    ] {
        kubectl.ok(&["delete", kind, name, ns[0], ns[1], "--wait=false"]);
        let err = kubectl.fails(&["get", kind, name, ns[0], ns[1]], None);
        assert!(
            err.contains("NotFound") || err.contains("not found"),
            "{kind}: {err}"
        );
    }
    kubectl.ok(&["delete", "priorityclass", "high"]);
    let err = kubectl.fails(&["get", "priorityclass", "high"], None);
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_bodies_are_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let client = server.admin_client();
    let url = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    let timeout = Duration::from_secs(10);
    for (body, wanted) in [
        (
            b"{\"kind\":\"ConfigMap\"}".to_vec(),
            "Kubernetes protobuf prefix",
        ),
        // The envelope announces a 100-byte object and ends.
        (b"k8s\0\x12\x64\x0a".to_vec(), "unexpected end of data"),
        (
            b"k8s\0\x0a\x0c\x0a\x02v1\x12\x06Gadget\x12\x00".to_vec(),
            "no protobuf message is known for kind \"Gadget\"",
        ),
    ] {
        let response = client
            .post(
                &url,
                "application/vnd.kubernetes.protobuf",
                body.into(),
                timeout,
            )
            .await
            .unwrap();
        assert_eq!(response.status, 400);
        let status: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(status["reason"], "BadRequest");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(wanted), "{message}");
    }
}

/// A length-delimited protobuf field; the test's payloads stay under 128 bytes.
fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut out = vec![(tag << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

/// DeleteOptions with a UID precondition, as client-go encodes it for protobuf.
fn delete_options(uid: &str) -> Vec<u8> {
    let type_meta = [field(1, b"v1"), field(2, b"DeleteOptions")].concat();
    let options = field(2, &field(1, uid.as_bytes()));
    [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &options)].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_delete_options_preconditions_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = Kubectl {
        kubeconfig: &server.kubeconfig,
        binary: KUBECTL,
        netns: None,
    };
    kubectl.ok(&["create", "configmap", "guarded", "--from-literal=a=b"]);
    let uid = get(&kubectl, &["configmap", "guarded"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let client = server.admin_client();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps/guarded",
        server.url()
    );
    let delete = |body: Vec<u8>| {
        client.request(
            http::Method::DELETE,
            &url,
            Some("application/vnd.kubernetes.protobuf"),
            body.into(),
            Duration::from_secs(10),
        )
    };

    let response = delete(delete_options("not-the-uid")).await.unwrap();
    assert_eq!(response.status, 409);
    let status: Value = serde_json::from_slice(&response.body).unwrap();
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("Precondition failed: UID in precondition: not-the-uid"),
        "{message}"
    );
    get(&kubectl, &["configmap", "guarded"]);

    let response = delete(delete_options(&uid)).await.unwrap();
    assert_eq!(response.status, 200);
    let err = kubectl.fails(&["get", "configmap", "guarded"], None);
    assert!(err.contains("not found"), "{err}");
}
