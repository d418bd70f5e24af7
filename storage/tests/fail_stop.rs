//! Fail-stop and backpressure: a failed RocksDB write or a panicking committer
//! poisons the store (every request of the group, every queued and every later
//! request gets `Poisoned`, nothing of the group is visible, a reopen recovers
//! exactly what was acknowledged), and a full committer queue answers
//! `Overloaded` at once instead of blocking the caller.
//!
//! The faults come through the `StoreOptions::write_fault` seam into a real store
//! in a temporary directory. To put several requests into one group, a "plug"
//! append holds the committer inside the hook while the test queues the rest.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::Duration;

use cairn_storage::{
    AppendResult, CurrentRevision, Durability, Error, EventData, ExpectedRevision, ReadRequest,
    ReadSource, RecordedEvent, Store, StoreOptions, StreamAppend, StreamMetadata, Ticket,
    WriteFault, WriteFaultContext,
};
use uuid::Uuid;

/// The message the failing hook gives the committer.
const FAULT: &str = "injected write failure";
/// The message the panicking hook panics with.
const PANIC: &str = "simulated committer panic";
/// How long a test waits for something that, when the code is right, happens at
/// once. Only a failing test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the hook does with a group's write.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Let the real write happen.
    Pass,
    /// Report the write as failed with [`FAULT`].
    Fail,
    /// Panic with [`PANIC`].
    Panic,
}

/// The hook's state, shared between the committer thread and the test.
struct Faults {
    mode: Mutex<Mode>,
    /// Set by [`plug`]: the next group's write waits here. The hook signals the
    /// first sender when it arrives and continues once the receiver gets a message
    /// (or its sender is dropped).
    plug: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    /// Every group the hook was asked about, in order.
    groups: Mutex<Vec<WriteFaultContext>>,
}

impl Faults {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(Mode::Pass),
            plug: Mutex::new(None),
            groups: Mutex::new(Vec::new()),
        })
    }

    fn hook(self: &Arc<Self>) -> WriteFault {
        let faults = Arc::clone(self);
        WriteFault::new(move |context| {
            lock(&faults.groups).push(*context);
            // Decided before a plug waits: the plug's own group follows the mode
            // it was submitted under, the groups queued behind it the new one.
            let mode = *lock(&faults.mode);
            let plug = lock(&faults.plug).take();
            if let Some((arrived, release)) = plug {
                let _ = arrived.send(());
                let _ = release.recv();
            }
            match mode {
                Mode::Pass => None,
                Mode::Fail => Some(FAULT.to_owned()),
                Mode::Panic => panic!("{PANIC}"),
            }
        })
    }

    fn set(&self, mode: Mode) {
        *lock(&self.mode) = mode;
    }

    fn groups(&self) -> Vec<WriteFaultContext> {
        lock(&self.groups).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A committer held inside the hook, writing the group of one append to `plug`.
struct Plug {
    release: mpsc::Sender<()>,
    ticket: Ticket<AppendResult>,
}

impl Plug {
    /// Lets the committer go on; returns the plug append's answer.
    fn release(self) -> Result<AppendResult, Error> {
        // Fails only if the hook stopped waiting already; the answer tells.
        let _ = self.release.send(());
        self.ticket.wait()
    }
}

/// Appends to `plug` and returns once the committer is inside the hook with that
/// append's group; until released, everything submitted queues up behind it.
fn plug(store: &Store, faults: &Faults) -> Plug {
    let (arrived, arrival) = mpsc::channel();
    let (release, released) = mpsc::channel();
    *lock(&faults.plug) = Some((arrived, released));
    let ticket = store.append("plug", ExpectedRevision::Any, vec![event("Plugged")]);
    arrival
        .recv_timeout(PATIENCE)
        .expect("the committer reaches the hook with the plug's group");
    Plug { release, ticket }
}

fn options(faults: &Arc<Faults>) -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        write_fault: Some(faults.hook()),
        ..StoreOptions::default()
    }
}

/// The directory reopened as a production store would be: no fault hook.
fn reopen(dir: &Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durability: Durability::Unsynced,
            ..StoreOptions::default()
        },
    )
    .expect("reopen")
}

fn event(event_type: &str) -> EventData {
    EventData::json(event_type, r#"{"n":1}"#)
}

/// Reads a whole source forwards, page by page.
fn read_all(store: &Store, source: ReadSource) -> Result<Vec<RecordedEvent>, Error> {
    cairn_testkit::try_read_all(store, ReadRequest::forwards(source, 100))
}

fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|event| event.id).collect()
}

