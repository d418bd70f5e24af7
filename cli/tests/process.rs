//! The real `cairn` binary as a child process: startup on an ephemeral port,
//! SIGTERM (clean exit 0, everything readable after a restart), kill -9 after
//! acknowledged appends (every acknowledged event survives, unacknowledged
//! appends are all-or-nothing), the data directory lock, `--help`, and the client
//! subcommands.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{
    AppendResult, Client, Error, EventData, ExpectedRevision, ReadOptions, RecordedEvent,
    StreamAppend,
};
use cairn_testkit::{client_numbered, eventually_within, read_all_client};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

mod common;
use common::{Daemon, PROCESS_TIMEOUT, Started, cairn_command, serving_address, wait_with_timeout};

/// Runs a short-lived `cairn` command to completion (killed and failed after
/// `PROCESS_TIMEOUT`), capturing its output.
fn run_cairn(cwd: &Path, args: &[&str]) -> Output {
    let mut child = cairn_command(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let Some(status) = wait_with_timeout(&mut child, PROCESS_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`cairn {}` did not finish within {PROCESS_TIMEOUT:?}",
            args.join(" ")
        );
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// What an acknowledged append promised about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    id: Uuid,
    stream: String,
    revision: u64,
    position: u64,
    event_type: String,
    content_type: String,
    metadata: Vec<u8>,
    data: Vec<u8>,
}

impl Written {
    fn of(event: &RecordedEvent) -> Self {
        Self {
            id: event.id,
            stream: event.stream.clone(),
            revision: event.revision,
            position: event.position,
            event_type: event.event_type.clone(),
            content_type: event.content_type.clone(),
            metadata: event.metadata.to_vec(),
            data: event.data.to_vec(),
        }
    }

    /// The events an acknowledged append wrote, from its result.
    fn acknowledged(stream: &str, events: &[EventData], result: &AppendResult) -> Vec<Self> {
        let count = events.len() as u64;
        let (first, last) = result
            .positions
            .expect("an append of events reports positions");
        assert_eq!(
            last - first + 1,
            count,
            "one append's events get consecutive positions: {result:?}"
        );
        let current = result.current_revision.expect("current revision");
        let first_revision = current + 1 - count;
        events
            .iter()
            .enumerate()
            .map(|(offset, event)| Self {
                id: event.id,
                stream: stream.to_owned(),
                revision: first_revision + offset as u64,
                position: first + offset as u64,
                event_type: event.event_type.clone(),
                content_type: event.content_type.clone(),
                metadata: event.metadata.to_vec(),
                data: event.data.to_vec(),
            })
            .collect()
    }
}

/// A mix of JSON and binary events (every byte value, metadata) for one append.
fn workload_events(round: usize, count: usize) -> Vec<EventData> {
    (0..count)
        .map(|n| {
            if (round + n).is_multiple_of(3) {
                let bytes: Vec<u8> = (0..=255u8)
                    .map(|b| b.wrapping_add((round + n) as u8))
                    .collect();
                EventData::binary(format!("Blob{}", n % 2), bytes)
                    .metadata(format!("{{\"round\":{round}}}"))
            } else {
                EventData::json_text("Noted", format!("{{\"round\":{round},\"n\":{n}}}"))
            }
        })
        .collect()
}

#[test]
fn sigterm_exits_zero_and_a_restart_reads_everything_back() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let runtime = common::runtime();
    let streams = ["order-1", "order-2", "order-3", "cart-1", "cart-2"];

    let mut daemon = Daemon::start(root.path(), &data, "json").serving();
    let (expected, before) = runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut expected = Vec::new();
        let expectation = |last: &HashMap<&str, u64>, stream: &str| match last.get(stream) {
            Some(&revision) => ExpectedRevision::Exact(revision),
            None => ExpectedRevision::NoStream,
        };
        for round in 0..80 {
            let stream = streams[round % streams.len()];
            let events = workload_events(round, 1 + round % 7);
            if round % 10 == 9 {
                // Every tenth round also writes to the next stream, atomically.
                let other = streams[(round + 1) % streams.len()];
                let other_events = workload_events(round + 1000, 2);
                let results = client
                    .append_multi(vec![
                        StreamAppend::new(stream, expectation(&last, stream), events.clone()),
                        StreamAppend::new(other, expectation(&last, other), other_events.clone()),
                    ])
                    .await
                    .expect("append_multi");
                expected.extend(Written::acknowledged(stream, &events, &results[0]));
                expected.extend(Written::acknowledged(other, &other_events, &results[1]));
                last.insert(stream, results[0].current_revision.expect("revision"));
                last.insert(other, results[1].current_revision.expect("revision"));
            } else {
                let result = client
                    .append(stream, expectation(&last, stream), events.clone())
                    .await
                    .expect("append");
                expected.extend(Written::acknowledged(stream, &events, &result));
                last.insert(stream, result.current_revision.expect("revision"));
            }
        }
        expected.sort_by_key(|written| written.position);
        let before = read_all_client(&client, "$all").await.expect("read");
        assert_eq!(
            before.iter().map(Written::of).collect::<Vec<_>>(),
            expected,
            "$all before the restart"
        );
        // The client stays connected across SIGTERM: an idle connection must not
        // hold up shutdown.
        (expected, before)
    });
    assert!(
        expected.len() >= 300,
        "a few hundred events: {}",
        expected.len()
    );
    assert_eq!(
        expected
            .iter()
            .map(|written| written.position)
            .collect::<Vec<_>>(),
        (0..expected.len() as u64).collect::<Vec<_>>(),
        "acknowledged positions are gap-free from 0"
    );

    let status = daemon.terminate("an idle client connected");
    assert!(
        status.success(),
        "SIGTERM must end in exit 0, got {status}; stderr:\n{}",
        daemon.stderr()
    );
    drop(daemon);

    let mut daemon = Daemon::start(root.path(), &data, "json").serving();
    runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let after = read_all_client(&client, "$all").await.expect("read");
        assert_eq!(
            after, before,
            "$all after the restart: same ids, revisions, positions, timestamps, bytes"
        );
        for stream in streams {
            let events = read_all_client(&client, stream).await.expect("read");
            let written: Vec<Written> = expected
                .iter()
                .filter(|written| written.stream == stream)
                .cloned()
                .collect();
            assert_eq!(
                events.iter().map(Written::of).collect::<Vec<_>>(),
                written,
                "stream {stream}"
            );
            assert_eq!(
                events
                    .iter()
                    .map(|event| event.revision)
                    .collect::<Vec<_>>(),
                (0..events.len() as u64).collect::<Vec<_>>(),
                "{stream}: revisions 0.."
            );
        }
        let info = client.info().await.expect("info");
        assert_eq!(info.head_position, expected.len() as u64, "{info:?}");
        assert_eq!(info.event_count, expected.len() as u64, "{info:?}");
        assert_eq!(info.stream_count, streams.len() as u64, "{info:?}");
        assert_eq!(info.durability, "sync");

        // The heads were recovered: expectations and positions continue.
        let order_1: Vec<&Written> = expected
            .iter()
            .filter(|written| written.stream == "order-1")
            .collect();
        let last_revision = order_1.last().expect("order-1 has events").revision;
        let result = client
            .append(
                "order-1",
                ExpectedRevision::Exact(last_revision),
                vec![EventData::json_text("After", "{}")],
            )
            .await
            .expect("append after restart");
        assert_eq!(result.current_revision, Some(last_revision + 1));
        assert_eq!(
            result.positions,
            Some((expected.len() as u64, expected.len() as u64))
        );
        match client
            .append(
                "order-1",
                ExpectedRevision::NoStream,
                vec![EventData::json_text("X", "{}")],
            )
            .await
        {
            Err(Error::WrongExpectedRevision { current, .. }) => {
                assert_eq!(current, Some(last_revision + 1))
            }
            other => panic!("NoStream on an existing stream after restart: {other:?}"),
        }
        // An acknowledged id retried after the restart is still recognised.
        let first = &order_1[0];
        let retry = client
            .append(
                "order-1",
                ExpectedRevision::Any,
                vec![EventData::json_text("Retry", "{}").id(first.id)],
            )
            .await;
        assert!(
            matches!(retry, Err(Error::DuplicateEventId(_)))
                || matches!(retry, Ok(result) if result.idempotent_replay),
            "an old id is not written twice: {retry:?}"
        );
    });
    let status = daemon.terminate("after the restart");
    assert!(
        status.success(),
        "second SIGTERM: {status}; stderr:\n{}",
        daemon.stderr()
    );
}

