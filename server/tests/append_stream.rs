//! `Streams/AppendStream` and the client's `AppendSession` against a real
//! server: answers per correlation id (each request answered once, with its
//! own result), submission order on one call (exact expectations issued back
//! to back all hold), a failure in the middle failing only its request with
//! the unary call's error, idempotent retries across the stream and unary
//! calls, per-request authorization and limits, and a client process killed
//! mid-stream losing nothing it saw acknowledged (and leaving no half-written
//! multi-append).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;

use cairn_client::{
    AppendCondition, Client, Error, ExpectedRevision, Query, QueryItem, ReadOptions, StreamAppend,
};
use cairn_proto::v1 as pb;
use cairn_proto::v1::streams_client::StreamsClient;
use cairn_testkit::{
    ALICE_ONLY_ACL, SecureSetup, TestServer, USER_PASSWORD, client_event, client_numbered,
    read_all_client, set_acl,
};
use tokio::io::AsyncBufReadExt;

/// `n` of a `client_numbered` event.
fn number(event: &cairn_client::RecordedEvent) -> u64 {
    let text = std::str::from_utf8(&event.data).expect("UTF-8 data");
    text.trim_start_matches("{\"n\":")
        .trim_end_matches('}')
        .parse()
        .unwrap_or_else(|_| panic!("not a numbered event: {text}"))
}

