//! Domain -> proto: converts storage results into outgoing messages.

use cairn_proto::v1 as pb;
use cairn_storage::{AppendResult, RecordedEvent, StreamInfo, StreamMetadata, StreamState};

/// A recorded event.
pub fn event(event: &RecordedEvent) -> pb::RecordedEvent {
    pb::RecordedEvent {
        id: event.id.to_string(),
        stream: event.stream.clone(),
        revision: event.revision,
        position: event.position,
        r#type: event.event_type.clone(),
        content_type: event.content_type.clone(),
        created: Some(prost_types::Timestamp::from(event.created)),
        metadata: event.metadata.clone(),
        data: event.data.clone(),
    }
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
