//! Objects as the API stores and serves them: JSON with `kind` and `apiVersion`, whose
//! `metadata.resourceVersion` is the store revision that last wrote them (set on the way
//! out, never stored).

use bytes::Bytes;
use rand::Rng;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::store::KeyValue;

/// The object `kv` holds, with its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

pub fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(meta) = metadata_mut(object) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// The bytes to store for `object` (without its resourceVersion).
pub fn encode(object: &Value) -> Bytes {
    let mut object = object.clone();
    if let Some(meta) = metadata_mut(&mut object) {
        meta.remove("resourceVersion");
    }
    Bytes::from(serde_json::to_vec(&object).expect("JSON values serialize"))
}

pub fn metadata(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata")?.as_object()
}

pub fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object.get_mut("metadata")?.as_object_mut()
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    metadata(object)?.get(field)?.as_str()
}

pub fn name(object: &Value) -> &str {
    meta_str(object, "name").unwrap_or_default()
}

pub fn labels(object: &Value) -> Option<&Map<String, Value>> {
    metadata(object)?.get("labels")?.as_object()
}

/// Upstream's finalizers of garbage collection (metav1.FinalizerOrphanDependents and
/// FinalizerDeleteDependents): an owner waits for its dependents to be orphaned, or deleted.
pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// Whether the object still waits on finalizers before it may be removed.
pub fn has_finalizers(object: &Value) -> bool {
    metadata(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// Whether a deletion has been asked for (the object lingers for finalizers or a grace period).
pub fn is_marked_for_deletion(object: &Value) -> bool {
    meta_str(object, "deletionTimestamp").is_some()
}

/// Records that deletion was asked for now, with `grace_seconds` to finish.
pub fn mark_for_deletion(object: &mut Value, grace_seconds: i64) {
    if let Some(meta) = metadata_mut(object) {
        meta.insert("deletionTimestamp".into(), Value::String(now()));
        meta.insert(
            "deletionGracePeriodSeconds".into(),
            Value::from(grace_seconds),
        );
    }
}

/// The resourceVersion a client sent, if any; malformed is a bad request.
pub fn resource_version(object: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(object, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A random UID (UUID v4).
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `generateName` plus five random characters from the alphabet upstream uses (no vowels,
/// no look-alike digits).
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// Seconds since an RFC 3339 timestamp, if it parses.
pub fn age_seconds(timestamp: &str) -> Option<i64> {
    let then =
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .ok()?;
    Some(
        (time::OffsetDateTime::now_utc() - then)
            .whole_seconds()
            .max(0),
    )
}

/// A duration the way kubectl prints ages (`45s`, `3m12s`, `5h`, `4d`, `2y`).
pub fn human_duration(seconds: i64) -> String {
    // Like upstream, tolerate a second of clock skew; anything further back is invalid.
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{r}s")
            }
        }
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => {
            let (d, h) = (s / 86400, (s % 86400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
        s if s < 2 * 365 * 86400 => format!("{}d", s / 86400),
        s if s < 8 * 365 * 86400 => {
            let (y, d) = (s / (365 * 86400), (s % (365 * 86400)) / 86400);
            if d == 0 {
                format!("{y}y")
            } else {
                format!("{y}y{d}d")
            }
        }
        s => format!("{}y", s / (365 * 86400)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn resource_version_is_set_on_the_way_out_only() {
        let object = json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let stored = encode(&object);
        assert!(!String::from_utf8_lossy(&stored).contains("resourceVersion"));
        let kv = KeyValue {
            key: "/k".into(),
            value: stored,
            create_revision: 3,
            mod_revision: 9,
            version: 2,
        };
        assert_eq!(decode(&kv).unwrap()["metadata"]["resourceVersion"], "9");
        assert!(resource_version(&json!({"metadata": {"resourceVersion": "x"}})).is_err());
    }

    #[test]
    fn names_and_times_look_like_upstream() {
        let name = generate_name("web-");
        assert_eq!(name.len(), 9);
        assert!(name[4..]
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert!(now().ends_with('Z') && now().len() == 20, "{}", now());
        assert_eq!(new_uid().len(), 36);
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(5 * 86400), "5d");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(3 * 365 * 86400 + 5 * 86400), "3y5d");
        assert_eq!(human_duration(9 * 365 * 86400), "9y");
        assert_eq!(human_duration(-1), "0s");
        assert_eq!(human_duration(-5), "<invalid>");
    }
}
