//! The raft log and vote, kept in RocksDB (`server/CLUSTER.md`, "Durability
//! at acknowledgement" and "No unbounded second copy").
//!
//! [`RocksLogStore`] is openraft's log store ([`RaftLogStorage`]) and log
//! reader ([`RaftLogReader`]) for [`TypeConfig`]. It owns two column
//! families of a RocksDB database: today it opens its own
//! ([`RocksLogStore::open`]); in cluster mode the store hands in its own DB
//! ([`RocksLogStore::from_db`]) so that applying an entry and recording it
//! applied can later share one write.
//!
//! # On-disk format (version [`FORMAT_VERSION`])
//!
//! | CF | key | value |
//! |---|---|---|
//! | `raft_log` | u64 log index, big-endian | framed postcard of the [`Entry`] |
//! | `raft_meta` | `format_version` | framed postcard of a `u32` |
//! | | `vote` | framed postcard of the [`Vote`] |
//! | | `committed` | framed postcard of the committed [`LogId`] (absent: none) |
//! | | `last_purged` | framed postcard of the last purged [`LogId`] (absent: none) |
//!
//! A framed value is
//!
//! ```text
//! offset  size  field
//! 0       4     crc32 (crc32fast), big-endian, of: the key ++ the payload
//! 4       n     payload: postcard encoding of the value
//! ```
//!
//! The crc covers the key, so a value found under the wrong key is detected
//! too; an entry's own log index is also checked against its key. A value
//! whose crc or decoding fails is an error naming the index (or the meta
//! key), never skipped: openraft then stops the node (fail-stop) instead of
//! replicating from a damaged log.
//!
//! # Durability
//!
//! Every write raft relies on — [`append`](RaftLogStorage::append),
//! [`save_vote`](RaftLogStorage::save_vote),
//! [`truncate`](RaftLogStorage::truncate), [`purge`](RaftLogStorage::purge)
//! — is one `WriteBatch`, durable before openraft is told it is done: the
//! vote, truncations and purges are written with `sync = true` before their
//! future returns; appended entries are written without a sync (readable at
//! once, so the leader's replication to the followers runs while its own
//! fsync does) and their callback is called only once a dedicated thread has
//! synced the WAL past them (one `flush_wal(true)` for every append queued
//! meanwhile: the raft log's group commit). A follower therefore acknowledges
//! an entry, and the leader counts itself in the entry's quorum, only once it
//! is on that node's disk. An unsynced truncation or append lost in a crash
//! leaves the log as it was before them, which no node has acknowledged
//! anything about. `save_committed` is written without a sync:
//! openraft only uses the stored committed id to re-apply sooner after a
//! restart, and a lost update only makes it re-learn the commit from the
//! leader (the next synced write makes it durable anyway). After any failed
//! write the store refuses every further write (fail-stop), since the state
//! on disk is then unknown.
//!
//! Every RocksDB call runs in `spawn_blocking`, never on an async worker.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options,
    WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::TypeConfig;

/// The column family of the log entries, keyed by big-endian log index.
pub const RAFT_LOG_CF: &str = "raft_log";
/// The column family of the vote, the committed and the last purged log id
/// and the format version.
pub const RAFT_META_CF: &str = "raft_meta";
/// Every column family the log store needs. A database handed to
/// [`RocksLogStore::from_db`] must have been opened with all of them.
pub const COLUMN_FAMILIES: [&str; 2] = [RAFT_LOG_CF, RAFT_META_CF];
/// The version of the format above, stored in `raft_meta` and checked when
/// the store is constructed.
pub const FORMAT_VERSION: u32 = 1;

/// The `raft_meta` keys.
mod meta_key {
    pub const FORMAT_VERSION: &str = "format_version";
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
}

/// The crc32 in front of every value.
const CRC_LEN: usize = 4;

/// openraft's storage error for this crate's node id.
type StoreResult<T> = Result<T, StorageError<u64>>;

