//! The one mapping from engine errors to the statuses KurrentDB clients
//! understand: the status code and message KurrentDB would send, and its
//! `exception` trailer (`wrong-expected-version` with `stream-name`,
//! `expected-version`, `actual-version`; `stream-deleted` with
//! `stream-name`; `access-denied`; `maximum-append-size-exceeded`...),
//! which the .NET, Node and Rust clients parse (the Python client matches
//! the code and message). Also BatchAppend's per-correlation
//! `google.rpc.Status` with a typed `Any` detail.
//!
//! Messages never carry server paths or internals: storage I/O failures are
//! logged and answered with a fixed sentence.

use cairn_engine::Error;
use cairn_proto::kurrent::rpc;
use cairn_proto::kurrent::shared;
use cairn_storage::{CurrentRevision, Error as StoreError, ExpectedRevision};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::convert;

/// The trailer naming the kind of failure.
const EXCEPTION: &str = "exception";
/// Longest stream name echoed in a message or trailer.
const MAX_ECHOED_BYTES: usize = 512;
/// Prefix of a `google.protobuf.Any` type URL.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// `text` cut to [`MAX_ECHOED_BYTES`] at a character boundary.
pub(super) fn echoed(text: &str) -> &str {
    if text.len() <= MAX_ECHOED_BYTES {
        return text;
    }
    let mut end = MAX_ECHOED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A status with `exception` = `kind` and the other trailers given. A value
/// that is not a valid header (a stream name with control characters) is
/// left out rather than failing the answer.
pub(super) fn with_trailers(
    code: Code,
    message: String,
    kind: &str,
    trailers: &[(&str, String)],
) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = kind.parse() {
        metadata.insert(EXCEPTION, value);
    }
    for (key, value) in trailers {
        if let (Ok(key), Ok(value)) = (
            key.parse::<tonic::metadata::AsciiMetadataKey>(),
            echoed(value).parse(),
        ) {
            metadata.insert(key, value);
        }
    }
    Status::with_metadata(code, message, metadata)
}

/// INVALID_ARGUMENT for a malformed request.
pub(super) fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// A required system metadata property (`type`, `content-type`) is missing.
pub(super) fn missing_metadata_property(property: &str) -> Status {
    with_trailers(
        Code::InvalidArgument,
        format!("Required Metadata Property '{property}' is missing"),
        "missing-required-metadata-property",
        &[(
            "required-metadata-properties",
            "type,content-type".to_owned(),
        )],
    )
}

/// The append is larger than the store's limit.
pub(super) fn append_too_large(limit: u64) -> Status {
    with_trailers(
        Code::InvalidArgument,
        format!("Maximum Append Size of {limit} Exceeded."),
        "maximum-append-size-exceeded",
        &[("maximum-append-size", limit.to_string())],
    )
}

/// FAILED_PRECONDITION as KurrentDB words a failed expectation of a delete
/// or tombstone (`operation`: `Delete`, `Tombstone`, `Append`).
pub(super) fn wrong_expected_version(
    operation: &str,
    stream: &str,
    expected: ExpectedRevision,
    current: CurrentRevision,
) -> Status {
    let expected = convert::expected_number(expected);
    let actual = convert::current_number(current);
    let stream = echoed(stream);
    with_trailers(
        Code::FailedPrecondition,
        format!(
            "{operation} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected}, Actual version: {actual}"
        ),
        "wrong-expected-version",
        &[
            ("stream-name", stream.to_owned()),
            ("expected-version", expected.to_string()),
            ("actual-version", actual.to_string()),
        ],
    )
}

/// FAILED_PRECONDITION: the stream is tombstoned.
pub(super) fn stream_deleted(stream: &str) -> Status {
    let stream = echoed(stream);
    with_trailers(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        "stream-deleted",
        &[("stream-name", stream.to_owned())],
    )
}

/// Maps an engine error of `operation` (`Append`, `Delete`, `Read`...) to
/// the status a KurrentDB client expects.
pub(super) fn to_status(operation: &str, error: &Error) -> Status {
    match error {
        Error::Store(store) => store_status(operation, store),
        Error::InvalidArgument(message) => invalid(message.clone()),
        Error::LimitExceeded(message) => Status::resource_exhausted(message.clone()),
        Error::Overloaded { .. } => Status::unavailable("Server Is Too Busy"),
        Error::ShuttingDown => Status::unavailable("the server is shutting down"),
        Error::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
        Error::ClientStalled { .. } => Status::aborted(format!("Consumer too slow: {error}")),
        Error::ConsumerStopped => Status::failed_precondition(error.to_string()),
        Error::Unauthenticated(message) => Status::unauthenticated(message.clone()),
        Error::PermissionDenied { .. } => with_trailers(
            Code::PermissionDenied,
            error.to_string(),
            "access-denied",
            &[],
        ),
        Error::Corrupt(_) => {
            tracing::warn!(%error, "answering a KurrentDB client with corrupt server state");
            Status::data_loss("corrupt server state (the server log has the details)")
        }
        Error::Internal(_) => {
            tracing::warn!(%error, "answering a KurrentDB client with an internal error");
            Status::internal("internal error (the server log has the details)")
        }
        _ => Status::unknown(error.to_string()),
    }
}

