//! `cairn-bench subscribe`: what a subscriber of `$all` sees.
//!
//! 1. **Catch-up**: ~150,000 events are written first (untimed, batches of
//!    1,000 over 150 streams); a subscriber then starts from the beginning of
//!    `$all` on its own connection. The figure is events per second from the
//!    subscribe call until `CaughtUp`, with the positions checked to be
//!    0, 1, 2, ... without a gap.
//! 2. **Live**: a subscriber in this process (own connection) follows `$all`
//!    from its end; once confirmed, a writer makes 1,000 single-event appends to
//!    `live-0000`, each waited for (durable unless `--unsynced`). Latency is
//!    append -> delivery on the monotonic clock (`t` in the event), shown next
//!    to the append's own latency.
//!
//! W6 of `run` is the same live measurement with the subscriber in another
//! process.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::BoxError;
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::report::{markdown_table, thousands};
use crate::server::{ServerArgs, Session};
use crate::stats::{Latency, round, round_to};
use crate::target::{Cairn, Delivery, EventSubscription, Expected, NewEvent, SubscribeAt, Target};
use crate::w6::follow;
use crate::workload::{event_id, payload, workload_stream};
use crate::workloads::{case, check_appended, single_appends};

/// Options of `cairn-bench subscribe`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscribeArgs {
    #[command(flatten)]
    server: ServerBenchArgs,

    /// Events written before the catch-up subscription.
    #[arg(long, value_name = "N", default_value_t = 150_000)]
    events: u64,

    /// Single appends timed in the live phase.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    live: u64,
}

/// The options of a benchmark against one server that also probes the disk
/// (`subscribe`, `fanout`): the server, the probe's length, the JSON file.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerBenchArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,

    /// Length of each fdatasync probe.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fsync_seconds: f64,
}

/// A server under measurement, with what is known about where it runs: the
/// machine, the disk's fdatasync rate before the benchmark, and the server's
/// own `Server.Info`.
#[derive(Debug)]
pub(crate) struct ServerBench {
    /// Where it runs.
    pub(crate) machine: Machine,
    /// The fdatasync probe before the benchmark.
    pub(crate) fsync_before: SyncRate,
    /// One connection to the server.
    pub(crate) target: Cairn,
    /// What the server says about itself.
    pub(crate) info: cairn_client::ServerInfo,
    /// Length of each fdatasync probe.
    probe: Duration,
    /// The server, its address and the scratch directory (data, probe file).
    session: Session,
}

impl ServerBenchArgs {
    /// Starts the server (or takes `--addr`) in a fresh scratch directory
    /// named after `name`, probes the disk there, and connects.
    pub(crate) async fn start(&self, name: &str) -> Result<ServerBench, BoxError> {
        let probe = Duration::try_from_secs_f64(self.fsync_seconds)
            .ok()
            .filter(|probe| !probe.is_zero())
            .ok_or("--fsync-seconds must be a positive number")?;
        let session = self.server.session(&format!("cairn-bench-{name}-")).await?;
        let machine = Machine::describe(&session.dir);
        if machine.on_memory_fs() {
            eprintln!(
                "warning: {} is on a memory filesystem; fsync costs nothing there",
                session.dir.display()
            );
        }
        eprintln!(
            "measuring the fdatasync rate in {} ...",
            session.dir.display()
        );
        let fsync_before = disk::fdatasync_rate(session.scratch.path(), probe)?;
        eprintln!("  {:.0} fdatasync/s", fsync_before.per_second);

        let target = Cairn::connect(&session.address).await?;
        let info = target.client().info().await?;
        eprintln!(
            "server {}: cairn {}, durability {}",
            session.address, info.version, info.durability
        );
        Ok(ServerBench {
            machine,
            fsync_before,
            target,
            info,
            probe,
            session,
        })
    }
}

