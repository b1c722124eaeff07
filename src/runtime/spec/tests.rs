use super::*;

fn config() -> ContainerConfig {
    ContainerConfig {
        id: "0123456789abcdef0123456789abcdef".into(),
        args: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec!["A=1".into()],
        cwd: "/work".into(),
        user: User {
            uid: 1000,
            gid: 2000,
            additional_gids: vec![3000],
        },
        hostname: "pod-a".into(),
        rootfs: "/var/lib/kedge/agent/containers/x/rootfs".into(),
        mounts: vec![
            Mount {
                destination: "/data".into(),
                source: "/srv/data".into(),
                kind: MountKind::Bind,
                readonly: true,
            },
            Mount {
                destination: "/dev/shm".into(),
                source: "/pods/shm".into(),
                kind: MountKind::Bind,
                readonly: false,
            },
            Mount {
                destination: "/scratch".into(),
                source: PathBuf::new(),
                kind: MountKind::Tmpfs {
                    size: Some(1 << 20),
                },
                readonly: false,
            },
        ],
        netns: Some("/run/netns/pod".into()),
        pid_ns: None,
        ipc_ns: None,
        cgroups_path: "kedge/burstable/podabc/0123456789abcdef0123456789abcdef".into(),
        resources: Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
            pids_limit: Some(100),
        },
        security: Security {
            privileged: false,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            no_new_privileges: true,
            seccomp_runtime_default: true,
            masked_paths_default: true,
        },
        oom_score_adj: Some(999),
        ..Default::default()
    }
}

#[test]
fn process_user_env_and_capabilities() {
    let spec = oci_spec(&config()).unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(
        process.args().as_ref().unwrap(),
        &vec!["sh".to_string(), "-c".into(), "echo hi".into()]
    );
    let env = process.env().as_ref().unwrap();
    assert!(env.contains(&"A=1".to_string()));
    assert!(env.contains(&DEFAULT_PATH.to_string()), "{env:?}");
    assert_eq!(process.cwd(), Path::new("/work"));
    assert_eq!(process.user().uid(), 1000);
    assert_eq!(process.user().gid(), 2000);
    assert_eq!(
        process.user().additional_gids().as_ref().unwrap(),
        &vec![3000]
    );
    assert_eq!(process.no_new_privileges(), Some(true));
    assert_eq!(process.oom_score_adj(), Some(999));
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert_eq!(caps.effective().as_ref().unwrap().len(), 14);
    assert!(caps.inheritable().as_ref().is_none_or(|c| c.is_empty()));
    assert!(caps.ambient().as_ref().is_none_or(|c| c.is_empty()));
    let rlimits = process.rlimits().as_ref().unwrap();
    assert!(rlimits[0].hard() <= 1_048_576 && rlimits[0].hard() > 1024);
    assert_eq!(spec.hostname().as_deref(), Some("pod-a"));
}

#[test]
fn mounts_defaults_and_config() {
    let spec = oci_spec(&config()).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let dest: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().to_str().unwrap())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(dest.contains(&d), "{d} missing in {dest:?}");
    }
    // The pod's /dev/shm replaces the default one.
    assert_eq!(dest.iter().filter(|d| **d == "/dev/shm").count(), 1);
    let shm = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .unwrap();
    assert_eq!(shm.typ().as_deref(), Some("bind"));
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    let options = data.options().as_ref().unwrap();
    assert!(options.contains(&"rbind".to_string()) && options.contains(&"ro".to_string()));
    let scratch = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/scratch"))
        .unwrap();
    assert!(scratch
        .options()
        .as_ref()
        .unwrap()
        .contains(&"size=1048576".to_string()));
    let sys = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"ro".to_string()));
}

#[test]
fn a_target_pid_namespace_is_joined() {
    let spec = oci_spec(&ContainerConfig {
        pid_ns: Some("/proc/42/ns/pid".into()),
        ..config()
    })
    .unwrap();
    let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let pid = namespaces
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
        .unwrap();
    assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/42/ns/pid")));
}

#[test]
fn linux_namespaces_cgroups_resources() {
    let spec = oci_spec(&config()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let namespaces = linux.namespaces().as_ref().unwrap();
    let net = namespaces
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .unwrap();
    assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/pod")));
    assert!(namespaces
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid));
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new(
            "/kedge/burstable/podabc/0123456789abcdef0123456789abcdef"
        ))
    );
    let resources = linux.resources().as_ref().unwrap();
    let cpu = resources.cpu().as_ref().unwrap();
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
    assert_eq!(resources.pids().as_ref().unwrap().limit(), 100);
    let devices = linux.devices().as_ref().unwrap();
    assert_eq!(devices.len(), 6);
    assert_eq!(
        linux.masked_paths().as_ref().unwrap().len(),
        MASKED_PATHS.len()
    );
    assert_eq!(
        linux.readonly_paths().as_ref().unwrap().len(),
        READONLY_PATHS.len()
    );
    let seccomp = linux.seccomp().as_ref().unwrap();
    assert_eq!(
        seccomp.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    let allowed: Vec<&String> = seccomp
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|s| {
            s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow && s.args().is_none()
        })
        .flat_map(|s| s.names())
        .collect();
    assert!(allowed.iter().any(|n| *n == "read"));
    // No CAP_SYS_ADMIN: mount stays forbidden.
    assert!(!allowed.iter().any(|n| *n == "mount"));
}

#[test]
fn privileged_gets_everything_and_no_confinement() {
    let mut c = config();
    c.security.privileged = true;
    let spec = oci_spec(&c).unwrap();
    let caps = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap();
    // Everything the agent holds (here CAP_SYS_RESOURCE may be missing in a container).
    let held = current_capabilities();
    let expected = (0..ALL_CAPABILITIES.len())
        .filter(|b| held & (1 << b) != 0)
        .count();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), expected);
    assert!(expected > DEFAULT_CAPABILITIES.len());
    let linux = spec.linux().as_ref().unwrap();
    assert!(linux.masked_paths().as_ref().is_none_or(|p| p.is_empty()));
    assert!(linux.seccomp().is_none());
    let sys = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/sys"))
        .unwrap()
        .clone();
    assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));
}

#[test]
fn errors_name_the_container() {
    let mut c = config();
    c.args.clear();
    let e = oci_spec(&c).unwrap_err().to_string();
    assert!(e.contains(&c.id) && e.contains("args"), "{e}");
    let mut c = config();
    c.security.capabilities.push("CAP_BOGUS".into());
    let e = oci_spec(&c).unwrap_err().to_string();
    assert!(e.contains("CAP_BOGUS"), "{e}");
}

#[test]
fn no_netns_means_a_new_one() {
    let mut c = config();
    c.netns = None;
    let spec = oci_spec(&c).unwrap();
    let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let net = namespaces
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .unwrap();
    assert!(net.path().is_none());
}
