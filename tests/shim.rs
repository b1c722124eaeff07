//! The container shim with real containers: a busybox rootfs, `kedge shim` started through
//! the agent's client, libcontainer underneath. Needs root (skipped with a note otherwise)
//! and Debian's busybox-static at /bin/busybox.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kedge::runtime::shim::{
    self, ContainerStatus, ExecRequest, ExitReason, ShimError, ShimOptions,
};
use kedge::runtime::spec::{ContainerConfig, Security, DEFAULT_CAPABILITIES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "ls", "dd", "tail", "true", "false", "env", "id", "tty", "stty",
];

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root to run containers");
    false
}

/// `<tmp>/agent/containers/<id>` with a busybox rootfs; the tempdir lives as long as the test,
/// the container's cgroup ([`cgroup_path`]) and its parent too.
struct Fixture {
    _tmp: tempfile::TempDir,
    agent: PathBuf,
    id: String,
}

/// The cgroup of test container `id`, under a parent of its own (tests run in parallel, so
/// a shared parent could not be removed by each).
fn cgroup_path(id: &str) -> String {
    format!("kedge-test-{id}/{id}")
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let path = cgroup_path(&self.id);
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        common::agent::remove_empty_cgroups(&[&path, parent]);
    }
}

impl Fixture {
    fn new() -> Fixture {
        shim::set_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kedge")));
        let tmp = tempfile::tempdir().unwrap();
        let agent = tmp.path().join("agent");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let rootfs = agent.join("containers").join(&id).join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        for d in ["etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
        Fixture {
            _tmp: tmp,
            agent,
            id,
        }
    }

    fn dir(&self) -> PathBuf {
        self.agent.join("containers").join(&self.id)
    }

    fn log_path(&self) -> PathBuf {
        self.agent.join("logs/default_pod_uid/c/0.log")
    }

    fn config(&self, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            id: self.id.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            hostname: "shim-test".into(),
            rootfs: self.dir().join("rootfs"),
            cgroups_path: cgroup_path(&self.id),
            security: Security {
                capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
                no_new_privileges: true,
                seccomp_runtime_default: true,
                masked_paths_default: true,
                ..Security::default()
            },
            ..ContainerConfig::default()
        }
    }

    fn options(&self) -> ShimOptions {
        ShimOptions {
            log_path: self.log_path(),
            log_max_bytes: 10 << 20,
            log_max_files: 3,
        }
    }

    /// Starts the container; on failure the panic shows the shim's own log.
    async fn start(&self, config: &ContainerConfig) {
        if let Err(e) = shim::start(&self.dir(), config, &self.options()).await {
            let log = std::fs::read_to_string(self.dir().join("shim.log")).unwrap_or_default();
            panic!("start failed: {e}\nshim.log:\n{log}");
        }
    }

    async fn run(&self, config: &ContainerConfig) -> ContainerStatus {
        self.start(config).await;
        let status = tokio::time::timeout(Duration::from_secs(60), shim::wait(&self.dir()))
            .await
            .expect("container did not end within 60s")
            .unwrap();
        shim::remove(&self.dir()).await.unwrap();
        assert!(!self.dir().exists(), "remove leaves the container dir");
        assert!(
            !self.agent.join("libcontainer").join(&self.id).exists(),
            "libcontainer state left behind"
        );
        status
    }

