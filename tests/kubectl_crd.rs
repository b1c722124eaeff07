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
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = Kubectl {
        kubeconfig: &server.kubeconfig,
        binary: "kubectl",
    };

    kubectl.ok_with(&["apply", "-f", "-"], Some(WIDGETS));
    let applied = Instant::now();
    let waited = kubectl.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    assert!(waited.contains("condition met"), "{waited}");
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

    // Deleting the definition deletes its objects and its resource.
    kubectl.ok(&["delete", "crd", "widgets.example.com", "--timeout=20s"]);
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
    kubectl.ok_with(&["apply", "-f", "-"], Some(WIDGETS));
    kubectl.ok(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=10s",
        "crd/widgets.example.com",
    ]);
    let again = kubectl.ok(&[&cache_dir, "get", "widgets", "-A", "-o", "name"]);
    assert!(again.is_empty(), "{again}");
}
