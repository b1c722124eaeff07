//! Watching: history replay, then live events, in revision order with no gap and no
//! duplicate.
//!
//! The engine publishes each applied batch to a broadcast channel. A [`Watcher`] is a cursor
//! over the global revision: whenever it cannot continue from the channel (at the start,
//! after falling behind, or on a gap) it reads the missing revisions back from the engine's
//! history, then resumes live. Because every revision is exactly one event, the cursor can
//! tell a gap from a filtered-out event.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::engine::Engine;
use super::types::{Event, Revision, StoreError};

/// Batches kept for slow watchers before they fall back to reading history from disk.
pub(crate) const CHANNEL_CAPACITY: usize = 256;
/// Events read from history per step of a replay.
const REPLAY_CHUNK: usize = 1024;

/// What the engine tells watchers.
#[derive(Debug)]
pub(crate) enum Notice {
    /// Events of one applied batch, with contiguous revisions.
    Events(Vec<Event>),
    /// The state was replaced by a snapshot at this revision: history before it is gone.
    Reset(Revision),
}

/// The engine's side: one broadcast channel for every watcher.
pub(crate) struct WatchHub {
    sender: broadcast::Sender<Arc<Notice>>,
}

impl WatchHub {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        WatchHub { sender }
    }

    pub fn publish(&self, events: Vec<Event>) {
        if !events.is_empty() && self.sender.receiver_count() > 0 {
            // An error only means every watcher went away meanwhile.
            let _ = self.sender.send(Arc::new(Notice::Events(events)));
        }
    }

    pub fn reset(&self, revision: Revision) {
        let _ = self.sender.send(Arc::new(Notice::Reset(revision)));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Notice>> {
        self.sender.subscribe()
    }
}

/// A stream of the events under one prefix after a starting revision.
pub struct Watcher {
    engine: Arc<Engine>,
    prefix: String,
    /// The last global revision this watcher has accounted for (delivered or filtered out).
    cursor: Revision,
    receiver: broadcast::Receiver<Arc<Notice>>,
    pending: VecDeque<Event>,
    needs_replay: bool,
    finished: bool,
    /// Opens values encrypted at rest.
    encryption: Option<Arc<super::encryption::Encryption>>,
}

impl Watcher {
    /// Watches `prefix` for events after revision `after`. Fails with `Compacted` when that
    /// history is gone.
    pub(crate) fn new(
        engine: Arc<Engine>,
        prefix: &str,
        after: Revision,
    ) -> Result<Self, StoreError> {
        // Subscribe before checking history, so nothing applied in between is missed.
        let receiver = engine.hub().subscribe();
        let compact_revision = engine.compact_revision();
        if after < compact_revision {
            return Err(StoreError::Compacted {
                requested: after,
                compact_revision,
            });
        }
        Ok(Watcher {
            engine,
            prefix: prefix.to_string(),
            cursor: after,
            receiver,
            pending: VecDeque::new(),
            needs_replay: true,
            finished: false,
            encryption: None,
        })
    }

    pub(crate) fn with_encryption(
        mut self,
        encryption: Option<Arc<super::encryption::Encryption>>,
    ) -> Self {
        self.encryption = encryption;
        self
    }

    fn open(&self, mut event: Event) -> Result<Event, StoreError> {
        let Some(encryption) = &self.encryption else {
            return Ok(event);
        };
        if event.kind == super::EventKind::Put {
            event.kv.value = encryption.open(&event.kv.key, event.kv.value)?;
        }
        if let Some(prev) = event.prev.as_mut() {
            prev.value = encryption.open(&prev.key, std::mem::take(&mut prev.value))?;
        }
        Ok(event)
    }

    /// The revision up to which this watcher has seen history (for bookmarks).
    pub fn revision(&self) -> Revision {
        self.cursor
    }

    /// The next event; an error ends the stream (`Compacted` when the watcher fell so far
    /// behind that history it had not seen was compacted, or the state was replaced).
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                let opened = self.open(event);
                if opened.is_err() {
                    self.finished = true;
                }
                return Some(opened);
            }
            if self.finished {
                return None;
            }
            if self.needs_replay {
                if let Err(e) = self.replay().await {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.receiver.recv().await {
                Ok(notice) => match &*notice {
                    Notice::Events(events) => self.take_live(events),
                    Notice::Reset(revision) => {
                        self.finished = true;
                        return Some(Err(StoreError::Compacted {
                            requested: self.cursor,
                            compact_revision: *revision,
                        }));
                    }
                },
                Err(broadcast::error::RecvError::Lagged(_)) => self.needs_replay = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.finished = true;
                    return None;
                }
            }
        }
    }

    fn take_live(&mut self, events: &[Event]) {
        let Some(first) = events.first() else { return };
        if first.revision() > self.cursor + 1 {
            // Something between the cursor and this batch was not seen live: read it back.
            self.needs_replay = true;
            return;
        }
        for event in events {
            if event.revision() <= self.cursor {
                continue;
            }
            self.cursor = event.revision();
            if event.kv.key.starts_with(&self.prefix) {
                self.pending.push_back(event.clone());
            }
        }
    }

    async fn replay(&mut self) -> Result<(), StoreError> {
        let engine = self.engine.clone();
        let prefix = self.prefix.clone();
        let after = self.cursor;
        let (events, scanned) =
            tokio::task::spawn_blocking(move || engine.changes_after(&prefix, after, REPLAY_CHUNK))
                .await
                .map_err(|e| StoreError::Internal(format!("history replay task: {e}")))??;
        let complete = events.len() < REPLAY_CHUNK;
        self.pending.extend(events);
        self.cursor = scanned;
        self.needs_replay = !complete;
        Ok(())
    }
}
