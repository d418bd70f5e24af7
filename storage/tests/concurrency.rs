//! Concurrent writers on shared streams: optimistic concurrency lets exactly one
//! writer win each revision, nothing acknowledged is lost, nothing is written
//! twice, and `$all` stays gap-free. Also what callers see during shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_storage::{
    CurrentRevision, Durability, Error, EventData, ExpectedRevision, ReadRequest, ReadSource,
    RecordedEvent, Store, StoreOptions, StreamMetadata,
};
use cairn_testkit::try_read_all;
use uuid::Uuid;

const THREADS: usize = 8;
const STREAMS: usize = 4;
const EVENTS: usize = 2_000;

fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durability: Durability::Unsynced,
            ..StoreOptions::default()
        },
    )
    .expect("open")
}

/// Reads a whole source forwards in pages of 333: an odd size, so page
/// boundaries also fall between the two halves of a multi-stream append.
fn read_all(store: &Store, source: ReadSource) -> Vec<RecordedEvent> {
    try_read_all(store, ReadRequest::forwards(source, 333)).expect("read")
}

/// An acknowledged append, as the writer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    revision: u64,
    position: u64,
    id: Uuid,
}

#[test]
fn one_winner_per_revision_and_no_lost_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let claimed = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let store = store.clone();
            let claimed = Arc::clone(&claimed);
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let mut conflicts = 0usize;
                // What this writer believes each stream is at; refreshed from the
                // errors it gets, so it is often stale.
                let mut known: HashMap<String, CurrentRevision> = HashMap::new();
                let mut turn = thread;
                // Each claimed slot is one event that must end up written exactly once.
                while claimed.fetch_add(1, Ordering::SeqCst) < EVENTS {
                    turn += 1;
                    let stream = format!("acct-{}", turn % STREAMS);
                    let event = EventData::json("Deposited", format!(r#"{{"writer":{thread}}}"#));
                    loop {
                        let current = *known.entry(stream.clone()).or_insert_with(|| {
                            store
                                .stream_info(&stream)
                                .map_or(CurrentRevision::NoStream, |info| info.current())
                        });
                        let expected = match current {
                            CurrentRevision::NoStream => ExpectedRevision::NoStream,
                            CurrentRevision::Revision(revision) => {
                                ExpectedRevision::Exact(revision)
                            }
                        };
                        // The same event (same id) is resent after a conflict: a
                        // refused append must not have written it.
                        match store
                            .append(stream.as_str(), expected, vec![event.clone()])
                            .wait()
                        {
                            Ok(result) => {
                                assert!(!result.idempotent_replay, "a first write is not a replay");
                                let (first, last) = result.positions.expect("positions");
                                assert_eq!(first, last);
                                let revision = result.current.revision().expect("revision");
                                let next = match current {
                                    CurrentRevision::NoStream => 0,
                                    CurrentRevision::Revision(revision) => revision + 1,
                                };
                                assert_eq!(
                                    revision, next,
                                    "the append landed right after what it expected"
                                );
                                known.insert(stream.clone(), result.current);
                                acks.push(Ack {
                                    stream: stream.clone(),
                                    revision,
                                    position: first,
                                    id: event.id,
                                });
                                break;
                            }
                            Err(Error::WrongExpectedRevision {
                                current: actual,
                                expected: sent,
                                stream: name,
                            }) => {
                                assert_eq!(name, stream);
                                assert_eq!(sent, expected);
                                assert_ne!(
                                    actual, current,
                                    "a conflict reports where the stream really is"
                                );
                                conflicts += 1;
                                known.insert(stream.clone(), actual);
                            }
                            Err(error) => panic!("append failed: {error}"),
                        }
                    }
                }
                (acks, conflicts)
            })
        })
        .collect();
    let mut acks = Vec::new();
    let mut conflicts = 0;
    for writer in writers {
        let (mine, theirs) = writer.join().expect("writer thread");
        acks.extend(mine);
        conflicts += theirs;
    }
    eprintln!("{} acknowledged appends, {conflicts} conflicts", acks.len());
    assert_eq!(
        acks.len(),
        EVENTS,
        "one acknowledged append per claimed slot"
    );

    // Exactly one winner per (stream, revision), every id once.
    let slots: HashSet<(&str, u64)> = acks
        .iter()
        .map(|ack| (ack.stream.as_str(), ack.revision))
        .collect();
    assert_eq!(
        slots.len(),
        acks.len(),
        "two appends were acknowledged at the same revision"
    );
    let ids: HashSet<Uuid> = acks.iter().map(|ack| ack.id).collect();
    assert_eq!(ids.len(), acks.len(), "an event id was acknowledged twice");
    let positions: HashSet<u64> = acks.iter().map(|ack| ack.position).collect();
    assert_eq!(
        positions.len(),
        acks.len(),
        "two appends were acknowledged at the same position"
    );

    // What is stored is exactly what was acknowledged.
    let check = |store: &Store| {
        assert_eq!(
            store.info().head,
            EVENTS as u64,
            "head = number of acknowledged events"
        );
        let all = read_all(store, ReadSource::All);
        let stored: Vec<u64> = all.iter().map(|event| event.position).collect();
        assert_eq!(
            stored,
            (0..EVENTS as u64).collect::<Vec<_>>(),
            "$all is gap-free"
        );
        let by_position: HashMap<u64, &RecordedEvent> =
            all.iter().map(|event| (event.position, event)).collect();
        for ack in &acks {
            let event = by_position[&ack.position];
            assert_eq!(
                (&event.stream, event.revision, event.id),
                (&ack.stream, ack.revision, ack.id),
                "acknowledged event at {}",
                ack.position
            );
        }
        let mut total = 0;
        for stream in 0..STREAMS {
            let name = format!("acct-{stream}");
            let events = read_all(store, ReadSource::Stream(name.clone()));
            let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
            assert_eq!(
                revisions,
                (0..events.len() as u64).collect::<Vec<_>>(),
                "{name} is gap-free"
            );
            assert!(
                events
                    .windows(2)
                    .all(|pair| pair[0].position < pair[1].position),
                "{name} in position order"
            );
            total += events.len();
        }
        assert_eq!(total, EVENTS);
        assert_eq!(
            read_all(store, ReadSource::Category("acct".into())).len(),
            EVENTS,
            "$ce-acct"
        );
        assert_eq!(
            read_all(store, ReadSource::EventType("Deposited".into())).len(),
            EVENTS,
            "$et-Deposited"
        );
    };
    check(&store);
    drop(store);
    check(&open(dir.path()));
}

