//! A segmented, checksummed, append-only write-ahead log with group commit.
//!
//! Callers append numbered entries and small state blobs ("meta") and are told, through a
//! callback, when what they wrote is on disk. One writer thread owns the files: it takes every
//! request queued while the previous fsync ran, writes them with one `write` and makes them
//! durable with one `fdatasync` — the group commit that keeps flash writes per acknowledged
//! update low. Entries are readable as soon as `append` returns: recent ones from memory,
//! older ones from their segment file.
//!
//! Segments roll at a size limit and each new one starts with the current meta, so deleting
//! old segments after a purge never loses state. On open, a torn or corrupt tail of the last
//! segment is detected by checksum and cut off; damage anywhere else is an error, because
//! acknowledged entries may follow it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::record::{parse, Parsed, Record};

/// Called once what was written is durable (or failed to become so).
pub type Durable = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("log segment {path} is damaged at byte {offset} ({why}); acknowledged entries may follow it, refusing to guess")]
    Damaged {
        path: String,
        offset: u64,
        why: String,
    },
    #[error("log is inconsistent: {0}")]
    Inconsistent(String),
    #[error("log writer failed earlier: {0}")]
    Failed(String),
}

fn io_err(path: &Path, source: io::Error) -> WalError {
    WalError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is closed once it grows past this many bytes.
    pub segment_bytes: u64,
    /// Recent entries kept in memory (older ones are read back from disk).
    pub cache_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 16 << 20,
            cache_bytes: 8 << 20,
        }
    }
}

/// What was found on open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The newest meta blob (empty if none was ever written).
    pub meta: Bytes,
    /// Index range of the entries present.
    pub entries: Option<(u64, u64)>,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
}

struct Slot {
    segment: u64,
    offset: u64,
    len: u32,
    cached: Option<Bytes>,
}

struct Segment {
    path: PathBuf,
    reader: Arc<File>,
    /// Highest entry index still valid in this segment.
    max_index: Option<u64>,
}

struct State {
    /// Index of `slots[0]`.
    first: u64,
    /// No entry was ever appended: the first append chooses `first`.
    fresh: bool,
    slots: VecDeque<Slot>,
    meta: Bytes,
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Length of the active segment including queued writes.
    active_len: u64,
    /// Entries at or below this index are on disk.
    durable_index: Option<u64>,
    cache_bytes: usize,
    /// Slots before this position hold no cached payload.
    evict_from: u64,
    failed: Option<String>,
    stats: WalStats,
}

/// Counters of the writer, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// `fdatasync` calls made for writes.
    pub syncs: u64,
    /// Bytes handed to `write`.
    pub bytes_written: u64,
}

impl State {
    fn next_index(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        (!self.slots.is_empty()).then(|| self.next_index() - 1)
    }

    fn truncate(&mut self, since: u64) {
        if since < self.first {
            self.slots.clear();
            self.first = since;
        } else {
            self.slots.truncate((since - self.first) as usize);
        }
        self.cache_bytes = self
            .slots
            .iter()
            .filter_map(|s| s.cached.as_ref())
            .map(Bytes::len)
            .sum();
        self.evict_from = self.evict_from.min(since);
        if let Some(durable) = self.durable_index {
            self.durable_index = since.checked_sub(1).map(|last| durable.min(last));
        }
        for segment in self.segments.values_mut() {
            segment.max_index = match (segment.max_index, since.checked_sub(1)) {
                (Some(max), Some(last)) if max > last => Some(last),
                (Some(_), None) => None,
                (max, _) => max,
            };
        }
    }

    fn purge(&mut self, upto: u64) {
        while self.first <= upto && !self.slots.is_empty() {
            if let Some(bytes) = self.slots.pop_front().and_then(|s| s.cached) {
                self.cache_bytes -= bytes.len();
            }
            self.first += 1;
        }
        if self.slots.is_empty() && self.first <= upto {
            self.first = upto + 1;
        }
        self.fresh = false;
    }

