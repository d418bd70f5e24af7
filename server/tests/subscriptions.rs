//! Catch-up subscriptions: history then live, no gap, no duplicate, bounded memory.

use std::time::Duration;

use cairn_client::{
    Error, ExpectedRevision, Filter, RecordedEvent, SubscribeOptions, Subscription,
    SubscriptionMessage,
};
use cairn_testkit::{TestServer, client_numbered, eventually, read_all_client};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);

/// Collects events from a subscription until `count` arrived; fails on timeout.
async fn collect(
    subscription: &mut Subscription,
    count: usize,
    slow: bool,
) -> (Vec<RecordedEvent>, u32) {
    let mut events = Vec::with_capacity(count);
    let mut caught_up = 0;
    while events.len() < count {
        let message = timeout(WAIT, subscription.next_message())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {count} events", events.len()))
            .expect("subscription failed")
            .expect("subscription ended early");
        match message {
            SubscriptionMessage::Event(event) => {
                events.push(event);
                if slow && events.len().is_multiple_of(50) {
                    // A deliberately slow reader, not a wait for anything:
                    // it pauses every 50 events.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            SubscriptionMessage::CaughtUp { .. } => caught_up += 1,
            _ => {}
        }
    }
    (events, caught_up)
}

fn ids(events: &[RecordedEvent]) -> Vec<(u64, uuid::Uuid)> {
    events
        .iter()
        .map(|event| (event.position, event.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_subscribers_four_writers_exact_sequences() {
    eight_subscribers_four_writers(5_000).await;
}

async fn eight_subscribers_four_writers(per_writer: u64) {
    // A small ring forces the slow subscriber (and bursts) back to storage.
    let server = TestServer::start_with(|settings| settings.live_ring_events = 512).await;
    let client = server.client().await;
    client
        .append(
            "order-0",
            ExpectedRevision::NoStream,
            vec![client_numbered("Even", 0)],
        )
        .await
        .unwrap();

    let type_filter = Filter {
        type_prefixes: vec!["Odd".into()],
        ..Filter::default()
    };
    let mut subscriptions = vec![
        (
            "$all",
            client
                .subscribe("$all", SubscribeOptions::from_start())
                .await
                .unwrap(),
            false,
        ),
        (
            "$all slow",
            client
                .subscribe("$all", SubscribeOptions::from_start())
                .await
                .unwrap(),
            true,
        ),
        (
            "$all end",
            client
                .subscribe("$all", SubscribeOptions::from_end())
                .await
                .unwrap(),
            false,
        ),
        (
            "$all odd",
            client
                .subscribe(
                    "$all",
                    SubscribeOptions::from_start().filter(type_filter.clone(), 100),
                )
                .await
                .unwrap(),
            false,
        ),
        (
            "$ce-order",
            client
                .subscribe("$ce-order", SubscribeOptions::from_start())
                .await
                .unwrap(),
            false,
        ),
        (
            "$et-Even",
            client
                .subscribe("$et-Even", SubscribeOptions::from_start())
                .await
                .unwrap(),
            false,
        ),
        (
            "order-0",
            client
                .subscribe("order-0", SubscribeOptions::from_start())
                .await
                .unwrap(),
            false,
        ),
    ];
    // Wait until the end-subscriber is established before writing.
    for (_, subscription, _) in &mut subscriptions {
        let first = timeout(WAIT, subscription.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, SubscriptionMessage::Confirmed { .. }),
            "{first:?}"
        );
    }

    // Writers use their own connections: subscribers that are not being read
    // must not hold up a writer's responses through shared HTTP/2 flow control.
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let client = server.client().await;
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while n < per_writer {
                let size = 1 + (n % 7).min(per_writer - 1 - n);
                let events = (0..size)
                    .map(|i| {
                        client_numbered(
                            if (n + i).is_multiple_of(2) {
                                "Even"
                            } else {
                                "Odd"
                            },
                            n + i,
                        )
                    })
                    .collect();
                let stream = if n.is_multiple_of(3) {
                    format!("order-{writer}")
                } else {
                    format!("cart-{writer}-{}", n % 5)
                };
                client
                    .append(stream, ExpectedRevision::Any, events)
                    .await
                    .unwrap();
                n += size;
            }
        }));
    }
    // The eighth subscriber joins mid-way: once the writers are under way
    // (watched on a connection of its own, see above), or one of them ended
    // (its result is checked below).
    let watcher = server.client().await;
    eventually("the writers to be under way", || async {
        let head = watcher.info().await.expect("info").head_position;
        let ended = writers.iter().any(tokio::task::JoinHandle::is_finished);
        if head > per_writer || ended {
            Ok(())
        } else {
            Err(head)
        }
    })
    .await;
    let late = client
        .subscribe("$all", SubscribeOptions::from_start())
        .await
        .unwrap();
    subscriptions.push(("$all late", late, false));
    for writer in writers {
        writer.await.unwrap();
    }

    // The subscriptions above were not read during the writes, so their data
    // holds `client`'s HTTP/2 connection window: read back on another connection.
    let reader = server.client().await;
    let all = read_all_client(&reader, "$all").await.unwrap();
    assert_eq!(all.len() as u64, 4 * per_writer + 1);
    let expected = |name: &str| -> Vec<RecordedEvent> {
        match name {
            "$all" | "$all slow" | "$all late" => all.clone(),
            "$all end" => all[1..].to_vec(),
            "$all odd" => all
                .iter()
                .filter(|e| e.event_type.starts_with("Odd"))
                .cloned()
                .collect(),
            "$ce-order" => all
                .iter()
                .filter(|e| e.stream.starts_with("order-"))
                .cloned()
                .collect(),
            "$et-Even" => all
                .iter()
                .filter(|e| e.event_type == "Even")
                .cloned()
                .collect(),
            "order-0" => all
                .iter()
                .filter(|e| e.stream == "order-0")
                .cloned()
                .collect(),
            other => panic!("unknown subscriber {other}"),
        }
    };
    let mut checks = Vec::new();
    for (name, mut subscription, slow) in subscriptions {
        let want = expected(name);
        checks.push(tokio::spawn(async move {
            let (got, caught_up) = collect(&mut subscription, want.len(), slow).await;
            assert_eq!(
                ids(&got),
                ids(&want),
                "subscriber {name} saw a different sequence"
            );
            assert!(caught_up >= 1, "subscriber {name} never caught up");
            // Nothing more arrives: no duplicate at the end. A deliberate
            // window: nothing may arrive within it (no condition to await).
            let extra = timeout(Duration::from_millis(200), subscription.next_message()).await;
            if let Ok(Ok(Some(SubscriptionMessage::Event(event)))) = extra {
                panic!("subscriber {name} got an extra event {event:?}");
            }
        }));
    }
    for check in checks {
        check.await.unwrap();
    }
    let info = client.info().await.unwrap();
    assert!(
        info.live_ring_events <= 512,
        "ring is bounded: {}",
        info.live_ring_events
    );
    server.stop().await;
}

