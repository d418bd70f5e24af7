//! `cairn-bench many-streams`: a store with very many streams (default
//! 1,000,000), one event each.
//!
//! `--clients` clients (default 16, each its own connection) take stream
//! numbers from one shared counter and append WORKLOAD.md's 256-byte event to
//! `ms-<n>` with expected revision `NoStream`, one append at a time each,
//! checking the revision that comes back. Time runs from the common start (a
//! barrier) to the last client's finish; appends stop at `--max-seconds`
//! (WORKLOAD.md's 300 s cap) and the report says so.
//!
//! Every `--sample-every` events (100,000) the main task records the server
//! process's resident memory (`VmRSS` of `/proc/<pid>/status`; with `--addr`
//! only when `--server-pid` is given) and the size of its data directory (the
//! sum of the file sizes under it; with `--addr` only when `--data-dir` is
//! given), and from them the bytes on disk per event. After the last append it
//! samples again, once more after `--settle-seconds` (RocksDB flushes and
//! compacts in the background), and, for a server it started, once after
//! stopping it (shutdown flushes the memtables). At the end `Server.Info` must
//! count every appended event and stream.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::BoxError;
use crate::machine::Machine;
use crate::report::{markdown_table_with, server_header, thousands};
use crate::sample::{Probe, Usage, mib, per_event};
use crate::server::ServerArgs;
use crate::stats::{Latency, round, round_to};
use crate::target::{Cairn, Expected, NewEvent, Target};
use crate::workload::{event_id, payload, workload_stream};
use crate::workloads::{case, check_appended, nanos_since};

/// Options of `cairn-bench many-streams`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManyStreamsArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Streams created, one event each.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    streams: u64,

    /// Concurrent clients, each with its own connection.
    #[arg(long, value_name = "W", default_value_t = 16)]
    clients: usize,

    /// Sample memory and disk use every this many events.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    sample_every: u64,

    /// Wait this long after the last append before sampling again.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    settle_seconds: f64,

    /// Stop appending after this many seconds (WORKLOAD.md caps a workload at 300).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    max_seconds: f64,

    /// With --addr: the server's process id, for its memory.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// With --addr: the server's data directory, for its size.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How often the main task looks at the progress while clients append.
const POLL: Duration = Duration::from_millis(20);

/// Memory and disk use at one moment.
#[derive(Debug, Clone)]
struct Sample {
    /// When: `start`, `appending`, `end`, `settled`, `stopped`.
    when: &'static str,
    /// Events acknowledged by then.
    events: u64,
    /// Seconds since the common start.
    seconds: f64,
    usage: Usage,
}

impl Sample {
    /// The server's use now, `when`, with `events` acknowledged since `start`.
    fn now(probe: &Probe, when: &'static str, events: u64, start: Instant) -> Self {
        Self {
            when,
            events,
            seconds: start.elapsed().as_secs_f64(),
            usage: probe.usage(),
        }
    }

    fn bytes_per_event(&self) -> Option<f64> {
        self.usage.bytes_per_event(self.events)
    }

    fn to_json(&self) -> Value {
        json!({
            "when": self.when,
            "events": self.events,
            "seconds": round_to(self.seconds, 3),
            "rss_bytes": self.usage.rss,
            "data_dir_bytes": self.usage.disk,
            "bytes_per_event_on_disk": self.bytes_per_event().map(round),
        })
    }
}

/// What one client did.
struct ClientOutcome {
    latencies: Vec<u64>,
    finished: Instant,
    capped: bool,
}

