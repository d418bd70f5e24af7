//! Idempotent retries (FORMAT.md, "Idempotent retries"): an append whose event
//! ids were written before is answered with the original result only when it is
//! an exact retry of that one append request — the same ids, all of them, in the
//! same streams and order, with the same type, content type, metadata and data.
//! Anything else that reuses an id is `DuplicateEventId` and writes nothing.

use std::path::Path;

use bytes::Bytes;
use cairn_storage::{
    AppendResult, Durability, Error, EventData, ExpectedRevision, FORMAT_VERSION, ReadRequest,
    ReadSource, RecordedEvent, Store, StoreOptions, StreamAppend,
};
use uuid::Uuid;

use cairn_storage::COLUMN_FAMILIES;

/// One way to change an event for a retry.
type Change = Box<dyn Fn(&mut EventData)>;

/// A raw RocksDB key and value.
type RawEntry = (Box<[u8]>, Box<[u8]>);

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        ..StoreOptions::default()
    }
}

fn event(data: &str) -> EventData {
    EventData::json("Placed", Bytes::from(data.to_owned()))
}

fn read_all(store: &Store) -> Vec<RecordedEvent> {
    store
        .read(&ReadRequest::forwards(ReadSource::All, 10_000))
        .expect("read $all")
        .events
}

/// `result` is `DuplicateEventId` for `id`, written to `stream` at `revision`.
fn assert_duplicate<T: std::fmt::Debug>(
    result: Result<T, Error>,
    id: Uuid,
    stream: &str,
    revision: u64,
    what: &str,
) {
    assert_eq!(
        result.map(|_| ()),
        Err(Error::DuplicateEventId {
            event_id: id,
            stream: stream.to_owned(),
            revision,
        }),
        "{what}"
    );
}

/// Runs `refused` and checks it wrote nothing.
fn refused_without_writing(store: &Store, refused: impl FnOnce(&Store)) {
    let before = read_all(store);
    let head = store.info().head;
    refused(store);
    assert_eq!(store.info().head, head, "the refused append moved the head");
    assert_eq!(read_all(store), before, "the refused append wrote events");
}

#[test]
fn an_exact_retry_replays_the_original_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    let events = vec![event("v1"), event("w1")];
    let original = store
        .append("order-1", ExpectedRevision::NoStream, events.clone())
        .wait()
        .expect("append");
    assert!(!original.idempotent_replay);
    let head = store.info().head;

    for expected in [ExpectedRevision::NoStream, ExpectedRevision::Any] {
        let retried = store
            .append("order-1", expected, events.clone())
            .wait()
            .expect("retry");
        assert_eq!(
            retried,
            AppendResult {
                idempotent_replay: true,
                ..original
            },
            "retry with {expected:?}"
        );
    }
    assert_eq!(store.info().head, head, "retries wrote nothing");
}

#[test]
fn a_retry_with_other_content_is_duplicate_event_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    let original = event("v1");
    let id = original.id;
    store
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![original.clone()],
        )
        .wait()
        .expect("append");

    let changes: [(&str, Change); 5] = [
        (
            "data",
            Box::new(|event| event.data = Bytes::from_static(b"v2")),
        ),
        (
            "type",
            Box::new(|event| event.event_type = "Cancelled".into()),
        ),
        (
            "content type",
            Box::new(|event| event.content_type = "text/plain".into()),
        ),
        (
            "metadata",
            Box::new(|event| event.metadata = Bytes::from_static(b"{\"m\":1}")),
        ),
        (
            // The same bytes split differently between metadata and data.
            "field boundary",
            Box::new(|event| {
                event.metadata = Bytes::from_static(b"v");
                event.data = Bytes::from_static(b"1");
            }),
        ),
    ];
    for (what, change) in changes {
        let mut changed = original.clone();
        change(&mut changed);
        refused_without_writing(&store, |store| {
            let result = store
                .append("order-1", ExpectedRevision::NoStream, vec![changed])
                .wait();
            assert_duplicate(result, id, "order-1", 0, &format!("changed {what}"));
        });
    }
    // The original is what was kept.
    assert_eq!(read_all(&store)[0].data, Bytes::from_static(b"v1"));
    // And the exact retry still replays.
    let retried = store
        .append("order-1", ExpectedRevision::NoStream, vec![original])
        .wait()
        .expect("exact retry");
    assert!(retried.idempotent_replay);
}