#[tokio::test]
async fn resilient_subscription_resumes_across_a_server_restart() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            (0..500).map(|n| client_numbered("E", n)).collect(),
        )
        .await
        .unwrap();
    let mut subscription = client.subscribe_resilient("$all", SubscribeOptions::from_start());
    let mut positions = Vec::new();
    while positions.len() < 300 {
        if let SubscriptionMessage::Event(event) =
            timeout(WAIT, subscription.next()).await.unwrap().unwrap()
        {
            positions.push(event.position);
        }
    }
    let (data, address) = server.stop_keep_data().await;
    let server = TestServer::start_in(data, |settings| settings.listen = address).await;
    let writer = server.client().await;
    writer
        .append(
            "s-1",
            ExpectedRevision::Exact(499),
            (500..1000).map(|n| client_numbered("E", n)).collect(),
        )
        .await
        .unwrap();
    while positions.len() < 1000 {
        if let SubscriptionMessage::Event(event) =
            timeout(WAIT, subscription.next()).await.unwrap().unwrap()
        {
            positions.push(event.position);
        }
    }
    assert_eq!(
        positions,
        (0..1000).collect::<Vec<u64>>(),
        "every event exactly once, in order"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_subscriber_neither_slows_writers_nor_grows_memory() {
    let server = TestServer::start_with(|settings| {
        settings.live_ring_events = 256;
        settings.subscription_buffer = 16;
    })
    .await;
    let client = server.client().await;
    let mut stalled = client
        .subscribe("$all", SubscribeOptions::from_start())
        .await
        .unwrap();
    // Never read from `stalled` while 5,000 events are written.
    for batch in 0..50u64 {
        let events = (0..100)
            .map(|n| client_numbered("E", batch * 100 + n))
            .collect();
        client
            .append("s-1", ExpectedRevision::Any, events)
            .await
            .unwrap();
    }
    let info = client.info().await.unwrap();
    assert_eq!(
        info.head_position, 5_000,
        "the writer finished while the subscriber stalled"
    );
    assert!(
        info.live_ring_events <= 256,
        "ring bounded: {}",
        info.live_ring_events
    );
    let (events, _) = collect(&mut stalled, 5_000, false).await;
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        (0..5_000).collect::<Vec<u64>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_live_goes_back_to_storage() {
    let server = TestServer::start_with(|settings| {
        settings.live_ring_events = 64;
        settings.subscription_buffer = 4;
    })
    .await;
    let client = server.client().await;
    let mut subscription = client
        .subscribe("$all", SubscribeOptions::from_start())
        .await
        .unwrap();
    // Catch up on an empty store first, so the burst arrives while live.
    loop {
        let message = timeout(WAIT, subscription.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(message, SubscriptionMessage::CaughtUp { .. }) {
            break;
        }
    }
    for batch in 0..20u64 {
        client
            .append(
                "s-1",
                ExpectedRevision::Any,
                (0..100)
                    .map(|n| client_numbered("E", batch * 100 + n))
                    .collect(),
            )
            .await
            .unwrap();
    }
    let mut positions = Vec::new();
    let mut fell_behind = 0;
    while positions.len() < 2_000 {
        match timeout(WAIT, subscription.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            SubscriptionMessage::Event(event) => positions.push(event.position),
            SubscriptionMessage::FellBehind { .. } => fell_behind += 1,
            _ => {}
        }
    }
    assert!(
        fell_behind >= 1,
        "a 2,000-event burst through a 64-event ring must fall behind"
    );
    assert_eq!(positions, (0..2_000).collect::<Vec<u64>>());
    assert!(client.info().await.unwrap().subscription_fell_behind >= 1);
    server.stop().await;
}

#[tokio::test]
async fn filtered_subscriptions_get_checkpoints() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::Any,
            (0..1000).map(|n| client_numbered("Noise", n)).collect(),
        )
        .await
        .unwrap();
    let filter = Filter {
        type_prefixes: vec!["Wanted".into()],
        ..Filter::default()
    };
    let mut subscription = client
        .subscribe("$all", SubscribeOptions::from_start().filter(filter, 100))
        .await
        .unwrap();
    let mut checkpoints = Vec::new();
    while checkpoints.last().is_none_or(|position| *position < 999) {
        match timeout(WAIT, subscription.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            SubscriptionMessage::Checkpoint { position } => checkpoints.push(position),
            SubscriptionMessage::Event(event) => panic!("nothing matches, got {event:?}"),
            _ => {}
        }
    }
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    assert!(checkpoints.windows(2).all(|pair| pair[0] < pair[1]));
    client
        .append(
            "s-1",
            ExpectedRevision::Any,
            vec![client_numbered("Wanted", 0)],
        )
        .await
        .unwrap();
    loop {
        if let SubscriptionMessage::Event(event) = timeout(WAIT, subscription.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            assert_eq!(
                (event.position, event.event_type.as_str()),
                (1000, "Wanted")
            );
            break;
        }
    }
    server.stop().await;
}

async fn end_of(subscription: &mut Subscription) -> Error {
    loop {
        match timeout(WAIT, subscription.next_message())
            .await
            .expect("subscription did not end")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(error) => return error,
        }
    }
}

