//! Every RPC of `cairn.v1` through the real client against an in-process server.

use cairn_client::{
    Direction, Error, EventData, ExpectedRevision, Filter, ReadFrom, ReadOptions, StreamAppend,
    StreamMetadata, StreamState,
};
use cairn_proto::v1 as pb;
use cairn_testkit::{TestServer, client_numbered, read_all_client, read_all_client_with};
use uuid::Uuid;

#[tokio::test]
async fn append_then_read_every_source() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let first = client
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("Placed", 0), client_numbered("Paid", 1)],
        )
        .await
        .unwrap();
    assert_eq!(first.current_revision, Some(1));
    assert_eq!(first.positions, Some((0, 1)));
    client
        .append(
            "order-2",
            ExpectedRevision::NoStream,
            vec![client_numbered("Placed", 2)],
        )
        .await
        .unwrap();
    client
        .append(
            "cart-1",
            ExpectedRevision::Any,
            vec![client_numbered("Added", 3)],
        )
        .await
        .unwrap();

    let stream = read_all_client(&client, "order-1").await.expect("read");
    assert_eq!(
        stream.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(stream[0].event_type, "Placed");
    assert_eq!(&stream[1].data[..], b"{\"n\":1}");
    assert_eq!(stream[0].content_type, "application/json");

    let backwards = read_all_client_with(&client, "order-1", ReadOptions::backwards())
        .await
        .expect("read");
    assert_eq!(
        backwards.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [1, 0]
    );

    let all = read_all_client(&client, "$all").await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );

    let category = read_all_client(&client, "$ce-order").await.expect("read");
    assert_eq!(
        category.iter().map(|e| e.position).collect::<Vec<_>>(),
        [0, 1, 2]
    );

    let placed = read_all_client(&client, "$et-Placed").await.expect("read");
    assert_eq!(
        placed.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        ["order-1", "order-2"]
    );

    let filtered = read_all_client_with(
        &client,
        "$all",
        ReadOptions::forwards().filter(Filter {
            type_regex: Some("^(Added|Paid)$".into()),
            ..Filter::default()
        }),
    )
    .await
    .expect("read");
    assert_eq!(
        filtered
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Paid", "Added"]
    );

    let from = read_all_client_with(
        &client,
        "$all",
        ReadOptions::forwards().from(ReadFrom::At(2)).max_count(1),
    )
    .await
    .expect("read");
    assert_eq!(from.iter().map(|e| e.position).collect::<Vec<_>>(), [2]);
    let from_rev = read_all_client_with(
        &client,
        "order-1",
        ReadOptions::forwards().from(ReadFrom::At(1)),
    )
    .await
    .expect("read");
    assert_eq!(from_rev.len(), 1);
    assert_eq!(
        read_all_client_with(
            &client,
            "$all",
            ReadOptions {
                direction: Direction::Backwards,
                max_count: Some(2),
                ..Default::default()
            }
        )
        .await
        .expect("read")
        .iter()
        .map(|e| e.position)
        .collect::<Vec<_>>(),
        [3, 2]
    );
    server.stop().await;
}

#[tokio::test]
async fn every_expected_revision_case() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let wrong = |result: Result<cairn_client::AppendResult, Error>| match result {
        Err(Error::WrongExpectedRevision { current, .. }) => current,
        other => panic!("expected WrongExpectedRevision, got {other:?}"),
    };
    assert_eq!(
        wrong(
            client
                .append(
                    "s-1",
                    ExpectedRevision::StreamExists,
                    vec![client_numbered("E", 0)]
                )
                .await
        ),
        None
    );
    assert_eq!(
        wrong(
            client
                .append(
                    "s-1",
                    ExpectedRevision::Exact(0),
                    vec![client_numbered("E", 0)]
                )
                .await
        ),
        None
    );
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    assert_eq!(
        wrong(
            client
                .append(
                    "s-1",
                    ExpectedRevision::NoStream,
                    vec![client_numbered("E", 1)]
                )
                .await
        ),
        Some(0)
    );
    assert_eq!(
        wrong(
            client
                .append(
                    "s-1",
                    ExpectedRevision::Exact(5),
                    vec![client_numbered("E", 1)]
                )
                .await
        ),
        Some(0)
    );
    client
        .append(
            "s-1",
            ExpectedRevision::Exact(0),
            vec![client_numbered("E", 1)],
        )
        .await
        .unwrap();
    client
        .append(
            "s-1",
            ExpectedRevision::StreamExists,
            vec![client_numbered("E", 2)],
        )
        .await
        .unwrap();
    let any = client
        .append("s-1", ExpectedRevision::Any, vec![client_numbered("E", 3)])
        .await
        .unwrap();
    assert_eq!(any.current_revision, Some(3));
    // An empty append only checks the expectation.
    let check = client
        .append("s-1", ExpectedRevision::Exact(3), vec![])
        .await
        .unwrap();
    assert_eq!((check.current_revision, check.positions), (Some(3), None));
    assert_eq!(client.info().await.unwrap().head_position, 4);
    server.stop().await;
}

