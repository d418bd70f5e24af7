//! DCB: tags on every read path, query reads from the indexes, append
//! conditions checked atomically (also inside one commit group), idempotent
//! retries with conditions, scavenge and restart, and the no-lost-update
//! property under many concurrent deciders.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_storage::{
    AppendCondition, Direction, Durability, Error, EventData, ExpectedRevision, MAX_TAG_BYTES,
    MAX_TAGS_PER_EVENT, Query, QueryItem, ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store,
    StoreOptions, StreamAppend,
};
use cairn_testkit::try_read_all;

fn open(dir: &std::path::Path, durability: Durability) -> Store {
    Store::open(
        dir,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )
    .expect("open")
}

fn tagged(event_type: &str, tags: &[&str]) -> EventData {
    EventData::json(event_type, "{}").with_tags(tags.iter().copied())
}

fn query_read(store: &Store, query: &Query, page: usize) -> Vec<RecordedEvent> {
    try_read_all(
        store,
        ReadRequest::forwards(ReadSource::Query(query.clone()), page),
    )
    .expect("query read")
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.position).collect()
}

/// The fixture: six events over three streams.
/// 0 user-1 Registered [user:1, email:a]
/// 1 user-2 Registered [user:2, email:b]
/// 2 user-1 Renamed    [user:1]
/// 3 order-1 Placed    [user:1, order:1]
/// 4 order-2 Placed    [user:2, order:2]
/// 5 user-2 Renamed    (no tags)
fn fixture(store: &Store) {
    let appends = [
        ("user-1", tagged("Registered", &["user:1", "email:a"])),
        ("user-2", tagged("Registered", &["user:2", "email:b"])),
        ("user-1", tagged("Renamed", &["user:1"])),
        ("order-1", tagged("Placed", &["user:1", "order:1"])),
        ("order-2", tagged("Placed", &["user:2", "order:2"])),
        ("user-2", tagged("Renamed", &[])),
    ];
    for (stream, event) in appends {
        store
            .append(stream, ExpectedRevision::Any, vec![event])
            .wait()
            .expect("append");
    }
}

#[test]
fn tags_come_back_on_every_read_path_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |store: &Store| {
        let expected = vec!["user:1".to_owned(), "email:a".to_owned()];
        for source in ["user-1", "$all", "$ce-user", "$et-Registered"] {
            let events = try_read_all(
                store,
                ReadRequest::forwards(ReadSource::parse(source).unwrap(), 100),
            )
            .unwrap();
            assert_eq!(events[0].tags, expected, "{source}");
        }
        let by_query = query_read(store, &Query::of([QueryItem::tags(["email:a"])]), 10);
        assert_eq!(by_query.len(), 1);
        assert_eq!(by_query[0].tags, expected);
        let untagged = try_read_all(
            store,
            ReadRequest::forwards(ReadSource::parse("user-2").unwrap(), 10),
        )
        .unwrap();
        assert!(untagged[1].tags.is_empty());
    };
    {
        let store = open(dir.path(), Durability::Sync);
        fixture(&store);
        check(&store);
        store.shutdown();
    }
    let store = open(dir.path(), Durability::Sync);
    check(&store);
}

