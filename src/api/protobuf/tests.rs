//! Round trips through messages encoded by hand here, byte by byte, as client-go's
//! generated marshallers write them (non-pointer fields always, pointers when set).

use serde_json::{json, Value};

use super::generated::MESSAGES;
use super::json::{self, At};
use super::{decode, DecodeError, MAGIC};

/// A hand-rolled protobuf encoder for the tests.
#[derive(Default, Clone)]
struct Enc(Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Enc {
    fn new() -> Self {
        Enc::default()
    }

    fn int(mut self, tag: u32, v: i64) -> Self {
        varint(&mut self.0, u64::from(tag) << 3);
        varint(&mut self.0, v as u64);
        self
    }

    fn bytes(mut self, tag: u32, b: &[u8]) -> Self {
        varint(&mut self.0, (u64::from(tag) << 3) | 2);
        varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    fn str(self, tag: u32, s: &str) -> Self {
        self.bytes(tag, s.as_bytes())
    }

    fn msg(self, tag: u32, m: Enc) -> Self {
        self.bytes(tag, &m.0)
    }

    fn packed(self, tag: u32, values: &[i64]) -> Self {
        let mut body = Vec::new();
        for v in values {
            varint(&mut body, *v as u64);
        }
        self.bytes(tag, &body)
    }

    /// A `map<string, ...>` entry whose value is already encoded as field 2.
    fn entry(self, tag: u32, key: &str, value: Enc) -> Self {
        let mut entry = Enc::new().str(1, key);
        entry.0.extend(value.0);
        self.msg(tag, entry)
    }

    fn string_entry(self, tag: u32, key: &str, value: &str) -> Self {
        self.entry(tag, key, Enc::new().str(2, value))
    }
}

fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
    let type_meta = Enc::new().str(1, api_version).str(2, kind);
    let mut body = MAGIC.to_vec();
    body.extend(
        Enc::new()
            .msg(1, type_meta)
            .msg(2, raw)
            .str(3, "")
            .str(4, "")
            .0,
    );
    body
}

/// ObjectMeta as client-go writes it: strings and ints always, the zero creation time
/// as an empty message.
fn meta(name: &str) -> Enc {
    Enc::new()
        .str(1, name)
        .str(2, "")
        .str(3, "")
        .str(5, "")
        .str(6, "")
        .int(7, 0)
        .msg(8, Enc::new())
}

#[test]
fn configmap_with_data_and_binary_data() {
    let cm = Enc::new()
        .msg(1, meta("settings").string_entry(11, "app", "web"))
        .string_entry(2, "mode", "fast")
        .entry(3, "blob", Enc::new().bytes(2, &[0, 1, 2, 255]));
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", cm)).unwrap(),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "creationTimestamp": null, "labels": {"app": "web"}},
            "data": {"mode": "fast"},
            "binaryData": {"blob": "AAEC/w=="},
        })
    );
}

#[test]
fn secret_bytes_are_base64() {
    let secret = Enc::new()
        .msg(1, meta("s"))
        .entry(2, "password", Enc::new().bytes(2, b"hunter2"))
        .str(3, "Opaque");
    let value = decode(&envelope("v1", "Secret", secret)).unwrap();
    assert_eq!(value["data"], json!({"password": "aHVudGVyMg=="}));
    assert_eq!(value["type"], "Opaque");
}

fn int_or_string_int(v: i64) -> Enc {
    Enc::new().int(1, 0).int(2, v).str(3, "")
}

fn int_or_string_str(s: &str) -> Enc {
    Enc::new().int(1, 1).int(2, 0).str(3, s)
}

