//! The kubelet API and the API server's proxy to it, as a user sees them: a real kedge
//! server, a kubelet API served on loopback for a node whose pod records and CRI log files
//! the test writes (what the pod workers and the shim write), and the real kubectl for
//! `logs`, `exec` (WebSocket and SPDY) and `port-forward`. exec runs through
//! `HostProcess`: the command is a real process on the host, so the protocols, the proxy
//! and kubectl's exit codes are exercised end to end without a container runtime.
//!
//! Who may call the kubelet: like upstream (client certificate, then an authorisation the
//! kubelet asks the API server for, which allows `system:masters`), the API server's
//! `kube-apiserver-kubelet-client` identity and members of `system:masters` (the admin)
//! are let in; no certificate is 401, any other identity (a node's) 403.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{free_port, started_server, Server};
use kedge::client::HttpsClient;
use kedge::kubelet::server::remotecommand::host::HostProcess;
use kedge::kubelet::server::{serve, KubeletApiState};
use kedge::pki::{self, Ca, CertKeyPair};
use serde_json::json;

const NODE: &str = "kubelet-api-node";
const UID: &str = "6f1c3f0e-0d4e-4f51-9a39-1d5a5b0a7e01";

/// A kubelet API for node [`NODE`] on 127.0.0.1, exec through host processes.
struct Kubelet {
    agent: PathBuf,
    port: u16,
    pki: pki::KubeletPki,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_kubelet(server: &Server, agent: &Path) -> Kubelet {
    let ca = Ca::load(&server.tls_dir()).unwrap().unwrap();
    let pki = pki::ensure_kubelet_pki(
        &ca,
        &agent.join("tls"),
        NODE,
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap();
    let tls = pki::kubelet_server_config(&pki).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = KubeletApiState::new(NODE, agent)
        .with_pods(server.kube_client())
        .with_streams(Arc::new(HostProcess));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, tls, Arc::new(state), async {
        let _ = stopped.await;
    }));
    Kubelet {
        agent: agent.to_path_buf(),
        port,
        pki,
        _stop: stop,
    }
}

impl Kubelet {
    /// Records container `name` of pod `default/web` as the pod workers do, with `log`
    /// as its CRI log.
    fn record_container(&self, id: &str, name: &str, restart_count: u32, log: &str) -> PathBuf {
        let dir = self.agent.join("containers").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let log_dir = self.agent.join(format!("logs/default_web_{UID}/{name}"));
        std::fs::create_dir_all(&log_dir).unwrap();
        let log_path = log_dir.join(format!("{restart_count}.log"));
        std::fs::write(&log_path, log).unwrap();
        let previous = restart_count
            .checked_sub(1)
            .map(|n| log_dir.join(format!("{n}.log")));
        std::fs::write(
            dir.join("meta.json"),
            json!({
                "id": id, "podUid": UID, "namespace": "default", "pod": "web", "container": name,
                "kind": "regular", "restartCount": restart_count, "logPath": log_path,
                "previousLogPath": previous, "specImage": "busybox",
                "image": "docker.io/library/busybox:latest", "imageId": "sha256:0",
            })
            .to_string(),
        )
        .unwrap();
        log_path
    }

    fn client(&self, pair: Option<&CertKeyPair>) -> HttpsClient {
        HttpsClient::new(pki::client_config(&self.pki.ca_pem, pair).unwrap())
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// Registers [`NODE`] (its kubelet on 127.0.0.1:`port`) and pod `default/web` bound to it
/// with containers `app` (running) and `pending` (still being created).
async fn register(server: &Server, port: u16) {
    let kubectl = server.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\n\
             spec:\n  nodeName: {NODE}\n  containers:\n  - {{name: app, image: busybox}}\n  - {{name: pending, image: busybox}}\n"
        )),
    );
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
    }});
    kubectl.ok(&[
        "patch",
        "node",
        NODE,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    let pod_status = json!({"status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "ready": true, "restartCount": 1, "image": "busybox", "imageID": "", "state": {"running": {"startedAt": "2026-11-29T09:00:00Z"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}},
        {"name": "pending", "ready": false, "restartCount": 0, "image": "busybox", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}},
    ]}});
    kubectl.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &pod_status.to_string(),
    ]);
}

