//! Workload controllers and the kubelet's streaming commands with real containers on a real
//! node (tests/common/agent.rs): Jobs, StatefulSets with local-path volumes, DaemonSets,
//! `kubectl attach` and `kubectl port-forward`, judged by what kubectl shows, as upstream.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::agent::{in_netns, Node};
use common::kubectl::Kubectl;
use common::workloads::{
    apply_and_wait_ready, busybox_pod, in_terminal, pod_field, until, wait_ready, Streaming,
};

/// The rows of `kubectl get KIND NAME` (headers left out), split into columns.
fn row(kubectl: &Kubectl<'_>, kind: &str, name: &str) -> Vec<String> {
    kubectl
        .ok(&["get", kind, name, "--no-headers"])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A Job of `completions`/`parallelism` busybox pods running `script`, never restarted in
/// place, failing for good after `backoff_limit` retries.
fn job(name: &str, completions: u32, parallelism: u32, backoff_limit: u32, script: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  backoffLimit: {backoff_limit}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.35
        command: ["sh", "-c", {script:?}]
"#
    )
}

#[tokio::test]
async fn a_job_runs_to_completion_and_a_failing_one_exceeds_its_backoff_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&job("count", 3, 2, 6, "echo counted")),
    );
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&job("doomed", 1, 1, 1, "echo failing; exit 1")),
    );

    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/count",
        "--timeout=120s",
    ]);
    // NAME STATUS COMPLETIONS DURATION AGE
    let columns = row(&kubectl, "job", "count");
    assert_eq!(columns[1], "Complete", "{columns:?}");
    assert_eq!(columns[2], "3/3", "{columns:?}");
    let pods = kubectl.ok(&["get", "pods", "-l", "job-name=count", "--no-headers"]);
    assert_eq!(pods.lines().count(), 3, "{pods}");
    assert!(
        pods.lines()
            .all(|l| l.contains("0/1") && l.contains("Completed")),
        "{pods}"
    );
    assert_eq!(kubectl.ok(&["logs", "job/count"]), "counted\n");
    assert_eq!(
        kubectl.ok(&["get", "job", "count", "-o", "jsonpath={.status.succeeded}"]),
        "3"
    );

    // One try and one retry (after upstream's 10 s back-off), then Failed for good.
    kubectl.ok(&[
        "wait",
        "--for=condition=failed",
        "job/doomed",
        "--timeout=120s",
    ]);
    let reason = kubectl.ok(&[
        "get",
        "job",
        "doomed",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
    ]);
    assert_eq!(reason, "BackoffLimitExceeded");
    let pods = kubectl.ok(&["get", "pods", "-l", "job-name=doomed", "--no-headers"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
    assert!(pods.lines().all(|l| l.contains("Error")), "{pods}");
    assert_eq!(
        kubectl.ok(&["get", "job", "doomed", "-o", "jsonpath={.status.failed}"]),
        "2"
    );
    // The retry waited upstream's first back-off (10 s) after the failure.
    let times = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "job-name=doomed",
        "--sort-by=.metadata.creationTimestamp",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].state.terminated.finishedAt} {.items[1].metadata.creationTimestamp}",
    ]);
    let (failed, retried) = times.split_once(' ').unwrap();
    let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap();
    let delay = at(retried).duration_since(at(failed));
    assert!(
        delay.as_secs() >= 9,
        "retried {delay:?} after the failure: {times}"
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=doomed",
    ]);
    assert!(
        events.contains("BackoffLimitExceeded")
            && events.contains("Job has reached the specified backoff limit"),
        "{events}"
    );
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=count",
    ]);
    assert!(
        events.contains("Completed") && events.contains("Job completed"),
        "{events}"
    );
}

/// A pod of the StatefulSet `web` as the tests follow it.
#[derive(Debug)]
struct WebPod {
    ordinal: usize,
    revision: String,
    ready: bool,
    terminating: bool,
}

