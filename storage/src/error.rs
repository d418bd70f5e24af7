//! The one error type of the storage boundary.
//!
//! Every variant says what went wrong in words a caller can act on; the server maps
//! each variant to a gRPC status in exactly one place.

use std::path::PathBuf;

use crate::model::{CurrentRevision, ExpectedRevision};

/// Everything that can go wrong in `cairn-storage`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The expected revision of an append, delete or metadata change did not hold.
    /// Nothing of the request was written.
    #[error(
        "wrong expected revision on stream '{stream}': expected {expected}, but the stream is at {current}"
    )]
    WrongExpectedRevision {
        /// The stream whose expectation failed.
        stream: String,
        /// What the request expected.
        expected: ExpectedRevision,
        /// What the stream actually is at.
        current: CurrentRevision,
    },

    /// A DCB append condition failed: an event matching its query exists after
    /// the position it names. Nothing of the request was written.
    #[error(
        "append condition failed: the event at position {position} matches the condition's query"
    )]
    AppendConditionFailed {
        /// The first conflicting event's position.
        position: u64,
    },

    /// The stream does not exist (never written, or soft-deleted and not recreated).
    #[error("stream '{stream}' not found")]
    StreamNotFound {
        /// The stream asked for.
        stream: String,
    },

    /// The stream was tombstoned: it can never be read or written again.
    #[error("stream '{stream}' is tombstoned (hard-deleted); its name cannot be used again")]
    StreamTombstoned {
        /// The tombstoned stream.
        stream: String,
    },

    /// An event id of the request was already written, but the request is not an
    /// exact retry of the append that wrote it.
    #[error(
        "event id {event_id} was already written to stream '{stream}' at revision {revision}; \
         a retry must resend the original append whole (same streams, same events in the same \
         order, same type, content type, metadata and data)"
    )]
    DuplicateEventId {
        /// The offending id.
        event_id: uuid::Uuid,
        /// Where it was written.
        stream: String,
        /// Its revision there.
        revision: u64,
    },

    /// The request is malformed (empty or reserved stream name, nil event id, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The request exceeds a configured limit.
    #[error("limit exceeded: {what} is {actual}, the limit is {limit}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value of the request.
        actual: u64,
        /// The configured limit.
        limit: u64,
    },

    /// A stored record failed its checksum or could not be decoded.
    #[error("corrupt record in column family '{column_family}' at key {key}: {reason}")]
    Corrupt {
        /// The column family holding the record.
        column_family: &'static str,
        /// The record's key, human readable (for `log`, the global position).
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database was written by a format this build does not understand.
    #[error(
        "the database at {path} has format version {found}, this build reads version {supported}; \
         use a matching cairn release"
    )]
    UnsupportedFormat {
        /// The data directory.
        path: PathBuf,
        /// The version stored in the database.
        found: u32,
        /// The version this build supports.
        supported: u32,
    },

    /// A write or sync failed, or the committer thread panicked; the store refuses
    /// further writes because the state on disk is unknown. The message says which.
    /// Restart the process (reopen the directory) to recover from the log: every
    /// acknowledged write is there, nothing of a request answered `Poisoned` is
    /// acknowledged.
    #[error("the store stopped accepting writes: {0}; restart to recover")]
    Poisoned(String),

    /// Cluster mode: this node does not accept writes because it is not the
    /// raft leader (or has not yet applied every entry of earlier terms). The
    /// request was not written by this node. When the write was already handed
    /// to raft when leadership was lost, its outcome is unknown: retry the exact
    /// request (same event ids) on the leader, which answers the original
    /// result if it was committed (`server/CLUSTER.md`, "In-flight appends").
    #[error("{}", not_leader_message(.leader.as_deref()))]
    NotLeader {
        /// The `cairn.v1` client address of the leader, when this node knows it.
        leader: Option<String>,
        /// The leader's KurrentDB-facade address (`host:port`), when known
        /// (the KurrentDB `not-leader` redirect names it).
        kurrent_leader: Option<String>,
    },

    /// The committer's queue is full; the request was not queued and nothing of
    /// it was written. Retry later, or send fewer requests at once.
    #[error("the committer queue is full ({capacity} requests waiting); retry later")]
    Overloaded {
        /// The queue's capacity (`StoreOptions::queue_capacity`).
        capacity: usize,
    },

    /// The store is shutting down (or shut down) and accepts no more requests.
    #[error("the store is shutting down")]
    ShuttingDown,

    /// A subscriber asked the in-memory ring for events it no longer holds; read
    /// them from storage instead.
    #[error("position {requested} is no longer in the live ring (oldest held: {oldest})")]
    FellBehind {
        /// The position asked for.
        requested: u64,
        /// The oldest position still in the ring.
        oldest: u64,
    },

    /// RocksDB reported an error.
    #[error("storage I/O error: {0}")]
    Io(String),

    /// The data directory is damaged where RocksDB cannot prove it to be the torn
    /// tail of a crash (a changed byte in the middle of the write-ahead log, a
    /// damaged MANIFEST, ...). Acknowledged events may lie behind the damage, so
    /// the store does not open: opening would silently lose them and reuse their
    /// positions. `Store::repair` (`cairn repair`) is the salvage path.
    #[error("{}", damaged_message(.path, .file.as_deref(), .offset, .reason))]
    Damaged {
        /// The data directory.
        path: PathBuf,
        /// The damaged file, when it could be located (a `NNNNNN.log` name).
        file: Option<String>,
        /// Byte offset in `file` of the first damaged write-ahead log record.
        offset: Option<u64>,
        /// What RocksDB (and Cairn's own scan of the log) reported.
        reason: String,
    },

    /// Another process (or another `Store` in this one) holds the data
    /// directory's lock: a second writer would corrupt it.
    #[error(
        "the data directory {path} is in use by another process (a running cairn server?); \
         stop it first ({reason})"
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// RocksDB's message.
        reason: String,
    },

    /// A backup failed verification (`verify_backup`, `restore`): a file is
    /// missing or changed, the manifest is damaged, or a record is bad or
    /// missing below the backup's head.
    #[error("{}", backup_message(.file.as_deref(), .position, .reason))]
    BackupInvalid {
        /// The bad file of the backup (a name, no directory), when known.
        file: Option<String>,
        /// The first bad position, when known.
        position: Option<u64>,
        /// What is wrong.
        reason: String,
    },
}