    /// The log as (stream, tag, text) entries.
    fn log(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let _time = p.next();
                (
                    p.next().unwrap_or("").to_string(),
                    p.next().unwrap_or("").to_string(),
                    p.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

fn exit_of(status: &ContainerStatus) -> (i32, Option<i32>, ExitReason) {
    match status {
        ContainerStatus::Exited {
            exit_code,
            signal,
            reason,
            started_at,
            finished_at,
        } => {
            assert!(finished_at >= started_at);
            (*exit_code, *signal, *reason)
        }
        other => panic!("expected an exit, got {other:?}"),
    }
}

#[tokio::test]
async fn output_goes_to_the_cri_log_and_exit_0_is_completed() {
    if !root_or_skip("output_goes_to_the_cri_log") {
        return;
    }
    let f = Fixture::new();
    let status = f
        .run(&f.config(&[
            "sh",
            "-c",
            "echo hello out; echo hello err >&2; printf tail",
        ]))
        .await;
    assert_eq!(exit_of(&status), (0, None, ExitReason::Completed));
    let log = f.log();
    assert!(
        log.contains(&("stdout".into(), "F".into(), "hello out".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("stderr".into(), "F".into(), "hello err".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("stdout".into(), "F".into(), "tail".into())),
        "{log:?}"
    );
    let line = std::fs::read_to_string(f.log_path()).unwrap();
    let stamp = line.split(' ').next().unwrap();
    assert!(stamp.ends_with('Z') && stamp.len() >= 20, "{stamp}");
}

#[tokio::test]
async fn exit_3_is_error_3() {
    if !root_or_skip("exit_3_is_error_3") {
        return;
    }
    let f = Fixture::new();
    let status = f.run(&f.config(&["sh", "-c", "exit 3"])).await;
    assert_eq!(exit_of(&status), (3, None, ExitReason::Error));
}

#[tokio::test]
async fn kill_ends_the_container_with_the_signal() {
    if !root_or_skip("kill_ends_the_container") {
        return;
    }
    let f = Fixture::new();
    f.start(&f.config(&["sleep", "1000"])).await;
    assert!(matches!(
        shim::status(&f.dir()),
        ContainerStatus::Running { pid, .. } if pid > 0
    ));
    // A pid namespace's init only gets signals it handles; SIGKILL always lands.
    shim::kill(&f.dir(), libc::SIGKILL).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit_of(&status), (137, Some(9), ExitReason::Error));
    // Killing an ended container is not an error.
    shim::kill(&f.dir(), libc::SIGKILL).await.unwrap();
    shim::remove(&f.dir()).await.unwrap();
}

#[tokio::test]
async fn sigterm_reaches_a_handler_in_the_container() {
    if !root_or_skip("sigterm_reaches_a_handler") {
        return;
    }
    let f = Fixture::new();
    let script = "trap 'echo got term; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    f.start(&f.config(&["sh", "-c", script])).await;
    // The trap is set once "ready" is logged.
    for _ in 0..100 {
        if f.log().iter().any(|e| e.2 == "ready") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shim::kill(&f.dir(), libc::SIGTERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit_of(&status), (7, None, ExitReason::Error));
    assert!(f.log().iter().any(|e| e.2 == "got term"), "{:?}", f.log());
    shim::remove(&f.dir()).await.unwrap();
}

#[tokio::test]
async fn a_memory_hog_is_oom_killed() {
    if !root_or_skip("a_memory_hog_is_oom_killed") {
        return;
    }
    let f = Fixture::new();
    let mut config = f.config(&[
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done",
    ]);
    config.resources.memory_limit = Some(16 << 20);
    let status = f.run(&config).await;
    let (code, signal, reason) = exit_of(&status);
    assert_eq!(
        reason,
        ExitReason::OOMKilled,
        "exit {code} signal {signal:?}"
    );
    assert_eq!((code, signal), (137, Some(9)));
}

#[tokio::test]
async fn a_start_error_carries_the_runtime_message() {
    if !root_or_skip("a_start_error_carries_the_runtime_message") {
        return;
    }
    let f = Fixture::new();
    let err = shim::start(&f.dir(), &f.config(&["/no/such/binary"]), &f.options())
        .await
        .unwrap_err();
    match &err {
        ShimError::Start(message) => {
            assert!(message.contains("/no/such/binary"), "{message}")
        }
        other => panic!("expected a start error, got {other:?}"),
    }
    // The shim reports the error before it has finished cleaning up and exiting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shim::status(&f.dir()) != ContainerStatus::Unknown && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shim::status(&f.dir()), ContainerStatus::Unknown);
    assert!(
        !f.agent.join("libcontainer").join(&f.id).exists(),
        "a failed start leaves libcontainer state"
    );
}

/// Not a test on its own: the "agent" process of `the_container_outlives_the_agent`, run
/// as a child of the test process (it starts a container, then waits to be killed).
#[tokio::test]
async fn helper_agent_process() {
    let Ok(dir) = std::env::var("KEDGE_SHIM_TEST_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    shim::set_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kedge")));
    let config: ContainerConfig = {
        let id = dir.file_name().unwrap().to_str().unwrap().to_string();
        ContainerConfig {
            id: id.clone(),
            args: vec!["sleep".into(), "1000".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            rootfs: dir.join("rootfs"),
            cgroups_path: cgroup_path(&id),
            ..ContainerConfig::default()
        }
    };
    let options = ShimOptions {
        log_path: PathBuf::from(std::env::var("KEDGE_SHIM_TEST_LOG").unwrap()),
        log_max_bytes: 1 << 20,
        log_max_files: 2,
    };
    shim::start(&dir, &config, &options).await.unwrap();
    std::fs::write(dir.join("agent-started"), b"").unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test]
async fn the_container_outlives_the_agent() {
    if !root_or_skip("the_container_outlives_the_agent") {
        return;
    }
    let f = Fixture::new();
    let mut agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_agent_process", "--nocapture"])
        .env("KEDGE_SHIM_TEST_DIR", f.dir())
        .env("KEDGE_SHIM_TEST_LOG", f.log_path())
        .spawn()
        .unwrap();
    let started = f.dir().join("agent-started");
    for _ in 0..600 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.exists(),
        "the helper agent did not start the container"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ContainerStatus::Running { pid, .. } = shim::status(&f.dir()) else {
        panic!(
            "not running after the agent died: {:?}",
            shim::status(&f.dir())
        );
    };
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // A new "agent" (this process) takes over: signal, wait, remove.
    shim::kill(&f.dir(), libc::SIGKILL).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit_of(&status).1, Some(9));
    shim::remove(&f.dir()).await.unwrap();
}

/// A test leaves no cgroup behind: the container's goes with it, and the parent the
/// runtime made for it (in every v1 controller, or v2) goes with the fixture.
#[tokio::test]
async fn no_cgroup_is_left_behind() {
    if !root_or_skip("no_cgroup_is_left_behind") {
        return;
    }
    let f = Fixture::new();
    let parent = format!("kedge-test-{}", f.id);
    f.start(&f.config(&["sleep", "3600"])).await;
    let created: Vec<PathBuf> = common::agent::cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(&parent))
        .filter(|dir| dir.is_dir())
        .collect();
    assert!(!created.is_empty(), "no cgroup {parent} was made");
    stop(&f).await;
    drop(f);
    let left: Vec<&PathBuf> = created.iter().filter(|dir| dir.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Stops and removes a container a test left running.
async fn stop(f: &Fixture) {
    shim::kill(&f.dir(), libc::SIGKILL).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    shim::remove(&f.dir()).await.unwrap();
}

/// Reads `reader` until the text read so far contains `needle`; returns that text.
async fn read_until(reader: &mut (impl tokio::io::AsyncRead + Unpin), needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return true;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(
        matches!(found, Ok(true)),
        "{needle:?} not seen; got {text:?}"
    );
    text
}

#[tokio::test]
async fn exec_runs_commands_in_the_container() {
    if !root_or_skip("exec_runs_commands_in_the_container") {
        return;
    }
    let f = Fixture::new();
    let mut config = f.config(&["sleep", "1000"]);
    config.env.push("FROM_CONTAINER=yes".into());
    config.cwd = "/tmp".into();
    f.start(&config).await;
    let dir = f.dir();
    let run = |args: &[&str]| {
        let args = args.iter().map(|a| a.to_string()).collect();
        let dir = dir.clone();
        async move { shim::exec_output(&dir, args, Duration::from_secs(20)).await }
    };
    assert_eq!(run(&["echo", "hi"]).await.unwrap(), (0, b"hi\n".to_vec()));
    assert_eq!(run(&["sh", "-c", "exit 7"]).await.unwrap().0, 7);
    // The container's environment, working directory and hostname.
    let (code, out) = run(&["sh", "-c", "echo $FROM_CONTAINER $(pwd)"])
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("yes /tmp"), "{out}");
    // Stderr is part of a probe's output.
    let (_, out) = run(&["sh", "-c", "echo oops >&2"]).await.unwrap();
    assert_eq!(out, b"oops\n");
    match run(&["/no/such/binary"]).await {
        Err(ShimError::Start(message)) => assert!(message.contains("/no/such/binary"), "{message}"),
        other => panic!("expected a start error, got {other:?}"),
    }
    // A timed-out exec is killed.
    let err = shim::exec_output(
        &f.dir(),
        vec!["sleep".into(), "30".into()],
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ShimError::Timeout { .. }), "{err}");
    stop(&f).await;
}

#[tokio::test]
async fn exec_stdin_round_trips_5_mib_byte_exact() {
    if !root_or_skip("exec_stdin_round_trips") {
        return;
    }
    let f = Fixture::new();
    f.start(&f.config(&["sleep", "1000"])).await;
    let mut process = shim::exec(
        &f.dir(),
        ExecRequest {
            args: vec!["cat".into()],
            stdin: true,
            ..ExecRequest::default()
        },
    )
    .await
    .unwrap();
    // Every byte value, in a pattern that does not repeat with any small period.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..5 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut stdin = process.stdin.take().unwrap();
    let mut stdout = std::mem::replace(&mut process.stdout, Box::new(tokio::io::empty()));
    let input = data.clone();
    let writer = tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        stdin.shutdown().await.unwrap();
        // Dropping it closes the pipe: EOF for cat.
    });
    let mut output = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_to_end(&mut output))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(output.len(), data.len());
    assert!(output == data, "the bytes differ");
    assert_eq!(process.wait().await.unwrap(), 0);
    stop(&f).await;
}

