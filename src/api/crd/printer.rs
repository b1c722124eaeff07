//! Tables of custom resources: a version's `additionalPrinterColumns` after the Name column,
//! as apiextensions-apiserver's table convertor prints them (Name and Age when there are
//! none).

use serde_json::{json, Value};

use super::jsonpath::JsonPath;
use crate::api::object::{age_seconds, human_duration};
use crate::api::registry::{PrinterColumn, ResourceType};
use crate::api::table::{self, IncludeObject};

/// A Table of `objects` of `resource`; built-in kinds get [`table::table`]'s.
pub fn table(
    resource: &ResourceType,
    objects: &[Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    // The shared table gives the Name column, the rows' objects and the list metadata.
    let mut base = table::table(resource, objects, list_meta, include);
    if resource.columns.is_empty() {
        return base;
    }
    let paths: Vec<Option<JsonPath>> = resource
        .columns
        .iter()
        .map(|c| JsonPath::parse(&c.json_path).ok())
        .collect();
    let mut definitions = vec![base["columnDefinitions"][0].clone()];
    definitions.extend(resource.columns.iter().map(|c| {
        json!({
            "name": c.name,
            "type": c.kind,
            "format": c.format,
            "description": c.description,
            "priority": c.priority,
        })
    }));
    base["columnDefinitions"] = Value::Array(definitions);
    if let Some(rows) = base["rows"].as_array_mut() {
        for (row, object) in rows.iter_mut().zip(objects) {
            let mut cells = vec![row["cells"][0].clone()];
            cells.extend(
                resource
                    .columns
                    .iter()
                    .zip(&paths)
                    .map(|(column, path)| cell(column, path.as_ref(), object)),
            );
            row["cells"] = Value::Array(cells);
        }
    }
    base
}

/// One cell: the first value the column's path selects, shown per the column's type;
/// `null` (kubectl prints `<none>`) when there is none or it does not fit.
fn cell(column: &PrinterColumn, path: Option<&JsonPath>, object: &Value) -> Value {
    let Some(value) = path.and_then(|p| p.find(object).into_iter().next()) else {
        return Value::Null;
    };
    match column.kind.as_str() {
        "string" => match value {
            Value::String(s) => json!(s),
            other => json!(other.to_string()),
        },
        "integer" => match value {
            Value::Number(n) if n.is_i64() || n.is_u64() => value.clone(),
            Value::Number(n) => n.as_f64().map_or(Value::Null, |f| json!(f as i64)),
            _ => Value::Null,
        },
        "number" => match value {
            Value::Number(_) => value.clone(),
            _ => Value::Null,
        },
        "boolean" => match value {
            Value::Bool(_) => value.clone(),
            _ => Value::Null,
        },
        "date" => value
            .as_str()
            .and_then(age_seconds)
            .map_or(Value::Null, |age| json!(human_duration(age))),
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registry::Registry;

    fn column(name: &str, kind: &str, path: &str) -> PrinterColumn {
        PrinterColumn {
            name: name.to_string(),
            kind: kind.to_string(),
            format: String::new(),
            description: String::new(),
            priority: 0,
            json_path: path.to_string(),
        }
    }

    #[test]
    fn printer_columns_follow_the_name() {
        let registry = Registry::builtin();
        let mut widgets = (*registry.get("", "v1", "configmaps").unwrap()).clone();
        widgets.kind = "Widget".to_string();
        widgets.columns = vec![
            column("Size", "integer", ".spec.size"),
            column(
                "Ready",
                "string",
                r#".status.conditions[?(@.type=="Ready")].status"#,
            ),
            column("Age", "date", ".metadata.creationTimestamp"),
            column("Missing", "string", ".spec.nothing"),
        ];
        let object = json!({
            "metadata": {"name": "w1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"size": 3},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let t = table(&widgets, &[object], json!({}), IncludeObject::Metadata);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Name", "Size", "Ready", "Age", "Missing"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "w1");
        assert_eq!(cells[1], 3);
        assert_eq!(cells[2], "True");
        let age = cells[3].as_str().unwrap();
        assert!(age.ends_with('y') || age.ends_with('d'), "{age}");
        assert!(cells[4].is_null());
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "w1");
    }
}
