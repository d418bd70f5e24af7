//! Scavenge: physically removes events that reads already hide (deleted and
//! tombstoned streams, `truncate_before`, `max_count`, `max_age`).
//!
//! It walks the log one segment at a time, deletes each hidden record together
//! with its index entries and event-id entry in one synced batch per chunk, adds
//! the segment's `Removed` counters, and finally compacts so the space comes back.
//! Explicit deletes (rather than a compaction filter) keep every column family
//! consistent: an index entry never outlives its record for longer than one batch,
//! and readers skip a missing record anyway.
//!
//! It never touches a key the committer writes except to delete records that are
//! hidden, and hidden records stay hidden (visibility only shrinks, except when a
//! user loosens metadata, in which case the scavenge decided first).
//!
//! [`Store::scavenge_with`] reports progress through a shared
//! [`ScavengeProgress`] (atomics a status call reads at any time) and stops when
//! asked: the stop flag is checked before every record, and a stopped scavenge
//! first writes the deletions it already decided (one batch, with their
//! counters), so the store is as consistent as after any chunk; it then skips
//! the final compaction (RocksDB reclaims the space in its own compactions).
//! This module owns the scavenge's progress and report types; it must not
//! write anything but deletions of hidden records and the removal counters.
//!
//! **Cluster mode.** A scavenge runs on the leader only, and its decisions are
//! replicated, not its work: each chunk of deletions (with the counters) goes
//! through the committer as one request ([`Removals`]), so it becomes part of
//! a raft entry and every node deletes exactly the same keys at the same
//! point of the log. Nodes therefore stay identical, byte for byte, whatever
//! their clocks or their metadata timing; a follower never decides anything.
//! A chunk is durable when its entry is (a quorum's raft logs), and the
//! scavenge waits for each chunk to be applied here before it reads the
//! counters again. A stop, a leader change (the next chunk is refused with
//! `NotLeader`) or a crash leaves every node with the same prefix of chunks;
//! the space comes back on every node in its own compaction
//! ([`Store::compact_after_removals`], which the engine runs once removals
//! stop arriving).

use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use crate::catalog::Fill;
use crate::codec::{self, SegmentCounter, cf, meta_key};
use crate::error::Result;
use crate::model::{ScavengeReport, category_of};
use crate::store::Store;

/// Records deleted per batch.
const CHUNK: usize = 4096;

/// The column families a scavenge deletes from, compacted after it.
const SCAVENGED_FAMILIES: [&str; 6] = [
    cf::LOG,
    cf::STREAM_INDEX,
    cf::CATEGORY_INDEX,
    cf::TYPE_INDEX,
    cf::TAG_INDEX,
    cf::EVENT_IDS,
];

/// One chunk of a scavenge's decisions: the keys to delete and the counters
/// to put, by column family name. Built by the scavenge; written as one
/// batch on a single node, and handed to the committer in cluster mode
/// (module docs), which adds it to a group unchanged.
#[derive(Debug, Default)]
pub(crate) struct Removals {
    deletes: Vec<(&'static str, Vec<u8>)>,
    puts: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    /// Key bytes held, for the committer's group byte limit.
    bytes: usize,
}

impl Removals {
    fn delete(&mut self, family: &'static str, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.bytes += key.len() + 16;
        self.deletes.push((family, key));
    }

    fn put(&mut self, family: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len() + 16;
        self.puts.push((family, key, value));
    }

    /// How many bytes of keys and values the chunk carries.
    pub(crate) fn size(&self) -> usize {
        self.bytes
    }

    /// Adds every deletion, then every put, to `batch`.
    pub(crate) fn add_to(&self, batch: &mut WriteBatch, shared: &crate::store::Shared) {
        for (family, key) in &self.deletes {
            batch.delete_cf(shared.cf(family), key);
        }
        for (family, key, value) in &self.puts {
            batch.put_cf(shared.cf(family), key, value);
        }
    }
}

/// How long no replicated removal must have arrived before a clustered
/// node compacts ([`Store::compact_after_removals`]): a running scavenge
/// sends a chunk far more often than this.
pub const REMOVALS_QUIET: Duration = Duration::from_secs(2);

/// A running scavenge's progress, shared between the scavenge (which updates
/// it) and whoever watches or stops it. Every counter only grows during one
/// run; [`ScavengeProgress::snapshot`] reads them without locking.
#[derive(Debug, Default)]
pub struct ScavengeProgress {
    segments_total: AtomicU64,
    segments_done: AtomicU64,
    scanned: AtomicU64,
    removed: AtomicU64,
    bytes_removed: AtomicU64,
    stop: AtomicBool,
}

/// A copy of a [`ScavengeProgress`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScavengeProgressSnapshot {
    /// Segments below the head when the scavenge started (what it will walk).
    pub segments_total: u64,
    /// Segments walked to their end.
    pub segments_done: u64,
    /// Records examined.
    pub scanned: u64,
    /// Hidden records removed (committed deletions only).
    pub removed: u64,
    /// Record bytes removed (committed deletions only).
    pub bytes_removed: u64,
    /// Whether a stop was asked for.
    pub stop_requested: bool,
}

