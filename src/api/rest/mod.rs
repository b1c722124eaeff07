//! The REST operations on resources, one file per operation (get and list, create,
//! update and patch, delete, watch), over the store. This module dispatches a parsed
//! resource path and method to them and owns what they share: the request's query, body
//! limits and the preparation of objects before they are written.

mod binding;
pub(crate) mod create;
mod delete;
mod eviction;
mod hooks;
pub mod priority;
mod read;
mod review;
mod scale;
pub mod token;
mod update;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use serde_json::{Map, Value};

use super::error::{ApiError, FieldError, Target};
use super::http::{json_bytes, read_limited, Body, ReadError, RequestBody};
use super::registry::{Registry, ResourceType};
use super::request::{ResourcePath, Verb};
use super::{object, validation};
use crate::store::Store;

/// Deepest object accepted: what is stored must decode again (serde_json stops at 128).
const MAX_NESTING: usize = 100;

/// How deeply `value` nests arrays and objects, counting from 1 for a scalar; stops
/// counting past [`MAX_NESTING`].
fn nesting(value: &Value) -> usize {
    fn depth(value: &Value, level: usize) -> usize {
        if level > MAX_NESTING {
            return level;
        }
        match value {
            Value::Array(items) => items
                .iter()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level),
            Value::Object(map) => map
                .values()
                .map(|v| depth(v, level + 1))
                .max()
                .unwrap_or(level),
            _ => level,
        }
    }
    depth(value, 1)
}

/// The largest request body accepted, as kube-apiserver (3 MiB).
pub const MAX_BODY: usize = 3 << 20;

/// What the REST handlers work with.
pub struct Api {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub openapi: super::openapi::OpenApi,
    pub services: super::services::Allocator,
    /// Who callers are (also what TokenReviews ask).
    pub authenticator: crate::auth::Authenticator,
    /// Issues service account tokens (`serviceaccounts/<name>/token`).
    pub tokens: Option<Arc<crate::auth::service_account::ServiceAccountTokens>>,
    /// Reaches kubelets for logs, exec, attach, port-forward and node proxying; `None`
    /// answers those with 503.
    pub kubelet: Option<Arc<super::proxy::KubeletClient>>,
    /// Serves `metrics.k8s.io` from the nodes' kubelets (none: that API is unavailable).
    pub metrics: Option<Arc<super::metrics::Metrics>>,
}

impl Api {
    /// The API over `store`.
    pub fn new(store: Store, registry: Registry, network: super::services::ServiceNetwork) -> Api {
        Api {
            services: super::services::Allocator::new(store.clone(), network),
            authenticator: crate::auth::Authenticator::default(),
            tokens: None,
            kubelet: None,
            metrics: None,
            store,
            registry: Arc::new(registry),
            openapi: Default::default(),
        }
    }
}

/// One request, parsed.
pub(crate) struct Call<'a> {
    api: &'a Api,
    resource: Arc<ResourceType>,
    path: ResourcePath,
    query: HashMap<String, String>,
    accept: Option<String>,
    content_type: Option<String>,
    /// Names the field manager of writes that do not say (`kubectl/v1.33...` → `kubectl`).
    user_agent: Option<String>,
    body: Bytes,
    /// Who is asking.
    user: crate::auth::UserInfo,
    /// `dryRun=All`: everything but the write.
    dry_run: bool,
    /// Warnings for the `Warning` response header.
    warnings: std::sync::Mutex<Vec<String>>,
}

