//! `/openapi/v3`: one OpenAPI 3 document per group version, built from k8s-openapi's
//! schemas, with the operations kubectl looks for (it validates on the server when a PATCH
//! operation of the kind takes `fieldValidation`, and `kubectl explain` reads the schemas).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::registry::{Registry, ResourceType};
use super::version;

/// A built document and its hash (clients cache by it).
pub struct Document {
    pub hash: String,
    pub body: Bytes,
}

/// Builds documents on first request and keeps them.
#[derive(Default)]
pub struct OpenApi {
    documents: Mutex<HashMap<String, Arc<Document>>>,
    /// `/openapi/v2`, all group versions in one ([`super::openapi_v2`]).
    pub(crate) v2: Mutex<Option<Arc<super::openapi_v2::Documents>>>,
}

/// `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn gvk(resource: &ResourceType) -> Value {
    json!({"group": resource.group, "version": resource.version, "kind": resource.kind})
}

fn query_parameter(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn write_parameters() -> Vec<Value> {
    vec![
        query_parameter("dryRun", "When present, indicates that modifications should not be persisted."),
        query_parameter("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        query_parameter(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), Strict.",
        ),
    ]
}

fn response(schema_ref: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}})
}

fn operation(
    resource: &ResourceType,
    action: &str,
    id: &str,
    schema_ref: &str,
    parameters: Vec<Value>,
    body: Option<Value>,
) -> Value {
    let mut op = json!({
        "operationId": id,
        "parameters": parameters,
        "responses": {"200": response(schema_ref)},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(resource),
    });
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

/// The paths of one resource.
fn paths(resource: &ResourceType, schema_ref: &str, out: &mut Map<String, Value>) {
    let base = format!("/{}", gv_path(&resource.group, &resource.version));
    let collection = if resource.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", resource.plural)
    } else {
        format!("{base}/{}", resource.plural)
    };
    let kind = &resource.kind;
    let object_body =
        json!({"content": {"*/*": {"schema": {"$ref": schema_ref}}}, "required": true});
    let mut patch_types = json!({
        "application/apply-patch+yaml": {"schema": {"type": "object"}},
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
    });
    // Custom resources take no strategic merge patch; kubectl reads this to pick its patch.
    if resource.crd.is_none() {
        patch_types["application/strategic-merge-patch+json"] =
            json!({"schema": {"type": "object"}});
    }
    let patch_body = json!({"content": patch_types, "required": true});
    let namespace_parameter =
        json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}});
    let name_parameter =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let mut common = Vec::new();
    if resource.namespaced {
        common.push(namespace_parameter);
    }
    let mut collection_ops = json!({"parameters": common.clone()});
    if resource.supports("list") {
        collection_ops["get"] = operation(
            resource,
            "list",
            &format!("list{kind}"),
            schema_ref,
            vec![],
            None,
        );
    }
    if resource.supports("create") {
        collection_ops["post"] = operation(
            resource,
            "post",
            &format!("create{kind}"),
            schema_ref,
            write_parameters(),
            Some(object_body.clone()),
        );
    }
    out.insert(collection.clone(), collection_ops);
    if !resource.supports("get") {
        return;
    }
    let mut item_parameters = common;
    item_parameters.push(name_parameter);
    let item_ops = json!({
        "parameters": item_parameters,
        "get": operation(resource, "get", &format!("read{kind}"), schema_ref, vec![], None),
        "put": operation(resource, "put", &format!("replace{kind}"), schema_ref, write_parameters(), Some(object_body)),
        "patch": operation(resource, "patch", &format!("patch{kind}"), schema_ref, write_parameters(), Some(patch_body)),
        "delete": operation(resource, "delete", &format!("delete{kind}"), schema_ref, vec![], None),
    });
    out.insert(format!("{collection}/{{name}}"), item_ops);
}

/// Each kind's schema name, with its resource.
pub(crate) type Kinds = Vec<(String, Arc<ResourceType>)>;