/// The pods `app=web` that exist, by ordinal.
fn web_pods(kubectl: &Kubectl<'_>) -> Vec<WebPod> {
    let out = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.metadata.labels.controller-revision-hash} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    let mut pods: Vec<WebPod> = out
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            WebPod {
                ordinal: fields[0]
                    .strip_prefix("web-")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or_else(|| panic!("a pod not of the set: {line}")),
                revision: fields[1].to_string(),
                ready: fields[2] == "True",
                terminating: !fields[3].is_empty(),
            }
        })
        .collect();
    pods.sort_by_key(|p| p.ordinal);
    pods
}

/// Polls the pods of `web` until `done`, checking `invariant` on every look.
async fn follow_web(
    kubectl: &Kubectl<'_>,
    what: &str,
    invariant: impl Fn(&[WebPod]) -> Result<(), String>,
    done: impl Fn(&[WebPod]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = web_pods(kubectl);
        if let Err(broken) = invariant(&pods) {
            panic!("{what}: {broken}: {pods:?}");
        }
        if done(&pods) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {pods:?}\n{}",
            kubectl.ok(&["describe", "pods", "-l", "app=web"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const STATEFUL_SET: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector:
    app: web
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.35
        command: ["sh", "-c", "hostname > /data/hostname; trap 'exit 0' TERM; while true; do sleep 1; done"]
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: ["ReadWriteOnce"]
      resources:
        requests:
          storage: 16Mi
"#;

#[tokio::test]
async fn a_stateful_set_starts_in_order_and_keeps_a_pods_volume() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    // The claims use the default class, k3s's local-path.
    let classes = kubectl.ok(&["get", "storageclass", "--no-headers"]);
    assert!(
        classes.contains("local-path (default)") && classes.contains("rancher.io/local-path"),
        "{classes}"
    );
    kubectl.ok_with(&["apply", "-f", "-"], Some(STATEFUL_SET));

    // OrderedReady: web-N is created only once web-0..web-N-1 are Ready.
    follow_web(
        &kubectl,
        "the set to start in order",
        |pods| {
            for (at, pod) in pods.iter().enumerate() {
                if pod.ordinal != at {
                    return Err(format!("web-{} without web-{at}", pod.ordinal));
                }
                if at > 0 && !pods[at - 1].ready {
                    return Err(format!("web-{at} created before web-{} was Ready", at - 1));
                }
            }
            Ok(())
        },
        |pods| pods.len() == 3 && pods.iter().all(|p| p.ready),
    )
    .await;
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    let pods = kubectl.ok(&["get", "pods", "-l", "app=web", "--no-headers"]);
    assert!(
        pods.lines()
            .all(|l| l.contains("1/1") && l.contains("Running")),
        "{pods}"
    );
    let claims = kubectl.ok(&["get", "pvc", "--no-headers"]);
    for ordinal in 0..3 {
        let claim = claims
            .lines()
            .find(|l| l.starts_with(&format!("data-web-{ordinal} ")))
            .unwrap_or_else(|| panic!("no claim data-web-{ordinal}: {claims}"));
        assert!(
            claim.contains("Bound") && claim.contains("local-path"),
            "{claims}"
        );
    }
    assert_eq!(kubectl.ok(&["exec", "web-1", "--", "hostname"]), "web-1\n");
    assert_eq!(
        kubectl.ok(&["exec", "web-1", "--", "cat", "/data/hostname"]),
        "web-1\n"
    );

    // A replaced pod gets its own claim back, data and all.
    kubectl.ok(&["exec", "web-1", "--", "sh", "-c", "echo kept > /data/note"]);
    let uid = pod_field(&kubectl, "web-1", "{.metadata.uid}");
    kubectl.ok(&["delete", "pod", "web-1", "--timeout=60s"]);
    until(
        &kubectl,
        &["get", "pod", "web-1", "-o", "jsonpath={.metadata.uid}"],
        Duration::from_secs(60),
        "web-1 to be recreated",
        |new| !new.is_empty() && new != uid,
    )
    .await;
    wait_ready(&kubectl, "web-1");
    assert_eq!(
        kubectl.ok(&["exec", "web-1", "--", "cat", "/data/note"]),
        "kept\n"
    );
    assert_eq!(
        pod_field(
            &kubectl,
            "web-1",
            "{.spec.volumes[?(@.name==\"data\")].persistentVolumeClaim.claimName}"
        ),
        "data-web-1"
    );

    // A rolling update goes from the highest ordinal down, one Ready pod at a time.
    let revision = |field: &str| {
        kubectl.ok(&[
            "get",
            "statefulset",
            "web",
            "-o",
            &format!("jsonpath={{.status.{field}}}"),
        ])
    };
    let old = revision("currentRevision");
    kubectl.ok(&["set", "env", "statefulset/web", "STAMP=2"]);
    let new = until(
        &kubectl,
        &[
            "get",
            "statefulset",
            "web",
            "-o",
            "jsonpath={.status.updateRevision}",
        ],
        Duration::from_secs(30),
        "the new revision",
        |r| !r.is_empty() && r != old,
    )
    .await;
    follow_web(
        &kubectl,
        "the rolling update",
        |pods| {
            for pod in pods {
                let touched = pod.terminating || pod.revision == new;
                let above = pods.iter().filter(|p| p.ordinal > pod.ordinal);
                if touched && above.clone().count() != 2 - pod.ordinal {
                    return Err(format!(
                        "web-{} updated with a pod above it missing",
                        pod.ordinal
                    ));
                }
                if touched
                    && !above
                        .clone()
                        .all(|p| p.revision == new && p.ready && !p.terminating)
                {
                    return Err(format!(
                        "web-{} updated before the pods above it were updated and Ready",
                        pod.ordinal
                    ));
                }
            }
            Ok(())
        },
        |pods| {
            pods.len() == 3
                && pods
                    .iter()
                    .all(|p| p.revision == new && p.ready && !p.terminating)
        },
    )
    .await;
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert_eq!(revision("currentRevision"), new);
    assert_eq!(
        kubectl.ok(&[
            "exec",
            "web-1",
            "--",
            "sh",
            "-c",
            "echo $STAMP; cat /data/note"
        ]),
        "2\nkept\n"
    );

    // Scaling down removes the highest ordinal first, each gone before the next goes; the
    // claims stay, and scaling up again brings web-1 back to its data.
    kubectl.ok(&["scale", "statefulset/web", "--replicas=1"]);
    follow_web(
        &kubectl,
        "the scale-down",
        |pods| {
            let has = |o: usize| pods.iter().any(|p| p.ordinal == o);
            let leaving = |o: usize| pods.iter().any(|p| p.ordinal == o && p.terminating);
            if (!has(1) || leaving(1)) && has(2) {
                return Err("web-1 went before web-2 was gone".into());
            }
            Ok(())
        },
        |pods| pods.len() == 1,
    )
    .await;
    let claims = kubectl.ok(&["get", "pvc", "-o", "name"]);
    assert_eq!(
        claims,
        "persistentvolumeclaim/data-web-0\npersistentvolumeclaim/data-web-1\npersistentvolumeclaim/data-web-2\n"
    );
    kubectl.ok(&["scale", "statefulset/web", "--replicas=2"]);
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert_eq!(
        kubectl.ok(&["exec", "web-1", "--", "cat", "/data/note"]),
        "kept\n"
    );
}

const DAEMON_SET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.35
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#;

#[tokio::test]
async fn a_daemon_set_runs_on_the_node_and_rolls_out_a_new_template() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok_with(&["apply", "-f", "-"], Some(DAEMON_SET));
    kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    // NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE-SELECTOR AGE
    let columns = row(&kubectl, "daemonset", "agent");
    assert_eq!(&columns[1..6], ["1", "1", "1", "1", "1"], "{columns:?}");
    let pods = |kubectl: &Kubectl<'_>| {
        kubectl.ok(&[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
    };
    let first = pods(&kubectl);
    assert!(!first.contains(' '), "one pod per node: {first}");
    assert_eq!(pod_field(&kubectl, &first, "{.spec.nodeName}"), node.name());

    kubectl.ok(&["set", "env", "daemonset/agent", "GENERATION=second"]);
    kubectl.ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    let second = until(
        &kubectl,
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        Duration::from_secs(30),
        "the old pod to be gone",
        |names| !names.is_empty() && !names.contains(' ') && names != first,
    )
    .await;
    wait_ready(&kubectl, &second);
    assert_eq!(
        kubectl.ok(&["exec", &second, "--", "sh", "-c", "echo $GENERATION"]),
        "second\n"
    );
    let columns = row(&kubectl, "daemonset", "agent");
    assert_eq!(&columns[1..6], ["1", "1", "1", "1", "1"], "{columns:?}");
}

#[tokio::test]
async fn kubectl_attach_follows_output_and_feeds_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    kubectl.ok_with(
        &["apply", "-f", "-"],
        Some(&busybox_pod(
            "counter",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done",
        )),
    );
    let echo = busybox_pod("echo", "while read l; do echo got:$l; done") + "    stdin: true\n";
    kubectl.ok_with(&["apply", "-f", "-"], Some(&echo));
    wait_ready(&kubectl, "counter");
    wait_ready(&kubectl, "echo");

    // attach shows what the container prints from now on, not its past output.
    until(
        &kubectl,
        &["logs", "counter"],
        Duration::from_secs(30),
        "a few ticks",
        |logs| logs.contains("tick 2\n"),
    )
    .await;
    let mut attached = Streaming::start(&kubectl, &["attach", "pod/counter"]);
    let ticks = |out: &str| {
        out.lines()
            .filter_map(|l| l.strip_prefix("tick ")?.parse::<u32>().ok())
            .collect::<Vec<_>>()
    };
    let out = attached
        .wait_for(Duration::from_secs(20), "two new ticks", |out| {
            ticks(out).len() >= 2
        })
        .await;
    let seen = ticks(&out);
    assert!(seen[0] >= 2 && seen[1] == seen[0] + 1, "{out}");
    drop(attached);

    // -i: lines typed into kubectl reach the container's stdin.
    let mut attached = Streaming::start(&kubectl, &["attach", "-i", "pod/echo"]);
    attached.write("first\n");
    attached
        .wait_for(Duration::from_secs(20), "the first echo", |out| {
            out.contains("got:first")
        })
        .await;
    attached.write("second\n");
    attached
        .wait_for(Duration::from_secs(20), "the second echo", |out| {
            out.contains("got:second")
        })
        .await;
    drop(attached);
    let logs = kubectl.ok(&["logs", "echo"]);
    assert_eq!(logs, "got:first\ngot:second\n");

    // `kubectl run -i --rm` attaches to a new pod (stdinOnce): the end of kubectl's stdin
    // ends the container's, kubectl shows its output and deletes the pod.
    let out = kubectl.ok_with(
        &[
            "run",
            "once",
            "--image=busybox:1.35",
            "--restart=Never",
            "--rm",
            "-i",
            "--",
            "sh",
            "-c",
            "cat; echo end",
        ],
        Some("typed\n"),
    );
    assert!(out.starts_with("typed\nend\n"), "{out}");
    let gone = kubectl.fails(&["get", "pod", "once"], None);
    assert!(gone.contains("NotFound"), "{gone}");

    // -it: a container with a terminal, kubectl on one of the test's (40x100).
    let term = busybox_pod("term", "sh")
        .replace("  containers:", "  restartPolicy: Never\n  containers:")
        + "    stdin: true\n    tty: true\n";
    apply_and_wait_ready(&kubectl, &term, "term");
    let transcript = in_terminal(
        &kubectl,
        &["attach", "-it", "pod/term"],
        "tty; stty size; echo answer-$((6 * 7)); exit 4\n",
        "answer-42",
    );
    assert!(transcript.contains("/dev/pts/"), "{transcript}");
    assert!(transcript.contains("40 100"), "{transcript}");
    until(
        &kubectl,
        &[
            "get",
            "pod",
            "term",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}",
        ],
        Duration::from_secs(30),
        "the shell to exit",
        |code| code == "4",
    )
    .await;
}

/// `GET /` from `127.0.0.1:port` inside the node's host; the whole response.
fn http_response(node: &Node, port: u16) -> String {
    in_netns(node.host.netns(), || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    })
}

