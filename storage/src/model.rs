//! The plain data types of the engine: what callers send in and what they get back.
//!
//! Nothing here touches RocksDB; the encoding of these types on disk lives in
//! `codec`.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, Result};

/// The name of the stream of every event, in global order.
pub const ALL_STREAM: &str = "$all";
/// Prefix of the virtual category streams (`$ce-order` holds every `order-*` stream).
pub const CATEGORY_PREFIX: &str = "$ce-";
/// Prefix of the virtual event-type streams (`$et-OrderPlaced`).
pub const EVENT_TYPE_PREFIX: &str = "$et-";
/// Prefix of system streams (`$sys-ps-groups`, ...): written by the server for
/// its own state, readable by anyone, never written by a client (the server's
/// API refuses client writes to any `$` name; see [`validate_stream_name`]).
pub const SYSTEM_STREAM_PREFIX: &str = "$sys-";
/// The longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 1024;
/// The longest event type or content type, in bytes.
pub const MAX_TYPE_NAME_BYTES: usize = 1024;
/// Most prefixes in one list of a [`ReadFilter`] (its stream prefixes, or its
/// type prefixes).
pub const MAX_FILTER_PREFIXES: usize = 1000;
/// Most bytes of all prefixes of a [`ReadFilter`] together.
pub const MAX_FILTER_PREFIX_BYTES: usize = 64 * 1024;
/// The longest regex source of a [`ReadFilter`], in bytes.
pub const MAX_FILTER_REGEX_BYTES: usize = 4096;
/// The largest compiled filter regex (the `regex` crate's size limit, far
/// below its 10 MiB default): matching costs time in proportion to it.
const FILTER_REGEX_COMPILED_BYTES: usize = 1 << 20;

/// An event as a client hands it in, before the store assigns its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Client-chosen id; retries with the same id are idempotent. Never nil.
    pub id: Uuid,
    /// The event type, e.g. `OrderPlaced`; 1..=1024 bytes.
    pub event_type: String,
    /// MIME type of `data`, e.g. `application/json`; at most 1024 bytes.
    pub content_type: String,
    /// Opaque application metadata.
    pub metadata: Bytes,
    /// The payload.
    pub data: Bytes,
    /// DCB tags (see [`crate::Query`]): at most
    /// [`MAX_TAGS_PER_EVENT`](crate::MAX_TAGS_PER_EVENT), each 1..=
    /// [`MAX_TAG_BYTES`](crate::MAX_TAG_BYTES) bytes, none twice. Indexed
    /// with the event.
    pub tags: Vec<String>,
}

impl EventData {
    /// A JSON event with a fresh random id.
    pub fn json(event_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            content_type: "application/json".to_owned(),
            metadata: Bytes::new(),
            data: data.into(),
            tags: Vec::new(),
        }
    }

    /// Sets the event's DCB tags.
    #[must_use]
    pub fn with_tags<S: Into<String>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the id (for deterministic ids and idempotent retries).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Bytes this event counts against the size limits (its tags included).
    pub fn size(&self) -> usize {
        self.event_type.len()
            + self.content_type.len()
            + self.metadata.len()
            + self.data.len()
            + self.tags.iter().map(String::len).sum::<usize>()
    }
}

/// An event as stored: the client's data plus the place the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position in `$all`; strictly increasing, gap-free in commit order.
    pub position: u64,
    /// The stream it belongs to.
    pub stream: String,
    /// 0-based position within its stream.
    pub revision: u64,
    /// The client-chosen id.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// MIME type of `data`.
    pub content_type: String,
    /// Server time of the commit, UTC.
    pub created: SystemTime,
    /// Application metadata.
    pub metadata: Bytes,
    /// The payload.
    pub data: Bytes,
    /// DCB tags, as appended.
    pub tags: Vec<String>,
}

/// What a writer expects the stream's current revision to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedRevision {
    /// No check.
    Any,
    /// The stream must not exist (never written, or soft-deleted).
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::StreamExists => f.write_str("stream exists"),
            ExpectedRevision::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// Where a stream is now, as reported in a `WrongExpectedRevision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CurrentRevision {
    /// The stream does not exist.
    NoStream,
    /// The stream's last revision.
    Revision(u64),
}