impl ScavengeProgress {
    /// Fresh progress: nothing done, no stop asked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the scavenge using this progress to stop at the next record. It
    /// writes what it already decided and returns with `stopped` set.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether [`ScavengeProgress::request_stop`] was called.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The counters now.
    pub fn snapshot(&self) -> ScavengeProgressSnapshot {
        ScavengeProgressSnapshot {
            segments_total: self.segments_total.load(Ordering::Relaxed),
            segments_done: self.segments_done.load(Ordering::Relaxed),
            scanned: self.scanned.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
            bytes_removed: self.bytes_removed.load(Ordering::Relaxed),
            stop_requested: self.stop_requested(),
        }
    }
}

/// What [`Store::scavenge_with`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScavengeOutcome {
    /// The counts (of a stopped scavenge: up to where it stopped).
    pub report: ScavengeReport,
    /// True when it ended early because a stop was asked for; every deletion it
    /// counted was written, the rest of the log was not examined, and the final
    /// compaction was skipped.
    pub stopped: bool,
}

impl Store {
    /// Removes hidden events now. Safe to run while the store serves reads and
    /// writes; one scavenge runs at a time (a second caller waits).
    pub fn scavenge(&self) -> Result<ScavengeReport> {
        Ok(self.scavenge_with(&ScavengeProgress::new())?.report)
    }

    /// [`Store::scavenge`] reporting into `progress` and stopping when
    /// [`ScavengeProgress::request_stop`] is called (a stop asked before it
    /// starts ends it at once, having removed nothing). One scavenge runs at a
    /// time: a second caller waits for the first.
    pub fn scavenge_with(&self, progress: &ScavengeProgress) -> Result<ScavengeOutcome> {
        let shared = self.shared();
        if shared.clustered
            && let Some(refusal) = self.write_refusal()
        {
            // Only the leader decides what to remove (module docs).
            return Err(refusal);
        }
        let _one_at_a_time = shared
            .scavenge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let head = shared.live.head();
        let now = SystemTime::now();
        let mut report = ScavengeReport::default();
        let mut stopped = false;
        let segment_count = head.div_ceil(codec::SEGMENT_SIZE);
        progress
            .segments_total
            .store(segment_count, Ordering::Relaxed);
        'segments: for segment in 0..segment_count {
            report.segments += 1;
            let start = segment * codec::SEGMENT_SIZE;
            let end = (start + codec::SEGMENT_SIZE).min(head);
            let mut removed_here = (0u64, 0u64);
            let mut removals = Removals::default();
            let mut in_batch = 0usize;
            let mode = IteratorMode::From(&codec::log_key(start), rocksdb::Direction::Forward);
            for item in shared.db.iterator_cf(shared.cf(cf::LOG), mode) {
                if progress.stop_requested() {
                    stopped = true;
                    if in_batch > 0 {
                        self.commit_removals(
                            std::mem::take(&mut removals),
                            segment,
                            &mut removed_here,
                            &mut report,
                            progress,
                        )?;
                    }
                    break 'segments;
                }
                let (key, value) = item?;
                let position = codec::read_u64(&key);
                if position >= end {
                    break;
                }
                report.scanned += 1;
                progress.scanned.fetch_add(1, Ordering::Relaxed);
                let header = codec::decode_header(position, &value)?;
                // One lookup per record, no lock held across the database
                // read of a miss, and nothing put into the cache (a walk over
                // every stream must not evict the working set). The record
                // may be newer than `head` (`catalog.rs`, invariant 3): a
                // delete that is durable but not yet published already counts,
                // which is the decision every reader makes an instant later.
                let stream_id = match shared.catalog.get(&shared.db, header.stream, Fill::No)? {
                    Some(record) if !record.is_visible(header.revision, header.created, now) => {
                        Some(record.id)
                    }
                    _ => None,
                };
                let Some(stream_id) = stream_id else { continue };
                removals.delete(cf::LOG, codec::log_key(position));
                removals.delete(
                    cf::STREAM_INDEX,
                    codec::stream_index_key(stream_id, header.revision),
                );
                if let Some(category) = category_of(header.stream) {
                    removals.delete(
                        cf::CATEGORY_INDEX,
                        codec::name_index_key(category, position),
                    );
                }
                removals.delete(
                    cf::TYPE_INDEX,
                    codec::name_index_key(header.event_type, position),
                );
                for tag in header.tags(&value) {
                    removals.delete(cf::TAG_INDEX, codec::name_index_key(tag, position));
                }
                removals.delete(cf::EVENT_IDS, header.id.as_bytes().to_vec());
                removed_here.0 += 1;
                removed_here.1 += value.len() as u64;
                in_batch += 1;
                if in_batch == CHUNK {
                    self.commit_removals(
                        std::mem::take(&mut removals),
                        segment,
                        &mut removed_here,
                        &mut report,
                        progress,
                    )?;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                self.commit_removals(removals, segment, &mut removed_here, &mut report, progress)?;
            }
            progress.segments_done.fetch_add(1, Ordering::Relaxed);
        }
        // A clustered node compacts once the replicated removals stop
        // arriving (`compact_after_removals`), the leader included.
        if report.removed > 0 && !stopped && !shared.clustered {
            self.compact_scavenged();
        }
        tracing::info!(?report, stopped, "scavenge finished");
        Ok(ScavengeOutcome { report, stopped })
    }

