//! The API's errors, each rendered as the `Status` kube-apiserver returns for it (same
//! reason, code, message and details), so that kubectl prints the same text.

use http::{Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

use super::http::Body;
use super::registry::ResourceType;
use crate::store::StoreError;

/// Which object an error is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `pods`, or `deployments.apps` outside the core group.
    pub qualified_resource: String,
    pub group: String,
    pub kind: String,
    pub name: String,
}

impl Target {
    pub fn new(resource: &ResourceType, name: &str) -> Target {
        let qualified_resource = if resource.group.is_empty() {
            resource.plural.clone()
        } else {
            format!("{}.{}", resource.plural, resource.group)
        };
        Target {
            qualified_resource,
            group: resource.group.clone(),
            kind: resource.kind.clone(),
            name: name.to_string(),
        }
    }
}

impl Target {
    /// `Deployment.apps`, or `Pod` in the core group, as upstream names kinds in errors.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    pub field: String,
    /// The full message, e.g. `Required value` or `Invalid value: "x": must be ...`.
    pub message: String,
}

impl FieldError {
    pub fn required(field: &str, detail: &str) -> FieldError {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        FieldError {
            reason: "FieldValueRequired",
            field: field.to_string(),
            message,
        }
    }

    pub fn invalid(field: &str, value: &str, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!(
                "Invalid value: {}: {detail}",
                serde_json::to_string(value).unwrap_or_default()
            ),
        }
    }

    /// A value shown the way Go's `%#v` shows non-strings (numbers, maps).
    pub fn invalid_raw(field: &str, shown: &str, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueInvalid",
            field: field.to_string(),
            message: format!("Invalid value: {shown}: {detail}"),
        }
    }

    pub fn unsupported(field: &str, value: &str, supported: &[&str]) -> FieldError {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError {
            reason: "FieldValueNotSupported",
            field: field.to_string(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                supported.join(", ")
            ),
        }
    }

    pub fn duplicate(field: &str, value: &str) -> FieldError {
        FieldError {
            reason: "FieldValueDuplicate",
            field: field.to_string(),
            message: format!("Duplicate value: {value:?}"),
        }
    }

    pub fn forbidden(field: &str, detail: &str) -> FieldError {
        FieldError {
            reason: "FieldValueForbidden",
            field: field.to_string(),
            message: format!("Forbidden: {detail}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{} {:?} not found", .0.qualified_resource, .0.name)]
    NotFound(Target),
    #[error("{} {:?} already exists", .0.qualified_resource, .0.name)]
    AlreadyExists(Target),
    #[error("Operation cannot be fulfilled on {} {:?}: {message}", .target.qualified_resource, .target.name)]
    Conflict { target: Target, message: String },
    #[error("{} {:?} is invalid: {}", .target.qualified_kind(), .target.name, join_causes(.causes))]
    Invalid {
        target: Target,
        causes: Vec<FieldError>,
    },
    #[error("{0}")]
    BadRequest(String),
    /// 410: a resourceVersion or continue token older than the kept history.
    #[error("{0}")]
    Expired(String),
    #[error("the server could not find the requested resource")]
    UnknownResource,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    #[error("the request is too large")]
    TooLarge,
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Forbidden(String),
    /// 422 without field causes (a JSON patch that does not apply).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    /// 429: the request would break a limit that may lift later (a disruption budget).
    #[error("{message}")]
    TooManyRequests {
        message: String,
        /// (reason, message) of each cause.
        causes: Vec<(String, String)>,
    },
    #[error("{0}")]
    Timeout(String),
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

fn join_causes(causes: &[FieldError]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl ApiError {
    fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) | ApiError::UnknownResource => {
                (StatusCode::NOT_FOUND, "NotFound")
            }
            ApiError::AlreadyExists(_) => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Expired(_) => (StatusCode::GONE, "Expired"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// The `Status` object of this error.
    pub fn status(&self) -> Status {
        let (code, reason) = self.code_and_reason();
        let details = match self {
            ApiError::NotFound(t)
            | ApiError::AlreadyExists(t)
            | ApiError::Conflict { target: t, .. } => Some(StatusDetails {
                name: Some(t.name.clone()),
                group: (!t.group.is_empty()).then(|| t.group.clone()),
                kind: Some(
                    t.qualified_resource
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                ),
                ..Default::default()
            }),
            ApiError::Invalid { target, causes } => Some(StatusDetails {
                name: Some(target.name.clone()),
                group: (!target.group.is_empty()).then(|| target.group.clone()),
                kind: Some(target.kind.clone()),
                causes: Some(
                    causes
                        .iter()
                        .map(|c| StatusCause {
                            field: Some(c.field.clone()),
                            message: Some(c.message.clone()),
                            reason: Some(c.reason.to_string()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ApiError::TooManyRequests { causes, .. } => Some(StatusDetails {
                causes: Some(
                    causes
                        .iter()
                        .map(|(reason, message)| StatusCause {
                            reason: Some(reason.clone()),
                            message: Some(message.clone()),
                            field: None,
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            _ => None,
        };
        Status {
            code: Some(i32::from(code.as_u16())),
            details,
            message: Some(self.to_string()),
            reason: Some(reason.to_string()),
            status: Some("Failure".to_string()),
            ..Default::default()
        }
    }

    /// The HTTP response carrying the `Status`.
    pub fn response(&self) -> Response<Body> {
        let (code, _) = self.code_and_reason();
        super::status::render(code, &self.status())
    }

    /// Maps a store error about `target` to what the API answers.
    pub fn from_store(error: StoreError, target: Target) -> ApiError {
        match error {
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(target),
            StoreError::NotFound { .. } => ApiError::NotFound(target),
            StoreError::Conflict { .. } => ApiError::Conflict {
                target,
                message: "the object has been modified; please apply your changes to the latest version and try again"
                    .to_string(),
            },
            StoreError::Compacted { requested, compact_revision } => ApiError::Expired(format!(
                "too old resource version: {requested} ({})",
                compact_revision + 1
            )),
            StoreError::FutureRevision { requested, current } => ApiError::Timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            StoreError::InvalidContinue(why) => ApiError::BadRequest(format!("invalid continue token: {why}")),
            StoreError::InvalidKey { reason, .. } => ApiError::BadRequest(reason),
            StoreError::Unavailable(why) => ApiError::Unavailable(why),
            StoreError::Timeout(why) => ApiError::Timeout(why),
            StoreError::Internal(why) => ApiError::Internal(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(qualified: &str, kind: &str, name: &str) -> Target {
        Target {
            qualified_resource: qualified.into(),
            group: qualified
                .split_once('.')
                .map(|(_, g)| g.to_string())
                .unwrap_or_default(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn messages_read_like_kube_apiserver() {
        assert_eq!(
            ApiError::NotFound(target("deployments.apps", "Deployment", "web")).to_string(),
            r#"deployments.apps "web" not found"#
        );
        assert_eq!(
            ApiError::AlreadyExists(target("pods", "Pod", "a")).to_string(),
            r#"pods "a" already exists"#
        );
        let invalid = ApiError::Invalid {
            target: target("pods", "Pod", "a"),
            causes: vec![FieldError::required("spec.containers", "")],
        };
        assert_eq!(
            invalid.to_string(),
            r#"Pod "a" is invalid: spec.containers: Required value"#
        );
        let status = invalid.status();
        assert_eq!(status.code, Some(422));
        assert_eq!(status.reason.as_deref(), Some("Invalid"));
        let causes = status.details.unwrap().causes.unwrap();
        assert_eq!(causes[0].reason.as_deref(), Some("FieldValueRequired"));
        let conflict = ApiError::from_store(
            StoreError::Conflict {
                key: "k".into(),
                expected: 1,
                current: Box::new(crate::store::KeyValue {
                    key: "k".into(),
                    value: Default::default(),
                    create_revision: 1,
                    mod_revision: 2,
                    version: 2,
                }),
            },
            target("configmaps", "ConfigMap", "c"),
        );
        assert_eq!(
            conflict.to_string(),
            r#"Operation cannot be fulfilled on configmaps "c": the object has been modified; please apply your changes to the latest version and try again"#
        );
        assert_eq!(ApiError::TooLarge.status().code, Some(413));
    }
}
