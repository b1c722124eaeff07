//! The pod status the kubelet reports, computed as upstream's `generateAPIPodStatus`,
//! `convertToAPIContainerStatuses`, `getPhase` and `status.Generate*Condition` do, from
//! what the worker observed ([`ContainerView`]) and the pod's previous status (kept
//! transition times, terminal phases never left, the scheduler's conditions kept).

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use super::qos;

/// Which list a container belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    Regular,
    /// Added to a running pod by `kubectl debug`; run once, never restarted, never probed.
    Ephemeral,
}

/// How a container instance ended (also kept in the next instance's meta.json as its
/// `lastState`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Terminated {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Completed, Error, OOMKilled, ContainerCannotRun, StartError.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// `kedge://<id>`.
    pub container_id: String,
}

impl Terminated {
    pub fn to_api(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            container_id: Some(self.container_id.clone()),
        }
    }
}

/// The state of the latest instance of a container.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceState {
    /// Created but its process not (yet) known to run.
    Created,
    Running {
        started_at: Time,
    },
    Exited(Terminated),
}

/// The latest instance of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    /// The image as the runtime names it (normalised reference).
    pub image: String,
    pub image_id: String,
    pub restart_count: i32,
    pub state: InstanceState,
    pub last_termination: Option<Terminated>,
}

/// What the worker knows about one container of the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub kind: Kind,
    pub spec_image: String,
    pub instance: Option<Instance>,
    /// Why the next instance is not running yet (CrashLoopBackOff, ErrImagePull, …).
    pub waiting: Option<(String, String)>,
    /// Startup probe passed (or none); meaningful while running.
    pub started: bool,
    /// Readiness probe passed (or none); meaningful while running.
    pub ready: bool,
}

/// Node and sandbox facts for the status.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub host_ips: Vec<String>,
    pub pod_ips: Vec<String>,
    /// The sandbox (pod dir, netns) exists: `PodReadyToStartContainers`.
    pub sandbox_ready: bool,
    /// The pod is being terminated or has finished: its containers will not restart.
    pub terminal: bool,
}

/// `kedge://<id>`, the container id as the API shows it.
pub fn container_id(id: &str) -> String {
    format!("kedge://{id}")
}

/// One container's API status.
pub fn container_status(view: &ContainerView, has_init_containers: bool) -> ContainerStatus {
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..ContainerState::default()
    };
    let default_reason = if has_init_containers {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let mut status = ContainerStatus {
        name: view.name.clone(),
        image: view.spec_image.clone(),
        image_id: String::new(),
        ready: false,
        started: Some(false),
        restart_count: 0,
        ..ContainerStatus::default()
    };
    let Some(instance) = &view.instance else {
        status.state = Some(match &view.waiting {
            Some((reason, message)) => waiting(reason, Some(message.clone())),
            None => waiting(default_reason, None),
        });
        return status;
    };
    status.image = instance.image.clone();
    status.image_id = instance.image_id.clone();
    status.restart_count = instance.restart_count;
    status.container_id = Some(container_id(&instance.id));
    let last = instance.last_termination.as_ref().map(|t| ContainerState {
        terminated: Some(t.to_api()),
        ..ContainerState::default()
    });
    match &instance.state {
        InstanceState::Created => {
            status.state = Some(waiting(default_reason, None));
            status.last_state = last;
        }
        InstanceState::Running { started_at } => {
            status.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..ContainerState::default()
            });
            status.last_state = last;
            status.started = Some(view.started);
            status.ready = view.started && view.ready;
        }
        InstanceState::Exited(t) => match &view.waiting {
            // Going to restart: waiting, with this instance as the last state.
            Some((reason, message)) => {
                status.state = Some(waiting(reason, Some(message.clone())));
                status.last_state = Some(ContainerState {
                    terminated: Some(t.to_api()),
                    ..ContainerState::default()
                });
            }
            None => {
                status.state = Some(ContainerState {
                    terminated: Some(t.to_api()),
                    ..ContainerState::default()
                });
                status.last_state = last;
                status.ready = view.kind == Kind::Init && t.exit_code == 0;
            }
        },
    }
    if status.last_state.is_none() {
        status.last_state = Some(ContainerState::default());
    }
    if view.kind == Kind::Ephemeral {
        // Neither probed nor counted for readiness: upstream leaves both unset.
        status.ready = false;
        status.started = None;
    }
    status
}

fn find<'a>(statuses: &'a [ContainerStatus], name: &str) -> Option<&'a ContainerStatus> {
    statuses.iter().find(|s| s.name == name)
}

fn running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}
fn terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.state.as_ref().and_then(|st| st.terminated.as_ref())
}
fn waiting(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.waiting.is_some())
}
fn last_terminated(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.last_state.as_ref().and_then(|st| st.terminated.as_ref())
}

fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// `getPhase` (without the alpha container restart rules).
pub fn phase(
    pod: &Pod,
    all: &[ContainerStatus],
    terminal: bool,
    initialized: bool,
) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "Pending";
    };
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let (mut pending_sidecars, mut pending_init, mut failed_init) = (0, 0, 0);
    for c in spec.init_containers.iter().flatten() {
        if is_sidecar(c) {
            continue;
        }
        match find(all, &c.name) {
            None => pending_init += 1,
            Some(s) if running(s) => pending_init += 1,
            Some(s) if terminated(s).is_some() => {
                if terminated(s).is_some_and(|t| t.exit_code != 0) {
                    failed_init += 1;
                }
            }
            Some(s) if waiting(s) => match last_terminated(s) {
                Some(t) if t.exit_code != 0 => failed_init += 1,
                Some(_) => {}
                None => pending_init += 1,
            },
            Some(_) => pending_init += 1,
        }
    }
    let (mut unknown, mut running_n, mut waiting_n, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| is_sidecar(c))
    {
        match find(all, &c.name) {
            None => unknown += 1,
            Some(s) if running(s) => {
                if s.started != Some(true) {
                    pending_sidecars += 1;
                }
                running_n += 1;
            }
            Some(s) if terminated(s).is_some() => {}
            Some(s) if waiting(s) => {
                if last_terminated(s).is_none() {
                    pending_sidecars += 1;
                    waiting_n += 1;
                }
            }
            Some(_) => {
                pending_sidecars += 1;
                unknown += 1;
            }
        }
    }
    for c in &spec.containers {
        match find(all, &c.name) {
            None => unknown += 1,
            Some(s) if running(s) => running_n += 1,
            Some(s) if terminated(s).is_some() => {
                stopped += 1;
                if terminated(s).is_some_and(|t| t.exit_code == 0) {
                    succeeded += 1;
                }
            }
            Some(s) if waiting(s) => {
                if last_terminated(s).is_some() {
                    stopped += 1;
                } else {
                    waiting_n += 1;
                }
            }
            Some(_) => unknown += 1,
        }
    }
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || (pending_sidecars > 0 && !initialized) || waiting_n > 0 {
        return "Pending";
    }
    if running_n > 0 && unknown == 0 {
        return "Running";
    }
    if running_n == 0 && stopped > 0 && unknown == 0 {
        if terminal {
            return if stopped == succeeded {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(type_: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.map(str::to_string),
        message,
        ..PodCondition::default()
    }
}

/// Go's `%s` of a string slice: `[a b]`.
fn go_list(names: &[String]) -> String {
    format!("[{}]", names.join(" "))
}

/// Condition `type_`, true unless some containers are in one of the named states; upstream's
/// message lists each non-empty state as `containers with <state> status: [a b]`.
fn by_container_states(type_: &str, reason: &str, states: &[(&str, &Vec<String>)]) -> PodCondition {
    let messages: Vec<String> = states
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(state, names)| format!("containers with {state} status: {}", go_list(names)))
        .collect();
    if messages.is_empty() {
        condition(type_, true, None, None)
    } else {
        condition(type_, false, Some(reason), Some(messages.join(", ")))
    }
}

fn containers_ready(pod: &Pod, all: &[ContainerStatus], phase: &str) -> PodCondition {
    let Some(spec) = &pod.spec else {
        return condition("ContainersReady", false, None, None);
    };
    let mut unknown = Vec::new();
    let mut unready = Vec::new();
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| is_sidecar(c))
        .chain(spec.containers.iter())
    {
        match find(all, &c.name) {
            Some(s) if !s.ready => unready.push(c.name.clone()),
            Some(_) => {}
            None => unknown.push(c.name.clone()),
        }
    }
    if phase == "Succeeded" && unknown.is_empty() {
        return condition("ContainersReady", false, Some("PodCompleted"), None);
    }
    if phase == "Failed" {
        return condition("ContainersReady", false, Some("PodFailed"), None);
    }
    by_container_states(
        "ContainersReady",
        "ContainersNotReady",
        &[("unknown", &unknown), ("unready", &unready)],
    )
}

fn pod_ready(
    pod: &Pod,
    containers_ready: &PodCondition,
    conditions: &[PodCondition],
) -> PodCondition {
    if containers_ready.status != "True" {
        let mut c = containers_ready.clone();
        c.type_ = "Ready".to_string();
        return c;
    }
    let mut messages = Vec::new();
    for gate in pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_deref())
        .unwrap_or_default()
    {
        match conditions.iter().find(|c| c.type_ == gate.condition_type) {
            None => messages.push(format!(
                "corresponding condition of pod readiness gate {:?} does not exist.",
                gate.condition_type
            )),
            Some(c) if c.status != "True" => messages.push(format!(
                "the status of pod readiness gate {:?} is not \"True\", but {}",
                gate.condition_type, c.status
            )),
            Some(_) => {}
        }
    }
    if messages.is_empty() {
        condition("Ready", true, None, None)
    } else {
        condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some(messages.join(", ")),
        )
    }
}

