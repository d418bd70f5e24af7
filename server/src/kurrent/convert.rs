//! Conversions between the KurrentDB wire types and Cairn's: positions, ids,
//! expected revisions, proposed and recorded events. Pure functions; errors
//! are `Status`es built by `error`.
//!
//! Positions: KurrentDB's commit and prepare positions are both Cairn's
//! global position + 1 ([`to_commit`]), so the first event's is 1 and 0
//! stands for "before the first event". [`from_commit`] reverses it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_proto::kurrent::shared;
use cairn_proto::kurrent::streams as pb;
use cairn_storage::{CurrentRevision, EventData, ExpectedRevision, RecordedEvent};
use tonic::Status;
use uuid::Uuid;

use super::error;

/// The `type` key of an event's system metadata.
pub(super) const TYPE_KEY: &str = "type";
/// The `content-type` key.
pub(super) const CONTENT_TYPE_KEY: &str = "content-type";
/// The `created` key: 100 ns ticks since the Unix epoch, in decimal.
pub(super) const CREATED_KEY: &str = "created";

/// The KurrentDB commit (= prepare) position of Cairn position `position`.
pub(super) fn to_commit(position: u64) -> u64 {
    position.saturating_add(1)
}

/// The Cairn position of KurrentDB commit position `commit`; `None` for 0
/// (before the first event).
pub(super) fn from_commit(commit: u64) -> Option<u64> {
    commit.checked_sub(1)
}

/// Which form of UUID responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UuidForm {
    /// `{"string": "..."}` (what KurrentDB sends unless asked otherwise).
    String,
    /// Most and least significant 64-bit halves.
    Structured,
}

/// The id as the client asked for it.
pub(super) fn uuid_to_wire(id: Uuid, form: UuidForm) -> shared::Uuid {
    let value = match form {
        UuidForm::String => shared::uuid::Value::String(id.to_string()),
        UuidForm::Structured => {
            let (most, least) = id.as_u64_pair();
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: most as i64,
                least_significant_bits: least as i64,
            })
        }
    };
    shared::Uuid { value: Some(value) }
}

/// The id a client sent, in either form.
pub(super) fn uuid_from_wire(id: Option<&shared::Uuid>, what: &str) -> Result<Uuid, Status> {
    let parsed = match id.and_then(|id| id.value.as_ref()) {
        None => return Err(error::invalid(format!("{what} is missing"))),
        Some(shared::uuid::Value::String(text)) => Uuid::parse_str(text).map_err(|_| {
            let shown: String = text.chars().take(64).collect();
            error::invalid(format!("{what} '{shown}' is not a UUID"))
        })?,
        Some(shared::uuid::Value::Structured(halves)) => Uuid::from_u64_pair(
            halves.most_significant_bits as u64,
            halves.least_significant_bits as u64,
        ),
    };
    Ok(parsed)
}

/// A stream name from its identifier (UTF-8 bytes).
pub(super) fn stream_name(identifier: Option<&shared::StreamIdentifier>) -> Result<String, Status> {
    let identifier =
        identifier.ok_or_else(|| error::invalid("the stream identifier is missing"))?;
    String::from_utf8(identifier.stream_name.to_vec())
        .map_err(|_| error::invalid("the stream name is not valid UTF-8"))
}

/// A stream identifier of `name`.
pub(super) fn identifier(name: &str) -> shared::StreamIdentifier {
    shared::StreamIdentifier {
        stream_name: Bytes::copy_from_slice(name.as_bytes()),
    }
}

/// KurrentDB's number for an expectation: the revision, or -1 (no stream),
/// -2 (any), -4 (stream exists).
pub(super) fn expected_number(expected: ExpectedRevision) -> i64 {
    match expected {
        ExpectedRevision::Any => -2,
        ExpectedRevision::NoStream => -1,
        ExpectedRevision::StreamExists => -4,
        ExpectedRevision::Exact(revision) => i64::try_from(revision).unwrap_or(i64::MAX),
    }
}

/// KurrentDB's number for a current revision: the revision, or -1.
pub(super) fn current_number(current: CurrentRevision) -> i64 {
    match current {
        CurrentRevision::NoStream => -1,
        CurrentRevision::Revision(revision) => i64::try_from(revision).unwrap_or(i64::MAX),
    }
}

/// 100 ns ticks since the Unix epoch.
pub(super) fn ticks(time: SystemTime) -> i64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_nanos() / 100).unwrap_or(i64::MAX)
}

/// A protobuf timestamp of now.
pub(super) fn now_timestamp() -> prost_types::Timestamp {
    SystemTime::now().into()
}

