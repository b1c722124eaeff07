//! Keeps this server's registry in step with the stored CustomResourceDefinitions (every
//! server runs it from its own store watch, so restarts and followers serve the same), and
//! writes what upstream's CRD controllers write: the status, the cleanup finalizer, and on
//! deletion the removal of every object of the definition before the definition itself.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::status::{accept, conditions_of, desired, set_condition};
use super::types::{resource_types, Names};
use crate::api::object;
use crate::api::rest::Api;
use crate::store::{Consistency, EventKind, KeyValue, ListOptions, StoreError};

/// The finalizer that holds a definition until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
const GROUP: &str = "apiextensions.k8s.io";
const PLURAL: &str = "customresourcedefinitions";

fn prefix() -> String {
    format!("/registry/{GROUP}/{PLURAL}/")
}

/// Follows the stored definitions until the task is dropped, starting over after errors.
pub async fn run(api: Arc<Api>) {
    let cleaning = Arc::new(Mutex::new(HashSet::new()));
    loop {
        if let Err(e) = follow(&api, &cleaning).await {
            tracing::warn!(error = %e, "following CustomResourceDefinitions failed; starting over");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(api: &Arc<Api>, cleaning: &Arc<Mutex<HashSet<String>>>) -> Result<(), StoreError> {
    let page = api
        .store
        .list(&prefix(), ListOptions::default(), Consistency::Linearizable)
        .await?;
    let mut crds: Vec<Value> = page
        .items
        .iter()
        .filter_map(|kv| object::decode(kv).ok())
        .collect();
    // First come, first served: older definitions keep their names.
    crds.sort_by(|a, b| {
        object::meta_str(a, "creationTimestamp").cmp(&object::meta_str(b, "creationTimestamp"))
    });
    let present: HashSet<String> = crds.iter().map(|c| object::name(c).to_string()).collect();
    for resource in api.registry.all() {
        if let Some(crd) = &resource.crd {
            if !present.contains(crd) {
                forget(api, crd);
            }
        }
    }
    for crd in &crds {
        sync(api, cleaning, crd).await;
    }
    let mut watcher = api.store.watch(&prefix(), page.revision)?;
    while let Some(event) = watcher.next().await {
        let event = event?;
        match event.kind {
            EventKind::Put => {
                if let Ok(crd) = object::decode(&event.kv) {
                    sync(api, cleaning, &crd).await;
                }
            }
            EventKind::Delete => {
                let name = event.kv.key.rsplit('/').next().unwrap_or_default();
                forget(api, name);
            }
        }
    }
    Ok(())
}

/// Stops serving what `crd` defined.
fn forget(api: &Api, crd: &str) {
    for (group, version) in api.registry.remove_custom(crd) {
        api.openapi.forget(&group, &version);
    }
}

/// Serves what `crd` defines (when its names are free) and records that in its status.
async fn sync(api: &Arc<Api>, cleaning: &Arc<Mutex<HashSet<String>>>, crd: &Value) {
    let name = object::name(crd).to_string();
    if object::is_marked_for_deletion(crd) {
        // Still served, so that objects' own finalizers can be finished, but no new ones
        // (upstream answers create with 405 while the definition terminates).
        let mut types = resource_types(crd);
        for t in &mut types {
            t.verbs.retain(|v| v != "create");
        }
        api.registry.set_custom(&name, types);
        if cleaning.lock().expect("cleaning set").insert(name.clone()) {
            let (api, cleaning) = (api.clone(), cleaning.clone());
            tokio::spawn(async move {
                while let Err(e) = clean_up(&api, &name).await {
                    tracing::warn!(crd = %name, error = %e, "removing the custom resources failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                cleaning.lock().expect("cleaning set").remove(&name);
            });
        }
        return;
    }
    let names = Names::of(crd);
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let acceptance = accept(&api.registry, &name, group, &names);
    let mut versions: Vec<(String, String)> = api
        .registry
        .all()
        .iter()
        .filter(|t| t.crd.as_deref() == Some(name.as_str()))
        .map(|t| (t.group.clone(), t.version.clone()))
        .collect();
    if acceptance.accepted {
        let types = resource_types(crd);
        versions.extend(types.iter().map(|t| (t.group.clone(), t.version.clone())));
        // Served before Established is written, so whoever waits for it finds the resource.
        api.registry.set_custom(&name, types);
    } else {
        api.registry.remove_custom(&name);
    }
    for (group, version) in versions {
        api.openapi.forget(&group, &version);
    }
    let mut updated = crd.clone();
    updated["status"] = desired(crd, &names, &acceptance);
    if acceptance.accepted {
        add_finalizer(&mut updated);
    }
    if updated != *crd {
        write(api, crd, &updated).await;
    }
}

fn add_finalizer(crd: &mut Value) {
    let Some(meta) = object::metadata_mut(crd) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f == CLEANUP_FINALIZER) {
            list.push(json!(CLEANUP_FINALIZER));
        }
    }
}

/// Writes `updated` over `current` if nothing changed it meanwhile (a newer version comes
/// back through the watch and is synced in turn).
async fn write(api: &Api, current: &Value, updated: &Value) {
    let Ok(Some(revision)) = object::resource_version(current) else {
        return;
    };
    let key = format!("{}{}", prefix(), object::name(current));
    let mut value = updated.clone();
    if let Some(meta) = object::metadata_mut(&mut value) {
        meta.remove("resourceVersion");
    }
    match api
        .store
        .update(&key, object::encode(&value), Some(revision))
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
        Err(e) => {
            tracing::warn!(crd = %object::name(current), error = %e, "writing the CustomResourceDefinition status failed")
        }
    }
}

/// The stored definition `name`, if it is still there.
async fn load(api: &Api, name: &str) -> Result<Option<(KeyValue, Value)>, StoreError> {
    let key = format!("{}{name}", prefix());
    let Some(kv) = api.store.get(&key, Consistency::Linearizable).await? else {
        return Ok(None);
    };
    match object::decode(&kv) {
        Ok(crd) => Ok(Some((kv, crd))),
        Err(e) => Err(StoreError::Internal(e.to_string())),
    }
}

/// Marks the definition Terminating, deletes every object of it, then lets it go.
async fn clean_up(api: &Api, name: &str) -> Result<(), StoreError> {
    let Some((kv, mut crd)) = load(api, name).await? else {
        return Ok(());
    };
    let mut conditions = conditions_of(&crd);
    set_condition(
        &mut conditions,
        json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress", "message": "CustomResource deletion is in progress"}),
    );
    if !crd["status"].is_object() {
        crd["status"] = json!({});
    }
    crd["status"]["conditions"] = Value::Array(conditions);
    let kv = api
        .store
        .update(&kv.key, object::encode(&crd), Some(kv.mod_revision))
        .await?;
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !group.is_empty() && !plural.is_empty() {
        let objects = format!("/registry/{group}/{plural}/");
        // Until none is left: one changed meanwhile is not counted, so look once more.
        while drain(api, &objects).await? > 0
            || !api
                .store
                .list(
                    &objects,
                    ListOptions {
                        limit: 1,
                        ..Default::default()
                    },
                    Consistency::Linearizable,
                )
                .await?
                .items
                .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Gone from this server's discovery before the definition is, so that a client that
    // saw the deletion does not find the resource here.
    forget(api, name);
    if let Some(meta) = object::metadata_mut(&mut crd) {
        if let Some(list) = meta.get_mut("finalizers").and_then(Value::as_array_mut) {
            list.retain(|f| f != CLEANUP_FINALIZER);
        }
    }
    // Another finalizer still holds it: only ours goes.
    let store = &api.store;
    let result = match object::has_finalizers(&crd) {
        true => store
            .update(&kv.key, object::encode(&crd), Some(kv.mod_revision))
            .await
            .map(drop),
        false => store.delete(&kv.key, Some(kv.mod_revision)).await.map(drop),
    };
    match result {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes the objects under `prefix` that have no finalizers and marks the others for
/// deletion; returns how many still wait on their finalizers.
async fn drain(api: &Api, prefix: &str) -> Result<usize, StoreError> {
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
