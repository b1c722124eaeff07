//! Objects every cluster starts with: the namespaces `default`, `kube-system`, `kube-public`
//! and `kube-node-lease`.

use serde_json::json;

use super::rest::create::prepare_new;
use super::{object, Api};
use crate::store::StoreError;

/// The namespaces Kubernetes creates at start.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates the system namespaces that are missing. Safe to run on every server at every
/// start: an existing namespace is left alone.
pub async fn ensure_namespaces(api: &Api) -> Result<(), StoreError> {
    let namespaces = api
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are a built-in kind");
    for name in SYSTEM_NAMESPACES {
        let mut namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
        });
        prepare_new(&mut namespace, true, "Namespace");
        match api
            .store
            .create(&namespaces.key(None, name), object::encode(&namespace))
            .await
        {
            Ok(_) => tracing::info!(namespace = name, "created system namespace"),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