impl Call<'_> {
    fn query(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    fn namespace(&self) -> Option<&str> {
        self.path
            .namespace
            .as_deref()
            .filter(|_| self.resource.namespaced)
    }

    fn target(&self, name: &str) -> Target {
        Target::new(&self.resource, name)
    }

    fn key(&self, name: &str) -> String {
        self.resource.key(self.namespace(), name)
    }

    /// The request body as a JSON object.
    fn body_json(&self) -> Result<Value, ApiError> {
        let media_type = self
            .content_type
            .as_deref()
            .map(|c| c.split(';').next().unwrap_or_default().trim())
            .unwrap_or("application/json");
        if self.body.is_empty() {
            return Err(ApiError::BadRequest(
                "the request body is empty".to_string(),
            ));
        }
        let value: Value = match media_type {
            "application/json" | "*/*" => serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::BadRequest(format!("the request body is not valid JSON: {e}"))
            })?,
            crate::api::protobuf::MEDIA_TYPE => {
                crate::api::protobuf::decode(&self.body).map_err(|e| {
                    ApiError::BadRequest(format!("the request body is not valid protobuf: {e}"))
                })?
            }
            "application/yaml" => serde_yaml_ng::from_slice(&self.body).map_err(|e| {
                ApiError::BadRequest(format!("the request body is not valid YAML: {e}"))
            })?,
            _ => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "application/json, application/yaml, {}",
                    crate::api::protobuf::MEDIA_TYPE
                )))
            }
        };
        if !value.is_object() {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON object".to_string(),
            ));
        }
        Ok(value)
    }

    /// A stored object as this endpoint serves it. Custom resources are stored in the
    /// version they were written in and served in the version asked for, converted as
    /// upstream's `None` strategy does: by their apiVersion alone.
    fn decode(&self, kv: &crate::store::KeyValue) -> Result<Value, ApiError> {
        served(&self.resource, kv)
    }

    /// The stored object `name`, read with `consistency`; NotFound if there is none.
    async fn load(
        &self,
        name: &str,
        consistency: crate::store::Consistency,
    ) -> Result<crate::store::KeyValue, ApiError> {
        self.api
            .store
            .get(&self.key(name), consistency)
            .await
            .map_err(|e| ApiError::from_store(e, self.target(name)))?
            .ok_or_else(|| ApiError::NotFound(self.target(name)))
    }

    /// Writes `object` over the stored version at `revision` (compare-and-swap) and gives it
    /// its new resourceVersion.
    async fn store_update(
        &self,
        key: &str,
        object: &mut Value,
        revision: u64,
    ) -> Result<(), crate::store::StoreError> {
        let kv = self
            .api
            .store
            .update(key, object::encode(object), Some(revision))
            .await?;
        object::set_resource_version(object, kv.mod_revision);
        Ok(())
    }

    fn ok(&self, status: StatusCode, object: &Value) -> Response<Body> {
        let body = serde_json::to_vec(object).expect("JSON values serialize");
        self.ok_bytes(status, body.into())
    }

    /// A JSON answer already encoded, with this request's warnings.
    fn ok_bytes(&self, status: StatusCode, body: Bytes) -> Response<Body> {
        let mut response = json_bytes(status, body);
        for warning in self.warnings.lock().expect("warnings").iter() {
            let value = format!(
                "299 - {}",
                serde_json::to_string(warning).unwrap_or_default()
            );
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response.headers_mut().append(http::header::WARNING, value);
            }
        }
        response
    }
}

/// A stored object of `resource` as its endpoint serves it (see [`Call::decode`]).
fn served(resource: &ResourceType, kv: &crate::store::KeyValue) -> Result<Value, ApiError> {
    let mut object = object::decode(kv)?;
    if resource.crd.is_some() {
        object["apiVersion"] = Value::String(resource.api_version());
    }
    Ok(object)
}

/// Serves `user`'s request for a resource.
pub async fn handle(
    api: &Api,
    user: crate::auth::UserInfo,
    request: Request<RequestBody>,
    path: ResourcePath,
) -> Response<Body> {
    match serve(api, user, request, path).await {
        Ok(response) => response,
        Err(error) => error.response(),
    }
}

/// Whether a write is a dry run: `dryRun=All` (the only value upstream accepts).
fn dry_run(query: &HashMap<String, String>, verb: Verb) -> Result<bool, ApiError> {
    let Some(value) = query.get("dryRun") else {
        return Ok(false);
    };
    if value == "All" {
        return Ok(true);
    }
    let options = match verb {
        Verb::Create => "CreateOptions",
        Verb::Update => "UpdateOptions",
        Verb::Patch => "PatchOptions",
        _ => "DeleteOptions",
    };
    Err(invalid_options(
        options,
        FieldError::unsupported("dryRun", value, &["All"]),
    ))
}

/// The 422 upstream answers for bad request options (`CreateOptions`, `PatchOptions`,
/// `DeleteOptions`... of `meta.k8s.io`).
fn invalid_options(kind: &str, cause: FieldError) -> ApiError {
    ApiError::Invalid {
        target: Target {
            qualified_resource: format!("{}.meta.k8s.io", kind.to_ascii_lowercase()),
            group: "meta.k8s.io".to_string(),
            kind: kind.to_string(),
            name: String::new(),
        },
        causes: vec![cause],
    }
}

