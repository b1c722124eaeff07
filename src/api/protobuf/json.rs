//! One message's wire bytes → the JSON Go's `encoding/json` writes for the same value:
//! JSON names from the Go struct tags, `omitempty` zero values left out, nil pointers,
//! slices and maps as `null` unless `omitempty`, structs always present, inline structs
//! merged into their parent. The messages with their own JSON form are in [`super::special`].

use base64::Engine;
use serde_json::{Map, Number, Value};

use super::schema::{self, Field, Ty, INLINE, NILABLE, OMITEMPTY, REPEATED};
use super::special;
use super::wire::{Reader, Wire};
use super::DecodeError;

/// Nesting beyond this is refused rather than risking the stack on hostile input; real
/// objects (CRD schemas included) stay far below it.
const MAX_DEPTH: usize = 100;

/// Where in the object a decoding step is, for error messages (`Deployment.spec.replicas`).
#[derive(Clone, Copy)]
pub struct At<'p> {
    pub path: &'p str,
    pub depth: usize,
}

impl At<'_> {
    pub fn error(&self, reason: impl ToString) -> DecodeError {
        DecodeError::Field {
            path: self.path.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Where `field` of the message at `self` is; inline fields stay at their parent.
    fn child(&self, field: &Field) -> String {
        if field.has(INLINE) {
            self.path.to_string()
        } else {
            format!("{}.{}", self.path, field.json)
        }
    }
}

/// Decodes `buf` as the message named `name`.
pub fn message(name: &str, buf: &[u8], at: At<'_>) -> Result<Value, DecodeError> {
    if at.depth > MAX_DEPTH {
        return Err(at.error(format!("nested more than {MAX_DEPTH} messages deep")));
    }
    if let Some(value) = special::decode(name, buf, at)? {
        return Ok(value);
    }
    let msg = schema::message(name).ok_or_else(|| at.error(format!("unknown message {name}")))?;
    let mut slots: Vec<Option<Value>> = vec![None; msg.fields.len()];
    let mut reader = Reader::new(buf);
    while let Some((tag, wire)) = reader.field().map_err(|e| at.error(e))? {
        // Unknown fields are skipped, as upstream does for fields newer than its types.
        let Some((index, field)) = msg.field(tag) else {
            continue;
        };
        let path = at.child(field);
        let inner = At {
            path: &path,
            depth: at.depth + 1,
        };
        let slot = &mut slots[index];
        match &field.ty {
            Ty::Map(key, value) => {
                let (k, v) = map_entry(key, value, wire, inner)?;
                slot.get_or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("map slots hold objects")
                    .insert(k, v);
            }
            ty if field.has(REPEATED) => {
                let items = slot.get_or_insert_with(|| Value::Array(Vec::new()));
                let items = items.as_array_mut().expect("repeated slots hold arrays");
                repeated(ty, wire, items, inner)?;
            }
            ty => *slot = Some(single(ty, wire, inner)?),
        }
    }
    let mut out = Map::new();
    for (field, slot) in msg.fields.iter().zip(slots) {
        let path = at.child(field);
        let inner = At {
            path: &path,
            depth: at.depth + 1,
        };
        if let Some(value) = json_value(field, slot, inner)? {
            match value {
                Value::Object(fields) if field.has(INLINE) => out.extend(fields),
                value => {
                    out.insert(field.json.to_string(), value);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// What Go writes for `field` holding `slot` (None: not on the wire), or None to leave
/// it out.
fn json_value(
    field: &Field,
    slot: Option<Value>,
    at: At<'_>,
) -> Result<Option<Value>, DecodeError> {
    let omitempty = field.has(OMITEMPTY);
    let Some(value) = slot else {
        if field.has(NILABLE) {
            return Ok((!omitempty).then_some(Value::Null));
        }
        return Ok(match &field.ty {
            // A struct is never empty to encoding/json: its zero value is written.
            Ty::Msg(name) => Some(message(name, &[], at)?),
            ty => (!omitempty).then(|| zero(ty)),
        });
    };
    let empty = match &field.ty {
        Ty::Bytes => value.as_str() == Some(""),
        Ty::Msg(_) | Ty::Map(..) => false,
        ty => !field.has(NILABLE) && value == zero(ty),
    };
    Ok((!(omitempty && empty)).then_some(value))
}

fn zero(ty: &Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes => Value::from(""),
        Ty::Bool => Value::Bool(false),
        Ty::I32 | Ty::I64 => Value::from(0),
        Ty::F64 => Value::from(0.0),
        Ty::Msg(_) | Ty::Map(..) => Value::Null,
    }
}

fn mismatch(ty: &Ty, wire: &Wire<'_>, at: At<'_>) -> DecodeError {
    let got = match wire {
        Wire::Varint(_) => "varint",
        Wire::Fixed64(_) => "fixed64",
        Wire::Bytes(_) => "length-delimited",
        Wire::Fixed32(_) => "fixed32",
    };
    let wanted = match ty {
        Ty::Str => "string",
        Ty::Bytes => "bytes",
        Ty::Bool => "bool",
        Ty::I32 => "int32",
        Ty::I64 => "int64",
        Ty::F64 => "double",
        Ty::Msg(name) => name,
        Ty::Map(..) => "map entry",
    };
    at.error(format!("a {got} value cannot hold a {wanted} field"))
}

/// One non-repeated value.
pub fn single(ty: &Ty, wire: Wire<'_>, at: At<'_>) -> Result<Value, DecodeError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => Value::String(
            std::str::from_utf8(b)
                .map_err(|_| at.error("the string is not valid UTF-8"))?
                .to_string(),
        ),
        (Ty::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // int32 travels sign-extended to 64 bits; the truncation recovers it.
        (Ty::I32, Wire::Varint(v)) => Value::from(v as i32),
        (Ty::I64, Wire::Varint(v)) => Value::from(v as i64),
        (Ty::F64, Wire::Fixed64(v)) => Number::from_f64(f64::from_bits(v))
            .map(Value::Number)
            .ok_or_else(|| at.error("the number is not finite"))?,
        (Ty::Msg(name), Wire::Bytes(b)) => message(name, b, at)?,
        (ty, wire) => return Err(mismatch(ty, &wire, at)),
    })
}

/// One occurrence of a repeated field: a single element, or packed numbers.
fn repeated(
    ty: &Ty,
    wire: Wire<'_>,
    items: &mut Vec<Value>,
    at: At<'_>,
) -> Result<(), DecodeError> {
    let packed = matches!(ty, Ty::Bool | Ty::I32 | Ty::I64 | Ty::F64);
    match wire {
        Wire::Bytes(b) if packed => {
            let mut reader = Reader::new(b);
            while !reader.is_empty() {
                let element = match ty {
                    Ty::F64 => Wire::Fixed64(reader.fixed64().map_err(|e| at.error(e))?),
                    _ => Wire::Varint(reader.varint().map_err(|e| at.error(e))?),
                };
                items.push(single(ty, element, at)?);
            }
        }
        wire => items.push(single(ty, wire, at)?),
    }
    Ok(())
}

/// One `map<key, value>` entry: key = 1, value = 2; a missing part is its zero value.
fn map_entry(
    key: &Ty,
    value: &Ty,
    wire: Wire<'_>,
    at: At<'_>,
) -> Result<(String, Value), DecodeError> {
    let Wire::Bytes(entry) = wire else {
        return Err(mismatch(&Ty::Map(&Ty::Str, &Ty::Str), &wire, at));
    };
    let (mut k, mut v) = (None, None);
    let mut reader = Reader::new(entry);
    while let Some((tag, wire)) = reader.field().map_err(|e| at.error(e))? {
        match tag {
            1 => k = Some(single(key, wire, at)?),
            2 => v = Some(single(value, wire, at)?),
            _ => {}
        }
    }
    let k = match k.unwrap_or_else(|| zero(key)) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let v = match (v, value) {
        (Some(v), _) => v,
        (None, Ty::Msg(name)) => message(name, &[], at)?,
        (None, ty) => zero(ty),
    };
    Ok((k, v))
}
