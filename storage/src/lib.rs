//! `cairn-storage`: Cairn's log engine, a segmented append-only event log in
//! RocksDB with per-stream optimistic concurrency and group commit.
//!
//! This crate owns the on-disk format (see `FORMAT.md` beside this crate) and
//! every write to it. It knows nothing of gRPC, tokio or configuration files:
//! callers get plain Rust types, and [`Ticket`]s they can either block on or
//! `.await`.
//!
//! ```
//! use cairn_storage::{EventData, ExpectedRevision, ReadRequest, ReadSource, Store, StoreOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
//! let placed = EventData::json("OrderPlaced", r#"{"sku":"tea","qty":2}"#);
//! let result = store.append("order-1", ExpectedRevision::NoStream, vec![placed]).wait().unwrap();
//! assert_eq!(result.current.revision(), Some(0));
//!
//! let page = store.read(&ReadRequest::forwards(ReadSource::parse("$ce-order").unwrap(), 100)).unwrap();
//! assert_eq!(page.events[0].event_type, "OrderPlaced");
//! ```
//!
//! Module map:
//! - `model`: request/response types and input validation.
//! - `codec`: byte layouts of keys and values (the format).
//! - `catalog`: the bounded cache of stream records (heads, states,
//!   metadata) over the `streams` column family, and the visibility rule.
//! - `committer`: the single writer thread (group commit).
//! - `read`: read paths. `scavenge`: physical removal of hidden events.
//! - `query`: DCB queries, tags and append conditions; the index cursor
//!   shared by query reads and the committer's condition check.
//! - `backup`: online backups, their verification, restore.
//! - `replication`: cluster mode's seam: sealed groups, the replicator,
//!   applying replicated groups, leader and follower roles.
//! - `damage`: locating damage in the write-ahead log. `repair`: `Store::repair`.
//! - `observe`: the commit observer (metrics) and memory/disk figures.
//! - `live`: published head and the ring of recent events for subscriptions.
//! - `ticket`: one-shot replies usable from sync and async code.

mod backup;
mod catalog;
mod codec;
mod committer;
mod damage;
mod error;
mod live;
mod model;
mod observe;
mod query;
mod read;
mod repair;
mod replication;
mod scavenge;
mod store;
mod ticket;

pub use codec::{FORMAT_VERSION, SEGMENT_SIZE};
pub use committer::DEFAULT_REPLICATED_GROUPS_IN_FLIGHT;

/// Not API: the decoders and encoders of stored records, for the decoder fuzz
/// test (`tests/codec_fuzz.rs`). Nothing outside this crate's tests uses it.
#[doc(hidden)]
pub mod codec_seam {
    pub use crate::codec::{
        AppendStamp, EventIdEntry, StreamRecord, decode_counts, decode_header, decode_u64,
        encode_counts, encode_record,
    };
}

/// Every RocksDB column family of a Cairn database, in open order (see
/// FORMAT.md), for tools and tests that open the files directly.
pub const COLUMN_FAMILIES: [&str; 9] = codec::cf::ALL;
pub use backup::{
    BackupFile, BackupManifest, MANIFEST_FILE, VerifiedBackup, read_manifest, restore,
    verify_backup,
};
pub use catalog::{CatalogLimits, CatalogUsage, ENTRY_OVERHEAD_BYTES};
pub use error::{Error, Result};
pub use live::{CommitListener, CommitNotice, Live, RingLimits};
pub use model::{
    ALL_STREAM, AppendResult, CATEGORY_PREFIX, CurrentRevision, Direction, EVENT_TYPE_PREFIX,
    EventData, ExpectedRevision, FilterMatcher, Limits, MAX_FILTER_PREFIX_BYTES,
    MAX_FILTER_PREFIXES, MAX_FILTER_REGEX_BYTES, MAX_STREAM_NAME_BYTES, ReadFilter, ReadFrom,
    ReadPage, ReadRequest, ReadSource, RecordedEvent, SYSTEM_STREAM_PREFIX, ScavengeReport,
    SegmentStats, StoreInfo, StreamAppend, StreamInfo, StreamMetadata, StreamState, category_of,
    validate_stored_stream_name, validate_stream_name,
};
pub use model::{SNAPSHOT_STREAM_PREFIX, snapshot_base};
pub use observe::{CommitObserver, CommittedGroup, MemoryUsage};
pub use query::{
    AppendCondition, MAX_QUERY_BYTES, MAX_QUERY_ITEM_VALUES, MAX_QUERY_ITEMS, MAX_TAG_BYTES,
    MAX_TAGS_PER_EVENT, Query, QueryItem,
};
pub use read::{ReadKind, ReadStats, StreamListPage};
pub use repair::RepairReport;
pub use replication::{GroupEffect, Proposed, Replicator, SealedGroup, backup_replicated_state};
pub use scavenge::{REMOVALS_QUIET, ScavengeOutcome, ScavengeProgress, ScavengeProgressSnapshot};
pub use store::{Durability, Store, StoreOptions, WriteFault, WriteFaultContext};
pub use ticket::Ticket;