/// Why the log store failed. Inside openraft it travels as the source of a
/// [`StorageError`] whose subject says what was being read or written (for a
/// damaged entry: `LogIndex(n)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogStoreError {
    /// RocksDB returned an error.
    #[error("RocksDB failed to {action}: {source}")]
    RocksDb {
        /// What the store was doing.
        action: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The database lacks one of [`COLUMN_FAMILIES`].
    #[error(
        "the database has no `{0}` column family: open it with every name in \
         cairn_cluster::log_store::COLUMN_FAMILIES"
    )]
    MissingColumnFamily(&'static str),
    /// A `raft_log` value failed its crc or its decoding, or holds another
    /// index's entry.
    #[error(
        "raft_log entry at index {index} is corrupt: {reason}; the node's raft log is damaged: \
         remove the node's data and let it rejoin the cluster from a snapshot"
    )]
    CorruptEntry {
        /// The log index of the damaged value.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A `raft_log` key is not an 8-byte index.
    #[error(
        "raft_log holds a key of {len} bytes, not an 8-byte log index: the raft log is damaged"
    )]
    CorruptKey {
        /// The key's length.
        len: usize,
    },
    /// A `raft_meta` value failed its crc or its decoding.
    #[error(
        "raft_meta `{key}` is corrupt: {reason}; the node's raft state is damaged: remove the \
         node's data and let it rejoin the cluster from a snapshot"
    )]
    CorruptMeta {
        /// The meta key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored format version is not [`FORMAT_VERSION`].
    #[error(
        "the raft log has format version {found}, this build reads version {FORMAT_VERSION}: \
         run a cairn build that matches the data directory"
    )]
    UnsupportedFormat {
        /// The stored version.
        found: u32,
    },
    /// `raft_log` or `raft_meta` holds data but no format version.
    #[error("raft_log or raft_meta holds data but no format version: this is not a Cairn raft log")]
    NotARaftLog,
    /// A value could not be encoded.
    #[error("failed to encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// An earlier write failed; the store refuses writes from then on.
    #[error(
        "an earlier write to the raft log failed, so it refuses further writes (fail-stop): \
         restart the node once the disk is healthy"
    )]
    Failed,
    /// The blocking task that ran a RocksDB call panicked or was cancelled.
    #[error("the RocksDB task did not finish: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The thread that syncs appended entries could not be started.
    #[error("cannot start the raft log's sync thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// openraft's log store and log reader over two column families of a RocksDB
/// database (see the module docs for the format and the durability rules).
///
/// Clones share the database and the fail-stop flag; openraft's log reader
/// is such a clone.
#[derive(Clone)]
pub struct RocksLogStore {
    /// The database holding [`COLUMN_FAMILIES`]; shared with the store in
    /// cluster mode.
    db: Arc<DB>,
    /// Set after a failed write: the state on disk is then unknown, so every
    /// later write is refused instead of building on it.
    failed: Arc<AtomicBool>,
    /// Where `append` queues its callback for the WAL sync
    /// ([`spawn_log_syncer`]).
    syncs: Arc<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
}

/// Starts the thread that makes appended entries durable: it waits for a
/// queued callback, takes every other one queued by then, syncs the WAL
/// once (`flush_wal(true)`: everything written to the database before,
/// those entries included) and completes the callbacks in order. A failed
/// sync sets `failed` (fail-stop) and fails every callback it held and every
/// later one. The thread ends when the last sender is dropped, and holds the
/// database only while it syncs, so dropping the store closes the database.
fn spawn_log_syncer(
    db: &Arc<DB>,
    failed: Arc<AtomicBool>,
) -> Result<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>, LogStoreError> {
    let (queue, queued) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    let db = Arc::downgrade(db);
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(first) = queued.recv() {
                let waiting: Vec<_> = std::iter::once(first).chain(queued.try_iter()).collect();
                let synced = if failed.load(Ordering::Acquire) {
                    Err(LogStoreError::Failed.to_string())
                } else {
                    match db.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(|source| {
                            LogStoreError::RocksDb {
                                action: "sync the raft log",
                                source,
                            }
                            .to_string()
                        }),
                        None => Err("the raft log's database is closed".to_owned()),
                    }
                };
                if synced.is_err() {
                    failed.store(true, Ordering::Release);
                }
                for callback in waiting {
                    callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
                }
            }
        })
        .map_err(LogStoreError::Thread)?;
    Ok(queue)
}

impl Debug for RocksLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksLogStore")
            .field("path", &self.db.path())
            .field("failed", &self.failed.load(Ordering::Acquire))
            .finish()
    }
}