#[test]
fn query_reads_match_types_and_all_tags_in_both_directions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    fixture(&store);
    let cases: Vec<(Query, Vec<u64>)> = vec![
        (Query::of([QueryItem::tags(["user:1"])]), vec![0, 2, 3]),
        (
            Query::of([QueryItem::types(["Registered"]).with_tags(["user:1"])]),
            vec![0],
        ),
        (Query::of([QueryItem::tags(["user:1", "order:1"])]), vec![3]),
        (Query::of([QueryItem::tags(["user:1", "order:2"])]), vec![]),
        (
            Query::of([QueryItem::types(["Renamed", "Placed"])]),
            vec![2, 3, 4, 5],
        ),
        (
            Query::of([QueryItem::tags(["email:b"]), QueryItem::tags(["order:1"])]),
            vec![1, 3],
        ),
        // Two items on the same first tag share one postings list.
        (
            Query::of([
                QueryItem::types(["Registered"]).with_tags(["user:2"]),
                QueryItem::types(["Placed"]).with_tags(["user:2"]),
            ]),
            vec![1, 4],
        ),
        (Query::all(), vec![0, 1, 2, 3, 4, 5]),
        (Query::of([QueryItem::default()]), vec![0, 1, 2, 3, 4, 5]),
        (Query::of([QueryItem::tags(["nobody"])]), vec![]),
    ];
    for (query, expected) in cases {
        // Page sizes 1 and 2 cross page boundaries between candidates.
        for page in [1, 2, 100] {
            assert_eq!(
                positions(&query_read(&store, &query, page)),
                expected,
                "{query:?} page {page}"
            );
        }
        let backwards = try_read_all(
            &store,
            ReadRequest {
                direction: Direction::Backwards,
                from: ReadFrom::End,
                ..ReadRequest::forwards(ReadSource::Query(query.clone()), 2)
            },
        )
        .unwrap();
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(positions(&backwards), reversed, "{query:?} backwards");
    }
    // From a position, inclusive, and the page's head.
    let page = store
        .read(&ReadRequest {
            from: ReadFrom::At(3),
            ..ReadRequest::forwards(
                ReadSource::Query(Query::of([QueryItem::tags(["user:1"])])),
                10,
            )
        })
        .unwrap();
    assert_eq!(positions(&page.events), vec![3]);
    assert_eq!(page.head, 6);
    assert_eq!(page.next, None);
}

#[test]
fn query_reads_skip_hidden_events_and_scavenge_removes_their_tags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    fixture(&store);
    let user_1 = Query::of([QueryItem::tags(["user:1"])]);
    store
        .delete("order-1", ExpectedRevision::Any)
        .wait()
        .unwrap();
    assert_eq!(positions(&query_read(&store, &user_1, 10)), vec![0, 2]);
    // Before the scavenge the hidden event still counts for a condition
    // (a condition errs towards a conflict) ...
    let condition = AppendCondition::new(user_1.clone(), Some(2));
    let conflict = store
        .append_multi_if(
            vec![StreamAppend::new(
                "user-1",
                ExpectedRevision::Any,
                vec![tagged("Renamed", &["user:1"])],
            )],
            Some(condition.clone()),
        )
        .wait();
    assert_eq!(conflict, Err(Error::AppendConditionFailed { position: 3 }));
    // ... and after it, with its index entries gone, it no longer does.
    store.scavenge().unwrap();
    assert_eq!(positions(&query_read(&store, &user_1, 10)), vec![0, 2]);
    let results = store
        .append_multi_if(
            vec![StreamAppend::new(
                "user-1",
                ExpectedRevision::Any,
                vec![tagged("Renamed", &["user:1"])],
            )],
            Some(condition),
        )
        .wait()
        .expect("no conflict once the hidden event is scavenged");
    assert_eq!(results[0].positions, Some((6, 6)));
}

#[test]
fn a_failed_condition_names_the_first_conflict_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    fixture(&store);
    let user_1 = Query::of([QueryItem::tags(["user:1"])]);
    let attempt = |after: Option<u64>| {
        store
            .append_multi_if(
                vec![
                    StreamAppend::new(
                        "user-1",
                        ExpectedRevision::Any,
                        vec![tagged("Renamed", &["user:1"])],
                    ),
                    StreamAppend::new(
                        "audit-1",
                        ExpectedRevision::NoStream,
                        vec![tagged("Noted", &[])],
                    ),
                ],
                Some(AppendCondition::new(user_1.clone(), after)),
            )
            .wait()
    };
    assert_eq!(
        attempt(None),
        Err(Error::AppendConditionFailed { position: 0 })
    );
    assert_eq!(
        attempt(Some(0)),
        Err(Error::AppendConditionFailed { position: 2 })
    );
    assert_eq!(
        attempt(Some(2)),
        Err(Error::AppendConditionFailed { position: 3 })
    );
    assert_eq!(store.info().head, 6, "nothing written");
    assert!(store.stream_info("audit-1").is_none(), "no part written");
    // Consistent through the last matching event: it holds.
    let results = attempt(Some(3)).expect("condition holds");
    assert_eq!(results[0].positions, Some((6, 6)));
    // A stream expectation still fails on its own, condition or not.
    let wrong = store
        .append_multi_if(
            vec![StreamAppend::new(
                "user-1",
                ExpectedRevision::Exact(0),
                vec![tagged("Renamed", &[])],
            )],
            Some(AppendCondition::new(
                Query::of([QueryItem::tags(["nobody"])]),
                None,
            )),
        )
        .wait();
    assert!(
        matches!(wrong, Err(Error::WrongExpectedRevision { .. })),
        "{wrong:?}"
    );
}

