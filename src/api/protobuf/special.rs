//! The messages whose JSON form is not an object of their fields, because their Go types
//! have their own `MarshalJSON`: times, durations, quantities, int-or-strings, embedded
//! raw JSON, string lists wrapped in a message, and the either-or types of CRD schemas.

use serde_json::Value;
use time::OffsetDateTime;

use super::json::{self, At};
use super::schema::Ty;
use super::wire::{Reader, Wire};
use super::DecodeError;

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const EXTENSIONS: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1";
const SCHEMA: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps";

/// Seconds of Go's zero `time.Time` (January 1, year 1), which marshals as `null`.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// The JSON of `buf` as message `name` if that message is one of these, else None.
pub fn decode(name: &str, buf: &[u8], at: At<'_>) -> Result<Option<Value>, DecodeError> {
    let Some((package, short)) = name.rsplit_once('.') else {
        return Ok(None);
    };
    let fields = || Fields::read(buf, at);
    let value = match (package, short) {
        (META, "Time") => timestamp(&fields()?, false, at)?,
        (META, "MicroTime") => timestamp(&fields()?, true, at)?,
        (META, "Duration") => Value::String(go_duration(fields()?.int(1, at)?)),
        (META, "FieldsV1") | ("k8s.io.apimachinery.pkg.runtime", "RawExtension") => {
            raw_json(fields()?.bytes(1, at)?, at)?
        }
        (EXTENSIONS, "JSON") => raw_json(fields()?.bytes(1, at)?, at)?,
        ("k8s.io.apimachinery.pkg.api.resource", "Quantity" | "QuantityValue") => {
            // Go's zero Quantity marshals as "0".
            match fields()?.last(1) {
                Some(wire) => json::single(&Ty::Str, wire, at)?,
                None => Value::from("0"),
            }
        }
        ("k8s.io.apimachinery.pkg.util.intstr", "IntOrString") => {
            let fields = fields()?;
            match fields.int(1, at)? {
                0 => Value::from(fields.int(2, at)? as i32),
                1 => fields
                    .last(3)
                    .map(|w| json::single(&Ty::Str, w, at))
                    .transpose()?
                    .unwrap_or_else(|| Value::from("")),
                other => {
                    return Err(at.error(format!(
                        "IntOrString type {other} is neither 0 (int) nor 1 (string)"
                    )))
                }
            }
        }
        (META, "Verbs") | (_, "ExtraValue") => Value::Array(fields()?.all(1, &Ty::Str, at)?),
        (EXTENSIONS, "JSONSchemaPropsOrArray") => {
            let fields = fields()?;
            let schemas = fields.all(2, &Ty::Msg(SCHEMA), at)?;
            if schemas.is_empty() {
                fields.message(1, at)?
            } else {
                Value::Array(schemas)
            }
        }
        (EXTENSIONS, "JSONSchemaPropsOrBool") => {
            let fields = fields()?;
            match fields.message(2, at)? {
                Value::Null => Value::Bool(fields.int(1, at)? != 0),
                schema => schema,
            }
        }
        (EXTENSIONS, "JSONSchemaPropsOrStringArray") => {
            let fields = fields()?;
            let property = fields.all(2, &Ty::Str, at)?;
            if property.is_empty() {
                fields.message(1, at)?
            } else {
                Value::Array(property)
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// The fields of a small message, for picking values by tag.
struct Fields<'a>(Vec<(u32, Wire<'a>)>);

impl<'a> Fields<'a> {
    fn read(buf: &'a [u8], at: At<'_>) -> Result<Self, DecodeError> {
        Reader::fields(buf).map(Fields).map_err(|e| at.error(e))
    }

    /// The last occurrence of `tag`: protobuf's rule for a non-repeated field.
    fn last(&self, tag: u32) -> Option<Wire<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(t, _)| *t == tag)
            .map(|(_, w)| *w)
    }

    fn int(&self, tag: u32, at: At<'_>) -> Result<i64, DecodeError> {
        match self.last(tag) {
            None => Ok(0),
            Some(Wire::Varint(v)) => Ok(v as i64),
            Some(_) => Err(at.error(format!("field {tag} is not a varint"))),
        }
    }

    fn bytes(&self, tag: u32, at: At<'_>) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.last(tag) {
            None => Ok(None),
            Some(Wire::Bytes(b)) => Ok(Some(b)),
            Some(_) => Err(at.error(format!("field {tag} is not length-delimited"))),
        }
    }

    /// Field `tag` as a JSONSchemaProps, or null if absent.
    fn message(&self, tag: u32, at: At<'_>) -> Result<Value, DecodeError> {
        self.last(tag)
            .map(|w| json::single(&Ty::Msg(SCHEMA), w, at))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    fn all(&self, tag: u32, ty: &Ty, at: At<'_>) -> Result<Vec<Value>, DecodeError> {
        self.0
            .iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, w)| json::single(ty, *w, at))
            .collect()
    }
}

