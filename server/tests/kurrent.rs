//! The KurrentDB-compatible facade (`event_store.client.*` on its own
//! listener): the real Python client `kurrentdbclient` against it
//! (tests/python/test_kurrent.py), events crossing between `cairn.v1` and
//! the facade unchanged, server features and unimplemented services, and
//! credentials and ACLs enforced through the facade on a secure server
//! (where only Gossip.Read and ServerFeatures.GetSupportedMethods are
//! anonymous).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use cairn_client::{EventData, ExpectedRevision, ReadOptions};
use cairn_proto::kurrent::gossip as gossip_pb;
use cairn_proto::kurrent::gossip::gossip_client::GossipClient;
use cairn_proto::kurrent::persistent as persistent_pb;
use cairn_proto::kurrent::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
use cairn_proto::kurrent::server_features::server_features_client::ServerFeaturesClient;
use cairn_proto::kurrent::shared;
use cairn_proto::kurrent::streams as pb;
use cairn_proto::kurrent::streams::streams_client::StreamsClient;
use cairn_server::Listen;
use cairn_testkit::{ADMIN_PASSWORD, SecureSetup, TestServer, USER_PASSWORD, set_acl};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// Settings that turn the facade on at a free port.
fn kurrent_on(settings: &mut cairn_server::Settings) {
    settings.kurrent_listen = Listen::At("127.0.0.1:0".parse().unwrap());
}

async fn kurrent_channel(server: &TestServer) -> Channel {
    let address = server.kurrent_address.expect("the KurrentDB facade is on");
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the KurrentDB facade")
}