fn store_status(operation: &str, error: &StoreError) -> Status {
    match error {
        StoreError::WrongExpectedRevision {
            stream,
            expected,
            current,
        } => wrong_expected_version(operation, stream, *expected, *current),
        StoreError::StreamTombstoned { stream } => stream_deleted(stream),
        StoreError::StreamNotFound { stream } => {
            let stream = echoed(stream);
            with_trailers(
                Code::NotFound,
                format!("Event stream '{stream}' is not found."),
                "stream-not-found",
                &[("stream-name", stream.to_owned())],
            )
        }
        StoreError::LimitExceeded { what, limit, .. } if what.starts_with("append size") => {
            append_too_large(*limit)
        }
        StoreError::LimitExceeded { what, limit, .. } if what.starts_with("event size") => {
            with_trailers(
                Code::InvalidArgument,
                format!("An event exceeds the Maximum Append Event Size of {limit}."),
                "maximum-append-event-size-exceeded",
                &[("maximum-append-event-size", limit.to_string())],
            )
        }
        StoreError::LimitExceeded { .. } | StoreError::InvalidArgument(_) => {
            invalid(error.to_string())
        }
        StoreError::DuplicateEventId { .. } => Status::already_exists(error.to_string()),
        StoreError::Overloaded { .. } => Status::unavailable("Server Is Too Busy"),
        StoreError::ShuttingDown => Status::unavailable("the server is shutting down"),
        // Cluster mode: KurrentDB's `not-leader` redirect (NOT_FOUND "Leader
        // info available" with the leader's facade endpoint in trailers),
        // which KurrentDB clients follow by reconnecting there. Without the
        // leader's KurrentDB address (unknown leader, or a peer configured
        // without one) the client is told to retry.
        StoreError::NotLeader {
            kurrent_leader: Some(leader),
            ..
        } => match leader.rsplit_once(':') {
            Some((host, port)) => with_trailers(
                Code::NotFound,
                "Leader info available".into(),
                "not-leader",
                &[
                    (
                        "leader-endpoint-host",
                        host.trim_matches(['[', ']']).to_owned(),
                    ),
                    ("leader-endpoint-port", port.to_owned()),
                ],
            ),
            None => Status::unavailable(error.to_string()),
        },
        StoreError::NotLeader { .. } => Status::unavailable(error.to_string()),
        StoreError::Io(_) | StoreError::Poisoned(_) | StoreError::UnsupportedFormat { .. } => {
            tracing::warn!(%error, "answering a KurrentDB client with a storage failure");
            Status::unavailable("a storage failure occurred (the server log has the details)")
        }
        StoreError::Corrupt { .. } => {
            tracing::warn!(%error, "answering a KurrentDB client with corrupt data");
            Status::data_loss("stored data is corrupt (the server log has the details)")
        }
        _ => {
            tracing::warn!(%error, "answering a KurrentDB client with an unexpected storage error");
            Status::internal("internal error (the server log has the details)")
        }
    }
}

