//! A definition's status as upstream's naming and establishing controllers write it:
//! `NamesAccepted` (or the conflict that prevents it), `Established`, `acceptedNames` and
//! `storedVersions`.

use serde_json::{json, Value};

use super::types::{storage_version, Names};
use crate::api::object;
use crate::api::registry::{Registry, ResourceType};

/// Whether the names were accepted, and the `NamesAccepted` reason and message.
pub struct Acceptance {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Checks `names` of definition `crd_name` in `group` against what the registry already
/// serves in that group (other definitions' accepted names and built-ins), in upstream's
/// order; the last conflict found is the one reported, as upstream does.
pub fn accept(registry: &Registry, crd_name: &str, group: &str, names: &Names) -> Acceptance {
    let others: Vec<std::sync::Arc<ResourceType>> = registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.crd.as_deref() != Some(crd_name))
        .collect();
    let resource_taken = |name: &str| {
        others.iter().any(|t| {
            t.plural == name || t.singular == name || t.short_names.iter().any(|s| s == name)
        })
    };
    let kind_taken = |name: &str| others.iter().any(|t| t.kind == name || t.list_kind == name);
    let in_use = |name: &str| format!("{name:?} is already in use");
    let mut acceptance = Acceptance {
        accepted: true,
        reason: "NoConflicts",
        message: "no conflicts found".to_string(),
    };
    let mut conflict = |reason, message| {
        acceptance.accepted = false;
        acceptance.reason = reason;
        acceptance.message = message;
    };
    if resource_taken(&names.plural) {
        conflict("PluralConflict", in_use(&names.plural));
    }
    if resource_taken(&names.singular) {
        conflict("SingularConflict", in_use(&names.singular));
    }
    let short: Vec<String> = names
        .short_names
        .iter()
        .filter(|s| resource_taken(s))
        .map(|s| in_use(s))
        .collect();
    match short.len() {
        0 => {}
        1 => conflict("ShortNamesConflict", short[0].clone()),
        _ => conflict("ShortNamesConflict", format!("[{}]", short.join(", "))),
    }
    if kind_taken(&names.kind) {
        conflict("KindConflict", in_use(&names.kind));
    }
    if kind_taken(&names.list_kind) {
        conflict("ListKindConflict", in_use(&names.list_kind));
    }
    acceptance
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}

/// The definition's `status.conditions`.
pub fn conditions_of(crd: &Value) -> Vec<Value> {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Puts `new` in `conditions`, keeping the old transition time when the status is the same.
pub fn set_condition(conditions: &mut Vec<Value>, mut new: Value) {
    let kind = new["type"].clone();
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(old) => {
            let time = if old["status"] == new["status"] {
                old["lastTransitionTime"].clone()
            } else {
                json!(object::now())
            };
            new["lastTransitionTime"] = time;
            *old = new;
        }
        None => {
            new["lastTransitionTime"] = json!(object::now());
            conditions.push(new);
        }
    }
}

/// The status `crd` should have given `acceptance`.
pub fn desired(crd: &Value, names: &Names, acceptance: &Acceptance) -> Value {
    let mut status = crd.get("status").cloned().unwrap_or_else(|| json!({}));
    if !status.is_object() {
        status = json!({});
    }
    let mut conditions = conditions_of(crd);
    set_condition(
        &mut conditions,
        condition(
            "NamesAccepted",
            acceptance.accepted,
            acceptance.reason,
            &acceptance.message,
        ),
    );
    let established = if acceptance.accepted {
        condition(
            "Established",
            true,
            "InitialNamesAccepted",
            "the initial names have been accepted",
        )
    } else {
        condition(
            "Established",
            false,
            "NotAccepted",
            "not all names are accepted",
        )
    };
    set_condition(&mut conditions, established);
    status["conditions"] = Value::Array(conditions);
    if acceptance.accepted {
        status["acceptedNames"] = names.to_json();
    } else if status.get("acceptedNames").is_none() {
        status["acceptedNames"] = json!({"plural": "", "kind": ""});
    }
    let mut stored: Vec<Value> = status
        .get("storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(version) = storage_version(crd) {
        if !stored.contains(&json!(version)) {
            stored.push(json!(version));
        }
    }
    status["storedVersions"] = Value::Array(stored);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(plural: &str, kind: &str, short: &[&str]) -> Names {
        Names {
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
        }
    }

    #[test]
    fn names_in_use_are_refused_with_upstream_reasons() {
        let registry = Registry::builtin();
        let ok = accept(
            &registry,
            "widgets.apps",
            "apps",
            &names("widgets", "Widget", &[]),
        );
        assert!(ok.accepted);
        assert_eq!(
            (ok.reason, ok.message.as_str()),
            ("NoConflicts", "no conflicts found")
        );
        let plural = accept(
            &registry,
            "deployments.apps",
            "apps",
            &names("deployments", "Thing", &[]),
        );
        assert!(!plural.accepted);
        assert_eq!(plural.reason, "PluralConflict");
        assert_eq!(plural.message, r#""deployments" is already in use"#);
        let short = accept(
            &registry,
            "things.apps",
            "apps",
            &names("things", "Thing", &["deploy"]),
        );
        assert_eq!(
            (short.reason, short.message.as_str()),
            ("ShortNamesConflict", r#""deploy" is already in use"#)
        );
        let kind = accept(
            &registry,
            "things.apps",
            "apps",
            &names("things", "Deployment", &[]),
        );
        assert_eq!(kind.reason, "ListKindConflict");
    }

    #[test]
    fn status_records_conditions_names_and_stored_versions() {
        let crd = json!({"spec": {"versions": [{"name": "v1", "storage": true}]}});
        let n = names("widgets", "Widget", &["wd"]);
        let acceptance = Acceptance {
            accepted: true,
            reason: "NoConflicts",
            message: "no conflicts found".to_string(),
        };
        let status = desired(&crd, &n, &acceptance);
        assert_eq!(status["conditions"][0]["type"], "NamesAccepted");
        assert_eq!(status["conditions"][1]["type"], "Established");
        assert_eq!(status["conditions"][1]["status"], "True");
        assert_eq!(status["acceptedNames"]["shortNames"], json!(["wd"]));
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let again = desired(
            &json!({"spec": crd["spec"], "status": status}),
            &n,
            &acceptance,
        );
        assert_eq!(again, status);
    }
}
