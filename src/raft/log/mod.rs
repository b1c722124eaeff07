//! The Raft log: a segmented, checksummed, append-only file with group commit ([`wal`]),
//! and the openraft log storage on top of it ([`LogStore`]).

mod record;
mod storage;
pub mod wal;

pub use storage::LogStore;
