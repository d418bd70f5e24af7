//! What the store tells an observer (the engine's metrics) about its work, and
//! the figures it reports on request: the committer's queue depth, RocksDB's
//! memory and the data directory's size.
//!
//! This module owns no metric format: it hands plain numbers to a
//! [`CommitObserver`] and answers [`Store::memory_usage`] /
//! [`Store::disk_bytes`]. An observer is called on the committer thread after
//! each group's write returned and before anyone of the group is answered, so
//! it must be cheap and must never block (atomics, no locks held for long, no
//! I/O).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::codec::cf;
use crate::store::Store;

/// One commit group, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommittedGroup {
    /// Requests in the group (appends, deletes, metadata writes), answered
    /// together.
    pub requests: usize,
    /// Events the group appended.
    pub events: usize,
    /// The group's RocksDB write: WAL append, memtable insert and, under
    /// [`crate::Durability::Sync`], the one WAL fsync the whole group shares.
    pub write: Duration,
    /// Whether that write synced the WAL.
    pub synced: bool,
}

/// Receives what the committer did. See the module docs for where it is
/// called and what it must not do.
pub trait CommitObserver: Send + Sync {
    /// A group's write returned successfully (a failed write poisons the
    /// store instead; see [`Store::poisoned`]).
    fn group_committed(&self, group: &CommittedGroup);
}

/// Memory RocksDB holds for the store, beside the process's own heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// Bytes in the block cache (decompressed data and index blocks, and the
    /// memtables' memory, which is charged to it).
    pub block_cache_bytes: u64,
    /// The block cache's capacity (it fills up to this and stays there).
    pub block_cache_capacity: u64,
    /// Bytes of the block cache pinned by open iterators and readers.
    pub block_cache_pinned_bytes: u64,
    /// Bytes of every memtable, active and immutable, of every column family
    /// (also counted in `block_cache_bytes`, where they are charged).
    pub memtable_bytes: u64,
    /// Bytes of SST index and filter blocks held outside the block cache.
    pub table_readers_bytes: u64,
}

impl MemoryUsage {
    /// Block cache (memtables included) + table readers: what RocksDB holds.
    pub fn total(&self) -> u64 {
        self.block_cache_bytes + self.table_readers_bytes
    }
}

impl Store {
    /// Sets the store's commit observer. Only the first call counts (the
    /// observer is read on the committer thread without a lock); returns
    /// whether this one did.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) -> bool {
        self.shared().observer.set(observer).is_ok()
    }

    /// Requests submitted and not yet taken by the writer: queued for the
    /// preparer, or prepared into the open group (`Shared::queued`).
    pub fn queue_depth(&self) -> usize {
        self.shared().queued.load(Ordering::Relaxed)
    }

    /// What RocksDB holds in memory now, all column families together.
    pub fn memory_usage(&self) -> MemoryUsage {
        let shared = self.shared();
        let sum_over_families = |property: &str| -> u64 {
            cf::ALL
                .iter()
                .filter_map(|name| {
                    shared
                        .db
                        .property_int_value_cf(shared.cf(name), property)
                        .ok()
                        .flatten()
                })
                .sum()
        };
        MemoryUsage {
            block_cache_bytes: shared.cache.get_usage() as u64,
            block_cache_capacity: shared.block_cache_capacity as u64,
            block_cache_pinned_bytes: shared.cache.get_pinned_usage() as u64,
            memtable_bytes: sum_over_families("rocksdb.cur-size-all-mem-tables"),
            table_readers_bytes: sum_over_families("rocksdb.estimate-table-readers-mem"),
        }
    }

    /// Bytes of every file in the data directory (SST files, write-ahead
    /// log, manifest, options), walked now. Files that vanish while it walks
    /// (a compaction finishing) are skipped.
    pub fn disk_bytes(&self) -> u64 {
        directory_bytes(self.path())
    }
}

/// Bytes of the regular files under `directory`, recursively; unreadable
/// entries count as 0.
fn directory_bytes(directory: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |meta| meta.len()),
            _ => 0,
        })
        .sum()
}
