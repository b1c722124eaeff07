//! The resources a CustomResourceDefinition defines: one [`ResourceType`] per served
//! version, with its names, scope, subresources, printer columns, schema check and OpenAPI
//! schema.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::schema;
use crate::api::registry::{PrinterColumn, ResourceType, ScalePaths, SchemaError, ALL_VERBS};

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn strings_at(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// The names a definition asks for, with upstream's defaults (singular: the lowercased
/// kind; listKind: the kind + `List`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
}

impl Names {
    pub fn of(crd: &Value) -> Names {
        let kind = str_at(crd, "/spec/names/kind").to_string();
        let or = |value: &str, default: String| {
            if value.is_empty() {
                default
            } else {
                value.to_string()
            }
        };
        Names {
            plural: str_at(crd, "/spec/names/plural").to_string(),
            singular: or(str_at(crd, "/spec/names/singular"), kind.to_lowercase()),
            list_kind: or(str_at(crd, "/spec/names/listKind"), format!("{kind}List")),
            short_names: strings_at(crd, "/spec/names/shortNames"),
            categories: strings_at(crd, "/spec/names/categories"),
            kind,
        }
    }

    /// As `status.acceptedNames` shows them.
    pub fn to_json(&self) -> Value {
        let mut names = json!({
            "plural": self.plural,
            "singular": self.singular,
            "kind": self.kind,
            "listKind": self.list_kind,
        });
        if !self.short_names.is_empty() {
            names["shortNames"] = json!(self.short_names);
        }
        if !self.categories.is_empty() {
            names["categories"] = json!(self.categories);
        }
        names
    }
}

/// The OpenAPI definition name upstream gives a custom kind: the group reversed, then
/// version and kind (`com.example.v1.Widget`).
fn definition_name(group: &str, version: &str, kind: &str) -> String {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    format!("{}.{version}.{kind}", reversed.join("."))
}

/// The version's schema as an OpenAPI definition: `apiVersion`, `kind` and `metadata`
/// (ObjectMeta) described the way upstream publishes them.
fn openapi_definition(schema: &Value, generator: &mut schemars::SchemaGenerator) -> Value {
    let metadata = generator.subschema_for::<ObjectMeta>().to_value();
    let mut definition = schema.clone();
    if !definition.is_object() {
        definition = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    }
    let properties = definition
        .as_object_mut()
        .expect("an object")
        .entry("properties")
        .or_insert_with(|| json!({}));
    properties["apiVersion"] = json!({
        "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources",
        "type": "string",
    });
    properties["kind"] = json!({
        "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds",
        "type": "string",
    });
    properties["metadata"] = metadata;
    definition
}

fn columns(version: &Value) -> Vec<PrinterColumn> {
    version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| PrinterColumn {
            name: str_at(c, "/name").to_string(),
            kind: str_at(c, "/type").to_string(),
            format: str_at(c, "/format").to_string(),
            description: str_at(c, "/description").to_string(),
            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
            json_path: str_at(c, "/jsonPath").to_string(),
        })
        .collect()
}

fn scale_paths(version: &Value) -> Option<ScalePaths> {
    let scale = version.pointer("/subresources/scale")?;
    Some(ScalePaths {
        spec_replicas: str_at(scale, "/specReplicasPath").to_string(),
        status_replicas: str_at(scale, "/statusReplicasPath").to_string(),
        label_selector: scale
            .get("labelSelectorPath")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// The resource of one served version.
fn resource(crd: &Value, names: &Names, version: &Value) -> ResourceType {
    let group = str_at(crd, "/spec/group").to_string();
    let version_name = str_at(version, "/name").to_string();
    let scale = scale_paths(version);
    let mut subresources = Vec::new();
    if scale.is_some() {
        subresources.push("scale".to_string());
    }
    if version.pointer("/subresources/status").is_some() {
        subresources.push("status".to_string());
    }
    let open_api = version.pointer("/schema/openAPIV3Schema").cloned();
    let check_schema = open_api.clone();
    let definition = definition_name(&group, &version_name, &names.kind);
    ResourceType {
        group,
        version: version_name,
        kind: names.kind.clone(),
        list_kind: names.list_kind.clone(),
        plural: names.plural.clone(),
        singular: names.singular.clone(),
        namespaced: str_at(crd, "/spec/scope") == "Namespaced",
        short_names: names.short_names.clone(),
        categories: names.categories.clone(),
        verbs: ALL_VERBS.iter().map(|v| v.to_string()).collect(),
        subresources,
        stored: true,
        check: Arc::new(move |object| match &check_schema {
            Some(schema) => schema::apply(schema, object).map_err(|causes| SchemaError {
                field: causes[0].field.clone(),
                message: causes[0].message.clone(),
                causes,
            }),
            None => Ok(object.clone()),
        }),
        schema: Arc::new(move |generator| {
            let value = openapi_definition(open_api.as_ref().unwrap_or(&Value::Null), generator);
            generator
                .definitions_mut()
                .insert(definition.clone(), value);
            definition.clone()
        }),
        scale,
        crd: Some(crate::api::object::name(crd).to_string()),
        columns: columns(version),
    }
}

/// Every served version's resource.
pub fn resource_types(crd: &Value) -> Vec<ResourceType> {
    let names = Names::of(crd);
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        .map(|v| resource(crd, &names, v))
        .collect()
}

/// The name of the version marked `storage`.
pub fn storage_version(crd: &Value) -> Option<String> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::OpenApi;
    use crate::api::registry::Registry;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "description": "The spec.", "properties": {"size": {"type": "integer"}}}}}}},
                    {"name": "v1alpha1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}
                ]
            }
        })
    }

    #[test]
    fn served_versions_become_resources_with_documents() {
        let types = resource_types(&crd());
        assert_eq!(types.len(), 1);
        let widgets = &types[0];
        assert_eq!(
            (widgets.singular.as_str(), widgets.list_kind.as_str()),
            ("widget", "WidgetList")
        );
        assert_eq!(widgets.subresources, vec!["scale", "status"]);
        assert_eq!(widgets.crd.as_deref(), Some("widgets.example.com"));
        assert_eq!(storage_version(&crd()).as_deref(), Some("v1"));
        let pruned = (widgets.check)(&json!({"spec": {"size": 1, "x": 2}})).unwrap();
        assert_eq!(pruned["spec"], json!({"size": 1}));
        let invalid = (widgets.check)(&json!({"spec": {"size": "1"}})).unwrap_err();
        assert_eq!(invalid.causes[0].reason, "FieldValueTypeInvalid");

        let registry = Registry::builtin();
        let openapi = OpenApi::default();
        assert!(openapi.document(&registry, "example.com", "v1").is_none());
        registry.set_custom("widgets.example.com", types);
        let document = openapi.document(&registry, "example.com", "v1").unwrap();
        let doc: Value = serde_json::from_slice(&document.body).unwrap();
        let schema = &doc["components"]["schemas"]["com.example.v1.Widget"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Widget"
        );
        assert_eq!(schema["properties"]["spec"]["description"], "The spec.");
        assert!(schema["properties"]["metadata"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"));
        assert!(
            doc["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"]
                .is_object()
        );
        assert_eq!(
            registry.remove_custom("widgets.example.com"),
            vec![("example.com".to_string(), "v1".to_string())]
        );
        openapi.forget("example.com", "v1");
        assert!(openapi.document(&registry, "example.com", "v1").is_none());
        assert!(registry.get("example.com", "v1", "widgets").is_none());
    }
}
