//! Cluster mode's seam in the store (`server/CLUSTER.md`, "What the raft log
//! holds"): what the committer hands to replication, and how a replicated
//! group is applied on every node.
//!
//! This module owns:
//! - [`SealedGroup`]: one commit group as one deterministic, self-contained
//!   write: the committer's sealed RocksDB batch (events, index entries,
//!   stream records, counters; `created` times fixed by the leader) and the
//!   numbers apply checks. Applying the same `SealedGroup` on any node yields
//!   the same keys and values, so every node holds the same events at the
//!   same positions, byte for byte. A scavenge's removals travel the same
//!   way (`scavenge.rs`): a group may delete hidden records, and a group of
//!   removals alone adds no event and writes no stream record.
//! - [`GroupEffect`]: the in-memory view of a group (stream records, events)
//!   the proposing node already holds, so its state machine need not read
//!   them back.
//! - [`Replicator`]: what the cluster crate implements: take a sealed group
//!   in the committer's order and return a [`Proposed`] that resolves once a
//!   quorum holds it and this node applied it. Several groups may be
//!   proposed before the first resolves (the committer keeps up to
//!   `StoreOptions::replicated_groups_in_flight`; `committer.rs`, "Cluster
//!   mode").
//! - The apply side: [`Store::apply_replicated`], [`Store::replicated_state`],
//!   and the roles ([`Store::lead`], [`Store::follow`]).
//! - Snapshots: a snapshot is a backup (`backup.rs`: a checkpoint and its
//!   manifest) taken of a clustered store; [`backup_replicated_state`] reads
//!   the raft state it holds, and [`Store::install_snapshot`] replaces a
//!   follower's contents with a verified one.
//!
//! It must not know raft: the applied raft state (log id, membership) is
//! opaque bytes to it, kept under one meta key in the same batch as the
//! group, so after a crash a node re-applies from exactly the entry after it.
//!
//! Invariants:
//! - Only a clustered store (`StoreOptions::clustered`) replicates; a
//!   single-node store never constructs any of these types.
//! - Groups apply in raft log order, one at a time (`Shared::applied_head` is
//!   held across the write), each exactly at the applied head: a group whose
//!   first position differs is a fail-stop error, never skipped or renumbered.
//! - The catalog and the live ring learn of a group only after its write
//!   returned, exactly as in the single-node writer (catalog first, then the
//!   ring): readers see a prefix of the leader's committed log.
//! - A replicated batch names column families by RocksDB's numeric ids, so a
//!   node applies it only when its own ids match the leader's
//!   ([`SealedGroup::cf_layout`]); a mismatch is refused, never guessed.
//! - Installing a snapshot copies the meta column family last, in one batch
//!   with the deletion of the old meta keys: until it lands the store still
//!   holds its old applied state, so a crash mid-install leaves a node that
//!   re-installs (the cluster crate keeps the snapshot until it is done),
//!   never one that believes a half-copied state is applied.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBRecoveryMode, IteratorMode, Options, WriteBatch,
    WriteBatchIteratorCf, WriteOptions,
};

use crate::catalog::load;
use crate::codec::{self, StreamRecord, cf, meta_key};
use crate::error::{Error, Result};
use crate::live::CommitNotice;
use crate::model::RecordedEvent;
use crate::store::Store;
use crate::ticket::Ticket;

/// The meta key holding the applied raft state (opaque to the store).
const REPLICATED_STATE: &[u8] = b"replicated_state";

