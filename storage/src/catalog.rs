//! The stream catalog: a bounded cache of stream records (heads, states and
//! metadata) in front of the `streams` column family, and the one place that
//! decides whether an event is visible.
//!
//! The `streams` column family holds every stream's record (the committer puts
//! a changed record into its group's write batch); this module owns the cache
//! of the ones in use, bounded in entries and in bytes
//! ([`CatalogLimits`]), so memory depends on the working set and not on how
//! many streams ever existed. `Store::open` reads none of them.
//!
//! Invariants (each is relied on by a caller named here):
//!
//! 1. **The committer is the only writer, and it sees the latest record.** Its
//!    lookups ([`Catalog::get_latest`], behind `Committer::record`, which asks
//!    the group's overlay first) read the column family on a miss. The column
//!    family holds everything the committer wrote, because every write of an
//!    earlier group returned before it looks again; it then inserts what it
//!    read. After a group is durable it inserts every record the group changed
//!    ([`Catalog::apply`]), replacing any older copy, before the head is
//!    published. A committer that prepares a group while an earlier one is
//!    still being written must look in that group's changes first too: the
//!    column family does not hold them until its write returns.
//! 2. **A reader never inserts a stale record.** A reader's miss notes the
//!    cache's epoch (bumped by every [`Catalog::apply`], under the cache's
//!    lock), reads the column family from the live database (never from a
//!    snapshot, which could be older than the epoch it noted), and inserts the
//!    record only if the epoch is unchanged. A record read before a commit and
//!    inserted after the commit's apply would otherwise be served until
//!    evicted. A record read after the write but before the apply may be
//!    inserted: the apply replaces it with the same record.
//! 3. **Records can be newer than the reader's head.** A record in the cache or
//!    read from the column family may come from a group that is written but
//!    not yet published (the committer applies before it publishes, and its
//!    write lands in the column family before that). Readers therefore never
//!    take a bound on positions from a record: stream reads stop at the head
//!    they took (`read.rs`), index and query reads are bounded by it anyway,
//!    and visibility decided from a slightly newer record (a delete, a
//!    tombstone or metadata committed but not yet published) is accepted: the
//!    decision is the one every reader makes an instant later. Stream info and
//!    listings may likewise show a revision whose event is not yet readable.
//! 4. **No lock is held across a database read.** The cache's lock is taken
//!    for one lookup or one insert; a miss reads the column family without it.
//!    Walks over many streams (position-ordered pages, the scavenger) use
//!    [`Fill::No`], so one pass over the log does not evict the working set.
//! 5. **The stream count is derived, not stored.** Stream ids are assigned
//!    consecutively from 1 (`next_stream_id`, written in the same batch as the
//!    new record), an id is consumed only by a record that is written, and no
//!    record is ever removed (the scavenger deletes events, never a stream's
//!    record; a tombstone is a record), so there are `next_stream_id - 1`
//!    streams. [`Catalog::apply`] takes the committer's `next_stream_id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use lru::LruCache;
use rocksdb::DB;

use crate::codec::{StreamRecord, cf};
use crate::error::{Error, Result};
use crate::model::{CurrentRevision, StreamInfo, StreamState};

impl StreamRecord {
    /// The revision a writer's expectation is checked against.
    pub fn current(&self) -> CurrentRevision {
        if self.tombstoned || self.next_revision == 0 || self.deleted_before >= self.next_revision {
            CurrentRevision::NoStream
        } else {
            CurrentRevision::Revision(self.next_revision - 1)
        }
    }

    /// Live, soft-deleted or tombstoned.
    pub fn state(&self) -> StreamState {
        if self.tombstoned {
            StreamState::Tombstoned
        } else if self.next_revision > 0 && self.deleted_before >= self.next_revision {
            StreamState::SoftDeleted
        } else {
            StreamState::Live
        }
    }

    /// Every revision below this is hidden by a delete, `truncate_before` or
    /// `max_count`.
    pub fn first_visible_revision(&self) -> u64 {
        let by_count = self
            .metadata
            .max_count
            .map_or(0, |max_count| self.next_revision.saturating_sub(max_count));
        self.deleted_before
            .max(self.metadata.truncate_before.unwrap_or(0))
            .max(by_count)
    }

