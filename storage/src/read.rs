//! The read paths: a stream by revision, `$all` by position, a category or an
//! event type through their indexes. Reads run on the caller's thread against a
//! RocksDB snapshot and never wait for the committer.
//!
//! Every path applies the same visibility rule (`StreamRecord::is_visible`) and
//! never returns anything at or beyond the published head, so a read never shows
//! an event whose stream the catalog does not know yet.

use std::collections::HashMap;
use std::time::SystemTime;

use rocksdb::{DB, DBRawIteratorWithThreadMode, ReadOptions, SnapshotWithThreadMode};

use crate::catalog::Catalog;
use crate::codec::{self, StreamRecord, cf};
use crate::error::{Error, Result};
use crate::model::{
    Direction, ReadFilter, ReadFrom, ReadPage, ReadRequest, ReadSource, RecordedEvent,
};
use crate::store::{Shared, Store};

/// Records examined per call at most, relative to the page size, so a sparse
/// filter returns (with `next` and `scanned_through`) instead of scanning forever.
const SCAN_FACTOR: usize = 16;
const MIN_SCAN: usize = 4096;

impl Store {
    /// Reads one page. See [`ReadRequest`] and [`ReadPage`]; continue with
    /// `ReadFrom::At(page.next)` until `next` is `None`.
    pub fn read(&self, request: &ReadRequest) -> Result<ReadPage> {
        let shared = self.shared();
        let max = request.max_count.min(shared.limits.max_read_page);
        let head = shared.live.head();
        let snapshot = shared.db.snapshot();
        let reader = Reader {
            shared,
            snapshot: &snapshot,
            head,
            now: SystemTime::now(),
        };
        match &request.source {
            ReadSource::Stream(stream) => reader.stream(stream, request, max),
            ReadSource::All => reader.positions(None, request, max),
            ReadSource::Category(category) => reader.positions(
                Some((cf::CATEGORY_INDEX, codec::name_index_prefix(category))),
                request,
                max,
            ),
            ReadSource::EventType(event_type) => reader.positions(
                Some((cf::TYPE_INDEX, codec::name_index_prefix(event_type))),
                request,
                max,
            ),
        }
    }
}

struct Reader<'a> {
    shared: &'a Shared,
    snapshot: &'a SnapshotWithThreadMode<'a, DB>,
    /// Published head at the start of the read: the exclusive upper bound.
    head: u64,
    now: SystemTime,
}

