//! The store: a revisioned key-value store with etcd semantics, the only place cluster
//! state lives.
//!
//! Owns: keys `/registry/<group>/<resource>/<namespace>/<name>`, one global revision (every
//! object's resourceVersion), create / compare-and-swap update / delete / get / paged prefix
//! list / watch from a revision / compaction, on the embedded [`engine`].
//!
//! Must not touch: Raft. Writes go through a [`Replicator`] (implemented by `crate::raft`)
//! which orders them and calls [`Engine::apply_batch`] on every replica; reads are served from
//! the local engine, after [`Replicator::read_barrier`] when they must be linearizable.

pub mod encryption;
pub mod engine;
#[cfg(test)]
pub(crate) mod testing;
mod types;
mod watch;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use engine::{Engine, EngineError, EngineStats, SnapshotHeader};
pub use types::{
    validate_key, Command, CommandOutcome, Event, EventKind, KeyValue, ListOptions, ListPage,
    Revision, StoreError, MAX_KEY_LEN,
};
pub use watch::Watcher;

/// Orders writes across replicas. `crate::raft` implements it; nothing else in the store
/// knows how.
pub trait Replicator: Send + Sync + 'static {
    /// Replicates `command`, waits until it is applied on this replica, and returns what
    /// applying it did.
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<CommandOutcome, StoreError>>;
    /// Returns once this replica has applied every write acknowledged anywhere before the call.
    fn read_barrier(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// How long a readiness check waits for the read barrier.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (quorum read).
    #[default]
    Linearizable,
    /// Whatever this replica has applied (Kubernetes' resourceVersion="0" reads).
    Local,
}

/// The store's client-facing handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Arc<Engine>,
    replicator: Arc<dyn Replicator>,
    encryption: Option<Arc<encryption::Encryption>>,
}

impl Store {
    pub fn new(engine: Arc<Engine>, replicator: Arc<dyn Replicator>) -> Store {
        Store {
            engine,
            replicator,
            encryption: None,
        }
    }

    /// This store, encrypting at rest what `encryption` covers.
    pub fn with_encryption(mut self, encryption: encryption::Encryption) -> Store {
        self.encryption = Some(Arc::new(encryption));
        self
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        match &self.encryption {
            Some(e) => e.seal(key, value),
            None => Ok(value),
        }
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if let Some(e) = &self.encryption {
            kv.value = e.open(&kv.key, kv.value)?;
        }
        Ok(kv)
    }

    /// The plain form of an error's current value.
    fn open_error(&self, error: StoreError) -> StoreError {
        match error {
            StoreError::AlreadyExists { key, current } => match self.open(*current) {
                Ok(current) => StoreError::AlreadyExists {
                    key,
                    current: Box::new(current),
                },
                Err(e) => e,
            },
            StoreError::Conflict {
                key,
                expected,
                current,
            } => match self.open(*current) {
                Ok(current) => StoreError::Conflict {
                    key,
                    expected,
                    current: Box::new(current),
                },
                Err(e) => e,
            },
            other => other,
        }
    }

    /// The revision this replica has applied up to.
    pub fn revision(&self) -> Revision {
        self.engine.revision()
    }

    /// History at or below this revision has been compacted away.
    pub fn compact_revision(&self) -> Revision {
        self.engine.compact_revision()
    }

    async fn propose(&self, command: Command) -> Result<CommandOutcome, StoreError> {
        if let Some(key) = command.key() {
            validate_key(key)?;
        }
        self.replicator.propose(command).await
    }