/// How a test stops the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: in-flight appends are finished, exit 0.
    Term,
    /// SIGKILL: nothing is finished or flushed.
    Kill,
}

#[test]
fn kill_9_keeps_every_acknowledged_append() {
    appends_in_flight_survive(Stop::Kill);
}

#[test]
fn sigterm_with_appends_in_flight_exits_zero_and_keeps_them() {
    appends_in_flight_survive(Stop::Term);
}

/// Writers append concurrently (single and multi-stream) until the daemon is
/// stopped under them; after a restart every acknowledged event is there with
/// the acknowledged stream, revision and position, and every append that was in
/// flight is either wholly there or wholly absent.
fn appends_in_flight_survive(stop: Stop) {
    const WRITERS: usize = 4;
    const STOP_AFTER: usize = 400;
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let runtime = common::runtime();

    let mut daemon = Daemon::start(root.path(), &data, "json").serving();
    // Every request sent (its ids, all streams together) and every event acknowledged.
    let attempted: Arc<Mutex<Vec<Vec<Uuid>>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<Written>>> = Arc::default();
    runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let count = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let (client, count) = (client.clone(), Arc::clone(&count));
            let (attempted, acknowledged) = (Arc::clone(&attempted), Arc::clone(&acknowledged));
            writers.push(tokio::spawn(async move {
                let mut last: HashMap<String, u64> = HashMap::new();
                let expectation = |last: &HashMap<String, u64>, stream: &str| {
                    last.get(stream)
                        .map_or(ExpectedRevision::NoStream, |&revision| {
                            ExpectedRevision::Exact(revision)
                        })
                };
                // Runs until the server dies under it.
                for round in 0.. {
                    let stream = format!("kill{writer}-{}", round % 3);
                    let events = workload_events(round, 1 + round % 4);
                    if writer == 0 && round % 2 == 1 {
                        let other = format!("kill{writer}-multi");
                        let other_events = workload_events(round + 1, 2);
                        let ids = events
                            .iter()
                            .chain(&other_events)
                            .map(|event| event.id)
                            .collect();
                        attempted.lock().expect("lock").push(ids);
                        let parts = vec![
                            StreamAppend::new(&stream, expectation(&last, &stream), events.clone()),
                            StreamAppend::new(
                                &other,
                                expectation(&last, &other),
                                other_events.clone(),
                            ),
                        ];
                        let Ok(results) = client.append_multi(parts).await else {
                            break;
                        };
                        let mut written = Written::acknowledged(&stream, &events, &results[0]);
                        written.extend(Written::acknowledged(&other, &other_events, &results[1]));
                        count.fetch_add(written.len(), Ordering::SeqCst);
                        acknowledged.lock().expect("lock").extend(written);
                        last.insert(stream, results[0].current_revision.expect("revision"));
                        last.insert(other, results[1].current_revision.expect("revision"));
                    } else {
                        attempted
                            .lock()
                            .expect("lock")
                            .push(events.iter().map(|event| event.id).collect());
                        let Ok(result) = client
                            .append(&stream, expectation(&last, &stream), events.clone())
                            .await
                        else {
                            break;
                        };
                        let written = Written::acknowledged(&stream, &events, &result);
                        count.fetch_add(written.len(), Ordering::SeqCst);
                        acknowledged.lock().expect("lock").extend(written);
                        last.insert(stream, result.current_revision.expect("revision"));
                    }
                }
            }));
        }
        let enough = format!("{STOP_AFTER} acknowledged events");
        eventually_within(PROCESS_TIMEOUT, &enough, || async {
            let acknowledged = count.load(Ordering::SeqCst);
            if acknowledged >= STOP_AFTER {
                Ok(())
            } else {
                Err(acknowledged)
            }
        })
        .await;
        // Writers are mid-flight: some appends are queued or committing right now.
        match stop {
            Stop::Kill => daemon.kill_9(),
            Stop::Term => {
                let status = daemon.terminate("appends in flight");
                assert!(
                    status.success(),
                    "SIGTERM during appends: {status}; stderr:\n{}",
                    daemon.stderr()
                );
            }
        }
        for writer in writers {
            tokio::time::timeout(PROCESS_TIMEOUT, writer)
                .await
                .expect("a writer kept going after the server died")
                .expect("writer task");
        }
    });
    drop(daemon);
    let attempted = std::mem::take(&mut *attempted.lock().expect("lock"));
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("lock"));

    let mut daemon = Daemon::start(root.path(), &data, "json").serving();
    runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let all = read_all_client(&client, "$all").await.expect("read");
        assert_eq!(
            all.iter().map(|event| event.position).collect::<Vec<_>>(),
            (0..all.len() as u64).collect::<Vec<_>>(),
            "$all is gap-free after {stop:?}"
        );
        let by_id: HashMap<Uuid, Written> = all
            .iter()
            .map(|event| (event.id, Written::of(event)))
            .collect();
        assert_eq!(by_id.len(), all.len(), "no event id appears twice");
        for written in &acknowledged {
            assert_eq!(
                by_id.get(&written.id),
                Some(written),
                "acknowledged event lost or changed by {stop:?}"
            );
        }
        let mut present = 0;
        for ids in &attempted {
            let found = ids.iter().filter(|id| by_id.contains_key(id)).count();
            assert!(
                found == 0 || found == ids.len(),
                "an append survived in part: {found} of {} events",
                ids.len()
            );
            present += found;
        }
        assert_eq!(
            present,
            all.len(),
            "every stored event came from an attempted append"
        );
        let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for event in &all {
            per_stream
                .entry(&event.stream)
                .or_default()
                .push(event.revision);
        }
        for (stream, revisions) in per_stream {
            assert_eq!(
                revisions,
                (0..revisions.len() as u64).collect::<Vec<_>>(),
                "{stream}: revisions in $all order"
            );
            let read = read_all_client(&client, stream).await.expect("read");
            assert_eq!(
                read.len(),
                revisions.len(),
                "{stream}: stream read agrees with $all"
            );
        }
        let info = client.info().await.expect("info");
        assert_eq!(info.head_position, all.len() as u64, "{info:?}");
        println!(
            "{stop:?}: {} events acknowledged, {} stored ({} from appends that were in flight)",
            acknowledged.len(),
            all.len(),
            all.len() - acknowledged.len()
        );
    });
    let status = daemon.terminate("after recovery");
    assert!(
        status.success(),
        "SIGTERM after recovery: {status}; stderr:\n{}",
        daemon.stderr()
    );
}