#[test]
fn a_subset_superset_or_reordering_of_the_ids_is_duplicate_event_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    store
        .append("before-1", ExpectedRevision::Any, vec![event("x")])
        .wait()
        .expect("an unrelated event first");
    let [a, b, c] = [event("a"), event("b"), event("c")];
    store
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![a.clone(), b.clone(), c.clone()],
        )
        .wait()
        .expect("append");
    store
        .append("after-1", ExpectedRevision::Any, vec![event("y")])
        .wait()
        .expect("an unrelated event after");

    let cases = [
        ("first two", vec![a.clone(), b.clone()], a.id, 0),
        ("last two", vec![b.clone(), c.clone()], b.id, 1),
        ("the middle one", vec![b.clone()], b.id, 1),
        ("reordered", vec![b.clone(), a.clone(), c.clone()], b.id, 1),
        (
            "one more",
            vec![a.clone(), b.clone(), c.clone(), event("d")],
            a.id,
            0,
        ),
        ("a new one first", vec![event("z"), a.clone()], a.id, 0),
    ];
    for (what, events, id, revision) in cases {
        refused_without_writing(&store, |store| {
            let result = store
                .append("order-1", ExpectedRevision::Any, events)
                .wait();
            assert_duplicate(result, id, "order-1", revision, what);
        });
    }
    // The same events in another stream are not a retry either.
    refused_without_writing(&store, |store| {
        let result = store
            .append(
                "other-1",
                ExpectedRevision::Any,
                vec![a.clone(), b.clone(), c.clone()],
            )
            .wait();
        assert_duplicate(result, a.id, "order-1", 0, "another stream");
    });
    assert!(
        store
            .append("order-1", ExpectedRevision::Any, vec![a, b, c])
            .wait()
            .expect("exact retry")
            .idempotent_replay
    );
}

#[test]
fn retries_are_checked_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events = vec![event("v1"), event("w1")];
    let original = {
        let store = Store::open(dir.path(), options()).expect("open");
        let original = store
            .append("order-1", ExpectedRevision::NoStream, events.clone())
            .wait()
            .expect("append");
        store.shutdown();
        original
    };
    let store = Store::open(dir.path(), options()).expect("reopen");
    assert_eq!(
        store
            .append("order-1", ExpectedRevision::NoStream, events.clone())
            .wait(),
        Ok(AppendResult {
            idempotent_replay: true,
            ..original
        })
    );
    let mut changed = events.clone();
    changed[1].data = Bytes::from_static(b"w2");
    refused_without_writing(&store, |store| {
        let result = store
            .append("order-1", ExpectedRevision::NoStream, changed)
            .wait();
        assert_duplicate(result, events[0].id, "order-1", 0, "changed after restart");
    });
    refused_without_writing(&store, |store| {
        let result = store
            .append("order-1", ExpectedRevision::Any, events[..1].to_vec())
            .wait();
        assert_duplicate(result, events[0].id, "order-1", 0, "subset after restart");
    });
}

#[test]
fn retries_in_the_same_commit_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    let events = vec![event("v1"), event("w1")];
    let mut changed = events.clone();
    changed[0].data = Bytes::from_static(b"v2");
    // Queued back to back: often committed in one group, where the second
    // request sees the first one's ids before they are in RocksDB.
    let first = store.append("order-1", ExpectedRevision::NoStream, events.clone());
    let exact = store.append("order-1", ExpectedRevision::NoStream, events.clone());
    let other = store.append("order-1", ExpectedRevision::Any, changed);
    let subset = store.append("order-1", ExpectedRevision::Any, events[1..].to_vec());
    let first = first.wait().expect("first");
    assert_eq!(
        exact.wait(),
        Ok(AppendResult {
            idempotent_replay: true,
            ..first
        })
    );
    assert_duplicate(other.wait(), events[0].id, "order-1", 0, "changed content");
    assert_duplicate(subset.wait(), events[1].id, "order-1", 1, "subset");
    assert_eq!(store.info().head, 2);
}

#[test]
fn a_multi_stream_append_is_retried_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    let [a, b, c] = [event("a"), event("b"), event("c")];
    let parts = vec![
        StreamAppend::new(
            "order-1",
            ExpectedRevision::NoStream,
            vec![a.clone(), b.clone()],
        ),
        StreamAppend::new("invoice-1", ExpectedRevision::NoStream, vec![c.clone()]),
    ];
    let original = store
        .append_multi(parts.clone())
        .wait()
        .expect("multi append");
    let replayed: Vec<AppendResult> = original
        .iter()
        .map(|result| AppendResult {
            idempotent_replay: true,
            ..*result
        })
        .collect();
    assert_eq!(store.append_multi(parts.clone()).wait(), Ok(replayed));

    // One part alone, as a single or as a multi append, is a subset.
    refused_without_writing(&store, |store| {
        let result = store
            .append(
                "order-1",
                ExpectedRevision::NoStream,
                vec![a.clone(), b.clone()],
            )
            .wait();
        assert_duplicate(result, a.id, "order-1", 0, "the first part alone");
    });
    refused_without_writing(&store, |store| {
        let result = store.append_multi(parts[1..].to_vec()).wait();
        assert_duplicate(result, c.id, "invoice-1", 0, "the second part alone");
    });
    // The parts in the other order.
    refused_without_writing(&store, |store| {
        let result = store
            .append_multi(vec![parts[1].clone(), parts[0].clone()])
            .wait();
        assert_duplicate(result, c.id, "invoice-1", 0, "parts reordered");
    });
    // One event changed in the second part: nothing of either part is written,
    // and the error names the first reused id.
    refused_without_writing(&store, |store| {
        let mut changed = parts.clone();
        changed[1].events[0].metadata = Bytes::from_static(b"m");
        let result = store.append_multi(changed).wait();
        assert_duplicate(result, a.id, "order-1", 0, "second part changed");
    });
    // A retried part together with a new part is not a retry of anything.
    refused_without_writing(&store, |store| {
        let result = store
            .append_multi(vec![
                parts[0].clone(),
                StreamAppend::new("note-1", ExpectedRevision::Any, vec![event("n")]),
            ])
            .wait();
        assert_duplicate(result, a.id, "order-1", 0, "retried part with a new part");
    });
    assert!(store.stream_info("note-1").is_none());
}