impl ServerBench {
    /// Probes the disk again and stops the server if it was started here;
    /// returns the second probe.
    pub(crate) fn finish(&mut self) -> Result<SyncRate, BoxError> {
        eprintln!("measuring the fdatasync rate again ...");
        let fsync_after = disk::fdatasync_rate(self.session.scratch.path(), self.probe)?;
        self.session.stop()?;
        Ok(fsync_after)
    }

    /// The server's address.
    pub(crate) fn address(&self) -> &str {
        &self.session.address
    }

    /// The report's first lines: benchmark, machine, server, disk.
    pub(crate) fn header(&self, benchmark: &str, fsync_after: &SyncRate) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{benchmark}, {}", self.machine.date);
        let _ = writeln!(out, "machine: {}", self.machine.summary());
        let _ = writeln!(
            out,
            "server: cairn {}, durability {}; data on {}",
            self.info.version,
            self.info.durability,
            self.machine.filesystem_summary()
        );
        let _ = writeln!(
            out,
            "fdatasync: {} /s before, {} /s after\n",
            thousands(self.fsync_before.per_second),
            thousands(fsync_after.per_second)
        );
        out
    }

    /// The JSON report's common fields; the caller adds its figures.
    pub(crate) fn json(&self, benchmark: &str, fsync_after: &SyncRate) -> Value {
        json!({
            "benchmark": benchmark,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": self.machine.to_json(),
            "dir": self.session.dir.display().to_string(),
            "server": {
                "version": self.info.version,
                "durability": self.info.durability,
                "address": self.session.address,
            },
            "fdatasync_before": self.fsync_before.to_json(),
            "fdatasync_after": fsync_after.to_json(),
        })
    }
}

