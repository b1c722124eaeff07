//! The scheduler loop, as kube-scheduler runs inside `kedge server`: an in-process API
//! client acting as `system:kube-scheduler`, elected on the `kube-system/kube-scheduler`
//! Lease. One task owns the [`Cache`] and the [`Queue`]: it applies watch events, takes the
//! most important pending pod, asks [`schedule`] for a node and either assumes the pod there
//! and binds it in the background ([`bind`]), or records why it cannot be placed and
//! carries out preemption ([`failure`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::bind::{self, BindFailed};
use super::cache::{Cache, NodeChange};
use super::failure;
use super::preemption::priority;
use super::queue::{key, Key, Queue, Queued};
use super::{schedule, Preemption, Unschedulable};
use crate::api::Router;
use crate::controllers::events::Recorder;
use crate::controllers::leader::LeaderElector;

/// Who the scheduler is to the API, as upstream's kube-scheduler.
pub const USER: &str = "system:kube-scheduler";
/// The Lease schedulers are elected on, in `kube-system`.
pub const LEASE_NAME: &str = "kube-scheduler";
/// The profile this scheduler serves: pods naming it, or no scheduler at all.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Bindings in flight at once: enough to fill the store's group commits.
const PARALLEL_BINDINGS: usize = 64;

/// Runs the scheduler whenever this server (`identity`) holds the scheduler lease. Never
/// returns.
pub async fn run(router: Arc<Router>, identity: String) {
    let client = crate::client::local::in_process(router, USER, &[]);
    let elector = LeaderElector::for_lease(client.clone(), identity, LEASE_NAME);
    elector
        .run(move || Scheduler::new(client.clone()).run())
        .await
}

/// A change seen through the watches.
enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Pdb(Box<watcher::Event<PodDisruptionBudget>>),
}

/// Which watches have listed everything once; no decision is made before.
#[derive(Default)]
struct Synced {
    pods: bool,
    nodes: bool,
}

/// Keys seen during a relist, to drop what disappeared meanwhile.
#[derive(Default)]
struct Relist {
    pods: Option<HashSet<Key>>,
    nodes: Option<HashSet<String>>,
    pdbs: Option<HashSet<Key>>,
}

pub(super) struct Scheduler {
    client: Client,
    recorder: Arc<Recorder>,
    cache: Cache,
    queue: Queue,
    /// Pods assumed on a node whose binding has not been seen yet.
    binding: HashMap<Key, Queued>,
    /// Every live pod this scheduler knows of (bound or pending).
    known_pods: HashSet<Key>,
    pdbs: HashMap<Key, PodDisruptionBudget>,
    pdb_list: Vec<PodDisruptionBudget>,
    rng: StdRng,
    synced: Synced,
    relist: Relist,
    bindings: Arc<Semaphore>,
    failed_tx: mpsc::UnboundedSender<BindFailed>,
    failed_rx: mpsc::UnboundedReceiver<BindFailed>,
}

impl Scheduler {
    pub(super) fn new(client: Client) -> Scheduler {
        let (failed_tx, failed_rx) = mpsc::unbounded_channel();
        Scheduler {
            recorder: Arc::new(Recorder::new(client.clone(), SCHEDULER_NAME)),
            client,
            cache: Cache::default(),
            queue: Queue::default(),
            binding: HashMap::new(),
            known_pods: HashSet::new(),
            pdbs: HashMap::new(),
            pdb_list: Vec::new(),
            rng: StdRng::from_os_rng(),
            synced: Synced::default(),
            relist: Relist::default(),
            bindings: Arc::new(Semaphore::new(PARALLEL_BINDINGS)),
            failed_tx,
            failed_rx,
        }
    }

    fn watches(&self) -> BoxStream<'static, Change> {
        fn watch<K>(client: &Client) -> BoxStream<'static, watcher::Event<K>>
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + serde::de::DeserializeOwned
                + std::fmt::Debug
                + Send
                + 'static,
        {
            watcher(Api::<K>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .filter_map(|event| async move {
                    event
                        .map_err(|error| tracing::debug!(%error, "scheduler watch"))
                        .ok()
                })
                .boxed()
        }
        stream::select_all([
            watch::<Pod>(&self.client)
                .map(|e| Change::Pod(Box::new(e)))
                .boxed(),
            watch::<Node>(&self.client)
                .map(|e| Change::Node(Box::new(e)))
                .boxed(),
            watch::<PodDisruptionBudget>(&self.client)
                .map(|e| Change::Pdb(Box::new(e)))
                .boxed(),
        ])
        .boxed()
    }

