//! `Store`: opening the database, recovering state, and the public API that
//! routes writes to the committer and runs reads on the caller's thread.
//!
//! Writes never block the caller: a request goes into a bounded queue with
//! `try_send`, and a full queue answers at once with `Error::Overloaded`. The
//! store is fail-stop: after a failed RocksDB write or a panic in the committer it
//! is poisoned, and every write request, queued or new, gets `Error::Poisoned`
//! until the process reopens the directory. Reads keep working on what was
//! acknowledged. `StoreOptions::write_fault` is the seam tests use to reach those
//! paths.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    DBRecoveryMode, IteratorMode, Options, WriteBufferManager,
};

use crate::catalog::{Catalog, CatalogLimits, CatalogUsage, Fill};
use crate::codec::{self, FORMAT_VERSION, OLDEST_MIGRATED_FORMAT, SegmentCounter, cf, meta_key};
use crate::committer::{
    AppendReply, Command, Committer, DEFAULT_REPLICATED_GROUPS_IN_FLIGHT, GroupLimits,
};
use crate::error::{Error, Result};
use crate::live::{Live, RingLimits};
use crate::model::{
    AppendResult, CurrentRevision, ExpectedRevision, Limits, SegmentStats, StoreInfo, StreamAppend,
    StreamInfo, StreamMetadata, validate_stored_stream_name,
};
use crate::query::AppendCondition;
use crate::ticket::{self, Ticket};

/// When an append is acknowledged, relative to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The WAL is fsynced (fdatasync) once per group before anyone in the group is
    /// answered. An acknowledged append survives a process kill and a power loss.
    #[default]
    Sync,
    /// The WAL is written to the OS but not synced. An acknowledged append survives
    /// a process kill (the OS still has it) but NOT a power loss or kernel crash.
    /// For tests and benchmarks labelled "not durable".
    Unsynced,
}

/// What a [`WriteFault`] is told about the group whose write it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteFaultContext {
    /// Requests in the group, also those that failed their checks (they write
    /// nothing but are answered with the group).
    pub requests: usize,
    /// Events the group appends.
    pub events: usize,
    /// The position the group's first event gets (the head before the group).
    pub first_position: u64,
}

/// Test seam around the committer's write: a hook called once for every group
/// that writes something, right before its RocksDB `WriteBatch` would be
/// written.
///
/// When it returns `Some(message)`, the committer treats the group's RocksDB write
/// as failed with that message: nothing of the group is written, and the store
/// takes its fail-stop path (every request of the group and every later one gets
/// [`Error::Poisoned`]). When it returns `None`, the real write happens. When it
/// panics, it simulates a panicking committer, which poisons the store the same
/// way. It runs on the committer thread, so blocking in it holds up every writer
/// (tests use that to fill the queue). Production code leaves
/// [`StoreOptions::write_fault`] at `None`.
#[derive(Clone)]
pub struct WriteFault(Arc<WriteFaultHook>);

/// The hook inside a [`WriteFault`].
type WriteFaultHook = dyn Fn(&WriteFaultContext) -> Option<String> + Send + Sync;

impl WriteFault {
    /// Wraps `hook`; see [`WriteFault`] for what its answer means.
    pub fn new(
        hook: impl Fn(&WriteFaultContext) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(hook))
    }

    /// Asks the hook about one group's write.
    pub(crate) fn check(&self, context: &WriteFaultContext) -> Option<String> {
        (self.0)(context)
    }
}