/// Writes a JSON report to `path` (`--json`).
pub(crate) fn write_json(path: &std::path::Path, figures: &Value) -> Result<(), BoxError> {
    std::fs::write(path, serde_json::to_string_pretty(figures)? + "\n")?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

/// Events per append while filling the store.
const FILL_BATCH: u64 = 1_000;

/// What the catch-up phase measured.
#[derive(Debug, Clone, Copy)]
struct CatchUp {
    events: u64,
    seconds: f64,
}

/// Runs `cairn-bench subscribe`.
pub(crate) async fn run(args: &SubscribeArgs) -> Result<(), BoxError> {
    if args.live == 0 {
        return Err("--live must be at least 1".into());
    }
    let mut bench = args.server.start("subscribe").await?;
    let target = &bench.target;

    eprintln!("writing {} events (untimed) ...", args.events);
    fill(target, args.events).await?;
    eprintln!("catch-up subscription from the start of $all ...");
    let catch_up = catch_up(target).await?;
    eprintln!(
        "  {} events in {:.2} s: {:.0} ev/s",
        catch_up.events,
        catch_up.seconds,
        catch_up.events as f64 / catch_up.seconds
    );
    eprintln!("live: {} single appends, each waited for ...", args.live);
    let (delivery, append) = live(target, args.live).await?;
    eprintln!(
        "  append->delivery p50 {:.3} ms, p99 {:.3} ms; append p50 {:.3} ms",
        delivery.p50_us / 1_000.0,
        delivery.p99_us / 1_000.0,
        append.p50_us / 1_000.0
    );

    let fsync_after = bench.finish()?;
    println!(
        "{}",
        table(&bench, &fsync_after, catch_up, delivery, append)
    );
    if let Some(path) = &args.server.json {
        let mut figures = bench.json("cairn-bench subscribe", &fsync_after);
        figures["catch_up"] = json!({
            "events": catch_up.events,
            "seconds": round_to(catch_up.seconds, 3),
            "events_per_second": round(catch_up.events as f64 / catch_up.seconds),
        });
        figures["live"] = json!({
            "append_to_delivery": delivery.to_json(),
            "append": append.to_json(),
            "delivery_adds_ms_p50": round_to((delivery.p50_us - append.p50_us) / 1_000.0, 3),
        });
        write_json(path, &figures)?;
    }
    Ok(())
}

/// Writes `events` events in batches of [`FILL_BATCH`] to `sub-0000`, ...
async fn fill<T: Target>(target: &T, events: u64) -> Result<(), BoxError> {
    let mut written = 0;
    let mut batch = 0u64;
    while written < events {
        let count = FILL_BATCH.min(events - written);
        let stream = workload_stream("sub", batch);
        let writer = usize::try_from(batch).unwrap_or(usize::MAX);
        let new = (0..count)
            .map(|seq| {
                let id = event_id(case::FILL, writer, seq);
                let data = payload(&id, &stream, seq);
                NewEvent { id, data }
            })
            .collect();
        let appended = target.append(&stream, Expected::NoStream, new).await?;
        check_appended(&stream, Expected::NoStream, count, appended)?;
        written += count;
        batch += 1;
    }
    Ok(())
}

/// Subscribes from the start of `$all` on a new connection and counts events
/// until `CaughtUp`, checking their order.
async fn catch_up<T: Target>(target: &T) -> Result<CatchUp, BoxError> {
    let own = target.connect_another().await?;
    let start = Instant::now();
    let mut subscription = own.subscribe_all(SubscribeAt::Start).await?;
    let mut next = 0u64;
    loop {
        match subscription.next().await? {
            None => return Err("the server ended the catch-up subscription".into()),
            Some(Delivery::Confirmed) => {}
            Some(Delivery::CaughtUp) => break,
            Some(Delivery::Event(event)) => {
                if event.position != next {
                    return Err(format!(
                        "catch-up delivered position {} where {next} was due",
                        event.position
                    )
                    .into());
                }
                next += 1;
            }
        }
    }
    Ok(CatchUp {
        events: next,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The live phase: returns (append -> delivery, append) latencies.
async fn live(target: &Cairn, count: u64) -> Result<(Latency, Latency), BoxError> {
    let subscriber = target.connect_another().await?;
    let (ready_sender, ready) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(async move {
        follow(&subscriber, "live-", count, move || {
            ready_sender
                .send(())
                .map_err(|()| std::io::Error::other("the writer is gone"))
        })
        .await
    });
    ready
        .await
        .map_err(|_| "the subscriber stopped before it was confirmed")?;
    let appends = single_appends(target, case::LIVE, &workload_stream("live", 0), count).await?;
    let deliveries = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .map_err(|_| "the subscriber did not receive every event within 60 s")?
        .map_err(|error| format!("subscriber task: {error}"))??;
    Ok((
        Latency::from_nanos(deliveries),
        Latency::from_nanos(appends),
    ))
}

/// The report as text.
fn table(
    bench: &ServerBench,
    fsync_after: &SyncRate,
    catch_up: CatchUp,
    delivery: Latency,
    append: Latency,
) -> String {
    let ms = |us: f64| format!("{:.3}", us / 1_000.0);
    let mut out = bench.header("cairn-bench subscribe", fsync_after);
    let rows = vec![
        vec![
            "catch-up: $all from the start until CaughtUp".to_owned(),
            thousands(catch_up.events as f64),
            format!("{:.2}", catch_up.seconds),
            thousands(catch_up.events as f64 / catch_up.seconds),
            "-".to_owned(),
            "-".to_owned(),
        ],
        vec![
            "live: append -> delivery (same process)".to_owned(),
            thousands(delivery.count as f64),
            "-".to_owned(),
            "-".to_owned(),
            ms(delivery.p50_us),
            ms(delivery.p99_us),
        ],
        vec![
            "live: the append alone".to_owned(),
            thousands(append.count as f64),
            "-".to_owned(),
            "-".to_owned(),
            ms(append.p50_us),
            ms(append.p99_us),
        ],
    ];
    out.push_str(&markdown_table(
        &["phase", "events", "s", "ev/s", "p50 ms", "p99 ms"],
        &rows,
    ));
    let _ = write!(
        out,
        "\ndelivery adds {:.3} ms at p50 to the append itself (target for W6: <= 0.5 ms)",
        (delivery.p50_us - append.p50_us) / 1_000.0
    );
    out
}
