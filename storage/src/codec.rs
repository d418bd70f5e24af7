//! Byte layouts of every key and value (see `FORMAT.md` for the drawing).
//!
//! This module owns the on-disk format and nothing else: it neither opens RocksDB
//! nor decides what is visible. All integers are big-endian, so RocksDB's byte
//! order of keys is numeric order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{EventData, RecordedEvent, StreamMetadata};

/// Version of the on-disk format; stored in `meta` and checked at open.
///
/// Version 2 added the append stamp to `event_ids` values (see
/// [`EventIdEntry`]). A version-1 database is migrated at open by storing the
/// new version: its 24-byte entries stay and are read as entries without a
/// stamp, whose retries are compared against the stored records instead.
///
/// Version 3 added event tags: tagged records (record version 2) and the
/// `tag_index` column family. Older databases hold no tags, so their
/// migration is creating the (empty) column family and storing the version.
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format version `Store::open` migrates from.
pub const OLDEST_MIGRATED_FORMAT: u32 = 1;
/// Version byte leading a `log` record without tags.
const RECORD_VERSION: u8 = 1;
/// Version byte leading a `log` record with tags (format 3): the layout of
/// version 1 plus the tags after the data.
const RECORD_VERSION_TAGGED: u8 = 2;
/// Version byte leading every `streams` value.
const STREAM_VERSION: u8 = 1;

/// Column family names.
pub mod cf {
    /// Format version, head and counters.
    pub const META: &str = "default";
    /// position -> event record.
    pub const LOG: &str = "log";
    /// (stream id, revision) -> position.
    pub const STREAM_INDEX: &str = "stream_index";
    /// stream name -> stream head, state and metadata.
    pub const STREAMS: &str = "streams";
    /// (category, position) -> ().
    pub const CATEGORY_INDEX: &str = "category_index";
    /// (event type, position) -> ().
    pub const TYPE_INDEX: &str = "type_index";
    /// event id -> (stream id, revision, position).
    pub const EVENT_IDS: &str = "event_ids";
    /// (segment, kind) -> counters.
    pub const SEGMENTS: &str = "segments";
    /// (tag, position) -> (), one entry per tag of an event (format 3).
    pub const TAG_INDEX: &str = "tag_index";
    /// Every column family, in open order.
    pub const ALL: [&str; 9] = [
        META,
        LOG,
        STREAM_INDEX,
        STREAMS,
        CATEGORY_INDEX,
        TYPE_INDEX,
        EVENT_IDS,
        SEGMENTS,
        TAG_INDEX,
    ];
}

/// Keys of the `meta` column family.
pub mod meta_key {
    /// u32: the format version.
    pub const FORMAT_VERSION: &[u8] = b"format_version";
    /// u64: the next position to assign. Written with every commit, so a scavenge
    /// that removes the newest record never lets a position be reused.
    pub const HEAD: &[u8] = b"head";
    /// u64: the next stream id to assign.
    pub const NEXT_STREAM_ID: &[u8] = b"next_stream_id";
    /// u64: events removed by scavenges (written only by the scavenger).
    pub const EVENTS_REMOVED: &[u8] = b"events_removed";
}

/// Events per log segment (2^20).
pub const SEGMENT_SIZE: u64 = 1 << 20;

/// The segment of a position.
pub fn segment_of(position: u64) -> u64 {
    position / SEGMENT_SIZE
}

/// Counter kinds of the `segments` column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SegmentCounter {
    /// Written by the committer.
    Written = 0,
    /// Written by the scavenger.
    Removed = 1,
}

/// `segments` key: segment (u64) ++ counter kind (u8).
pub fn segment_key(segment: u64, counter: SegmentCounter) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&segment.to_be_bytes());
    key[8] = counter as u8;
    key
}

/// `segments` value: events (u64) ++ bytes (u64).
pub fn encode_counts(events: u64, bytes: u64) -> [u8; 16] {
    let mut value = [0u8; 16];
    value[..8].copy_from_slice(&events.to_be_bytes());
    value[8..].copy_from_slice(&bytes.to_be_bytes());
    value
}

