//! Property test: the store against a simple in-memory model of the log.
//!
//! Random sequences of appends (single and multi-stream, with every kind of
//! expectation), idempotent retries, soft deletes, tombstones and metadata
//! changes run against a real store and a plain `Vec` of events. Every outcome
//! is compared as it happens; at the end every read path is compared with the
//! model, then again after a scavenge and after reopening the directory.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cairn_storage::{
    AppendResult, CurrentRevision, Direction, Durability, Error, EventData, ExpectedRevision,
    ReadFilter, ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store, StoreOptions,
    StreamAppend, StreamInfo, StreamMetadata, StreamState,
};
use cairn_testkit::{numbered, try_read_all};
use proptest::prelude::*;
use proptest::sample::{Index, subsequence};
use uuid::Uuid;

/// Storage bug (reported, pinned by `retry_of_no_stream_append_survives_a_later_soft_delete`
/// below): `find_replay` checks a `NoStream` retry against the stream's *current*
/// soft-delete point, so once the stream was soft-deleted again the retry fails with
/// `WrongExpectedRevision { expected: NoStream, current: NoStream }` instead of
/// returning the original result. While true, the model expects that behaviour so
/// the property test keeps looking for other bugs; set to false once it is fixed.
const TOLERATE_NO_STREAM_RETRY_BUG: bool = false;

const STREAMS: [&str; 4] = ["a-1", "a-2", "b-1", "c"];
const TYPES: [&str; 3] = ["Created", "Updated", "Closed"];
/// Large enough for any read of a test case in one page.
const ALL: usize = 10_000;

// ---------------------------------------------------------------------------
// The model.

/// What the model knows about one stream (it exists once written, deleted,
/// tombstoned or given metadata).
#[derive(Debug, Clone, Default)]
struct StreamModel {
    next_revision: u64,
    deleted_before: u64,
    tombstoned: bool,
    metadata_revision: Option<u64>,
    metadata: StreamMetadata,
}

impl StreamModel {
    fn current(&self) -> CurrentRevision {
        if self.tombstoned || self.deleted_before >= self.next_revision {
            CurrentRevision::NoStream
        } else {
            CurrentRevision::Revision(self.next_revision - 1)
        }
    }

    fn state(&self) -> StreamState {
        if self.tombstoned {
            StreamState::Tombstoned
        } else if self.next_revision > 0 && self.deleted_before >= self.next_revision {
            StreamState::SoftDeleted
        } else {
            StreamState::Live
        }
    }

    fn first_visible(&self) -> u64 {
        let by_count = self
            .metadata
            .max_count
            .map_or(0, |count| self.next_revision.saturating_sub(count));
        self.deleted_before
            .max(self.metadata.truncate_before.unwrap_or(0))
            .max(by_count)
    }

    fn visible(&self, revision: u64) -> bool {
        !self.tombstoned && revision >= self.first_visible()
    }

    fn info(&self, name: &str) -> StreamInfo {
        StreamInfo {
            name: name.to_owned(),
            state: self.state(),
            last_revision: self.next_revision.checked_sub(1),
            first_visible_revision: self.first_visible(),
            metadata: self.metadata.clone(),
            metadata_revision: self.metadata_revision,
        }
    }
}

/// Where an event id was written, by which request, with which expectation
/// and content.
#[derive(Debug, Clone)]
struct IdEntry {
    stream: String,
    revision: u64,
    position: u64,
    expected: ExpectedRevision,
    /// The position of the writing request's first event.
    request_first: u64,
    /// The event's index among the request's events (all parts, in order).
    index: usize,
    /// The request's events.
    count: usize,
    /// What an exact retry must resend.
    event: EventData,
}

#[derive(Debug, Clone)]
struct ModelEvent {
    event: RecordedEvent,
    /// False once a scavenge removed it.
    present: bool,
}

#[derive(Debug, Default)]
struct Model {
    /// Every event ever appended; the index is the position.
    events: Vec<ModelEvent>,
    streams: BTreeMap<String, StreamModel>,
    ids: HashMap<Uuid, IdEntry>,
    removed: u64,
}

fn holds(expected: ExpectedRevision, current: CurrentRevision) -> bool {
    match (expected, current) {
        (ExpectedRevision::Any, _) => true,
        (ExpectedRevision::NoStream, CurrentRevision::NoStream) => true,
        (ExpectedRevision::StreamExists, CurrentRevision::Revision(_)) => true,
        (ExpectedRevision::Exact(expected), CurrentRevision::Revision(actual)) => {
            expected == actual
        }
        _ => false,
    }
}

fn category(stream: &str) -> Option<&str> {
    stream
        .split_once('-')
        .map(|(category, _)| category)
        .filter(|category| !category.is_empty())
}

