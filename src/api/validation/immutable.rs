//! What an update may not change, per kind, with upstream's messages: a pod's spec beyond
//! images and a few fields (scheduling gates may be removed; ephemeral containers only added,
//! through their own subresource), workload selectors, Job templates, immutable ConfigMaps and
//! Secrets, a RoleBinding's roleRef, a bound claim's spec.

use serde_json::{Map, Value};

use super::kinds::go_string_map;
use crate::api::error::FieldError;

const POD_UPDATE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";
const STATEFUL_SET_UPDATE: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

/// The problems of changing `current` into `new` (both of `group`/`kind`).
pub fn validate_update(group: &str, kind: &str, current: &Value, new: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let unchanged = |pointer: &str| current.pointer(pointer) == new.pointer(pointer);
    match (group, kind) {
        ("", "Pod") if !pod_spec_update_allowed(current.get("spec"), new.get("spec")) => {
            errors.push(FieldError::forbidden("spec", POD_UPDATE));
        }
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") if !unchanged("/spec/selector") => {
            errors.push(immutable_selector(new.pointer("/spec/selector")));
        }
        ("apps", "StatefulSet") => {
            let frozen = |object: &Value| {
                let mut spec = object.get("spec").cloned().unwrap_or_default();
                if let Some(spec) = spec.as_object_mut() {
                    for field in [
                        "replicas",
                        "ordinals",
                        "template",
                        "updateStrategy",
                        "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds",
                    ] {
                        spec.remove(field);
                    }
                }
                spec
            };
            if frozen(current) != frozen(new) {
                errors.push(FieldError::forbidden("spec", STATEFUL_SET_UPDATE));
            }
        }
        ("batch", "Job") => {
            if !unchanged("/spec/selector") {
                errors.push(immutable_selector(new.pointer("/spec/selector")));
            }
            let template = |object: &Value| {
                let mut template = object
                    .pointer("/spec/template")
                    .cloned()
                    .unwrap_or_default();
                // Scheduling directives may change while a Job is suspended; labels and
                // annotations may always be added by controllers.
                if let Some(meta) = template.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("labels");
                    meta.remove("annotations");
                }
                template
            };
            if template(current) != template(new) {
                errors.push(immutable("spec.template", new.pointer("/spec/template")));
            }
            if !unchanged("/spec/completions")
                && current
                    .pointer("/spec/completionMode")
                    .and_then(Value::as_str)
                    != Some("Indexed")
            {
                errors.push(immutable(
                    "spec.completions",
                    new.pointer("/spec/completions"),
                ));
            }
        }
        ("", "ConfigMap" | "Secret") => {
            if current.get("immutable").and_then(Value::as_bool) == Some(true) {
                for field in ["data", "binaryData", "stringData"] {
                    if current.get(field) != new.get(field) {
                        errors.push(FieldError::forbidden(
                            field,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new.get("immutable").and_then(Value::as_bool) != Some(true) {
                    errors.push(FieldError::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if kind == "Secret" && !unchanged("/type") {
                let shown = new.get("type").and_then(Value::as_str).unwrap_or_default();
                errors.push(FieldError::invalid("type", shown, "field is immutable"));
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding")
            if !unchanged("/roleRef") =>
        {
            errors.push(FieldError::invalid_raw(
                "roleRef",
                &new.get("roleRef").map(Value::to_string).unwrap_or_default(),
                "cannot change roleRef",
            ));
        }
        ("", "PersistentVolumeClaim") => {
            let frozen = |object: &Value| {
                let mut spec = object.get("spec").cloned().unwrap_or_default();
                if let Some(spec) = spec.as_object_mut() {
                    spec.remove("resources");
                    spec.remove("volumeAttributesClassName");
                    // Binding fills in the volume name once.
                    if current.pointer("/spec/volumeName").is_none() {
                        spec.remove("volumeName");
                    }
                }
                spec
            };
            if frozen(current) != frozen(new) {
                errors.push(FieldError::forbidden("spec", "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"));
            }
        }
        ("", "Node") => {
            let old = current
                .pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let now = new
                .pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !old.is_empty() && old != now {
                errors.push(FieldError::forbidden(
                    "spec.podCIDRs",
                    "node updates may not change podCIDR except from \"\" to valid",
                ));
            }
        }
        _ => {}
    }
    errors
}

fn immutable(field: &str, value: Option<&Value>) -> FieldError {
    FieldError::invalid_raw(
        field,
        &value.map(Value::to_string).unwrap_or_else(|| "null".into()),
        "field is immutable",
    )
}

/// `v1.LabelSelector{MatchLabels:map[string]string{"app":"web"}, MatchExpressions:...}`
fn immutable_selector(selector: Option<&Value>) -> FieldError {
    let labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_else(Map::new);
    let expressions = match selector.and_then(|s| s.get("matchExpressions")) {
        Some(e) if !e.is_null() => e.to_string(),
        _ => "[]v1.LabelSelectorRequirement(nil)".to_string(),
    };
    let shown = format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{expressions}}}",
        go_string_map(&labels)
    );
    FieldError::invalid_raw("spec.selector", &shown, "field is immutable")
}

/// Whether a pod spec changed only where upstream allows: container images,
/// activeDeadlineSeconds, added tolerations, a negative grace period set to 1.
fn pod_spec_update_allowed(current: Option<&Value>, new: Option<&Value>) -> bool {
    let (Some(current), Some(new)) = (current, new) else {
        return current == new;
    };
    let old_tolerations: Vec<Value> = current
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_tolerations: Vec<Value> = new
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !old_tolerations.iter().all(|t| new_tolerations.contains(t)) {
        return false;
    }
    // Scheduling gates may only be removed (what releases a gated pod to the scheduler).
    let gates = |spec: &Value| -> Vec<Value> {
        spec.get("schedulingGates")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    if !gates(new).iter().all(|g| gates(current).contains(g)) {
        return false;
    }
    let mut patched = new.clone();
    for list in ["containers", "initContainers"] {
        let images: Vec<Value> = current
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| c.get("image").cloned().unwrap_or_default())
            .collect();
        if let Some(containers) = patched.get_mut(list).and_then(Value::as_array_mut) {
            if containers.len() == images.len() {
                for (container, image) in containers.iter_mut().zip(images) {
                    container["image"] = image;
                }
            }
        }
    }
    let map = patched.as_object_mut().expect("a pod spec is an object");
    for field in ["activeDeadlineSeconds", "tolerations", "schedulingGates"] {
        match current.get(field) {
            Some(value) => map.insert(field.to_string(), value.clone()),
            None => map.remove(field),
        };
    }
    let old_grace = current
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if old_grace.is_some_and(|g| g < 0)
        && new
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            == Some(1)
    {
        map.insert(
            "terminationGracePeriodSeconds".into(),
            current["terminationGracePeriodSeconds"].clone(),
        );
    }
    &patched == current
}

/// An update through `pods/<name>/ephemeralcontainers` (the only way to change them): the
/// pod's ephemeral containers may be added to, never removed or changed, and a new one may
/// not take the name of another container of the pod.
pub fn validate_ephemeral_containers_update(current: &Value, new: &Value) -> Vec<FieldError> {
    let list = |pod: &Value, field: &str| -> Vec<Value> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let name = |c: &Value| {
        c.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let old = list(current, "ephemeralContainers");
    let new_list = list(new, "ephemeralContainers");
    let mut errors = Vec::new();
    for existing in &old {
        let existing_name = name(existing);
        match new_list.iter().find(|c| name(c) == existing_name) {
            None => errors.push(FieldError::forbidden(
                "spec.ephemeralContainers",
                &format!("existing ephemeral containers {existing_name:?} may not be removed\n"),
            )),
            Some(changed) if changed != existing => errors.push(FieldError::forbidden(
                &format!("spec.ephemeralContainers[{existing_name}]"),
                &format!("existing ephemeral containers {existing_name:?} may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    let mut taken: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|field| list(new, field))
        .map(|c| name(&c))
        .collect();
    for (i, container) in new_list.iter().enumerate() {
        let container_name = name(container);
        if taken.contains(&container_name) {
            errors.push(FieldError::duplicate(
                &format!("spec.ephemeralContainers[{i}].name"),
                &container_name,
            ));
        }
        taken.push(container_name);
    }
    errors
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pods_may_change_images_and_add_tolerations_only() {
        let pod =
            json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "tolerations": []}});
        let mut image = pod.clone();
        image["spec"]["containers"][0]["image"] = json!("x:2");
        image["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
        assert!(validate_update("", "Pod", &pod, &image).is_empty());
        let mut env = pod.clone();
        env["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
        let errors = validate_update("", "Pod", &pod, &env);
        assert_eq!(errors[0].field, "spec");
        assert!(errors[0]
            .message
            .starts_with("Forbidden: pod updates may not change fields"));
    }

    #[test]
    fn ephemeral_containers_are_only_added_and_only_through_their_subresource() {
        let pod = json!({"spec": {"containers": [{"name": "main", "image": "x:1"}]}});
        let mut debugged = pod.clone();
        debugged["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "b"}]);
        assert!(validate_ephemeral_containers_update(&pod, &debugged).is_empty());
        // Not through a plain update.
        assert_eq!(validate_update("", "Pod", &pod, &debugged).len(), 1);
        let errors = validate_ephemeral_containers_update(&debugged, &pod);
        assert_eq!(
            errors[0].message,
            "Forbidden: existing ephemeral containers \"debugger\" may not be removed\n"
        );
        let mut changed = debugged.clone();
        changed["spec"]["ephemeralContainers"][0]["image"] = json!("c");
        let errors = validate_ephemeral_containers_update(&debugged, &changed);
        assert_eq!(errors[0].field, "spec.ephemeralContainers[debugger]");
        let mut clash = pod.clone();
        clash["spec"]["ephemeralContainers"] = json!([{"name": "main", "image": "b"}]);
        let errors = validate_ephemeral_containers_update(&pod, &clash);
        assert_eq!(errors[0].field, "spec.ephemeralContainers[0].name");
    }

    #[test]
    fn selectors_and_immutable_data_stay() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}}});
        let changed = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}});
        let errors = validate_update("apps", "Deployment", &d, &changed);
        assert_eq!(errors[0].message, "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"api\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable");
        let cm = json!({"immutable": true, "data": {"a": "1"}});
        let errors = validate_update(
            "",
            "ConfigMap",
            &cm,
            &json!({"immutable": true, "data": {"a": "2"}}),
        );
        assert_eq!(errors[0].field, "data");
        assert_eq!(
            errors[0].message,
            "Forbidden: field is immutable when `immutable` is set"
        );
    }
}
