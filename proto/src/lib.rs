//! `cairn-proto`: Cairn's native gRPC protocol, generated from
//! `proto/cairn/v1/*.proto` at build time (protox; no system protoc).
//!
//! The server implements the `*_server` traits, the client uses the `*_client`
//! stubs; both share these message types. `FILE_DESCRIPTOR_SET` feeds server
//! reflection so grpcurl needs no .proto files.
//!
//! ```
//! use cairn_proto::v1::{ExpectedRevision, expected_revision::Kind};
//! let exact = ExpectedRevision { kind: Some(Kind::Exact(3)) };
//! assert_eq!(exact.kind, Some(Kind::Exact(3)));
//! ```

/// The `cairn.v1` package: every client-facing service (`Streams`,
/// `Subscriptions`, `PersistentSubscriptions`, `Server`, `Users`,
/// `Operations`, and `Cluster`, cluster mode's admin status, which a single
/// node answers too), all in [`FILE_DESCRIPTOR_SET`].
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

/// Encoded `FileDescriptorSet` of every Cairn .proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cairn_descriptor.bin"));

/// The machine-readable error contract of `cairn.v1`: every error status carries a
/// `google.rpc.ErrorInfo` detail with [`ERROR_DOMAIN`](reason::ERROR_DOMAIN) and
/// one of these reasons. Defined once here (and documented for other languages
/// as the `ErrorReason` enum of cairn.proto, which a test keeps equal to these);
/// the server sets them and the client matches on them.
pub mod reason {
    /// The `domain` of every `ErrorInfo` Cairn sends.
    pub const ERROR_DOMAIN: &str = "cairn";
    /// The expected revision did not hold (metadata `stream`, `expected`, `current`).
    pub const WRONG_EXPECTED_REVISION: &str = "WRONG_EXPECTED_REVISION";
    /// The stream does not exist (metadata `stream`).
    pub const STREAM_NOT_FOUND: &str = "STREAM_NOT_FOUND";
    /// The stream was tombstoned (metadata `stream`).
    pub const STREAM_TOMBSTONED: &str = "STREAM_TOMBSTONED";
    /// An event id was already written elsewhere (metadata `event_id`, `stream`, `revision`).
    pub const DUPLICATE_EVENT_ID: &str = "DUPLICATE_EVENT_ID";
    /// The request is malformed.
    pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
    /// A configured limit was exceeded (metadata `limit_name`, `actual`, `limit` when known).
    pub const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";
    /// Too many writes in flight; retry later.
    pub const OVERLOADED: &str = "OVERLOADED";
    /// Stored data failed its checksum or could not be decoded.
    pub const CORRUPT: &str = "CORRUPT";
    /// The data directory has a format this build does not read.
    pub const UNSUPPORTED_FORMAT: &str = "UNSUPPORTED_FORMAT";
    /// The store stopped accepting writes after an I/O failure (fail-stop).
    pub const STORE_STOPPED: &str = "STORE_STOPPED";
    /// The server is shutting down.
    pub const SHUTTING_DOWN: &str = "SHUTTING_DOWN";
    /// No consumer group of that name (metadata `group`).
    pub const GROUP_NOT_FOUND: &str = "GROUP_NOT_FOUND";
    /// The consumer group name is taken (metadata `group`).
    pub const GROUP_EXISTS: &str = "GROUP_EXISTS";
    /// A replay of the group's parked events is already running (metadata `group`).
    pub const REPLAY_IN_PROGRESS: &str = "REPLAY_IN_PROGRESS";
    /// The group cannot run as stored (metadata `group`).
    pub const GROUP_BROKEN: &str = "GROUP_BROKEN";
    /// No valid credentials.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The caller may not do this (metadata `operation`, and `stream` when it concerns one).
    pub const ACCESS_DENIED: &str = "ACCESS_DENIED";
    /// The call's own deadline passed before it was done.
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    /// The client took no response for the server's stall timeout; the call
    /// was ended (metadata `timeout_ms`).
    pub const CLIENT_STALLED: &str = "CLIENT_STALLED";
    /// No user of that name (metadata `user`).
    pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
    /// The user name is taken (metadata `user`).
    pub const USER_EXISTS: &str = "USER_EXISTS";
    /// No token with that id (metadata `token`).
    pub const TOKEN_NOT_FOUND: &str = "TOKEN_NOT_FOUND";
    /// A scavenge or backup is already running (metadata `operation`).
    pub const OPERATION_IN_PROGRESS: &str = "OPERATION_IN_PROGRESS";
    /// A DCB append condition failed (metadata `position`: the first
    /// conflicting event).
    pub const APPEND_CONDITION_FAILED: &str = "APPEND_CONDITION_FAILED";
    /// The consumer ended its own Consume call with a STOP nack.
    pub const CONSUMER_STOPPED: &str = "CONSUMER_STOPPED";
    /// Cluster mode: this node does not accept writes (metadata `leader`
    /// when the leader is known).
    pub const NOT_LEADER: &str = "NOT_LEADER";
    /// A read's `min_position` is beyond this node's head and it did not catch
    /// up in time (metadata `head`).
    pub const NOT_CAUGHT_UP: &str = "NOT_CAUGHT_UP";
    /// An internal failure (storage I/O, a failed task); the message says more.
    pub const INTERNAL: &str = "IO";
}

