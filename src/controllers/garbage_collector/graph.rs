//! The ownership graph: every object that can own or be owned, by uid, with its owner
//! references and deletion state, and the reverse index owner → dependents. Pure data: the
//! watchers feed it, and each change says which objects the workers should look at again.

use std::collections::{HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::discovery::ApiResource;

use crate::api::object::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};

/// Where an object lives and which one it is.
#[derive(Clone, Debug)]
pub struct Identity {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// What the collector knows of one object.
#[derive(Clone, Debug)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    /// Marked for deletion (deletionTimestamp set).
    pub deleting: bool,
    pub orphan_finalizer: bool,
    pub foreground_finalizer: bool,
}

impl Node {
    /// The node of a watched object; `None` for objects without a uid.
    pub fn of(resource: &ApiResource, object: &DynamicObject) -> Option<Node> {
        let meta = &object.metadata;
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        Some(Node {
            identity: Identity {
                resource: resource.clone(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone()?,
                uid: meta.uid.clone()?,
            },
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            orphan_finalizer: finalizers.iter().any(|f| f == ORPHAN_FINALIZER),
            foreground_finalizer: finalizers.iter().any(|f| f == FOREGROUND_FINALIZER),
        })
    }

    /// Being deleted, waiting for its dependents to go first.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.foreground_finalizer
    }

    /// Being deleted, waiting for its dependents to be orphaned.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.orphan_finalizer
    }

    fn owner_uids(&self) -> HashSet<String> {
        self.owners.iter().map(|o| o.uid.clone()).collect()
    }
}

#[derive(Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    /// owner uid → uids of the objects naming it as owner (the owner need not be known).
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// The known dependents of `uid`.
    pub fn dependents(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).cloned())
            .collect()
    }

    /// Whether the graph knows an object of this uid in another namespace than `namespace`.
    pub fn elsewhere(&self, uid: &str, namespace: Option<&str>) -> Option<&Identity> {
        self.nodes
            .get(uid)
            .map(|n| &n.identity)
            .filter(|i| i.namespace.as_deref() != namespace)
    }

    /// Records an added or changed object; returns the uids to look at.
    pub fn upsert(&mut self, node: Node) -> Vec<String> {
        let uid = node.identity.uid.clone();
        let old = self.nodes.insert(uid.clone(), node.clone());
        let old_owners = old.as_ref().map(Node::owner_uids).unwrap_or_default();
        let new_owners = node.owner_uids();
        for gone in old_owners.difference(&new_owners) {
            if let Some(set) = self.dependents.get_mut(gone) {
                set.remove(&uid);
                if set.is_empty() {
                    self.dependents.remove(gone);
                }
            }
        }
        for owner in &new_owners {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(uid.clone());
        }
        let mut wake = Vec::new();
        // An owner of ours that is unknown (maybe gone), waiting on its dependents, or in
        // another namespace (where it cannot own us).
        let namespace = node.identity.namespace.clone();
        let owner_needs_us = new_owners.iter().any(|o| {
            self.nodes.get(o).is_none_or(|owner| {
                owner.deleting_dependents()
                    || owner
                        .identity
                        .namespace
                        .as_ref()
                        .is_some_and(|ns| Some(ns) != namespace.as_ref())
            })
        });
        if owner_needs_us {
            wake.push(uid.clone());
        }
        // Owners that waited on us (we changed or left them) look again.
        for owner in old_owners.union(&new_owners) {
            if self.nodes.get(owner).is_some_and(Node::deleting_dependents) {
                wake.push(owner.clone());
            }
        }
        let was = |f: fn(&Node) -> bool| old.as_ref().is_some_and(f);
        if node.deleting_dependents() {
            wake.push(uid.clone());
            if !was(Node::deleting_dependents) {
                wake.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
            }
        }
        if node.orphaning() {
            wake.push(uid.clone());
        }
        wake
    }

    /// Forgets a deleted object; returns the uids to look at: its dependents (maybe now
    /// without owner) and owners waiting on it.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut wake: Vec<String> = self
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for owner in node.owner_uids() {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(uid);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
            if self
                .nodes
                .get(&owner)
                .is_some_and(Node::deleting_dependents)
            {
                wake.push(owner);
            }
        }
        wake
    }

    /// The uids of the objects of `resource` the graph holds (to drop those a re-list lost).
    pub fn uids_of(&self, resource: &ApiResource) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| {
                n.identity.resource.group == resource.group
                    && n.identity.resource.kind == resource.kind
            })
            .map(|n| n.identity.uid.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(uid: &str, owners: &[&str]) -> Node {
        Node {
            identity: Identity {
                resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
                namespace: Some("default".into()),
                name: uid.into(),
                uid: uid.into(),
            },
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    uid: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            deleting: false,
            orphan_finalizer: false,
            foreground_finalizer: false,
        }
    }

    #[test]
    fn dependents_of_a_removed_owner_are_looked_at() {
        let mut graph = Graph::default();
        assert!(graph.upsert(node("owner", &[])).is_empty());
        assert!(graph.upsert(node("dep", &["owner"])).is_empty());
        assert_eq!(graph.dependents("owner").len(), 1);
        assert_eq!(graph.remove("owner"), vec!["dep".to_string()]);
    }

    #[test]
    fn a_dependent_of_an_unknown_owner_is_looked_at() {
        let mut graph = Graph::default();
        assert_eq!(
            graph.upsert(node("dep", &["ghost"])),
            vec!["dep".to_string()]
        );
    }

    #[test]
    fn foreground_deletion_wakes_the_dependents_and_their_removal_the_owner() {
        let mut graph = Graph::default();
        graph.upsert(node("owner", &[]));
        graph.upsert(node("dep", &["owner"]));
        let mut deleting = node("owner", &[]);
        deleting.deleting = true;
        deleting.foreground_finalizer = true;
        let wake = graph.upsert(deleting);
        assert!(wake.contains(&"owner".to_string()) && wake.contains(&"dep".to_string()));
        assert_eq!(graph.remove("dep"), vec!["owner".to_string()]);
        assert!(graph.dependents("owner").is_empty());
    }
}
