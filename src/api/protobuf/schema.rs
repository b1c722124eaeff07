//! The shape of the generated message table and look-ups into it: which message a field
//! holds, and which message an `apiVersion`/`kind` pair is encoded as.

use super::generated::{GROUPS, MESSAGES};

/// The protobuf package of meta/v1, whose kinds (DeleteOptions...) every group version
/// accepts.
const META_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// What a field holds on the wire and in JSON.
#[derive(Debug)]
pub enum Ty {
    Str,
    /// Base64 in JSON, as Go encodes `[]byte`.
    Bytes,
    Bool,
    I32,
    I64,
    F64,
    /// Another message, by full name.
    Msg(&'static str),
    /// `map<key, value>`: repeated entry messages with key = 1 and value = 2.
    Map(&'static Ty, &'static Ty),
}

/// `repeated` on the wire: a JSON array.
pub const REPEATED: u8 = 1;
/// `json:",omitempty"`: a Go zero value is left out of the JSON.
pub const OMITEMPTY: u8 = 2;
/// The Go field is a pointer, slice, map or `[]byte`: absent on the wire means nil.
pub const NILABLE: u8 = 4;
/// `json:",inline"`: the message's fields are written into the enclosing object.
pub const INLINE: u8 = 8;

/// One field of a message.
#[derive(Debug)]
pub struct Field {
    pub tag: u32,
    /// The JSON name, from the Go struct tag.
    pub json: &'static str,
    pub ty: Ty,
    flags: u8,
}

impl Field {
    pub const fn new(tag: u32, json: &'static str, ty: Ty, flags: u8) -> Field {
        Field {
            tag,
            json,
            ty,
            flags,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// One message: its fields sorted by tag.
#[derive(Debug)]
pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Message {
    pub fn field(&self, tag: u32) -> Option<(usize, &'static Field)> {
        let index = self.fields.binary_search_by_key(&tag, |f| f.tag).ok()?;
        Some((index, &self.fields[index]))
    }
}

/// The message named `name` (a full protobuf name).
pub fn message(name: &str) -> Option<&'static Message> {
    let index = MESSAGES.binary_search_by(|m| m.name.cmp(name)).ok()?;
    Some(&MESSAGES[index])
}

/// The message an object of `kind` in `api_version` is encoded as. Kinds of meta/v1 such
/// as DeleteOptions are sent under the group version of the resource they act on.
pub fn for_kind(api_version: &str, kind: &str) -> Option<&'static Message> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = GROUPS
        .iter()
        .find(|(g, v, _)| *g == group && *v == version)?
        .2;
    message(&format!("{package}.{kind}")).or_else(|| message(&format!("{META_V1}.{kind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_every_reference_resolves() {
        assert!(MESSAGES.windows(2).all(|w| w[0].name < w[1].name));
        for m in MESSAGES {
            assert!(
                m.fields.windows(2).all(|w| w[0].tag < w[1].tag),
                "{}",
                m.name
            );
            for f in m.fields {
                let mut types = vec![&f.ty];
                if let Ty::Map(k, v) = &f.ty {
                    types = vec![*k, *v];
                }
                for t in types {
                    if let Ty::Msg(name) = t {
                        assert!(message(name).is_some(), "{}.{} -> {name}", m.name, f.json);
                    }
                }
            }
        }
    }

    #[test]
    fn kinds_resolve_by_group_version_with_meta_fallback() {
        assert_eq!(
            for_kind("apps/v1", "Deployment").unwrap().name,
            "k8s.io.api.apps.v1.Deployment"
        );
        assert_eq!(
            for_kind("v1", "ConfigMap").unwrap().name,
            "k8s.io.api.core.v1.ConfigMap"
        );
        assert_eq!(
            for_kind("batch/v1", "DeleteOptions").unwrap().name,
            "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions"
        );
        assert!(for_kind("apps/v1beta1", "Deployment").is_none());
        assert!(for_kind("v1", "NoSuchKind").is_none());
    }
}

#[cfg(test)]
mod openapi_names {
    use schemars::generate::SchemaSettings;

    use super::*;
    use crate::api::registry::Registry;

    /// The generator takes JSON names from Go struct tags; the OpenAPI schemas kedge serves
    /// (k8s-openapi) must know every one of them, or decoded objects would carry fields
    /// the rest of the server does not read.
    #[test]
    fn json_names_match_the_openapi_schemas() {
        let registry = Registry::builtin();
        let mut generator = SchemaSettings::openapi3().into_generator();
        for group in registry.groups() {
            for version in &group.versions {
                for resource in registry.resources(&group.group, version) {
                    (resource.schema)(&mut generator);
                }
            }
        }
        let (mut checked, mut unknown) = (0, Vec::new());
        for (name, schema) in generator.take_definitions(true) {
            let Some(rest) = name.strip_prefix("io.k8s.") else {
                continue;
            };
            let Some(message) = message(&format!("k8s.io.{}", rest.replace('-', "_"))) else {
                continue;
            };
            let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
                continue;
            };
            checked += 1;
            for field in message.fields {
                if !field.has(INLINE) && !properties.contains_key(field.json) {
                    unknown.push(format!("{name}.{}", field.json));
                }
            }
        }
        assert!(checked > 300, "only {checked} messages checked");
        assert!(
            unknown.is_empty(),
            "not in the OpenAPI schemas: {unknown:?}"
        );
    }
}
