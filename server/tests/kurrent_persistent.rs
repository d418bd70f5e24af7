//! Persistent subscriptions of the KurrentDB-compatible facade: the real
//! Python client `kurrentdbclient` against them
//! (tests/python/test_kurrent_persistent.py), groups crossing between the
//! facade and `cairn.v1` both ways, the bounds of a Read call's messages in
//! bytes and in ids, a group's `max_subscriber_count` and the trailers of
//! its refusal, and credentials and access on a secure server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{EventData, ExpectedRevision, GroupOptions};
use cairn_proto::kurrent::persistent as pb;
use cairn_proto::kurrent::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
use cairn_proto::kurrent::shared;
use cairn_server::Listen;
use cairn_testkit::http::basic;
use cairn_testkit::{ADMIN_PASSWORD, SecureSetup, TestServer, USER_PASSWORD};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The consumer limit of the Python client's server.
const MAX_CONSUMERS: usize = 2;

fn kurrent_on(settings: &mut cairn_server::Settings) {
    settings.kurrent_listen = Listen::At("127.0.0.1:0".parse().unwrap());
}

async fn persistent_client(server: &TestServer) -> PersistentSubscriptionsClient<Channel> {
    let address = server.kurrent_address.expect("the KurrentDB facade is on");
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the KurrentDB facade");
    PersistentSubscriptionsClient::new(channel)
}