impl Model {
    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    fn current(&self, stream: &str) -> CurrentRevision {
        self.streams
            .get(stream)
            .map_or(CurrentRevision::NoStream, StreamModel::current)
    }

    fn is_visible(&self, event: &ModelEvent) -> bool {
        event.present && self.streams[&event.event.stream].visible(event.event.revision)
    }

    fn hidden_present(&self) -> u64 {
        self.events
            .iter()
            .filter(|event| event.present && !self.is_visible(event))
            .count() as u64
    }

    /// Whether the request retries one earlier append request exactly: every
    /// id written by it, all of its events and no others, in the same streams
    /// and order, with the same content (FORMAT.md, "Idempotent retries").
    fn exact_retry(&self, parts: &[StreamAppend]) -> bool {
        let events: Vec<(&StreamAppend, &EventData)> = parts
            .iter()
            .flat_map(|part| part.events.iter().map(move |event| (part, event)))
            .collect();
        let Some(first) = events
            .first()
            .and_then(|(_, event)| self.ids.get(&event.id))
        else {
            return false;
        };
        events.iter().enumerate().all(|(index, (part, event))| {
            self.ids.get(&event.id).is_some_and(|entry| {
                entry.request_first == first.request_first
                    && entry.index == index
                    && entry.count == events.len()
                    && entry.stream == part.stream
                    && entry.event == **event
            })
        })
    }

