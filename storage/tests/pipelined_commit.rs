//! The two-stage committer: the preparer checks requests against the group the
//! writer is still writing (the in-flight group), and the results are the ones
//! a one-group-at-a-time committer would give.
//!
//! To hold a group in flight, a "plug" append stops the writer inside the
//! `StoreOptions::write_fault` hook until the test releases it; the preparer
//! is not held and prepares what the test submits meanwhile into the next
//! group. (The preparer's progress is not observable from outside, so each
//! test gives it a moment before the release; every assertion holds whatever
//! the interleaving, and fails if the preparer's lookups miss the in-flight
//! group.)

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_storage::{
    AppendCondition, AppendResult, CurrentRevision, Durability, Error, EventData, ExpectedRevision,
    Query, QueryItem, ReadRequest, ReadSource, RecordedEvent, Store, StoreOptions, StreamAppend,
    Ticket, WriteFault,
};
use uuid::Uuid;

/// The message of the injected write failure.
const FAULT: &str = "injected write failure";
/// How long a test waits for something that, when the code is right, happens at
/// once. Only a failing test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(30);
/// The moment the preparer is given to take what was submitted before a plug
/// is released (see the module doc: not an assertion, only the interleaving).
const SETTLE: Duration = Duration::from_millis(50);

/// The hook's state, shared between the writer thread and the test.
#[derive(Default)]
struct Faults {
    /// Whether writes fail with [`FAULT`], decided when a group reaches the hook.
    fail: Mutex<bool>,
    /// Set by [`plug`]: the next group's write waits here (signals the first
    /// sender on arrival, goes on once the receiver gets a message or closes).
    plug: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Faults {
    fn hook(self: &Arc<Self>) -> WriteFault {
        let faults = Arc::clone(self);
        WriteFault::new(move |_| {
            let fail = *lock(&faults.fail);
            let plug = lock(&faults.plug).take();
            if let Some((arrived, release)) = plug {
                let _ = arrived.send(());
                let _ = release.recv();
            }
            fail.then(|| FAULT.to_owned())
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A writer held inside the hook with the group of one request.
struct Plug<T> {
    release: mpsc::Sender<()>,
    ticket: Ticket<T>,
}

impl<T> Plug<T> {
    /// Gives the preparer a moment, lets the writer go on, returns the plugged
    /// request's answer.
    fn release(self) -> Result<T, Error> {
        std::thread::sleep(SETTLE);
        let _ = self.release.send(());
        self.ticket.wait()
    }
}

/// Submits a request with `submit` and returns once the writer is inside the
/// hook with its group: that group is in flight until released.
fn plug<T>(faults: &Faults, submit: impl FnOnce() -> Ticket<T>) -> Plug<T> {
    let (arrived, arrival) = mpsc::channel();
    let (release, released) = mpsc::channel();
    *lock(&faults.plug) = Some((arrived, released));
    let ticket = submit();
    arrival
        .recv_timeout(PATIENCE)
        .expect("the writer reaches the hook with the plug's group");
    Plug { release, ticket }
}

fn open(dir: &std::path::Path, faults: Option<&Arc<Faults>>) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durability: Durability::Unsynced,
            write_fault: faults.map(Faults::hook),
            ..StoreOptions::default()
        },
    )
    .expect("open")
}

/// A store on a new directory whose writer passes every group through a
/// [`Faults`] hook (to [`plug`] or fail it), with `before` already appended
/// and acknowledged: one event of the type given to each stream, in order,
/// at positions 0, 1, ...
fn hooked_store(before: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Faults>, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Arc::new(Faults::default());
    let store = open(dir.path(), Some(&faults));
    for (stream, event_type) in before {
        store
            .append(*stream, ExpectedRevision::NoStream, vec![event(event_type)])
            .wait()
            .unwrap_or_else(|error| panic!("{event_type} to {stream} before the test: {error}"));
    }
    (dir, faults, store)
}

fn event(event_type: &str) -> EventData {
    EventData::json(event_type, r#"{"n":1}"#)
}

fn read_all(store: &Store, source: ReadSource) -> Result<Vec<RecordedEvent>, Error> {
    cairn_testkit::try_read_all(store, ReadRequest::forwards(source, 100))
}

fn stream(name: &str) -> ReadSource {
    ReadSource::Stream(name.to_owned())
}

#[track_caller]
fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Poisoned(message)) => assert!(
            message.contains(FAULT),
            "the poison names its cause: {message}"
        ),
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn expectations_are_checked_against_the_in_flight_group() {
    let (_dir, faults, store) = hooked_store(&[]);
    // r0 of "s" is in flight while the next three are prepared.
    let first = plug(&faults, || {
        store.append("s", ExpectedRevision::NoStream, vec![event("A")])
    });
    let second = store.append("s", ExpectedRevision::Exact(0), vec![event("B")]);
    let stale = store.append("s", ExpectedRevision::NoStream, vec![event("C")]);
    let third = store.append("s", ExpectedRevision::Exact(1), vec![event("D")]);
    let first = first.release().expect("the plugged append");
    assert_eq!(first.positions, Some((0, 0)));
    let second = second
        .wait()
        .expect("Exact(0) holds against the in-flight r0");
    assert_eq!(
        (second.current, second.positions),
        (CurrentRevision::Revision(1), Some((1, 1)))
    );
    assert_eq!(
        stale.wait(),
        Err(Error::WrongExpectedRevision {
            stream: "s".to_owned(),
            expected: ExpectedRevision::NoStream,
            current: CurrentRevision::Revision(1),
        })
    );
    let third = third.wait().expect("Exact(1) holds");
    assert_eq!(third.positions, Some((2, 2)));
    let types: Vec<String> = read_all(&store, stream("s"))
        .expect("read s")
        .into_iter()
        .map(|event| event.event_type)
        .collect();
    assert_eq!(types, ["A", "B", "D"]);
}

#[test]
fn many_writers_with_exact_expectations_on_shared_streams() {
    const WRITERS: usize = 8;
    const APPENDS: usize = 40;
    const STREAMS: usize = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                // What this writer believes each stream's revision is.
                let mut known = [CurrentRevision::NoStream; STREAMS];
                for n in 0..APPENDS {
                    let target = (writer + n) % STREAMS;
                    let name = format!("shared-{target}");
                    loop {
                        let expected = match known[target] {
                            CurrentRevision::NoStream => ExpectedRevision::NoStream,
                            CurrentRevision::Revision(revision) => {
                                ExpectedRevision::Exact(revision)
                            }
                        };
                        let data = event("Shared");
                        let id = data.id;
                        match store.append(name.clone(), expected, vec![data]).wait() {
                            Ok(result) => {
                                known[target] = result.current;
                                acknowledged.push((name.clone(), id, result));
                                break;
                            }
                            Err(Error::WrongExpectedRevision { current, .. }) => {
                                known[target] = current;
                            }
                            Err(other) => panic!("append failed: {other:?}"),
                        }
                    }
                }
                acknowledged
            })
        })
        .collect();
    let acknowledged: Vec<(String, Uuid, AppendResult)> = writers
        .into_iter()
        .flat_map(|writer| writer.join().expect("writer thread"))
        .collect();
    assert_eq!(acknowledged.len(), WRITERS * APPENDS);

    let all = read_all(&store, ReadSource::All).expect("read $all");
    let positions: Vec<u64> = all.iter().map(|event| event.position).collect();
    assert_eq!(positions, (0..all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len(), acknowledged.len(), "only acknowledged appends");
    let by_id: HashMap<Uuid, &RecordedEvent> = all.iter().map(|event| (event.id, event)).collect();
    for (name, id, result) in &acknowledged {
        let stored = by_id
            .get(id)
            .expect("every acknowledged append is readable");
        assert_eq!(&stored.stream, name);
        assert_eq!(result.positions, Some((stored.position, stored.position)));
        assert_eq!(result.current, CurrentRevision::Revision(stored.revision));
    }
    for target in 0..STREAMS {
        let revisions: Vec<u64> = read_all(&store, stream(&format!("shared-{target}")))
            .expect("read stream")
            .iter()
            .map(|event| event.revision)
            .collect();
        assert_eq!(revisions, (0..revisions.len() as u64).collect::<Vec<_>>());
    }
}

