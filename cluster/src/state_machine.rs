//! The raft state machine over the event store, and the replicator the
//! store's committer hands its groups to (`server/CLUSTER.md`, "What the raft
//! log holds" and "Durability at acknowledgement").
//!
//! [`StoreStateMachine`] applies committed entries to the node's
//! [`Store`]: a group entry through `Store::apply_replicated` (the group's
//! batch and the applied raft state in one RocksDB write), a blank or
//! membership entry through `Store::apply_replicated_state`. The applied
//! state (last applied log id, membership) lives in the store's database, so
//! the state machine is the event log itself: nothing else is persisted.
//!
//! [`RaftReplicator`] is the store's [`Replicator`]: it proposes a sealed
//! group with `Raft::client_write_ff` (so the committer can propose the next
//! group meanwhile) and its [`Proposed`] resolves once the entry is committed
//! and applied here. It leaves the committer's in-memory view of the group in
//! a [`Proposals`] table under the entry's [`Proposal`]; the state machine
//! takes it from there when it applies that entry, so the proposing node's
//! catalog and live ring are fed without reading the group back. Taking is
//! the one arbiter of a race: when `client_write` fails (leadership lost)
//! and the view is still in the table, the entry was not applied here, and
//! the committer answers `NotLeader`; when the state machine already took
//! it, the entry was applied and the write succeeded.
//!
//! Snapshots are the store itself ([`crate::snapshot`]): building one takes a
//! checkpoint of the store, installing one (on a node the leader's log can no
//! longer catch up) replaces the store's contents with a verified checkpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_storage::{Error as StoreError, GroupEffect, Proposed, Replicator, SealedGroup, Store};
use openraft::error::ClientWriteError;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, Raft, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::snapshot::Snapshots;
use crate::types::{GroupApplied, GroupEntry, Member, Proposal, TypeConfig};

/// The key the applied state's crc covers (it lives under the store's own
/// meta key; this names it for the frame).
const APPLIED_STATE_KEY: &[u8] = b"replicated_state";

/// What the store keeps of raft, in the same batch as each applied entry
/// (and so in every snapshot of the store, `crate::snapshot`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AppliedState {
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) membership: StoredMembership<u64, Member>,
}

impl AppliedState {
    /// The framed bytes the store keeps.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, crate::log_store::LogStoreError> {
        frame(self)
    }

    /// The state as the store holds it (crc-framed).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::log_store::unframe(APPLIED_STATE_KEY, bytes)
            .map_err(|reason| format!("the applied raft state is damaged: {reason}"))
    }
}

/// The in-memory views of groups this process proposed and has not yet seen
/// applied, by proposal.
#[derive(Debug)]
pub struct Proposals {
    node: u64,
    incarnation: u64,
    next_sequence: AtomicU64,
    pending: Mutex<HashMap<u64, GroupEffect>>,
}

