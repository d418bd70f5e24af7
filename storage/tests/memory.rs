//! RocksDB's memory stays inside `block_cache_bytes`: the memtables are
//! charged to the block cache and flushed once they pass their share of it,
//! instead of each column family keeping up to two 64 MiB memtables of its
//! own beside the cache.

use bytes::Bytes;
use cairn_storage::{Durability, EventData, ExpectedRevision, Store, StoreOptions};
use uuid::Uuid;

/// A small budget, so a few MiB of appends would overrun it without the charge.
const BUDGET: usize = 8 * 1024 * 1024;

#[test]
fn memtables_stay_within_their_share_of_the_block_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            durability: Durability::Sync,
            block_cache_bytes: BUDGET,
            ..StoreOptions::default()
        },
    )
    .expect("open");
    let data = Bytes::from(vec![b'x'; 16 * 1024]);
    let mut most_memtable_bytes = 0;
    // 48 MiB of event data over 48 streams, in 16 batches of 192 events.
    for batch in 0..16u64 {
        for stream in 0..48u64 {
            let events = (0..4)
                .map(|n| {
                    EventData::json("Filled", data.clone()).with_id(Uuid::from_u128(u128::from(
                        batch * 1_000 + stream * 10 + n + 1,
                    )))
                })
                .collect();
            store
                .append(format!("fill-{stream}"), ExpectedRevision::Any, events)
                .wait()
                .expect("append");
        }
        let usage = store.memory_usage();
        most_memtable_bytes = most_memtable_bytes.max(usage.memtable_bytes);
        assert_eq!(usage.block_cache_capacity, BUDGET as u64);
    }
    // The share is 2 MiB; flushes run behind the writes, so 5-10 MiB are
    // seen here. Uncharged, the memtables reached 56 MiB (nearly all that was
    // written). Half of what was written tells the two apart with room.
    let bound = 24 * 1024 * 1024;
    assert!(
        most_memtable_bytes <= bound,
        "memtables reached {most_memtable_bytes} bytes, the bound is {bound}"
    );
}
