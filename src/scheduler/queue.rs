//! The scheduling queue, as upstream's `PriorityQueue`: pending pods wait in one of three
//! places — *active* (ready to be tried, most important first, then first come), *backoff*
//! (tried and failed recently: waits 1 s, doubling per attempt up to 10 s) or
//! *unschedulable* (no node fits: waits for a cluster change that may help, at most
//! [`MAX_UNSCHEDULABLE`]). A cluster change moves unschedulable pods to backoff, or straight
//! to active when their backoff has already run out.
//!
//! It only orders pods; it knows nothing of nodes or the API.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use super::preemption::priority;

/// A pod's namespace and name.
pub type Key = (String, String);

/// Upstream's `podInitialBackoffDuration`.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Upstream's `podMaxBackoffDuration`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's `podMaxInUnschedulablePodsDuration`: an unschedulable pod is tried again
/// after this long even when nothing changed.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);
/// How often unschedulable pods are checked against [`MAX_UNSCHEDULABLE`] (upstream: 30 s).
const FLUSH_UNSCHEDULABLE_EVERY: Duration = Duration::from_secs(30);

pub fn key(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// A pod taken off the queue to be scheduled; give it back with
/// [`Queue::requeue_unschedulable`] or [`Queue::requeue_backoff`] if it was not bound.
#[derive(Debug, Clone)]
pub struct Queued {
    pub pod: Pod,
    /// Scheduling attempts so far, this one not counted.
    pub attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Active,
    Backoff(Instant),
    /// Since when.
    Unschedulable(Instant),
}

#[derive(Debug)]
struct Entry {
    pod: Pod,
    attempts: u32,
    /// Order among pods of equal priority: when it was queued.
    seq: u64,
    last_attempt: Option<Instant>,
    place: Place,
}

impl Entry {
    fn backoff_until(&self) -> Option<Instant> {
        self.last_attempt.map(|at| at + backoff(self.attempts))
    }
}

/// How long a pod that failed `attempts` times waits before its next attempt.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// The pending pods this scheduler is responsible for.
#[derive(Debug)]
pub struct Queue {
    entries: HashMap<Key, Entry>,
    active: BTreeSet<(Reverse<i32>, u64, Key)>,
    backoff: BTreeSet<(Instant, Key)>,
    next_seq: u64,
    last_unschedulable_flush: Instant,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            entries: HashMap::new(),
            active: BTreeSet::new(),
            backoff: BTreeSet::new(),
            next_seq: 0,
            last_unschedulable_flush: Instant::now(),
        }
    }
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    /// Adds a new pending pod (active), or records a newer version of a queued one; an
    /// unschedulable pod whose spec or labels changed is tried again (upstream's
    /// `isPodUpdated` check), a status-only change leaves it waiting.
    pub fn upsert(&mut self, pod: Pod, now: Instant) {
        let key = key(&pod);
        if let Some(entry) = self.entries.get_mut(&key) {
            let changed = entry.pod.spec != pod.spec
                || entry.pod.metadata.labels != pod.metadata.labels
                || entry.pod.metadata.annotations != pod.metadata.annotations;
            entry.pod = pod;
            if changed && matches!(entry.place, Place::Unschedulable(_)) {
                self.wake(&key, now);
            }
            return;
        }
        self.insert(
            key,
            Entry {
                pod,
                attempts: 0,
                seq: 0,
                last_attempt: None,
                place: Place::Active,
            },
        );
    }

    fn insert(&mut self, key: Key, mut entry: Entry) {
        entry.seq = self.next_seq;
        self.next_seq += 1;
        match entry.place {
            Place::Active => {
                self.active
                    .insert((Reverse(priority(&entry.pod)), entry.seq, key.clone()));
            }
            Place::Backoff(until) => {
                self.backoff.insert((until, key.clone()));
            }
            Place::Unschedulable(_) => {}
        }
        self.entries.insert(key, entry);
    }

    /// Takes a pod out of its place (not out of the queue).
    fn unplace(&mut self, key: &Key) -> Option<&mut Entry> {
        let entry = self.entries.get_mut(key)?;
        match entry.place {
            Place::Active => {
                self.active
                    .remove(&(Reverse(priority(&entry.pod)), entry.seq, key.clone()));
            }
            Place::Backoff(until) => {
                self.backoff.remove(&(until, key.clone()));
            }
            Place::Unschedulable(_) => {}
        }
        Some(entry)
    }

    pub fn remove(&mut self, key: &Key) -> Option<Pod> {
        self.unplace(key)?;
        self.entries.remove(key).map(|e| e.pod)
    }

    /// The most important active pod, taken out of the queue.
    pub fn pop(&mut self) -> Option<Queued> {
        let (_, _, key) = self.active.pop_first()?;
        let entry = self.entries.remove(&key)?;
        Some(Queued {
            pod: entry.pod,
            attempts: entry.attempts,
        })
    }

    /// Gives back a pod no node could take: it waits for a cluster change.
    pub fn requeue_unschedulable(&mut self, queued: Queued, now: Instant) {
        self.requeue(queued, now, Place::Unschedulable(now));
    }

    /// Gives back a pod whose attempt failed for another reason (an API error): it is
    /// tried again after its backoff.
    pub fn requeue_backoff(&mut self, queued: Queued, now: Instant) {
        let until = now + backoff(queued.attempts + 1);
        self.requeue(queued, now, Place::Backoff(until));
    }

    fn requeue(&mut self, queued: Queued, now: Instant, place: Place) {
        let key = key(&queued.pod);
        self.remove(&key);
        self.insert(
            key,
            Entry {
                pod: queued.pod,
                attempts: queued.attempts + 1,
                seq: 0,
                last_attempt: Some(now),
                place,
            },
        );
    }

    /// A cluster change that may help: unschedulable pods for which `may_help` says so go to
    /// backoff, or to active when their backoff is over.
    pub fn move_unschedulable(&mut self, now: Instant, may_help: impl Fn(&Pod) -> bool) {
        let waiting: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Unschedulable(_)) && may_help(&e.pod))
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.wake(&key, now);
        }
    }

    /// Moves one unschedulable pod to backoff or active.
    fn wake(&mut self, key: &Key, now: Instant) {
        let Some(entry) = self.unplace(key) else {
            return;
        };
        let place = match entry.backoff_until() {
            Some(until) if until > now => Place::Backoff(until),
            _ => Place::Active,
        };
        entry.place = place;
        let seq = entry.seq;
        let prio = priority(&entry.pod);
        match place {
            Place::Active => {
                self.active.insert((Reverse(prio), seq, key.clone()));
            }
            Place::Backoff(until) => {
                self.backoff.insert((until, key.clone()));
            }
            Place::Unschedulable(_) => {}
        }
    }

    /// Moves pods whose backoff is over to active, and those unschedulable for longer than
    /// [`MAX_UNSCHEDULABLE`] on.
    pub fn flush(&mut self, now: Instant) {
        while let Some((until, key)) = self.backoff.first().cloned() {
            if until > now {
                break;
            }
            self.backoff.pop_first();
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.place = Place::Active;
                self.active
                    .insert((Reverse(priority(&entry.pod)), entry.seq, key));
            }
        }
        if now.duration_since(self.last_unschedulable_flush) >= FLUSH_UNSCHEDULABLE_EVERY {
            self.last_unschedulable_flush = now;
            let stale: Vec<Key> = self
                .entries
                .iter()
                .filter(|(_, e)| {
                    matches!(e.place, Place::Unschedulable(since) if now.duration_since(since) >= MAX_UNSCHEDULABLE)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                self.wake(&key, now);
            }
        }
    }

    /// When [`Queue::flush`] has something to do next.
    pub fn next_wakeup(&self) -> Instant {
        let unschedulable = self.last_unschedulable_flush + FLUSH_UNSCHEDULABLE_EVERY;
        match self.backoff.first() {
            Some((until, _)) => (*until).min(unschedulable),
            None => unschedulable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::tests::pod;

    fn with_priority(name: &str, prio: i32) -> Pod {
        let mut p = pod(name, None, &[]);
        p.spec.as_mut().unwrap().priority = Some(prio);
        p
    }

    fn name(q: &Queued) -> &str {
        q.pod.metadata.name.as_deref().unwrap()
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten() {
        let secs: Vec<u64> = (1..=6).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn most_important_first_then_first_come() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.upsert(with_priority("a", 0), now);
        q.upsert(with_priority("b", 100), now);
        q.upsert(with_priority("c", 0), now);
        let order: Vec<String> = std::iter::from_fn(|| q.pop())
            .map(|p| name(&p).to_string())
            .collect();
        assert_eq!(order, vec!["b", "a", "c"]);
    }

    #[test]
    fn unschedulable_pods_wait_for_a_change_and_their_backoff() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.upsert(with_priority("a", 0), now);
        let a = q.pop().unwrap();
        q.requeue_unschedulable(a, now);
        assert!(!q.has_active());
        q.flush(now + Duration::from_secs(5));
        assert!(!q.has_active(), "no change, no retry");

        // A change within the backoff: waits for the rest of it.
        q.move_unschedulable(now + Duration::from_millis(500), |_| true);
        assert!(!q.has_active());
        q.flush(now + Duration::from_millis(999));
        assert!(!q.has_active());
        q.flush(now + Duration::from_secs(1));
        let a = q.pop().unwrap();
        assert_eq!(a.attempts, 1);

        // Second failure: two seconds; a change after them makes it active at once.
        let later = now + Duration::from_secs(2);
        q.requeue_unschedulable(a, later);
        q.move_unschedulable(later + Duration::from_secs(3), |_| true);
        assert!(q.has_active());
    }

    #[test]
    fn status_updates_leave_an_unschedulable_pod_waiting_spec_changes_do_not() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.upsert(with_priority("a", 0), now);
        let a = q.pop().unwrap();
        let mut pod = a.pod.clone();
        q.requeue_unschedulable(a, now);
        pod.status = Some(Default::default());
        q.upsert(pod.clone(), now + Duration::from_secs(20));
        assert!(!q.has_active());
        pod.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        q.upsert(pod, now + Duration::from_secs(20));
        assert!(q.has_active());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn removed_pods_are_gone_from_every_place() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.upsert(with_priority("a", 0), now);
        q.remove(&("default".into(), "a".into()));
        assert!(q.pop().is_none());
        q.upsert(with_priority("b", 0), now);
        let b = q.pop().unwrap();
        q.requeue_backoff(b, now);
        q.remove(&("default".into(), "b".into()));
        q.flush(now + MAX_BACKOFF);
        assert!(q.pop().is_none());
        assert!(q.is_empty());
    }
}
