//! The scheduler's live view of the cluster, as upstream's scheduler cache: one
//! [`Snapshot`] kept up to date event by event (a node added or changed, a pod bound,
//! changed or gone) rather than rebuilt per decision, so a decision over 500 nodes and
//! thousands of pods costs the filters and scores, not a copy of the cluster.
//!
//! A pod the scheduler has just bound is *assumed* on its node at once, so the next
//! decision sees it, and confirmed when the watch shows it bound (or forgotten when the
//! binding failed). Pods bound to a node not (yet) known wait aside until it appears.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod};

use super::queue::{key, Key};
use super::snapshot::{NodeInfo, Snapshot};

#[derive(Debug, Default)]
pub struct Cache {
    snap: Snapshot,
    /// Node name → position in `snap.nodes`.
    index: HashMap<String, usize>,
    /// Every placed (bound or assumed) pod → its node.
    placed: HashMap<Key, String>,
    /// Pods bound to nodes the cache does not have, by node name.
    orphans: HashMap<String, Vec<Pod>>,
    /// Placed pods not yet seen bound through the watch.
    assumed: HashSet<Key>,
}

/// What a node update changed, for deciding whether waiting pods should be tried again.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeChange {
    Added,
    /// Labels, taints, schedulability or allocatable resources changed.
    Relevant,
    Irrelevant,
}

impl Cache {
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Mutable access for what the cache does not track itself (namespace labels,
    /// workload selectors).
    pub fn snapshot_mut(&mut self) -> &mut Snapshot {
        &mut self.snap
    }

    pub fn node_names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn upsert_node(&mut self, node: Node) -> NodeChange {
        let name = node.metadata.name.clone().unwrap_or_default();
        let fresh = NodeInfo::new(node);
        if let Some(&i) = self.index.get(&name) {
            let info = &mut self.snap.nodes[i];
            let old = &info.node;
            let relevant = old.metadata.labels != fresh.node.metadata.labels
                || old.spec != fresh.node.spec
                || info.allocatable != fresh.allocatable
                || info.allowed_pods != fresh.allowed_pods;
            info.node = fresh.node;
            info.allocatable = fresh.allocatable;
            info.allowed_pods = fresh.allowed_pods;
            return if relevant {
                NodeChange::Relevant
            } else {
                NodeChange::Irrelevant
            };
        }
        let mut info = fresh;
        for pod in self.orphans.remove(&name).unwrap_or_default() {
            info.add_pod(pod);
        }
        self.index.insert(name, self.snap.nodes.len());
        self.snap.nodes.push(info);
        NodeChange::Added
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let info = self.snap.nodes.swap_remove(i);
        if let Some(moved) = self.snap.nodes.get(i) {
            self.index.insert(moved.name().to_string(), i);
        }
        if !info.pods.is_empty() {
            self.orphans.insert(name.to_string(), info.pods);
        }
    }

    /// Records a bound, running-or-pending pod (a newer version replaces the older or the
    /// assumed one); true if the cache did not have it placed before.
    pub fn upsert_pod(&mut self, pod: Pod) -> bool {
        let key = key(&pod);
        let was_placed = self.take(&key).is_some();
        self.assumed.remove(&key);
        self.place(key, pod);
        !was_placed
    }

    /// Places a pod just bound by this scheduler (`spec.nodeName` set) before the watch
    /// confirms it.
    pub fn assume(&mut self, pod: Pod) {
        let key = key(&pod);
        self.take(&key);
        self.assumed.insert(key.clone());
        self.remove_nominated(&key);
        self.place(key, pod);
    }

    /// Takes back an assumed pod whose binding failed; a confirmed one stays.
    pub fn forget(&mut self, key: &Key) {
        if self.assumed.remove(key) {
            self.take(key);
        }
    }

    /// Takes a pod off its node (it finished or was deleted); true if it was placed.
    pub fn remove_pod(&mut self, key: &Key) -> bool {
        self.assumed.remove(key);
        self.take(key).is_some()
    }

    pub fn is_placed(&self, key: &Key) -> bool {
        self.placed.contains_key(key)
    }

    fn place(&mut self, key: Key, pod: Pod) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        match self.index.get(&node) {
            Some(&i) => self.snap.nodes[i].add_pod(pod),
            None => self.orphans.entry(node.clone()).or_default().push(pod),
        }
        self.placed.insert(key, node);
    }