impl CurrentRevision {
    /// The revision, if the stream exists.
    pub fn revision(self) -> Option<u64> {
        match self {
            CurrentRevision::NoStream => None,
            CurrentRevision::Revision(revision) => Some(revision),
        }
    }
}

impl fmt::Display for CurrentRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CurrentRevision::NoStream => f.write_str("no stream"),
            CurrentRevision::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

impl ExpectedRevision {
    /// Whether the expectation holds for a stream that is at `current`.
    pub fn holds_for(self, current: CurrentRevision) -> bool {
        match (self, current) {
            (ExpectedRevision::Any, _) => true,
            (ExpectedRevision::NoStream, CurrentRevision::NoStream) => true,
            (ExpectedRevision::StreamExists, CurrentRevision::Revision(_)) => true,
            (ExpectedRevision::Exact(expected), CurrentRevision::Revision(actual)) => {
                expected == actual
            }
            _ => false,
        }
    }
}

/// One stream's part of an append: the events and the expectation they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// Target stream; 1..=1024 bytes of UTF-8, not starting with `$`.
    pub stream: String,
    /// The expectation checked before anything is written.
    pub expected: ExpectedRevision,
    /// The events, in order. May be empty (checks the expectation, writes nothing).
    pub events: Vec<EventData>,
}

impl StreamAppend {
    /// Builds a stream part.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Self {
        Self {
            stream: stream.into(),
            expected,
            events,
        }
    }
}

/// The outcome of one stream's part of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's last revision after the append (`NoStream` only for an empty
    /// append to a stream that does not exist).
    pub current: CurrentRevision,
    /// Global position of the first and last event written, or `None` when the
    /// append wrote nothing.
    pub positions: Option<(u64, u64)>,
    /// True when the events had already been written by an earlier identical append
    /// and this result is that earlier one's.
    pub idempotent_replay: bool,
}

/// Whether a stream can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Readable and writable.
    Live,
    /// Soft-deleted: reads as not found until written again; revisions continue.
    SoftDeleted,
    /// Hard-deleted: the name can never be used again.
    Tombstoned,
}

/// User-settable stream metadata. Hidden events are skipped by every read and
/// removed by a scavenge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMetadata {
    /// Keep at most this many of the newest events.
    pub max_count: Option<u64>,
    /// Hide events older than this.
    pub max_age: Option<Duration>,
    /// Hide events with a revision below this.
    pub truncate_before: Option<u64>,
    /// Application JSON (validated as JSON on write).
    pub custom: Option<String>,
}

/// What the store knows about one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's name.
    pub name: String,
    /// Whether it is live, soft-deleted or tombstoned.
    pub state: StreamState,
    /// The last revision ever written (also after a soft delete), if any.
    pub last_revision: Option<u64>,
    /// The first revision a read could return now; everything below is hidden.
    pub first_visible_revision: u64,
    /// Stream metadata.
    pub metadata: StreamMetadata,
    /// How often the metadata was set; the revision `set_metadata` expects.
    pub metadata_revision: Option<u64>,
}