/// Decodes a `segments` value.
pub fn decode_counts(value: &[u8]) -> Result<(u64, u64)> {
    if value.len() != 16 {
        return Err(corrupt(
            cf::SEGMENTS,
            "segment counters",
            "length is not 16",
        ));
    }
    Ok((read_u64(&value[..8]), read_u64(&value[8..])))
}

/// Reads a big-endian u64 from exactly 8 bytes.
pub fn read_u64(bytes: &[u8]) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buffer)
}

/// Decodes a u64 value of `meta`.
pub fn decode_u64(column_family: &'static str, key: &str, value: &[u8]) -> Result<u64> {
    if value.len() != 8 {
        return Err(corrupt(column_family, key, "expected an 8-byte integer"));
    }
    Ok(read_u64(value))
}

fn corrupt(
    column_family: &'static str,
    key: impl Into<String>,
    reason: impl Into<String>,
) -> Error {
    Error::Corrupt {
        column_family,
        key: key.into(),
        reason: reason.into(),
    }
}

/// `log` key: the position.
pub fn log_key(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

/// `stream_index` key: stream id ++ revision.
pub fn stream_index_key(stream_id: u64, revision: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&stream_id.to_be_bytes());
    key[8..].copy_from_slice(&revision.to_be_bytes());
    key
}

/// `category_index` / `type_index` / `tag_index` key prefix: name length (u16) ++ name. The
/// length makes the prefix of one name never a prefix of another's keys.
pub fn name_index_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + name.len() + 8);
    key.extend_from_slice(&(name.len() as u16).to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// `category_index` / `type_index` / `tag_index` key: prefix ++ position.
pub fn name_index_key(name: &str, position: u64) -> Vec<u8> {
    let mut key = name_index_prefix(name);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// Where an event id was written: the `event_ids` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventIdEntry {
    /// The stream's id.
    pub stream_id: u64,
    /// The event's revision in it.
    pub revision: u64,
    /// The event's global position.
    pub position: u64,
    /// Which append wrote it, and a hash of its content; `None` for entries
    /// written by format version 1.
    pub stamp: Option<AppendStamp>,
}

/// What an idempotent retry is checked against: the event's place in the append
/// request that wrote it, and its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendStamp {
    /// The event's index among all events of its append request (all parts of
    /// a multi-stream append, in order).
    pub index: u32,
    /// How many events that request appended.
    pub count: u32,
    /// [`content_hash`] of the event.
    pub hash: u32,
}

/// Length of a format-1 `event_ids` value (no stamp).
const EVENT_ID_V1_LEN: usize = 24;
/// Length of a format-2 `event_ids` value.
const EVENT_ID_LEN: usize = 36;

impl EventIdEntry {
    /// stream id ++ revision ++ position ++ index ++ count ++ hash (the last
    /// three only with a stamp).
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(EVENT_ID_LEN);
        value.extend_from_slice(&self.stream_id.to_be_bytes());
        value.extend_from_slice(&self.revision.to_be_bytes());
        value.extend_from_slice(&self.position.to_be_bytes());
        if let Some(stamp) = self.stamp {
            value.extend_from_slice(&stamp.index.to_be_bytes());
            value.extend_from_slice(&stamp.count.to_be_bytes());
            value.extend_from_slice(&stamp.hash.to_be_bytes());
        }
        value
    }

    /// Decodes an `event_ids` value of either length.
    pub fn decode(id: &Uuid, value: &[u8]) -> Result<Self> {
        let u32_at = |at: usize| {
            u32::from_be_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]])
        };
        let stamp = match value.len() {
            EVENT_ID_V1_LEN => None,
            EVENT_ID_LEN => Some(AppendStamp {
                index: u32_at(24),
                count: u32_at(28),
                hash: u32_at(32),
            }),
            _ => {
                return Err(corrupt(
                    cf::EVENT_IDS,
                    id.to_string(),
                    "length is neither 24 nor 36",
                ));
            }
        };
        Ok(Self {
            stream_id: read_u64(&value[..8]),
            revision: read_u64(&value[8..16]),
            position: read_u64(&value[16..24]),
            stamp,
        })
    }
}