    /// Drops cached payloads of durable entries, oldest first, down to the budget.
    fn evict(&mut self, budget: usize) {
        let Some(durable) = self.durable_index else {
            return;
        };
        self.evict_from = self.evict_from.max(self.first);
        while self.cache_bytes > budget && self.evict_from <= durable {
            let position = (self.evict_from - self.first) as usize;
            let Some(slot) = self.slots.get_mut(position) else {
                break;
            };
            if let Some(bytes) = slot.cached.take() {
                self.cache_bytes -= bytes.len();
            }
            self.evict_from += 1;
        }
    }

    /// Segments that may be deleted after a purge up to `upto`: a prefix of closed segments
    /// whose entries are all purged (a prefix, so no truncation record outlives what it
    /// truncated).
    fn purgeable(&self, upto: u64) -> Vec<u64> {
        self.segments
            .iter()
            .take_while(|(seq, segment)| {
                **seq < self.active && segment.max_index.is_none_or(|max| max <= upto)
            })
            .map(|(seq, _)| *seq)
            .collect()
    }
}

enum Op {
    Write {
        bytes: Vec<u8>,
        done: Option<Durable>,
        last_entry: Option<u64>,
    },
    Roll {
        file: File,
        header: Vec<u8>,
    },
    Delete(Vec<PathBuf>),
    Sync(Durable),
}