#[tokio::test]
async fn retries_with_the_same_ids_are_idempotent() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let events = vec![
        client_numbered("E", 0).id(Uuid::new_v4()),
        client_numbered("E", 1).id(Uuid::new_v4()),
    ];
    let original = client
        .append("s-1", ExpectedRevision::NoStream, events.clone())
        .await
        .unwrap();
    let retry = client
        .append("s-1", ExpectedRevision::NoStream, events.clone())
        .await
        .unwrap();
    assert!(retry.idempotent_replay);
    assert_eq!(
        (retry.current_revision, retry.positions),
        (original.current_revision, original.positions)
    );
    let retry_any = client
        .append("s-1", ExpectedRevision::Any, events.clone())
        .await
        .unwrap();
    assert!(retry_any.idempotent_replay);
    assert_eq!(
        read_all_client(&client, "s-1").await.expect("read").len(),
        2
    );
    // The same id in another stream is refused.
    let reused = client
        .append("s-2", ExpectedRevision::Any, vec![events[0].clone()])
        .await;
    assert!(
        matches!(reused, Err(Error::DuplicateEventId(_))),
        "{reused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn multi_stream_appends_are_atomic() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let results = client
        .append_multi(vec![
            StreamAppend::new(
                "order-1",
                ExpectedRevision::NoStream,
                vec![client_numbered("Placed", 0)],
            ),
            StreamAppend::new(
                "stock-1",
                ExpectedRevision::NoStream,
                vec![client_numbered("Reserved", 0)],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1].positions, Some((1, 1)));
    let failed = client
        .append_multi(vec![
            StreamAppend::new(
                "order-1",
                ExpectedRevision::Exact(0),
                vec![client_numbered("Approved", 1)],
            ),
            StreamAppend::new(
                "stock-1",
                ExpectedRevision::Exact(7),
                vec![client_numbered("Taken", 1)],
            ),
        ])
        .await;
    assert!(
        matches!(failed, Err(Error::WrongExpectedRevision { ref stream, current: Some(0), .. }) if stream == "stock-1")
    );
    assert_eq!(
        client.info().await.unwrap().head_position,
        2,
        "nothing of the failed request was written"
    );
    let empty = client.append_multi(vec![]).await;
    assert!(matches!(empty, Err(Error::InvalidArgument(_))));
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let server = TestServer::start_with(|settings| {
        settings.max_event_bytes = 1024;
        settings.max_append_bytes = 4096;
        settings.max_events_per_append = 10;
    })
    .await;
    let client = server.client().await;
    let invalid = |result: Result<cairn_client::AppendResult, Error>| {
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{result:?}"
        );
    };
    invalid(
        client
            .append("", ExpectedRevision::Any, vec![client_numbered("E", 0)])
            .await,
    );
    invalid(
        client
            .append(
                "$system",
                ExpectedRevision::Any,
                vec![client_numbered("E", 0)],
            )
            .await,
    );
    invalid(
        client
            .append(
                "x".repeat(1025),
                ExpectedRevision::Any,
                vec![client_numbered("E", 0)],
            )
            .await,
    );
    invalid(
        client
            .append(
                "s-1",
                ExpectedRevision::Any,
                vec![client_numbered("E", 0).id(Uuid::nil())],
            )
            .await,
    );
    invalid(
        client
            .append(
                "s-1",
                ExpectedRevision::Any,
                vec![EventData::binary("", "x")],
            )
            .await,
    );
    let same = client_numbered("E", 0);
    invalid(
        client
            .append("s-1", ExpectedRevision::Any, vec![same.clone(), same])
            .await,
    );

    let big = client
        .append(
            "s-1",
            ExpectedRevision::Any,
            vec![EventData::binary("E", vec![0u8; 2000])],
        )
        .await;
    assert!(matches!(big, Err(Error::LimitExceeded(_))), "{big:?}");
    let many = client
        .append(
            "s-1",
            ExpectedRevision::Any,
            (0..11).map(|n| client_numbered("E", n)).collect(),
        )
        .await;
    assert!(matches!(many, Err(Error::LimitExceeded(_))), "{many:?}");
    let total = client
        .append(
            "s-1",
            ExpectedRevision::Any,
            (0..5)
                .map(|_| EventData::binary("E", vec![0u8; 1000]))
                .collect(),
        )
        .await;
    assert!(matches!(total, Err(Error::LimitExceeded(_))), "{total:?}");
    // Far beyond the transport's message limit: refused, never a hang or a panic.
    let huge = client
        .append(
            "s-1",
            ExpectedRevision::Any,
            vec![EventData::binary("E", vec![0u8; 20 << 20])],
        )
        .await;
    assert!(matches!(huge, Err(Error::LimitExceeded(_))), "{huge:?}");

    // Raw protocol: malformed UUID, missing expectation, wrong cursor kind.
    let mut raw = pb::streams_client::StreamsClient::new(server.channel().await);
    let bad_id = raw
        .append(pb::AppendRequest {
            stream: "s-1".into(),
            expected: Some(ExpectedRevision::Any.into()),
            events: vec![pb::ProposedEvent {
                id: "not-a-uuid".into(),
                r#type: "E".into(),
                ..Default::default()
            }],
            condition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(bad_id.message().contains("not-a-uuid"));
    let no_expected = raw
        .append(pb::AppendRequest {
            stream: "s-1".into(),
            expected: None,
            events: vec![],
            condition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(no_expected.code(), tonic::Code::InvalidArgument);
    let unset_oneof = raw
        .append(pb::AppendRequest {
            stream: "s-1".into(),
            expected: Some(pb::ExpectedRevision { kind: None }),
            events: vec![],
            condition: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unset_oneof.code(), tonic::Code::InvalidArgument);
    let wrong_cursor = raw
        .read(pb::ReadRequest {
            stream: "s-1".into(),
            from: Some(pb::read_request::From::Position(0)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_cursor.code(), tonic::Code::InvalidArgument);
    let bad_regex = client
        .read(
            "$all",
            ReadOptions::forwards().filter(Filter {
                stream_regex: Some("(".into()),
                ..Filter::default()
            }),
        )
        .await;
    assert!(matches!(bad_regex, Err(Error::InvalidArgument(_))));

    let missing = client.read("nope-1", ReadOptions::forwards()).await;
    assert!(
        matches!(missing, Err(Error::StreamNotFound { ref stream }) if stream == "nope-1"),
        "{missing:?}"
    );
    assert_eq!(
        client.info().await.unwrap().head_position,
        0,
        "no rejected request wrote anything"
    );
    server.stop().await;
}

#[tokio::test]
async fn delete_tombstone_and_metadata() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            (0..5).map(|n| client_numbered("E", n)).collect(),
        )
        .await
        .unwrap();

    let revision = client
        .set_stream_metadata(
            "s-1",
            ExpectedRevision::NoStream,
            StreamMetadata {
                max_count: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(revision, 0);
    let visible = read_all_client(&client, "s-1").await.expect("read");
    assert_eq!(
        visible.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [3, 4]
    );
    let info = client.get_stream_metadata("s-1").await.unwrap();
    assert_eq!(
        (
            info.metadata.max_count,
            info.first_visible_revision,
            info.last_revision
        ),
        (Some(2), 3, Some(4))
    );
    let stale = client
        .set_stream_metadata("s-1", ExpectedRevision::NoStream, StreamMetadata::default())
        .await;
    assert!(matches!(stale, Err(Error::WrongExpectedRevision { .. })));
    let bad_json = client
        .set_stream_metadata(
            "s-1",
            ExpectedRevision::Any,
            StreamMetadata {
                custom_json: Some("{nope".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(bad_json, Err(Error::InvalidArgument(_))));
    client
        .set_stream_metadata("s-1", ExpectedRevision::Exact(0), StreamMetadata::default())
        .await
        .unwrap();

    assert_eq!(
        client
            .delete("s-1", ExpectedRevision::Exact(4))
            .await
            .unwrap(),
        Some(4)
    );
    assert!(matches!(
        client.read("s-1", ReadOptions::forwards()).await,
        Err(Error::StreamNotFound { .. })
    ));
    assert_eq!(
        client.get_stream_metadata("s-1").await.unwrap().state,
        StreamState::SoftDeleted
    );
    assert!(
        read_all_client(&client, "$all")
            .await
            .expect("read")
            .is_empty()
    );
    let recreated = client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 5)],
        )
        .await
        .unwrap();
    assert_eq!(
        recreated.current_revision,
        Some(5),
        "revisions continue after a soft delete"
    );
    assert!(matches!(
        client.delete("nope-1", ExpectedRevision::Any).await,
        Err(Error::StreamNotFound { .. })
    ));

    client
        .tombstone("s-1", ExpectedRevision::Any)
        .await
        .unwrap();
    assert!(matches!(
        client.read("s-1", ReadOptions::forwards()).await,
        Err(Error::StreamDeleted { .. })
    ));
    let write = client
        .append("s-1", ExpectedRevision::Any, vec![client_numbered("E", 6)])
        .await;
    assert!(
        matches!(write, Err(Error::StreamDeleted { .. })),
        "{write:?}"
    );
    assert!(matches!(
        client.tombstone("s-1", ExpectedRevision::Any).await,
        Err(Error::StreamDeleted { .. })
    ));
    assert!(matches!(
        client.get_stream_metadata("never-1").await,
        Err(Error::StreamNotFound { .. })
    ));
    server.stop().await;
}

#[tokio::test]
async fn list_streams_in_pages_and_info() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for n in 0..25 {
        client
            .append(
                format!("user-{n:02}"),
                ExpectedRevision::NoStream,
                vec![client_numbered("E", n)],
            )
            .await
            .unwrap();
    }
    client
        .append(
            "other",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list_streams("user-", after.as_deref(), 10)
            .await
            .unwrap();
        names.extend(page.streams.iter().map(|info| info.stream.clone()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(
        names,
        (0..25).map(|n| format!("user-{n:02}")).collect::<Vec<_>>()
    );
    let info = client.info().await.unwrap();
    assert_eq!(
        (info.head_position, info.stream_count, info.event_count),
        (26, 26, 26)
    );
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test]
async fn reads_a_10000_event_stream_in_pages() {
    let server = TestServer::start_with(|settings| settings.max_read_page = 1000).await;
    let client = server.client().await;
    for batch in 0..20u64 {
        let events = (0..500)
            .map(|n| client_numbered("E", batch * 500 + n))
            .collect();
        let expected = if batch == 0 {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::Exact(batch * 500 - 1)
        };
        client.append("big-1", expected, events).await.unwrap();
    }
    // One call: the server pages internally.
    let everything = read_all_client(&client, "big-1").await.expect("read");
    assert_eq!(everything.len(), 10_000);
    assert!(
        everything
            .iter()
            .enumerate()
            .all(|(index, event)| event.revision == index as u64)
    );
    // Client-driven paging with explicit cursors.
    let mut from = 0;
    let mut seen = 0u64;
    loop {
        let mut stream = client
            .read(
                "big-1",
                ReadOptions::forwards()
                    .from(ReadFrom::At(from))
                    .max_count(1000),
            )
            .await
            .unwrap();
        let mut page = Vec::new();
        while let Some(event) = stream.next_event().await.unwrap() {
            page.push(event);
        }
        assert!(page.len() <= 1000);
        for event in &page {
            assert_eq!(event.revision, seen);
            seen += 1;
        }
        match stream.next_from() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, 10_000);
    let last = read_all_client_with(&client, "$all", ReadOptions::backwards().max_count(1))
        .await
        .expect("read");
    assert_eq!(last[0].position, 9_999);
    server.stop().await;
}

#[tokio::test]
async fn concurrent_appenders_each_revision_written_once() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut tasks = Vec::new();
    for writer in 0..8u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            while written < 50 {
                let stream = format!("shared-{}", written % 3);
                let current = match client.get_stream_metadata(stream.clone()).await {
                    Ok(info) => info.last_revision,
                    Err(Error::StreamNotFound { .. }) => None,
                    Err(error) => panic!("{error}"),
                };
                let expected = current.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                match client
                    .append(stream, expected, vec![client_numbered("E", writer)])
                    .await
                {
                    Ok(_) => written += 1,
                    Err(Error::WrongExpectedRevision { .. }) => continue,
                    Err(error) => panic!("{error}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut total = 0;
    for stream in 0..3 {
        let events = read_all_client(&client, &format!("shared-{stream}"))
            .await
            .expect("read");
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(index, event)| event.revision == index as u64)
        );
        total += events.len();
    }
    assert_eq!(total, 400);
    let all = read_all_client(&client, "$all").await.expect("read");
    assert!(
        all.iter()
            .enumerate()
            .all(|(index, event)| event.position == index as u64)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_reader_that_vanishes_mid_stream_costs_nothing() {
    let server = TestServer::start_with(|settings| settings.max_read_page = 100).await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            (0..5000).map(|n| client_numbered("E", n)).collect(),
        )
        .await
        .unwrap();
    for _ in 0..20 {
        let mut stream = client.read("$all", ReadOptions::forwards()).await.unwrap();
        let first = stream.next_event().await.unwrap().unwrap();
        assert_eq!(first.position, 0);
        drop(stream);
    }
    let next = client
        .append(
            "s-1",
            ExpectedRevision::Exact(4999),
            vec![client_numbered("E", 1)],
        )
        .await
        .unwrap();
    assert_eq!(next.current_revision, Some(5000));
    server.stop().await;
}

#[tokio::test]
async fn stopped_server_is_unavailable_and_keeps_acknowledged_writes() {
    let mut server = TestServer::start_with(|settings| {
        settings.durability = cairn_server::DurabilitySetting::Sync
    })
    .await;
    let client = server.client().await;
    client
        .append(
            "s-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    server.stop_in_place().await;
    let after = client
        .append("s-1", ExpectedRevision::Any, vec![client_numbered("E", 1)])
        .await;
    assert!(matches!(after, Err(Error::Unavailable(_))), "{after:?}");
    let settings = cairn_server::Settings::for_tests(server.data.path().to_path_buf());
    let store = cairn_server::open_store(&settings).unwrap();
    let page = store
        .read(&cairn_storage::ReadRequest::forwards(
            cairn_storage::ReadSource::Stream("s-1".into()),
            10,
        ))
        .unwrap();
    assert_eq!(page.events.len(), 1);
}

#[tokio::test]
async fn a_client_reconnects_after_the_server_restarts() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "r-1",
            ExpectedRevision::NoStream,
            vec![client_numbered("E", 0)],
        )
        .await
        .unwrap();
    let (data, address) = server.stop_keep_data().await;
    let down = client
        .append("r-1", ExpectedRevision::Any, vec![client_numbered("E", 1)])
        .await;
    assert!(matches!(down, Err(Error::Unavailable(_))), "{down:?}");

    // Back on the same address: the same client carries on, no new connect.
    let server = TestServer::start_in(data, |settings| settings.listen = address).await;
    let next = client
        .append(
            "r-1",
            ExpectedRevision::Exact(0),
            vec![client_numbered("E", 2)],
        )
        .await
        .unwrap();
    assert_eq!(next.current_revision, Some(1));
    server.stop().await;
}