impl StreamInfo {
    /// The revision a writer's expectation is checked against.
    pub fn current(&self) -> CurrentRevision {
        match (self.state, self.last_revision) {
            (StreamState::Live, Some(revision)) => CurrentRevision::Revision(revision),
            _ => CurrentRevision::NoStream,
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

/// Where a read starts. For a stream the number is a revision; for `$all`, a
/// category or an event type it is a global position. The start is inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The oldest event (forwards) or the newest (backwards).
    #[default]
    Start,
    /// The newest event; forwards from the end reads nothing.
    End,
    /// This revision or position, inclusive.
    At(u64),
}

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSource {
    /// One stream, by revision.
    Stream(String),
    /// Every event, by position.
    All,
    /// Every stream `<category>-*`, by position.
    Category(String),
    /// Every event of one type, by position.
    EventType(String),
    /// Every event matching a DCB query, by position, served from the type
    /// and tag indexes.
    Query(crate::query::Query),
}

impl ReadSource {
    /// Parses a stream name as given by a client: `$all`, `$ce-x`, `$et-x` or a
    /// plain stream.
    pub fn parse(name: &str) -> Result<Self> {
        if name == ALL_STREAM {
            Ok(ReadSource::All)
        } else if let Some(category) = name.strip_prefix(CATEGORY_PREFIX) {
            validate_nonempty("category", category)?;
            Ok(ReadSource::Category(category.to_owned()))
        } else if let Some(event_type) = name.strip_prefix(EVENT_TYPE_PREFIX) {
            validate_nonempty("event type", event_type)?;
            Ok(ReadSource::EventType(event_type.to_owned()))
        } else {
            validate_stored_stream_name(name)?;
            Ok(ReadSource::Stream(name.to_owned()))
        }
    }
}

/// A server-side filter: an event passes when it matches every part that is set.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Stream names starting with any of these (empty: no constraint).
    pub stream_prefixes: Vec<String>,
    /// Stream names matching this regex.
    pub stream_regex: Option<regex::Regex>,
    /// Event types starting with any of these (empty: no constraint).
    pub type_prefixes: Vec<String>,
    /// Event types matching this regex.
    pub type_regex: Option<regex::Regex>,
}

impl PartialEq for ReadFilter {
    fn eq(&self, other: &Self) -> bool {
        self.stream_prefixes == other.stream_prefixes
            && self.type_prefixes == other.type_prefixes
            && self.stream_regex.as_ref().map(regex::Regex::as_str)
                == other.stream_regex.as_ref().map(regex::Regex::as_str)
            && self.type_regex.as_ref().map(regex::Regex::as_str)
                == other.type_regex.as_ref().map(regex::Regex::as_str)
    }
}

impl ReadFilter {
    /// Compiles a regex for a filter. A bad pattern is `InvalidArgument`; a
    /// source longer than [`MAX_FILTER_REGEX_BYTES`], or one that compiles to
    /// more than the compiled-size limit, is refused too, so that matching one
    /// name stays cheap.
    pub fn regex(pattern: &str) -> Result<regex::Regex> {
        if pattern.len() > MAX_FILTER_REGEX_BYTES {
            return Err(Error::LimitExceeded {
                what: "filter regex length in bytes",
                actual: pattern.len() as u64,
                limit: MAX_FILTER_REGEX_BYTES as u64,
            });
        }
        regex::RegexBuilder::new(pattern)
            .size_limit(FILTER_REGEX_COMPILED_BYTES)
            .build()
            .map_err(|error| {
                let shown: String = pattern.chars().take(64).collect();
                let cut = if shown.len() < pattern.len() {
                    "…"
                } else {
                    ""
                };
                Error::InvalidArgument(format!("bad filter regex '{shown}{cut}': {error}"))
            })
    }

    /// Checks prefix lists against [`MAX_FILTER_PREFIXES`] (each list) and
    /// [`MAX_FILTER_PREFIX_BYTES`] (both together): `LimitExceeded` beyond.
    pub fn check_prefixes(stream_prefixes: &[String], type_prefixes: &[String]) -> Result<()> {
        for (what, prefixes) in [
            ("stream prefixes in a filter", stream_prefixes),
            ("event type prefixes in a filter", type_prefixes),
        ] {
            if prefixes.len() > MAX_FILTER_PREFIXES {
                return Err(Error::LimitExceeded {
                    what,
                    actual: prefixes.len() as u64,
                    limit: MAX_FILTER_PREFIXES as u64,
                });
            }
        }
        let bytes: usize = stream_prefixes
            .iter()
            .chain(type_prefixes)
            .map(String::len)
            .sum();
        if bytes > MAX_FILTER_PREFIX_BYTES {
            return Err(Error::LimitExceeded {
                what: "filter prefix bytes",
                actual: bytes as u64,
                limit: MAX_FILTER_PREFIX_BYTES as u64,
            });
        }
        Ok(())
    }

