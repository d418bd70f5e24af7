//! The write-ahead log stays bounded: events spread over many streams leave the
//! small column families (stream and index keys) with memtables that fill
//! slowly, and RocksDB keeps every WAL file until all of them have flushed.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_storage::{Durability, EventData, ExpectedRevision, Store, StoreOptions};

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
    // Flushes run in the background: give them a moment. Without the cap the
    // WAL holds every byte written (~16 MiB) and never shrinks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let bound = 4 * MAX_WAL_BYTES;
    while wal_bytes(dir.path()) > bound && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let wal = wal_bytes(dir.path());
    assert!(
        wal <= bound,
        "WAL holds {wal} bytes after {written} bytes of events (cap {MAX_WAL_BYTES})"
    );

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
