//! `metrics.k8s.io/v1beta1`: `nodes` (NodeMetrics) and `pods` (PodMetrics), get and list,
//! label selectors, all namespaces or one, in the shape metrics-server serves, so that
//! `kubectl top node` and `kubectl top pod` work against kedge without metrics-server.
//!
//! Data: each node's kubelet `/stats/summary` ([`crate::kubelet::stats`]). As
//! metrics-server, rates come from the cumulative CPU counters of two scrapes (the
//! `window`); the first request for a node scrapes it twice, a second apart, and later
//! ones measure against a base scrape renewed every 15 s. Memory is the working set.
//!
//! Must not touch: the store beyond reading nodes and pods.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{ApiError, Target};
use super::http::{json, Body};
use super::registry::{ResourceType, SchemaError};
use super::request::ResourcePath;
use super::rest::Api;
use super::selector::LabelSelector;
use crate::kubelet::stats::{self, CpuSampler, Summary};
use crate::store::{Consistency, ListOptions};

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
const API_VERSION: &str = "metrics.k8s.io/v1beta1";
/// A scrape this much newer than the base one becomes the base (metrics-server's period).
const BASE_RENEWAL: Duration = Duration::from_secs(15);
/// The shortest window a rate is computed over.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A resource usage, as metrics-server formats it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
pub struct Usage {
    pub cpu: String,
    pub memory: String,
}

/// `NodeMetrics` (its schema for discovery and OpenAPI).
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMetrics {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub timestamp: String,
    pub window: String,
    pub usage: Usage,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContainerMetrics {
    pub name: String,
    pub usage: Usage,
}

/// `PodMetrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMetrics {
    pub api_version: String,
    pub kind: String,
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    pub timestamp: String,
    pub window: String,
    pub containers: Vec<ContainerMetrics>,
}

