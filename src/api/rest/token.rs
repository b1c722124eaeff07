//! `serviceaccounts/<name>/token`: a TokenRequest answered with a signed service account
//! token (`kubectl create token`), optionally bound to a Pod or Secret.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{ApiError, Call};
use crate::api::error::{FieldError, Target};
use crate::api::http::Body;
use crate::api::object;
use crate::auth::service_account::{
    Subject, SubjectLookup, DEFAULT_EXPIRATION_SECONDS, MIN_EXPIRATION_SECONDS,
};
use crate::store::{Consistency, Store};

/// Finds token subjects in the store.
pub struct StoreLookup(pub Store);

impl StoreLookup {
    async fn uid_of(&self, key: &str) -> Option<String> {
        let kv = self.0.get(key, Consistency::Local).await.ok()??;
        let object: Value = serde_json::from_slice(&kv.value).ok()?;
        object::meta_str(&object, "uid").map(str::to_string)
    }
}

impl SubjectLookup for StoreLookup {
    fn exists<'a>(&'a self, subject: &'a Subject) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let account = format!(
                "/registry/core/serviceaccounts/{}/{}",
                subject.namespace, subject.name
            );
            if self.uid_of(&account).await.as_deref() != Some(subject.uid.as_str()) {
                return false;
            }
            match &subject.bound {
                None => true,
                Some((kind, name, uid)) => {
                    let plural = if kind == "Pod" { "pods" } else { "secrets" };
                    let key = format!("/registry/core/{plural}/{}/{name}", subject.namespace);
                    self.uid_of(&key).await.as_deref() == Some(uid.as_str())
                }
            }
        })
    }
}

fn invalid(name: &str, cause: FieldError) -> ApiError {
    ApiError::Invalid {
        target: Target {
            qualified_resource: "tokenrequests.authentication.k8s.io".to_string(),
            group: "authentication.k8s.io".to_string(),
            kind: "TokenRequest".to_string(),
            name: name.to_string(),
        },
        causes: vec![cause],
    }
}

pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let tokens: Arc<_> = call.api.tokens.clone().ok_or_else(|| {
        ApiError::Unavailable("this server has no service account signing key".to_string())
    })?;
    let name = call.path.name.as_deref().unwrap_or_default().to_string();
    let namespace = call.namespace().unwrap_or_default().to_string();
    let mut request = call.body_json()?;
    let account = object::decode(&call.load(&name, Consistency::Linearizable).await?)?;
    let seconds = request
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            &name,
            FieldError::invalid_raw(
                "spec.expirationSeconds",
                &seconds.to_string(),
                "may not specify a duration less than 10 minutes",
            ),
        ));
    }
    if seconds > 1 << 32 {
        return Err(invalid(
            &name,
            FieldError::invalid_raw(
                "spec.expirationSeconds",
                &seconds.to_string(),
                "may not specify a duration larger than 2^32 seconds",
            ),
        ));
    }
    let mut audiences: Vec<String> = request
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    if audiences.is_empty() {
        audiences.push(tokens.issuer().to_string());
    }
    let bound = match request
        .pointer("/spec/boundObjectRef")
        .filter(|b| !b.is_null())
    {
        None => None,
        Some(reference) => Some(bound_object(call, &name, &namespace, reference).await?),
    };
    let subject = Subject {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: object::meta_str(&account, "uid")
            .unwrap_or_default()
            .to_string(),
        bound,
    };
    let (token, expires) = tokens
        .issue(&subject, audiences.clone(), seconds)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expiration = time::OffsetDateTime::from_unix_timestamp(expires)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": null});
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(seconds);
    request["status"] = json!({"token": token, "expirationTimestamp": expiration});
    Ok(call.ok(StatusCode::CREATED, &request))
}

/// The (kind, name, uid) of the Pod or Secret a token is bound to, checked to exist.
async fn bound_object(
    call: &Call<'_>,
    account: &str,
    namespace: &str,
    reference: &Value,
) -> Result<(String, String, String), ApiError> {
    let kind = reference
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = match kind {
        "Pod" => "pods",
        "Secret" => "secrets",
        other => {
            return Err(invalid(
                account,
                FieldError::unsupported("spec.boundObjectRef.kind", other, &["Pod", "Secret"]),
            ))
        }
    };
    let name = reference
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let resource = call
        .api
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))?;
    let kv = call
        .api
        .store
        .get(
            &resource.key(Some(namespace), name),
            Consistency::Linearizable,
        )
        .await
        .map_err(|e| ApiError::from_store(e, Target::new(&resource, name)))?
        .ok_or_else(|| ApiError::NotFound(Target::new(&resource, name)))?;
    let object: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    let runs_as = object
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    if kind == "Pod" && runs_as != account {
        return Err(ApiError::BadRequest(format!(
            "cannot bind token for serviceaccount {account:?} to pod running with different serviceaccount name."
        )));
    }
    let uid = object::meta_str(&object, "uid")
        .unwrap_or_default()
        .to_string();
    if let Some(wanted) = reference
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        if wanted != uid {
            return Err(ApiError::Conflict {
                target: Target::new(&resource, name),
                message: format!("the UID in the bound object reference ({wanted}) does not match the {kind}'s UID ({uid})"),
            });
        }
    }
    Ok((kind.to_string(), name.to_string(), uid))
}