/// The expectation of the `revision`-th append to a stream.
fn before(revision: u64) -> ExpectedRevision {
    match revision {
        0 => ExpectedRevision::NoStream,
        revision => ExpectedRevision::Exact(revision - 1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_appends_in_flight_commit_in_submission_order() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let session = client.append_session().await.expect("open a session");
    const STREAMS: u64 = 10;
    const APPENDS: u64 = 1000;
    // Every append is queued before any answer is awaited; each expects the
    // revision its predecessor on the stream writes.
    let answers: Vec<_> = (0..APPENDS)
        .map(|i| {
            let revision = i / STREAMS;
            session.append(
                format!("ordered-{}", i % STREAMS),
                before(revision),
                vec![client_numbered("Counted", revision)],
            )
        })
        .collect();
    let mut positions = HashSet::new();
    for (i, answer) in (0..APPENDS).zip(answers) {
        let result = answer
            .await
            .unwrap_or_else(|error| panic!("append {i}: {error}"));
        assert_eq!(result.current_revision, Some(i / STREAMS), "append {i}");
        assert!(!result.idempotent_replay);
        let (first, last) = result.positions.expect("one event written");
        assert_eq!(first, last);
        assert!(positions.insert(first), "position {first} answered twice");
    }
    for stream in 0..STREAMS {
        let events = read_all_client(&client, &format!("ordered-{stream}"))
            .await
            .unwrap();
        let numbers: Vec<u64> = events.iter().map(number).collect();
        assert_eq!(numbers, (0..APPENDS / STREAMS).collect::<Vec<_>>());
    }
    assert_eq!(client.info().await.unwrap().head_position, APPENDS);
    server.stop().await;
}

/// On the wire: every correlation id gets exactly one answer, carrying its
/// own request's result (in whatever order they come); a request with
/// neither `append` nor `multi` gets an INVALID_ARGUMENT error of its own;
/// after the client half-closes, the call ends OK once all are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_correlation_id_gets_exactly_its_own_answer() {
    let server = TestServer::start().await;
    let mut streams = StreamsClient::new(server.channel().await);
    const REQUESTS: u64 = 200;
    let mut requests = Vec::new();
    for i in 0..REQUESTS {
        // Correlation ids are the client's choice: spread out, not in order.
        let correlation_id = (i * 7919) % 1_000_003 + 1_000;
        // Request i appends i % 5 + 1 events to a stream of its own (a
        // multi to two streams for every fourth), so its answer says which
        // request it belongs to.
        let events: Vec<pb::ProposedEvent> = (0..i % 5 + 1)
            .map(|n| pb::ProposedEvent {
                r#type: "Counted".into(),
                data: format!("{{\"n\":{n}}}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let append = |stream: String| pb::AppendRequest {
            stream,
            expected: Some(pb::ExpectedRevision {
                kind: Some(pb::expected_revision::Kind::NoStream(())),
            }),
            events: events.clone(),
            condition: None,
        };
        let kind = if i % 4 == 0 {
            pb::append_stream_request::Kind::Multi(pb::AppendMultiRequest {
                parts: vec![append(format!("wire-{i}-a")), append(format!("wire-{i}-b"))],
                condition: None,
            })
        } else {
            pb::append_stream_request::Kind::Append(append(format!("wire-{i}")))
        };
        requests.push(pb::AppendStreamRequest {
            correlation_id,
            kind: Some(kind),
        });
    }
    let empty_correlation = 7;
    requests.push(pb::AppendStreamRequest {
        correlation_id: empty_correlation,
        kind: None,
    });
    let expected: HashMap<u64, (u64, bool)> = requests
        .iter()
        .zip(0..)
        .filter(|(request, _)| request.kind.is_some())
        .map(|(request, i)| (request.correlation_id, (i % 5, i % 4 == 0)))
        .collect();
    let mut answers = streams
        .append_stream(tokio_stream::iter(requests))
        .await
        .expect("open the call")
        .into_inner();
    let mut seen = HashSet::new();
    let mut empty_answered = false;
    while let Some(answer) = answers.message().await.expect("the call ends OK") {
        assert!(
            seen.insert(answer.correlation_id),
            "correlation {} answered twice",
            answer.correlation_id
        );
        if answer.correlation_id == empty_correlation {
            match answer.kind {
                Some(pb::append_stream_response::Kind::Error(error)) => {
                    assert_eq!(error.code, tonic::Code::InvalidArgument as i32);
                    assert_eq!(error.reason, pb::ErrorReason::InvalidArgument as i32);
                }
                other => panic!("an empty request answered with {other:?}"),
            }
            empty_answered = true;
            continue;
        }
        let (last_revision, multi) = expected
            .get(&answer.correlation_id)
            .unwrap_or_else(|| panic!("an answer for unknown id {}", answer.correlation_id));
        match (answer.kind, multi) {
            (Some(pb::append_stream_response::Kind::Append(result)), false) => {
                assert_eq!(result.current_revision, Some(*last_revision));
            }
            (Some(pb::append_stream_response::Kind::Multi(result)), true) => {
                assert_eq!(result.results.len(), 2);
                for part in result.results {
                    assert_eq!(part.current_revision, Some(*last_revision));
                }
            }
            (other, _) => panic!("correlation {}: {other:?}", answer.correlation_id),
        }
    }
    assert!(empty_answered, "the empty request was not answered");
    assert_eq!(
        seen.len(),
        expected.len() + 1,
        "some requests were not answered"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_the_middle_fails_only_its_request_as_the_unary_call_does() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let session = client.append_session().await.unwrap();
    let event = || vec![client_event("Noted", "{}")];
    let first = session.append("mid-1", ExpectedRevision::NoStream, event());
    let second = session.append("mid-1", ExpectedRevision::Exact(0), event());
    let wrong = session.append("mid-1", ExpectedRevision::Exact(5), event());
    let third = session.append("mid-1", ExpectedRevision::Exact(1), event());
    assert_eq!(first.await.unwrap().current_revision, Some(0));
    assert_eq!(second.await.unwrap().current_revision, Some(1));
    let error = wrong.await.expect_err("a wrong expected revision");
    assert!(
        matches!(
            &error,
            Error::WrongExpectedRevision { stream, current: Some(1), .. } if stream == "mid-1"
        ),
        "{error:?}"
    );
    assert_eq!(third.await.unwrap().current_revision, Some(2));

    // The same failures over the stream and unary: the same error, field
    // for field (stream, expectation, current revision; condition position).
    let streamed = session
        .append("mid-1", ExpectedRevision::Exact(9), event())
        .await
        .unwrap_err();
    let unary = client
        .append("mid-1", ExpectedRevision::Exact(9), event())
        .await
        .unwrap_err();
    assert_eq!(streamed, unary);
    assert!(matches!(
        streamed,
        Error::WrongExpectedRevision {
            current: Some(2),
            ..
        }
    ));
    let condition = || AppendCondition::new(Query::of([QueryItem::types(["Noted"])]), Some(0));
    let streamed = session
        .append_if("mid-2", ExpectedRevision::Any, event(), condition())
        .await
        .unwrap_err();
    let unary = client
        .append_if("mid-2", ExpectedRevision::Any, event(), condition())
        .await
        .unwrap_err();
    assert_eq!(streamed, unary);
    assert_eq!(streamed, Error::AppendConditionFailed { position: 1 });
    let parts = || {
        vec![
            StreamAppend::new("mid-3", ExpectedRevision::NoStream, event()),
            StreamAppend::new("mid-1", ExpectedRevision::NoStream, event()),
        ]
    };
    let streamed = session.append_multi(parts()).await.unwrap_err();
    let unary = client.append_multi(parts()).await.unwrap_err();
    assert_eq!(streamed, unary);
    // Nothing of the failed requests was written; the session still works.
    assert_eq!(read_all_client(&client, "mid-1").await.unwrap().len(), 3);
    assert!(matches!(
        read_all_client(&client, "mid-3").await,
        Err(Error::StreamNotFound { .. })
    ));
    let after = session
        .append("mid-1", ExpectedRevision::Exact(2), event())
        .await
        .unwrap();
    assert_eq!(after.current_revision, Some(3));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_over_the_stream_and_unary_return_the_original_result() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let session = client.append_session().await.unwrap();
    let events = vec![client_numbered("Placed", 0), client_numbered("Placed", 1)];
    let original = session
        .append("retry-1", ExpectedRevision::NoStream, events.clone())
        .await
        .unwrap();
    assert!(!original.idempotent_replay);
    for replay in [
        session
            .append("retry-1", ExpectedRevision::NoStream, events.clone())
            .await
            .unwrap(),
        client
            .append("retry-1", ExpectedRevision::NoStream, events.clone())
            .await
            .unwrap(),
    ] {
        assert!(replay.idempotent_replay);
        assert_eq!(replay.current_revision, original.current_revision);
        assert_eq!(replay.positions, original.positions);
    }
    // A multi written by unary and retried over the stream (and again).
    let parts = vec![
        StreamAppend::new(
            "retry-2",
            ExpectedRevision::NoStream,
            vec![client_numbered("A", 0)],
        ),
        StreamAppend::new(
            "retry-3",
            ExpectedRevision::NoStream,
            vec![client_numbered("B", 0)],
        ),
    ];
    let original = client.append_multi(parts.clone()).await.unwrap();
    for _ in 0..2 {
        let replay = session.append_multi(parts.clone()).await.unwrap();
        assert_eq!(replay.len(), 2);
        for (replay, original) in replay.iter().zip(&original) {
            assert!(replay.idempotent_replay);
            assert_eq!(replay.positions, original.positions);
        }
    }
    assert_eq!(read_all_client(&client, "retry-1").await.unwrap().len(), 2);
    assert_eq!(client.info().await.unwrap().head_position, 4);
    server.stop().await;
}

/// Every request of a session is authorized on its own for the call's user,
/// as the unary call is: a denied one is PERMISSION_DENIED and writes
/// nothing (also as part of a multi), the others go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_authorized_for_the_calls_user() {
    let SecureSetup { server, admin } = SecureSetup::start(&[("bob", &[])]).await;
    admin
        .append(
            "private-1",
            ExpectedRevision::NoStream,
            vec![client_event("Secret", "{}")],
        )
        .await
        .unwrap();
    set_acl(&admin, "private-1", ALICE_ONLY_ACL).await;
    let bob = server.connect_as("bob", USER_PASSWORD).await;
    let session = bob.append_session().await.unwrap();
    let event = || vec![client_event("Noted", "{}")];
    let denied = session.append("private-1", ExpectedRevision::Any, event());
    let allowed = session.append("open-1", ExpectedRevision::NoStream, event());
    let denied_multi = session.append_multi(vec![
        StreamAppend::new("open-1", ExpectedRevision::Any, event()),
        StreamAppend::new("private-1", ExpectedRevision::Any, event()),
    ]);
    let error = denied.await.unwrap_err();
    assert!(matches!(error, Error::PermissionDenied(_)), "{error:?}");
    assert_eq!(
        error,
        bob.append("private-1", ExpectedRevision::Any, event())
            .await
            .unwrap_err()
    );
    assert_eq!(allowed.await.unwrap().current_revision, Some(0));
    let error = denied_multi.await.unwrap_err();
    assert!(matches!(error, Error::PermissionDenied(_)), "{error:?}");
    assert_eq!(read_all_client(&admin, "private-1").await.unwrap().len(), 1);
    assert_eq!(read_all_client(&admin, "open-1").await.unwrap().len(), 1);

    // Without valid credentials the call itself is refused.
    let nobody = server.client().await;
    assert!(matches!(
        nobody.append_session().await,
        Err(Error::Unauthenticated(_))
    ));
    server.stop().await;
}

/// A request over the append byte limit is refused alone, with the unary
/// call's error; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_fails_alone_with_the_unary_error() {
    const LIMIT: usize = 64 * 1024;
    let server = TestServer::start_with(|settings| settings.max_append_bytes = LIMIT).await;
    let client = server.client().await;
    let session = client.append_session().await.unwrap();
    let big = || vec![cairn_client::EventData::binary("Big", vec![7u8; LIMIT + 1])];
    let before_big = session.append(
        "limits-1",
        ExpectedRevision::NoStream,
        vec![client_event("Small", "{}")],
    );
    let oversized = session.append("limits-1", ExpectedRevision::Exact(0), big());
    let after_big = session.append(
        "limits-1",
        ExpectedRevision::Exact(0),
        vec![client_event("Small", "{}")],
    );
    assert_eq!(before_big.await.unwrap().current_revision, Some(0));
    let error = oversized.await.unwrap_err();
    assert!(matches!(error, Error::LimitExceeded(_)), "{error:?}");
    let unary = client
        .append("limits-1", ExpectedRevision::Any, big())
        .await
        .unwrap_err();
    assert_eq!(error, unary);
    assert_eq!(after_big.await.unwrap().current_revision, Some(1));
    assert_eq!(read_all_client(&client, "limits-1").await.unwrap().len(), 2);
    server.stop().await;
}

/// Set for the child process of
/// [`a_client_killed_mid_stream_loses_nothing_acknowledged`]: the server's URL.
const CHILD_SERVER: &str = "CAIRN_APPEND_STREAM_CHILD_SERVER";
/// Stream pairs the child writes to.
const PAIRS: u64 = 8;
/// Appends the child keeps in flight.
const CHILD_IN_FLIGHT: usize = 512;

/// The child process: appends to `PAIRS` pairs of streams over one session,
/// each step of a pair one multi-append of one event to both streams
/// (expecting the previous step), with up to `CHILD_IN_FLIGHT` in flight,
/// and prints `ack <pair> <step>` for every answer it gets, until killed.
/// Run only by the test below (it needs the server's address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_client_killed_mid_stream_loses_nothing_acknowledged"]
async fn append_stream_child() {
    let url = std::env::var(CHILD_SERVER).expect("run by the parent test, which sets the address");
    let client = Client::connect(url).await.expect("connect");
    let session = client.append_session().await.expect("open a session");
    let slots = Arc::new(tokio::sync::Semaphore::new(CHILD_IN_FLIGHT));
    for step in 0.. {
        for pair in 0..PAIRS {
            let slot = Arc::clone(&slots).acquire_owned().await.expect("open");
            let part = |side: &str| {
                StreamAppend::new(
                    format!("vanish-{pair}-{side}"),
                    before(step),
                    vec![client_numbered("Stepped", step)],
                )
            };
            let answer = session.append_multi(vec![part("a"), part("b")]);
            tokio::spawn(async move {
                let line = match answer.await {
                    Ok(_) => format!("ack {pair} {step}\n"),
                    Err(error) => format!("error {pair} {step} {error}\n"),
                };
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).expect("stdout");
                out.flush().expect("stdout");
                drop(slot);
            });
        }
    }
}

/// A client process killed (SIGKILL) with appends in flight loses nothing
/// it saw acknowledged, and leaves every stream a gap-free prefix of what it
/// sent, with both halves of every multi-append or neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_stream_loses_nothing_acknowledged() {
    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "append_stream_child", "--nocapture"])
        .env(CHILD_SERVER, server.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the child");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    // The highest step acknowledged per pair.
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut acks = 0u64;
    let mut record = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ack", pair, step] => {
                let (pair, step): (u64, u64) = (pair.parse().unwrap(), step.parse().unwrap());
                let highest = acked.entry(pair).or_default();
                *highest = (*highest).max(step);
                acks += 1;
            }
            ["error", ..] => panic!("the child's append failed: {line}"),
            // The test harness's own lines.
            _ => {}
        }
        acks
    };
    loop {
        let line = lines
            .next_line()
            .await
            .expect("read the child")
            .expect("the child ended before it was killed");
        if record(&line) >= 2_000 {
            break;
        }
    }
    child.start_kill().expect("kill the child");
    // Acks it printed before it died count too.
    while let Some(line) = lines.next_line().await.expect("read the child") {
        record(&line);
    }
    child.wait().await.expect("reap the child");

    // Everything below the head is committed (positions are gap-free and
    // commit in order); a multi-append is one commit, so both of its events
    // are below the head or neither is.
    let client = server.client().await;
    let head = client.info().await.unwrap().head_position;
    let events = client
        .read_all(ReadOptions::forwards().max_count(head))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(events.len() as u64, head);
    let mut written: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &events {
        assert_eq!(
            event.revision,
            written
                .get(&event.stream)
                .map_or(0, |steps| steps.len() as u64),
            "{} has a gap",
            event.stream
        );
        written
            .entry(event.stream.clone())
            .or_default()
            .push(number(event));
    }
    for pair in 0..PAIRS {
        let a = written
            .remove(&format!("vanish-{pair}-a"))
            .unwrap_or_default();
        let b = written
            .remove(&format!("vanish-{pair}-b"))
            .unwrap_or_default();
        assert_eq!(a, b, "pair {pair}: a half-written multi-append");
        assert_eq!(a, (0..a.len() as u64).collect::<Vec<_>>(), "pair {pair}");
        if let Some(highest) = acked.get(&pair) {
            assert!(
                (*highest as usize) < a.len(),
                "pair {pair}: step {highest} was acknowledged, {} steps are written",
                a.len()
            );
        }
    }
    assert!(written.is_empty(), "unexpected streams: {written:?}");
    assert_eq!(acked.len() as u64, PAIRS, "every pair was acknowledged");
    server.stop().await;
}