/// The hash of an event's content that an idempotent retry must match: crc32 of
/// `u16 len ++ event type ++ u16 len ++ content type ++ u32 len ++ metadata ++
/// u32 len ++ data`, followed, only when the event has tags, by `u16 count ++
/// (u16 len ++ tag)*` (the lengths keep a byte moving between fields a change;
/// an untagged event hashes as it did before tags existed).
pub fn content_hash<'t>(
    event_type: &str,
    content_type: &str,
    metadata: &[u8],
    data: &[u8],
    tags: impl ExactSizeIterator<Item = &'t str>,
) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for short in [event_type.as_bytes(), content_type.as_bytes()] {
        hasher.update(&(short.len() as u16).to_be_bytes());
        hasher.update(short);
    }
    for long in [metadata, data] {
        hasher.update(&(long.len() as u32).to_be_bytes());
        hasher.update(long);
    }
    if tags.len() > 0 {
        hasher.update(&(tags.len() as u16).to_be_bytes());
        for tag in tags {
            hasher.update(&(tag.len() as u16).to_be_bytes());
            hasher.update(tag.as_bytes());
        }
    }
    hasher.finalize()
}

fn nanos_since_epoch(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn time_from_nanos(nanos: i64) -> SystemTime {
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
    }
}

/// Encodes a `log` record. Layout (big-endian):
/// `u8 version | u64 revision | [16] id | i64 created_ns | u16+stream | u16+type |
/// u16+content_type | u32+metadata | u32+data | [u16 count | (u16+tag)*] |
/// u32 crc32(position ++ all before)`. The tags are there only in version 2,
/// which is written exactly when the event has tags.
pub fn encode_record(
    position: u64,
    stream: &str,
    revision: u64,
    created: SystemTime,
    event: &EventData,
) -> Vec<u8> {
    let mut record =
        Vec::with_capacity(1 + 8 + 16 + 8 + 2 + 2 + 2 + 4 + 4 + 4 + stream.len() + event.size());
    record.push(if event.tags.is_empty() {
        RECORD_VERSION
    } else {
        RECORD_VERSION_TAGGED
    });
    record.extend_from_slice(&revision.to_be_bytes());
    record.extend_from_slice(event.id.as_bytes());
    record.extend_from_slice(&nanos_since_epoch(created).to_be_bytes());
    for short in [
        stream.as_bytes(),
        event.event_type.as_bytes(),
        event.content_type.as_bytes(),
    ] {
        record.extend_from_slice(&(short.len() as u16).to_be_bytes());
        record.extend_from_slice(short);
    }
    for long in [&event.metadata[..], &event.data[..]] {
        record.extend_from_slice(&(long.len() as u32).to_be_bytes());
        record.extend_from_slice(long);
    }
    if !event.tags.is_empty() {
        record.extend_from_slice(&(event.tags.len() as u16).to_be_bytes());
        for tag in &event.tags {
            record.extend_from_slice(&(tag.len() as u16).to_be_bytes());
            record.extend_from_slice(tag.as_bytes());
        }
    }
    let crc = record_crc(position, &record);
    record.extend_from_slice(&crc.to_be_bytes());
    record
}

fn record_crc(position: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&position.to_be_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// A cursor over a record's bytes that turns running out of bytes into `Corrupt`.
struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
    position: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<std::ops::Range<usize>> {
        let end = self
            .offset
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt(cf::LOG, self.position.to_string(), "record is truncated"))?;
        let range = self.offset..end;
        self.offset = end;
        Ok(range)
    }

    fn u16(&mut self) -> Result<usize> {
        let range = self.take(2)?;
        Ok(u16::from_be_bytes([self.bytes[range.start], self.bytes[range.start + 1]]) as usize)
    }

    fn u32(&mut self) -> Result<usize> {
        let range = self.take(4)?;
        let mut buffer = [0u8; 4];
        buffer.copy_from_slice(&self.bytes[range]);
        Ok(u32::from_be_bytes(buffer) as usize)
    }

    fn u64(&mut self) -> Result<u64> {
        let range = self.take(8)?;
        Ok(read_u64(&self.bytes[range]))
    }

    fn str(&mut self, len: usize, what: &str) -> Result<&'a str> {
        let range = self.take(len)?;
        std::str::from_utf8(&self.bytes[range]).map_err(|_| {
            corrupt(
                cf::LOG,
                self.position.to_string(),
                format!("{what} is not UTF-8"),
            )
        })
    }
}

