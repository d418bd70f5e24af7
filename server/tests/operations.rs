//! `cairn.v1.Operations` through the real client against an in-process server:
//! a scavenge under a writer and a reader (space comes back, hidden events are
//! physically gone, visible ones untouched, reads never wrong), stopping a
//! scavenge mid-way, access checks with security on, and the schedule.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{
    Client, Error, ExpectedRevision, ScavengeState, ScavengeStatus, StreamMetadata,
};
use cairn_testkit::{
    SecureSetup, TestServer, USER_PASSWORD, client_event, eventually, read_all_client,
};

/// Bytes of each payload of the streams the test hides: enough that the
/// hidden data dominates the SST files.
const PAYLOAD_BYTES: usize = 2048;

/// A payload that does not compress (lz4 would shrink a repeated one to
/// nothing and hide the effect on disk): hex of a simple LCG, keyed by the
/// stream and revision so each event's content is known.
fn payload(stream: &str, revision: u64) -> String {
    let mut state = revision
        .wrapping_mul(6364136223846793005)
        .wrapping_add(stream.len() as u64 * 1442695040888963407 + 1);
    for byte in stream.bytes() {
        state = state.wrapping_mul(31).wrapping_add(u64::from(byte));
    }
    let mut text = String::with_capacity(PAYLOAD_BYTES + 64);
    text.push_str(&format!(
        "{{\"stream\":\"{stream}\",\"revision\":{revision},\"pad\":\""
    ));
    while text.len() < PAYLOAD_BYTES {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(&format!("{:016x}", state));
    }
    text.push_str("\"}");
    text
}

/// Appends `count` events with [`payload`] to `stream`, 50 per call.
async fn fill(client: &Client, stream: &str, count: u64) {
    let mut revision = 0;
    while revision < count {
        let batch: Vec<_> = (revision..count.min(revision + 50))
            .map(|revision| client_event("Filled", &payload(stream, revision)))
            .collect();
        revision += batch.len() as u64;
        client
            .append(stream, ExpectedRevision::Any, batch)
            .await
            .unwrap_or_else(|error| panic!("append to {stream}: {error}"));
    }
}

/// Total size of the data directory's SST files, bytes.
fn sst_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list the data directory")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".sst"))
        .map(|entry| entry.metadata().map_or(0, |metadata| metadata.len()))
        .sum()
}

