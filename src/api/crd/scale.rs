//! The Scale of custom resources: an `autoscaling/v1` Scale read from and written to the
//! paths of the definition's `subresources.scale` (served by `crate::api::rest::scale`).

use serde_json::{json, Map, Value};

use super::jsonpath::JsonPath;
use crate::api::object;
use crate::api::registry::ScalePaths;

fn first(object: &Value, path: &str) -> Option<Value> {
    let path = JsonPath::parse(path).ok()?;
    path.find(object).into_iter().next().cloned()
}

/// The Scale of `object`: its replicas at `specReplicasPath`, observed replicas at
/// `statusReplicasPath` and selector at `labelSelectorPath` (0, 0 and none when missing).
pub fn scale_of(object: &Value, paths: &ScalePaths) -> Value {
    let meta = object::metadata(object).cloned().unwrap_or_default();
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(value) = meta.get(field) {
            scale_meta.insert(field.to_string(), value.clone());
        }
    }
    let replicas = |path: &str| {
        first(object, path)
            .and_then(|v| v.as_i64())
            .unwrap_or_default()
    };
    let mut status = json!({"replicas": replicas(&paths.status_replicas)});
    if let Some(selector) = paths
        .label_selector
        .as_deref()
        .and_then(|p| first(object, p))
        .and_then(|v| v.as_str().map(str::to_string))
    {
        status["selector"] = json!(selector);
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": replicas(&paths.spec_replicas)},
        "status": status,
    })
}

/// Writes `replicas` at the object's `specReplicasPath`, making the maps on the way.
pub fn apply_scale(object: &mut Value, replicas: i64, paths: &ScalePaths) {
    let Some(fields) = JsonPath::parse(&paths.spec_replicas).ok().and_then(|p| {
        p.fields()
            .map(|f| f.into_iter().map(str::to_string).collect::<Vec<_>>())
    }) else {
        return;
    };
    let Some((last, parents)) = fields.split_last() else {
        return;
    };
    let mut at = object;
    for field in parents {
        if !at.get(field).is_some_and(Value::is_object) {
            at[field.as_str()] = json!({});
        }
        at = &mut at[field.as_str()];
    }
    at[last.as_str()] = json!(replicas);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> ScalePaths {
        ScalePaths {
            spec_replicas: ".spec.replicas".to_string(),
            status_replicas: ".status.replicas".to_string(),
            label_selector: Some(".status.selector".to_string()),
        }
    }

    #[test]
    fn scale_reads_and_writes_the_paths() {
        let mut object = json!({
            "metadata": {"name": "w1", "namespace": "default", "resourceVersion": "7", "labels": {"a": "b"}},
            "spec": {"replicas": 2},
            "status": {"replicas": 1, "selector": "app=w"}
        });
        let scale = scale_of(&object, &paths());
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["apiVersion"], "autoscaling/v1");
        assert_eq!(scale["metadata"]["name"], "w1");
        assert!(scale["metadata"].get("labels").is_none());
        assert_eq!(scale["spec"]["replicas"], 2);
        assert_eq!(scale["status"], json!({"replicas": 1, "selector": "app=w"}));
        apply_scale(&mut object, 5, &paths());
        assert_eq!(object["spec"]["replicas"], 5);
        let mut bare = json!({"metadata": {"name": "w2"}});
        assert_eq!(scale_of(&bare, &paths())["spec"]["replicas"], 0);
        apply_scale(&mut bare, 3, &paths());
        assert_eq!(bare["spec"]["replicas"], 3);
    }
}