impl Reader<'_> {
    fn iterator(&self, column_family: &str) -> DBRawIteratorWithThreadMode<'_, DB> {
        let mut options = ReadOptions::default();
        options.fill_cache(true);
        self.snapshot
            .raw_iterator_cf_opt(self.shared.cf(column_family), options)
    }

    fn stream(&self, stream: &str, request: &ReadRequest, max: usize) -> Result<ReadPage> {
        let record = self.shared.catalog.get(stream);
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
            if positions.len() == max {
                next = Some(revision);
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
            positions.push(codec::read_u64(value));
            if forwards {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        for event in self.fetch(&positions, forwards)? {
            if record.is_visible(event.revision, event.created, self.now)
                && request.filter.matches(&event.stream, &event.event_type)
            {
                page.events.push(event);
            }
        }
        page.next = next;
        Ok(page)
    }

    /// Loads and decodes the records at `positions`, in the given order. A position
    /// whose record is gone (scavenged after the index was read) is skipped.
    ///
    /// One log iterator serves the whole list: it seeks only when the next
    /// position is not the entry it already stands on, so runs of adjacent
    /// positions (a stream written in batches) cost a step each, not a lookup.
    /// Positions are monotonic in the direction of the read (index order).
    fn fetch(&self, positions: &[u64], forwards: bool) -> Result<Vec<RecordedEvent>> {
        let mut events = Vec::with_capacity(positions.len());
        let Some(&first) = positions.first() else {
            return Ok(events);
        };
        let mut iterator = self.iterator(cf::LOG);
        iterator.seek(codec::log_key(first));
        for &position in positions {
            let key = codec::log_key(position);
            if iterator.key() != Some(&key[..]) {
                iterator.seek(key);
                if iterator.key() != Some(&key[..]) {
                    iterator.status()?;
                    continue; // scavenged meanwhile
                }
            }
            let value = iterator.value().unwrap_or_default();
            let header = codec::decode_header(position, value)?;
            events.push(header.to_event(position, value));
            if forwards {
                iterator.next();
            } else {
                iterator.prev();
            }
        }
        iterator.status()?;
        Ok(events)
    }

    /// `$all` (no index) or a category / event type (an index of positions).
    fn positions(
        &self,
        index: Option<(&'static str, Vec<u8>)>,
        request: &ReadRequest,
        max: usize,
    ) -> Result<ReadPage> {
        let mut page = ReadPage::default();
        if max == 0 || self.head == 0 {
            return Ok(page);
        }
        let last = self.head - 1;
        let forwards = request.direction == Direction::Forwards;
        let start = match (request.direction, request.from) {
            (Direction::Forwards, ReadFrom::Start) => 0,
            (Direction::Forwards, ReadFrom::At(position)) => position,
            (Direction::Forwards, ReadFrom::End) => return Ok(page),
            (Direction::Backwards, ReadFrom::End) => last,
            (Direction::Backwards, ReadFrom::At(position)) => position.min(last),
            (Direction::Backwards, ReadFrom::Start) => return Ok(page),
        };
        if start > last {
            return Ok(page);
        }
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
        let mut visible = Visibility {
            catalog: &self.shared.catalog,
            seen: HashMap::new(),
            now: self.now,
            filter: &request.filter,
        };
        while iterator.valid() && page.events.len() < max {
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
            if scanned == scan_limit {
                page.next = Some(position);
                break;
            }
            scanned += 1;
            page.scanned_through = Some(position);
            match prefix {
                None => {
                    let value = iterator.value().unwrap_or_default();
                    // One crc and one parse per record: the header decides
                    // visibility, then the same parse builds the event.
                    let header = codec::decode_header(position, value)?;
                    if visible.check(
                        header.stream,
                        header.revision,
                        header.created,
                        header.event_type,
                    ) {
                        page.events.push(header.to_event(position, value));
                    }
                }
                Some(_) => {
                    pending.push(position);
                    if pending.len() >= max - page.events.len() {
                        self.take_visible(&mut pending, forwards, &mut visible, &mut page)?;
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
        self.take_visible(&mut pending, forwards, &mut visible, &mut page)?;
        if page.next.is_none() && page.events.len() == max && iterator.valid() {
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

    fn take_visible(
        &self,
        pending: &mut Vec<u64>,
        forwards: bool,
        visible: &mut Visibility<'_>,
        page: &mut ReadPage,
    ) -> Result<()> {
        for event in self.fetch(pending, forwards)? {
            if visible.check(
                &event.stream,
                event.revision,
                event.created,
                &event.event_type,
            ) {
                page.events.push(event);
            }
        }
        pending.clear();
        Ok(())
    }
}

/// The visibility rule plus the request's filter, for one page. Stream records
/// are copied out of the catalog once per stream and page, so the catalog lock is
/// held only for single lookups and never delays the committer for a whole page.
struct Visibility<'a> {
    catalog: &'a Catalog,
    seen: HashMap<String, Option<StreamRecord>>,
    now: SystemTime,
    filter: &'a ReadFilter,
}

impl Visibility<'_> {
    fn check(
        &mut self,
        stream: &str,
        revision: u64,
        created: SystemTime,
        event_type: &str,
    ) -> bool {
        if !self.filter.matches(stream, event_type) {
            return false;
        }
        let visible = |record: Option<&StreamRecord>| {
            // A stream below the published head is always in the catalog; treat a
            // missing one as hidden rather than guess.
            record.is_some_and(|record| record.is_visible(revision, created, self.now))
        };
        // One hash lookup per event; the name is copied and the catalog's lock
        // taken only for a stream's first event in the page.
        if let Some(record) = self.seen.get(stream) {
            return visible(record.as_ref());
        }
        let record = self.catalog.get(stream);
        let answer = visible(record.as_ref());
        self.seen.insert(stream.to_owned(), record);
        answer
    }
}
