//! The one mapping from engine errors to gRPC statuses of `cairn.v1`.
//!
//! Every status carries a `google.rpc.ErrorInfo` detail (domain `cairn`, a
//! machine-readable reason from [`cairn_proto::reason`], and metadata such as
//! the stream and revisions) so a client in any language can act on it without
//! parsing the message. Messages are the errors' own `Display`, which never
//! names a server path.

use std::collections::HashMap;

use cairn_engine::Error;
use cairn_proto::reason;
use cairn_proto::v1 as pb;
use cairn_storage::Error as StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Builds a status with an `ErrorInfo` detail. Metadata values are user
/// input (a stream or group name of any length before validation) and travel
/// in the `grpc-status-details-bin` header: each is capped like the message,
/// or a huge one makes the header too large for the client's HTTP/2 stack,
/// which then reports a protocol error instead of the status.
fn status_with_reason(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(key, value)| (key, truncate(value)))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, reason::ERROR_DOMAIN, metadata),
    )
}

/// What `status` carries as an `AppendError`: AppendStream answers a failed
/// request with exactly what the unary call's status would carry (code,
/// message, ErrorInfo reason and metadata), so the one mapping above serves
/// both. A reason outside `ErrorReason` (never sent by this server) reads as
/// `ERROR_REASON_UNSPECIFIED`.
pub fn append_error(status: &Status) -> pb::AppendError {
    let (reason, metadata) = match status.get_details_error_info() {
        Some(info) => (info.reason, info.metadata),
        None => (String::new(), HashMap::new()),
    };
    pb::AppendError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: pb::ErrorReason::from_str_name(&reason).unwrap_or(pb::ErrorReason::Unspecified)
            as i32,
        metadata,
    }
}

/// UNAVAILABLE / NOT_CAUGHT_UP: a read asked for `min_position` and this
/// node's head did not pass it in time.
pub fn not_caught_up(min_position: u64, head: u64) -> Status {
    status_with_reason(
        Code::Unavailable,
        format!(
            "this node holds events up to position {} only, not yet {min_position}; retry, or \
             read on the leader",
            head.saturating_sub(1)
        ),
        reason::NOT_CAUGHT_UP,
        meta(&[("head", head.to_string())]),
    )
}

/// An INVALID_ARGUMENT status for malformed requests caught in the adapter.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    to_status(&Error::InvalidArgument(message.into()))
}

/// The longest message a status carries: user input echoed in a message (a
/// huge event id, say) must not make the `grpc-message` header too large for
/// clients with default limits.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Maps an engine error to the status a client sees.
pub fn to_status(error: &Error) -> Status {
    let (code, reason, metadata) = code_and_reason(error);
    status_with_reason(code, client_message(error), reason, metadata)
}

/// The message a client sees: the error's own words, except for failures whose
/// text comes from the operating system or RocksDB (file paths, internals):
/// those are logged here and replaced by a fixed sentence. Capped in length.
fn client_message(error: &Error) -> String {
    let internal = match error {
        Error::Store(StoreError::Io(_)) => Some("a storage I/O error occurred"),
        Error::Store(StoreError::Poisoned(_)) => Some(
            "the store stopped accepting writes after a storage failure; restart the server to recover",
        ),
        Error::Store(StoreError::UnsupportedFormat { .. }) => {
            Some("the data directory has a format this server does not read")
        }
        // Its reason may quote RocksDB, which names server paths.
        Error::Store(StoreError::BackupInvalid { .. }) => {
            Some("the backup failed its verification; nothing valid was left in its directory")
        }
        _ => None,
    };
    match internal {
        Some(sentence) => {
            tracing::warn!(%error, "answering a client with a storage failure");
            format!("{sentence} (the server log has the details)")
        }
        None => truncate(error.to_string()),
    }
}

/// `text` cut to [`MAX_MESSAGE_BYTES`] at a character boundary, marked as cut.
fn truncate(mut text: String) -> String {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("… (truncated)");
    text
}