/// The write-ahead log. Shareable between threads; every method is non-blocking except
/// [`Wal::read`], which may read from disk.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    state: Arc<Mutex<State>>,
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens the log in `dir` (created if missing), recovering what is on disk.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();

        let mut state = State {
            first: 0,
            fresh: true,
            slots: VecDeque::new(),
            meta: Bytes::new(),
            segments: BTreeMap::new(),
            active: 0,
            active_len: 0,
            durable_index: None,
            cache_bytes: 0,
            evict_from: 0,
            failed: None,
            stats: WalStats::default(),
        };
        let mut recovered = Recovered::default();
        for (position, &seq) in seqs.iter().enumerate() {
            let last = position + 1 == seqs.len();
            let path = segment_path(dir, seq);
            let end = recover_segment(&path, seq, last, &mut state, &mut recovered)?;
            if last {
                state.active = seq;
                state.active_len = end;
            }
        }

        let active_file = if seqs.is_empty() {
            let seq = 1;
            let (file, header) = Self::create_segment(dir, seq, &mut state)?;
            let mut file = file;
            file.write_all(&header)
                .map_err(|e| io_err(&segment_path(dir, seq), e))?;
            file.sync_data()
                .map_err(|e| io_err(&segment_path(dir, seq), e))?;
            sync_dir(dir).map_err(|e| io_err(dir, e))?;
            state.active_len = header.len() as u64;
            file
        } else {
            let path = segment_path(dir, state.active);
            OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?
        };
        state.durable_index = state.last_index();
        state.evict_from = state.first;
        recovered.meta = state.meta.clone();
        recovered.entries = state.last_index().map(|last| (state.first, last));

        let state = Arc::new(Mutex::new(state));
        let (sender, receiver) = mpsc::channel();
        let writer = {
            let state = state.clone();
            let writer_dir = dir.to_path_buf();
            let budget = options.cache_bytes;
            std::thread::Builder::new()
                .name("kedge-wal".into())
                .spawn(move || writer_loop(receiver, state, active_file, writer_dir, budget))
                .map_err(|e| io_err(dir, e))?
        };
        Ok((
            Wal {
                dir: dir.to_path_buf(),
                options,
                state,
                ops: Mutex::new(Some(sender)),
                writer: Mutex::new(Some(writer)),
            },
            recovered,
        ))
    }

    /// Creates segment `seq` and registers it as active; returns the file and the header
    /// bytes (the current meta) that must start it.
    fn create_segment(
        dir: &Path,
        seq: u64,
        state: &mut State,
    ) -> Result<(File, Vec<u8>), WalError> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let reader = Arc::new(File::open(&path).map_err(|e| io_err(&path, e))?);
        state.segments.insert(
            seq,
            Segment {
                path,
                reader,
                max_index: None,
            },
        );
        state.active = seq;
        let header = Record::Meta(state.meta.clone()).encoded();
        state.active_len = header.len() as u64;
        Ok((file, header))
    }

    fn send(&self, op: Op) -> Result<(), WalError> {
        let ops = self.ops.lock().expect("wal ops");
        match ops.as_ref() {
            Some(sender) => sender
                .send(op)
                .map_err(|_| WalError::Failed("log writer stopped".into())),
            None => Err(WalError::Failed("log is closed".into())),
        }
    }

    /// Queues `bytes` (whole records) for the active segment, rolling to a new segment first
    /// when the active one is full. Called with the state locked, so queue order is log order.
    fn queue(
        &self,
        state: &mut State,
        bytes: Vec<u8>,
        done: Option<Durable>,
        last_entry: Option<u64>,
    ) -> Result<u64, WalError> {
        if let Some(why) = &state.failed {
            return Err(WalError::Failed(why.clone()));
        }
        if state.active_len >= self.options.segment_bytes {
            let (file, header) = Self::create_segment(&self.dir, state.active + 1, state)?;
            self.send(Op::Roll { file, header })?;
        }
        let offset = state.active_len;
        state.active_len += bytes.len() as u64;
        self.send(Op::Write {
            bytes,
            done,
            last_entry,
        })?;
        Ok(offset)
    }

    /// Appends entries, which must continue the log without a hole. They are readable when
    /// this returns; `done` runs once they are durable.
    pub fn append(&self, entries: Vec<(u64, Bytes)>, done: Durable) -> Result<(), WalError> {
        let mut state = self.state.lock().expect("wal state");
        let Some(&(first_index, _)) = entries.first() else {
            drop(state);
            return self.sync(done);
        };
        if state.fresh {
            state.first = first_index;
            state.evict_from = first_index;
            state.fresh = false;
        }
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for (expected, (index, payload)) in (state.next_index()..).zip(&entries) {
            if *index != expected {
                return Err(WalError::Inconsistent(format!(
                    "append of entry {index} where {expected} comes next"
                )));
            }
            let at = Record::Entry {
                index: *index,
                payload: payload.clone(),
            }
            .encode_into(&mut bytes);
            offsets.push(at as u64);
        }
        let last_index = entries.last().map(|(index, _)| *index);
        let base = self.queue(&mut state, bytes, Some(done), last_index)?;
        let segment = state.active;
        for ((_, payload), at) in entries.into_iter().zip(offsets) {
            state.cache_bytes += payload.len();
            state.slots.push_back(Slot {
                segment,
                offset: base + at,
                len: payload.len() as u32,
                cached: Some(payload),
            });
        }
        if let Some(active) = state.segments.get_mut(&segment) {
            active.max_index = last_index;
        }
        let budget = self.options.cache_bytes;
        state.evict(budget);
        Ok(())
    }

    /// Records the caller's state blob. With `done`, it is made durable and `done` runs after;
    /// without, it becomes durable with the next synced write.
    pub fn set_meta(&self, meta: Bytes, done: Option<Durable>) -> Result<(), WalError> {
        let mut state = self.state.lock().expect("wal state");
        let bytes = Record::Meta(meta.clone()).encoded();
        self.queue(&mut state, bytes, done, None)?;
        state.meta = meta;
        Ok(())
    }

    /// Removes entries at or after `since`.
    pub fn truncate(&self, since: u64) -> Result<(), WalError> {
        let mut state = self.state.lock().expect("wal state");
        self.queue(&mut state, Record::Truncate { since }.encoded(), None, None)?;
        state.truncate(since);
        Ok(())
    }

    /// Removes entries at or before `upto`, and deletes segments that hold nothing else.
    pub fn purge(&self, upto: u64) -> Result<(), WalError> {
        let mut state = self.state.lock().expect("wal state");
        self.queue(&mut state, Record::Purge { upto }.encoded(), None, None)?;
        state.purge(upto);
        let doomed = state.purgeable(upto);
        if !doomed.is_empty() {
            let paths = doomed
                .iter()
                .filter_map(|seq| state.segments.remove(seq).map(|s| s.path))
                .collect();
            self.send(Op::Delete(paths))?;
        }
        Ok(())
    }

    /// Runs `done` once everything queued so far is durable.
    pub fn sync(&self, done: Durable) -> Result<(), WalError> {
        self.send(Op::Sync(done))
    }

    /// Blocks until everything queued so far is durable.
    pub fn sync_blocking(&self) -> Result<(), WalError> {
        let (tx, rx) = mpsc::channel();
        self.sync(Box::new(move |result| {
            let _ = tx.send(result);
        }))?;
        rx.recv()
            .map_err(|_| WalError::Failed("log writer stopped".into()))?
            .map_err(|e| io_err(&self.dir, e))
    }

    /// The present entries in `range`, in order (entries that are gone are left out).
    pub fn read(&self, range: Range<u64>) -> Result<Vec<(u64, Bytes)>, WalError> {
        enum Source {
            Memory(Bytes),
            Disk(Arc<File>, PathBuf, u64, u32),
        }
        let sources: Vec<(u64, Source)> = {
            let state = self.state.lock().expect("wal state");
            let start = range.start.max(state.first);
            let end = range.end.min(state.next_index());
            let mut sources = Vec::with_capacity(end.saturating_sub(start) as usize);
            for index in start..end {
                let slot = &state.slots[(index - state.first) as usize];
                let source = match &slot.cached {
                    Some(bytes) => Source::Memory(bytes.clone()),
                    None => {
                        let segment = state.segments.get(&slot.segment).ok_or_else(|| {
                            WalError::Inconsistent(format!("entry {index} is in a deleted segment"))
                        })?;
                        Source::Disk(
                            segment.reader.clone(),
                            segment.path.clone(),
                            slot.offset,
                            slot.len,
                        )
                    }
                };
                sources.push((index, source));
            }
            sources
        };
        sources
            .into_iter()
            .map(|(index, source)| match source {
                Source::Memory(bytes) => Ok((index, bytes)),
                Source::Disk(file, path, offset, len) => {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, offset)
                        .map_err(|e| io_err(&path, e))?;
                    Ok((index, Bytes::from(buf)))
                }
            })
            .collect()
    }

    pub fn stats(&self) -> WalStats {
        self.state.lock().expect("wal state").stats
    }

    /// Index range of the present entries.
    pub fn entries(&self) -> Option<(u64, u64)> {
        let state = self.state.lock().expect("wal state");
        state.last_index().map(|last| (state.first, last))
    }

    /// Flushes everything and stops the writer thread. Later calls fail.
    pub fn close(&self) -> Result<(), WalError> {
        let result = self.sync_blocking();
        self.ops.lock().expect("wal ops").take();
        if let Some(writer) = self.writer.lock().expect("wal writer").take() {
            let _ = writer.join();
        }
        result
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.ops.lock().map(|mut ops| ops.take()).ok();
        if let Ok(mut writer) = self.writer.lock() {
            if let Some(writer) = writer.take() {
                let _ = writer.join();
            }
        }
    }
}