fn stream(name: &str) -> ReadSource {
    ReadSource::Stream(name.to_owned())
}

/// Panics unless `result` is `Poisoned` with a message that mentions `cause`.
#[track_caller]
fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, Error>, cause: &str) {
    match result {
        Err(Error::Poisoned(message)) => assert!(
            message.contains(cause),
            "the poison names its cause '{cause}': {message}"
        ),
        other => panic!("expected Poisoned ({cause}), got {other:?}"),
    }
}

/// Every kind of write, each on a stream that would accept it, must be refused.
#[track_caller]
fn assert_every_write_poisoned(store: &Store, cause: &str) {
    assert_poisoned(
        store
            .append("later-1", ExpectedRevision::NoStream, vec![event("Later")])
            .wait(),
        cause,
    );
    assert_poisoned(
        store
            .append_multi(vec![StreamAppend::new(
                "later-2",
                ExpectedRevision::Any,
                vec![event("Later")],
            )])
            .wait(),
        cause,
    );
    assert_poisoned(store.delete("order-1", ExpectedRevision::Any).wait(), cause);
    assert_poisoned(
        store.tombstone("later-3", ExpectedRevision::Any).wait(),
        cause,
    );
    assert_poisoned(
        store
            .set_metadata("order-1", ExpectedRevision::Any, StreamMetadata::default())
            .wait(),
        cause,
    );
}

fn metadata(max_count: u64) -> StreamMetadata {
    StreamMetadata {
        max_count: Some(max_count),
        ..StreamMetadata::default()
    }
}

/// What the store must show of the acknowledged writes of
/// `a_failed_write_poisons_the_group_and_every_later_write`, before and after a
/// reopen.
#[track_caller]
fn assert_only_acknowledged(store: &Store, order_1: &[Uuid], order_2: &[Uuid], plug: Uuid) {
    assert_eq!(
        ids(&read_all(store, stream("order-1")).expect("read")),
        order_1
    );
    assert_eq!(
        ids(&read_all(store, stream("order-2")).expect("read")),
        order_2
    );
    for never_written in ["order-3", "order-4", "order-5"] {
        assert_eq!(
            read_all(store, stream(never_written)),
            Err(Error::StreamNotFound {
                stream: never_written.to_owned()
            }),
        );
        assert_eq!(store.stream_info(never_written), None);
    }
    let order_1_info = store.stream_info("order-1").expect("order-1 exists");
    assert_eq!(order_1_info.metadata_revision, Some(0));
    assert_eq!(order_1_info.metadata, metadata(10));
    let mut all = order_1.to_vec();
    all.extend(order_2);
    all.push(plug);
    let stored = read_all(store, ReadSource::All).expect("read $all");
    assert_eq!(ids(&stored), all);
    let positions: Vec<u64> = stored.iter().map(|event| event.position).collect();
    assert_eq!(positions, (0..4).collect::<Vec<_>>());
    assert_eq!(store.info().head, 4);
}

