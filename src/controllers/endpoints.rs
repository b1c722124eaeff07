//! The Endpoints controller: every Service with a selector gets an Endpoints object of its
//! name listing the addresses of the pods it selects — ready ones in `addresses`, the others
//! in `notReadyAddresses` (all of them ready with `publishNotReadyAddresses`) — grouped into
//! subsets of addresses that share the same ports, as upstream's endpoint controller repacks
//! them. Endpoints are written only when they change.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Pod, Service,
};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::service_endpoints::{self as se, Tracker};
use super::ControllerError;

/// The label that marks Endpoints this controller wrote (upstream's `LabelManagedBy`).
pub const MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpoint-controller";
/// Endpoints of leader election records, never touched by the cleanup.
const LEADER: &str = "control-plane.alpha.kubernetes.io/leader";

struct Context {
    client: Client,
    tracker: Arc<Tracker>,
}

pub async fn run(client: Client) {
    let tracker = Arc::new(Tracker::default());
    let context = Context {
        client: client.clone(),
        tracker: tracker.clone(),
    };
    let own_name = |e: &Endpoints| Some(e.name_any());
    let ours = || watcher::Config::default().labels(&format!("{MANAGED_BY}={CONTROLLER}"));
    tokio::join!(
        se::run_for_services::<Endpoints, _, _, _>(
            "endpoints",
            &client,
            ours(),
            own_name,
            tracker,
            reconcile,
            context,
        ),
        se::run_cleanup::<Endpoints>(
            "endpoints-cleanup",
            &client,
            ours(),
            written_by_us,
            own_name,
        ),
    );
}

/// Endpoints this controller wrote carry its label; hand-written ones (of selector-less
/// Services) and leader records are left alone.
fn written_by_us(endpoints: &Endpoints) -> bool {
    endpoints.labels().get(MANAGED_BY).map(String::as_str) == Some(CONTROLLER)
        && !endpoints.annotations().contains_key(LEADER)
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
    let subsets = subsets(&service, &pods);
    let mut labels = se::endpoint_labels(&service);
    labels.insert(MANAGED_BY.to_string(), CONTROLLER.to_string());

    let api: Api<Endpoints> = Api::namespaced(context.client.clone(), &namespace);
    let failed = |what: &str| format!("{what} the Endpoints {namespace}/{name}");
    let current = api
        .get_opt(&name)
        .await
        .map_err(ControllerError::new(failed("reading")))?;
    let mut endpoints = match current {
        Some(current) => {
            let same_subsets = current.subsets.clone().unwrap_or_default() == subsets;
            if same_subsets && current.labels() == &labels {
                return Ok(Action::await_change());
            }
            current
        }
        None => Endpoints {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Endpoints::default()
        },
    };
    endpoints.metadata.labels = Some(labels);
    endpoints
        .annotations_mut()
        .insert(se::TRIGGER_TIME.to_string(), super::now());
    endpoints.subsets = (!subsets.is_empty()).then_some(subsets);
    let result = if endpoints.metadata.resource_version.is_some() {
        api.replace(&name, &PostParams::default(), &endpoints).await
    } else {
        api.create(&PostParams::default(), &endpoints).await
    };
    match result {
        Ok(_) => Ok(Action::await_change()),
        // Written meanwhile (or the namespace is going): the next event brings it back here.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Ok(Action::requeue(std::time::Duration::from_millis(200)))
        }
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
            Ok(Action::await_change())
        }
        Err(e) => Err(ControllerError::new(failed("writing"))(e)),
    }
}

/// Addresses, each with whether it is ready.
type Addresses = Vec<(EndpointAddress, bool)>;

/// The addresses of each port.
type Membership = BTreeMap<PortKey, Addresses>;

/// An endpoint port, ordered (the sentinel `None` stands for "no ports", kept for headless
/// Services without ports).
type PortKey = Option<(String, i32, String, Option<String>)>;

/// The addresses of a port, as (ip, pod uid, ready): ports with equal sets share a subset.
type AddressSet = Vec<(String, String, bool)>;

