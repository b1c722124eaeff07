//! Defaulting: what the server fills in when a client leaves it out, per kind, as upstream
//! does before validation.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Applies `kind`'s defaults to `object` in place.
pub fn apply(kind: &str, object: &mut Value) {
    if kind == "Secret" {
        secret(object);
    }
}

/// `stringData` is write-only convenience: merged into `data` (base64), then dropped.
fn secret(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(strings)) = map.remove("stringData") {
        let data = map
            .entry("data")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(data) = data.as_object_mut() {
            for (key, value) in strings {
                if let Some(text) = value.as_str() {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                    data.insert(key, Value::String(encoded));
                }
            }
        }
    }
    map.entry("type")
        .or_insert_with(|| Value::String("Opaque".to_string()));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn secret_string_data_becomes_data() {
        let mut secret = json!({"kind": "Secret", "stringData": {"password": "s3cret"}, "data": {"user": "YWRtaW4="}});
        apply("Secret", &mut secret);
        assert_eq!(
            secret["data"],
            json!({"user": "YWRtaW4=", "password": "czNjcmV0"})
        );
        assert_eq!(secret["type"], "Opaque");
        assert!(secret.get("stringData").is_none());
    }
}