#[test]
fn a_retry_of_an_in_flight_append_returns_the_original_result() {
    let (_dir, faults, store) = hooked_store(&[]);
    let events = vec![event("Placed"), event("Paid")];
    // The original is in flight; the retry is prepared against it.
    let original = plug(&faults, || {
        store.append("order", ExpectedRevision::NoStream, events.clone())
    });
    let retry = store.append("order", ExpectedRevision::NoStream, events.clone());
    // A second pair submitted back to back: both in the open group.
    let more = vec![event("Shipped")];
    let next = store.append("order", ExpectedRevision::Exact(1), more.clone());
    let next_retry = store.append("order", ExpectedRevision::Exact(1), more.clone());

    let original = original.release().expect("original");
    assert_eq!(
        (original.positions, original.idempotent_replay),
        (Some((0, 1)), false)
    );
    let retry = retry.wait().expect("retry");
    assert_eq!(
        (retry.current, retry.positions, retry.idempotent_replay),
        (CurrentRevision::Revision(1), Some((0, 1)), true)
    );
    let next = next.wait().expect("next");
    let next_retry = next_retry.wait().expect("retry of next");
    assert_eq!(
        (next.positions, next.idempotent_replay),
        (Some((2, 2)), false)
    );
    assert_eq!(
        (next_retry.positions, next_retry.idempotent_replay),
        (Some((2, 2)), true)
    );
    let stored: Vec<Uuid> = read_all(&store, stream("order"))
        .expect("read order")
        .iter()
        .map(|event| event.id)
        .collect();
    let written: Vec<Uuid> = events.iter().chain(&more).map(|event| event.id).collect();
    assert_eq!(stored, written, "one copy of each event");
    assert_eq!(store.info().head, 3);
}

