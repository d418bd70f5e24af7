//! W6: append -> delivery latency with the subscriber in another process.
//!
//! The benchmark starts itself again (`cairn-bench subscriber`, a hidden
//! subcommand) as the subscriber process. The child subscribes to `$all` from
//! its end, prints `ready` once the store confirmed the subscription, and for
//! every event of the watched streams computes `delivery - t`, where `t` is the
//! `CLOCK_MONOTONIC` value the writer put into the event's data when it built
//! it: one clock for both processes. When it has seen `--count` events it
//! prints one JSON line `{"latencies_ns":[...]}` and exits.

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

use crate::BoxError;
use crate::clock;
use crate::stats::Latency;
use crate::target::{Cairn, Delivery, EventSubscription, SubscribeAt, Target};
use crate::workload::{event_time, workload_stream};
use crate::workloads::{Measured, W6_EVENTS, case, single_appends};

/// How long the child may take to confirm its subscription.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the last acknowledgement the child may take to report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of the hidden `cairn-bench subscriber` (W6's subscriber process).
#[derive(Debug, clap::Args)]
pub(crate) struct SubscriberArgs {
    /// Server address.
    #[arg(long)]
    addr: String,
    /// Events to wait for.
    #[arg(long, default_value_t = W6_EVENTS)]
    count: u64,
    /// Only events of streams starting with this count.
    #[arg(long, default_value = "w6-")]
    prefix: String,
}

/// The subscriber process: see the module docs.
pub(crate) async fn subscriber(args: &SubscriberArgs) -> Result<(), BoxError> {
    let target = Cairn::connect(&args.addr).await?;
    let latencies = follow(&target, &args.prefix, args.count, || {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready")?;
        stdout.flush()
    })
    .await?;
    let report = serde_json::json!({ "latencies_ns": latencies });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{report}")?;
    stdout.flush()?;
    Ok(())
}

/// Subscribes to `$all` from its end, calls `ready` once confirmed, and returns
/// `delivery - t` (ns) for the next `count` events of streams starting with
/// `prefix`, checking that their positions increase.
pub(crate) async fn follow<T: Target>(
    target: &T,
    prefix: &str,
    count: u64,
    ready: impl FnOnce() -> std::io::Result<()>,
) -> Result<Vec<u64>, BoxError> {
    let mut subscription = target.subscribe_all(SubscribeAt::End).await?;
    let mut ready = Some(ready);
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut last_position = None;
    while (latencies.len() as u64) < count {
        match subscription.next().await? {
            None => return Err("the server ended the subscription".into()),
            Some(Delivery::Confirmed) => {
                if let Some(ready) = ready.take() {
                    ready()?;
                }
            }
            Some(Delivery::CaughtUp) => {}
            Some(Delivery::Event(event)) => {
                let delivered = clock::monotonic_ns();
                if !event.stream.starts_with(prefix) {
                    continue;
                }
                if last_position.is_some_and(|last| event.position <= last) {
                    return Err(format!(
                        "subscription went back from position {last_position:?} to {}",
                        event.position
                    )
                    .into());
                }
                last_position = Some(event.position);
                let sent = event_time(&event.data)
                    .ok_or_else(|| format!("event {} has no \"t\" field", event.id))?;
                latencies.push(delivered.saturating_sub(sent));
            }
        }
    }
    Ok(latencies)
}

/// Reads the next line of the child, with a deadline.
async fn next_line(
    lines: &mut Lines<BufReader<ChildStdout>>,
    timeout: Duration,
    waiting_for: &str,
) -> Result<String, BoxError> {
    match tokio::time::timeout(timeout, lines.next_line()).await {
        Ok(Ok(Some(line))) => Ok(line),
        Ok(Ok(None)) => Err(format!("the subscriber process exited before {waiting_for}").into()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(format!("no {waiting_for} from the subscriber within {timeout:?}").into()),
    }
}

/// W6 for Cairn: the subscriber process is `cairn-bench subscriber --addr
/// <address>`.
pub(crate) async fn w6<T: Target>(target: &T, address: &str) -> Result<Measured, BoxError> {
    let subscriber = [
        "subscriber".to_owned(),
        "--addr".to_owned(),
        address.to_owned(),
    ];
    w6_with(target, &subscriber).await
}

/// W6: starts this executable with `subscriber` (Cairn's `subscriber`, or a
/// peer's `peer-subscriber`) as the subscriber process, waits until it is
/// subscribed, then appends 1,000 single events to `w6-0000` through
/// `target`, each waited for, and collects the child's latencies.
pub(crate) async fn w6_with<T: Target>(
    target: &T,
    subscriber: &[String],
) -> Result<Measured, BoxError> {
    // `kill_on_drop`: a failure below must not leave the child running.
    let mut child = Command::new(std::env::current_exe()?)
        .args(subscriber)
        .arg("--count")
        .arg(W6_EVENTS.to_string())
        .arg("--prefix")
        .arg("w6-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the subscriber process has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = next_line(&mut lines, READY_TIMEOUT, "\"ready\"").await?;
    if ready.trim() != "ready" {
        return Err(format!("the subscriber process said {ready:?} instead of \"ready\"").into());
    }

    let start = Instant::now();
    let appends = single_appends(target, case::W6, &workload_stream("w6", 0), W6_EVENTS).await?;
    let seconds = start.elapsed().as_secs_f64();

    let report = next_line(&mut lines, REPORT_TIMEOUT, "latencies").await?;
    let report: serde_json::Value = serde_json::from_str(&report)?;
    let latencies: Vec<u64> = report["latencies_ns"]
        .as_array()
        .ok_or("the subscriber's report has no latencies")?
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    let status = child.wait().await?;
    if !status.success() {
        return Err(format!("the subscriber process failed: {status}").into());
    }
    if latencies.len() as u64 != W6_EVENTS {
        return Err(format!(
            "the subscriber reported {} deliveries, not {W6_EVENTS}",
            latencies.len()
        )
        .into());
    }
    Ok(Measured {
        id: "W6".to_owned(),
        what: "subscriber in another process follows $all from its end; 1,000 single appends \
               to w6-0000, each waited for; latency = append -> delivery"
            .to_owned(),
        events: W6_EVENTS,
        operations: W6_EVENTS,
        seconds,
        latency: Latency::from_nanos(latencies),
        append_latency: Some(Latency::from_nanos(appends)),
        capped: false,
    })
}
