//! Controllers: the reconcile loops of kube-controller-manager, run inside `kedge server` as
//! in-process API clients (DESIGN.md rule 1) on kube-runtime (watcher → reflector →
//! `Controller` calling `reconcile(object) -> Result<Action>`), one file per controller.
//!
//! Only the server holding the `kedge-controller-manager` Lease runs them ([`leader`]), so
//! that in a cluster of several servers each object has one controller acting on it.
//!
//! Must not touch: the store or the API's insides. Everything goes through the API.

pub mod cron_job;
mod daemon_set;
mod deployment;
mod endpoint_slice;
mod endpoints;
pub mod events;
pub mod expectations;
mod garbage_collector;
mod job;
pub mod leader;
pub mod local_path;
mod namespace;
mod node_ipam;
mod node_lifecycle;
pub mod ownership;
mod persistent_volume;
pub mod pods;
mod replica_set;
pub mod revisions;
mod root_ca;
mod service_account;
mod service_endpoints;
mod service_lb;
mod stateful_set;
mod ttl_after_finished;
mod volume_match;
mod volume_protection;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::ready;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryFuture};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::Router;

/// Who the controllers are to the API, as upstream's kube-controller-manager.
pub const USER: &str = "system:kube-controller-manager";

/// How long a failed reconcile waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// A failed API call of a controller.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct ControllerError {
    /// What was being done, naming the object.
    action: String,
    #[source]
    source: kube::Error,
}

impl ControllerError {
    fn new(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ControllerError {
        let action = action.into();
        move |source| ControllerError { action, source }
    }

    /// Whether the write lost a race with another writer (409): worth trying again soon,
    /// not worth a warning.
    fn is_conflict(&self) -> bool {
        ownership::conflict(&self.source)
    }
}

/// The error policy every controller shares: say what failed, try again a little later.
fn retry_later<K>(_object: Arc<K>, error: &ControllerError, _context: Arc<impl Sized>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// The error policy of controllers that write objects others write too: a write conflict
/// (the cache was behind) is retried at once, as upstream's rate-limited queue starts with
/// milliseconds; any other failure a little later.
fn retry_soon_on_conflict<K>(
    _object: Arc<K>,
    error: &ControllerError,
    _context: Arc<impl Sized>,
) -> Action {
    if error.is_conflict() {
        tracing::debug!(%error, "reconcile hit a conflict; retrying");
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Runs `reconcile` over every namespace, also waking a namespace up when its object of kind
/// `K` named `object` changes or goes: the shape of the controllers that keep one such
/// object in every namespace.
async fn run_per_namespace<K, C, F, Fut>(
    controller: &str,
    client: &Client,
    object: &str,
    reconcile: F,
    context: C,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(Arc<Namespace>, Arc<C>) -> Fut,
    Fut: TryFuture<Ok = Action, Error = ControllerError> + Send + 'static,
{
    let results = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<K>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={object}")),
        |object: K| {
            object
                .meta()
                .namespace
                .clone()
                .map(|namespace| ObjectRef::new(&namespace))
        },
    )
    .run(reconcile, retry_later, Arc::new(context));
    drive(controller, results).await;
}

/// A tick whenever an object of `events` appears, goes, or changes in `fingerprint` (so
/// that e.g. node heartbeats or a controller's own status writes do not wake every object it
/// reconciles), and after every (re)list: the trigger for `reconcile_all_on`.
pub(crate) fn changes<K, E>(
    events: impl Stream<Item = Result<watcher::Event<K>, E>> + Send + 'static,
    fingerprint: fn(&K) -> u64,
) -> impl Stream<Item = ()> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    events.filter_map(move |event| {
        let id = |o: &K| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        let changed = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let print = fingerprint(&o);
                seen.insert(id(&o), print) != Some(print)
            }
            Ok(watcher::Event::Delete(o)) => seen.remove(&id(&o)).is_some(),
            Ok(watcher::Event::InitDone) => true,
            _ => false,
        };
        ready(changed.then_some(()))
    })
}

/// `value`'s hash, for fingerprints.
pub(crate) fn hash(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// This moment as the API writes times in objects (RFC 3339, whole seconds, UTC), for
/// the timestamps controllers put in annotations and status.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Merge-patches `status` onto `object`'s status subresource; an object already gone is
/// no error (its controller has nothing left to report).
async fn merge_status<K>(
    client: &Client,
    object: &K,
    status: serde_json::Value,
) -> Result<(), ControllerError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    match api
        .patch_status(
            &object.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"status": status})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ControllerError::new(format!(
            "updating the status of {} {}",
            K::kind(&()),
            object.name_any()
        ))(e)),
    }
}

/// A count for a status field upstream marks omitempty: zero leaves it out (in a merge
/// patch, null removes it).
fn omit_zero(count: i32) -> serde_json::Value {
    if count == 0 {
        serde_json::Value::Null
    } else {
        serde_json::json!(count)
    }
}

/// The name of a namespace that should get its objects; `None` once it is going away.
fn to_fill(namespace: &Namespace) -> Option<String> {
    (!terminating(namespace)).then(|| namespace.name_any())
}

/// Whether a namespace is going away: nothing new is created in it.
fn terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
}

/// Drives a controller's result stream until it ends, logging failures outside reconcile
/// (watches that broke and are being re-established).
async fn drive<T: Debug, E: std::fmt::Display>(
    name: &str,
    results: impl Stream<Item = Result<T, E>>,
) {
    results
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(controller = name, %error, "controller event");
            }
        })
        .await;
}

/// What the controllers take from `kedge server`'s flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--cluster-cidr`: the range node pod ranges are cut from.
    pub cluster_cidr: String,
    /// `--node-monitor-grace-period`: how long a silent node stays Ready.
    pub node_monitor_grace_period: Duration,
    /// Whether ServiceLB runs (`--disable servicelb` turns it off).
    pub service_lb: bool,
    /// Where the local-path provisioner keeps volumes.
    pub storage: local_path::Storage,
}

/// Runs the controllers whenever this server (`identity`) holds the controller-manager
/// lease; `ca_pem` is the cluster CA published in every namespace. Never returns.
pub async fn run(router: Arc<Router>, identity: String, ca_pem: String, settings: Settings) {
    let client = crate::client::local::in_process(router, USER, &[]);
    let elector = leader::LeaderElector::new(client.clone(), identity);
    elector
        .run(move || run_all(client.clone(), ca_pem.clone(), settings.clone()))
        .await
}

async fn run_all(client: Client, ca_pem: String, settings: Settings) {
    let service_lb = {
        let (client, enabled) = (client.clone(), settings.service_lb);
        async move {
            if enabled {
                service_lb::run(client).await
            }
        }
    };
    tokio::join!(
        service_lb,
        node_lifecycle::run(client.clone(), settings.node_monitor_grace_period),
        node_ipam::run(client.clone(), settings.cluster_cidr),
        service_account::run(client.clone()),
        root_ca::run(client.clone(), ca_pem),
        replica_set::run_replica_sets(client.clone()),
        replica_set::run_replication_controllers(client.clone()),
        deployment::run(client.clone()),
        stateful_set::run(client.clone()),
        daemon_set::run(client.clone()),
        namespace::run(client.clone()),
        job::run(client.clone()),
        cron_job::run(client.clone()),
        ttl_after_finished::run(client.clone()),
        garbage_collector::run(client.clone()),
        endpoints::run(client.clone()),
        endpoint_slice::run(client.clone()),
        persistent_volume::run(client.clone()),
        local_path::run(client.clone(), settings.storage),
        volume_protection::run(client),
    );
}
