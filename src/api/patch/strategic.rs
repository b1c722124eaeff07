//! Strategic merge patch (`application/strategic-merge-patch+json`), as
//! k8s.io/apimachinery's `strategicpatch` applies it: maps merge key by key (`null`
//! deletes), lists declared `patchStrategy: merge` merge by their merge key (or, for
//! scalars, by value), every other list is replaced, and the `$patch`, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` directives apply.

use serde_json::{Map, Value};

use super::schema::{Field, Node};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Why a strategic merge patch does not apply (upstream's `mergepatch` errors).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StrategicError {
    #[error("invalid JSON document")]
    BadJsonDoc,
    #[error("invalid patch format of retainKeys")]
    RetainKeysFormat,
    #[error("patch content doesn't match retainKeys list")]
    RetainKeysMismatch,
    #[error("invalid patch format of primitive list")]
    PrimitiveListFormat,
    #[error("invalid patch format of setElementOrder list")]
    SetElementOrderFormat,
    #[error("unknown patch type: {patch_type} in map: {map}")]
    UnknownPatchType { patch_type: String, map: String },
    #[error("map: {map} does not contain declared merge key: {key}")]
    NoMergeKey { map: String, key: String },
}

impl StrategicError {
    /// Upstream answers these with 422; the others with 400.
    pub fn unprocessable(&self) -> bool {
        matches!(self, StrategicError::RetainKeysMismatch)
    }
}

/// `original` with `patch` applied, for objects of type `node`.
pub fn patch(original: &Value, patch: &Value, node: Node) -> Result<Value, StrategicError> {
    let (Value::Object(original), Value::Object(patch)) = (original, patch) else {
        return Err(StrategicError::BadJsonDoc);
    };
    merge_map(original.clone(), patch, node).map(Value::Object)
}

fn unknown_patch_type(patch_type: &Value, map: &Map<String, Value>) -> StrategicError {
    StrategicError::UnknownPatchType {
        patch_type: patch_type
            .as_str()
            .map_or_else(|| patch_type.to_string(), str::to_string),
        map: Value::Object(map.clone()).to_string(),
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    node: Node,
) -> Result<Map<String, Value>, StrategicError> {
    let mut patch = patch.clone();
    if let Some(directive) = patch.remove(PATCH) {
        match directive.as_str() {
            // The map becomes the patch, itself merged into nothing to drop directives.
            Some("replace") => return merge_map(Map::new(), &patch, node),
            Some("delete") => return Ok(Map::new()),
            Some("merge") => {}
            _ => return Err(unknown_patch_type(&directive, &patch)),
        }
    }
    if let Some(retain) = patch.remove(RETAIN_KEYS) {
        let keys = retain.as_array().ok_or(StrategicError::RetainKeysFormat)?;
        let retained = |key: &str| keys.iter().any(|k| k.as_str() == Some(key));
        for (key, value) in &patch {
            let directive =
                key.starts_with(DELETE_FROM_PRIMITIVE_LIST) || key.starts_with(SET_ELEMENT_ORDER);
            if !value.is_null() && !directive && !retained(key) {
                return Err(StrategicError::RetainKeysMismatch);
            }
        }
        original.retain(|key, _| retained(key));
    }
    let mut orders = Vec::new();
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with('$'))
        .cloned()
        .collect();
    for key in directives {
        let value = patch.remove(&key).unwrap_or_default();
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            let doomed = value
                .as_array()
                .ok_or(StrategicError::PrimitiveListFormat)?;
            if let Some(Value::Array(items)) = original.get_mut(field) {
                items.retain(|item| !doomed.contains(item));
            }
        } else if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER) {
            let order = value
                .as_array()
                .ok_or(StrategicError::SetElementOrderFormat)?;
            orders.push((field.to_string(), order.clone()));
        }
    }
    for (key, value) in patch {
        if value.is_null() {
            original.remove(&key);
            continue;
        }
        let (child, field) = node.child(&key);
        let merged = match (original.remove(&key), &value) {
            (Some(Value::Object(current)), Value::Object(patch)) => {
                Value::Object(merge_map(current, patch, child)?)
            }
            (_, Value::Object(patch)) => Value::Object(merge_map(Map::new(), patch, child)?),
            (Some(Value::Array(current)), Value::Array(patch)) => {
                Value::Array(merge_list(current, patch, child, field)?)
            }
            (_, Value::Array(patch)) => Value::Array(merge_list(Vec::new(), patch, child, field)?),
            (_, scalar) => scalar.clone(),
        };
        original.insert(key, merged);
    }
    for (key, order) in orders {
        let merge_key = node.child(&key).1.and_then(|f| f.merge_key);
        if let Some(Value::Array(items)) = original.get_mut(&key) {
            reorder(items, &order, merge_key);
        }
    }
    Ok(original)
}