#[test]
fn a_failed_write_poisons_the_group_and_every_later_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let store = Store::open(dir.path(), options(&faults)).expect("open");

    // Acknowledged before the failure.
    let (first, second, third) = (event("Placed"), event("Paid"), event("Placed"));
    let order_1 = vec![first.id, second.id];
    let order_2 = vec![third.id];
    store
        .append("order-1", ExpectedRevision::NoStream, vec![first, second])
        .wait()
        .expect("append order-1");
    store
        .set_metadata("order-1", ExpectedRevision::NoStream, metadata(10))
        .wait()
        .expect("set metadata of order-1");
    store
        .append("order-2", ExpectedRevision::NoStream, vec![third])
        .wait()
        .expect("append order-2");

    // One group of every kind of request, each of which would succeed on its
    // own, queued behind the plug; the multi-append is valid only if the append
    // before it in the group is not written.
    let plugged = plug(&store, &faults);
    faults.set(Mode::Fail);
    let appended = store.append(
        "order-1",
        ExpectedRevision::Exact(1),
        vec![event("Shipped")],
    );
    let created = store.append("order-3", ExpectedRevision::NoStream, vec![event("Placed")]);
    let multi = store.append_multi(vec![
        StreamAppend::new("order-1", ExpectedRevision::Exact(1), vec![event("Paid")]),
        StreamAppend::new("order-5", ExpectedRevision::NoStream, vec![event("Placed")]),
    ]);
    let deleted = store.delete("order-2", ExpectedRevision::Exact(0));
    let tombstoned = store.tombstone("order-4", ExpectedRevision::Any);
    let set_metadata = store.set_metadata("order-1", ExpectedRevision::Exact(0), metadata(1));
    let plug_event = plugged
        .release()
        .expect("the plug's group was written before the fault");
    let plug_position = plug_event.positions.expect("positions").0;
    assert_eq!(plug_position, 3);

    assert_poisoned(appended.wait(), FAULT);
    assert_poisoned(created.wait(), FAULT);
    assert_poisoned(multi.wait(), FAULT);
    assert_poisoned(deleted.wait(), FAULT);
    assert_poisoned(tombstoned.wait(), FAULT);
    assert_poisoned(set_metadata.wait(), FAULT);
    let failed = *faults.groups().last().expect("the hook saw the group");
    assert_eq!(
        (failed.requests, failed.events, failed.first_position),
        (6, 2, 4),
        "all six requests were one group"
    );

    assert_every_write_poisoned(&store, FAULT);
    let groups_seen = faults.groups().len();
    assert_every_write_poisoned(&store, FAULT);
    assert_eq!(
        faults.groups().len(),
        groups_seen,
        "a poisoned store writes nothing more"
    );

    let plug_id = read_all(&store, stream("plug")).expect("read plug")[0].id;
    assert_only_acknowledged(&store, &order_1, &order_2, plug_id);

    drop(store);
    let store = reopen(dir.path());
    assert_only_acknowledged(&store, &order_1, &order_2, plug_id);
    // The store works again, and positions go on where the acknowledged ones
    // ended.
    let appended = store
        .append("order-3", ExpectedRevision::NoStream, vec![event("Placed")])
        .wait()
        .expect("append after reopen");
    assert_eq!(appended.positions, Some((4, 4)));
    let appended = store
        .append(
            "order-1",
            ExpectedRevision::Exact(1),
            vec![event("Shipped")],
        )
        .wait()
        .expect("append to order-1 after reopen");
    assert_eq!(appended.current, CurrentRevision::Revision(2));
    assert_eq!(
        store
            .delete("order-2", ExpectedRevision::Exact(0))
            .wait()
            .expect("delete after reopen"),
        CurrentRevision::Revision(0)
    );
    assert_eq!(
        store
            .set_metadata("order-1", ExpectedRevision::Exact(0), metadata(1))
            .wait()
            .expect("set metadata after reopen"),
        1
    );
}

#[test]
fn concurrent_requests_in_the_failing_group_all_get_poisoned() {
    const WRITERS: usize = 16;
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let store = Store::open(dir.path(), options(&faults)).expect("open");
    let plugged = plug(&store, &faults);
    faults.set(Mode::Fail);

    let start = Arc::new(Barrier::new(WRITERS));
    let (queued, queue_report) = mpsc::channel();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (store, start, queued) = (store.clone(), Arc::clone(&start), queued.clone());
            std::thread::spawn(move || {
                start.wait();
                // Half the writers race to create one stream: in the group the
                // first one's check passes and the others' fail against it; but
                // it is never written, so the only true answer for all is
                // `Poisoned`, not `WrongExpectedRevision`.
                let ticket = if writer % 2 == 0 {
                    store.append(
                        format!("writer-{writer}"),
                        ExpectedRevision::NoStream,
                        vec![event("Written"), event("Written")],
                    )
                } else {
                    store.append("contended", ExpectedRevision::NoStream, vec![event("Won")])
                };
                queued.send(()).expect("the test listens");
                ticket.wait()
            })
        })
        .collect();
    for _ in 0..WRITERS {
        queue_report
            .recv_timeout(PATIENCE)
            .expect("every writer queued its append");
    }
    plugged
        .release()
        .expect("the plug's group was written before the fault");

    for writer in writers {
        assert_poisoned(writer.join().expect("writer thread"), FAULT);
    }
    let groups = faults.groups();
    assert_eq!(groups.len(), 2, "the plug's group and one failed group");
    assert_eq!(
        groups[1].requests, WRITERS,
        "every writer's append was in the failed group"
    );
    assert_eq!(
        groups[1].events,
        WRITERS / 2 * 2 + 1,
        "two events per own stream, one for the winner of the contended stream"
    );
    assert_eq!(store.info().head, 1);
    assert_eq!(
        read_all(&store, ReadSource::All).expect("read $all").len(),
        1
    );
    assert_every_write_poisoned(&store, FAULT);

    drop(store);
    let store = reopen(dir.path());
    assert_eq!(store.info().head, 1);
    assert_eq!(
        read_all(&store, stream("contended")),
        Err(Error::StreamNotFound {
            stream: "contended".to_owned()
        })
    );
    store
        .append("contended", ExpectedRevision::NoStream, vec![event("Won")])
        .wait()
        .expect("the contended stream was never created");
}

