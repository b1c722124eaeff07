//! What upstream's CustomResourceDefinition validation refuses, for the common mistakes:
//! a name that is not `<plural>.<group>`, malformed names, a scope or version list that
//! cannot work, missing or non-structural schemas, scale paths outside spec and status.

use serde_json::Value;

use super::fields;
use super::types::Names;
use crate::api::error::FieldError;
use crate::api::registry::SchemaError;
use crate::api::validation::dns1035_label;

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn label(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    let problems = dns1035_label(value);
    if !problems.is_empty() {
        errors.push(fields::invalid(
            field,
            &Value::String(value.to_string()),
            &problems.join(","),
        ));
    }
}

fn check_names(crd: &Value, errors: &mut Vec<FieldError>) {
    let names = Names::of(crd);
    let given = |field: &str| str_at(crd, &format!("/spec/names/{field}")).to_string();
    if names.plural.is_empty() {
        errors.push(fields::required("spec.names.plural", ""));
    } else {
        label("spec.names.plural", &names.plural, errors);
    }
    if !given("singular").is_empty() {
        label("spec.names.singular", &names.singular, errors);
    }
    for (i, short) in names.short_names.iter().enumerate() {
        label(&format!("spec.names.shortNames[{i}]"), short, errors);
    }
    if names.kind.is_empty() {
        errors.push(fields::required("spec.names.kind", ""));
    } else if !dns1035_label(&names.kind.to_lowercase()).is_empty() {
        let problems = dns1035_label(&names.kind.to_lowercase()).join(",");
        errors.push(fields::invalid(
            "spec.names.kind",
            &Value::String(names.kind.clone()),
            &problems,
        ));
    }
    if !names.kind.is_empty() && names.kind == names.list_kind {
        errors.push(fields::invalid(
            "spec.names.listKind",
            &Value::String(names.list_kind.clone()),
            "kind and listKind may not be the same",
        ));
    }
}