impl std::fmt::Debug for WriteFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteFault(..)")
    }
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Durability of acknowledged appends.
    pub durability: Durability,
    /// Request size limits.
    pub limits: Limits,
    /// Bounds of the in-memory ring of recent events.
    pub ring: RingLimits,
    /// Bounds of the stream catalog's cache of stream records (heads, states,
    /// metadata). Every record stays in the database; these bound only the
    /// memory of the ones in use, so a store of any number of streams opens
    /// and runs in the same memory. A stream outside the cache costs one
    /// RocksDB read (usually from the block cache) when it is next used.
    pub catalog: CatalogLimits,
    /// Requests waiting for the committer. A request that finds the queue full
    /// is answered at once with [`Error::Overloaded`]; callers never block.
    pub queue_capacity: usize,
    /// Most requests committed in one group.
    pub max_group_requests: usize,
    /// Most payload bytes committed in one group (a single larger request still
    /// forms a group of its own).
    pub max_group_bytes: usize,
    /// What RocksDB may hold in memory, bytes: its block cache, which also
    /// carries the memtables (a write buffer manager charges their memory to
    /// the cache and flushes once they pass a quarter of it). Without
    /// the charge each of the nine column families kept up to two 64 MiB
    /// memtables of its own beside the cache: 120 MiB of memtables over a
    /// 256 MiB cache at 5,000,000 streams (`cairn-bench scale`).
    pub block_cache_bytes: usize,
    /// Write-ahead log kept on disk, bytes. A WAL file is deleted only once
    /// every column family with data in it has flushed, and the small ones
    /// (stream and index keys) fill their memtables slowly: without this cap
    /// the WAL grew with every event (530 MB of WAL for 1,000,000 one-event
    /// streams, against 150 bytes per event in SST files). Past it, RocksDB
    /// flushes the column families that hold the oldest file.
    pub max_wal_bytes: u64,
    /// Test seam: when it returns `Some(message)`, the committer treats the
    /// group's RocksDB write as failed with that message (and a panic in it is a
    /// panicking committer). See [`WriteFault`]. `None` outside tests.
    pub write_fault: Option<WriteFault>,
    /// Cluster mode: the committer hands every sealed group to the
    /// [`Replicator`](crate::Replicator) attached with
    /// [`Store::attach_replicator`] instead of writing it, and the store
    /// refuses writes ([`Error::NotLeader`]) until [`Store::lead`]. `false`:
    /// today's single-node path, no replication code runs.
    pub clustered: bool,
    /// Cluster mode: how many proposed groups may wait for their quorum at
    /// once (at least 1; a single node always keeps one group in flight).
    /// See [`DEFAULT_REPLICATED_GROUPS_IN_FLIGHT`] for the trade-off.
    pub replicated_groups_in_flight: usize,
}

/// The memtables together may use 1/`MEMTABLE_SHARE` of
/// [`StoreOptions::block_cache_bytes`] before RocksDB flushes one.
const MEMTABLE_SHARE: usize = 4;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            limits: Limits::default(),
            ring: RingLimits::default(),
            catalog: CatalogLimits::default(),
            queue_capacity: 8192,
            max_group_requests: 2048,
            max_group_bytes: 32 * 1024 * 1024,
            block_cache_bytes: 256 * 1024 * 1024,
            max_wal_bytes: 128 * 1024 * 1024,
            write_fault: None,
            clustered: false,
            replicated_groups_in_flight: DEFAULT_REPLICATED_GROUPS_IN_FLIGHT,
        }
    }
}

/// State shared by the committer, readers and the scavenger.
pub(crate) struct Shared {
    pub(crate) db: DB,
    pub(crate) catalog: Catalog,
    pub(crate) live: Live,
    pub(crate) durability: Durability,
    pub(crate) limits: Limits,
    /// Events removed by scavenges (for `info`).
    pub(crate) events_removed: Mutex<u64>,
    /// Serialises scavenges.
    pub(crate) scavenge_lock: Mutex<()>,
    /// Cluster mode: when a replicated group last removed events here, until
    /// the compaction after it (`Store::compact_after_removals`).
    pub(crate) removals_applied_at: Mutex<Option<std::time::Instant>>,
    /// What reads did (`Store::read_stats`).
    pub(crate) reads: crate::read::ReadCounters,
    /// The block cache every column family shares (`Store::memory_usage`).
    pub(crate) cache: Cache,
    /// Its configured capacity, bytes.
    pub(crate) block_cache_capacity: usize,
    /// Told of every committed group (`Store::observe_commits`); set once.
    pub(crate) observer: std::sync::OnceLock<Arc<dyn crate::observe::CommitObserver>>,
    /// Requests waiting for a write: raised when one is queued, lowered when
    /// the committer's writer takes the group holding it, or when it is
    /// answered without one (`Store::queue_depth`). The queue's bound applies
    /// to this count, so requests the preparer already took into the open
    /// group still count against it.
    pub(crate) queued: std::sync::atomic::AtomicUsize,
    /// `StoreOptions::clustered`.
    pub(crate) clustered: bool,
    /// Cluster mode: where sealed groups go (`Store::attach_replicator`).
    pub(crate) replicator: std::sync::OnceLock<Arc<dyn crate::replication::Replicator>>,
    /// Fingerprint of this database's column family ids (`replication.rs`):
    /// a replicated batch names column families by id, so every node must
    /// number them alike.
    pub(crate) cf_layout: u32,
    /// Cluster mode: the head after the last applied replicated group; the
    /// next one must start there. Also serialises applies.
    pub(crate) applied_head: Mutex<u64>,
}

