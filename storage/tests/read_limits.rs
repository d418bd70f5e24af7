//! What one storage call may cost: byte budgets on every read path (a page
//! ends after the event that reaches `max_bytes`, and paging neither skips nor
//! repeats), the scan bound in bytes, the filter limits and the prefix matcher
//! at its limit, the metadata size limit, and listings paged by bytes.

use cairn_storage::{
    Direction, Durability, Error, EventData, ExpectedRevision, MAX_FILTER_PREFIXES, ReadFilter,
    ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store, StoreOptions, StreamMetadata,
};
use cairn_testkit::try_read_all;

fn open(dir: &tempfile::TempDir) -> Store {
    let options = StoreOptions {
        durability: Durability::Unsynced,
        ..StoreOptions::default()
    };
    Store::open(dir.path(), options).expect("open")
}

/// An event of type `type` whose data is `size` bytes.
fn sized(event_type: &str, size: usize) -> EventData {
    EventData::json(event_type, vec![b'7'; size])
}

/// Identity of an event for comparing reads.
fn ids(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.position).collect()
}

/// Reads every page of `request` and checks the byte rule on each: a page
/// is never empty while the read goes on, and every event but the last is
/// below the budget (the page ends after the event that reaches it).
fn read_in_pages(store: &Store, mut request: ReadRequest) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    loop {
        let page = store.read(&request).expect("read");
        let sizes: Vec<usize> = page.events.iter().map(RecordedEvent::size).collect();
        if let Some((_, before_last)) = sizes.split_last() {
            let below: usize = before_last.iter().sum();
            assert!(
                below < request.max_bytes,
                "the page went on after reaching its budget: {sizes:?} for {} ({request:?})",
                request.max_bytes
            );
        }
        assert!(page.events.len() <= request.max_count);
        events.extend(page.events);
        let Some(next) = page.next else {
            return events;
        };
        request.from = ReadFrom::At(next);
    }
}