    /// Checks the filter's size limits (see [`ReadFilter::check_prefixes`];
    /// the regexes were checked by [`ReadFilter::regex`]). Every read checks
    /// its filter with this.
    pub fn validate(&self) -> Result<()> {
        Self::check_prefixes(&self.stream_prefixes, &self.type_prefixes)
    }

    /// Whether the filter constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.stream_prefixes.is_empty()
            && self.stream_regex.is_none()
            && self.type_prefixes.is_empty()
            && self.type_regex.is_none()
    }

    /// Whether an event of `stream` with `event_type` passes. Costs a pass
    /// over every prefix: for many checks, use [`ReadFilter::matcher`].
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        let prefixed = |prefixes: &[String], value: &str| {
            prefixes.is_empty()
                || prefixes
                    .iter()
                    .any(|prefix| value.starts_with(prefix.as_str()))
        };
        prefixed(&self.stream_prefixes, stream)
            && self
                .stream_regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(stream))
            && prefixed(&self.type_prefixes, event_type)
            && self
                .type_regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(event_type))
    }

    /// The filter prepared for many checks (see [`FilterMatcher`]).
    pub fn matcher(&self) -> FilterMatcher {
        FilterMatcher {
            streams: PrefixSet::new(&self.stream_prefixes),
            types: PrefixSet::new(&self.type_prefixes),
            stream_regex: self.stream_regex.clone(),
            type_regex: self.type_regex.clone(),
        }
    }
}

/// A [`ReadFilter`] prepared for checking many events: the same answers as
/// [`ReadFilter::matches`], but a prefix list costs one binary search per
/// check instead of a pass over every prefix.
#[derive(Debug, Clone)]
pub struct FilterMatcher {
    streams: Option<PrefixSet>,
    types: Option<PrefixSet>,
    stream_regex: Option<regex::Regex>,
    type_regex: Option<regex::Regex>,
}

impl FilterMatcher {
    /// Whether an event of `stream` with `event_type` passes.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        self.streams.as_ref().is_none_or(|set| set.matches(stream))
            && self
                .stream_regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(stream))
            && self
                .types
                .as_ref()
                .is_none_or(|set| set.matches(event_type))
            && self
                .type_regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(event_type))
    }
}

/// Prefixes sorted and reduced to a prefix-free list (a prefix that starts
/// with another one in the list adds nothing and is dropped).
///
/// Invariant: if some kept prefix `p` starts `value`, then `p` is the
/// greatest kept prefix `<= value` (every string between `p` and `value`
/// starts with `p`, and no other kept prefix does), so one binary search
/// finds the only candidate.
#[derive(Debug, Clone)]
struct PrefixSet {
    sorted: Vec<String>,
}

impl PrefixSet {
    /// `None` for an empty list (no constraint).
    fn new(prefixes: &[String]) -> Option<Self> {
        if prefixes.is_empty() {
            return None;
        }
        let mut all: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        all.sort_unstable();
        all.dedup();
        let mut sorted: Vec<String> = Vec::with_capacity(all.len());
        for prefix in all {
            // Sorted order: a kept prefix of `prefix`, if any, is the last kept.
            if sorted
                .last()
                .is_some_and(|kept| prefix.starts_with(kept.as_str()))
            {
                continue;
            }
            sorted.push(prefix.to_owned());
        }
        Some(Self { sorted })
    }

    fn matches(&self, value: &str) -> bool {
        let after = self
            .sorted
            .partition_point(|prefix| prefix.as_str() <= value);
        after > 0 && value.starts_with(self.sorted[after - 1].as_str())
    }
}

