//! `cairn-bench fanout`: one writer, many live subscribers of `$all`.
//!
//! For each subscriber count N (`--subscribers`, default 1, 10, 100) one round:
//!
//! 1. N subscriber tasks in this process each subscribe to `$all` from its end,
//!    `--per-connection` of them sharing a `Client` connection (default 1:
//!    each its own, like separate services; subscriptions of one connection
//!    share its HTTP/2 flow-control window). The round starts when every one
//!    has received `CaughtUp`.
//! 2. One writer, on a connection of its own, appends `--events` K events
//!    (default 2,000) to a fresh stream `fanout-<round>` in appends of
//!    `--batch` B (default 1), each waited for (durable unless `--unsynced`),
//!    then one end marker. Every event's data carries `t`, the monotonic clock
//!    just before its append call.
//! 3. Each subscriber records `receipt - t` for each of the K events and
//!    checks that it gets revisions 0, 1, 2, ... with the writer's ids, each
//!    exactly once and in order, and nothing between the last event and the
//!    marker; anything else fails the run.
//!
//! Figures per N: the writer's ev/s and append latency; delivery latency over
//! all N x K (subscriber, event) pairs; and delivered ev/s = N x K / (time from
//! just before the first append to the last subscriber's receipt of the last
//! event). Writer and subscribers share the monotonic clock, so no clock
//! offset enters the latencies.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::BoxError;
use crate::clock;
use crate::disk::SyncRate;
use crate::report::{markdown_table, thousands};
use crate::stats::{Latency, round, round_to};
use crate::subscribe::{ServerBench, ServerBenchArgs, write_json};
use crate::target::{Cairn, Delivery, EventSubscription, Expected, NewEvent, SubscribeAt, Target};
use crate::workload::{event_id, event_time, payload, workload_stream};
use crate::workloads::{batched_appends, check_appended};

/// Options of `cairn-bench fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    server: ServerBenchArgs,

    /// Subscriber counts, one round each.
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1,10,100"
    )]
    subscribers: Vec<usize>,

    /// Single appends per round.
    #[arg(long, value_name = "K", default_value_t = 2_000)]
    events: u64,

    /// Subscribers sharing one `Client` connection.
    #[arg(long, value_name = "M", default_value_t = 1)]
    per_connection: usize,

    /// Events per append call (the K events go in appends of B, each waited
    /// for). 1 measures fan-out at one durable append per sync; more lets the
    /// writer outrun the disk's sync rate, so the fan-out itself is measured.
    #[arg(long, value_name = "B", default_value_t = 1)]
    batch: u64,
}

/// The event ids' case number (see `workloads::case`) for the round with
/// index 0; round `i` uses `CASE + i`, so ids never repeat within a store
/// (the server would take a repeated id for a retry).
const CASE: u32 = 100;

/// How long the subscribers may take to be caught up, and to receive the
/// last event after the writer's last acknowledgement.
const WAIT: Duration = Duration::from_secs(60);

/// What one round measured.
#[derive(Debug, Clone)]
struct Round {
    /// Subscribers.
    subscribers: usize,
    /// Connections they used.
    connections: usize,
    /// Events written.
    events: u64,
    /// The writer's time from its first append call to its last answer.
    writer_seconds: f64,
    /// The writer's appends.
    append: Latency,
    /// Append -> receipt, over every (subscriber, event).
    delivery: Latency,
    /// From just before the first append to the last receipt of the last event.
    delivered_seconds: f64,
}

impl Round {
    /// Events all subscribers received together.
    fn delivered(&self) -> u64 {
        self.subscribers as u64 * self.events
    }

    fn writer_rate(&self) -> f64 {
        self.events as f64 / self.writer_seconds
    }

    fn delivered_rate(&self) -> f64 {
        self.delivered() as f64 / self.delivered_seconds
    }

    fn to_json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "connections": self.connections,
            "events": self.events,
            "writer_seconds": round_to(self.writer_seconds, 3),
            "writer_events_per_second": round(self.writer_rate()),
            "append": self.append.to_json(),
            "append_to_delivery": self.delivery.to_json(),
            "delivered": self.delivered(),
            "delivered_seconds": round_to(self.delivered_seconds, 3),
            "delivered_events_per_second": round(self.delivered_rate()),
        })
    }
}