impl Shared {
    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        // Every column family in `cf::ALL` is created at open; a missing one is a
        // programming error, not a runtime condition.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family '{name}' was opened"))
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` once shutdown began.
    queue: Mutex<Option<SyncSender<Command>>>,
    /// The queue's bound, for `Error::Overloaded`.
    queue_capacity: usize,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// Set by the committer after a failed write or a panic (fail-stop).
    poison: Arc<Mutex<Option<Error>>>,
    /// The pipeline, for cluster mode's step-down (`Store::follow`).
    control: crate::committer::Control,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_committer();
    }
}

impl Inner {
    fn stop_committer(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the committer thread panicked");
        }
    }
}

/// A handle to an open event store. Cheap to clone; all clones share one database
/// and one committer. The committer stops when [`Store::shutdown`] is called or the
/// last clone is dropped, after answering everything already queued.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The database-wide RocksDB options of every open of a data directory, with
/// the given WAL recovery mode (`FORMAT.md`, "Recovery").
pub(crate) fn database_options(recovery: DBRecoveryMode) -> Options {
    let mut options = Options::default();
    options.set_max_background_jobs(2);
    options.set_bytes_per_sync(1 << 20);
    // RocksDB's default, set because the WAL checks depend on it: without it a
    // corrupt WAL record is dropped with a log line, in every recovery mode.
    options.set_paranoid_checks(true);
    options.set_wal_recovery_mode(recovery);
    options
}

/// Opens the database in `path` with every column family, turning RocksDB's
/// errors about damage and the directory lock into [`Error::Damaged`] and
/// [`Error::InUse`].
pub(crate) fn open_database(path: &Path, options: &Options, cache: &Cache) -> Result<DB> {
    let descriptors = cf::ALL
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, column_family_options(name, cache)));
    DB::open_cf_descriptors(options, path, descriptors).map_err(|error| open_error(path, error))
}

/// The error of a failed open of `path`.
pub(crate) fn open_error(path: &Path, error: rocksdb::Error) -> Error {
    let reason = error.clone().into_string();
    if reason.contains("While lock file") || reason.contains("lock hold by current process") {
        return Error::InUse {
            path: path.to_path_buf(),
            reason,
        };
    }
    if error.kind() != rocksdb::ErrorKind::Corruption {
        return Error::from(error);
    }
    // RocksDB's status says what, not where: find the first damaged log record.
    match crate::damage::find_wal_damage(path) {
        Ok(Some(damage)) => Error::Damaged {
            path: path.to_path_buf(),
            file: Some(damage.file),
            offset: Some(damage.offset),
            reason: format!("{reason} ({})", damage.reason),
        },
        Ok(None) => Error::Damaged {
            path: path.to_path_buf(),
            file: None,
            offset: None,
            reason,
        },
        Err(scan) => Error::Damaged {
            path: path.to_path_buf(),
            file: None,
            offset: None,
            reason: format!("{reason} (the log files could not be read to locate it: {scan})"),
        },
    }
}

/// The committer's counters as the database holds them: the next position,
/// the next stream id (at least 1) and the `Written` counters of the segment
/// holding the head. Read at open, and by a node that starts to lead.
pub(crate) fn stored_counters(db: &DB) -> Result<(u64, u64, (u64, u64, u64))> {
    let meta = db
        .cf_handle(cf::META)
        .ok_or_else(|| Error::Io("meta column family missing".into()))?;
    let head = stored_head(db)?;
    let next_stream_id = match db.get_cf(meta, meta_key::NEXT_STREAM_ID)? {
        Some(value) => codec::decode_u64(cf::META, "next_stream_id", &value)?,
        None => 0,
    }
    .max(1);
    let segment_number = codec::segment_of(head);
    let segments = db
        .cf_handle(cf::SEGMENTS)
        .ok_or_else(|| Error::Io("segments column family missing".into()))?;
    let (events, bytes) = match db.get_cf(
        segments,
        codec::segment_key(segment_number, SegmentCounter::Written),
    )? {
        Some(value) => codec::decode_counts(&value)?,
        None => (0, 0),
    };
    Ok((head, next_stream_id, (segment_number, events, bytes)))
}

/// The next position to assign: the stored `head`, or past the newest record if
/// that is further.
pub(crate) fn stored_head(db: &DB) -> Result<u64> {
    let meta = db
        .cf_handle(cf::META)
        .ok_or_else(|| Error::Io("meta column family missing".into()))?;
    let mut head = match db.get_cf(meta, meta_key::HEAD)? {
        Some(value) => codec::decode_u64(cf::META, "head", &value)?,
        None => 0,
    };
    let log = db
        .cf_handle(cf::LOG)
        .ok_or_else(|| Error::Io("log column family missing".into()))?;
    if let Some(item) = db.iterator_cf(log, IteratorMode::End).next() {
        let (key, _) = item?;
        if key.len() != 8 {
            return Err(Error::Corrupt {
                column_family: cf::LOG,
                key: format!("{key:02x?}"),
                reason: "a log key is not 8 bytes".into(),
            });
        }
        head = head.max(codec::read_u64(&key) + 1);
    }
    Ok(head)
}

fn column_family_options(name: &str, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut options = Options::default();
    options.set_block_based_table_factory(&table);
    options.set_compression_type(if name == cf::LOG {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::None
    });
    options
}

impl Store {
    /// Opens (or creates) the store in `path`.
    ///
    /// Migrates a database of an older format version it knows (see
    /// [`FORMAT_VERSION`]) and refuses any other version with
    /// [`Error::UnsupportedFormat`]. Refuses a damaged write-ahead log with
    /// [`Error::Damaged`] (only a torn tail, which was never acknowledged, is
    /// dropped; `FORMAT.md`, "Recovery"), and a directory another process holds
    /// with [`Error::InUse`].
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let existed = path.join("CURRENT").exists();
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut db_options = database_options(DBRecoveryMode::TolerateCorruptedTailRecords);
        // Writers are never stalled for memory: past the share RocksDB
        // flushes the largest memtable instead.
        let memtables = WriteBufferManager::new_write_buffer_manager_with_cache(
            options.block_cache_bytes / MEMTABLE_SHARE,
            false,
            cache.clone(),
        );
        db_options.set_write_buffer_manager(&memtables);
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_total_wal_size(options.max_wal_bytes);
        let db = open_database(&path, &db_options, &cache)?;

        let meta = db
            .cf_handle(cf::META)
            .ok_or_else(|| Error::Io("meta column family missing".into()))?;
        match db.get_cf(meta, meta_key::FORMAT_VERSION)? {
            Some(value) if value.len() == 4 => {
                let found = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                if (OLDEST_MIGRATED_FORMAT..FORMAT_VERSION).contains(&found) {
                    migrate(&db, meta, found)?;
                    tracing::info!(
                        path = %path.display(),
                        from = found,
                        to = FORMAT_VERSION,
                        "migrated the data directory's format"
                    );
                } else if found != FORMAT_VERSION {
                    return Err(Error::UnsupportedFormat {
                        path,
                        found,
                        supported: FORMAT_VERSION,
                    });
                }
            }
            Some(_) => {
                return Err(Error::UnsupportedFormat {
                    path,
                    found: 0,
                    supported: FORMAT_VERSION,
                });
            }
            None if existed && has_any_key(&db)? => {
                return Err(Error::UnsupportedFormat {
                    path,
                    found: 0,
                    supported: FORMAT_VERSION,
                });
            }
            None => {
                let mut write = rocksdb::WriteOptions::default();
                write.set_sync(true);
                db.put_cf_opt(
                    meta,
                    meta_key::FORMAT_VERSION,
                    FORMAT_VERSION.to_be_bytes(),
                    &write,
                )?;
            }
        }

        let read_u64 = |key: &[u8], name: &str| -> Result<u64> {
            match db.get_cf(meta, key)? {
                Some(value) => codec::decode_u64(cf::META, name, &value),
                None => Ok(0),
            }
        };
        let (head, next_stream_id, segment) = stored_counters(&db)?;
        let events_removed = read_u64(meta_key::EVENTS_REMOVED, "events_removed")?;

        // No stream record is read here: the catalog loads them as they are
        // used, and counts them from `next_stream_id` (`catalog.rs`,
        // invariant 5).
        let catalog = Catalog::new(options.catalog, next_stream_id);
        let cf_layout = crate::replication::column_family_layout(&db);
        tracing::info!(
            path = %path.display(),
            head,
            streams = catalog.stream_count(),
            "store opened"
        );

        let shared = Arc::new(Shared {
            db,
            catalog,
            live: Live::new(head, options.ring),
            durability: options.durability,
            limits: options.limits,
            events_removed: Mutex::new(events_removed),
            scavenge_lock: Mutex::new(()),
            removals_applied_at: Mutex::new(None),
            reads: crate::read::ReadCounters::default(),
            cache,
            block_cache_capacity: options.block_cache_bytes,
            observer: std::sync::OnceLock::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            clustered: options.clustered,
            replicator: std::sync::OnceLock::new(),
            cf_layout,
            applied_head: Mutex::new(head),
        });
        let poison = Arc::new(Mutex::new(None));
        let queue_capacity = options.queue_capacity.max(1);
        let committer = Committer::new(
            Arc::clone(&shared),
            head,
            next_stream_id,
            segment,
            GroupLimits {
                max_commands: options.max_group_requests.max(1),
                max_bytes: options.max_group_bytes,
                max_in_flight: if options.clustered {
                    options.replicated_groups_in_flight.max(1)
                } else {
                    1
                },
            },
            options.write_fault,
            Arc::clone(&poison),
        );
        let control = committer.control();
        let (sender, receiver) = sync_channel(queue_capacity);
        let handle = committer
            .start(receiver)
            .map_err(|error| Error::Io(format!("cannot start the committer thread: {error}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                queue: Mutex::new(Some(sender)),
                queue_capacity,
                committer: Mutex::new(Some(handle)),
                poison,
                control,
                path,
            }),
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn control(&self) -> &crate::committer::Control {
        &self.inner.control
    }

    /// Queues a command that has no payload limits to check (cluster mode's
    /// [`Store::lead`]).
    pub(crate) fn submit_lead(&self, term: u64) -> Ticket<()> {
        self.submit(|reply| Command::lead(term, reply))
    }

    /// Cluster mode: queues one chunk of a scavenge's decisions; it resolves
    /// once the chunk was replicated and applied here (`scavenge.rs`).
    pub(crate) fn submit_removals(&self, removals: crate::scavenge::Removals) -> Ticket<()> {
        self.submit(|reply| Command::removals(removals, reply))
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.inner.shared.limits
    }

    /// The head watch and live ring, for subscriptions.
    pub fn live(&self) -> &Live {
        &self.inner.shared.live
    }

    /// Why the store refuses writes, if it is poisoned (fail-stop after a
    /// failed write or a panicking committer). Health checks report it.
    pub fn poisoned(&self) -> Option<Error> {
        self.poison()
    }

    /// The poison, if the store is poisoned.
    fn poison(&self) -> Option<Error> {
        self.inner
            .poison
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queues a request for the committer without blocking: a full queue answers
    /// the ticket at once with `Overloaded`.
    fn submit<T>(&self, make: impl FnOnce(ticket::Responder<T>) -> Command) -> Ticket<T> {
        if let Some(error) = self.poison() {
            return Ticket::ready(Err(error));
        }
        let sender = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(sender) = sender else {
            return Ticket::ready(Err(Error::ShuttingDown));
        };
        let (ticket, responder) = ticket::channel();
        // Counted before the send so that the committer's decrement never
        // comes first (the depth never wraps below zero).
        let queued = &self.inner.shared.queued;
        // Raised only below the bound, never above it even for an instant: the
        // committer's writer reads the count to tell whether requests are still
        // on their way to the open group.
        let admitted = queued.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |depth| (depth < self.inner.queue_capacity).then_some(depth + 1),
        );
        if admitted.is_err() {
            make(responder).reply.fail(&Error::Overloaded {
                capacity: self.inner.queue_capacity,
            });
            return ticket;
        }
        let sent = sender.try_send(make(responder));
        if sent.is_err() {
            queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(command)) => command.reply.fail(&Error::Overloaded {
                capacity: self.inner.queue_capacity,
            }),
            // The committer thread ended without a shutdown (which takes the
            // sender first). A poisoned committer keeps running, so this is a
            // death outside its panic guard; report the poison if there is one.
            Err(TrySendError::Disconnected(command)) => command
                .reply
                .fail(&self.poison().unwrap_or(Error::ShuttingDown)),
        }
        ticket
    }

    /// Appends to one or more streams atomically: every part's expectation holds
    /// and all events are written, or nothing is. Returns one result per part, in
    /// order. Never blocks: the ticket resolves when the group holding the request
    /// is durable (per [`Durability`]), or at once with [`Error::Overloaded`] when
    /// the committer's queue is full.
    ///
    /// Retrying an append with the same event ids is safe: if it was written, the
    /// original result comes back with `idempotent_replay` set and nothing is
    /// written. Only an exact retry is one (the whole request again: the same
    /// ids in the same parts and order, with the same content); any other
    /// request that reuses a written id is [`Error::DuplicateEventId`]
    /// (`FORMAT.md`, "Idempotent retries").
    pub fn append_multi(&self, parts: Vec<StreamAppend>) -> Ticket<Vec<AppendResult>> {
        if let Err(error) = self.inner.shared.limits.validate_append(&parts) {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::append(parts, None, AppendReply::Multi(reply)))
    }

    /// [`Store::append_multi`] with a DCB condition (when given): the request
    /// fails with [`Error::AppendConditionFailed`], writing nothing, when an
    /// event matching the condition's query exists after its position. The
    /// committer checks it together with the parts' expectations, against
    /// every committed event and those earlier in the same group, so no event
    /// can slip in between the check and the write. An exact retry of a written
    /// request returns its original result whatever the condition says.
    pub fn append_multi_if(
        &self,
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
    ) -> Ticket<Vec<AppendResult>> {
        if let Err(error) = self.inner.shared.limits.validate_append(&parts) {
            return Ticket::ready(Err(error));
        }
        if let Some(condition) = &condition
            && let Err(error) = condition.query.validate()
        {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::append(parts, condition, AppendReply::Multi(reply)))
    }

    /// Appends to one stream; see [`Store::append_multi`].
    pub fn append(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<crate::EventData>,
    ) -> Ticket<AppendResult> {
        let parts = vec![StreamAppend::new(stream, expected, events)];
        if let Err(error) = self.inner.shared.limits.validate_append(&parts) {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::append(parts, None, AppendReply::Single(reply)))
    }

    /// Soft-deletes a stream: it reads as not found until written again, and its
    /// revisions then continue. Returns the revision it had.
    pub fn delete(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
    ) -> Ticket<CurrentRevision> {
        let stream = stream.into();
        if let Err(error) = validate_stored_stream_name(&stream) {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::delete(stream, expected, false, reply))
    }

    /// Hard-deletes a stream: it can never be read or written again.
    pub fn tombstone(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
    ) -> Ticket<CurrentRevision> {
        let stream = stream.into();
        if let Err(error) = validate_stored_stream_name(&stream) {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::delete(stream, expected, true, reply))
    }

    /// Replaces a stream's metadata. `expected` applies to the metadata revision
    /// (`NoStream` = never set). Returns the new metadata revision.
    pub fn set_metadata(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Ticket<u64> {
        let stream = stream.into();
        if let Err(error) = validate_stored_stream_name(&stream)
            .and_then(|()| self.inner.shared.limits.validate_metadata(&metadata))
        {
            return Ticket::ready(Err(error));
        }
        self.submit(|reply| Command::set_metadata(stream, expected, metadata, reply))
    }

    /// What the store knows about one stream (also deleted ones); `None` if never
    /// written, deleted or given metadata, and also when its record cannot be
    /// read (a RocksDB error or a damaged record, logged as an error; see
    /// [`Store::try_stream_info`]).
    ///
    /// The info may be a moment ahead of [`Live::head`]: a group that is
    /// durable but not yet published already shows here (`catalog.rs`,
    /// invariant 3), so its last revision may not be readable yet.
    pub fn stream_info(&self, stream: &str) -> Option<StreamInfo> {
        self.try_stream_info(stream).unwrap_or_else(|error| {
            tracing::error!(stream, %error, "a stream record could not be read");
            None
        })
    }

    /// [`Store::stream_info`] with the error of a record that cannot be read.
    pub fn try_stream_info(&self, stream: &str) -> Result<Option<StreamInfo>> {
        let shared = &self.inner.shared;
        Ok(shared
            .catalog
            .get(&shared.db, stream, Fill::Yes)?
            .map(|record| record.info(stream)))
    }

    /// How often the stream's metadata was set (`Some(None)`: never; `None`:
    /// no such stream, or its record cannot be read, which is logged as an
    /// error), without building the stream's info: callers that cache
    /// something derived from the metadata check it against this. Like
    /// [`Store::stream_info`], it may be a moment ahead of the head.
    pub fn metadata_revision(&self, stream: &str) -> Option<Option<u64>> {
        let shared = &self.inner.shared;
        match shared.catalog.get(&shared.db, stream, Fill::Yes) {
            Ok(record) => record.map(|record| record.metadata_revision),
            Err(error) => {
                tracing::error!(stream, %error, "a stream record could not be read");
                None
            }
        }
    }

    /// What the stream catalog's cache holds now (at most
    /// [`StoreOptions::catalog`]).
    pub fn catalog_usage(&self) -> CatalogUsage {
        self.inner.shared.catalog.usage()
    }

    /// Streams whose name starts with `prefix`, in name order, starting after
    /// `after` (exclusive) when given, at most `limit`.
    pub fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        Ok(self
            .list_streams_page(prefix, after, limit, usize::MAX)?
            .streams)
    }

    /// Head and counts.
    pub fn info(&self) -> StoreInfo {
        let shared = &self.inner.shared;
        let head = shared.live.head();
        let removed = *shared
            .events_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        StoreInfo {
            head,
            stream_count: shared.catalog.stream_count(),
            event_count: head.saturating_sub(removed),
        }
    }

    /// Per-segment statistics, oldest segment first.
    pub fn segments(&self) -> Result<Vec<SegmentStats>> {
        let shared = &self.inner.shared;
        let mut stats: Vec<SegmentStats> = Vec::new();
        for item in shared
            .db
            .iterator_cf(shared.cf(cf::SEGMENTS), IteratorMode::Start)
        {
            let (key, value) = item?;
            if key.len() != 9 {
                continue;
            }
            let number = codec::read_u64(&key[..8]);
            let (events, bytes) = codec::decode_counts(&value)?;
            if stats.last().is_none_or(|last| last.number != number) {
                stats.push(SegmentStats {
                    number,
                    ..SegmentStats::default()
                });
            }
            if let Some(segment) = stats.last_mut() {
                if key[8] == SegmentCounter::Written as u8 {
                    segment.events_written = events;
                    segment.bytes_written = bytes;
                } else {
                    segment.events_removed = events;
                    segment.bytes_removed = bytes;
                }
            }
        }
        Ok(stats)
    }

    /// Stops accepting requests, answers everything already queued, and waits for
    /// the committer to finish. Reads keep working on other clones until dropped.
    pub fn shutdown(&self) {
        self.inner.stop_committer();
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// Migrates a database of format `from` to [`FORMAT_VERSION`].
///
/// 1 -> 2 rewrites nothing: format 2 reads a 24-byte `event_ids` value as an
/// entry without an append stamp (`codec::EventIdEntry`), so storing the new
/// version is the whole migration, and a build that reads only format 1 then
/// refuses the directory instead of misreading the 36-byte entries written
/// from now on.
fn migrate(db: &DB, meta: &ColumnFamily, from: u32) -> Result<()> {
    debug_assert!((OLDEST_MIGRATED_FORMAT..FORMAT_VERSION).contains(&from));
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(true);
    db.put_cf_opt(
        meta,
        meta_key::FORMAT_VERSION,
        FORMAT_VERSION.to_be_bytes(),
        &write,
    )?;
    Ok(())
}

fn has_any_key(db: &DB) -> Result<bool> {
    for name in cf::ALL {
        if let Some(handle) = db.cf_handle(name)
            && db.iterator_cf(handle, IteratorMode::Start).next().is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
