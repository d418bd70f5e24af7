//! Proto -> domain: validates and converts incoming `cairn.v1` messages into
//! engine and storage types. Every malformed field becomes INVALID_ARGUMENT
//! here, before the engine sees the request.

use std::time::Duration;

use cairn_proto::v1 as pb;
use cairn_storage::{
    Direction, EventData, ExpectedRevision, ReadFilter, ReadFrom, ReadRequest, ReadSource,
    StreamAppend, StreamMetadata,
};
use tonic::Status;
use uuid::Uuid;

use cairn_engine::StartFrom;
use cairn_engine::feeds::{Target, end_of};
use cairn_engine::groups::{FilterSpec, GroupDefinition, GroupSettings, NackAction, Strategy};

use super::status::{invalid_argument, to_status};

/// A storage error as the status a client sees.
fn store_status(error: cairn_storage::Error) -> Status {
    to_status(&error.into())
}

/// Content type assumed when a proposed event leaves it empty.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A required expected revision.
pub fn expected_revision(
    expected: Option<pb::ExpectedRevision>,
    what: &str,
) -> Result<ExpectedRevision, Status> {
    use pb::expected_revision::Kind;
    match expected.and_then(|expected| expected.kind) {
        Some(Kind::Any(())) => Ok(ExpectedRevision::Any),
        Some(Kind::NoStream(())) => Ok(ExpectedRevision::NoStream),
        Some(Kind::StreamExists(())) => Ok(ExpectedRevision::StreamExists),
        Some(Kind::Exact(revision)) => Ok(ExpectedRevision::Exact(revision)),
        None => Err(invalid_argument(format!(
            "{what}: `expected` must be set (any, no_stream, stream_exists or exact)"
        ))),
    }
}

/// A proposed event; an empty id gets a random one.
pub fn event(event: pb::ProposedEvent) -> Result<EventData, Status> {
    let id = if event.id.is_empty() {
        Uuid::new_v4()
    } else {
        canonical_uuid(&event.id).map_err(|error| invalid_argument(format!("event id {error}")))?
    };
    if event.r#type.is_empty() {
        return Err(invalid_argument(format!(
            "event {id}: `type` must not be empty"
        )));
    }
    let content_type = if event.content_type.is_empty() {
        DEFAULT_CONTENT_TYPE.to_owned()
    } else {
        event.content_type
    };
    Ok(EventData {
        id,
        event_type: event.r#type,
        content_type,
        metadata: event.metadata,
        data: event.data,
        tags: event.tags,
    })
}

/// A DCB query; its limits are checked by the store.
pub fn query(query: pb::Query) -> cairn_storage::Query {
    cairn_storage::Query::of(
        query
            .items
            .into_iter()
            .map(|item| cairn_storage::QueryItem {
                types: item.types,
                tags: item.tags,
            }),
    )
}

/// A DCB append condition. A condition without a query is refused: "no event
/// may exist" is `Query {}` (every event), never a default.
pub fn condition(
    condition: Option<pb::AppendCondition>,
) -> Result<Option<cairn_storage::AppendCondition>, Status> {
    let Some(condition) = condition else {
        return Ok(None);
    };
    let Some(query) = condition.query else {
        return Err(invalid_argument(
            "an append condition needs a `query` (an empty Query matches every event)",
        ));
    };
    Ok(Some(cairn_storage::AppendCondition::new(
        self::query(query),
        condition.after,
    )))
}

/// The source of a read or subscription: `query` when given (then `stream`
/// must be empty), else the stream name.
pub fn source(stream: &str, query: Option<pb::Query>) -> Result<ReadSource, Status> {
    match query {
        Some(_) if !stream.is_empty() => Err(invalid_argument(
            "give either `stream` or `query`, not both",
        )),
        Some(query) => Ok(ReadSource::Query(self::query(query))),
        None => ReadSource::parse(stream).map_err(store_status),
    }
}

/// Checks that a client may write to (append, delete, set metadata of) this
/// stream: system streams (`$...`) are written only by the server itself.
pub fn writable_stream(stream: &str) -> Result<(), Status> {
    cairn_storage::validate_stream_name(stream).map_err(store_status)
}