/// A read request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    /// What to read.
    pub source: ReadSource,
    /// Which way.
    pub direction: Direction,
    /// Where to start (inclusive).
    pub from: ReadFrom,
    /// At most this many events are returned (capped by the store's page limit).
    pub max_count: usize,
    /// Byte budget of the page: it ends after the event whose size
    /// ([`RecordedEvent::size`]) brings the page to this many bytes or more,
    /// so it holds at least one event whatever its size, and `next` points at
    /// the following one. `usize::MAX` (the constructors' default) sets no
    /// byte bound.
    pub max_bytes: usize,
    /// Server-side filter (any source; most useful on `$all`).
    pub filter: ReadFilter,
}

impl ReadRequest {
    /// Forwards from the start, up to `max_count` events, no filter.
    pub fn forwards(source: ReadSource, max_count: usize) -> Self {
        Self {
            source,
            direction: Direction::Forwards,
            from: ReadFrom::Start,
            max_count,
            max_bytes: usize::MAX,
            filter: ReadFilter::default(),
        }
    }

    /// Backwards from the end, up to `max_count` events, no filter.
    pub fn backwards(source: ReadSource, max_count: usize) -> Self {
        Self {
            source,
            direction: Direction::Backwards,
            from: ReadFrom::End,
            max_count,
            max_bytes: usize::MAX,
            filter: ReadFilter::default(),
        }
    }

    /// Sets the start.
    #[must_use]
    pub fn from(mut self, from: ReadFrom) -> Self {
        self.from = from;
        self
    }

    /// Sets the filter.
    #[must_use]
    pub fn filter(mut self, filter: ReadFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the byte budget (see [`ReadRequest::max_bytes`]).
    #[must_use]
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }
}

/// One page of a read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadPage {
    /// The visible, matching events, in the requested direction.
    pub events: Vec<RecordedEvent>,
    /// Where the next page starts (pass as `ReadFrom::At`), or `None` when the read
    /// reached the end of what exists now.
    pub next: Option<u64>,
    /// For position-ordered sources: the last position examined, matching or not.
    /// A filtered subscriber may checkpoint here.
    pub scanned_through: Option<u64>,
    /// The published head when the page was read (the position the next event
    /// gets): the page is consistent through `head - 1`. A DCB decision that
    /// read every page of a query forwards passes the last page's `head - 1`
    /// as its condition's `after`.
    pub head: u64,
}

/// Head and size of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreInfo {
    /// The position the next event will get (= number of events ever appended).
    pub head: u64,
    /// Streams the store knows, in any state.
    pub stream_count: u64,
    /// Events ever appended minus events removed by scavenges.
    pub event_count: u64,
}

/// Statistics of one log segment (a fixed range of positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentStats {
    /// Segment number: positions `number * SEGMENT_SIZE ..`.
    pub number: u64,
    /// Events written into the segment.
    pub events_written: u64,
    /// Record bytes written into the segment.
    pub bytes_written: u64,
    /// Events removed by scavenges.
    pub events_removed: u64,
    /// Record bytes removed by scavenges.
    pub bytes_removed: u64,
}

/// What a scavenge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScavengeReport {
    /// Records examined.
    pub scanned: u64,
    /// Hidden records removed.
    pub removed: u64,
    /// Record bytes removed.
    pub bytes_removed: u64,
    /// Segments visited.
    pub segments: u64,
}

/// Size limits, checked before a request reaches the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single event (type + content type + metadata + data), bytes.
    pub max_event_bytes: usize,
    /// Largest append request (all its events), bytes.
    pub max_append_bytes: usize,
    /// Most events in one append request.
    pub max_events_per_append: usize,
    /// Most events one read returns.
    pub max_read_page: usize,
    /// Largest custom metadata (`StreamMetadata::custom`, JSON) of a stream,
    /// bytes. Every stream's metadata is held in memory and returned by
    /// listings, so it is kept small.
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 4 * 1024 * 1024,
            max_append_bytes: 4 * 1024 * 1024,
            max_events_per_append: 10_000,
            max_read_page: 10_000,
            max_metadata_bytes: 64 * 1024,
        }
    }
}

/// The category of a stream: the text before its first `-`, if there is one and
/// it is not empty.
pub fn category_of(stream: &str) -> Option<&str> {
    match stream.split_once('-') {
        Some((category, _)) if !category.is_empty() => Some(category),
        _ => None,
    }
}