/// The subsets of `service`'s Endpoints: addresses grouped by the ports they share, in a
/// stable order (upstream's `RepackSubsets` + `SortSubsets`).
fn subsets(service: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let tolerate_unready = se::publish_not_ready(service);
    let mut by_port: Membership = BTreeMap::new();
    for pod in pods {
        if !se::should_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(ip) = se::pod_ipv4(pod) else {
            continue;
        };
        let address = EndpointAddress {
            ip,
            hostname: se::hostname(pod, service),
            node_name: se::node_name(pod),
            target_ref: Some(se::target_ref(pod)),
        };
        let ready = tolerate_unready || se::is_ready(pod);
        let ports = se::ports(service);
        if ports.is_empty() {
            if se::headless(service) {
                by_port.entry(None).or_default().push((address, ready));
            }
            continue;
        }
        for port in ports {
            let Some(number) = se::find_port(pod, port) else {
                tracing::debug!(pod = %pod.name_any(), port = ?port.target_port, "pod has no such port");
                continue;
            };
            let key = Some((
                port.name.clone().unwrap_or_default(),
                number,
                port.protocol.clone().unwrap_or_else(|| "TCP".to_string()),
                port.app_protocol.clone(),
            ));
            by_port
                .entry(key)
                .or_default()
                .push((address.clone(), ready));
        }
    }
    // Ports whose address sets are the same share a subset.
    let mut groups: BTreeMap<AddressSet, (Addresses, Vec<PortKey>)> = BTreeMap::new();
    for (port, mut addresses) in by_port {
        addresses.sort_by(|a, b| (&a.0.ip, uid(&a.0)).cmp(&(&b.0.ip, uid(&b.0))));
        let key = addresses
            .iter()
            .map(|(a, ready)| (a.ip.clone(), uid(a).to_string(), *ready))
            .collect();
        let group = groups.entry(key).or_insert_with(|| (addresses, Vec::new()));
        group.1.push(port);
    }
    groups
        .into_values()
        .map(|(addresses, ports)| {
            let (ready, not_ready): (Vec<_>, Vec<_>) = addresses.into_iter().partition(|(_, r)| *r);
            let list = |v: Vec<(EndpointAddress, bool)>| {
                (!v.is_empty()).then(|| v.into_iter().map(|(a, _)| a).collect())
            };
            let ports: Vec<EndpointPort> = ports
                .into_iter()
                .flatten()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: (!name.is_empty()).then_some(name),
                    port,
                    protocol: Some(protocol),
                    app_protocol,
                })
                .collect();
            EndpointSubset {
                addresses: list(ready),
                not_ready_addresses: list(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

fn uid(address: &EndpointAddress) -> &str {
    address
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.as_deref())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, http: i32) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": name, "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": http}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn service(extra: serde_json::Value) -> Service {
        let mut spec = json!({"selector": {"app": "a"}, "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "ns"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn ready_and_not_ready_share_a_subset_per_port_mapping() {
        let pods = [
            pod("a", "10.0.0.2", true, 8080),
            pod("b", "10.0.0.1", false, 8080),
            pod("c", "10.0.0.3", true, 9090),
        ];
        let subsets = subsets(&service(json!({})), &pods);
        assert_eq!(subsets.len(), 2);
        let by_port: BTreeMap<i32, &EndpointSubset> = subsets
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port, s))
            .collect();
        let s8080 = by_port[&8080];
        assert_eq!(s8080.addresses.as_ref().unwrap()[0].ip, "10.0.0.2");
        assert_eq!(
            s8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.1"
        );
        assert_eq!(by_port[&9090].addresses.as_ref().unwrap()[0].ip, "10.0.0.3");
    }

    #[test]
    fn publish_not_ready_makes_every_address_ready() {
        let pods = [pod("b", "10.0.0.1", false, 8080)];
        let subsets = subsets(&service(json!({"publishNotReadyAddresses": true})), &pods);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 1);
        assert!(subsets[0].not_ready_addresses.is_none());
    }
}
