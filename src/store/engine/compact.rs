//! Compaction: forgetting history at or below a revision, as etcd does.
//!
//! For every key changed at or below the target, versions older than its newest version at
//! or below the target are removed, and that newest version too if it is a tombstone. What
//! stays is exactly enough to rebuild the state at any revision above the target, and to give
//! every later event its previous value.

use redb::ReadableTable;

use super::apply::Tables;
use super::encoding::{version_key, VersionRecord};
use super::EngineError;
use crate::store::types::{CommandOutcome, Revision};

pub(super) fn compact(
    tables: &mut Tables<'_>,
    compact_revision: &mut Revision,
    current_revision: Revision,
    target: Revision,
) -> Result<CommandOutcome, EngineError> {
    if target <= *compact_revision || target > current_revision {
        return Ok(CommandOutcome::CompactionRefused {
            compact_revision: *compact_revision,
            current_revision,
        });
    }
    let changed: Vec<(Revision, String)> = tables
        .changes
        .range(*compact_revision + 1..=target)?
        .map(|entry| entry.map(|(rev, key)| (rev.value(), key.value().to_string())))
        .collect::<Result<_, _>>()?;
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
    tables
        .changes
        .retain_in(*compact_revision + 1..=target, |_, _| false)?;
    *compact_revision = target;
    Ok(CommandOutcome::Compacted { revision: target })
}