#[tokio::test]
async fn exec_with_a_tty_prints_its_pts_and_resizes() {
    if !root_or_skip("exec_with_a_tty") {
        return;
    }
    let f = Fixture::new();
    f.start(&f.config(&["sleep", "1000"])).await;
    let mut process = shim::exec(
        &f.dir(),
        ExecRequest {
            args: vec![
                "sh".into(),
                "-c".into(),
                "tty; read x; stty size; read x; stty size".into(),
            ],
            tty: true,
            stdin: true,
            ..ExecRequest::default()
        },
    )
    .await
    .unwrap();
    assert!(process.stderr.is_none());
    let mut stdin = process.stdin.take().unwrap();
    let mut stdout = std::mem::replace(&mut process.stdout, Box::new(tokio::io::empty()));
    read_until(&mut stdout, "/dev/pts/").await;
    process.resize(100, 40).unwrap();
    stdin.write_all(b"\r").await.unwrap();
    read_until(&mut stdout, "40 100").await;
    process.resize(132, 50).unwrap();
    stdin.write_all(b"\r").await.unwrap();
    read_until(&mut stdout, "50 132").await;
    drop(stdin);
    drop(stdout);
    assert_eq!(process.wait().await.unwrap(), 0);
    stop(&f).await;
}

#[tokio::test]
async fn attach_forwards_stdin_and_sees_the_answers() {
    if !root_or_skip("attach_forwards_stdin") {
        return;
    }
    let f = Fixture::new();
    let mut config = f.config(&["sh", "-c", "while read l; do echo got $l; done"]);
    config.stdin = true;
    f.start(&config).await;
    let mut streams = shim::attach(&f.dir()).await.unwrap();
    assert!(!streams.tty);
    let mut stdin = streams.stdin.take().unwrap();
    stdin.write_all(b"hello\n").await.unwrap();
    read_until(&mut streams.stdout, "got hello").await;
    stdin.write_all(b"again\n").await.unwrap();
    read_until(&mut streams.stdout, "got again").await;
    assert!(f.log().iter().any(|e| e.2 == "got hello"), "{:?}", f.log());
    stop(&f).await;
}

