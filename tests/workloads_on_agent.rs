//! Real containers on a real node: a `kedge server` with its agent inside a test network
//! namespace (tests/common/agent.rs), the busybox test image, and only what a user sees
//! through kubectl. Upstream Kubernetes is the reference for every status, reason and delay.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::agent::{Node, TestHost, API_PORT};
use common::workloads::{
    apply_and_wait_ready, busybox_pod, in_terminal, pod_field, restarts, until, wait_ready,
};
use common::Server;

/// The harness itself: a server inside a test host runs in that host's network namespace
/// but the test's own mount namespace, and kubectl reaches it from inside.
#[tokio::test]
async fn a_test_host_runs_the_server_in_its_own_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let host = TestHost::new();
    let mut server = Server::new(dir.path(), API_PORT, &[]).inside(&host);
    server.start();
    server.wait_ready(Duration::from_secs(60)).await;
    let namespaces = server.kubectl().ok(&["get", "namespaces", "-o", "name"]);
    assert!(namespaces.contains("namespace/default"), "{namespaces}");

    let pid = server.pid().unwrap();
    let link = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    let host_net = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(host.netns()).unwrap().ino()
    };
    assert_eq!(
        link(&pid.to_string(), "net").to_string_lossy(),
        format!("net:[{host_net}]")
    );
    assert_ne!(link(&pid.to_string(), "net"), link("self", "net"));
    assert_eq!(link(&pid.to_string(), "mnt"), link("self", "mnt"));
    // The server goes first, then the namespace (and anything left in it).
    drop(server);
    drop(host);
}

#[tokio::test]
async fn a_pod_runs_and_kubectl_logs_shows_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    apply_and_wait_ready(
        &kubectl,
        &busybox_pod(
            "hello",
            "echo hello from kedge; echo to stderr >&2; sleep 3600",
        ),
        "hello",
    );
    let table = kubectl.ok(&["get", "pod", "hello"]);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    assert!(
        row.contains("1/1") && row.contains("Running") && row.contains(" 0 "),
        "{table}"
    );
    assert_eq!(
        pod_field(&kubectl, "hello", "{.spec.nodeName}"),
        node.name()
    );
    assert_eq!(
        pod_field(&kubectl, "hello", "{.status.hostIP}"),
        node.host.ip().to_string()
    );
    let id = pod_field(&kubectl, "hello", "{.status.containerStatuses[0].imageID}");
    assert!(id.contains("sha256:"), "imageID {id:?}");

    let logs = until(
        &kubectl,
        &["logs", "hello"],
        Duration::from_secs(10),
        "logs",
        |l| l.contains("to stderr"),
    )
    .await;
    assert_eq!(logs, "hello from kedge\nto stderr\n");
    let stamped = kubectl.ok(&["logs", "hello", "--timestamps", "--tail=1"]);
    assert!(
        stamped.ends_with(" to stderr\n") && stamped.contains('T'),
        "{stamped}"
    );

    // A pod that finishes: Completed, its logs still there.
    let done = busybox_pod("once", "echo done and gone")
        .replace("  containers:", "  restartPolicy: Never\n  containers:");
    kubectl.ok_with(&["apply", "-f", "-"], Some(&done));
    until(
        &kubectl,
        &["get", "pod", "once", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(90),
        "the pod to succeed",
        |phase| phase == "Succeeded",
    )
    .await;
    let table = kubectl.ok(&["get", "pod", "once"]);
    assert!(table.contains("Completed"), "{table}");
    assert_eq!(
        pod_field(
            &kubectl,
            "once",
            "{.status.containerStatuses[0].state.terminated.exitCode}"
        ),
        "0"
    );
    assert_eq!(kubectl.ok(&["logs", "once"]), "done and gone\n");
}