    fn take(&mut self, key: &Key) -> Option<Pod> {
        let node = self.placed.remove(key)?;
        match self.index.get(&node) {
            Some(&i) => self.snap.nodes[i].remove_pod(&key.0, &key.1),
            None => {
                let pods = self.orphans.get_mut(&node)?;
                let at = pods.iter().position(|p| &super::queue::key(p) == key)?;
                Some(pods.swap_remove(at))
            }
        }
    }

    /// Records a pending pod nominated to a node by preemption (its
    /// `status.nominatedNodeName`), so that others leave it room.
    pub fn set_nominated(&mut self, pod: Pod) {
        let key = key(&pod);
        match self
            .snap
            .nominated
            .iter_mut()
            .find(|p| super::queue::key(p) == key)
        {
            Some(existing) => *existing = pod,
            None => self.snap.nominated.push(pod),
        }
    }

    pub fn remove_nominated(&mut self, key: &Key) {
        self.snap.nominated.retain(|p| &super::queue::key(p) != key);
    }

    pub fn nominated(&self, key: &Key) -> Option<&Pod> {
        self.snap
            .nominated
            .iter()
            .find(|p| &super::queue::key(p) == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::{node, pod};

    fn worker(name: &str) -> Node {
        node(name, &[("cpu", "2"), ("memory", "4Gi"), ("pods", "10")])
    }

    fn k(name: &str) -> Key {
        ("default".into(), name.into())
    }

    #[test]
    fn pods_follow_their_nodes_in_and_out() {
        let mut c = Cache::default();
        assert!(c.upsert_pod(pod("early", Some("n2"), &[("cpu", "1")])));
        assert_eq!(c.upsert_node(worker("n1")), NodeChange::Added);
        assert_eq!(c.upsert_node(worker("n2")), NodeChange::Added);
        assert_eq!(c.snapshot().node("n2").unwrap().requested.milli_cpu, 1000);

        c.remove_node("n1");
        assert_eq!(c.snapshot().nodes.len(), 1);
        assert_eq!(
            c.snapshot().node("n2").unwrap().pods.len(),
            1,
            "the index survives a swap_remove"
        );
        c.remove_node("n2");
        c.upsert_node(worker("n2"));
        assert_eq!(c.snapshot().node("n2").unwrap().pods.len(), 1);
        assert!(c.remove_pod(&k("early")));
        assert_eq!(c.snapshot().node("n2").unwrap().requested.milli_cpu, 0);
    }

    #[test]
    fn assumed_pods_are_confirmed_or_forgotten() {
        let mut c = Cache::default();
        c.upsert_node(worker("n1"));
        c.assume(pod("a", Some("n1"), &[("cpu", "1")]));
        c.assume(pod("b", Some("n1"), &[("cpu", "500m")]));
        assert_eq!(c.snapshot().node("n1").unwrap().requested.milli_cpu, 1500);
        assert!(
            !c.upsert_pod(pod("a", Some("n1"), &[("cpu", "1")])),
            "confirmed, not added twice"
        );
        c.forget(&k("a"));
        c.forget(&k("b"));
        let n1 = c.snapshot().node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 1000);
        assert_eq!(n1.pods.len(), 1);
    }

    #[test]
    fn node_updates_keep_pods_and_say_whether_they_matter() {
        let mut c = Cache::default();
        c.upsert_node(worker("n1"));
        c.upsert_pod(pod("a", Some("n1"), &[("cpu", "1")]));
        let mut n = worker("n1");
        n.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        assert_eq!(c.upsert_node(n.clone()), NodeChange::Irrelevant);
        n.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("zone".into(), "a".into());
        assert_eq!(c.upsert_node(n), NodeChange::Relevant);
        assert_eq!(c.snapshot().node("n1").unwrap().pods.len(), 1);
    }
}
