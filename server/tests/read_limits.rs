//! What a careless or hostile reader can make the server hold or compute,
//! through the real server and gRPC: metadata size, ListStreams paged by
//! bytes, filter limits, reads that stop when their client goes away or their
//! deadline passes, large events through a small buffer budget (the
//! server waits for its clients; nothing is lost), and clients that stop
//! reading altogether (cut off after the stall timeout, so that they cannot
//! pin the budget; a slow reader is not).

use std::time::Duration;

use cairn_client::{
    Client, Error, EventData, ExpectedRevision, Filter, GroupOptions, ReadOptions,
    SubscribeOptions, SubscriptionMessage,
};
use cairn_proto::reason;
use cairn_proto::v1 as pb;
use cairn_proto::v1::server_client::ServerClient;
use cairn_proto::v1::streams_client::StreamsClient;
use cairn_proto::v1::subscriptions_client::SubscriptionsClient;
use cairn_server::Settings;
use cairn_storage::{MAX_FILTER_PREFIXES, Store};
use cairn_testkit::{TestServer, eventually, eventually_within, read_all_client};
use prost::Message;
use tokio::sync::oneshot;
use tonic::Code;
use tonic_types::StatusExt;

const MIB: usize = 1024 * 1024;

/// A raw `cairn.v1.Streams` client with no message size limits of its own.
async fn streams(server: &TestServer) -> StreamsClient<tonic::transport::Channel> {
    StreamsClient::new(server.channel().await)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// The `ErrorInfo` reason of a status.
fn reason_of(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

fn assert_limit_exceeded(status: &tonic::Status, context: &str) {
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{context}: {status:?}"
    );
    assert_eq!(
        reason_of(status),
        reason::LIMIT_EXCEEDED,
        "{context}: {status:?}"
    );
}

/// A JSON string value of exactly `bytes` bytes (quotes included).
fn json_of(bytes: usize) -> String {
    format!("\"{}\"", "j".repeat(bytes - 2))
}

fn set_metadata_request(stream: &str, custom_json: String) -> pb::SetStreamMetadataRequest {
    pb::SetStreamMetadataRequest {
        stream: stream.into(),
        expected: Some(pb::ExpectedRevision {
            kind: Some(pb::expected_revision::Kind::Any(())),
        }),
        metadata: Some(pb::StreamMetadata {
            custom_json: Some(custom_json),
            ..pb::StreamMetadata::default()
        }),
    }
}

#[tokio::test]
async fn oversized_metadata_is_refused_and_nothing_is_written() {
    let server = TestServer::start().await;
    let mut raw = streams(&server).await;
    // 15 MiB: accepted (and then held in memory, listed, ...) before the limit.
    let refused = raw
        .set_stream_metadata(set_metadata_request("meta-1", json_of(15 * MIB)))
        .await
        .expect_err("15 MiB of metadata");
    assert_limit_exceeded(&refused, "15 MiB of custom_json");
    let lookup = raw
        .get_stream_metadata(pb::GetStreamMetadataRequest {
            stream: "meta-1".into(),
        })
        .await
        .expect_err("nothing was written");
    assert_eq!(lookup.code(), Code::NotFound, "{lookup:?}");

    // The default limit, 64 KiB, to the byte.
    raw.set_stream_metadata(set_metadata_request("meta-1", json_of(64 * 1024)))
        .await
        .expect("64 KiB is within the default");
    let refused = raw
        .set_stream_metadata(set_metadata_request("meta-1", json_of(64 * 1024 + 1)))
        .await
        .expect_err("one byte over");
    assert_limit_exceeded(&refused, "64 KiB + 1");
    let info = raw
        .get_stream_metadata(pb::GetStreamMetadataRequest {
            stream: "meta-1".into(),
        })
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        info.metadata_revision,
        Some(0),
        "the refused write left nothing"
    );
    server.stop().await;

    // Configurable.
    let server = TestServer::start_with(|settings| settings.max_metadata_bytes = 100).await;
    let client = server.client().await;
    let metadata = |bytes| cairn_client::StreamMetadata {
        custom_json: Some(json_of(bytes)),
        ..cairn_client::StreamMetadata::default()
    };
    client
        .set_stream_metadata("meta-2", ExpectedRevision::Any, metadata(100))
        .await
        .expect("at the configured limit");
    let refused = client
        .set_stream_metadata("meta-2", ExpectedRevision::Any, metadata(101))
        .await;
    assert!(
        matches!(refused, Err(Error::LimitExceeded(_))),
        "{refused:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn list_streams_pages_by_bytes_and_next_after_continues() {
    let server = TestServer::start().await;
    let mut raw = streams(&server).await;
    // 40 streams with 60 KiB of metadata each: 2.4 MB, within the count
    // limit of one page (100).
    for n in 0..40 {
        raw.set_stream_metadata(set_metadata_request(
            &format!("big-{n:02}"),
            json_of(60 * 1024),
        ))
        .await
        .expect("metadata");
    }
    let mut after = String::new();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page = raw
            .list_streams(pb::ListStreamsRequest {
                prefix: "big-".into(),
                after: after.clone(),
                limit: 0,
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        let bytes = page.encoded_len();
        // The page ends after the stream that reaches 1 MiB.
        assert!(
            bytes <= MIB + 64 * 1024 + 4096,
            "page {pages} is {bytes} bytes"
        );
        assert!(!page.streams.is_empty(), "page {pages} is empty");
        names.extend(page.streams.iter().map(|info| info.stream.clone()));
        match page.next_after {
            Some(next) => {
                assert_eq!(Some(&next), names.last());
                after = next;
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..40).map(|n| format!("big-{n:02}")).collect();
    assert_eq!(names, expected, "every stream once, in order");
    assert!(pages >= 3, "{pages} pages");

    // The count limit still pages as before.
    let client = server.client().await;
    let page = client.list_streams("big-", None, 5).await.expect("list");
    assert_eq!(page.streams.len(), 5);
    assert_eq!(page.next_after.as_deref(), Some("big-04"));
    server.stop().await;
}

fn prefixes(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("p{n:07}")).collect()
}

#[tokio::test]
async fn filters_beyond_the_limits_are_refused_everywhere() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "p0000001-a",
            ExpectedRevision::Any,
            vec![EventData::json_text("T", "{}")],
        )
        .await
        .expect("append");
    let mut raw = streams(&server).await;
    // A million prefixes: before the limit, one read of $all with it kept a
    // core busy for 30 s after the client's deadline.
    let huge = pb::ReadFilter {
        stream_prefixes: prefixes(1_000_000),
        ..pb::ReadFilter::default()
    };
    let refused = raw
        .read(pb::ReadRequest {
            stream: "$all".into(),
            filter: Some(huge),
            ..pb::ReadRequest::default()
        })
        .await
        .expect_err("a million prefixes");
    assert_limit_exceeded(&refused, "read with a million prefixes");
    assert!(refused.message().contains("prefixes"), "{refused:?}");

    let over = Filter {
        stream_prefixes: prefixes(MAX_FILTER_PREFIXES + 1),
        ..Filter::default()
    };
    let subscribed = SubscriptionsClient::new(server.channel().await)
        .max_encoding_message_size(usize::MAX)
        .subscribe(pb::SubscribeRequest {
            stream: "$all".into(),
            // Within the service's 4 MiB message limit.
            filter: Some(pb::ReadFilter {
                stream_prefixes: prefixes(100_000),
                ..pb::ReadFilter::default()
            }),
            ..pb::SubscribeRequest::default()
        })
        .await
        .map(|_| ())
        .expect_err("subscription with 100,000 prefixes");
    assert_limit_exceeded(&subscribed, "subscribe with 100,000 prefixes");
    let subscribed = client
        .subscribe(
            "$all",
            SubscribeOptions::from_start().filter(over.clone(), 0),
        )
        .await
        .map(|_| ());
    assert!(
        matches!(subscribed, Err(Error::LimitExceeded(_))),
        "{subscribed:?}"
    );
    let group = client
        .create_group(
            "g",
            "$all",
            GroupOptions {
                filter: Some(over),
                ..GroupOptions::default()
            },
        )
        .await;
    assert!(matches!(group, Err(Error::LimitExceeded(_))), "{group:?}");
    let long_regex = Filter {
        type_regex: Some("a".repeat(cairn_storage::MAX_FILTER_REGEX_BYTES + 1)),
        ..Filter::default()
    };
    let read = client
        .read("$all", ReadOptions::forwards().filter(long_regex))
        .await
        .map(|_| ());
    assert!(matches!(read, Err(Error::LimitExceeded(_))), "{read:?}");

    // At the limit the filter works (and is matched by binary search).
    let at_limit = Filter {
        stream_prefixes: prefixes(MAX_FILTER_PREFIXES),
        ..Filter::default()
    };
    let events = client
        .read("$all", ReadOptions::forwards().filter(at_limit))
        .await
        .expect("read")
        .collect_all()
        .await
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream, "p0000001-a");
    server.stop().await;
}

