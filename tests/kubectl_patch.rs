//! Strategic merge patch, client-side apply and server-side apply as the real kubectl
//! drives them, against a real `kedge server`.

mod common;

use common::kubectl::Kubectl;
use common::started_server;

/// kubectl 1.33 against `server`.
fn deployment(containers: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
{containers}
"#
    )
}

/// The deployment's containers as `name=image` words.
fn containers(kubectl: &Kubectl) -> String {
    let template = "jsonpath={range .spec.template.spec.containers[*]}{.name}={.image} {end}";
    kubectl
        .ok(&["get", "deploy", "web", "-o", template])
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategic_patches_and_client_side_apply_merge_containers_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let both = "      - {name: web, image: nginx:1}\n      - {name: side, image: busybox}";
    kubectl.ok_with(&["apply", "-f", "-"], Some(&deployment(both)));

    kubectl.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:2"}]}}}}"#,
    ]);
    assert_eq!(containers(&kubectl), "web=nginx:2 side=busybox");
    kubectl.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"extra","image":"redis"}]}}}}"#,
    ]);
    assert_eq!(containers(&kubectl), "web=nginx:2 side=busybox extra=redis");

    // Re-applying without `side` deletes it (a `$patch: delete` computed by kubectl);
    // `extra`, never applied, stays.
    let web_only = "      - {name: web, image: nginx:3}";
    kubectl.ok_with(&["apply", "-f", "-"], Some(&deployment(web_only)));
    assert_eq!(containers(&kubectl), "web=nginx:3 extra=redis");

    let err = kubectl.fails(
        &[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}"#,
        ],
        None,
    );
    assert!(
        err.contains("does not contain declared merge key: name"),
        "{err}"
    );

    // Moving to server-side apply: what client-side apply set is owned by
    // kubectl-client-side-apply, so changing it conflicts.
    let err = kubectl.fails(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment("      - {name: web, image: nginx:4}")),
    );
    assert!(
        err.contains(r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using apps/v1: .spec.template.spec.containers[name="web"].image"#),
        "{err}"
    );
}

