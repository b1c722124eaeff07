//! Where a value sits in its kind's schema, as far as merging cares: a struct (fields known
//! from the generated [`table`](super::table)), a map, a list (atomic, set, or map keyed by
//! some of its items' fields) or a scalar. Lookups go through the generated table; types not
//! in it are read from the value itself ([`Node::Deduced`]), as upstream does for custom
//! resources without a schema.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::table::{DEFINITIONS, KINDS};

/// What a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Scalar,
    Object,
    List,
    Map,
}

/// One field of a definition, with its `x-kubernetes-*` extensions.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub shape: Shape,
    /// The definition of the field (objects) or of its items or values (lists, maps).
    pub of: Option<&'static str>,
    /// `x-kubernetes-patch-strategy`: `merge`, `retainKeys`, `merge,retainKeys`, `replace`.
    pub strategy: Option<&'static str>,
    pub merge_key: Option<&'static str>,
    /// `x-kubernetes-list-type`: `atomic`, `set` or `map`.
    pub list_type: Option<&'static str>,
    pub list_map_keys: &'static [&'static str],
    /// `x-kubernetes-map-type: atomic`.
    pub atomic: bool,
}

impl Field {
    /// A field without extensions.
    pub(super) const fn plain(name: &'static str, shape: Shape, of: Option<&'static str>) -> Field {
        Field {
            name,
            shape,
            of,
            strategy: None,
            merge_key: None,
            list_type: None,
            list_map_keys: &[],
            atomic: false,
        }
    }

    /// Whether strategic merge patch merges this list (rather than replacing it).
    pub fn merges(&self) -> bool {
        self.strategy
            .is_some_and(|s| s.split(',').any(|s| s == "merge"))
    }
}

/// A definition with its non-scalar or annotated fields.
#[derive(Debug)]
pub struct Definition {
    pub name: &'static str,
    /// `x-kubernetes-map-type: atomic` on the type: replaced as a whole.
    pub atomic: bool,
    pub fields: &'static [Field],
}

impl Definition {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        let fields: &'static [Field] = self.fields;
        fields.iter().find(|f| f.name == name)
    }
}

static BY_NAME: LazyLock<HashMap<&'static str, &'static Definition>> =
    LazyLock::new(|| DEFINITIONS.iter().map(|d| (d.name, d)).collect());

pub fn definition(name: &str) -> Option<&'static Definition> {
    BY_NAME.get(name).copied()
}

/// How a list merges in server-side apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// Items are scalars, each owned on its own.
    Set,
    /// Items are objects identified by these fields.
    Map(&'static [&'static str]),
}

/// The type of a value.
#[derive(Clone, Copy, Debug)]
pub enum Node {
    /// Nothing known: objects merge field by field, lists are atomic.
    Deduced,
    /// A built-in object the table lacks: known metadata, the rest deduced.
    BuiltIn,
    Scalar,
    /// A struct; `None` when its definition has only scalar fields.
    Struct {
        definition: Option<&'static Definition>,
        atomic: bool,
    },
    /// A map of string keys to values of one definition (`None`: scalars).
    Map {
        values: Option<&'static str>,
        atomic: bool,
    },
    List {
        items: Option<&'static str>,
        kind: ListKind,
    },
}

/// The API groups of upstream Kubernetes. A kind of these groups the table lacks is
/// still built in (its group's OpenAPI document was not among the generator's inputs);
/// kinds of other groups are custom resources.
const UPSTREAM_GROUPS: &[&str] = &[
    "",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "networking.k8s.io",
    "node.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "resource.k8s.io",
    "scheduling.k8s.io",
    "storage.k8s.io",
    "storagemigration.k8s.io",
];

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The type of the objects of a built-in kind; `None` for custom resources.
pub fn root(group: &str, version: &str, kind: &str) -> Option<Node> {
    let name = KINDS
        .iter()
        .find(|(g, v, k, _)| *g == group && *v == version && *k == kind)
        .map(|(_, _, _, name)| *name);
    match name {
        Some(name) => Some(struct_node(Some(name), false)),
        None if UPSTREAM_GROUPS.contains(&group) => Some(Node::BuiltIn),
        None => None,
    }
}

fn struct_node(name: Option<&str>, atomic: bool) -> Node {
    match name {
        None => Node::Scalar,
        Some(name) => {
            let definition = definition(name);
            Node::Struct {
                definition,
                atomic: atomic || definition.is_some_and(|d| d.atomic),
            }
        }
    }
}

/// The type of a field as its definition declares it.
pub fn field_node(field: &'static Field) -> Node {
    match field.shape {
        Shape::Scalar if field.atomic => Node::Struct {
            definition: None,
            atomic: true,
        },
        Shape::Scalar => Node::Scalar,
        Shape::Object => struct_node(field.of, field.atomic),
        Shape::Map => Node::Map {
            values: field.of,
            atomic: field.atomic,
        },
        Shape::List => {
            let kind = match field.list_type {
                Some("atomic") => ListKind::Atomic,
                Some("set") => ListKind::Set,
                Some("map") if !field.list_map_keys.is_empty() => {
                    ListKind::Map(field.list_map_keys)
                }
                // Without a list type, upstream reads the patch strategy: merge with a key
                // is a map, merge without one a set, anything else atomic.
                _ if field.merges() => match &field.merge_key {
                    Some(_) => ListKind::Map(field.merge_key.as_slice()),
                    None => ListKind::Set,
                },
                _ => ListKind::Atomic,
            };
            Node::List {
                items: field.of,
                kind,
            }
        }
    }
}