    /// Whether `part` retries an earlier append: `Ok(Some)` with the original
    /// result, `Ok(None)` when none of its ids are known.
    ///
    /// A retry with the expectation of the original append is always a replay
    /// (DESIGN §2). With another expectation the store accepts the replay when that
    /// expectation would have held for the original append (`find_replay`).
    fn replay(
        &self,
        part: &StreamAppend,
        exact: bool,
        current: CurrentRevision,
    ) -> Result<Option<AppendResult>, Error> {
        let entries: Vec<Option<&IdEntry>> = part
            .events
            .iter()
            .map(|event| self.ids.get(&event.id))
            .collect();
        if entries.iter().all(Option::is_none) {
            return Ok(None);
        }
        let (Some(first), Some(Some(last)), true) = (entries[0], entries.last(), exact) else {
            // Not an exact retry: the first known id is reported.
            let known = entries
                .iter()
                .enumerate()
                .find_map(|(index, entry)| entry.map(|entry| (index, entry)));
            return match known {
                Some((index, entry)) => Err(Error::DuplicateEventId {
                    event_id: part.events[index].id,
                    stream: entry.stream.clone(),
                    revision: entry.revision,
                }),
                None => Ok(None),
            };
        };
        let record = &self.streams[&part.stream];
        let would_have_held = match part.expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => {
                first.revision == 0 || first.revision == record.deleted_before
            }
            ExpectedRevision::StreamExists => first.revision > 0,
            ExpectedRevision::Exact(expected) => expected + 1 == first.revision,
        };
        let known_bug = TOLERATE_NO_STREAM_RETRY_BUG
            && part.expected == ExpectedRevision::NoStream
            && first.expected == ExpectedRevision::NoStream;
        if (part.expected != first.expected || known_bug) && !would_have_held {
            return Err(Error::WrongExpectedRevision {
                stream: part.stream.clone(),
                expected: part.expected,
                current,
            });
        }
        Ok(Some(AppendResult {
            current: CurrentRevision::Revision(last.revision),
            positions: Some((first.position, last.position)),
            idempotent_replay: true,
        }))
    }

    fn append(&mut self, parts: &[StreamAppend]) -> Result<Vec<AppendResult>, Error> {
        let exact = self.exact_retry(parts);
        let mut replays = Vec::new();
        for part in parts {
            let record = self.streams.get(&part.stream);
            if record.is_some_and(|record| record.tombstoned) {
                return Err(Error::StreamTombstoned {
                    stream: part.stream.clone(),
                });
            }
            let current = self.current(&part.stream);
            let replay = self.replay(part, exact, current)?;
            if replay.is_none() && !holds(part.expected, current) {
                return Err(Error::WrongExpectedRevision {
                    stream: part.stream.clone(),
                    expected: part.expected,
                    current,
                });
            }
            replays.push(replay);
        }
        let request_first = self.events.len() as u64;
        let count = parts.iter().map(|part| part.events.len()).sum();
        let mut index = 0;
        let mut results = Vec::new();
        for (part, replay) in parts.iter().zip(replays) {
            if let Some(replay) = replay {
                results.push(replay);
                continue;
            }
            if part.events.is_empty() {
                let current = self.current(&part.stream);
                results.push(AppendResult {
                    current,
                    positions: None,
                    idempotent_replay: false,
                });
                continue;
            }
            let record = self.streams.entry(part.stream.clone()).or_default();
            let first = self.events.len() as u64;
            for event in &part.events {
                let position = self.events.len() as u64;
                let revision = record.next_revision;
                self.events.push(ModelEvent {
                    event: RecordedEvent {
                        position,
                        stream: part.stream.clone(),
                        revision,
                        id: event.id,
                        event_type: event.event_type.clone(),
                        content_type: event.content_type.clone(),
                        // Filled in from the store's live ring after the commit.
                        created: UNIX_EPOCH,
                        metadata: event.metadata.clone(),
                        data: event.data.clone(),
                        tags: event.tags.clone(),
                    },
                    present: true,
                });
                self.ids.insert(
                    event.id,
                    IdEntry {
                        stream: part.stream.clone(),
                        revision,
                        position,
                        expected: part.expected,
                        request_first,
                        index,
                        count,
                        event: event.clone(),
                    },
                );
                index += 1;
                record.next_revision += 1;
            }
            results.push(AppendResult {
                current: CurrentRevision::Revision(record.next_revision - 1),
                positions: Some((first, self.events.len() as u64 - 1)),
                idempotent_replay: false,
            });
        }
        Ok(results)
    }

    fn delete(
        &mut self,
        stream: &str,
        expected: ExpectedRevision,
        tombstone: bool,
    ) -> Result<CurrentRevision, Error> {
        if self
            .streams
            .get(stream)
            .is_some_and(|record| record.tombstoned)
        {
            return Err(Error::StreamTombstoned {
                stream: stream.to_owned(),
            });
        }
        let current = self.current(stream);
        if !holds(expected, current) {
            return Err(Error::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected,
                current,
            });
        }
        if !tombstone && current == CurrentRevision::NoStream {
            return Err(Error::StreamNotFound {
                stream: stream.to_owned(),
            });
        }
        let record = self.streams.entry(stream.to_owned()).or_default();
        if tombstone {
            record.tombstoned = true;
        } else {
            record.deleted_before = record.next_revision;
        }
        Ok(current)
    }

    fn set_metadata(
        &mut self,
        stream: &str,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<u64, Error> {
        if self
            .streams
            .get(stream)
            .is_some_and(|record| record.tombstoned)
        {
            return Err(Error::StreamTombstoned {
                stream: stream.to_owned(),
            });
        }
        let current = self
            .streams
            .get(stream)
            .and_then(|record| record.metadata_revision)
            .map_or(CurrentRevision::NoStream, CurrentRevision::Revision);
        if !holds(expected, current) {
            return Err(Error::WrongExpectedRevision {
                stream: format!("$$metadata of {stream}"),
                expected,
                current,
            });
        }
        let record = self.streams.entry(stream.to_owned()).or_default();
        let revision = record.metadata_revision.map_or(0, |revision| revision + 1);
        record.metadata_revision = Some(revision);
        record.metadata = metadata;
        Ok(revision)
    }

    /// What a scavenge does: hidden events and their ids are gone for good.
    fn scavenge(&mut self) {
        let hidden: Vec<usize> = (0..self.events.len())
            .filter(|index| self.events[*index].present && !self.is_visible(&self.events[*index]))
            .collect();
        for index in hidden {
            let event = &mut self.events[index];
            event.present = false;
            self.ids.remove(&event.event.id);
            self.removed += 1;
        }
    }

    /// The visible events of a source, oldest first, or the error reading it gives.
    fn read(&self, source: &ReadSource) -> Result<Vec<RecordedEvent>, Error> {
        let visible = self
            .events
            .iter()
            .filter(|event| self.is_visible(event))
            .map(|event| &event.event);
        let events = match source {
            ReadSource::Stream(stream) => {
                match self.streams.get(stream) {
                    None => {
                        return Err(Error::StreamNotFound {
                            stream: stream.clone(),
                        });
                    }
                    Some(record) if record.tombstoned => {
                        return Err(Error::StreamTombstoned {
                            stream: stream.clone(),
                        });
                    }
                    Some(record) if record.current() == CurrentRevision::NoStream => {
                        return Err(Error::StreamNotFound {
                            stream: stream.clone(),
                        });
                    }
                    Some(_) => {}
                }
                visible
                    .filter(|event| &event.stream == stream)
                    .cloned()
                    .collect()
            }
            ReadSource::All => visible.cloned().collect(),
            ReadSource::Category(name) => visible
                .filter(|event| category(&event.stream) == Some(name.as_str()))
                .cloned()
                .collect(),
            ReadSource::EventType(name) => visible
                .filter(|event| &event.event_type == name)
                .cloned()
                .collect(),
            ReadSource::Query(query) => visible
                .filter(|event| {
                    query.matches(&event.event_type, event.tags.iter().map(String::as_str))
                })
                .cloned()
                .collect(),
        };
        Ok(events)
    }
}

// ---------------------------------------------------------------------------
// Operations.

/// An expectation before it is resolved against the stream's state.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    /// `Exact(last + delta)` where `last` is the last revision ever written (0 if
    /// none): hits and misses both happen.
    Near(i8),
}