/// A record whose crc and layout were checked, borrowing its bytes: what
/// visibility needs, without copying anything. [`RecordHeader::to_event`] turns
/// it into an owned event without parsing or checksumming again, so a read pays
/// the crc and the parse once per record.
#[derive(Debug, Clone)]
pub struct RecordHeader<'a> {
    /// The stream name.
    pub stream: &'a str,
    /// The revision in it.
    pub revision: u64,
    /// The event type.
    pub event_type: &'a str,
    /// Commit time.
    pub created: SystemTime,
    /// Event id.
    pub id: Uuid,
    /// MIME type of the data.
    content_type: &'a str,
    /// Where the metadata and the data lie in the record.
    metadata: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
    /// Where the tags lie (`u16 len ++ tag`, each checked UTF-8); empty
    /// for a record without tags.
    tags: std::ops::Range<usize>,
}

/// The tags of a decoded record, borrowed from its bytes.
#[derive(Debug, Clone)]
pub struct Tags<'r> {
    bytes: &'r [u8],
}

impl<'r> Iterator for Tags<'r> {
    type Item = &'r str;

    fn next(&mut self) -> Option<&'r str> {
        if self.bytes.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([self.bytes[0], self.bytes[1]]) as usize;
        let end = (2 + len).min(self.bytes.len());
        let tag = &self.bytes[2..end];
        self.bytes = &self.bytes[end..];
        // `decode_header` checked every tag's length and UTF-8.
        std::str::from_utf8(tag).ok()
    }
}

impl RecordHeader<'_> {
    /// [`content_hash`] of the record. `record` must be the bytes this header
    /// was decoded from.
    pub fn content_hash(&self, record: &[u8]) -> u32 {
        let tags: Vec<&str> = self.tags(record).collect();
        content_hash(
            self.event_type,
            self.content_type,
            &record[self.metadata.clone()],
            &record[self.data.clone()],
            tags.into_iter(),
        )
    }

    /// The record's tags. `record` must be the bytes this header was decoded
    /// from.
    pub fn tags<'r>(&self, record: &'r [u8]) -> Tags<'r> {
        Tags {
            bytes: &record[self.tags.clone()],
        }
    }

    /// The owned event at `position`. `record` must be the bytes this header was
    /// decoded from: they are copied once, and `metadata` and `data` share that copy.
    pub fn to_event(&self, position: u64, record: &[u8]) -> RecordedEvent {
        self.event_sharing(position, Bytes::copy_from_slice(record))
    }

    fn event_sharing(&self, position: u64, record: Bytes) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: self.stream.to_owned(),
            revision: self.revision,
            id: self.id,
            event_type: self.event_type.to_owned(),
            content_type: self.content_type.to_owned(),
            created: self.created,
            metadata: record.slice(self.metadata.clone()),
            data: record.slice(self.data.clone()),
            tags: self.tags(&record).map(str::to_owned).collect(),
        }
    }
}

