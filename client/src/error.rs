//! The client's error type: every failure a caller may want to act on is its own
//! variant, decoded from the status code and its `google.rpc.ErrorInfo` detail.

use std::collections::HashMap;

use cairn_proto::reason;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// What went wrong with a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The expected revision did not hold; nothing was written. `current` is the
    /// stream's last revision (`None`: it does not exist).
    #[error("wrong expected revision on '{stream}': expected {expected}, current {current:?}")]
    WrongExpectedRevision {
        /// The stream.
        stream: String,
        /// The expectation as the server printed it.
        expected: String,
        /// The stream's current revision.
        current: Option<u64>,
    },
    /// A DCB append condition failed: an event matching its query was
    /// written after the condition's position (the first such event is at
    /// `position`). Nothing was written; read again and decide again.
    #[error("append condition failed: the event at position {position} matches the condition")]
    AppendConditionFailed {
        /// The first conflicting event.
        position: u64,
    },
    /// The stream does not exist (or was soft-deleted).
    #[error("stream '{stream}' not found")]
    StreamNotFound {
        /// The stream.
        stream: String,
    },
    /// The stream was tombstoned and can never be used again.
    #[error("stream '{stream}' is tombstoned")]
    StreamDeleted {
        /// The stream.
        stream: String,
    },
    /// An event id was used before, and this append is not an exact retry.
    #[error("duplicate event id: {0}")]
    DuplicateEventId(String),
    /// No persistent subscription group of that name.
    #[error("persistent subscription group '{group}' not found")]
    GroupNotFound {
        /// The group.
        group: String,
    },
    /// A group of that name exists already.
    #[error("persistent subscription group '{group}' already exists")]
    GroupExists {
        /// The group.
        group: String,
    },
    /// No user of that name.
    #[error("user '{user}' not found")]
    UserNotFound {
        /// The user.
        user: String,
    },
    /// A user of that name exists already.
    #[error("user '{user}' already exists")]
    UserExists {
        /// The user.
        user: String,
    },
    /// No token with that id (revoked, or its user deleted).
    #[error("token '{id}' not found")]
    TokenNotFound {
        /// The token's id.
        id: String,
    },
    /// A scavenge or backup is already running on the server.
    #[error("a {operation} is already running on the server")]
    OperationInProgress {
        /// `scavenge` or `backup`.
        operation: String,
    },
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request exceeds a server limit.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// Cluster mode: the node does not accept writes; `leader` is the
    /// leader's `host:port` when the node knows it. A write that was being
    /// replicated when leadership moved has an unknown outcome: retry the
    /// exact request (same event ids) on the leader.
    #[error("{message}")]
    NotLeader {
        /// The leader's client address, when known.
        leader: Option<String>,
        /// The server's message.
        message: String,
    },
    /// The server is shutting down, stopped accepting writes, or cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server found corrupt data.
    #[error("data loss on the server: {0}")]
    Corrupt(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server needs credentials, or refused the ones given.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The caller may not do this (the message names the operation and stream).
    #[error("{0}")]
    PermissionDenied(String),
    /// Anything else, with the raw code and message.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// Event data could not be (de)serialised as JSON.
    #[error("JSON: {0}")]
    Json(String),
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let (reason, metadata) = match status.get_details_error_info() {
            Some(info) => (info.reason, info.metadata),
            None => (String::new(), HashMap::new()),
        };
        let message = status.message().to_owned();
        let field = |key: &str| metadata.get(key).cloned().unwrap_or_default();
        match (status.code(), reason.as_str()) {
            (_, reason::WRONG_EXPECTED_REVISION) => Error::WrongExpectedRevision {
                stream: field("stream"),
                expected: field("expected"),
                current: field("current").parse().ok(),
            },
            (_, reason::APPEND_CONDITION_FAILED) => Error::AppendConditionFailed {
                position: field("position").parse().unwrap_or_default(),
            },
            (_, reason::STREAM_NOT_FOUND) => Error::StreamNotFound {
                stream: field("stream"),
            },
            (_, reason::STREAM_TOMBSTONED) => Error::StreamDeleted {
                stream: field("stream"),
            },
            (_, reason::DUPLICATE_EVENT_ID) => Error::DuplicateEventId(message),
            (_, reason::GROUP_NOT_FOUND) => Error::GroupNotFound {
                group: field("group"),
            },
            (_, reason::GROUP_EXISTS) => Error::GroupExists {
                group: field("group"),
            },
            (_, reason::USER_NOT_FOUND) => Error::UserNotFound {
                user: field("user"),
            },
            (_, reason::USER_EXISTS) => Error::UserExists {
                user: field("user"),
            },
            (_, reason::TOKEN_NOT_FOUND) => Error::TokenNotFound { id: field("token") },
            (_, reason::OPERATION_IN_PROGRESS) => Error::OperationInProgress {
                operation: field("operation"),
            },
            (_, reason::NOT_LEADER) => Error::NotLeader {
                leader: metadata.get("leader").cloned(),
                message,
            },
            (Code::Unauthenticated, _) => Error::Unauthenticated(message),
            (Code::PermissionDenied, _) => Error::PermissionDenied(message),
            (Code::InvalidArgument, _) => Error::InvalidArgument(message),
            (Code::ResourceExhausted | Code::OutOfRange, _) => Error::LimitExceeded(message),
            (Code::Unavailable, _) => Error::Unavailable(message),
            // Cairn never answers UNKNOWN itself: without an ErrorInfo it is
            // the transport's (a connection that broke mid-call, say), and the
            // call's outcome is unknown, as with UNAVAILABLE.
            (Code::Unknown, "") => Error::Unavailable(message),
            (Code::DataLoss, _) => Error::Corrupt(message),
            (code, _) => Error::Other { code, message },
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        Error::Connect(format!(
            "{error}: {}",
            std::error::Error::source(&error)
                .map(ToString::to_string)
                .unwrap_or_default()
        ))
    }
}

/// The result type of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;