    /// Writes one chunk of deletions with the segment's and the store's removal
    /// counters: synced, on a single node; through the committer, and so
    /// through the raft log, in cluster mode (module docs), returning once it
    /// is applied here.
    fn commit_removals(
        &self,
        mut removals: Removals,
        segment: u64,
        removed: &mut (u64, u64),
        report: &mut ScavengeReport,
        progress: &ScavengeProgress,
    ) -> Result<()> {
        let shared = self.shared();
        let key = codec::segment_key(segment, SegmentCounter::Removed);
        let (events, bytes) = match shared.db.get_cf(shared.cf(cf::SEGMENTS), key)? {
            Some(value) => codec::decode_counts(&value)?,
            None => (0, 0),
        };
        removals.put(
            cf::SEGMENTS,
            key,
            codec::encode_counts(events + removed.0, bytes + removed.1),
        );
        // Only scavenges change the total, one at a time (`scavenge_lock`).
        let total = *shared
            .events_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            + removed.0;
        removals.put(cf::META, meta_key::EVENTS_REMOVED, total.to_be_bytes());
        if shared.clustered {
            // Applying the entry sets the store's total from the stored one
            // (`Store::apply_replicated`), on this node as on the others.
            self.submit_removals(removals).wait()?;
        } else {
            let mut batch = WriteBatch::default();
            removals.add_to(&mut batch, shared);
            let mut sync = WriteOptions::default();
            sync.set_sync(true);
            shared.db.write_opt(batch, &sync)?;
            *shared
                .events_removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = total;
        }
        report.removed += removed.0;
        report.bytes_removed += removed.1;
        progress.removed.fetch_add(removed.0, Ordering::Relaxed);
        progress
            .bytes_removed
            .fetch_add(removed.1, Ordering::Relaxed);
        *removed = (0, 0);
        Ok(())
    }

    /// Compacts every column family a scavenge deletes from, so the space of
    /// the deleted records comes back.
    fn compact_scavenged(&self) {
        let shared = self.shared();
        for name in SCAVENGED_FAMILIES {
            shared
                .db
                .compact_range_cf(shared.cf(name), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Cluster mode: compacts once replicated removals (a scavenge's chunks,
    /// on any node) were applied and none arrived for `quiet`. Returns whether
    /// it compacted. Blocks for the compaction: call it off the async
    /// threads. A single-node scavenge compacts by itself and never makes
    /// this do anything.
    pub fn compact_after_removals(&self, quiet: Duration) -> bool {
        let shared = self.shared();
        {
            let mut last = shared
                .removals_applied_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match *last {
                Some(at) if at.elapsed() >= quiet => *last = None,
                _ => return false,
            }
        }
        tracing::info!("compacting after replicated scavenge removals");
        self.compact_scavenged();
        true
    }

    /// Notes that a replicated group removed events here (called by apply).
    pub(crate) fn note_removals_applied(&self) {
        *self
            .shared()
            .removals_applied_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}
