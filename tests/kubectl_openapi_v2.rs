//! `/openapi/v2` as the real kubectl reads it: client-side validation of `kind: List`
//! manifests (what `kubectl get -o yaml` prints) and `kubectl explain` in its v2 form.

mod common;

use common::started_server;

const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: first, namespace: default}
  data: {a: "1"}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: second, namespace: default}
  data: {b: "2"}
"#;

const BAD_LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: third, namespace: default}
  foo: bar
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_validates_lists_and_explains_with_openapi_v2() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let kubectl = server.kubectl();

    let created = kubectl.ok_with(&["create", "-f", "-"], Some(LIST));
    assert!(created.contains("configmap/first created"), "{created}");
    assert!(created.contains("configmap/second created"), "{created}");
    let data = kubectl.ok(&["get", "configmap", "second", "-o", "jsonpath={.data.b}"]);
    assert_eq!(data, "2");

    let applied = kubectl.ok_with(&["apply", "-f", "-"], Some(&LIST.replace("\"2\"", "\"3\"")));
    assert!(applied.contains("configmap/second configured"), "{applied}");
    let data = kubectl.ok(&["get", "configmap", "second", "-o", "jsonpath={.data.b}"]);
    assert_eq!(data, "3");

    let error = kubectl.fails(&["create", "-f", "-"], Some(BAD_LIST));
    assert!(
        error.contains(r#"unknown field "foo" in io.k8s.api.core.v1.ConfigMap"#),
        "{error}"
    );
    let missing = kubectl.fails(&["get", "configmap", "third"], None);
    assert!(
        missing.contains("NotFound") || missing.contains("not found"),
        "{missing}"
    );

    let explained = kubectl.ok(&["explain", "pod.spec", "--output=plaintext-openapiv2"]);
    assert!(explained.contains("KIND:     Pod"), "{explained}");
    assert!(explained.contains("RESOURCE: spec <Object>"), "{explained}");
    assert!(
        explained.contains("containers\t<[]Object> -required-"),
        "{explained}"
    );
}