#[test]
fn byte_budgets_page_every_read_path_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    // Mixed sizes in two categories and two types, in several appends.
    let mut size = 1usize;
    for round in 0..12 {
        for stream in ["big-1", "big-2", "small-1"] {
            let events = (0..4)
                .map(|n| {
                    size = (size * 7 + 13) % 5000;
                    let event_type = if (round + n) % 3 == 0 {
                        "Rare"
                    } else {
                        "Common"
                    };
                    sized(event_type, size)
                })
                .collect();
            store
                .append(stream, ExpectedRevision::Any, events)
                .wait()
                .expect("append");
        }
    }
    let sources = [
        ReadSource::All,
        ReadSource::Stream("big-2".into()),
        ReadSource::Category("big".into()),
        ReadSource::EventType("Rare".into()),
    ];
    let filters = [
        ReadFilter::default(),
        ReadFilter {
            stream_prefixes: vec!["big-1".into(), "small".into()],
            ..ReadFilter::default()
        },
    ];
    for source in &sources {
        for filter in &filters {
            for direction in [Direction::Forwards, Direction::Backwards] {
                let whole = ReadRequest {
                    source: source.clone(),
                    direction,
                    from: match direction {
                        Direction::Forwards => ReadFrom::Start,
                        Direction::Backwards => ReadFrom::End,
                    },
                    max_count: 10_000,
                    max_bytes: usize::MAX,
                    filter: filter.clone(),
                };
                let expected = ids(&try_read_all(&store, whole.clone()).expect("whole read"));
                assert!(
                    !expected.is_empty() || !filter.is_empty(),
                    "{source:?} has events"
                );
                for max_bytes in [1, 100, 2_000, 6_000, 30_000] {
                    for max_count in [1, 3, 1000] {
                        let request = ReadRequest {
                            max_count,
                            max_bytes,
                            ..whole.clone()
                        };
                        let paged = ids(&read_in_pages(&store, request));
                        assert_eq!(
                            paged, expected,
                            "{source:?} {direction:?} {filter:?} max_bytes {max_bytes} max_count {max_count}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn one_call_examines_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    const MIB: usize = 1024 * 1024;
    for _ in 0..40 {
        store
            .append("big-1", ExpectedRevision::Any, vec![sized("Big", 3 * MIB)])
            .wait()
            .expect("append");
    }
    store
        .append("wanted-1", ExpectedRevision::Any, vec![sized("Wanted", 10)])
        .wait()
        .expect("append");
    // A filter that none of the 40 large records passes: without a bound in
    // bytes one call reads all 120 MiB (the count bound is 4096 records).
    let filter = ReadFilter {
        stream_prefixes: vec!["wanted-".into()],
        ..ReadFilter::default()
    };
    let mut request = ReadRequest::forwards(ReadSource::All, 100)
        .filter(filter)
        .max_bytes(MIB);
    let mut found = Vec::new();
    let mut calls = 0;
    loop {
        let before = store.read_stats();
        let page = store.read(&request).expect("read");
        let after = store.read_stats();
        calls += 1;
        let examined = after.bytes_examined - before.bytes_examined;
        assert!(
            examined <= (64 + 3) as u64 * MIB as u64,
            "one call examined {examined} bytes"
        );
        found.extend(page.events);
        match page.next {
            Some(next) => request.from = ReadFrom::At(next),
            None => break,
        }
    }
    assert_eq!(found.len(), 1, "the one matching event is found");
    assert_eq!(found[0].stream, "wanted-1");
    assert!(calls >= 2, "the scan was split into several calls");
}

#[test]
fn filters_beyond_the_limits_are_refused_and_many_prefixes_match_correctly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    for n in 0..50 {
        store
            .append(
                format!("s{n:03}-x"),
                ExpectedRevision::Any,
                vec![sized("T", 1)],
            )
            .wait()
            .expect("append");
    }
    let too_many = ReadFilter {
        stream_prefixes: (0..=MAX_FILTER_PREFIXES).map(|n| format!("p{n}")).collect(),
        ..ReadFilter::default()
    };
    let refused = store.read(&ReadRequest::forwards(ReadSource::All, 10).filter(too_many));
    assert!(
        matches!(refused, Err(Error::LimitExceeded { .. })),
        "{refused:?}"
    );

    // At the limit: every even stream by its exact name plus many prefixes
    // that match nothing, and one prefix that covers longer ones.
    let mut prefixes: Vec<String> = (0..50).step_by(2).map(|n| format!("s{n:03}")).collect();
    prefixes.extend((0..900).map(|n| format!("zz{n}")));
    prefixes.push("s04".into()); // covers s040..s049
    let filter = ReadFilter {
        stream_prefixes: prefixes,
        ..ReadFilter::default()
    };
    assert!(filter.validate().is_ok());
    let matched: Vec<String> = try_read_all(
        &store,
        ReadRequest::forwards(ReadSource::All, 1000).filter(filter.clone()),
    )
    .expect("read")
    .into_iter()
    .map(|event| event.stream)
    .collect();
    let expected: Vec<String> = (0..50)
        .filter(|n| n % 2 == 0 || (40..50).contains(n))
        .map(|n| format!("s{n:03}-x"))
        .collect();
    assert_eq!(matched, expected);
}

#[test]
fn oversized_metadata_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    let limit = store.limits().max_metadata_bytes;
    assert_eq!(limit, 64 * 1024, "the default");
    let custom = |bytes: usize| StreamMetadata {
        custom: Some(format!("\"{}\"", "x".repeat(bytes - 2))),
        ..StreamMetadata::default()
    };
    store
        .set_metadata("meta-1", ExpectedRevision::NoStream, custom(limit))
        .wait()
        .expect("metadata at the limit");
    let refused = store
        .set_metadata("meta-1", ExpectedRevision::Any, custom(limit + 1))
        .wait();
    assert!(
        matches!(refused, Err(Error::LimitExceeded { actual, .. }) if actual == (limit + 1) as u64),
        "{refused:?}"
    );
    let info = store.stream_info("meta-1").expect("stream info");
    assert_eq!(info.metadata_revision, Some(0), "nothing was written");
    assert_eq!(info.metadata, custom(limit));
    let fresh = store
        .set_metadata("meta-2", ExpectedRevision::Any, custom(15 * 1024 * 1024))
        .wait();
    assert!(matches!(fresh, Err(Error::LimitExceeded { .. })));
    assert!(store.stream_info("meta-2").is_none(), "nothing was written");
}

#[test]
fn listings_are_paged_by_bytes_and_continue_after_the_last_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    for n in 0..40 {
        store
            .set_metadata(
                format!("list-{n:02}"),
                ExpectedRevision::Any,
                StreamMetadata {
                    custom: Some(format!("\"{}\"", "m".repeat(40 * 1024))),
                    ..StreamMetadata::default()
                },
            )
            .wait()
            .expect("metadata");
    }
    store
        .set_metadata("other", ExpectedRevision::Any, StreamMetadata::default())
        .wait()
        .expect("metadata");
    let budget = 200 * 1024;
    let mut after: Option<String> = None;
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .list_streams_page("list-", after.as_deref(), 1000, budget)
            .expect("list");
        pages += 1;
        let sizes: Vec<usize> = page
            .streams
            .iter()
            .map(|info| info.name.len() + info.metadata.custom.as_ref().map_or(0, String::len))
            .collect();
        let (_, before_last) = sizes.split_last().expect("a page holds a stream");
        assert!(before_last.iter().sum::<usize>() < budget, "{sizes:?}");
        names.extend(page.streams.iter().map(|info| info.name.clone()));
        if !page.more {
            break;
        }
        after = names.last().cloned();
    }
    let expected: Vec<String> = (0..40).map(|n| format!("list-{n:02}")).collect();
    assert_eq!(names, expected);
    assert!(pages >= 7, "{pages} pages of at most 5 streams each");
    // The count bound still holds, and `more` is exact at the end.
    let page = store
        .list_streams_page("list-", Some("list-37"), 2, usize::MAX)
        .expect("list");
    assert_eq!(page.streams.len(), 2);
    assert!(!page.more);
    let page = store
        .list_streams_page("list-", Some("list-36"), 2, usize::MAX)
        .expect("list");
    assert!(page.more);
}

/// The live ring holds what it counts: an event whose data and metadata are
/// small slices of a large buffer (as a transport hands them over, slices of
/// its whole decode buffer) does not keep that buffer alive in the ring.
#[test]
fn the_live_ring_does_not_pin_the_buffers_events_arrived_in() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir);
    let arrived = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    let range = arrived.as_ptr() as usize..arrived.as_ptr() as usize + arrived.len();
    let mut event = EventData::json("Sliced", arrived.slice(0..16));
    event.metadata = arrived.slice(16..32);
    store
        .append("sliced-1", ExpectedRevision::NoStream, vec![event])
        .wait()
        .expect("append");
    let ring = store.live().read_from(0, 10).expect("the ring holds it");
    assert_eq!(ring.len(), 1);
    let held = &ring[0];
    assert_eq!(&held.data[..], &arrived[0..16]);
    assert_eq!(&held.metadata[..], &arrived[16..32]);
    for (name, field) in [("data", &held.data), ("metadata", &held.metadata)] {
        assert!(
            !range.contains(&(field.as_ptr() as usize)),
            "the ring's {name} is a slice of the 1 MiB buffer the event arrived in"
        );
    }
}
