//! The resource registry: every kind the API serves, with what discovery says about it
//! (plural, singular, short names, categories, verbs, scope, subresources) and how to check
//! an object of it against its schema.
//!
//! Owns: the table of built-in kinds ([`builtin`], from k8s-openapi's types) and the kinds
//! added by CustomResourceDefinitions (put and taken away by `crate::api::crd`). Must not
//! touch: storage or HTTP.

mod builtin;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// The verbs of a resource that supports everything.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Review kinds: answered, never stored.
pub const CREATE_ONLY: &[&str] = &["create"];

/// Checks a JSON object against a kind's schema: the object as the schema reads it back
/// (fields it does not know dropped, defaults filled in), or the field path and what is
/// wrong. Shared (not a `fn`) because a CustomResourceDefinition's check carries its schema.
pub type SchemaCheck = Arc<dyn Fn(&Value) -> Result<Value, SchemaError> + Send + Sync>;

/// Adds a kind's OpenAPI schema (and those it refers to) to a generator; returns its name.
pub type SchemaOf = Arc<dyn Fn(&mut schemars::SchemaGenerator) -> String + Send + Sync>;

/// A schema violation: where, and what; with `causes` when the object is well-formed but
/// invalid (a 422 Invalid, as custom resources and CustomResourceDefinitions report it)
/// rather than undecodable (a 400).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SchemaError {
    pub field: String,
    pub message: String,
    pub causes: Vec<crate::api::error::FieldError>,
}

/// Where a resource's `/scale` subresource finds its numbers (`.spec.replicas`-style JSON
/// paths, as a CustomResourceDefinition's `subresources.scale` gives them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One `additionalPrinterColumns` entry of a CustomResourceDefinition version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub kind: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// One resource of one group version.
#[derive(Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    /// Subresource names (`status`, `scale`, `log`, ...).
    pub subresources: Vec<String>,
    /// Objects are kept in the store (review kinds are not).
    pub stored: bool,
    pub check: SchemaCheck,
    pub schema: SchemaOf,
    /// Where `/scale` reads and writes replicas; `None` for kinds without it.
    pub scale: Option<ScalePaths>,
    /// The CustomResourceDefinition that defines this resource; `None` for built-ins.
    pub crd: Option<String>,
    /// A custom resource's printer columns (empty: upstream's default, Name and Age).
    pub columns: Vec<PrinterColumn>,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceType")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .field("namespaced", &self.namespaced)
            .field("crd", &self.crd)
            .finish_non_exhaustive()
    }
}

impl ResourceType {
    /// `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// The store prefix of this resource's objects (all namespaces).
    pub fn key_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(namespace) => format!("{}{namespace}/{name}", self.key_prefix()),
            None => format!("{}{name}", self.key_prefix()),
        }
    }

    /// The store prefix of one namespace's objects (or of all, for `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(namespace) => format!("{}{namespace}/", self.key_prefix()),
            None => self.key_prefix(),
        }
    }
}

/// Every resource the API serves. Cheap to share.
#[derive(Default)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
}

/// A group and its versions, newest preferred first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupVersions {
    pub group: String,
    pub versions: Vec<String>,
}

impl Registry {
    /// The registry of built-in kinds.
    pub fn builtin() -> Registry {
        Registry {
            types: RwLock::new(builtin::types().into_iter().map(Arc::new).collect()),
        }
    }

    /// Serves `types` as the resources of CustomResourceDefinition `crd`, in place of
    /// what it defined before.
    pub fn set_custom(&self, crd: &str, types: Vec<ResourceType>) {
        let mut all = self.types.write().expect("registry lock");
        all.retain(|t| t.crd.as_deref() != Some(crd));
        all.extend(types.into_iter().map(Arc::new));
    }

    /// Stops serving what CustomResourceDefinition `crd` defined; returns the group
    /// versions it had.
    pub fn remove_custom(&self, crd: &str) -> Vec<(String, String)> {
        let mut all = self.types.write().expect("registry lock");
        let gone = all
            .iter()
            .filter(|t| t.crd.as_deref() == Some(crd))
            .map(|t| (t.group.clone(), t.version.clone()))
            .collect();
        all.retain(|t| t.crd.as_deref() != Some(crd));
        gone
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<ResourceType>>> {
        self.types.read().expect("registry lock")
    }

    /// The resource `plural` of `group`/`version`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The resource of `kind` in `api_version` (`v1`, `apps/v1`).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .iter()
            .find(|t| t.kind == kind && t.api_version() == api_version)
            .cloned()
    }

    /// Every resource.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.read().clone()
    }

    /// The resources of one group version, in discovery order.
    pub fn resources(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.read()
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Every group (the core group as `""`) with its versions, preferred version first.
    pub fn groups(&self) -> Vec<GroupVersions> {
        let mut order: Vec<String> = Vec::new();
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.read().iter() {
            if !order.contains(&t.group) {
                order.push(t.group.clone());
            }
            let list = versions.entry(t.group.clone()).or_default();
            if !list.contains(&t.version) {
                list.push(t.version.clone());
            }
        }
        order
            .into_iter()
            .map(|group| {
                let mut versions = versions.remove(&group).unwrap_or_default();
                versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                GroupVersions { group, versions }
            })
            .collect()
    }
}

/// Kubernetes' version ordering: GA over beta over alpha, higher numbers first.
fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.trim_start_matches('v');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stability, minor) = if let Some(n) = tail.strip_prefix("beta") {
        (1, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (0, n.parse().unwrap_or(0))
    } else {
        (2, 0)
    };
    (stability, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_kinds_are_found_by_path_and_kind() {
        let registry = Registry::builtin();
        let pods = registry.get("", "v1", "pods").unwrap();
        assert_eq!((pods.kind.as_str(), pods.singular.as_str()), ("Pod", "pod"));
        assert!(pods.namespaced);
        assert_eq!(pods.short_names, vec!["po"]);
        assert_eq!(pods.categories, vec!["all"]);
        assert!(pods.subresources.contains(&"status".to_string()));
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/core/pods/default/web"
        );
        let nodes = registry.get("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        assert_eq!(nodes.key(Some("ignored"), "n1"), "/registry/core/nodes/n1");
        let deploy = registry.by_kind("apps/v1", "Deployment").unwrap();
        assert_eq!(deploy.plural, "deployments");
        assert_eq!(deploy.list_kind, "DeploymentList");
        assert!(registry.get("apps", "v1", "pods").is_none());
    }

    #[test]
    fn groups_list_the_preferred_version_first() {
        let registry = Registry::builtin();
        let groups = registry.groups();
        assert_eq!(groups[0].group, "");
        let autoscaling = groups.iter().find(|g| g.group == "autoscaling").unwrap();
        assert_eq!(autoscaling.versions, vec!["v2", "v1"]);
        assert!(version_priority("v1") > version_priority("v1beta1"));
        assert!(version_priority("v2beta1") > version_priority("v1alpha1"));
    }

    #[test]
    fn schema_checks_find_the_field() {
        let registry = Registry::builtin();
        let deploy = registry.by_kind("apps/v1", "Deployment").unwrap();
        let bad = serde_json::json!({"metadata": {"name": "x"}, "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let err = (deploy.check)(&bad).unwrap_err();
        assert_eq!(err.field, "spec.replicas");
        assert!(err.message.contains("invalid type"), "{}", err.message);
        let good = serde_json::json!({"metadata": {"name": "x"}, "spec": {"replicas": 3, "selector": {}, "template": {}}});
        assert_eq!((deploy.check)(&good).unwrap()["spec"]["replicas"], 3);
    }
}
