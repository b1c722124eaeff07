//! Server-side printing: `meta.k8s.io/v1` Tables, the columns `kubectl get` shows.

use serde_json::{json, Map, Value};

use super::object::{age_seconds, human_duration, meta_str, metadata};
use super::registry::ResourceType;

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

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn name_cell(object: &Value) -> Value {
    json!(meta_str(object, "name").unwrap_or_default())
}

fn age_cell(object: &Value) -> Value {
    let age = meta_str(object, "creationTimestamp")
        .and_then(age_seconds)
        .map(human_duration)
        .unwrap_or_else(|| "<unknown>".to_string());
    json!(age)
}

fn count_of(object: &Value, fields: &[&str]) -> Value {
    let count: usize = fields
        .iter()
        .filter_map(|f| object.get(*f).and_then(Value::as_object).map(Map::len))
        .sum();
    json!(count)
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: NAME_DESCRIPTION,
    priority: 0,
    cell: name_cell,
};

const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    description: AGE_DESCRIPTION,
    priority: 0,
    cell: age_cell,
};

fn columns(kind: &str) -> Vec<Column> {
    let column = |name, description, cell| Column {
        name,
        kind: "string",
        format: "",
        description,
        priority: 0,
        cell,
    };
    match kind {
        "Namespace" => vec![
            NAME,
            column("Status", "The status of the namespace", |o| {
                json!(o
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("Active"))
            }),
            AGE,
        ],
        "ConfigMap" => vec![
            NAME,
            Column {
                kind: "integer",
                ..column("Data", "Data contains the configuration data.", |o| {
                    count_of(o, &["data", "binaryData"])
                })
            },
            AGE,
        ],
        "Secret" => vec![
            NAME,
            column("Type", "The type of the secret", |o| {
                json!(o.get("type").and_then(Value::as_str).unwrap_or("Opaque"))
            }),
            Column {
                kind: "integer",
                ..column("Data", "The number of entries in data", |o| {
                    count_of(o, &["data"])
                })
            },
            AGE,
        ],
        "ServiceAccount" => vec![
            NAME,
            Column {
                kind: "integer",
                ..column(
                    "Secrets",
                    "Secrets is a list of the secrets in the same namespace",
                    |o| {
                        json!(o
                            .get("secrets")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len))
                    },
                )
            },
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata(object).cloned().unwrap_or_default(),
    })
}

/// One table row.
fn row(columns: &[Column], object: &Value, include: IncludeObject) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(object)).collect();
    let mut row = json!({"cells": cells});
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
    let columns = columns(&resource.kind);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects.iter().map(|o| row(&columns, o, include)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;

    #[test]
    fn tables_have_upstream_columns() {
        let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert!(wants_table(Some(accept)));
        assert!(!wants_table(Some("application/json")));
        let registry = Registry::builtin();
        let cm = registry.get("", "v1", "configmaps").unwrap();
        let object = json!({"metadata": {"name": "c", "creationTimestamp": "2020-01-01T00:00:00Z"}, "data": {"a": "1", "b": "2"}});
        let t = table(
            &cm,
            &[object],
            json!({"resourceVersion": "5"}),
            IncludeObject::Metadata,
        );
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["cells"][1], 2);
        assert!(
            t["rows"][0]["cells"][2].as_str().unwrap().ends_with('y')
                || t["rows"][0]["cells"][2].as_str().unwrap().ends_with('d')
        );
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