/// Non-structural parts of a schema: properties without a type.
fn check_structural(schema: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let typed = schema
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    let open = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
        || schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
    if root {
        match schema.get("type").and_then(Value::as_str) {
            None | Some("") => errors.push(fields::required(
                &format!("{path}.type"),
                "must not be empty at the root",
            )),
            Some("object") => {}
            Some(other) => errors.push(fields::invalid(
                &format!("{path}.type"),
                &Value::String(other.to_string()),
                "must be object at the root",
            )),
        }
    } else if !typed && !open {
        errors.push(fields::required(
            &format!("{path}.type"),
            "must not be empty for specified object fields",
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        if let Err(e) = super::schema::pattern(pattern) {
            errors.push(fields::invalid(
                &format!("{path}.pattern"),
                &Value::String(pattern.to_string()),
                &format!("must be a valid regular expression, but isn't: {e}"),
            ));
        }
    }
    if schema.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
        errors.push(crate::api::error::FieldError::forbidden(
            &format!("{path}.uniqueItems"),
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
        ));
    }
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in properties {
            check_structural(sub, &format!("{path}.properties[{name}]"), false, errors);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        check_structural(items, &format!("{path}.items"), false, errors);
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(
            additional,
            &format!("{path}.additionalProperties"),
            false,
            errors,
        );
    }
}

fn check_version(version: &Value, path: &str, errors: &mut Vec<FieldError>) {
    label(&format!("{path}.name"), str_at(version, "/name"), errors);
    match version.pointer("/schema/openAPIV3Schema") {
        Some(schema) => check_structural(
            schema,
            &format!("{path}.schema.openAPIV3Schema"),
            true,
            errors,
        ),
        None => errors.push(fields::required(
            &format!("{path}.schema.openAPIV3Schema"),
            "schemas are required",
        )),
    }
    if let Some(scale) = version.pointer("/subresources/scale") {
        for (field, under) in [
            ("specReplicasPath", ".spec."),
            ("statusReplicasPath", ".status."),
        ] {
            let value = str_at(scale, &format!("/{field}"));
            let here = format!("{path}.subresources.scale.{field}");
            if value.is_empty() {
                errors.push(fields::required(&here, ""));
            } else if !value.starts_with(under) {
                errors.push(fields::invalid(
                    &here,
                    &Value::String(value.to_string()),
                    &format!(
                        "should be a json path under {}",
                        under.trim_end_matches('.')
                    ),
                ));
            }
        }
    }
}

fn check_versions(crd: &Value, errors: &mut Vec<FieldError>) {
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut seen = Vec::new();
    let mut storage = 0;
    for (i, version) in versions.iter().enumerate() {
        check_version(version, &format!("spec.versions[{i}]"), errors);
        let name = str_at(version, "/name");
        if seen.contains(&name) {
            errors.push(fields::invalid(
                "spec.versions",
                &Value::Array(versions.clone()),
                "must contain unique version names",
            ));
        }
        seen.push(name);
        if version.get("storage").and_then(Value::as_bool) == Some(true) {
            storage += 1;
        }
    }
    if storage != 1 {
        errors.push(fields::invalid(
            "spec.versions",
            &Value::Array(versions),
            "must have exactly one version marked as storage version",
        ));
    }
}

/// The definition's problems as a 422's causes.
pub fn check(crd: &Value) -> Result<(), SchemaError> {
    let mut errors = Vec::new();
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let name = str_at(crd, "/metadata/name");
    if name != format!("{plural}.{group}") {
        errors.push(fields::invalid(
            "metadata.name",
            &Value::String(name.to_string()),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errors.push(fields::required("spec.group", ""));
    } else if !group.contains('.') {
        errors.push(fields::invalid(
            "spec.group",
            &Value::String(group.to_string()),
            "should be a domain with at least one dot",
        ));
    }
    check_names(crd, &mut errors);
    match str_at(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errors.push(fields::required("spec.scope", "")),
        other => errors.push(fields::not_supported(
            "spec.scope",
            &Value::String(other.to_string()),
            &[Value::from("Cluster"), Value::from("Namespaced")],
        )),
    }
    check_versions(crd, &mut errors);
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(SchemaError {
            field: first.field.clone(),
            message: first.message.clone(),
            causes: errors,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}}]
            }
        })
    }

    fn causes(crd: &Value) -> Vec<String> {
        check(crd)
            .err()
            .map(|e| {
                e.causes
                    .into_iter()
                    .map(|c| format!("{}: {}", c.field, c.message))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn definitions_are_held_to_upstream_rules() {
        assert!(check(&crd()).is_ok());
        let mut bad = crd();
        bad["metadata"]["name"] = json!("widget.example.com");
        assert_eq!(
            causes(&bad),
            vec![
                r#"metadata.name: Invalid value: "widget.example.com": must be spec.names.plural+"."+spec.group"#
            ]
        );
        let mut bad = crd();
        bad["spec"]["versions"][0]
            .as_object_mut()
            .unwrap()
            .remove("schema");
        assert_eq!(
            causes(&bad),
            vec!["spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required"]
        );
        let mut bad = crd();
        bad["spec"]["versions"][0]["storage"] = json!(false);
        assert!(
            causes(&bad)[0].ends_with("must have exactly one version marked as storage version")
        );
        let mut bad = crd();
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"] =
            json!({"tags": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}});
        assert!(causes(&bad)[0].ends_with(
            "uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ));
        let mut bad = crd();
        bad["spec"]["scope"] = json!("Global");
        assert_eq!(
            causes(&bad),
            vec![
                r#"spec.scope: Unsupported value: "Global": supported values: "Cluster", "Namespaced""#
            ]
        );
        let mut bad = crd();
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({"properties": {}});
        assert_eq!(
            causes(&bad),
            vec!["spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields"]
        );
        let mut bad = crd();
        bad["spec"]["names"]["plural"] = json!("Widgets");
        bad["metadata"]["name"] = json!("Widgets.example.com");
        assert!(
            causes(&bad)[0]
                .starts_with(r#"spec.names.plural: Invalid value: "Widgets": a DNS-1035 label"#),
            "{:?}",
            causes(&bad)
        );
    }
}
