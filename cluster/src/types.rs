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

/// One commit group of the leader's committer, as one raft log entry.
///
/// In this slice the group is carried as the committer's encoded group,
/// opaque bytes, beside the two numbers that apply checks against the
/// applied head (`first_position == head`, then `head += events`). The
/// committer does not produce entries yet: nothing constructs a
/// `GroupEntry` outside tests until cluster mode drives the committer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The committer's encoded group (its events, stream records, counters
    /// and per-request outcomes). Opaque here: only the committer's decoder
    /// reads it, so the raft layer never depends on the record format.
    pub group: Vec<u8>,
    /// The position of the group's first event: the applied head the entry
    /// was numbered against. A mismatch at apply is a fail-stop error.
    pub first_position: u64,
    /// How many events the group adds; the head after the entry is
    /// `first_position + events`.
    pub events: u64,
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