fn resource_type<T: schemars::JsonSchema>(
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> ResourceType {
    ResourceType {
        group: GROUP.to_string(),
        version: VERSION.to_string(),
        kind: kind.to_string(),
        list_kind: format!("{kind}List"),
        plural: plural.to_string(),
        singular: String::new(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        verbs: vec!["get".to_string(), "list".to_string()],
        subresources: Vec::new(),
        stored: false,
        // Never written: nothing to check.
        check: Arc::new(|v: &Value| -> Result<Value, SchemaError> { Ok(v.clone()) }),
        schema: Arc::new(|generator: &mut schemars::SchemaGenerator| {
            generator.subschema_for::<T>();
            T::schema_name().into_owned()
        }),
        scale: None,
        crd: None,
        columns: Vec::new(),
    }
}

/// The two resources, for the registry (discovery lists them like metrics-server's
/// APIService would).
pub fn resource_types() -> Vec<ResourceType> {
    vec![
        resource_type::<NodeMetrics>("NodeMetrics", "nodes", false),
        resource_type::<PodMetrics>("PodMetrics", "pods", true),
    ]
}

/// Serves the API from `source` (discovery lists it either way; without a source its
/// requests answer 503). The registry takes the two resources like any built-in kind;
/// `set_custom` is only the registry's way of adding kinds at run time.
pub fn install(api: &mut Api, source: Option<Arc<dyn SummarySource>>) {
    api.registry.set_custom(GROUP, resource_types());
    api.metrics = source.map(|s| Arc::new(Metrics::new(s)));
}

/// CPU in nanocores as metrics-server writes it: `123456789n`, `5m`, `2`.
pub fn format_cpu(nanocores: u64) -> String {
    if nanocores == 0 {
        return "0".to_string();
    }
    let mut value = nanocores;
    let mut suffix = 0;
    let suffixes = ["n", "u", "m", ""];
    while suffix < 3 && value % 1000 == 0 {
        value /= 1000;
        suffix += 1;
    }
    format!("{value}{}", suffixes[suffix])
}

/// Bytes as a binary-SI quantity: `1234Ki`, `5Mi`, or plain bytes.
pub fn format_memory(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    let mut value = bytes;
    let mut suffix = 0;
    let suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    while suffix < 6 && value % 1024 == 0 {
        value /= 1024;
        suffix += 1;
    }
    format!("{value}{}", suffixes[suffix])
}

/// A Go `time.Duration` string (`1.002s`, `15s`, `1m5s`), as `window` is written.
pub fn format_window(window: Duration) -> String {
    let millis = window.as_millis();
    let minutes = millis / 60_000;
    let rest = millis % 60_000;
    let seconds = if rest % 1000 == 0 {
        format!("{}s", rest / 1000)
    } else {
        let text = format!("{}.{:03}", rest / 1000, rest % 1000);
        format!("{}s", text.trim_end_matches('0'))
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

/// Where a node's summary comes from.
pub trait SummarySource: Send + Sync {
    /// The summary of `node` (the Node object).
    fn summary<'a>(&'a self, node: &'a Value) -> BoxFuture<'a, Result<Summary, String>>;
}

/// Each kubelet's `/stats/summary` over HTTPS (`https://<InternalIP>:<kubelet port>`),
/// with the API server's kubelet client certificate in `client`'s TLS config.
pub struct Kubelets {
    pub client: crate::client::HttpsClient,
}

impl SummarySource for Kubelets {
    fn summary<'a>(&'a self, node: &'a Value) -> BoxFuture<'a, Result<Summary, String>> {
        Box::pin(async move {
            let address = node
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
                .and_then(|a| a["address"].as_str())
                .ok_or("the node has no InternalIP address")?;
            let port = node
                .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
                .and_then(Value::as_u64)
                .unwrap_or(10250);
            let host = if address.contains(':') {
                format!("[{address}]")
            } else {
                address.to_string()
            };
            let url = format!("https://{host}:{port}/stats/summary");
            let response = self
                .client
                .request(
                    http::Method::GET,
                    &url,
                    None,
                    bytes::Bytes::new(),
                    SCRAPE_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            if !response.status.is_success() {
                return Err(format!("{url}: {}", response.status));
            }
            serde_json::from_slice(&response.body).map_err(|e| format!("{url}: {e}"))
        })
    }
}

/// Fallback until the API server has a kubelet client certificate: this server's own
/// node's stats read straight from its in-process agent's directory. Other nodes have no
/// metrics through it.
pub struct LocalAgent {
    pub node_name: String,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    pub sampler: CpuSampler,
}

impl SummarySource for LocalAgent {
    fn summary<'a>(&'a self, node: &'a Value) -> BoxFuture<'a, Result<Summary, String>> {
        Box::pin(async move {
            let name = node.pointer("/metadata/name").and_then(Value::as_str);
            if name != Some(self.node_name.as_str()) {
                return Err("not this server's own node".to_string());
            }
            Ok(stats::summary(&self.agent_dir, &self.node_name, &self.sampler).await)
        })
    }
}

/// One scrape of a node.
#[derive(Clone)]
struct Scrape {
    at: Instant,
    time: SystemTime,
    summary: Summary,
}

/// The metrics API's state: its summary source and each node's base scrape.
pub struct Metrics {
    source: Arc<dyn SummarySource>,
    base: Mutex<HashMap<String, Scrape>>,
}

impl Metrics {
    pub fn new(source: Arc<dyn SummarySource>) -> Metrics {
        Metrics {
            source,
            base: Mutex::new(HashMap::new()),
        }
    }

    async fn scrape(&self, node: &Value) -> Result<Scrape, String> {
        let summary = self.source.summary(node).await?;
        Ok(Scrape {
            at: Instant::now(),
            time: SystemTime::now(),
            summary,
        })
    }

    /// A base and a current scrape of `node`, at least [`MIN_WINDOW`] apart.
    async fn two_scrapes(&self, node: &Value) -> Result<(Scrape, Scrape), String> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let cached = self.base.lock().ok().and_then(|b| b.get(&name).cloned());
        let base = match cached.filter(|b| b.at.elapsed() < Duration::from_secs(600)) {
            Some(base) => base,
            None => {
                let first = self.scrape(node).await?;
                if let Ok(mut b) = self.base.lock() {
                    b.insert(name.clone(), first.clone());
                }
                first
            }
        };
        let waited = base.at.elapsed();
        if waited < MIN_WINDOW {
            tokio::time::sleep(MIN_WINDOW - waited).await;
        }
        let current = self.scrape(node).await?;
        if current.at.duration_since(base.at) >= BASE_RENEWAL {
            if let Ok(mut b) = self.base.lock() {
                b.insert(name, current.clone());
            }
        }
        Ok((base, current))
    }
}

fn rate(before: u64, after: u64, window: Duration) -> u64 {
    let nanos = window.as_nanos().max(1);
    (u128::from(after.saturating_sub(before)) * 1_000_000_000 / nanos) as u64
}

fn timestamp(time: SystemTime) -> String {
    stats::rfc3339(time)
}

fn metadata(object: &Value, created: SystemTime) -> Value {
    let mut meta = json!({
        "name": object.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
        "creationTimestamp": timestamp(created),
    });
    if let Some(ns) = object.pointer("/metadata/namespace") {
        meta["namespace"] = ns.clone();
    }
    if let Some(labels) = object.pointer("/metadata/labels") {
        meta["labels"] = labels.clone();
    }
    meta
}

fn node_metrics(node: &Value, base: &Scrape, current: &Scrape) -> Value {
    let window = current.at.duration_since(base.at);
    let cpu = rate(
        base.summary.node.cpu.usage_core_nano_seconds,
        current.summary.node.cpu.usage_core_nano_seconds,
        window,
    );
    json!({
        "kind": "NodeMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(node, current.time),
        "timestamp": timestamp(base.time),
        "window": format_window(window),
        "usage": Usage {
            cpu: format_cpu(cpu),
            memory: format_memory(current.summary.node.memory.working_set_bytes),
        },
    })
}

/// A pod's metrics, or `None` when its node's summary does not have it (yet).
fn pod_metrics(pod: &Value, base: &Scrape, current: &Scrape) -> Option<Value> {
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
    let now = current.summary.pods.iter().find(|p| p.pod_ref.uid == uid)?;
    let before = base.summary.pods.iter().find(|p| p.pod_ref.uid == uid);
    let window = current.at.duration_since(base.at);
    let containers: Vec<Value> = now
        .containers
        .iter()
        .map(|c| {
            let earlier = before.and_then(|p| p.containers.iter().find(|b| b.name == c.name));
            let cpu = match earlier {
                Some(b) if b.start_time == c.start_time => rate(
                    b.cpu.usage_core_nano_seconds,
                    c.cpu.usage_core_nano_seconds,
                    window,
                ),
                // Started since the base scrape: the kubelet's own rate.
                _ => c.cpu.usage_nano_cores.unwrap_or(0),
            };
            json!({
                "name": c.name,
                "usage": Usage {
                    cpu: format_cpu(cpu),
                    memory: format_memory(c.memory.working_set_bytes),
                },
            })
        })
        .collect();
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata(pod, current.time),
        "timestamp": timestamp(base.time),
        "window": format_window(window),
        "containers": containers,
    }))
}

async fn list_objects(api: &Api, prefix: &str) -> Result<Vec<Value>, ApiError> {
    let page = api
        .store
        .list(prefix, ListOptions::default(), Consistency::Local)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(page
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

fn not_found(resource: &str, name: &str) -> ApiError {
    ApiError::NotFound(Target {
        qualified_resource: format!("{resource}.{GROUP}"),
        group: GROUP.to_string(),
        kind: String::new(),
        name: name.to_string(),
    })
}

fn list_of(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": API_VERSION,
        "metadata": {},
        "items": items,
    })
}

/// Serves a get or list of `path` (`nodes` or `pods` of this group).
pub async fn serve(
    api: &Api,
    path: &ResourcePath,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let metrics = api.metrics.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this kedge server has no node metrics source".to_string())
    })?;
    let selector = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
        .map_err(ApiError::BadRequest)?;
    let chosen = |object: &Value| {
        let name_ok = path
            .name
            .as_deref()
            .is_none_or(|n| object.pointer("/metadata/name").and_then(Value::as_str) == Some(n));
        name_ok
            && selector.matches(
                object
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object),
            )
    };
    let nodes = list_objects(api, "/registry/core/nodes/").await?;
    match path.resource.as_str() {
        "nodes" => {
            let mut items = Vec::new();
            for node in nodes.iter().filter(|n| chosen(n)) {
                match metrics.two_scrapes(node).await {
                    Ok((base, current)) => items.push(node_metrics(node, &base, &current)),
                    Err(e) => tracing::debug!(error = %e, "no metrics for a node"),
                }
            }
            single_or_list(path, "NodeMetrics", "nodemetrics", items)
        }
        "pods" => {
            let prefix = match &path.namespace {
                Some(ns) => format!("/registry/core/pods/{ns}/"),
                None => "/registry/core/pods/".to_string(),
            };
            let pods: Vec<Value> = list_objects(api, &prefix)
                .await?
                .into_iter()
                .filter(|p| chosen(p))
                .collect();
            let mut items = Vec::new();
            for node in &nodes {
                let name = node.pointer("/metadata/name").and_then(Value::as_str);
                let on_node: Vec<&Value> = pods
                    .iter()
                    .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == name)
                    .collect();
                if on_node.is_empty() {
                    continue;
                }
                match metrics.two_scrapes(node).await {
                    Ok((base, current)) => items.extend(
                        on_node
                            .into_iter()
                            .filter_map(|p| pod_metrics(p, &base, &current)),
                    ),
                    Err(e) => tracing::debug!(error = %e, "no metrics for a node's pods"),
                }
            }
            single_or_list(path, "PodMetrics", "podmetrics", items)
        }
        _ => Err(ApiError::UnknownResource),
    }
}

