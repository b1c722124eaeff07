//! Compaction: forgetting history at or below a revision, as etcd does.
//!
//! Logically it takes effect when the command is applied (reads of compacted revisions fail
//! from then on). Physically it happens at the next checkpoint: every write at or below the
//! target removes the versions of its key older than itself, and a deletion at or below the
//! target removes itself too. What stays is exactly enough to rebuild the state at any
//! revision above the target, and to give every later event its previous value.

use redb::ReadableTable;

use super::apply::Tables;
use super::encoding::{split_version_key, version_key, RevRecord};
use super::{EngineError, META_PHYSICAL_COMPACT};
use crate::store::types::{CommandOutcome, Revision};

/// Applies a `Compact` command to the engine's compacted revision.
pub(super) fn compact_logically(
    compact_revision: &mut Revision,
    current_revision: Revision,
    target: Revision,
) -> CommandOutcome {
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
pub(super) fn compact_physically(
    tables: &mut Tables<'_>,
    target: Revision,
) -> Result<(), EngineError> {
    let done = match tables.meta.get(META_PHYSICAL_COMPACT)? {
        Some(raw) => u64::from_le_bytes(
            raw.value()
                .try_into()
                .map_err(|_| EngineError::Corrupt("physical compaction revision".to_string()))?,
        ),
        None => 0,
    };
    if target <= done {
        return Ok(());
    }
    let written: Vec<(Revision, String, bool)> = tables
        .revs
        .range(done + 1..=target)?
        .map(|entry| {
            let (rev, raw) = entry?;
            let record = RevRecord::decode(raw.value()).ok_or_else(|| {
                EngineError::Corrupt(format!("record of revision {}", rev.value()))
            })?;
            Ok((rev.value(), record.key, record.tombstone))
        })
        .collect::<Result<_, EngineError>>()?;
    for (rev, key, tombstone) in written {
        let older: Vec<Vec<u8>> = tables
            .key_revs
            .range(version_key(&key, 0).as_slice()..version_key(&key, rev).as_slice())?
            .map(|entry| entry.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()?;
        for superseded in older {
            let (_, old_rev) = split_version_key(&superseded)
                .ok_or_else(|| EngineError::Corrupt(format!("history index of {key:?}")))?;
            tables.revs.remove(old_rev)?;
            tables.key_revs.remove(superseded.as_slice())?;
        }
        if tombstone {
            tables.revs.remove(rev)?;
            tables.key_revs.remove(version_key(&key, rev).as_slice())?;
        }
    }
    tables.set_meta_u64(META_PHYSICAL_COMPACT, target)
}
