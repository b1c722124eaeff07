//! Server-side apply (`application/apply-patch+yaml`), as structured-merge-diff does it:
//! the applier's configuration is merged into the live object (keyed lists by key, sets
//! by value, atomic values replaced), fields it applied before and omits now are removed
//! unless someone else owns them, and changing a field another manager owns is a
//! conflict unless forced, which takes the field over.

use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use serde_json::{Map, Value};

use super::fields::{display, key_element, remove, FieldSet};
use super::managed::{entries, take_from_others, Entry, Writer, APPLY};
use super::schema::{ListKind, Node};
use crate::api::object;

/// Fields another manager owns that an apply would change.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", message(.0))]
pub struct Conflicts(pub Vec<(String, String)>);

fn message(conflicts: &[(String, String)]) -> String {
    if let [(manager, path)] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {manager}: {path}");
    }
    let mut lines = Vec::new();
    let mut last: Option<&str> = None;
    for (manager, path) in conflicts {
        if last != Some(manager) {
            lines.push(format!("conflicts with {manager}:"));
            last = Some(manager);
        }
        lines.push(format!("- {path}"));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

impl Conflicts {
    /// The 409 `Status` upstream answers, one `FieldManagerConflict` cause per field.
    pub fn status(&self) -> (StatusCode, Status) {
        let causes = self
            .0
            .iter()
            .map(|(manager, path)| StatusCause {
                field: Some(path.clone()),
                message: Some(format!("conflict with {manager}")),
                reason: Some("FieldManagerConflict".to_string()),
            })
            .collect();
        let status = Status {
            code: Some(409),
            details: Some(StatusDetails {
                causes: Some(causes),
                ..Default::default()
            }),
            message: Some(self.to_string()),
            reason: Some("Conflict".to_string()),
            status: Some("Failure".to_string()),
            ..Default::default()
        };
        (StatusCode::CONFLICT, status)
    }
}

/// The object after an apply, and its new managedFields (to set once the server has
/// reconciled what it owns).
pub struct Applied {
    pub object: Value,
    pub entries: Vec<Entry>,
}

/// Applies `config` by `writer` to `live` (`None`: the object does not exist yet).
pub fn apply(
    writer: &Writer<'_>,
    live: Option<&Value>,
    config: &Value,
    force: bool,
) -> Result<Applied, Conflicts> {
    let empty = Value::Object(Map::new());
    let live = live.unwrap_or(&empty);
    let mut entries = entries(live);
    let mut merged = merge(live, config, writer.node);
    let applied = writer.fields_of(config);
    let mut me = Entry {
        fields: applied.clone(),
        ..writer.entry(APPLY)
    };
    let previous = entries
        .iter()
        .position(|e| {
            e.manager == me.manager && e.operation == APPLY && e.subresource == me.subresource
        })
        .map(|index| entries.remove(index));
    let before = previous
        .as_ref()
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    // What this manager applied before and no longer does goes, unless someone else
    // (or this apply, deeper down) still owns it.
    let others = entries
        .iter()
        .fold(FieldSet::default(), |all, e| all.union(&e.fields));
    for path in before.difference(&applied).paths() {
        if !others.has_under(path) && !applied.has_under(path) {
            remove(&mut merged, path, writer.node);
        }
    }
    let diff = writer.compare(live, &merged);
    let changed = diff.added.union(&diff.modified);
    let mut conflicts: Vec<(String, String)> = entries
        .iter()
        .flat_map(|e| {
            e.fields
                .intersection(&changed)
                .paths()
                .map(|p| (e.describe(), display(p)))
                .collect::<Vec<_>>()
        })
        .collect();
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        return Err(Conflicts(conflicts));
    }
    take_from_others(&mut entries, &me, &changed, &diff.removed);
    // An apply that changes nothing keeps its timestamp, so that it writes nothing.
    let unchanged = before == applied && merged == *live;
    me.time = match previous {
        Some(previous) if unchanged => previous.time,
        _ => Some(object::now()),
    };
    entries.push(me);
    Ok(Applied {
        object: merged,
        entries,
    })
}

