//! `kubectl get` output against a real `kedge server`: the server-side tables carry the
//! columns and cells upstream kube-apiserver prints, and kubectl shows them unchanged.
//!
//! Objects are created with kubectl 1.31 (JSON bodies) and their status set through the
//! status subresource, since no controller or kubelet runs in these tests.

mod common;

use common::kubectl::{Kubectl, KUBECTL_JSON};
use std::time::Duration;

use common::{free_port, Server};

/// An RFC 3339 timestamp `seconds` ago. Tests pick ages printed in whole minutes (10m to
/// 3h), which stay the same for a minute whatever the test takes.
fn ago(seconds: i64) -> String {
    let then = time::OffsetDateTime::now_utc() - time::Duration::seconds(seconds);
    then.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn objects() -> String {
    let event = format!(
        r#"
---
apiVersion: v1
kind: Event
metadata: {{name: web-0.1, namespace: default}}
type: Warning
reason: BackOff
message: Back-off restarting failed container
involvedObject: {{kind: Pod, name: web-0, namespace: default, fieldPath: "spec.containers{{log}}"}}
source: {{component: kubelet, host: n1}}
firstTimestamp: "{first}"
lastTimestamp: "{last}"
count: 4
"#,
        first = ago(1800),
        last = ago(1200),
    );
    r#"
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec:
  nodeName: n1
  restartPolicy: Always
  containers:
  - {name: web, image: nginx:1.27}
  - {name: log, image: busybox}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: busybox}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: nginx:1.27}
      - {name: log, image: busybox}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: ClusterIP
  clusterIP: 10.43.0.20
  clusterIPs: [10.43.0.20]
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
---
apiVersion: v1
kind: Node
metadata:
  name: n1
  labels: {node-role.kubernetes.io/control-plane: ""}
spec: {}
---
apiVersion: batch/v1
kind: Job
metadata: {name: migrate, namespace: default}
spec:
  completions: 3
  parallelism: 1
  manualSelector: true
  selector: {matchLabels: {job: migrate}}
  template:
    metadata: {labels: {job: migrate}}
    spec:
      restartPolicy: Never
      containers:
      - {name: migrate, image: busybox}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: default}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get]}
"#
    .to_string()
        + &event
}

/// Status patches: (kind/name, merge patch of the status).
fn statuses() -> Vec<(&'static str, String)> {
    let web = format!(
        r#"{{"status": {{"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{{"ip": "10.42.0.7"}}],
            "conditions": [{{"type": "Ready", "status": "False"}}],
            "containerStatuses": [
              {{"name": "web", "image": "nginx:1.27", "imageID": "", "ready": true, "restartCount": 0,
                "state": {{"running": {{"startedAt": "{started}"}}}}}},
              {{"name": "log", "image": "busybox", "imageID": "", "ready": false, "restartCount": 3,
                "state": {{"waiting": {{"reason": "CrashLoopBackOff"}}}},
                "lastState": {{"terminated": {{"exitCode": 1, "reason": "Error", "finishedAt": "{finished}"}}}}}}]}}}}"#,
        started = ago(900),
        finished = ago(1200),
    );
    let done = r#"{"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}"#
        .to_string();
    let deployment =
        r#"{"status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}"#
            .to_string();
    let node = r#"{"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ok"}],
        "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "n1"}],
        "nodeInfo": {"kubeletVersion": "v1.33.0", "kubeProxyVersion": "", "osImage": "Debian GNU/Linux 12 (bookworm)",
          "kernelVersion": "6.1.0-18-amd64", "containerRuntimeVersion": "containerd://1.7.13",
          "architecture": "amd64", "operatingSystem": "linux", "bootID": "b", "machineID": "m", "systemUUID": "s"}}}"#
        .to_string();
    let job = format!(
        r#"{{"status": {{"succeeded": 3, "startTime": "{start}", "completionTime": "{end}",
            "conditions": [{{"type": "Complete", "status": "True"}}]}}}}"#,
        start = ago(600),
        end = ago(540),
    );
    vec![
        ("pod/web-0", web),
        ("pod/done", done),
        ("deployment/web", deployment),
        ("node/n1", node),
        ("job/migrate", job),
    ]
}

