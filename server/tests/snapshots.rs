//! Aggregate snapshots through cairn-client's `Repository` against the real
//! server: a 100,000-event aggregate loads from its snapshot replaying only
//! the events after it, with the state of a full replay; commands retry on
//! concurrent writes (bounded); untrusted snapshots (foreign, undecodable,
//! past the head, of a deleted and recreated stream) are ignored with a full
//! replay; snapshot streams follow their base stream's ACL and never show in
//! its category.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cairn_client::{
    Aggregate, AggregateError, Client, CodecError, Error, EventData, ExpectedRevision, ReadOptions,
    RecordedEvent, Repository, SNAPSHOT_EVENT_TYPE, SnapshotIgnored, SnapshotUse, StreamMetadata,
    snapshot_stream,
};
use cairn_testkit::{SecureSetup, TestServer, USER_PASSWORD, set_acl};

/// Numbers folded in order: their count, sum and an order-sensitive hash,
/// so any lost, repeated or reordered event shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Tally {
    count: u64,
    sum: u64,
    hash: u64,
}

impl Aggregate for Tally {
    type Event = u64;
    const SNAPSHOT_SCHEMA: &'static str = "test.tally/1";

    fn decode(event: &RecordedEvent) -> Result<u64, CodecError> {
        Ok(std::str::from_utf8(&event.data)?.parse()?)
    }

    fn apply(&mut self, n: &u64) {
        self.count += 1;
        self.sum += n;
        self.hash = self.hash.wrapping_mul(1_000_003).wrapping_add(*n);
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
        Ok(format!("{} {} {}", self.count, self.sum, self.hash).into_bytes())
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
        let text = std::str::from_utf8(bytes)?;
        let fields = text
            .split(' ')
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()?;
        let [count, sum, hash] = fields[..] else {
            return Err(format!("expected 3 numbers, got '{text}'").into());
        };
        Ok(Self { count, sum, hash })
    }
}

fn number(n: u64) -> EventData {
    EventData::binary("Added", n.to_string())
}

/// A decision that always adds `n` and returns the count it saw.
fn add(n: u64) -> impl FnMut(&Tally) -> Result<(Vec<EventData>, u64), Infallible> {
    move |tally| Ok((vec![number(n)], tally.count))
}

async fn append_numbers(client: &Client, stream: &str, numbers: std::ops::Range<u64>) {
    let all: Vec<u64> = numbers.collect();
    // 10,000 events per append: the server's default max_events_per_append.
    for batch in all.chunks(10_000) {
        client
            .append(
                stream,
                ExpectedRevision::Any,
                batch.iter().map(|&n| number(n)).collect(),
            )
            .await
            .expect("append a batch");
    }
}