#[test]
fn a_condition_conflicting_with_the_in_flight_group_fails_with_its_position() {
    // An unrelated event at position 0.
    let (_dir, faults, store) = hooked_store(&[("other", "Noise")]);
    let reserved = plug(&faults, || {
        store.append(
            "seats",
            ExpectedRevision::Any,
            vec![event("Reserved").with_tags(["seat:1"])],
        )
    });
    let seat_1 = AppendCondition::new(Query::of([QueryItem::tags(["seat:1"])]), Some(0));
    let conflicting = store.append_multi_if(
        vec![StreamAppend::new(
            "seats",
            ExpectedRevision::Any,
            vec![event("Reserved").with_tags(["seat:1"])],
        )],
        Some(seat_1),
    );
    let seat_2 = AppendCondition::new(Query::of([QueryItem::tags(["seat:2"])]), Some(0));
    let holding = store.append_multi_if(
        vec![StreamAppend::new(
            "seats",
            ExpectedRevision::Any,
            vec![event("Reserved").with_tags(["seat:2"])],
        )],
        Some(seat_2),
    );
    let reserved = reserved.release().expect("the plugged reservation");
    assert_eq!(reserved.positions, Some((1, 1)));
    assert_eq!(
        conflicting.wait(),
        Err(Error::AppendConditionFailed { position: 1 })
    );
    let holding = holding.wait().expect("a condition on another tag holds");
    assert_eq!(holding[0].positions, Some((2, 2)));
    assert_eq!(store.info().head, 3);
}

#[test]
fn a_failed_write_poisons_the_in_flight_and_the_open_group() {
    let (dir, faults, store) = hooked_store(&[("kept", "Kept")]);
    *lock(&faults.fail) = true;
    let in_flight = plug(&faults, || {
        store.append("lost-1", ExpectedRevision::NoStream, vec![event("Lost")])
    });
    // The open group: valid only against the in-flight group, and unrelated.
    let on_top = store.append("lost-1", ExpectedRevision::Exact(0), vec![event("Lost")]);
    let unrelated = store.append("lost-2", ExpectedRevision::NoStream, vec![event("Lost")]);
    let deleted = store.delete("kept", ExpectedRevision::Exact(0));
    assert_poisoned(in_flight.release());
    assert_poisoned(on_top.wait());
    assert_poisoned(unrelated.wait());
    assert_poisoned(deleted.wait());
    assert_poisoned(
        store
            .append("later", ExpectedRevision::Any, vec![event("Later")])
            .wait(),
    );
    assert!(matches!(store.poisoned(), Some(Error::Poisoned(_))));

    drop(store);
    let store = open(dir.path(), None);
    for lost in ["lost-1", "lost-2", "later"] {
        assert_eq!(
            read_all(&store, stream(lost)),
            Err(Error::StreamNotFound {
                stream: lost.to_owned()
            })
        );
    }
    assert_eq!(read_all(&store, stream("kept")).expect("kept").len(), 1);
    assert_eq!(store.info().head, 1);
    let appended = store
        .append("lost-1", ExpectedRevision::NoStream, vec![event("Again")])
        .wait()
        .expect("the reopened store writes");
    assert_eq!(appended.positions, Some((1, 1)));
}
