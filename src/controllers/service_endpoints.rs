//! What the Endpoints and EndpointSlice controllers share: which pods back a Service and
//! how (upstream's `endpointsliceutil`/`podutil` helpers: `ShouldPodBeInEndpoints`,
//! `IsPodReady`, `FindPort`, `ShouldSetHostname`), and the shape of running them — a
//! Service controller woken by the pods its selector picks (and picked before, so that a
//! pod whose labels changed leaves), plus a cleanup loop that removes what a controller wrote
//! for a Service once the Service is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::TryFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::ControllerError;

/// When the pods behind an Endpoints or EndpointSlice last changed (RFC 3339).
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The label that marks a headless Service's endpoints.
pub const HEADLESS: &str = "service.kubernetes.io/headless";

/// Whether the controllers keep endpoints for `service`: it selects pods and is not an
/// ExternalName alias. Services without a selector (the `kubernetes` Service among them)
/// have their endpoints written by someone else.
pub fn managed(service: &Service) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    spec.selector.is_some() && spec.type_.as_deref() != Some("ExternalName")
}

pub fn headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

pub fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

pub fn ports(service: &Service) -> &[ServicePort] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The pods `service` selects, by listing its namespace with its selector.
pub async fn selected_pods(
    client: &Client,
    service: &Service,
) -> Result<Vec<Pod>, ControllerError> {
    let namespace = service.namespace().unwrap_or_default();
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ControllerError::new(format!(
            "listing the pods of Service {namespace}/{}",
            service.name_any()
        )))?;
    Ok(list.items)
}

/// The pod's IPv4 address, if it has one yet.
pub fn pod_ipv4(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let ips = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str());
    status
        .pod_ip
        .as_deref()
        .into_iter()
        .chain(ips)
        .find(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// `ShouldPodBeInEndpoints`: the pod has an address, is not terminating (unless
/// `include_terminating`) and has not finished for good.
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ipv4(pod).is_none() {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// `IsPodReady`: the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// `FindPort`: the pod's port for a Service port — a named target port is looked up among
/// the pod's container ports of the same protocol, a number is taken as it is.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        Some(IntOrString::String(name)) => {
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
        Some(IntOrString::Int(number)) => Some(*number),
        None => Some(port.port),
    }
}

/// `ShouldSetHostname`: a pod's hostname is published when its subdomain names the Service.
pub fn hostname(pod: &Pod, service: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == Some(service.name_any().as_str())
        && pod.namespace() == service.namespace())
    .then(|| hostname.to_string())
}

pub fn node_name(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

pub fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.namespace(),
        name: Some(pod.name_any()),
        uid: pod.uid(),
        ..ObjectReference::default()
    }
}

/// The Service's labels, with the headless marker when it is headless: the labels its
/// endpoints carry.
pub fn endpoint_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.labels().clone();
    labels.remove(HEADLESS);
    if headless(service) {
        labels.insert(HEADLESS.to_string(), String::new());
    }
    labels
}

/// The controller ownerReference an EndpointSlice carries to its Service.
pub fn owner(service: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_string(),
        kind: "Service".to_string(),
        name: service.name_any(),
        uid: service.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Which pods each Service selected when last reconciled, so that a pod that stops
/// matching (its labels changed) still wakes the Services it was in.
#[derive(Default)]
pub struct Tracker(Mutex<HashMap<ObjectRef<Service>, HashSet<String>>>);

impl Tracker {
    pub fn record(&self, service: &Service, pods: &[Pod]) {
        let names = pods.iter().map(ResourceExt::name_any).collect();
        self.0
            .lock()
            .expect("tracker lock")
            .insert(ObjectRef::from_obj(service), names);
    }

    /// Forgets the Services that are gone.
    fn prune(&self, exists: impl Fn(&ObjectRef<Service>) -> bool) {
        self.0
            .lock()
            .expect("tracker lock")
            .retain(|service, _| exists(service));
    }

    fn had(&self, service: &ObjectRef<Service>, pod: &str) -> bool {
        self.0
            .lock()
            .expect("tracker lock")
            .get(service)
            .is_some_and(|pods| pods.contains(pod))
    }
}

/// Whether a Service's selector picks these labels.
fn selects(service: &Service, labels: &BTreeMap<String, String>) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// Runs `reconcile` over every Service, woken also by changes of the pods it selects (or
/// selected, per `tracker`) and of its own objects of kind `K` (found by `service_of`).
pub async fn run_for_services<K, C, F, Fut>(
    controller: &str,
    client: &Client,
    owned: watcher::Config,
    service_of: fn(&K) -> Option<String>,
    tracker: Arc<Tracker>,
    reconcile: F,
    context: C,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: FnMut(Arc<Service>, Arc<C>) -> Fut,
    Fut: TryFuture<Ok = Action, Error = ControllerError> + Send + 'static,
{
    let services = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = services.store();
    let results = services
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let namespace = pod.namespace().unwrap_or_default();
                let name = pod.name_any();
                tracker.prune(|service| store.get(service).is_some());
                store
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .filter(|r| {
                        tracker.had(r, &name)
                            || store.get(r).is_some_and(|s| selects(&s, pod.labels()))
                    })
                    .collect::<Vec<_>>()
            },
        )
        .watches(Api::<K>::all(client.clone()), owned, move |object: K| {
            let namespace = object.meta().namespace.clone()?;
            service_of(&object).map(|name| ObjectRef::new(&name).within(&namespace))
        })
        .run(reconcile, super::retry_later, Arc::new(context));
    super::drive(controller, results).await;
}

struct Cleanup<K> {
    client: Client,
    is_ours: fn(&K) -> bool,
    service_of: fn(&K) -> Option<String>,
}

/// Deletes the objects of kind `K` a controller wrote (`is_ours`) for a Service
/// (`service_of`) once that Service is gone — as upstream's Endpoints controller does on a
/// Service's deletion and for leftovers at start.
pub async fn run_cleanup<K>(
    controller: &str,
    client: &Client,
    config: watcher::Config,
    is_ours: fn(&K) -> bool,
    service_of: fn(&K) -> Option<String>,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let objects = Controller::new(Api::<K>::all(client.clone()), config);
    let store = objects.store();
    let results = objects
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |service: Service| {
                let namespace = service.namespace();
                let name = service.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|o| {
                        o.meta().namespace == namespace
                            && service_of(o).as_deref() == Some(name.as_str())
                    })
                    .map(|o| ObjectRef::from_obj(o.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            cleanup::<K>,
            super::retry_later,
            Arc::new(Cleanup {
                client: client.clone(),
                is_ours,
                service_of,
            }),
        );
    super::drive(controller, results).await;
}

async fn cleanup<K>(object: Arc<K>, context: Arc<Cleanup<K>>) -> Result<Action, ControllerError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    let Some(service) = (context.service_of)(&object).filter(|_| (context.is_ours)(&object)) else {
        return Ok(Action::await_change());
    };
    let what = format!("{} {namespace}/{}", K::kind(&()), object.name_any());
    let services: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
    let found = services
        .get_opt(&service)
        .await
        .map_err(ControllerError::new(format!(
            "reading the Service of {what}"
        )))?;
    // A Service that stopped selecting pods keeps its endpoints, as upstream: someone else
    // may be taking them over.
    if found.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<K> = Api::namespaced(context.client.clone(), &namespace);
    match api
        .delete(&object.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => tracing::info!(object = %what, "deleted the endpoints of a Service that is gone"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => return Err(ControllerError::new(format!("deleting {what}"))(e)),
    }
    Ok(Action::await_change())
}