/// One stream's part of an append.
/// A part's own `condition` is not looked at: `Append` takes it off the request
/// (see [`condition`]), and a part of `AppendMulti` with one is refused there.
pub fn append(request: pb::AppendRequest) -> Result<StreamAppend, Status> {
    writable_stream(&request.stream)?;
    let expected = expected_revision(request.expected, &format!("append to '{}'", request.stream))?;
    let events = request
        .events
        .into_iter()
        .map(event)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StreamAppend {
        stream: request.stream,
        expected,
        events,
    })
}

/// A read request. `max_count` 0 (no limit) is represented as `u64::MAX`.
pub fn read(request: pb::ReadRequest) -> Result<(ReadRequest, u64), Status> {
    use pb::read_request::From;
    let source = source(&request.stream, request.query)?;
    let direction = match pb::Direction::try_from(request.direction) {
        Ok(pb::Direction::Forwards) => Direction::Forwards,
        Ok(pb::Direction::Backwards) => Direction::Backwards,
        Err(_) => {
            return Err(invalid_argument(format!(
                "unknown direction {}",
                request.direction
            )));
        }
    };
    let is_stream = matches!(source, ReadSource::Stream(_));
    let from = match request.from {
        None if direction == Direction::Forwards => ReadFrom::Start,
        None => ReadFrom::End,
        Some(From::Start(())) => ReadFrom::Start,
        Some(From::End(())) => ReadFrom::End,
        Some(From::Revision(revision)) if is_stream => ReadFrom::At(revision),
        Some(From::Position(position)) if !is_stream => ReadFrom::At(position),
        Some(From::Revision(_)) => {
            return Err(invalid_argument(
                "`revision` applies to a stream; use `position` for $all, $ce- and $et-",
            ));
        }
        Some(From::Position(_)) => {
            return Err(invalid_argument(
                "`position` applies to $all, $ce- and $et-; use `revision` for a stream",
            ));
        }
    };
    let filter = filter(request.filter.unwrap_or_default())?;
    let max_count = if request.max_count == 0 {
        u64::MAX
    } else {
        request.max_count
    };
    Ok((
        ReadRequest {
            source,
            direction,
            from,
            max_count: 0,
            max_bytes: usize::MAX,
            filter,
        },
        max_count,
    ))
}

/// A server-side filter, within the filter limits (prefix count and bytes,
/// regex length: RESOURCE_EXHAUSTED `LIMIT_EXCEEDED` beyond them).
pub fn filter(filter: pb::ReadFilter) -> Result<ReadFilter, Status> {
    ReadFilter::check_prefixes(&filter.stream_prefixes, &filter.type_prefixes)
        .map_err(store_status)?;
    let regex = |pattern: String| -> Result<Option<regex::Regex>, Status> {
        if pattern.is_empty() {
            Ok(None)
        } else {
            ReadFilter::regex(&pattern).map(Some).map_err(store_status)
        }
    };
    Ok(ReadFilter {
        stream_prefixes: filter.stream_prefixes,
        stream_regex: regex(filter.stream_regex)?,
        type_prefixes: filter.type_prefixes,
        type_regex: regex(filter.type_regex)?,
    })
}

/// Where a subscription starts; unset means the start.
pub fn start_from(from: Option<pb::subscribe_request::From>) -> StartFrom {
    use pb::subscribe_request::From;
    match from {
        None | Some(From::Start(())) => StartFrom::Start,
        Some(From::End(())) => StartFrom::End,
        Some(From::AfterRevision(revision)) => StartFrom::AfterRevision(revision),
        Some(From::AfterPosition(position)) => StartFrom::AfterPosition(position),
    }
}

/// Stream metadata.
pub fn metadata(metadata: Option<pb::StreamMetadata>) -> StreamMetadata {
    let metadata = metadata.unwrap_or_default();
    StreamMetadata {
        max_count: metadata.max_count,
        max_age: metadata.max_age_seconds.map(Duration::from_secs),
        truncate_before: metadata.truncate_before,
        custom: metadata.custom_json,
    }
}