#[derive(Debug, Clone, Copy)]
struct EventSpec {
    type_index: usize,
    binary: bool,
    with_metadata: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: usize,
        expect: Expect,
        events: Vec<EventSpec>,
    },
    Multi {
        parts: Vec<(usize, Expect, Vec<EventSpec>)>,
    },
    /// Resends an earlier append request exactly (same ids, same expectations).
    Retry {
        which: Index,
    },
    /// Resends an earlier append request with one event's data changed.
    RetryChanged {
        which: Index,
        event: Index,
    },
    /// Resends an earlier append request without its last event.
    RetrySubset {
        which: Index,
    },
    /// Sends the events of an earlier append's first part to another stream.
    RetryElsewhere {
        which: Index,
        shift: usize,
        expect: Expect,
    },
    Delete {
        stream: usize,
        expect: Expect,
    },
    Tombstone {
        stream: usize,
        expect: Expect,
    },
    SetMetadata {
        stream: usize,
        expect: Expect,
        max_count: Option<u64>,
        truncate_before: Option<u64>,
    },
}

fn expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        3 => Just(Expect::Any),
        2 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        4 => Just(Expect::Near(0)),
        1 => Just(Expect::Near(-1)),
        1 => Just(Expect::Near(1)),
    ]
}

fn events_strategy() -> impl Strategy<Value = Vec<EventSpec>> {
    let event = (0..TYPES.len(), any::<bool>(), any::<bool>()).prop_map(
        |(type_index, binary, with_metadata)| EventSpec {
            type_index,
            binary,
            with_metadata,
        },
    );
    prop_oneof![
        1 => Just(Vec::new()),
        8 => proptest::collection::vec(event, 1..=3),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS.len();
    prop_oneof![
        12 => (stream.clone(), expect_strategy(), events_strategy())
            .prop_map(|(stream, expect, events)| Op::Append { stream, expect, events }),
        4 => (
            subsequence((0..STREAMS.len()).collect::<Vec<_>>(), 2..=3),
            proptest::collection::vec((expect_strategy(), events_strategy()), 3),
        )
            .prop_map(|(streams, specs)| Op::Multi {
                parts: streams.into_iter().zip(specs).map(|(stream, (expect, events))| (stream, expect, events)).collect(),
            }),
        4 => any::<Index>().prop_map(|which| Op::Retry { which }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(which, event)| Op::RetryChanged { which, event }),
        1 => any::<Index>().prop_map(|which| Op::RetrySubset { which }),
        1 => (any::<Index>(), 1..STREAMS.len(), expect_strategy())
            .prop_map(|(which, shift, expect)| Op::RetryElsewhere { which, shift, expect }),
        4 => (stream.clone(), expect_strategy()).prop_map(|(stream, expect)| Op::Delete { stream, expect }),
        1 => (stream.clone(), expect_strategy()).prop_map(|(stream, expect)| Op::Tombstone { stream, expect }),
        3 => (
            stream,
            expect_strategy(),
            proptest::option::of(0..4u64),
            proptest::option::of(0..6u64),
        )
            .prop_map(|(stream, expect, max_count, truncate_before)| Op::SetMetadata {
                stream,
                expect,
                max_count,
                truncate_before,
            }),
    ]
}

fn resolve(expect: Expect, last: Option<u64>) -> ExpectedRevision {
    match expect {
        Expect::Any => ExpectedRevision::Any,
        Expect::NoStream => ExpectedRevision::NoStream,
        Expect::StreamExists => ExpectedRevision::StreamExists,
        Expect::Near(delta) => {
            ExpectedRevision::Exact(last.unwrap_or(0).saturating_add_signed(i64::from(delta)))
        }
    }
}

/// An earlier append request, as sent.
#[derive(Debug, Clone)]
struct SentAppend {
    parts: Vec<StreamAppend>,
    multi: bool,
}

/// Runs one case: the store and the model side by side.
struct Runner {
    dir: tempfile::TempDir,
    store: Store,
    model: Model,
    sent: Vec<SentAppend>,
    next_event: u128,
}

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        ..StoreOptions::default()
    }
}