/// Checks a record's crc and its whole layout, and returns its fields without
/// copying.
pub fn decode_header(position: u64, record: &[u8]) -> Result<RecordHeader<'_>> {
    verify_crc(position, record)?;
    let mut reader = Reader {
        bytes: record,
        offset: 0,
        position,
    };
    let version_range = reader.take(1)?;
    let tagged = match record[version_range.start] {
        RECORD_VERSION => false,
        RECORD_VERSION_TAGGED => true,
        _ => {
            return Err(corrupt(
                cf::LOG,
                position.to_string(),
                "unknown record version",
            ));
        }
    };
    let revision = reader.u64()?;
    let id_range = reader.take(16)?;
    let id = Uuid::from_slice(&record[id_range])
        .map_err(|_| corrupt(cf::LOG, position.to_string(), "bad id"))?;
    let created = time_from_nanos(reader.u64()? as i64);
    let len = reader.u16()?;
    let stream = reader.str(len, "stream name")?;
    let len = reader.u16()?;
    let event_type = reader.str(len, "event type")?;
    let len = reader.u16()?;
    let content_type = reader.str(len, "content type")?;
    let len = reader.u32()?;
    let metadata = reader.take(len)?;
    let len = reader.u32()?;
    let data = reader.take(len)?;
    let tags_start = reader.offset;
    if tagged {
        let count = reader.u16()?;
        if count == 0 {
            return Err(corrupt(
                cf::LOG,
                position.to_string(),
                "a tagged record with no tags",
            ));
        }
        for _ in 0..count {
            let len = reader.u16()?;
            reader.str(len, "tag")?;
        }
    }
    // The tags' region starts after the count.
    let tags = if tagged {
        tags_start + 2..reader.offset
    } else {
        tags_start..tags_start
    };
    if reader.offset + 4 != record.len() {
        return Err(corrupt(
            cf::LOG,
            position.to_string(),
            "trailing bytes after the payload",
        ));
    }
    Ok(RecordHeader {
        stream,
        revision,
        event_type,
        created,
        id,
        content_type,
        metadata,
        data,
        tags,
    })
}