/// Polls the scavenge status until it no longer runs; returns every status
/// seen (the last one is the final state).
async fn wait_for_scavenge(client: &Client) -> Vec<ScavengeStatus> {
    let mut seen = Vec::new();
    loop {
        let status = client.scavenge_status().await.expect("scavenge status");
        let running = status.state.is_running();
        seen.push(status);
        if !running {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks that `stream` reads exactly revisions `from..to`, each with its
/// known payload.
fn check_stream(stream: &str, events: &[cairn_client::RecordedEvent], from: u64, to: u64) {
    let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
    assert_eq!(
        revisions,
        (from..to).collect::<Vec<_>>(),
        "{stream}: the visible revisions"
    );
    for event in events {
        assert_eq!(
            event.data,
            payload(stream, event.revision).as_bytes(),
            "{stream} revision {}: the content changed",
            event.revision
        );
    }
}

/// The visible streams and what they must read: (stream, first, end).
const VISIBLE: [(&str, u64, u64); 5] = [
    ("keep-1", 0, 200),
    ("keep-2", 0, 200),
    ("keep-3", 0, 200),
    ("trunc-1", 400, 500),
    ("capped-1", 250, 300),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scavenge_under_a_writer_and_a_reader_reclaims_space_and_keeps_every_visible_event() {
    let server = TestServer::start().await;
    let client = server.client().await;

    for stream in ["gone-1", "gone-2", "gone-3", "gone-4"] {
        fill(&client, stream, 500).await;
    }
    fill(&client, "trunc-1", 500).await;
    fill(&client, "tomb-1", 200).await;
    fill(&client, "capped-1", 300).await;
    for stream in ["keep-1", "keep-2", "keep-3"] {
        fill(&client, stream, 200).await;
    }
    // A first scavenge with one hidden event compacts every column family,
    // which moves everything written so far into SST files: the size to
    // compare with.
    fill(&client, "primer", 1).await;
    client
        .delete("primer", ExpectedRevision::Any)
        .await
        .unwrap();
    client.start_scavenge().await.expect("first scavenge");
    let first = wait_for_scavenge(&client).await;
    let first = first.last().expect("a status");
    assert_eq!(first.state, ScavengeState::Finished, "{first:?}");
    assert_eq!(first.last_report.map(|report| report.removed), Some(1));
    let before = sst_bytes(server.data.path());

    // Hide 2,850 events: deletes, a tombstone, truncate_before, max_count.
    for stream in ["gone-1", "gone-2", "gone-3", "gone-4"] {
        client.delete(stream, ExpectedRevision::Any).await.unwrap();
    }
    client
        .tombstone("tomb-1", ExpectedRevision::Any)
        .await
        .unwrap();
    client
        .set_stream_metadata(
            "trunc-1",
            ExpectedRevision::Any,
            StreamMetadata {
                truncate_before: Some(400),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    client
        .set_stream_metadata(
            "capped-1",
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(50),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    let hidden = 4 * 500 + 200 + 400 + 250;

    // A writer and a reader run before, during and after the scavenge.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut written = 0u64;
            while !done.load(Ordering::Acquire) || written < 20 {
                let started = Instant::now();
                client
                    .append(
                        "writer-1",
                        ExpectedRevision::Any,
                        vec![client_event("Written", &format!("{{\"n\":{written}}}"))],
                    )
                    .await
                    .expect("an append during the scavenge");
                longest = longest.max(started.elapsed());
                written += 1;
            }
            (written, longest)
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let client = client.clone();
        let done = Arc::clone(&done);
        let reads = Arc::clone(&reads);
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) || reads.load(Ordering::Relaxed) < 3 {
                for (stream, from, to) in VISIBLE {
                    let events = read_all_client(&client, stream)
                        .await
                        .expect("a read during the scavenge");
                    check_stream(stream, &events, from, to);
                }
                for gone in ["gone-1", "tomb-1"] {
                    let events = read_all_client(&client, gone).await;
                    assert!(
                        matches!(
                            events,
                            Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. })
                        ),
                        "{gone} reads as gone: {events:?}"
                    );
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let started = client.start_scavenge().await.expect("start the scavenge");
    assert_eq!(started.run, 2);
    assert!(
        matches!(
            client.start_scavenge().await,
            Err(Error::OperationInProgress { operation }) if operation == "scavenge"
        ) || !client.scavenge_status().await.unwrap().state.is_running(),
        "a second start while one runs is refused"
    );
    let statuses = wait_for_scavenge(&client).await;
    done.store(true, Ordering::Release);
    let (written, longest_append) = writer.await.expect("writer");
    reader.await.expect("reader");

    let last = statuses.last().expect("a status");
    assert_eq!(last.state, ScavengeState::Finished, "{last:?}");
    assert_eq!(last.run, 2);
    assert!(!last.scheduled);
    let report = last.last_report.expect("a report");
    assert_eq!(report.removed, hidden, "{report:?}");
    assert_eq!(
        last.removed, hidden,
        "the progress counts what the report does"
    );
    assert_eq!(last.segments_done, last.segments_total);
    assert!(report.bytes_removed >= hidden * PAYLOAD_BYTES as u64);
    assert!(last.finished_at >= last.started_at);
    for pair in statuses.windows(2) {
        assert!(
            pair[1].scanned >= pair[0].scanned && pair[1].removed >= pair[0].removed,
            "progress only grows: {pair:?}"
        );
    }

    // Disk space came back.
    let after = sst_bytes(server.data.path());
    println!(
        "scavenge: SST bytes {before} -> {after}; {written} appends during it, the longest took \
         {longest_append:?}; {} full reads of the visible streams; {} status polls",
        reads.load(Ordering::Relaxed),
        statuses.len()
    );
    assert!(
        after + hidden * PAYLOAD_BYTES as u64 / 2 < before,
        "the SST files shrink by at least half the hidden payload: {before} -> {after}"
    );

    // Visible events are all there and unchanged.
    for (stream, from, to) in VISIBLE {
        check_stream(
            stream,
            &read_all_client(&client, stream).await.unwrap(),
            from,
            to,
        );
    }
    let writer_events = read_all_client(&client, "writer-1").await.unwrap();
    assert_eq!(writer_events.len() as u64, written);

    // Hidden events are physically gone: a backup holds exactly the visible
    // records (verify_backup reads every record of the log).
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().join("after-scavenge");
    client
        .backup(backup_dir.to_string_lossy().into_owned())
        .await
        .expect("backup");
    let verified = cairn_storage::verify_backup(&backup_dir).expect("the backup verifies");
    let visible = read_all_client(&client, "$all").await.unwrap();
    assert_eq!(
        verified.records_checked,
        visible.len() as u64,
        "the log holds the visible events and nothing else"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_scavenge_ends_early_and_leaves_the_store_consistent() {
    let server = TestServer::start().await;
    let client = server.client().await;
    const BULK: u64 = 300_000;
    let mut revision = 0;
    while revision < BULK {
        let batch: Vec<_> = (revision..revision + 1000)
            .map(|n| client_event("Bulk", &format!("{{\"n\":{n}}}")))
            .collect();
        revision += 1000;
        client
            .append("bulk-1", ExpectedRevision::Any, batch)
            .await
            .unwrap();
    }
    fill(&client, "keep-1", 200).await;
    client
        .delete("bulk-1", ExpectedRevision::Any)
        .await
        .unwrap();

    let started = client.start_scavenge().await.expect("start");
    assert!(started.state.is_running(), "{started:?}");
    let stopping = client.stop_scavenge().await.expect("stop");
    assert!(stopping.stop_requested, "{stopping:?}");
    let stopped = wait_for_scavenge(&client).await;
    let stopped = stopped.last().expect("a status");
    assert_eq!(stopped.state, ScavengeState::Stopped, "{stopped:?}");
    let first = stopped.last_report.expect("a report of the stopped run");
    assert!(
        first.scanned < BULK + 200,
        "the stopped run did not walk the whole log: {first:?}"
    );
    // Stopping again without a run changes nothing.
    assert_eq!(
        client.stop_scavenge().await.unwrap().state,
        ScavengeState::Stopped
    );

    // The store is consistent: reads are right, and a second run removes the
    // rest (together exactly the deleted stream).
    check_stream(
        "keep-1",
        &read_all_client(&client, "keep-1").await.unwrap(),
        0,
        200,
    );
    client.start_scavenge().await.expect("second start");
    let second = wait_for_scavenge(&client).await;
    let second = second.last().expect("a status");
    assert_eq!(second.state, ScavengeState::Finished, "{second:?}");
    let second = second.last_report.expect("report");
    assert_eq!(first.removed + second.removed, BULK);
    let info = client.info().await.unwrap();
    assert_eq!(info.event_count, info.head_position - BULK);

    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().join("b");
    client
        .backup(dir.to_string_lossy().into_owned())
        .await
        .unwrap();
    let verified = cairn_storage::verify_backup(&dir).expect("consistent after a stop");
    assert_eq!(verified.records_checked, info.event_count);
    println!(
        "stopped after {} of {} records ({} removed); the second run removed {}",
        first.scanned,
        BULK + 200,
        first.removed,
        second.removed
    );
    server.stop().await;
}

#[tokio::test]
async fn scavenge_needs_ops_and_backup_needs_admin_and_a_denied_call_changes_nothing() {
    let SecureSetup { server, admin } =
        SecureSetup::start(&[("plain", &[]), ("operator", &["ops"])]).await;
    admin
        .append(
            "gone-1",
            ExpectedRevision::Any,
            vec![client_event("E", "{}"), client_event("E", "{}")],
        )
        .await
        .unwrap();
    admin.delete("gone-1", ExpectedRevision::Any).await.unwrap();
    let head = admin.info().await.unwrap();

    let plain = server.connect_as("plain", USER_PASSWORD).await;
    let denied = |result: Result<ScavengeStatus, Error>| {
        assert!(
            matches!(&result, Err(Error::PermissionDenied(message)) if message.contains("scavenge")),
            "{result:?}"
        );
    };
    denied(plain.start_scavenge().await);
    denied(plain.scavenge_status().await);
    denied(plain.stop_scavenge().await);

    let backups = tempfile::tempdir().unwrap();
    let target = backups.path().join("denied");
    for who in [&plain, &server.connect_as("operator", USER_PASSWORD).await] {
        let result = who.backup(target.to_string_lossy().into_owned()).await;
        assert!(
            matches!(&result, Err(Error::PermissionDenied(message)) if message.contains("back up")),
            "{result:?}"
        );
    }
    assert!(!target.exists(), "a denied backup writes nothing");

    let status = admin.scavenge_status().await.unwrap();
    assert_eq!((status.state, status.run), (ScavengeState::Idle, 0));
    assert_eq!(
        admin.info().await.unwrap().event_count,
        head.event_count,
        "nothing was removed"
    );

    // The ops role may.
    let operator = server.connect_as("operator", USER_PASSWORD).await;
    operator.start_scavenge().await.expect("ops may scavenge");
    let ended = wait_for_scavenge(&operator).await;
    assert_eq!(ended.last().unwrap().state, ScavengeState::Finished);
    assert_eq!(
        admin.info().await.unwrap().event_count,
        head.event_count - 2
    );
    // An admin may back up; a relative directory is refused.
    assert!(matches!(
        admin.backup("relative/dir").await,
        Err(Error::InvalidArgument(_))
    ));
    admin
        .backup(target.to_string_lossy().into_owned())
        .await
        .expect("admin backup");
    assert!(target.join(cairn_storage::MANIFEST_FILE).exists());
    // A path over 4096 bytes is refused before anything is touched.
    let long = format!("/{}", "d".repeat(4096));
    assert!(matches!(
        admin.backup(long).await,
        Err(Error::InvalidArgument(message)) if message.contains("4096")
    ));
    // A second backup into the same directory is refused.
    assert!(matches!(
        admin.backup(target.to_string_lossy().into_owned()).await,
        Err(Error::InvalidArgument(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn the_schedule_scavenges_by_itself() {
    let server = TestServer::start_with(|settings| settings.auto_scavenge_interval_ms = 100).await;
    let client = server.client().await;
    client
        .append(
            "gone-1",
            ExpectedRevision::Any,
            (0..10).map(|_| client_event("E", "{}")).collect(),
        )
        .await
        .unwrap();
    client
        .delete("gone-1", ExpectedRevision::Any)
        .await
        .unwrap();
    let head = client.info().await.unwrap().head_position;
    let status = eventually(
        "a scheduled scavenge removed the deleted stream",
        || async {
            let info = client.info().await.ok()?;
            let status = client.scavenge_status().await.ok()?;
            (info.event_count == head - 10 && !status.state.is_running()).then_some(status)
        },
    )
    .await;
    assert!(status.scheduled, "{status:?}");
    assert!(status.run >= 1);
    assert_eq!(status.state, ScavengeState::Finished);
    server.stop().await;
}
