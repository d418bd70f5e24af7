//! The one mapping from storage errors to gRPC statuses.
//!
//! Every status carries a `google.rpc.ErrorInfo` detail (domain `cairn`, a
//! machine-readable `reason`, and metadata such as the stream and revisions) so a
//! client in any language can act on it without parsing the message.

use std::collections::HashMap;

use cairn_storage::Error;

use crate::persistent::GroupError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The error domain in every `ErrorInfo`.
pub const ERROR_DOMAIN: &str = "cairn";

/// Builds a status with an `ErrorInfo` detail.
pub fn status_with_reason(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata),
    )
}

/// An INVALID_ARGUMENT status for malformed requests caught in the adapter.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    status_with_reason(
        Code::InvalidArgument,
        message,
        "INVALID_ARGUMENT",
        HashMap::new(),
    )
}

/// UNAVAILABLE because the server is shutting down.
pub fn shutting_down() -> Status {
    to_status(&Error::ShuttingDown)
}

/// Maps a storage error to the status a client sees.
pub fn to_status(error: &Error) -> Status {
    let message = error.to_string();
    let meta = |pairs: &[(&str, String)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    };
    let (code, reason, metadata) = match error {
        Error::WrongExpectedRevision {
            stream,
            expected,
            current,
        } => (
            Code::FailedPrecondition,
            "WRONG_EXPECTED_REVISION",
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
        Error::StreamNotFound { stream } => (
            Code::NotFound,
            "STREAM_NOT_FOUND",
            meta(&[("stream", stream.clone())]),
        ),
        Error::StreamTombstoned { stream } => (
            Code::FailedPrecondition,
            "STREAM_TOMBSTONED",
            meta(&[("stream", stream.clone())]),
        ),
        Error::DuplicateEventId {
            event_id,
            stream,
            revision,
        } => (
            Code::AlreadyExists,
            "DUPLICATE_EVENT_ID",
            meta(&[
                ("event_id", event_id.to_string()),
                ("stream", stream.clone()),
                ("revision", revision.to_string()),
            ]),
        ),
        Error::InvalidArgument(_) => (Code::InvalidArgument, "INVALID_ARGUMENT", HashMap::new()),
        Error::LimitExceeded {
            what,
            actual,
            limit,
        } => (
            Code::ResourceExhausted,
            "LIMIT_EXCEEDED",
            meta(&[
                ("limit_name", (*what).to_owned()),
                ("actual", actual.to_string()),
                ("limit", limit.to_string()),
            ]),
        ),
        Error::Corrupt {
            column_family, key, ..
        } => (
            Code::DataLoss,
            "CORRUPT",
            meta(&[
                ("column_family", (*column_family).to_owned()),
                ("key", key.clone()),
            ]),
        ),
        Error::UnsupportedFormat { .. } => (Code::Internal, "UNSUPPORTED_FORMAT", HashMap::new()),
        Error::Poisoned(_) => (Code::Unavailable, "STORE_STOPPED", HashMap::new()),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", HashMap::new()),
        Error::FellBehind { .. } => (Code::Internal, "IO", HashMap::new()),
        Error::Io(_) => (Code::Internal, "IO", HashMap::new()),
        _ => (Code::Internal, "IO", HashMap::new()),
    };
    status_with_reason(code, message, reason, metadata)
}

/// Maps a persistent-subscription error to the status a client sees.
pub(crate) fn group_status(error: &GroupError) -> Status {
    let group_meta = |group: &str| HashMap::from([("group".to_owned(), group.to_owned())]);
    let (code, reason, metadata) = match error {
        GroupError::Store(error) => return to_status(error),
        GroupError::NotFound { group } => (Code::NotFound, "GROUP_NOT_FOUND", group_meta(group)),
        GroupError::Exists { group } => (Code::AlreadyExists, "GROUP_EXISTS", group_meta(group)),
        GroupError::InvalidArgument(_) => {
            (Code::InvalidArgument, "INVALID_ARGUMENT", HashMap::new())
        }
        GroupError::ReplayInProgress { group, .. } => (
            Code::FailedPrecondition,
            "LIMIT_EXCEEDED",
            group_meta(group),
        ),
        GroupError::LimitExceeded(_) => (Code::ResourceExhausted, "LIMIT_EXCEEDED", HashMap::new()),
        GroupError::Corrupt(_) => (Code::DataLoss, "CORRUPT", HashMap::new()),
        GroupError::ShuttingDown => return shutting_down(),
        GroupError::Internal(_) => (Code::Internal, "IO", HashMap::new()),
    };
    status_with_reason(code, error.to_string(), reason, metadata)
}

#[cfg(test)]
mod tests {
    use cairn_storage::{CurrentRevision, ExpectedRevision};

    use super::*;

    fn reason_of(status: &Status) -> (String, HashMap<String, String>) {
        let info = status
            .get_details_error_info()
            .expect("every status carries ErrorInfo");
        assert_eq!(info.domain, ERROR_DOMAIN);
        (info.reason, info.metadata)
    }

    #[test]
    fn every_error_maps_to_its_code_and_reason() {
        let cases: Vec<(Error, Code, &str)> = vec![
            (
                Error::WrongExpectedRevision {
                    stream: "s".into(),
                    expected: ExpectedRevision::Exact(1),
                    current: CurrentRevision::Revision(4),
                },
                Code::FailedPrecondition,
                "WRONG_EXPECTED_REVISION",
            ),
            (
                Error::StreamNotFound { stream: "s".into() },
                Code::NotFound,
                "STREAM_NOT_FOUND",
            ),
            (
                Error::StreamTombstoned { stream: "s".into() },
                Code::FailedPrecondition,
                "STREAM_TOMBSTONED",
            ),
            (
                Error::DuplicateEventId {
                    event_id: uuid::Uuid::nil(),
                    stream: "s".into(),
                    revision: 2,
                },
                Code::AlreadyExists,
                "DUPLICATE_EVENT_ID",
            ),
            (
                Error::InvalidArgument("x".into()),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                Error::LimitExceeded {
                    what: "event size in bytes",
                    actual: 10,
                    limit: 5,
                },
                Code::ResourceExhausted,
                "LIMIT_EXCEEDED",
            ),
            (
                Error::Corrupt {
                    column_family: "log",
                    key: "7".into(),
                    reason: "crc".into(),
                },
                Code::DataLoss,
                "CORRUPT",
            ),
            (
                Error::UnsupportedFormat {
                    path: "d".into(),
                    found: 9,
                    supported: 1,
                },
                Code::Internal,
                "UNSUPPORTED_FORMAT",
            ),
            (
                Error::Poisoned("fsync".into()),
                Code::Unavailable,
                "STORE_STOPPED",
            ),
            (Error::ShuttingDown, Code::Unavailable, "SHUTTING_DOWN"),
            (Error::Io("disk".into()), Code::Internal, "IO"),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
            assert_eq!(reason_of(&status).0, reason);
        }
    }

    #[test]
    fn every_group_error_maps_to_its_code_and_reason() {
        let group = || "billing".to_owned();
        let cases: Vec<(GroupError, Code, &str)> = vec![
            (
                GroupError::NotFound { group: group() },
                Code::NotFound,
                "GROUP_NOT_FOUND",
            ),
            (
                GroupError::Exists { group: group() },
                Code::AlreadyExists,
                "GROUP_EXISTS",
            ),
            (
                GroupError::InvalidArgument("bad".into()),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                GroupError::ReplayInProgress {
                    group: group(),
                    remaining: 3,
                },
                Code::FailedPrecondition,
                "LIMIT_EXCEEDED",
            ),
            (
                GroupError::LimitExceeded("too many".into()),
                Code::ResourceExhausted,
                "LIMIT_EXCEEDED",
            ),
            (GroupError::Corrupt("x".into()), Code::DataLoss, "CORRUPT"),
            (GroupError::Internal("x".into()), Code::Internal, "IO"),
            (GroupError::ShuttingDown, Code::Unavailable, "SHUTTING_DOWN"),
            (
                GroupError::Store(Error::StreamNotFound { stream: "s".into() }),
                Code::NotFound,
                "STREAM_NOT_FOUND",
            ),
        ];
        for (error, code, reason) in cases {
            let status = group_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(reason_of(&status).0, reason, "{error}");
        }
        let (_, metadata) = reason_of(&group_status(&GroupError::NotFound { group: group() }));
        assert_eq!(metadata["group"], "billing");
    }

    #[test]
    fn wrong_expected_revision_carries_revisions() {
        let status = to_status(&Error::WrongExpectedRevision {
            stream: "order-1".into(),
            expected: ExpectedRevision::NoStream,
            current: CurrentRevision::Revision(4),
        });
        let (_, metadata) = reason_of(&status);
        assert_eq!(metadata["stream"], "order-1");
        assert_eq!(metadata["current"], "4");
        assert_eq!(metadata["expected"], "no stream");
    }
}