/// The message of [`Error::BackupInvalid`]: what is wrong and where.
fn backup_message(file: Option<&str>, position: &Option<u64>, reason: &str) -> String {
    let place = match (file, position) {
        (Some(file), _) => format!(" (file {file})"),
        (None, Some(position)) => format!(" at position {position}"),
        (None, None) => String::new(),
    };
    format!("the backup is not valid{place}: {reason}; it was not restored")
}

/// The message of [`Error::Damaged`]: what is wrong, where, and what to do.
fn damaged_message(
    path: &std::path::Path,
    file: Option<&str>,
    offset: &Option<u64>,
    reason: &str,
) -> String {
    let place = match (file, offset) {
        (Some(file), Some(offset)) => format!(" in {file} at byte offset {offset}"),
        (Some(file), None) => format!(" in {file}"),
        _ => String::new(),
    };
    format!(
        "the data directory {path} is damaged{place}: {reason}. Acknowledged events may lie \
         behind the damage, so the store does not open (it would silently drop them and reuse \
         their positions). Stop every process using the directory, copy it as a backup, then \
         run `cairn repair --data {path}`: it keeps every event before the damage and reports \
         how many positions were lost",
        path = path.display()
    )
}

impl From<rocksdb::Error> for Error {
    fn from(error: rocksdb::Error) -> Self {
        Error::Io(error.into_string())
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn not_leader_message(leader: Option<&str>) -> String {
    match leader {
        Some(leader) => format!("this node is not the leader; send writes to {leader}"),
        None => "this node is not the leader and no leader is known yet; retry shortly".into(),
    }
}