    /// Whether an event of this stream at `revision`, committed at `created`, is
    /// visible at `now`.
    pub fn is_visible(&self, revision: u64, created: SystemTime, now: SystemTime) -> bool {
        if self.tombstoned || revision < self.first_visible_revision() {
            return false;
        }
        match self.metadata.max_age {
            Some(max_age) => created
                .checked_add(max_age)
                .is_none_or(|expiry| expiry >= now),
            None => true,
        }
    }

    /// The public view of this record.
    pub fn info(&self, name: &str) -> StreamInfo {
        StreamInfo {
            name: name.to_owned(),
            state: self.state(),
            last_revision: self.next_revision.checked_sub(1),
            first_visible_revision: self.first_visible_revision(),
            metadata: self.metadata.clone(),
            metadata_revision: self.metadata_revision,
        }
    }
}

/// Bounds of the stream catalog's cache ([`crate::StoreOptions::catalog`]).
/// Whichever is reached first evicts the least recently used records; a
/// record that does not fit alone is not cached (it is read from the database
/// each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogLimits {
    /// Most stream records cached.
    pub max_streams: usize,
    /// Most bytes of cached records, each estimated as its name, its custom
    /// metadata and a fixed overhead per entry ([`ENTRY_OVERHEAD_BYTES`]).
    pub max_bytes: usize,
}

impl CatalogLimits {
    /// 100,000 streams or 64 MiB: a working set far larger than any group or
    /// read page, small beside the block cache on a 24 GiB machine.
    pub const DEFAULT: Self = Self {
        max_streams: 100_000,
        max_bytes: 64 * 1024 * 1024,
    };
}

impl Default for CatalogLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Bytes counted for one cached entry besides its name and custom metadata:
/// the key and record structs, the cache's list links and hash slot, and
/// allocator headers and rounding (an estimate, on the high side).
pub const ENTRY_OVERHEAD_BYTES: usize =
    std::mem::size_of::<String>() + std::mem::size_of::<StreamRecord>() + 96;

/// The bytes one cached record counts against [`CatalogLimits::max_bytes`].
pub(crate) fn record_bytes(name: &str, record: &StreamRecord) -> usize {
    name.len() + record.metadata.custom.as_ref().map_or(0, String::len) + ENTRY_OVERHEAD_BYTES
}

/// What the catalog's cache holds at one moment ([`crate::Store::catalog_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CatalogUsage {
    /// Stream records cached.
    pub streams: usize,
    /// Their bytes, as [`CatalogLimits::max_bytes`] counts them.
    pub bytes: usize,
}

/// Whether a lookup that misses may insert what it read (invariant 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Insert, if no apply happened since the lookup began (invariant 2).
    Yes,
    /// Never insert: a walk over many streams.
    No,
}

/// What a lookup found in the cache.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The cached record.
    Hit(StreamRecord),
    /// Not cached; `epoch` is the cache's epoch at the lookup.
    Miss { epoch: u64 },
}

/// The cache and its accounting, behind one lock.
struct Cached {
    records: LruCache<String, StreamRecord>,
    /// Sum of [`record_bytes`] over `records`.
    bytes: usize,
    /// Bumped by every apply (invariant 2).
    epoch: u64,
}

impl Cached {
    /// Inserts (or replaces) one record, first evicting the least recently
    /// used until it fits both bounds. A record larger than
    /// [`CatalogLimits::max_bytes`] alone is not cached, and any older copy of
    /// it is dropped either way.
    fn insert(&mut self, limits: &CatalogLimits, name: String, record: StreamRecord) {
        if let Some(old) = self.records.pop(&name) {
            self.bytes -= record_bytes(&name, &old);
        }
        let bytes = record_bytes(&name, &record);
        if bytes > limits.max_bytes || limits.max_streams == 0 {
            return;
        }
        while self.records.len() >= limits.max_streams || self.bytes + bytes > limits.max_bytes {
            let Some((evicted, record)) = self.records.pop_lru() else {
                break;
            };
            self.bytes -= record_bytes(&evicted, &record);
        }
        self.records.put(name, record);
        self.bytes += bytes;
    }
}