/// `Time` (seconds, RFC 3339) or `MicroTime` (six fractional digits), UTC; the empty
/// message is Go's zero time, `null`.
fn timestamp(fields: &Fields<'_>, micro: bool, at: At<'_>) -> Result<Value, DecodeError> {
    if fields.0.is_empty() {
        return Ok(Value::Null);
    }
    let seconds = fields.int(1, at)?;
    let nanos = fields.int(2, at)? as i32;
    if seconds == GO_ZERO_TIME && nanos == 0 {
        return Ok(Value::Null);
    }
    let time = OffsetDateTime::from_unix_timestamp(seconds)
        .map_err(|e| at.error(format!("timestamp {seconds}: {e}")))?;
    let base = time
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]"
        ))
        .map_err(|e| at.error(e))?;
    Ok(Value::String(if micro {
        format!("{base}.{:06}Z", nanos.clamp(0, 999_999_999) / 1000)
    } else {
        format!("{base}Z")
    }))
}

/// Embedded JSON bytes as a value; absent or empty is `null`, as Go marshals nil `Raw`.
fn raw_json(raw: Option<&[u8]>, at: At<'_>) -> Result<Value, DecodeError> {
    match raw {
        None | Some([]) => Ok(Value::Null),
        Some(raw) => serde_json::from_slice(raw)
            .map_err(|e| at.error(format!("the embedded object is not valid JSON: {e}"))),
    }
}

/// Go's `time.Duration.String()`: "1h0m0s", "1m30s", "1.5s", "100ms", "0s".
pub fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_string();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    // The fraction of `v` / 10^digits with trailing zeros dropped, as Go prints it.
    let fraction = |v: u64, digits: u32| {
        let scale = 10u64.pow(digits);
        let frac = format!("{:0width$}", v % scale, width = digits as usize);
        let frac = frac.trim_end_matches('0');
        let whole = v / scale;
        if frac.is_empty() {
            (whole, String::new())
        } else {
            (whole, format!(".{frac}"))
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        let (whole, frac) = fraction(u, 3);
        return format!("{sign}{whole}{frac}µs");
    }
    if u < 1_000_000_000 {
        let (whole, frac) = fraction(u, 6);
        return format!("{sign}{whole}{frac}ms");
    }
    let (seconds, frac) = fraction(u, 9);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{seconds}{frac}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{seconds}{frac}s")
    } else {
        format!("{sign}{seconds}{frac}s")
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn durations_print_as_go_does() {
        let s = 1_000_000_000;
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(5), "5ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(100_000_000), "100ms");
        assert_eq!(go_duration(s + s / 2), "1.5s");
        assert_eq!(go_duration(90 * s), "1m30s");
        assert_eq!(go_duration(3600 * s), "1h0m0s");
        assert_eq!(go_duration(-(2 * 3600 + 5) * s), "-2h0m5s");
    }
}