/// The body of a `200 OK` to `GET /` from `127.0.0.1:port` inside the node's host.
fn http_get(node: &Node, port: u16) -> String {
    let response = http_response(node, port);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{response}");
    body.to_string()
}

#[tokio::test]
async fn kubectl_port_forward_reaches_a_pods_port() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let pod = busybox_pod(
        "www",
        "mkdir -p /www && echo served by the pod > /www/index.html && exec httpd -f -p 80 -h /www",
    ) + "    ports:\n    - containerPort: 80\n";
    apply_and_wait_ready(&kubectl, &pod, "www");

    // A chosen local port: kubectl listens inside the node's host, where the test connects.
    let mut forward = Streaming::start(&kubectl, &["port-forward", "pod/www", "18080:80"]);
    forward
        .wait_for(Duration::from_secs(20), "kubectl to listen", |out| {
            out.contains("Forwarding from 127.0.0.1:18080 -> 80")
        })
        .await;
    assert_eq!(http_get(&node, 18080), "served by the pod\n");
    // Every connection is its own stream pair.
    assert_eq!(http_get(&node, 18080), "served by the pod\n");
    drop(forward);

    // Nothing listens on 81 in the pod: the connection ends empty, the kubelet says why and
    // kubectl (client-go since 1.29) gives up on the whole forward.
    let mut forward = Streaming::start(&kubectl, &["port-forward", "pod/www", "18081:81"]);
    forward
        .wait_for(Duration::from_secs(20), "kubectl to listen", |out| {
            out.contains("Forwarding from 127.0.0.1:18081 -> 81")
        })
        .await;
    assert_eq!(http_response(&node, 18081), "");
    let out = forward
        .wait_for(Duration::from_secs(20), "the error for port 81", |out| {
            out.contains("lost connection to pod")
        })
        .await;
    assert!(out.contains("error forwarding port 81 to pod"), "{out}");
    drop(forward);

    // A Service: kubectl picks one of its pods and maps the service port to the target port.
    kubectl.ok(&["create", "service", "clusterip", "www", "--tcp=8080:80"]);
    kubectl.ok(&["label", "pod", "www", "app=www"]);
    let mut forward = Streaming::start(&kubectl, &["port-forward", "service/www", "18082:8080"]);
    forward
        .wait_for(Duration::from_secs(20), "kubectl to listen", |out| {
            out.contains("Forwarding from 127.0.0.1:18082 -> 80")
        })
        .await;
    assert_eq!(http_get(&node, 18082), "served by the pod\n");
    drop(forward);

    // `:80`: kubectl picks the local port and says which.
    let mut forward = Streaming::start(&kubectl, &["port-forward", "pod/www", ":80"]);
    let out = forward
        .wait_for(Duration::from_secs(20), "kubectl to listen", |out| {
            out.contains(" -> 80\n")
        })
        .await;
    let port: u16 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Forwarding from 127.0.0.1:")?
                .strip_suffix(" -> 80")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no local port in {out:?}"));
    assert_eq!(http_get(&node, port), "served by the pod\n");
}