#[tokio::test]
async fn deleting_the_stream_ends_its_subscriptions() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    client
        .append(
            "s-2",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    let mut first = client
        .subscribe("s-1", SubscribeOptions::from_start())
        .await
        .unwrap();
    let mut second = client
        .subscribe("s-2", SubscribeOptions::from_start())
        .await
        .unwrap();
    // A subscription to a stream that does not exist yet waits for it.
    let mut future = client
        .subscribe("later-1", SubscribeOptions::from_start())
        .await
        .unwrap();
    client.delete("s-1", ExpectedRevision::Any).await.unwrap();
    client
        .tombstone("s-2", ExpectedRevision::Any)
        .await
        .unwrap();
    assert!(matches!(
        end_of(&mut first).await,
        Error::StreamNotFound { .. }
    ));
    assert!(matches!(
        end_of(&mut second).await,
        Error::StreamDeleted { .. }
    ));
    client
        .append(
            "later-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    loop {
        if let SubscriptionMessage::Event(event) = timeout(WAIT, future.next_message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            assert_eq!(event.stream, "later-1");
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn limits_bad_requests_and_shutdown() {
    let server = TestServer::start_with(|settings| settings.max_subscriptions = 2).await;
    let client = server.client().await;
    let mut first = client
        .subscribe("$all", SubscribeOptions::from_end())
        .await
        .unwrap();
    let _second = client
        .subscribe("$all", SubscribeOptions::from_end())
        .await
        .unwrap();
    let third = client.subscribe("$all", SubscribeOptions::from_end()).await;
    assert!(matches!(third, Err(Error::LimitExceeded(_))), "{third:?}");
    let bad = client
        .subscribe("$nope", SubscribeOptions::from_start())
        .await;
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
    let regex = client
        .subscribe(
            "$all",
            SubscribeOptions::from_start().filter(
                Filter {
                    stream_regex: Some("(".into()),
                    ..Filter::default()
                },
                0,
            ),
        )
        .await;
    assert!(matches!(regex, Err(Error::InvalidArgument(_))), "{regex:?}");
    // Both subscriptions are live on the server (the third was refused for
    // them) when it stops under the waiting subscriber.
    let wait_for_end = tokio::spawn(async move { end_of(&mut first).await });
    server.stop().await;
    let error = wait_for_end.await.unwrap();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
}
