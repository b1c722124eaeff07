//! Server-side printing: `meta.k8s.io/v1` Tables, the columns `kubectl get` shows.
//!
//! Each built-in kind has the columns and cells upstream kube-apiserver prints
//! (`pkg/printers/internalversion`), always generated "wide" as the apiserver does:
//! kubectl hides priority-1 columns unless asked for `-o wide`. Kinds without printers
//! get the default NAME / CREATED AT table. Column descriptions are the field docs,
//! read from the k8s-openapi schemas.

mod cells;
mod cluster;
mod core;
mod events;
mod pod;
mod workloads;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use super::object::{meta_str, metadata};
use super::registry::{Registry, ResourceType};

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|choice| {
            let params: Vec<&str> = choice.split(';').map(str::trim).collect();
            params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
        })
    })
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Where a column's description comes from.
#[derive(Clone, Copy)]
enum Doc {
    /// Text upstream writes out in the printer.
    Text(&'static str),
    /// The documentation of a field of an API type (upstream's `SwaggerDoc()[field]`).
    Field(fn(&mut SchemaGenerator) -> Schema, &'static str),
}

impl Doc {
    fn render(self) -> String {
        match self {
            Doc::Text(text) => text.to_string(),
            Doc::Field(schema, field) => {
                let schema = schema(&mut SchemaGenerator::default());
                schema
                    .as_value()
                    .pointer(&format!("/properties/{field}/description"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            }
        }
    }
}

/// One column: its definition and how to compute its cell from an object.
#[derive(Clone, Copy)]
struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: Doc,
    priority: u8,
    cell: Cell,
}

/// Computes one cell from an object.
type Cell = fn(&Value) -> Value;

impl Column {
    /// A column shown only by `kubectl get -o wide`.
    const fn wide(self) -> Column {
        Column {
            priority: 1,
            ..self
        }
    }

    /// The same column with another type (`integer`, `boolean`, `date`).
    const fn typed(self, kind: &'static str) -> Column {
        Column { kind, ..self }
    }
}

/// A string column shown by default.
const fn col(name: &'static str, description: Doc, cell: Cell) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority: 0,
        cell,
    }
}

/// A documented field of `T`.
fn doc<T: JsonSchema>(field: &'static str) -> Doc {
    Doc::Field(T::json_schema, field)
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: Doc::Field(<ObjectMeta as JsonSchema>::json_schema, "name"),
    priority: 0,
    cell: |o| json!(meta_str(o, "name").unwrap_or_default()),
};

const AGE: Column = col(
    "Age",
    Doc::Field(<ObjectMeta as JsonSchema>::json_schema, "creationTimestamp"),
    |o| cells::since_at(o, "/metadata/creationTimestamp"),
);

/// The priority-1 CONTAINERS and IMAGES columns of kinds with a pod template whose pod
/// spec is at the JSON pointer `$spec`.
macro_rules! template_columns {
    ($spec:literal) => {
        [
            $crate::api::table::col(
                "Containers",
                $crate::api::table::Doc::Text("Names of each container in the template."),
                |o| {
                    $crate::api::table::cells::containers(o.pointer($spec))
                        .0
                        .into()
                },
            )
            .wide(),
            $crate::api::table::col(
                "Images",
                $crate::api::table::Doc::Text(
                    "Images referenced by each container in the template.",
                ),
                |o| {
                    $crate::api::table::cells::containers(o.pointer($spec))
                        .1
                        .into()
                },
            )
            .wide(),
        ]
    };
}
use template_columns;

/// The table of a built-in kind without a printer (`rest.NewDefaultTableConvertor`).
fn default_columns() -> Vec<Column> {
    vec![col(
        "Created At",
        Doc::Field(<ObjectMeta as JsonSchema>::json_schema, "creationTimestamp"),
        |o| json!(meta_str(o, "creationTimestamp").unwrap_or_default()),
    )
    .typed("date")]
}

/// Whether `group` is one of the built-in API groups. Custom resources cannot live in
/// them: a CustomResourceDefinition's group needs a dot and must not clash.
fn builtin_group(group: &str) -> bool {
    static GROUPS: OnceLock<HashSet<String>> = OnceLock::new();
    GROUPS
        .get_or_init(|| {
            Registry::builtin()
                .all()
                .iter()
                .map(|t| t.group.clone())
                .collect()
        })
        .contains(group)
}

/// The columns of a kind, NAME first unless the kind places it itself. Custom resources
/// get apiextensions-apiserver's default: an Age column of type date.
fn columns(group: &str, kind: &str) -> Vec<Column> {
    let specific = core::columns(group, kind)
        .or_else(|| events::columns(group, kind))
        .or_else(|| pod::columns(group, kind))
        .or_else(|| workloads::columns(group, kind))
        .or_else(|| cluster::columns(group, kind));
    match specific {
        // Events put NAME last, storage classes mark the default one in it.
        Some(columns) if columns.iter().any(|c| c.name == "Name") => columns,
        Some(columns) => [vec![NAME], columns].concat(),
        None if builtin_group(group) => [vec![NAME], default_columns()].concat(),
        None => vec![NAME, AGE.typed("date")],
    }
}

/// The column definitions of one kind, as sent.
type Definitions = Arc<Vec<Value>>;

/// The column definitions of a kind, built once: descriptions come from schemas.
fn definitions(group: &str, kind: &str, columns: &[Column]) -> Definitions {
    static CACHE: OnceLock<Mutex<HashMap<(String, String), Definitions>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (group.to_string(), kind.to_string());
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return found;
    }
    let built: Definitions = Arc::new(
        columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind,
                    "format": c.format,
                    "description": c.description.render(),
                    "priority": c.priority,
                })
            })
            .collect(),
    );
    if let Ok(mut cache) = cache.lock() {
        cache.insert(key, built.clone());
    }
    built
}

fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata(object).cloned().unwrap_or_default(),
    })
}

/// One table row; rows of finished pods carry upstream's `Completed` row condition.
fn row(
    resource: &ResourceType,
    columns: &[Column],
    object: &Value,
    include: IncludeObject,
) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(object)).collect();
    let mut row = json!({"cells": cells});
    if (resource.group.as_str(), resource.kind.as_str()) == ("", "Pod") {
        if let Some(conditions) = pod::row_conditions(object) {
            row["conditions"] = conditions;
        }
    }
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = partial_metadata(object);
        }
        IncludeObject::Object => {
            row["object"] = object.clone();
        }
    }
    row
}

/// A Table of `objects` (of resource `resource`), with list metadata.
pub fn table(
    resource: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    let columns = columns(&resource.group, &resource.kind);
    let definitions = definitions(&resource.group, &resource.kind, &columns);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| row(resource, &columns, o, include))
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": *definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of `object` printed as `plural` in `group`/`version`.
    pub(super) fn cells_of(group: &str, version: &str, plural: &str, object: Value) -> Vec<Value> {
        let registry = Registry::builtin();
        let resource = registry.get(group, version, plural).unwrap();
        let t = table(&resource, &[object], json!({}), IncludeObject::None);
        t["rows"][0]["cells"].as_array().unwrap().clone()
    }

    /// Cells as kubectl prints them: strings as they are, numbers and booleans in JSON.
    pub(super) fn strings(cells: &[Value]) -> Vec<String> {
        cells
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), String::from))
            .collect()
    }

    /// The column names of `plural`, with their priorities.
    pub(super) fn headers(group: &str, version: &str, plural: &str) -> Vec<(String, u64)> {
        let registry = Registry::builtin();
        let resource = registry.get(group, version, plural).unwrap();
        let t = table(&resource, &[], json!({}), IncludeObject::None);
        t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["priority"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn tables_have_upstream_columns() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(wants_table(Some(accept)));
        assert!(!wants_table(Some("application/json")));
        let registry = Registry::builtin();
        let cm = registry.get("", "v1", "configmaps").unwrap();
        let object = json!({"metadata": {"name": "c", "creationTimestamp": "2000-01-01T00:00:00Z"}, "data": {"a": "1", "b": "2"}});
        let t = table(
            &cm,
            &[object],
            json!({"resourceVersion": "5"}),
            IncludeObject::Metadata,
        );
        let columns = t["columnDefinitions"].as_array().unwrap();
        let names: Vec<&str> = columns
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "Data", "Age"]);
        assert_eq!(columns[0]["format"], "name");
        assert!(columns[0]["description"]
            .as_str()
            .unwrap()
            .starts_with("Name must be unique within a namespace."));
        assert!(columns[1]["description"]
            .as_str()
            .unwrap()
            .starts_with("Data contains the configuration data."));
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert!(t["rows"][0]["cells"][2].as_str().unwrap().ends_with('y'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn kinds_without_printers_show_created_at() {
        let role = json!({"metadata": {"name": "r", "creationTimestamp": "2020-01-01T00:00:00Z"}});
        assert_eq!(
            cells_of("rbac.authorization.k8s.io", "v1", "roles", role),
            vec![json!("r"), json!("2020-01-01T00:00:00Z")]
        );
        assert_eq!(
            headers("", "v1", "limitranges"),
            vec![("Name".into(), 0), ("Created At".into(), 0)]
        );
    }

    #[test]
    fn custom_resources_show_age() {
        let registry = Registry::builtin();
        let mut custom = (*registry.get("", "v1", "configmaps").unwrap()).clone();
        custom.group = "example.com".into();
        custom.kind = "Widget".into();
        let widget = json!({"metadata": {"name": "w"}});
        let t = table(&custom, &[widget], json!({}), IncludeObject::None);
        let columns = t["columnDefinitions"].as_array().unwrap();
        assert_eq!(columns[1]["name"], "Age");
        assert_eq!(columns[1]["type"], "date");
        assert_eq!(t["rows"][0]["cells"], json!(["w", "<unknown>"]));
    }

    #[test]
    fn every_builtin_kind_has_descriptions() {
        let registry = Registry::builtin();
        for resource in registry.all() {
            let t = table(&resource, &[], json!({}), IncludeObject::None);
            for column in t["columnDefinitions"].as_array().unwrap() {
                assert!(
                    !column["description"].as_str().unwrap().is_empty(),
                    "{} column {} has no description",
                    resource.kind,
                    column["name"]
                );
            }
        }
    }
}