/// A `google.protobuf.Any` holding `message` of type `name` (fully qualified).
fn any(name: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("{TYPE_URL_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

/// BatchAppend's status for a failed append: the code and message of the
/// unary form, with the typed detail the clients unpack
/// (`event_store.client.WrongExpectedVersion`, `StreamDeleted`,
/// `AccessDenied`, `MaximumAppendSizeExceeded`, `BadRequest`...).
pub(super) fn batch_status(error: &Error) -> rpc::Status {
    let status = to_status("Append", error);
    let details = match error {
        Error::Store(StoreError::WrongExpectedRevision {
            expected, current, ..
        }) => {
            use shared::wrong_expected_version::{
                CurrentStreamRevisionOption as Current, ExpectedStreamPositionOption as Expected,
            };
            let detail = shared::WrongExpectedVersion {
                current_stream_revision_option: Some(match current {
                    CurrentRevision::NoStream => Current::CurrentNoStream(()),
                    CurrentRevision::Revision(revision) => {
                        Current::CurrentStreamRevision(*revision)
                    }
                }),
                expected_stream_position_option: Some(match expected {
                    ExpectedRevision::Any => Expected::ExpectedAny(()),
                    ExpectedRevision::NoStream => Expected::ExpectedNoStream(()),
                    ExpectedRevision::StreamExists => Expected::ExpectedStreamExists(()),
                    ExpectedRevision::Exact(revision) => {
                        Expected::ExpectedStreamPosition(*revision)
                    }
                }),
            };
            Some(any("event_store.client.WrongExpectedVersion", &detail))
        }
        Error::Store(StoreError::StreamTombstoned { stream }) => Some(any(
            "event_store.client.StreamDeleted",
            &shared::StreamDeleted {
                stream_identifier: Some(convert::identifier(echoed(stream))),
            },
        )),
        Error::PermissionDenied { .. } => Some(any(
            "event_store.client.AccessDenied",
            &shared::AccessDenied {},
        )),
        Error::Store(StoreError::LimitExceeded { what, limit, .. })
            if what.starts_with("append size") =>
        {
            Some(any(
                "event_store.client.MaximumAppendSizeExceeded",
                &shared::MaximumAppendSizeExceeded {
                    max_append_size: u32::try_from(*limit).unwrap_or(u32::MAX),
                },
            ))
        }
        Error::InvalidArgument(_)
        | Error::Store(StoreError::InvalidArgument(_) | StoreError::LimitExceeded { .. }) => {
            Some(any(
                "event_store.client.BadRequest",
                &shared::BadRequest {
                    message: status.message().to_owned(),
                },
            ))
        }
        _ => Some(any("event_store.client.Unknown", &shared::Unknown {})),
    };
    from_status(&status, details)
}

/// A BatchAppend status from a unary-form status and an optional detail.
pub(super) fn from_status(status: &Status, details: Option<prost_types::Any>) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

/// The BatchAppend form of a status raised while a correlation's messages
/// arrive: an append over the size limit carries the
/// `MaximumAppendSizeExceeded` detail, anything else (a bad id, missing
/// options or metadata) `BadRequest`.
pub(super) fn batch_from_unary(status: &Status) -> rpc::Status {
    let trailer = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|value| value.to_str().ok())
    };
    let detail = if trailer(EXCEPTION) == Some("maximum-append-size-exceeded") {
        let limit = trailer("maximum-append-size")
            .and_then(|limit| limit.parse().ok())
            .unwrap_or(u32::MAX);
        any(
            "event_store.client.MaximumAppendSizeExceeded",
            &shared::MaximumAppendSizeExceeded {
                max_append_size: limit,
            },
        )
    } else {
        any(
            "event_store.client.BadRequest",
            &shared::BadRequest {
                message: status.message().to_owned(),
            },
        )
    };
    from_status(status, Some(detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_expected_version_has_the_message_and_trailers_clients_parse() {
        let status = wrong_expected_version(
            "Delete",
            "order-1",
            ExpectedRevision::Exact(3),
            CurrentRevision::NoStream,
        );
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "Delete failed due to WrongExpectedVersion. Stream: order-1, Expected version: 3, Actual version: -1"
        );
        let trailers = status.metadata();
        assert_eq!(trailers.get("exception").unwrap(), "wrong-expected-version");
        assert_eq!(trailers.get("stream-name").unwrap(), "order-1");
        assert_eq!(trailers.get("expected-version").unwrap(), "3");
        assert_eq!(trailers.get("actual-version").unwrap(), "-1");
    }

    #[test]
    fn batch_status_packs_the_typed_detail() {
        let error = Error::Store(StoreError::WrongExpectedRevision {
            stream: "s".into(),
            expected: ExpectedRevision::NoStream,
            current: CurrentRevision::Revision(4),
        });
        let status = batch_status(&error);
        assert_eq!(status.code, Code::FailedPrecondition as i32);
        let details = status.details.unwrap();
        assert_eq!(
            details.type_url,
            "type.googleapis.com/event_store.client.WrongExpectedVersion"
        );
        let detail = shared::WrongExpectedVersion::decode(details.value.as_slice()).unwrap();
        assert_eq!(
            detail.current_stream_revision_option,
            Some(
                shared::wrong_expected_version::CurrentStreamRevisionOption::CurrentStreamRevision(
                    4
                )
            )
        );
    }

    #[test]
    fn storage_failures_do_not_leak_their_text() {
        let error = Error::Store(StoreError::Io("/secret/path/000042.sst: EIO".into()));
        let status = to_status("Append", &error);
        assert!(
            !status.message().contains("/secret"),
            "{}",
            status.message()
        );
    }
}