/// One commit group, sealed by the leader's committer, as it is replicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedGroup {
    /// The group's RocksDB write batch, encoded (`WriteBatch::data`), with the
    /// counters (`head`, `next_stream_id`, segment counters) in it.
    pub batch: Vec<u8>,
    /// The position of the group's first event: the applied head it was
    /// numbered against.
    pub first_position: u64,
    /// How many events the group adds.
    pub events: u64,
    /// The next stream id after the group.
    pub next_stream_id: u64,
    /// Every stream whose record the group writes (appends included): what
    /// a node that did not propose the group reloads into its catalog.
    pub records: Vec<String>,
    /// Streams whose state or metadata the group changes (deletes,
    /// tombstones, metadata): what subscriptions re-check
    /// (`CommitNotice::changed_streams`).
    pub changed_streams: Vec<String>,
    /// The leader's column family numbering ([`column_family_layout`]).
    pub cf_layout: u32,
    /// The raft term of the leadership whose committer numbered the group
    /// (what [`Store::lead`] was given). The group's positions follow from
    /// the applied head at the start of that leadership and its own earlier
    /// groups, so the group is valid only in that term: an entry the raft
    /// log holds at another term's log id is a stale proposal, which every
    /// node skips alike (the cluster crate's state machine).
    pub leader_term: u64,
}

impl SealedGroup {
    /// The head after the group: the next position to assign.
    pub fn head(&self) -> u64 {
        self.first_position + self.events
    }
}

/// What the proposing node's committer already holds of a group: its changed
/// stream records and its events. Opaque outside this crate; the cluster
/// crate only carries it from [`Replicator::replicate`] to
/// [`Store::apply_replicated`] on the same node.
pub struct GroupEffect {
    pub(crate) overlay: HashMap<String, StreamRecord>,
    pub(crate) events: Vec<Arc<RecordedEvent>>,
}

impl std::fmt::Debug for GroupEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupEffect")
            .field("streams", &self.overlay.len())
            .field("events", &self.events.len())
            .finish()
    }
}

/// Cluster mode's replication of sealed groups (implemented by the cluster
/// crate over openraft).
pub trait Replicator: Send + Sync + 'static {
    /// Proposes one group. Called on the committer's writer thread, one
    /// group after the other in position order; the proposals must reach
    /// the log in that order (each group is numbered after the one before).
    /// It should return as soon as the group is on its way, without waiting
    /// for the quorum: the writer proposes the next group meanwhile.
    ///
    /// The [`Proposed`] resolves to `Ok(())` only once a quorum holds the
    /// group durably and this node applied it ([`Store::apply_replicated`],
    /// handed `effect`). Otherwise to [`Error::NotLeader`]: this node is (or
    /// became) no leader, and the group's fate is unknown to it — it may
    /// still be committed by the next leader, and is then applied here like
    /// any other entry. Any other error poisons the store.
    fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed;
}

/// A proposed group's outcome, to wait for ([`Replicator::propose`]).
/// Waited for on the committer's completion thread, in proposal order.
pub struct Proposed(Box<dyn FnOnce() -> Result<()> + Send>);

impl Proposed {
    /// An outcome already known (a replicator that does its work in
    /// `propose`, or one that refused the group at once).
    pub fn done(outcome: Result<()>) -> Self {
        Self(Box::new(move || outcome))
    }

    /// An outcome `wait` blocks for.
    pub fn later(wait: impl FnOnce() -> Result<()> + Send + 'static) -> Self {
        Self(Box::new(wait))
    }

    /// Blocks until the outcome is known.
    pub(crate) fn wait(self) -> Result<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for Proposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proposed")
    }
}

/// A fingerprint of the database's column family ids, in `cf::ALL` order.
///
/// rust-rocksdb does not expose a handle's id, but an encoded batch records
/// it: a one-entry batch per column family is decoded for it.
pub(crate) fn column_family_layout(db: &DB) -> u32 {
    struct FirstId(Option<u32>);
    impl WriteBatchIteratorCf for FirstId {
        fn put_cf(&mut self, cf_id: u32, _key: &[u8], _value: &[u8]) {
            self.0.get_or_insert(cf_id);
        }
        fn delete_cf(&mut self, _cf_id: u32, _key: &[u8]) {}
        fn merge_cf(&mut self, _cf_id: u32, _key: &[u8], _value: &[u8]) {}
    }
    let mut hasher = crc32fast::Hasher::new();
    for name in cf::ALL {
        let id = db.cf_handle(name).map_or(u32::MAX, |handle| {
            let mut batch = WriteBatch::default();
            batch.put_cf(handle, b"", b"");
            let mut first = FirstId(None);
            batch.iterate_cf(&mut first);
            first.0.unwrap_or(u32::MAX)
        });
        hasher.update(name.as_bytes());
        hasher.update(&id.to_be_bytes());
    }
    hasher.finalize()
}

