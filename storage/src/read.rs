//! The read paths: a stream by revision, `$all` by position, a category or an
//! event type through their indexes. Reads run on the caller's thread against a
//! RocksDB snapshot and never wait for the committer.
//!
//! Every path applies the same visibility rule (`StreamRecord::is_visible`) and
//! never returns anything at or beyond the published head it took at its
//! start. A stream record may be newer than that head (`catalog.rs`,
//! invariant 3), so no path takes a bound on positions from a record: the
//! head bounds every one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use rocksdb::{DB, DBRawIteratorWithThreadMode, IteratorMode, ReadOptions, SnapshotWithThreadMode};

use crate::catalog::Fill;
use crate::codec::{self, RecordHeader, StreamRecord, cf};
use crate::error::{Error, Result};
use crate::model::{
    Direction, FilterMatcher, ReadFrom, ReadPage, ReadRequest, ReadSource, RecordedEvent,
    StreamInfo,
};
use crate::query::{Cursor, Query, View};
use crate::store::{Shared, Store};

/// Records examined per call at most, relative to the page size, so a sparse
/// filter returns (with `next` and `scanned_through`) instead of scanning forever.
const SCAN_FACTOR: usize = 16;
const MIN_SCAN: usize = 4096;
/// Record bytes examined per call at most (matching or not), relative to the
/// page's byte budget (`SCAN_FACTOR` times it, at least this): the same bound
/// for large records, so a filter that matches none of 4096 records of 4 MiB
/// does not read 16 GiB in one call. A page with no byte budget has no such
/// bound either.
const MIN_SCAN_BYTES: usize = 64 * 1024 * 1024;

impl RecordedEvent {
    /// Bytes this event counts against a read's byte budget
    /// ([`ReadRequest::max_bytes`]): its variable-length fields (stream name,
    /// type, content type, metadata, data, tags).
    pub fn size(&self) -> usize {
        self.stream.len()
            + self.event_type.len()
            + self.content_type.len()
            + self.metadata.len()
            + self.data.len()
            + self.tags.iter().map(String::len).sum::<usize>()
    }
}

/// What the store's reads did since it was opened ([`Store::read_stats`]):
/// how many calls and how much work, for tests and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReadStats {
    /// Calls of [`Store::read`] started.
    pub calls: u64,
    /// Calls of [`Store::read`] running now.
    pub in_flight: u64,
    /// Log records examined, returned or not.
    pub records_examined: u64,
    /// Bytes of those records.
    pub bytes_examined: u64,
    /// Calls by what they read, indexed by [`ReadKind::index`].
    pub calls_by_kind: [u64; ReadKind::COUNT],
    /// Events returned by those calls, indexed the same way.
    pub events_by_kind: [u64; ReadKind::COUNT],
}

/// What a read reads, for counting reads by kind (bounded: five values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadKind {
    /// One stream.
    Stream,
    /// `$all`.
    All,
    /// A category index (`$ce-...`).
    Category,
    /// An event-type index (`$et-...`).
    EventType,
    /// A DCB query (type and tag indexes).
    Query,
}

impl ReadKind {
    /// How many kinds there are.
    pub const COUNT: usize = 5;
    /// Every kind, in [`ReadKind::index`] order.
    pub const ALL: [ReadKind; ReadKind::COUNT] = [
        ReadKind::Stream,
        ReadKind::All,
        ReadKind::Category,
        ReadKind::EventType,
        ReadKind::Query,
    ];

    /// The kind of a read of `source`.
    pub fn of(source: &ReadSource) -> Self {
        match source {
            ReadSource::Stream(_) => ReadKind::Stream,
            ReadSource::All => ReadKind::All,
            ReadSource::Category(_) => ReadKind::Category,
            ReadSource::EventType(_) => ReadKind::EventType,
            ReadSource::Query(_) => ReadKind::Query,
        }
    }

