//! Object validation as kube-apiserver does it, with its messages: names, labels and
//! annotations of every object here; kind-specific rules on create ([`kinds`]) and the
//! fields that may not change on update ([`immutable`]).

pub mod immutable;
pub mod kinds;

use serde_json::{Map, Value};

use super::error::FieldError;

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// The problems of a value: too long, and/or not of the right shape (`message`).
fn problems(value: &str, max: usize, well_formed: bool, message: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > max {
        errors.push(format!("must be no more than {max} characters"));
    }
    if !well_formed {
        errors.push(message.to_string());
    }
    errors
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn is_label(part: &str) -> bool {
    !part.is_empty()
        && part.chars().all(is_label_char)
        && part.starts_with(is_alnum_lower)
        && part.ends_with(is_alnum_lower)
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(value: &str) -> Vec<String> {
    problems(value, DNS1123_LABEL_MAX, is_label(value), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    problems(value, DNS1123_SUBDOMAIN_MAX, value.split('.').all(is_label), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
}

/// RFC 1035 label (Service names): starts with a letter.
pub fn dns1035_label(value: &str) -> Vec<String> {
    let well_formed = is_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase());
    problems(value, DNS1123_LABEL_MAX, well_formed, "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
}

/// How a kind's names are checked.
pub fn name_rule(kind: &str) -> fn(&str) -> Vec<String> {
    match kind {
        "Namespace" => dns1123_label,
        "Service" => dns1035_label,
        _ => dns1123_subdomain,
    }
}

fn qualified_name(key: &str) -> Vec<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let mut errors = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errors.push("prefix part must be non-empty".to_string());
        } else {
            errors.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        errors.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    errors
}

fn label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_string());
    }
    let ok = value.is_empty()
        || (value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if !ok {
        errors.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errors
}

fn string_map<'a>(
    meta: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Map<String, Value>> {
    match meta.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            for (key, value) in map {
                if !value.is_string() {
                    errors.push(FieldError::invalid(
                        &format!("metadata.{field}.{key}"),
                        &value.to_string(),
                        "must be a string",
                    ));
                }
            }
            Some(map)
        }
        Some(other) => {
            errors.push(FieldError::invalid(
                &format!("metadata.{field}"),
                &other.to_string(),
                "must be a map of strings",
            ));
            None
        }
    }
}

/// Validates the metadata every object has: name (per `kind`'s rule), labels, annotations.
pub fn object_meta(kind: &str, meta: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errors.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for problem in name_rule(kind)(name) {
            errors.push(FieldError::invalid("metadata.name", name, &problem));
        }
    }
    if let Some(labels) = string_map(meta, "labels", &mut errors) {
        for (key, value) in labels {
            for problem in qualified_name(key) {
                errors.push(FieldError::invalid("metadata.labels", key, &problem));
            }
            let value = value.as_str().unwrap_or_default();
            for problem in label_value(value) {
                errors.push(FieldError::invalid("metadata.labels", value, &problem));
            }
        }
    }
    if let Some(annotations) = string_map(meta, "annotations", &mut errors) {
        let mut total = 0;
        for (key, value) in annotations {
            for problem in qualified_name(&key.to_ascii_lowercase()) {
                errors.push(FieldError::invalid("metadata.annotations", key, &problem));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errors.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".to_string(),
                message: format!("Too long: may not be more than {ANNOTATIONS_MAX_BYTES} bytes"),
            });
        }
    }
    owner_references(meta, &mut errors);
    errors
}

/// Each owner reference names its owner fully; at most one is the controller.
fn owner_references(meta: &Map<String, Value>, errors: &mut Vec<FieldError>) {
    let Some(references) = meta.get("ownerReferences").and_then(Value::as_array) else {
        return;
    };
    let mut controllers = Vec::new();
    for reference in references {
        for (field, what) in [
            ("apiVersion", "version"),
            ("kind", "kind"),
            ("name", "name"),
            ("uid", "uid"),
        ] {
            let value = reference
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default();
            if value.is_empty() {
                errors.push(FieldError::invalid(
                    &format!("metadata.ownerReferences.{field}"),
                    "",
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if reference.get("controller").and_then(Value::as_bool) == Some(true) {
            let name = reference
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            controllers.push(name.to_string());
        }
    }
    if controllers.len() > 1 {
        errors.push(FieldError::invalid_raw(
            "metadata.ownerReferences",
            &serde_json::to_string(references).unwrap_or_default(),
            &format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn meta(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn names_follow_the_kind_rule() {
        assert!(dns1123_subdomain("web.example-1").is_empty());
        assert!(!dns1123_subdomain("Web").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1035_label("1abc").is_empty());
        assert!(dns1123_label("1abc").is_empty());
        let errors = object_meta("ConfigMap", &meta(json!({"name": "Bad_Name"})));
        assert_eq!(errors[0].field, "metadata.name");
        assert!(errors[0]
            .message
            .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
        assert_eq!(
            object_meta("ConfigMap", &meta(json!({})))[0].reason,
            "FieldValueRequired"
        );
    }

    #[test]
    fn owner_references_name_their_owner() {
        let errors = object_meta(
            "Pod",
            &meta(json!({"name": "a", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "", "controller": true},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs2", "uid": "u2", "controller": true},
            ]})),
        );
        assert_eq!(errors[0].field, "metadata.ownerReferences.uid");
        assert_eq!(
            errors[0].message,
            "Invalid value: \"\": uid must not be empty"
        );
        assert!(errors[1]
            .message
            .ends_with("Found \"true\" in references for rs and rs2"));
    }

    #[test]
    fn labels_and_annotations_are_checked() {
        assert!(object_meta(
            "Pod",
            &meta(json!({"name": "a", "labels": {"app.kubernetes.io/name": "web", "tier": ""}}))
        )
        .is_empty());
        let errors = object_meta(
            "Pod",
            &meta(json!({"name": "a", "labels": {"bad key": "x", "ok": "-nope"}})),
        );
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| e.field == "metadata.labels"));
        let errors = object_meta("Pod", &meta(json!({"name": "a", "annotations": {"x": 1}})));
        assert_eq!(errors[0].field, "metadata.annotations.x");
        let big = "v".repeat(ANNOTATIONS_MAX_BYTES);
        let errors = object_meta(
            "Pod",
            &meta(json!({"name": "a", "annotations": {"k": big}})),
        );
        assert_eq!(errors[0].reason, "FieldValueTooLong");
    }
}
