//! Events as upstream's `record.EventRecorder` writes them: core/v1 Events in the object's
//! namespace (`default` for cluster-scoped objects), named `<object>.<hex nanoseconds>`,
//! with `source.component` naming the controller — what `kubectl describe` and `kubectl
//! get events` show. A repeat of the same event (object, type, reason, message) bumps
//! `count` and `lastTimestamp` on the existing Event instead of adding one ("x3 over 2m").
//!
//! Recording is best effort, as upstream: a failure is logged and never fails the caller.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};

/// How many distinct recent events are remembered for aggregation; past it, the memory is
/// dropped and the next repeat starts a new Event (upstream keeps an LRU of 4096).
const REMEMBERED: usize = 4096;

/// `type` of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    name: String,
    kind_of_event: EventType,
    reason: String,
    message: String,
}

/// The Event already written for a key, and how often it has happened.
struct Seen {
    namespace: String,
    name: String,
    count: i32,
}

/// Writes Events for one component (`deployment-controller`, `default-scheduler`, …).
pub struct Recorder {
    client: Client,
    component: String,
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// A `Normal` event about `object`.
    pub async fn normal<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(reference(object), EventType::Normal, reason, message)
            .await
    }

    /// A `Warning` event about `object`.
    pub async fn warning<K>(&self, object: &K, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish(reference(object), EventType::Warning, reason, message)
            .await
    }

    /// An event about the object `regarding` refers to.
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        kind_of_event: EventType,
        reason: &str,
        message: &str,
    ) {
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            kind_of_event,
            reason: reason.to_string(),
            message: message.to_string(),
        };
        let now = Time(Timestamp::now());
        let repeat = self
            .seen
            .lock()
            .expect("event memory")
            .get(&key)
            .map(|seen| (seen.namespace.clone(), seen.name.clone(), seen.count + 1));
        if let Some((namespace, name, count)) = repeat {
            let bumped = Api::<Event>::namespaced(self.client.clone(), &namespace)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({
                        "count": count,
                        "lastTimestamp": now,
                    })),
                )
                .await;
            match bumped {
                Ok(_) => {
                    self.remember(key, namespace, name, count);
                    return;
                }
                // Gone (expired or deleted): start a new one below.
                Err(error) => tracing::debug!(%error, event = name, "event not updated"),
            }
        }
        let namespace = regarding
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let nanos = now.0.as_nanosecond();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", key.name, nanos)),
                namespace: Some(namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: regarding,
            type_: Some(kind_of_event.as_str().to_string()),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            ..Event::default()
        };
        match Api::<Event>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await
        {
            Ok(created) => self.remember(key, namespace, created.name_any(), 1),
            Err(error) => tracing::warn!(%error, reason, "could not record an event"),
        }
    }

    fn remember(&self, key: Key, namespace: String, name: String, count: i32) {
        let mut seen = self.seen.lock().expect("event memory");
        if seen.len() >= REMEMBERED && !seen.contains_key(&key) {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                namespace,
                name,
                count,
            },
        );
    }
}

/// The reference an Event about `object` carries.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    let meta = object.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    }
}
