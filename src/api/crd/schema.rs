//! A CustomResourceDefinition version's structural schema applied to an object, in
//! upstream's order: unknown fields pruned (and `null`s where the schema does not allow
//! them), defaults filled in, then the result validated.

use std::net::{Ipv4Addr, Ipv6Addr};

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use base64::Engine;
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::fields;
use crate::api::error::FieldError;

/// Fields every object and embedded resource keeps whatever its schema says.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Largest compiled form of a schema `pattern`, so no definition can make matching costly.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Patterns kept compiled; definitions are few, so this only bounds a pathological churn.
const PATTERN_CACHE: usize = 1024;

/// A schema `pattern`, compiled once per process (every object of every request matches
/// against it).
pub(super) fn pattern(source: &str) -> Result<Arc<Regex>, regex::Error> {
    static CACHE: LazyLock<Mutex<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);
    if let Some(compiled) = CACHE.lock().expect("pattern cache").get(source) {
        return Ok(compiled.clone());
    }
    let compiled = Arc::new(
        RegexBuilder::new(source)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()?,
    );
    let mut cache = CACHE.lock().expect("pattern cache");
    if cache.len() >= PATTERN_CACHE {
        cache.clear();
    }
    cache.insert(source.to_string(), compiled.clone());
    Ok(compiled)
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// The schema of the property `key` of an object described by `schema`, if it has one.
fn property_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema
        .pointer(&format!(
            "/properties/{}",
            key.replace('~', "~0").replace('/', "~1")
        ))
        .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
}

/// Prunes, defaults and validates `object` against a version's `openAPIV3Schema`; the
/// object as it is stored, or every field that is wrong.
pub fn apply(schema: &Value, object: &Value) -> Result<Value, Vec<FieldError>> {
    let mut object = object.clone();
    normalize(schema, &mut object, true);
    let mut errors = Vec::new();
    validate(schema, &object, "", true, &mut errors);
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors)
    }
}

/// Drops what the schema does not know and fills in defaults, depth first.
fn normalize(schema: &Value, value: &mut Value, resource: bool) {
    match value {
        Value::Object(map) => {
            let keep_all = flag(schema, "x-kubernetes-preserve-unknown-fields")
                || schema.get("additionalProperties") == Some(&Value::Bool(true));
            let resource = resource || flag(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if resource && OBJECT_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                match property_schema(schema, &key) {
                    Some(sub) => {
                        let item = map.get_mut(&key).expect("listed key");
                        if item.is_null() && !flag(sub, "nullable") {
                            map.remove(&key);
                        } else {
                            normalize(sub, item, false);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        map.remove(&key);
                    }
                }
            }
            apply_defaults(schema, map);
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    normalize(sub, item, false);
                }
            }
        }
        _ => {}
    }
}

fn apply_defaults(schema: &Value, map: &mut Map<String, Value>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, sub) in properties {
        if map.contains_key(key) {
            continue;
        }
        if let Some(default) = sub.get("default") {
            let mut value = default.clone();
            normalize(sub, &mut value, false);
            map.insert(key.clone(), value);
        }
    }
}

/// The JSON type of a value, as kube-openapi names it.
fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether the value's type fits; `None` when it does, else the expected type's name.
fn type_mismatch(schema: &Value, value: &Value) -> Option<String> {
    if flag(schema, "x-kubernetes-int-or-string") {
        return match type_of(value) {
            "integer" | "string" => None,
            _ => Some("integer,string".to_string()),
        };
    }
    let expected = schema.get("type").and_then(Value::as_str)?;
    let found = type_of(value);
    let fits = expected == found || (expected == "number" && found == "integer");
    (!fits).then(|| expected.to_string())
}

