//! One container's runtime configuration ([`ContainerConfig`]) from its pod: command and
//! args over the image's entrypoint and cmd with `$(VAR)` expansion, the environment
//! (image env, then service links, envFrom, env), working dir, user and groups, security
//! settings, sandbox and volume mounts, cgroup path and resources.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::{Api, ListParams};

use super::env::{self, ConfigError, Env, Facts, Lookups};
use super::expansion::expand;
use super::sandbox::Sandbox;
use super::worker::Shared;
use super::{qos, security};
use crate::runtime::images::Image;
use crate::runtime::spec::{
    ContainerConfig, Mount, MountKind, Resources, Security, User, DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
};

/// Inputs beyond the pod and container.
pub struct Inputs<'a> {
    pub id: &'a str,
    pub image: &'a Image,
    pub rootfs: PathBuf,
    pub sandbox: &'a Sandbox,
    pub volume_mounts: Vec<Mount>,
    pub facts: &'a Facts,
    pub memory_capacity: i64,
    /// The PID namespace to join (an ephemeral container's target's).
    pub pid_ns: Option<PathBuf>,
}

/// Fetches what the environment refers to: ConfigMaps, Secrets and, with service links,
/// the namespace's Services (plus `default/kubernetes`, always).
pub async fn lookups(shared: &Shared, pod: &Pod, container: &Container) -> (Lookups, Env) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (config_maps, secrets) = Lookups::wanted(container);
    let mut lookups = Lookups::default();
    let cm_api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), namespace);
    for name in config_maps {
        let found = cm_api.get_opt(&name).await.ok().flatten();
        lookups.config_maps.insert(name, found);
    }
    let secret_api: Api<Secret> = Api::namespaced(shared.client.clone(), namespace);
    for name in secrets {
        let found = secret_api.get_opt(&name).await.ok().flatten();
        lookups.secrets.insert(name, found);
    }
    let mut services = Vec::new();
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    if links {
        let api: Api<Service> = Api::namespaced(shared.client.clone(), namespace);
        if let Ok(list) = api.list(&ListParams::default()).await {
            services.extend(list.items.into_iter().filter(|s| {
                namespace != "default" || s.metadata.name.as_deref() != Some("kubernetes")
            }));
        }
    }
    let api: Api<Service> = Api::namespaced(shared.client.clone(), "default");
    if let Ok(Some(master)) = api.get_opt("kubernetes").await {
        services.push(master);
    }
    (lookups, env::service_env(&services))
}

/// Builds the configuration; errors are `CreateContainerConfigError` messages.
pub fn build(
    pod: &Pod,
    container: &Container,
    lookups: &Lookups,
    service_env: &Env,
    inputs: Inputs,
) -> Result<ContainerConfig, ConfigError> {
    let image_config = &inputs.image.config;
    let pod_env = env::build(pod, container, service_env, lookups, inputs.facts)?;

    // Image env first, the pod's over it; HOSTNAME as containerd sets it.
    let mut all = Env::default();
    for entry in &image_config.env {
        if let Some((name, value)) = entry.split_once('=') {
            all.set(name, value.to_string());
        }
    }
    if all.get("PATH").is_none() {
        all.set("PATH", DEFAULT_PATH.trim_start_matches("PATH=").to_string());
    }
    all.set("HOSTNAME", inputs.sandbox.hostname.clone());
    for (name, value) in pod_env.entries() {
        all.set(name, value.clone());
    }

    let lookup = |name: &str| pod_env.get(name).map(str::to_string);
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|c| expand(c, lookup))
        .collect();
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, lookup))
        .collect();
    let argv = if command.is_empty() {
        let mut argv = image_config.entrypoint.clone();
        argv.extend(if args.is_empty() {
            image_config.cmd.clone()
        } else {
            args
        });
        argv
    } else {
        let mut argv = command;
        argv.extend(args);
        argv
    };
    if argv.is_empty() {
        return Err(ConfigError("no command specified".to_string()));
    }

    let sc = security::effective(pod, container);
    let image_user = image_config.user.as_deref();
    security::verify_run_as_non_root(pod, container, &sc, image_user)
        .map_err(|e| ConfigError(e.0))?;
    let identity =
        security::identity(&sc, image_user, &inputs.rootfs).map_err(|e| ConfigError(e.0))?;

    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image_config.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());

    let mut mounts = inputs.volume_mounts;
    let sandbox_file = |destination: &str, source: &Path| Mount {
        destination: destination.into(),
        source: source.to_path_buf(),
        kind: MountKind::Bind,
        readonly: false,
    };
    // A volume mounted at one of these paths wins, as upstream.
    for (destination, source) in [
        ("/etc/hosts", &inputs.sandbox.hosts_file),
        ("/etc/hostname", &inputs.sandbox.hostname_file),
        ("/etc/resolv.conf", &inputs.sandbox.resolv_file),
    ] {
        if !mounts
            .iter()
            .any(|m| Path::new(&m.destination) == Path::new(destination))
        {
            mounts.push(sandbox_file(destination, source));
        }
    }
    let resources = qos::container_resources(container);
    let cgroups_path = format!("{}/{}", qos::pod_cgroup(pod), inputs.id);
    let spec = pod.spec.as_ref();
    let host_pid = spec.and_then(|s| s.host_pid).unwrap_or(false);
    let host_ipc = spec.and_then(|s| s.host_ipc).unwrap_or(false);
    Ok(ContainerConfig {
        id: inputs.id.to_string(),
        args: argv,
        env: all.to_oci(),
        cwd,
        user: User {
            uid: identity.uid,
            gid: identity.gid,
            additional_gids: identity.additional_gids,
        },
        tty: container.tty.unwrap_or(false),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        hostname: inputs.sandbox.hostname.clone(),
        rootfs: inputs.rootfs,
        readonly_rootfs: sc.read_only_root_filesystem,
        mounts,
        // Host-network pods join the node's namespace (the agent's own).
        netns: Some(
            inputs
                .sandbox
                .netns
                .clone()
                .unwrap_or_else(|| agent_namespace("net")),
        ),
        pid_ns: inputs
            .pid_ns
            .or_else(|| host_pid.then(|| agent_namespace("pid"))),
        ipc_ns: host_ipc.then(|| agent_namespace("ipc")),
        cgroups_path,
        resources: Resources {
            cpu_shares: Some(resources.cpu_shares),
            cpu_quota: resources.cpu_quota,
            cpu_period: resources.cpu_period,
            memory_limit: resources.memory_limit,
            pids_limit: None,
        },
        security: Security {
            privileged: sc.privileged,
            capabilities: security::capabilities(&sc, DEFAULT_CAPABILITIES),
            no_new_privileges: security::no_new_privileges(&sc),
            seccomp_runtime_default: security::seccomp_runtime_default(&sc),
            masked_paths_default: !sc.privileged,
        },
        oom_score_adj: Some(qos::oom_score_adj(pod, container, inputs.memory_capacity)),
    })
}

/// The agent's own (the node's) namespace of `kind`, which host-network, `hostPID` and
/// `hostIPC` pods join.
fn agent_namespace(kind: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{}/ns/{kind}", std::process::id()))
}
