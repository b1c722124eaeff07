//! `/openapi/v2`: one Swagger 2.0 document of every group version, as JSON or as the gnostic
//! `openapi_v2.Document` protobuf (`github.com/google/gnostic-models/openapiv2/OpenAPIv2.proto`).
//!
//! kubectl reads the protobuf form to validate on the client what the server cannot take
//! `fieldValidation` for (the items of a `kind: List` manifest) and for `kubectl explain
//! --output=plaintext-openapiv2`. It finds a kind's schema by the
//! `x-kubernetes-group-version-kind` extension of its definition and parses definitions the
//! way `k8s.io/kube-openapi/pkg/util/proto` does: a `$ref` stands alone (no type, no
//! properties), arrays have one item schema. Paths are not read, so the document has none.
//!
//! Owns: turning the OpenAPI 3 schemas of [`super::openapi`] into Swagger 2 definitions, the
//! protobuf encoding of the few messages those need, and which form a request gets.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::openapi::{kind_schemas, OpenApi};
use super::registry::Registry;
use super::version;

/// The media type of the protobuf form, as kubectl asks for it.
pub const PROTOBUF_ACCEPT: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// The content type upstream answers the protobuf form with.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The document in both forms, and its hash (the ETag).
pub struct Documents {
    pub hash: String,
    pub json: Bytes,
    pub protobuf: Bytes,
}

/// Whether a request with this `Accept` header gets the protobuf form (else JSON).
pub fn wants_protobuf(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|media| {
            media
                .trim()
                .starts_with("application/com.github.proto-openapi.spec.v2")
        })
    })
}

impl OpenApi {
    /// The `/openapi/v2` document; built on first request and kept until the registry
    /// changes ([`OpenApi::forget`]).
    pub fn v2(&self, registry: &Registry) -> Arc<Documents> {
        if let Some(documents) = self.v2.lock().expect("openapi v2 cache").as_ref() {
            return documents.clone();
        }
        let document = build(registry);
        let json = serde_json::to_vec(&document).expect("documents serialize");
        let protobuf = encode_document(&document);
        let documents = Arc::new(Documents {
            hash: hex::encode(Sha256::digest(&json)).to_uppercase(),
            json: Bytes::from(json),
            protobuf: Bytes::from(protobuf),
        });
        *self.v2.lock().expect("openapi v2 cache") = Some(documents.clone());
        documents
    }
}

/// The Swagger 2.0 document of every served kind.
fn build(registry: &Registry) -> Value {
    let (schemas, _) = kind_schemas(&registry.all());
    let definitions: Map<String, Value> = schemas
        .into_iter()
        .map(|(name, mut schema)| {
            to_swagger(&mut schema);
            (name, schema)
        })
        .collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version::git_version()},
        "paths": {},
        "definitions": definitions,
    })
}

/// Rewrites one OpenAPI 3 schema into its Swagger 2 form, in place: references point into
/// `#/definitions/`, a lone `allOf: [{$ref}]` (how schemars keeps a description beside a
/// reference) becomes the reference itself, and `nullable` (not in Swagger 2) goes.
fn to_swagger(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    object.remove("nullable");
    let lone_ref = match object.get("allOf") {
        Some(Value::Array(all)) if all.len() == 1 && all[0].get("$ref").is_some() => {
            all[0].get("$ref").cloned()
        }
        _ => None,
    };
    if let Some(reference) = lone_ref {
        if !object.contains_key("type") && !object.contains_key("properties") {
            object.remove("allOf");
            object.insert("$ref".into(), reference);
        }
    }
    if let Some(Value::String(reference)) = object.get_mut("$ref") {
        if let Some(name) = reference.strip_prefix("#/components/schemas/") {
            *reference = format!("#/definitions/{name}");
        }
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(to_swagger);
    }
    for key in ["items", "additionalProperties", "not"] {
        match object.get_mut(key) {
            Some(Value::Array(items)) => items.iter_mut().for_each(to_swagger),
            Some(sub) => to_swagger(sub),
            None => {}
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = object.get_mut(key) {
            subs.iter_mut().for_each(to_swagger);
        }
    }
}

/// Protobuf wire types used here.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u64, wire: u64) {
        self.varint(field << 3 | wire);
    }

    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        self.key(field, LENGTH_DELIMITED);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string field, left out when empty as proto3 does.
    fn string(&mut self, field: u64, value: &str) {
        if !value.is_empty() {
            self.bytes(field, value.as_bytes());
        }
    }

    fn message(&mut self, field: u64, message: Message) {
        self.bytes(field, &message.0);
    }

    fn boolean(&mut self, field: u64, value: bool) {
        self.key(field, VARINT);
        self.varint(u64::from(value));
    }

    fn double(&mut self, field: u64, value: f64) {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn int64(&mut self, field: u64, value: i64) {
        self.key(field, VARINT);
        self.varint(value as u64);
    }
}