/// Replays one segment into `state`; returns the length of its valid data.
fn recover_segment(
    path: &Path,
    seq: u64,
    last: bool,
    state: &mut State,
    recovered: &mut Recovered,
) -> Result<u64, WalError> {
    let data = fs::read(path).map_err(|e| io_err(path, e))?;
    let mut at = 0usize;
    let mut max_index = None;
    loop {
        match parse(&data[at..]) {
            Parsed::End => break,
            Parsed::Damaged(why) => {
                if !last {
                    return Err(WalError::Damaged {
                        path: path.display().to_string(),
                        offset: at as u64,
                        why,
                    });
                }
                let cut = (data.len() - at) as u64;
                tracing::warn!(segment = %path.display(), offset = at, bytes = cut, %why, "cutting off a torn log tail");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_err(path, e))?;
                file.set_len(at as u64).map_err(|e| io_err(path, e))?;
                file.sync_all().map_err(|e| io_err(path, e))?;
                recovered.truncated_bytes += cut;
                break;
            }
            Parsed::Record {
                record,
                framed_len,
                payload_offset,
            } => {
                match record {
                    Record::Entry { index, payload } => {
                        if state.fresh {
                            state.first = index;
                            state.fresh = false;
                        }
                        if index != state.next_index() {
                            return Err(WalError::Inconsistent(format!(
                                "{} holds entry {index} where {} comes next",
                                path.display(),
                                state.next_index()
                            )));
                        }
                        state.slots.push_back(Slot {
                            segment: seq,
                            offset: (at + payload_offset) as u64,
                            len: payload.len() as u32,
                            cached: None,
                        });
                        max_index = Some(index);
                    }
                    Record::Meta(blob) => state.meta = blob,
                    Record::Truncate { since } => {
                        state.truncate(since);
                        max_index = max_index.map(|max: u64| max.min(since.saturating_sub(1)));
                    }
                    Record::Purge { upto } => state.purge(upto),
                }
                at += framed_len;
            }
        }
    }
    let reader = Arc::new(File::open(path).map_err(|e| io_err(path, e))?);
    state.segments.insert(
        seq,
        Segment {
            path: path.to_path_buf(),
            reader,
            max_index,
        },
    );
    Ok(at as u64)
}

