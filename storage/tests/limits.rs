//! Bad input: every malformed or refused request gets its specific error and
//! leaves no trace (the head, the stream and its metadata are unchanged).

use bytes::Bytes;
use cairn_storage::{
    AppendResult, CurrentRevision, Durability, Error, EventData, ExpectedRevision, Limits,
    MAX_STREAM_NAME_BYTES, ReadRequest, ReadSource, Store, StoreOptions, StreamAppend, StreamInfo,
    StreamMetadata,
};
use uuid::Uuid;

const MAX_EVENT_BYTES: usize = 1024;
const MAX_EVENTS_PER_APPEND: usize = 10;

/// A store with small limits and one stream `known-1` holding revisions 0 and 1.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions {
            durability: Durability::Unsynced,
            limits: Limits {
                max_event_bytes: MAX_EVENT_BYTES,
                max_append_bytes: 4 * MAX_EVENT_BYTES,
                max_events_per_append: MAX_EVENTS_PER_APPEND,
                max_read_page: 100,
                ..Limits::default()
            },
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), options).expect("open");
        store
            .append(
                "known-1",
                ExpectedRevision::NoStream,
                vec![event(), event()],
            )
            .wait()
            .expect("setup append");
        Self { _dir: dir, store }
    }

    /// What a refused request must not change.
    fn snapshot(&self) -> (u64, Vec<StreamInfo>) {
        (
            self.store.info().head,
            self.store
                .list_streams("", None, 1000)
                .expect("list_streams"),
        )
    }

    /// Runs `request`, expects `check` to accept its error, and checks nothing was
    /// written.
    fn refused<T: std::fmt::Debug>(
        &self,
        request: impl FnOnce(&Store) -> Result<T, Error>,
        check: impl FnOnce(&Error) -> bool,
    ) {
        let before = self.snapshot();
        let outcome = request(&self.store);
        match &outcome {
            Err(error) => assert!(check(error), "unexpected error: {error:?}"),
            Ok(value) => panic!("request was accepted: {value:?}"),
        }
        assert_eq!(
            self.snapshot(),
            before,
            "a refused request ({outcome:?}) changed the store"
        );
    }
}

