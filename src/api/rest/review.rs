//! The review kinds: answered from the request, never stored. Who the caller is
//! (SelfSubjectReview, `kubectl auth whoami`), whether someone may do something
//! (SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectRulesReview —
//! `kubectl auth can-i`), and whether a token is valid (TokenReview).
//!
//! Until RBAC arrives every authenticated user may do everything, as the API issue
//! specifies; access reviews answer accordingly.

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{check_type_and_namespace, validate, ApiError, Call};
use crate::api::http::Body;
use crate::auth::UserInfo;

fn user_info(user: &UserInfo) -> Value {
    json!({"username": user.name, "groups": user.groups})
}

/// Answers a review: the request echoed back with its `status` filled in.
pub(super) async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let mut review = call.body_json()?;
    check_type_and_namespace(call, &mut review)?;
    if let Some(meta) = review.get_mut("metadata").and_then(Value::as_object_mut) {
        // Reviews are nameless; validation wants a name, upstream ignores it.
        meta.entry("name").or_insert_with(|| json!("review"));
    }
    validate(call, &mut review)?;
    let status = match call.resource.kind.as_str() {
        "SelfSubjectReview" => json!({"userInfo": user_info(&call.user)}),
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            access_review(call, &review)?
        }
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        "TokenReview" => token_review(call, &review).await?,
        other => {
            return Err(ApiError::Internal(format!(
                "{other} is not a review kind kedge answers"
            )))
        }
    };
    if let Some(meta) = review.get_mut("metadata").and_then(Value::as_object_mut) {
        if meta.get("name") == Some(&json!("review")) {
            meta.remove("name");
        }
        meta.insert("creationTimestamp".into(), Value::Null);
    }
    review["status"] = status;
    Ok(call.ok(StatusCode::CREATED, &review))
}

fn access_review(call: &Call<'_>, review: &Value) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or_default();
    let resource = spec.get("resourceAttributes");
    let non_resource = spec.get("nonResourceAttributes");
    if resource.is_some() == non_resource.is_some() {
        return Err(ApiError::Invalid {
            target: call.target(""),
            causes: vec![crate::api::error::FieldError::invalid_raw(
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        });
    }
    if call.resource.kind == "SubjectAccessReview"
        || call.resource.kind == "LocalSubjectAccessReview"
    {
        let user = spec.get("user").and_then(Value::as_str).unwrap_or_default();
        let groups = spec
            .get("groups")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        if user.is_empty() && !groups {
            return Err(ApiError::Invalid {
                target: call.target(""),
                causes: vec![crate::api::error::FieldError::invalid_raw(
                    "spec.user",
                    "\"\"",
                    "at least one of user or group must be specified",
                )],
            });
        }
    }
    if call.resource.kind == "LocalSubjectAccessReview" {
        let namespace = resource
            .and_then(|r| r.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if Some(namespace) != call.namespace() {
            return Err(ApiError::BadRequest(format!(
                "spec.resourceAttributes.namespace must match namespace: {}",
                call.namespace().unwrap_or_default()
            )));
        }
    }
    Ok(json!({"allowed": true}))
}

async fn token_review(call: &Call<'_>, review: &Value) -> Result<Value, ApiError> {
    let token = review
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::Invalid {
            target: call.target(""),
            causes: vec![crate::api::error::FieldError::required("spec.token", "")],
        });
    }
    let header = format!("Bearer {token}");
    Ok(
        match call
            .api
            .authenticator
            .authenticate(None, Some(&header))
            .await
        {
            Some(user) => json!({"authenticated": true, "user": user_info(&user)}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        },
    )
}