fn initialized(
    pod: &Pod,
    all: &[ContainerStatus],
    phase: &str,
    regular_started: bool,
) -> PodCondition {
    let Some(spec) = &pod.spec else {
        return condition("Initialized", true, None, None);
    };
    let mut unknown = Vec::new();
    let mut incomplete = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let Some(s) = find(all, &c.name) else {
            unknown.push(c.name.clone());
            continue;
        };
        if is_sidecar(c) {
            if s.started != Some(true) {
                incomplete.push(c.name.clone());
            }
            continue;
        }
        if terminated(s).is_none_or(|t| t.exit_code != 0) {
            incomplete.push(c.name.clone());
        }
    }
    if phase == "Succeeded" && unknown.is_empty() {
        return condition("Initialized", true, Some("PodCompleted"), None);
    }
    if regular_started {
        return condition("Initialized", true, None, None);
    }
    by_container_states(
        "Initialized",
        "ContainersNotInitialized",
        &[("unknown", &unknown), ("incomplete", &incomplete)],
    )
}

/// Conditions the kubelet owns (others, e.g. DisruptionTarget or readiness gates' own,
/// are kept as they are).
const KUBELET_CONDITIONS: &[&str] = &[
    "PodScheduled",
    "Ready",
    "Initialized",
    "ContainersReady",
    "PodReadyToStartContainers",
];

