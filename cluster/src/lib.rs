//! Cairn's cluster mode on openraft (issue 17; the design is
//! `server/CLUSTER.md`). This crate owns what is raft-specific and nothing of
//! the event log itself: the raft type configuration and the group entry it
//! replicates ([`types`]), the raft log and vote kept in RocksDB
//! ([`log_store`]), the node-to-node gRPC transport ([`network`]), the state
//! machine over the store and the store's replicator ([`state_machine`]), its
//! snapshots on disk ([`snapshot`]), and one running node with its role
//! watcher ([`node`]).
//!
//! A single-node `cairn` constructs nothing of this crate.

pub mod log_store;
pub mod network;
pub mod node;
pub mod snapshot;
pub mod state_machine;
pub mod types;