impl Runner {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), options()).expect("open store");
        Self {
            dir,
            store,
            model: Model::default(),
            sent: Vec::new(),
            next_event: 1,
        }
    }

    /// Closes the store and opens the same directory again.
    fn reopen(self) -> Self {
        let Runner {
            dir,
            store,
            model,
            sent,
            next_event,
        } = self;
        // The old store must be closed (RocksDB's lock) before the new one opens.
        drop(store);
        let store = Store::open(dir.path(), options()).expect("reopen store");
        Runner {
            dir,
            store,
            model,
            sent,
            next_event,
        }
    }

    fn last_revision(&self, stream: &str) -> Option<u64> {
        self.model
            .streams
            .get(stream)
            .and_then(|record| record.next_revision.checked_sub(1))
    }

    fn make_events(&mut self, specs: &[EventSpec]) -> Vec<EventData> {
        specs
            .iter()
            .map(|spec| {
                let n = self.next_event;
                self.next_event += 1;
                let (content_type, data) = if spec.binary {
                    (
                        "application/octet-stream",
                        Bytes::from(vec![n as u8; (n % 7) as usize]),
                    )
                } else {
                    ("application/json", Bytes::from(format!("{{\"n\":{n}}}")))
                };
                EventData {
                    // Deterministic ids keep a failing case reproducible.
                    id: Uuid::from_u128(0x00c0_ffee_0000_0000_0000_0000_0000_0000 | n),
                    event_type: TYPES[spec.type_index].to_owned(),
                    content_type: content_type.to_owned(),
                    metadata: if spec.with_metadata {
                        Bytes::from(format!("{{\"m\":{n}}}"))
                    } else {
                        Bytes::new()
                    },
                    data,
                    tags: Vec::new(),
                }
            })
            .collect()
    }

    fn part(&mut self, stream: usize, expect: Expect, specs: &[EventSpec]) -> StreamAppend {
        let name = STREAMS[stream];
        let expected = resolve(expect, self.last_revision(name));
        StreamAppend::new(name, expected, self.make_events(specs))
    }

    fn send(&mut self, request: SentAppend) {
        let expected = self.model.append(&request.parts);
        let actual = if request.multi {
            self.store.append_multi(request.parts.clone()).wait()
        } else {
            let part = request.parts[0].clone();
            self.store
                .append(part.stream, part.expected, part.events)
                .wait()
                .map(|result| vec![result])
        };
        assert_eq!(actual, expected, "append {:?}", request.parts);
        self.fill_created();
        self.sent.push(request);
    }

    /// Copies `created` of new events from the live ring into the model, and checks
    /// the ring holds exactly what the model appended.
    fn fill_created(&mut self) {
        let missing = self
            .model
            .events
            .iter()
            .position(|event| event.event.created == UNIX_EPOCH);
        let Some(from) = missing else { return };
        let ring = self
            .store
            .live()
            .read_from(from as u64, ALL)
            .expect("ring holds new events");
        assert_eq!(
            ring.len(),
            self.model.events.len() - from,
            "ring holds every new event"
        );
        for (model, stored) in self.model.events[from..].iter_mut().zip(ring) {
            model.event.created = stored.created;
            assert_eq!(*stored, model.event, "event in the live ring");
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append {
                stream,
                expect,
                events,
            } => {
                let part = self.part(*stream, *expect, events);
                self.send(SentAppend {
                    parts: vec![part],
                    multi: false,
                });
            }
            Op::Multi { parts } => {
                let parts = parts
                    .iter()
                    .map(|(stream, expect, events)| self.part(*stream, *expect, events))
                    .collect();
                self.send(SentAppend { parts, multi: true });
            }
            Op::Retry { which } => {
                if self.sent.is_empty() {
                    return;
                }
                let request = self.sent[which.index(self.sent.len())].clone();
                self.send(request);
            }
            Op::RetryChanged { which, event } => {
                if self.sent.is_empty() {
                    return;
                }
                let mut request = self.sent[which.index(self.sent.len())].clone();
                let mut events: Vec<&mut EventData> = request
                    .parts
                    .iter_mut()
                    .flat_map(|part| part.events.iter_mut())
                    .collect();
                if events.is_empty() {
                    return;
                }
                let len = events.len();
                let changed = &mut events[event.index(len)];
                let mut data = changed.data.to_vec();
                data.push(b' ');
                changed.data = Bytes::from(data);
                self.send(request);
            }
            Op::RetrySubset { which } => {
                if self.sent.is_empty() {
                    return;
                }
                let mut request = self.sent[which.index(self.sent.len())].clone();
                let Some(part) = request
                    .parts
                    .iter_mut()
                    .rev()
                    .find(|part| !part.events.is_empty())
                else {
                    return;
                };
                part.events.pop();
                self.send(request);
            }
            Op::RetryElsewhere {
                which,
                shift,
                expect,
            } => {
                if self.sent.is_empty() {
                    return;
                }
                let original = self.sent[which.index(self.sent.len())].parts[0].clone();
                let from = STREAMS
                    .iter()
                    .position(|name| *name == original.stream)
                    .expect("known stream");
                let stream = STREAMS[(from + shift) % STREAMS.len()];
                let expected = resolve(*expect, self.last_revision(stream));
                let part = StreamAppend::new(stream, expected, original.events);
                self.send(SentAppend {
                    parts: vec![part],
                    multi: false,
                });
            }
            Op::Delete { stream, expect } | Op::Tombstone { stream, expect } => {
                let tombstone = matches!(op, Op::Tombstone { .. });
                let name = STREAMS[*stream];
                let expected = resolve(*expect, self.last_revision(name));
                let model = self.model.delete(name, expected, tombstone);
                let actual = if tombstone {
                    self.store.tombstone(name, expected).wait()
                } else {
                    self.store.delete(name, expected).wait()
                };
                assert_eq!(actual, model, "{op:?} resolved to {expected:?}");
            }
            Op::SetMetadata {
                stream,
                expect,
                max_count,
                truncate_before,
            } => {
                let name = STREAMS[*stream];
                let last = self
                    .model
                    .streams
                    .get(name)
                    .and_then(|record| record.metadata_revision);
                let expected = resolve(*expect, last);
                let metadata = StreamMetadata {
                    max_count: *max_count,
                    truncate_before: *truncate_before,
                    custom: max_count.map(|count| format!("{{\"count\":{count}}}")),
                    ..StreamMetadata::default()
                };
                let model = self.model.set_metadata(name, expected, metadata.clone());
                let actual = self.store.set_metadata(name, expected, metadata).wait();
                assert_eq!(actual, model, "{op:?} resolved to {expected:?}");
            }
        }
        assert_eq!(
            self.store.info().head,
            self.model.head(),
            "head after {op:?}"
        );
        for name in STREAMS {
            assert_eq!(
                self.store.stream_info(name),
                self.model.streams.get(name).map(|record| record.info(name)),
                "stream_info({name}) after {op:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Comparing every read path with the model.

fn request(
    source: &ReadSource,
    direction: Direction,
    from: ReadFrom,
    max_count: usize,
) -> ReadRequest {
    ReadRequest {
        source: source.clone(),
        direction,
        from,
        max_count,
        max_bytes: usize::MAX,
        filter: ReadFilter::default(),
    }
}

fn sort_key(source: &ReadSource, event: &RecordedEvent) -> u64 {
    match source {
        ReadSource::Stream(_) => event.revision,
        _ => event.position,
    }
}

fn check_source(store: &Store, model: &Model, source: &ReadSource) {
    let forwards = model.read(source);
    let backwards = forwards.clone().map(|mut events| {
        events.reverse();
        events
    });
    let context = |what: &str| format!("{what} of {source:?}");

    let page = store.read(&request(source, Direction::Forwards, ReadFrom::Start, ALL));
    assert_eq!(
        page.as_ref().map(|page| &page.events),
        forwards.as_ref(),
        "{}",
        context("forwards read")
    );
    if let Ok(page) = page {
        assert_eq!(
            page.next,
            None,
            "{}",
            context("next of a complete forwards read")
        );
    }
    let page = store.read(&request(source, Direction::Backwards, ReadFrom::End, ALL));
    assert_eq!(
        page.as_ref().map(|page| &page.events),
        backwards.as_ref(),
        "{}",
        context("backwards read")
    );
    if let Ok(page) = page {
        assert_eq!(
            page.next,
            None,
            "{}",
            context("next of a complete backwards read")
        );
    }

    for size in [1, 2, 3] {
        let paged = try_read_all(
            store,
            request(source, Direction::Forwards, ReadFrom::Start, size),
        );
        assert_eq!(
            paged,
            forwards,
            "{}",
            context(&format!("forwards read in pages of {size}"))
        );
        let paged = try_read_all(
            store,
            request(source, Direction::Backwards, ReadFrom::End, size),
        );
        assert_eq!(
            paged,
            backwards,
            "{}",
            context(&format!("backwards read in pages of {size}"))
        );
    }

    let empty = forwards
        .as_ref()
        .map(|_| Vec::<RecordedEvent>::new())
        .map_err(Clone::clone);
    for (direction, from) in [
        (Direction::Forwards, ReadFrom::End),
        (Direction::Backwards, ReadFrom::Start),
    ] {
        let page = store.read(&request(source, direction, from, ALL));
        assert_eq!(
            page.map(|page| page.events),
            empty,
            "{}",
            context(&format!("{direction:?} from {from:?}"))
        );
    }
    let page = store.read(&request(source, Direction::Forwards, ReadFrom::Start, 0));
    assert_eq!(
        page.map(|page| page.events),
        empty,
        "{}",
        context("read of max_count 0")
    );

    let end = match source {
        ReadSource::Stream(stream) => model
            .streams
            .get(stream)
            .map_or(0, |record| record.next_revision),
        _ => model.head(),
    };
    for at in [0, 1, end / 2, end.saturating_sub(1), end, end + 3, u64::MAX] {
        let from = ReadFrom::At(at);
        let want = forwards.clone().map(|events| {
            events
                .into_iter()
                .filter(|event| sort_key(source, event) >= at)
                .collect::<Vec<_>>()
        });
        let got = store
            .read(&request(source, Direction::Forwards, from, ALL))
            .map(|page| page.events);
        assert_eq!(
            got,
            want,
            "{}",
            context(&format!("forwards read from {at}"))
        );
        let want = backwards.clone().map(|events| {
            events
                .into_iter()
                .filter(|event| sort_key(source, event) <= at)
                .collect::<Vec<_>>()
        });
        let got = store
            .read(&request(source, Direction::Backwards, from, ALL))
            .map(|page| page.events);
        assert_eq!(
            got,
            want,
            "{}",
            context(&format!("backwards read from {at}"))
        );
    }
}

fn check_filtered(store: &Store, model: &Model, source: &ReadSource, filter: &ReadFilter) {
    let forwards: Vec<RecordedEvent> = model
        .read(source)
        .expect("filtered sources exist")
        .into_iter()
        .filter(|event| filter.matches(&event.stream, &event.event_type))
        .collect();
    let mut backwards = forwards.clone();
    backwards.reverse();
    for (direction, from, want) in [
        (Direction::Forwards, ReadFrom::Start, &forwards),
        (Direction::Backwards, ReadFrom::End, &backwards),
    ] {
        for size in [2, ALL] {
            let mut filtered = request(source, direction, from, size);
            filtered.filter = filter.clone();
            let got = try_read_all(store, filtered).expect("filtered read");
            assert_eq!(
                &got, want,
                "{direction:?} read of {source:?} with {filter:?} in pages of {size}"
            );
        }
    }
}

/// What the live ring should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ring {
    /// Every event ever appended (the store was never reopened).
    Everything,
    /// Only what was appended since the store was (re)opened at this head.
    Since(u64),
}

fn check_all(store: &Store, model: &Model, ring: Ring) {
    let info = store.info();
    assert_eq!(info.head, model.head(), "info().head");
    assert_eq!(
        info.stream_count,
        model.streams.len() as u64,
        "info().stream_count"
    );
    assert_eq!(
        info.event_count,
        model.head() - model.removed,
        "info().event_count"
    );

    for name in STREAMS {
        assert_eq!(
            store.stream_info(name),
            model.streams.get(name).map(|record| record.info(name)),
            "stream_info({name})"
        );
    }
    let infos: Vec<StreamInfo> = model
        .streams
        .iter()
        .map(|(name, record)| record.info(name))
        .collect();
    assert_eq!(
        store.list_streams("", None, 100).expect("list_streams"),
        infos,
        "list_streams"
    );
    let a: Vec<StreamInfo> = infos
        .iter()
        .filter(|info| info.name.starts_with("a-"))
        .cloned()
        .collect();
    assert_eq!(
        store.list_streams("a-", None, 100).expect("list_streams"),
        a,
        "list_streams(a-)"
    );
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_streams("", after.as_deref(), 1)
            .expect("list_streams page");
        assert!(page.len() <= 1, "list_streams limit");
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        paged.extend(page);
    }
    assert_eq!(paged, infos, "list_streams one at a time");

    let mut sources: Vec<ReadSource> = STREAMS
        .iter()
        .map(|name| ReadSource::Stream((*name).to_owned()))
        .collect();
    sources.push(ReadSource::All);
    for category in ["a", "b", "c"] {
        sources.push(ReadSource::Category(category.to_owned()));
    }
    for event_type in TYPES.iter().chain(&["Unknown"]) {
        sources.push(ReadSource::EventType((*event_type).to_owned()));
    }
    for source in &sources {
        check_source(store, model, source);
    }

    let by_prefix_and_type = ReadFilter {
        stream_prefixes: vec!["a-".into()],
        type_regex: Some(ReadFilter::regex("^(Created|Closed)$").expect("regex")),
        ..ReadFilter::default()
    };
    let by_regex_and_type_prefix = ReadFilter {
        stream_regex: Some(ReadFilter::regex("^(b-1|c)$").expect("regex")),
        type_prefixes: vec!["Up".into(), "Cr".into()],
        ..ReadFilter::default()
    };
    check_filtered(store, model, &ReadSource::All, &by_prefix_and_type);
    check_filtered(store, model, &ReadSource::All, &by_regex_and_type_prefix);
    check_filtered(
        store,
        model,
        &ReadSource::Category("a".into()),
        &by_prefix_and_type,
    );
    check_filtered(
        store,
        model,
        &ReadSource::EventType("Updated".into()),
        &by_regex_and_type_prefix,
    );

    let live = store.live();
    assert_eq!(
        live.wait_beyond(model.head().saturating_sub(1), Duration::ZERO),
        model.head(),
        "live head"
    );
    let since = match ring {
        Ring::Everything => 0,
        Ring::Since(head) => head,
    };
    let held: Vec<RecordedEvent> = live
        .read_from(since, ALL)
        .expect("ring")
        .into_iter()
        .map(|event| (*event).clone())
        .collect();
    let appended: Vec<RecordedEvent> = model.events[since as usize..]
        .iter()
        .map(|event| event.event.clone())
        .collect();
    assert_eq!(held, appended, "live ring from {since}");
    if since > 0 {
        assert_eq!(
            live.read_from(0, ALL).map(|events| events.len()),
            Err(Error::FellBehind {
                requested: 0,
                oldest: since
            }),
            "ring after reopen"
        );
    }
}

fn run(ops: &[Op]) {
    let mut runner = Runner::new();
    for op in ops {
        runner.apply(op);
    }
    check_all(&runner.store, &runner.model, Ring::Everything);

    let hidden = runner.model.hidden_present();
    let report = runner.store.scavenge().expect("scavenge");
    assert_eq!(
        report.removed, hidden,
        "events removed by the scavenge: {report:?}"
    );
    runner.model.scavenge();
    check_all(&runner.store, &runner.model, Ring::Everything);
    let segments = runner.store.segments().expect("segments");
    if runner.model.head() > 0 {
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert_eq!(
            segments[0].events_written,
            runner.model.head(),
            "{segments:?}"
        );
        assert_eq!(
            segments[0].events_removed, runner.model.removed,
            "{segments:?}"
        );
        assert_eq!(
            segments[0].bytes_removed, report.bytes_removed,
            "{segments:?}"
        );
    }

    let mut runner = runner.reopen();
    check_all(
        &runner.store,
        &runner.model,
        Ring::Since(runner.model.head()),
    );
    assert_eq!(
        runner.store.scavenge().expect("second scavenge").removed,
        0,
        "nothing left to scavenge"
    );

    // The reopened store continues where the model is: positions after the old head
    // (also when a scavenge removed the newest records), revisions where each
    // stream stopped.
    let reopened_at = runner.model.head();
    for stream in 0..STREAMS.len() {
        let spec = EventSpec {
            type_index: stream % TYPES.len(),
            binary: false,
            with_metadata: false,
        };
        let part = runner.part(stream, Expect::Any, &[spec]);
        runner.send(SentAppend {
            parts: vec![part],
            multi: false,
        });
    }
    check_all(&runner.store, &runner.model, Ring::Since(reopened_at));
}

proptest! {
    // PROPTEST_CASES=2000 for a deeper run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(&ops);
    }
}