fn event() -> EventData {
    EventData::json("Happened", r#"{"x":1}"#)
}

fn sized(bytes: usize) -> EventData {
    let mut event = EventData::json("T", Bytes::new());
    event.content_type = String::new();
    event.data = Bytes::from(vec![b'x'; bytes - event.event_type.len()]);
    assert_eq!(event.size(), bytes);
    event
}

#[test]
fn oversized_event_is_limit_exceeded() {
    let fixture = Fixture::new();
    fixture.refused(
        |store| {
            store
                .append(
                    "s-1",
                    ExpectedRevision::Any,
                    vec![sized(MAX_EVENT_BYTES + 1)],
                )
                .wait()
        },
        |error| {
            matches!(error, Error::LimitExceeded { actual, limit, .. }
                if *actual == MAX_EVENT_BYTES as u64 + 1 && *limit == MAX_EVENT_BYTES as u64)
        },
    );
    // The limit itself is allowed.
    let result = fixture
        .store
        .append("s-1", ExpectedRevision::Any, vec![sized(MAX_EVENT_BYTES)])
        .wait();
    assert_eq!(
        result.map(|result| result.current),
        Ok(CurrentRevision::Revision(0))
    );
}

#[test]
fn oversized_append_is_limit_exceeded() {
    let fixture = Fixture::new();
    // Five events each within the limit, together over the 4 KiB request limit.
    let events: Vec<EventData> = (0..5).map(|_| sized(MAX_EVENT_BYTES)).collect();
    fixture.refused(
        |store| store.append("s-1", ExpectedRevision::Any, events).wait(),
        |error| matches!(error, Error::LimitExceeded { .. }),
    );
}

#[test]
fn too_many_events_per_append_is_limit_exceeded() {
    let fixture = Fixture::new();
    let events: Vec<EventData> = (0..=MAX_EVENTS_PER_APPEND).map(|_| event()).collect();
    fixture.refused(
        |store| store.append("s-1", ExpectedRevision::Any, events).wait(),
        |error| {
            matches!(error, Error::LimitExceeded { actual, limit, .. }
                if *actual == MAX_EVENTS_PER_APPEND as u64 + 1 && *limit == MAX_EVENTS_PER_APPEND as u64)
        },
    );
    // The count is over the whole request, across streams.
    let parts = vec![
        StreamAppend::new(
            "s-1",
            ExpectedRevision::Any,
            (0..6).map(|_| event()).collect(),
        ),
        StreamAppend::new(
            "s-2",
            ExpectedRevision::Any,
            (0..6).map(|_| event()).collect(),
        ),
    ];
    fixture.refused(
        |store| store.append_multi(parts).wait(),
        |error| matches!(error, Error::LimitExceeded { .. }),
    );
    let events: Vec<EventData> = (0..MAX_EVENTS_PER_APPEND).map(|_| event()).collect();
    assert!(
        fixture
            .store
            .append("s-1", ExpectedRevision::Any, events)
            .wait()
            .is_ok(),
        "the limit itself is allowed"
    );
}

#[test]
fn bad_stream_names_are_invalid_arguments() {
    let fixture = Fixture::new();
    let too_long = "x".repeat(MAX_STREAM_NAME_BYTES + 1);
    for name in ["", too_long.as_str(), "$reserved", "$all", "$ce-known"] {
        let invalid = |error: &Error| matches!(error, Error::InvalidArgument(_));
        fixture.refused(
            |store| {
                store
                    .append(name, ExpectedRevision::Any, vec![event()])
                    .wait()
            },
            invalid,
        );
        fixture.refused(
            |store| {
                store
                    .append_multi(vec![StreamAppend::new(
                        name,
                        ExpectedRevision::Any,
                        vec![event()],
                    )])
                    .wait()
            },
            invalid,
        );
        fixture.refused(
            |store| store.delete(name, ExpectedRevision::Any).wait(),
            invalid,
        );
        fixture.refused(
            |store| store.tombstone(name, ExpectedRevision::Any).wait(),
            invalid,
        );
        fixture.refused(
            |store| {
                store
                    .set_metadata(name, ExpectedRevision::Any, StreamMetadata::default())
                    .wait()
            },
            invalid,
        );
    }
    // 1024 bytes is allowed, and so is multi-byte UTF-8 up to the byte limit.
    let longest = "y".repeat(MAX_STREAM_NAME_BYTES);
    assert!(
        fixture
            .store
            .append(longest.as_str(), ExpectedRevision::NoStream, vec![event()])
            .wait()
            .is_ok()
    );
    let wide = "é".repeat(MAX_STREAM_NAME_BYTES / 2);
    assert_eq!(wide.len(), MAX_STREAM_NAME_BYTES);
    assert!(
        fixture
            .store
            .append(wide.as_str(), ExpectedRevision::NoStream, vec![event()])
            .wait()
            .is_ok()
    );
    let wide_too_long = format!("{wide}z");
    fixture.refused(
        |store| {
            store
                .append(wide_too_long.as_str(), ExpectedRevision::Any, vec![event()])
                .wait()
        },
        |error| matches!(error, Error::InvalidArgument(_)),
    );
}

#[test]
fn nil_event_id_is_an_invalid_argument() {
    let fixture = Fixture::new();
    fixture.refused(
        |store| {
            store
                .append(
                    "s-1",
                    ExpectedRevision::Any,
                    vec![event(), event().with_id(Uuid::nil())],
                )
                .wait()
        },
        |error| matches!(error, Error::InvalidArgument(message) if message.contains("nil")),
    );
}

#[test]
fn empty_event_type_is_an_invalid_argument() {
    let fixture = Fixture::new();
    let mut untyped = event();
    untyped.event_type = String::new();
    fixture.refused(
        |store| {
            store
                .append("s-1", ExpectedRevision::Any, vec![untyped])
                .wait()
        },
        |error| matches!(error, Error::InvalidArgument(_)),
    );
}

#[test]
fn duplicate_id_within_one_append_is_an_invalid_argument() {
    let fixture = Fixture::new();
    let twice = event();
    fixture.refused(
        |store| {
            store
                .append(
                    "s-1",
                    ExpectedRevision::Any,
                    vec![twice.clone(), event(), twice.clone()],
                )
                .wait()
        },
        |error| matches!(error, Error::InvalidArgument(_)),
    );
    // Across the parts of one multi-stream append as well.
    let parts = vec![
        StreamAppend::new("s-1", ExpectedRevision::Any, vec![twice.clone()]),
        StreamAppend::new("s-2", ExpectedRevision::Any, vec![twice]),
    ];
    fixture.refused(
        |store| store.append_multi(parts).wait(),
        |error| matches!(error, Error::InvalidArgument(_)),
    );
}

#[test]
fn same_stream_twice_in_one_multi_append_is_an_invalid_argument() {
    let fixture = Fixture::new();
    let parts = vec![
        StreamAppend::new("s-1", ExpectedRevision::Any, vec![event()]),
        StreamAppend::new("s-2", ExpectedRevision::Any, vec![event()]),
        StreamAppend::new("s-1", ExpectedRevision::Any, vec![event()]),
    ];
    fixture.refused(
        |store| store.append_multi(parts).wait(),
        |error| matches!(error, Error::InvalidArgument(_)),
    );
    fixture.refused(
        |store| store.append_multi(Vec::new()).wait(),
        |error| matches!(error, Error::InvalidArgument(_)),
    );
}

#[test]
fn reading_an_unknown_stream_is_stream_not_found() {
    let fixture = Fixture::new();
    for request in [
        ReadRequest::forwards(ReadSource::Stream("unknown-1".into()), 10),
        ReadRequest::backwards(ReadSource::Stream("unknown-1".into()), 10),
    ] {
        assert_eq!(
            fixture.store.read(&request),
            Err(Error::StreamNotFound {
                stream: "unknown-1".into()
            })
        );
    }
    assert_eq!(fixture.store.stream_info("unknown-1"), None);
    // Unknown categories and event types are empty, not missing.
    let page = fixture.store.read(&ReadRequest::forwards(
        ReadSource::Category("unknown".into()),
        10,
    ));
    assert_eq!(page.map(|page| page.events.len()), Ok(0));
    let page = fixture.store.read(&ReadRequest::forwards(
        ReadSource::EventType("Unknown".into()),
        10,
    ));
    assert_eq!(page.map(|page| page.events.len()), Ok(0));
    // A soft-deleted stream reads as not found too.
    fixture
        .store
        .delete("known-1", ExpectedRevision::Exact(1))
        .wait()
        .expect("delete");
    let page = fixture.store.read(&ReadRequest::forwards(
        ReadSource::Stream("known-1".into()),
        10,
    ));
    assert_eq!(
        page,
        Err(Error::StreamNotFound {
            stream: "known-1".into()
        })
    );
    fixture.refused(
        |store| store.delete("known-1", ExpectedRevision::Any).wait(),
        |error| matches!(error, Error::StreamNotFound { stream } if stream == "known-1"),
    );
}

#[test]
fn tombstoned_stream_refuses_everything() {
    let fixture = Fixture::new();
    let store = &fixture.store;
    assert_eq!(
        store
            .tombstone("known-1", ExpectedRevision::Exact(1))
            .wait(),
        Ok(CurrentRevision::Revision(1))
    );
    let tombstoned =
        |error: &Error| matches!(error, Error::StreamTombstoned { stream } if stream == "known-1");
    for expected in [
        ExpectedRevision::Any,
        ExpectedRevision::NoStream,
        ExpectedRevision::Exact(1),
    ] {
        fixture.refused(
            |store| store.append("known-1", expected, vec![event()]).wait(),
            tombstoned,
        );
        fixture.refused(
            |store| store.append("known-1", expected, Vec::new()).wait(),
            tombstoned,
        );
    }
    let parts = vec![
        StreamAppend::new("fresh-1", ExpectedRevision::Any, vec![event()]),
        StreamAppend::new("known-1", ExpectedRevision::Any, vec![event()]),
    ];
    fixture.refused(|store| store.append_multi(parts).wait(), tombstoned);
    fixture.refused(
        |store| store.delete("known-1", ExpectedRevision::Any).wait(),
        tombstoned,
    );
    fixture.refused(
        |store| store.tombstone("known-1", ExpectedRevision::Any).wait(),
        tombstoned,
    );
    fixture.refused(
        |store| {
            store
                .set_metadata("known-1", ExpectedRevision::Any, StreamMetadata::default())
                .wait()
        },
        tombstoned,
    );
    fixture.refused(
        |store| {
            store.read(&ReadRequest::forwards(
                ReadSource::Stream("known-1".into()),
                10,
            ))
        },
        tombstoned,
    );
    assert_eq!(
        store.stream_info("fresh-1"),
        None,
        "the failed multi-append created nothing"
    );
}

#[test]
fn wrong_expected_revision_reports_the_current_revision() {
    let fixture = Fixture::new();
    let wrong = |stream: &'static str, expected: ExpectedRevision, current: CurrentRevision| {
        move |error: &Error| {
            *error
                == Error::WrongExpectedRevision {
                    stream: stream.to_owned(),
                    expected,
                    current,
                }
        }
    };
    let at_1 = CurrentRevision::Revision(1);
    for expected in [
        ExpectedRevision::Exact(0),
        ExpectedRevision::Exact(2),
        ExpectedRevision::NoStream,
    ] {
        fixture.refused(
            |store| store.append("known-1", expected, vec![event()]).wait(),
            wrong("known-1", expected, at_1),
        );
        // An empty append only checks the expectation.
        fixture.refused(
            |store| store.append("known-1", expected, Vec::new()).wait(),
            wrong("known-1", expected, at_1),
        );
        fixture.refused(
            |store| store.delete("known-1", expected).wait(),
            wrong("known-1", expected, at_1),
        );
        fixture.refused(
            |store| store.tombstone("known-1", expected).wait(),
            wrong("known-1", expected, at_1),
        );
    }
    for expected in [ExpectedRevision::Exact(0), ExpectedRevision::StreamExists] {
        let none = CurrentRevision::NoStream;
        fixture.refused(
            |store| store.append("new-1", expected, vec![event()]).wait(),
            wrong("new-1", expected, none),
        );
    }
    // One failing part fails the whole multi-stream append.
    let parts = vec![
        StreamAppend::new("new-1", ExpectedRevision::NoStream, vec![event()]),
        StreamAppend::new("known-1", ExpectedRevision::Exact(5), vec![event()]),
    ];
    fixture.refused(
        |store| store.append_multi(parts).wait(),
        wrong("known-1", ExpectedRevision::Exact(5), at_1),
    );
    // Metadata has its own revision.
    fixture.refused(
        |store| {
            store
                .set_metadata(
                    "known-1",
                    ExpectedRevision::Exact(0),
                    StreamMetadata::default(),
                )
                .wait()
        },
        |error| {
            matches!(
                error,
                Error::WrongExpectedRevision {
                    current: CurrentRevision::NoStream,
                    ..
                }
            )
        },
    );
    // And the empty append whose expectation holds answers without writing.
    let before = fixture.snapshot();
    assert_eq!(
        fixture
            .store
            .append("known-1", ExpectedRevision::Exact(1), Vec::new())
            .wait(),
        Ok(AppendResult {
            current: at_1,
            positions: None,
            idempotent_replay: false
        })
    );
    assert_eq!(fixture.snapshot(), before);
}