fn meta(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

fn code_and_reason(error: &Error) -> (Code, &'static str, HashMap<String, String>) {
    let group_meta = |group: &str| meta(&[("group", group.to_owned())]);
    match error {
        Error::Store(store) => store_code_and_reason(store),
        Error::InvalidArgument(_) => (Code::InvalidArgument, reason::INVALID_ARGUMENT, meta(&[])),
        Error::LimitExceeded(_) => (Code::ResourceExhausted, reason::LIMIT_EXCEEDED, meta(&[])),
        Error::Overloaded { limit } => (
            Code::ResourceExhausted,
            reason::OVERLOADED,
            meta(&[("limit", limit.to_string())]),
        ),
        Error::GroupNotFound { group } => {
            (Code::NotFound, reason::GROUP_NOT_FOUND, group_meta(group))
        }
        Error::GroupExists { group } => {
            (Code::AlreadyExists, reason::GROUP_EXISTS, group_meta(group))
        }
        Error::ReplayInProgress { group, .. } => (
            Code::FailedPrecondition,
            reason::REPLAY_IN_PROGRESS,
            group_meta(group),
        ),
        Error::GroupBroken { group, .. } => (
            Code::FailedPrecondition,
            reason::GROUP_BROKEN,
            group_meta(group),
        ),
        Error::Corrupt(_) => (Code::DataLoss, reason::CORRUPT, meta(&[])),
        Error::ShuttingDown => (Code::Unavailable, reason::SHUTTING_DOWN, meta(&[])),
        Error::DeadlineExceeded => (Code::DeadlineExceeded, reason::DEADLINE_EXCEEDED, meta(&[])),
        Error::ClientStalled { timeout_ms } => (
            Code::ResourceExhausted,
            reason::CLIENT_STALLED,
            meta(&[("timeout_ms", timeout_ms.to_string())]),
        ),
        Error::Internal(_) => (Code::Internal, reason::INTERNAL, meta(&[])),
        Error::Unauthenticated(_) => (Code::Unauthenticated, reason::UNAUTHENTICATED, meta(&[])),
        Error::PermissionDenied { operation, stream } => {
            let mut pairs = vec![("operation", operation.clone())];
            if let Some(stream) = stream {
                pairs.push(("stream", stream.clone()));
            }
            (Code::PermissionDenied, reason::ACCESS_DENIED, meta(&pairs))
        }
        Error::UserNotFound { user } => (
            Code::NotFound,
            reason::USER_NOT_FOUND,
            meta(&[("user", user.clone())]),
        ),
        Error::UserExists { user } => (
            Code::AlreadyExists,
            reason::USER_EXISTS,
            meta(&[("user", user.clone())]),
        ),
        Error::TokenNotFound { id } => (
            Code::NotFound,
            reason::TOKEN_NOT_FOUND,
            meta(&[("token", id.clone())]),
        ),
        Error::OperationInProgress { operation } => (
            Code::FailedPrecondition,
            reason::OPERATION_IN_PROGRESS,
            meta(&[("operation", operation.clone())]),
        ),
        Error::ConsumerStopped => (
            Code::FailedPrecondition,
            reason::CONSUMER_STOPPED,
            meta(&[]),
        ),
        _ => (Code::Internal, reason::INTERNAL, meta(&[])),
    }
}

fn store_code_and_reason(error: &StoreError) -> (Code, &'static str, HashMap<String, String>) {
    match error {
        StoreError::WrongExpectedRevision {
            stream,
            expected,
            current,
        } => (
            Code::FailedPrecondition,
            reason::WRONG_EXPECTED_REVISION,
            meta(&[
                ("stream", stream.clone()),
                ("expected", expected.to_string()),
                (
                    "current",
                    current
                        .revision()
                        .map_or_else(|| "no_stream".to_owned(), |revision| revision.to_string()),
                ),
            ]),
        ),
        StoreError::AppendConditionFailed { position } => (
            Code::FailedPrecondition,
            reason::APPEND_CONDITION_FAILED,
            meta(&[("position", position.to_string())]),
        ),
        StoreError::StreamNotFound { stream } => (
            Code::NotFound,
            reason::STREAM_NOT_FOUND,
            meta(&[("stream", stream.clone())]),
        ),
        StoreError::StreamTombstoned { stream } => (
            Code::FailedPrecondition,
            reason::STREAM_TOMBSTONED,
            meta(&[("stream", stream.clone())]),
        ),
        StoreError::DuplicateEventId {
            event_id,
            stream,
            revision,
        } => (
            Code::AlreadyExists,
            reason::DUPLICATE_EVENT_ID,
            meta(&[
                ("event_id", event_id.to_string()),
                ("stream", stream.clone()),
                ("revision", revision.to_string()),
            ]),
        ),
        StoreError::InvalidArgument(_) => {
            (Code::InvalidArgument, reason::INVALID_ARGUMENT, meta(&[]))
        }
        StoreError::LimitExceeded {
            what,
            actual,
            limit,
        } => (
            Code::ResourceExhausted,
            reason::LIMIT_EXCEEDED,
            meta(&[
                ("limit_name", (*what).to_owned()),
                ("actual", actual.to_string()),
                ("limit", limit.to_string()),
            ]),
        ),
        StoreError::Overloaded { capacity } => (
            Code::ResourceExhausted,
            reason::OVERLOADED,
            meta(&[("limit", capacity.to_string())]),
        ),
        StoreError::Corrupt {
            column_family, key, ..
        } => (
            Code::DataLoss,
            reason::CORRUPT,
            meta(&[
                ("column_family", (*column_family).to_owned()),
                ("key", key.clone()),
            ]),
        ),
        StoreError::UnsupportedFormat { .. } => {
            (Code::Internal, reason::UNSUPPORTED_FORMAT, meta(&[]))
        }
        StoreError::Poisoned(_) => (Code::Unavailable, reason::STORE_STOPPED, meta(&[])),
        StoreError::ShuttingDown => (Code::Unavailable, reason::SHUTTING_DOWN, meta(&[])),
        StoreError::NotLeader { leader, .. } => (
            Code::Unavailable,
            reason::NOT_LEADER,
            match leader {
                Some(leader) => meta(&[("leader", leader.clone())]),
                None => meta(&[]),
            },
        ),
        StoreError::BackupInvalid { file, position, .. } => {
            let mut pairs = Vec::new();
            if let Some(file) = file {
                pairs.push(("file", file.clone()));
            }
            if let Some(position) = position {
                pairs.push(("position", position.to_string()));
            }
            (Code::DataLoss, reason::CORRUPT, meta(&pairs))
        }
        _ => (Code::Internal, reason::INTERNAL, meta(&[])),
    }
}

#[cfg(test)]
mod tests {
    use cairn_storage::{CurrentRevision, ExpectedRevision};

    use super::*;

    fn reason_of(status: &Status) -> (String, HashMap<String, String>) {
        let info = status
            .get_details_error_info()
            .expect("every status carries ErrorInfo");
        assert_eq!(info.domain, reason::ERROR_DOMAIN);
        (info.reason, info.metadata)
    }

    /// One of every error, with the code and reason it must map to.
    fn cases() -> Vec<(Error, Code, &'static str)> {
        let store = |error: StoreError| Error::Store(error);
        let group = || "billing".to_owned();
        vec![
            (
                store(StoreError::WrongExpectedRevision {
                    stream: "s".into(),
                    expected: ExpectedRevision::Exact(1),
                    current: CurrentRevision::Revision(4),
                }),
                Code::FailedPrecondition,
                reason::WRONG_EXPECTED_REVISION,
            ),
            (
                store(StoreError::StreamNotFound { stream: "s".into() }),
                Code::NotFound,
                reason::STREAM_NOT_FOUND,
            ),
            (
                store(StoreError::StreamTombstoned { stream: "s".into() }),
                Code::FailedPrecondition,
                reason::STREAM_TOMBSTONED,
            ),
            (
                store(StoreError::DuplicateEventId {
                    event_id: uuid::Uuid::nil(),
                    stream: "s".into(),
                    revision: 2,
                }),
                Code::AlreadyExists,
                reason::DUPLICATE_EVENT_ID,
            ),
            (
                store(StoreError::InvalidArgument("x".into())),
                Code::InvalidArgument,
                reason::INVALID_ARGUMENT,
            ),
            (
                store(StoreError::LimitExceeded {
                    what: "event size in bytes",
                    actual: 10,
                    limit: 5,
                }),
                Code::ResourceExhausted,
                reason::LIMIT_EXCEEDED,
            ),
            (
                store(StoreError::Overloaded { capacity: 8 }),
                Code::ResourceExhausted,
                reason::OVERLOADED,
            ),
            (
                store(StoreError::Corrupt {
                    column_family: "log",
                    key: "7".into(),
                    reason: "crc".into(),
                }),
                Code::DataLoss,
                reason::CORRUPT,
            ),
            (
                store(StoreError::UnsupportedFormat {
                    path: "d".into(),
                    found: 9,
                    supported: 1,
                }),
                Code::Internal,
                reason::UNSUPPORTED_FORMAT,
            ),
            (
                store(StoreError::Poisoned("fsync".into())),
                Code::Unavailable,
                reason::STORE_STOPPED,
            ),
            (
                store(StoreError::ShuttingDown),
                Code::Unavailable,
                reason::SHUTTING_DOWN,
            ),
            (
                store(StoreError::Io("disk".into())),
                Code::Internal,
                reason::INTERNAL,
            ),
            (
                Error::InvalidArgument("bad".into()),
                Code::InvalidArgument,
                reason::INVALID_ARGUMENT,
            ),
            (
                Error::LimitExceeded("too many".into()),
                Code::ResourceExhausted,
                reason::LIMIT_EXCEEDED,
            ),
            (
                Error::Overloaded { limit: 4 },
                Code::ResourceExhausted,
                reason::OVERLOADED,
            ),
            (
                Error::GroupNotFound { group: group() },
                Code::NotFound,
                reason::GROUP_NOT_FOUND,
            ),
            (
                Error::GroupExists { group: group() },
                Code::AlreadyExists,
                reason::GROUP_EXISTS,
            ),
            (
                Error::ReplayInProgress {
                    group: group(),
                    remaining: 3,
                },
                Code::FailedPrecondition,
                reason::REPLAY_IN_PROGRESS,
            ),
            (
                Error::GroupBroken {
                    group: group(),
                    reason: "filter".into(),
                },
                Code::FailedPrecondition,
                reason::GROUP_BROKEN,
            ),
            (Error::Corrupt("x".into()), Code::DataLoss, reason::CORRUPT),
            (
                Error::Internal("x".into()),
                Code::Internal,
                reason::INTERNAL,
            ),
            (
                Error::ShuttingDown,
                Code::Unavailable,
                reason::SHUTTING_DOWN,
            ),
            (
                Error::DeadlineExceeded,
                Code::DeadlineExceeded,
                reason::DEADLINE_EXCEEDED,
            ),
            (
                Error::ClientStalled { timeout_ms: 60_000 },
                Code::ResourceExhausted,
                reason::CLIENT_STALLED,
            ),
            (
                Error::Unauthenticated("wrong password".into()),
                Code::Unauthenticated,
                reason::UNAUTHENTICATED,
            ),
            (
                Error::PermissionDenied {
                    operation: "write".into(),
                    stream: Some("order-1".into()),
                },
                Code::PermissionDenied,
                reason::ACCESS_DENIED,
            ),
            (
                Error::UserNotFound {
                    user: "alice".into(),
                },
                Code::NotFound,
                reason::USER_NOT_FOUND,
            ),
            (
                Error::UserExists {
                    user: "alice".into(),
                },
                Code::AlreadyExists,
                reason::USER_EXISTS,
            ),
            (
                Error::TokenNotFound { id: "9f2c".into() },
                Code::NotFound,
                reason::TOKEN_NOT_FOUND,
            ),
            (
                Error::OperationInProgress {
                    operation: "scavenge".into(),
                },
                Code::FailedPrecondition,
                reason::OPERATION_IN_PROGRESS,
            ),
            (
                store(StoreError::BackupInvalid {
                    file: Some("000012.sst".into()),
                    position: None,
                    reason: "Corruption: block checksum mismatch in /srv/backup/000012.sst".into(),
                }),
                Code::DataLoss,
                reason::CORRUPT,
            ),
        ]
    }

    #[test]
    fn every_error_maps_to_its_code_and_reason() {
        for (error, code, expected_reason) in cases() {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), client_message(&error));
            assert_eq!(reason_of(&status).0, expected_reason, "{error}");
        }
        let (_, metadata) = reason_of(&to_status(&Error::GroupNotFound {
            group: "billing".into(),
        }));
        assert_eq!(metadata["group"], "billing");
    }

    #[test]
    fn storage_internals_never_reach_the_client() {
        let leaky = [
            StoreError::Io("IO error: /srv/cairn/data/000004.log: Permission denied".into()),
            StoreError::Poisoned("a RocksDB write failed: /srv/cairn/data/000009.log".into()),
            StoreError::UnsupportedFormat {
                path: "/srv/cairn/data".into(),
                found: 9,
                supported: 1,
            },
            StoreError::BackupInvalid {
                file: None,
                position: None,
                reason: "the database does not open: IO error: /srv/cairn/backup/000004.log".into(),
            },
        ];
        for error in leaky {
            let status = to_status(&Error::Store(error));
            assert!(!status.message().contains("/srv"), "{}", status.message());
            assert!(!status.message().contains(".log"), "{}", status.message());
        }
    }

    #[test]
    fn echoed_input_is_capped() {
        let status = to_status(&Error::InvalidArgument(format!(
            "event id '{}' is not a UUID",
            "x".repeat(1_000_000)
        )));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES + 20);
        assert!(status.message().ends_with("(truncated)"));
        let multibyte = truncate("é".repeat(MAX_MESSAGE_BYTES));
        assert!(multibyte.ends_with("(truncated)"));
    }

    /// The two ways a read or subscription ends before it is done, on time:
    /// never an OK that looks complete.
    #[test]
    fn deadlines_and_stalls_are_their_own_statuses() {
        let status = to_status(&Error::DeadlineExceeded);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(reason_of(&status).0, reason::DEADLINE_EXCEEDED);
        let status = to_status(&Error::ClientStalled { timeout_ms: 1500 });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let (reason, metadata) = reason_of(&status);
        assert_eq!(reason, reason::CLIENT_STALLED);
        assert_eq!(metadata["timeout_ms"], "1500");
        assert!(status.message().contains("1500 ms"), "{}", status.message());
    }

    #[test]
    fn wrong_expected_revision_carries_revisions() {
        let status = to_status(&Error::Store(StoreError::WrongExpectedRevision {
            stream: "order-1".into(),
            expected: ExpectedRevision::NoStream,
            current: CurrentRevision::Revision(4),
        }));
        let (_, metadata) = reason_of(&status);
        assert_eq!(metadata["stream"], "order-1");
        assert_eq!(metadata["current"], "4");
        assert_eq!(metadata["expected"], "no stream");
    }

    /// Round trip: what the client makes of each status is the error the
    /// server meant (the client crate is a dev-dependency of the server).
    #[test]
    fn the_client_maps_every_status_back() {
        use cairn_client::Error as ClientError;
        for (error, _, _) in cases() {
            let client = ClientError::from(to_status(&error));
            let matches = match (&error, &client) {
                (
                    Error::Store(StoreError::WrongExpectedRevision { stream, .. }),
                    ClientError::WrongExpectedRevision {
                        stream: seen,
                        current,
                        ..
                    },
                ) => stream == seen && *current == Some(4),
                (
                    Error::Store(StoreError::StreamNotFound { stream }),
                    ClientError::StreamNotFound { stream: seen },
                ) => stream == seen,
                (
                    Error::Store(StoreError::StreamTombstoned { stream }),
                    ClientError::StreamDeleted { stream: seen },
                ) => stream == seen,
                (
                    Error::Store(StoreError::DuplicateEventId { .. }),
                    ClientError::DuplicateEventId(_),
                ) => true,
                (
                    Error::InvalidArgument(_) | Error::Store(StoreError::InvalidArgument(_)),
                    ClientError::InvalidArgument(_),
                ) => true,
                (
                    Error::LimitExceeded(_)
                    | Error::Overloaded { .. }
                    | Error::ClientStalled { .. }
                    | Error::Store(StoreError::LimitExceeded { .. })
                    | Error::Store(StoreError::Overloaded { .. }),
                    ClientError::LimitExceeded(_),
                ) => true,
                (Error::GroupNotFound { group }, ClientError::GroupNotFound { group: seen }) => {
                    group == seen
                }
                (Error::GroupExists { group }, ClientError::GroupExists { group: seen }) => {
                    group == seen
                }
                (Error::UserNotFound { user }, ClientError::UserNotFound { user: seen })
                | (Error::UserExists { user }, ClientError::UserExists { user: seen }) => {
                    user == seen
                }
                (Error::TokenNotFound { id }, ClientError::TokenNotFound { id: seen }) => {
                    id == seen
                }
                (
                    Error::Corrupt(_)
                    | Error::Store(StoreError::Corrupt { .. })
                    | Error::Store(StoreError::BackupInvalid { .. }),
                    ClientError::Corrupt(_),
                ) => true,
                (
                    Error::OperationInProgress { operation },
                    ClientError::OperationInProgress { operation: seen },
                ) => operation == seen,
                (Error::Unauthenticated(_), ClientError::Unauthenticated(message))
                | (Error::PermissionDenied { .. }, ClientError::PermissionDenied(message)) => {
                    *message == client_message(&error)
                }
                (
                    Error::ShuttingDown
                    | Error::Store(StoreError::ShuttingDown)
                    | Error::Store(StoreError::Poisoned(_)),
                    ClientError::Unavailable(_),
                ) => true,
                (
                    Error::ReplayInProgress { .. }
                    | Error::GroupBroken { .. }
                    | Error::DeadlineExceeded
                    | Error::Internal(_)
                    | Error::Store(StoreError::Io(_))
                    | Error::Store(StoreError::UnsupportedFormat { .. }),
                    ClientError::Other { message, .. },
                ) => *message == client_message(&error),
                _ => false,
            };
            assert!(matches, "{error:?} came back as {client:?}");
        }
    }

    /// AppendStream's per-request error carries what the unary status does,
    /// for every error: the code, the message, the reason (as the enum value
    /// of the same name) and the metadata.
    #[test]
    fn append_errors_carry_what_the_status_carries() {
        for (error, code, expected_reason) in cases() {
            let status = to_status(&error);
            let carried = append_error(&status);
            assert_eq!(carried.code, code as i32, "{error}");
            assert_eq!(carried.message, status.message(), "{error}");
            let reason = pb::ErrorReason::try_from(carried.reason).expect("a known reason");
            assert_eq!(reason.as_str_name(), expected_reason, "{error}");
            assert_eq!(carried.metadata, reason_of(&status).1, "{error}");
        }
        let carried = append_error(&to_status(&Error::Store(
            StoreError::WrongExpectedRevision {
                stream: "order-1".into(),
                expected: ExpectedRevision::Exact(1),
                current: CurrentRevision::Revision(4),
            },
        )));
        assert_eq!(carried.metadata["stream"], "order-1");
        assert_eq!(carried.metadata["current"], "4");
    }

    /// A huge name in an error's metadata is capped like the message: the
    /// whole status stays far below HTTP/2's default header list size (16 KiB).
    #[test]
    fn echoed_metadata_is_capped() {
        let status = to_status(&Error::GroupNotFound {
            group: "x".repeat(100_000),
        });
        let (_, metadata) = reason_of(&status);
        assert!(metadata["group"].len() <= MAX_MESSAGE_BYTES + 32);
        assert!(
            status.details().len() < 4 * 1024,
            "{}",
            status.details().len()
        );
    }
}