#[tokio::test]
async fn attach_with_stdin_once_ends_the_input_on_detach() {
    if !root_or_skip("attach_with_stdin_once") {
        return;
    }
    let f = Fixture::new();
    let mut config = f.config(&["sh", "-c", "cat; echo input ended"]);
    config.stdin = true;
    config.stdin_once = true;
    f.start(&config).await;
    let mut streams = shim::attach(&f.dir()).await.unwrap();
    let mut stdin = streams.stdin.take().unwrap();
    stdin.write_all(b"one line\n").await.unwrap();
    read_until(&mut streams.stdout, "one line").await;
    drop(stdin);
    drop(streams);
    let status = tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit_of(&status).0, 0);
    assert!(
        f.log().iter().any(|e| e.2 == "input ended"),
        "{:?}",
        f.log()
    );
    shim::remove(&f.dir()).await.unwrap();
}

#[tokio::test]
async fn attach_sees_live_output() {
    if !root_or_skip("attach_sees_live_output") {
        return;
    }
    let f = Fixture::new();
    let script = "i=0; while true; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.1; done";
    f.start(&f.config(&["sh", "-c", script])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut streams = shim::attach(&f.dir()).await.unwrap();
    assert!(streams.stdin.is_none());
    let text = read_until(&mut streams.stdout, "\n").await;
    // Output from now on, not a replay from the start.
    assert!(!text.contains("tick 0\n"), "{text}");
    let mut stderr = streams.stderr.take().unwrap();
    read_until(&mut stderr, "tock").await;
    let before = read_until(&mut streams.stdout, "tick").await;
    assert!(before.contains("tick"), "{before}");
    stop(&f).await;
    // The shim closes attached connections when the container ends.
    let mut rest = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        streams.stdout.read_to_end(&mut rest),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test]
async fn a_tty_container_logs_its_terminal_and_resizes() {
    if !root_or_skip("a_tty_container") {
        return;
    }
    let f = Fixture::new();
    let mut config = f.config(&["sh", "-c", "tty; read x; stty size; read x"]);
    config.tty = true;
    config.stdin = true;
    f.start(&config).await;
    let mut streams = shim::attach(&f.dir()).await.unwrap();
    assert!(streams.tty);
    assert!(streams.stderr.is_none());
    shim::resize(&f.dir(), 90, 30).await.unwrap();
    let mut stdin = streams.stdin.take().unwrap();
    stdin.write_all(b"\r").await.unwrap();
    read_until(&mut streams.stdout, "30 90").await;
    stdin.write_all(b"\r").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), shim::wait(&f.dir()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit_of(&status).0, 0);
    let log = f.log();
    assert!(
        log.iter()
            .any(|e| e.0 == "stdout" && e.2.starts_with("/dev/")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|e| e.2.trim_end_matches('\r') == "30 90"),
        "{log:?}"
    );
    shim::remove(&f.dir()).await.unwrap();
}