/// Stream records by name: a bounded cache over the `streams` column family.
pub(crate) struct Catalog {
    cached: Mutex<Cached>,
    limits: CatalogLimits,
    /// Streams that exist in any state (invariant 5), as of the last apply.
    stream_count: AtomicU64,
}

impl Catalog {
    /// An empty cache over a database whose `next_stream_id` is
    /// `next_stream_id` (the id the next new stream gets, at least 1).
    pub(crate) fn new(limits: CatalogLimits, next_stream_id: u64) -> Self {
        Self {
            cached: Mutex::new(Cached {
                records: LruCache::unbounded(),
                bytes: 0,
                epoch: 0,
            }),
            limits,
            stream_count: AtomicU64::new(next_stream_id.saturating_sub(1)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cached> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of one stream's record, for a reader (invariants 2 and 3).
    pub(crate) fn get(&self, db: &DB, name: &str, fill: Fill) -> Result<Option<StreamRecord>> {
        let epoch = match self.probe(name) {
            Probe::Hit(record) => return Ok(Some(record)),
            Probe::Miss { epoch } => epoch,
        };
        let record = load(db, name)?;
        if fill == Fill::Yes
            && let Some(record) = &record
        {
            self.fill(name, record, epoch);
        }
        Ok(record)
    }

    /// The latest record of a stream: the committer's lookup (invariant 1).
    /// Only the committer thread may call this: its answer is the latest
    /// only because nothing else writes the column family.
    pub(crate) fn get_latest(&self, db: &DB, name: &str) -> Result<Option<StreamRecord>> {
        if let Probe::Hit(record) = self.probe(name) {
            return Ok(Some(record));
        }
        let record = load(db, name)?;
        if let Some(record) = &record {
            self.lock()
                .insert(&self.limits, name.to_owned(), record.clone());
        }
        Ok(record)
    }

    /// Step 1 of a reader's lookup: the cached record, or the epoch to hand
    /// to [`Catalog::fill`] after reading the column family.
    pub(crate) fn probe(&self, name: &str) -> Probe {
        let mut cached = self.lock();
        match cached.records.get(name) {
            Some(record) => Probe::Hit(record.clone()),
            None => Probe::Miss {
                epoch: cached.epoch,
            },
        }
    }

    /// Step 3 of a reader's lookup: caches `record`, read from the column
    /// family after [`Catalog::probe`] returned `epoch`, unless an apply
    /// happened since (then the record may predate it; invariant 2).
    pub(crate) fn fill(&self, name: &str, record: &StreamRecord, epoch: u64) {
        let mut cached = self.lock();
        if cached.epoch == epoch {
            cached.insert(&self.limits, name.to_owned(), record.clone());
        }
    }

    /// Applies a durable group's changes (committer only, after the group's
    /// write returned and before its head is published): inserts every
    /// changed record and bumps the epoch under one lock. `next_stream_id` is
    /// the committer's, after the group.
    pub(crate) fn apply(&self, changes: HashMap<String, StreamRecord>, next_stream_id: u64) {
        let mut cached = self.lock();
        cached.epoch += 1;
        for (name, record) in changes {
            cached.insert(&self.limits, name, record);
        }
        drop(cached);
        self.stream_count
            .store(next_stream_id.saturating_sub(1), Ordering::Release);
    }

    /// Forgets every cached record (cluster mode: the database's contents
    /// were replaced by a snapshot). Bumps the epoch like an apply, so a
    /// reader's fill of a record read before the replacement is dropped.
    pub(crate) fn reset(&self, next_stream_id: u64) {
        let mut cached = self.lock();
        cached.epoch += 1;
        cached.records.clear();
        cached.bytes = 0;
        drop(cached);
        self.stream_count
            .store(next_stream_id.saturating_sub(1), Ordering::Release);
    }

    /// Streams that exist in any state (invariant 5).
    pub(crate) fn stream_count(&self) -> u64 {
        self.stream_count.load(Ordering::Acquire)
    }

    /// What the cache holds now.
    pub(crate) fn usage(&self) -> CatalogUsage {
        let cached = self.lock();
        CatalogUsage {
            streams: cached.records.len(),
            bytes: cached.bytes,
        }
    }
}

/// Reads one stream's record from the live database (never a snapshot:
/// invariant 2).
pub(crate) fn load(db: &DB, name: &str) -> Result<Option<StreamRecord>> {
    let streams = db
        .cf_handle(cf::STREAMS)
        .ok_or_else(|| Error::Io("streams column family missing".into()))?;
    match db.get_pinned_cf(streams, name.as_bytes())? {
        Some(value) => Ok(Some(StreamRecord::decode(name, &value)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::StreamMetadata;

    /// A database with only the `streams` column family, as the catalog sees it.
    fn streams_db() -> (tempfile::TempDir, DB) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path(), [cf::STREAMS]).expect("open");
        (dir, db)
    }

    /// The committer's write of one record (its group's batch, reduced to it).
    fn write(db: &DB, name: &str, record: &StreamRecord) {
        let streams = db.cf_handle(cf::STREAMS).expect("streams");
        db.put_cf(streams, name.as_bytes(), record.encode(name))
            .expect("put");
    }

    fn record(next_revision: u64) -> StreamRecord {
        StreamRecord {
            id: 1,
            next_revision,
            ..StreamRecord::default()
        }
    }

    /// Invariant 2, step by step: a reader misses, reads the record, then a
    /// group is written and applied, and only then does the reader try to
    /// cache what it read. Without the epoch check the old record would be
    /// served from then on.
    #[test]
    fn a_record_read_before_an_apply_is_never_cached_after_it() {
        let (_dir, db) = streams_db();
        let catalog = Catalog::new(CatalogLimits::default(), 2);
        write(&db, "s", &record(1));

        let Probe::Miss { epoch } = catalog.probe("s") else {
            panic!("nothing is cached yet");
        };
        let read = load(&db, "s").expect("load").expect("written");
        assert_eq!(read, record(1));

        write(&db, "s", &record(2));
        catalog.apply(HashMap::from([("s".to_owned(), record(2))]), 2);

        catalog.fill("s", &read, epoch);
        assert_eq!(
            catalog.get(&db, "s", Fill::Yes).expect("get"),
            Some(record(2))
        );
        assert_eq!(catalog.get_latest(&db, "s").expect("get"), Some(record(2)));

        // The same when the applied record was evicted before the late fill:
        // the cache then holds nothing for the stream and a reader goes to
        // the database.
        let catalog = Catalog::new(
            CatalogLimits {
                max_streams: 1,
                ..CatalogLimits::default()
            },
            2,
        );
        let Probe::Miss { epoch } = catalog.probe("s") else {
            panic!("nothing is cached yet");
        };
        let read = load(&db, "s").expect("load").expect("written");
        write(&db, "s", &record(3));
        catalog.apply(
            HashMap::from([("s".to_owned(), record(3)), ("t".to_owned(), record(1))]),
            3,
        );
        catalog.fill("s", &read, epoch);
        assert_eq!(
            catalog.get(&db, "s", Fill::Yes).expect("get"),
            Some(record(3))
        );
    }

    /// A reader's fill with no apply in between caches the record, which is
    /// then served without the database, and a later apply replaces it.
    #[test]
    fn a_fill_without_an_apply_caches_and_an_apply_replaces_it() {
        let (_dir, db) = streams_db();
        let catalog = Catalog::new(CatalogLimits::default(), 2);
        write(&db, "s", &record(1));
        assert_eq!(
            catalog.get(&db, "s", Fill::No).expect("get"),
            Some(record(1))
        );
        assert_eq!(catalog.usage().streams, 0, "Fill::No caches nothing");
        assert_eq!(
            catalog.get(&db, "s", Fill::Yes).expect("get"),
            Some(record(1))
        );
        assert_eq!(catalog.usage().streams, 1);
        assert!(matches!(catalog.probe("s"), Probe::Hit(cached) if cached == record(1)));

        // Written but not yet applied: a reader may see (and cache) the new
        // record already; the apply then stores the same one.
        write(&db, "t", &record(4));
        assert_eq!(
            catalog.get(&db, "t", Fill::Yes).expect("get"),
            Some(record(4))
        );
        catalog.apply(HashMap::from([("t".to_owned(), record(4))]), 3);
        assert!(matches!(catalog.probe("t"), Probe::Hit(cached) if cached == record(4)));
        assert_eq!(catalog.stream_count(), 2);
        assert_eq!(catalog.get(&db, "missing", Fill::Yes).expect("get"), None);
    }

    /// Both bounds hold, the least recently used record leaves first, and a
    /// replaced record's bytes are not counted twice.
    #[test]
    fn the_cache_keeps_both_bounds() {
        let limits = CatalogLimits {
            max_streams: 3,
            max_bytes: 3 * (ENTRY_OVERHEAD_BYTES + 1) + 100,
        };
        let catalog = Catalog::new(limits, 1);
        let apply = |name: &str, record: StreamRecord| {
            catalog.apply(HashMap::from([(name.to_owned(), record)]), 1);
        };
        for name in ["a", "b", "c"] {
            apply(name, record(1));
        }
        assert!(matches!(catalog.probe("a"), Probe::Hit(_)));
        apply("d", record(1));
        // "b" was the least recently used ("a" was just looked up).
        assert!(matches!(catalog.probe("b"), Probe::Miss { .. }));
        assert_eq!(catalog.usage().streams, 3);
        assert_eq!(catalog.usage().bytes, 3 * (ENTRY_OVERHEAD_BYTES + 1));
        apply("a", record(2));
        assert_eq!(catalog.usage().bytes, 3 * (ENTRY_OVERHEAD_BYTES + 1));

        // 160 bytes of custom metadata push the byte total past the bound: the
        // least recently used records go until it fits.
        let mut large = record(1);
        large.metadata.custom = Some("x".repeat(160));
        apply("e", large);
        let usage = catalog.usage();
        assert!(usage.bytes <= limits.max_bytes, "{usage:?}");
        assert_eq!(usage.streams, 2, "{usage:?}");
        assert!(matches!(catalog.probe("e"), Probe::Hit(_)));
        assert!(matches!(catalog.probe("a"), Probe::Hit(_)));

        // A record larger than the whole bound is not cached, and drops its
        // older copy rather than leave it behind.
        let mut huge = record(3);
        huge.metadata.custom = Some("x".repeat(limits.max_bytes));
        apply("a", huge);
        assert!(matches!(catalog.probe("a"), Probe::Miss { .. }));
        assert!(matches!(catalog.probe("e"), Probe::Hit(_)));
        assert_eq!(catalog.usage().streams, 1);
    }

    #[test]
    fn visibility_rules() {
        let now = SystemTime::now();
        let mut record = StreamRecord {
            id: 1,
            next_revision: 10,
            ..StreamRecord::default()
        };
        assert_eq!(record.current(), CurrentRevision::Revision(9));
        assert!(record.is_visible(0, now, now));
        record.metadata = StreamMetadata {
            max_count: Some(3),
            ..StreamMetadata::default()
        };
        assert_eq!(record.first_visible_revision(), 7);
        record.metadata.truncate_before = Some(8);
        assert_eq!(record.first_visible_revision(), 8);
        record.metadata.max_age = Some(Duration::from_secs(5));
        assert!(record.is_visible(9, now, now));
        assert!(!record.is_visible(9, now - Duration::from_secs(6), now));
        record.deleted_before = 10;
        assert_eq!(record.state(), StreamState::SoftDeleted);
        assert_eq!(record.current(), CurrentRevision::NoStream);
        record.next_revision = 11;
        assert_eq!(record.state(), StreamState::Live);
        assert_eq!(record.current(), CurrentRevision::Revision(10));
        record.tombstoned = true;
        assert!(!record.is_visible(10, now, now));
        assert_eq!(record.state(), StreamState::Tombstoned);
    }
}