    pub(super) async fn run(mut self) {
        let mut changes = self.watches();
        loop {
            let ready = self.synced.pods && self.synced.nodes && self.queue.has_active();
            let wakeup = self.queue.next_wakeup();
            tokio::select! {
                biased;
                Some(change) = changes.next() => self.apply(change),
                Some(failed) = self.failed_rx.recv() => self.binding_failed(failed),
                _ = std::future::ready(()), if ready => self.schedule_one(),
                _ = tokio::time::sleep_until(wakeup) => self.queue.flush(Instant::now()),
            }
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Pod(event) => match *event {
                watcher::Event::Init => self.relist.pods = Some(HashSet::new()),
                watcher::Event::InitApply(pod) => {
                    if let Some(seen) = &mut self.relist.pods {
                        seen.insert(key(&pod));
                    }
                    self.pod_changed(pod);
                }
                watcher::Event::InitDone => {
                    let seen = self.relist.pods.take().unwrap_or_default();
                    let gone: Vec<Key> = self.known_pods.difference(&seen).cloned().collect();
                    for key in gone {
                        self.pod_gone(&key);
                    }
                    self.synced.pods = true;
                }
                watcher::Event::Apply(pod) => self.pod_changed(pod),
                watcher::Event::Delete(pod) => self.pod_gone(&key(&pod)),
            },
            Change::Node(event) => match *event {
                watcher::Event::Init => self.relist.nodes = Some(HashSet::new()),
                watcher::Event::InitApply(node) => {
                    if let Some(seen) = &mut self.relist.nodes {
                        seen.insert(node.metadata.name.clone().unwrap_or_default());
                    }
                    self.node_changed(node);
                }
                watcher::Event::InitDone => {
                    let seen = self.relist.nodes.take().unwrap_or_default();
                    let gone: Vec<String> = self
                        .cache
                        .node_names()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for name in gone {
                        self.cache.remove_node(&name);
                    }
                    self.synced.nodes = true;
                }
                watcher::Event::Apply(node) => self.node_changed(node),
                watcher::Event::Delete(node) => {
                    self.cache
                        .remove_node(node.metadata.name.as_deref().unwrap_or_default());
                }
            },
            Change::Pdb(event) => {
                match *event {
                    watcher::Event::Init => self.relist.pdbs = Some(HashSet::new()),
                    watcher::Event::InitApply(pdb) => {
                        let key = pdb_key(&pdb);
                        if let Some(seen) = &mut self.relist.pdbs {
                            seen.insert(key.clone());
                        }
                        self.pdbs.insert(key, pdb);
                    }
                    watcher::Event::InitDone => {
                        let seen = self.relist.pdbs.take().unwrap_or_default();
                        self.pdbs.retain(|k, _| seen.contains(k));
                    }
                    watcher::Event::Apply(pdb) => {
                        self.pdbs.insert(pdb_key(&pdb), pdb);
                    }
                    watcher::Event::Delete(pdb) => {
                        self.pdbs.remove(&pdb_key(&pdb));
                    }
                }
                self.pdb_list = self.pdbs.values().cloned().collect();
            }
        }
    }

    fn node_changed(&mut self, node: Node) {
        if self.cache.upsert_node(node) != NodeChange::Irrelevant {
            self.queue.move_unschedulable(Instant::now(), |_| true);
        }
    }

