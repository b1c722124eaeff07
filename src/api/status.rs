//! Kubernetes `Status` responses: every error the API returns is one, with the reason and
//! code clients switch on.

use http::{Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use serde_json::Value;

use super::http::{json, Body};

/// A `Status` as it goes on the wire: with its `kind` and `apiVersion`.
pub fn to_value(status: &Status) -> Value {
    let mut value = serde_json::to_value(status).expect("Status serializes");
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), "Status".into());
        object.insert("apiVersion".into(), "v1".into());
    }
    value
}

/// The response carrying `status`.
pub fn render(code: StatusCode, status: &Status) -> Response<Body> {
    json(code, &to_value(status))
}

/// A `Status` failure with `reason` (e.g. "Unauthorized", "NotFound") and `message`.
pub fn failure(code: StatusCode, reason: &str, message: impl Into<String>) -> Response<Body> {
    let status = Status {
        code: Some(i32::from(code.as_u16())),
        message: Some(message.into()),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        ..Default::default()
    };
    render(code, &status)
}

/// 401, exactly as kube-apiserver answers a request without valid credentials.
pub fn unauthorized() -> Response<Body> {
    failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
}

/// 403 for an authenticated user who may not do this.
pub fn forbidden(user: &str, what: &str) -> Response<Body> {
    failure(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!("{what} is forbidden: User \"{user}\" cannot access it"),
    )
}

/// 404 for a path nothing serves.
pub fn not_found(path: &str) -> Response<Body> {
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn unauthorized_is_a_kubernetes_status() {
        let response = unauthorized();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "Status");
        assert_eq!(value["apiVersion"], "v1");
        assert_eq!(value["status"], "Failure");
        assert_eq!(value["reason"], "Unauthorized");
        assert_eq!(value["code"], 401);
    }
}