/// Whether a printed line matches the expected one, word by word; `AGE` stands for an
/// age in seconds (the objects were created moments ago), `TIME` for a timestamp.
fn matches(line: &str, expected: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let wanted: Vec<&str> = expected.split_whitespace().collect();
    words.len() == wanted.len()
        && words.iter().zip(&wanted).all(|(word, want)| {
            word == want
                || (*want == "TIME"
                    && time::OffsetDateTime::parse(
                        word,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .is_ok())
                || (*want == "AGE"
                    && word
                        .strip_suffix('s')
                        .is_some_and(|n| n.parse::<u32>().is_ok()))
        })
}

fn assert_prints(output: &str, expected: &[&str]) {
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), expected.len(), "output:\n{output}");
    for (line, want) in lines.iter().zip(expected) {
        assert!(
            matches(line, want),
            "line {line:?} is not {want:?}; output:\n{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_prints_upstream_tables() {
    let dir = tempfile::tempdir().unwrap();
    // The objects and their statuses are written by hand: no controller or scheduler may
    // act on them.
    let mut server = Server::new(
        dir.path(),
        free_port(),
        &[
            "--disable-controller-manager".into(),
            "--disable-scheduler".into(),
        ],
    );
    server.start();
    server.wait_ready(Duration::from_secs(30)).await;
    let create = Kubectl {
        kubeconfig: &server.kubeconfig,
        binary: KUBECTL_JSON,
        netns: None,
    };
    create.ok_with(&["create", "-f", "-"], Some(&objects()));
    for (object, status) in statuses() {
        let namespace = if object.starts_with("node/") {
            vec![]
        } else {
            vec!["-n", "default"]
        };
        let mut args = vec![
            "patch",
            object,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ];
        args.extend(namespace);
        create.ok(&args);
    }

    let kubectl = server.kubectl();
    assert_prints(
        &kubectl.ok(&["get", "pods", "-n", "default"]),
        &[
            "NAME READY STATUS RESTARTS AGE",
            "done 0/1 Completed 0 AGE",
            "web-0 1/2 CrashLoopBackOff 3 (20m ago) AGE",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "pods", "-n", "default", "-o", "wide"]),
        &[
            "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES",
            "done 0/1 Completed 0 AGE <none> <none> <none> <none>",
            "web-0 1/2 CrashLoopBackOff 3 (20m ago) AGE 10.42.0.7 n1 <none> <none>",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "deploy", "-n", "default"]),
        &["NAME READY UP-TO-DATE AVAILABLE AGE", "web 2/3 3 2 AGE"],
    );
    assert_prints(
        &kubectl.ok(&["get", "deploy", "-n", "default", "-o", "wide"]),
        &[
            "NAME READY UP-TO-DATE AVAILABLE AGE CONTAINERS IMAGES SELECTOR",
            "web 2/3 3 2 AGE web,log nginx:1.27,busybox app=web",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "svc", "web", "-n", "default", "-o", "wide"]),
        &[
            "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE SELECTOR",
            "web ClusterIP 10.43.0.20 <none> 80/TCP,53/UDP AGE app=web",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "nodes", "-o", "wide"]),
        &[
            "NAME STATUS ROLES AGE VERSION INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME",
            "n1 Ready control-plane AGE v1.33.0 192.168.1.10 <none> Debian GNU/Linux 12 (bookworm) 6.1.0-18-amd64 containerd://1.7.13",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "jobs", "-n", "default"]),
        &[
            "NAME STATUS COMPLETIONS DURATION AGE",
            "migrate Complete 3/3 60s AGE",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "jobs", "-n", "default", "-o", "wide"]),
        &[
            "NAME STATUS COMPLETIONS DURATION AGE CONTAINERS IMAGES SELECTOR",
            "migrate Complete 3/3 60s AGE migrate busybox job=migrate",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "events", "-n", "default"]),
        &[
            "LAST SEEN TYPE REASON OBJECT MESSAGE",
            "20m Warning BackOff pod/web-0 Back-off restarting failed container",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "events", "-n", "default", "-o", "wide"]),
        &[
            "LAST SEEN TYPE REASON OBJECT SUBOBJECT SOURCE MESSAGE FIRST SEEN COUNT NAME",
            "20m Warning BackOff pod/web-0 spec.containers{log} kubelet, n1 Back-off restarting failed container 30m 4 web-0.1",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "storageclasses"]),
        &[
            "NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE",
            "local (default) rancher.io/local-path Delete WaitForFirstConsumer false AGE",
        ],
    );
    assert_prints(
        &kubectl.ok(&["get", "roles", "-n", "default"]),
        &["NAME CREATED AT", "reader TIME"],
    );
}
