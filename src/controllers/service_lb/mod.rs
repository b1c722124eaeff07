//! ServiceLB, k3s's built-in service load balancer: every Service of type LoadBalancer
//! without a `loadBalancerClass` gets the addresses of the nodes that would run its svclb
//! pods in `status.loadBalancer.ingress` (`ipMode: VIP`, as the API defaults it), and the
//! node's service proxy forwards the service ports on them (`crate::net::proxy`). Where the
//! pods would go and which addresses that gives is [`placement`]'s; this file keeps the
//! status in step with Services, Nodes and EndpointSlices, writes only what changed, clears
//! the ingress of a Service that stops being a LoadBalancer, and records k3s's events
//! (`UpdatedLoadBalancer`, `UnAvailableLoadBalancer`) plus one naming the Service that holds
//! a port a newer one wants.
//!
//! `kedge server --disable servicelb` turns it off, as in k3s.

mod placement;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{stream, Stream};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::events::Recorder;
use super::{changes, hash, merge_status, ControllerError};
use placement::{addresses, handles, key, nodes_with_local_endpoints, only_local, Placement};

/// The component k3s's ServiceLB records events as.
const COMPONENT: &str = "service-lb-controller";

struct Context {
    client: Client,
    recorder: Recorder,
    services: Store<Service>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    /// The port-conflict message last recorded per Service uid, so that a conflict is
    /// reported once, not at every resync.
    reported: Mutex<HashMap<String, String>>,
}

pub async fn run(client: Client) {
    let (nodes, node_changes) = cached(&client, node_fingerprint);
    let (slices, slice_changes) = cached(&client, slice_fingerprint);
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let context = Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), COMPONENT),
        services: controller.store(),
        nodes,
        slices,
        reported: Mutex::new(HashMap::new()),
    };
    // A Service's ports or age can move another one's svclb pods: every Service is looked at
    // again when any changes in what placement reads.
    let service_changes = changes(
        watch_all::<Service>(&client).default_backoff(),
        service_fingerprint,
    );
    let changes = stream::select(stream::select(node_changes, slice_changes), service_changes);
    let results = controller.reconcile_all_on(changes).run(
        reconcile,
        super::retry_soon_on_conflict,
        Arc::new(context),
    );
    super::drive("service-lb", results).await;
}

/// A cache of all objects of kind `K`, and its [`changes`].
fn cached<K>(
    client: &Client,
    fingerprint: fn(&K) -> u64,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watch_all(client)).default_backoff();
    (store, changes(events, fingerprint))
}

fn watch_all<K>(
    client: &Client,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default())
}

/// What of a Node placement and addresses read: labels, taints, readiness, addresses.
fn node_fingerprint(node: &Node) -> u64 {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone());
    hash((
        &node.metadata.labels,
        serde_json::to_string(&node.spec).unwrap_or_default(),
        ready,
        serde_json::to_string(&status.and_then(|s| s.addresses.as_ref())).unwrap_or_default(),
    ))
}

/// What of a slice `externalTrafficPolicy: Local` reads: the nodes with ready endpoints.
fn slice_fingerprint(slice: &EndpointSlice) -> u64 {
    let mut ready_on: Vec<&str> = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.node_name.as_deref())
        .collect();
    ready_on.sort_unstable();
    ready_on.dedup();
    hash((slice.labels().get(placement::SERVICE_NAME_LABEL), ready_on))
}

/// What of a Service placement reads: its spec, labels, annotations and age (not status).
fn service_fingerprint(service: &Service) -> u64 {
    hash((
        serde_json::to_string(&service.spec).unwrap_or_default(),
        &service.metadata.labels,
        &service.metadata.annotations,
        service.creation_timestamp().map(|t| t.0.to_string()),
    ))
}

fn current_ingress(service: &Service) -> Vec<LoadBalancerIngress> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default()
}

/// The ingress list as k3s's events print it: `[a b]`.
fn listed(ingress: &[LoadBalancerIngress]) -> String {
    let points: Vec<&str> = ingress
        .iter()
        .map(|i| {
            i.ip.as_deref()
                .or(i.hostname.as_deref())
                .unwrap_or_default()
        })
        .collect();
    format!("[{}]", points.join(" "))
}

