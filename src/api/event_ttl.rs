//! Events expire, as kube-apiserver's `--event-ttl` makes them (default one hour): upstream
//! writes each Event with an etcd lease renewed on every update; kedge's store has no leases,
//! so a periodic sweep deletes every Event whose last write is older than the TTL. The last
//! write is read from the Event itself (its newest timestamp), and the delete only applies if
//! nobody wrote the Event since it was read, so a recurring event that was just bumped stays.
//!
//! Must not touch: anything but Events (core/v1 and events.k8s.io/v1).

use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{Consistency, ListOptions, Store, StoreError};

/// Where both Event APIs keep their objects.
const EVENT_PREFIXES: &[&str] = &["/registry/core/events/", "/registry/events.k8s.io/events/"];
/// Events read per store page: the sweep never holds every Event of a big cluster at once.
const PAGE: usize = 500;

/// Sweeps every `every` until the task is dropped.
pub async fn run(store: Store, ttl: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match sweep(&store, ttl, OffsetDateTime::now_utc()).await {
            Ok(0) => {}
            Ok(expired) => tracing::debug!(expired, "expired events deleted"),
            Err(e) => tracing::warn!(error = %e, "expiring events failed"),
        }
    }
}

/// Deletes the Events last written before `now - ttl`; returns how many.
pub async fn sweep(store: &Store, ttl: Duration, now: OffsetDateTime) -> Result<usize, StoreError> {
    let cutoff = now - ttl;
    let mut expired = 0;
    for prefix in EVENT_PREFIXES {
        let mut options = ListOptions {
            limit: PAGE,
            ..ListOptions::default()
        };
        loop {
            let page = store
                .list(prefix, options.clone(), Consistency::Linearizable)
                .await?;
            for kv in &page.items {
                let Ok(event) = serde_json::from_slice::<Value>(&kv.value) else {
                    continue;
                };
                if last_written(&event).is_some_and(|at| at < cutoff) {
                    match store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) => expired += 1,
                        // Updated (so renewed) or deleted since the page was read.
                        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            match page.continue_token {
                Some(token) => options.continue_token = Some(token),
                None => break,
            }
        }
    }
    Ok(expired)
}

/// The newest of an Event's timestamps, in either API's field names.
fn last_written(event: &Value) -> Option<OffsetDateTime> {
    let pointers = [
        "/lastTimestamp",
        "/deprecatedLastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
        "/firstTimestamp",
        "/deprecatedFirstTimestamp",
        "/metadata/creationTimestamp",
    ];
    pointers
        .iter()
        .filter_map(|p| event.pointer(p)?.as_str())
        .filter_map(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_timestamp_counts() {
        let event = json!({
            "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T05:00:00Z",
            "eventTime": null,
        });
        assert_eq!(
            last_written(&event),
            Some(OffsetDateTime::parse("2026-01-01T05:00:00Z", &Rfc3339).unwrap())
        );
        let series = json!({
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "series": {"count": 4, "lastObservedTime": "2026-01-02T00:00:00.123456Z"},
        });
        assert_eq!(
            last_written(&series).map(|t| t.day()),
            Some(2),
            "events.k8s.io series"
        );
        assert_eq!(last_written(&json!({"metadata": {}})), None);
    }

    #[tokio::test]
    async fn a_sweep_deletes_only_events_last_written_before_the_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::direct_store(dir.path());
        let event = |last: &str| bytes::Bytes::from(json!({"lastTimestamp": last}).to_string());
        let keys = [
            ("/registry/core/events/default/old", "2026-01-01T09:59:00Z"),
            (
                "/registry/core/events/default/fresh",
                "2026-01-01T10:59:30Z",
            ),
            (
                "/registry/events.k8s.io/events/kube-system/old",
                "2026-01-01T09:00:00Z",
            ),
            ("/registry/core/pods/default/old", "2026-01-01T00:00:00Z"),
        ];
        for (key, last) in keys {
            store.create(key, event(last)).await.unwrap();
        }
        let now = OffsetDateTime::parse("2026-01-01T11:00:00Z", &Rfc3339).unwrap();
        let expired = sweep(&store, Duration::from_secs(3600), now).await.unwrap();
        assert_eq!(expired, 1 + 1);
        let left: Vec<String> = store
            .list("/registry/", ListOptions::default(), Consistency::Local)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(
            left,
            [
                "/registry/core/events/default/fresh",
                "/registry/core/pods/default/old"
            ]
        );
    }
}
