//! DCB over cairn.v1, through cairn-client: tags on reads, query reads with
//! their consistency position, conditional appends (single and multi-stream),
//! query subscriptions, the Decider loop, and bad input.

use std::time::Duration;

use cairn_client::{
    AppendCondition, Decider, Decision, Error, EventData, ExpectedRevision, Query, QueryItem,
    ReadOptions, StreamAppend, SubscribeOptions, SubscriptionMessage,
};
use cairn_testkit::TestServer;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

fn tagged(event_type: &str, tags: &[&str]) -> EventData {
    EventData::json_text(event_type, "{}").tags(tags.iter().copied())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_query_reads_and_conditions_over_grpc() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "course-1",
            ExpectedRevision::NoStream,
            vec![tagged("CourseDefined", &["course:1"])],
        )
        .await
        .unwrap();
    client
        .append(
            "student-1",
            ExpectedRevision::NoStream,
            vec![tagged("StudentSubscribed", &["course:1", "student:1"])],
        )
        .await
        .unwrap();
    client
        .append(
            "other-1",
            ExpectedRevision::NoStream,
            vec![tagged("Noise", &[])],
        )
        .await
        .unwrap();

    // Tags come back on plain reads too.
    let all = client
        .read_all(ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(
        all[1].tags,
        vec!["course:1".to_owned(), "student:1".to_owned()]
    );

    let course = Query::of([QueryItem::tags(["course:1"])]);
    let mut read = client
        .read_query(course.clone(), ReadOptions::forwards())
        .await
        .unwrap();
    let mut positions = Vec::new();
    while let Some(event) = read.next_event().await.unwrap() {
        positions.push(event.position);
    }
    assert_eq!(positions, vec![0, 1]);
    assert_eq!(read.consistent_through(), Some(2), "the head at read");

    // A decision on a stale position fails, naming the conflict, writing nothing.
    let stale = client
        .append_if(
            "student-2",
            ExpectedRevision::NoStream,
            vec![tagged("StudentSubscribed", &["course:1", "student:2"])],
            AppendCondition::new(course.clone(), Some(0)),
        )
        .await;
    assert!(
        matches!(stale, Err(Error::AppendConditionFailed { position: 1 })),
        "{stale:?}"
    );
    assert!(matches!(
        client.get_stream_metadata("student-2").await,
        Err(Error::StreamNotFound { .. })
    ));
    // On the read's position it holds.
    let written = client
        .append_if(
            "student-2",
            ExpectedRevision::NoStream,
            vec![tagged("StudentSubscribed", &["course:1", "student:2"])],
            AppendCondition::new(course.clone(), read.consistent_through()),
        )
        .await
        .unwrap();
    assert_eq!(written.positions, Some((3, 3)));

    // AppendMulti: one condition for the whole request, atomically.
    let multi = client
        .append_multi_if(
            vec![
                StreamAppend::new("a-1", ExpectedRevision::NoStream, vec![tagged("A", &["x"])]),
                StreamAppend::new("b-1", ExpectedRevision::NoStream, vec![tagged("B", &["x"])]),
            ],
            Some(AppendCondition::new(
                Query::of([QueryItem::tags(["x"])]),
                None,
            )),
        )
        .await
        .unwrap();
    assert_eq!(multi.len(), 2);
    let again = client
        .append_multi_if(
            vec![StreamAppend::new(
                "c-1",
                ExpectedRevision::NoStream,
                vec![tagged("C", &["x"])],
            )],
            Some(AppendCondition::new(
                Query::of([QueryItem::tags(["x"])]),
                None,
            )),
        )
        .await;
    assert!(
        matches!(again, Err(Error::AppendConditionFailed { position: 4 })),
        "{again:?}"
    );

    // Backwards, from the end, with a limit.
    let newest = client
        .read_query(
            Query::of([QueryItem::types(["StudentSubscribed"])]),
            ReadOptions::backwards().max_count(1),
        )
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].stream, "student-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dcb_input_is_refused_clearly_and_writes_nothing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let too_many_tags: Vec<String> = (0..65).map(|n| format!("t{n}")).collect();
    let cases = [
        EventData::json_text("T", "{}").tags(too_many_tags),
        EventData::json_text("T", "{}").tags(["x".repeat(257)]),
        EventData::json_text("T", "{}").tags(["dup", "dup"]),
        EventData::json_text("T", "{}").tags([""]),
    ];
    for event in cases {
        let outcome = client
            .append("s-1", ExpectedRevision::Any, vec![event])
            .await;
        assert!(
            matches!(
                outcome,
                Err(Error::InvalidArgument(_) | Error::LimitExceeded(_))
            ),
            "{outcome:?}"
        );
    }
    let huge = Query::of((0..101).map(|n| QueryItem::tags([n.to_string()])));
    let read = match client.read_query(huge, ReadOptions::forwards()).await {
        Ok(stream) => stream.collect_all().await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(matches!(read, Err(Error::LimitExceeded(_))), "{read:?}");
    let info = client.info().await.unwrap();
    assert_eq!(info.head_position, 0, "nothing refused was written");
    // The error names no server internals.
    let message = client
        .append(
            "s-1",
            ExpectedRevision::Any,
            vec![EventData::json_text("T", "{}").tags(["a", "a"])],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("twice"), "{message}");
    assert!(!message.contains('/'), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_subscriptions_deliver_history_then_matching_live_events() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "user-1",
            ExpectedRevision::Any,
            vec![tagged("Registered", &["user:1"])],
        )
        .await
        .unwrap();
    client
        .append(
            "user-2",
            ExpectedRevision::Any,
            vec![tagged("Registered", &["user:2"])],
        )
        .await
        .unwrap();
    let mut subscription = client
        .subscribe_query(
            Query::of([QueryItem::tags(["user:1"])]),
            SubscribeOptions::from_start(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut caught_up = false;
    while seen.len() < 3 {
        let message = timeout(WAIT, subscription.next_message())
            .await
            .expect("timed out")
            .unwrap()
            .expect("ended");
        match message {
            SubscriptionMessage::Event(event) => seen.push(event.position),
            SubscriptionMessage::CaughtUp { .. } if !caught_up => {
                caught_up = true;
                for (stream, tag) in [
                    ("user-2", "user:2"),
                    ("user-1", "user:1"),
                    ("user-1", "user:1"),
                ] {
                    client
                        .append(
                            stream,
                            ExpectedRevision::Any,
                            vec![tagged("Renamed", &[tag])],
                        )
                        .await
                        .unwrap();
                }
            }
            _ => {}
        }
    }
    assert!(caught_up);
    assert_eq!(seen, vec![0, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_decider_registers_an_email_once_among_racing_clients() {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for n in 0..8 {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let query = Query::of([
                QueryItem::types(["EmailRegistered"]).with_tags(["email:ada@example.com"])
            ]);
            Decider::new(client, query)
                .run(
                    || false,
                    |taken, _| *taken = true,
                    |taken| -> Result<Decision<bool>, Error> {
                        if *taken {
                            return Ok(Decision::nothing(false));
                        }
                        let event = EventData::json_text("EmailRegistered", "{}")
                            .tags(["email:ada@example.com", &format!("customer:{n}")]);
                        Ok(Decision::append(
                            vec![StreamAppend::new(
                                format!("customer-{n}"),
                                ExpectedRevision::NoStream,
                                vec![event],
                            )],
                            true,
                        ))
                    },
                )
                .await
        }));
    }
    let mut registered = 0;
    for task in tasks {
        let decided = task.await.unwrap().unwrap();
        if decided.value {
            registered += 1;
            assert_eq!(decided.results.len(), 1);
        }
    }
    assert_eq!(registered, 1, "exactly one client registers the address");
    let client = server.client().await;
    let events = client
        .read_query(
            Query::of([QueryItem::tags(["email:ada@example.com"])]),
            ReadOptions::forwards(),
        )
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_conditions_and_query_requests_are_invalid_arguments() {
    use cairn_proto::v1 as pb;
    let server = TestServer::start().await;
    let mut raw = pb::streams_client::StreamsClient::new(server.channel().await);
    let part = || pb::AppendRequest {
        stream: "s-1".into(),
        expected: Some(pb::ExpectedRevision {
            kind: Some(pb::expected_revision::Kind::Any(())),
        }),
        events: vec![pb::ProposedEvent {
            r#type: "T".into(),
            ..Default::default()
        }],
        condition: None,
    };
    // A condition without a query is refused, not read as "nothing may exist".
    let without_query = raw
        .append(pb::AppendRequest {
            condition: Some(pb::AppendCondition {
                query: None,
                after: None,
            }),
            ..part()
        })
        .await
        .unwrap_err();
    assert_eq!(without_query.code(), tonic::Code::InvalidArgument);
    assert!(
        without_query.message().contains("query"),
        "{without_query:?}"
    );
    // AppendMulti takes one condition for the request, never one per part.
    let per_part = raw
        .append_multi(pb::AppendMultiRequest {
            parts: vec![pb::AppendRequest {
                condition: Some(pb::AppendCondition {
                    query: Some(pb::Query::default()),
                    after: None,
                }),
                ..part()
            }],
            condition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(per_part.code(), tonic::Code::InvalidArgument);
    assert!(per_part.message().contains("one condition"), "{per_part:?}");
    // A read names a stream or a query, not both.
    let both = raw
        .read(pb::ReadRequest {
            stream: "s-1".into(),
            query: Some(pb::Query::default()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    let info = cairn_client::Client::from_channel(server.channel().await)
        .info()
        .await
        .unwrap();
    assert_eq!(info.head_position, 0, "nothing refused was written");
}
