//! A `kedge agent` on another host than its server: the server (control plane only) in one
//! test host, the agent in a second one joined to it by a veth pair, the agent joined with
//! the K10 token. The kubelet API of the agent serves with the certificate the server
//! issued at join, so `kubectl logs` and `kubectl exec` reach its pods; and the agent
//! takes the cluster's service range, DNS address and domain from the server, so its pods
//! resolve Services through its node DNS.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::agent::{Agent, TestHost, API_PORT};
use common::{eventually, LogDump, Server};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn logs_and_exec_reach_pods_on_a_joined_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (server_host, agent_host) = TestHost::pair();
    // Not k3s's defaults: the agent must be told them.
    let network = [
        "--service-cidr",
        "10.45.0.0/16",
        "--cluster-cidr",
        "10.46.0.0/16",
        "--cluster-domain",
        "kedge.test",
    ]
    .map(String::from);
    let mut server = Server::new(&dir.path().join("server"), API_PORT, &network)
        .listening_on_all()
        .inside(&server_host);
    server.start();
    server.wait_ready(WAIT).await;
    let _logs = LogDump(vec![server.log.clone()]);
    let token = std::fs::read_to_string(server.data_dir.join("server/token")).unwrap();
    let url = format!("https://{}:{API_PORT}", server_host.ip());
    let agent = Agent::start(&dir.path().join("agent"), agent_host, &url, &token);
    let kubectl = server.kubectl();
    let node = agent.name().to_string();
    eventually(WAIT, "the agent's node to be Ready", || async {
        let out = kubectl.run(&["get", "node", &node, "--no-headers"], None);
        String::from_utf8_lossy(&out.stdout).contains(" Ready ")
    })
    .await;
    eventually(WAIT, "the default ServiceAccount", || async {
        kubectl
            .run(&["get", "serviceaccount", "default"], None)
            .status
            .success()
    })
    .await;

    // The serving certificate is kept as a server's own agent keeps it.
    let tls = agent.data_dir.join("agent/tls");
    for file in ["ca.crt", "kubelet.crt", "kubelet.key"] {
        assert!(tls.join(file).is_file(), "{file} in {}", tls.display());
    }
    let mode = std::fs::metadata(tls.join("kubelet.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    kubectl.ok(&[
        "run",
        "greeter",
        "--image=busybox:1.35",
        "--restart=Never",
        "--command",
        "--",
        "sh",
        "-c",
        "echo hello from the agent; sleep 3600",
    ]);
    let out = kubectl.run(
        &[
            "wait",
            "--for=condition=Ready",
            "pod/greeter",
            "--timeout=90s",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        kubectl.ok(&["describe", "pod", "greeter"])
    );
    assert_eq!(
        kubectl.ok(&["get", "pod", "greeter", "-o", "jsonpath={.spec.nodeName}"]),
        node
    );
    eventually(WAIT, "the pod's output in kubectl logs", || async {
        let out = kubectl.run(&["logs", "greeter"], None);
        String::from_utf8_lossy(&out.stdout) == "hello from the agent\n"
    })
    .await;
    assert_eq!(kubectl.ok(&["exec", "greeter", "--", "echo", "hi"]), "hi\n");

    // The server's network settings, on the agent.
    let ip = kubectl.ok(&["get", "pod", "greeter", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip.starts_with("10.46."), "pod IP {ip}");
    let resolv = kubectl.ok(&["exec", "greeter", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.45.0.10\n")
            && resolv.contains("search default.svc.kedge.test svc.kedge.test kedge.test\n"),
        "{resolv}"
    );
    eventually(
        WAIT,
        "the kubernetes Service to resolve from the pod",
        || async {
            let lookup = [
                "exec",
                "greeter",
                "--",
                "timeout",
                "5",
                "nslookup",
                "kubernetes.default.svc.kedge.test",
            ];
            let out = kubectl.run(&lookup, None);
            String::from_utf8_lossy(&out.stdout).contains("Address: 10.45.0.1\n")
        },
    )
    .await;
    kubectl.ok(&["delete", "pod", "greeter", "--grace-period=1"]);
    drop(agent);
}
