//! The watches the scheduler keeps, merged into one stream of [`Change`]s for its loop:
//! pods and nodes (the decisions' input), PodDisruptionBudgets (preemption), claims,
//! volumes and StorageClasses ([`super::volumes`]), namespaces (their labels, for pod
//! affinity's `namespaceSelector`) and the selectors of Services, ReplicaSets,
//! StatefulSets and ReplicationControllers (default topology spreading).
//!
//! Each watch relists after an error, as kube-runtime's watcher does; [`apply_to_map`]
//! keeps a map in step with one, dropping what a relist no longer shows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::queue::Key;
use super::selector::Labels;
use super::snapshot::WorkloadSelector;

/// A change seen through one of the watches.
pub enum Change {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Pdb(Box<watcher::Event<PodDisruptionBudget>>),
    Claim(Box<watcher::Event<PersistentVolumeClaim>>),
    Volume(Box<watcher::Event<PersistentVolume>>),
    Class(Box<watcher::Event<StorageClass>>),
    Namespace(Box<watcher::Event<Namespace>>),
    /// A Service's or workload's selector, by kind.
    Workload(&'static str, Box<watcher::Event<(Key, WorkloadSelector)>>),
}

fn watch<K>(client: &Client) -> BoxStream<'static, watcher::Event<K>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
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

/// The selector of each object of kind `K`, as a stream of [`Change::Workload`].
fn selectors<K>(
    client: &Client,
    selector: fn(&K) -> Option<LabelSelector>,
) -> BoxStream<'static, Change>
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    watch::<K>(client)
        .map(move |event| {
            let entry = move |object: K| {
                let key = keyed(object.clone()).0;
                let selector = WorkloadSelector {
                    namespace: key.0.clone(),
                    selector: selector(&object).unwrap_or_default(),
                };
                (key, selector)
            };
            let event = match event {
                watcher::Event::Apply(o) => watcher::Event::Apply(entry(o)),
                watcher::Event::Delete(o) => watcher::Event::Delete(entry(o)),
                watcher::Event::InitApply(o) => watcher::Event::InitApply(entry(o)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            };
            Change::Workload(kind, Box::new(event))
        })
        .boxed()
}

fn match_labels(labels: Option<&BTreeMap<String, String>>) -> Option<LabelSelector> {
    labels.map(|l| LabelSelector {
        match_labels: Some(l.clone()),
        match_expressions: None,
    })
}

/// Every watch the scheduler needs, merged.
pub fn changes(client: &Client) -> BoxStream<'static, Change> {
    stream::select_all([
        watch::<Pod>(client)
            .map(|e| Change::Pod(Box::new(e)))
            .boxed(),
        watch::<Node>(client)
            .map(|e| Change::Node(Box::new(e)))
            .boxed(),
        watch::<PodDisruptionBudget>(client)
            .map(|e| Change::Pdb(Box::new(e)))
            .boxed(),
        watch::<PersistentVolumeClaim>(client)
            .map(|e| Change::Claim(Box::new(e)))
            .boxed(),
        watch::<PersistentVolume>(client)
            .map(|e| Change::Volume(Box::new(e)))
            .boxed(),
        watch::<StorageClass>(client)
            .map(|e| Change::Class(Box::new(e)))
            .boxed(),
        watch::<Namespace>(client)
            .map(|e| Change::Namespace(Box::new(e)))
            .boxed(),
        selectors::<Service>(client, |s| {
            match_labels(s.spec.as_ref().and_then(|s| s.selector.as_ref()))
        }),
        selectors::<ReplicationController>(client, |r| {
            match_labels(r.spec.as_ref().and_then(|s| s.selector.as_ref()))
        }),
        selectors::<ReplicaSet>(client, |r| r.spec.as_ref().map(|s| s.selector.clone())),
        selectors::<StatefulSet>(client, |s| s.spec.as_ref().map(|s| s.selector.clone())),
    ])
    .boxed()
}

/// A namespaced object under its (namespace, name).
pub fn keyed<K: Resource>(object: K) -> (Key, K) {
    let meta = object.meta();
    let key = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    (key, object)
}

/// A cluster-scoped object under its name.
pub fn named<K: Resource>(object: K) -> (String, K) {
    (object.meta().name.clone().unwrap_or_default(), object)
}

/// A namespace's labels under its name.
pub fn namespace_labels(namespace: Namespace) -> (String, Labels) {
    let (name, namespace) = named(namespace);
    (name, namespace.metadata.labels.unwrap_or_default())
}

/// Applies one watch event to `map`, whose entries `entry` makes from objects; after a
/// relist (`relisting` collects what it shows), what it did not show is dropped.
pub fn apply_to_map<T, Q: Eq + Hash + Clone, V>(
    map: &mut HashMap<Q, V>,
    relisting: &mut Option<HashSet<Q>>,
    event: watcher::Event<T>,
    entry: impl Fn(T) -> (Q, V),
) {
    match event {
        watcher::Event::Init => *relisting = Some(HashSet::new()),
        watcher::Event::InitApply(object) => {
            let (k, v) = entry(object);
            if let Some(seen) = relisting {
                seen.insert(k.clone());
            }
            map.insert(k, v);
        }
        watcher::Event::InitDone => {
            if let Some(seen) = relisting.take() {
                map.retain(|k, _| seen.contains(k));
            }
        }
        watcher::Event::Apply(object) => {
            let (k, v) = entry(object);
            map.insert(k, v);
        }
        watcher::Event::Delete(object) => {
            map.remove(&entry(object).0);
        }
    }
}
