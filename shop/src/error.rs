//! The shop's one error type: every failure of a command, a query or a
//! subscription, classified so the gateway can map it to an HTTP status in one
//! place (`gateway::ApiError`).

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShopError {
    /// The request is malformed or breaks a rule (bad price, empty name...).
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist.
    #[error("{what} '{id}' not found")]
    NotFound {
        /// What kind of thing ("product", "order"...).
        what: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The request conflicts with the current state (email taken, product
    /// deleted...).
    #[error("{0}")]
    Conflict(String),
    /// Cairn refused or could not be reached.
    #[error("event store: {0}")]
    Cairn(#[from] cairn_client::Error),
    /// The embedded read model failed.
    #[error("read model: {0}")]
    ReadModel(#[from] rusqlite::Error),
    /// An event in the log could not be decoded: a bug or a foreign writer.
    #[error("undecodable event: {0}")]
    BadEvent(String),
    /// A background task failed or was cancelled.
    #[error("internal: {0}")]
    Internal(String),
}

impl ShopError {
    /// Whether retrying the same work later can succeed (Cairn briefly
    /// unavailable, a dropped connection), as opposed to a permanent refusal.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ShopError::Cairn(cairn_client::Error::Unavailable(_) | cairn_client::Error::Connect(_))
                | ShopError::Cairn(cairn_client::Error::Other { .. })
                | ShopError::Internal(_)
        )
    }
}

/// The shop's result type.
pub type Result<T, E = ShopError> = std::result::Result<T, E>;
