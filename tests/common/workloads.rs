//! Helpers of the end-to-end tests that run workloads on a real node (`agent::Node`): a
//! busybox pod manifest, polling kubectl until what a user waits for shows, and reading pod
//! fields as kubectl prints them, following a long-running kubectl's output, and
//! kubectl on a terminal.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kubectl::Kubectl;

/// Polls `kubectl args` until `done(stdout)` holds; returns that stdout.
pub async fn until(
    kubectl: &Kubectl<'_>,
    args: &[&str],
    timeout: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let out = kubectl.run(args, None);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&stdout) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last `kubectl {}`:\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `kubectl get pod NAME -o jsonpath=EXPR`.
pub fn pod_field(kubectl: &Kubectl<'_>, pod: &str, expr: &str) -> String {
    kubectl.ok(&["get", "pod", pod, "-o", &format!("jsonpath={expr}")])
}

/// Waits until pod `name` is Ready (through `kubectl wait`, as a user would).
pub fn wait_ready(kubectl: &Kubectl<'_>, name: &str) {
    wait_all_ready(kubectl, &[&format!("pod/{name}")], "90s");
}

/// Waits until every one of `pods` (`pod/NAME`) is Ready, for at most `timeout` (`90s`);
/// panics with `kubectl describe` of them if not.
pub fn wait_all_ready(kubectl: &Kubectl<'_>, pods: &[&str], timeout: &str) {
    let timeout = format!("--timeout={timeout}");
    let mut args = vec!["wait", "--for=condition=Ready", timeout.as_str()];
    args.extend_from_slice(pods);
    let out = kubectl.run(&args, None);
    if !out.status.success() {
        let mut describe = vec!["describe"];
        describe.extend_from_slice(pods);
        let described = kubectl.run(&describe, None);
        panic!(
            "{} not Ready: {}\n{}",
            pods.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&described.stdout)
        );
    }
}

/// Polls `check` (Ok when done, Err with what it saw) until it passes; after `timeout`,
/// panics with `what` and its last answer.
pub async fn until_ok(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last seen:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `kubectl apply` of `manifest`, then [`wait_ready`] for pod `name`.
pub fn apply_and_wait_ready(kubectl: &Kubectl<'_>, manifest: &str, name: &str) {
    kubectl.ok_with(&["apply", "-f", "-"], Some(manifest));
    wait_ready(kubectl, name);
}

/// A Deployment `name` of `replicas` busybox httpd pods (label `app: <name>`) answering on
/// 8080 with their own name, ready once the port listens.
pub fn web_deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: busybox:1.35
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
"#
    )
}

/// A pod of the busybox test image running `script` with `sh -c`.
pub fn busybox_pod(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: busybox:1.35
    command: ["sh", "-c", {script:?}]
"#
    )
}

/// restartCount of a pod's first container, 0 if not reported yet.
pub fn restarts(kubectl: &Kubectl<'_>, pod: &str) -> u32 {
    pod_field(kubectl, pod, "{.status.containerStatuses[0].restartCount}")
        .parse()
        .unwrap_or(0)
}

/// A long-running kubectl (`attach`, `port-forward`, `logs -f`) whose output the test reads
/// as it comes; killed on drop.
pub struct Streaming {
    child: Child,
    /// stdout and stderr as read so far.
    output: Arc<Mutex<String>>,
}

impl Streaming {
    /// Starts `kubectl args`, its stdin a pipe (see [`Streaming::write`]).
    pub fn start(kubectl: &Kubectl<'_>, args: &[&str]) -> Streaming {
        let mut child = kubectl
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let output = Arc::new(Mutex::new(String::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for mut stream in [stdout, stderr] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            });
        }
        Streaming { child, output }
    }

    /// Writes `text` to kubectl's stdin (kept open).
    pub fn write(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin is a pipe");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Everything kubectl printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until kubectl's output satisfies `done`; returns it. Fails the test, with the
    /// output, on timeout or if kubectl exits first.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if done(&output) {
                return output;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers drain what is left before judging.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let output = self.output();
                assert!(
                    done(&output),
                    "kubectl exited ({status}) before {what}:\n{output}"
                );
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; kubectl printed:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `kubectl args` with a new pseudo-terminal (40 rows, 100 columns) as its controlling
/// terminal, types `input`, and returns everything it printed once `expect` has appeared and
/// kubectl has exited.
pub fn in_terminal(kubectl: &Kubectl<'_>, args: &[&str], input: &str, expect: &str) -> String {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("a pseudo-terminal");
    let (master, slave): (OwnedFd, OwnedFd) = (pty.master, pty.slave);
    let mut command = kubectl.command(args);
    command
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; fd 0 is the pty's slave end.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("kubectl runs");
    drop(command);
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    let mut reader = std::fs::File::from(master);
    let (sender, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // EIO once every slave end is closed (kubectl exited).
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 || sender.send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Let the remote shell start before typing, as a person would.
    std::thread::sleep(Duration::from_secs(2));
    writer.write_all(input.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = Vec::new();
    loop {
        if let Ok(chunk) = output.recv_timeout(Duration::from_millis(100)) {
            text.extend(chunk);
        }
        let exited = child.try_wait().unwrap().is_some();
        if exited && String::from_utf8_lossy(&text).contains(expect) {
            while let Ok(chunk) = output.recv_timeout(Duration::from_millis(200)) {
                text.extend(chunk);
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "kubectl {args:?} on a terminal: no {expect:?} (or no exit) in 30 s:\n{}",
                String::from_utf8_lossy(&text)
            );
        }
    }
    drop(writer);
    String::from_utf8_lossy(&text).into_owned()
}

/// `kubectl get service NAME`'s ClusterIP.
pub fn cluster_ip(kubectl: &Kubectl<'_>, service: &str) -> String {
    kubectl.ok(&[
        "get",
        "service",
        service,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

/// The names of the pods with labels `selector` (terminating ones included).
pub fn labelled(kubectl: &Kubectl<'_>, selector: &str) -> BTreeSet<String> {
    kubectl
        .ok(&[
            "get",
            "pods",
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Waits until the pods with labels `selector` are exactly `count` (the terminating ones
/// gone); their names.
pub async fn settled(kubectl: &Kubectl<'_>, selector: &str, count: usize) -> BTreeSet<String> {
    until_ok(
        Duration::from_secs(60),
        &format!("{count} pods {selector}"),
        || {
            let pods = labelled(kubectl, selector);
            if pods.len() == count {
                Ok(())
            } else {
                Err(format!("{pods:?}"))
            }
        },
    )
    .await;
    let pods = labelled(kubectl, selector);
    let names: Vec<String> = pods.iter().map(|p| format!("pod/{p}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if !names.is_empty() {
        wait_all_ready(kubectl, &names, "90s");
    }
    pods
}

/// The pod IPs of the pods now of the namespace, sorted.
pub fn pod_ips(kubectl: &Kubectl<'_>) -> Vec<Ipv4Addr> {
    let ips = kubectl.ok(&["get", "pods", "-o", "jsonpath={.items[*].status.podIP}"]);
    let mut ips: Vec<Ipv4Addr> = ips
        .split_whitespace()
        .map(|ip| ip.parse().unwrap())
        .collect();
    ips.sort();
    ips
}