const LOG: &str = "\
2026-11-29T09:00:00.123456789Z stdout F hello from app
2026-11-29T09:00:01Z stderr F a warning
2026-11-29T09:00:02Z stdout P split 
2026-11-29T09:00:02.5Z stdout F line
2026-11-29T09:00:03Z stdout F bye
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubelet_lets_in_only_the_api_server_and_admins() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(&dir.path().join("server")).await;
    let kubelet = start_kubelet(&server, &dir.path().join("agent")).await;
    let tls = server.tls_dir();
    let ca = Ca::load(&tls).unwrap().unwrap();
    let timeout = Duration::from_secs(5);

    let anonymous = kubelet.client(None);
    let answer = anonymous
        .get(&kubelet.url("/healthz"), timeout)
        .await
        .unwrap();
    assert_eq!(answer.status, 401, "{answer:?}");

    let node = ca
        .issue_client(
            "system:node:other",
            &["system:nodes"],
            Duration::from_secs(600),
        )
        .unwrap();
    let answer = kubelet
        .client(Some(&node))
        .get(&kubelet.url("/pods"), timeout)
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(
        String::from_utf8_lossy(&answer.body).trim(),
        "Forbidden (user=system:node:other, verb=get, resource=nodes, subresource=proxy)"
    );

    let api_server = CertKeyPair::load(&tls, "kubelet-client").unwrap().unwrap();
    let answer = kubelet
        .client(Some(&api_server))
        .get(&kubelet.url("/healthz"), timeout)
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), &answer.body[..]),
        (200, &b"ok\n"[..])
    );

    register(&server, kubelet.port).await;
    let admin = CertKeyPair::load(&tls, "admin").unwrap().unwrap();
    let answer = kubelet
        .client(Some(&admin))
        .get(&kubelet.url("/pods"), timeout)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let pods: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert_eq!(pods["items"][0]["metadata"]["name"], "web");

    // Through the API server's node proxy, as `kubectl get --raw` does.
    let kubectl = server.kubectl();
    let healthz = kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{NODE}/proxy/healthz"),
    ]);
    assert_eq!(healthz.trim(), "ok");
    let stats = kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{NODE}/proxy/stats/summary"),
    ]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["node"]["nodeName"], NODE, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_reads_the_cri_log_through_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(&dir.path().join("server")).await;
    let kubelet = start_kubelet(&server, &dir.path().join("agent")).await;
    register(&server, kubelet.port).await;
    let log_path = kubelet.record_container("c1", "app", 1, LOG);
    std::fs::write(
        log_path.with_file_name("0.log"),
        "2026-11-29T08:00:00Z stdout F the crashed one\n",
    )
    .unwrap();
    let kubectl = server.kubectl();

    assert_eq!(
        kubectl.ok(&["logs", "web", "-c", "app"]),
        "hello from app\na warning\nsplit line\nbye\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "-c", "app", "--tail=2"]),
        "split line\nbye\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "-c", "app", "--tail=2", "--timestamps"]),
        "2026-11-29T09:00:02Z split line\n2026-11-29T09:00:03Z bye\n"
    );
    assert_eq!(
        kubectl.ok(&[
            "logs",
            "web",
            "-c",
            "app",
            "--since-time=2026-11-29T09:00:01Z"
        ]),
        "a warning\nsplit line\nbye\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "-c", "app", "--previous"]),
        "the crashed one\n"
    );
    assert_eq!(
        kubectl.ok(&["logs", "web", "-c", "app", "--limit-bytes=5"]),
        "hello"
    );

    let err = kubectl.fails(&["logs", "web", "-c", "nope"], None);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    let err = kubectl.fails(&["logs", "web", "-c", "pending"], None);
    assert!(
        err.contains("container \"pending\" in pod \"web\" is waiting to start: ContainerCreating"),
        "{err}"
    );
    let err = kubectl.fails(&["logs", "nothere"], None);
    assert!(err.contains("pods \"nothere\" not found"), "{err}");

    // -f: follows what the container writes until it exits.
    let follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .args(["logs", "-f", "web", "-c", "app", "--tail=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .unwrap();
        file.write_all(b"2026-11-29T09:00:04Z stdout F more\n")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(kubelet.agent.join("containers/c1/exit.json"), "{}").unwrap();
    let output = tokio::task::spawn_blocking(move || follow.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "bye\nmore\n");
}

fn exec(
    server: &Server,
    websocket: bool,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&server.kubeconfig)
        .arg("exec")
        .args(args)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if websocket { "true" } else { "false" },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_runs_over_websocket_and_spdy_with_exit_codes_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let server = started_server(&dir.path().join("server")).await;
    let kubelet = start_kubelet(&server, &dir.path().join("agent")).await;
    register(&server, kubelet.port).await;
    kubelet.record_container("c1", "app", 1, LOG);

    for websocket in [true, false] {
        let protocol = if websocket { "WebSocket" } else { "SPDY" };
        let out = exec(
            &server,
            websocket,
            &[
                "web",
                "-c",
                "app",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2",
            ],
            None,
        );
        assert!(out.status.success(), "{protocol}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{protocol}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err"),
            "{protocol}: {out:?}"
        );

        let out = exec(
            &server,
            websocket,
            &["web", "-c", "app", "--", "sh", "-c", "exit 3"],
            None,
        );
        assert_eq!(out.status.code(), Some(3), "{protocol}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("command terminated with exit code 3"),
            "{protocol}: {out:?}"
        );

        let out = exec(
            &server,
            websocket,
            &["-i", "web", "-c", "app", "--", "sh", "-c", "tr a-z A-Z"],
            Some("piped through\n"),
        );
        assert!(out.status.success(), "{protocol}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "PIPED THROUGH\n",
            "{protocol}"
        );
    }

    let out = exec(&server, true, &["web", "-c", "nope", "--", "true"], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid for pod web"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_reaches_a_port_in_the_pods_network_namespace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let server = started_server(&dir.path().join("server")).await;
    let kubelet = start_kubelet(&server, &dir.path().join("agent")).await;
    register(&server, kubelet.port).await;
    kubelet.record_container("c1", "app", 1, LOG);

    // The pod's network namespace, with a server on its loopback that answers in capitals.
    let pod_dir = kubelet.agent.join("pods").join(UID);
    std::fs::create_dir_all(&pod_dir).unwrap();
    let netns = pod_dir.join("netns");
    kedge::runtime::netns::create(&netns).unwrap();
    let listener = kedge::runtime::netns::listen_tcp(&netns, ([127, 0, 0, 1], 8080).into())
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let upper = buf[..n].to_ascii_uppercase();
                    if tcp.write_all(&upper).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    for websocket in [true, false] {
        let local = free_port();
        let mut forward = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .args(["port-forward", "pod/web", &format!("{local}:8080")])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websocket { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // kubectl needs a moment to listen; retry until it answers.
        let mut answer = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            let attempt = async {
                let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", local))
                    .await
                    .ok()?;
                tcp.write_all(b"hello pod").await.ok()?;
                let mut buf = [0u8; 9];
                tokio::time::timeout(Duration::from_secs(3), tcp.read_exact(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                Some(buf.to_vec())
            };
            if let Some(bytes) = attempt.await {
                answer = bytes;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(answer, b"HELLO POD", "websocket={websocket}");
        let _ = forward.kill();
        let _ = forward.wait();
    }
    kedge::runtime::netns::remove(&netns).unwrap();
}