// ---------------------------------------------------------------------------
// Fixed cases worth keeping whatever the generator finds.

fn event(n: u64) -> EventData {
    numbered("Created", n).with_id(Uuid::from_u128(n.into()))
}

/// A client retries a `NoStream` append after the stream was soft-deleted again:
/// DESIGN §2 says a retry with the same ids and the same expectation returns the
/// original result.
#[test]
fn retry_of_no_stream_append_survives_a_later_soft_delete() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    store
        .append("a-1", ExpectedRevision::NoStream, vec![event(1)])
        .wait()
        .expect("first life");
    store
        .delete("a-1", ExpectedRevision::Exact(0))
        .wait()
        .expect("delete");
    let second = vec![event(2), event(3)];
    let original = store
        .append("a-1", ExpectedRevision::NoStream, second.clone())
        .wait()
        .expect("second life");
    assert_eq!(original.positions, Some((1, 2)));
    store
        .delete("a-1", ExpectedRevision::Exact(2))
        .wait()
        .expect("delete again");

    let retried = store
        .append("a-1", ExpectedRevision::NoStream, second)
        .wait();
    assert_eq!(
        retried,
        Ok(AppendResult {
            idempotent_replay: true,
            ..original
        })
    );
    assert_eq!(store.info().head, 3, "the retry wrote nothing");
}

/// Retries of each kind of expectation return the original result and write
/// nothing, also when the stream moved on since.
#[test]
fn retries_return_the_original_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    let mut n = 0u64;
    let mut next = || {
        n += 1;
        event(n)
    };
    let cases = [
        ExpectedRevision::NoStream,
        ExpectedRevision::Any,
        ExpectedRevision::StreamExists,
        ExpectedRevision::Exact(5),
    ];
    let mut originals = Vec::new();
    for expected in cases {
        let events = vec![next(), next()];
        let result = store
            .append("a-1", expected, events.clone())
            .wait()
            .expect("append");
        originals.push((expected, events, result));
    }
    store
        .append("a-1", ExpectedRevision::Any, vec![next()])
        .wait()
        .expect("the stream moves on");
    let head = store.info().head;
    for (expected, events, result) in originals {
        let retried = store.append("a-1", expected, events).wait();
        assert_eq!(
            retried,
            Ok(AppendResult {
                idempotent_replay: true,
                ..result
            }),
            "retry of {expected:?}"
        );
    }
    assert_eq!(store.info().head, head, "retries wrote nothing");
}