/// `config` merged into `live`, per the types of `node`.
pub fn merge(live: &Value, config: &Value, node: Node) -> Value {
    match (live, config) {
        (Value::Object(live), Value::Object(config)) if node.granular_object() => {
            let mut out = live.clone();
            for (key, value) in config {
                if value.is_null() {
                    out.remove(key);
                    continue;
                }
                let child = node.child(key).0;
                let merged = match live.get(key) {
                    Some(current) => merge(current, value, child),
                    None => merge(&Value::Null, value, child),
                };
                out.insert(key.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Null, Value::Object(config)) if node.granular_object() => merge(
            &Value::Object(Map::new()),
            &Value::Object(config.clone()),
            node,
        ),
        (Value::Array(live), Value::Array(config)) => match node {
            Node::List {
                kind: ListKind::Map(keys),
                ..
            } => {
                let mut out = live.clone();
                for item in config {
                    let key = key_element(item, keys);
                    match out
                        .iter_mut()
                        .find(|o| key.is_some() && key_element(o, keys) == key)
                    {
                        Some(current) => *current = merge(current, item, node.item()),
                        None => out.push(merge(&Value::Null, item, node.item())),
                    }
                }
                Value::Array(out)
            }
            Node::List {
                kind: ListKind::Set,
                ..
            } => {
                let mut out = live.clone();
                for item in config {
                    if !out.contains(item) {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            _ => Value::Array(config.clone()),
        },
        _ => config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::managed::tests::writer;
    use super::super::managed::{set_entries, UPDATE};
    use super::super::schema::root;
    use super::*;

    fn applied(
        manager: &str,
        live: Option<&Value>,
        config: Value,
        force: bool,
    ) -> Result<Value, Conflicts> {
        let out = apply(&writer(manager), live, &config, force)?;
        let mut object = out.object;
        set_entries(&mut object, out.entries);
        Ok(object)
    }

    fn config(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_owns_what_it_applied_and_removes_what_it_dropped() {
        let first = applied("mgr", None, config(json!({"a": "1", "b": "2"})), false).unwrap();
        let entry = &first["metadata"]["managedFields"][0];
        assert_eq!(entry["operation"], "Apply");
        assert_eq!(entry["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));
        let second = applied("mgr", Some(&first), config(json!({"a": "3"})), false).unwrap();
        assert_eq!(second["data"], json!({"a": "3"}));
        assert_eq!(
            second["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}}})
        );
    }

    #[test]
    fn fields_someone_else_owns_are_kept_when_dropped() {
        let first = applied("one", None, config(json!({"a": "1"})), false).unwrap();
        let both = applied("two", Some(&first), config(json!({"a": "1"})), false).unwrap();
        let dropped = applied("one", Some(&both), config(json!({"b": "2"})), false).unwrap();
        assert_eq!(dropped["data"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn changing_another_managers_field_conflicts_unless_forced() {
        let mut live = config(json!({"key": "old"}));
        let mut owner = writer("kubectl-client-side-apply").entry(UPDATE);
        owner.fields = FieldSet::of(&json!({"data": {"key": "old"}}), writer("x").node);
        set_entries(&mut live, vec![owner]);
        let err =
            applied("kubectl", Some(&live), config(json!({"key": "new"})), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using v1: .data.key"#
        );
        let (code, status) = err.status();
        assert_eq!(code, StatusCode::CONFLICT);
        let cause = &status.details.unwrap().causes.unwrap()[0];
        assert_eq!(cause.field.as_deref(), Some(".data.key"));
        assert_eq!(cause.reason.as_deref(), Some("FieldManagerConflict"));
        // Applying the same value shares the field instead.
        assert!(applied("kubectl", Some(&live), config(json!({"key": "old"})), false).is_ok());
        let forced = applied("kubectl", Some(&live), config(json!({"key": "new"})), true).unwrap();
        assert_eq!(forced["data"]["key"], "new");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["kubectl"]);
    }

    #[test]
    fn several_conflicts_are_listed_per_manager() {
        let conflicts = Conflicts(vec![
            (r#""a" using v1"#.into(), ".data.x".into()),
            (r#""a" using v1"#.into(), ".data.y".into()),
        ]);
        assert_eq!(
            conflicts.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"a\" using v1:\n- .data.x\n- .data.y"
        );
    }

    #[test]
    fn dropped_list_items_go_unless_someone_else_owns_part_of_them() {
        let deployments = Writer {
            api_version: "apps/v1".to_string(),
            node: root("apps", "v1", "Deployment").unwrap(),
            ..writer("mgr")
        };
        let containers = |names: &[&str]| {
            let list: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "image": "i"}))
                .collect();
            json!({"spec": {"template": {"spec": {"containers": list}}}})
        };
        let run = |writer: &Writer<'_>, live: Option<&Value>, config: Value| {
            let out = apply(writer, live, &config, false).unwrap();
            let mut object = out.object;
            set_entries(&mut object, out.entries);
            object
        };
        let names = |object: &Value| -> Vec<String> {
            object["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        let both = run(&deployments, None, containers(&["web", "side"]));
        let web_only = run(&deployments, Some(&both), containers(&["web"]));
        assert_eq!(names(&web_only), ["web"]);

        // Another applier sharing `side` keeps it when the first one drops it.
        let other = Writer {
            manager: "other",
            ..deployments
        };
        let shared = run(&other, Some(&both), containers(&["side"]));
        let deployments = Writer {
            manager: "mgr",
            ..other
        };
        let kept = run(&deployments, Some(&shared), containers(&["web"]));
        assert_eq!(names(&kept), ["web", "side"]);
    }

    #[test]
    fn keyed_lists_merge_by_key() {
        let node = root("apps", "v1", "Deployment").unwrap();
        let live = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}}});
        let config =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "3"}]}}}});
        assert_eq!(
            merge(&live, &config, node)["spec"]["template"]["spec"]["containers"],
            json!([{"name": "a", "image": "1"}, {"name": "b", "image": "3"}])
        );
    }
}
