//! CustomResourceDefinitions as the real kubectl uses them, against a real `kedge server`:
//! a definition applied becomes a served resource (discovery, CRUD, schema checks, printer
//! columns, status and scale subresources, explain), and deleting it takes its objects and
//! its resource away.

mod common;

use std::time::{Duration, Instant};

use common::kubectl::Kubectl;
use common::started_server;

const WIDGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Ready
      type: string
      jsonPath: .status.conditions[?(@.type=="Ready")].status
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size:
                type: integer
                minimum: 1
                description: How big the widget is.
              color:
                type: string
                enum: [red, blue]
                default: red
              replicas:
                type: integer
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type: {type: string}
                    status: {type: string}
"#;

const W1: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  namespace: default
spec:
  size: 3
  replicas: 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_are_served_like_builtins() {
    let (_dir, server) = single_server().await;
    let kubectl = server.kubectl();

    let applied = Instant::now();
    establish(&kubectl, WIDGETS, "widgets.example.com");
    let listed = kubectl.ok(&["get", "widgets"]);
    assert!(
        applied.elapsed() < Duration::from_secs(5),
        "served after {:?}",
        applied.elapsed()
    );
    assert!(listed.is_empty(), "{listed}");
    let crd = kubectl.ok(&[
        "get",
        "crd",
        "widgets.example.com",
        "-o",
        "jsonpath={.status.acceptedNames.kind} {.status.storedVersions} {.status.conditions[?(@.type==\"NamesAccepted\")].reason}",
    ]);
    assert_eq!(crd, r#"Widget ["v1"] NoConflicts"#);

    let resources = kubectl.ok(&["api-resources", "--api-group=example.com"]);
    let line = resources
        .lines()
        .find(|l| l.starts_with("widgets"))
        .unwrap_or_else(|| panic!("{resources}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns,
        vec!["widgets", "wd", "example.com/v1", "true", "Widget"]
    );

    // A custom object: pruned, defaulted, listed with its printer columns.
    kubectl.ok_with(&["apply", "-f", "-"], Some(W1));
    let color = kubectl.ok(&["get", "widget", "w1", "-o", "jsonpath={.spec.color}"]);
    assert_eq!(color, "red");
    let table = kubectl.ok(&["get", "wd"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["NAME", "SIZE", "COLOR", "READY", "AGE"]);
    // No Ready condition yet: an empty cell, as upstream.
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], &["w1", "3", "red"]);
    assert_eq!(row.len(), 4, "{table}");

    // Strict validation (kubectl's default) refuses a field the schema does not know.
    let unknown = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&W1.replace("size: 3", "size: 3\n  shape: round")),
    );
    assert!(
        unknown.contains(r#"Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown field "spec.shape""#),
        "{unknown}"
    );
    let invalid = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&W1.replace("size: 3", "size: big")),
    );
    assert!(
        invalid.contains(r#"The Widget "w1" is invalid: spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#),
        "{invalid}"
    );
    let too_small = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&W1.replace("size: 3", "size: 0")),
    );
    assert!(
        too_small.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "{too_small}"
    );

    // Scale writes the spec replicas path; status goes through the status subresource only.
    kubectl.ok(&["scale", "widget", "w1", "--replicas=3"]);
    let replicas = kubectl.ok(&[
        "get",
        "widget",
        "w1",
        "-o",
        "jsonpath={.spec.replicas} {.metadata.generation}",
    ]);
    assert_eq!(replicas, "3 2");
    kubectl.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3,"conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    kubectl.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":9}}"#,
    ]);
    let status = kubectl.ok(&[
        "get",
        "widget",
        "w1",
        "-o",
        "jsonpath={.status.replicas} {.metadata.generation}",
    ]);
    assert_eq!(status, "3 2");
    let row = kubectl.ok(&["get", "widget", "w1", "--no-headers"]);
    assert!(row.split_whitespace().nth(3) == Some("True"), "{row}");

    let explain = kubectl.ok(&["explain", "widget.spec"]);
    assert!(explain.contains("KIND:       Widget"), "{explain}");
    assert!(explain.contains("What the widget should be."), "{explain}");
    assert!(explain.contains("How big the widget is."), "{explain}");

    // Watch and deletecollection go through the same code as built-ins.
    for extra in ["w2", "w3"] {
        kubectl.ok_with(
            &["apply", "-f", "-"],
            Some(&W1.replace(
                "name: w1",
                &format!("name: {extra}\n  labels: {{extra: \"yes\"}}"),
            )),
        );
    }
    let events = kubectl.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/widgets?watch=1&timeoutSeconds=1&labelSelector=extra",
    ]);
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains(r#""type":"ADDED""#))
            .count(),
        2,
        "{events}"
    );
    kubectl.ok(&[
        "delete",
        "--raw",
        "/apis/example.com/v1/namespaces/default/widgets?labelSelector=extra",
    ]);
    let left = kubectl.ok(&["get", "widgets", "-o", "name"]);
    assert_eq!(left.trim(), "widget.example.com/w1");

    // Deleting the definition deletes its objects (waiting for their finalizers) and then
    // its resource.
    kubectl.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    kubectl.ok(&["delete", "crd", "widgets.example.com", "--wait=false"]);
    let terminating = common_condition(&kubectl, "widgets.example.com", "Terminating").await;
    assert_eq!(
        terminating,
        "True InstanceDeletionInProgress CustomResource deletion is in progress"
    );
    let refused = kubectl.fails(
        &["create", "-f", "-"],
        Some(&W1.replace("name: w1", "name: w4")),
    );
    assert!(
        refused.contains("MethodNotAllowed") || refused.contains("does not allow"),
        "{refused}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while kubectl
        .ok(&[
            "get",
            "widget",
            "w1",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "w1 was never marked for deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kubectl.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    kubectl.ok(&[
        "wait",
        "--for=delete",
        "crd/widgets.example.com",
        "--timeout=20s",
    ]);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = format!("--cache-dir={}", cache.path().display());
    let gone = kubectl.fails(&[&cache_dir, "get", "widgets"], None);
    assert!(
        gone.contains(r#"error: the server doesn't have a resource type "widgets""#),
        "{gone}"
    );
    let crds = kubectl.ok(&["get", "crd", "-o", "name"]);
    assert!(crds.is_empty(), "{crds}");
    // A definition of the same resource starts empty.
    establish(&kubectl, WIDGETS, "widgets.example.com");
    let again = kubectl.ok(&[&cache_dir, "get", "widgets", "-A", "-o", "name"]);
    assert!(again.is_empty(), "{again}");
}

const GADGETS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Cluster
  names: {plural: gadgets, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_are_checked_and_names_must_be_free() {
    let (_dir, server) = single_server().await;
    let kubectl = server.kubectl();

    let unnamed = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&GADGETS.replace("name: gadgets.example.com", "name: gadget.example.com")),
    );
    assert!(
        unnamed.contains(r#"The CustomResourceDefinition "gadget.example.com" is invalid: metadata.name: Invalid value: "gadget.example.com": must be spec.names.plural+"."+spec.group"#),
        "{unnamed}"
    );
    let no_schema = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&GADGETS.replace(
            "    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n",
            "",
        )),
    );
    assert!(
        no_schema.contains(
            "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"
        ),
        "{no_schema}"
    );
    let no_storage = kubectl.fails(
        &["apply", "-f", "-"],
        Some(&GADGETS.replace("storage: true", "storage: false")),
    );
    assert!(
        no_storage.contains("must have exactly one version marked as storage version"),
        "{no_storage}"
    );

    // A cluster-scoped resource, and a second definition whose kind is taken.
    establish(&kubectl, GADGETS, "gadgets.example.com");
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {anything: [1, 2]}\n"),
    );
    let anything = kubectl.ok(&["get", "gadget", "g1", "-o", "jsonpath={.spec.anything}"]);
    assert_eq!(anything, "[1,2]");
    let raw = kubectl.ok(&["get", "--raw", "/apis/example.com/v1"]);
    let list: serde_json::Value = serde_json::from_slice(raw.as_bytes()).unwrap();
    assert_eq!(list["resources"][0]["name"], "gadgets");
    assert_eq!(list["resources"][0]["namespaced"], false);

    let twin = GADGETS
        .replace("gadgets.example.com", "gizmos.example.com")
        .replace("plural: gadgets", "plural: gizmos, listKind: GizmoList");
    kubectl.ok_with(&["apply", "-f", "-"], Some(&twin));
    let names = common_condition(&kubectl, "gizmos.example.com", "NamesAccepted").await;
    assert_eq!(names, r#"False KindConflict "Gadget" is already in use"#);
    let established = kubectl.ok(&[
        "get",
        "crd",
        "gizmos.example.com",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(established, "False");
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = format!("--cache-dir={}", cache.path().display());
    let gone = kubectl.fails(&[&cache_dir, "get", "gizmos"], None);
    assert!(
        gone.contains(r#"error: the server doesn't have a resource type "gizmos""#),
        "{gone}"
    );
}

/// A started server in a directory of its own (kept while the test runs).
async fn single_server() -> (tempfile::TempDir, common::Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    (dir, server)
}

/// Applies a definition and waits until it is Established.
fn establish(kubectl: &Kubectl<'_>, manifest: &str, crd: &str) {
    kubectl.ok_with(&["apply", "-f", "-"], Some(manifest));
    let waited = kubectl.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        &format!("crd/{crd}"),
    ]);
    assert!(waited.contains("condition met"), "{waited}");
}

/// `status reason message` of a definition's condition, once the controller wrote it.
async fn common_condition(kubectl: &Kubectl<'_>, crd: &str, kind: &str) -> String {
    let path = format!(
        "jsonpath={{.status.conditions[?(@.type==\"{kind}\")].status}} {{.status.conditions[?(@.type==\"{kind}\")].reason}} {{.status.conditions[?(@.type==\"{kind}\")].message}}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = kubectl.ok(&["get", "crd", crd, "-o", &path]);
        if !out.trim().is_empty() || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_survive_restarts_and_are_served_by_every_server() {
    let root = tempfile::tempdir().unwrap();
    let ca = kedge::pki::Ca::generate().unwrap();
    let mut servers = common::cluster(root.path(), &ca, 2, &[]);
    let _logs = common::LogDump(servers.iter().map(|s| s.log.clone()).collect());
    for server in &mut servers {
        server.start();
    }
    for server in &mut servers {
        server.wait_ready(Duration::from_secs(60)).await;
    }
    let first_config = servers[0].kubeconfig.clone();
    let first = Kubectl {
        kubeconfig: &first_config,
        binary: "kubectl",
        netns: None,
    };
    establish(&first, WIDGETS, "widgets.example.com");
    first.ok_with(&["apply", "-f", "-"], Some(W1));
    let second_config = servers[1].kubeconfig.clone();
    let second = Kubectl {
        kubeconfig: &second_config,
        binary: "kubectl",
        netns: None,
    };
    let seen = eventually_ok(&second, &["get", "widgets", "--no-headers"]).await;
    assert!(seen.starts_with("w1 "), "{seen}");

    servers[1].terminate();
    servers[1].start();
    servers[1].wait_ready(Duration::from_secs(60)).await;
    let seen = eventually_ok(
        &second,
        &["get", "widget", "w1", "-o", "jsonpath={.spec.color}"],
    )
    .await;
    assert_eq!(seen, "red");
    let stored = eventually_ok(&second, &["get", "wd", "w1", "-o", "jsonpath={.spec.size}"]).await;
    assert_eq!(stored, "3");

    // Secrets (encrypted at rest) and service account tokens work on every server too.
    first.ok(&[
        "create",
        "secret",
        "generic",
        "shared",
        "--from-literal=k=v",
    ]);
    let value = eventually_ok(
        &second,
        &["get", "secret", "shared", "-o", "jsonpath={.data.k}"],
    )
    .await;
    assert_eq!(value, "dg==");
    first.ok(&["create", "serviceaccount", "robot"]);
    let token = first.ok(&["create", "token", "robot"]);
    let token_config = root.path().join("robot.yaml");
    servers[1].token_kubeconfig(&token_config, &token);
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
}

/// Runs `args` until kubectl succeeds (a restarted server rebuilds its registry just after
/// it is ready); returns stdout.
async fn eventually_ok(kubectl: &Kubectl<'_>, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = kubectl.run(args, None);
        if out.status.success() {
            return String::from_utf8(out.stdout).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const NOTES: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: notes.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: notes, singular: note, kind: Note}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {text: {type: string}}}}}}
  - name: v1
    served: true
    storage: true
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {text: {type: string}}}}}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_version_serves_the_same_objects() {
    let (_dir, server) = single_server().await;
    let kubectl = server.kubectl();
    establish(&kubectl, NOTES, "notes.example.com");
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: example.com/v1beta1\nkind: Note\nmetadata: {name: n1, namespace: default}\nspec: {text: hello}\n"),
    );
    // Written through v1beta1, read through either: the object is the same, its
    // apiVersion the one asked for (upstream's `None` conversion).
    let v1 = kubectl.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1/namespaces/default/notes/n1",
    ]);
    let v1: serde_json::Value = serde_json::from_str(&v1).unwrap();
    assert_eq!(v1["apiVersion"], "example.com/v1");
    assert_eq!(v1["spec"]["text"], "hello");
    let beta = kubectl.ok(&[
        "get",
        "--raw",
        "/apis/example.com/v1beta1/namespaces/default/notes",
    ]);
    let beta: serde_json::Value = serde_json::from_str(&beta).unwrap();
    assert_eq!(beta["items"][0]["apiVersion"], "example.com/v1beta1");
    assert_eq!(
        kubectl.ok(&[
            "get",
            "notes.v1beta1.example.com",
            "n1",
            "-o",
            "jsonpath={.apiVersion}"
        ]),
        "example.com/v1beta1"
    );
}