#[tokio::test]
async fn exec_with_piped_stdin_and_with_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    apply_and_wait_ready(&kubectl, &busybox_pod("shell", "sleep 3600"), "shell");

    let out = kubectl.ok_with(
        &["exec", "-i", "shell", "--", "sh", "-c", "cat; echo done"],
        Some("piped in\nsecond line\n"),
    );
    assert_eq!(out, "piped in\nsecond line\ndone\n");
    let out = kubectl.ok(&["exec", "shell", "--", "hostname"]);
    assert_eq!(out, "shell\n");
    // The command's exit code is kubectl's.
    let failed = kubectl.run(&["exec", "shell", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(failed.status.code(), Some(3), "{failed:?}");
    let missing = kubectl.fails(&["exec", "shell", "--", "/no/such/program"], None);
    assert!(!missing.is_empty());

    // -it: kubectl on a pseudo-terminal of the test's, as someone typing.
    let transcript = in_terminal(
        &kubectl,
        &["exec", "-it", "shell", "--", "sh"],
        "tty; stty size; echo answer-$((6 * 7)); exit 4\n",
        "answer-42",
    );
    assert!(transcript.contains("/dev/pts/"), "{transcript}");
    assert!(transcript.contains("answer-42"), "{transcript}");
    // The terminal's size reached the container (the test's pty is 40x100).
    assert!(transcript.contains("40 100"), "{transcript}");
}

#[tokio::test]
async fn kubectl_cp_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    apply_and_wait_ready(
        &kubectl,
        &busybox_pod(
            "files",
            "mkdir -p /data/sub && echo from the pod > /data/sub/out.txt && sleep 3600",
        ),
        "files",
    );

    let local = dir.path().join("local");
    std::fs::create_dir_all(local.join("tree")).unwrap();
    std::fs::write(local.join("in.txt"), "from the test\n").unwrap();
    std::fs::write(local.join("tree/a.txt"), "a\n").unwrap();
    let into = format!("{}", local.join("in.txt").display());
    kubectl.ok(&["cp", &into, "files:/tmp/in.txt"]);
    assert_eq!(
        kubectl.ok(&["exec", "files", "--", "cat", "/tmp/in.txt"]),
        "from the test\n"
    );
    let tree = format!("{}", local.join("tree").display());
    kubectl.ok(&["cp", &tree, "files:/tmp/tree"]);
    assert_eq!(
        kubectl.ok(&["exec", "files", "--", "cat", "/tmp/tree/a.txt"]),
        "a\n"
    );

    let back = dir.path().join("back.txt");
    kubectl.ok(&["cp", "files:/data/sub/out.txt", &back.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "from the pod\n");
    let back_dir = dir.path().join("back-dir");
    kubectl.ok(&["cp", "files:/data", &back_dir.display().to_string()]);
    assert_eq!(
        std::fs::read_to_string(back_dir.join("sub/out.txt")).unwrap(),
        "from the pod\n"
    );
}

#[tokio::test]
async fn a_crashing_container_goes_to_crash_loop_back_off_with_growing_delays() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&busybox_pod("crasher", "echo crashing; exit 1")),
    );
    // Upstream's back-off: the first restart at once, then 10 s, 20 s, 40 s ... after each
    // exit. Record when each restart shows.
    let mut seen_at = Vec::new();
    let mut saw_back_off = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen_at.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "restarts seen at {seen_at:?}; pod: {}",
            kubectl.ok(&["get", "pod", "crasher", "-o", "yaml"])
        );
        let count = restarts(&kubectl, "crasher") as usize;
        while seen_at.len() <= count {
            seen_at.push(Instant::now());
        }
        let table = kubectl.ok(&["get", "pod", "crasher"]);
        saw_back_off |= table.contains("CrashLoopBackOff");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gaps: Vec<Duration> = seen_at.windows(2).map(|w| w[1] - w[0]).collect();
    // gaps[1] is the 10 s back-off, gaps[2] the 20 s one.
    assert!(
        gaps[1] >= Duration::from_secs(8) && gaps[2] >= gaps[1] + Duration::from_secs(6),
        "delays between restarts do not grow as upstream's: {gaps:?}"
    );
    assert!(saw_back_off, "the pod never showed CrashLoopBackOff");
    assert_eq!(
        pod_field(
            &kubectl,
            "crasher",
            "{.status.containerStatuses[0].lastState.terminated.reason}"
        ),
        "Error"
    );
    assert_eq!(
        pod_field(
            &kubectl,
            "crasher",
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "1"
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=crasher",
    ]);
    assert!(events.contains("BackOff"), "{events}");
    assert!(
        events.contains("Back-off restarting failed container main"),
        "{events}"
    );
    assert_eq!(kubectl.ok(&["logs", "crasher", "--previous"]), "crashing\n");
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let pod = busybox_pod("alive", "touch /tmp/healthy; sleep 3600")
        + r#"    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      periodSeconds: 1
      failureThreshold: 2
