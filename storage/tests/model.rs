//! Property test: the store against a simple in-memory model of the log.
//!
//! Random sequences of appends (single and multi-stream, with every kind of
//! expectation, tagged events and DCB append conditions), idempotent retries,
//! soft deletes, tombstones, metadata changes and scavenges run against a real
//! store and a plain `Vec` of events. Every outcome is compared as it happens
//! (errors exactly, including a condition's conflict position); at the end every
//! read path, DCB query reads included, is compared with the model, then again
//! after a scavenge and after reopening the directory, and conditions are probed
//! at each of those points. A second property runs the same with a stream
//! catalog cache of two records, so nearly every lookup misses and every group
//! evicts: the answers must not depend on what the cache holds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cairn_storage::{
    AppendCondition, AppendResult, CatalogLimits, CurrentRevision, Direction, Durability, Error,
    EventData, ExpectedRevision, Query, QueryItem, ReadFilter, ReadFrom, ReadRequest, ReadSource,
    RecordedEvent, Store, StoreOptions, StreamAppend, StreamInfo, StreamMetadata, StreamState,
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
/// The tag alphabet: an event carries up to two of them, a query item names
/// up to two.
const TAGS: [&str; 4] = ["user:1", "user:2", "order:1", "order:2"];
/// A stream no op writes: conditional appends of no events to it probe a
/// condition without changing the log (`Runner::probe_conditions`).
const PROBE: &str = "probe";
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

/// Whether `event` matches `query`, written out here rather than taken from
/// `Query::matches` so that the model does not share the store's code: an item
/// matches when the event's type is one of its types (any, when it has none)
/// and the event carries all of its tags; a query with no items matches all.
fn query_matches(query: &Query, event: &RecordedEvent) -> bool {
    query.items.is_empty()
        || query.items.iter().any(|item| {
            (item.types.is_empty() || item.types.contains(&event.event_type))
                && item.tags.iter().all(|tag| event.tags.contains(tag))
        })
}

