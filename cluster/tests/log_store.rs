//! The RocksDB raft log store: openraft's own conformance suite, durability
//! across a reopen, and damaged values that must fail with their index.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use cairn_cluster::log_store::{COLUMN_FAMILIES, LogStoreError, RAFT_LOG_CF, RocksLogStore};
use cairn_cluster::types::{GroupApplied, GroupEntry, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    Entry, EntryPayload, LogId, Membership, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::DB;
use tempfile::TempDir;

/// What the test state machine holds and snapshots.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct State {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, openraft::BasicNode>,
    head: u64,
}

/// An in-memory state machine, for these tests ONLY: openraft's suite needs
/// one beside the log store. The real state machine is the event store; this
/// one only tracks the applied log id, the membership and the head position.
#[derive(Debug, Clone, Default)]
struct MemStateMachine {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Debug, Default)]
struct MemInner {
    state: State,
    /// The last built or installed snapshot: its meta and bytes.
    current: Option<(SnapshotMeta<u64, openraft::BasicNode>, Vec<u8>)>,
    /// Makes every built snapshot's id unique.
    snapshots_built: u64,
}

impl MemStateMachine {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().expect("state machine lock")
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let mut inner = self.lock();
        let data = postcard::to_allocvec(&inner.state)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        inner.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.state.last_applied,
            last_membership: inner.state.last_membership.clone(),
            snapshot_id: format!("snapshot-{}", inner.snapshots_built),
        };
        inner.current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<u64>>,
            StoredMembership<u64, openraft::BasicNode>,
        ),
        StorageError<u64>,
    > {
        let inner = self.lock();
        Ok((
            inner.state.last_applied,
            inner.state.last_membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupApplied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(group) => {
                    if group.first_position != inner.state.head {
                        return Err(StorageIOError::apply(
                            entry.log_id,
                            &std::io::Error::other("first_position is not the head"),
                        )
                        .into());
                    }
                    inner.state.head += group.events;
                }
                EntryPayload::Membership(membership) => {
                    inner.state.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            replies.push(GroupApplied {
                head: inner.state.head,
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let state: State = postcard::from_bytes(&data)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let mut inner = self.lock();
        inner.state = state;
        inner.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self.lock().current.clone().map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Builds a log store in a fresh temporary directory (the guard) and an
/// empty test state machine.
struct RocksBuilder;

impl StoreBuilder<TypeConfig, RocksLogStore, MemStateMachine, TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(TempDir, RocksLogStore, MemStateMachine), StorageError<u64>> {
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