#[test]
fn sigterm_ends_an_open_health_watch() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start(root.path(), &root.path().join("data"), "json").serving();
    let runtime = common::runtime();
    // A load balancer or grpc client-side health checking keeps a Watch open
    // for as long as the server lives; it must not keep the server alive.
    let watch = runtime.block_on(async {
        let mut health = HealthClient::new(cairn_testkit::channel(&daemon.url()).await);
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = watch
            .message()
            .await
            .expect("watch message")
            .expect("a status");
        assert_eq!(first.status(), ServingStatus::Serving);
        watch
    });
    let status = daemon.terminate("a grpc.health.v1 Watch is open");
    assert!(status.success(), "{status}; stderr:\n{}", daemon.stderr());
    drop(watch);
}

#[test]
fn sigterm_ends_a_read_whose_client_stopped_reading() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut daemon = Daemon::start(root.path(), &root.path().join("data"), "json").serving();
    let runtime = common::runtime();
    let stalled = runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        // 64 MiB: far more than the server's send queue, the HTTP/2 windows and
        // the socket buffers hold, so the server cannot finish this read while
        // the client does not take it.
        let blob = vec![7u8; 4096];
        for round in 0..32 {
            let events = (0..500)
                .map(|_| EventData::binary("Blob", blob.clone()))
                .collect();
            client
                .append(format!("big-{round}"), ExpectedRevision::NoStream, events)
                .await
                .expect("append");
        }
        let mut read = client
            .read("$all", ReadOptions::forwards())
            .await
            .expect("read");
        read.next_event()
            .await
            .expect("first event")
            .expect("an event");
        // Kept, never polled again: a slow or stuck consumer.
        read
    });
    let status = daemon.terminate("a Read is open and its client stopped reading");
    assert!(status.success(), "{status}; stderr:\n{}", daemon.stderr());
    drop(stalled);
}

