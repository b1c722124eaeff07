//! Controller expectations (upstream's `UIDTrackingControllerExpectations`): after an owner
//! creates or deletes pods, its next sync waits until the watch cache has seen those
//! creations and deletions, so that a stale cache never makes it create or delete twice.
//!
//! Creations are counted, as upstream: [`Expectations::expect_creations`] before creating,
//! [`Expectations::observe`] from the pod watch (the controller's trigger mapper) for each
//! pod it sees controlled by the owner for the first time, [`Expectations::creation_failed`]
//! for each creation that did not happen. Deletions are tracked by pod uid and are
//! fulfilled once the cache shows the pod gone or terminating. Expectations older than
//! five minutes are dropped (upstream's `ExpectationsTimeout`), so a lost event delays, never
//! stops, an owner.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an owner waits for what it expects before syncing regardless.
const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Pending {
    creations: usize,
    /// Pods (by uid) seen controlled by the owner: each counts as a creation once.
    seen: HashSet<String>,
    deletions: HashSet<String>,
    since: Option<Instant>,
}

/// Expectations of every owner of one controller, keyed by owner uid.
#[derive(Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Before creating `count` pods for `owner`, which has the pods `existing` (by uid) in
    /// the cache already: only pods not among them count as creations.
    pub fn expect_creations(
        &self,
        owner: &str,
        count: usize,
        existing: impl IntoIterator<Item = String>,
    ) {
        let mut owners = self.owners.lock().expect("expectations");
        let pending = owners.entry(owner.to_string()).or_default();
        pending.creations += count;
        pending.seen.extend(existing);
        pending.since = Some(Instant::now());
    }

    /// A creation that failed (or was skipped): it will never be observed.
    pub fn creation_failed(&self, owner: &str) {
        if let Some(pending) = self.owners.lock().expect("expectations").get_mut(owner) {
            pending.creations = pending.creations.saturating_sub(1);
        }
    }

    /// Before deleting the pods with `uids` for `owner`.
    pub fn expect_deletions(&self, owner: &str, uids: impl IntoIterator<Item = String>) {
        let mut owners = self.owners.lock().expect("expectations");
        let pending = owners.entry(owner.to_string()).or_default();
        pending.deletions.extend(uids);
        pending.since = Some(Instant::now());
    }

    /// A deletion that failed: it will never be observed.
    pub fn deletion_failed(&self, owner: &str, uid: &str) {
        if let Some(pending) = self.owners.lock().expect("expectations").get_mut(owner) {
            pending.deletions.remove(uid);
        }
    }

    /// The watch saw pod `pod_uid` controlled by `owner` (created, updated or deleted).
    pub fn observe(&self, owner: &str, pod_uid: &str, terminating: bool) {
        let mut owners = self.owners.lock().expect("expectations");
        let Some(pending) = owners.get_mut(owner) else {
            return;
        };
        if pending.creations > 0 && pending.seen.insert(pod_uid.to_string()) {
            pending.creations -= 1;
        }
        if terminating {
            pending.deletions.remove(pod_uid);
        }
    }

    /// Whether `owner` may sync: nothing pending, or waited too long. `present` says whether a
    /// pod (by uid) is in the cache and not terminating, to settle deletions the watch
    /// reported before they were expected.
    pub fn satisfied(&self, owner: &str, present: impl Fn(&str) -> bool) -> bool {
        let mut owners = self.owners.lock().expect("expectations");
        let Some(pending) = owners.get_mut(owner) else {
            return true;
        };
        pending.deletions.retain(|uid| present(uid));
        let done = pending.creations == 0 && pending.deletions.is_empty();
        let expired = pending.since.is_some_and(|t| t.elapsed() > TIMEOUT);
        if done || expired {
            owners.remove(owner);
            return true;
        }
        false
    }

    /// The owner is gone: forget it.
    pub fn forget(&self, owner: &str) {
        self.owners.lock().expect("expectations").remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_are_counted_once_per_pod_and_deletions_settle_from_the_cache() {
        let e = Expectations::default();
        assert!(e.satisfied("rs", |_| true));
        e.expect_creations("rs", 2, ["old".to_string()]);
        e.observe("rs", "old", false);
        e.observe("rs", "a", false);
        e.observe("rs", "a", false);
        assert!(!e.satisfied("rs", |_| true));
        e.creation_failed("rs");
        assert!(e.satisfied("rs", |_| true));

        e.expect_deletions("rs", ["a".to_string(), "b".to_string()]);
        e.observe("rs", "a", true);
        assert!(!e.satisfied("rs", |uid| uid == "b"));
        assert!(e.satisfied("rs", |_| false));
    }
}
