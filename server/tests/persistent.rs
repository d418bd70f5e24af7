//! Persistent subscriptions (consumer groups) through the real client: sharing,
//! redelivery, parking and replay, restarts, strategies, and bad input.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_client::{
    Client, Consumer, Delivery, Error, EventData, ExpectedRevision, Filter, GroupOptions,
    GroupSettings, GroupStart, NackAction, Strategy,
};
use cairn_testkit::{TestServer, client_numbered, eventually_within, read_all_client};
use uuid::Uuid;

/// Generous bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(30);

/// Appends `count` events to `stream` in batches; returns their ids in order.
async fn fill(client: &Client, stream: &str, count: u64) -> Vec<Uuid> {
    let mut ids = Vec::new();
    let mut next = 0;
    while next < count {
        let batch: Vec<EventData> = (next..count.min(next + 500))
            .map(|n| client_numbered("Counted", n))
            .collect();
        ids.extend(batch.iter().map(|event| event.id));
        next += batch.len() as u64;
        client
            .append(stream, ExpectedRevision::Any, batch)
            .await
            .expect("append");
    }
    ids
}

async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consume")
        .expect("the call is open")
}

/// The next delivery, or `None` once `total` reached `target` (the consumers
/// together finished everything).
async fn next_until(
    consumer: &mut Consumer,
    total: &AtomicUsize,
    target: usize,
) -> Option<Delivery> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if total.load(Ordering::SeqCst) >= target {
            return None;
        }
        assert!(tokio::time::Instant::now() < deadline, "consumers stalled");
        if let Ok(next) = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await {
            return Some(next.expect("consume").expect("open"));
        }
    }
}

/// Polls the group's info until `done` holds.
async fn wait_for_info(
    client: &Client,
    group: &str,
    done: impl Fn(&cairn_client::GroupInfo) -> bool,
) -> cairn_client::GroupInfo {
    let what = format!("group {group} to reach the state");
    eventually_within(DEADLINE, &what, || async {
        let info = client.group_info(group).await.expect("info");
        if done(&info) { Ok(info) } else { Err(info) }
    })
    .await
}

