//! The write-ahead log stays bounded: events spread over many streams leave the
//! small column families (stream and index keys) with memtables that fill
//! slowly, and RocksDB keeps every WAL file until all of them have flushed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cairn_storage::{Durability, EventData, ExpectedRevision, Store, StoreOptions};
use cairn_testkit::eventually_blocking_within;

const EVENTS: u64 = 8_000;
const EVENT_BYTES: usize = 2_048;
const MAX_WAL_BYTES: u64 = 1024 * 1024;

fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read data dir")
        .map(|entry| entry.expect("dir entry"))
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".log"))
        .map(|entry| entry.metadata().expect("metadata").len())
        .sum()
}

#[test]
fn the_wal_is_bounded_when_events_spread_over_many_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions {
        durability: Durability::Unsynced,
        max_wal_bytes: MAX_WAL_BYTES,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options.clone()).expect("open");
    let data = Bytes::from(vec![b'x'; EVENT_BYTES]);
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        let tickets: Vec<_> = chunk
            .iter()
            .map(|n| {
                let mut event = EventData::json("Filled", Bytes::new());
                event.data = data.clone();
                store.append(
                    format!("spread-{n}"),
                    ExpectedRevision::NoStream,
                    vec![event],
                )
            })
            .collect();
        for ticket in tickets {
            ticket.wait().expect("append");
        }
    }
    let written = EVENTS * EVENT_BYTES as u64;
    // Flushes run in the background: wait for them. Without the cap the WAL
    // holds every byte written (~16 MiB) and never shrinks.
    let bound = 4 * MAX_WAL_BYTES;
    let what = format!(
        "the WAL to shrink to at most {bound} bytes after {written} bytes of events (cap {MAX_WAL_BYTES})"
    );
    // Generous: under a loaded CI machine background flushes can lag.
    eventually_blocking_within(Duration::from_secs(90), &what, || {
        let wal = wal_bytes(dir.path());
        if wal <= bound {
            Ok(())
        } else {
            Err(format!("the WAL holds {wal} bytes"))
        }
    });

    // Nothing was lost to the flushes.
    store.shutdown();
    drop(store);
    let store = Store::open(dir.path(), options).expect("reopen");
    assert_eq!(store.info().head, EVENTS);
    let last = store
        .stream_info(&format!("spread-{}", EVENTS - 1))
        .expect("the last stream");
    assert_eq!(last.last_revision, Some(0));
}