fn verify_crc(position: u64, record: &[u8]) -> Result<()> {
    if record.len() < 4 {
        return Err(corrupt(
            cf::LOG,
            position.to_string(),
            "record is shorter than its checksum",
        ));
    }
    let (body, crc) = record.split_at(record.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = record_crc(position, body);
    if stored != computed {
        return Err(corrupt(
            cf::LOG,
            position.to_string(),
            format!("crc32 mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    Ok(())
}

/// Checks a record's crc and decodes it whole. `metadata` and `data` share the
/// record's buffer (no copy). Reads use [`decode_header`] and
/// [`RecordHeader::to_event`] (they hold borrowed RocksDB bytes); tests use this.
#[cfg(test)]
pub fn decode_record(position: u64, record: Vec<u8>) -> Result<RecordedEvent> {
    let record = Bytes::from(record);
    let header = decode_header(position, &record)?;
    Ok(header.event_sharing(position, record.clone()))
}

/// A stream's persistent state: the `streams` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamRecord {
    /// Stable numeric id, used in index keys.
    pub id: u64,
    /// The revision the next event gets (= events ever appended).
    pub next_revision: u64,
    /// Soft delete: revisions below this are hidden; the stream does not exist
    /// while `deleted_before == next_revision > 0`.
    pub deleted_before: u64,
    /// Hard-deleted.
    pub tombstoned: bool,
    /// Number of metadata writes; `None` before the first.
    pub metadata_revision: Option<u64>,
    /// User metadata.
    pub metadata: StreamMetadata,
}

const FLAG_MAX_COUNT: u8 = 1;
const FLAG_MAX_AGE: u8 = 2;
const FLAG_TRUNCATE_BEFORE: u8 = 4;
const FLAG_CUSTOM: u8 = 8;

impl StreamRecord {
    /// Layout: `u8 version | u64 id | u64 next_revision | u64 deleted_before |
    /// u8 tombstoned | u64 metadata_revision+1 (0 = never) | u8 flags |
    /// [u64 max_count] [u64 max_age_ms] [u64 truncate_before] [u32+custom] | u32 crc32`.
    pub fn encode(&self, name: &str) -> Vec<u8> {
        let mut value = Vec::with_capacity(64);
        value.push(STREAM_VERSION);
        value.extend_from_slice(&self.id.to_be_bytes());
        value.extend_from_slice(&self.next_revision.to_be_bytes());
        value.extend_from_slice(&self.deleted_before.to_be_bytes());
        value.push(u8::from(self.tombstoned));
        value.extend_from_slice(
            &self
                .metadata_revision
                .map_or(0, |revision| revision + 1)
                .to_be_bytes(),
        );
        let metadata = &self.metadata;
        let mut flags = 0u8;
        flags |= if metadata.max_count.is_some() {
            FLAG_MAX_COUNT
        } else {
            0
        };
        flags |= if metadata.max_age.is_some() {
            FLAG_MAX_AGE
        } else {
            0
        };
        flags |= if metadata.truncate_before.is_some() {
            FLAG_TRUNCATE_BEFORE
        } else {
            0
        };
        flags |= if metadata.custom.is_some() {
            FLAG_CUSTOM
        } else {
            0
        };
        value.push(flags);
        if let Some(max_count) = metadata.max_count {
            value.extend_from_slice(&max_count.to_be_bytes());
        }
        if let Some(max_age) = metadata.max_age {
            value.extend_from_slice(&(max_age.as_millis() as u64).to_be_bytes());
        }
        if let Some(truncate_before) = metadata.truncate_before {
            value.extend_from_slice(&truncate_before.to_be_bytes());
        }
        if let Some(custom) = &metadata.custom {
            value.extend_from_slice(&(custom.len() as u32).to_be_bytes());
            value.extend_from_slice(custom.as_bytes());
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(name.as_bytes());
        hasher.update(&value);
        value.extend_from_slice(&hasher.finalize().to_be_bytes());
        value
    }

    /// Decodes a `streams` value, checking its crc (which covers the name too).
    pub fn decode(name: &str, value: &[u8]) -> Result<Self> {
        let bad = |reason: &str| corrupt(cf::STREAMS, name, reason);
        if value.len() < 4 {
            return Err(bad("value is shorter than its checksum"));
        }
        let (body, crc) = value.split_at(value.len() - 4);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(name.as_bytes());
        hasher.update(body);
        if hasher.finalize() != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(bad("crc32 mismatch"));
        }
        let mut reader = Reader {
            bytes: body,
            offset: 0,
            position: 0,
        };
        let mut take = |len: usize| reader.take(len).map_err(|_| bad("value is truncated"));
        let version = take(1)?;
        if body[version.start] != STREAM_VERSION {
            return Err(bad("unknown stream record version"));
        }
        let id = read_u64(&body[take(8)?]);
        let next_revision = read_u64(&body[take(8)?]);
        let deleted_before = read_u64(&body[take(8)?]);
        let tombstoned = match body[take(1)?.start] {
            0 => false,
            1 => true,
            _ => return Err(bad("the tombstone flag is neither 0 nor 1")),
        };
        let metadata_revision = read_u64(&body[take(8)?]).checked_sub(1);
        let flags = body[take(1)?.start];
        if flags & !(FLAG_MAX_COUNT | FLAG_MAX_AGE | FLAG_TRUNCATE_BEFORE | FLAG_CUSTOM) != 0 {
            return Err(bad("unknown metadata flags"));
        }
        let mut metadata = StreamMetadata::default();
        if flags & FLAG_MAX_COUNT != 0 {
            metadata.max_count = Some(read_u64(&body[take(8)?]));
        }
        if flags & FLAG_MAX_AGE != 0 {
            metadata.max_age = Some(Duration::from_millis(read_u64(&body[take(8)?])));
        }
        if flags & FLAG_TRUNCATE_BEFORE != 0 {
            metadata.truncate_before = Some(read_u64(&body[take(8)?]));
        }
        if flags & FLAG_CUSTOM != 0 {
            let len_range = take(4)?;
            let len = u32::from_be_bytes([
                body[len_range.start],
                body[len_range.start + 1],
                body[len_range.start + 2],
                body[len_range.start + 3],
            ]) as usize;
            let custom = take(len)?;
            metadata.custom = Some(
                String::from_utf8(body[custom].to_vec())
                    .map_err(|_| bad("custom metadata is not UTF-8"))?,
            );
        }
        // Strict, like `log` records: only what `encode` writes decodes.
        if reader.offset != body.len() {
            return Err(bad("trailing bytes after the metadata"));
        }
        Ok(Self {
            id,
            next_revision,
            deleted_before,
            tombstoned,
            metadata_revision,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_crc() {
        let event = EventData {
            id: Uuid::new_v4(),
            event_type: "Placed".into(),
            content_type: "application/json".into(),
            metadata: Bytes::from_static(b"{\"m\":1}"),
            data: Bytes::from_static(b"{\"d\":2}"),
            tags: Vec::new(),
        };
        let created = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let record = encode_record(42, "order-1", 7, created, &event);
        let decoded = decode_record(42, record.clone()).unwrap();
        assert_eq!(decoded.stream, "order-1");
        assert_eq!(decoded.revision, 7);
        assert_eq!(decoded.id, event.id);
        assert_eq!(decoded.created, created);
        assert_eq!(decoded.metadata, event.metadata);
        assert_eq!(decoded.data, event.data);
        let header = decode_header(42, &record).unwrap();
        assert_eq!(
            (header.stream, header.event_type, header.revision),
            ("order-1", "Placed", 7)
        );
        // The crc covers the position: a record under another key is corrupt.
        assert!(matches!(
            decode_record(43, record.clone()),
            Err(Error::Corrupt { .. })
        ));
        for index in [0, 5, 30, record.len() - 1] {
            let mut flipped = record.clone();
            flipped[index] ^= 0x40;
            let error = decode_record(42, flipped).unwrap_err();
            assert!(error.to_string().contains("at key 42"), "{error}");
        }
        assert!(decode_record(42, record[..record.len() - 3].to_vec()).is_err());
        assert_eq!(
            record[0], RECORD_VERSION,
            "an untagged event keeps record version 1"
        );
    }

    #[test]
    fn tagged_record_round_trip_and_damage() {
        let event = EventData::json("Registered", "{}").with_tags(["user:1", "tenant:é"]);
        let created = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let record = encode_record(5, "user-1", 0, created, &event);
        assert_eq!(record[0], RECORD_VERSION_TAGGED);
        let decoded = decode_record(5, record.clone()).unwrap();
        assert_eq!(
            decoded.tags,
            vec!["user:1".to_owned(), "tenant:é".to_owned()]
        );
        assert_eq!(decoded.data, event.data);
        let header = decode_header(5, &record).unwrap();
        assert_eq!(
            header.tags(&record).collect::<Vec<_>>(),
            ["user:1", "tenant:é"]
        );
        // The content hash covers the tags, so a retry with other tags differs.
        let untagged = EventData {
            tags: Vec::new(),
            ..event.clone()
        };
        assert_ne!(
            header.content_hash(&record),
            decode_header(5, &encode_record(5, "user-1", 0, created, &untagged))
                .unwrap()
                .content_hash(&encode_record(5, "user-1", 0, created, &untagged))
        );
        // Every byte of the tag region is covered by the crc.
        let tags_at = record.len() - 4 - "tenant:é".len();
        for index in [tags_at - 2, tags_at, record.len() - 5] {
            let mut flipped = record.clone();
            flipped[index] ^= 0x01;
            assert!(matches!(
                decode_record(5, flipped),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn stream_record_round_trip() {
        let record = StreamRecord {
            id: 9,
            next_revision: 12,
            deleted_before: 3,
            tombstoned: false,
            metadata_revision: Some(0),
            metadata: StreamMetadata {
                max_count: Some(5),
                max_age: Some(Duration::from_secs(60)),
                truncate_before: Some(2),
                custom: Some("{\"a\":1}".into()),
            },
        };
        let value = record.encode("s-1");
        assert_eq!(StreamRecord::decode("s-1", &value).unwrap(), record);
        assert!(StreamRecord::decode("s-2", &value).is_err());
        let plain = StreamRecord {
            id: 1,
            ..StreamRecord::default()
        };
        assert_eq!(
            StreamRecord::decode("x", &plain.encode("x")).unwrap(),
            plain
        );
    }

    #[test]
    fn index_keys_sort_numerically() {
        assert!(log_key(255) < log_key(256));
        assert!(stream_index_key(1, u64::MAX) < stream_index_key(2, 0));
        assert!(name_index_key("ab", 9) < name_index_key("ab", 10));
        assert!(!name_index_key("abc", 0).starts_with(&name_index_prefix("ab")));
    }
}