impl Proposals {
    /// The table of node `node`, for one run of its process.
    pub fn new(node: u64) -> Arc<Self> {
        Arc::new(Self {
            node,
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0,
            next_sequence: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn propose(&self, effect: GroupEffect) -> Proposal {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(sequence, effect);
        Proposal {
            node: self.node,
            incarnation: self.incarnation,
            sequence,
        }
    }

    /// Takes the view left for `proposal`, if this process proposed it and
    /// nobody took it yet.
    fn take(&self, proposal: &Proposal) -> Option<GroupEffect> {
        if proposal.node != self.node || proposal.incarnation != self.incarnation {
            return None;
        }
        self.lock().remove(&proposal.sequence)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, GroupEffect>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// openraft's state machine over one node's store.
#[derive(Clone)]
pub struct StoreStateMachine {
    store: Store,
    proposals: Arc<Proposals>,
    snapshots: Snapshots,
}

impl StoreStateMachine {
    /// The state machine applying to `store`, taking proposers' views from
    /// `proposals` (the same table the node's [`RaftReplicator`] fills),
    /// keeping its raft snapshots in `snapshots`.
    pub fn new(store: Store, proposals: Arc<Proposals>, snapshots: Snapshots) -> Self {
        Self {
            store,
            proposals,
            snapshots,
        }
    }

    /// The applied state as stored (boxed: openraft's error is large).
    fn read_applied(&self) -> Result<AppliedState, Box<StorageError<u64>>> {
        let stored = self
            .store
            .replicated_state()
            .map_err(|error| Box::new(StorageIOError::read_state_machine(&error).into()))?;
        match stored {
            None => Ok(AppliedState::default()),
            Some(bytes) => AppliedState::decode(&bytes).map_err(|reason| {
                Box::new(StorageIOError::read_state_machine(&std::io::Error::other(reason)).into())
            }),
        }
    }
}

fn apply_entries(
    store: &Store,
    proposals: &Proposals,
    mut state: AppliedState,
    entries: Vec<Entry<TypeConfig>>,
) -> Result<Vec<GroupApplied>, Box<StorageError<u64>>> {
    let mut replies = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = entry.log_id;
        state.last_applied = Some(log_id);
        let failed = |error: &dyn std::fmt::Display| {
            Box::new(StorageError::from(StorageIOError::apply(
                log_id,
                openraft::AnyError::error(error.to_string()),
            )))
        };
        // What the entry writes besides the applied state: a group's batch,
        // or nothing (blank and membership entries, skipped groups).
        let mut group_to_apply = None;
        let mut skipped = false;
        match entry.payload {
            EntryPayload::Normal(group) if group.leader_term != log_id.leader_id.term => {
                // Numbered by a leadership of another term (its proposer's
                // writer was overtaken by an election between numbering and
                // proposing): its positions may collide with what that
                // election's leaders wrote. Every node holds the same entry
                // at the same log id, so every node skips it alike.
                drop(proposals.take(&group.proposal));
                tracing::warn!(
                    %log_id,
                    numbered_in_term = group.leader_term,
                    "a group proposed by an earlier leadership was skipped"
                );
                skipped = true;
            }
            EntryPayload::Normal(group) => {
                let effect = proposals.take(&group.proposal);
                group_to_apply = Some((group, effect));
            }
            EntryPayload::Blank => {}
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(log_id), membership);
            }
        }
        let framed = state.encode().map_err(|error| failed(&error))?;
        match group_to_apply {
            Some((group, effect)) => store.apply_replicated(&group.sealed(), effect, &framed),
            None => store.apply_replicated_state(&framed),
        }
        .map_err(|error| failed(&error))?;
        replies.push(GroupApplied {
            head: store.applied_head(),
            skipped,
        });
    }
    Ok(replies)
}

fn frame(state: &AppliedState) -> Result<Vec<u8>, crate::log_store::LogStoreError> {
    crate::log_store::frame(APPLIED_STATE_KEY, "applied raft state", state)
}

/// A snapshot failure as openraft's storage error.
fn snapshot_failed(
    meta: Option<&crate::snapshot::Meta>,
    error: &dyn std::fmt::Display,
) -> StorageError<u64> {
    StorageIOError::write_snapshot(
        meta.map(SnapshotMeta::signature),
        &std::io::Error::other(error.to_string()),
    )
    .into()
}

/// Opens a snapshot archive for openraft to send.
async fn open_archive(
    meta: &crate::snapshot::Meta,
    archive: &std::path::Path,
) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
    tokio::fs::File::open(archive)
        .await
        .map(Box::new)
        .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error).into())
}

