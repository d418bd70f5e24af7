//! The raft type configuration of Cairn's cluster mode and the data its log
//! carries (`server/CLUSTER.md`, "What the raft log holds: commit groups").
//!
//! This module owns the vocabulary every other part of the crate speaks:
//! [`TypeConfig`] fixes openraft's generic parameters once (node ids, node
//! addresses, entry and response types, snapshot data), [`GroupEntry`] is what
//! one raft log entry replicates (one commit group of the leader's committer)
//! and [`GroupApplied`] is what applying it answers. It holds no logic: the
//! log store ([`crate::log_store`]) persists these types, the network
//! ([`crate::network`]) ships them.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// openraft's type configuration for Cairn: node ids are `u64`, a node
    /// is known by its [`openraft::BasicNode`] address, one entry carries one
    /// [`GroupEntry`] and answers one [`GroupApplied`].
    pub TypeConfig:
        D = GroupEntry,
        R = GroupApplied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        /// A snapshot held in memory, for now. The design's snapshot is a
        /// RocksDB checkpoint streamed file by file (`server/CLUSTER.md`,
        /// "No unbounded second copy"); that checkpoint-file type replaces
        /// this one when snapshots are built.
        SnapshotData = Cursor<Vec<u8>>,
);

/// One commit group of the leader's committer, as one raft log entry: the
/// store's [`cairn_storage::SealedGroup`], field for field, plus who
/// proposed it.
///
/// The batch stays opaque here: only the store decodes it
/// (`Store::apply_replicated`), so the raft layer never depends on the
/// record format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The committer's sealed RocksDB write batch (`WriteBatch::data`).
    pub group: Vec<u8>,
    /// The position of the group's first event: the applied head the entry
    /// was numbered against. A mismatch at apply is a fail-stop error.
    pub first_position: u64,
    /// How many events the group adds; the head after the entry is
    /// `first_position + events`.
    pub events: u64,
    /// The next stream id after the group.
    pub next_stream_id: u64,
    /// Every stream whose record the group writes (`SealedGroup::records`).
    pub records: Vec<String>,
    /// Streams whose state or metadata the group changes
    /// (`SealedGroup::changed_streams`).
    pub changed_streams: Vec<String>,
    /// The leader's column family numbering (`SealedGroup::cf_layout`).
    pub cf_layout: u32,
    /// Which process proposed it, so that this process's state machine can
    /// hand the proposer's in-memory view to the store instead of reading
    /// the group back (`crate::replicator`).
    pub proposal: Proposal,
}

/// Who proposed an entry: a node, one run of its process (a random
/// incarnation, so that entries replayed after a restart are never taken
/// for the new process's own), and a sequence number within that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing node's id.
    pub node: u64,
    /// Random per process start.
    pub incarnation: u64,
    /// Counts the run's proposals from 1.
    pub sequence: u64,
}

impl GroupEntry {
    /// The entry for `group`, proposed as `proposal`.
    pub fn new(group: cairn_storage::SealedGroup, proposal: Proposal) -> Self {
        Self {
            group: group.batch,
            first_position: group.first_position,
            events: group.events,
            next_stream_id: group.next_stream_id,
            records: group.records,
            changed_streams: group.changed_streams,
            cf_layout: group.cf_layout,
            proposal,
        }
    }

    /// The store's view of the entry (what `Store::apply_replicated` takes).
    pub fn sealed(&self) -> cairn_storage::SealedGroup {
        cairn_storage::SealedGroup {
            batch: self.group.clone(),
            first_position: self.first_position,
            events: self.events,
            next_stream_id: self.next_stream_id,
            records: self.records.clone(),
            changed_streams: self.changed_streams.clone(),
            cf_layout: self.cf_layout,
        }
    }
}

/// What applying one entry answers: the head position after it.
///
/// A blank or membership entry moves no position, so it answers the head
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupApplied {
    /// The next position to assign after the entry was applied.
    pub head: u64,
}