/// Opens the database directly, bypassing the store.
fn raw(dir: &Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, COLUMN_FAMILIES).expect("raw open")
}

fn event_id_value_lengths(dir: &Path) -> Vec<usize> {
    let db = raw(dir);
    let event_ids = db.cf_handle("event_ids").expect("event_ids");
    db.iterator_cf(event_ids, rocksdb::IteratorMode::Start)
        .map(|item| item.expect("entry").1.len())
        .collect()
}

/// Turns a format-2 directory into what format 1 wrote: 24-byte `event_ids`
/// values (no append stamp) and format version 1.
fn downgrade_to_format_1(dir: &Path) {
    let db = raw(dir);
    let event_ids = db.cf_handle("event_ids").expect("event_ids");
    let entries: Vec<RawEntry> = db
        .iterator_cf(event_ids, rocksdb::IteratorMode::Start)
        .map(|item| item.expect("entry"))
        .collect();
    for (key, value) in entries {
        assert_eq!(value.len(), 36, "a format-2 entry");
        db.put_cf(event_ids, key, &value[..24]).expect("put");
    }
    db.put(b"format_version", 1u32.to_be_bytes())
        .expect("put format_version");
}

#[test]
fn a_format_1_directory_is_migrated_and_its_retries_compared_with_the_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [a, b, c] = [event("a"), event("b"), event("c")];
    let single = vec![a.clone(), b.clone()];
    let multi = vec![
        StreamAppend::new("order-2", ExpectedRevision::NoStream, vec![event("m1")]),
        StreamAppend::new("invoice-2", ExpectedRevision::NoStream, vec![c.clone()]),
    ];
    let (original, original_multi) = {
        let store = Store::open(dir.path(), options()).expect("open");
        store
            .append("before-1", ExpectedRevision::Any, vec![event("x")])
            .wait()
            .expect("an unrelated event first");
        let original = store
            .append("order-1", ExpectedRevision::NoStream, single.clone())
            .wait()
            .expect("append");
        let original_multi = store.append_multi(multi.clone()).wait().expect("multi");
        store.shutdown();
        (original, original_multi)
    };
    downgrade_to_format_1(dir.path());

    let store = Store::open(dir.path(), options()).expect("a format-1 directory opens");
    assert_eq!(
        store
            .append("order-1", ExpectedRevision::NoStream, single.clone())
            .wait(),
        Ok(AppendResult {
            idempotent_replay: true,
            ..original
        }),
        "exact retry of a format-1 append"
    );
    let replayed: Vec<AppendResult> = original_multi
        .iter()
        .map(|result| AppendResult {
            idempotent_replay: true,
            ..*result
        })
        .collect();
    assert_eq!(store.append_multi(multi.clone()).wait(), Ok(replayed));

    let mut changed = single.clone();
    changed[1].event_type = "Cancelled".into();
    refused_without_writing(&store, |store| {
        let result = store
            .append("order-1", ExpectedRevision::NoStream, changed)
            .wait();
        assert_duplicate(result, a.id, "order-1", 0, "changed format-1 event");
    });
    // Subsets: found through the commit time format 1 gave a whole request.
    refused_without_writing(&store, |store| {
        let result = store
            .append("order-1", ExpectedRevision::Any, vec![a.clone()])
            .wait();
        assert_duplicate(result, a.id, "order-1", 0, "format-1 prefix");
    });
    refused_without_writing(&store, |store| {
        let result = store
            .append("order-1", ExpectedRevision::Any, vec![b.clone()])
            .wait();
        assert_duplicate(result, b.id, "order-1", 1, "format-1 suffix");
    });
    refused_without_writing(&store, |store| {
        let result = store.append_multi(multi[1..].to_vec()).wait();
        assert_duplicate(result, c.id, "invoice-2", 0, "one part of a format-1 multi");
    });

    // New appends are written in format 2.
    store
        .append("order-3", ExpectedRevision::NoStream, vec![event("new")])
        .wait()
        .expect("append after the migration");
    store.shutdown();
    drop(store);
    let lengths = event_id_value_lengths(dir.path());
    assert_eq!(lengths.iter().filter(|len| **len == 24).count(), 5);
    assert_eq!(lengths.iter().filter(|len| **len == 36).count(), 1);
    let version = raw(dir.path())
        .get(b"format_version")
        .expect("get")
        .expect("a format version");
    assert_eq!(version, FORMAT_VERSION.to_be_bytes());
}
