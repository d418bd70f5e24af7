//! The client's plain types, independent of the generated protobuf structs.

use std::time::SystemTime;

use bytes::Bytes;
use cairn_proto::v1 as pb;
use uuid::Uuid;

/// What the writer expects the stream's current revision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl From<ExpectedRevision> for pb::ExpectedRevision {
    fn from(expected: ExpectedRevision) -> Self {
        use pb::expected_revision::Kind;
        let kind = match expected {
            ExpectedRevision::Any => Kind::Any(()),
            ExpectedRevision::NoStream => Kind::NoStream(()),
            ExpectedRevision::StreamExists => Kind::StreamExists(()),
            ExpectedRevision::Exact(revision) => Kind::Exact(revision),
        };
        pb::ExpectedRevision { kind: Some(kind) }
    }
}

/// An event to append. The id makes retries idempotent: keep it when you retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Event id (random unless set with [`EventData::id`]).
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// MIME type of `data`.
    pub content_type: String,
    /// Application metadata.
    pub metadata: Bytes,
    /// Payload.
    pub data: Bytes,
    /// DCB tags (e.g. `customer:42`), indexed by the server; see
    /// [`Query`](crate::Query).
    pub tags: Vec<String>,
}

impl EventData {
    /// An event with binary data (`application/octet-stream`) and a random id.
    pub fn binary(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            content_type: "application/octet-stream".into(),
            metadata: Bytes::new(),
            data: data.into(),
            tags: Vec::new(),
        }
    }

    /// An event whose data is already JSON text (`application/json`).
    pub fn json_text(event_type: impl Into<String>, json: impl Into<Bytes>) -> Self {
        Self {
            content_type: "application/json".into(),
            ..Self::binary(event_type, json)
        }
    }

    /// An event serialising `value` as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize>(
        event_type: impl Into<String>,
        value: &T,
    ) -> crate::Result<Self> {
        let data =
            serde_json::to_vec(value).map_err(|error| crate::Error::Json(error.to_string()))?;
        Ok(Self::json_text(event_type, data))
    }

    /// Sets the id (use deterministic ids to make retries and redeliveries idempotent).
    #[must_use]
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Sets the DCB tags (at most 64, each 1..=256 bytes, none twice).
    #[must_use]
    pub fn tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the content type.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    pub(crate) fn into_proto(self) -> pb::ProposedEvent {
        pb::ProposedEvent {
            id: self.id.to_string(),
            r#type: self.event_type,
            content_type: self.content_type,
            metadata: self.metadata,
            data: self.data,
            tags: self.tags,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Event id.
    pub id: Uuid,
    /// Its stream.
    pub stream: String,
    /// Index within the stream.
    pub revision: u64,
    /// Index in `$all`.
    pub position: u64,
    /// Event type.
    pub event_type: String,
    /// MIME type of `data`.
    pub content_type: String,
    /// Commit time (server clock, UTC).
    pub created: SystemTime,
    /// Application metadata.
    pub metadata: Bytes,
    /// Payload.
    pub data: Bytes,
    /// DCB tags, as appended.
    pub tags: Vec<String>,
}

impl RecordedEvent {
    /// Deserialises `data` as JSON.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        serde_json::from_slice(&self.data).map_err(|error| crate::Error::Json(error.to_string()))
    }

    pub(crate) fn from_proto(event: pb::RecordedEvent) -> crate::Result<Self> {
        let id = Uuid::try_parse(&event.id).map_err(|error| crate::Error::Other {
            code: tonic::Code::Internal,
            message: format!("server sent a bad id: {error}"),
        })?;
        let created = event
            .created
            .and_then(|created| SystemTime::try_from(created).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Self {
            id,
            stream: event.stream,
            revision: event.revision,
            position: event.position,
            event_type: event.r#type,
            content_type: event.content_type,
            created,
            metadata: event.metadata,
            data: event.data,
            tags: event.tags,
        })
    }
}

/// The outcome of an append to one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's last revision now (`None`: empty append to a missing stream).
    pub current_revision: Option<u64>,
    /// Positions of the first and last event written.
    pub positions: Option<(u64, u64)>,
    /// True when this was a retry of an append that had already been written.
    pub idempotent_replay: bool,
}

impl From<pb::AppendResponse> for AppendResult {
    fn from(response: pb::AppendResponse) -> Self {
        Self {
            current_revision: response.current_revision,
            positions: response.first_position.zip(response.last_position),
            idempotent_replay: response.idempotent_replay,
        }
    }
}