fn identifier(stream: &str) -> shared::StreamIdentifier {
    shared::StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

fn create_on_stream(stream: &str, group: &str) -> pb::CreateReq {
    pb::CreateReq {
        options: Some(pb::create_req::Options {
            stream_option: Some(pb::create_req::options::StreamOption::Stream(
                pb::create_req::StreamOptions {
                    stream_identifier: Some(identifier(stream)),
                    revision_option: Some(pb::create_req::stream_options::RevisionOption::Start(
                        shared::Empty {},
                    )),
                },
            )),
            group_name: group.to_owned(),
            settings: Some(pb::create_req::Settings {
                max_retry_count: 3,
                consumer_strategy: "RoundRobin".to_owned(),
                message_timeout: Some(pb::create_req::settings::MessageTimeout::MessageTimeoutMs(
                    30_000,
                )),
                ..pb::create_req::Settings::default()
            }),
            ..pb::create_req::Options::default()
        }),
    }
}

fn info_request(stream: &str, group: &str) -> pb::GetInfoReq {
    pb::GetInfoReq {
        options: Some(pb::get_info_req::Options {
            stream_option: Some(pb::get_info_req::options::StreamOption::StreamIdentifier(
                identifier(stream),
            )),
            group_name: group.to_owned(),
        }),
    }
}

fn list_all() -> pb::ListReq {
    pb::ListReq {
        options: Some(pb::list_req::Options {
            list_option: Some(pb::list_req::options::ListOption::ListAllSubscriptions(
                shared::Empty {},
            )),
        }),
    }
}

fn read_options(stream: &str, group: &str) -> pb::ReadReq {
    pb::ReadReq {
        content: Some(pb::read_req::Content::Options(pb::read_req::Options {
            stream_option: Some(pb::read_req::options::StreamOption::StreamIdentifier(
                identifier(stream),
            )),
            group_name: group.to_owned(),
            buffer_size: 10,
            uuid_option: Some(pb::read_req::options::UuidOption {
                content: Some(pb::read_req::options::uuid_option::Content::String(
                    shared::Empty {},
                )),
            }),
        })),
    }
}

fn string_id(id: &Option<shared::Uuid>) -> uuid::Uuid {
    match id.as_ref().and_then(|id| id.value.as_ref()) {
        Some(shared::uuid::Value::String(text)) => text.parse().unwrap(),
        other => panic!("expected a string id, got {other:?}"),
    }
}

/// Opens a Read call; returns the sender of its further messages and the
/// responses after the confirmation, which must name `<stream>::<group>`.
async fn open_read(
    client: &mut PersistentSubscriptionsClient<Channel>,
    stream: &str,
    group: &str,
) -> (mpsc::Sender<pb::ReadReq>, tonic::Streaming<pb::ReadResp>) {
    let (sender, receiver) = mpsc::channel(4);
    sender.send(read_options(stream, group)).await.unwrap();
    let mut responses = client
        .read(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("a confirmation");
    match first.content {
        Some(pb::read_resp::Content::SubscriptionConfirmation(confirmation)) => {
            assert_eq!(confirmation.subscription_id, format!("{stream}::{group}"));
        }
        other => panic!("expected the confirmation, got {other:?}"),
    }
    (sender, responses)
}

async fn next_event(responses: &mut tonic::Streaming<pb::ReadResp>) -> pb::read_resp::ReadEvent {
    // A hang guard, not a timing assertion.
    let response = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .expect("an event");
    match response.content {
        Some(pb::read_resp::Content::Event(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_cross_between_the_facade_and_cairn_v1() {
    let server = TestServer::start_with(kurrent_on).await;
    let cairn = server.client().await;
    let mut kurrent = persistent_client(&server).await;

    // Created through the facade: a cairn.v1 group named after the pair.
    kurrent
        .create(create_on_stream("order-7", "billing"))
        .await
        .unwrap();
    let groups = cairn.list_groups().await.unwrap();
    let created = groups
        .iter()
        .find(|group| group.group == "order-7__billing")
        .unwrap_or_else(|| panic!("not listed through cairn.v1: {groups:?}"));
    assert_eq!(created.stream, "order-7");
    assert_eq!(created.settings.max_retries, Some(3));
    assert_eq!(
        created.settings.strategy,
        Some(cairn_client::Strategy::RoundRobin)
    );

    // Created through cairn.v1: listed and readable through the facade
    // under its own name and stream.
    cairn
        .create_group("native", "order-8", GroupOptions::default())
        .await
        .unwrap();
    let listed = kurrent.list(list_all()).await.unwrap().into_inner();
    let pairs: Vec<(String, String)> = listed
        .subscriptions
        .iter()
        .map(|info| (info.event_source.clone(), info.group_name.clone()))
        .collect();
    for pair in [("order-7", "billing"), ("order-8", "native")] {
        assert!(
            pairs.contains(&(pair.0.to_owned(), pair.1.to_owned())),
            "{pair:?} not in {pairs:?}"
        );
    }
    let info = kurrent
        .get_info(info_request("order-8", "native"))
        .await
        .unwrap()
        .into_inner()
        .subscription_info
        .unwrap();
    assert_eq!(info.named_consumer_strategy, "RoundRobin");
    // The same name on another stream is another group: not found.
    let missing = kurrent
        .get_info(info_request("order-9", "native"))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(
        missing.metadata().get("exception").unwrap(),
        "persistent-subscription-does-not-exist"
    );

    let written = cairn
        .append(
            "order-8",
            ExpectedRevision::NoStream,
            vec![EventData::json_text("Placed", "{}")],
        )
        .await
        .unwrap();
    let (sender, mut responses) = open_read(&mut kurrent, "order-8", "native").await;
    let delivered = next_event(&mut responses).await;
    assert_eq!(
        delivered.count,
        Some(pb::read_resp::read_event::Count::RetryCount(0))
    );
    let event = delivered.event.unwrap();
    assert_eq!(event.metadata["type"], "Placed");
    assert_eq!(event.stream_revision, 0);
    assert_eq!(event.commit_position, written.positions.unwrap().1 + 1);
    let id = string_id(&event.id);
    sender
        .send(pb::ReadReq {
            content: Some(pb::read_req::Content::Ack(pb::read_req::Ack {
                id: Bytes::new(),
                ids: vec![shared::Uuid {
                    value: Some(shared::uuid::Value::String(id.to_string())),
                }],
            })),
        })
        .await
        .unwrap();
    // The ack reached the group: cairn.v1 sees it (polled, not timed).
    let mut acked = 0;
    for _ in 0..200 {
        acked = cairn.group_info("native").await.unwrap().acked_total;
        if acked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(acked, 1);
    drop(sender);
    server.stop().await;
}

/// A STOP nack ends that subscriber's Read call with FAILED_PRECONDITION
/// (not as a server failure) while its side is still open; the event goes to
/// the next subscriber without counting a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_nack_ends_the_read_and_gives_the_event_back() {
    let server = TestServer::start_with(kurrent_on).await;
    let cairn = server.client().await;
    let mut kurrent = persistent_client(&server).await;
    kurrent
        .create(create_on_stream("order-5", "stopper"))
        .await
        .unwrap();
    cairn
        .append(
            "order-5",
            ExpectedRevision::NoStream,
            vec![EventData::json_text("Placed", "{}")],
        )
        .await
        .unwrap();
    let (sender, mut responses) = open_read(&mut kurrent, "order-5", "stopper").await;
    let delivered = next_event(&mut responses).await;
    let id = string_id(&delivered.event.unwrap().id);
    sender
        .send(pb::ReadReq {
            content: Some(pb::read_req::Content::Nack(pb::read_req::Nack {
                id: Bytes::new(),
                ids: vec![shared::Uuid {
                    value: Some(shared::uuid::Value::String(id.to_string())),
                }],
                action: pb::read_req::nack::Action::Stop.into(),
                reason: "stopping".into(),
            })),
        })
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .expect("the call ends")
        .expect_err("ended with a status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("STOP nack"), "{status:?}");

    let (_again, mut responses) = open_read(&mut kurrent, "order-5", "stopper").await;
    let redelivered = next_event(&mut responses).await;
    assert_eq!(
        redelivered.count,
        Some(pb::read_resp::read_event::Count::RetryCount(0))
    );
    assert_eq!(string_id(&redelivered.event.unwrap().id), id);
    drop(sender);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriber_count_is_kept_and_refuses_with_kurrentdb_trailers() {
    let server = TestServer::start_with(kurrent_on).await;
    let cairn = server.client().await;
    let mut kurrent = persistent_client(&server).await;
    let mut create = create_on_stream("solo-1", "single");
    if let Some(settings) = create
        .options
        .as_mut()
        .and_then(|options| options.settings.as_mut())
    {
        settings.max_subscriber_count = 1;
    }
    kurrent.create(create).await.unwrap();
    // Kept by the engine: cairn.v1 shows it as the group's max_consumers.
    let native = cairn.group_info("solo-1__single").await.unwrap();
    assert_eq!(native.settings.max_consumers, Some(1));

    let (first, _responses) = open_read(&mut kurrent, "solo-1", "single").await;
    let (sender, receiver) = mpsc::channel(1);
    sender.send(read_options("solo-1", "single")).await.unwrap();
    // Refused at the call or at its first message, as tonic delivers it.
    let status = match kurrent.read(ReceiverStream::new(receiver)).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("Maximum subscriptions reached"),
        "{}",
        status.message()
    );
    let trailer = |key: &str| {
        status
            .metadata()
            .get(key)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(trailer("exception"), "maximum-subscribers-reached");
    assert_eq!(trailer("stream-name"), "solo-1");
    assert_eq!(trailer("group-name"), "single");
    drop((first, sender));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_messages_are_bounded_in_bytes_and_in_ids() {
    let server = TestServer::start_with(kurrent_on).await;
    let mut kurrent = persistent_client(&server).await;
    kurrent
        .create(create_on_stream("bounded", "g"))
        .await
        .unwrap();
    let one_id = || shared::Uuid {
        value: Some(shared::uuid::Value::String(
            uuid::Uuid::new_v4().to_string(),
        )),
    };

    // More ids than one message may name.
    let (sender, mut responses) = open_read(&mut kurrent, "bounded", "g").await;
    sender
        .send(pb::ReadReq {
            content: Some(pb::read_req::Content::Ack(pb::read_req::Ack {
                id: Bytes::new(),
                ids: (0..10_001).map(|_| one_id()).collect(),
            })),
        })
        .await
        .unwrap();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("10000"), "{}", status.message());

    // A message over a MiB, with few ids.
    let (sender, mut responses) = open_read(&mut kurrent, "bounded", "g").await;
    sender
        .send(pb::ReadReq {
            content: Some(pb::read_req::Content::Ack(pb::read_req::Ack {
                id: Bytes::from(vec![b'x'; 1024 * 1024 + 1]),
                ids: vec![one_id()],
            })),
        })
        .await
        .unwrap();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("bytes"), "{}", status.message());
    server.stop().await;
}

fn with_auth<T>(message: T, authorization: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_needs_credentials_and_operator_rights() {
    let SecureSetup { server, admin } =
        SecureSetup::start_with(|settings, _| kurrent_on(settings), &[("worker", &[])]).await;
    let ca = std::fs::read(&server.tls.as_ref().unwrap().files.ca).unwrap();
    let channel = cairn_testkit::tls_channel(server.kurrent_address.unwrap(), &ca, None).await;
    let mut kurrent = PersistentSubscriptionsClient::new(channel);
    let worker = basic("worker", USER_PASSWORD);
    let admin_credentials = basic("admin", ADMIN_PASSWORD);

    let status = kurrent
        .create(with_auth(create_on_stream("secured", "g"), None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = kurrent
        .create(with_auth(create_on_stream("secured", "g"), Some(&worker)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.metadata().get("exception").unwrap(), "access-denied");
    // The denied calls changed nothing.
    assert!(admin.list_groups().await.unwrap().is_empty());
    let listed = kurrent
        .list(with_auth(list_all(), Some(&admin_credentials)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.subscriptions.is_empty(), "{listed:?}");
    // The admin may.
    kurrent
        .create(with_auth(
            create_on_stream("secured", "g"),
            Some(&admin_credentials),
        ))
        .await
        .unwrap();
    assert_eq!(admin.list_groups().await.unwrap().len(), 1);
    let status = kurrent
        .list(with_auth(list_all(), Some(&worker)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    server.stop().await;
}

/// Fails the test with what to install when python3 cannot import `module`.
fn require_python(module: &str, package: &str) {
    let probe = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 lacks {package} ({}); run .ci/run, or pip install {package}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => {
            panic!("cannot run python3 ({error}); install Python 3, then pip install {package}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kurrentdb_client_persistent_subscriptions() {
    require_python("kurrentdbclient", "kurrentdbclient");
    let server = TestServer::start_with(|settings| {
        kurrent_on(settings);
        settings.max_consumers_per_group = MAX_CONSUMERS;
    })
    .await;
    let address = server.kurrent_address.unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_kurrent_persistent.py");
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(format!("kurrentdb://{address}?tls=false"))
        .arg(MAX_CONSUMERS.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Python client did not finish within 180 s")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Shown with --nocapture: one line per check.
    println!("{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("python kurrent persistent: ")
            && summary.ends_with(" passed, 0 failed"),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
    server.stop().await;
}