#[test]
fn reusing_an_event_id_in_another_stream_is_duplicate_event_id() {
    let fixture = Fixture::new();
    let page = fixture
        .store
        .read(&ReadRequest::forwards(
            ReadSource::Stream("known-1".into()),
            10,
        ))
        .expect("read");
    let taken = page.events[1].id;
    let mut reused = event();
    reused.id = taken;
    let duplicate = |error: &Error| {
        *error
            == Error::DuplicateEventId {
                event_id: taken,
                stream: "known-1".into(),
                revision: 1,
            }
    };
    fixture.refused(
        |store| {
            store
                .append(
                    "other-1",
                    ExpectedRevision::Any,
                    vec![event(), reused.clone()],
                )
                .wait()
        },
        duplicate,
    );
    // The id in its own stream, but among new events or out of order: not a retry.
    fixture.refused(
        |store| {
            store
                .append(
                    "known-1",
                    ExpectedRevision::Any,
                    vec![event(), reused.clone()],
                )
                .wait()
        },
        duplicate,
    );
    fixture.refused(
        |store| {
            store
                .append(
                    "known-1",
                    ExpectedRevision::Any,
                    vec![reused.clone(), event()],
                )
                .wait()
        },
        duplicate,
    );
    let mut first = event();
    first.id = page.events[0].id;
    fixture.refused(
        |store| {
            store
                .append(
                    "known-1",
                    ExpectedRevision::Any,
                    vec![reused.clone(), first],
                )
                .wait()
        },
        duplicate,
    );
    let parts = vec![
        StreamAppend::new("other-1", ExpectedRevision::Any, vec![event()]),
        StreamAppend::new("other-2", ExpectedRevision::Any, vec![reused]),
    ];
    fixture.refused(|store| store.append_multi(parts).wait(), duplicate);
}

#[test]
fn invalid_custom_metadata_json_is_an_invalid_argument() {
    let fixture = Fixture::new();
    for custom in ["{not json", "", "{\"a\":1} trailing"] {
        let metadata = StreamMetadata {
            custom: Some(custom.to_owned()),
            ..StreamMetadata::default()
        };
        fixture.refused(
            |store| {
                store
                    .set_metadata("known-1", ExpectedRevision::Any, metadata)
                    .wait()
            },
            |error| matches!(error, Error::InvalidArgument(_)),
        );
    }
    let metadata = StreamMetadata {
        custom: Some(r#"{"owner":"shop"}"#.into()),
        ..StreamMetadata::default()
    };
    assert_eq!(
        fixture
            .store
            .set_metadata("known-1", ExpectedRevision::NoStream, metadata.clone())
            .wait(),
        Ok(0)
    );
    assert_eq!(
        fixture
            .store
            .stream_info("known-1")
            .map(|info| info.metadata),
        Some(metadata)
    );
}
