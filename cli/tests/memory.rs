//! The real `cairn` process under clients that stop reading: with large
//! events, what the server buffers for them is bounded in bytes (per call and
//! in total), so its resident memory stays flat however many such calls are
//! open. Measured as the daemon's VmRSS from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::{
    Client, EventData, ExpectedRevision, ReadOptions, SubscribeOptions, SubscriptionMessage,
};

mod common;
use common::Daemon;

const MIB: u64 = 1024 * 1024;
/// Events of 1 MiB in `big-*` (the reproduction of the issue: 300).
const EVENTS: usize = 300;
/// Reads and subscriptions that stop reading, each on its own connection.
const STALLED_READS: usize = 4;
const STALLED_SUBSCRIPTIONS: usize = 4;
/// How much the daemon's RSS may grow while they are open. Before the byte
/// budgets one such read grew it by ~518 MiB and one subscription by ~350 MiB.
const MAX_GROWTH: u64 = 256 * MIB;

fn start(root: &Path) -> Daemon {
    Daemon::start_with(
        root,
        &root.join("data"),
        "json",
        &[],
        &["--durability", "unsynced"],
    )
    .serving()
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// Samples RSS until it has not grown by more than 2 MiB for 3 s (or 60 s
/// passed), failing as soon as it exceeds `baseline + MAX_GROWTH`. Returns
/// the peak.
fn settled_peak(pid: u32, baseline: u64) -> u64 {
    let started = Instant::now();
    let mut peak = rss(pid);
    let mut grew_at = Instant::now();
    loop {
        let now = rss(pid);
        if now > peak + 2 * MIB {
            grew_at = Instant::now();
        }
        peak = peak.max(now);
        assert!(
            peak <= baseline + MAX_GROWTH,
            "the daemon's RSS grew by {} MiB (from {} MiB) with {STALLED_READS} reads and \
             {STALLED_SUBSCRIPTIONS} subscriptions that stopped reading; the bound is {} MiB",
            (peak - baseline) / MIB,
            baseline / MIB,
            MAX_GROWTH / MIB
        );
        if grew_at.elapsed() >= Duration::from_secs(3)
            || started.elapsed() >= Duration::from_secs(60)
        {
            return peak;
        }
        // Sampling a measurement, not waiting for a condition.
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_large_events_leave_the_daemon_rss_flat() {
    let root = tempfile::tempdir().expect("temp dir");
    let daemon = start(root.path());
    let pid = daemon.child.id();
    let url = format!("http://{}", daemon.address);
    let client = Client::connect(url.clone()).await.expect("connect");
    for n in 0..EVENTS {
        let event = EventData::binary("Big", vec![(n % 251) as u8; MIB as usize]);
        client
            .append(
                format!("big-{}", n % 10),
                ExpectedRevision::Any,
                vec![event],
            )
            .await
            .expect("append");
    }
    // Warm up what a reader legitimately costs (the block cache, the
    // allocator's pools): one full read and one full catch-up.
    let all = client
        .read("$ce-big", ReadOptions::forwards())
        .await
        .expect("read")
        .collect_all()
        .await
        .expect("warm-up read");
    assert_eq!(all.len(), EVENTS);
    drop(all);
    let mut subscription = client
        .subscribe("$ce-big", SubscribeOptions::from_start())
        .await
        .expect("subscribe");
    let mut seen = 0;
    while seen < EVENTS {
        if let SubscriptionMessage::Event(_) = subscription
            .next_message()
            .await
            .expect("message")
            .expect("open")
        {
            seen += 1;
        }
    }
    drop(subscription);
    let baseline = settled_peak(pid, rss(pid));

    // Clients that take one event and then stop reading (their HTTP/2
    // windows fill and are never opened again), each on its own connection.
    let mut stalled_reads = Vec::new();
    let mut stalled_subscriptions = Vec::new();
    for _ in 0..STALLED_READS {
        let reader = Client::connect(url.clone()).await.expect("connect");
        let mut events = reader
            .read("$ce-big", ReadOptions::forwards())
            .await
            .expect("read");
        events.next_event().await.expect("event").expect("first");
        stalled_reads.push((reader, events));
    }
    for _ in 0..STALLED_SUBSCRIPTIONS {
        let subscriber = Client::connect(url.clone()).await.expect("connect");
        let mut subscription = subscriber
            .subscribe("$ce-big", SubscribeOptions::from_start())
            .await
            .expect("subscribe");
        loop {
            let message = subscription.next_message().await.expect("message");
            if let Some(SubscriptionMessage::Event(_)) = message {
                break;
            }
        }
        stalled_subscriptions.push((subscriber, subscription));
    }
    let peak = settled_peak(pid, baseline);
    eprintln!(
        "daemon RSS: {} MiB before, {} MiB with the stalled calls (+{} MiB)",
        baseline / MIB,
        peak / MIB,
        peak.saturating_sub(baseline) / MIB
    );

    // The server still serves everyone else in full.
    let events = client
        .read("$ce-big", ReadOptions::forwards())
        .await
        .expect("read")
        .collect_all()
        .await
        .expect("a read beside the stalled ones");
    assert_eq!(events.len(), EVENTS);
    drop(stalled_reads);
    drop(stalled_subscriptions);
}