fn validate(schema: &Value, value: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    if value.is_null() {
        if !flag(schema, "nullable") {
            if let Some(expected) = type_mismatch(schema, value) {
                errors.push(fields::type_invalid(path, &expected, "null"));
            }
        }
        return;
    }
    if let Some(expected) = type_mismatch(schema, value) {
        errors.push(fields::type_invalid(path, &expected, type_of(value)));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(fields::not_supported(path, value, allowed));
        }
    }
    match value {
        Value::String(s) => validate_string(schema, s, path, errors),
        Value::Number(n) => validate_number(schema, n, path, errors),
        Value::Array(items) => {
            validate_items(schema, items, path, errors);
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(sub, item, &child(path, &i.to_string()), false, errors);
                }
            }
        }
        Value::Object(map) => validate_object(schema, map, path, root, errors),
        _ => {}
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    let resource = root || flag(schema, "x-kubernetes-embedded-resource");
    if flag(schema, "x-kubernetes-embedded-resource") {
        for field in ["apiVersion", "kind"] {
            if map
                .get(field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                errors.push(fields::required(&child(path, field), "must not be empty"));
            }
        }
    }
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(name) {
            errors.push(fields::required(&child(path, name), ""));
        }
    }
    for (key, item) in map {
        if resource && OBJECT_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if let Some(sub) = property_schema(schema, key) {
            validate(sub, item, &child(path, key), false, errors);
        }
    }
}

fn validate_items(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    let count = Value::from(items.len());
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if items.len() as u64 > max {
            errors.push(fields::too_many(path, items.len(), max));
        }
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if (items.len() as u64) < min {
            errors.push(fields::invalid(
                path,
                &count,
                &format!("{path} in body should have at least {min} items"),
            ));
        }
    }
    if flag(schema, "uniqueItems") {
        let duplicate = items
            .iter()
            .enumerate()
            .any(|(i, a)| items[..i].contains(a));
        if duplicate {
            errors.push(fields::invalid(
                path,
                &Value::Array(items.to_vec()),
                &format!("{path} in body shouldn't contain duplicates"),
            ));
        }
    }
}

