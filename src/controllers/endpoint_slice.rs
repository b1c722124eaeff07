//! The EndpointSlice controller: every Service with a selector gets IPv4 EndpointSlices
//! (named `<service>-<random>`, owned by the Service, labelled with its name and this
//! controller) holding its pods' endpoints with the ready/serving/terminating conditions,
//! one group of slices per distinct port mapping (pods resolving a named port to different
//! numbers land in different slices), at most [`MAX_ENDPOINTS`] endpoints per slice. As
//! upstream's reconciler, endpoints stay in the slice they are in, new ones fill slices with
//! room first, emptied slices go, and a Service without endpoints keeps one empty
//! placeholder slice. Only slices whose content changes are written. The service proxy and
//! cluster DNS read these slices.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use super::service_endpoints::{self as se, Tracker};
use super::ControllerError;

pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS: usize = 100;

/// The node label an endpoint's zone comes from.
const ZONE: &str = "topology.kubernetes.io/zone";
/// How soon a Service with pods on unknown nodes is looked at again.
const NODE_MISSING_RETRY: Duration = Duration::from_secs(5);

struct Context {
    client: Client,
    tracker: Arc<Tracker>,
    nodes: reflector::Store<Node>,
}

pub async fn run(client: Client) {
    let tracker = Arc::new(Tracker::default());
    let (nodes, writer) = reflector::store();
    let node_cache = reflector::reflector(
        writer,
        watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let context = Context {
        client: client.clone(),
        tracker: tracker.clone(),
        nodes,
    };
    let ours = || watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER}"));
    let service_of = |s: &EndpointSlice| s.labels().get(SERVICE_NAME).cloned();
    tokio::join!(
        super::drive("endpointslice-nodes", node_cache),
        se::run_for_services::<EndpointSlice, _, _, _>(
            "endpointslice",
            &client,
            ours(),
            service_of,
            tracker,
            reconcile,
            context,
        ),
        se::run_cleanup::<EndpointSlice>(
            "endpointslice-cleanup",
            &client,
            ours(),
            |_| true,
            service_of,
        ),
    );
}