/// The store's check of a query the model can generate (a few short values):
/// no empty type or tag.
fn validate_query(query: &Query) -> Result<(), Error> {
    let empty = query
        .items
        .iter()
        .flat_map(|item| item.types.iter().chain(&item.tags))
        .any(String::is_empty);
    if empty {
        return Err(Error::InvalidArgument(
            "a query's types and tags must not be empty strings".into(),
        ));
    }
    Ok(())
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

    /// The first position after the condition's `after` holding an event that
    /// matches its query. Every event still stored counts, visible or hidden by
    /// a delete or metadata; a scavenged one does not. Only events of earlier
    /// requests exist here: the request's own events are not in the log yet.
    fn conflict(&self, condition: &AppendCondition) -> Option<u64> {
        let start = condition.after.map_or(0, |after| after.saturating_add(1));
        self.events
            .iter()
            .filter(|event| event.present && event.event.position >= start)
            .find(|event| query_matches(&condition.query, &event.event))
            .map(|event| event.event.position)
    }

    /// An append request, with a DCB condition or without. The checks run in
    /// the store's order: the request's validation (only the query can be
    /// invalid here), then per part a tombstone, an idempotent replay and the
    /// expected revision, then the condition unless the whole request is an
    /// exact retry (which returns its original result whatever the condition).
    fn append(
        &mut self,
        parts: &[StreamAppend],
        condition: Option<&AppendCondition>,
    ) -> Result<Vec<AppendResult>, Error> {
        if let Some(condition) = condition {
            validate_query(&condition.query)?;
        }
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
        if let Some(condition) = condition
            && !exact
            && let Some(position) = self.conflict(condition)
        {
            return Err(Error::AppendConditionFailed { position });
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
                .filter(|event| query_matches(query, event))
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
    /// Which of `TAGS` the event carries (bit `i`: `TAGS[i]`).
    tags: u8,
}

/// The names of `alphabet` whose bits are set in `mask`, in alphabet order.
fn names(mask: u8, alphabet: &[&str]) -> Vec<String> {
    alphabet
        .iter()
        .enumerate()
        .filter(|(index, _)| mask & (1 << index) != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

/// A condition's `after` before it is resolved against the head.
#[derive(Debug, Clone, Copy)]
enum After {
    /// `None`: no matching event may exist at all.
    Anywhere,
    /// `head - k` (0 when the log is shorter): `k = 1` is a decision that read
    /// everything, so only a concurrent write could conflict.
    BeforeHead(u64),
    /// A position in `0..head`.
    Earlier(Index),
}

/// A DCB condition before it is resolved.
#[derive(Debug, Clone)]
struct ConditionSpec {
    /// Query items as (types, tags) bit masks over `TYPES` and `TAGS`.
    items: Vec<(u8, u8)>,
    /// Adds an item with an empty tag, which the store refuses.
    invalid: bool,
    after: After,
}

impl ConditionSpec {
    fn resolve(&self, head: u64) -> AppendCondition {
        let mut items: Vec<QueryItem> = self
            .items
            .iter()
            .map(|(types, tags)| QueryItem {
                types: names(*types, &TYPES),
                tags: names(*tags, &TAGS),
            })
            .collect();
        if self.invalid {
            items.push(QueryItem::tags([""]));
        }
        let after = match self.after {
            After::Anywhere => None,
            After::BeforeHead(k) => Some(head.saturating_sub(k)),
            After::Earlier(index) => Some(index.index(head.max(1) as usize) as u64),
        };
        AppendCondition::new(Query::of(items), after)
    }
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
    /// `Append` with a DCB condition.
    ConditionalAppend {
        stream: usize,
        expect: Expect,
        events: Vec<EventSpec>,
        condition: ConditionSpec,
    },
    /// `Multi` with a DCB condition.
    ConditionalMulti {
        parts: Vec<(usize, Expect, Vec<EventSpec>)>,
        condition: ConditionSpec,
    },
    /// Removes the hidden events (and their ids) in the middle of a run.
    Scavenge,
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

/// A bit mask of at most two of `len` names.
fn mask_strategy(len: usize) -> impl Strategy<Value = u8> {
    subsequence((0..len).collect::<Vec<_>>(), 0..=2).prop_map(|chosen| {
        chosen
            .into_iter()
            .fold(0u8, |mask, index| mask | 1 << index)
    })
}

/// Expectations for conditional appends: mostly `Any`, so that the condition
/// decides most of them, and the failing kinds still (a request failing
/// both its expectation and its condition reports the expectation).
fn conditional_expect_strategy() -> impl Strategy<Value = Expect> {
    prop_oneof![
        8 => Just(Expect::Any),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        2 => Just(Expect::Near(0)),
        1 => Just(Expect::Near(-1)),
    ]
}

fn events_strategy() -> impl Strategy<Value = Vec<EventSpec>> {
    let event = (
        0..TYPES.len(),
        any::<bool>(),
        any::<bool>(),
        mask_strategy(TAGS.len()),
    )
        .prop_map(|(type_index, binary, with_metadata, tags)| EventSpec {
            type_index,
            binary,
            with_metadata,
            tags,
        });
    prop_oneof![
        1 => Just(Vec::new()),
        8 => proptest::collection::vec(event, 1..=3),
    ]
}

fn condition_strategy() -> impl Strategy<Value = ConditionSpec> {
    let item = (mask_strategy(TYPES.len()), mask_strategy(TAGS.len()));
    let items = prop_oneof![
        // No items: the query matches every event.
        1 => Just(Vec::new()),
        6 => proptest::collection::vec(item, 1..=2),
    ];
    let after = prop_oneof![
        2 => Just(After::Anywhere),
        3 => Just(After::BeforeHead(1)),
        2 => Just(After::BeforeHead(2)),
        2 => any::<Index>().prop_map(After::Earlier),
    ];
    (items, proptest::bool::weighted(0.05), after).prop_map(|(items, invalid, after)| {
        ConditionSpec {
            items,
            invalid,
            after,
        }
    })
}

fn multi_parts_strategy<E: Strategy<Value = Expect>>(
    expect: E,
) -> impl Strategy<Value = Vec<(usize, Expect, Vec<EventSpec>)>> {
    (
        subsequence((0..STREAMS.len()).collect::<Vec<_>>(), 2..=3),
        proptest::collection::vec((expect, events_strategy()), 3),
    )
        .prop_map(|(streams, specs)| {
            streams
                .into_iter()
                .zip(specs)
                .map(|(stream, (expect, events))| (stream, expect, events))
                .collect()
        })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let stream = 0..STREAMS.len();
    prop_oneof![
        12 => (stream.clone(), expect_strategy(), events_strategy())
            .prop_map(|(stream, expect, events)| Op::Append { stream, expect, events }),
        4 => multi_parts_strategy(expect_strategy()).prop_map(|parts| Op::Multi { parts }),
        6 => (stream.clone(), conditional_expect_strategy(), events_strategy(), condition_strategy())
            .prop_map(|(stream, expect, events, condition)| Op::ConditionalAppend {
                stream,
                expect,
                events,
                condition,
            }),
        3 => (multi_parts_strategy(conditional_expect_strategy()), condition_strategy())
            .prop_map(|(parts, condition)| Op::ConditionalMulti { parts, condition }),
        1 => Just(Op::Scavenge),
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
    /// Sent through `append_multi_if` when set (`multi` or not).
    condition: Option<AppendCondition>,
}

/// Runs one case: the store and the model side by side.
struct Runner {
    dir: tempfile::TempDir,
    store: Store,
    model: Model,
    sent: Vec<SentAppend>,
    next_event: u128,
    /// Bytes every scavenge so far removed.
    bytes_removed: u64,
    /// The store's catalog bounds, kept across reopens.
    catalog: CatalogLimits,
}

fn options() -> StoreOptions {
    options_with(CatalogLimits::default())
}

fn options_with(catalog: CatalogLimits) -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        catalog,
        ..StoreOptions::default()
    }
}

/// A catalog cache smaller than the model's stream alphabet: two records and
/// bytes for about three, so both bounds evict.
fn tiny_catalog() -> CatalogLimits {
    CatalogLimits {
        max_streams: 2,
        max_bytes: 3 * (cairn_storage::ENTRY_OVERHEAD_BYTES + 16),
    }
}

impl Runner {
    fn new(catalog: CatalogLimits) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), options_with(catalog)).expect("open store");
        Self {
            dir,
            store,
            model: Model::default(),
            sent: Vec::new(),
            next_event: 1,
            bytes_removed: 0,
            catalog,
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
            bytes_removed,
            catalog,
        } = self;
        // The old store must be closed (RocksDB's lock) before the new one opens.
        drop(store);
        let store = Store::open(dir.path(), options_with(catalog)).expect("reopen store");
        Runner {
            dir,
            store,
            model,
            sent,
            next_event,
            bytes_removed,
            catalog,
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
                    tags: names(spec.tags, &TAGS),
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
        let expected = self
            .model
            .append(&request.parts, request.condition.as_ref());
        let actual = if let Some(condition) = &request.condition {
            self.store
                .append_multi_if(request.parts.clone(), Some(condition.clone()))
                .wait()
        } else if request.multi {
            self.store.append_multi(request.parts.clone()).wait()
        } else {
            let part = request.parts[0].clone();
            self.store
                .append(part.stream, part.expected, part.events)
                .wait()
                .map(|result| vec![result])
        };
        assert_eq!(
            actual, expected,
            "append {:?} with {:?}",
            request.parts, request.condition
        );
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

    /// Scavenges the store and the model: the store removes exactly the
    /// events the model holds hidden, and both forget them (their ids, and
    /// their weight in append conditions).
    fn scavenge(&mut self) {
        let hidden = self.model.hidden_present();
        let report = self.store.scavenge().expect("scavenge");
        assert_eq!(
            report.removed, hidden,
            "events removed by the scavenge: {report:?}"
        );
        self.model.scavenge();
        self.bytes_removed += report.bytes_removed;
    }

    /// Conditional appends of no events to `PROBE`, one per fixed query and
    /// `after` (anywhere, from the start, from the middle, the last position):
    /// each either holds (and writes nothing) or names the first conflicting
    /// position, which shows exactly which stored events, hidden ones included,
    /// a condition still counts. Leaves the log as it was.
    fn probe_conditions(&mut self) {
        let head = self.model.head();
        for query in fixed_queries() {
            for after in [None, Some(0), Some(head / 2), head.checked_sub(1)] {
                self.send(SentAppend {
                    parts: vec![StreamAppend::new(PROBE, ExpectedRevision::Any, Vec::new())],
                    multi: true,
                    condition: Some(AppendCondition::new(query.clone(), after)),
                });
            }
        }
        assert_eq!(self.store.info().head, head, "probes write nothing");
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
                    condition: None,
                });
            }
            Op::Multi { parts } => {
                let parts = parts
                    .iter()
                    .map(|(stream, expect, events)| self.part(*stream, *expect, events))
                    .collect();
                self.send(SentAppend {
                    parts,
                    multi: true,
                    condition: None,
                });
            }
            Op::ConditionalAppend {
                stream,
                expect,
                events,
                condition,
            } => {
                let condition = condition.resolve(self.model.head());
                let part = self.part(*stream, *expect, events);
                self.send(SentAppend {
                    parts: vec![part],
                    multi: false,
                    condition: Some(condition),
                });
            }
            Op::ConditionalMulti { parts, condition } => {
                let condition = condition.resolve(self.model.head());
                let parts = parts
                    .iter()
                    .map(|(stream, expect, events)| self.part(*stream, *expect, events))
                    .collect();
                self.send(SentAppend {
                    parts,
                    multi: true,
                    condition: Some(condition),
                });
            }
            Op::Scavenge => self.scavenge(),
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
                let sent = self.sent[which.index(self.sent.len())].clone();
                let original = sent.parts[0].clone();
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
                    condition: sent.condition,
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

/// Queries every check reads and probes with: type-only, tag-only,
/// type and tags, several items, a tag nobody carries, and the two ways of
/// matching everything (no items; an item without types and tags).
fn fixed_queries() -> Vec<Query> {
    vec![
        Query::of([QueryItem::types(["Created", "Closed"])]),
        Query::of([QueryItem::tags(["user:1"])]),
        Query::of([QueryItem::types(["Updated"]).with_tags(["user:2", "order:1"])]),
        Query::of([
            QueryItem::types(["Created"]).with_tags(["order:2"]),
            QueryItem::tags(["user:1", "order:1"]),
            QueryItem::types(["Closed", "Unknown"]),
        ]),
        Query::of([QueryItem::tags(["nobody"])]),
        Query::all(),
        Query::of([QueryItem::tags(["user:2"]), QueryItem::default()]),
    ]
}

/// A DCB query read against the model's visible matching events, forwards
/// and backwards, in pages of 1 and in one page, each page checked for the
/// paging contract: at most `max_count` events, `head` the model's head,
/// `next` past the page's events, `scanned_through` (when given) at or past
/// them and before `next`; a complete forwards read has scanned through the
/// last position. Then reads from the middle of the log in both directions.
fn check_query(store: &Store, model: &Model, query: &Query) {
    let source = ReadSource::Query(query.clone());
    let forwards = model.read(&source).expect("a query read never fails");
    let mut backwards = forwards.clone();
    backwards.reverse();
    let head = model.head();
    for (direction, from, want) in [
        (Direction::Forwards, ReadFrom::Start, &forwards),
        (Direction::Backwards, ReadFrom::End, &backwards),
    ] {
        let ahead = |a: u64, b: u64| match direction {
            Direction::Forwards => a > b,
            Direction::Backwards => a < b,
        };
        for size in [1, ALL] {
            let context = format!("{direction:?} read of {query:?} in pages of {size}");
            let mut paged = request(&source, direction, from, size);
            let mut got: Vec<RecordedEvent> = Vec::new();
            let mut pages = 0;
            loop {
                pages += 1;
                assert!(pages <= head + 2, "{context}: paging does not end");
                let page = store.read(&paged).expect("query read");
                assert_eq!(page.head, head, "{context}: head");
                assert!(page.events.len() <= size, "{context}: page size");
                let last = page.events.last().map(|event| event.position);
                if let (Some(last), Some(next)) = (last, page.next) {
                    assert!(ahead(next, last), "{context}: next {next} after {last}");
                }
                if let Some(through) = page.scanned_through {
                    if let Some(last) = last {
                        assert!(
                            !ahead(last, through),
                            "{context}: scanned through {through} before {last}"
                        );
                    }
                    if let Some(next) = page.next {
                        assert!(
                            ahead(next, through),
                            "{context}: next {next} within scanned {through}"
                        );
                    }
                }
                got.extend(page.events);
                match page.next {
                    Some(next) => paged.from = ReadFrom::At(next),
                    None => {
                        if direction == Direction::Forwards {
                            assert_eq!(
                                page.scanned_through,
                                head.checked_sub(1),
                                "{context}: a complete read scanned through the head"
                            );
                        }
                        break;
                    }
                }
            }
            assert_eq!(&got, want, "{context}");
        }
    }
    let middle = head / 2;
    for (direction, want) in [
        (
            Direction::Forwards,
            forwards
                .iter()
                .filter(|event| event.position >= middle)
                .cloned()
                .collect::<Vec<_>>(),
        ),
        (
            Direction::Backwards,
            backwards
                .iter()
                .filter(|event| event.position <= middle)
                .cloned()
                .collect(),
        ),
    ] {
        let got = try_read_all(store, request(&source, direction, ReadFrom::At(middle), 2))
            .expect("query read");
        assert_eq!(got, want, "{direction:?} read of {query:?} from {middle}");
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

    for query in fixed_queries() {
        check_query(store, model, &query);
    }

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

fn run(ops: &[Op], catalog: CatalogLimits) {
    let mut runner = Runner::new(catalog);
    for op in ops {
        runner.apply(op);
    }
    check_all(&runner.store, &runner.model, Ring::Everything);
    runner.probe_conditions();

    runner.scavenge();
    check_all(&runner.store, &runner.model, Ring::Everything);
    runner.probe_conditions();
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
            segments[0].bytes_removed, runner.bytes_removed,
            "{segments:?}"
        );
    }

    let mut runner = runner.reopen();
    check_all(
        &runner.store,
        &runner.model,
        Ring::Since(runner.model.head()),
    );
    runner.probe_conditions();
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
            tags: 1 << (stream % TAGS.len()),
        };
        let part = runner.part(stream, Expect::Any, &[spec]);
        runner.send(SentAppend {
            parts: vec![part],
            multi: false,
            condition: None,
        });
    }
    check_all(&runner.store, &runner.model, Ring::Since(reopened_at));
    runner.probe_conditions();
    let usage = runner.store.catalog_usage();
    assert!(
        usage.streams <= catalog.max_streams && usage.bytes <= catalog.max_bytes,
        "catalog cache {usage:?} beyond {catalog:?}"
    );
}

proptest! {
    // PROPTEST_CASES=2000 for a deeper run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(&ops, CatalogLimits::default());
    }
}

proptest! {
    // Half the cases of the property above (the same work, with more reads
    // of stream records from RocksDB): enough runs for evictions in every
    // kind of operation, at a test time close to the first one's.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(16),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model_with_a_tiny_catalog(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(&ops, tiny_catalog());
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