/// The whole pod status.
pub fn generate(pod: &Pod, views: &[ContainerView], facts: &Facts, now: &Time) -> PodStatus {
    let old = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let has_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|i| !i.is_empty());
    let mut status = PodStatus {
        qos_class: Some(qos::qos_class(pod).to_string()),
        ..PodStatus::default()
    };
    let view = |name: &str, kinds: &[Kind]| {
        views
            .iter()
            .find(|v| v.name == name && kinds.contains(&v.kind))
    };
    let mut containers = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        if let Some(v) = view(&c.name, &[Kind::Regular]) {
            containers.push(container_status(v, has_init));
        }
    }
    let mut inits = Vec::new();
    for c in spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
    {
        if let Some(v) = view(&c.name, &[Kind::Init, Kind::Sidecar]) {
            inits.push(container_status(v, has_init));
        }
    }
    let mut ephemeral = Vec::new();
    for c in spec
        .and_then(|s| s.ephemeral_containers.as_deref())
        .unwrap_or_default()
    {
        if let Some(v) = view(&c.name, &[Kind::Ephemeral]) {
            ephemeral.push(container_status(v, false));
        }
    }
    let regular_started = views.iter().any(|v| {
        v.kind == Kind::Regular
            && matches!(
                v.instance.as_ref().map(|i| &i.state),
                Some(InstanceState::Running { .. }) | Some(InstanceState::Exited(_))
            )
    });
    let all: Vec<ContainerStatus> = containers.iter().chain(inits.iter()).cloned().collect();
    let mut phase = phase(pod, &all, facts.terminal, regular_started).to_string();
    // Terminal phases are never left.
    if let Some(old_phase @ ("Succeeded" | "Failed")) = old.phase.as_deref() {
        phase = old_phase.to_string();
    }
    if old.phase.as_deref() == Some(phase.as_str()) {
        status.reason = old.reason.clone();
        status.message = old.message.clone();
    }
    status.phase = Some(phase.clone());
    status.container_statuses = Some(containers);
    if has_init {
        status.init_container_statuses = Some(inits.clone());
    }
    if !ephemeral.is_empty() {
        status.ephemeral_container_statuses = Some(ephemeral);
    }

    let mut conditions: Vec<PodCondition> = old
        .conditions
        .iter()
        .flatten()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    let all: Vec<ContainerStatus> = inits
        .iter()
        .chain(status.container_statuses.iter().flatten())
        .cloned()
        .collect();
    conditions.push(condition(
        "PodReadyToStartContainers",
        facts.sandbox_ready,
        None,
        None,
    ));
    conditions.push(initialized(pod, &all, &phase, regular_started));
    let ready_containers = containers_ready(pod, &all, &phase);
    let kept = conditions.clone();
    conditions.push(pod_ready(pod, &ready_containers, &kept));
    conditions.push(ready_containers);
    conditions.push(condition("PodScheduled", true, None, None));
    for c in &mut conditions {
        if !KUBELET_CONDITIONS.contains(&c.type_.as_str()) {
            continue;
        }
        let previous = old.conditions.iter().flatten().find(|o| o.type_ == c.type_);
        c.last_transition_time = match previous {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        c.last_probe_time = previous.and_then(|p| p.last_probe_time.clone());
    }
    status.conditions = Some(conditions);

    if !facts.host_ips.is_empty() {
        status.host_ip = facts.host_ips.first().cloned();
        status.host_ips = Some(
            facts
                .host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        );
    }
    if !facts.pod_ips.is_empty() {
        status.pod_ip = facts.pod_ips.first().cloned();
        status.pod_ips = Some(
            facts
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect(),
        );
    }
    status.start_time = old.start_time.clone().or_else(|| Some(now.clone()));
    status.nominated_node_name = old.nominated_node_name.clone();
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn view(name: &str, kind: Kind, state: Option<InstanceState>) -> ContainerView {
        ContainerView {
            name: name.into(),
            kind,
            spec_image: "busybox".into(),
            instance: state.map(|state| Instance {
                id: format!("id-{name}"),
                image: "docker.io/library/busybox:latest".into(),
                image_id: "sha256:abc".into(),
                restart_count: 0,
                state,
                last_termination: None,
            }),
            waiting: None,
            started: true,
            ready: true,
        }
    }

    fn exited(code: i32) -> InstanceState {
        InstanceState::Exited(Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(now()),
            finished_at: Some(now()),
            container_id: "kedge://x".into(),
        })
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn ephemeral_containers_have_their_own_list_and_leave_the_phase_alone() {
        let p = pod(serde_json::json!({
            "containers": [{"name": "main", "image": "busybox"}],
            "ephemeralContainers": [{"name": "main-debug", "image": "busybox"}]}));
        let facts = Facts {
            sandbox_ready: true,
            ..Facts::default()
        };
        let running = InstanceState::Running { started_at: now() };
        let s = generate(
            &p,
            &[
                view("main", Kind::Regular, Some(running)),
                view("main-debug", Kind::Ephemeral, Some(exited(1))),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(s.container_statuses.as_ref().unwrap().len(), 1);
        let debug = &s.ephemeral_container_statuses.as_ref().unwrap()[0];
        assert_eq!(debug.name, "main-debug");
        assert!(!debug.ready);
        assert_eq!(debug.started, None);
        let terminated = debug.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(terminated.exit_code, 1);
    }

    #[test]
    fn creating_then_running_then_completed() {
        let p = pod(serde_json::json!({"restartPolicy": "Never",
            "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}));
        let facts = Facts {
            sandbox_ready: true,
            ..Facts::default()
        };
        let s = generate(
            &p,
            &[
                view("a", Kind::Regular, None),
                view("b", Kind::Regular, None),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ContainerCreating")
        );
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [a b]")
        );
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        // The scheduler's transition time is kept.
        assert_eq!(
            cond(&s, "PodScheduled")
                .last_transition_time
                .as_ref()
                .unwrap()
                .0
                .to_string(),
            "2026-01-01T00:00:00Z"
        );

        let running = InstanceState::Running { started_at: now() };
        let s = generate(
            &p,
            &[
                view("a", Kind::Regular, Some(running.clone())),
                view("b", Kind::Regular, Some(running)),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");

        let s = generate(
            &p,
            &[
                view("a", Kind::Regular, Some(exited(0))),
                view("b", Kind::Regular, Some(exited(0))),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        let s = generate(
            &p,
            &[
                view("a", Kind::Regular, Some(exited(0))),
                view("b", Kind::Regular, Some(exited(1))),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let p = pod(serde_json::json!({
            "initContainers": [{"name": "i1", "image": "busybox"}, {"name": "i2", "image": "busybox"}],
            "containers": [{"name": "a", "image": "busybox"}]}));
        let facts = Facts {
            sandbox_ready: true,
            ..Facts::default()
        };
        let s = generate(
            &p,
            &[
                view("i1", Kind::Init, Some(exited(0))),
                view(
                    "i2",
                    Kind::Init,
                    Some(InstanceState::Running { started_at: now() }),
                ),
                view("a", Kind::Regular, None),
            ],
            &facts,
            &now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [i2]")
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);
    }

    #[test]
    fn crash_loop_shows_waiting_with_last_state() {
        let p = pod(serde_json::json!({"containers": [{"name": "a", "image": "busybox"}]}));
        let mut v = view("a", Kind::Regular, Some(exited(1)));
        v.waiting = Some((
            "CrashLoopBackOff".into(),
            "back-off 10s restarting failed container=a pod=p_ns(u)".into(),
        ));
        let s = generate(&p, &[v], &Facts::default(), &now());
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
    }
}
