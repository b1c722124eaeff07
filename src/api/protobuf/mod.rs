//! Request bodies in the Kubernetes protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! decoded into the JSON the Kubernetes JSON encoding gives the same object, so the rest of
//! the API server sees one format. Responses stay JSON, which every client accepts.
//!
//! kubectl 1.32+ and client-go typed clients send protobuf for typed commands (`kubectl
//! create configmap/secret/deployment/job/role...`, `run`, `expose`, DeleteOptions) and do
//! not fall back to JSON on a 415. `tests/kubectl_protobuf.rs` covers them with the
//! kubectl on PATH.
//!
//! Owns: the envelope ([`decode`]: magic `k8s\0` + `runtime.Unknown` naming apiVersion and
//! kind around the object's bytes), the wire format ([`wire`]), the message table generated
//! from upstream `generated.proto` files and Go struct tags ([`generated`], re-made by
//! `tools/protobuf/generate.py`), the Go JSON rules ([`json`]) and the types with their own
//! JSON form ([`special`]). Knows nothing of HTTP or the store.

mod generated;
mod json;
mod schema;
mod special;
mod wire;

use serde_json::Value;
use thiserror::Error;

use json::At;
use wire::{Reader, Wire};

/// The media type of protobuf request bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("the body does not start with the Kubernetes protobuf prefix \"k8s\\x00\"")]
    Magic,
    #[error("the envelope names no apiVersion and kind")]
    NoKind,
    #[error("no protobuf message is known for kind {kind:?} in apiVersion {api_version:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
}

/// Decodes a protobuf request body into the object's JSON, `apiVersion` and `kind`
/// included.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let unknown = body.strip_prefix(MAGIC).ok_or(DecodeError::Magic)?;
    let at = At {
        path: "envelope",
        depth: 0,
    };
    let text = |wire: Wire<'_>| match wire {
        Wire::Bytes(b) => std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| at.error("a string is not valid UTF-8")),
        _ => Err(at.error("a string field is not length-delimited")),
    };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (tag, wire) in Reader::fields(unknown).map_err(|e| at.error(e))? {
        match (tag, wire) {
            (1, Wire::Bytes(type_meta)) => {
                for (tag, wire) in Reader::fields(type_meta).map_err(|e| at.error(e))? {
                    match tag {
                        1 => api_version = text(wire)?,
                        2 => kind = text(wire)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, wire) => {
                let encoding = text(wire)?;
                if !encoding.is_empty() {
                    return Err(DecodeError::ContentEncoding(encoding));
                }
            }
            (1 | 2, _) => return Err(at.error("the envelope's fields are malformed")),
            _ => {}
        }
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(DecodeError::NoKind);
    }
    let message =
        schema::for_kind(&api_version, &kind).ok_or_else(|| DecodeError::UnknownKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let at = At {
        path: &kind,
        depth: 0,
    };
    let mut object = json::message(message.name, raw, at)?;
    let Some(fields) = object.as_object_mut() else {
        // A kind whose JSON form is not an object (Time, Verbs...) is no resource.
        return Err(DecodeError::UnknownKind { api_version, kind });
    };
    fields.insert("apiVersion".to_string(), Value::String(api_version));
    fields.insert("kind".to_string(), Value::String(kind));
    Ok(object)
}

#[cfg(test)]
mod tests;
