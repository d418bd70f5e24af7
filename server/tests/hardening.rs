//! What a careless or hostile client and a failing disk can do, through the
//! real gRPC facade: each case ends with a clear status and loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_client::{Error, EventData, ExpectedRevision, GroupOptions};
use cairn_storage::{StoreOptions, WriteFault};
use cairn_testkit::{TestServer, eventually};
use uuid::Uuid;

fn placed() -> Vec<EventData> {
    vec![EventData::json_text("Placed", "{}")]
}

/// After a failed write (ENOSPC, a read-only disk) the store is fail-stop;
/// health must then say NOT_SERVING so an orchestrator restarts the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_not_serving_after_fail_stop() {
    let failing = Arc::new(AtomicBool::new(false));
    let hook = Arc::clone(&failing);
    let store_options = StoreOptions {
        write_fault: Some(WriteFault::new(move |_| {
            hook.load(Ordering::SeqCst)
                .then(|| "IO error: /srv/cairn/data/000004.log: No space left on device".into())
        })),
        ..StoreOptions::default()
    };
    let server = TestServer::start_full(tempfile::tempdir().unwrap(), |_| {}, store_options).await;
    let client = server.client().await;
    client
        .append("order-1", ExpectedRevision::NoStream, placed())
        .await
        .unwrap();
    assert!(client.is_serving().await.unwrap());

    failing.store(true, Ordering::SeqCst);
    let refused = client
        .append("order-1", ExpectedRevision::Exact(0), placed())
        .await;
    let Err(Error::Unavailable(message)) = refused else {
        panic!("a failed write answers UNAVAILABLE, got {refused:?}");
    };
    assert!(message.contains("restart"), "{message}");
    assert!(
        !message.contains("/srv") && !message.contains(".log"),
        "no server path reaches the client: {message}"
    );
    eventually("health to report NOT_SERVING", || {
        let client = client.clone();
        async move { (!client.is_serving().await.ok()?).then_some(()) }
    })
    .await;
    // Reads still serve what was acknowledged.
    let events = cairn_testkit::read_all_client(&client, "order-1")
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    server.stop().await;
}

/// An ack too large to decode, or naming too many events, ends the consumer's
/// call with RESOURCE_EXHAUSTED, never with OK (which a client takes for a
/// clean end), and the events it held are redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_ack_ends_the_call_with_resource_exhausted() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_group("billing", "$ce-order", GroupOptions::default())
        .await
        .unwrap();
    client
        .append("order-1", ExpectedRevision::NoStream, placed())
        .await
        .unwrap();

    // 150,000 ids: about 5.7 MB, over the Consume message limit in bytes.
    // 20,000 ids: under it in bytes, over the limit in ids per message.
    for ids in [150_000, 20_000] {
        let mut consumer = client.consume("billing", "greedy", 0).await.unwrap();
        let delivery = consumer.next().await.unwrap().expect("the event");
        let mut many: Vec<Uuid> = (0..ids).map(|_| Uuid::new_v4()).collect();
        many.push(delivery.event.id);
        consumer.ack_ids(&many).await.unwrap();
        let ended = loop {
            match consumer.next().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        match ended {
            Err(Error::LimitExceeded(message)) => {
                assert!(
                    message.contains("bytes") || message.contains("limit"),
                    "{message}"
                )
            }
            other => panic!("{ids} ids: expected RESOURCE_EXHAUSTED, got {other:?}"),
        }
        drop(delivery);
    }

    // Nothing was acked by the refused messages: the event comes again.
    let mut consumer = client.consume("billing", "careful", 0).await.unwrap();
    let delivery = consumer.next().await.unwrap().expect("redelivered");
    assert_eq!(delivery.event.stream, "order-1");
    delivery.ack().await.unwrap();
    server.stop().await;
}