fn configmap(data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n{data}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let apply = ["apply", "--server-side", "-f", "-"];
    let data = || kubectl.ok(&["get", "cm", "settings", "-o", "jsonpath={.data}"]);
    let managed_fields = || {
        kubectl.ok(&[
            "get",
            "cm",
            "settings",
            "-o",
            "yaml",
            "--show-managed-fields",
        ])
    };
    let created = kubectl.ok_with(&apply, Some(&configmap("  key: one\n  other: x")));
    assert!(
        created.contains("configmap/settings serverside-applied"),
        "{created}"
    );
    assert_eq!(data(), r#"{"key":"one","other":"x"}"#);

    // A second apply changes the value and drops the field it no longer applies.
    kubectl.ok_with(&apply, Some(&configmap("  key: two")));
    assert_eq!(data(), r#"{"key":"two"}"#);
    let yaml = managed_fields();
    for expected in [
        "manager: kubectl",
        "operation: Apply",
        "fieldsType: FieldsV1",
        "f:key: {}",
    ] {
        assert!(
            yaml.contains(expected),
            "{expected:?} missing from:\n{yaml}"
        );
    }
    assert!(!yaml.contains("f:other"), "{yaml}");

    // Another manager changes the field: applying a different value now conflicts.
    kubectl.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"key":"patched"}}"#,
    ]);
    let err = kubectl.fails(&apply, Some(&configmap("  key: three")));
    assert!(
        err.contains(
            r#"Apply failed with 1 conflict: conflict with "kubectl-patch" using v1: .data.key"#
        ),
        "{err}"
    );
    assert_eq!(data(), r#"{"key":"patched"}"#);

    // Forcing takes the field over: the patcher no longer owns anything and is dropped.
    kubectl.ok_with(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&configmap("  key: three")),
    );
    assert_eq!(data(), r#"{"key":"three"}"#);
    let yaml = managed_fields();
    assert!(!yaml.contains("kubectl-patch"), "{yaml}");

    // `kubectl edit` is a manager of its own too.
    let edited = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["edit", "cm", "settings"])
        .env("KUBE_EDITOR", "sed -i s/three/edited/")
        .output()
        .unwrap();
    assert!(
        edited.status.success(),
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    assert_eq!(data(), r#"{"key":"edited"}"#);
    let err = kubectl.fails(&apply, Some(&configmap("  key: three")));
    assert!(
        err.contains(r#"conflict with "kubectl-edit" using v1: .data.key"#),
        "{err}"
    );
    kubectl.ok_with(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&configmap("  key: three")),
    );

    // Fields others own survive when the applier stops applying them.
    kubectl.ok(&["label", "cm", "settings", "team=a"]);
    kubectl.ok(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"extra":"kept"}}"#,
    ]);
    kubectl.ok_with(&apply, Some(&configmap("  key: three")));
    assert_eq!(data(), r#"{"extra":"kept","key":"three"}"#);
    let yaml = managed_fields();
    assert!(yaml.contains("manager: kubectl-label"), "{yaml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_merges_containers_with_client_side_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();
    let web = "      - {name: web, image: nginx:1}";
    kubectl.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment(web)),
    );
    kubectl.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"busybox"}]}}}}"#,
    ]);
    // Applying a new image for `web` keeps `side`, which the patcher owns.
    let web2 = "      - {name: web, image: nginx:2}";
    kubectl.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment(web2)),
    );
    assert_eq!(containers(&kubectl), "web=nginx:2 side=busybox");
    let err = kubectl.fails(
        &["apply", "--server-side", "-f", "-"],
        Some(&deployment(
            "      - {name: web, image: nginx:2}\n      - {name: side, image: alpine}",
        )),
    );
    assert!(
        err.contains(r#"conflict with "kubectl-patch" using apps/v1: .spec.template.spec.containers[name="side"].image"#),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_requests_take_yaml_and_need_a_field_manager() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let client = server.admin_client();
    let timeout = std::time::Duration::from_secs(10);
    let path = "/api/v1/namespaces/default/configmaps/yaml";
    let apply = |query: &'static str, body: &'static str| {
        let client = client.clone();
        let url = format!("{}{path}{query}", server.url());
        async move {
            let response = client
                .request(
                    http::Method::PATCH,
                    &url,
                    Some("application/apply-patch+yaml"),
                    body.into(),
                    timeout,
                )
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            (response.status, body)
        }
    };
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yaml\ndata:\n  a: '1'\n";

    let (status, body) = apply("", config).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch"#
    );

    let (status, body) = apply("?fieldManager=tool", config).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["a"], "1");
    assert_eq!(body["metadata"]["managedFields"][0]["manager"], "tool");
    assert_eq!(body["metadata"]["managedFields"][0]["operation"], "Apply");
    let version = body["metadata"]["resourceVersion"].clone();

    // The same configuration again changes nothing, not even the resourceVersion.
    let (status, body) = apply("?fieldManager=tool", config).await;
    assert_eq!(status, 200);
    assert_eq!(body["metadata"]["resourceVersion"], version);

    let (status, body) = apply(
        "?fieldManager=other",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: yaml\ndata:\n  a: '2'\n",
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(body["reason"], "Conflict");
    assert_eq!(
        body["message"],
        r#"Apply failed with 1 conflict: conflict with "tool": .data.a"#
    );
    assert_eq!(
        body["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(body["details"]["causes"][0]["field"], ".data.a");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        r#"conflict with "tool""#
    );

    let response = client
        .request(
            http::Method::PATCH,
            &format!("{}{path}?force=true", server.url()),
            Some("application/merge-patch+json"),
            r#"{"data":{"b":"2"}}"#.into(),
            timeout,
        )
        .await
        .unwrap();
    assert_eq!(response.status, 422);
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        body["message"],
        r#"PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for non-apply patch"#
    );
}