fn identifier(stream: &str) -> shared::StreamIdentifier {
    shared::StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

/// An Append call's messages: options (expected: any), then `events`.
fn append_requests(
    stream: &str,
    events: Vec<pb::append_req::ProposedMessage>,
) -> Vec<pb::AppendReq> {
    let options = pb::append_req::Options {
        stream_identifier: Some(identifier(stream)),
        expected_stream_revision: Some(pb::append_req::options::ExpectedStreamRevision::Any(
            shared::Empty {},
        )),
    };
    std::iter::once(pb::AppendReq {
        content: Some(pb::append_req::Content::Options(options)),
    })
    .chain(events.into_iter().map(|message| pb::AppendReq {
        content: Some(pb::append_req::Content::ProposedMessage(message)),
    }))
    .collect()
}

fn proposed(
    id: uuid::Uuid,
    event_type: &str,
    data: &[u8],
    custom: &[u8],
) -> pb::append_req::ProposedMessage {
    pb::append_req::ProposedMessage {
        id: Some(shared::Uuid {
            value: Some(shared::uuid::Value::String(id.to_string())),
        }),
        metadata: [
            ("type".to_owned(), event_type.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ]
        .into(),
        custom_metadata: Bytes::copy_from_slice(custom),
        data: Bytes::copy_from_slice(data),
    }
}

/// A forwards read of a whole stream, as the facade answers it.
fn read_stream_request(stream: &str) -> pb::ReadReq {
    use pb::read_req::options;
    pb::ReadReq {
        options: Some(pb::read_req::Options {
            stream_option: Some(options::StreamOption::Stream(options::StreamOptions {
                stream_identifier: Some(identifier(stream)),
                revision_option: Some(options::stream_options::RevisionOption::Start(
                    shared::Empty {},
                )),
            })),
            read_direction: options::ReadDirection::Forwards as i32,
            resolve_links: false,
            count_option: Some(options::CountOption::Count(100)),
            filter_option: Some(options::FilterOption::NoFilter(shared::Empty {})),
            uuid_option: Some(options::UuidOption {
                content: Some(options::uuid_option::Content::Structured(shared::Empty {})),
            }),
            control_option: None,
        }),
    }
}

async fn read_events(
    client: &mut StreamsClient<Channel>,
    request: tonic::Request<pb::ReadReq>,
) -> Result<Vec<pb::read_resp::read_event::RecordedEvent>, tonic::Status> {
    let mut responses = client.read(request).await?.into_inner();
    let mut events = Vec::new();
    while let Some(response) = responses.message().await? {
        if let Some(pb::read_resp::Content::Event(event)) = response.content {
            events.push(event.event.expect("an event"));
        }
    }
    Ok(events)
}

fn structured_id(id: &Option<shared::Uuid>) -> uuid::Uuid {
    match id.as_ref().and_then(|id| id.value.as_ref()) {
        Some(shared::uuid::Value::Structured(halves)) => uuid::Uuid::from_u64_pair(
            halves.most_significant_bits as u64,
            halves.least_significant_bits as u64,
        ),
        other => panic!("expected a structured id, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_identically_through_both_protocols() {
    let server = TestServer::start_with(kurrent_on).await;
    let cairn = server.client().await;
    let mut kurrent = StreamsClient::new(kurrent_channel(&server).await);

    // Written through cairn.v1, read through the facade.
    let id = uuid::Uuid::new_v4();
    let mut written = EventData::json_text("OrderPlaced", r#"{"sku":"tea"}"#);
    written.id = id;
    written.metadata = Bytes::from_static(br#"{"trace":"t1"}"#);
    let result = cairn
        .append("order-1", ExpectedRevision::NoStream, vec![written])
        .await
        .unwrap();
    let (_, cairn_position) = result.positions.unwrap();
    let events = read_events(
        &mut kurrent,
        tonic::Request::new(read_stream_request("order-1")),
    )
    .await
    .unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(structured_id(&event.id), id);
    assert_eq!(event.stream_identifier, Some(identifier("order-1")));
    assert_eq!(event.stream_revision, 0);
    assert_eq!(event.commit_position, cairn_position + 1);
    assert_eq!(event.prepare_position, cairn_position + 1);
    assert_eq!(event.metadata["type"], "OrderPlaced");
    assert_eq!(event.metadata["content-type"], "application/json");
    let created: i64 = event.metadata["created"].parse().unwrap();
    let now_ticks = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        / 100;
    assert!(created > 0 && (created as u128) <= now_ticks, "{created}");
    assert_eq!(&event.data[..], br#"{"sku":"tea"}"#);
    assert_eq!(&event.custom_metadata[..], br#"{"trace":"t1"}"#);

    // Written through the facade, read through cairn.v1.
    let id = uuid::Uuid::new_v4();
    let response = kurrent
        .append(tokio_stream::iter(append_requests(
            "order-1",
            vec![proposed(id, "OrderPaid", br#"{"eur":3}"#, b"custom")],
        )))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::append_resp::Result::Success(success)) = response.result else {
        panic!("expected success, got {response:?}");
    };
    assert_eq!(
        success.current_revision_option,
        Some(pb::append_resp::success::CurrentRevisionOption::CurrentRevision(1))
    );
    let Some(pb::append_resp::success::PositionOption::Position(position)) =
        success.position_option
    else {
        panic!("expected a position");
    };
    let events = cairn
        .read_stream("order-1", ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    let event = &events[1];
    assert_eq!(event.id, id);
    assert_eq!(event.revision, 1);
    assert_eq!(event.position + 1, position.commit_position);
    assert_eq!(event.event_type, "OrderPaid");
    assert_eq!(event.content_type, "application/json");
    assert_eq!(&event.data[..], br#"{"eur":3}"#);
    assert_eq!(&event.metadata[..], b"custom");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_features_list_what_is_implemented_and_the_rest_is_unimplemented() {
    let server = TestServer::start_with(kurrent_on).await;
    let channel = kurrent_channel(&server).await;
    let methods = ServerFeaturesClient::new(channel.clone())
        .get_supported_methods(shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<(String, String)> = methods
        .methods
        .iter()
        .map(|method| (method.service_name.clone(), method.method_name.clone()))
        .collect();
    for method in ["read", "append", "batchappend", "delete", "tombstone"] {
        assert!(
            listed.contains(&(
                "event_store.client.streams.streams".to_owned(),
                method.to_owned()
            )),
            "{method} missing from {listed:?}"
        );
    }
    for method in ["create", "read", "getinfo", "replayparked", "list"] {
        assert!(
            listed.contains(&(
                "event_store.client.persistent_subscriptions.persistentsubscriptions".to_owned(),
                method.to_owned()
            )),
            "persistent {method} missing from {listed:?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|(service, _)| service.contains("projections")),
        "projections are not implemented: {listed:?}"
    );
    // A service the facade does not implement answers UNIMPLEMENTED, naming it.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = "/event_store.client.projections.Projections/Statistics"
        .parse()
        .unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(shared::Empty {}),
            path,
            tonic_prost::ProstCodec::<shared::Empty, shared::Empty>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("Projections"),
        "{}",
        status.message()
    );
    server.stop().await;
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
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
async fn credentials_and_acls_apply_through_the_facade() {
    let SecureSetup { server, admin } =
        SecureSetup::start_with(|settings, _| kurrent_on(settings), &[("reader", &[])]).await;
    admin
        .append(
            "guarded",
            ExpectedRevision::NoStream,
            vec![EventData::json_text("Kept", "{}")],
        )
        .await
        .unwrap();
    set_acl(
        &admin,
        "guarded",
        r#"{"$acl":{"$r":["reader"],"$w":"$admins","$d":"$admins"}}"#,
    )
    .await;
    let ca = std::fs::read(&server.tls.as_ref().unwrap().files.ca).unwrap();
    let channel = cairn_testkit::tls_channel(server.kurrent_address.unwrap(), &ca, None).await;
    let mut kurrent = StreamsClient::new(channel.clone());
    let reader = basic("reader", USER_PASSWORD);
    let admin_credentials = basic("admin", ADMIN_PASSWORD);
    let append = |authorization: Option<&str>| {
        let mut request = tonic::Request::new(tokio_stream::iter(append_requests(
            "guarded",
            vec![proposed(uuid::Uuid::new_v4(), "Denied", b"{}", b"")],
        )));
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    };

    // Discovery is anonymous, as on KurrentDB (clients call it before they
    // authenticate): gossip names the leader, features list the methods.
    let cluster = GossipClient::new(channel.clone())
        .read(shared::Empty {})
        .await
        .expect("anonymous Gossip.Read")
        .into_inner();
    assert_eq!(cluster.members.len(), 1, "{cluster:?}");
    assert_eq!(
        cluster.members[0].state,
        gossip_pb::member_info::VNodeState::Leader as i32
    );
    let methods = ServerFeaturesClient::new(channel.clone())
        .get_supported_methods(shared::Empty {})
        .await
        .expect("anonymous ServerFeatures.GetSupportedMethods")
        .into_inner();
    assert!(!methods.methods.is_empty());
    // Nothing else is: an anonymous read or persistent-subscription list is
    // UNAUTHENTICATED.
    let status = read_events(
        &mut kurrent,
        with_auth(read_stream_request("guarded"), None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = PersistentSubscriptionsClient::new(channel)
        .list(persistent_pb::ListReq { options: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // No credentials, or wrong ones: UNAUTHENTICATED.
    let status = kurrent.append(append(None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Without cairn.v1's rich details, which KurrentDB clients would take
    // for one of their server's and stop mapping the code.
    assert!(status.details().is_empty(), "{status:?}");
    let status = kurrent
        .append(append(Some(&basic("reader", "wrong password!"))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // The ACL lets the reader read but not write or delete.
    let status = kurrent.append(append(Some(&reader))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.metadata().get("exception").unwrap(), "access-denied");
    let delete = pb::DeleteReq {
        options: Some(pb::delete_req::Options {
            stream_identifier: Some(identifier("guarded")),
            expected_stream_revision: Some(pb::delete_req::options::ExpectedStreamRevision::Any(
                shared::Empty {},
            )),
        }),
    };
    let status = kurrent
        .delete(with_auth(delete.clone(), Some(&reader)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let events = read_events(
        &mut kurrent,
        with_auth(read_stream_request("guarded"), Some(&reader)),
    )
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "the denied calls changed nothing");
    assert_eq!(events[0].metadata["type"], "Kept");
    // The admin may write.
    kurrent
        .append(append(Some(&admin_credentials)))
        .await
        .unwrap();
    let events = admin
        .read_stream("guarded", ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(
        events
            .iter()
            .map(|event| event.event_type.as_str())
            .collect::<Vec<_>>(),
        ["Kept", "Denied"]
    );
    server.stop().await;
}

/// Fails the test with what to install when python3 cannot import `module`
/// (of the PyPI package `package`).
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

/// The KurrentDB Python client.
fn require_python_client() {
    require_python("kurrentdbclient", "kurrentdbclient");
}

/// Runs a script of tests/python with `args`; checks it passed and printed
/// `<summary_prefix>N passed, 0 failed` last.
async fn run_python(name: &str, args: &[String], summary_prefix: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name);
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
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
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(summary_prefix) && summary.ends_with(" passed, 0 failed"),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kurrentdb_client_works_against_the_facade() {
    require_python_client();
    let server = TestServer::start_with(kurrent_on).await;
    let address = server.kurrent_address.unwrap();
    run_python(
        "test_kurrent.py",
        &[format!("kurrentdb://{address}?tls=false")],
        "python kurrent client: ",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_eventsourcing_application_runs_on_the_facade() {
    require_python("eventsourcing_kurrentdb", "eventsourcing-kurrentdb");
    let server = TestServer::start_with(kurrent_on).await;
    let address = server.kurrent_address.unwrap();
    run_python(
        "test_kurrent_eventsourcing.py",
        &[format!("kurrentdb://{address}?tls=false")],
        "python eventsourcing: ",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kurrentdb_client_over_tls_with_users_and_acls() {
    // Not USER_PASSWORD (it has spaces): this one goes into a connection URI
    // unescaped.
    const READER_PASSWORD: &str = "reader-long-enough-password";
    require_python_client();
    let server = TestServer::start_secure_with(|settings, _| kurrent_on(settings)).await;
    let admin = server.admin().await;
    admin
        .create_user(cairn_client::NewUser::new("reader", READER_PASSWORD))
        .await
        .unwrap();
    for (stream, event_type, acl) in [
        (
            "guarded-py",
            "Kept",
            r#"{"$acl":{"$r":["reader"],"$w":"$admins","$d":"$admins"}}"#,
        ),
        ("secret-py", "Secret", r#"{"$acl":{"$r":"$admins"}}"#),
    ] {
        admin
            .append(
                stream,
                ExpectedRevision::NoStream,
                vec![EventData::json_text(event_type, "{}")],
            )
            .await
            .unwrap();
        set_acl(&admin, stream, acl).await;
    }
    let port = server.kurrent_address.unwrap().port();
    let ca = server.tls.as_ref().unwrap().files.ca.display().to_string();
    run_python(
        "test_kurrent_tls.py",
        &[
            format!("localhost:{port}"),
            ca,
            ADMIN_PASSWORD.to_owned(),
            READER_PASSWORD.to_owned(),
        ],
        "python kurrent tls client: ",
    )
    .await;
    server.stop().await;
}

/// The Node client (`@kurrent/kurrentdb-client`, which `.ci/run` installs
/// into `~/.cache/cairn/node`; by hand:
/// `npm install --prefix ~/.cache/cairn/node @kurrent/kurrentdb-client@1.3.1`;
/// `CAIRN_NODE_MODULES` overrides where the package is looked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_kurrentdb_client_works_against_the_facade() {
    let modules = std::env::var_os("CAIRN_NODE_MODULES")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/cairn/node/node_modules"))
        })
        .expect("CAIRN_NODE_MODULES or HOME");
    assert!(
        modules.join("@kurrent/kurrentdb-client").is_dir(),
        "no @kurrent/kurrentdb-client under {}; run .ci/run or install it as this test's doc says",
        modules.display()
    );
    let server = TestServer::start_with(kurrent_on).await;
    let address = server.kurrent_address.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/test_kurrent.cjs");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("kurrentdb://{address}?tls=false"))
        .env("NODE_PATH", &modules)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Node client did not finish within 180 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Node client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("node kurrent client: ") && summary.ends_with(" passed, 0 failed"),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_subscriptions_and_the_facade() {
    let server = TestServer::start_with(kurrent_on).await;
    let mut kurrent = StreamsClient::new(kurrent_channel(&server).await);
    let mut request = read_stream_request("watched");
    let options = request.options.as_mut().unwrap();
    options.count_option = Some(pb::read_req::options::CountOption::Subscription(
        pb::read_req::options::SubscriptionOptions {},
    ));
    let mut responses = kurrent.read(request).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().expect("a confirmation");
    assert!(
        matches!(first.content, Some(pb::read_resp::Content::Confirmation(_))),
        "{first:?}"
    );
    // The stream does not exist yet: caught up at once, then it waits.
    let second = responses.message().await.unwrap().expect("caught up");
    assert!(
        matches!(second.content, Some(pb::read_resp::Content::CaughtUp(_))),
        "{second:?}"
    );
    // A hang guard, not a timing assertion: stop must not wait on the
    // open subscription forever.
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("the server stopped with a subscription open");
    match responses.message().await {
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
            ),
            "{status:?}"
        ),
        Ok(None) => {}
        Ok(Some(response)) => panic!("no response expected after shutdown: {response:?}"),
    }
}

fn batch_request(
    correlation: uuid::Uuid,
    stream: Option<&str>,
    is_final: bool,
) -> pb::BatchAppendReq {
    pb::BatchAppendReq {
        correlation_id: Some(shared::Uuid {
            value: Some(shared::uuid::Value::String(correlation.to_string())),
        }),
        options: stream.map(|stream| pb::batch_append_req::Options {
            stream_identifier: Some(identifier(stream)),
            expected_stream_position: Some(
                pb::batch_append_req::options::ExpectedStreamPosition::NoStream(()),
            ),
            deadline_option: None,
        }),
        proposed_messages: vec![pb::batch_append_req::ProposedMessage {
            id: Some(shared::Uuid {
                value: Some(shared::uuid::Value::String(
                    uuid::Uuid::new_v4().to_string(),
                )),
            }),
            metadata: [
                ("type".to_owned(), "Batched".to_owned()),
                (
                    "content-type".to_owned(),
                    "application/octet-stream".to_owned(),
                ),
            ]
            .into(),
            custom_metadata: Bytes::new(),
            data: Bytes::from(vec![b'x'; 600]),
        }],
        is_final,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_bounded_in_bytes_and_batch_appends_in_open_correlations() {
    let server = TestServer::start_with(|settings| {
        kurrent_on(settings);
        settings.max_append_bytes = 1000;
    })
    .await;
    let mut kurrent = StreamsClient::new(kurrent_channel(&server).await);
    // Two 600-byte events exceed a 1000-byte append: refused, nothing written.
    let events = (0..2)
        .map(|_| proposed(uuid::Uuid::new_v4(), "Big", &[b'x'; 600], b""))
        .collect();
    let status = kurrent
        .append(tokio_stream::iter(append_requests("big", events)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.metadata().get("exception").unwrap(),
        "maximum-append-size-exceeded"
    );
    let responses = read_events(
        &mut kurrent,
        tonic::Request::new(read_stream_request("big")),
    )
    .await
    .unwrap();
    assert!(responses.is_empty());

    // Through BatchAppend: the same correlation sent twice is over the
    // limit, answered with the MaximumAppendSizeExceeded detail.
    let correlation = uuid::Uuid::new_v4();
    let requests = vec![
        batch_request(correlation, Some("batched"), false),
        batch_request(correlation, None, true),
    ];
    let mut answers = kurrent
        .batch_append(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(pb::batch_append_resp::Result::Error(error)) = answer.result else {
        panic!("expected an error, got {answer:?}");
    };
    assert_eq!(
        error.details.unwrap().type_url,
        "type.googleapis.com/event_store.client.MaximumAppendSizeExceeded"
    );

    // One correlation committed: success with its position.
    let correlation = uuid::Uuid::new_v4();
    let mut answers = kurrent
        .batch_append(tokio_stream::iter(vec![batch_request(
            correlation,
            Some("batched"),
            true,
        )]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(pb::batch_append_resp::Result::Success(success)) = answer.result else {
        panic!("expected success, got {answer:?}");
    };
    assert!(matches!(
        success.position_option,
        Some(pb::batch_append_resp::success::PositionOption::Position(_))
    ));

    // More open correlations than the bound end the call.
    let requests: Vec<_> = (0..17)
        .map(|_| batch_request(uuid::Uuid::new_v4(), Some("open"), false))
        .collect();
    let mut answers = kurrent
        .batch_append(tokio_stream::iter(requests).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let status = answers.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("at most 16"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_append_past_its_deadline_is_refused_unwritten() {
    let server = TestServer::start_with(kurrent_on).await;
    let mut kurrent = StreamsClient::new(kurrent_channel(&server).await);
    let with_deadline = |stream: &str, seconds: i64| {
        let mut request = batch_request(uuid::Uuid::new_v4(), Some(stream), true);
        if let Some(options) = request.options.as_mut() {
            options.deadline_option =
                Some(pb::batch_append_req::options::DeadlineOption::Deadline(
                    prost_types::Duration { seconds, nanos: 0 },
                ));
        }
        request
    };
    let mut answers = kurrent
        .batch_append(tokio_stream::iter(vec![
            with_deadline("late", 0),
            with_deadline("in-time", 60),
        ]))
        .await
        .unwrap()
        .into_inner();
    let late = answers.message().await.unwrap().expect("an answer");
    let Some(pb::batch_append_resp::Result::Error(error)) = late.result else {
        panic!("expected an error, got {late:?}");
    };
    assert_eq!(error.code, tonic::Code::DeadlineExceeded as i32);
    assert_eq!(error.message, "Timeout");
    let in_time = answers.message().await.unwrap().expect("an answer");
    assert!(
        matches!(
            in_time.result,
            Some(pb::batch_append_resp::Result::Success(_))
        ),
        "{in_time:?}"
    );
    let late_events = read_events(
        &mut kurrent,
        tonic::Request::new(read_stream_request("late")),
    )
    .await
    .unwrap();
    assert!(late_events.is_empty(), "{late_events:?}");
    let in_time_events = read_events(
        &mut kurrent,
        tonic::Request::new(read_stream_request("in-time")),
    )
    .await
    .unwrap();
    assert_eq!(in_time_events.len(), 1);
}
