//! Domain -> proto: converts engine and storage results into outgoing
//! `cairn.v1` messages.

use std::sync::Arc;

use cairn_proto::v1 as pb;
use cairn_storage::{AppendResult, RecordedEvent, StreamInfo, StreamMetadata, StreamState};

use cairn_engine::feeds::Feed;
use cairn_engine::groups::{ConsumerMessage, GroupReport, GroupSettings, Strategy};

/// A recorded event, taken by value: its strings move instead of being copied
/// (reads convert every event they return, so this is on the hot path).
pub fn event_owned(event: RecordedEvent) -> pb::RecordedEvent {
    pb::RecordedEvent {
        id: uuid_text(&event.id),
        stream: event.stream,
        revision: event.revision,
        position: event.position,
        r#type: event.event_type,
        content_type: event.content_type,
        created: Some(prost_types::Timestamp::from(event.created)),
        metadata: event.metadata,
        data: event.data,
        tags: event.tags,
    }
}

/// A recorded event by reference (for events shared by many subscriptions):
/// the same conversion on a copy (its `Bytes` share their buffers).
pub fn event_ref(event: &RecordedEvent) -> pb::RecordedEvent {
    event_owned(event.clone())
}

/// The canonical (hyphenated, lower-case) text of an id, formatted directly
/// rather than through `Display`.
fn uuid_text(id: &uuid::Uuid) -> String {
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// One stream's append outcome.
pub fn append_result(result: &AppendResult) -> pb::AppendResponse {
    pb::AppendResponse {
        current_revision: result.current.revision(),
        first_position: result.positions.map(|(first, _)| first),
        last_position: result.positions.map(|(_, last)| last),
        idempotent_replay: result.idempotent_replay,
    }
}

/// Stream metadata.
pub fn metadata(metadata: &StreamMetadata) -> pb::StreamMetadata {
    pb::StreamMetadata {
        max_count: metadata.max_count,
        max_age_seconds: metadata.max_age.map(|age| age.as_secs()),
        truncate_before: metadata.truncate_before,
        custom_json: metadata.custom.clone(),
    }
}

/// A stream's info.
pub fn stream_info(info: &StreamInfo) -> pb::StreamInfo {
    let state = match info.state {
        StreamState::Live => pb::StreamState::Live,
        StreamState::SoftDeleted => pb::StreamState::SoftDeleted,
        StreamState::Tombstoned => pb::StreamState::Tombstoned,
    };
    pb::StreamInfo {
        stream: info.name.clone(),
        state: state as i32,
        last_revision: info.last_revision,
        first_visible_revision: info.first_visible_revision,
        metadata: Some(metadata(&info.metadata)),
        metadata_revision: info.metadata_revision,
    }
}

/// A group's settings, every field set.
pub fn group_settings(settings: &GroupSettings) -> pb::GroupSettings {
    let strategy = match settings.strategy {
        Strategy::RoundRobin => pb::DeliveryStrategy::RoundRobin,
        Strategy::DispatchToSingle => pb::DeliveryStrategy::DispatchToSingle,
        Strategy::PinnedByStream => pb::DeliveryStrategy::PinnedByStream,
    };
    pb::GroupSettings {
        strategy: strategy.into(),
        max_retries: Some(settings.max_retries),
        message_timeout_ms: Some(settings.message_timeout_ms),
        max_in_flight_per_consumer: Some(settings.max_in_flight_per_consumer),
        checkpoint_after_events: Some(settings.checkpoint_after_events),
        checkpoint_after_ms: Some(settings.checkpoint_after_ms),
        max_consumers: Some(settings.max_consumers),
    }
}

/// A group's definition and live state.
pub fn group_info(report: &GroupReport) -> pb::GroupInfo {
    let definition = &report.definition;
    let status = &report.status;
    pb::GroupInfo {
        group: definition.group.clone(),
        stream: definition.stream.clone(),
        filter: Some(pb::ReadFilter {
            stream_prefixes: definition.filter.stream_prefixes.clone(),
            stream_regex: definition.filter.stream_regex.clone(),
            type_prefixes: definition.filter.type_prefixes.clone(),
            type_regex: definition.filter.type_regex.clone(),
        }),
        settings: Some(group_settings(&definition.settings)),
        checkpoint_position: status.checkpoint.map(|checkpoint| checkpoint.position),
        checkpoint_revision: status.checkpoint.and_then(|checkpoint| checkpoint.revision),
        in_flight: status.in_flight,
        waiting: status.waiting,
        parked: report.parked,
        delivered_total: status.delivered_total,
        acked_total: status.acked_total,
        retried_total: status.retried_total,
        parked_total: status.parked_total,
        consumers: status
            .consumers
            .iter()
            .map(|consumer| pb::ConsumerInfo {
                consumer_id: consumer.id.to_string(),
                name: consumer.name.clone(),
                max_in_flight: consumer.max_in_flight,
                in_flight: consumer.in_flight,
                delivered: consumer.delivered,
                acked: consumer.acked,
                nacked: consumer.nacked,
            })
            .collect(),
    }
}

/// One item of a catch-up subscription.
pub fn feed(feed: Feed) -> pb::SubscribeResponse {
    use pb::subscribe_response::Content;
    let content = match feed {
        Feed::Confirmation(id) => Content::Confirmation(pb::Confirmation {
            subscription_id: id.to_string(),
        }),
        Feed::Event(event) => Content::Event(event_owned(Arc::unwrap_or_clone(event))),
        Feed::CaughtUp { head } => Content::CaughtUp(pb::CaughtUp {
            head_position: head,
        }),
        Feed::FellBehind { position } => Content::FellBehind(pb::FellBehind { position }),
        Feed::Checkpoint { position } => Content::Checkpoint(pb::Checkpoint { position }),
    };
    pb::SubscribeResponse {
        content: Some(content),
    }
}

/// A message of a consumer's session; `End` is not a message (the facade ends
/// the call with its status).
pub fn consumer_message(message: ConsumerMessage) -> Option<pb::ConsumeResponse> {
    use pb::consume_response::Content;
    let content = match message {
        ConsumerMessage::Joined {
            consumer_id,
            max_in_flight,
        } => Content::Joined(pb::ConsumerJoined {
            consumer_id: consumer_id.to_string(),
            max_in_flight,
        }),
        ConsumerMessage::Event { event, retry_count } => Content::Event(pb::ConsumeEvent {
            event: Some(event_owned(event)),
            retry_count,
        }),
        ConsumerMessage::End(_) => return None,
    };
    Some(pb::ConsumeResponse {
        content: Some(content),
    })
}