fn settings(change: impl FnOnce(&mut GroupSettings)) -> GroupOptions {
    let mut options = GroupOptions::default();
    change(&mut options.settings);
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_round_robin_consumers_share_every_event_once() {
    let server = TestServer::start().await;
    let writer = server.client().await;
    let ids = fill(&writer, "orders-1", 3_000).await;
    writer
        .create_group("workers", "orders-1", GroupOptions::default())
        .await
        .expect("create");

    let total = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..3 {
        // Each consumer has its own connection, like separate service instances.
        let client = server.client().await;
        let total = Arc::clone(&total);
        tasks.push(tokio::spawn(async move {
            let mut consumer = client
                .consume("workers", format!("worker-{n}"), 16)
                .await
                .expect("consume");
            let mut acked = Vec::new();
            while let Some(delivery) = next_until(&mut consumer, &total, 3_000).await {
                assert_eq!(delivery.retry_count, 0, "nothing failed, nothing retried");
                delivery.ack().await.expect("ack");
                acked.push(delivery.event.id);
                total.fetch_add(1, Ordering::SeqCst);
            }
            consumer.close().await.expect("close");
            acked
        }));
    }
    let mut all = Vec::new();
    let mut shares = Vec::new();
    for task in tasks {
        let acked = task.await.expect("consumer task");
        shares.push(acked.len());
        all.extend(acked);
    }
    assert_eq!(
        all.len(),
        3_000,
        "every event delivered exactly once: {shares:?}"
    );
    let unique: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(unique, ids.iter().copied().collect::<HashSet<_>>());
    for share in &shares {
        assert!(
            *share >= 600,
            "round-robin keeps the split balanced: {shares:?}"
        );
    }
    let info = wait_for_info(&writer, "workers", |info| {
        info.checkpoint_revision == Some(2_999)
    })
    .await;
    assert_eq!(info.acked_total, 3_000);
    assert_eq!(info.in_flight, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_consumers_events_go_to_the_others() {
    let server = TestServer::start().await;
    let writer = server.client().await;
    let ids = fill(&writer, "jobs-1", 200).await;
    writer
        .create_group("jobs", "jobs-1", GroupOptions::default())
        .await
        .expect("create");

    // The doomed consumer takes 10 events and never acks them.
    let doomed_client = server.client().await;
    let mut doomed = doomed_client
        .consume("jobs", "doomed", 10)
        .await
        .expect("consume");
    let mut held = HashSet::new();
    for _ in 0..10 {
        held.insert(next_delivery(&mut doomed).await.event.id);
    }
    let survivor_client = server.client().await;
    let mut survivor = survivor_client
        .consume("jobs", "survivor", 50)
        .await
        .expect("consume");
    drop(doomed);
    drop(doomed_client);

    let mut acked = HashSet::new();
    let mut redelivered = HashSet::new();
    while acked.len() < 200 {
        let delivery = next_delivery(&mut survivor).await;
        if held.contains(&delivery.event.id) {
            redelivered.insert(delivery.event.id);
        }
        delivery.ack().await.expect("ack");
        acked.insert(delivery.event.id);
    }
    assert_eq!(redelivered, held, "every held event reached the survivor");
    assert_eq!(acked, ids.into_iter().collect::<HashSet<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_always_fails_is_retried_then_parked_and_replayed() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "mail-1", 20).await;
    let poison = ids[7];
    client
        .create_group("mailer", "mail-1", settings(|s| s.max_retries = Some(3)))
        .await
        .expect("create");
    let mut consumer = client
        .consume("mailer", "mailer-1", 5)
        .await
        .expect("consume");
    let mut poison_deliveries = Vec::new();
    let mut acked = HashSet::new();
    while acked.len() < 19 || poison_deliveries.len() < 4 {
        let delivery = next_delivery(&mut consumer).await;
        if delivery.event.id == poison {
            poison_deliveries.push(delivery.retry_count);
            delivery
                .nack(NackAction::Retry, "smtp said no")
                .await
                .expect("nack");
        } else {
            delivery.ack().await.expect("ack");
            acked.insert(delivery.event.id);
        }
    }
    assert_eq!(
        poison_deliveries,
        vec![0, 1, 2, 3],
        "first delivery plus max_retries"
    );
    // The parked count is read from the parked stream, the totals from the
    // group's actor, which learns the park is durable a moment later: wait
    // for both.
    let info = wait_for_info(&client, "mailer", |info| {
        info.parked == 1 && info.parked_total == 1
    })
    .await;
    assert_eq!(info.retried_total, 3);
    // Parking finished the event: the checkpoint passed it.
    let info = wait_for_info(&client, "mailer", |info| {
        info.checkpoint_revision == Some(19)
    })
    .await;
    assert_eq!(info.in_flight, 0);

    // The parked stream is readable and says why.
    let parked = read_all_client(&client, "$sys-ps-mailer-parked")
        .await
        .expect("parked events");
    assert_eq!(parked.len(), 1);
    let record: serde_json::Value = serde_json::from_slice(&parked[0].data).expect("json");
    assert_eq!(record["event_id"], poison.to_string());
    assert!(
        record["reason"].as_str().unwrap().contains("smtp said no"),
        "{record}"
    );

    assert_eq!(client.replay_parked("mailer", 0).await.expect("replay"), 1);
    let replayed = next_delivery(&mut consumer).await;
    assert_eq!(replayed.event.id, poison);
    assert_eq!(replayed.retry_count, 0, "a replay starts over");
    replayed.ack().await.expect("ack");
    wait_for_info(&client, "mailer", |info| info.parked == 0).await;
    assert_eq!(
        client.replay_parked("mailer", 0).await.expect("replay"),
        0,
        "nothing left to replay"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_events_are_redelivered_after_the_timeout() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "slow-1", 3).await;
    client
        .create_group(
            "slow",
            "slow-1",
            settings(|s| s.message_timeout = Some(Duration::from_millis(200))),
        )
        .await
        .expect("create");
    let mut consumer = client.consume("slow", "slow-1", 1).await.expect("consume");
    let first = next_delivery(&mut consumer).await;
    assert_eq!((first.event.id, first.retry_count), (ids[0], 0));
    // Not acked: it comes back.
    let again = next_delivery(&mut consumer).await;
    assert_eq!((again.event.id, again.retry_count), (ids[0], 1));
    again.ack().await.expect("ack");
    // A late ack of the first delivery is harmless.
    first.ack().await.expect("late ack");
    let second = next_delivery(&mut consumer).await;
    assert_eq!(second.event.id, ids[1]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_shutdown_writes_the_groups_final_checkpoint() {
    let server = TestServer::start().await;
    let client = server.client().await;
    fill(&client, "tally-1", 100).await;
    // Thresholds no run reaches: only the shutdown writes a checkpoint.
    client
        .create_group(
            "tally",
            "tally-1",
            settings(|s| {
                s.checkpoint_after_events = Some(100_000);
                s.checkpoint_after = Some(Duration::from_secs(3_600));
            }),
        )
        .await
        .expect("create");
    let mut consumer = client
        .consume("tally", "tally-1", 10)
        .await
        .expect("consume");
    for _ in 0..40 {
        next_delivery(&mut consumer).await.ack().await.expect("ack");
    }
    // Leaving cleanly hands the server every ack first.
    consumer.close().await.expect("close");
    let info = wait_for_info(&client, "tally", |info| info.consumers.is_empty()).await;
    assert_eq!(info.acked_total, 40);
    assert_eq!(info.checkpoint_revision, Some(39));
    let written = client
        .read_stream(
            "$sys-ps-tally-checkpoint",
            cairn_client::ReadOptions::forwards(),
        )
        .await;
    assert!(
        matches!(written, Err(cairn_client::Error::StreamNotFound { .. })),
        "no checkpoint written before the shutdown"
    );
    drop(client);
    // `stop` returns only when the actor wrote its checkpoint and the store
    // is closed: reopening the directory at once must work.
    let (data, _) = server.stop_keep_data().await;
    let server = TestServer::start_in(data, |_| {}).await;
    let client = server.client().await;
    let groups = client.list_groups().await.expect("list");
    assert_eq!(groups[0].checkpoint_revision, Some(39));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_server_resumes_the_group_from_its_checkpoint() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "ledger-1", 3_000).await;
    client
        .create_group(
            "ledger",
            "ledger-1",
            settings(|s| s.checkpoint_after_events = Some(50)),
        )
        .await
        .expect("create");
    let mut acked: Vec<Uuid> = Vec::new();
    {
        let mut consumer = client
            .consume("ledger", "ledger-1", 20)
            .await
            .expect("consume");
        while acked.len() < 1_000 {
            let delivery = next_delivery(&mut consumer).await;
            delivery.ack().await.expect("ack");
            acked.push(delivery.event.id);
        }
        wait_for_info(&client, "ledger", |info| {
            info.checkpoint_revision
                .is_some_and(|revision| revision >= 900)
        })
        .await;
    }
    drop(client);
    let (data, _) = server.stop_keep_data().await;

    let server = TestServer::start_in(data, |_| {}).await;
    let client = server.client().await;
    let groups = client.list_groups().await.expect("list");
    assert_eq!(groups.len(), 1, "the group survived the restart");
    assert_eq!(groups[0].settings.checkpoint_after_events, Some(50));
    let resumed_at = groups[0].checkpoint_revision.expect("a checkpoint") as usize;
    assert!((900..1_000).contains(&resumed_at), "{resumed_at}");
    let mut consumer = client
        .consume("ledger", "ledger-2", 20)
        .await
        .expect("consume");
    let mut after_restart = Vec::new();
    while after_restart.len() < 3_000 - resumed_at - 1 {
        let delivery = next_delivery(&mut consumer).await;
        delivery.ack().await.expect("ack");
        after_restart.push(delivery.event.id);
    }
    assert_eq!(
        after_restart,
        ids[resumed_at + 1..].to_vec(),
        "delivery resumes right after the checkpoint, in order"
    );
    let all: HashSet<Uuid> = acked.iter().chain(&after_restart).copied().collect();
    assert_eq!(all.len(), 3_000, "nothing lost across the restart");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_groups_keep_each_streams_order_across_retries() {
    let server = TestServer::start().await;
    let writer = server.client().await;
    writer
        .create_group(
            "carts",
            "$ce-cart",
            settings(|s| s.strategy = Some(Strategy::PinnedByStream)),
        )
        .await
        .expect("create");
    // Pins stick while their consumer is connected, so a consumer alone with
    // the whole backlog would take every stream: all three join (`consume`
    // returns once the server confirmed) before the first event is written.
    let mut consumers = Vec::new();
    for n in 0..3 {
        let client = server.client().await;
        let consumer = client
            .consume("carts", format!("carts-{n}"), 8)
            .await
            .expect("consume");
        consumers.push((client, consumer));
    }
    let finished = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (client, mut consumer) in consumers {
        let finished = Arc::clone(&finished);
        tasks.push(tokio::spawn(async move {
            let _connection = client;
            // (stream, revision) in the order this consumer finished them.
            let mut done: Vec<(String, u64)> = Vec::new();
            loop {
                let Some(delivery) = next_until(&mut consumer, &finished, 8 * 60).await else {
                    consumer.close().await.expect("close");
                    return done;
                };
                let event = &delivery.event;
                // Every 7th event fails once: its retry must still come before
                // the stream's next event.
                if event.revision % 7 == 3 && delivery.retry_count == 0 {
                    delivery
                        .nack(NackAction::Retry, "flaky")
                        .await
                        .expect("nack");
                    continue;
                }
                done.push((event.stream.clone(), event.revision));
                delivery.ack().await.expect("ack");
                finished.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for n in 0..8 {
        fill(&writer, &format!("cart-{n}"), 60).await;
    }
    let mut owners: HashMap<String, usize> = HashMap::new();
    let mut total = 0;
    for (consumer, task) in tasks.into_iter().enumerate() {
        let done = task.await.expect("consumer task");
        total += done.len();
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (stream, revision) in &done {
            if let Some(previous) = last.insert(stream, *revision) {
                assert_eq!(*revision, previous + 1, "{stream} in order");
            } else {
                assert_eq!(*revision, 0, "{stream} starts at 0");
            }
            let owner = *owners.entry(stream.clone()).or_insert(consumer);
            assert_eq!(owner, consumer, "{stream} stays with one consumer");
        }
    }
    assert_eq!(total, 8 * 60);
    assert!(
        owners.values().collect::<HashSet<_>>().len() > 1,
        "streams are spread over consumers: {owners:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_from_the_end_gets_only_new_events() {
    let server = TestServer::start().await;
    let client = server.client().await;
    fill(&client, "late-1", 5).await;
    client
        .create_group(
            "late",
            "late-1",
            GroupOptions {
                start: GroupStart::End,
                ..GroupOptions::default()
            },
        )
        .await
        .expect("create");
    let new = fill(&client, "late-1", 2).await;
    let mut consumer = client.consume("late", "late-1", 4).await.expect("consume");
    for id in new {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.event.id, id);
        assert!(delivery.event.revision >= 5);
        delivery.ack().await.expect("ack");
    }
    let refused = client
        .create_group(
            "late-all",
            "$all",
            GroupOptions {
                start: GroupStart::After(3),
                ..GroupOptions::default()
            },
        )
        .await;
    assert!(
        refused.is_ok(),
        "After(n) is a position on $all: {refused:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_to_single_uses_one_consumer_until_it_leaves() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "single-1", 40).await;
    client
        .create_group(
            "single",
            "single-1",
            settings(|s| s.strategy = Some(Strategy::DispatchToSingle)),
        )
        .await
        .expect("create");
    let primary_client = server.client().await;
    let mut primary = primary_client
        .consume("single", "primary", 4)
        .await
        .expect("consume");
    let standby_client = server.client().await;
    let mut standby = standby_client
        .consume("single", "standby", 4)
        .await
        .expect("consume");
    for id in &ids[..20] {
        let delivery = next_delivery(&mut primary).await;
        assert_eq!(delivery.event.id, *id);
        delivery.ack().await.expect("ack");
    }
    // An ack is a message on the consumer's stream: wait until the group has
    // processed all twenty, or the last may still be in flight when the
    // primary leaves and be redelivered to the standby (at least once).
    let info = wait_for_info(&client, "single", |info| info.acked_total >= 20).await;
    let standby_info = info
        .consumers
        .iter()
        .find(|consumer| consumer.name == "standby")
        .expect("standby listed");
    assert_eq!(standby_info.delivered, 0, "the standby got nothing");
    drop(primary);
    drop(primary_client);
    let mut rest = HashSet::new();
    while rest.len() < 20 {
        let delivery = next_delivery(&mut standby).await;
        delivery.ack().await.expect("ack");
        rest.insert(delivery.event.id);
    }
    assert_eq!(rest, ids[20..].iter().copied().collect());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_groups_filter_and_never_see_system_streams() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_group(
            "audit",
            "$all",
            GroupOptions {
                filter: Some(Filter {
                    stream_prefixes: vec!["audit-".into()],
                    ..Filter::default()
                }),
                settings: GroupSettings {
                    checkpoint_after_events: Some(1),
                    ..GroupSettings::default()
                },
                ..GroupOptions::default()
            },
        )
        .await
        .expect("create");
    let mut consumer = client
        .consume("audit", "audit-1", 10)
        .await
        .expect("consume");
    for n in 0..30 {
        let stream = if n % 3 == 0 { "audit-1" } else { "other-1" };
        client
            .append(
                stream,
                ExpectedRevision::Any,
                vec![client_numbered("Counted", n)],
            )
            .await
            .expect("append");
    }
    for _ in 0..10 {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.event.stream, "audit-1");
        delivery.ack().await.expect("ack");
    }
    // The group's own checkpoint writes land in $all; they must not come back.
    // A deliberate window: nothing may arrive within it (no condition to await).
    let quiet = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(quiet.is_err(), "nothing else delivered: {quiet:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_group_ends_its_consumers() {
    let server = TestServer::start().await;
    let client = server.client().await;
    fill(&client, "gone-1", 1).await;
    client
        .create_group("gone", "gone-1", GroupOptions::default())
        .await
        .expect("create");
    let consumer_client = server.client().await;
    let mut consumer = consumer_client
        .consume("gone", "c", 1)
        .await
        .expect("consume");
    let _held = next_delivery(&mut consumer).await;
    client.delete_group("gone").await.expect("delete");
    let ended = tokio::time::timeout(DEADLINE, consumer.next())
        .await
        .expect("the call ends");
    assert!(
        matches!(ended, Err(Error::GroupNotFound { ref group }) if group == "gone"),
        "{ended:?}"
    );
    assert!(client.list_groups().await.expect("list").is_empty());
    // The name is free again, and the new group starts fresh.
    client
        .create_group("gone", "gone-1", GroupOptions::default())
        .await
        .expect("re-create");
    let info = client.group_info("gone").await.expect("info");
    assert_eq!(info.parked, 0);
    server.stop().await;
}

/// A STOP nack ends that consumer's call (OK through the client, the
/// documented FAILED_PRECONDITION / CONSUMER_STOPPED on the wire) while its
/// request side is still open; everything it held goes to the next consumer
/// without counting a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stop_nack_ends_only_that_consumer_and_gives_back_what_it_held() {
    use cairn_proto::v1 as pb;
    use cairn_proto::v1::persistent_subscriptions_client::PersistentSubscriptionsClient;
    use tonic_types::StatusExt;

    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "stop-1", 5).await;
    client
        .create_group("stop", "stop-1", GroupOptions::default())
        .await
        .expect("create");

    let stopping_client = server.client().await;
    let mut stopping = stopping_client
        .consume("stop", "stopping", 5)
        .await
        .expect("consume");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_delivery(&mut stopping).await);
    }
    held[2].nack(NackAction::Stop, "").await.expect("nack");
    let ended = tokio::time::timeout(DEADLINE, stopping.next())
        .await
        .expect("the call ends");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    // Its deliveries' request side is still open: only the STOP ended it.
    drop(held);

    let mut next = client.consume("stop", "next", 5).await.expect("consume");
    let mut given_back = HashSet::new();
    for _ in 0..5 {
        let delivery = next_delivery(&mut next).await;
        assert_eq!(delivery.retry_count, 0, "a STOP counts no retry");
        delivery.ack().await.expect("ack");
        given_back.insert(delivery.event.id);
    }
    assert_eq!(given_back, ids.iter().copied().collect::<HashSet<_>>());
    next.close().await.expect("close");

    // On the wire.
    fill(&client, "stop-1", 1).await;
    let mut raw = PersistentSubscriptionsClient::new(server.channel().await);
    let (requests, outgoing) = tokio::sync::mpsc::channel(8);
    requests
        .send(pb::ConsumeRequest {
            content: Some(pb::consume_request::Content::Open(pb::ConsumeOpen {
                group: "stop".into(),
                consumer_name: "raw".into(),
                max_in_flight: 1,
            })),
        })
        .await
        .unwrap();
    let mut responses = raw
        .consume(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("consume")
        .into_inner();
    let event_id = loop {
        let message = tokio::time::timeout(DEADLINE, responses.message())
            .await
            .expect("a message")
            .expect("message")
            .expect("open");
        if let Some(pb::consume_response::Content::Event(event)) = message.content {
            break event.event.expect("the event").id;
        }
    };
    requests
        .send(pb::ConsumeRequest {
            content: Some(pb::consume_request::Content::Nack(pb::Nack {
                event_ids: vec![event_id],
                action: pb::NackAction::Stop.into(),
                reason: String::new(),
            })),
        })
        .await
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, responses.message())
        .await
        .expect("the call ends")
        .expect_err("ended with the STOP status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.get_details_error_info().map(|info| info.reason),
        Some(cairn_proto::reason::CONSUMER_STOPPED.to_owned())
    );
    assert!(status.message().contains("STOP nack"), "{status:?}");
    drop(requests);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_changes_settings_and_keeps_the_rest() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_group("tuned", "tuned-1", settings(|s| s.max_retries = Some(2)))
        .await
        .expect("create");
    client
        .update_group(
            "tuned",
            GroupSettings {
                strategy: Some(Strategy::PinnedByStream),
                ..GroupSettings::default()
            },
        )
        .await
        .expect("update");
    let info = client.group_info("tuned").await.expect("info");
    assert_eq!(info.settings.strategy, Some(Strategy::PinnedByStream));
    assert_eq!(info.settings.max_retries, Some(2), "unset fields are kept");
    let refused = client
        .update_group(
            "tuned",
            GroupSettings {
                max_in_flight_per_consumer: Some(0),
                ..GroupSettings::default()
            },
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    let info = client.group_info("tuned").await.expect("info");
    assert_eq!(
        info.settings.max_in_flight_per_consumer,
        Some(64),
        "unchanged"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_group("taken", "s-1", GroupOptions::default())
        .await
        .expect("create");
    let again = client
        .create_group("taken", "s-2", GroupOptions::default())
        .await;
    assert!(
        matches!(again, Err(Error::GroupExists { ref group }) if group == "taken"),
        "{again:?}"
    );
    for bad_name in ["", "has space", "slash/name"] {
        let refused = client
            .create_group(bad_name, "s-1", GroupOptions::default())
            .await;
        assert!(
            matches!(refused, Err(Error::InvalidArgument(_))),
            "{refused:?}"
        );
    }
    let filter_on_stream = client
        .create_group(
            "f",
            "s-1",
            GroupOptions {
                filter: Some(Filter {
                    stream_prefixes: vec!["x".into()],
                    ..Filter::default()
                }),
                ..GroupOptions::default()
            },
        )
        .await;
    assert!(matches!(filter_on_stream, Err(Error::InvalidArgument(_))));
    let bad_regex = client
        .create_group(
            "r",
            "$all",
            GroupOptions {
                filter: Some(Filter {
                    stream_regex: Some("(".into()),
                    ..Filter::default()
                }),
                ..GroupOptions::default()
            },
        )
        .await;
    assert!(
        matches!(bad_regex, Err(Error::InvalidArgument(_))),
        "{bad_regex:?}"
    );
    let bad_source = client
        .create_group("b", "$nonsense", GroupOptions::default())
        .await;
    assert!(
        matches!(bad_source, Err(Error::InvalidArgument(_))),
        "{bad_source:?}"
    );
    let names: Vec<String> = client
        .list_groups()
        .await
        .expect("list")
        .into_iter()
        .map(|info| info.group)
        .collect();
    assert_eq!(names, vec!["taken".to_owned()], "nothing else was created");

    for missing in [
        client.group_info("missing").await.map(|_| ()),
        client.delete_group("missing").await,
        client.replay_parked("missing", 0).await.map(|_| ()),
        client
            .update_group("missing", GroupSettings::default())
            .await,
        client.consume("missing", "c", 0).await.map(|_| ()),
    ] {
        assert!(
            matches!(missing, Err(Error::GroupNotFound { ref group }) if group == "missing"),
            "{missing:?}"
        );
    }

    // Clients cannot forge a group's state.
    let forged = client
        .append(
            "$sys-ps-taken-checkpoint",
            ExpectedRevision::Any,
            vec![client_numbered("Counted", 1)],
        )
        .await;
    assert!(
        matches!(forged, Err(Error::InvalidArgument(_))),
        "{forged:?}"
    );
    let forged_delete = client.delete("$sys-ps-groups", ExpectedRevision::Any).await;
    assert!(
        matches!(forged_delete, Err(Error::InvalidArgument(_))),
        "{forged_delete:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_consume_calls_are_refused() {
    use cairn_proto::v1 as pb;
    use cairn_proto::v1::persistent_subscriptions_client::PersistentSubscriptionsClient;

    let server = TestServer::start().await;
    let client = server.client().await;
    let ids = fill(&client, "raw-1", 2).await;
    client
        .create_group("raw", "raw-1", GroupOptions::default())
        .await
        .expect("create");
    let mut raw = PersistentSubscriptionsClient::new(server.channel().await);

    // The first message must be `open`.
    let not_open = pb::ConsumeRequest {
        content: Some(pb::consume_request::Content::Ack(pb::Ack {
            event_ids: vec![ids[0].to_string()],
        })),
    };
    let refused = raw.consume(tokio_stream::iter(vec![not_open])).await;
    assert_eq!(
        refused.expect_err("refused").code(),
        tonic::Code::InvalidArgument
    );

    // A call that never sends `open` is ended, not kept forever. Its request
    // side stays open (the sender is alive) and silent.
    let (_silent, nothing) = tokio::sync::mpsc::channel::<pb::ConsumeRequest>(1);
    let silent = tokio::time::timeout(
        DEADLINE,
        raw.consume(tokio_stream::wrappers::ReceiverStream::new(nothing)),
    )
    .await
    .expect("the server ends a silent call");
    let status = silent.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("no `open`"), "{status:?}");

    // A malformed id ends the call with INVALID_ARGUMENT; the event it held
    // goes back to the group.
    let (requests, outgoing) = tokio::sync::mpsc::channel(8);
    requests
        .send(pb::ConsumeRequest {
            content: Some(pb::consume_request::Content::Open(pb::ConsumeOpen {
                group: "raw".into(),
                consumer_name: "raw".into(),
                max_in_flight: 1,
            })),
        })
        .await
        .unwrap();
    let mut responses = raw
        .consume(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("consume")
        .into_inner();
    let joined = responses.message().await.expect("joined").expect("message");
    assert!(matches!(
        joined.content,
        Some(pb::consume_response::Content::Joined(_))
    ));
    let first = responses.message().await.expect("event").expect("message");
    assert!(matches!(
        first.content,
        Some(pb::consume_response::Content::Event(_))
    ));
    requests
        .send(pb::ConsumeRequest {
            content: Some(pb::consume_request::Content::Ack(pb::Ack {
                event_ids: vec!["not-a-uuid".into()],
            })),
        })
        .await
        .unwrap();
    let ended = loop {
        match tokio::time::timeout(DEADLINE, responses.message())
            .await
            .expect("the call ends")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("ended with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not-a-uuid"),
        "{}",
        status.message()
    );

    let mut consumer = client.consume("raw", "good", 2).await.expect("consume");
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.event.id, ids[0], "the held event came back");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_and_consumer_limits_are_enforced_with_resource_exhausted() {
    let server = TestServer::start_with(|settings| {
        settings.max_groups = 2;
        settings.max_consumers_per_group = 2;
    })
    .await;
    let client = server.client().await;
    fill(&client, "cap-1", 1).await;
    for group in ["cap-a", "cap-b"] {
        client
            .create_group(group, "cap-1", GroupOptions::default())
            .await
            .expect("create");
    }
    let third = client
        .create_group("cap-c", "cap-1", GroupOptions::default())
        .await;
    assert!(
        matches!(third, Err(Error::LimitExceeded(ref message)) if message.contains("max_groups")),
        "{third:?}"
    );
    assert_eq!(client.list_groups().await.expect("list").len(), 2);

    let first = client.consume("cap-a", "one", 1).await.expect("consume");
    let second = client.consume("cap-a", "two", 1).await.expect("consume");
    let refused = client.consume("cap-a", "three", 1).await;
    assert!(
        matches!(refused, Err(Error::LimitExceeded(ref message)) if message.contains("max_consumers_per_group")),
        "{:?}",
        refused.err()
    );
    // The limit is per group, and a consumer that leaves frees its place.
    let other = client.consume("cap-b", "three", 1).await.expect("consume");
    first.close().await.expect("close");
    wait_for_info(&client, "cap-a", |info| info.consumers.len() == 1).await;
    let again = client.consume("cap-a", "three", 1).await.expect("consume");
    drop((second, other, again));
    server.stop().await;
}