/// A new group's definition. "From the end" is resolved to a number here, so
/// the group starts where the source ended at creation, even across restarts.
pub fn group_definition(
    request: pb::CreateGroupRequest,
    store: &cairn_storage::Store,
) -> Result<GroupDefinition, Status> {
    use pb::create_group_request::Start;
    let source = ReadSource::parse(&request.stream).map_err(store_status)?;
    let target = Target::of(source);
    let is_stream = matches!(target, Target::Stream(_));
    let start_cursor = match request.start {
        None | Some(Start::StartBeginning(())) => 0,
        Some(Start::StartEnd(())) => end_of(store, &target),
        Some(Start::StartAfterRevision(revision)) if is_stream => revision.saturating_add(1),
        Some(Start::StartAfterPosition(position)) if !is_stream => position.saturating_add(1),
        Some(Start::StartAfterRevision(_)) => {
            return Err(invalid_argument(
                "start_after_revision applies to stream groups; use start_after_position",
            ));
        }
        Some(Start::StartAfterPosition(_)) => {
            return Err(invalid_argument(
                "start_after_position applies to $all, $ce- and $et- groups; use start_after_revision",
            ));
        }
    };
    let filter = request.filter.unwrap_or_default();
    // The same limits as a read's filter, checked before the group is stored.
    ReadFilter::check_prefixes(&filter.stream_prefixes, &filter.type_prefixes)
        .map_err(store_status)?;
    for pattern in [&filter.stream_regex, &filter.type_regex] {
        if !pattern.is_empty() {
            ReadFilter::regex(pattern).map_err(store_status)?;
        }
    }
    Ok(GroupDefinition {
        group: request.group,
        stream: request.stream,
        filter: FilterSpec {
            stream_prefixes: filter.stream_prefixes,
            stream_regex: filter.stream_regex,
            type_prefixes: filter.type_prefixes,
            type_regex: filter.type_regex,
        },
        start_cursor,
        settings: group_settings(
            GroupSettings::default(),
            &request.settings.unwrap_or_default(),
        ),
    })
}

/// `base` with every field the request sets replaced.
pub fn group_settings(base: GroupSettings, patch: &pb::GroupSettings) -> GroupSettings {
    let strategy = match pb::DeliveryStrategy::try_from(patch.strategy) {
        Ok(pb::DeliveryStrategy::RoundRobin) => Strategy::RoundRobin,
        Ok(pb::DeliveryStrategy::DispatchToSingle) => Strategy::DispatchToSingle,
        Ok(pb::DeliveryStrategy::PinnedByStream) => Strategy::PinnedByStream,
        Ok(pb::DeliveryStrategy::Unspecified) | Err(_) => base.strategy,
    };
    GroupSettings {
        strategy,
        max_retries: patch.max_retries.unwrap_or(base.max_retries),
        message_timeout_ms: patch.message_timeout_ms.unwrap_or(base.message_timeout_ms),
        max_in_flight_per_consumer: patch
            .max_in_flight_per_consumer
            .unwrap_or(base.max_in_flight_per_consumer),
        checkpoint_after_events: patch
            .checkpoint_after_events
            .unwrap_or(base.checkpoint_after_events),
        checkpoint_after_ms: patch
            .checkpoint_after_ms
            .unwrap_or(base.checkpoint_after_ms),
        max_consumers: patch.max_consumers.unwrap_or(base.max_consumers),
    }
}

/// Event ids of acks and nacks.
pub fn event_ids(ids: Vec<String>) -> Result<Vec<Uuid>, cairn_engine::Error> {
    ids.into_iter()
        .map(|id| {
            canonical_uuid(&id)
                .map_err(|error| cairn_engine::Error::InvalidArgument(format!("event id {error}")))
        })
        .collect()
}

/// A UUID in the one form the protocol accepts: canonical hyphenated text
/// (`8-4-4-4-12` hex digits, either case). Braced, URN and unhyphenated forms
/// are refused, so one event id has one spelling on the wire.
pub fn canonical_uuid(text: &str) -> Result<Uuid, String> {
    let hyphenated = text.len() == 36
        && text
            .char_indices()
            .all(|(index, c)| matches!(index, 8 | 13 | 18 | 23) == (c == '-'));
    match Uuid::try_parse(text) {
        Ok(id) if hyphenated => Ok(id),
        Ok(_) => Err(format!(
            "{} is not in canonical form (8-4-4-4-12 hex digits)",
            echo(text)
        )),
        Err(error) => Err(format!("{} is not a UUID: {error}", echo(text))),
    }
}

