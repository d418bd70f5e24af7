//! `ReadRequest.min_position` (read-your-writes on any cluster node): a read
//! waits until the node holds the position, and fails UNAVAILABLE /
//! NOT_CAUGHT_UP, naming the node's head, when it does not in time. Tested
//! on a single node, where "not yet" is a position nobody appended.

use std::time::Duration;

use cairn_client::{Client, Error, ExpectedRevision, ReadOptions};
use cairn_proto::reason;
use cairn_proto::v1 as pb;
use cairn_proto::v1::streams_client::StreamsClient;
use cairn_testkit::{TestServer, client_numbered};
use tonic::Code;
use tonic_types::StatusExt;

fn read_from_start(min_position: u64) -> pb::ReadRequest {
    pb::ReadRequest {
        stream: "$all".into(),
        min_position: Some(min_position),
        ..pb::ReadRequest::default()
    }
}

#[tokio::test]
async fn a_read_at_a_position_the_node_holds_answers_at_once() {
    let server = TestServer::start().await;
    let client = Client::connect(server.url()).await.expect("connect");
    let appended = client
        .append(
            "s",
            ExpectedRevision::Any,
            vec![client_numbered("E", 0), client_numbered("E", 1)],
        )
        .await
        .expect("append");
    let (_, last) = appended.positions.expect("positions");
    let events = client
        .read_all(ReadOptions::forwards().at_least(last))
        .await
        .expect("read")
        .collect_all()
        .await
        .expect("collect");
    assert_eq!(events.len(), 2);
}

#[tokio::test]
async fn a_read_beyond_the_head_fails_not_caught_up_at_its_deadline() {
    let server = TestServer::start().await;
    let client = Client::connect(server.url()).await.expect("connect");
    client
        .append("s", ExpectedRevision::Any, vec![client_numbered("E", 0)])
        .await
        .expect("append");
    let mut streams = StreamsClient::new(server.channel().await);
    let mut request = tonic::Request::new(read_from_start(5));
    request.set_timeout(Duration::from_millis(300));
    let status = streams
        .read(request)
        .await
        .expect_err("position 5 does not exist");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason::NOT_CAUGHT_UP);
    assert_eq!(info.metadata.get("head").map(String::as_str), Some("1"));

    // The Rust client reads it as Unavailable.
    let mut request = tonic::Request::new(read_from_start(5));
    request.set_timeout(Duration::from_millis(100));
    let error = Error::from(streams.read(request).await.expect_err("still missing"));
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn a_waiting_read_starts_once_the_position_is_written() {
    let server = TestServer::start().await;
    let client = Client::connect(server.url()).await.expect("connect");
    let reader = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .read_all(ReadOptions::forwards().at_least(2))
                .await?
                .collect_all()
                .await
        })
    };
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .append("s", ExpectedRevision::Any, vec![client_numbered("E", n)])
            .await
            .expect("append");
    }
    let events = reader.await.expect("reader task").expect("read");
    assert_eq!(events.len(), 3, "the read saw position 2");
}