#[test]
fn a_second_server_on_a_held_data_dir_fails_clearly() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let mut first = Daemon::start(root.path(), &data, "json").serving();
    match Daemon::start(root.path(), &data, "human") {
        Started::Serving(second) => {
            panic!(
                "a second server opened {} while {} holds it; stderr:\n{}",
                data.display(),
                first.url(),
                second.stderr()
            )
        }
        Started::Exited { status, stderr } => {
            assert!(
                !status.success() && status.code().is_some(),
                "a clean non-zero exit, got {status}"
            );
            assert!(
                stderr.to_lowercase().contains("lock"),
                "the error names the lock:\n{stderr}"
            );
            assert!(
                stderr.contains("cannot open the store"),
                "the error says what failed:\n{stderr}"
            );
        }
    }
    // The first server is unaffected.
    common::runtime().block_on(async {
        let client = Client::connect(first.url()).await.expect("connect");
        client
            .append(
                "s-1",
                ExpectedRevision::NoStream,
                vec![EventData::json_text("E", "{}")],
            )
            .await
            .expect("append");
    });
    let status = first.terminate("the first server");
    assert!(status.success(), "{status}; stderr:\n{}", first.stderr());
}

#[test]
fn help_lists_the_settings() {
    let root = tempfile::tempdir().expect("temp dir");
    let help = run_cairn(root.path(), &["--help"]);
    let stdout = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "cairn --help: {}", help.status);
    for needle in [
        "--listen",
        "--data",
        "--durability",
        "--log-format",
        "CAIRN_LISTEN",
        "CAIRN_DATA",
        "append",
        "read",
    ] {
        assert!(
            stdout.contains(needle),
            "--help does not mention {needle}:\n{stdout}"
        );
    }
    let version = run_cairn(root.path(), &["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));

    let bad = run_cairn(root.path(), &["--durability", "sometimes"]);
    assert_eq!(bad.status.code(), Some(2), "a bad flag is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sometimes"));
}