    /// Creates `key`; `AlreadyExists` if it is live.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let command = Command::Create {
            key: key.to_string(),
            value: self.seal(key, value.clone())?,
        };
        match self.propose(command).await? {
            CommandOutcome::Created(kv) => Ok(KeyValue { value, ..kv }),
            other => Err(self.open_error(outcome_error(key, None, other))),
        }
    }

    /// Replaces the value of `key`; with `expected_mod_revision`, only if the key was last
    /// written at exactly that revision (`Conflict` otherwise).
    pub async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        let command = Command::Update {
            key: key.to_string(),
            value: self.seal(key, value.clone())?,
            expected_mod_revision,
        };
        match self.propose(command).await? {
            CommandOutcome::Updated { kv, .. } => Ok(KeyValue { value, ..kv }),
            other => Err(self.open_error(outcome_error(key, expected_mod_revision, other))),
        }
    }

    /// Deletes `key` (optionally only at the expected mod revision); returns the deleted
    /// value and the revision of the deletion.
    pub async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let command = Command::Delete {
            key: key.to_string(),
            expected_mod_revision,
        };
        match self.propose(command).await? {
            CommandOutcome::Deleted { prev, revision } => Ok((self.open(prev)?, revision)),
            other => Err(self.open_error(outcome_error(key, expected_mod_revision, other))),
        }
    }

    /// Forgets history at or below `revision`.
    pub async fn compact(&self, revision: Revision) -> Result<Revision, StoreError> {
        match self.propose(Command::Compact { revision }).await? {
            CommandOutcome::Compacted { revision } => Ok(revision),
            CommandOutcome::CompactionRefused {
                compact_revision,
                current_revision,
            } => Err(StoreError::Internal(format!(
                "cannot compact to {revision}: compacted revision is {compact_revision}, current is {current_revision}"
            ))),
            other => Err(outcome_error("", None, other)),
        }
    }

    async fn barrier(&self, consistency: Consistency) -> Result<(), StoreError> {
        match consistency {
            Consistency::Linearizable => self.replicator.read_barrier().await,
            Consistency::Local => Ok(()),
        }
    }

    async fn blocking<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Engine) -> Result<T, StoreError> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || read(&engine))
            .await
            .map_err(|e| StoreError::Internal(format!("store read task: {e}")))?
    }

    /// The current value of `key`.
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<KeyValue>, StoreError> {
        self.barrier(consistency).await?;
        let key = key.to_string();
        let kv = self.blocking(move |engine| Ok(engine.get(&key)?)).await?;
        kv.map(|kv| self.open(kv)).transpose()
    }

    /// The value `key` had at `revision` (within the history window).
    pub async fn get_at(
        &self,
        key: &str,
        revision: Revision,
    ) -> Result<Option<KeyValue>, StoreError> {
        if revision > self.engine.revision() {
            self.barrier(Consistency::Linearizable).await?;
        }
        let key = key.to_string();
        let kv = self
            .blocking(move |engine| engine.get_at(&key, revision))
            .await?;
        kv.map(|kv| self.open(kv)).transpose()
    }

    /// One page of the keys under `prefix`. A continue token pins later pages to the first
    /// page's revision; `410`-style `Compacted` when that revision has been compacted.
    pub async fn list(
        &self,
        prefix: &str,
        options: ListOptions,
        consistency: Consistency,
    ) -> Result<ListPage, StoreError> {
        if options.continue_token.is_none() && options.revision.is_none() {
            self.barrier(consistency).await?;
        }
        let prefix = prefix.to_string();
        let mut page = self
            .blocking(move |engine| engine.list(&prefix, &options))
            .await?;
        if self.encryption.is_some() {
            page.items = page
                .items
                .into_iter()
                .map(|kv| self.open(kv))
                .collect::<Result<_, _>>()?;
        }
        Ok(page)
    }

    /// Whether linearizable requests can be served now: a leader is known and this replica
    /// has applied everything it committed.
    pub async fn ready(&self) -> bool {
        let barrier = self.replicator.read_barrier();
        matches!(
            tokio::time::timeout(READY_TIMEOUT, barrier).await,
            Ok(Ok(()))
        )
    }

    /// Events under `prefix` after revision `after`: history first, then live.
    pub fn watch(&self, prefix: &str, after: Revision) -> Result<Watcher, StoreError> {
        Ok(Watcher::new(self.engine.clone(), prefix, after)?
            .with_encryption(self.encryption.clone()))
    }
}

/// Maps a failed outcome to the error a caller of `key` sees.
fn outcome_error(key: &str, expected: Option<Revision>, outcome: CommandOutcome) -> StoreError {
    match outcome {
        CommandOutcome::AlreadyExists { current } => StoreError::AlreadyExists {
            key: key.to_string(),
            current: Box::new(current),
        },
        CommandOutcome::NotFound => StoreError::NotFound {
            key: key.to_string(),
        },
        CommandOutcome::Conflict { current } => StoreError::Conflict {
            key: key.to_string(),
            expected: expected.unwrap_or_default(),
            current: Box::new(current),
        },
        CommandOutcome::Rejected { reason } => StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        },
        other => StoreError::Internal(format!("unexpected outcome for {key:?}: {other:?}")),
    }
}

#[cfg(test)]
mod tests;
