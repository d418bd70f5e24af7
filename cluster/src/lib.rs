//! Cairn's cluster mode on openraft (issue 17; the design is
//! `server/CLUSTER.md`). This crate owns what is raft-specific and nothing of
//! the event log itself: the raft type configuration and the group entry it
//! replicates ([`types`]), the raft log and vote kept in RocksDB
//! ([`log_store`]), and the node-to-node gRPC transport ([`network`]).
//!
//! Status: building blocks only. No `cairn` process runs raft yet: the
//! committer does not produce group entries, there is no state machine over
//! the store, no snapshot transfer, no membership RPC. A single-node `cairn`
//! does not depend on this crate.

pub mod log_store;
pub mod network;
pub mod types;