/// `Document`: swagger = 1, info = 2, definitions = 9 (paths = 8 left empty).
fn encode_document(document: &Value) -> Vec<u8> {
    let mut out = Message::default();
    out.string(1, document["swagger"].as_str().unwrap_or_default());
    let mut info = Message::default();
    info.string(1, document["info"]["title"].as_str().unwrap_or_default());
    info.string(2, document["info"]["version"].as_str().unwrap_or_default());
    out.message(2, info);
    if let Some(Value::Object(definitions)) = document.get("definitions") {
        // Definitions { repeated NamedSchema additional_properties = 1 }
        out.message(9, named_schemas(definitions));
    }
    out.0
}

/// A message whose field 1 is `repeated NamedSchema` (`Definitions`, `Properties`).
fn named_schemas(schemas: &Map<String, Value>) -> Message {
    let mut out = Message::default();
    for (name, schema) in schemas {
        let mut named = Message::default();
        named.string(1, name);
        named.message(2, encode_schema(schema));
        out.message(1, named);
    }
    out
}

/// `Any`: the value as YAML text (field 2); JSON is YAML.
fn any(value: &Value) -> Message {
    let mut out = Message::default();
    out.bytes(2, value.to_string().as_bytes());
    out
}

/// `Schema`, field numbers from `OpenAPIv2.proto`.
fn encode_schema(schema: &Value) -> Message {
    let mut out = Message::default();
    let Value::Object(object) = schema else {
        return out;
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    out.string(1, text("$ref"));
    out.string(2, text("format"));
    out.string(3, text("title"));
    out.string(4, text("description"));
    if let Some(default) = object.get("default") {
        out.message(5, any(default));
    }
    for (field, key) in [(6, "multipleOf"), (7, "maximum"), (9, "minimum")] {
        if let Some(value) = object.get(key).and_then(Value::as_f64) {
            out.double(field, value);
        }
    }
    let flags = [
        (8, "exclusiveMaximum"),
        (10, "exclusiveMinimum"),
        (16, "uniqueItems"),
    ];
    for (field, key) in flags {
        if object.get(key).and_then(Value::as_bool) == Some(true) {
            out.boolean(field, true);
        }
    }
    let counts = [
        (11, "maxLength"),
        (12, "minLength"),
        (14, "maxItems"),
        (15, "minItems"),
        (17, "maxProperties"),
        (18, "minProperties"),
    ];
    for (field, key) in counts {
        if let Some(value) = object.get(key).and_then(Value::as_i64) {
            out.int64(field, value);
        }
    }
    out.string(13, text("pattern"));
    for required in object
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.string(19, required.as_str().unwrap_or_default());
    }
    for value in object
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.message(20, any(value));
    }
    // AdditionalPropertiesItem { oneof { Schema schema = 1; bool boolean = 2; } }
    match object.get("additionalProperties") {
        Some(Value::Bool(allowed)) => {
            let mut item = Message::default();
            item.boolean(2, *allowed);
            out.message(21, item);
        }
        Some(sub @ Value::Object(_)) => {
            let mut item = Message::default();
            item.message(1, encode_schema(sub));
            out.message(21, item);
        }
        _ => {}
    }
    // TypeItem { repeated string value = 1 }
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(one)) => vec![one],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let mut item = Message::default();
        types.iter().for_each(|t| item.string(1, t));
        out.message(22, item);
    }
    // ItemsItem { repeated Schema schema = 1 }
    let items: Vec<&Value> = match object.get("items") {
        Some(Value::Array(many)) => many.iter().collect(),
        Some(one) => vec![one],
        None => vec![],
    };
    if !items.is_empty() {
        let mut item = Message::default();
        items
            .iter()
            .for_each(|sub| item.message(1, encode_schema(sub)));
        out.message(23, item);
    }
    for sub in object
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.message(24, encode_schema(sub));
    }
    if let Some(Value::Object(properties)) = object.get("properties") {
        out.message(25, named_schemas(properties));
    }
    if object.get("readOnly").and_then(Value::as_bool) == Some(true) {
        out.boolean(27, true);
    }
    if let Some(example) = object.get("example") {
        out.message(30, any(example));
    }
    // NamedAny { string name = 1; Any value = 2; }
    for (name, value) in object.iter().filter(|(name, _)| name.starts_with("x-")) {
        let mut named = Message::default();
        named.string(1, name);
        named.message(2, any(value));
        out.message(31, named);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of one message: (field number, wire type, bytes or varint value).
    fn fields(mut buf: &[u8]) -> Vec<(u64, u64, Vec<u8>, u64)> {
        fn varint(buf: &mut &[u8]) -> u64 {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = buf[0];
                *buf = &buf[1..];
                value |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            value
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                VARINT => {
                    let value = varint(&mut buf);
                    out.push((field, wire, vec![], value));
                }
                FIXED64 => {
                    out.push((field, wire, buf[..8].to_vec(), 0));
                    buf = &buf[8..];
                }
                LENGTH_DELIMITED => {
                    let len = varint(&mut buf) as usize;
                    out.push((field, wire, buf[..len].to_vec(), 0));
                    buf = &buf[len..];
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    fn all(buf: &[u8], field: u64) -> Vec<Vec<u8>> {
        fields(buf)
            .into_iter()
            .filter(|f| f.0 == field)
            .map(|f| f.2)
            .collect()
    }

    fn one(buf: &[u8], field: u64) -> Vec<u8> {
        let found = all(buf, field);
        assert_eq!(found.len(), 1, "field {field} once");
        found.into_iter().next().unwrap()
    }

    fn text(buf: &[u8], field: u64) -> String {
        String::from_utf8(one(buf, field)).unwrap()
    }

    /// The `Schema` of `name` in a message of `repeated NamedSchema` at field 1.
    fn named(buf: &[u8], name: &str) -> Vec<u8> {
        all(buf, 1)
            .into_iter()
            .find(|named| text(named, 1) == name)
            .map(|named| one(&named, 2))
            .unwrap_or_else(|| panic!("{name} is defined"))
    }

    #[test]
    fn protobuf_document_has_gnostic_field_numbers() {
        let documents = OpenApi::default().v2(&Registry::builtin());
        let doc = &documents.protobuf;
        assert_eq!(text(doc, 1), "2.0");
        assert_eq!(text(&one(doc, 2), 1), "Kubernetes");
        let definitions = one(doc, 9);
        let config_map = named(&definitions, "io.k8s.api.core.v1.ConfigMap");
        let extension = all(&config_map, 31)
            .into_iter()
            .find(|named| text(named, 1) == "x-kubernetes-group-version-kind")
            .expect("ConfigMap carries its group version kind");
        let yaml: Value = serde_json::from_str(&text(&one(&extension, 2), 2)).unwrap();
        assert_eq!(
            yaml,
            json!([{"group": "", "version": "v1", "kind": "ConfigMap"}])
        );
        let properties = one(&config_map, 25);
        let metadata = named(&properties, "metadata");
        assert_eq!(
            text(&metadata, 1),
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        assert!(all(&metadata, 22).is_empty(), "a reference has no type");
        let data = named(&properties, "data");
        assert_eq!(text(&one(&data, 22), 1), "object");
        let values = one(&one(&data, 21), 1);
        assert_eq!(text(&one(&values, 22), 1), "string");
        let immutable = named(&properties, "immutable");
        assert_eq!(text(&one(&immutable, 22), 1), "boolean");
        assert!(text(&immutable, 4).contains("Immutable"));

        let pod_spec = named(&definitions, "io.k8s.api.core.v1.PodSpec");
        let containers = named(&one(&pod_spec, 25), "containers");
        assert_eq!(text(&one(&containers, 22), 1), "array");
        let item = one(&one(&containers, 23), 1);
        assert_eq!(text(&item, 1), "#/definitions/io.k8s.api.core.v1.Container");
        assert!(all(&pod_spec, 19)
            .iter()
            .any(|required| required == b"containers"));
    }

    #[test]
    fn json_document_is_swagger_2() {
        let documents = OpenApi::default().v2(&Registry::builtin());
        let doc: Value = serde_json::from_slice(&documents.json).unwrap();
        assert_eq!(doc["swagger"], "2.0");
        let deployment = &doc["definitions"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            deployment["properties"]["spec"]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(!String::from_utf8_lossy(&documents.json).contains("#/components/"));
    }

    #[test]
    fn accept_picks_the_form() {
        assert!(wants_protobuf(Some(PROTOBUF_ACCEPT)));
        assert!(wants_protobuf(Some(
            "application/json;q=0.5, application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
        )));
        assert!(!wants_protobuf(Some("application/json")));
        assert!(!wants_protobuf(None));
    }
}