impl RocksLogStore {
    /// Opens (or creates) a RocksDB database in `path` holding only the log
    /// store's column families, and the store over it.
    ///
    /// Blocking: call it before the runtime runs or in `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LogStoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let descriptors = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, column_family_options()));
        let db =
            DB::open_cf_descriptors(&options, path.as_ref(), descriptors).map_err(|source| {
                LogStoreError::RocksDb {
                    action: "open the raft log database",
                    source,
                }
            })?;
        Self::from_db(Arc::new(db))
    }

    /// The store over an already open database, such as the event store's
    /// own. The database must have been opened with every column family in
    /// [`COLUMN_FAMILIES`] (options as [`column_family_options`] gives);
    /// a missing one is [`LogStoreError::MissingColumnFamily`].
    ///
    /// Checks the stored format version (and stores it, synced, in a
    /// database whose raft column families are empty). Blocking: call it
    /// before the runtime runs or in `spawn_blocking`.
    pub fn from_db(db: Arc<DB>) -> Result<Self, LogStoreError> {
        check_format(&db)?;
        let failed = Arc::new(AtomicBool::new(false));
        let syncs = Arc::new(spawn_log_syncer(&db, Arc::clone(&failed))?);
        Ok(Self { db, failed, syncs })
    }

    /// Runs `read` over the database on a blocking thread; a failure is
    /// about `subject` unless it names an entry.
    async fn read<T, F>(&self, subject: ErrorSubject<u64>, read: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&DB) -> Result<T, LogStoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .unwrap_or_else(|error| Err(LogStoreError::Task(error)))
            .map_err(|error| storage_error(subject, ErrorVerb::Read, error))
    }

    /// Builds a batch with `build` and writes it on a blocking thread,
    /// synced to disk when `sync`; a failure is about `subject`. A failed
    /// write sets the fail-stop flag; once set, nothing is written.
    async fn write<F>(&self, subject: ErrorSubject<u64>, sync: bool, build: F) -> StoreResult<()>
    where
        F: FnOnce(&DB) -> Result<WriteBatch, LogStoreError>,
    {
        if self.failed.load(Ordering::Acquire) {
            return Err(storage_error(
                subject,
                ErrorVerb::Write,
                LogStoreError::Failed,
            ));
        }
        let batch = build(&self.db)
            .map_err(|error| storage_error(subject.clone(), ErrorVerb::Write, error))?;
        let db = Arc::clone(&self.db);
        let result = tokio::task::spawn_blocking(move || {
            let mut options = WriteOptions::default();
            options.set_sync(sync);
            db.write_opt(batch, &options)
        })
        .await;
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(source)) => LogStoreError::RocksDb {
                action: "write the raft log",
                source,
            },
            Err(error) => LogStoreError::Task(error),
        };
        self.failed.store(true, Ordering::Release);
        Err(storage_error(subject, ErrorVerb::Write, error))
    }

    /// Reads and decodes one `raft_meta` value.
    async fn read_meta<T>(
        &self,
        key: &'static str,
        subject: ErrorSubject<u64>,
    ) -> StoreResult<Option<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.read(subject, move |db| get_meta(db, key)).await
    }

    /// Writes one `raft_meta` value (`None` deletes it).
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: Option<&T>,
        subject: ErrorSubject<u64>,
        sync: bool,
    ) -> StoreResult<()> {
        self.write(subject, sync, |db| {
            let meta = cf(db, RAFT_META_CF)?;
            let mut batch = WriteBatch::default();
            match value {
                Some(value) => batch.put_cf(meta, key.as_bytes(), frame_meta(key, value)?),
                None => batch.delete_cf(meta, key.as_bytes()),
            }
            Ok(batch)
        })
        .await
    }
}

/// The options of the log store's column families. No compression: the raft
/// log is a short tail that is purged once applied, so compressing it would
/// cost CPU on the write path for little space.
pub fn column_family_options() -> Options {
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::None);
    options
}