    /// Its place in the per-kind arrays of [`ReadStats`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short lowercase name (`stream`, `all`, `category`, `event_type`,
    /// `query`).
    pub fn name(self) -> &'static str {
        match self {
            ReadKind::Stream => "stream",
            ReadKind::All => "all",
            ReadKind::Category => "category",
            ReadKind::EventType => "event_type",
            ReadKind::Query => "query",
        }
    }
}

/// The live counters behind [`ReadStats`], kept in the store's shared state.
#[derive(Debug, Default)]
pub(crate) struct ReadCounters {
    calls: AtomicU64,
    in_flight: AtomicU64,
    records_examined: AtomicU64,
    bytes_examined: AtomicU64,
    calls_by_kind: [AtomicU64; ReadKind::COUNT],
    events_by_kind: [AtomicU64; ReadKind::COUNT],
}

/// Counts one running read; ends it (and adds its work) when dropped, also
/// when the read fails.
struct ReadGuard<'a> {
    counters: &'a ReadCounters,
    records: u64,
    bytes: u64,
}

impl<'a> ReadGuard<'a> {
    fn start(counters: &'a ReadCounters) -> Self {
        counters.calls.fetch_add(1, Ordering::Relaxed);
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            counters,
            records: 0,
            bytes: 0,
        }
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        let counters = self.counters;
        counters
            .records_examined
            .fetch_add(self.records, Ordering::Relaxed);
        counters
            .bytes_examined
            .fetch_add(self.bytes, Ordering::Relaxed);
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One page's byte accounting: what it holds against `ReadRequest::max_bytes`
/// and what it examined against the scan bound.
struct Budget {
    /// Bytes of the events in the page ([`RecordedEvent::size`]).
    bytes: usize,
    max_bytes: usize,
    /// Record bytes examined, kept or not.
    examined: usize,
    max_examined: usize,
    /// Records examined.
    records: u64,
}

impl Budget {
    fn new(max_bytes: usize) -> Self {
        // At least one byte, so that a page always takes its first event.
        let max_bytes = max_bytes.max(1);
        Self {
            bytes: 0,
            max_bytes,
            examined: 0,
            max_examined: max_bytes.saturating_mul(SCAN_FACTOR).max(MIN_SCAN_BYTES),
            records: 0,
        }
    }

    /// The page holds its byte budget: it ends after the event that got there.
    fn full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// The call examined as much as one call may. Never true before the
    /// first record, so every call makes progress.
    fn scanned_enough(&self) -> bool {
        self.examined >= self.max_examined
    }

    /// Either bound says: take no further record into this page.
    fn exhausted(&self) -> bool {
        self.full() || self.scanned_enough()
    }
}

/// One page of [`Store::list_streams_page`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamListPage {
    /// The streams, in name order.
    pub streams: Vec<StreamInfo>,
    /// Whether more streams with the prefix follow the last one: continue
    /// with `after` set to its name.
    pub more: bool,
}

/// Bytes a stream counts against a listing's byte budget: its name and its
/// custom metadata (the variable-length parts of its info).
fn listed_size(info: &StreamInfo) -> usize {
    info.name.len() + info.metadata.custom.as_ref().map_or(0, String::len)
}

