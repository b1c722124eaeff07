//! `metadata.managedFields`: which manager owns which fields, kept on every write as
//! kube-apiserver keeps it. An entry per (manager, operation, apiVersion, subresource);
//! a non-apply write gives its writer the fields it added or changed (taking them from the
//! others), a removed field leaves every owner, and entries left owning nothing go.

use serde_json::{Map, Value};

use super::fields::{compare, Comparison, FieldSet, Path};
use super::schema::Node;
use crate::api::object;

pub const APPLY: &str = "Apply";
pub const UPDATE: &str = "Update";

/// Fields only the server sets, never owned by anyone (upstream's stripped fields).
const SERVER_SET: &[&[&str]] = &[
    &["f:apiVersion"],
    &["f:kind"],
    &["f:metadata", "f:name"],
    &["f:metadata", "f:namespace"],
    &["f:metadata", "f:creationTimestamp"],
    &["f:metadata", "f:selfLink"],
    &["f:metadata", "f:uid"],
    &["f:metadata", "f:clusterName"],
    &["f:metadata", "f:generation"],
    &["f:metadata", "f:managedFields"],
    &["f:metadata", "f:resourceVersion"],
];

/// One entry of `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn same_owner(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.api_version == other.api_version
            && self.subresource == other.subresource
    }

    /// How upstream names a manager in conflicts: `"kubectl-edit" using v1`.
    pub fn describe(&self) -> String {
        let mut out = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            out.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == UPDATE {
            out.push_str(&format!(" using {}", self.api_version));
        }
        out
    }

    fn decode(value: &Value) -> Option<Entry> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        Some(Entry {
            manager: text("manager").unwrap_or_default(),
            operation: text("operation")?,
            api_version: text("apiVersion").unwrap_or_default(),
            subresource: text("subresource").unwrap_or_default(),
            time: text("time"),
            fields: FieldSet::from_fields_v1(value.get("fieldsV1")?).ok()?,
        })
    }

    fn encode(&self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), Value::from(self.manager.clone()));
        map.insert("operation".into(), Value::from(self.operation.clone()));
        map.insert("apiVersion".into(), Value::from(self.api_version.clone()));
        if let Some(time) = &self.time {
            map.insert("time".into(), Value::from(time.clone()));
        }
        map.insert("fieldsType".into(), Value::from("FieldsV1"));
        map.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            map.insert("subresource".into(), Value::from(self.subresource.clone()));
        }
        Value::Object(map)
    }
}

/// The entries recorded on `object` (entries that do not decode are dropped, as upstream
/// resets what it cannot read).
pub fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Entry::decode).collect())
        .unwrap_or_default()
}

/// Writes `entries` to `object`, in upstream's order (Apply before Update, then oldest
/// first).
pub fn set_entries(object: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            &a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                &b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        let list = entries.iter().map(Entry::encode).collect();
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Who writes, through which endpoint, objects of which type.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: String,
    /// `status` for writes to the status subresource.
    pub subresource: Option<&'a str>,
    /// The resource has a status subresource (so the main endpoint does not own status).
    pub status_subresource: bool,
    pub node: Node,
}

impl Writer<'_> {
    /// Whether fields at `path` are owned through this endpoint.
    pub fn in_scope(&self, path: &Path) -> bool {
        if SERVER_SET.iter().any(|s| path.starts_with(&to_path(s))) {
            return false;
        }
        let status = path.first().is_some_and(|f| f == "f:status");
        match self.subresource {
            Some("status") => status,
            _ => !(self.status_subresource && status),
        }
    }

    pub fn entry(&self, operation: &str) -> Entry {
        Entry {
            manager: self.manager.to_string(),
            operation: operation.to_string(),
            api_version: self.api_version.clone(),
            subresource: self.subresource.unwrap_or_default().to_string(),
            time: None,
            fields: FieldSet::default(),
        }
    }

    /// The fields of `value` this endpoint owns.
    pub fn fields_of(&self, value: &Value) -> FieldSet {
        FieldSet::of(value, self.node).filter(|p| self.in_scope(p))
    }

    pub fn compare(&self, old: &Value, new: &Value) -> Comparison {
        compare(old, new, self.node, |p| self.in_scope(p))
    }

    /// Records a create, update or non-apply patch from `old` (none for a create) to `new`
    /// in `new`'s managedFields.
    pub fn record_update(&self, old: Option<&Value>, new: &mut Value) {
        let empty = Value::Object(Map::new());
        let old = old.unwrap_or(&empty);
        let sent = new.pointer("/metadata/managedFields").cloned();
        let live = old.pointer("/metadata/managedFields");
        let mut entries = match sent {
            // A single empty entry strips managedFields; an empty list changes nothing, so
            // that clients unaware of the field never reset it.
            Some(Value::Array(list)) if list.len() == 1 && list[0] == empty => {
                set_entries(new, Vec::new());
                return;
            }
            Some(Value::Array(list))
                if !list.is_empty() && Some(&Value::Array(list.clone())) != live =>
            {
                list.iter().filter_map(Entry::decode).collect()
            }
            _ => entries(old),
        };
        let diff = self.compare(old, new);
        let me = self.entry(UPDATE);
        take_from_others(
            &mut entries,
            &me,
            &diff.added.union(&diff.modified),
            &diff.removed,
        );
        let index = match entries.iter().position(|e| e.same_owner(&me)) {
            Some(index) => index,
            None => {
                entries.push(me);
                entries.len() - 1
            }
        };
        let mine = &mut entries[index];
        let touched = diff.added.union(&diff.modified);
        let owned = mine.fields.difference(&diff.removed).union(&touched);
        // The time says when the manager last set something.
        if !touched.is_empty() || owned != mine.fields || mine.time.is_none() {
            mine.fields = owned;
            mine.time = Some(object::now());
        }
        set_entries(new, entries);
    }
}