/// Runs `cairn-bench many-streams`.
pub(crate) async fn run(args: &ManyStreamsArgs) -> Result<(), BoxError> {
    if args.streams == 0 || args.clients == 0 || args.sample_every == 0 {
        return Err("--streams, --clients and --sample-every must be at least 1".into());
    }
    let cap = Duration::try_from_secs_f64(args.max_seconds)
        .ok()
        .filter(|cap| !cap.is_zero())
        .ok_or("--max-seconds must be a positive number")?;
    let settle = Duration::try_from_secs_f64(args.settle_seconds)
        .map_err(|_| "--settle-seconds must be a number >= 0")?;
    let mut session = args.server.session("cairn-bench-many-streams-").await?;
    let machine = Machine::describe(&session.dir);
    let probe = Probe::of(
        &session,
        (args.server_pid, args.data_dir.as_deref()),
        ("no RSS", "no disk use"),
    );
    let target = Cairn::connect(&session.address).await?;
    let info = target.client().info().await?;
    eprintln!(
        "server {}: cairn {}, durability {}; {} streams, {} clients",
        session.address, info.version, info.durability, args.streams, args.clients
    );
    let mut samples = vec![Sample {
        when: "start",
        events: 0,
        seconds: 0.0,
        usage: probe.usage(),
    }];

    let barrier = Arc::new(Barrier::new(args.clients + 1));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let client = target.connect_another().await?;
        let (barrier, next, done) = (Arc::clone(&barrier), Arc::clone(&next), Arc::clone(&done));
        let streams = args.streams;
        tasks.spawn(async move {
            barrier.wait().await;
            append_client(&client, c, (streams, cap), &next, &done).await
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(usize::try_from(args.streams).unwrap_or(0));
    let mut finished = start;
    let mut capped = false;
    let mut due = args.sample_every;
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let outcome = joined.map_err(|error| format!("client task: {error}"))??;
                latencies.extend(outcome.latencies);
                finished = finished.max(outcome.finished);
                capped |= outcome.capped;
            }
            () = tokio::time::sleep(POLL) => {}
        }
        let events = done.load(Ordering::Relaxed);
        if events >= due && events < args.streams {
            let sample = Sample::now(&probe, "appending", events, start);
            eprintln!("  {}", progress(&sample));
            samples.push(sample);
            due = (events / args.sample_every + 1) * args.sample_every;
        }
    }
    let seconds = finished.duration_since(start).as_secs_f64();
    let appended = latencies.len() as u64;
    let latency = Latency::from_nanos(latencies);
    eprintln!(
        "{appended} events in {seconds:.2} s: {:.0} ev/s, p50 {:.3} ms, p99 {:.3} ms{}",
        appended as f64 / seconds,
        latency.p50_us / 1_000.0,
        latency.p99_us / 1_000.0,
        if capped { " (capped)" } else { "" }
    );
    samples.push(Sample::now(&probe, "end", appended, start));
    eprintln!("  {}", progress(&samples[samples.len() - 1]));

    let info = target.client().info().await?;
    if info.stream_count != appended || info.event_count != appended {
        return Err(format!(
            "the server counts {} streams and {} events; {appended} appends were acknowledged",
            info.stream_count, info.event_count
        )
        .into());
    }
    if !settle.is_zero() {
        eprintln!("waiting {settle:?} for background flushes ...");
        tokio::time::sleep(settle).await;
        samples.push(Sample::now(&probe, "settled", appended, start));
        eprintln!("  {}", progress(&samples[samples.len() - 1]));
    }
    if session.server.is_some() {
        session.stop()?;
        // No RSS: the process is gone (its pid may be someone else's by now).
        samples.push(Sample {
            when: "stopped",
            events: appended,
            seconds: start.elapsed().as_secs_f64(),
            usage: Usage {
                rss: None,
                disk: probe.disk(),
            },
        });
        eprintln!("  {}", progress(&samples[samples.len() - 1]));
    }

    let figures = Figures {
        streams: args.streams,
        clients: args.clients,
        appended,
        seconds,
        latency,
        capped,
        samples,
    };
    println!("{}", table(&machine, &info, &figures));
    if let Some(path) = &args.json {
        let document = json!({
            "streams": figures.streams,
            "clients": figures.clients,
            "appended": figures.appended,
            "seconds": round_to(figures.seconds, 3),
            "events_per_second": round(figures.appended as f64 / figures.seconds),
            "latency": figures.latency.to_json(),
            "capped": figures.capped,
            "samples": figures.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
        });
        session.write_json(
            path,
            "cairn-bench many-streams",
            (&machine, &info),
            document,
        )?;
    }
    Ok(())
}