fn validate_nonempty(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if value.len() > MAX_STREAM_NAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes, the limit is {MAX_STREAM_NAME_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Prefix of a stream's snapshot companion: `$snapshot-order-42` holds the
/// aggregate snapshots of `order-42` (written by clients' aggregate
/// repositories, never changing `order-42` itself). It is the one `$` name a
/// client may write; its access is decided by the base stream's ACL, and its
/// category is `$snapshot`, never the base stream's.
pub const SNAPSHOT_STREAM_PREFIX: &str = "$snapshot-";

/// The base stream of a snapshot stream (`order-42` for `$snapshot-order-42`),
/// or `None` when `stream` is not a snapshot stream: the base must be a name
/// a client may write that is not `$`-prefixed itself.
pub fn snapshot_base(stream: &str) -> Option<&str> {
    let base = stream.strip_prefix(SNAPSHOT_STREAM_PREFIX)?;
    (!base.is_empty() && !base.starts_with('$')).then_some(base)
}

/// Checks a name a client may write to: 1..=1024 bytes, not reserved (`$...`)
/// except for a snapshot stream `$snapshot-<name>` (see [`snapshot_base`]).
pub fn validate_stream_name(stream: &str) -> Result<()> {
    validate_nonempty("stream name", stream)?;
    if stream.starts_with('$') && snapshot_base(stream).is_none() {
        return Err(Error::InvalidArgument(format!(
            "stream name '{stream}' is reserved: names starting with '$' belong to the system \
             (except '{SNAPSHOT_STREAM_PREFIX}<stream>', the snapshots of a client stream)"
        )));
    }
    Ok(())
}

/// Checks a name the store may hold: a client stream name (see
/// [`validate_stream_name`]) or a system stream (`$sys-...`).
pub fn validate_stored_stream_name(stream: &str) -> Result<()> {
    if stream.starts_with(SYSTEM_STREAM_PREFIX) && stream.len() > SYSTEM_STREAM_PREFIX.len() {
        return validate_nonempty("stream name", stream);
    }
    validate_stream_name(stream)
}

impl Limits {
    /// Checks stream metadata against `max_metadata_bytes`.
    pub fn validate_metadata(&self, metadata: &StreamMetadata) -> Result<()> {
        let size = metadata.custom.as_ref().map_or(0, String::len);
        if size > self.max_metadata_bytes {
            return Err(Error::LimitExceeded {
                what: "custom stream metadata in bytes",
                actual: size as u64,
                limit: self.max_metadata_bytes as u64,
            });
        }
        Ok(())
    }

    /// Checks an append request against the limits and the naming rules.
    pub fn validate_append(&self, parts: &[StreamAppend]) -> Result<()> {
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one stream".into(),
            ));
        }
        let mut total_events = 0usize;
        let mut total_bytes = 0usize;
        let mut streams = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for part in parts {
            validate_stored_stream_name(&part.stream)?;
            if !streams.insert(part.stream.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "stream '{}' appears twice in one append; put all its events in one part",
                    part.stream
                )));
            }
            for event in &part.events {
                if event.id.is_nil() {
                    return Err(Error::InvalidArgument(
                        "event id must not be the nil UUID".into(),
                    ));
                }
                if !ids.insert(event.id) {
                    return Err(Error::InvalidArgument(format!(
                        "event id {} appears twice in one append",
                        event.id
                    )));
                }
                if event.event_type.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "event {} has an empty type",
                        event.id
                    )));
                }
                crate::query::validate_tags(&event.id, &event.tags)?;
                if event.event_type.len() > MAX_TYPE_NAME_BYTES
                    || event.content_type.len() > MAX_TYPE_NAME_BYTES
                {
                    return Err(Error::InvalidArgument(format!(
                        "event {}: type and content type are limited to {MAX_TYPE_NAME_BYTES} bytes",
                        event.id
                    )));
                }
                let size = event.size();
                if size > self.max_event_bytes {
                    return Err(Error::LimitExceeded {
                        what: "event size in bytes",
                        actual: size as u64,
                        limit: self.max_event_bytes as u64,
                    });
                }
                total_bytes += size;
            }
            total_events += part.events.len();
        }
        if total_events > self.max_events_per_append {
            return Err(Error::LimitExceeded {
                what: "events in one append",
                actual: total_events as u64,
                limit: self.max_events_per_append as u64,
            });
        }
        if total_bytes > self.max_append_bytes {
            return Err(Error::LimitExceeded {
                what: "append size in bytes",
                actual: total_bytes as u64,
                limit: self.max_append_bytes as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_text_before_first_dash() {
        assert_eq!(category_of("order-42"), Some("order"));
        assert_eq!(category_of("order-42-x"), Some("order"));
        assert_eq!(category_of("order"), None);
        assert_eq!(category_of("-42"), None);
    }

    #[test]
    fn expectations() {
        use CurrentRevision::Revision;
        use ExpectedRevision::{Any, Exact, StreamExists};
        let missing = CurrentRevision::NoStream;
        assert!(Any.holds_for(missing));
        assert!(ExpectedRevision::NoStream.holds_for(missing));
        assert!(!ExpectedRevision::NoStream.holds_for(Revision(0)));
        assert!(StreamExists.holds_for(Revision(3)));
        assert!(!StreamExists.holds_for(missing));
        assert!(Exact(3).holds_for(Revision(3)));
        assert!(!Exact(3).holds_for(Revision(4)));
        assert!(!Exact(0).holds_for(missing));
    }

    #[test]
    fn parse_sources() {
        assert_eq!(ReadSource::parse("$all").unwrap(), ReadSource::All);
        assert_eq!(
            ReadSource::parse("$ce-order").unwrap(),
            ReadSource::Category("order".into())
        );
        assert_eq!(
            ReadSource::parse("$et-Placed").unwrap(),
            ReadSource::EventType("Placed".into())
        );
        assert_eq!(
            ReadSource::parse("a-1").unwrap(),
            ReadSource::Stream("a-1".into())
        );
        assert!(ReadSource::parse("$other").is_err());
        assert!(ReadSource::parse("").is_err());
        assert!(ReadSource::parse("$ce-").is_err());
        assert!(ReadSource::parse(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn filter_matches_all_set_parts() {
        let filter = ReadFilter {
            stream_prefixes: vec!["order-".into()],
            type_regex: Some(ReadFilter::regex("^Order(Placed|Paid)$").unwrap()),
            ..ReadFilter::default()
        };
        assert!(filter.matches("order-1", "OrderPlaced"));
        assert!(!filter.matches("order-1", "OrderShipped"));
        assert!(!filter.matches("cart-1", "OrderPlaced"));
        assert!(ReadFilter::default().matches("x", "y"));
        assert!(ReadFilter::regex("(").is_err());
    }

    proptest::proptest! {
        /// The binary-search matcher answers exactly as the linear check,
        /// for overlapping, duplicate and empty prefixes alike.
        #[test]
        fn matcher_agrees_with_matches(
            stream_prefixes in proptest::collection::vec("[ab-]{0,3}", 0..6),
            type_prefixes in proptest::collection::vec("[xy]{0,2}", 0..4),
            streams in proptest::collection::vec("[ab-]{0,5}", 1..20),
            event_type in "[xy]{0,3}",
        ) {
            let filter = ReadFilter {
                stream_prefixes,
                type_prefixes,
                ..ReadFilter::default()
            };
            let matcher = filter.matcher();
            for stream in &streams {
                proptest::prop_assert_eq!(
                    matcher.matches(stream, &event_type),
                    filter.matches(stream, &event_type),
                    "stream {:?} type {:?} filter {:?}", stream, event_type, filter
                );
            }
        }
    }

    #[test]
    fn filter_limits() {
        let many: Vec<String> = (0..=MAX_FILTER_PREFIXES)
            .map(|n| format!("s-{n}"))
            .collect();
        let filter = ReadFilter {
            stream_prefixes: many.clone(),
            ..ReadFilter::default()
        };
        assert!(matches!(
            filter.validate(),
            Err(Error::LimitExceeded {
                what: "stream prefixes in a filter",
                ..
            })
        ));
        let filter = ReadFilter {
            type_prefixes: many[..MAX_FILTER_PREFIXES].to_vec(),
            ..ReadFilter::default()
        };
        assert!(filter.validate().is_ok());
        let long = vec!["x".repeat(MAX_FILTER_PREFIX_BYTES / 2 + 1); 2];
        assert!(matches!(
            ReadFilter::check_prefixes(&long, &[]),
            Err(Error::LimitExceeded {
                what: "filter prefix bytes",
                ..
            })
        ));
        assert!(matches!(
            ReadFilter::regex(&"a".repeat(MAX_FILTER_REGEX_BYTES + 1)),
            Err(Error::LimitExceeded { .. })
        ));
        assert!(ReadFilter::regex(&"a".repeat(MAX_FILTER_REGEX_BYTES)).is_ok());
        // Short, but far too large once compiled.
        assert!(matches!(
            ReadFilter::regex("(\\w{100}){100}"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn metadata_validation() {
        let limits = Limits {
            max_metadata_bytes: 10,
            ..Limits::default()
        };
        let metadata = |custom: &str| StreamMetadata {
            custom: Some(custom.to_owned()),
            ..StreamMetadata::default()
        };
        assert!(limits.validate_metadata(&StreamMetadata::default()).is_ok());
        assert!(limits.validate_metadata(&metadata("[1,2,3,4]")).is_ok());
        assert!(matches!(
            limits.validate_metadata(&metadata("[1,2,3,4,5]")),
            Err(Error::LimitExceeded {
                actual: 11,
                limit: 10,
                ..
            })
        ));
    }

    fn event(size: usize) -> EventData {
        EventData::json("T", vec![b'x'; size])
    }

    #[test]
    fn append_validation() {
        let limits = Limits {
            max_event_bytes: 100,
            max_append_bytes: 150,
            max_events_per_append: 3,
            max_read_page: 10,
            max_metadata_bytes: 10,
        };
        let ok = StreamAppend::new("s-1", ExpectedRevision::Any, vec![event(10)]);
        assert!(limits.validate_append(std::slice::from_ref(&ok)).is_ok());
        assert!(limits.validate_append(&[]).is_err());
        let big = StreamAppend::new("s-1", ExpectedRevision::Any, vec![event(200)]);
        assert!(matches!(
            limits.validate_append(&[big]),
            Err(Error::LimitExceeded { .. })
        ));
        let many = StreamAppend::new(
            "s-1",
            ExpectedRevision::Any,
            (0..4).map(|_| event(1)).collect(),
        );
        assert!(matches!(
            limits.validate_append(&[many]),
            Err(Error::LimitExceeded { .. })
        ));
        let total = StreamAppend::new(
            "s-1",
            ExpectedRevision::Any,
            (0..2).map(|_| event(90)).collect(),
        );
        assert!(matches!(
            limits.validate_append(&[total]),
            Err(Error::LimitExceeded { .. })
        ));
        let reserved = StreamAppend::new("$x", ExpectedRevision::Any, vec![event(1)]);
        assert!(matches!(
            limits.validate_append(&[reserved]),
            Err(Error::InvalidArgument(_))
        ));
        let twice = vec![ok.clone(), ok.clone()];
        assert!(matches!(
            limits.validate_append(&twice),
            Err(Error::InvalidArgument(_))
        ));
        let e = event(1);
        let dup = StreamAppend::new("s-2", ExpectedRevision::Any, vec![e.clone(), e]);
        assert!(matches!(
            limits.validate_append(&[dup]),
            Err(Error::InvalidArgument(_))
        ));
        let nil = StreamAppend::new(
            "s-2",
            ExpectedRevision::Any,
            vec![event(1).with_id(Uuid::nil())],
        );
        assert!(matches!(
            limits.validate_append(&[nil]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