fn validate_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let value = Value::String(s.to_string());
    let length = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if length > max {
            errors.push(fields::too_long(path, max));
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if length < min {
            errors.push(fields::invalid(
                path,
                &value,
                &format!("{path} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        // An unparsable pattern is refused when the definition is created.
        if super::schema::pattern(pattern).is_ok_and(|re| !re.is_match(s)) {
            errors.push(fields::invalid(
                path,
                &value,
                &format!("{path} in body should match '{pattern}'"),
            ));
        }
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        if !has_format(format, s) {
            errors.push(fields::format_invalid(path, format, s));
        }
    }
}

/// The string formats upstream checks for custom resources; others are accepted.
fn has_format(format: &str, s: &str) -> bool {
    use time::format_description::well_known::Rfc3339;
    match format {
        "date-time" | "datetime" => time::OffsetDateTime::parse(s, &Rfc3339).is_ok(),
        "date" => {
            time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
        }
        "uuid" => uuid::Uuid::try_parse(s).is_ok() && s.len() == 36,
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "email" => s.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && host.contains('.') && !host.starts_with('.')
        }),
        _ => true,
    }
}

/// A numeric bound: its keyword, its exclusive flag, whether a value is past it, and how
/// the message words it (inclusive, exclusive).
type Limit = (
    &'static str,
    &'static str,
    fn(f64, f64) -> bool,
    [&'static str; 2],
);

fn validate_number(
    schema: &Value,
    n: &serde_json::Number,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let value = Value::Number(n.clone());
    let x = n.as_f64().unwrap_or_default();
    let limits: [Limit; 2] = [
        (
            "maximum",
            "exclusiveMaximum",
            |x, b| x > b,
            ["less than or equal to", "less than"],
        ),
        (
            "minimum",
            "exclusiveMinimum",
            |x, b| x < b,
            ["greater than or equal to", "greater than"],
        ),
    ];
    for (name, exclusive, past, words) in limits {
        let Some(bound) = schema.get(name).and_then(Value::as_number) else {
            continue;
        };
        let b = bound.as_f64().unwrap_or_default();
        let exclusive = flag(schema, exclusive);
        if past(x, b) || (exclusive && x == b) {
            let than = words[usize::from(exclusive)];
            let detail = format!("{path} in body should be {than} {}", fields::number(bound));
            errors.push(fields::invalid(path, &value, &detail));
        }
    }
    if let Some(factor) = schema.get("multipleOf").and_then(Value::as_f64) {
        if factor > 0.0 && (x / factor).fract() != 0.0 {
            errors.push(fields::invalid(
                path,
                &value,
                &format!("{path} in body should be a multiple of {factor}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn widget_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                        "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "note": {"type": "string", "nullable": true},
                        "when": {"type": "string", "format": "date-time"},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        })
    }

    fn messages(result: Result<Value, Vec<FieldError>>) -> Vec<String> {
        result
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_applied() {
        let object = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "labels": {"a": "b"}},
            "spec": {"size": 3, "bogus": 1, "extra": {"anything": [1]}, "labels": {"x": "y"}, "note": null, "tags": null},
            "other": true
        });
        let stored = apply(&widget_schema(), &object).unwrap();
        assert_eq!(stored["metadata"]["labels"]["a"], "b");
        assert_eq!(stored["spec"]["color"], "red");
        assert!(stored["spec"].get("bogus").is_none());
        assert!(stored.get("other").is_none());
        assert_eq!(stored["spec"]["extra"]["anything"], json!([1]));
        assert_eq!(stored["spec"]["labels"]["x"], "y");
        assert!(stored["spec"]["note"].is_null() && stored["spec"].get("note").is_some());
        assert!(stored["spec"].get("tags").is_none());
    }

    #[test]
    fn violations_are_reported_in_upstream_words() {
        let schema = widget_schema();
        let check = |spec: Value| messages(apply(&schema, &json!({"spec": spec})));
        assert_eq!(
            check(json!({"size": "big"})),
            vec![
                r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#
            ]
        );
        assert_eq!(check(json!({})), vec!["spec.size: Required value"]);
        assert_eq!(
            check(json!({"size": 11})),
            vec!["spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10"]
        );
        assert_eq!(
            check(json!({"size": 0})),
            vec!["spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"]
        );
        assert_eq!(
            check(json!({"size": 1, "color": "green"})),
            vec![r#"spec.color: Unsupported value: "green": supported values: "red", "blue""#]
        );
        assert_eq!(
            check(json!({"size": 1, "name": "toolong"})),
            vec!["spec.name: Too long: may not be more than 5 bytes"]
        );
        assert_eq!(
            check(json!({"size": 1, "name": "a"})),
            vec![
                r#"spec.name: Invalid value: "a": spec.name in body should be at least 2 chars long"#
            ]
        );
        assert_eq!(
            check(json!({"size": 1, "name": "AB"})),
            vec![r#"spec.name: Invalid value: "AB": spec.name in body should match '^[a-z]+$'"#]
        );
        assert_eq!(
            check(json!({"size": 1, "tags": ["a", "b", "c"]})),
            vec!["spec.tags: Too many: 3: must have at most 2 items"]
        );
        assert_eq!(
            check(json!({"size": 1, "tags": ["a", 1]})),
            vec![
                r#"spec.tags.1: Invalid value: "integer": spec.tags.1 in body must be of type string: "integer""#
            ]
        );
        assert_eq!(
            check(json!({"size": 1, "port": true})),
            vec![
                r#"spec.port: Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean""#
            ]
        );
        assert_eq!(
            check(json!({"size": 1, "when": "yesterday"})),
            vec![
                r#"spec.when: Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday""#
            ]
        );
        assert_eq!(
            check(json!({"size": 1, "template": {"spec": {}}})),
            vec![
                "spec.template.apiVersion: Required value: must not be empty",
                "spec.template.kind: Required value: must not be empty"
            ]
        );
        assert!(apply(
            &schema,
            &json!({"spec": {"size": 2, "port": "http", "when": "2024-01-02T03:04:05Z", "template": {"apiVersion": "v1", "kind": "Pod", "spec": {"x": 1}}}})
        )
        .is_ok());
    }
}