#[test]
fn an_exact_retry_returns_the_original_result_despite_its_condition() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    let query = Query::of([QueryItem::tags(["email:x"])]);
    let event = tagged("Registered", &["email:x"]);
    let request = || {
        vec![StreamAppend::new(
            "user-9",
            ExpectedRevision::NoStream,
            vec![event.clone()],
        )]
    };
    let condition = AppendCondition::new(query.clone(), None);
    let first = store
        .append_multi_if(request(), Some(condition.clone()))
        .wait()
        .unwrap();
    let retry = store
        .append_multi_if(request(), Some(condition.clone()))
        .wait()
        .unwrap();
    assert!(retry[0].idempotent_replay);
    assert_eq!(retry[0].positions, first[0].positions);
    // Another event for the same email is refused by the condition.
    let other = store
        .append_multi_if(
            vec![StreamAppend::new(
                "user-10",
                ExpectedRevision::NoStream,
                vec![tagged("Registered", &["email:x"])],
            )],
            Some(condition),
        )
        .wait();
    assert_eq!(other, Err(Error::AppendConditionFailed { position: 0 }));
    // The same ids with other tags are not a retry.
    let changed = store
        .append_multi_if(
            vec![StreamAppend::new(
                "user-9",
                ExpectedRevision::NoStream,
                vec![EventData {
                    tags: vec!["email:y".into()],
                    ..event.clone()
                }],
            )],
            None,
        )
        .wait();
    assert!(
        matches!(changed, Err(Error::DuplicateEventId { .. })),
        "{changed:?}"
    );
}

#[test]
fn conditions_see_the_events_earlier_in_the_same_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Sync);
    // A large append keeps the committer busy while the contenders queue up
    // behind it, so most of them commit in one group.
    let filler: Vec<EventData> = (0..2000).map(|_| tagged("Filler", &[])).collect();
    let busy = store.append("filler", ExpectedRevision::Any, filler);
    let query = Query::of([QueryItem::tags(["seat:1"])]);
    let tickets: Vec<_> = (0..20)
        .map(|n| {
            store.append_multi_if(
                vec![StreamAppend::new(
                    format!("booking-{n}"),
                    ExpectedRevision::NoStream,
                    vec![tagged("SeatBooked", &["seat:1"])],
                )],
                Some(AppendCondition::new(query.clone(), Some(1999))),
            )
        })
        .collect();
    busy.wait().unwrap();
    let outcomes: Vec<_> = tickets.into_iter().map(|ticket| ticket.wait()).collect();
    let winners: Vec<_> = outcomes.iter().filter(|outcome| outcome.is_ok()).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0].as_ref().unwrap()[0].positions.unwrap().0;
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert_eq!(error, &Error::AppendConditionFailed { position: winner });
        }
    }
    assert_eq!(query_read(&store, &query, 10).len(), 1);
}