/// A slice's port mapping, in a canonical order: the key slices are grouped by.
type Ports = Vec<(String, i32, String, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> Ports {
    let mut key: Ports = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

fn ports_of(key: &Ports) -> Vec<EndpointPort> {
    key.iter()
        .map(|(name, port, protocol, app_protocol)| EndpointPort {
            name: Some(name.clone()),
            port: Some(*port),
            protocol: Some(protocol.clone()),
            app_protocol: app_protocol.clone(),
        })
        .collect()
}

/// An endpoint's identity across syncs: its pod's uid.
fn endpoint_key(endpoint: &Endpoint) -> String {
    endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_else(|| endpoint.addresses.join(","))
}

/// What is known of the nodes pods run on: a node's zone (`None` for a node without
/// one), or no entry when the node does not exist.
type Zones = BTreeMap<String, Option<String>>;

/// The endpoints each port mapping should hold, by pod uid (upstream's `podToEndpoint`).
/// Pods on nodes that do not exist are left out unless not-ready addresses are published.
fn desired(
    service: &Service,
    pods: &[Pod],
    zones: &Zones,
) -> BTreeMap<Ports, BTreeMap<String, Endpoint>> {
    let publish = se::publish_not_ready(service);
    let mut out: BTreeMap<Ports, BTreeMap<String, Endpoint>> = BTreeMap::new();
    for pod in pods {
        if !se::should_be_in_endpoints(pod, true) {
            continue;
        }
        let node = se::node_name(pod).unwrap_or_default();
        let zone = match zones.get(&node) {
            Some(zone) => zone.clone(),
            None if publish => None,
            None => continue,
        };
        let Some(ip) = se::pod_ipv4(pod) else {
            continue;
        };
        let ports: Vec<EndpointPort> = se::ports(service)
            .iter()
            .filter_map(|port| {
                Some(EndpointPort {
                    name: Some(port.name.clone().unwrap_or_default()),
                    port: Some(se::find_port(pod, port)?),
                    protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".to_string())),
                    app_protocol: port.app_protocol.clone(),
                })
            })
            .collect();
        let serving = publish || se::is_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let endpoint = Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: se::hostname(pod, service),
            node_name: se::node_name(pod),
            target_ref: Some(se::target_ref(pod)),
            zone,
            ..Endpoint::default()
        };
        out.entry(ports_key(&ports))
            .or_default()
            .insert(endpoint_key(&endpoint), endpoint);
    }
    out
}

/// What a sync decided: slices to create, update and delete.
#[derive(Default)]
struct Plan {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<String>,
}

/// Fits the desired endpoints into the existing slices of `service` (upstream's
/// `reconcileByPortMapping`), changing as few slices as it can.
fn plan(service: &Service, existing: Vec<EndpointSlice>, pods: &[Pod], zones: &Zones) -> Plan {
    let mut plan = Plan::default();
    let labels = slice_labels(service);
    let uid = service.uid();
    let mut groups: BTreeMap<Ports, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        let owned = slice
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        if owned && slice.address_type == "IPv4" {
            let key = ports_key(slice.ports.as_deref().unwrap_or_default());
            groups.entry(key).or_default().push(slice);
        } else {
            // A previous Service of this name's, or not ours to keep.
            plan.delete.push(slice.name_any());
        }
    }
    let mut desired = desired(service, pods, zones);
    let any_endpoints = !desired.is_empty();
    // The port mappings present now and before, each settled on its own.
    let keys: Vec<Ports> = groups.keys().chain(desired.keys()).cloned().collect();
    let mut settled = std::collections::BTreeSet::new();
    let mut emptied = Vec::new();
    for key in keys {
        if !settled.insert(key.clone()) {
            continue;
        }
        let mut wanted = desired.remove(&key).unwrap_or_default();
        let mut slices = groups.remove(&key).unwrap_or_default();
        let mut changed = vec![false; slices.len()];
        // Endpoints stay where they are, updated; gone ones leave.
        for (i, slice) in slices.iter_mut().enumerate() {
            let before = slice.endpoints.len();
            let mut kept = Vec::with_capacity(before);
            for endpoint in slice.endpoints.drain(..) {
                match wanted.remove(&endpoint_key(&endpoint)) {
                    Some(new) => {
                        changed[i] |= new != endpoint;
                        kept.push(new);
                    }
                    None => changed[i] = true,
                }
            }
            slice.endpoints = kept;
            changed[i] |= slice.labels() != &labels;
        }
        // New endpoints fill slices with room, then new slices.
        let mut fresh = wanted.into_values();
        for (i, slice) in slices.iter_mut().enumerate() {
            while slice.endpoints.len() < MAX_ENDPOINTS {
                let Some(endpoint) = fresh.next() else { break };
                slice.endpoints.push(endpoint);
                changed[i] = true;
            }
        }
        let fresh: Vec<Endpoint> = fresh.collect();
        for chunk in fresh.chunks(MAX_ENDPOINTS) {
            plan.create
                .push(new_slice(service, &labels, &key, chunk.to_vec()));
        }
        for (slice, changed) in slices.into_iter().zip(changed) {
            if slice.endpoints.is_empty() {
                emptied.push(slice);
            } else if changed {
                let mut slice = slice;
                slice.metadata.labels = Some(labels.clone());
                plan.update.push(slice);
            }
        }
    }
    // A Service without endpoints keeps one empty slice without ports, as upstream: an
    // existing one if there is one.
    if !any_endpoints {
        match emptied
            .iter()
            .position(|s| s.ports.as_deref().unwrap_or_default().is_empty())
        {
            Some(i) => {
                let slice = emptied.remove(i);
                if slice.labels() != &labels {
                    let mut slice = slice;
                    slice.metadata.labels = Some(labels.clone());
                    plan.update.push(slice);
                }
            }
            None => plan
                .create
                .push(new_slice(service, &labels, &Vec::new(), Vec::new())),
        }
    }
    plan.delete
        .extend(emptied.iter().map(ResourceExt::name_any));
    plan
}

fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = se::endpoint_labels(service);
    labels.insert(SERVICE_NAME.to_string(), service.name_any());
    labels.insert(MANAGED_BY.to_string(), CONTROLLER.to_string());
    labels
}

fn new_slice(
    service: &Service,
    labels: &BTreeMap<String, String>,
    ports: &Ports,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", service.name_any())),
            namespace: service.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![se::owner(service)]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".to_string(),
        endpoints,
        ports: (!ports.is_empty()).then(|| ports_of(ports)),
    }
}