impl Store {
    /// Cluster mode: attaches the replicator sealed groups go to. Only the
    /// first call counts; a single-node store never calls it.
    pub fn attach_replicator(&self, replicator: Arc<dyn Replicator>) {
        if self.shared().replicator.set(replicator).is_err() {
            tracing::warn!("a replicator was already attached; the new one is ignored");
        }
    }

    /// Cluster mode: this node leads in raft term `term` and has applied
    /// every entry of earlier terms. Resolves once the committer reloaded its
    /// counters from the applied state and accepts writes; every group it
    /// numbers from then on carries `term` ([`SealedGroup::leader_term`]).
    pub fn lead(&self, term: u64) -> Ticket<()> {
        self.submit_lead(term)
    }

    /// Cluster mode: this node does not lead (any more). Every request from
    /// now on, and every one not yet handed to the replicator, is answered
    /// [`Error::NotLeader`] with `leader` (the leader's `cairn.v1` address)
    /// and `kurrent_leader` (its KurrentDB-facade address), when known, until
    /// [`Store::lead`].
    pub fn follow(&self, leader: Option<String>, kurrent_leader: Option<String>) {
        self.control().follow(Error::NotLeader {
            leader,
            kurrent_leader,
        });
    }

    /// Whether the store was opened for cluster mode
    /// (`StoreOptions::clustered`).
    pub fn is_clustered(&self) -> bool {
        self.shared().clustered
    }

    /// Cluster mode: why this node refuses writes right now
    /// ([`Error::NotLeader`], naming the leader when known), or `None` when it
    /// accepts them (the leader, or a single node). A facade can answer a
    /// write with it before reading the request (KurrentDB's batch append
    /// fails the whole call this way on a follower).
    pub fn write_refusal(&self) -> Option<Error> {
        self.control().refusal()
    }

    /// The applied raft state last stored with [`Store::apply_replicated`] or
    /// [`Store::apply_replicated_state`], if any.
    pub fn replicated_state(&self) -> Result<Option<Vec<u8>>> {
        let shared = self.shared();
        Ok(shared.db.get_cf(shared.cf(cf::META), REPLICATED_STATE)?)
    }