"#;
    apply_and_wait_ready(&kubectl, &pod, "alive");
    let first = pod_field(
        &kubectl,
        "alive",
        "{.status.containerStatuses[0].containerID}",
    );
    assert_eq!(restarts(&kubectl, "alive"), 0);

    kubectl.ok(&["exec", "alive", "--", "rm", "/tmp/healthy"]);
    until(
        &kubectl,
        &[
            "get",
            "pod",
            "alive",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ],
        Duration::from_secs(60),
        "the restart",
        |count| count == "1",
    )
    .await;
    wait_ready(&kubectl, "alive");
    let second = pod_field(
        &kubectl,
        "alive",
        "{.status.containerStatuses[0].containerID}",
    );
    assert_ne!(first, second, "the container was not replaced");
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=alive",
    ]);
    assert!(events.contains("Unhealthy"), "{events}");
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(
        events.contains("Container main failed liveness probe, will be restarted"),
        "{events}"
    );
    // The new container started afresh, healthy again.
    kubectl.ok(&["exec", "alive", "--", "cat", "/tmp/healthy"]);
}

#[tokio::test]
async fn readiness_gates_ready() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let pod = busybox_pod("gated", "sleep 3600")
        + r#"    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
      periodSeconds: 1
"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod));
    until(
        &kubectl,
        &["get", "pod", "gated", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(90),
        "the pod to run",
        |phase| phase == "Running",
    )
    .await;
    // Running, not Ready: 0/1, and it stays so while the probe fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let table = kubectl.ok(&["get", "pod", "gated"]);
    assert!(
        table.contains("0/1") && table.contains("Running"),
        "{table}"
    );
    let ready = "{.status.conditions[?(@.type==\"Ready\")].status}";
    assert_eq!(pod_field(&kubectl, "gated", ready), "False");
    assert_eq!(
        pod_field(
            &kubectl,
            "gated",
            "{.status.conditions[?(@.type==\"ContainersReady\")].reason}"
        ),
        "ContainersNotReady"
    );

    kubectl.ok(&["exec", "gated", "--", "touch", "/tmp/ready"]);
    wait_ready(&kubectl, "gated");
    let table = kubectl.ok(&["get", "pod", "gated"]);
    assert!(table.contains("1/1"), "{table}");

    kubectl.ok(&["exec", "gated", "--", "rm", "/tmp/ready"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Ready=false",
        "pod/gated",
        "--timeout=30s",
    ]);
    // Readiness never restarts anything.
    assert_eq!(restarts(&kubectl, "gated"), 0);
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    // The string doubles until the 32 MiB limit stops it.
    let pod = busybox_pod("hog", "a=x; while true; do a=\"$a$a\"; done")
        .replace("  containers:", "  restartPolicy: Never\n  containers:")
        + r#"    resources:
      limits:
        memory: 32Mi
"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(&pod));
    until(
        &kubectl,
        &["get", "pod", "hog", "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(90),
        "the pod to fail",
        |phase| phase == "Failed",
    )
    .await;
    let terminated = "{.status.containerStatuses[0].state.terminated";
    assert_eq!(
        pod_field(&kubectl, "hog", &format!("{terminated}.reason}}")),
        "OOMKilled"
    );
    assert_eq!(
        pod_field(&kubectl, "hog", &format!("{terminated}.exitCode}}")),
        "137"
    );
    let table = kubectl.ok(&["get", "pod", "hog"]);
    assert!(table.contains("OOMKilled"), "{table}");
    assert_eq!(
        pod_field(&kubectl, "hog", "{.status.qosClass}"),
        "Burstable"
    );
}

#[tokio::test]
async fn deletion_runs_pre_stop_and_takes_no_longer_than_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    // The container ignores SIGTERM: only the SIGKILL at the end of the grace period ends it.
    let pod = r#"apiVersion: v1
kind: Pod
metadata:
  name: stubborn
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "trap 'echo got TERM' TERM; echo started; while true; do sleep 1; done"]
    lifecycle:
      preStop:
        exec:
          command: ["sh", "-c", "echo pre-stop ran > /proc/1/fd/1"]