#[test]
fn client_subcommands_against_a_running_server() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let mut daemon = Daemon::start(root.path(), &data, "human").serving();
    let url = daemon.url();
    let cwd = root.path();
    let stdout = |output: &Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let ok = |args: &[&str]| {
        let output = run_cairn(cwd, args);
        assert!(
            output.status.success(),
            "cairn {} failed with {}:\n{}{}",
            args.join(" "),
            output.status,
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout(&output)
    };

    let first = ok(&[
        "append",
        "--addr",
        &url,
        "order-7",
        "Placed",
        r#"{"a":1}"#,
        "--expected",
        "no-stream",
    ]);
    assert_eq!(
        first.trim(),
        r#"{"current_revision":0,"positions":[0,0],"idempotent_replay":false}"#
    );

    let again = run_cairn(
        cwd,
        &[
            "append",
            "--addr",
            &url,
            "order-7",
            "Placed",
            r#"{"a":1}"#,
            "--expected",
            "no-stream",
        ],
    );
    assert!(
        !again.status.success(),
        "no-stream on an existing stream must fail"
    );
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("wrong expected revision"),
        "stderr names the problem: {message}"
    );

    let id = Uuid::new_v4().to_string();
    let paid = [
        "append",
        "--addr",
        &url,
        "order-7",
        "Paid",
        r#"{"b":[1,2]}"#,
        "--expected",
        "0",
        "--id",
        &id,
    ];
    assert_eq!(
        ok(&paid).trim(),
        r#"{"current_revision":1,"positions":[1,1],"idempotent_replay":false}"#
    );
    assert_eq!(
        ok(&paid).trim(),
        r#"{"current_revision":1,"positions":[1,1],"idempotent_replay":true}"#,
        "the same id again is an idempotent replay"
    );
    ok(&["append", "--addr", &url, "cart-1", "Added", r#""tea""#]);

    let read = ok(&["read", "--addr", &url, "order-7"]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 2, "{read}");
    assert!(
        lines[0].starts_with(r#"{"position":0,"stream":"order-7","revision":0,"id":""#),
        "{read}"
    );
    assert!(
        lines[0].ends_with(r#","type":"Placed","data":{"a":1}}"#),
        "{read}"
    );
    assert_eq!(
        lines[1],
        format!(
            r#"{{"position":1,"stream":"order-7","revision":1,"id":"{id}","type":"Paid","data":{{"b":[1,2]}}}}"#
        )
    );

    let all = ok(&[
        "read",
        "--addr",
        &url,
        "$all",
        "--backwards",
        "--count",
        "1",
    ]);
    assert_eq!(all.lines().count(), 1, "{all}");
    assert!(
        all.contains(r#""position":2,"stream":"cart-1","revision":0"#)
            && all.contains(r#""data":"tea""#),
        "{all}"
    );

    let streams = ok(&["streams", "--addr", &url]);
    assert_eq!(
        streams.lines().collect::<Vec<_>>(),
        [
            "cart-1\tLive\tlast_revision=0",
            "order-7\tLive\tlast_revision=1"
        ]
    );
    assert_eq!(
        ok(&["streams", "--addr", &url, "--prefix", "ord"])
            .lines()
            .count(),
        1
    );

    let info = ok(&["info", "--addr", &url]);
    for needle in [
        "head_position 3",
        "streams 2",
        "events 3",
        "durability sync",
        env!("CARGO_PKG_VERSION"),
    ] {
        assert!(info.contains(needle), "info lacks {needle:?}:\n{info}");
    }

    assert_eq!(ok(&["health", "--addr", &url]).trim(), "SERVING");

    let status = daemon.terminate("after the CLI commands");
    assert!(status.success(), "{status}; stderr:\n{}", daemon.stderr());
    let down = run_cairn(cwd, &["health", "--addr", &url]);
    assert!(
        !down.status.success(),
        "health against a stopped server must fail:\n{}",
        stdout(&down)
    );
}

#[test]
fn serving_line_parses_in_both_formats() {
    let json = r#"{"timestamp":"t","level":"INFO","fields":{"message":"cairn serving","listen":"127.0.0.1:41234","data":"d"}}"#;
    assert_eq!(
        serving_address(json),
        Some("127.0.0.1:41234".parse().unwrap())
    );
    let human = "2026-01-01T00:00:00Z  INFO cairn_server: cairn serving \u{1b}[3mlisten\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:7 data=d";
    assert_eq!(serving_address(human), Some("127.0.0.1:7".parse().unwrap()));
    assert_eq!(serving_address("listen=127.0.0.1:7 something else"), None);
}

/// A consumer group survives kill -9: its definition and its last durable
/// checkpoint come back, delivery resumes right after that checkpoint, and no
/// event of the source is lost.
#[test]
fn kill_9_keeps_a_consumer_groups_checkpoint() {
    use cairn_client::{GroupOptions, GroupSettings};

    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let runtime = common::runtime();
    let mut daemon = Daemon::start(root.path(), &data, "json").serving();
    let (ids, acked, durable) = runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let events: Vec<EventData> = (0..500).map(|n| client_numbered("Paid", n)).collect();
        let ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
        client
            .append("pay-1", ExpectedRevision::NoStream, events)
            .await
            .expect("append");
        let options = GroupOptions {
            settings: GroupSettings {
                checkpoint_after_events: Some(10),
                ..GroupSettings::default()
            },
            ..GroupOptions::default()
        };
        client
            .create_group("payments", "pay-1", options)
            .await
            .expect("create group");
        let mut consumer = client
            .consume("payments", "payments-1", 10)
            .await
            .expect("consume");
        let mut acked = Vec::new();
        while acked.len() < 300 {
            let delivery = consumer.next().await.expect("next").expect("open");
            delivery.ack().await.expect("ack");
            acked.push(delivery.event.id);
        }
        // Wait until a checkpoint past revision 250 is durable (readable).
        let past_250 = "a durable checkpoint past 250";
        let durable = eventually_within(PROCESS_TIMEOUT, past_250, || async {
            let last = client
                .read_stream(
                    "$sys-ps-payments-checkpoint",
                    ReadOptions::backwards().max_count(1),
                )
                .await
                .expect("read checkpoint")
                .collect_all()
                .await
                .unwrap_or_default();
            let revision = last.first().map(|event| {
                let checkpoint: serde_json::Value =
                    serde_json::from_slice(&event.data).expect("checkpoint json");
                checkpoint["revision"]
                    .as_u64()
                    .expect("a stream group's revision")
            });
            match revision {
                Some(revision) if revision >= 250 => Ok(revision),
                seen => Err(seen),
            }
        })
        .await;
        (ids, acked, durable)
    });
    daemon.kill_9();

    let daemon = Daemon::start(root.path(), &data, "json").serving();
    runtime.block_on(async {
        let client = Client::connect(daemon.url()).await.expect("connect");
        let info = client
            .group_info("payments")
            .await
            .expect("the group survived");
        let resumed = info.checkpoint_revision.expect("a checkpoint");
        assert!(
            resumed >= durable,
            "checkpoint {resumed} < durable {durable}"
        );
        assert!(resumed < 300, "never past what was acked: {resumed}");
        let mut consumer = client
            .consume("payments", "payments-2", 10)
            .await
            .expect("consume");
        let mut after = Vec::new();
        while after.len() < 500 - (resumed as usize + 1) {
            let delivery = consumer.next().await.expect("next").expect("open");
            delivery.ack().await.expect("ack");
            after.push(delivery.event.id);
        }
        assert_eq!(
            after,
            ids[resumed as usize + 1..].to_vec(),
            "delivery resumes right after the checkpoint"
        );
        let all: std::collections::HashSet<Uuid> = acked.iter().chain(&after).copied().collect();
        assert_eq!(all.len(), 500, "no event lost");
    });
}

/// CPU time (user + system) the process has used, from /proc/<pid>/stat, in
/// clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// At the open-file limit, with hundreds of connections that never send a
/// byte: the server neither spins a core nor goes silent; it logs, backs off,
/// closes the silent connections after the handshake timeout and serves real
/// clients again.
#[test]
fn silent_connections_at_the_fd_limit_neither_spin_nor_lock_out_clients() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut daemon = Daemon::start_with(
        root.path(),
        &data,
        "json",
        &["prlimit", "--nofile=96:96"],
        &[
            "--connection-handshake-timeout-ms",
            "1000",
            "--max-connections",
            "40",
        ],
    )
    .serving();
    let silent: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(daemon.address).ok())
        .collect();
    assert!(silent.len() > 100, "the kernel queues silent connections");

    let pid = daemon.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    // Ticks are 1/100 s: a spinning accept loop would use ~300 in 3 s.
    assert!(
        used < 100,
        "the server used {used} ticks of CPU in 3 s with idle connections"
    );

    common::runtime().block_on(async {
        let client_events =
            eventually_within(PROCESS_TIMEOUT, "a real client to be served", || {
                let url = daemon.url();
                async move {
                    let client = cairn_client::Client::connect(url).await.ok()?;
                    client
                        .append(
                            "order-1",
                            cairn_client::ExpectedRevision::Any,
                            vec![cairn_client::EventData::json_text("Placed", "{}")],
                        )
                        .await
                        .ok()
                }
            })
            .await;
        assert!(client_events.positions.is_some());
    });
    drop(silent);
    let log = daemon.stderr();
    assert!(
        log.contains("connection limit reached") || log.contains("cannot accept connections"),
        "the server says why it stopped accepting:\n{log}"
    );
    let status = daemon.terminate("after silent connections");
    assert!(status.success(), "{status}");
}

/// Client text in the human log format cannot forge lines or colour the
/// terminal: a stream name with a newline and an ANSI escape is written
/// escaped, and no colour codes go to a pipe at all.
#[test]
fn user_text_in_human_logs_is_escaped() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut daemon =
        Daemon::start_with(root.path(), &data, "human", &[], &["--log-level", "debug"]).serving();
    let forged = "order-1\n2026-01-01T00:00:00Z  INFO cairn: FORGED\u{1b}[31m";
    common::runtime().block_on(async {
        let client = cairn_client::Client::connect(daemon.url()).await.unwrap();
        // Whether the name is accepted or refused, the server logs the call.
        let _ = client
            .append(
                forged,
                cairn_client::ExpectedRevision::NoStream,
                vec![cairn_client::EventData::json_text("Placed", "{}")],
            )
            .await;
        let _ = client
            .append(
                forged,
                cairn_client::ExpectedRevision::NoStream,
                vec![cairn_client::EventData::json_text("Placed", "{}")],
            )
            .await;
    });
    let status = daemon.terminate("after a forged stream name");
    assert!(status.success(), "{status}");
    let log = daemon.stderr();
    assert!(log.contains("FORGED"), "the call was logged:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no raw escape reaches the log:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with("2026-01-01T00:00:00Z"),
            "a client forged a log line: {line}"
        );
    }
}