#[test]
fn tag_limits_hold_in_counts_and_bytes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    let too_many: Vec<String> = (0..=MAX_TAGS_PER_EVENT).map(|n| format!("t{n}")).collect();
    let refused = [
        EventData::json("T", "{}").with_tags(too_many),
        EventData::json("T", "{}").with_tags(["x".repeat(MAX_TAG_BYTES + 1)]),
        EventData::json("T", "{}").with_tags([""]),
        EventData::json("T", "{}").with_tags(["a", "a"]),
    ];
    for event in refused {
        let outcome = store
            .append("s-1", ExpectedRevision::Any, vec![event])
            .wait();
        assert!(
            matches!(
                outcome,
                Err(Error::LimitExceeded { .. } | Error::InvalidArgument(_))
            ),
            "{outcome:?}"
        );
    }
    // Tags count against the event's byte limit.
    let limited_dir = tempfile::tempdir().expect("temp dir");
    let limited = Store::open(
        limited_dir.path(),
        StoreOptions {
            durability: Durability::Unsynced,
            limits: cairn_storage::Limits {
                max_event_bytes: 100,
                ..cairn_storage::Limits::default()
            },
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let event = EventData::json("T", vec![b'x'; 60]).with_tags(["y".repeat(30)]);
    let outcome = limited
        .append("s-1", ExpectedRevision::Any, vec![event])
        .wait();
    assert!(
        matches!(
            outcome,
            Err(Error::LimitExceeded {
                what: "event size in bytes",
                ..
            })
        ),
        "{outcome:?}"
    );
    // The largest allowed tags are fine, and a query over too many items is refused.
    let biggest: Vec<String> = (0..MAX_TAGS_PER_EVENT)
        .map(|n| format!("{n:0>width$}", width = MAX_TAG_BYTES))
        .collect();
    store
        .append(
            "s-1",
            ExpectedRevision::Any,
            vec![EventData::json("T", "{}").with_tags(biggest)],
        )
        .wait()
        .unwrap();
    let huge =
        Query::of((0..=cairn_storage::MAX_QUERY_ITEMS).map(|n| QueryItem::tags([n.to_string()])));
    assert!(matches!(
        store.read(&ReadRequest::forwards(ReadSource::Query(huge.clone()), 10)),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        store
            .append_multi_if(
                vec![StreamAppend::new(
                    "s-1",
                    ExpectedRevision::Any,
                    vec![tagged("T", &[])]
                )],
                Some(AppendCondition::new(huge, None)),
            )
            .wait(),
        Err(Error::LimitExceeded { .. })
    ));
    assert_eq!(store.info().head, 1, "nothing refused was written");
}

/// One successful decision.
#[derive(Debug, Clone)]
struct Decided {
    position: u64,
    accounts: BTreeSet<usize>,
    after: Option<u64>,
    /// Per account: how many of its events the decision saw.
    seen: Vec<(usize, u64)>,
}

#[test]
fn concurrent_deciders_on_overlapping_queries_lose_no_update() {
    const WRITERS: usize = 8;
    const ATTEMPTS: usize = 400;
    const ACCOUNTS: usize = 6;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Sync);
    let conflicts = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            let conflicts = Arc::clone(&conflicts);
            std::thread::spawn(move || {
                let mut decided = Vec::new();
                let mut seed = writer as u64 * 7919 + 1;
                let mut random = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                for _ in 0..ATTEMPTS {
                    let first = (random() % ACCOUNTS as u64) as usize;
                    let second = (random() % ACCOUNTS as u64) as usize;
                    let accounts: BTreeSet<usize> = [first, second].into_iter().collect();
                    let query = Query::of(accounts.iter().map(|account| {
                        QueryItem::types(["Moved"]).with_tags([format!("acct:{account}")])
                    }));
                    // Read every page; the condition's position is the last page's.
                    let mut from = ReadFrom::Start;
                    let mut events = Vec::new();
                    let after = loop {
                        let page = store
                            .read(&ReadRequest {
                                from,
                                ..ReadRequest::forwards(ReadSource::Query(query.clone()), 64)
                            })
                            .expect("read");
                        events.extend(page.events);
                        match page.next {
                            Some(next) => from = ReadFrom::At(next),
                            None => break page.head.checked_sub(1),
                        }
                    };
                    let seen: Vec<(usize, u64)> = accounts
                        .iter()
                        .map(|account| {
                            let tag = format!("acct:{account}");
                            (
                                *account,
                                events
                                    .iter()
                                    .filter(|event| event.tags.contains(&tag))
                                    .count() as u64,
                            )
                        })
                        .collect();
                    // The event records what it saw: with no lost update, every
                    // account's events count 0, 1, 2, ... in commit order.
                    let data = seen
                        .iter()
                        .map(|(account, count)| format!("\"{account}\":{count}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let event = EventData::json("Moved", format!("{{{data}}}"))
                        .with_tags(accounts.iter().map(|account| format!("acct:{account}")));
                    let outcome = store
                        .append_multi_if(
                            vec![StreamAppend::new(
                                format!("move-{writer}"),
                                ExpectedRevision::Any,
                                vec![event],
                            )],
                            Some(AppendCondition::new(query, after)),
                        )
                        .wait();
                    match outcome {
                        Ok(results) => decided.push(Decided {
                            position: results[0].positions.expect("written").0,
                            accounts,
                            after,
                            seen,
                        }),
                        Err(Error::AppendConditionFailed { position }) => {
                            assert!(after.is_none_or(|after| position > after));
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => panic!("unexpected: {error}"),
                    }
                }
                decided
            })
        })
        .collect();
    let mut decided: Vec<Decided> = writers
        .into_iter()
        .flat_map(|writer| writer.join().expect("writer"))
        .collect();
    decided.sort_by_key(|decision| decision.position);
    let conflicts = conflicts.load(Ordering::Relaxed);
    assert_eq!(decided.len() + conflicts, WRITERS * ATTEMPTS);
    assert!(
        conflicts > 0,
        "the deciders never raced; the test proves nothing"
    );
    // Per account, consecutive successful decisions: the later one's condition
    // position is at or after the earlier one's commit, and it saw exactly the
    // earlier ones.
    let mut last_on: HashMap<usize, u64> = HashMap::new();
    let mut count_on: HashMap<usize, u64> = HashMap::new();
    for decision in &decided {
        for account in &decision.accounts {
            if let Some(previous) = last_on.get(account) {
                assert!(
                    decision.after.is_some_and(|after| after >= *previous),
                    "lost update on account {account}: {decision:?} after commit {previous}"
                );
            }
            let saw = decision
                .seen
                .iter()
                .find(|(seen, _)| seen == account)
                .map(|(_, count)| *count)
                .unwrap();
            assert_eq!(
                saw,
                count_on.get(account).copied().unwrap_or(0),
                "{decision:?}"
            );
            last_on.insert(*account, decision.position);
            *count_on.entry(*account).or_default() += 1;
        }
    }
    // What the store holds agrees with the acknowledgements.
    let all = query_read(&store, &Query::of([QueryItem::types(["Moved"])]), 500);
    assert_eq!(
        positions(&all),
        decided.iter().map(|d| d.position).collect::<Vec<_>>()
    );
    eprintln!(
        "{} decisions, {} committed, {conflicts} conflicts",
        WRITERS * ATTEMPTS,
        decided.len()
    );
}

#[test]
fn an_old_format_directory_is_migrated_and_keeps_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = open(dir.path(), Durability::Sync);
        store
            .append(
                "s-1",
                ExpectedRevision::NoStream,
                vec![EventData::json("T", "{}")],
            )
            .wait()
            .unwrap();
        store.shutdown();
    }
    // Make it a format-2 directory: version 2 and no tag_index column family.
    {
        let mut options = rocksdb::Options::default();
        options.create_missing_column_families(true);
        let mut db =
            rocksdb::DB::open_cf(&options, dir.path(), cairn_storage::COLUMN_FAMILIES).unwrap();
        db.drop_cf("tag_index").unwrap();
        let meta = db.cf_handle("default").unwrap();
        db.put_cf(meta, b"format_version", 2u32.to_be_bytes())
            .unwrap();
    }
    let store = open(dir.path(), Durability::Sync);
    store
        .append("s-1", ExpectedRevision::Exact(0), vec![tagged("T", &["k"])])
        .wait()
        .unwrap();
    let events = query_read(&store, &Query::of([QueryItem::tags(["k"])]), 10);
    assert_eq!(positions(&events), vec![1]);
}

#[test]
fn a_query_reads_only_what_its_rarest_index_list_allows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path(), Durability::Unsynced);
    // 3,000 events carry the common tag; every 1,000th also the rare one, and
    // the other 2,997 are of a type the query does not ask for either.
    let events: Vec<EventData> = (0..3000)
        .map(|n| {
            if n % 1000 == 999 {
                tagged("Wanted", &["tenant:1", "rare"])
            } else {
                tagged("Other", &["tenant:1"])
            }
        })
        .collect();
    store
        .append("bulk-1", ExpectedRevision::Any, events)
        .wait()
        .unwrap();
    let cases = [
        Query::of([QueryItem::tags(["tenant:1", "rare"])]),
        Query::of([QueryItem::types(["Wanted"]).with_tags(["tenant:1"])]),
    ];
    for query in cases {
        let before = store.read_stats().records_examined;
        let events = query_read(&store, &query, 100);
        let examined = store.read_stats().records_examined - before;
        assert_eq!(positions(&events), vec![999, 1999, 2999], "{query:?}");
        assert_eq!(
            examined, 3,
            "{query:?}: the intersection of the indexes, not a scan"
        );
    }
}