"#;
    apply_and_wait_ready(&kubectl, pod, "stubborn");
    // Follow the logs while deleting: the pre-stop hook's line and the trap's show there.
    let mut follow = kubectl
        .command(&["logs", "-f", "stubborn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = follow.stdout.take().unwrap();
    let (sender, followed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let _ = sender.send(text);
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let start = Instant::now();
    kubectl.ok(&["delete", "pod", "stubborn", "--timeout=60s"]);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took <= Duration::from_secs(5 + 5),
        "deletion took {took:?} with a 5 s grace period"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    let text = followed
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_default();
    assert!(text.contains("started"), "{text}");
    assert!(text.contains("pre-stop ran"), "{text}");
    assert!(text.contains("got TERM"), "{text}");
    let gone = kubectl.fails(&["get", "pod", "stubborn"], None);
    assert!(gone.contains("NotFound"), "{gone}");
}

#[tokio::test]
async fn init_containers_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let pod = r#"apiVersion: v1
kind: Pod
metadata:
  name: ordered
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - name: work
    emptyDir: {}
  initContainers:
  - name: first
    image: busybox:1.35
    command: ["sh", "-c", "sleep 3; echo first >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: busybox:1.35
    command: ["sh", "-c", "echo second >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", "echo main >> /work/order; cat /work/order; sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
"#;
    kubectl.ok_with(&["apply", "-f", "-"], Some(pod));
    until(
        &kubectl,
        &["get", "pod", "ordered"],
        Duration::from_secs(60),
        "Init:0/2 while the first init container sleeps",
        |table| table.contains("Init:0/2"),
    )
    .await;
    wait_ready(&kubectl, "ordered");
    assert_eq!(
        kubectl.ok(&["logs", "ordered", "-c", "main"]),
        "first\nsecond\nmain\n"
    );
    let reasons = pod_field(
        &kubectl,
        "ordered",
        "{.status.initContainerStatuses[*].state.terminated.reason}",
    );
    assert_eq!(reasons, "Completed Completed");
    assert_eq!(
        pod_field(
            &kubectl,
            "ordered",
            "{.status.conditions[?(@.type==\"Initialized\")].status}"
        ),
        "True"
    );
}

#[tokio::test]
async fn a_deployment_of_five_replicas_becomes_five_of_five() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.35",
        "--replicas=5",
        "--",
        "sleep",
        "3600",
    ]);
    kubectl.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let table = kubectl.ok(&["get", "deployment", "web"]);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(row.contains("5/5"), "{table}");
    let pods = kubectl.ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
    assert_eq!(pods.lines().count(), 5, "{pods}");
    assert!(
        pods.lines()
            .all(|l| l.contains("1/1") && l.contains("Running")),
        "{pods}"
    );
    // Each pod its own IP comes with the pod network (the network issue).
}