/// A huge malformed event id is refused with INVALID_ARGUMENT whose message
/// is short (a 1 MB `grpc-message` makes clients report "stream removed").
#[tokio::test]
async fn echoed_input_in_errors_is_capped() {
    let server = TestServer::start().await;
    let client = server.client().await;
    drop(client);
    use cairn_proto::v1 as pb;
    let mut streams = pb::streams_client::StreamsClient::connect(server.url())
        .await
        .unwrap();
    let request = pb::AppendRequest {
        stream: "order-1".into(),
        expected: Some(pb::ExpectedRevision {
            kind: Some(pb::expected_revision::Kind::Any(())),
        }),
        events: vec![pb::ProposedEvent {
            id: "x".repeat(1_000_000),
            r#type: "Placed".into(),
            ..Default::default()
        }],
        condition: None,
    };
    let status = streams.append(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().len() < 2048,
        "{} bytes",
        status.message().len()
    );
    server.stop().await;
}

/// A group on the server's own consumer-group state would feed on its own
/// parks forever (`$et-$parked` with no retries and a short timeout): such
/// sources are refused, and nothing is created.
#[tokio::test]
async fn groups_on_consumer_group_state_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for source in [
        "$et-$parked",
        "$et-$checkpoint",
        "$ce-$sys",
        "$sys-ps-other-parked",
    ] {
        match client
            .create_group("loop", source, GroupOptions::default())
            .await
        {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains("cannot follow"), "{source}: {message}")
            }
            other => panic!("{source}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert!(client.list_groups().await.unwrap().is_empty());
    server.stop().await;
}

/// `AppendRequest` with `stream` as raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawAppend {
    #[prost(bytes = "vec", tag = "1")]
    stream: Vec<u8>,
}

/// Requests tonic refuses before any adapter sees them still get the
/// protocol's statuses: invalid UTF-8 is INVALID_ARGUMENT (not INTERNAL) and a
/// message over the limit is RESOURCE_EXHAUSTED (not OUT_OF_RANGE).
#[tokio::test]
async fn undecodable_and_oversized_requests_get_the_documented_codes() {
    use cairn_proto::v1 as pb;
    let server = TestServer::start().await;
    let channel = server.channel().await;

    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<RawAppend, pb::AppendResponse> =
        tonic_prost::ProstCodec::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/cairn.v1.Streams/Append");
    let status = raw
        .unary(
            tonic::Request::new(RawAppend {
                stream: vec![b'o', 0xff, 0xfe, b'x'],
            }),
            path,
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    let mut streams =
        pb::streams_client::StreamsClient::new(channel).max_encoding_message_size(usize::MAX);
    let huge = pb::AppendRequest {
        stream: "order-1".into(),
        expected: Some(pb::ExpectedRevision {
            kind: Some(pb::expected_revision::Kind::Any(())),
        }),
        events: vec![pb::ProposedEvent {
            r#type: "Placed".into(),
            data: vec![0u8; 100 * 1024 * 1024].into(),
            ..Default::default()
        }],
        condition: None,
    };
    let status = streams.append(huge).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}

/// The idle timeout closes only connections that stop answering: a client
/// whose subscription sees no event for several idle timeouts keeps its
/// connection (keepalive pings and their answers are traffic) and still gets
/// the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_subscription_outlives_the_idle_timeout() {
    use cairn_client::SubscribeOptions;
    let server = TestServer::start_with(|settings| {
        settings.connection_idle_timeout_ms = 800;
    })
    .await;
    let client = server.client().await;
    let mut subscription = client
        .subscribe("order-1", SubscribeOptions::from_start())
        .await
        .unwrap();
    // Quiet for more than three idle timeouts.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let writer = server.client().await;
    writer
        .append("order-1", ExpectedRevision::NoStream, placed())
        .await
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match subscription.next_message().await.unwrap() {
                Some(cairn_client::SubscriptionMessage::Event(event)) => break event,
                Some(_) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("the event arrives on the old connection");
    assert_eq!(event.stream, "order-1");
    server.stop().await;
}