/// One client: takes the next stream number until `streams` are taken or
/// `cap` has passed, and creates that stream with one event.
async fn append_client(
    target: &Cairn,
    c: usize,
    (streams, cap): (u64, Duration),
    next: &AtomicU64,
    done: &AtomicU64,
) -> Result<ClientOutcome, BoxError> {
    let mut latencies = Vec::new();
    let mut capped = false;
    let start = Instant::now();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= streams {
            break;
        }
        let began = Instant::now();
        if began.duration_since(start) >= cap {
            capped = true;
            break;
        }
        let stream = workload_stream("ms", n);
        let id = event_id(case::MANY_STREAMS, c, n);
        let data = payload(&id, &stream, n);
        let appended = target
            .append(&stream, Expected::NoStream, vec![NewEvent { id, data }])
            .await?;
        check_appended(&stream, Expected::NoStream, 1, appended)?;
        latencies.push(nanos_since(began));
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(ClientOutcome {
        latencies,
        finished: Instant::now(),
        capped,
    })
}

/// Everything the run measured.
#[derive(Debug)]
struct Figures {
    streams: u64,
    clients: usize,
    appended: u64,
    seconds: f64,
    latency: Latency,
    capped: bool,
    samples: Vec<Sample>,
}

/// One line of progress on stderr.
fn progress(sample: &Sample) -> String {
    format!(
        "{} events at {:.1} s: RSS {} MiB, data dir {} MiB, {} B/event on disk",
        sample.events,
        sample.seconds,
        mib(sample.usage.rss),
        mib(sample.usage.disk),
        per_event(sample.bytes_per_event())
    )
}

/// The report as text.
fn table(machine: &Machine, info: &cairn_client::ServerInfo, figures: &Figures) -> String {
    let mut out = server_header("cairn-bench many-streams", machine, info);
    let _ = writeln!(
        out,
        "{} clients (own connections), one 256-byte event per new stream (expected NoStream)\n",
        figures.clients
    );
    let rate = figures.appended as f64 / figures.seconds.max(f64::MIN_POSITIVE);
    out.push_str(&markdown_table_with(
        &["appends", "streams", "s", "ev/s", "p50 ms", "p99 ms"],
        &[vec![
            format!(
                "{}{}",
                thousands(figures.appended as f64),
                if figures.capped { " (capped)" } else { "" }
            ),
            thousands(figures.streams as f64),
            format!("{:.2}", figures.seconds),
            thousands(rate),
            format!("{:.3}", figures.latency.p50_us / 1_000.0),
            format!("{:.3}", figures.latency.p99_us / 1_000.0),
        ]],
        &[],
    ));
    let _ = writeln!(out);
    let mut previous: Option<&Sample> = None;
    let rows: Vec<Vec<String>> = figures
        .samples
        .iter()
        .map(|sample| {
            let interval = previous
                .filter(|before| sample.events > before.events)
                .map_or_else(
                    || "-".to_owned(),
                    |before| {
                        thousands(
                            (sample.events - before.events) as f64
                                / (sample.seconds - before.seconds).max(f64::MIN_POSITIVE),
                        )
                    },
                );
            previous = Some(sample);
            vec![
                sample.when.to_owned(),
                thousands(sample.events as f64),
                format!("{:.1}", sample.seconds),
                interval,
                mib(sample.usage.rss),
                mib(sample.usage.disk),
                per_event(sample.bytes_per_event()),
            ]
        })
        .collect();
    out.push_str(&markdown_table_with(
        &[
            "when",
            "events",
            "s",
            "ev/s since last",
            "RSS MiB",
            "data dir MiB",
            "bytes/event on disk",
        ],
        &rows,
        &[0],
    ));
    if let Some(last) = figures.samples.last()
        && let Some(bytes) = last.bytes_per_event()
    {
        let _ = write!(
            out,
            "\nfinal ({}): {bytes:.0} bytes on disk per event (256 bytes of data each)",
            last.when
        );
    }
    out
}