impl RaftLogReader<TypeConfig> for RocksLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => match index.checked_add(1) {
                Some(index) => index,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        // `None`: up to the last entry.
        let end = match range.end_bound() {
            Bound::Included(&index) => index.checked_add(1),
            Bound::Excluded(&index) => Some(index),
            Bound::Unbounded => None,
        };
        self.read(ErrorSubject::Logs, move |db| read_entries(db, start, end))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for RocksLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self
            .read_meta(meta_key::LAST_PURGED, ErrorSubject::Logs)
            .await?;
        let last_entry = self.read(ErrorSubject::Logs, last_entry).await?;
        let last_log_id = last_entry.map(|entry| entry.log_id).or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        self.write_meta(meta_key::VOTE, Some(vote), ErrorSubject::Vote, true)
            .await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        self.read_meta(meta_key::VOTE, ErrorSubject::Vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        // Not synced: see "Durability" in the module docs.
        self.write_meta(
            meta_key::COMMITTED,
            committed.as_ref(),
            ErrorSubject::Store,
            false,
        )
        .await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        self.read_meta(meta_key::COMMITTED, ErrorSubject::Store)
            .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let written = self
            .write(ErrorSubject::Logs, false, |db| {
                let log = cf(db, RAFT_LOG_CF)?;
                let mut batch = WriteBatch::default();
                for entry in entries {
                    let key = entry.log_id.index.to_be_bytes();
                    batch.put_cf(log, key, frame(&key, "a raft log entry", &entry)?);
                }
                // Even an empty batch goes through the write (it reports the
                // fail-stop state) and waits for the next sync.
                Ok(batch)
            })
            .await;
        match written {
            // Written, not yet durable: the syncer calls back once it is.
            Ok(()) => match self.syncs.send(callback) {
                Ok(()) => Ok(()),
                Err(std::sync::mpsc::SendError(callback)) => {
                    self.failed.store(true, Ordering::Release);
                    let error = LogStoreError::Failed;
                    callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                    Err(storage_error(ErrorSubject::Logs, ErrorVerb::Write, error))
                }
            },
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.write(ErrorSubject::Log(log_id), true, |db| {
            let log = cf(db, RAFT_LOG_CF)?;
            let mut batch = WriteBatch::default();
            // [index, u64::MAX) by a range deletion, then u64::MAX itself.
            batch.delete_range_cf(log, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
            batch.delete_cf(log, u64::MAX.to_be_bytes());
            Ok(batch)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.write(ErrorSubject::Log(log_id), true, |db| {
            let log = cf(db, RAFT_LOG_CF)?;
            let meta = cf(db, RAFT_META_CF)?;
            let mut batch = WriteBatch::default();
            // [0, index) by a range deletion, then index itself: every entry
            // up to and including `log_id`, whatever the first stored one is,
            // and the purge point with them.
            batch.delete_range_cf(log, 0u64.to_be_bytes(), log_id.index.to_be_bytes());
            batch.delete_cf(log, log_id.index.to_be_bytes());
            batch.put_cf(
                meta,
                meta_key::LAST_PURGED.as_bytes(),
                frame_meta(meta_key::LAST_PURGED, &log_id)?,
            );
            Ok(batch)
        })
        .await
    }
}

/// The column family `name` of `db`.
fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, LogStoreError> {
    db.cf_handle(name)
        .ok_or(LogStoreError::MissingColumnFamily(name))
}

/// Checks (or, in empty column families, stores) the format version.
fn check_format(db: &DB) -> Result<(), LogStoreError> {
    for name in COLUMN_FAMILIES {
        cf(db, name)?;
    }
    match get_meta::<u32>(db, meta_key::FORMAT_VERSION)? {
        Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(LogStoreError::UnsupportedFormat { found }),
        None => {
            for name in COLUMN_FAMILIES {
                if db
                    .iterator_cf(cf(db, name)?, IteratorMode::Start)
                    .next()
                    .is_some()
                {
                    return Err(LogStoreError::NotARaftLog);
                }
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(
                cf(db, RAFT_META_CF)?,
                meta_key::FORMAT_VERSION.as_bytes(),
                frame_meta(meta_key::FORMAT_VERSION, &FORMAT_VERSION)?,
            );
            let mut options = WriteOptions::default();
            options.set_sync(true);
            db.write_opt(batch, &options)
                .map_err(|source| LogStoreError::RocksDb {
                    action: "store the raft log format version",
                    source,
                })
        }
    }
}

/// The entries with index in `[start, end)` (`end` `None`: to the last).
fn read_entries(
    db: &DB,
    start: u64,
    end: Option<u64>,
) -> Result<Vec<Entry<TypeConfig>>, LogStoreError> {
    let log = cf(db, RAFT_LOG_CF)?;
    let mut entries = Vec::new();
    let from = start.to_be_bytes();
    for item in db.iterator_cf(log, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = item.map_err(|source| LogStoreError::RocksDb {
            action: "read the raft log",
            source,
        })?;
        let index = key_index(&key)?;
        if end.is_some_and(|end| index >= end) {
            break;
        }
        entries.push(decode_entry(index, &value)?);
    }
    Ok(entries)
}

/// The entry with the greatest index, if any.
fn last_entry(db: &DB) -> Result<Option<Entry<TypeConfig>>, LogStoreError> {
    let log = cf(db, RAFT_LOG_CF)?;
    let Some(item) = db.iterator_cf(log, IteratorMode::End).next() else {
        return Ok(None);
    };
    let (key, value) = item.map_err(|source| LogStoreError::RocksDb {
        action: "read the raft log",
        source,
    })?;
    decode_entry(key_index(&key)?, &value).map(Some)
}

/// The log index of a `raft_log` key.
fn key_index(key: &[u8]) -> Result<u64, LogStoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| LogStoreError::CorruptKey { len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Checks and decodes the `raft_log` value stored under `index`.
fn decode_entry(index: u64, value: &[u8]) -> Result<Entry<TypeConfig>, LogStoreError> {
    let corrupt = |reason: String| LogStoreError::CorruptEntry { index, reason };
    let entry: Entry<TypeConfig> = unframe(&index.to_be_bytes(), value).map_err(corrupt)?;
    if entry.log_id.index != index {
        return Err(corrupt(format!(
            "it holds the entry of index {}",
            entry.log_id.index
        )));
    }
    Ok(entry)
}

/// Reads and decodes the `raft_meta` value under `key`.
fn get_meta<T: DeserializeOwned>(db: &DB, key: &'static str) -> Result<Option<T>, LogStoreError> {
    let meta = cf(db, RAFT_META_CF)?;
    let Some(value) =
        db.get_pinned_cf(meta, key.as_bytes())
            .map_err(|source| LogStoreError::RocksDb {
                action: "read raft_meta",
                source,
            })?
    else {
        return Ok(None);
    };
    unframe(key.as_bytes(), &value)
        .map(Some)
        .map_err(|reason| LogStoreError::CorruptMeta { key, reason })
}

/// The framed value of the `raft_meta` key `key`.
fn frame_meta<T: Serialize>(key: &'static str, value: &T) -> Result<Vec<u8>, LogStoreError> {
    frame(key.as_bytes(), key, value)
}

/// crc32(key ++ payload), big-endian, then the payload: postcard of `value`.
pub(crate) fn frame<T: Serialize>(
    key: &[u8],
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, LogStoreError> {
    let mut framed = vec![0; CRC_LEN];
    framed = postcard::to_extend(value, framed)
        .map_err(|source| LogStoreError::Encode { what, source })?;
    let crc = crc(key, &framed[CRC_LEN..]);
    framed[..CRC_LEN].copy_from_slice(&crc.to_be_bytes());
    Ok(framed)
}

/// Checks the crc of the framed `value` stored under `key` and decodes its
/// payload. The error says what is wrong.
pub(crate) fn unframe<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, String> {
    let Some((stored, payload)) = value.split_first_chunk::<CRC_LEN>() else {
        return Err(format!(
            "the value is {} bytes, shorter than its crc",
            value.len()
        ));
    };
    let stored = u32::from_be_bytes(*stored);
    let computed = crc(key, payload);
    if stored != computed {
        return Err(format!(
            "crc mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    postcard::from_bytes(payload).map_err(|error| format!("the payload does not decode: {error}"))
}

/// crc32 of `key ++ payload`.
fn crc(key: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(payload);
    hasher.finalize()
}

/// openraft's error for `error` while doing `verb` about `subject`. A
/// damaged entry is always about its index (`LogIndex(n)`), whatever the
/// operation was about.
fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    error: LogStoreError,
) -> StorageError<u64> {
    let subject = match error {
        LogStoreError::CorruptEntry { index, .. } => ErrorSubject::LogIndex(index),
        _ => subject,
    };
    StorageIOError::new(subject, verb, &error).into()
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;

    use super::*;

    #[test]
    fn frame_round_trips_and_covers_the_key() {
        let framed = frame(b"vote", "vote", &Vote::new(3, 7u64)).expect("frame");
        let vote: Vote<u64> = unframe(b"vote", &framed).expect("unframe");
        assert_eq!(vote, Vote::new(3, 7));
        let moved = unframe::<Vote<u64>>(b"committed", &framed).expect_err("wrong key");
        assert!(moved.contains("crc mismatch"), "{moved}");
    }

    #[test]
    fn a_value_shorter_than_its_crc_is_corrupt() {
        let error = unframe::<u32>(b"format_version", &[1, 2]).expect_err("short");
        assert!(error.contains("2 bytes"), "{error}");
    }

    #[test]
    fn an_entry_under_another_index_is_corrupt() {
        let entry = Entry::<TypeConfig>::new_blank(openraft::testing::log_id(1, 0, 4));
        let framed = frame(&5u64.to_be_bytes(), "entry", &entry).expect("frame");
        let error = decode_entry(5, &framed).expect_err("index 4 under key 5");
        assert!(
            matches!(error, LogStoreError::CorruptEntry { index: 5, .. }),
            "{error}"
        );
        let text = storage_error(ErrorSubject::Logs, ErrorVerb::Read, error).to_string();
        assert!(text.contains("LogIndex(5)"), "{text}");
        assert!(text.contains("holds the entry of index 4"), "{text}");
    }
}