#[test]
fn writes_after_shutdown_are_refused_and_reads_still_work() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            vec![EventData::json("A", "{}")],
        )
        .wait()
        .expect("append");
    let other = store.clone();
    store.shutdown();

    for handle in [&store, &other] {
        assert_eq!(
            handle
                .append(
                    "s-1",
                    ExpectedRevision::Any,
                    vec![EventData::json("A", "{}")]
                )
                .wait(),
            Err(Error::ShuttingDown)
        );
        assert_eq!(
            handle
                .append_multi(vec![cairn_storage::StreamAppend::new(
                    "s-2",
                    ExpectedRevision::Any,
                    Vec::new()
                )])
                .wait(),
            Err(Error::ShuttingDown)
        );
        assert_eq!(
            handle.delete("s-1", ExpectedRevision::Any).wait(),
            Err(Error::ShuttingDown)
        );
        assert_eq!(
            handle.tombstone("s-1", ExpectedRevision::Any).wait(),
            Err(Error::ShuttingDown)
        );
        assert_eq!(
            handle
                .set_metadata("s-1", ExpectedRevision::Any, StreamMetadata::default())
                .wait(),
            Err(Error::ShuttingDown)
        );
    }
    // Validation still comes first: a bad request is told what is wrong with it.
    assert!(matches!(
        store
            .append("", ExpectedRevision::Any, vec![EventData::json("A", "{}")])
            .wait(),
        Err(Error::InvalidArgument(_))
    ));
    store.shutdown();
    assert_eq!(store.info().head, 1);
    assert_eq!(
        read_all(&store, ReadSource::Stream("s-1".into())).len(),
        1,
        "reads work after shutdown"
    );
}

#[test]
fn shutdown_answers_everything_already_queued() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let tickets: Vec<_> = (0..500)
        .map(|n| {
            store.append(
                format!("q-{}", n % 5),
                ExpectedRevision::Any,
                vec![EventData::json("Q", "{}")],
            )
        })
        .collect();
    store.shutdown();
    let mut positions = Vec::new();
    for ticket in tickets {
        let result = ticket
            .wait()
            .expect("a request queued before shutdown is committed");
        positions.push(result.positions.expect("positions").0);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..500).collect::<Vec<_>>());
    assert_eq!(store.info().head, 500);
    assert_eq!(read_all(&store, ReadSource::All).len(), 500);
    drop(store);
    assert_eq!(
        open(dir.path()).info().head,
        500,
        "everything answered is on disk"
    );
}

#[test]
fn concurrent_readers_see_prefixes_of_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for n in 0..1_000u64 {
                let parts = vec![
                    cairn_storage::StreamAppend::new(
                        "left-1",
                        ExpectedRevision::Any,
                        vec![EventData::json("L", "{}")],
                    ),
                    cairn_storage::StreamAppend::new(
                        "right-1",
                        ExpectedRevision::Any,
                        vec![EventData::json("R", "{}")],
                    ),
                ];
                let results = store.append_multi(parts).wait().expect("append");
                assert_eq!(results[0].current, CurrentRevision::Revision(n));
            }
        })
    };
    // Multi-stream appends are atomic for readers too: a read never sees one half.
    let mut reads = 0;
    loop {
        let done = writer.is_finished();
        let all = read_all(&store, ReadSource::All);
        assert_eq!(all.len() % 2, 0, "a read saw half of a multi-stream append");
        for (index, event) in all.iter().enumerate() {
            assert_eq!(
                event.position, index as u64,
                "$all is gap-free while written"
            );
        }
        for pair in all.chunks(2) {
            assert_eq!(
                (pair[0].stream.as_str(), pair[1].stream.as_str()),
                ("left-1", "right-1")
            );
            assert_eq!(pair[0].revision, pair[1].revision);
        }
        reads += 1;
        if done {
            break;
        }
    }
    writer.join().expect("writer");
    assert!(reads > 0);
    assert_eq!(store.info().head, 2_000);
}