/// A boolean query parameter as upstream reads one: present and not `0` or `false` (any
/// case) is true — clients send `true`, `True` and `1`.
pub(super) fn query_bool(value: Option<&str>) -> bool {
    value.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn read_body(body: RequestBody) -> Result<Bytes, ApiError> {
    read_limited(body, MAX_BODY).await.map_err(|e| match e {
        ReadError::TooLarge(_) => ApiError::TooLarge,
        ReadError::Failed(why) => ApiError::BadRequest(why),
    })
}

async fn serve(
    api: &Api,
    user: crate::auth::UserInfo,
    request: Request<RequestBody>,
    path: ResourcePath,
) -> Result<Response<Body>, ApiError> {
    let resource = api
        .registry
        .get(&path.group, &path.version, &path.resource)
        .ok_or(ApiError::UnknownResource)?;
    if path.namespace.is_some() && !resource.namespaced {
        return Err(ApiError::UnknownResource);
    }
    let query = parse_query(request.uri().query());
    let watch = query_bool(query.get("watch").map(String::as_str));
    let verb = Verb::of(request.method(), &path, watch).ok_or(ApiError::MethodNotAllowed)?;
    if let Some(sub) = &path.subresource {
        if !resource.subresources.contains(sub) {
            return Err(ApiError::UnknownResource);
        }
        let verbs: &[Verb] = match sub.as_str() {
            "status" | "scale" => &[Verb::Get, Verb::Update, Verb::Patch],
            // Where `kubectl debug` adds a pod's ephemeral containers.
            "ephemeralcontainers" if resource.plural == "pods" => {
                &[Verb::Get, Verb::Update, Verb::Patch]
            }
            "binding" | "eviction" | "token" => &[Verb::Create],
            "finalize" => &[Verb::Update],
            // Served by the node's kubelet; the body (none) and upgrades go through as they are.
            "log" | "exec" | "attach" | "portforward" if resource.plural == "pods" => {
                return super::proxy::serve(api, request, &path).await
            }
            "proxy" if resource.plural == "nodes" => {
                return super::proxy::serve(api, request, &path).await
            }
            "log" | "exec" | "attach" | "portforward" | "proxy" => {
                return Err(ApiError::Unavailable(format!(
                    "the {}/{sub} subresource is not served by this kedge server yet",
                    resource.plural
                )))
            }
            _ => {
                return Err(ApiError::Unavailable(format!(
                    "the {}/{sub} subresource is not served by this kedge server yet",
                    resource.plural
                )))
            }
        };
        if !verbs.contains(&verb) {
            return Err(ApiError::MethodNotAllowed);
        }
    } else if !resource.supports(verb.as_str()) {
        return Err(ApiError::MethodNotAllowed);
    }
    if resource.group == super::metrics::GROUP {
        return super::metrics::serve(api, &path, &query).await;
    }
    let (parts, body) = request.into_parts();
    let header = |name: http::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let dry_run = dry_run(&query, verb)?;
    let accept = header(http::header::ACCEPT);
    let content_type = header(http::header::CONTENT_TYPE);
    let user_agent = header(http::header::USER_AGENT);
    let body = read_body(body).await?;
    let call = Call {
        api,
        resource,
        path,
        query,
        accept,
        content_type,
        user_agent,
        body,
        user,
        dry_run,
        warnings: Default::default(),
    };
    match (call.path.subresource.as_deref(), verb) {
        (Some("scale"), Verb::Get) => return scale::get(&call).await,
        (Some("scale"), Verb::Update) => return scale::update(&call, false).await,
        (Some("scale"), Verb::Patch) => return scale::update(&call, true).await,
        (Some("binding"), _) => return binding::create(&call).await,
        (Some("eviction"), _) => return eviction::create(&call).await,
        (Some("token"), _) => return token::create(&call).await,
        _ => {}
    }
    match verb {
        Verb::Create if !call.resource.stored => review::create(&call).await,
        Verb::Get => read::get(&call).await,
        Verb::List => read::list(&call).await,
        Verb::Watch => watch::watch(&call).await,
        Verb::Create => create::create(&call).await,
        Verb::Update => update::update(&call).await,
        Verb::Patch => update::patch(&call).await,
        Verb::Delete => delete::delete(&call).await,
        Verb::DeleteCollection => delete::delete_collection(&call).await,
    }
}

/// Fields of `input` that the schema dropped from `typed` (its read-back), as paths.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(input), Value::Object(typed)) => {
            for (key, value) in input {
                if value.is_null() {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match typed.get(key) {
                    None => out.push(here),
                    Some(known) => unknown_fields(value, known, &here, out),
                }
            }
        }
        (Value::Array(input), Value::Array(typed)) => {
            for (i, (value, known)) in input.iter().zip(typed).enumerate() {
                unknown_fields(value, known, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks `object` against its kind's schema, fields it does not know per the request's
/// `fieldValidation` (Strict: an error; Warn, the default: a warning; Ignore), then its
/// metadata. A custom resource becomes what its schema reads back (unknown fields pruned,
/// defaults applied), as upstream stores it.
fn validate(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    if nesting(object) > MAX_NESTING {
        return Err(ApiError::BadRequest(format!(
            "the object is nested more than {MAX_NESTING} levels deep"
        )));
    }
    let resource = &call.resource;
    let cannot_handle = |detail: String| {
        ApiError::BadRequest(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {detail}",
            kind = resource.kind,
            version = resource.version,
        ))
    };
    let name = || {
        object::meta_str(object, "name")
            .unwrap_or_default()
            .to_string()
    };
    let typed = (resource.check)(object).map_err(|e| match e.causes.is_empty() {
        true => cannot_handle(format!("{}: {}", e.field, e.message)),
        false => ApiError::Invalid {
            target: call.target(&name()),
            causes: e.causes,
        },
    })?;
    let mut unknown = Vec::new();
    unknown_fields(object, &typed, "", &mut unknown);
    if !unknown.is_empty() {
        let listed: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        match call.query("fieldValidation") {
            Some("Strict") => {
                return Err(cannot_handle(format!(
                    "strict decoding error: {}",
                    listed.join(", ")
                )))
            }
            Some("Ignore") => {}
            _ => call.warnings.lock().expect("warnings").extend(listed),
        }
    }
    if resource.crd.is_some() {
        *object = typed;
    }
    let meta = object::metadata(object).cloned().unwrap_or_default();
    let mut causes = validation::object_meta(&resource.kind, &meta);
    causes.extend(validation::kinds::validate(
        &resource.group,
        &resource.kind,
        object,
    ));
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            target: call.target(meta.get("name").and_then(Value::as_str).unwrap_or_default()),
            causes,
        });
    }
    Ok(())
}