/// What one subscriber received.
#[derive(Debug)]
struct Received {
    /// `receipt - t` (ns) of each event, in revision order.
    latencies: Vec<u64>,
    /// The monotonic clock when the last event arrived.
    last_ns: u64,
}

/// Runs `cairn-bench fanout`.
pub(crate) async fn run(args: &FanoutArgs) -> Result<(), BoxError> {
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    if args.per_connection == 0 {
        return Err("--per-connection must be at least 1".into());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        return Err("--subscribers must list counts of at least 1".into());
    }
    let mut bench = args.server.start("fanout").await?;

    let mut rounds = Vec::with_capacity(args.subscribers.len());
    for (index, &subscribers) in (0u32..).zip(&args.subscribers) {
        eprintln!(
            "{subscribers} subscriber(s), {} events in appends of {} ...",
            args.events, args.batch
        );
        let round = fan_out(&bench, subscribers, args, index).await?;
        eprintln!(
            "  writer {:.0} ev/s; delivery p50 {:.3} ms, p99 {:.3} ms; {:.0} delivered ev/s",
            round.writer_rate(),
            round.delivery.p50_us / 1_000.0,
            round.delivery.p99_us / 1_000.0,
            round.delivered_rate()
        );
        rounds.push(round);
    }

    let fsync_after = bench.finish()?;
    println!("{}", table(&bench, &fsync_after, &rounds, args.batch));
    if let Some(path) = &args.server.json {
        let mut figures = bench.json("cairn-bench fanout", &fsync_after);
        figures["per_connection"] = json!(args.per_connection);
        figures["batch"] = json!(args.batch);
        figures["rounds"] = rounds.iter().map(Round::to_json).collect();
        write_json(path, &figures)?;
    }
    Ok(())
}

/// Round `index`: `subscribers` subscribers, caught up, then the writer's
/// events to `fanout-<index>` with ids of case [`CASE`] + `index`.
async fn fan_out(
    bench: &ServerBench,
    subscribers: usize,
    args: &FanoutArgs,
    index: u32,
) -> Result<Round, BoxError> {
    let stream = workload_stream("fanout", u64::from(index));
    let case = CASE + index;
    let count = args.events;
    let (caught_up, mut ready) = mpsc::channel(subscribers);
    let mut tasks = JoinSet::new();
    let mut connections = 0;
    let mut connection = None;
    for n in 0..subscribers {
        if n % args.per_connection == 0 {
            connection = Some(Cairn::connect(bench.address()).await?);
            connections += 1;
        }
        let connection = connection.clone().ok_or("no connection")?;
        let (stream, caught_up) = (stream.clone(), caught_up.clone());
        tasks.spawn(async move { receive(&connection, &stream, case, count, caught_up).await });
    }
    drop(caught_up);
    for waited in 0..subscribers {
        match tokio::time::timeout(WAIT, ready.recv()).await {
            Ok(Some(())) => {}
            // A task ended before it was caught up: its error says why.
            Ok(None) => return Err(first_error(&mut tasks).await),
            Err(_) => {
                return Err(format!(
                    "only {waited} of {subscribers} subscribers were caught up within {WAIT:?}"
                )
                .into());
            }
        }
    }

    let target = &bench.target;
    let start_ns = clock::monotonic_ns();
    let began = Instant::now();
    let appends = batched_appends(target, case, &stream, count, args.batch).await?;
    let writer_seconds = began.elapsed().as_secs_f64();
    // The end marker: a subscriber that sees it right after revision K-1 has
    // received nothing twice.
    let id = event_id(case, 0, count);
    let data = payload(&id, &stream, count);
    let expected = Expected::Exact(count - 1);
    let appended = target
        .append(&stream, expected, vec![NewEvent { id, data }])
        .await?;
    check_appended(&stream, expected, 1, appended)?;

    let mut latencies = Vec::with_capacity(subscribers * usize::try_from(count).unwrap_or(0));
    let mut last_ns = start_ns;
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Some(joined) = tokio::time::timeout_at(deadline, tasks.join_next())
        .await
        .map_err(|_| {
            format!(
                "{} of {subscribers} subscribers did not receive all {count} events within \
                 {WAIT:?} of the last append",
                tasks.len()
            )
        })?
    {
        let received = joined.map_err(|error| format!("subscriber task: {error}"))??;
        last_ns = last_ns.max(received.last_ns);
        latencies.extend(received.latencies);
    }
    Ok(Round {
        subscribers,
        connections,
        events: count,
        writer_seconds,
        append: Latency::from_nanos(appends),
        delivery: Latency::from_nanos(latencies),
        delivered_seconds: (last_ns - start_ns) as f64 / 1e9,
    })
}

