//! Field sets: the fields of an object, named as structured-merge-diff names them (`f:name`
//! for a field, `k:{"name":"web"}` for an item of a keyed list, `v:"x"` for an item of a
//! set, `.` for a list item itself), their `FieldsV1` JSON encoding, and the comparison of
//! two versions of an object that server-side apply and field ownership work from.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::schema::{ListKind, Node};

/// A path from the object's root: encoded elements (`f:spec`, `k:{"name":"web"}`, ...).
pub type Path = Vec<String>;

/// A set of paths, each a field someone owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

/// What changed between two versions of an object.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: FieldSet,
    pub removed: FieldSet,
    pub modified: FieldSet,
}

/// A `fieldsV1` that is not a tree of objects.
#[derive(Debug, thiserror::Error)]
#[error("invalid fieldsV1: {0}")]
pub struct FieldsError(String);

impl FieldSet {
    /// The fields of `value`, of type `node`.
    pub fn of(value: &Value, node: Node) -> FieldSet {
        FieldSet(leaves(value, node).into_keys().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains(path)
    }

    pub fn insert(&mut self, path: Path) {
        self.0.insert(path);
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.union(&other.0).cloned().collect())
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.difference(&other.0).cloned().collect())
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        FieldSet(self.0.intersection(&other.0).cloned().collect())
    }

    /// Keeps the paths `keep` says yes to.
    pub fn filter(mut self, keep: impl Fn(&Path) -> bool) -> FieldSet {
        self.0.retain(|p| keep(p));
        self
    }

    /// Whether `path` or something under it is in the set.
    pub fn has_under(&self, path: &Path) -> bool {
        self.0
            .range(path.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
    }

    /// The `fieldsV1` encoding: nested objects keyed by element, `{}` for a member leaf, `.`
    /// for a member that also has members under it.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for element in path {
                node = node
                    .entry(element.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .expect("built as objects");
            }
        }
        // Members with members under them carry `.`.
        for path in &self.0 {
            let mut node = &mut root;
            for element in path {
                node = node
                    .get_mut(element)
                    .and_then(Value::as_object_mut)
                    .expect("built above");
            }
            if !node.is_empty() {
                node.insert(".".to_string(), Value::Object(Map::new()));
            }
        }
        Value::Object(root)
    }

    pub fn from_fields_v1(value: &Value) -> Result<FieldSet, FieldsError> {
        fn walk(
            value: &Value,
            path: &mut Path,
            out: &mut BTreeSet<Path>,
        ) -> Result<(), FieldsError> {
            let map = value
                .as_object()
                .ok_or_else(|| FieldsError(format!("expected an object at {}", display(path))))?;
            if map.is_empty() && !path.is_empty() {
                out.insert(path.clone());
            }
            for (key, child) in map {
                if key == "." {
                    out.insert(path.clone());
                    continue;
                }
                if !["f:", "k:", "v:", "i:"].iter().any(|p| key.starts_with(p)) {
                    return Err(FieldsError(format!("unknown path element {key:?}")));
                }
                path.push(key.clone());
                walk(child, path, out)?;
                path.pop();
            }
            Ok(())
        }
        let mut out = BTreeSet::new();
        walk(value, &mut Vec::new(), &mut out)?;
        Ok(FieldSet(out))
    }
}