#[test]
fn a_panicking_committer_poisons_instead_of_shutting_down() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            // The requests behind the plug form three groups: the one whose write
            // panics, and two that are still queued when it does.
            max_group_requests: 2,
            ..options(&faults)
        },
    )
    .expect("open");
    let plugged = plug(&store, &faults);
    faults.set(Mode::Panic);
    let pending: Vec<_> = (0..5)
        .map(|n| {
            store.append(
                format!("pending-{n}"),
                ExpectedRevision::NoStream,
                vec![event("Pending")],
            )
        })
        .collect();
    let deleted = store.delete("plug", ExpectedRevision::Any);
    plugged
        .release()
        .expect("the plug's group was written before the panic");

    let cause = format!("the committer thread panicked: {PANIC}");
    for ticket in pending {
        assert_poisoned(ticket.wait(), &cause);
    }
    assert_poisoned(deleted.wait(), &cause);
    assert_eq!(
        faults.groups().len(),
        2,
        "the groups queued behind the panic were refused, not written"
    );
    assert_every_write_poisoned(&store, &cause);
    let message = store
        .append("later", ExpectedRevision::Any, vec![event("Later")])
        .wait()
        .expect_err("poisoned")
        .to_string();
    assert!(
        message.contains("panicked") && message.ends_with("restart to recover"),
        "the message says what happened and what to do: {message}"
    );
    assert_eq!(store.info().head, 1);

    // The committer survived the panic: shutdown joins it normally, and the
    // store still says why it refuses writes.
    store.shutdown();
    assert_poisoned(
        store
            .append(
                "after-shutdown",
                ExpectedRevision::Any,
                vec![event("Later")],
            )
            .wait(),
        &cause,
    );

    drop(store);
    let store = reopen(dir.path());
    assert_eq!(
        ids(&read_all(&store, ReadSource::All).expect("read")).len(),
        1
    );
    store
        .append(
            "pending-0",
            ExpectedRevision::NoStream,
            vec![event("Pending")],
        )
        .wait()
        .expect("append after reopen");
    assert_eq!(store.info().head, 2);
}

#[test]
fn a_full_queue_answers_overloaded_at_once() {
    const CAPACITY: usize = 4;
    const EXTRA: usize = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = Faults::new();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            queue_capacity: CAPACITY,
            ..options(&faults)
        },
    )
    .expect("open");
    // The committer holds the plug's group, so the queue is empty and nothing
    // leaves it until the plug is released.
    let plugged = plug(&store, &faults);

    // On another thread, so that a submit that blocks fails the test instead of
    // hanging it: the committer stays held until this thread reports.
    let (report, reported) = mpsc::channel();
    let submitter = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut tickets: Vec<_> = (0..CAPACITY + EXTRA)
                .map(|n| {
                    store.append(
                        format!("queued-{n}"),
                        ExpectedRevision::NoStream,
                        vec![event("Queued")],
                    )
                })
                .collect();
            let refused: Vec<_> = tickets
                .split_off(CAPACITY)
                .into_iter()
                .map(Ticket::wait)
                .collect();
            report.send(refused).expect("the test listens");
            tickets
        })
    };
    let refused = reported
        .recv_timeout(PATIENCE)
        .expect("submitting to a full queue returns at once and answers at once");
    for result in &refused {
        assert_eq!(result, &Err(Error::Overloaded { capacity: CAPACITY }));
    }
    let message = refused[0].as_ref().expect_err("overloaded").to_string();
    assert_eq!(
        message,
        "the committer queue is full (4 requests waiting); retry later"
    );

    plugged.release().expect("the plug's append");
    let accepted = submitter.join().expect("submitter thread");
    let mut positions = Vec::new();
    for ticket in accepted {
        let result = ticket
            .wait()
            .expect("an append the queue accepted is written");
        positions.push(result.positions.expect("positions").0);
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=CAPACITY as u64).collect::<Vec<_>>());

    // Overload refuses one request; it does not poison the store.
    for n in CAPACITY..CAPACITY + EXTRA {
        store
            .append(
                format!("queued-{n}"),
                ExpectedRevision::NoStream,
                vec![event("Queued")],
            )
            .wait()
            .expect("a refused append succeeds when retried");
    }
    assert_eq!(store.info().head, (1 + CAPACITY + EXTRA) as u64);
}