#[tokio::test]
async fn kubectl_debug_runs_an_ephemeral_container_in_the_pod() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    let app = busybox_pod(
        "app",
        "echo app-data > /tmp/app.txt; trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    apply_and_wait_ready(&kubectl, &app, "app");

    // -i: kubectl adds the container, waits for it to run and attaches to its stdin (not
    // stdinOnce: kubectl leaving does not end it).
    let mut debug = Streaming::start(
        &kubectl,
        &[
            "debug",
            "app",
            "-i",
            "--image=busybox:1.35",
            "--container=debugger",
            "--",
            "sh",
            "-c",
            "while read l; do echo debug:$l; done",
        ],
    );
    debug.write("one\n");
    debug
        .wait_for(
            Duration::from_secs(30),
            "the debug container's answer",
            |out| out.contains("debug:one"),
        )
        .await;
    drop(debug);
    let status = "{.status.ephemeralContainerStatuses[?(@.name==\"debugger\")]";
    assert!(pod_field(
        &kubectl,
        "app",
        &format!("{status}.state.running.startedAt}}")
    )
    .contains('T'));
    assert_eq!(
        pod_field(&kubectl, "app", &format!("{status}.ready}}")),
        "false"
    );

    // Without -i: it runs to its end, its logs stay, and it is never restarted.
    kubectl.ok(&[
        "debug",
        "app",
        "--image=busybox:1.35",
        "--container=once",
        "--",
        "hostname",
    ]);
    let once = "{.status.ephemeralContainerStatuses[?(@.name==\"once\")]";
    until(
        &kubectl,
        &[
            "get",
            "pod",
            "app",
            "-o",
            &format!("jsonpath={once}.state.terminated.reason}}"),
        ],
        Duration::from_secs(30),
        "the debug container to finish",
        |reason| reason == "Completed",
    )
    .await;
    assert_eq!(kubectl.ok(&["logs", "app", "-c", "once"]), "app\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pod_field(&kubectl, "app", &format!("{once}.restartCount}}")),
        "0"
    );
    // The pod's own container is untouched.
    assert_eq!(
        pod_field(
            &kubectl,
            "app",
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    let table = kubectl.ok(&["get", "pod", "app"]);
    assert!(
        table.contains("1/1") && table.contains("Running"),
        "{table}"
    );
    // Ephemeral containers are only ever added.
    let removed = kubectl.fails(
        &[
            "patch",
            "pod",
            "app",
            "--subresource=ephemeralcontainers",
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/spec/ephemeralContainers/0"}]"#,
        ],
        None,
    );
    assert!(
        removed.contains("existing ephemeral containers \"debugger\" may not be removed"),
        "{removed}"
    );
}

#[tokio::test]
async fn kubectl_debug_node_sees_the_nodes_processes_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let kubectl = node.kubectl();
    // A pod on the node with its host's PID, IPC and network namespaces and its root at
    // /host: the server (this node's agent) is one of the processes it sees.
    let server = node.server.pid().unwrap();
    let marker = dir.path().join("marker.txt");
    std::fs::write(&marker, "on the node\n").unwrap();
    let script = format!(
        "cat /proc/{server}/comm; cat /host{}; ip -o addr show lo",
        marker.display()
    );
    let node_ref = format!("node/{}", node.name());
    let out = kubectl.ok(&[
        "debug",
        &node_ref,
        "--image=busybox:1.35",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let pod = out
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-"))
        .unwrap_or_else(|| panic!("no pod named in {out:?}"))
        .to_string();
    until(
        &kubectl,
        &["get", "pod", &pod, "-o", "jsonpath={.status.phase}"],
        Duration::from_secs(60),
        "the node debugger to finish",
        |phase| phase == "Succeeded",
    )
    .await;
    let logs = kubectl.ok(&["logs", &pod]);
    assert!(logs.starts_with("kedge\non the node\n"), "{logs}");
    assert!(logs.contains(&node.host.ip().to_string()), "{logs}");
}
