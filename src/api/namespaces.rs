//! Namespace deletion: a namespace marked Terminating is emptied (objects without
//! finalizers deleted, objects with finalizers marked and waited for), then removed.
//!
//! Upstream this is kube-controller-manager's namespace controller; kedge runs it here until
//! the controllers arrive (`src/controllers`), behind the same queue-of-names shape.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::object;
use super::rest::Api;
use crate::store::{Consistency, ListOptions, StoreError};

/// Queues namespaces for emptying and removal. Cheap to clone.
#[derive(Clone)]
pub struct NamespaceReaper {
    queue: mpsc::UnboundedSender<String>,
}

/// The receiving end, handed to [`run`].
pub struct ReaperQueue(mpsc::UnboundedReceiver<String>);

impl NamespaceReaper {
    pub fn new() -> (NamespaceReaper, ReaperQueue) {
        let (queue, receiver) = mpsc::unbounded_channel();
        (NamespaceReaper { queue }, ReaperQueue(receiver))
    }

    /// Asks for `namespace` to be emptied and removed.
    pub fn reap(&self, namespace: &str) {
        let _ = self.queue.send(namespace.to_string());
    }
}

/// Empties and removes queued namespaces (and those found Terminating at start) until the
/// queue closes.
pub async fn run(api: Arc<Api>, mut queue: ReaperQueue) {
    for name in terminating(&api).await {
        api.reaper.reap(&name);
    }
    while let Some(name) = queue.0.recv().await {
        let api = api.clone();
        tokio::spawn(async move {
            while let Err(e) = reap(&api, &name).await {
                tracing::warn!(namespace = %name, error = %e, "emptying a terminating namespace failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

async fn terminating(api: &Api) -> Vec<String> {
    let Some(namespaces) = api.registry.get("", "v1", "namespaces") else {
        return Vec::new();
    };
    let Ok(page) = api
        .store
        .list(
            &namespaces.key_prefix(),
            ListOptions::default(),
            Consistency::Linearizable,
        )
        .await
    else {
        return Vec::new();
    };
    page.items
        .iter()
        .filter_map(|kv| object::decode(kv).ok())
        .filter(object::is_marked_for_deletion)
        .map(|ns| object::name(&ns).to_string())
        .collect()
}

/// Deletes what can go now; returns how many objects still wait on their finalizers.
async fn empty(api: &Api, namespace: &str) -> Result<usize, StoreError> {
    let mut waiting = 0;
    for resource in api.registry.all() {
        if !resource.namespaced || !resource.stored {
            continue;
        }
        waiting += drain(api, &resource.namespace_prefix(Some(namespace))).await?;
    }
    Ok(waiting)
}

/// Deletes the objects under `prefix` that have no finalizers and marks the others for
/// deletion; returns how many still wait on their finalizers. Shared with the removal of a
/// CustomResourceDefinition's objects.
pub(crate) async fn drain(api: &Api, prefix: &str) -> Result<usize, StoreError> {
    let mut waiting = 0;
    let page = api
        .store
        .list(prefix, ListOptions::default(), Consistency::Linearizable)
        .await?;
    for kv in page.items {
        let Ok(mut item) = object::decode(&kv) else {
            continue;
        };
        let result = if object::has_finalizers(&item) {
            waiting += 1;
            if object::is_marked_for_deletion(&item) {
                continue;
            }
            object::mark_for_deletion(&mut item, 0);
            api.store
                .update(&kv.key, object::encode(&item), Some(kv.mod_revision))
                .await
                .map(|_| ())
        } else {
            api.store
                .delete(&kv.key, Some(kv.mod_revision))
                .await
                .map(|_| ())
        };
        match result {
            // Changed or gone meanwhile: the next pass looks again.
            Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(waiting)
}

async fn reap(api: &Api, name: &str) -> Result<(), StoreError> {
    loop {
        let waiting = empty(api, name).await?;
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let namespaces = api
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are a built-in kind");
    match api.store.delete(&namespaces.key(None, name), None).await {
        Ok(_) => {
            tracing::info!(namespace = name, "removed the terminated namespace");
            Ok(())
        }
        Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
