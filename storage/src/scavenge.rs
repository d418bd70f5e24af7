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

use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use crate::catalog::Fill;
use crate::codec::{self, SegmentCounter, cf, meta_key};
use crate::error::{Error, Result};
use crate::model::{ScavengeReport, category_of};
use crate::store::Store;

/// Records deleted per batch.
const CHUNK: usize = 4096;

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
        if shared.clustered {
            // A scavenge deletes on this node only; replicated nodes would
            // then differ (server/CLUSTER.md, "Not built").
            return Err(Error::InvalidArgument(
                "scavenge is not available in cluster mode yet: it is not replicated".into(),
            ));
        }
        let _one_at_a_time = shared
            .scavenge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let head = shared.live.head();
        let now = SystemTime::now();
        let mut report = ScavengeReport::default();
        let mut stopped = false;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let segment_count = head.div_ceil(codec::SEGMENT_SIZE);
        progress
            .segments_total
            .store(segment_count, Ordering::Relaxed);
        'segments: for segment in 0..segment_count {
            report.segments += 1;
            let start = segment * codec::SEGMENT_SIZE;
            let end = (start + codec::SEGMENT_SIZE).min(head);
            let mut removed_here = (0u64, 0u64);
            let mut batch = WriteBatch::default();
            let mut in_batch = 0usize;
            let mode = IteratorMode::From(&codec::log_key(start), rocksdb::Direction::Forward);
            for item in shared.db.iterator_cf(shared.cf(cf::LOG), mode) {
                if progress.stop_requested() {
                    stopped = true;
                    if in_batch > 0 {
                        self.commit_removals(
                            std::mem::take(&mut batch),
                            segment,
                            &mut removed_here,
                            &mut report,
                            &sync,
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
                batch.delete_cf(shared.cf(cf::LOG), codec::log_key(position));
                batch.delete_cf(
                    shared.cf(cf::STREAM_INDEX),
                    codec::stream_index_key(stream_id, header.revision),
                );
                if let Some(category) = category_of(header.stream) {
                    batch.delete_cf(
                        shared.cf(cf::CATEGORY_INDEX),
                        codec::name_index_key(category, position),
                    );
                }
                batch.delete_cf(
                    shared.cf(cf::TYPE_INDEX),
                    codec::name_index_key(header.event_type, position),
                );
                for tag in header.tags(&value) {
                    batch.delete_cf(
                        shared.cf(cf::TAG_INDEX),
                        codec::name_index_key(tag, position),
                    );
                }
                batch.delete_cf(shared.cf(cf::EVENT_IDS), header.id.as_bytes());
                removed_here.0 += 1;
                removed_here.1 += value.len() as u64;
                in_batch += 1;
                if in_batch == CHUNK {
                    self.commit_removals(
                        std::mem::take(&mut batch),
                        segment,
                        &mut removed_here,
                        &mut report,
                        &sync,
                        progress,
                    )?;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                self.commit_removals(
                    batch,
                    segment,
                    &mut removed_here,
                    &mut report,
                    &sync,
                    progress,
                )?;
            }
            progress.segments_done.fetch_add(1, Ordering::Relaxed);
        }
        if report.removed > 0 && !stopped {
            for name in [
                cf::LOG,
                cf::STREAM_INDEX,
                cf::CATEGORY_INDEX,
                cf::TYPE_INDEX,
                cf::TAG_INDEX,
                cf::EVENT_IDS,
            ] {
                shared
                    .db
                    .compact_range_cf(shared.cf(name), None::<&[u8]>, None::<&[u8]>);
            }
        }
        tracing::info!(?report, stopped, "scavenge finished");
        Ok(ScavengeOutcome { report, stopped })
    }

    /// Writes one chunk of deletions with the segment's and the store's removal
    /// counters, synced.
    fn commit_removals(
        &self,
        mut batch: WriteBatch,
        segment: u64,
        removed: &mut (u64, u64),
        report: &mut ScavengeReport,
        sync: &WriteOptions,
        progress: &ScavengeProgress,
    ) -> Result<()> {
        let shared = self.shared();
        let segments = shared.cf(cf::SEGMENTS);
        let key = codec::segment_key(segment, SegmentCounter::Removed);
        let (events, bytes) = match shared.db.get_cf(segments, key)? {
            Some(value) => codec::decode_counts(&value)?,
            None => (0, 0),
        };
        batch.put_cf(
            segments,
            key,
            codec::encode_counts(events + removed.0, bytes + removed.1),
        );
        let mut total = shared
            .events_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        batch.put_cf(
            shared.cf(cf::META),
            meta_key::EVENTS_REMOVED,
            (*total + removed.0).to_be_bytes(),
        );
        shared.db.write_opt(batch, sync)?;
        *total += removed.0;
        report.removed += removed.0;
        report.bytes_removed += removed.1;
        progress.removed.fetch_add(removed.0, Ordering::Relaxed);
        progress
            .bytes_removed
            .fetch_add(removed.1, Ordering::Relaxed);
        *removed = (0, 0);
        Ok(())
    }
}