fn to_path(elements: &[&str]) -> Path {
    elements.iter().map(|e| e.to_string()).collect()
}

/// Every manager but `me` loses `taken` and `removed`.
pub fn take_from_others(entries: &mut [Entry], me: &Entry, taken: &FieldSet, removed: &FieldSet) {
    for entry in entries.iter_mut().filter(|e| !e.same_owner(me)) {
        entry.fields = entry.fields.difference(taken).difference(removed);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::json;

    use super::super::schema::root;
    use super::*;

    /// A writer of ConfigMaps through the main endpoint.
    pub(in crate::api::patch) fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1".to_string(),
            subresource: None,
            status_subresource: false,
            node: root("", "v1", "ConfigMap").unwrap(),
        }
    }

    fn owners(object: &Value) -> Vec<(String, Value)> {
        entries(object)
            .into_iter()
            .map(|e| (e.manager.clone(), e.fields.to_fields_v1()))
            .collect()
    }

    #[test]
    fn updates_take_the_fields_they_change() {
        let mut created = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}});
        writer("kubectl-create").record_update(None, &mut created);
        assert_eq!(
            owners(&created),
            [(
                "kubectl-create".to_string(),
                json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
            )]
        );
        let mut edited = created.clone();
        edited["data"]["x"] = json!("changed");
        edited["data"].as_object_mut().unwrap().remove("y");
        writer("kubectl-edit").record_update(Some(&created), &mut edited);
        assert_eq!(
            owners(&edited),
            [
                (
                    "kubectl-create".to_string(),
                    json!({"f:metadata": {"f:labels": {"f:a": {}}}})
                ),
                ("kubectl-edit".to_string(), json!({"f:data": {"f:x": {}}})),
            ]
        );
        let entry = &edited["metadata"]["managedFields"][1];
        assert_eq!(entry["operation"], "Update");
        assert_eq!(entry["fieldsType"], "FieldsV1");
        assert_eq!(entry["apiVersion"], "v1");
    }

    #[test]
    fn client_sent_managed_fields_replace_and_one_empty_entry_strips() {
        let mut created = json!({"metadata": {"name": "c"}, "data": {"x": "1"}});
        writer("a").record_update(None, &mut created);
        let mut same = created.clone();
        same["metadata"]["managedFields"] = json!([]);
        writer("b").record_update(Some(&created), &mut same);
        assert_eq!(owners(&same), owners(&created));
        let mut stripped = created.clone();
        stripped["metadata"]["managedFields"] = json!([{}]);
        writer("b").record_update(Some(&created), &mut stripped);
        assert!(stripped["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn status_writes_own_status_only() {
        let status = Writer {
            subresource: Some("status"),
            status_subresource: true,
            node: root("", "v1", "Pod").unwrap(),
            ..writer("kubelet")
        };
        let old = json!({"metadata": {"name": "p"}, "spec": {"hostname": "a"}});
        let mut new = json!({"metadata": {"name": "p"}, "spec": {"hostname": "b"}, "status": {"phase": "Running"}});
        status.record_update(Some(&old), &mut new);
        let entry = &new["metadata"]["managedFields"][0];
        assert_eq!(entry["subresource"], "status");
        assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
    }
}
