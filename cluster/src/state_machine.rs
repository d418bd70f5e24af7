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
//! group with `Raft::client_write` and returns once the entry is committed
//! and applied here. It leaves the committer's in-memory view of the group in
//! a [`Proposals`] table under the entry's [`Proposal`]; the state machine
//! takes it from there when it applies that entry, so the proposing node's
//! catalog and live ring are fed without reading the group back. Taking is
//! the one arbiter of a race: when `client_write` fails (leadership lost)
//! and the view is still in the table, the entry was not applied here, and
//! the committer answers `NotLeader`; when the state machine already took
//! it, the entry was applied and the write succeeded.
//!
//! Not built yet: snapshots. The raft config must disable them
//! (`SnapshotPolicy::Never`), so the log is never purged and a lagging node
//! always catches up from the log; `build_snapshot` and `install_snapshot`
//! answer an error naming that.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cairn_storage::{Error as StoreError, GroupEffect, Replicator, SealedGroup, Store};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, Raft, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::types::{GroupApplied, GroupEntry, Proposal, TypeConfig};

/// The key the applied state's crc covers (it lives under the store's own
/// meta key; this names it for the frame).
const APPLIED_STATE_KEY: &[u8] = b"replicated_state";

/// What the store keeps of raft, in the same batch as each applied entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
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
}

impl StoreStateMachine {
    /// The state machine applying to `store`, taking proposers' views from
    /// `proposals` (the same table the node's [`RaftReplicator`] fills).
    pub fn new(store: Store, proposals: Arc<Proposals>) -> Self {
        Self { store, proposals }
    }

    /// The applied state as stored (boxed: openraft's error is large).
    fn read_applied(&self) -> Result<AppliedState, Box<StorageError<u64>>> {
        let stored = self
            .store
            .replicated_state()
            .map_err(|error| Box::new(StorageIOError::read_state_machine(&error).into()))?;
        match stored {
            None => Ok(AppliedState::default()),
            Some(bytes) => crate::log_store::unframe(APPLIED_STATE_KEY, &bytes).map_err(|reason| {
                Box::new(
                    StorageIOError::read_state_machine(&std::io::Error::other(format!(
                        "the applied raft state is damaged: {reason}"
                    )))
                    .into(),
                )
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
        match entry.payload {
            EntryPayload::Normal(group) => {
                let effect = proposals.take(&group.proposal);
                let framed = frame(&state).map_err(|error| failed(&error))?;
                store
                    .apply_replicated(&group.sealed(), effect, &framed)
                    .map_err(|error| failed(&error))?;
            }
            EntryPayload::Blank => {
                let framed = frame(&state).map_err(|error| failed(&error))?;
                store
                    .apply_replicated_state(&framed)
                    .map_err(|error| failed(&error))?;
            }
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(log_id), membership);
                let framed = frame(&state).map_err(|error| failed(&error))?;
                store
                    .apply_replicated_state(&framed)
                    .map_err(|error| failed(&error))?;
            }
        }
        replies.push(GroupApplied {
            head: store.applied_head(),
        });
    }
    Ok(replies)
}

fn frame(state: &AppliedState) -> Result<Vec<u8>, crate::log_store::LogStoreError> {
    crate::log_store::frame(APPLIED_STATE_KEY, "applied raft state", state)
}

/// Why a snapshot operation failed: snapshots are not built yet.
fn snapshots_not_built() -> std::io::Error {
    std::io::Error::other(
        "raft snapshots are not built yet (server/CLUSTER.md): the log is kept whole and a \
         lagging node catches up from it",
    )
}

impl RaftSnapshotBuilder<TypeConfig> for StoreStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        Err(StorageIOError::write_snapshot(None, &snapshots_not_built()).into())
    }
}

impl RaftStateMachine<TypeConfig> for StoreStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
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
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Err(StorageIOError::write_snapshot(None, &snapshots_not_built()).into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        Err(StorageIOError::write_snapshot(Some(meta.signature()), &snapshots_not_built()).into())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(None)
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

impl Replicator for RaftReplicator {
    fn replicate(&self, group: SealedGroup, effect: GroupEffect) -> Result<(), StoreError> {
        let proposal = self.proposals.propose(effect);
        let entry = GroupEntry::new(group, proposal);
        let written = self.runtime.block_on(self.raft.client_write(entry));
        let error = match written {
            Ok(_) => {
                // Applied here: the state machine took the view (or the
                // entry applied before the view could be left, which
                // `propose` rules out by leaving it first).
                return Ok(());
            }
            Err(error) => error,
        };
        if self.proposals.take(&proposal).is_none() {
            // The state machine applied the entry before the error arrived.
            return Ok(());
        }
        let (leader, kurrent_leader) = match &error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => forward
                .leader_id
                .map_or((None, None), |id| (self.leader_address)(id)),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(_)) => (None, None),
            RaftError::Fatal(fatal) => {
                tracing::error!(%fatal, "raft stopped; this node accepts no writes");
                (None, None)
            }
        };
        Err(StoreError::NotLeader {
            leader,
            kurrent_leader,
        })
    }
}