    /// The head after the last applied replicated group (at open: the stored
    /// head).
    pub fn applied_head(&self) -> u64 {
        *self
            .shared()
            .applied_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the applied raft state alone, for an entry that carries no
    /// group (raft's blank and membership entries).
    pub fn apply_replicated_state(&self, applied_state: &[u8]) -> Result<()> {
        let shared = self.shared();
        let _applying = shared
            .applied_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut batch = WriteBatch::default();
        batch.put_cf(shared.cf(cf::META), REPLICATED_STATE, applied_state);
        write_unsynced(&shared.db, batch)
    }

    /// Applies one committed group, with the raft state after it, in one
    /// RocksDB write; then updates the catalog and publishes the events to the
    /// live ring. `effect` is the proposing committer's view of the group when
    /// this node proposed it (else the records and events are read back).
    ///
    /// The write is not synced: the entry is already durable in the raft log,
    /// and the applied state rides in the same batch, so after a crash the
    /// node re-applies from the entry after the last one that reached disk.
    /// An error means the node cannot apply its log (a bug or a damaged
    /// disk): the caller must stop applying.
    pub fn apply_replicated(
        &self,
        group: &SealedGroup,
        effect: Option<GroupEffect>,
        applied_state: &[u8],
    ) -> Result<()> {
        let shared = self.shared();
        let mut applied_head = shared
            .applied_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if group.cf_layout != shared.cf_layout {
            return Err(Error::Poisoned(
                "a replicated group names column families by other ids than this node's \
                 database (its data directory was created by another Cairn version); \
                 rebuild this node from a snapshot"
                    .into(),
            ));
        }
        if group.first_position != *applied_head {
            return Err(Error::Poisoned(format!(
                "a replicated group starts at position {} but this node's applied head is {}",
                group.first_position, *applied_head
            )));
        }
        let mut batch = WriteBatch::from_data(&group.batch);
        batch.put_cf(shared.cf(cf::META), REPLICATED_STATE, applied_state);
        write_unsynced(&shared.db, batch)?;
        *applied_head = group.head();
        // A group may carry a scavenge's removals (`scavenge.rs`), whose
        // counter it sets: the store's total follows the stored one on every
        // node (one memtable read per group).
        let removed = stored_events_removed(shared)?;
        let grew = {
            let mut total = shared
                .events_removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let grew = removed != *total;
            *total = removed;
            grew
        };
        if grew {
            self.note_removals_applied();
        }

        let (overlay, events) = match effect {
            Some(GroupEffect { overlay, events }) => (overlay, events),
            None => (
                load_records(&shared.db, &group.records)?,
                load_events(&shared.db, group.first_position, group.head())?,
            ),
        };
        shared.catalog.apply(overlay, group.next_stream_id);
        shared.live.publish(
            events,
            &CommitNotice {
                head: group.head(),
                changed_streams: group.changed_streams.clone(),
            },
        );
        Ok(())
    }
}

/// The events-removed counter as stored (scavenges write it).
fn stored_events_removed(shared: &crate::store::Shared) -> Result<u64> {
    match shared
        .db
        .get_cf(shared.cf(cf::META), meta_key::EVENTS_REMOVED)?
    {
        Some(value) => codec::decode_u64(cf::META, "events_removed", &value),
        None => Ok(0),
    }
}

/// How many bytes of keys and values one batch of a snapshot install copies.
const INSTALL_BATCH_BYTES: usize = 8 << 20;

impl Store {
    /// Cluster mode: replaces every key of this store with the contents of
    /// the backup in `dir` (a raft snapshot the caller verified with
    /// `verify_backup`), then reloads what the store keeps in memory (applied
    /// head, catalog, live ring, scavenge counter). Returns the new applied
    /// head.
    ///
    /// Only a clustered store that does not lead may install: its committer
    /// writes nothing, and applying is held off for the whole install. The
    /// copy is not atomic (a snapshot can be larger than memory); the meta
    /// column family, which names the applied raft state, is replaced last
    /// in one batch (module invariants), so the caller must keep `dir` until
    /// this returned and call it again after a crash. Readers running during
    /// an install may see a mix of old and new contents; a node installs a
    /// snapshot only when it is far behind (joining, or back after its log
    /// was compacted away).
    pub fn install_snapshot(&self, dir: &Path) -> Result<u64> {
        let shared = self.shared();
        if !shared.clustered {
            return Err(Error::InvalidArgument(
                "only a clustered store installs raft snapshots".into(),
            ));
        }
        if self.write_refusal().is_none() {
            return Err(Error::InvalidArgument(
                "the leader does not install snapshots".into(),
            ));
        }
        let mut applied_head = shared
            .applied_head
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let snapshot = open_backup(dir)?;
        let data_families = cf::ALL.iter().filter(|name| **name != cf::META);
        for name in data_families.chain(std::iter::once(&cf::META)) {
            replace_column_family(&shared.db, &snapshot, name)?;
        }
        drop(snapshot);
        shared
            .db
            .flush_wal(true)
            .map_err(|error| Error::Io(error.into_string()))?;

        let (head, next_stream_id, _segment) = crate::store::stored_counters(&shared.db)?;
        let events_removed = stored_events_removed(shared)?;
        *shared
            .events_removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = events_removed;
        *applied_head = head;
        shared.catalog.reset(next_stream_id);
        shared.live.reset(&CommitNotice {
            head,
            changed_streams: Vec::new(),
        });
        tracing::info!(head, "installed a raft snapshot");
        Ok(head)
    }
}

/// The applied raft state a backup of a clustered store holds (what
/// [`Store::replicated_state`] answered when it was taken), if any.
pub fn backup_replicated_state(dir: &Path) -> Result<Option<Vec<u8>>> {
    let snapshot = open_backup(dir)?;
    let meta = snapshot
        .cf_handle(cf::META)
        .ok_or_else(|| Error::Io("the snapshot has no meta column family".into()))?;
    Ok(snapshot.get_cf(meta, REPLICATED_STATE)?)
}

/// Opens a backup directory read-only, every column family.
fn open_backup(dir: &Path) -> Result<DB> {
    let options = crate::store::database_options(DBRecoveryMode::TolerateCorruptedTailRecords);
    let descriptors = cf::ALL
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    DB::open_cf_descriptors_read_only(&options, dir, descriptors, false).map_err(|error| {
        Error::BackupInvalid {
            file: None,
            position: None,
            reason: format!("the snapshot does not open: {}", error.into_string()),
        }
    })
}

/// Deletes every key of column family `name` in `db` and copies the
/// snapshot's keys in, in batches of about [`INSTALL_BATCH_BYTES`]. The
/// deletion rides in the first batch, so a column family that fits one
/// batch (the meta one) is replaced in one write.
fn replace_column_family(db: &DB, snapshot: &DB, name: &str) -> Result<()> {
    let target = db
        .cf_handle(name)
        .ok_or_else(|| Error::Io(format!("the {name} column family is missing")))?;
    let source = snapshot
        .cf_handle(name)
        .ok_or_else(|| Error::Io(format!("the snapshot has no {name} column family")))?;
    let mut batch = WriteBatch::default();
    if let Some(last) = db.iterator_cf(target, IteratorMode::End).next() {
        let (last, _) = last?;
        // Every key is below the last one with a zero byte appended.
        let mut end = last.to_vec();
        end.push(0);
        batch.delete_range_cf(target, &[][..], &end[..]);
    }
    let mut bytes = 0usize;
    for item in snapshot.iterator_cf(source, IteratorMode::Start) {
        let (key, value) = item?;
        bytes += key.len() + value.len();
        batch.put_cf(target, &key, &value);
        if bytes >= INSTALL_BATCH_BYTES {
            write_unsynced(db, std::mem::take(&mut batch))?;
            bytes = 0;
        }
    }
    write_unsynced(db, batch)
}

fn write_unsynced(db: &DB, batch: WriteBatch) -> Result<()> {
    let mut options = WriteOptions::default();
    options.set_sync(false);
    db.write_opt(batch, &options)
        .map_err(|error| Error::Io(error.into_string()))
}

/// The current records of `streams`, read from the database just written.
fn load_records(db: &DB, streams: &[String]) -> Result<HashMap<String, StreamRecord>> {
    let mut records = HashMap::with_capacity(streams.len());
    for name in streams {
        if let Some(record) = load(db, name)? {
            records.insert(name.clone(), record);
        }
    }
    Ok(records)
}

/// The events at positions `first..head`, read from the database just
/// written. Every one must be there: a missing position is damage.
fn load_events(db: &DB, first: u64, head: u64) -> Result<Vec<Arc<RecordedEvent>>> {
    let log = db
        .cf_handle(cf::LOG)
        .ok_or_else(|| Error::Io("log column family missing".into()))?;
    let start = codec::log_key(first);
    let mut events = Vec::with_capacity(usize::try_from(head - first).unwrap_or(0));
    let iterator = db.iterator_cf(log, IteratorMode::From(&start, rocksdb::Direction::Forward));
    for item in iterator {
        let (key, value) = item?;
        let position = codec::read_u64(&key);
        if position >= head {
            break;
        }
        if position != first + events.len() as u64 {
            break;
        }
        let header = codec::decode_header(position, &value)?;
        events.push(Arc::new(header.to_event(position, &value)));
    }
    if events.len() as u64 != head - first {
        return Err(Error::Corrupt {
            column_family: cf::LOG,
            key: format!("{:02x?}", codec::log_key(first + events.len() as u64)),
            reason: "an applied replicated group's event is missing".into(),
        });
    }
    Ok(events)
}