/// Off loopback without TLS and without `--insecure`, `cairn` refuses to
/// start, in one line on stderr, before it opens anything.
#[test]
fn a_network_address_without_tls_is_refused_in_one_line() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let data_arg = data.display().to_string();
    let refused = run_cairn(root.path(), &["--listen", "0.0.0.0:0", "--data", &data_arg]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{}", refused.status);
    assert_eq!(stderr.trim().lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with("cairn: refusing to serve 0.0.0.0:0 without TLS")
            && stderr.contains("--tls-cert-file")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    assert!(!data.exists(), "nothing was opened");
}

/// `cairn dev-certs` then `cairn` with its server certificate serves TLS;
/// `cairn health` and `cairn info` reach it with the CA file (and the admin's
/// password), and fail without them.
#[test]
fn dev_certs_then_serve_over_tls() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("data");
    let certs = root.path().join("certs");
    let certs_arg = certs.display().to_string();
    let made = run_cairn(root.path(), &["dev-certs", "--out", &certs_arg]);
    let printed = String::from_utf8_lossy(&made.stdout);
    assert!(made.status.success(), "{}: {printed}", made.status);
    assert!(printed.contains("cairn --tls-cert-file"), "{printed}");
    let file = |name: &str| certs.join(name).display().to_string();
    let password = "process-test-admin-password";
    let mut daemon = Daemon::start_with(
        root.path(),
        &data,
        "json",
        &[],
        &[
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--initial-admin-password",
            password,
        ],
    )
    .serving();
    let url = format!("https://{}", daemon.address);
    let ca = file("ca.pem");
    let health = run_cairn(root.path(), &["health", "--addr", &url, "--ca-file", &ca]);
    assert_eq!(
        String::from_utf8_lossy(&health.stdout).trim(),
        "SERVING",
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(health.status.success());
    let info = run_cairn(
        root.path(),
        &[
            "info",
            "--addr",
            &url,
            "--ca-file",
            &ca,
            "--user",
            "admin",
            "--password",
            password,
        ],
    );
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let anonymous = run_cairn(root.path(), &["info", "--addr", &url, "--ca-file", &ca]);
    assert!(!anonymous.status.success(), "info needs credentials");
    let untrusted = run_cairn(root.path(), &["health", "--addr", &url]);
    assert!(
        !untrusted.status.success(),
        "the system's CAs do not know the dev CA"
    );
    let plaintext = run_cairn(
        root.path(),
        &["health", "--addr", &format!("http://{}", daemon.address)],
    );
    assert!(!plaintext.status.success(), "plaintext against TLS");
    let log = daemon.stderr();
    assert!(
        !log.contains(password),
        "the password is never logged:\n{log}"
    );
    let status = daemon.terminate("a TLS server");
    assert!(status.success(), "{status}");
}