fn full_replay(client: &Client) -> Repository<Tally> {
    Repository::new(client.clone()).snapshot_every(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_events_load_from_the_snapshot_replaying_only_the_rest() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let stream = "tally-big";
    append_numbers(&client, stream, 0..100_000).await;
    let repository = Repository::<Tally>::new(client.clone()).snapshot_every(1_000);

    // No snapshot yet: the command replays everything, appends revision
    // 100,000 and, 100,001 events being uncovered, snapshots the result.
    let executed = repository.execute(stream, add(7)).await.unwrap();
    assert_eq!(executed.output, 100_000);
    assert_eq!(executed.revision, Some(100_000));
    assert_eq!(executed.attempts, 1);
    assert_eq!(executed.snapshot, Some(100_000));
    let info = client
        .get_stream_metadata(snapshot_stream(stream))
        .await
        .unwrap();
    assert_eq!(info.metadata.max_count, Some(3), "old snapshots scavenged");

    append_numbers(&client, stream, 100_000..100_250).await;
    let loaded = repository.load(stream).await.unwrap();
    assert_eq!(loaded.snapshot, SnapshotUse::Used { revision: 100_000 });
    assert_eq!(loaded.replayed, 250, "only the events after the snapshot");
    assert_eq!(loaded.revision, Some(100_250));

    let full = full_replay(&client).load(stream).await.unwrap();
    assert_eq!(full.snapshot, SnapshotUse::None);
    assert_eq!(full.replayed, 100_251);
    assert_eq!(full.revision, Some(100_250));
    assert_eq!(loaded.state, full.state);
    assert_eq!(loaded.state.count, 100_251);
    assert_eq!(loaded.state.sum, (0..100_250).sum::<u64>() + 7);

    // The snapshot stream is not written again until another 1,000 events
    // are uncovered.
    let executed = repository.execute(stream, add(1)).await.unwrap();
    assert_eq!(executed.snapshot, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_retry_on_concurrent_writes_up_to_the_bound() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let other = server.client().await;
    let stream = "tally-race";
    let repository = Repository::<Tally>::new(client.clone()).snapshot_every(3);

    // Another writer appends between this command's load and its append,
    // once: the append conflicts, the command reloads and decides again.
    // (`block_in_place` lets the synchronous decision wait for that write;
    // it needs a worker thread, hence the spawned task.)
    let decisions = Arc::new(AtomicU32::new(0));
    let executed = tokio::spawn({
        let repository = repository.clone();
        let decisions = Arc::clone(&decisions);
        let other = other.clone();
        async move {
            repository
                .execute(stream, |tally| {
                    if decisions.fetch_add(1, Ordering::SeqCst) == 0 {
                        interfere(&other, stream);
                    }
                    Ok::<_, Infallible>((vec![number(1)], tally.count))
                })
                .await
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(executed.attempts, 2);
    assert_eq!(decisions.load(Ordering::SeqCst), 2);
    assert_eq!(executed.output, 1, "decided again on the other's event");
    assert_eq!(executed.revision, Some(1));

    // Bounded: a writer that always gets in between exhausts the attempts.
    let bounded = repository.clone().max_attempts(2);
    let result = tokio::spawn({
        let other = other.clone();
        async move {
            bounded
                .execute(stream, |tally| {
                    interfere(&other, stream);
                    Ok::<_, Infallible>((vec![number(1)], tally.count))
                })
                .await
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(result, Err(AggregateError::Conflict { attempts: 2, .. })),
        "{result:?}"
    );

    // Many commands on one aggregate at once: every one succeeds, none is
    // lost, and the snapshots they write along the way agree with a full
    // replay.
    let before = full_replay(&client).load(stream).await.unwrap().state;
    let tasks: Vec<_> = (0..8u64)
        .map(|n| {
            let repository = repository.clone();
            tokio::spawn(async move { repository.execute(stream, add(1_000 + n)).await })
        })
        .collect();
    let mut attempts = 0;
    for task in tasks {
        attempts += task
            .await
            .unwrap()
            .expect("every command succeeds")
            .attempts;
    }
    assert!(attempts >= 8);
    let after = full_replay(&client).load(stream).await.unwrap();
    assert_eq!(after.state.count, before.count + 8);
    assert_eq!(
        after.state.sum,
        before.sum + (0..8).map(|n| 1_000 + n).sum::<u64>()
    );
    let loaded = repository.load(stream).await.unwrap();
    assert!(matches!(loaded.snapshot, SnapshotUse::Used { .. }));
    assert_eq!(loaded.state, after.state);

    // A refusal writes nothing and comes back as the caller's error.
    let refused = repository
        .execute(stream, |_| Err::<(Vec<EventData>, ()), _>("no"))
        .await;
    assert!(matches!(refused, Err(AggregateError::Rejected("no"))));
    assert_eq!(
        full_replay(&client).load(stream).await.unwrap().revision,
        after.revision
    );
    server.stop().await;
}

/// Appends to `stream` from another connection, from inside a synchronous
/// decision running on a worker thread.
fn interfere(other: &Client, stream: &str) {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(other.append(
            stream,
            ExpectedRevision::Any,
            vec![number(100)],
        ))
    })
    .expect("the concurrent write");
}

/// Appends a hand-made event to the snapshot stream of `stream`: the latest
/// snapshot from then on.
async fn plant(client: &Client, stream: &str, event_type: &str, metadata: &str, data: &str) {
    client
        .append(
            snapshot_stream(stream),
            ExpectedRevision::Any,
            vec![
                EventData::binary(event_type.to_owned(), data.to_owned())
                    .metadata(metadata.to_owned()),
            ],
        )
        .await
        .expect("plant a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_snapshots_are_ignored_with_a_full_replay() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let stream = "tally-trust";
    append_numbers(&client, stream, 0..10).await;
    let repository = Repository::<Tally>::new(client.clone()).snapshot_every(5);
    assert_eq!(
        repository.execute(stream, add(10)).await.unwrap().snapshot,
        Some(10)
    );
    let good = repository.load(stream).await.unwrap();
    assert_eq!(good.snapshot, SnapshotUse::Used { revision: 10 });
    assert_eq!(good.replayed, 0);
    let full = full_replay(&client).load(stream).await.unwrap();
    assert_eq!(good.state, full.state);

    let valid = |revision: u64, first: u64| {
        format!(r#"{{"revision":{revision},"first":{first},"schema":"test.tally/1"}}"#)
    };
    let cases: [(&str, String, &str, SnapshotIgnored); 5] = [
        // Someone else's event in the snapshot stream.
        ("Noted", valid(10, 0), "11 55 0", SnapshotIgnored::Foreign),
        // Another aggregate's (or an older layout's) snapshot.
        (
            SNAPSHOT_EVENT_TYPE,
            r#"{"revision":10,"first":0,"schema":"test.tally/0"}"#.into(),
            "11 55 0",
            SnapshotIgnored::Foreign,
        ),
        // Metadata not in the repository's exact form.
        (
            SNAPSHOT_EVENT_TYPE,
            r#"{"revision": 10, "first": 0, "schema": "test.tally/1"}"#.into(),
            "11 55 0",
            SnapshotIgnored::Foreign,
        ),
        // Bytes the aggregate cannot read.
        (
            SNAPSHOT_EVENT_TYPE,
            valid(10, 0),
            "corrupt",
            SnapshotIgnored::Undecodable("invalid digit found in string".into()),
        ),
        // Claims revisions the stream does not have.
        (
            SNAPSHOT_EVENT_TYPE,
            valid(500, 0),
            "501 0 0",
            SnapshotIgnored::PastHead {
                revision: 500,
                head: Some(10),
            },
        ),
    ];
    for (event_type, metadata, data, why) in cases {
        plant(&client, stream, event_type, &metadata, data).await;
        let loaded = repository.load(stream).await.unwrap();
        assert_eq!(
            loaded.snapshot,
            SnapshotUse::Ignored(why),
            "{metadata} {data}"
        );
        assert_eq!(loaded.replayed, 11, "a full replay");
        assert_eq!(loaded.state, full.state, "never the planted state");
        assert_eq!(loaded.revision, Some(10));
    }

    // A good snapshot, then the stream is deleted and recreated: revisions
    // go on (11, 12, 13) but the state starts over; the snapshot of the old
    // life is ignored.
    let loaded = repository.load(stream).await.unwrap();
    assert_eq!(
        repository.write_snapshot(stream, &loaded).await.unwrap(),
        Some(10)
    );
    assert_eq!(
        repository.load(stream).await.unwrap().snapshot,
        SnapshotUse::Used { revision: 10 }
    );
    client.delete(stream, ExpectedRevision::Any).await.unwrap();
    append_numbers(&client, stream, 1..4).await;
    let recreated = repository.load(stream).await.unwrap();
    let full = full_replay(&client).load(stream).await.unwrap();
    assert_eq!(full.state.count, 3);
    assert_eq!(full.revision, Some(13));
    assert_eq!(recreated.state, full.state);
    assert_eq!(recreated.revision, Some(13));
    assert_eq!(
        recreated.snapshot,
        SnapshotUse::Ignored(SnapshotIgnored::Rebased {
            first: 0,
            now: Some(11),
        })
    );
    assert_eq!(recreated.replayed, 3);
    // The next command snapshots the new life, which loads from then on.
    assert_eq!(
        repository.execute(stream, add(4)).await.unwrap().snapshot,
        Some(14)
    );
    assert_eq!(
        repository.load(stream).await.unwrap().snapshot,
        SnapshotUse::Used { revision: 14 }
    );

    // A snapshot of events since truncated away: the full replay starts
    // at the first readable event, and so must the state.
    let stream = "tally-truncated";
    append_numbers(&client, stream, 0..6).await;
    let loaded = repository.load(stream).await.unwrap();
    assert_eq!(
        repository.write_snapshot(stream, &loaded).await.unwrap(),
        Some(5)
    );
    client
        .set_stream_metadata(
            stream,
            ExpectedRevision::Any,
            StreamMetadata {
                truncate_before: Some(4),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    let loaded = repository.load(stream).await.unwrap();
    assert_eq!(
        loaded.snapshot,
        SnapshotUse::Ignored(SnapshotIgnored::Rebased {
            first: 0,
            now: Some(4),
        })
    );
    assert_eq!(loaded.replayed, 2);
    assert_eq!(
        loaded.state,
        full_replay(&client).load(stream).await.unwrap().state
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_stream_load_its_snapshots_which_never_show_in_its_category() {
    let SecureSetup { server, admin } =
        SecureSetup::start(&[("alice", &[]), ("bob", &[]), ("carol", &[])]).await;
    let stream = "tally-acl";
    append_numbers(&admin, stream, 0..20).await;
    set_acl(
        &admin,
        stream,
        r#"{"$acl": {"$r": ["alice", "bob"], "$w": "alice"}}"#,
    )
    .await;

    // alice writes the stream, so she writes (and bounds) its snapshots.
    let alice = server.connect_as("alice", USER_PASSWORD).await;
    let executed = Repository::<Tally>::new(alice)
        .snapshot_every(10)
        .execute(stream, add(20))
        .await
        .unwrap();
    assert_eq!(executed.snapshot, Some(20));

    // bob only reads the stream: he loads from the snapshot all the same.
    let bob = server.connect_as("bob", USER_PASSWORD).await;
    let bobs = Repository::<Tally>::new(bob.clone()).snapshot_every(10);
    let loaded = bobs.load(stream).await.unwrap();
    assert_eq!(loaded.snapshot, SnapshotUse::Used { revision: 20 });
    assert_eq!(
        loaded.state,
        full_replay(&admin).load(stream).await.unwrap().state
    );
    let denied = bobs.execute(stream, add(1)).await;
    assert!(
        matches!(
            denied,
            Err(AggregateError::Client(Error::PermissionDenied(_)))
        ),
        "{denied:?}"
    );
    let planted = bob
        .append(
            snapshot_stream(stream),
            ExpectedRevision::Any,
            vec![number(1)],
        )
        .await;
    assert!(
        matches!(planted, Err(Error::PermissionDenied(_))),
        "{planted:?}"
    );

    // carol may not read the stream: nor its snapshots.
    let carol = server.connect_as("carol", USER_PASSWORD).await;
    let denied = Repository::<Tally>::new(carol.clone()).load(stream).await;
    assert!(
        matches!(
            denied,
            Err(AggregateError::Client(Error::PermissionDenied(_)))
        ),
        "{denied:?}"
    );
    let all = carol
        .read_all(ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert!(all.iter().all(|event| !event.stream.contains("tally-acl")));

    // The category holds the stream's events only; `$all` has the snapshot.
    let category = admin
        .read_category("tally", ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(category.len(), 21);
    assert!(category.iter().all(|event| event.stream == stream));
    let all = admin
        .read_all(ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let snapshots: Vec<_> = all
        .iter()
        .filter(|event| event.stream == snapshot_stream(stream))
        .collect();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].event_type, SNAPSHOT_EVENT_TYPE);
    // Other `$` names stay reserved for the server.
    for reserved in ["$snapshot-", "$snapshot-$all", "$tally-acl"] {
        let refused = admin
            .append(reserved, ExpectedRevision::Any, vec![number(1)])
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{reserved}: {refused:?}"
        );
    }
    server.stop().await;
}