/// `.spec.containers[name="web"].image`, as upstream prints a path in conflicts.
pub fn display(path: &[String]) -> String {
    let mut out = String::new();
    for element in path {
        let (kind, rest) = element.split_at(2.min(element.len()));
        match kind {
            "f:" => {
                out.push('.');
                out.push_str(rest);
            }
            "k:" => {
                let fields: Map<String, Value> = serde_json::from_str(rest).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            "v:" => out.push_str(&format!("[={rest}]")),
            "i:" => out.push_str(&format!("[{rest}]")),
            _ => out.push_str(element),
        }
    }
    out
}

/// The `k:` element of an item of a list keyed by `keys` (the keys it has, by name), or
/// `None` if it is not an object.
pub fn key_element(item: &Value, keys: &[&str]) -> Option<String> {
    let item = item.as_object()?;
    let mut present: Vec<(&str, &Value)> = keys
        .iter()
        .filter_map(|k| item.get(*k).map(|v| (*k, v)))
        .collect();
    if present.is_empty() {
        return None;
    }
    present.sort_by_key(|(k, _)| *k);
    let parts: Vec<String> = present
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect();
    Some(format!("k:{{{}}}", parts.join(",")))
}

/// Every member path of `value` with its value for leaves (scalars and atomic values);
/// list items and empty objects map to `None`/their value so that presence is compared.
fn leaves(value: &Value, node: Node) -> BTreeMap<Path, Option<Value>> {
    fn walk(value: &Value, node: Node, path: &mut Path, out: &mut BTreeMap<Path, Option<Value>>) {
        match (node, value) {
            (node, Value::Object(map)) if node.granular_object() && !map.is_empty() => {
                for (key, child) in map {
                    path.push(format!("f:{key}"));
                    walk(child, node.child(key).0, path, out);
                    path.pop();
                }
            }
            (
                Node::List {
                    kind: ListKind::Map(keys),
                    ..
                },
                Value::Array(items),
            ) if items.iter().all(|i| key_element(i, keys).is_some()) => {
                for item in items {
                    path.push(key_element(item, keys).expect("checked"));
                    out.insert(path.clone(), None);
                    walk(item, node.item(), path, out);
                    path.pop();
                }
            }
            (
                Node::List {
                    kind: ListKind::Set,
                    ..
                },
                Value::Array(items),
            ) => {
                for item in items {
                    path.push(format!("v:{item}"));
                    out.insert(path.clone(), None);
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => {
                out.insert(path.clone(), Some(value.clone()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, node, &mut Vec::new(), &mut out);
    out
}

/// What changed from `old` to `new`, both of type `node`, within what `scope` keeps.
pub fn compare(old: &Value, new: &Value, node: Node, scope: impl Fn(&Path) -> bool) -> Comparison {
    let old = leaves(old, node);
    let new = leaves(new, node);
    let mut comparison = Comparison::default();
    for (path, value) in &new {
        if !scope(path) {
            continue;
        }
        match old.get(path) {
            None => comparison.added.insert(path.clone()),
            Some(before) if before != value => comparison.modified.insert(path.clone()),
            Some(_) => {}
        }
    }
    for path in old.keys() {
        if scope(path) && !new.contains_key(path) {
            comparison.removed.insert(path.clone());
        }
    }
    comparison
}

/// Removes the value at `path` from `object` (a field, a keyed item, a set item).
pub fn remove(object: &mut Value, path: &[String], node: Node) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(name) = first.strip_prefix("f:") {
        let Value::Object(map) = object else { return };
        if rest.is_empty() {
            map.remove(name);
        } else if let Some(child) = map.get_mut(name) {
            remove(child, rest, node.child(name).0);
        }
        return;
    }
    let Value::Array(items) = object else { return };
    let position = match node {
        Node::List {
            kind: ListKind::Map(keys),
            ..
        } => items
            .iter()
            .position(|i| key_element(i, keys).as_deref() == Some(first.as_str())),
        _ => items.iter().position(|i| format!("v:{i}") == *first),
    };
    if let Some(position) = position {
        if rest.is_empty() {
            items.remove(position);
        } else {
            remove(&mut items[position], rest, node.item());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::schema::root;
    use super::*;

    #[test]
    fn field_sets_encode_as_upstream_fields_v1() {
        let node = root("apps", "v1", "Deployment").unwrap();
        let object = json!({
            "metadata": {"labels": {"app": "web"}, "finalizers": ["x"]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx"}]}}},
        });
        let set = FieldSet::of(&object, node);
        assert_eq!(
            set.to_fields_v1(),
            json!({
                "f:metadata": {"f:finalizers": {"v:\"x\"": {}}, "f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}
                }}}},
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()).unwrap(), set);
        let path = set
            .paths()
            .find(|p| p.last().unwrap() == "f:image")
            .unwrap();
        assert_eq!(
            display(path),
            ".spec.template.spec.containers[name=\"web\"].image"
        );
    }

    #[test]
    fn comparisons_find_added_removed_and_modified_fields() {
        let node = root("", "v1", "ConfigMap").unwrap();
        let old = json!({"data": {"a": "1", "b": "2"}});
        let new = json!({"data": {"a": "1", "b": "3", "c": "4"}});
        let diff = compare(&old, &new, node, |_| true);
        let names = |set: &FieldSet| set.paths().map(|p| display(p)).collect::<Vec<_>>();
        assert_eq!(names(&diff.added), [".data.c"]);
        assert_eq!(names(&diff.modified), [".data.b"]);
        assert!(diff.removed.is_empty());
        let mut object = new.clone();
        remove(
            &mut object,
            &["f:data".to_string(), "f:b".to_string()],
            node,
        );
        assert_eq!(object, json!({"data": {"a": "1", "c": "4"}}));
    }
}