#[cfg(test)]
mod tests {
    use super::reason;
    use super::v1::ErrorReason;

    #[test]
    fn reasons_match_the_documented_enum() {
        let constants = [
            reason::WRONG_EXPECTED_REVISION,
            reason::STREAM_NOT_FOUND,
            reason::STREAM_TOMBSTONED,
            reason::DUPLICATE_EVENT_ID,
            reason::INVALID_ARGUMENT,
            reason::LIMIT_EXCEEDED,
            reason::CORRUPT,
            reason::UNSUPPORTED_FORMAT,
            reason::STORE_STOPPED,
            reason::SHUTTING_DOWN,
            reason::INTERNAL,
            reason::GROUP_NOT_FOUND,
            reason::GROUP_EXISTS,
            reason::OVERLOADED,
            reason::REPLAY_IN_PROGRESS,
            reason::GROUP_BROKEN,
            reason::UNAUTHENTICATED,
            reason::ACCESS_DENIED,
            reason::DEADLINE_EXCEEDED,
            reason::CLIENT_STALLED,
            reason::USER_NOT_FOUND,
            reason::USER_EXISTS,
            reason::TOKEN_NOT_FOUND,
            reason::OPERATION_IN_PROGRESS,
            reason::APPEND_CONDITION_FAILED,
            reason::CONSUMER_STOPPED,
            reason::NOT_LEADER,
            reason::NOT_CAUGHT_UP,
        ];
        let mut documented = Vec::new();
        for value in 1.. {
            match ErrorReason::try_from(value) {
                Ok(reason) => documented.push(reason.as_str_name()),
                Err(_) => break,
            }
        }
        assert_eq!(documented, constants);
    }
}

/// The KurrentDB client contract (`proto/kurrent/*.proto`, packages
/// `event_store.client.*`), served by the KurrentDB-compatible facade so that
/// existing KurrentDB/EventStoreDB clients work unchanged. The modules nest as
/// the packages do (the generated code refers to its neighbours by relative
/// path); the re-exports below are the names to use.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod kurrent {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod gossip {
                tonic::include_proto!("event_store.client.gossip");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
            pub mod persistent_subscriptions {
                tonic::include_proto!("event_store.client.persistent_subscriptions");
            }
            pub mod operations {
                tonic::include_proto!("event_store.client.operations");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    /// `event_store.client`: ids, stream identifiers, error details.
    pub use event_store::client as shared;
    /// `event_store.client.gossip`: cluster members.
    pub use event_store::client::gossip;
    /// `event_store.client.operations`: scavenge start/stop
    /// (served by `server/src/kurrent/operations.rs`).
    pub use event_store::client::operations;
    /// `event_store.client.persistent_subscriptions`: consumer groups
    /// (served by `server/src/kurrent/persistent.rs`).
    pub use event_store::client::persistent_subscriptions as persistent;
    /// `event_store.client.server_features`: the methods the server implements.
    pub use event_store::client::server_features;
    /// `event_store.client.streams`: Read, Append, BatchAppend, Delete, Tombstone.
    pub use event_store::client::streams;
    /// `google.rpc`: the status (with one `Any` detail) of BatchAppend results.
    pub use google::rpc;

    /// Encoded `FileDescriptorSet` of the KurrentDB .proto files.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/kurrent_descriptor.bin"));
}

/// The node-to-node raft service of cluster mode (`proto/cairn/cluster/v1/raft.proto`,
/// package `cairn.cluster.v1`), implemented and called by `cairn-cluster`'s
/// network module. Each message carries one postcard-encoded openraft request,
/// or the `Result` the receiving raft returned. Served only on the cluster
/// listener; its descriptors are deliberately not in
/// [`FILE_DESCRIPTOR_SET`].
pub mod cluster {
    /// The `cairn.cluster.v1` package: the `Raft` service (`raft_server`,
    /// `raft_client`) and its `RaftRequest` / `RaftResponse` messages.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("cairn.cluster.v1");
    }
}