fn is_replace_directive(item: &Value) -> bool {
    item.get(PATCH).and_then(Value::as_str) == Some("replace")
}

fn merge_list(
    mut original: Vec<Value>,
    patch: &[Value],
    node: Node,
    field: Option<&'static Field>,
) -> Result<Vec<Value>, StrategicError> {
    let Some(field) = field.filter(|f| f.merges()) else {
        // Lists without a merge strategy are replaced.
        return Ok(patch.to_vec());
    };
    if !patch.iter().any(Value::is_object) && !original.iter().any(Value::is_object) {
        // Scalars: the union, in order, each once.
        for item in patch {
            if !original.contains(item) {
                original.push(item.clone());
            }
        }
        return Ok(original);
    }
    if patch.iter().any(is_replace_directive) {
        return Ok(patch
            .iter()
            .filter(|item| !is_replace_directive(item))
            .cloned()
            .collect());
    }
    let item_node = node.item();
    for item in patch {
        let Value::Object(item) = item else {
            return Err(StrategicError::BadJsonDoc);
        };
        let key = field.merge_key.unwrap_or_default();
        let no_key = || StrategicError::NoMergeKey {
            map: Value::Object(item.clone()).to_string(),
            key: key.to_string(),
        };
        let value = item.get(key).ok_or_else(no_key)?;
        let same = |o: &Value| o.get(key) == Some(value);
        match item.get(PATCH) {
            Some(directive) if directive.as_str() == Some("delete") => {
                original.retain(|o| !same(o));
                continue;
            }
            Some(directive) if directive.as_str() != Some("merge") => {
                return Err(unknown_patch_type(directive, item))
            }
            _ => {}
        }
        match original.iter_mut().find(|o| same(o)) {
            Some(Value::Object(current)) => {
                let merged = merge_map(std::mem::take(current), item, item_node)?;
                *current = merged;
            }
            _ => original.push(Value::Object(merge_map(Map::new(), item, item_node)?)),
        }
    }
    Ok(original)
}

