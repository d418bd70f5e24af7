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

use std::sync::PoisonError;
use std::time::SystemTime;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use crate::codec::{self, SegmentCounter, cf, meta_key};
use crate::error::Result;
use crate::model::{ScavengeReport, category_of};
use crate::store::Store;

/// Records deleted per batch.
const CHUNK: usize = 4096;

impl Store {
    /// Removes hidden events now. Safe to run while the store serves reads and
    /// writes; one scavenge runs at a time (a second caller waits).
    pub fn scavenge(&self) -> Result<ScavengeReport> {
        let shared = self.shared();
        let _one_at_a_time = shared
            .scavenge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let head = shared.live.head();
        let now = SystemTime::now();
        let mut report = ScavengeReport::default();
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let segment_count = head.div_ceil(codec::SEGMENT_SIZE);
        for segment in 0..segment_count {
            report.segments += 1;
            let start = segment * codec::SEGMENT_SIZE;
            let end = (start + codec::SEGMENT_SIZE).min(head);
            let mut removed_here = (0u64, 0u64);
            let mut batch = WriteBatch::default();
            let mut in_batch = 0usize;
            let mode = IteratorMode::From(&codec::log_key(start), rocksdb::Direction::Forward);
            for item in shared.db.iterator_cf(shared.cf(cf::LOG), mode) {
                let (key, value) = item?;
                let position = codec::read_u64(&key);
                if position >= end {
                    break;
                }
                report.scanned += 1;
                let header = codec::decode_header(position, &value)?;
                let stream_id = {
                    let catalog = shared.catalog.read();
                    match catalog.get(header.stream) {
                        Some(record)
                            if !record.is_visible(header.revision, header.created, now) =>
                        {
                            Some(record.id)
                        }
                        _ => None,
                    }
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
                    )?;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                self.commit_removals(batch, segment, &mut removed_here, &mut report, &sync)?;
            }
        }
        if report.removed > 0 {
            for name in [
                cf::LOG,
                cf::STREAM_INDEX,
                cf::CATEGORY_INDEX,
                cf::TYPE_INDEX,
                cf::EVENT_IDS,
            ] {
                shared
                    .db
                    .compact_range_cf(shared.cf(name), None::<&[u8]>, None::<&[u8]>);
            }
        }
        tracing::info!(?report, "scavenge finished");
        Ok(report)
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
        *removed = (0, 0);
        Ok(())
    }
}