/// The error of the first subscriber task that failed (one has, when the
/// caught-up channel closed early).
async fn first_error(tasks: &mut JoinSet<Result<Received, BoxError>>) -> BoxError {
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return error,
            Err(error) => return format!("subscriber task: {error}").into(),
        }
    }
    "every subscriber ended before it was caught up".into()
}

/// One subscriber: follows `$all` from its end on `connection`, says so on
/// `caught_up` at `CaughtUp`, and receives `stream`'s events up to the end
/// marker (revision `count`), checking each against what the writer wrote.
async fn receive(
    connection: &Cairn,
    stream: &str,
    case: u32,
    count: u64,
    caught_up: mpsc::Sender<()>,
) -> Result<Received, BoxError> {
    let mut subscription = connection.subscribe_all(SubscribeAt::End).await?;
    let mut caught_up = Some(caught_up);
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut last_ns = 0;
    loop {
        let event = match subscription.next().await? {
            None => return Err("the server ended a subscription".into()),
            Some(Delivery::Confirmed) => continue,
            Some(Delivery::CaughtUp) => {
                if let Some(caught_up) = caught_up.take() {
                    caught_up.send(()).await.map_err(|_| "the writer is gone")?;
                }
                continue;
            }
            Some(Delivery::Event(event)) => event,
        };
        let now = clock::monotonic_ns();
        if event.stream != stream {
            continue;
        }
        let next = latencies.len() as u64;
        if event.revision != next || event.id != event_id(case, 0, next) {
            return Err(format!(
                "a subscriber of {stream} received revision {} (id {}) where revision {next} \
                 (id {}) was due",
                event.revision,
                event.id,
                event_id(case, 0, next)
            )
            .into());
        }
        if next == count {
            return Ok(Received { latencies, last_ns });
        }
        let sent = event_time(&event.data)
            .ok_or_else(|| format!("event {} has no \"t\" field", event.id))?;
        latencies.push(now.saturating_sub(sent));
        last_ns = now;
    }
}

/// The report as text.
fn table(bench: &ServerBench, fsync_after: &SyncRate, rounds: &[Round], batch: u64) -> String {
    let ms = |us: f64| format!("{:.3}", us / 1_000.0);
    let mut out = bench.header("cairn-bench fanout", fsync_after);
    let _ = writeln!(
        out,
        "The writer appends {batch} event(s) per call, each call waited for.\n"
    );
    let rows: Vec<Vec<String>> = rounds
        .iter()
        .map(|round| {
            vec![
                round.subscribers.to_string(),
                round.connections.to_string(),
                thousands(round.events as f64),
                thousands(round.writer_rate()),
                ms(round.append.p50_us),
                ms(round.append.p99_us),
                ms(round.delivery.p50_us),
                ms(round.delivery.p99_us),
                thousands(round.delivered() as f64),
                thousands(round.delivered_rate()),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &[
            "subscribers",
            "connections",
            "events",
            "writer ev/s",
            "append p50 ms",
            "append p99 ms",
            "delivery p50 ms",
            "delivery p99 ms",
            "delivered",
            "delivered ev/s",
        ],
        &rows,
    ));
    let _ = write!(
        out,
        "\ndelivery: from just before the append call to receipt, over every (subscriber, \
         event); delivered ev/s: subscribers x events / (first append -> last receipt). \
         Every subscriber received every event exactly once, in order."
    );
    out
}
