//! Liveness, readiness and startup probes (upstream's prober workers): one task per
//! container instance and probe, running every `periodSeconds` after
//! `initialDelaySeconds`, with `timeoutSeconds`, `successThreshold` and `failureThreshold`.
//! Readiness starts as failure, liveness as success, startup as unknown; liveness and
//! readiness wait for the startup probe. Every failed attempt records an `Unhealthy`
//! event ("Liveness probe failed: ..."); a result that passes its threshold wakes the pod
//! worker, which kills the container on liveness/startup failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::action::{self, Target};
use super::events;
use super::status::Kind;
use crate::controllers::events::Recorder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }

    fn lower(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }

    fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
            ProbeKind::Startup => container.startup_probe.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Unknown,
    Success,
    Failure,
}

type Key = (String, ProbeKind);

/// Results keyed by container name, valid for one instance id.
type Results = Arc<Mutex<HashMap<Key, (String, Outcome)>>>;

/// What a probe task needs besides its probe.
#[derive(Clone)]
pub struct ProbeContext {
    pub recorder: Arc<Recorder>,
    pub pod: Pod,
    pub target: Target,
}

/// The probes of one pod.
#[derive(Default)]
pub struct Prober {
    results: Results,
    tasks: HashMap<Key, (String, JoinHandle<()>)>,
    /// Woken when a probe result changes.
    pub notify: Arc<Notify>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}

impl Prober {
    fn outcome(&self, name: &str, kind: ProbeKind, instance: &str) -> Option<Outcome> {
        let results = self.results.lock().ok()?;
        results
            .get(&(name.to_string(), kind))
            .filter(|(id, _)| id == instance)
            .map(|(_, o)| *o)
    }

    /// The startup probe passed (or there is none).
    pub fn started(&self, container: &Container, instance: &str) -> bool {
        container.startup_probe.is_none()
            || self.outcome(&container.name, ProbeKind::Startup, instance) == Some(Outcome::Success)
    }

    /// The readiness probe passes (or there is none).
    pub fn ready(&self, container: &Container, instance: &str) -> bool {
        container.readiness_probe.is_none()
            || self.outcome(&container.name, ProbeKind::Readiness, instance)
                == Some(Outcome::Success)
    }

    /// The liveness or startup probe that failed past its threshold, if any.
    pub fn failed<'c>(
        &self,
        container: &'c Container,
        instance: &str,
    ) -> Option<(ProbeKind, &'c Probe)> {
        [ProbeKind::Startup, ProbeKind::Liveness]
            .into_iter()
            .find(|k| {
                k.of(container).is_some()
                    && self.outcome(&container.name, *k, instance) == Some(Outcome::Failure)
            })
            .and_then(|k| k.of(container).map(|p| (k, p)))
    }

    /// Starts the probes of a running container instance that are not running yet
    /// (liveness and readiness only once it has started).
    pub fn ensure(
        &mut self,
        ctx: &ProbeContext,
        container: &Container,
        kind: Kind,
        instance: &str,
        container_dir: PathBuf,
    ) {
        let started = self.started(container, instance);
        for probe_kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            let Some(probe) = probe_kind.of(container) else {
                continue;
            };
            if probe_kind != ProbeKind::Startup && !started {
                continue;
            }
            let key = (container.name.clone(), probe_kind);
            if self.tasks.get(&key).is_some_and(|(id, _)| id == instance) {
                continue;
            }
            if let Some((_, old)) = self.tasks.remove(&key) {
                old.abort();
            }
            let initial = match probe_kind {
                ProbeKind::Readiness => Outcome::Failure,
                ProbeKind::Liveness => Outcome::Success,
                ProbeKind::Startup => Outcome::Unknown,
            };
            if let Ok(mut results) = self.results.lock() {
                results.insert(key.clone(), (instance.to_string(), initial));
            }
            let task = tokio::spawn(run(
                RunArgs {
                    ctx: ctx.clone(),
                    probe_kind,
                    probe: probe.clone(),
                    container: container.clone(),
                    kind,
                    instance: instance.to_string(),
                    container_dir: container_dir.clone(),
                },
                self.results.clone(),
                self.notify.clone(),
            ));
            self.tasks.insert(key, (instance.to_string(), task));
        }
    }

    /// Stops the probes of a container (its instance ended or is being replaced).
    pub fn stop(&mut self, name: &str) {
        for kind in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            if let Some((_, task)) = self.tasks.remove(&(name.to_string(), kind)) {
                task.abort();
            }
        }
    }
}

struct RunArgs {
    ctx: ProbeContext,
    probe_kind: ProbeKind,
    probe: Probe,
    container: Container,
    kind: Kind,
    instance: String,
    container_dir: PathBuf,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

async fn run(args: RunArgs, results: Results, notify: Arc<Notify>) {
    let probe = &args.probe;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let key = (args.container.name.clone(), args.probe_kind);
    let mut last: Option<bool> = None;
    let mut run_length = 0;
    loop {
        let result = attempt(&args, timeout).await;
        if let Err(output) = &result {
            events::container(
                &args.ctx.recorder,
                &args.ctx.pod,
                args.kind,
                &args.container.name,
                true,
                events::UNHEALTHY,
                &format!("{} probe failed: {output}", args.probe_kind.name()),
            )
            .await;
        }
        let ok = result.is_ok();
        if last == Some(ok) {
            run_length += 1;
        } else {
            last = Some(ok);
            run_length = 1;
        }
        let reached = if ok {
            run_length >= success_threshold
        } else {
            run_length >= failure_threshold
        };
        if reached {
            let outcome = if ok {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let changed = match results.lock() {
                Ok(mut r) => {
                    let previous = r.insert(key.clone(), (args.instance.clone(), outcome));
                    previous.map(|(_, o)| o) != Some(outcome)
                }
                Err(_) => false,
            };
            if changed {
                notify.notify_one();
            }
            match (args.probe_kind, ok) {
                // A started container is not probed for startup again.
                (ProbeKind::Startup, true) => return,
                // The container is about to be killed: hold until its next instance.
                (ProbeKind::Liveness | ProbeKind::Startup, false) => return,
                _ => {}
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn attempt(args: &RunArgs, timeout: Duration) -> Result<String, String> {
    let probe = &args.probe;
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        return action::exec(&args.container_dir, &command, timeout).await;
    }
    if let Some(get) = &probe.http_get {
        return action::http(get, &args.container, &args.ctx.target, timeout).await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        return action::tcp(tcp, &args.container, &args.ctx.target, timeout).await;
    }
    Err(format!(
        "unsupported {} probe handler (grpc probes are not supported)",
        args.probe_kind.lower()
    ))
}
