//! Upstream's `flowcontrol.Backoff` as the kubelet uses it for crashing containers
//! (10 s doubling to 5 min) and failing image pulls: one entry per key, forgotten once it
//! has not been bumped for twice the maximum (so a container that ran 10 minutes starts
//! again at 10 s).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Crash-loop and image-pull back-off: initial 10 s, maximum 300 s.
pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    backoff: Duration,
    last_update: Instant,
}

/// Per-key exponential back-off.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<String, Entry>,
}

impl Backoff {
    /// The current delay for `key` (zero when it has none).
    pub fn get(&self, key: &str) -> Duration {
        self.entries
            .get(key)
            .map(|e| e.backoff)
            .unwrap_or(Duration::ZERO)
    }

    /// Bumps `key`'s delay: 10 s the first time (or after it expired), doubled after.
    pub fn next(&mut self, key: &str, event_time: Instant, now: Instant) {
        let entry = match self.entries.get(key) {
            Some(e) if !expired(event_time, e.last_update) => Entry {
                backoff: (e.backoff * 2).min(MAX),
                last_update: now,
            },
            _ => Entry {
                backoff: INITIAL,
                last_update: now,
            },
        };
        self.entries.insert(key.to_string(), entry);
    }

    /// `IsInBackOffSince`: whether less than the delay has passed since `event_time` (the
    /// container's finish) — the container must wait.
    pub fn in_backoff_since(&self, key: &str, event_time: Instant, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(e) if !expired(event_time, e.last_update) => {
                now.saturating_duration_since(event_time) < e.backoff
            }
            _ => false,
        }
    }

    /// `IsInBackOffSinceUpdate`: whether less than the delay has passed since the last bump
    /// (image pulls).
    pub fn in_backoff_since_update(&self, key: &str, now: Instant) -> bool {
        match self.entries.get(key) {
            Some(e) if !expired(now, e.last_update) => {
                now.saturating_duration_since(e.last_update) < e.backoff
            }
            _ => false,
        }
    }

    /// When `key`'s current wait ends, measured from `event_time` (to schedule a wake-up).
    pub fn ready_at(&self, key: &str, event_time: Instant) -> Option<Instant> {
        self.entries.get(key).map(|e| event_time + e.backoff)
    }

    /// Drops `key` (container removed from the spec, pod gone).
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

fn expired(event_time: Instant, last_update: Instant) -> bool {
    event_time.saturating_duration_since(last_update) > MAX * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_five_minutes_then_resets_after_ten() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert!(!b.in_backoff_since("c", t0, t0));
        b.next("c", t0, t0);
        assert_eq!(b.get("c"), Duration::from_secs(10));
        assert!(b.in_backoff_since("c", t0, t0 + Duration::from_secs(9)));
        assert!(!b.in_backoff_since("c", t0, t0 + Duration::from_secs(10)));
        let mut t = t0;
        for _ in 0..10 {
            t += Duration::from_secs(1);
            b.next("c", t, t);
        }
        assert_eq!(b.get("c"), MAX);
        // A container that ran more than 10 minutes starts over at 10 s.
        let later = t + Duration::from_secs(601);
        assert!(!b.in_backoff_since("c", later, later));
        b.next("c", later, later);
        assert_eq!(b.get("c"), INITIAL);
    }

    #[test]
    fn pulls_wait_since_the_last_failure() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.next("img", t0, t0);
        assert!(b.in_backoff_since_update("img", t0 + Duration::from_secs(5)));
        assert!(!b.in_backoff_since_update("img", t0 + Duration::from_secs(11)));
    }
}