impl Node {
    /// The type of the value under `key` of an object of this type, and the field
    /// declaring it (for structs).
    pub fn child(&self, key: &str) -> (Node, Option<&'static Field>) {
        match self {
            Node::Deduced => (Node::Deduced, None),
            Node::BuiltIn if key == "metadata" => (struct_node(Some(OBJECT_META), false), None),
            Node::BuiltIn => (Node::Deduced, None),
            Node::Struct {
                definition: Some(definition),
                ..
            } => match definition.field(key) {
                Some(field) => (field_node(field), Some(field)),
                None => (Node::Scalar, None),
            },
            Node::Struct { .. } | Node::Scalar => (Node::Scalar, None),
            Node::Map { values, .. } => (struct_node(*values, false), None),
            Node::List { .. } => (Node::Scalar, None),
        }
    }

    /// The type of the items of a list of this type.
    pub fn item(&self) -> Node {
        match self {
            Node::List { items, .. } => struct_node(*items, false),
            Node::Deduced | Node::BuiltIn => Node::Deduced,
            _ => Node::Scalar,
        }
    }

    /// Whether values of this type merge key by key (not replaced as a whole).
    pub fn granular_object(&self) -> bool {
        matches!(
            self,
            Node::Deduced | Node::Struct { atomic: false, .. } | Node::Map { atomic: false, .. }
        )
    }
}

/// Adds the merge extensions of the table to OpenAPI `schemas` (k8s-openapi's lack them),
/// so that clients computing patches from the published schema (kubectl apply) merge
/// lists by key as they do against upstream.
pub fn annotate(schemas: &mut Map<String, Value>) {
    for definition in DEFINITIONS {
        let Some(Value::Object(schema)) = schemas.get_mut(definition.name) else {
            continue;
        };
        if definition.atomic {
            schema.insert("x-kubernetes-map-type".into(), Value::from("atomic"));
        }
        let Some(Value::Object(properties)) = schema.get_mut("properties") else {
            continue;
        };
        for field in definition.fields {
            let Some(Value::Object(property)) = properties.get_mut(field.name) else {
                continue;
            };
            let mut set = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    property.insert(key.into(), value);
                }
            };
            set(
                "x-kubernetes-patch-strategy",
                field.strategy.map(Value::from),
            );
            set(
                "x-kubernetes-patch-merge-key",
                field.merge_key.map(Value::from),
            );
            set("x-kubernetes-list-type", field.list_type.map(Value::from));
            let keys = (!field.list_map_keys.is_empty())
                .then(|| Value::from(field.list_map_keys.to_vec()));
            set("x-kubernetes-list-map-keys", keys);
            set(
                "x-kubernetes-map-type",
                field.atomic.then(|| Value::from("atomic")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_know_their_containers() {
        let deployment = root("apps", "v1", "Deployment").expect("in the table");
        let (spec, _) = deployment.child("spec");
        let (template, _) = spec.child("template");
        let (pod, _) = template.child("spec");
        let (containers, field) = pod.child("containers");
        assert_eq!(field.unwrap().merge_key, Some("name"));
        assert!(matches!(
            containers,
            Node::List {
                kind: ListKind::Map(["name"]),
                ..
            }
        ));
        let (ports, _) = containers.item().child("ports");
        assert!(matches!(
            ports,
            Node::List {
                kind: ListKind::Map(["containerPort", "protocol"]),
                ..
            }
        ));
        let (finalizers, _) = deployment.child("metadata").0.child("finalizers");
        assert!(matches!(
            finalizers,
            Node::List {
                kind: ListKind::Set,
                ..
            }
        ));
        let (tolerations, _) = pod.child("tolerations");
        assert!(matches!(
            tolerations,
            Node::List {
                kind: ListKind::Atomic,
                ..
            }
        ));
        assert!(root("example.com", "v1", "Widget").is_none());
        // Built-in kinds the table lacks (newer than it) keep their metadata's merge keys.
        let role = root("rbac.authorization.k8s.io", "v9", "Future").unwrap();
        assert!(matches!(role.child("rules").0, Node::Deduced));
        let (finalizers, _) = role.child("metadata").0.child("finalizers");
        assert!(matches!(
            finalizers,
            Node::List {
                kind: ListKind::Set,
                ..
            }
        ));
    }

    #[test]
    fn every_built_in_kind_is_in_the_table() {
        let registry = crate::api::registry::Registry::builtin();
        let missing: Vec<String> = registry
            .all()
            .iter()
            .filter(|r| {
                !matches!(
                    root(&r.group, &r.version, &r.kind),
                    Some(Node::Struct {
                        definition: Some(_),
                        ..
                    })
                )
            })
            .map(|r| format!("{}/{} {}", r.group, r.version, r.kind))
            .collect();
        assert!(missing.is_empty(), "not in the merge table: {missing:?}");
    }

    #[test]
    fn published_schemas_carry_the_merge_extensions() {
        let mut schemas = Map::new();
        schemas.insert(
            "io.k8s.api.core.v1.PodSpec".into(),
            serde_json::json!({"properties": {"containers": {"type": "array"}}}),
        );
        annotate(&mut schemas);
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    }
}
