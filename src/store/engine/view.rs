//! A consistent read view across the engine's layers: the active memtable, the memtable being
//! flushed (if any), and redb. Upper layers shadow lower ones; a key or revision that is in
//! two layers at once (a flush that committed but has not yet dropped its memtable) has the
//! same contents in both.

use redb::{ReadOnlyTable, ReadTransaction};

use super::encoding::{split_version_key, version_key, LiveMeta, RevRecord};
use super::memtable::Memtable;
use super::{EngineError, KEY_REVS, LIVE, REVS};
use crate::store::types::{KeyValue, Revision};

type Item<K, V> = Result<(K, V), EngineError>;
type Source<'a, K, V> = Box<dyn Iterator<Item = Item<K, V>> + 'a>;

/// Sorted merge of sorted sources; on equal keys the earliest source wins and the others'
/// entries are skipped.
struct Merge<'a, K, V> {
    sources: Vec<Source<'a, K, V>>,
    heads: Vec<Option<(K, V)>>,
    started: bool,
}

impl<'a, K: Ord, V> Merge<'a, K, V> {
    fn new(sources: Vec<Source<'a, K, V>>) -> Self {
        let heads = sources.iter().map(|_| None).collect();
        Merge {
            sources,
            heads,
            started: false,
        }
    }

    fn pull(&mut self, i: usize) -> Result<(), EngineError> {
        self.heads[i] = self.sources[i].next().transpose()?;
        Ok(())
    }
}

impl<K: Ord, V> Iterator for Merge<'_, K, V> {
    type Item = Item<K, V>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            if let Some((key, _)) = head {
                if best.is_none_or(|b| key < &self.heads[b].as_ref().expect("best has a head").0) {
                    best = Some(i);
                }
            }
        }
        let best = best?;
        let item = self.heads[best].take().expect("best has a head");
        for i in 0..self.heads.len() {
            if i != best
                && self.heads[i]
                    .as_ref()
                    .is_some_and(|(key, _)| *key == item.0)
            {
                if let Err(e) = self.pull(i) {
                    return Some(Err(e));
                }
            }
        }
        if let Err(e) = self.pull(best) {
            return Some(Err(e));
        }
        Some(Ok(item))
    }
}

/// Everything a read sees, fixed at one moment.
pub(super) struct View {
    /// Memtables, newest first.
    layers: Vec<Memtable>,
    live: ReadOnlyTable<&'static str, &'static [u8]>,
    revs: ReadOnlyTable<u64, &'static [u8]>,
    key_revs: ReadOnlyTable<&'static [u8], ()>,
    pub revision: Revision,
    pub compact_revision: Revision,
}

fn decode_live(key: &str, raw: &[u8]) -> Result<LiveMeta, EngineError> {
    LiveMeta::decode(raw).ok_or_else(|| EngineError::Corrupt(format!("live entry of {key:?}")))
}

fn decode_rev(revision: Revision, raw: &[u8]) -> Result<RevRecord, EngineError> {
    RevRecord::decode(raw)
        .ok_or_else(|| EngineError::Corrupt(format!("record of revision {revision}")))
}

impl View {
    pub fn new(
        layers: Vec<Memtable>,
        txn: &ReadTransaction,
        revision: Revision,
        compact_revision: Revision,
    ) -> Result<View, EngineError> {
        Ok(View {
            layers,
            live: txn.open_table(LIVE)?,
            revs: txn.open_table(REVS)?,
            key_revs: txn.open_table(KEY_REVS)?,
            revision,
            compact_revision,
        })
    }

    pub fn live_meta(&self, key: &str) -> Result<Option<LiveMeta>, EngineError> {
        for layer in &self.layers {
            if let Some(entry) = layer.live.get(key) {
                return Ok(*entry);
            }
        }
        match self.live.get(key)? {
            Some(raw) => decode_live(key, raw.value()).map(Some),
            None => Ok(None),
        }
    }