impl RaftSnapshotBuilder<TypeConfig> for StoreStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (store, snapshots) = (self.store.clone(), self.snapshots.clone());
        let (meta, archive) = tokio::task::spawn_blocking(move || snapshots.build(&store))
            .await
            .map_err(|error| snapshot_failed(None, &error))?
            .map_err(|error| snapshot_failed(None, &error))?;
        let snapshot = open_archive(&meta, &archive).await?;
        Ok(Snapshot { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StoreStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        let state = self.read_applied().map_err(|error| *error)?;
        Ok((state.last_applied, state.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupApplied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.read_applied().map_err(|error| *error)?;
        let store = self.store.clone();
        let proposals = Arc::clone(&self.proposals);
        tokio::task::spawn_blocking(move || apply_entries(&store, &proposals, state, entries))
            .await
            .map_err(|error| {
                StorageIOError::write_state_machine(&std::io::Error::other(error.to_string()))
            })?
            .map_err(|error| *error)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        tokio::fs::File::create(self.snapshots.incoming())
            .await
            .map(Box::new)
            .map_err(|error| StorageIOError::write_snapshot(None, &error).into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        snapshot
            .sync_all()
            .await
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        drop(snapshot);
        let (store, snapshots, owned) = (self.store.clone(), self.snapshots.clone(), meta.clone());
        tokio::task::spawn_blocking(move || snapshots.install(&store, &owned))
            .await
            .map_err(|error| snapshot_failed(Some(meta), &error))?
            .map_err(|error| {
                tracing::error!(%error, "a raft snapshot from the leader was refused");
                snapshot_failed(Some(meta), &error)
            })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let snapshots = self.snapshots.clone();
        let current = tokio::task::spawn_blocking(move || snapshots.current())
            .await
            .map_err(|error| snapshot_failed(None, &error))?
            .map_err(|error| snapshot_failed(None, &error))?;
        match current {
            None => Ok(None),
            Some((meta, archive)) => {
                let snapshot = open_archive(&meta, &archive).await?;
                Ok(Some(Snapshot { meta, snapshot }))
            }
        }
    }
}

/// Maps a node id to the addresses writes are redirected to when it leads:
/// its `cairn.v1` address and its KurrentDB-facade address, when known.
pub type LeaderAddress = Arc<dyn Fn(u64) -> (Option<String>, Option<String>) + Send + Sync>;

/// The store's replicator: proposes each sealed group to raft.
pub struct RaftReplicator {
    raft: Raft<TypeConfig>,
    runtime: tokio::runtime::Handle,
    proposals: Arc<Proposals>,
    leader_address: LeaderAddress,
}

impl RaftReplicator {
    /// A replicator proposing to `raft` on `runtime` (the committer's writer
    /// thread blocks on it), leaving views in `proposals`, naming the leader
    /// in redirects with `leader_address`.
    pub fn new(
        raft: Raft<TypeConfig>,
        runtime: tokio::runtime::Handle,
        proposals: Arc<Proposals>,
        leader_address: LeaderAddress,
    ) -> Self {
        Self {
            raft,
            runtime,
            proposals,
            leader_address,
        }
    }
}

/// `NotLeader` naming no leader: the outcome is unknown and this node knows
/// of none to redirect to.
fn no_leader_known() -> StoreError {
    StoreError::NotLeader {
        leader: None,
        kurrent_leader: None,
    }
}

impl Replicator for RaftReplicator {
    fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed {
        let proposal = self.proposals.propose(effect);
        let entry = GroupEntry::new(group, proposal);
        // Only the hand-over to raft's core is awaited here, on the writer
        // thread, so entries reach the log in the committer's order.
        let receiver = match self.runtime.block_on(self.raft.client_write_ff(entry)) {
            Ok(receiver) => receiver,
            Err(fatal) => {
                drop(self.proposals.take(&proposal));
                tracing::error!(%fatal, "raft stopped; this node accepts no writes");
                return Proposed::done(Err(no_leader_known()));
            }
        };
        let runtime = self.runtime.clone();
        let proposals = Arc::clone(&self.proposals);
        let leader_address = Arc::clone(&self.leader_address);
        Proposed::later(move || {
            let error = match runtime.block_on(receiver) {
                // Applied here: the state machine took the view.
                Ok(Ok(response)) if !response.data.skipped => return Ok(()),
                // Skipped as stale everywhere: nothing of it was written.
                Ok(Ok(_)) => return Err(no_leader_known()),
                Ok(Err(error)) => Some(error),
                // Raft's core dropped the request: it stopped.
                Err(_) => None,
            };
            if proposals.take(&proposal).is_none() {
                // The state machine applied the entry before the error
                // arrived.
                return Ok(());
            }
            let (leader, kurrent_leader) = match &error {
                Some(ClientWriteError::ForwardToLeader(forward)) => forward
                    .leader_id
                    .map_or((None, None), |id| (leader_address)(id)),
                Some(ClientWriteError::ChangeMembershipError(_)) => (None, None),
                None => {
                    tracing::error!("raft stopped; this node accepts no writes");
                    (None, None)
                }
            };
            Err(StoreError::NotLeader {
                leader,
                kurrent_leader,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use cairn_storage::{EventData, ExpectedRevision, ReadRequest, ReadSource};
    use openraft::CommittedLeaderId;

    use super::*;
    use crate::snapshot::tests::{Apply, clustered};

    /// The entry at `index` of term `term` holding `group`.
    fn entry(term: u64, index: u64, group: SealedGroup) -> Entry<TypeConfig> {
        let proposal = Proposal {
            node: 1,
            incarnation: 0,
            sequence: index,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(GroupEntry::new(group, proposal)),
        }
    }

    #[test]
    fn a_group_the_log_holds_at_another_term_than_its_own_is_skipped() {
        let (leader_dir, follower_dir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let leader = clustered(leader_dir.path());
        let apply = Apply::attached(&leader);
        leader.lead(4).wait().expect("lead");
        for n in 0..2 {
            leader
                .append(
                    "s",
                    ExpectedRevision::Any,
                    vec![EventData::json("E", format!("{n}"))],
                )
                .wait()
                .expect("append");
        }
        let groups = apply.groups();
        assert!(groups.iter().all(|group| group.leader_term == 4));

        // The first at its own term applies; the second, at a later term's
        // log id (its proposer was overtaken by an election), is skipped:
        // nothing of it is written, the applied state moves past it.
        let follower = clustered(follower_dir.path());
        let proposals = Proposals::new(2);
        let replies = apply_entries(
            &follower,
            &proposals,
            AppliedState::default(),
            vec![
                entry(4, 1, groups[0].clone()),
                entry(6, 2, groups[1].clone()),
            ],
        )
        .expect("apply");
        assert_eq!(
            replies,
            vec![
                GroupApplied {
                    head: 1,
                    skipped: false
                },
                GroupApplied {
                    head: 1,
                    skipped: true
                }
            ]
        );
        let read = follower
            .read(&ReadRequest::forwards(ReadSource::All, 10))
            .expect("read");
        assert_eq!(read.events.len(), 1);
        let stored = follower.replicated_state().expect("state").expect("some");
        let state = AppliedState::decode(&stored).expect("decode");
        assert_eq!(state.last_applied.map(|id| id.index), Some(2));
    }
}