/// Read direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forwards,
    /// Newest first.
    Backwards,
}

/// Where a read starts (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The start in the read's direction: oldest (forwards) or newest (backwards).
    #[default]
    Default,
    /// The oldest event.
    Start,
    /// The newest event.
    End,
    /// A revision (stream reads) or position (`$all`, categories, types).
    At(u64),
}

/// A server-side filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Stream name prefixes (any matches).
    pub stream_prefixes: Vec<String>,
    /// Stream name regex.
    pub stream_regex: Option<String>,
    /// Event type prefixes (any matches).
    pub type_prefixes: Vec<String>,
    /// Event type regex.
    pub type_regex: Option<String>,
}

/// How to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Direction.
    pub direction: Direction,
    /// Start.
    pub from: ReadFrom,
    /// Most events in total; `None` reads to the end.
    pub max_count: Option<u64>,
    /// Filter.
    pub filter: Option<Filter>,
    /// Read-your-writes on any cluster node: start only once the node holds
    /// every event up to this position (see [`ReadOptions::at_least`]).
    pub min_position: Option<u64>,
}

impl ReadOptions {
    /// Forwards from the start, everything.
    pub fn forwards() -> Self {
        Self::default()
    }

    /// Backwards from the end, everything.
    pub fn backwards() -> Self {
        Self {
            direction: Direction::Backwards,
            ..Self::default()
        }
    }

    /// Starts at a revision or position.
    #[must_use]
    pub fn from(mut self, from: ReadFrom) -> Self {
        self.from = from;
        self
    }

    /// Limits the count.
    #[must_use]
    pub fn max_count(mut self, max_count: u64) -> Self {
        self.max_count = Some(max_count);
        self
    }

    /// Adds a filter.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Reads only once the node holds every event up to `position` (e.g. the
    /// last position an append returned): a cluster follower that is behind
    /// waits up to the call's deadline, then the read fails with
    /// [`Error::Unavailable`](crate::Error::Unavailable) (`NOT_CAUGHT_UP`).
    #[must_use]
    pub fn at_least(mut self, position: u64) -> Self {
        self.min_position = Some(position);
        self
    }
}

/// Stream metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Keep at most this many newest events.
    pub max_count: Option<u64>,
    /// Hide events older than this many seconds.
    pub max_age_seconds: Option<u64>,
    /// Hide revisions below this.
    pub truncate_before: Option<u64>,
    /// Application JSON.
    pub custom_json: Option<String>,
}

impl From<pb::StreamMetadata> for StreamMetadata {
    fn from(metadata: pb::StreamMetadata) -> Self {
        Self {
            max_count: metadata.max_count,
            max_age_seconds: metadata.max_age_seconds,
            truncate_before: metadata.truncate_before,
            custom_json: metadata.custom_json,
        }
    }
}

impl From<StreamMetadata> for pb::StreamMetadata {
    fn from(metadata: StreamMetadata) -> Self {
        Self {
            max_count: metadata.max_count,
            max_age_seconds: metadata.max_age_seconds,
            truncate_before: metadata.truncate_before,
            custom_json: metadata.custom_json,
        }
    }
}

/// A stream's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Readable and writable.
    Live,
    /// Soft-deleted (recreatable).
    SoftDeleted,
    /// Hard-deleted.
    Tombstoned,
}

/// What the server knows about a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Name.
    pub stream: String,
    /// State.
    pub state: StreamState,
    /// Last revision ever written.
    pub last_revision: Option<u64>,
    /// First revision a read can return.
    pub first_visible_revision: u64,
    /// Metadata.
    pub metadata: StreamMetadata,
    /// Metadata revision (`None`: never set).
    pub metadata_revision: Option<u64>,
}

impl From<pb::StreamInfo> for StreamInfo {
    fn from(info: pb::StreamInfo) -> Self {
        let state = match pb::StreamState::try_from(info.state) {
            Ok(pb::StreamState::SoftDeleted) => StreamState::SoftDeleted,
            Ok(pb::StreamState::Tombstoned) => StreamState::Tombstoned,
            _ => StreamState::Live,
        };
        Self {
            stream: info.stream,
            state,
            last_revision: info.last_revision,
            first_visible_revision: info.first_visible_revision,
            metadata: info.metadata.unwrap_or_default().into(),
            metadata_revision: info.metadata_revision,
        }
    }
}

/// One page of `list_streams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPage {
    /// The streams.
    pub streams: Vec<StreamInfo>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_after: Option<String>,
}

/// Server facts.
pub type ServerInfo = pb::ServerInfo;