    /// What `revision` wrote.
    pub fn rev(&self, revision: Revision) -> Result<Option<RevRecord>, EngineError> {
        for layer in &self.layers {
            if let Some(raw) = layer.revs.get(&revision) {
                return decode_rev(revision, raw).map(Some);
            }
        }
        match self.revs.get(revision)? {
            Some(raw) => decode_rev(revision, raw.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The version of `key` written at `revision`.
    pub fn version(&self, key: &str, revision: Revision) -> Result<Option<RevRecord>, EngineError> {
        match self.rev(revision)? {
            Some(record) if record.key == key => Ok(Some(record)),
            Some(record) => Err(EngineError::Corrupt(format!(
                "revision {revision} wrote {:?}, not {key:?}",
                record.key
            ))),
            None => Ok(None),
        }
    }

    /// The current value of a live key.
    pub fn live(&self, key: &str) -> Result<Option<KeyValue>, EngineError> {
        let Some(meta) = self.live_meta(key)? else {
            return Ok(None);
        };
        let record = self.version(key, meta.mod_revision)?.ok_or_else(|| {
            EngineError::Corrupt(format!(
                "version {} of live key {key:?} is missing",
                meta.mod_revision
            ))
        })?;
        Ok(Some(record.into_key_value(meta.mod_revision)))
    }

    /// The newest version of `key` strictly below `before`, with its revision.
    pub fn version_before(
        &self,
        key: &str,
        before: Revision,
    ) -> Result<Option<(Revision, RevRecord)>, EngineError> {
        let (lower, upper) = (version_key(key, 0), version_key(key, before));
        let mut newest: Option<Revision> = None;
        let mut consider = |raw_key: &[u8]| -> Result<(), EngineError> {
            let (_, revision) = split_version_key(raw_key)
                .ok_or_else(|| EngineError::Corrupt(format!("history index of {key:?}")))?;
            newest = Some(newest.map_or(revision, |n| n.max(revision)));
            Ok(())
        };
        for layer in &self.layers {
            if let Some((raw_key, _)) = layer
                .key_revs
                .range(lower.clone()..upper.clone())
                .next_back()
            {
                consider(raw_key)?;
            }
        }
        if let Some(entry) = self
            .key_revs
            .range(lower.as_slice()..upper.as_slice())?
            .next_back()
        {
            consider(entry?.0.value())?;
        }
        let Some(revision) = newest else {
            return Ok(None);
        };
        let record = self.version(key, revision)?.ok_or_else(|| {
            EngineError::Corrupt(format!(
                "history of {key:?} names missing revision {revision}"
            ))
        })?;
        Ok(Some((revision, record)))
    }

    /// Live keys from `start` on, in order.
    pub fn live_range(
        &self,
        start: &str,
    ) -> Result<impl Iterator<Item = Item<String, LiveMeta>> + '_, EngineError> {
        let mut sources: Vec<Source<'_, String, Option<LiveMeta>>> = self
            .layers
            .iter()
            .map(|layer| {
                Box::new(
                    layer
                        .live
                        .range(start.to_string()..)
                        .map(|(k, v)| Ok((k.clone(), *v))),
                ) as Source<'_, String, Option<LiveMeta>>
            })
            .collect();
        sources.push(Box::new(self.live.range(start..)?.map(|entry| {
            let (key, raw) = entry?;
            let key = key.value().to_string();
            let meta = decode_live(&key, raw.value())?;
            Ok((key, Some(meta)))
        })));
        Ok(Merge::new(sources).filter_map(|item| match item {
            Ok((key, Some(meta))) => Some(Ok((key, meta))),
            Ok((_, None)) => None,
            Err(e) => Some(Err(e)),
        }))
    }

    /// `(key, revision)` of every version from version key `start` on, in key order.
    pub fn key_rev_range(
        &self,
        start: Vec<u8>,
    ) -> Result<impl Iterator<Item = Item<Vec<u8>, ()>> + '_, EngineError> {
        let mut sources: Vec<Source<'_, Vec<u8>, ()>> = self
            .layers
            .iter()
            .map(|layer| {
                Box::new(
                    layer
                        .key_revs
                        .range(start.clone()..)
                        .map(|(k, _)| Ok((k.clone(), ()))),
                ) as Source<'_, Vec<u8>, ()>
            })
            .collect();
        sources.push(Box::new(
            self.key_revs
                .range(start.as_slice()..)?
                .map(|entry| Ok((entry?.0.value().to_vec(), ()))),
        ));
        Ok(Merge::new(sources))
    }

    /// What every revision after `after` wrote, in revision order.
    pub fn rev_range(
        &self,
        after: Revision,
    ) -> Result<impl Iterator<Item = Item<u64, RevRecord>> + '_, EngineError> {
        let mut sources: Vec<Source<'_, u64, RevRecord>> = self
            .layers
            .iter()
            .map(|layer| {
                Box::new(
                    layer
                        .revs
                        .range(after + 1..)
                        .map(|(rev, raw)| Ok((*rev, decode_rev(*rev, raw)?))),
                ) as Source<'_, u64, RevRecord>
            })
            .collect();
        sources.push(Box::new(self.revs.range(after + 1..)?.map(|entry| {
            let (rev, raw) = entry?;
            Ok((rev.value(), decode_rev(rev.value(), raw.value())?))
        })));
        Ok(Merge::new(sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(items: &'static [(u32, &'static str)]) -> Source<'static, u32, &'static str> {
        Box::new(items.iter().copied().map(Ok))
    }

    #[test]
    fn merge_is_sorted_and_upper_sources_win() {
        let merged: Vec<_> = Merge::new(vec![
            source(&[(2, "top"), (5, "top")]),
            source(&[(1, "mid"), (2, "mid"), (7, "mid")]),
            source(&[(2, "low"), (3, "low"), (7, "low")]),
        ])
        .map(Result::unwrap)
        .collect();
        assert_eq!(
            merged,
            vec![(1, "mid"), (2, "top"), (3, "low"), (5, "top"), (7, "mid")]
        );
    }
}
