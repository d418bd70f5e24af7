//! The one error type of the engine boundary, and why a feed or a consumer ended.
//!
//! Every facade maps [`Error`] to its wire status in exactly one function; the
//! engine never names a wire type. Messages tell the user what to do.

/// Everything an engine call can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The store refused or failed (wrong expected revision, not found, limits,
    /// corruption, fail-stop, ...).
    #[error(transparent)]
    Store(#[from] cairn_storage::Error),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A server limit (subscriptions, groups, consumers per group) is reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// Too many writes are in flight; nothing of this request was written.
    #[error("the server has {limit} writes in flight (its max_inflight_appends); retry later")]
    Overloaded {
        /// The configured bound.
        limit: usize,
    },
    /// No persistent subscription group of that name.
    #[error("persistent subscription group '{group}' does not exist")]
    GroupNotFound {
        /// The group.
        group: String,
    },
    /// The group name is taken.
    #[error(
        "persistent subscription group '{group}' already exists; delete it first or pick another name"
    )]
    GroupExists {
        /// The group.
        group: String,
    },
    /// Only one replay of parked events runs at a time.
    #[error(
        "a replay of parked events of group '{group}' is in progress ({remaining} events left); try again when it is done"
    )]
    ReplayInProgress {
        /// The group.
        group: String,
        /// Replayed events not finished yet.
        remaining: u64,
    },
    /// The group cannot run as defined (e.g. its stored filter does not compile).
    #[error("persistent subscription group '{group}' cannot run: {reason}; delete and recreate it")]
    GroupBroken {
        /// The group.
        group: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation that runs one at a time (a scavenge, a backup) is running.
    #[error("a {operation} is already running; wait for it to end (or stop it) and try again")]
    OperationInProgress {
        /// `scavenge` or `backup`.
        operation: String,
    },
    /// A stored record of the engine's own (group state, users, tokens)
    /// could not be decoded.
    #[error("corrupt server state: {0}")]
    Corrupt(String),
    /// Something failed that should not have (a task panicked, an actor is
    /// restarting); the request may be retried.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The call's own deadline (`grpc-timeout`) passed before it was done.
    #[error("the call's deadline passed before it was done; what was sent is incomplete")]
    DeadlineExceeded,
    /// The client took nothing of this call's responses for the server's
    /// stall timeout; the call was ended to free what it buffered.
    #[error(
        "the client took no response for {timeout_ms} ms (the server's client_stall_timeout_ms); \
         the call was ended and what it buffered freed: read faster, or resume after the last event received"
    )]
    ClientStalled {
        /// The configured stall timeout.
        timeout_ms: u64,
    },
    /// A persistent-subscription consumer ended its own call with a STOP
    /// nack (what it held went back to its group).
    #[error("the consumer ended its call with a STOP nack")]
    ConsumerStopped,
    /// No user of that name.
    #[error("user '{user}' does not exist")]
    UserNotFound {
        /// The user.
        user: String,
    },
    /// The user name is taken.
    #[error("user '{user}' already exists; pick another name or update that user")]
    UserExists {
        /// The user.
        user: String,
    },
    /// No token with that id (never issued, revoked, or its user deleted).
    #[error("token '{id}' does not exist (revoked, or its user deleted?)")]
    TokenNotFound {
        /// The token's id.
        id: String,
    },
    /// The caller is not authenticated: no credentials, wrong ones, a
    /// disabled user, an expired or revoked token, too many failures.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this. Names the operation and the stream, never
    /// the ACL's contents.
    #[error("{}", permission_denied_message(operation, stream.as_deref()))]
    PermissionDenied {
        /// What was refused (`read`, `write`, `delete`, `manage users`, ...).
        operation: String,
        /// The stream it was refused on, if it concerns one.
        stream: Option<String>,
    },
}

fn permission_denied_message(operation: &str, stream: Option<&str>) -> String {
    match stream {
        Some(stream) => format!("access denied: you may not {operation} stream '{stream}'"),
        None => format!("access denied: you may not {operation}"),
    }
}

impl Error {
    /// True for the shutdown of the server or of the store under it.
    pub fn is_shutting_down(&self) -> bool {
        matches!(
            self,
            Error::ShuttingDown | Error::Store(cairn_storage::Error::ShuttingDown)
        )
    }
}

/// The result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a feed (catch-up subscription) or a consumer's session ended on the
/// server's side. A facade turns it into its protocol's closing status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The server is shutting down; reconnect to another or later.
    ShuttingDown,
    /// The consumer's group was deleted.
    GroupDeleted {
        /// The group.
        group: String,
    },
    /// The feed or session failed (stream deleted, storage error, bad message
    /// from the consumer, the group's actor failed, ...).
    Failed(Error),
    /// The consumer asked for the end with a STOP nack.
    Stopped,
}

impl EndReason {
    /// The error a facade reports for this end.
    pub fn into_error(self) -> Error {
        match self {
            EndReason::ShuttingDown => Error::ShuttingDown,
            EndReason::GroupDeleted { group } => Error::GroupNotFound { group },
            EndReason::Failed(error) => error,
            EndReason::Stopped => Error::ConsumerStopped,
        }
    }
}

impl From<Error> for EndReason {
    fn from(error: Error) -> Self {
        if error.is_shutting_down() {
            EndReason::ShuttingDown
        } else {
            EndReason::Failed(error)
        }
    }
}