impl Store {
    /// Reads one page. See [`ReadRequest`] and [`ReadPage`]; continue with
    /// `ReadFrom::At(page.next)` until `next` is `None`.
    ///
    /// One call is bounded: at most `max_count` events (capped by the page
    /// limit) and `max_bytes` bytes (plus the event that reaches it), and it
    /// examines at most a fixed multiple of either before it returns with
    /// `next`. A filter beyond the filter limits is refused with
    /// `LimitExceeded`.
    pub fn read(&self, request: &ReadRequest) -> Result<ReadPage> {
        request.filter.validate()?;
        if let ReadSource::Query(query) = &request.source {
            query.validate()?;
        }
        let shared = self.shared();
        let mut guard = ReadGuard::start(&shared.reads);
        let max = request.max_count.min(shared.limits.max_read_page);
        let head = shared.live.head();
        let snapshot = shared.db.snapshot();
        let reader = Reader {
            shared,
            snapshot: &snapshot,
            head,
            now: SystemTime::now(),
            matcher: request.filter.matcher(),
        };
        let mut budget = Budget::new(request.max_bytes);
        let page = match &request.source {
            ReadSource::Stream(stream) => reader.stream(stream, request, max, &mut budget),
            ReadSource::All => reader.positions(None, request, max, &mut budget),
            ReadSource::Category(category) => reader.positions(
                Some((cf::CATEGORY_INDEX, codec::name_index_prefix(category))),
                request,
                max,
                &mut budget,
            ),
            ReadSource::EventType(event_type) => reader.positions(
                Some((cf::TYPE_INDEX, codec::name_index_prefix(event_type))),
                request,
                max,
                &mut budget,
            ),
            ReadSource::Query(query) => reader.query(query, request, max, &mut budget),
        };
        let page = page.map(|mut page| {
            page.head = head;
            page
        });
        guard.records = budget.records;
        guard.bytes = budget.examined as u64;
        let kind = ReadKind::of(&request.source).index();
        shared.reads.calls_by_kind[kind].fetch_add(1, Ordering::Relaxed);
        if let Ok(page) = &page {
            shared.reads.events_by_kind[kind]
                .fetch_add(page.events.len() as u64, Ordering::Relaxed);
        }
        page
    }

    /// What the store's reads did since it was opened.
    pub fn read_stats(&self) -> ReadStats {
        let counters = &self.shared().reads;
        ReadStats {
            calls: counters.calls.load(Ordering::Relaxed),
            in_flight: counters.in_flight.load(Ordering::Relaxed),
            records_examined: counters.records_examined.load(Ordering::Relaxed),
            bytes_examined: counters.bytes_examined.load(Ordering::Relaxed),
            calls_by_kind: std::array::from_fn(|kind| {
                counters.calls_by_kind[kind].load(Ordering::Relaxed)
            }),
            events_by_kind: std::array::from_fn(|kind| {
                counters.events_by_kind[kind].load(Ordering::Relaxed)
            }),
        }
    }

    /// Streams whose name starts with `prefix`, in name order, starting after
    /// `after` (exclusive) when given: at most `limit`, and none after the
    /// stream that brings the page to `max_bytes` (its name plus custom
    /// metadata; a page holds at least one stream whatever its size).
    /// `usize::MAX` sets no byte bound.
    pub fn list_streams_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<StreamListPage> {
        let shared = self.shared();
        let mut start = prefix.as_bytes().to_vec();
        if let Some(after) = after
            && after.as_bytes() >= start.as_slice()
        {
            start = after.as_bytes().to_vec();
            start.push(0);
        }
        let mut page = StreamListPage::default();
        let mut bytes = 0usize;
        // The column family itself, not the catalog's cache: a listing walks
        // names in order. It may show a group that is durable but not yet
        // published (`catalog.rs`, invariant 3).
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        for item in shared.db.iterator_cf(shared.cf(cf::STREAMS), mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            if page.streams.len() >= limit || bytes >= max_bytes.max(1) {
                page.more = true;
                break;
            }
            let name = String::from_utf8_lossy(&key).into_owned();
            let info = StreamRecord::decode(&name, &value)?.info(&name);
            bytes += listed_size(&info);
            page.streams.push(info);
        }
        Ok(page)
    }
}

struct Reader<'a> {
    shared: &'a Shared,
    snapshot: &'a SnapshotWithThreadMode<'a, DB>,
    /// Published head at the start of the read: the exclusive upper bound.
    head: u64,
    now: SystemTime,
    /// The request's filter, prepared once for the page.
    matcher: FilterMatcher,
}