/// An event a client proposes, from its id, system metadata map (`type`
/// and `content-type` required), custom metadata and data.
pub(super) fn proposed_event(
    id: Option<&shared::Uuid>,
    metadata: &HashMap<String, String>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<EventData, Status> {
    let id = uuid_from_wire(id, "the event id")?;
    let event_type = metadata
        .get(TYPE_KEY)
        .ok_or_else(|| error::missing_metadata_property(TYPE_KEY))?;
    let content_type = metadata
        .get(CONTENT_TYPE_KEY)
        .ok_or_else(|| error::missing_metadata_property(CONTENT_TYPE_KEY))?;
    Ok(EventData {
        id,
        event_type: event_type.clone(),
        content_type: content_type.clone(),
        metadata: custom_metadata,
        data,
        tags: Vec::new(),
    })
}

/// A recorded event on the wire, under `stream` at `revision` (its own, or
/// a link's for `$ce-`/`$et-`).
pub(super) fn recorded(
    event: &RecordedEvent,
    stream: &str,
    revision: u64,
    form: UuidForm,
) -> pb::read_resp::read_event::RecordedEvent {
    let position = to_commit(event.position);
    let metadata = HashMap::from([
        (TYPE_KEY.to_owned(), event.event_type.clone()),
        (CONTENT_TYPE_KEY.to_owned(), event.content_type.clone()),
        (CREATED_KEY.to_owned(), ticks(event.created).to_string()),
    ]);
    pb::read_resp::read_event::RecordedEvent {
        id: Some(uuid_to_wire(event.id, form)),
        stream_identifier: Some(identifier(stream)),
        stream_revision: revision,
        prepare_position: position,
        commit_position: position,
        metadata,
        custom_metadata: event.metadata.clone(),
        data: event.data.clone(),
    }
}

/// The id of the link event of `event` in an index stream: the event's id
/// mixed with an FNV-1a hash of the index name, so that it is stable across
/// reads and differs between `$ce-` and `$et-`.
fn link_id(event: &RecordedEvent, index: &str) -> Uuid {
    const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = index.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u128::from(byte)).wrapping_mul(FNV_PRIME)
    });
    Uuid::from_u128(event.id.as_u128() ^ hash)
}

/// One `ReadResp` event for `event`. Read from its own stream: the event.
/// Read through an index stream (`index` = `$ce-x` or `$et-x`), it is a link
/// event at revision = the event's Cairn position (revisions of index
/// streams are sparse but ordered): with `resolve_links` the response holds
/// the event and the link, without it the link alone (type `$>`, data
/// `<revision>@<stream>`), as KurrentDB answers.
pub(super) fn read_event(
    event: &RecordedEvent,
    index: Option<&str>,
    resolve_links: bool,
    form: UuidForm,
) -> pb::ReadResp {
    let position = to_commit(event.position);
    let (recorded_event, link) = match index {
        None => (recorded(event, &event.stream, event.revision, form), None),
        Some(index) => {
            let link_event = RecordedEvent {
                position: event.position,
                stream: index.to_owned(),
                revision: event.position,
                id: link_id(event, index),
                event_type: "$>".to_owned(),
                content_type: "application/octet-stream".to_owned(),
                created: event.created,
                metadata: Bytes::new(),
                data: Bytes::from(format!("{}@{}", event.revision, event.stream)),
                tags: Vec::new(),
            };
            let link = recorded(&link_event, index, event.position, form);
            if resolve_links {
                (
                    recorded(event, &event.stream, event.revision, form),
                    Some(link),
                )
            } else {
                (link, None)
            }
        }
    };
    pb::ReadResp {
        content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
            event: Some(recorded_event),
            link,
            position: Some(pb::read_resp::read_event::Position::CommitPosition(
                position,
            )),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_start_above_zero() {
        assert_eq!(to_commit(0), 1);
        assert_eq!(from_commit(1), Some(0));
        assert_eq!(from_commit(0), None);
        for position in [0, 1, 41, u64::MAX - 1] {
            assert_eq!(from_commit(to_commit(position)), Some(position));
        }
    }

    #[test]
    fn uuids_round_trip_in_both_forms() {
        let id = Uuid::new_v4();
        for form in [UuidForm::String, UuidForm::Structured] {
            let wire = uuid_to_wire(id, form);
            assert_eq!(uuid_from_wire(Some(&wire), "id").unwrap(), id);
        }
        // Java's halves of 00112233-4455-6677-8899-aabbccddeeff.
        let structured = shared::Uuid {
            value: Some(shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: 0x0011_2233_4455_6677,
                least_significant_bits: 0x8899_aabb_ccdd_eeffu64 as i64,
            })),
        };
        assert_eq!(
            uuid_from_wire(Some(&structured), "id").unwrap().to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert!(uuid_from_wire(None, "id").is_err());
        let bad = shared::Uuid {
            value: Some(shared::uuid::Value::String("nope".into())),
        };
        assert!(uuid_from_wire(Some(&bad), "id").is_err());
    }

    #[test]
    fn created_is_in_ticks_since_the_epoch() {
        let time = UNIX_EPOCH + std::time::Duration::from_micros(1_500_000);
        assert_eq!(ticks(time), 15_000_000);
    }
}
