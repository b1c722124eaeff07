//! A store for unit tests: writes applied straight to a local engine, standing in for a
//! one-replica log (the real Raft path is covered by the integration tests).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Command, CommandOutcome, Engine, Replicator, Store, StoreError};

struct DirectReplicator {
    engine: Arc<Engine>,
    index: AtomicU64,
}

impl Replicator for DirectReplicator {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<CommandOutcome, StoreError>> {
        Box::pin(async move {
            let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
            let mut out = self
                .engine
                .apply_batch(&[Some(command)], &index.to_le_bytes())?;
            Ok(out.pop().flatten().expect("one outcome"))
        })
    }

    fn read_barrier(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A store in `dir` whose writes apply directly.
pub fn direct_store(dir: &Path) -> Store {
    let engine = Arc::new(Engine::open(&dir.join("state.redb"), 4 << 20).unwrap());
    let replicator = Arc::new(DirectReplicator {
        engine: engine.clone(),
        index: AtomicU64::new(0),
    });
    Store::new(engine, replicator)
}
