//! Cell formatting shared by every kind: reading fields out of JSON objects, ages, label
//! and selector strings, container lists, and the "a,b,c + 2 more..." lists upstream uses.

use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::object::human_duration;

/// The string at `pointer`, or "" (Go's zero value, which upstream prints as is).
pub fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The string at `pointer`, or `fallback` when absent or empty.
pub fn text_or<'a>(object: &'a Value, pointer: &str, fallback: &'a str) -> &'a str {
    match text(object, pointer) {
        "" => fallback,
        value => value,
    }
}

/// The primary address of a dual-stack object: the first of the list at `plural` (its
/// `item` field), else the single field at `singular`, else `<none>`. Upstream prints
/// the list, which conversion fills from the single field when it is missing.
pub fn primary_address<'a>(object: &'a Value, plural: &str, item: &str, singular: &str) -> &'a str {
    let first = list(object, plural)
        .first()
        .and_then(|first| first.pointer(item))
        .and_then(Value::as_str)
        .unwrap_or("");
    match first {
        "" => text_or(object, singular, "<none>"),
        address => address,
    }
}

/// The integer at `pointer`, or 0.
pub fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The boolean at `pointer`, or `default` when unset.
pub fn flag(object: &Value, pointer: &str, default: bool) -> bool {
    object
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

/// The array at `pointer`, or an empty slice.
pub fn list<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The object at `pointer`, if any.
pub fn map<'a>(object: &'a Value, pointer: &str) -> Option<&'a Map<String, Value>> {
    object.pointer(pointer).and_then(Value::as_object)
}

/// An int-or-string (or quantity) field the way Go's `String()` renders it.
pub fn scalar(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub fn parse_time(timestamp: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(timestamp, &Rfc3339).ok()
}

/// Time since an RFC 3339 timestamp as kubectl prints ages; `<unknown>` when unset
/// (upstream's `translateTimestampSince`), `<invalid>` when well in the future.
pub fn since(timestamp: &str) -> String {
    parse_time(timestamp).map_or_else(|| "<unknown>".to_string(), since_time)
}

/// Time since `then`, humanized.
pub fn since_time(then: OffsetDateTime) -> String {
    human_duration((OffsetDateTime::now_utc() - then).whole_seconds())
}

/// Time since the timestamp at `pointer`.
pub fn since_at(object: &Value, pointer: &str) -> Value {
    since(text(object, pointer)).into()
}

/// The time between two timestamps, humanized.
pub fn between(start: &str, end: &str) -> Option<String> {
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    Some(human_duration((end - start).whole_seconds()))
}

/// `k1=v1,k2=v2` with keys sorted, or `<none>` (`labels.FormatLabels`).
pub fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let mut pairs: Vec<(&String, &str)> = labels
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".into();
    }
    pairs.sort();
    let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
}

/// A label selector in selector syntax, requirements sorted by key; `None` when it is
/// malformed (unknown operator, values on Exists...).
pub fn selector_string(selector: &Value) -> Option<String> {
    crate::api::selector::LabelSelector::from_object(selector)
        .ok()
        .map(|s| s.to_string())
}

/// `metav1.FormatLabelSelector`: `<none>` for a missing or empty selector, `<error>` for
/// a malformed one.
pub fn format_selector(selector: Option<&Value>) -> String {
    match selector.filter(|s| !s.is_null()).map(selector_string) {
        None => "<none>".into(),
        Some(None) => "<error>".into(),
        Some(Some(s)) if s.is_empty() => "<none>".into(),
        Some(Some(s)) => s,
    }
}

/// Comma-joined container names and images of a pod spec (`layoutContainerCells`).
pub fn containers(pod_spec: Option<&Value>) -> (String, String) {
    let containers = pod_spec.map_or(&[][..], |spec| list(spec, "/containers"));
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// The first `max` items joined by commas, then ` + N more...`; `<unset>` when empty.
pub fn list_with_more(items: &[String], max: usize) -> String {
    let shown = items[..items.len().min(max)].join(",");
    if items.len() > max {
        format!("{shown} + {} more...", items.len() - max)
    } else if shown.is_empty() {
        "<unset>".into()
    } else {
        shown
    }
}

/// `True` / `False` / `<unset>` for an optional boolean (`printBoolPtr`).
pub fn bool_ptr(value: Option<&Value>) -> String {
    match value.and_then(Value::as_bool) {
        Some(true) => "True".into(),
        Some(false) => "False".into(),
        None => "<unset>".into(),
    }
}

/// A host and port joined as `net.JoinHostPort` does (brackets around IPv6).
pub fn host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The load-balancer ingress points (IPs, else hostnames), sorted and deduplicated.
pub fn load_balancer_points(status: &Value) -> String {
    let mut points: Vec<&str> = list(status, "/loadBalancer/ingress")
        .iter()
        .map(|i| text_or(i, "/ip", text(i, "/hostname")))
        .filter(|p| !p.is_empty())
        .collect();
    points.sort_unstable();
    points.dedup();
    points.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_render_like_upstream() {
        let selector = json!({"matchLabels": {"app": "web", "tier": "fe"}, "matchExpressions": [
            {"key": "env", "operator": "In", "values": ["prod", "dev"]},
            {"key": "zone", "operator": "DoesNotExist"}]});
        assert_eq!(
            format_selector(Some(&selector)),
            "app=web,env in (dev,prod),tier=fe,!zone"
        );
        assert_eq!(format_selector(Some(&json!({}))), "<none>");
        assert_eq!(format_selector(None), "<none>");
        let bad =
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]});
        assert_eq!(format_selector(Some(&bad)), "<error>");
        assert_eq!(
            format_labels(json!({"b": "2", "a": "1"}).as_object()),
            "a=1,b=2"
        );
        assert_eq!(format_labels(None), "<none>");
    }

    #[test]
    fn lists_are_cut_after_max() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        assert_eq!(list_with_more(&items, 3), "a,b,c + 2 more...");
        assert_eq!(list_with_more(&items[..2], 3), "a,b");
        assert_eq!(list_with_more(&[], 3), "<unset>");
        assert_eq!(host_port("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(since("2999-01-01T00:00:00Z"), "<invalid>");
        assert_eq!(since(""), "<unknown>");
    }
}