async fn reconcile(
    service: Arc<Service>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    // A partial cache would hand ports to the wrong Service or drop nodes: wait for all three.
    for ready in [
        context.services.wait_until_ready().await,
        context.nodes.wait_until_ready().await,
        context.slices.wait_until_ready().await,
    ] {
        if ready.is_err() {
            return Ok(Action::await_change());
        }
    }
    let current = current_ingress(&service);
    let uid = service.uid().unwrap_or_default();
    if !handles(&service) {
        context.reported.lock().expect("reported").remove(&uid);
        let type_ = service.spec.as_ref().and_then(|s| s.type_.as_deref());
        // A LoadBalancer of another class has its own controller; anything else that
        // still shows an ingress was one of ours before it changed type.
        if type_ != Some("LoadBalancer") && !current.is_empty() {
            write_ingress(&context, &service, &[]).await?;
            context
                .recorder
                .normal(&*service, "DeletedLoadBalancer", "Deleted load balancer")
                .await;
        }
        return Ok(Action::await_change());
    }
    let services = context.services.state();
    let nodes = context.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    let placement = placement::place(services.iter().map(|s| &**s), &node_refs)
        .remove(&key(&service))
        .unwrap_or_default();
    let local = only_local(&service)
        .then(|| nodes_with_local_endpoints(&service, context.slices.state().iter().map(|s| &**s)));
    let wanted: Vec<LoadBalancerIngress> =
        addresses(&service, &placement.nodes, &node_refs, local.as_ref())
            .into_iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip),
                ip_mode: Some("VIP".to_string()),
                ..LoadBalancerIngress::default()
            })
            .collect();
    if wanted != current {
        write_ingress(&context, &service, &wanted).await?;
        if wanted.is_empty() {
            let message = "There are no available nodes for LoadBalancer";
            context
                .recorder
                .warning(&*service, "UnAvailableLoadBalancer", message)
                .await;
        } else {
            let message = format!(
                "Updated LoadBalancer with new IPs: {} -> {}",
                listed(&current),
                listed(&wanted)
            );
            context
                .recorder
                .normal(&*service, "UpdatedLoadBalancer", &message)
                .await;
        }
    }
    report_conflicts(&context, &service, &uid, &placement).await;
    // Forget Services that are gone.
    let known: std::collections::HashSet<String> =
        services.iter().filter_map(|s| s.uid()).collect();
    context
        .reported
        .lock()
        .expect("reported")
        .retain(|uid, _| known.contains(uid));
    Ok(Action::await_change())
}

async fn write_ingress(
    context: &Context,
    service: &Service,
    ingress: &[LoadBalancerIngress],
) -> Result<(), ControllerError> {
    let ingress = if ingress.is_empty() {
        serde_json::Value::Null
    } else {
        json!(ingress)
    };
    merge_status(
        &context.client,
        service,
        json!({"loadBalancer": {"ingress": ingress}}),
    )
    .await
}

/// Records, once per distinct situation, that some of the Service's svclb pods cannot run
/// because older Services hold their ports — in the scheduler's words a k3s user reads on
/// the Pending svclb pod, plus who holds what.
async fn report_conflicts(context: &Context, service: &Service, uid: &str, placement: &Placement) {
    let message = conflict_message(placement);
    let previous = {
        let mut reported = context.reported.lock().expect("reported");
        match &message {
            Some(m) => reported.insert(uid.to_string(), m.clone()),
            None => reported.remove(uid),
        }
    };
    let Some(message) = message.filter(|m| previous.as_ref() != Some(m)) else {
        return;
    };
    let reason = if placement.nodes.is_empty() {
        "UnAvailableLoadBalancer"
    } else {
        "PartiallyAvailableLoadBalancer"
    };
    context.recorder.warning(service, reason, &message).await;
}

fn conflict_message(placement: &Placement) -> Option<String> {
    if placement.conflicts.is_empty() {
        return None;
    }
    // node names per (port, holder), in the order found
    let mut held: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut blocked: Vec<&str> = Vec::new();
    for conflict in &placement.conflicts {
        if !blocked.contains(&conflict.node.as_str()) {
            blocked.push(&conflict.node);
        }
        let port = conflict.port.to_string();
        match held
            .iter_mut()
            .find(|(p, h, _)| *p == port && *h == conflict.holder)
        {
            Some((_, _, nodes)) => nodes.push(conflict.node.clone()),
            None => held.push((port, conflict.holder.clone(), vec![conflict.node.clone()])),
        }
    }
    let details: Vec<String> = held
        .into_iter()
        .map(|(port, holder, nodes)| {
            format!(
                "{port} is held by LoadBalancer Service {holder} on {}",
                nodes.join(", ")
            )
        })
        .collect();
    let eligible = placement.nodes.len() + blocked.len();
    let mut message = format!(
        "{}/{eligible} nodes are available: {} node(s) didn't have free ports for the requested svclb pod ports ({})",
        placement.nodes.len(),
        blocked.len(),
        details.join("; ")
    );
    if placement.nodes.is_empty() {
        message.push_str("; the LoadBalancer stays pending until they are free");
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::placement::{Conflict, HostPort};
    use super::*;

    #[test]
    fn a_conflict_names_the_port_the_holder_and_the_nodes() {
        let conflict = |node: &str| Conflict {
            node: node.to_string(),
            port: HostPort {
                port: 8080,
                protocol: "TCP".to_string(),
            },
            holder: "default/web".to_string(),
        };
        let pending = Placement {
            nodes: vec![],
            conflicts: vec![conflict("n1"), conflict("n2")],
        };
        assert_eq!(
            conflict_message(&pending).unwrap(),
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested svclb \
             pod ports (8080/TCP is held by LoadBalancer Service default/web on n1, n2); the \
             LoadBalancer stays pending until they are free"
        );
        let partial = Placement {
            nodes: vec!["n3".to_string()],
            conflicts: vec![conflict("n1")],
        };
        assert!(conflict_message(&partial)
            .unwrap()
            .starts_with("1/2 nodes are available: 1 node(s)"));
        assert_eq!(conflict_message(&Placement::default()), None);
    }

    #[test]
    fn events_list_addresses_as_k3s_prints_them() {
        let ip = |ip: &str| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..LoadBalancerIngress::default()
        };
        assert_eq!(listed(&[]), "[]");
        assert_eq!(
            listed(&[ip("192.0.2.1"), ip("192.0.2.2")]),
            "[192.0.2.1 192.0.2.2]"
        );
    }
}