#[test]
fn deployment_with_int_or_string_quantity_and_time() {
    let container = Enc::new()
        .str(1, "web")
        .str(2, "busybox")
        .msg(
            8,
            Enc::new().entry(1, "cpu", Enc::new().msg(2, Enc::new().str(1, "500m"))),
        )
        .str(13, "");
    let template = Enc::new()
        .msg(1, meta("").string_entry(11, "app", "web"))
        .msg(2, Enc::new().msg(2, container));
    let strategy = Enc::new().str(1, "RollingUpdate").msg(
        2,
        Enc::new()
            .msg(1, int_or_string_int(1))
            .msg(2, int_or_string_str("25%")),
    );
    let spec = Enc::new()
        .int(1, 2)
        .msg(2, Enc::new().string_entry(1, "app", "web"))
        .msg(3, template)
        .msg(4, strategy)
        .int(5, 0)
        .int(7, 0);
    let metadata = meta("web").msg(8, Enc::new().int(1, 1_704_164_645).int(2, 0));
    let status = Enc::new().int(1, 0).int(2, 0);
    let deployment = Enc::new().msg(1, metadata).msg(2, spec).msg(3, status);
    let value = decode(&envelope("apps/v1", "Deployment", deployment)).unwrap();

    assert_eq!(
        value["metadata"]["creationTimestamp"],
        "2024-01-02T03:04:05Z"
    );
    assert_eq!(value["spec"]["replicas"], 2);
    assert_eq!(
        value["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    assert_eq!(
        value["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}})
    );
    let pod = &value["spec"]["template"];
    assert_eq!(
        pod["metadata"],
        json!({"labels": {"app": "web"}, "creationTimestamp": null})
    );
    assert_eq!(
        pod["spec"]["containers"],
        json!([{"name": "web", "image": "busybox", "resources": {"limits": {"cpu": "500m"}}}])
    );
    // Zero values of omitempty non-pointer fields are left out, as Go's JSON does.
    assert!(value["spec"].get("minReadySeconds").is_none());
    assert!(value["spec"].get("paused").is_none());
    assert_eq!(value["status"], json!({}));
}

#[test]
fn pointer_zero_values_are_kept() {
    let spec = Enc::new().int(1, 0).msg(3, Enc::new());
    let value = decode(&envelope(
        "apps/v1",
        "Deployment",
        Enc::new().msg(1, meta("d")).msg(2, spec),
    ))
    .unwrap();
    assert_eq!(value["spec"]["replicas"], 0);
}

#[test]
fn packed_and_unpacked_repeated_ints_and_negative_int32() {
    let security = Enc::new().packed(4, &[1000, 2000]).int(4, 3000);
    let port = Enc::new().str(1, "p").int(3, -1).str(4, "TCP");
    let container = Enc::new().str(1, "c").msg(6, port);
    let spec = Enc::new().msg(2, container).msg(14, security);
    let pod = Enc::new().msg(1, meta("p")).msg(2, spec);
    let value = decode(&envelope("v1", "Pod", pod)).unwrap();
    assert_eq!(
        value["spec"]["securityContext"]["supplementalGroups"],
        json!([1000, 2000, 3000])
    );
    assert_eq!(
        value["spec"]["containers"][0]["ports"][0]["containerPort"],
        -1
    );
}

#[test]
fn inline_volume_source_merges_into_the_volume() {
    let volume = Enc::new()
        .str(1, "scratch")
        .msg(2, Enc::new().msg(2, Enc::new().str(1, "")));
    let spec = Enc::new().msg(1, volume).msg(2, Enc::new().str(1, "c"));
    let value = decode(&envelope(
        "v1",
        "Pod",
        Enc::new().msg(1, meta("p")).msg(2, spec),
    ))
    .unwrap();
    assert_eq!(
        value["spec"]["volumes"],
        json!([{"name": "scratch", "emptyDir": {}}])
    );
}

#[test]
fn delete_options_under_any_group_version() {
    let options = Enc::new()
        .int(1, 0)
        .msg(2, Enc::new().str(1, "uid-1"))
        .str(4, "Foreground");
    assert_eq!(
        decode(&envelope("batch/v1", "DeleteOptions", options)).unwrap(),
        json!({
            "apiVersion": "batch/v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": "uid-1"},
            "propagationPolicy": "Foreground",
        })
    );
}

#[test]
fn micro_time_keeps_microseconds() {
    let event = Enc::new()
        .msg(1, meta("e"))
        .msg(2, Enc::new().int(1, 1_704_164_645).int(2, 123_456_789))
        .str(7, "Started");
    let value = decode(&envelope("events.k8s.io/v1", "Event", event)).unwrap();
    assert_eq!(value["eventTime"], "2024-01-02T03:04:05.123456Z");
    assert_eq!(value["reason"], "Started");
}

#[test]
fn crd_schema_either_or_types() {
    let schema = Enc::new()
        .str(5, "object")
        .msg(30, Enc::new().int(1, 1))
        .msg(28, Enc::new().str(5, "string"));
    let version = Enc::new().str(1, "v1").msg(4, Enc::new().msg(1, schema));
    let spec = Enc::new()
        .str(1, "example.com")
        .msg(
            3,
            Enc::new()
                .str(1, "widgets")
                .str(2, "widget")
                .str(4, "Widget"),
        )
        .str(4, "Namespaced")
        .msg(7, version);
    let crd = Enc::new().msg(1, meta("widgets.example.com")).msg(2, spec);
    let value = decode(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        crd,
    ))
    .unwrap();
    assert_eq!(
        value["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        json!({"type": "object", "additionalProperties": true, "not": {"type": "string"}})
    );
}

#[test]
fn envelope_errors_are_reported() {
    assert!(matches!(decode(b"{}"), Err(DecodeError::Magic)));
    assert!(matches!(
        decode(&envelope("v1", "NoSuchKind", Enc::new())),
        Err(DecodeError::UnknownKind { .. })
    ));
    assert!(matches!(decode(MAGIC), Err(DecodeError::NoKind)));
    // Kinds whose JSON is not an object are no resources (and never a panic).
    for kind in ["Time", "Verbs", "Duration", "FieldsV1"] {
        assert!(matches!(
            decode(&envelope("v1", kind, Enc::new())),
            Err(DecodeError::UnknownKind { .. })
        ));
    }
    let mut gzip = envelope("v1", "ConfigMap", Enc::new());
    gzip.extend(Enc::new().str(3, "gzip").0);
    assert!(matches!(
        decode(&gzip),
        Err(DecodeError::ContentEncoding(_))
    ));
    // A varint where ConfigMap.data wants an entry message.
    let bad = envelope("v1", "ConfigMap", Enc::new().int(2, 7));
    let err = decode(&bad).unwrap_err().to_string();
    assert!(err.starts_with("ConfigMap.data: "), "{err}");
}

#[test]
fn hostile_nesting_is_refused() {
    let mut schema = Enc::new().str(5, "string");
    for _ in 0..300 {
        schema = Enc::new().msg(28, schema);
    }
    let version = Enc::new().str(1, "v1").msg(4, Enc::new().msg(1, schema));
    let crd = Enc::new().msg(2, Enc::new().msg(7, version));
    let err = decode(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        crd,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("nested more than"), "{err}");
}

#[test]
fn truncated_and_garbage_input_never_panics() {
    let cm = Enc::new()
        .msg(1, meta("settings").string_entry(11, "app", "web"))
        .string_entry(2, "mode", "fast");
    let body = envelope("v1", "ConfigMap", cm);
    let mut failures = 0;
    for len in 0..body.len() {
        if decode(&body[..len]).is_err() {
            failures += 1;
        }
    }
    // Most cuts land inside a length-delimited field and must fail; none may panic.
    assert!(failures > body.len() / 2, "{failures} of {}", body.len());

    // A deterministic stream of garbage after a valid envelope header.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..2000 {
        let mut raw = Vec::new();
        for _ in 0..(round % 64) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            raw.push(state as u8);
        }
        for kind in [("v1", "Pod"), ("apps/v1", "Deployment"), ("v1", "Secret")] {
            let mut body = envelope(kind.0, kind.1, Enc::new());
            body.truncate(body.len() - 4);
            body.extend(Enc::new().bytes(2, &raw).0);
            let _ = decode(&body);
            let mut direct = MAGIC.to_vec();
            direct.extend(&raw);
            let _ = decode(&direct);
        }
    }
}

#[test]
fn kinds_decode_from_an_empty_message() {
    for (api_version, kind) in [
        ("v1", "Namespace"),
        ("v1", "Service"),
        ("batch/v1", "Job"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("scheduling.k8s.io/v1", "PriorityClass"),
        ("v1", "ResourceQuota"),
    ] {
        let value: Value = decode(&envelope(api_version, kind, Enc::new())).unwrap();
        assert_eq!(value["kind"], kind);
        assert_eq!(value["metadata"], json!({"creationTimestamp": null}));
    }
}

#[test]
fn every_message_has_a_zero_value() {
    for message in MESSAGES {
        let at = At {
            path: message.name,
            depth: 0,
        };
        json::message(message.name, &[], at).unwrap();
    }
}