fn single_or_list(
    path: &ResourcePath,
    kind: &str,
    resource: &str,
    mut items: Vec<Value>,
) -> Result<Response<Body>, ApiError> {
    match &path.name {
        Some(name) => match items.pop() {
            Some(item) => Ok(json(StatusCode::OK, &item)),
            None => Err(not_found(resource, name)),
        },
        None => Ok(json(StatusCode::OK, &list_of(kind, items))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::stats::{ContainerStats, CpuStats, MemoryStats, PodReference, PodStats};

    #[test]
    fn quantities_read_as_metrics_server_writes_them() {
        assert_eq!(format_cpu(123_456_789), "123456789n");
        assert_eq!(format_cpu(5_000_000), "5m");
        assert_eq!(format_cpu(120_000), "120u");
        assert_eq!(format_cpu(2_000_000_000), "2");
        assert_eq!(format_cpu(0), "0");
        assert_eq!(format_memory(1_263_616), "1234Ki");
        assert_eq!(format_memory(5 << 20), "5Mi");
        assert_eq!(format_memory(1000), "1000");
        assert_eq!(format_window(Duration::from_millis(1002)), "1.002s");
        assert_eq!(format_window(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_window(Duration::from_secs(15)), "15s");
        assert_eq!(format_window(Duration::from_secs(65)), "1m5s");
    }

    fn scrape(at: Instant, cpu_ns: u64) -> Scrape {
        let container = ContainerStats {
            name: "app".into(),
            start_time: "2026-01-01T00:00:00Z".into(),
            cpu: CpuStats {
                usage_core_nano_seconds: cpu_ns,
                ..Default::default()
            },
            memory: MemoryStats {
                working_set_bytes: 4 << 20,
                ..Default::default()
            },
        };
        let mut summary = Summary::default();
        summary.node.cpu.usage_core_nano_seconds = cpu_ns * 2;
        summary.node.memory.working_set_bytes = 1 << 30;
        summary.pods.push(PodStats {
            pod_ref: PodReference {
                name: "web".into(),
                namespace: "default".into(),
                uid: "u1".into(),
            },
            containers: vec![container],
            ..Default::default()
        });
        Scrape {
            at,
            time: SystemTime::now(),
            summary,
        }
    }

    #[test]
    fn usage_is_the_rate_over_the_window() {
        let t0 = Instant::now();
        let base = scrape(t0, 1_000_000_000);
        // A quarter of a core for two seconds.
        let current = scrape(t0 + Duration::from_secs(2), 1_500_000_000);
        let node = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        let metrics = node_metrics(&node, &base, &current);
        assert_eq!(metrics["kind"], "NodeMetrics");
        assert_eq!(metrics["apiVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(metrics["window"], "2s");
        assert_eq!(metrics["usage"]["cpu"], "500m");
        assert_eq!(metrics["usage"]["memory"], "1Gi");
        assert_eq!(metrics["metadata"]["labels"]["a"], "b");
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"}});
        let metrics = pod_metrics(&pod, &base, &current).unwrap();
        assert_eq!(metrics["containers"][0]["name"], "app");
        assert_eq!(metrics["containers"][0]["usage"]["cpu"], "250m");
        assert_eq!(metrics["containers"][0]["usage"]["memory"], "4Mi");
        let other = json!({"metadata": {"name": "x", "uid": "u2"}});
        assert!(pod_metrics(&other, &base, &current).is_none());
    }
}