/// Checks that changing `current` into `new` touches nothing the kind forbids changing.
fn validate_update(call: &Call<'_>, current: &Value, new: &Value) -> Result<(), ApiError> {
    let resource = &call.resource;
    let causes = if call.path.subresource.as_deref() == Some("ephemeralcontainers") {
        validation::immutable::validate_ephemeral_containers_update(current, new)
    } else {
        validation::immutable::validate_update(&resource.group, &resource.kind, current, new)
    };
    if causes.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        target: call.target(object::name(new)),
        causes,
    })
}

/// Makes `object` carry the endpoint's kind, apiVersion and namespace, or says why it can't.
fn check_type_and_namespace(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    let resource = &call.resource;
    let api_version = resource.api_version();
    let map = object.as_object_mut().expect("checked to be an object");
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), Value::String(api_version.clone()));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), Value::String(resource.kind.clone()));
        }
        Some(k) if k == resource.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )))
        }
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".to_string()))?;
    if resource.namespaced {
        let path_namespace = call.path.namespace.clone();
        match (meta.get("namespace").and_then(Value::as_str), path_namespace) {
            (Some(body), Some(path)) if !body.is_empty() && body != path => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".to_string(),
                ))
            }
            (_, Some(path)) => {
                meta.insert("namespace".into(), Value::String(path));
            }
            (_, None) => {
                return Err(ApiError::BadRequest(format!(
                    "{} must be created in a namespace",
                    resource.plural
                )))
            }
        }
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// The object's `spec` (what a change to bumps `metadata.generation`).
fn spec(object: &Value) -> Option<&Value> {
    object.get("spec")
}

/// What a change to bumps `metadata.generation`: the spec of built-in kinds; everything
/// but metadata and status of custom resources, as upstream.
fn generation_fields(resource: &ResourceType, object: &Value) -> Value {
    if resource.crd.is_none() {
        return spec(object).cloned().unwrap_or(Value::Null);
    }
    let mut fields = object.clone();
    if let Some(map) = fields.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    fields
}

/// A `metadata.name` for the invalid-name case, as upstream reports it.
fn name_required(call: &Call<'_>) -> ApiError {
    ApiError::Invalid {
        target: call.target(""),
        causes: vec![FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nesting_is_measured_and_capped() {
        assert_eq!(nesting(&json!("x")), 1);
        assert_eq!(nesting(&json!({"a": [{"b": 1}]})), 4);
        let mut deep = json!(1);
        for _ in 0..150 {
            deep = json!([deep]);
        }
        assert!(nesting(&deep) > MAX_NESTING);
    }
}