impl Reader<'_> {
    fn iterator(&self, column_family: &str) -> DBRawIteratorWithThreadMode<'_, DB> {
        let mut options = ReadOptions::default();
        options.fill_cache(true);
        self.snapshot
            .raw_iterator_cf_opt(self.shared.cf(column_family), options)
    }

    fn stream(
        &self,
        stream: &str,
        request: &ReadRequest,
        max: usize,
        budget: &mut Budget,
    ) -> Result<ReadPage> {
        let record = self
            .shared
            .catalog
            .get(&self.shared.db, stream, Fill::Yes)?;
        let record = match record {
            None => {
                return Err(Error::StreamNotFound {
                    stream: stream.to_owned(),
                });
            }
            Some(record) if record.tombstoned => {
                return Err(Error::StreamTombstoned {
                    stream: stream.to_owned(),
                });
            }
            Some(record) if record.current().revision().is_none() => {
                return Err(Error::StreamNotFound {
                    stream: stream.to_owned(),
                });
            }
            Some(record) => record,
        };
        let first = record.first_visible_revision();
        let end = record.next_revision; // exclusive
        let mut page = ReadPage::default();
        if max == 0 || end == 0 {
            return Ok(page);
        }
        let (start, forwards) = match (request.direction, request.from) {
            (Direction::Forwards, ReadFrom::Start) => (first, true),
            (Direction::Forwards, ReadFrom::At(revision)) => (revision.max(first), true),
            (Direction::Forwards, ReadFrom::End) => return Ok(page),
            (Direction::Backwards, ReadFrom::End) => (end - 1, false),
            (Direction::Backwards, ReadFrom::At(revision)) => (revision.min(end - 1), false),
            (Direction::Backwards, ReadFrom::Start) => return Ok(page),
        };
        if start >= end || start < first {
            return Ok(page);
        }
        let mut iterator = self.iterator(cf::STREAM_INDEX);
        let seek_key = codec::stream_index_key(record.id, start);
        if forwards {
            iterator.seek(seek_key);
        } else {
            iterator.seek_for_prev(seek_key);
        }
        let mut revisions = Vec::with_capacity(max.min(1024));
        let mut positions = Vec::with_capacity(max.min(1024));
        let mut next = None;
        while iterator.valid() {
            let Some(key) = iterator.key() else { break };
            if key.len() != 16 || codec::read_u64(&key[..8]) != record.id {
                break;
            }
            let revision = codec::read_u64(&key[8..]);
            if revision >= end || revision < first {
                break;
            }
            let value = iterator.value().unwrap_or_default();
            if value.len() != 8 {
                return Err(Error::Corrupt {
                    column_family: cf::STREAM_INDEX,
                    key: format!("{stream}@{revision}"),
                    reason: "value is not an 8-byte position".into(),
                });
            }
            let position = codec::read_u64(value);
            if position >= self.head {
                // Written by a group not yet published: the record (and the
                // snapshot) may be ahead of the head this read took. A
                // stream's positions grow with its revisions, so forwards
                // nothing readable follows; backwards, older revisions do.
                if forwards {
                    break;
                }
                iterator.prev();
                continue;
            }
            if positions.len() == max {
                next = Some(revision);
                break;
            }
            revisions.push(revision);
            positions.push(position);
            if forwards {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        let keep = |header: &RecordHeader<'_>| {
            Ok(record.is_visible(header.revision, header.created, self.now)
                && self.matcher.matches(header.stream, header.event_type))
        };
        let consumed = self.fetch(&positions, forwards, budget, keep, &mut page.events)?;
        page.next = revisions.get(consumed).copied().or(next);
        Ok(page)
    }

    /// Loads the records at `positions`, in the given order, and appends to
    /// `events` those `keep` accepts, until the page's byte budget is full or
    /// the call examined what it may. Returns how many positions it consumed:
    /// the page continues at the first one not consumed. A position whose
    /// record is gone (scavenged after the index was read) is consumed and
    /// skipped.
    ///
    /// One log iterator serves the whole list: it seeks only when the next
    /// position is not the entry it already stands on, so runs of adjacent
    /// positions (a stream written in batches) cost a step each, not a lookup.
    /// Positions are monotonic in the direction of the read (index order).
    /// Records `keep` refuses are checked and parsed but never copied; an
    /// error of `keep` ends the page with that error.
    fn fetch(
        &self,
        positions: &[u64],
        forwards: bool,
        budget: &mut Budget,
        mut keep: impl FnMut(&RecordHeader<'_>) -> Result<bool>,
        events: &mut Vec<RecordedEvent>,
    ) -> Result<usize> {
        self.fetch_with(
            positions,
            forwards,
            budget,
            |header, _| keep(header),
            events,
        )
    }

    /// [`Reader::fetch`] with a `keep` that also sees the record's bytes
    /// (for the parts of a record the header borrows, such as its tags).
    fn fetch_with(
        &self,
        positions: &[u64],
        forwards: bool,
        budget: &mut Budget,
        mut keep: impl FnMut(&RecordHeader<'_>, &[u8]) -> Result<bool>,
        events: &mut Vec<RecordedEvent>,
    ) -> Result<usize> {
        let Some(&first) = positions.first() else {
            return Ok(0);
        };
        let mut iterator = self.iterator(cf::LOG);
        iterator.seek(codec::log_key(first));
        let mut consumed = 0;
        for &position in positions {
            if budget.exhausted() {
                break;
            }
            consumed += 1;
            let key = codec::log_key(position);
            if iterator.key() != Some(&key[..]) {
                iterator.seek(key);
                if iterator.key() != Some(&key[..]) {
                    iterator.status()?;
                    continue; // scavenged meanwhile
                }
            }
            let value = iterator.value().unwrap_or_default();
            budget.examined += value.len();
            budget.records += 1;
            let header = codec::decode_header(position, value)?;
            if keep(&header, value)? {
                let event = header.to_event(position, value);
                budget.bytes += event.size();
                events.push(event);
            }
            if forwards {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        Ok(consumed)
    }

    /// Where a position-ordered page starts (inclusive) and the last
    /// position it may reach (`head - 1`); `None` when the page is empty
    /// whatever the source holds (no room, an empty store, forwards from the
    /// end, backwards from the start, or a start beyond the head).
    fn position_start(&self, request: &ReadRequest, max: usize) -> Option<(u64, u64)> {
        if max == 0 || self.head == 0 {
            return None;
        }
        let last = self.head - 1;
        let start = match (request.direction, request.from) {
            (Direction::Forwards, ReadFrom::Start) => 0,
            (Direction::Forwards, ReadFrom::At(position)) => position,
            (Direction::Forwards, ReadFrom::End) | (Direction::Backwards, ReadFrom::Start) => {
                return None;
            }
            (Direction::Backwards, ReadFrom::End) => last,
            (Direction::Backwards, ReadFrom::At(position)) => position.min(last),
        };
        (start <= last).then_some((start, last))
    }

    /// The visibility rule and the request's filter, for one page.
    fn visibility(&self) -> Visibility<'_> {
        Visibility {
            shared: self.shared,
            seen: HashMap::new(),
            now: self.now,
            matcher: &self.matcher,
        }
    }

    /// `$all` (no index) or a category / event type (an index of positions).
    fn positions(
        &self,
        index: Option<(&'static str, Vec<u8>)>,
        request: &ReadRequest,
        max: usize,
        budget: &mut Budget,
    ) -> Result<ReadPage> {
        let mut page = ReadPage::default();
        let Some((start, last)) = self.position_start(request, max) else {
            return Ok(page);
        };
        let forwards = request.direction == Direction::Forwards;
        let scan_limit = max.saturating_mul(SCAN_FACTOR).max(MIN_SCAN);
        let column_family = index.as_ref().map_or(cf::LOG, |(name, _)| *name);
        let prefix = index.as_ref().map(|(_, prefix)| prefix.as_slice());
        let key_of = |position: u64| match prefix {
            Some(prefix) => {
                let mut key = prefix.to_vec();
                key.extend_from_slice(&position.to_be_bytes());
                key
            }
            None => codec::log_key(position).to_vec(),
        };
        let mut iterator = self.iterator(column_family);
        if forwards {
            iterator.seek(key_of(start));
        } else {
            iterator.seek_for_prev(key_of(start));
        }
        let mut scanned = 0usize;
        let mut pending: Vec<u64> = Vec::new();
        let mut visible = self.visibility();
        while iterator.valid() && page.events.len() < max && !budget.full() {
            let Some(key) = iterator.key() else { break };
            let position = match prefix {
                Some(prefix) => {
                    if key.len() != prefix.len() + 8 || !key.starts_with(prefix) {
                        break;
                    }
                    codec::read_u64(&key[prefix.len()..])
                }
                None => codec::read_u64(key),
            };
            if position > last {
                break;
            }
            if scanned == scan_limit || budget.scanned_enough() {
                page.next = Some(position);
                break;
            }
            scanned += 1;
            match prefix {
                None => {
                    let value = iterator.value().unwrap_or_default();
                    budget.examined += value.len();
                    budget.records += 1;
                    page.scanned_through = Some(position);
                    // One crc and one parse per record: the header decides
                    // visibility, then the same parse builds the event.
                    let header = codec::decode_header(position, value)?;
                    if visible.check(
                        header.stream,
                        header.revision,
                        header.created,
                        header.event_type,
                    )? {
                        let event = header.to_event(position, value);
                        budget.bytes += event.size();
                        page.events.push(event);
                    }
                }
                Some(_) => {
                    pending.push(position);
                    if pending.len() >= max - page.events.len()
                        && let Some(rest) = self.take_visible(
                            None,
                            &mut pending,
                            forwards,
                            budget,
                            &mut visible,
                            &mut page,
                        )?
                    {
                        page.next = Some(rest);
                        break;
                    }
                }
            }
            if forwards {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        if let Some(rest) = self.take_visible(
            None,
            &mut pending,
            forwards,
            budget,
            &mut visible,
            &mut page,
        )? {
            // Stopped inside the pending positions: they come before anything
            // the loop stopped at.
            page.next = Some(rest);
        }
        let full = page.events.len() == max || budget.full();
        if page.next.is_none() && full && iterator.valid() {
            // The page is full: the next page starts at the following entry, if any.
            if let Some(key) = iterator.key() {
                let position = match prefix {
                    Some(prefix) if key.starts_with(prefix) && key.len() == prefix.len() + 8 => {
                        Some(codec::read_u64(&key[prefix.len()..]))
                    }
                    Some(_) => None,
                    None => Some(codec::read_u64(key)),
                };
                page.next = position.filter(|position| *position <= last);
            }
        }
        Ok(page)
    }

    /// A DCB query: the matches of the query's indexes (see [`Cursor`]),
    /// each record checked against the query once more, the visibility
    /// rule and the request's filter. Paged like the index reads: `next` is
    /// the first candidate not taken, `scanned_through` the last examined.
    fn query(
        &self,
        query: &Query,
        request: &ReadRequest,
        max: usize,
        budget: &mut Budget,
    ) -> Result<ReadPage> {
        let mut page = ReadPage::default();
        let Some((start, last)) = self.position_start(request, max) else {
            return Ok(page);
        };
        let forwards = request.direction == Direction::Forwards;
        let view = View::Snapshot(self.snapshot);
        let mut cursor = Cursor::new(
            &self.shared.db,
            &view,
            query,
            start,
            self.head,
            request.direction,
        )?;
        let scan_limit = max.saturating_mul(SCAN_FACTOR).max(MIN_SCAN);
        let mut visible = self.visibility();
        let mut scanned = 0usize;
        let mut pending: Vec<u64> = Vec::new();
        while page.events.len() < max && !budget.full() {
            let Some(position) = cursor.peek() else { break };
            if scanned == scan_limit || budget.scanned_enough() {
                break;
            }
            cursor.next_position()?;
            scanned += 1;
            pending.push(position);
            if pending.len() >= max - page.events.len()
                && let Some(rest) = self.take_visible(
                    Some(query),
                    &mut pending,
                    forwards,
                    budget,
                    &mut visible,
                    &mut page,
                )?
            {
                page.next = Some(rest);
                return Ok(page);
            }
        }
        if let Some(rest) = self.take_visible(
            Some(query),
            &mut pending,
            forwards,
            budget,
            &mut visible,
            &mut page,
        )? {
            page.next = Some(rest);
            return Ok(page);
        }
        page.next = cursor.peek();
        if page.next.is_none() && forwards {
            // Every position through the head was examined or matched nothing.
            page.scanned_through = Some(last);
        }
        Ok(page)
    }

    /// Fetches the pending index positions into the page (see `fetch`) and
    /// clears them; with a `query`, only records matching it (checked on the
    /// record: an item's types and all its tags) are kept. Returns the first
    /// position not consumed when the page's budget stopped it early;
    /// `scanned_through` then ends before it.
    fn take_visible(
        &self,
        query: Option<&Query>,
        pending: &mut Vec<u64>,
        forwards: bool,
        budget: &mut Budget,
        visible: &mut Visibility<'_>,
        page: &mut ReadPage,
    ) -> Result<Option<u64>> {
        let keep = |header: &RecordHeader<'_>, record: &[u8]| {
            if query.is_some_and(|query| !query.matches_record(header, record)) {
                return Ok(false);
            }
            visible.check(
                header.stream,
                header.revision,
                header.created,
                header.event_type,
            )
        };
        let consumed = self.fetch_with(pending, forwards, budget, keep, &mut page.events)?;
        if consumed > 0 {
            page.scanned_through = Some(pending[consumed - 1]);
        }
        let rest = pending.get(consumed).copied();
        pending.clear();
        Ok(rest)
    }
}

/// The visibility rule plus the request's filter, for one page. Stream records
/// are copied out of the catalog once per stream and page, so the catalog's
/// lock is held only for single lookups and never delays the committer for a
/// whole page. A page walks positions, not streams, so a record it has to read
/// from the database is not put into the catalog's cache (`Fill::No`): one
/// reader catching up on `$all` must not evict the committer's working set.
/// The records may be newer than the page's head (`catalog.rs`, invariant 3);
/// they only decide visibility of events below it.
struct Visibility<'a> {
    shared: &'a Shared,
    seen: HashMap<String, Option<StreamRecord>>,
    now: SystemTime,
    matcher: &'a FilterMatcher,
}

impl Visibility<'_> {
    fn check(
        &mut self,
        stream: &str,
        revision: u64,
        created: SystemTime,
        event_type: &str,
    ) -> Result<bool> {
        if !self.matcher.matches(stream, event_type) {
            return Ok(false);
        }
        let visible = |record: Option<&StreamRecord>| {
            // An event below the published head was written in the same batch
            // as its stream's record, so the record exists; treat a missing one
            // as hidden rather than guess.
            record.is_some_and(|record| record.is_visible(revision, created, self.now))
        };
        // One hash lookup per event; the name is copied and the catalog asked
        // only for a stream's first event in the page.
        if let Some(record) = self.seen.get(stream) {
            return Ok(visible(record.as_ref()));
        }
        let record = self.shared.catalog.get(&self.shared.db, stream, Fill::No)?;
        let answer = visible(record.as_ref());
        self.seen.insert(stream.to_owned(), record);
        Ok(answer)
    }
}
