//! Compaction: forgetting history at or below a revision, as etcd does.
//!
//! Logically it takes effect when the command is applied (reads of compacted revisions fail
//! from then on). Physically it happens at the next checkpoint: for every key changed at or
//! below the target, versions older than its newest version at or below the target are
//! removed, and that newest version too if it is a tombstone. What stays is exactly enough
//! to rebuild the state at any revision above the target, and to give every later event its
//! previous value.

use redb::ReadableTable;

use super::apply::Tables;
use super::encoding::{version_key, VersionRecord};
use super::EngineError;
use crate::store::types::{CommandOutcome, Revision};

/// Applies a `Compact` command to the engine's compacted revision.
pub(super) fn compact_logically(compact_revision: &mut Revision, current_revision: Revision, target: Revision) -> CommandOutcome {
    if target <= *compact_revision || target > current_revision {
        return CommandOutcome::CompactionRefused {
            compact_revision: *compact_revision,
            current_revision,
        };
    }
    *compact_revision = target;
    CommandOutcome::Compacted { revision: target }
}

/// Removes from redb the history a compaction at `target` made unreachable.
pub(super) fn compact_physically(tables: &mut Tables<'_>, target: Revision) -> Result<(), EngineError> {
    let changed: Vec<(Revision, String)> = tables
        .changes
        .range(..=target)?
        .map(|entry| entry.map(|(rev, key)| (rev.value(), key.value().to_string())))
        .collect::<Result<_, _>>()?;
    if changed.is_empty() {
        return Ok(());
    }
    for (rev, key) in &changed {
        let newest = version_key(key, *rev);
        let oldest = version_key(key, 0);
        tables
            .versions
            .retain_in(oldest.as_slice()..newest.as_slice(), |_, _| false)?;
        let is_tombstone = tables
            .versions
            .get(newest.as_slice())?
            .is_some_and(|raw| VersionRecord::is_tombstone(raw.value()));
        if is_tombstone {
            tables.versions.remove(newest.as_slice())?;
        }
    }
    tables.changes.retain_in(..=target, |_, _| false)?;
    Ok(())
}