    fn pod_changed(&mut self, pod: Pod) {
        let key = key(&pod);
        if finished(&pod) {
            self.pod_gone(&key);
            return;
        }
        self.known_pods.insert(key.clone());
        let now = Instant::now();
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
        {
            self.queue.remove(&key);
            self.binding.remove(&key);
            self.cache.remove_nominated(&key);
            if self.cache.upsert_pod(pod) {
                // Upstream's AssignedPodAdd: may satisfy another pod's affinity.
                self.queue.move_unschedulable(now, has_pod_affinity);
            }
            return;
        }
        if self.binding.contains_key(&key) {
            // Our own status writes on a pod being bound; the binding decides.
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() || !ours(&pod) {
            self.queue.remove(&key);
            self.cache.remove_nominated(&key);
            return;
        }
        match pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_ref())
        {
            Some(_) => self.cache.set_nominated(pod.clone()),
            None => self.cache.remove_nominated(&key),
        }
        self.queue.upsert(pod, now);
    }

    /// A pod was deleted or finished: it leaves the queue and frees its node.
    fn pod_gone(&mut self, key: &Key) {
        self.known_pods.remove(key);
        self.queue.remove(key);
        self.binding.remove(key);
        self.cache.remove_nominated(key);
        if self.cache.remove_pod(key) {
            self.queue.move_unschedulable(Instant::now(), |_| true);
        }
    }

    fn schedule_one(&mut self) {
        let Some(queued) = self.queue.pop() else {
            return;
        };
        let decision = schedule(
            &queued.pod,
            self.cache.snapshot(),
            &self.pdb_list,
            &mut self.rng,
        );
        match decision {
            Ok(node) => self.assume_and_bind(queued, node),
            Err(why) => self.unschedulable(queued, why),
        }
    }

    /// Records the nomination in the cache at once (others must leave its room), hands the
    /// API writes to [`failure::report`] and puts the pod back to wait.
    fn unschedulable(&mut self, mut queued: Queued, why: Unschedulable) {
        let key = key(&queued.pod);
        let seen = queued.pod.clone();
        let mut denominated = Vec::new();
        let nominated = match &why.preemption {
            Preemption::Nominated(victims) => Some(victims.node.clone()),
            Preemption::Failed(_) => None,
            Preemption::NotEligible(_) => self
                .cache
                .nominated(&key)
                .and_then(|p| p.status.as_ref()?.nominated_node_name.clone()),
        };
        if let Some(node) = &nominated {
            let prio = priority(&queued.pod);
            denominated = self
                .cache
                .snapshot()
                .nominated
                .iter()
                .filter(|p| {
                    priority(p) < prio
                        && p.status
                            .as_ref()
                            .and_then(|s| s.nominated_node_name.as_ref())
                            == Some(node)
                })
                .cloned()
                .collect();
            for p in &denominated {
                self.cache.remove_nominated(&super::queue::key(p));
            }
        }
        queued
            .pod
            .status
            .get_or_insert_with(Default::default)
            .nominated_node_name = nominated.clone();
        match nominated {
            Some(_) => self.cache.set_nominated(queued.pod.clone()),
            None => self.cache.remove_nominated(&key),
        }
        tokio::spawn(failure::report(
            self.client.clone(),
            self.recorder.clone(),
            failure::Failure {
                pod: seen,
                why,
                denominated,
            },
        ));
        self.queue.requeue_unschedulable(queued, Instant::now());
    }

    fn assume_and_bind(&mut self, queued: Queued, node: String) {
        let mut pod = queued.pod.clone();
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.clone());
        }
        let key = key(&pod);
        self.cache.assume(pod);
        tokio::spawn(bind::bind(
            self.client.clone(),
            self.recorder.clone(),
            self.bindings.clone(),
            queued.pod.clone(),
            node,
            self.failed_tx.clone(),
        ));
        self.binding.insert(key, queued);
    }

    fn binding_failed(&mut self, failed: BindFailed) {
        self.cache.forget(&failed.key);
        if let Some(queued) = self.binding.remove(&failed.key) {
            self.queue.requeue_backoff(queued, Instant::now());
        }
    }
}

fn pdb_key(pdb: &PodDisruptionBudget) -> Key {
    (
        pdb.metadata.namespace.clone().unwrap_or_default(),
        pdb.metadata.name.clone().unwrap_or_default(),
    )
}

/// Whether this scheduler places `pod`.
fn ours(pod: &Pod) -> bool {
    matches!(
        pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
        None | Some("") | Some(SCHEDULER_NAME)
    )
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn has_pod_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some())
}
