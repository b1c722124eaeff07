//! `kedge server` as a user runs it: kubectl against the written kubeconfig, credentials
//! required, restarts that keep identity and data, flags from the environment, and errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{free_port, store_client, Server, KEDGE};
use kedge::client::HttpsClient;
use kedge::store::Command as StoreCommand;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_version_works_and_credentials_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path(), free_port(), &[]);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;

    let mode = std::fs::metadata(&server.kubeconfig)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the kubeconfig is private by default");

    let out = kubectl(&server.kubeconfig, &["version", "-o", "json"]);
    assert!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server_version = &version["serverVersion"];
    assert_eq!(server_version["major"], "1");
    assert_eq!(server_version["minor"], "33");
    assert!(server_version["gitVersion"]
        .as_str()
        .unwrap()
        .starts_with("v1.33.0+kedge"));
    for field in [
        "gitCommit",
        "gitTreeState",
        "buildDate",
        "goVersion",
        "compiler",
        "platform",
    ] {
        assert!(
            server_version.get(field).is_some(),
            "/version lacks {field}"
        );
    }

    // `kedge kubectl` finds the kubeconfig through the same variable the server reads.
    let out = Command::new(KEDGE)
        .args(["kubectl", "version", "-o", "json"])
        .env_remove("KUBECONFIG")
        .env("KEDGE_KUBECONFIG_OUTPUT", &server.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kedge kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without credentials: 401 with a Kubernetes Status, for every path.
    let ca = std::fs::read_to_string(server.tls_dir().join("ca.crt")).unwrap();
    let anonymous = HttpsClient::new(kedge::pki::client_config(&ca, None).unwrap());
    for path in ["/version", "/readyz", "/api", "/kedge/raft/v1/status"] {
        let response = anonymous
            .get(&format!("{}{path}", server.url()), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(response.status, 401, "{path}");
        let status: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    // An unknown bearer token is no better.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(server.tls_dir().join("ca.crt"))
        .args(["-H", "Authorization: Bearer not-a-token"])
        .arg(format!("{}/version", server.url()))
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    // kubectl with a token the server does not know gets Unauthorized too.
    let no_user = dir.path().join("no-user.yaml");
    std::fs::write(
        &no_user,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: nobody\n  user:\n    token: not-a-valid-token\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: nobody\ncurrent-context: c\n",
            server.url(),
            server.tls_dir().join("ca.crt").display()
        ),
    )
    .unwrap();
    let out = kubectl(&no_user, &["get", "--raw", "/version"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The admin is not a server: the Raft endpoints are forbidden to it.
    let response = server
        .admin_client()
        .get(
            &format!("{}/kedge/raft/v1/status", server.url()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 403);

    assert!(server.terminate().success(), "SIGTERM is a clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_reuse_certificates_token_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(dir.path(), free_port(), &[]);
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let ca_before = std::fs::read(server.tls_dir().join("ca.crt")).unwrap();
    let token_before = std::fs::read_to_string(dir.path().join("server/token")).unwrap();
    assert!(token_before.starts_with("K10"));
    let store = store_client(&server);
    for i in 0..50 {
        store
            .propose(&StoreCommand::Create {
                key: format!("/registry/configmaps/default/c{i}"),
                value: Bytes::from(format!("value {i}")),
            })
            .await
            .unwrap();
    }
    assert!(server.terminate().success());

    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        std::fs::read(server.tls_dir().join("ca.crt")).unwrap(),
        ca_before
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server/token")).unwrap(),
        token_before
    );
    let page = store_client(&server)
        .range_all("/registry/configmaps/", false)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 50);
    assert!(page.revision >= 50, "revision {}", page.revision);
    let out = kubectl(&server.kubeconfig, &["version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_read_from_kedge_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let kubeconfig = dir.path().join("env.yaml");
    let mut child = Command::new(KEDGE)
        .arg("server")
        .env("KEDGE_DATA_DIR", dir.path().join("data"))
        .env("KEDGE_HTTPS_LISTEN_PORT", port.to_string())
        .env("KEDGE_BIND_ADDRESS", "127.0.0.1")
        .env("KEDGE_KUBECONFIG_OUTPUT", &kubeconfig)
        .env("KEDGE_KUBECONFIG_MODE", "0644")
        .env("KEDGE_TOKEN", "my-shared-secret")
        // No node agent: it would program the machine's own network namespace.
        .env("KEDGE_DISABLE_AGENT", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let result = async {
        common::eventually(Duration::from_secs(30), "the kubeconfig", || {
            let exists = kubeconfig.exists();
            async move { exists }
        })
        .await;
        let mode = std::fs::metadata(&kubeconfig).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let token = std::fs::read_to_string(dir.path().join("data/server/token")).unwrap();
        assert!(
            token.trim_end().ends_with("::server:my-shared-secret"),
            "{token}"
        );
        let out = kubectl(&kubeconfig, &["version"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Server Version: v1.33.0+kedge"));
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn bad_input_is_a_one_line_error_and_a_failing_exit() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(KEDGE)
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args([
                "--https-listen-port",
                &free_port().to_string(),
                "--bind-address",
                "127.0.0.1",
            ])
            .arg("--write-kubeconfig")
            .arg(dir.path().join("k.yaml"))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let (status, stderr) = run(&["--write-kubeconfig-mode", "999"]);
    assert!(!status.success());
    assert!(
        stderr.starts_with("kedge: error:") && stderr.contains("999"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (status, stderr) = run(&["--service-cidr", "banana"]);
    assert!(!status.success());
    assert!(stderr.contains("--service-cidr"), "{stderr}");

    let (status, stderr) = run(&["--server", "https://10.0.0.1:6443"]);
    assert!(!status.success());
    assert!(stderr.contains("joining an existing server"), "{stderr}");

    let out = Command::new(KEDGE)
        .args(["server", "--https-listen-port", "http"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--https-listen-port"));

    // A data dir that belongs to another Raft node is refused, with what to do.
    std::fs::create_dir_all(dir.path().join("server/db")).unwrap();
    std::fs::write(dir.path().join("server/db/node-id"), "7\n").unwrap();
    let (status, stderr) = run(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains("belongs to Raft node 7") && stderr.contains("--raft-id 7"),
        "{stderr}"
    );
}
