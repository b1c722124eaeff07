//! The official Python `kubernetes` client (installed by `packaging/deps.sh --test` into a
//! venv) drives a real `kedge server` through create, patch, scale, watch, list and delete.

mod common;

use std::process::Command;

use common::started_server;

/// Where `packaging/deps.sh --test` puts the client; `KEDGE_TEST_PYTHON` overrides it.
const PYTHON: &str = "/opt/kedge-test/venv/bin/python";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_creates_patches_watches_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(dir.path()).await;
    let python = std::env::var("KEDGE_TEST_PYTHON").unwrap_or_else(|_| PYTHON.to_string());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client_flow.py");
    let kubeconfig = server.kubeconfig.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .arg(&kubeconfig)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {python} (install it with `sh packaging/deps.sh --test`): {e}")
            })
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("OK"),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for step in [
        "configmap patched",
        "deployment scaled",
        "service got 10.43.",
        "watch saw MODIFIED,MODIFIED,DELETED",
        "namespace deleted",
    ] {
        assert!(stdout.contains(step), "{stdout}");
    }
}