/// A server whose store the test holds too, to read its counters.
struct Observed {
    url: String,
    store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), cairn_server::ServerError>>,
    _data: tempfile::TempDir,
}

impl Observed {
    async fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let settings = Settings::for_tests(data.path().to_path_buf());
        let store = cairn_server::open_store(&settings).expect("open store");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_server::run(
            listener,
            store.clone(),
            settings,
            async move {
                let _ = stopped.await;
            },
        ));
        eventually("the server to serve", || {
            let url = url.clone();
            async move {
                Client::connect(url)
                    .await
                    .ok()?
                    .is_serving()
                    .await
                    .ok()?
                    .then_some(())
            }
        })
        .await;
        Self {
            url,
            store,
            stop: Some(stop),
            task,
            _data: data,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .expect("server task")
            .expect("server run");
    }
}

/// Appends `count` events of `size` bytes to `stream`, in appends of at most
/// 3 MiB.
async fn append_sized(client: &Client, stream: &str, count: usize, size: usize) {
    let per_append = (3 * MIB / size).max(1);
    let mut left = count;
    while left > 0 {
        let now = left.min(per_append);
        let events = (0..now)
            .map(|_| EventData::binary("Sized", vec![b'x'; size]))
            .collect();
        client
            .append(stream, ExpectedRevision::Any, events)
            .await
            .expect("append");
        left -= now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_client_goes_away_reads_no_further_chunks() {
    let server = Observed::start().await;
    let client = Client::connect(server.url.clone()).await.expect("connect");
    // 48 MiB in events of 8 KiB: about 48 chunks of 1 MiB.
    append_sized(&client, "wide-1", 6000, 8 * 1024).await;
    let before = server.store.read_stats();
    let mut events = client
        .read("$all", ReadOptions::forwards())
        .await
        .expect("read");
    events.next_event().await.expect("first").expect("an event");
    // The client stops reading: the server fills the HTTP/2 window and its
    // own small buffers, then waits. Then the client goes away.
    drop(events);
    drop(client);
    let mut last = None;
    let stats = eventually("the read to stop reading", || {
        let stats = server.store.read_stats();
        let settled = stats.in_flight == 0 && last == Some(stats.calls);
        last = Some(stats.calls);
        async move { settled.then_some(stats) }
    })
    .await;
    let chunks = stats.calls - before.calls;
    assert!(
        chunks <= 16,
        "{chunks} storage calls for a read abandoned after its first event (of about 48 chunks)"
    );
    // What it held goes back at once, not after the stall timeout (60 s).
    eventually_within(Duration::from_secs(10), "the budget to return", || async {
        let held = buffered_bytes(&server.url).await;
        if held == 0 { Ok(()) } else { Err(held) }
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ends_when_its_deadline_passes_even_if_the_client_stays() {
    let server = TestServer::start().await;
    let client = server.client().await;
    append_sized(&client, "wide-1", 2000, 8 * 1024).await;
    let mut raw = streams(&server).await;
    let mut request = tonic::Request::new(pb::ReadRequest {
        stream: "$all".into(),
        ..pb::ReadRequest::default()
    });
    request.set_timeout(Duration::from_millis(300));
    let mut responses = raw.read(request).await.expect("read").into_inner();
    // The client keeps the call open without reading past its own deadline
    // (tonic cancels only the wait for the response headers).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut received = 0;
    let end = loop {
        match responses.message().await {
            Ok(Some(response)) => received += response.events.len(),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = end.expect("the read ended with a status, not as if complete");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(reason_of(&status), reason::DEADLINE_EXCEEDED, "{status:?}");
    assert!(received < 2000, "{received} events");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_pass_a_small_buffer_budget_complete_and_in_order() {
    // A budget of 6 MiB for the whole server (a chunk reserves 5 MiB before
    // it is read): the reads and the subscription below take turns for it,
    // and each still gets every event once, in order. (Clients that stop
    // reading keep what they hold, so everyone here reads.)
    let server = TestServer::start_with(|settings| settings.max_buffered_bytes = 6 * MIB).await;
    let client = server.client().await;
    append_sized(&client, "big-1", 40, MIB).await;
    let mut subscription = client
        .subscribe("$ce-big", SubscribeOptions::from_start())
        .await
        .expect("subscribe");
    let subscriber = tokio::spawn(async move {
        let mut revisions = Vec::new();
        while revisions.len() < 50 {
            if let SubscriptionMessage::Event(event) = subscription
                .next_message()
                .await
                .expect("message")
                .expect("open")
            {
                assert_eq!(event.data.len(), MIB);
                revisions.push(event.revision);
            }
        }
        revisions
    });
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { read_all_client(&client, "$ce-big").await })
        })
        .collect();
    let everything = async {
        for reader in readers {
            let events = reader.await.expect("reader").expect("read");
            let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
            assert_eq!(revisions, (0..40).collect::<Vec<_>>());
            assert!(events.iter().all(|event| event.data.len() == MIB));
        }
        // And live: events committed now reach the subscriber through the
        // same budget.
        append_sized(&client, "big-1", 10, MIB).await;
        subscriber.await.expect("subscriber")
    };
    let revisions = tokio::time::timeout(Duration::from_secs(120), everything)
        .await
        .expect("the reads and the subscription finish: no one waits forever");
    assert_eq!(revisions, (0..50).collect::<Vec<_>>());
    server.stop().await;
}

/// What the server holds now for clients (`Server.Info`), bytes.
async fn buffered_bytes(url: &str) -> u64 {
    ServerClient::new(cairn_testkit::channel(url).await)
        .info(())
        .await
        .expect("info")
        .into_inner()
        .buffered_bytes
}

/// A raw read of all of `stream`, on its own connection: nothing of it is
/// taken until the test reads.
async fn read_of(server: &TestServer, stream: &str) -> tonic::Streaming<pb::ReadResponse> {
    streams(server)
        .await
        .read(pb::ReadRequest {
            stream: stream.into(),
            ..pb::ReadRequest::default()
        })
        .await
        .expect("read")
        .into_inner()
}

/// A raw subscription to `stream` from its start, like [`read_of`].
async fn subscription_to(
    server: &TestServer,
    stream: &str,
) -> tonic::Streaming<pb::SubscribeResponse> {
    SubscriptionsClient::new(server.channel().await)
        .subscribe(pb::SubscribeRequest {
            stream: stream.into(),
            ..pb::SubscribeRequest::default()
        })
        .await
        .expect("subscribe")
        .into_inner()
}

/// Reads `responses` to its end: the messages' events and the closing
/// status (`None`: it ended OK).
async fn drain<T>(
    responses: &mut tonic::Streaming<T>,
    events_of: impl Fn(&T) -> usize,
) -> (usize, Option<tonic::Status>) {
    let mut events = 0;
    loop {
        match responses.message().await {
            Ok(Some(message)) => events += events_of(&message),
            Ok(None) => return (events, None),
            Err(status) => return (events, Some(status)),
        }
    }
}

fn assert_client_stalled(end: Option<tonic::Status>, context: &str) {
    let status = end.unwrap_or_else(|| panic!("{context}: ended OK although it was cut off"));
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{context}: {status:?}"
    );
    assert_eq!(
        reason_of(&status),
        reason::CLIENT_STALLED,
        "{context}: {status:?}"
    );
}

/// Settings of the stall tests: a small budget that a few stalled calls
/// fill (a read chunk or subscription page reserves 1.25 MiB, a
/// subscription holds at most 2.5 MiB), and a short stall timeout.
fn small_budget(settings: &mut Settings) {
    settings.max_buffered_bytes = 6 * MIB;
    settings.max_event_bytes = 256 * 1024;
    settings.client_stall_timeout_ms = 1000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_off_and_give_the_budget_back() {
    let server = TestServer::start_with(small_budget).await;
    let client = server.client().await;
    // 20 MiB: far more than the budget and the clients' HTTP/2 windows.
    append_sized(&client, "big-1", 100, 200 * 1024).await;
    // Reads and subscriptions whose clients never take a message (their
    // HTTP/2 windows fill and are never opened again), each on its own
    // connection. Before the stall timeout, the subscriptions alone could
    // hold 7.5 MiB: every other reader waited for good.
    let mut reads = Vec::new();
    let mut subscriptions = Vec::new();
    for _ in 0..3 {
        reads.push(read_of(&server, "$ce-big").await);
        subscriptions.push(subscription_to(&server, "$ce-big").await);
    }
    // A reader that reads gets everything once the stalled calls are cut off.
    let events = tokio::time::timeout(Duration::from_secs(60), read_all_client(&client, "$ce-big"))
        .await
        .expect("a reader beside clients that stopped reading is not locked out")
        .expect("read");
    assert_eq!(events.len(), 100);
    // The budget is back although the stalled clients never read again.
    eventually(
        "the budget to return while the stalled calls are open",
        || async {
            let held = buffered_bytes(&server.url()).await;
            if held == 0 { Ok(()) } else { Err(held) }
        },
    )
    .await;
    // A stalled client that reads again gets what reached it, then the
    // status: never an OK end of a truncated read.
    for (n, read) in reads.iter_mut().enumerate() {
        let (events, end) = drain(read, |response: &pb::ReadResponse| response.events.len()).await;
        assert!(events < 100, "read {n} got all {events} events");
        assert_client_stalled(end, &format!("read {n}"));
    }
    for (n, subscription) in subscriptions.iter_mut().enumerate() {
        let (_, end) = drain(subscription, |_: &pb::SubscribeResponse| 1).await;
        assert_client_stalled(end, &format!("subscription {n}"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_that_keeps_reading_is_not_cut_off() {
    let server = TestServer::start_with(small_budget).await;
    let client = server.client().await;
    // Responses of up to 1 MiB (five events) and subscription messages of
    // one event: read one every 250 ms, the whole read and subscription
    // take several stall timeouts.
    append_sized(&client, "big-1", 40, 200 * 1024).await;
    let pause = Duration::from_millis(250);
    let mut read = read_of(&server, "$ce-big").await;
    let mut subscription = subscription_to(&server, "$ce-big").await;
    let started = std::time::Instant::now();
    // Both at once: a call that is not read for a stall timeout is cut off.
    let reading = async {
        let mut events = 0;
        while let Some(response) = read.message().await.expect("a slow read is not cut off") {
            events += response.events.len();
            tokio::time::sleep(pause).await;
        }
        events
    };
    let subscribed = async {
        let mut events = 0;
        while events < 40 {
            let message = subscription
                .message()
                .await
                .expect("a slow subscriber is not cut off")
                .expect("open");
            if let Some(pb::subscribe_response::Content::Event(_)) = message.content {
                events += 1;
                tokio::time::sleep(pause).await;
            }
        }
        events
    };
    assert_eq!(tokio::join!(reading, subscribed), (40, 40));
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the reads took several stall timeouts ({:?})",
        started.elapsed()
    );
    server.stop().await;
}
