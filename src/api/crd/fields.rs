//! Field errors of custom resources in upstream's wording (k8s.io/apimachinery's
//! `field.Error` as apiextensions-apiserver builds them from kube-openapi's results).

use serde_json::Value;

use crate::api::error::FieldError;

/// A value as Go's `field.Error` prints it: strings quoted, numbers and booleans bare.
pub fn go_value(value: &Value) -> String {
    match value {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Number(n) => number(n),
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// A number as Go's `%v` prints a float64 or int64 (`3`, not `3.0`).
pub fn number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

fn error(reason: &'static str, field: &str, message: String) -> FieldError {
    FieldError {
        reason,
        field: field.to_string(),
        message,
    }
}

/// `Invalid value: <value>: <detail>`.
pub fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
    error(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {}: {detail}", go_value(value)),
    )
}

/// A type mismatch: `Invalid value: "string": spec.size in body must be of type integer: "string"`
/// (kube-openapi reports the type it found as the value).
pub fn type_invalid(field: &str, expected: &str, found: &str) -> FieldError {
    let found = Value::String(found.to_string());
    error(
        "FieldValueTypeInvalid",
        field,
        format!(
            "Invalid value: {v}: {field} in body must be of type {expected}: {v}",
            v = go_value(&found)
        ),
    )
}

/// A string that does not have its declared format.
pub fn format_invalid(field: &str, format: &str, value: &str) -> FieldError {
    let value = Value::String(value.to_string());
    error(
        "FieldValueTypeInvalid",
        field,
        format!(
            "Invalid value: {v}: {field} in body must be of type {format}: {v}",
            v = go_value(&value)
        ),
    )
}

/// `Unsupported value: "x": supported values: "a", "b"`.
pub fn not_supported(field: &str, value: &Value, allowed: &[Value]) -> FieldError {
    let allowed: Vec<String> = allowed
        .iter()
        .map(|a| match a {
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => serde_json::to_string(&other.to_string()).unwrap_or_default(),
        })
        .collect();
    error(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {}: supported values: {}",
            go_value(value),
            allowed.join(", ")
        ),
    )
}

/// `Too long: may not be more than 3 bytes`.
pub fn too_long(field: &str, max: u64) -> FieldError {
    let unit = if max == 1 { "byte" } else { "bytes" };
    error(
        "FieldValueTooLong",
        field,
        format!("Too long: may not be more than {max} {unit}"),
    )
}

/// `Too many: 4: must have at most 3 items`.
pub fn too_many(field: &str, actual: usize, max: u64) -> FieldError {
    error(
        "FieldValueTooMany",
        field,
        format!("Too many: {actual}: must have at most {max} items"),
    )
}

/// `Required value` (with a detail when there is one).
pub fn required(field: &str, detail: &str) -> FieldError {
    FieldError::required(field, detail)
}