/// The writer thread: group commit of everything queued while the previous fsync ran.
fn writer_loop(
    receiver: mpsc::Receiver<Op>,
    state: Arc<Mutex<State>>,
    mut file: File,
    dir: PathBuf,
    cache_budget: usize,
) {
    let mut buffer = Vec::new();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while let Ok(op) = receiver.try_recv() {
            batch.push(op);
        }
        let mut done = Vec::new();
        let mut need_sync = false;
        let mut durable_entry = None;
        let mut deletions = Vec::new();
        let mut result: io::Result<()> = Ok(());
        let mut written = 0u64;
        for op in batch {
            if result.is_err() {
                // Fail every waiter of this batch once something went wrong.
                match op {
                    Op::Write { done: Some(d), .. } | Op::Sync(d) => done.push(d),
                    _ => {}
                }
                continue;
            }
            match op {
                Op::Write {
                    bytes,
                    done: waiter,
                    last_entry,
                } => {
                    written += bytes.len() as u64;
                    buffer.extend_from_slice(&bytes);
                    if let Some(waiter) = waiter {
                        need_sync = true;
                        done.push(waiter);
                    }
                    if last_entry.is_some() {
                        durable_entry = last_entry;
                    }
                }
                Op::Roll { file: next, header } => {
                    result = flush(&mut file, &mut buffer)
                        .and_then(|_| file.sync_data())
                        .and_then(|_| sync_dir(&dir));
                    file = next;
                    written += header.len() as u64;
                    buffer.extend_from_slice(&header);
                    need_sync = true;
                }
                Op::Delete(paths) => deletions.extend(paths),
                Op::Sync(waiter) => {
                    need_sync = true;
                    done.push(waiter);
                }
            }
        }
        if result.is_ok() {
            result = flush(&mut file, &mut buffer);
        }
        if result.is_ok() && (need_sync || !deletions.is_empty()) {
            result = file.sync_data();
        }
        if result.is_ok() && !deletions.is_empty() {
            for doomed in &deletions {
                if let Err(e) = fs::remove_file(doomed) {
                    tracing::warn!(segment = %doomed.display(), error = %e, "could not delete a purged log segment");
                }
            }
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not sync the log directory");
            }
        }
        {
            let mut state = state.lock().expect("wal state");
            state.stats.bytes_written += written;
            match &result {
                Ok(()) => {
                    if need_sync {
                        state.stats.syncs += 1;
                        if let Some(index) = durable_entry {
                            state.durable_index = Some(index);
                        }
                        state.evict(cache_budget);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "writing the log failed; no more writes are accepted");
                    state.failed = Some(e.to_string());
                }
            }
        }
        for waiter in done {
            waiter(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
        if result.is_err() {
            buffer.clear();
        }
    }
    // Senders are gone: flush what is left so a clean close loses nothing.
    if flush(&mut file, &mut buffer)
        .and_then(|_| file.sync_data())
        .is_err()
    {
        tracing::error!("final flush of the log failed");
    }
}

fn flush(file: &mut File, buffer: &mut Vec<u8>) -> io::Result<()> {
    if !buffer.is_empty() {
        file.write_all(buffer)?;
        buffer.clear();
    }
    Ok(())
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