/// `$setElementOrder`: the items the order names take their slots in that order; items only
/// the server has keep their places.
fn reorder(items: &mut [Value], order: &[Value], merge_key: Option<&str>) {
    let identity = |v: &Value| -> Value {
        match merge_key {
            Some(key) if v.is_object() => v.get(key).cloned().unwrap_or_default(),
            _ => v.clone(),
        }
    };
    let rank = |v: &Value| order.iter().position(|o| identity(o) == identity(v));
    let slots: Vec<usize> = (0..items.len())
        .filter(|i| rank(&items[*i]).is_some())
        .collect();
    let mut ordered: Vec<Value> = slots.iter().map(|i| items[*i].clone()).collect();
    ordered.sort_by_key(|v| rank(v));
    for (slot, value) in slots.into_iter().zip(ordered) {
        items[slot] = value;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::schema::root;
    use super::*;

    fn deployment() -> Node {
        root("apps", "v1", "Deployment").unwrap()
    }

    fn pod_template(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": containers}}})
    }

    fn merged(original: Value, patch_: Value) -> Value {
        patch(&original, &patch_, deployment()).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let original = pod_template(json!({"containers": [
            {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "busybox"},
        ]}));
        let out = merged(
            original,
            pod_template(json!({"containers": [
                {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "new", "image": "redis"},
            ]})),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "web", "image": "nginx:2", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "side", "image": "busybox"},
                {"name": "new", "image": "redis"},
            ])
        );
    }

    #[test]
    fn ports_merge_by_container_port_and_volumes_by_name() {
        let original = pod_template(json!({
            "containers": [{"name": "web", "ports": [{"containerPort": 80, "name": "http"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "c"}}],
        }));
        let out = merged(
            original,
            pod_template(json!({
                "containers": [{"name": "web", "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}]}],
                "volumes": [{"name": "conf", "configMap": {"name": "d"}}],
            })),
        );
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"][0]["ports"],
            json!([{"containerPort": 80, "name": "http", "protocol": "TCP"}, {"containerPort": 443}])
        );
        assert_eq!(
            spec["volumes"],
            json!([{"name": "data", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "d"}}])
        );
    }

    #[test]
    fn patch_directives_delete_and_replace() {
        let original = pod_template(json!({"containers": [
            {"name": "web", "image": "nginx"}, {"name": "side", "image": "busybox"},
        ]}));
        let out = merged(
            original.clone(),
            pod_template(json!({"containers": [{"name": "side", "$patch": "delete"}]})),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx"}])
        );
        let out = merged(
            original.clone(),
            pod_template(
                json!({"containers": [{"name": "only", "image": "x"}, {"$patch": "replace"}]}),
            ),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x"}])
        );
        let out = merged(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"c": "3"}));
        assert!(matches!(
            patch(
                &original,
                &json!({"spec": {"$patch": "bogus"}}),
                deployment()
            ),
            Err(StrategicError::UnknownPatchType { .. })
        ));
        assert!(matches!(
            patch(
                &original,
                &pod_template(json!({"containers": [{"image": "x"}]})),
                deployment()
            ),
            Err(StrategicError::NoMergeKey { .. })
        ));
    }

    #[test]
    fn set_element_order_orders_the_merged_list() {
        let original = pod_template(json!({"containers": [
            {"name": "a"}, {"name": "b"}, {"name": "c"},
        ]}));
        let out = merged(
            original,
            pod_template(json!({
                "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}, {"name": "a"}],
                "containers": [{"name": "b", "image": "x"}],
            })),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "c"}, {"name": "b", "image": "x"}, {"name": "a"}])
        );
    }

    #[test]
    fn retain_keys_drops_the_other_fields() {
        let original = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let out = merged(
            original.clone(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            patch(
                &original,
                &json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 2}}}}),
                deployment()
            ),
            Err(StrategicError::RetainKeysMismatch)
        );
    }

    #[test]
    fn finalizers_union_and_delete_from_primitive_list() {
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = merged(
            original.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = merged(
            original,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn built_in_kinds_outside_the_table_merge_maps_and_replace_lists() {
        let role = root("rbac.authorization.k8s.io", "v9", "Future").unwrap();
        let original = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}}, "rules": [{"verbs": ["get"]}]});
        let out = patch(
            &original,
            &json!({"metadata": {"finalizers": ["b"], "labels": {"y": "2"}}, "rules": [{"verbs": ["list"]}]}),
            role,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}}, "rules": [{"verbs": ["list"]}]})
        );
    }

    #[test]
    fn lists_without_a_strategy_are_replaced() {
        let original = pod_template(
            json!({"tolerations": [{"key": "a"}], "containers": [{"name": "web", "args": ["x", "y"]}]}),
        );
        let out = merged(
            original,
            pod_template(
                json!({"tolerations": [{"key": "b"}], "containers": [{"name": "web", "args": ["z"]}]}),
            ),
        );
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(spec["tolerations"], json!([{"key": "b"}]));
        assert_eq!(spec["containers"][0]["args"], json!(["z"]));
    }
}