#[tokio::test]
async fn containers_survive_an_agent_killed_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path(), &[]).await;
    let pods = ["steady-a", "steady-b"];
    {
        let kubectl = node.kubectl();
        for pod in pods {
            let manifest = busybox_pod(pod, "echo up; sleep 3600")
                + r#"    readinessProbe:
      exec:
        command: ["true"]
      periodSeconds: 1
"#;
            kubectl.ok_with(&["apply", "-f", "-"], Some(&manifest));
        }
        for pod in pods {
            wait_ready(&kubectl, pod);
        }
    }
    let container = "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.running.startedAt}";
    let before: Vec<String> = pods
        .iter()
        .map(|pod| pod_field(&node.kubectl(), pod, container))
        .collect();

    node.kill_and_restart().await;
    // Past a few sync loops of the restarted agent.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let kubectl = node.kubectl();
    for (pod, before) in pods.iter().zip(&before) {
        wait_ready(&kubectl, pod);
        assert_eq!(&pod_field(&kubectl, pod, container), before, "{pod}");
        assert_eq!(restarts(&kubectl, pod), 0, "{pod}");
        assert_eq!(kubectl.ok(&["logs", pod]), "up\n");
        assert_eq!(
            kubectl.ok(&["exec", pod, "--", "echo", "still here"]),
            "still here\n"
        );
    }
    // The restarted agent still manages them: deleting one ends its container.
    kubectl.ok(&["delete", "pod", "steady-a", "--timeout=60s"]);
}

#[tokio::test]
async fn kubectl_top_pod_shows_usage() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let pod = busybox_pod("busy", "while true; do :; done")
        + r#"    resources:
      limits:
        cpu: 100m
        memory: 64Mi
"#;
    apply_and_wait_ready(&kubectl, &pod, "busy");
    let top = until(
        &kubectl,
        &["top", "pod", "busy", "--no-headers"],
        Duration::from_secs(90),
        "pod metrics",
        |out| out.starts_with("busy"),
    )
    .await;
    // "busy   99m   1Mi": some CPU (the quota caps it near 100m), some memory.
    let fields: Vec<&str> = top.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{top}");
    let millicores: u64 = fields[1].trim_end_matches('m').parse().unwrap();
    assert!(millicores > 5 && millicores <= 150, "{top}");
    assert!(
        fields[2].ends_with("Mi") || fields[2].ends_with("Ki"),
        "{top}"
    );
    let nodes = kubectl.ok(&["top", "node", "--no-headers"]);
    assert!(nodes.starts_with(node.name()), "{nodes}");
}

/// `kubectl exec -it` whose input ends (its terminal closed while it reads it): as with
/// containerd, which closes the exec's console when its stdin ends, the shell's terminal is
/// hung up, the shell exits on the SIGHUP, and kubectl with it.
#[tokio::test]
async fn exec_with_a_terminal_ends_when_its_input_does() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    apply_and_wait_ready(&kubectl, &busybox_pod("shell", "sleep 3600"), "shell");

    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    // kubectl must not hold the master too, or closing it here would end nothing.
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&master),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .unwrap();
    // The terminal is kubectl's stdin (so -t holds) but not its controlling terminal:
    // closing it ends kubectl's input without hanging kubectl itself up.
    let mut command = kubectl.command(&["exec", "-it", "shell", "--", "sh"]);
    command
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("kubectl runs");
    drop(command);
    let mut stdout = child.stdout.take().unwrap();
    let (sender, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut writer = std::fs::File::from(master);
    std::thread::sleep(Duration::from_secs(2));
    writer.write_all(b"echo typed-$((6 * 7))\n").unwrap();
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&text).contains("typed-42") {
        assert!(
            Instant::now() < deadline,
            "no answer from the shell: {}",
            String::from_utf8_lossy(&text)
        );
        if let Ok(chunk) = output.recv_timeout(Duration::from_millis(100)) {
            text.extend(chunk);
        }
    }

    // kubectl's input ends.
    drop(writer);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kubectl exec -it still runs 20 s after its input ended");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // The shell ended on the hangup: 128 + SIGHUP.
    assert_eq!(status.code(), Some(129), "{stderr}");
    // No shell is left behind in the container.
    let processes = kubectl.ok(&["exec", "shell", "--", "ps", "-o", "args"]);
    assert!(!processes.lines().any(|l| l.trim() == "sh"), "{processes}");
}