/// The schemas of `resources` and of everything they use, in OpenAPI 3 form (references
/// to `#/components/schemas/`), each kind's marked with `x-kubernetes-group-version-kind`
/// (the v2 document is made from these too); with each kind's schema name.
pub(crate) fn kind_schemas(resources: &[Arc<ResourceType>]) -> (Map<String, Value>, Kinds) {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let mut kinds = Vec::new();
    for resource in resources {
        kinds.push(((resource.schema)(&mut generator), resource.clone()));
    }
    let mut schemas = generator.take_definitions(true);
    crate::api::patch::schema::annotate(&mut schemas);
    let mut marks: HashMap<&str, Vec<Value>> = HashMap::new();
    for (name, resource) in &kinds {
        let mark = gvk(resource);
        let list = marks.entry(name).or_default();
        if !list.contains(&mark) {
            list.push(mark);
        }
    }
    for (name, list) in marks {
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            schema.insert("x-kubernetes-group-version-kind".into(), Value::from(list));
        }
    }
    (schemas, kinds)
}

/// The OpenAPI 3 document of one group version.
fn build(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = registry.resources(group, version);
    if resources.is_empty() {
        return None;
    }
    let (schemas, kinds) = kind_schemas(&resources);
    let mut all_paths = Map::new();
    for (name, resource) in &kinds {
        paths(
            resource,
            &format!("#/components/schemas/{name}"),
            &mut all_paths,
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version::git_version()},
        "paths": all_paths,
        "components": {"schemas": schemas},
    }))
}

impl OpenApi {
    /// The document of `group`/`version`, if the group version exists.
    pub fn document(
        &self,
        registry: &Registry,
        group: &str,
        version: &str,
    ) -> Option<Arc<Document>> {
        let key = gv_path(group, version);
        if let Some(document) = self.documents.lock().expect("openapi cache").get(&key) {
            return Some(document.clone());
        }
        let body =
            serde_json::to_vec(&build(registry, group, version)?).expect("documents serialize");
        let hash = hex::encode(Sha256::digest(&body)).to_uppercase();
        let document = Arc::new(Document {
            hash,
            body: Bytes::from(body),
        });
        self.documents
            .lock()
            .expect("openapi cache")
            .insert(key, document.clone());
        Some(document)
    }

    /// Drops the kept document of `group`/`version` (its resources changed: a
    /// CustomResourceDefinition came, changed or went).
    pub fn forget(&self, group: &str, version: &str) {
        self.documents
            .lock()
            .expect("openapi cache")
            .remove(&gv_path(group, version));
        *self.v2.lock().expect("openapi v2 cache") = None;
    }

    /// `/openapi/v3`: where each group version's document is.
    pub fn root(&self, registry: &Registry) -> Value {
        let mut paths = Map::new();
        for group in registry.groups() {
            for version in &group.versions {
                if let Some(document) = self.document(registry, &group.group, version) {
                    let path = gv_path(&group.group, version);
                    paths.insert(
                        path.clone(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", document.hash)}),
                    );
                }
            }
        }
        json!({"paths": paths})
    }

    /// The group version a `/openapi/v3/...` path names.
    pub fn parse_path(path: &str) -> Option<(String, String)> {
        let rest = path.strip_prefix("/openapi/v3/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["api", version] => Some((String::new(), version.to_string())),
            ["apis", group, version] => Some((group.to_string(), version.to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_schemas_and_field_validation() {
        let registry = Registry::builtin();
        let openapi = OpenApi::default();
        let root = openapi.root(&registry);
        assert!(root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        let apps = openapi.document(&registry, "apps", "v1").unwrap();
        let doc: Value = serde_json::from_slice(&apps.body).unwrap();
        let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(deployment["properties"]["spec"].is_object());
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(
            doc["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
        assert_eq!(
            OpenApi::parse_path("/openapi/v3/apis/apps/v1"),
            Some(("apps".into(), "v1".into()))
        );
        assert_eq!(
            OpenApi::parse_path("/openapi/v3/api/v1"),
            Some(("".into(), "v1".into()))
        );
        assert!(openapi.document(&registry, "apps", "v7").is_none());
    }
}