/// User input quoted in an error message: escaped (no control characters
/// reach a log or a terminal) and cut to a readable length.
pub fn echo(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut quoted: String = text.chars().take(MAX_CHARS).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

/// A nack's action; unspecified or unknown values mean RETRY.
pub fn nack_action(action: i32) -> NackAction {
    match pb::NackAction::try_from(action) {
        Ok(pb::NackAction::Park) => NackAction::Park,
        Ok(pb::NackAction::Skip) => NackAction::Skip,
        Ok(pb::NackAction::Stop) => NackAction::Stop,
        Ok(pb::NackAction::Retry | pb::NackAction::Unspecified) | Err(_) => NackAction::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_expectation_is_invalid() {
        let error = expected_revision(None, "append").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let error =
            expected_revision(Some(pb::ExpectedRevision { kind: None }), "append").unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn malformed_ids_and_types() {
        let bad_id = pb::ProposedEvent {
            id: "not-a-uuid".into(),
            r#type: "T".into(),
            ..Default::default()
        };
        assert_eq!(
            event(bad_id).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let no_type = pb::ProposedEvent::default();
        assert_eq!(
            event(no_type).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let assigned = event(pb::ProposedEvent {
            r#type: "T".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(!assigned.id.is_nil());
        assert_eq!(assigned.content_type, DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn only_canonical_uuids_are_accepted() {
        let id = Uuid::new_v4();
        assert_eq!(canonical_uuid(&id.to_string()), Ok(id));
        assert_eq!(canonical_uuid(&id.to_string().to_uppercase()), Ok(id));
        for other in [
            id.simple().to_string(),
            id.braced().to_string(),
            id.urn().to_string(),
            "not-a-uuid".to_owned(),
        ] {
            assert!(canonical_uuid(&other).is_err(), "{other}");
        }
    }

    #[test]
    fn filters_beyond_the_limits_are_resource_exhausted() {
        let many = |count: usize| (0..count).map(|n| format!("p{n}")).collect::<Vec<_>>();
        let at_limit = pb::ReadFilter {
            stream_prefixes: many(cairn_storage::MAX_FILTER_PREFIXES),
            type_prefixes: many(cairn_storage::MAX_FILTER_PREFIXES),
            ..Default::default()
        };
        assert!(filter(at_limit).is_ok());
        let over = pb::ReadFilter {
            type_prefixes: many(cairn_storage::MAX_FILTER_PREFIXES + 1),
            ..Default::default()
        };
        assert_eq!(
            filter(over).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let long = pb::ReadFilter {
            stream_regex: "x".repeat(cairn_storage::MAX_FILTER_REGEX_BYTES + 1),
            ..Default::default()
        };
        assert_eq!(
            filter(long).unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn read_requests() {
        let (request, max) = read(pb::ReadRequest {
            stream: "$all".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (request.source, request.from, max),
            (ReadSource::All, ReadFrom::Start, u64::MAX)
        );
        let backwards = pb::ReadRequest {
            stream: "s-1".into(),
            direction: pb::Direction::Backwards as i32,
            max_count: 5,
            ..Default::default()
        };
        let (request, max) = read(backwards).unwrap();
        assert_eq!((request.from, max), (ReadFrom::End, 5));
        let wrong = pb::ReadRequest {
            stream: "s-1".into(),
            from: Some(pb::read_request::From::Position(3)),
            ..Default::default()
        };
        assert_eq!(
            read(wrong).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let bad_regex = pb::ReadRequest {
            stream: "$all".into(),
            filter: Some(pb::ReadFilter {
                stream_regex: "(".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            read(bad_regex).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let reserved = pb::ReadRequest {
            stream: "$nope".into(),
            ..Default::default()
        };
        assert_eq!(
            read(reserved).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let direction = pb::ReadRequest {
            stream: "$all".into(),
            direction: 7,
            ..Default::default()
        };
        assert_eq!(
            read(direction).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