async fn reconcile(
    service: Arc<Service>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    if !se::managed(&service) {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let pods = se::selected_pods(&context.client, &service).await?;
    context.tracker.record(&service, &pods);
    let api: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
    let failed = |what: &str| format!("{what} the EndpointSlices of Service {namespace}/{name}");
    let existing = api
        .list(
            &ListParams::default()
                .labels(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={CONTROLLER}")),
        )
        .await
        .map_err(ControllerError::new(failed("listing")))?
        .items;
    let _ = context.nodes.wait_until_ready().await;
    let zones: Zones = pods
        .iter()
        .filter_map(se::node_name)
        .filter_map(|node| {
            let found = context.nodes.get(&ObjectRef::new(&node))?;
            Some((node, found.labels().get(ZONE).cloned()))
        })
        .collect();
    let on_missing_nodes = pods
        .iter()
        .filter_map(se::node_name)
        .any(|node| !zones.contains_key(&node));
    let plan = plan(&service, existing, &pods, &zones);
    let trigger = super::now();
    let conflicted =
        |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 404);
    for mut slice in plan.create {
        slice
            .annotations_mut()
            .insert(se::TRIGGER_TIME.to_string(), trigger.clone());
        match api.create(&PostParams::default(), &slice).await {
            Ok(_) => {}
            // The namespace is going away.
            Err(kube::Error::Api(s)) if s.code == 403 => return Ok(Action::await_change()),
            Err(e) => return Err(ControllerError::new(failed("creating"))(e)),
        }
    }
    for mut slice in plan.update {
        slice
            .annotations_mut()
            .insert(se::TRIGGER_TIME.to_string(), trigger.clone());
        match api
            .replace(&slice.name_any(), &PostParams::default(), &slice)
            .await
        {
            Ok(_) => {}
            // Changed meanwhile: look again soon, with fresh slices.
            Err(e) if conflicted(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(ControllerError::new(failed("updating"))(e)),
        }
    }
    for slice in plan.delete {
        match api.delete(&slice, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(ControllerError::new(failed("deleting"))(e)),
        }
    }
    if on_missing_nodes {
        // Their nodes may yet appear (or the pods be removed).
        return Ok(Action::requeue(NODE_MISSING_RETRY));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(i: usize, port: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": "ns", "uid": format!("u{i}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"podIP": format!("10.0.{}.{}", i / 200, i % 200 + 1), "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn zones() -> Zones {
        [("n1".to_string(), Some("z1".to_string()))].into()
    }

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "ns", "uid": "svc"},
            "spec": {"selector": {"app": "a"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
        }))
        .unwrap()
    }

    #[test]
    fn slices_split_per_port_mapping_and_size() {
        let mut pods: Vec<Pod> = (0..150).map(|i| pod(i, 8080)).collect();
        pods.push(pod(999, 9090));
        let plan = plan(&service(), Vec::new(), &pods, &zones());
        let sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 50, 1]);
        assert_eq!(plan.create[0].endpoints[0].zone.as_deref(), Some("z1"));
        assert!(plan.update.is_empty() && plan.delete.is_empty());
    }

    #[test]
    fn unchanged_slices_are_not_rewritten_and_gone_endpoints_leave() {
        let pods: Vec<Pod> = (0..3).map(|i| pod(i, 8080)).collect();
        let mut slices = plan(&service(), Vec::new(), &pods, &zones()).create;
        slices[0].metadata.name = Some("s-abc".into());
        let again = plan(&service(), slices.clone(), &pods, &zones());
        assert!(again.create.is_empty() && again.update.is_empty() && again.delete.is_empty());
        let fewer = plan(&service(), slices.clone(), &pods[..2], &zones());
        assert_eq!(fewer.update.len(), 1);
        assert_eq!(fewer.update[0].endpoints.len(), 2);
        let none = plan(&service(), slices, &[], &zones());
        assert_eq!(none.delete, vec!["s-abc".to_string()]);
        assert_eq!(none.create.len(), 1, "an empty placeholder replaces it");
        let mut placeholder = none.create[0].clone();
        placeholder.metadata.name = Some("s-def".into());
        let idle = plan(&service(), vec![placeholder], &[], &zones());
        assert!(idle.create.is_empty() && idle.update.is_empty() && idle.delete.is_empty());
    }
}
