//! The garbage collector, as upstream's: watches every resource that can be listed, watched
//! and deleted (found through discovery, custom resources included, events excepted), keeps
//! an ownership [graph] of them, and acts when an owner goes:
//! - dependents whose owners are all gone are deleted (background deletion);
//! - an owner deleted in the foreground (`foregroundDeletion` finalizer) has its dependents
//!   deleted, and its finalizer removed once no `blockOwnerDeletion` dependent is left;
//! - an owner deleted with `orphan` has its ownerReferences removed from its dependents, then
//!   its finalizer.
//!
//! Nothing is deleted on the graph's word alone: the [worker] reads the dependent and each of
//! its owners live first. The graph keeps only metadata (uid, owner references, deletion
//! state), not the objects.

mod graph;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::DynamicObject;
use kube::discovery::{verbs, ApiResource, Discovery, Scope};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::events::Recorder;
use graph::{Graph, Node};

/// How often discovery is run again to watch resources that appeared (custom resources).
const REDISCOVER: Duration = Duration::from_secs(30);

/// Resources upstream's collector leaves alone (DefaultIgnoredResources).
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// A served kind: its resource and whether its objects live in namespaces.
#[derive(Clone)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

/// The shared state of the collector's watchers and worker.
struct Collector {
    client: Client,
    recorder: Recorder,
    graph: Mutex<Graph>,
    queue: Queue,
    /// (group, kind) → resource, for resolving owner references.
    kinds: Mutex<HashMap<(String, String), Kind>>,
    /// Watchers that have not listed their resource once yet, plus one until the first
    /// discovery has started them all; the worker waits for none, so that orphaning sees
    /// every dependent.
    unsynced: AtomicUsize,
}

pub async fn run(client: Client) {
    let collector = Arc::new(Collector {
        recorder: Recorder::new(client.clone(), "garbage-collector-controller"),
        client,
        graph: Mutex::new(Graph::default()),
        queue: Queue::default(),
        kinds: Mutex::new(HashMap::new()),
        unsynced: AtomicUsize::new(1),
    });
    tokio::join!(watch_resources(collector.clone()), worker::run(collector));
}

/// Runs discovery now and every [`REDISCOVER`], keeping one watcher per collectable resource.
async fn watch_resources(collector: Arc<Collector>) {
    let mut watchers: HashMap<(String, String), JoinHandle<()>> = HashMap::new();
    let mut discovered = false;
    loop {
        match Discovery::new(collector.client.clone()).run().await {
            Ok(discovery) => {
                let mut kinds = HashMap::new();
                let mut seen = HashSet::new();
                for group in discovery.groups() {
                    for (resource, capabilities) in group.recommended_resources() {
                        let namespaced = capabilities.scope == Scope::Namespaced;
                        let key = (resource.group.clone(), resource.kind.clone());
                        kinds.insert(
                            key.clone(),
                            Kind {
                                resource: resource.clone(),
                                namespaced,
                            },
                        );
                        let collectable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                            .iter()
                            .all(|v| capabilities.supports_operation(v))
                            && !IGNORED.contains(&(&resource.group, &resource.plural));
                        if !collectable {
                            continue;
                        }
                        seen.insert(key.clone());
                        watchers.entry(key).or_insert_with(|| {
                            collector.unsynced.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(watch(collector.clone(), resource))
                        });
                    }
                }
                *collector.kinds.lock().expect("kinds") = kinds;
                if !discovered {
                    discovered = true;
                    collector.unsynced.fetch_sub(1, Ordering::SeqCst);
                }
                // Resources no longer served (a CRD deleted): stop watching them.
                watchers.retain(|key, task| {
                    let keep = seen.contains(key);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
            Err(error) => tracing::warn!(%error, "garbage collector: discovery failed"),
        }
        // Until discovery worked once nothing is collected: try again soon.
        let wait = if discovered {
            REDISCOVER
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep(wait).await;
    }
}

/// Feeds the graph with one resource's objects, waking the worker for what changed.
async fn watch(collector: Arc<Collector>, resource: ApiResource) {
    let api: Api<DynamicObject> = Api::all_with(collector.client.clone(), &resource);
    let mut events = watcher(api, watcher::Config::default()).boxed();
    let mut synced = false;
    // The uids a re-list found; those the graph holds beyond them were deleted unseen.
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, kind = %resource.kind, "garbage collector watch");
                continue;
            }
        };
        let init_done = matches!(event, watcher::Event::InitDone);
        let wake = {
            let mut graph = collector.graph.lock().expect("graph");
            match event {
                watcher::Event::Init => {
                    listed.clear();
                    Vec::new()
                }
                watcher::Event::InitApply(object) | watcher::Event::Apply(object) => {
                    match Node::of(&resource, &object) {
                        Some(node) => {
                            listed.insert(node.identity.uid.clone());
                            graph.upsert(node)
                        }
                        None => Vec::new(),
                    }
                }
                watcher::Event::Delete(object) => object
                    .metadata
                    .uid
                    .as_deref()
                    .map(|uid| graph.remove(uid))
                    .unwrap_or_default(),
                watcher::Event::InitDone => {
                    let lost: Vec<String> = graph
                        .uids_of(&resource)
                        .into_iter()
                        .filter(|uid| !listed.contains(uid))
                        .collect();
                    lost.iter().flat_map(|uid| graph.remove(uid)).collect()
                }
            }
        };
        collector.queue.add_all(wake);
        if init_done && !synced {
            synced = true;
            collector.unsynced.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Collector {
    /// Looks at `uid` again after `delay` (a failed attempt).
    fn retry(self: &Arc<Self>, uid: String, delay: Duration) {
        let collector = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            collector.queue.add(uid);
        });
    }
}

/// The worker's queue of uids to look at: each uid at most once in it.
#[derive(Default)]
struct Queue {
    pending: Mutex<(VecDeque<String>, HashSet<String>)>,
    notify: Notify,
}

impl Queue {
    fn add(&self, uid: String) {
        let mut pending = self.pending.lock().expect("queue");
        if pending.1.insert(uid.clone()) {
            pending.0.push_back(uid);
            self.notify.notify_one();
        }
    }

    fn add_all(&self, uids: Vec<String>) {
        for uid in uids {
            self.add(uid);
        }
    }

    async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut pending = self.pending.lock().expect("queue");
                if let Some(uid) = pending.0.pop_front() {
                    pending.1.remove(&uid);
                    return uid;
                }
            }
            notified.await;
        }
    }
}
