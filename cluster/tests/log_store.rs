//! The RocksDB raft log store: openraft's own conformance suite, durability
//! across a reopen, and damaged values that must fail with their index.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_cluster::log_store::{COLUMN_FAMILIES, LogStoreError, RAFT_LOG_CF, RocksLogStore};
use cairn_cluster::types::{GroupApplied, GroupEntry, Proposal, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{Entry, EntryPayload, LogId, Membership, RaftLogReader, StorageError, Vote};
use rocksdb::DB;
use support::{MemStateMachine, Model};
use tempfile::TempDir;

/// The test model of the state machine: the head position, which a group
/// entry must start at and then moves by its events.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Head {
    head: u64,
}

impl Model for Head {
    type Config = TypeConfig;

    fn apply(&mut self, group: GroupEntry) -> std::io::Result<()> {
        if group.first_position != self.head {
            return Err(std::io::Error::other("first_position is not the head"));
        }
        self.head += group.events;
        Ok(())
    }

    fn response(&self) -> GroupApplied {
        GroupApplied {
            head: self.head,
            skipped: false,
        }
    }
}

/// Builds a log store in a fresh temporary directory (the guard) and an
/// empty test state machine.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, RocksLogStore, MemStateMachine<Head>, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, RocksLogStore, MemStateMachine<Head>), StorageError<u64>> {
        let dir = TempDir::new().expect("temp dir");
        let store = RocksLogStore::open(dir.path()).expect("open the log store");
        Ok((dir, store, MemStateMachine::default()))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    // The suite runs each case on a runtime of its own: not inside #[tokio::test].
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}

/// A group entry at `index` (term 1, node 1) numbering events from
/// `first_position`.
fn group(index: u64, first_position: u64, events: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(GroupEntry {
            group: vec![index as u8; 16],
            first_position,
            events,
            next_stream_id: 1,
            records: vec![format!("stream-{index}")],
            changed_streams: Vec::new(),
            cf_layout: 7,
            leader_term: 1,
            proposal: Proposal {
                node: 1,
                incarnation: 2,
                sequence: index,
            },
        }),
    }
}

/// Five entries, index 1 to 5: a membership, a blank and three groups.
fn five_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry::new_membership(
            log_id(1, 1, 1),
            Membership::new(vec![BTreeSet::from([1, 2, 3])], None),
        ),
        Entry::new_blank(log_id(1, 1, 2)),
        group(3, 0, 4),
        group(4, 4, 1),
        group(5, 5, 7),
    ]
}

/// Everything the store reads back: log state, entries, vote, committed.
async fn read_all(
    store: &mut RocksLogStore,
) -> (
    openraft::LogState<TypeConfig>,
    Vec<Entry<TypeConfig>>,
    Option<Vote<u64>>,
    Option<LogId<u64>>,
) {
    let state = store.get_log_state().await.expect("log state");
    let entries = store.try_get_log_entries(..).await.expect("entries");
    let vote = store.read_vote().await.expect("vote");
    let committed = store.read_committed().await.expect("committed");
    (state, entries, vote, committed)
}

#[tokio::test]
async fn everything_written_reads_back_after_a_reopen() {
    let dir = TempDir::new().expect("temp dir");
    let mut store = RocksLogStore::open(dir.path()).expect("open");
    store.blocking_append(five_entries()).await.expect("append");
    store.purge(log_id(1, 1, 1)).await.expect("purge");
    let vote = Vote::new_committed(1, 1);
    store.save_vote(&vote).await.expect("vote");
    store
        .save_committed(Some(log_id(1, 1, 4)))
        .await
        .expect("committed");
    let before = read_all(&mut store).await;
    drop(store);

    let mut reopened = RocksLogStore::open(dir.path()).expect("reopen");
    let after = read_all(&mut reopened).await;

    assert_eq!(after.0.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(after.0.last_log_id, Some(log_id(1, 1, 5)));
    assert_eq!(after.1, five_entries()[1..].to_vec());
    assert_eq!(after.2, Some(vote));
    assert_eq!(after.3, Some(log_id(1, 1, 4)));
    assert_eq!(after, before);
}

/// A store over a raw database the test can also write to.
fn shared_store(dir: &TempDir) -> (Arc<DB>, RocksLogStore) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let db = Arc::new(DB::open_cf(&options, dir.path(), COLUMN_FAMILIES).expect("open raw db"));
    let store = RocksLogStore::from_db(Arc::clone(&db)).expect("store over the db");
    (db, store)
}

#[tokio::test]
async fn a_garbage_entry_fails_the_read_with_its_index() {
    let dir = TempDir::new().expect("temp dir");
    let (db, mut store) = shared_store(&dir);
    store.blocking_append(five_entries()).await.expect("append");
    let log = db.cf_handle(RAFT_LOG_CF).expect("raft_log");
    db.put_cf(log, 3u64.to_be_bytes(), b"not a framed entry")
        .expect("overwrite index 3");

    let error = store
        .try_get_log_entries(1..6)
        .await
        .expect_err("index 3 is garbage");
    let text = error.to_string();
    assert!(text.contains("LogIndex(3)"), "{text}");
    assert!(text.contains("crc mismatch"), "{text}");

    // The entries before it still read: the damage is reported, not spread.
    let before = store.try_get_log_entries(1..3).await.expect("entries 1, 2");
    assert_eq!(before, five_entries()[..2].to_vec());
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_entry_fails_the_log_state_with_its_index() {
    let dir = TempDir::new().expect("temp dir");
    let (db, mut store) = shared_store(&dir);
    store.blocking_append(five_entries()).await.expect("append");
    let log = db.cf_handle(RAFT_LOG_CF).expect("raft_log");
    let mut value = db
        .get_cf(log, 5u64.to_be_bytes())
        .expect("read index 5")
        .expect("index 5 is stored");
    let last = value.len() - 1;
    value[last] ^= 0x01;
    db.put_cf(log, 5u64.to_be_bytes(), value)
        .expect("overwrite index 5");

    let error = store.get_log_state().await.expect_err("index 5 is damaged");
    let text = error.to_string();
    assert!(text.contains("LogIndex(5)"), "{text}");
    assert!(text.contains("crc mismatch"), "{text}");
}

#[test]
fn a_database_without_the_raft_column_families_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = Arc::new(DB::open(&options, dir.path()).expect("open raw db"));
    let error = RocksLogStore::from_db(db).expect_err("no raft_log");
    assert!(
        matches!(error, LogStoreError::MissingColumnFamily("raft_log")),
        "{error}"
    );
}

#[test]
fn raft_column_families_with_data_but_no_format_version_are_refused() {
    let dir = TempDir::new().expect("temp dir");
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let db = Arc::new(DB::open_cf(&options, dir.path(), COLUMN_FAMILIES).expect("open raw db"));
    let log = db.cf_handle(RAFT_LOG_CF).expect("raft_log");
    db.put_cf(log, 1u64.to_be_bytes(), b"someone else's data")
        .expect("put");
    let error = RocksLogStore::from_db(Arc::clone(&db)).expect_err("no format version");
    assert!(matches!(error, LogStoreError::NotARaftLog), "{error}");
}
