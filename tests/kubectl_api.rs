//! The Kubernetes API as the real kubectl uses it, against a real `kedge server`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, started_server, Server};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
  namespace: shop
type: Opaque
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_every_builtin_resource() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let resources = kubectl.ok(&["api-resources", "--no-headers"]);
    for expected in [
        "pods  po  v1  true  Pod",
        "deployments  deploy  apps/v1  true  Deployment",
        "namespaces  ns  v1  false  Namespace",
        "customresourcedefinitions  crd,crds  apiextensions.k8s.io/v1  false  CustomResourceDefinition",
        "horizontalpodautoscalers  hpa  autoscaling/v2  true  HorizontalPodAutoscaler",
        "leases    coordination.k8s.io/v1  true  Lease",
    ] {
        let words: Vec<&str> = expected.split_whitespace().collect();
        assert!(
            resources.lines().any(|line| line.split_whitespace().collect::<Vec<_>>() == words),
            "api-resources lacks {expected:?}:\n{resources}"
        );
    }
    let explained = kubectl.ok(&["explain", "deployment.spec.replicas"]);
    assert!(
        explained.contains("FIELD: replicas <integer>")
            && explained.contains("Number of desired pods"),
        "{explained}"
    );
    let explained = kubectl.ok(&["explain", "pod.spec.containers"]);
    assert!(
        explained.contains("FIELD: containers <[]Container>"),
        "{explained}"
    );
    let namespaces = kubectl.ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{ns}")),
            "{namespaces}"
        );
    }
    // The legacy (non-aggregated) documents too.
    let core = kubectl.ok(&["get", "--raw", "/api/v1"]);
    assert!(core.contains(r#""name":"pods/status""#), "{core}");
    let groups = kubectl.ok(&["get", "--raw", "/apis"]);
    assert!(groups.contains(r#""name":"apps""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_patch_and_delete_like_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let out = kubectl.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    for line in [
        "namespace/shop created",
        "configmap/web-config created",
        "secret/web-secret created",
        "deployment.apps/web created",
    ] {
        assert!(out.contains(line), "{out}");
    }
    // Applying again changes nothing; a changed field is configured and bumps generation.
    let out = kubectl.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let generation = kubectl.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(generation, "1");
    let scaled = MANIFEST.replace("replicas: 2", "replicas: 4");
    let out = kubectl.ok_with(&["apply", "-f", "-"], Some(&scaled));
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let fields = kubectl.ok(&[
        "get",
        "deploy",
        "web",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]);
    assert_eq!(fields, "4 2");

    // Output formats.
    let table = kubectl.ok(&["get", "configmaps", "-n", "shop"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "DATA", "AGE"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web-config ") && l.split_whitespace().nth(1) == Some("1")),
        "{table}"
    );
    let secrets = kubectl.ok(&["get", "secrets", "-n", "shop"]);
    assert!(
        secrets
            .lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>()
                == ["web-secret", "Opaque", "1"]),
        "{secrets}"
    );
    let yaml = kubectl.ok(&["get", "cm", "web-config", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("greeting: hello") && yaml.contains("uid: "),
        "{yaml}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&kubectl.ok(&["get", "cm", "-n", "shop", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "List");
    // Every namespace also gets the cluster CA (the root CA publisher), at once or soon.
    let names = kubectl.ok(&["get", "cm,deploy", "-n", "shop", "-o", "name"]);
    assert_eq!(
        names
            .lines()
            .filter(|n| *n != "configmap/kube-root-ca.crt")
            .collect::<Vec<_>>(),
        vec!["configmap/web-config", "deployment.apps/web"]
    );
    let columns = kubectl.ok(&[
        "get",
        "cm",
        "web-config",
        "-n",
        "shop",
        "-o",
        "custom-columns=N:.metadata.name,G:.data.greeting",
        "--no-headers",
    ]);
    assert_eq!(
        columns.split_whitespace().collect::<Vec<_>>(),
        vec!["web-config", "hello"]
    );
    let all = kubectl.ok(&["get", "cm", "-A", "--show-labels"]);
    assert!(
        all.lines()
            .any(|l| l.starts_with("shop ") && l.ends_with("app=web")),
        "{all}"
    );
    let secret = kubectl.ok(&[
        "get",
        "secret",
        "web-secret",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(secret, "czNjcmV0", "stringData is stored as base64 data");

    // label, annotate, and the three patch types.
    kubectl.ok(&["label", "cm", "web-config", "-n", "shop", "tier=front"]);
    kubectl.ok(&["annotate", "cm", "web-config", "-n", "shop", "owner=ops"]);
    let selected = kubectl.ok(&[
        "get",
        "cm",
        "-n",
        "shop",
        "-l",
        "app=web,tier in (front)",
        "-o",
        "name",
    ]);
    assert_eq!(selected.trim(), "configmap/web-config");
    kubectl.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"data":{"b":"2"}}"#,
    ]);
    kubectl.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/c","value":"3"}]"#,
    ]);
    kubectl.ok(&[
        "patch",
        "cm",
        "web-config",
        "-n",
        "shop",
        "-p",
        r#"{"data":{"d":"4"}}"#,
    ]);
    let data = kubectl.ok(&[
        "get",
        "cm",
        "web-config",
        "-n",
        "shop",
        "-o",
        "jsonpath={.data}",
    ]);
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"greeting": "hello", "b": "2", "c": "3", "d": "4"})
    );
    let annotation = kubectl.ok(&[
        "get",
        "cm",
        "web-config",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(annotation, "ops");

    // Deleting by label and --all.
    let out = kubectl.ok(&["delete", "cm", "-n", "shop", "-l", "app=web"]);
    assert!(out.contains(r#"configmap "web-config" deleted"#), "{out}");
    let out = kubectl.ok(&["delete", "deploy,secret", "-n", "shop", "--all"]);
    assert!(
        out.contains(r#"deployment.apps "web" deleted"#)
            && out.contains(r#"secret "web-secret" deleted"#),
        "{out}"
    );
    let empty = kubectl.ok(&["get", "cm,deploy,secret", "-n", "shop", "-o", "name"]);
    assert_eq!(
        empty.trim(),
        "configmap/kube-root-ca.crt",
        "what the namespace keeps: its CA"
    );

    // Deleting a namespace deletes what is in it, then the namespace (kubectl waits for it).
    kubectl.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    let out = kubectl.ok(&["delete", "namespace", "shop", "--timeout=60s"]);
    assert!(out.contains(r#"namespace "shop" deleted"#), "{out}");
    let err = kubectl.fails(&["get", "namespace", "shop"], None);
    assert!(err.contains(r#"namespaces "shop" not found"#), "{err}");
    let leftovers = kubectl.ok(&["get", "cm,deploy,secret", "-n", "shop", "-o", "name"]);
    assert_eq!(leftovers.trim(), "", "the namespace's objects are gone too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_read_exactly_like_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let err = kubectl.fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo","labelz":{"a":"b"}}}"#),
    );
    assert!(
        err.contains(r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "metadata.labelz""#),
        "{err}"
    );
    let out = kubectl.run(
        &["create", "--validate=warn", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"typo","labelz":{"a":"b"}}}"#),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(r#"Warning: unknown field "metadata.labelz""#));
    let err = kubectl.fails(&["get", "cm", "nope"], None);
    assert_eq!(
        err.trim(),
        r#"Error from server (NotFound): configmaps "nope" not found"#
    );
    let err = kubectl.fails(&["get", "deploy", "nope"], None);
    assert_eq!(
        err.trim(),
        r#"Error from server (NotFound): deployments.apps "nope" not found"#
    );
    kubectl.ok(&["create", "configmap", "dup", "--from-literal=a=1"]);
    let err = kubectl.fails(&["create", "configmap", "dup", "--from-literal=a=1"], None);
    assert_eq!(
        err.trim(),
        r#"error: failed to create configmap: configmaps "dup" already exists"#
    );
    let err = kubectl.fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#),
    );
    assert!(
        err.contains(r#"The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain"#),
        "{err}"
    );
    let stale = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup","resourceVersion":"1"},"data":{"a":"2"}}"#;
    let err = kubectl.fails(&["replace", "-f", "-"], Some(stale));
    assert!(
        err.contains(r#"Operation cannot be fulfilled on configmaps "dup": the object has been modified; please apply your changes to the latest version and try again"#),
        "{err}"
    );
    let err = kubectl.fails(
        &["create", "-f", "-"],
        Some(r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d"},"spec":{"replicas":"three"}}"#),
    );
    assert!(
        err.contains("cannot be handled as a Deployment: spec.replicas: invalid type"),
        "{err}"
    );
    let err = kubectl.fails(&["create", "namespace", "default"], None);
    assert!(
        err.contains(r#"namespaces "default" already exists"#),
        "{err}"
    );
    let err = kubectl.fails(
        &["create", "-n", "missing", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#),
    );
    assert!(err.contains(r#"namespaces "missing" not found"#), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_get_the_right_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let client = server.admin_client();
    let url = |path: &str| format!("{}{path}", server.url());
    let timeout = Duration::from_secs(10);
    let status_of =
        |body: &bytes::Bytes| -> serde_json::Value { serde_json::from_slice(body).unwrap() };
    let post = |content_type: &'static str, body: String| {
        let client = client.clone();
        let url = url("/api/v1/namespaces/default/configmaps");
        async move {
            client
                .post(&url, content_type, body.into(), timeout)
                .await
                .unwrap()
        }
    };

    let huge = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "x".repeat(4 << 20)
    );
    let response = post("application/json", huge.to_string()).await;
    assert_eq!(response.status, 413);
    assert_eq!(status_of(&response.body)["reason"], "RequestEntityTooLarge");

    let response = post("text/csv", "a,b".to_string()).await;
    assert_eq!(response.status, 415);
    assert_eq!(status_of(&response.body)["reason"], "UnsupportedMediaType");

    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-yaml}\ndata: {a: '1'}\n";
    let response = post("application/yaml", yaml.to_string()).await;
    assert_eq!(
        response.status,
        201,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let created = client
        .request(
            http::Method::DELETE,
            &url("/api/v1/namespaces/default/configmaps/from-yaml"),
            None,
            bytes::Bytes::new(),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(created.status, 200);

    let response = post("application/json", "{not json".to_string()).await;
    assert_eq!(response.status, 400);
    assert_eq!(status_of(&response.body)["reason"], "BadRequest");

    let response = client
        .request(
            http::Method::POST,
            &url("/api/v1/namespaces/default/configmaps/x"),
            Some("application/json"),
            "{}".into(),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(response.status, 405);
    assert_eq!(status_of(&response.body)["reason"], "MethodNotAllowed");

    let response = client.get(&url("/api/v1/nothings"), timeout).await.unwrap();
    assert_eq!(response.status, 404);

    // Lists carry a resourceVersion and `items: []` when empty; pages carry a continue token.
    let empty = client
        .get(&url("/api/v1/namespaces/default/secrets"), timeout)
        .await
        .unwrap();
    let empty = status_of(&empty.body);
    assert_eq!(empty["items"], serde_json::json!([]));
    assert!(empty["metadata"]["resourceVersion"].as_str().is_some());
    for i in 0..5 {
        let body =
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c{i}"}}}}"#);
        let created = post("application/json", body).await;
        assert_eq!(created.status, 201);
    }
    let page = status_of(
        &client
            .get(
                &url("/api/v1/namespaces/default/configmaps?limit=2"),
                timeout,
            )
            .await
            .unwrap()
            .body,
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let rest = status_of(
        &client
            .get(
                &url(&format!(
                    "/api/v1/namespaces/default/configmaps?limit=10&continue={token}"
                )),
                timeout,
            )
            .await
            .unwrap()
            .body,
    );
    // c2, c3, c4 and kube-root-ca.crt.
    assert_eq!(rest["items"].as_array().unwrap().len(), 4);
    assert_eq!(rest["metadata"].get("continue"), None);
    let bad = client
        .get(
            &url("/api/v1/namespaces/default/configmaps?limit=1&continue=garbage"),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_sees_changes_and_old_versions_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(
        dir.path(),
        free_port(),
        &["--store-history-revisions".to_string(), "10".to_string()],
    );
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let kubectl = server.kubectl();
    kubectl.ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args([
            "get",
            "configmap",
            "watched",
            "-w",
            "-o",
            "jsonpath={.data.a}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    kubectl.ok(&[
        "patch",
        "configmap",
        "watched",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"2"}}"#,
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        vec!["1", "2"],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With only 10 revisions of history, watching from revision 1 is too old: 410 Expired.
    for i in 0..30 {
        kubectl.ok(&["create", "configmap", &format!("churn{i}")]);
    }
    let client = server.admin_client();
    common::eventually(Duration::from_secs(15), "compaction", || {
        let client = client.clone();
        let url = format!(
            "{}/api/v1/configmaps?watch=1&resourceVersion=1&timeoutSeconds=1",
            server.url()
        );
        async move {
            let response = client.get(&url, Duration::from_secs(5)).await.unwrap();
            let text = String::from_utf8_lossy(&response.body).to_string();
            text.contains(r#""type":"ERROR""#)
                && text.contains(r#""reason":"Expired""#)
                && text.contains(r#""code":410"#)
        }
    })
    .await;
}

const APPLICATION: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: store}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: store}
data: {mode: fast}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: store}
stringData: {token: abc}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop, namespace: store, labels: {app: shop}}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
      - name: shop
        image: busybox:1.36
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: shop, namespace: store}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: carts.shop.example.com}
spec:
  group: shop.example.com
  scope: Namespaced
  names: {plural: carts, singular: cart, kind: Cart}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              items: {type: integer}
---
apiVersion: shop.example.com/v1
kind: Cart
metadata: {name: first, namespace: store}
spec: {items: 2}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_application_applies_describes_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    // As upstream, the custom object cannot be mapped before its definition exists: kubectl
    // applies the rest, says so, and a second apply (once the CRD is established) finishes.
    let first = kubectl.run(&["apply", "-f", "-"], Some(APPLICATION));
    let stdout = String::from_utf8_lossy(&first.stdout);
    for line in [
        "namespace/store created",
        "configmap/settings created",
        "secret/creds created",
        "deployment.apps/shop created",
        "service/shop created",
        "customresourcedefinition.apiextensions.k8s.io/carts.shop.example.com created",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    kubectl.ok(&[
        "wait",
        "--for=condition=established",
        "crd/carts.shop.example.com",
        "--timeout=30s",
    ]);
    let second = kubectl.ok_with(&["apply", "-f", "-"], Some(APPLICATION));
    assert!(
        second.contains("cart.shop.example.com/first created"),
        "{second}"
    );
    assert!(
        second.contains("deployment.apps/shop unchanged"),
        "{second}"
    );
    assert!(second.contains("service/shop unchanged"), "{second}");

    let described = kubectl.ok(&["describe", "deployment", "shop", "-n", "store"]);
    for line in [
        "Name:                   shop",
        "Replicas:               2 desired",
        "StrategyType:           RollingUpdate",
        "Image:         busybox:1.36",
    ] {
        assert!(described.contains(line), "{described}");
    }
    let described = kubectl.ok(&["describe", "service", "shop", "-n", "store"]);
    assert!(
        described.contains("TargetPort:        8080/TCP") || described.contains("8080/TCP"),
        "{described}"
    );
    assert!(
        described.contains("IP Families:              IPv4"),
        "{described}"
    );
    let described = kubectl.ok(&["describe", "cart", "first", "-n", "store"]);
    assert!(
        described.contains("Kind:         Cart") && described.contains("Items:  2"),
        "{described}"
    );
    let all = kubectl.ok(&["get", "all", "-n", "store", "-o", "name"]);
    assert!(
        all.contains("deployment.apps/shop") && all.contains("service/shop"),
        "{all}"
    );

    // `wait --for=delete` returns once the namespace and its contents are gone.
    kubectl.ok(&["delete", "namespace", "store", "--wait=false"]);
    kubectl.ok(&["wait", "--for=delete", "namespace/store", "--timeout=60s"]);
    // kubectl itself looks the namespace up after the 404, as against any server.
    let err = kubectl.fails(&["get", "cart", "first", "-n", "store"], None);
    assert!(err.contains(r#"namespaces "store" not found"#), "{err}");
    let carts = kubectl.ok(&["get", "carts", "-A", "-o", "name"]);
    assert_eq!(
        carts.trim(),
        "",
        "the namespace's custom objects went with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_are_whole_and_pages_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let client = server.admin_client();
    let base = format!("{}/api/v1/namespaces/default/configmaps", server.url());
    let timeout = Duration::from_secs(30);
    let count = 1_234;
    let creates = (0..count).map(|i| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i:04}"}},"data":{{"i":"{i}"}}}}"#);
            let response = client.post(&base, "application/json", body.into(), timeout).await.unwrap();
            assert_eq!(response.status, 201);
        }
    });
    futures::future::join_all(creates).await;
    let list = |query: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let response = client
                .get(&format!("{base}{query}"), timeout)
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            serde_json::from_slice::<serde_json::Value>(&response.body).unwrap()
        }
    };
    let all = list(String::new()).await;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    // Ours, and the namespace's kube-root-ca.crt (last in key order).
    assert_eq!(names.len(), count + 1, "every object, in one answer");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "in key order");
    assert!(all["metadata"].get("continue").is_none());
    assert_eq!(all["kind"], "ConfigMapList");
    let first = list("?limit=700".to_string()).await;
    assert_eq!(first["items"].as_array().unwrap().len(), 700);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let rest = list(format!("?limit=700&continue={token}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), count + 1 - 700);
    assert!(rest["metadata"].get("continue").is_none());
    assert_eq!(rest["items"][0]["metadata"]["name"], "cm-0700");
    let selected = list("?fieldSelector=metadata.name%3Dcm-1233".to_string()).await;
    assert_eq!(selected["items"].as_array().unwrap().len(), 1);
}
