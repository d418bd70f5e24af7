//! `cairn-bench scale`: how Cairn's costs move as one store grows to tens of
//! millions of events in millions of streams (issue 16's `scale` workload).
//!
//! **Fill.** A fresh server (or an empty one at `--addr`) is filled with
//! `--events` events (20,000,000) in `--streams` streams (half as many): event
//! `n` is WORKLOAD.md's 256-byte event, goes to stream `sc-<n mod streams>`
//! and is that stream's `n div streams`-th fill event, so the first round
//! creates every stream (expected `NoStream`) and the second gives each its
//! second event (expected `Exact(0)`). `--clients` clients (own connections)
//! take batches of consecutive events from a shared counter and write each
//! batch with one multi-stream append (one part per stream, each with its
//! exact expectation; at most `--batch` events and `--batch-bytes` bytes of
//! data, and within the server's own limits). Rounds are separated by a
//! barrier: within a round a stream appears once, so no append can overtake
//! the one its expectation depends on.
//!
//! **Checkpoints.** At 1M, 5M and 10M fill events and at the end (for
//! `--events` under 20M: at 5%, 25%, 50% and 100%) the fill pauses and one
//! client measures, in this order: the server's RSS (`/proc/<pid>/status`)
//! and bytes on disk per event (data directory ÷ events stored); durable
//! single-event appends for `--append-seconds` (5 s) to random existing
//! streams with exact expectations, then as long to new streams (`NoStream`);
//! `--reads` (1,000) reads of whole random existing streams (p50/p99, each
//! checked: every event, in order); and `--all-events` (200,000) of `$all`
//! from a random position in pages of 1,000 (order checked). Beside them the
//! fill segment that led to the checkpoint: its rate and its CPU per event,
//! server and client (see [`crate::cpu`]). The probes' own appends are
//! remembered, so later fill appends and reads still expect exactly what each
//! stream holds.
//!
//! **Disk.** While filling, the free space of the data directory's filesystem
//! is watched; under `--min-free-bytes` the fill stops, the last checkpoint is
//! measured where it got to, and the report says so. At the end `Server.Info`
//! must count every acknowledged event and stream.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{EventData, StreamAppend};
use serde_json::{Value, json};

use crate::BoxError;
use crate::cpu::{CpuMeter, CpuUse};
use crate::machine::Machine;
use crate::report::{markdown_table_with, server_header, thousands};
use crate::sample::{Probe, Usage, mib, per_event};
use crate::server::ServerArgs;
use crate::stats::{Latency, round, round_to};
use crate::target::{Cairn, Expected, NewEvent, Target};
use crate::workload::{DATA_BYTES, EVENT_TYPE, event_id, payload, workload_stream};
use crate::workloads::{W4_PAGE, check_appended, nanos_since};

/// Options of `cairn-bench scale`.
#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Fill events in all.
    #[arg(long, value_name = "N", default_value_t = 20_000_000)]
    events: u64,

    /// Streams the fill writes to. Default: half of --events.
    #[arg(long, value_name = "N")]
    streams: Option<u64>,

    /// Fill clients, each with its own connection.
    #[arg(long, value_name = "W", default_value_t = 4)]
    clients: usize,

    /// Most events per fill append (one per stream).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    batch: u64,

    /// Most bytes of event data (and stream names) per fill append.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    batch_bytes: u64,

    /// Length of each single-event append measurement.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    append_seconds: f64,

    /// Random stream reads per checkpoint.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    reads: u64,

    /// Events of `$all` read per checkpoint, in pages of 1,000.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    all_events: u64,

    /// Stop filling when the data directory's filesystem has less free space
    /// than this (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 5 << 30)]
    min_free_bytes: u64,

    /// Seed of the random choices (streams, `$all` positions).
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// With --addr: the server's process id, for its memory and CPU.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// With --addr: the server's data directory, for its size and free space.
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Event-id cases of this benchmark, apart from `workloads::case`'s (1-31).
mod case {
    /// Fill events: writer 0, sequence = the event's number `n`.
    pub(super) const FILL: u32 = 40;
    /// Probe appends to existing streams: writer = checkpoint index.
    pub(super) const EXISTING: u32 = 41;
    /// Probe appends to new streams: writer = checkpoint index.
    pub(super) const NEW: u32 = 42;
}

/// How often the fill's main task looks at progress and free space.
const POLL: Duration = Duration::from_millis(200);
/// How often the fill prints its progress.
const PROGRESS: Duration = Duration::from_secs(10);
/// Stream names of the fill.
const PREFIX: &str = "sc";

/// Which stream each fill event goes to, and what each stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Fill events in all.
    events: u64,
    /// Streams, at most `events`.
    streams: u64,
}

impl Plan {
    /// The stream of fill event `n`.
    fn stream_of(self, n: u64) -> u64 {
        n % self.streams
    }

    /// How many fill events precede event `n` in its stream (its round).
    fn round_of(self, n: u64) -> u64 {
        n / self.streams
    }

    /// Fill events in stream `s` once the first `filled` events are written.
    fn filled_in(self, s: u64, filled: u64) -> u64 {
        filled / self.streams + u64::from(s < filled % self.streams)
    }

    /// Streams that exist once the first `filled` events are written.
    fn streams_after(self, filled: u64) -> u64 {
        filled.min(self.streams)
    }

    /// Where the fill pauses to measure: 1M, 5M, 10M and the end, or 5%,
    /// 25%, 50% and 100% of a fill under 20M events. Ascending, no repeats,
    /// none at 0.
    fn checkpoints(self) -> Vec<u64> {
        let mut points: Vec<u64> = if self.events >= 20_000_000 {
            vec![1_000_000, 5_000_000, 10_000_000, self.events]
        } else {
            [5, 25, 50, 100]
                .iter()
                .map(|percent| self.events * percent / 100)
                .collect()
        };
        points.retain(|&point| point > 0);
        points.dedup();
        points
    }

    /// The pieces of `range` that lie within one round each: the fill runs
    /// them one after the other.
    fn rounds(self, range: Range<u64>) -> Vec<Range<u64>> {
        let mut pieces = Vec::new();
        let mut start = range.start;
        while start < range.end {
            let end = ((start / self.streams + 1) * self.streams).min(range.end);
            pieces.push(start..end);
            start = end;
        }
        pieces
    }
}

/// The probes' own appends per fill stream: events a stream holds beyond its
/// fill events.
type Extras = HashMap<u64, u64>;

/// What a fill stream holds once the first `filled` events are written.
fn stream_len(plan: Plan, extras: &Extras, s: u64, filled: u64) -> u64 {
    plan.filled_in(s, filled) + extras.get(&s).copied().unwrap_or(0)
}

/// A small deterministic generator (SplitMix64), enough to pick streams and
/// positions without a dependency.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), by the high half of a 128-bit product.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// A timed series of operations.
#[derive(Debug, Clone, Copy, Default)]
struct Timed {
    /// Operations done.
    operations: u64,
    /// Events written or read.
    events: u64,
    seconds: f64,
    /// Per operation.
    latency: Latency,
}

impl Timed {
    fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    fn to_json(self) -> Value {
        json!({
            "operations": self.operations,
            "events": self.events,
            "seconds": round_to(self.seconds, 3),
            "events_per_second": round(self.events_per_second()),
            "latency": self.latency.to_json(),
        })
    }
}

/// Everything measured at one checkpoint.
#[derive(Debug, Clone)]
struct Checkpoint {
    /// Fill events written.
    filled: u64,
    /// Why the fill stopped before this checkpoint's target, if it did.
    stopped: Option<String>,
    /// Events and streams the server counted before the probes.
    events: u64,
    streams: u64,
    /// The fill segment since the previous checkpoint.
    fill: Timed,
    fill_cpu: CpuUse,
    usage: Usage,
    free: Option<u64>,
    append_existing: Timed,
    append_new: Timed,
    reads: Timed,
    all: Timed,
}

impl Checkpoint {
    fn bytes_per_event(&self) -> Option<f64> {
        self.usage.bytes_per_event(self.events)
    }

    fn to_json(&self) -> Value {
        json!({
            "fill_events": self.filled,
            "stopped_early": self.stopped,
            "events_stored": self.events,
            "streams_stored": self.streams,
            "fill": self.fill.to_json(),
            "fill_server_cpu_us_per_event": self.fill_cpu.server_us_per_event().map(round),
            "fill_client_cpu_us_per_event": self.fill_cpu.client_us_per_event().map(round),
            "fill_server_cpu_seconds": self.fill_cpu.server_seconds.map(|s| round_to(s, 2)),
            "fill_client_cpu_seconds": self.fill_cpu.client_seconds.map(|s| round_to(s, 2)),
            "rss_bytes": self.usage.rss,
            "data_dir_bytes": self.usage.disk,
            "bytes_per_event_on_disk": self.bytes_per_event().map(round),
            "free_bytes": self.free,
            "append_existing_streams": self.append_existing.to_json(),
            "append_new_streams": self.append_new.to_json(),
            "stream_reads": self.reads.to_json(),
            "read_all": self.all.to_json(),
        })
    }
}

/// The settings of one run, checked.
#[derive(Debug, Clone, Copy)]
struct Settings {
    plan: Plan,
    /// Events per fill append.
    batch: u64,
    append_for: Duration,
    reads: u64,
    all_events: u64,
    min_free: u64,
}

impl ScaleArgs {
    fn settings(&self, info: &cairn_client::ServerInfo) -> Result<Settings, BoxError> {
        let streams = self.streams.unwrap_or(self.events / 2).max(1);
        if self.events == 0 || self.clients == 0 || self.batch == 0 || self.reads == 0 {
            return Err("--events, --clients, --batch and --reads must be at least 1".into());
        }
        if streams > self.events {
            return Err("--streams must not exceed --events (every stream gets an event)".into());
        }
        let append_for = Duration::try_from_secs_f64(self.append_seconds)
            .ok()
            .filter(|length| !length.is_zero())
            .ok_or("--append-seconds must be a positive number")?;
        // Bytes per event in a request: the data, the stream name (the
        // longest), the id and the type, and a little framing.
        let name = workload_stream(PREFIX, streams - 1).len() as u64;
        let per_event = DATA_BYTES as u64 + name + 16 + EVENT_TYPE.len() as u64 + 16;
        let by_bytes = self.batch_bytes.min(info.max_append_bytes.max(1)) / per_event;
        let batch = self
            .batch
            .min(by_bytes)
            .min(info.max_events_per_append.max(1))
            .min(streams);
        if batch == 0 {
            return Err(
                format!("--batch-bytes must hold at least one event ({per_event} bytes)").into(),
            );
        }
        Ok(Settings {
            plan: Plan {
                events: self.events,
                streams,
            },
            batch,
            append_for,
            reads: self.reads,
            all_events: self.all_events.max(1),
            min_free: self.min_free_bytes,
        })
    }
}

/// Runs `cairn-bench scale`.
pub(crate) async fn run(args: &ScaleArgs) -> Result<(), BoxError> {
    let mut session = args.server.session("cairn-bench-scale-").await?;
    let machine = Machine::describe(&session.dir);
    let probe = Probe::of(
        &session,
        (args.server_pid, args.data_dir.as_deref()),
        (
            "no RSS, no server CPU",
            "no disk use, free space not watched",
        ),
    );
    let target = Cairn::connect(&session.address).await?;
    let info = target.client().info().await?;
    if info.head_position != 0 {
        return Err(format!(
            "the server already holds {} events; scale needs an empty store",
            info.head_position
        )
        .into());
    }
    let settings = args.settings(&info)?;
    if let Some(free) = probe.free()
        && free < settings.min_free
    {
        return Err(format!(
            "only {} MiB free on the data directory's filesystem, under --min-free-bytes ({} MiB)",
            free >> 20,
            settings.min_free >> 20
        )
        .into());
    }
    eprintln!(
        "server {}: cairn {}, durability {}; {} events in {} streams, {} clients, {} events per append",
        session.address,
        info.version,
        info.durability,
        settings.plan.events,
        settings.plan.streams,
        args.clients,
        settings.batch
    );
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        clients.push(target.connect_another().await?);
    }
    let meter = CpuMeter::new(probe.pid);
    let mut extras = Extras::new();
    let mut random = Random(args.seed);
    let mut checkpoints = Vec::new();
    let mut filled = 0;
    let mut stopped = None;
    let mut probe_events = 0u64;
    let mut new_streams = 0u64;
    for (index, point) in settings.plan.checkpoints().into_iter().enumerate() {
        eprintln!("filling to {point} events ...");
        let cpu = meter.sample();
        let started = Instant::now();
        let from = filled;
        let outcome = fill(&clients, from..point, settings, &extras, &probe).await?;
        let seconds = started.elapsed().as_secs_f64();
        filled = outcome.filled;
        stopped = outcome.stopped;
        let fill = Timed {
            operations: outcome.appends,
            events: filled - from,
            seconds,
            latency: Latency::from_nanos(outcome.latencies),
        };
        let fill_cpu = meter.since(cpu, filled - from);
        eprintln!(
            "  {} events in {seconds:.1} s ({:.0} ev/s), CPU µs/ev server {} client {}",
            fill.events,
            fill.events_per_second(),
            CpuUse::cell(fill_cpu.server_us_per_event()),
            CpuUse::cell(fill_cpu.client_us_per_event())
        );
        if let Some(reason) = &stopped {
            eprintln!(
                "  FILL STOPPED at {filled} of {} events: {reason}",
                settings.plan.events
            );
            if filled == 0 {
                return Err(format!("the fill stopped before writing anything: {reason}").into());
            }
        }
        let mut checkpoint = measure(
            &target,
            (settings, index, filled),
            (&mut extras, &mut random),
            &probe,
        )
        .await?;
        checkpoint.fill = fill;
        checkpoint.fill_cpu = fill_cpu;
        checkpoint.stopped.clone_from(&stopped);
        probe_events += checkpoint.append_existing.events + checkpoint.append_new.events;
        new_streams += checkpoint.append_new.events;
        eprintln!("  {}", progress(&checkpoint));
        checkpoints.push(checkpoint);
        if stopped.is_some() {
            break;
        }
    }

    let info = target.client().info().await?;
    let streams = settings.plan.streams_after(filled) + new_streams;
    if info.event_count != filled + probe_events || info.stream_count != streams {
        return Err(format!(
            "the server counts {} events in {} streams; {} events in {streams} streams were acknowledged",
            info.event_count,
            info.stream_count,
            filled + probe_events
        )
        .into());
    }
    session.stop()?;
    let figures = Figures {
        settings,
        clients: args.clients,
        filled,
        stopped,
        checkpoints,
    };
    println!("{}", table(&machine, &info, &figures));
    if let Some(path) = &args.json {
        let document = json!({
            "events_planned": settings.plan.events,
            "streams_planned": settings.plan.streams,
            "clients": figures.clients,
            "events_per_fill_append": settings.batch,
            "fill_events": figures.filled,
            "stopped_early": figures.stopped,
            "min_free_bytes": settings.min_free,
            "append_seconds": settings.append_for.as_secs_f64(),
            "checkpoints": figures.checkpoints.iter().map(Checkpoint::to_json).collect::<Vec<_>>(),
        });
        session.write_json(path, "cairn-bench scale", (&machine, &info), document)?;
    }
    Ok(())
}

/// How a fill segment ended.
struct FillOutcome {
    /// Fill events written in all (the segment's start plus what it wrote).
    filled: u64,
    /// Appends made.
    appends: u64,
    /// Per append.
    latencies: Vec<u64>,
    /// Why it stopped before its end, if it did.
    stopped: Option<String>,
}

/// Writes the fill events `range` with every client, round by round; stops
/// early (between batches) when free space falls under the margin. The
/// events written are always a prefix of `range`: batches are taken in order
/// and every batch taken is finished.
async fn fill(
    clients: &[Cairn],
    range: Range<u64>,
    settings: Settings,
    extras: &Extras,
    probe: &Probe,
) -> Result<FillOutcome, BoxError> {
    let extras = Arc::new(extras.clone());
    let mut outcome = FillOutcome {
        filled: range.start,
        appends: 0,
        latencies: Vec::new(),
        stopped: None,
    };
    let segment_start = range.start;
    let started = Instant::now();
    let mut shown = Instant::now();
    for round in settings.plan.rounds(range) {
        let next = Arc::new(AtomicU64::new(round.start));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for client in clients {
            let (client, next, done, stop) = (
                client.clone(),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&stop),
            );
            let (extras, end) = (Arc::clone(&extras), round.end);
            tasks.spawn(async move {
                fill_client(&client, (end, settings), &extras, (&next, &done, &stop)).await
            });
        }
        loop {
            tokio::select! {
                joined = tasks.join_next() => {
                    let Some(joined) = joined else { break };
                    let latencies = joined.map_err(|error| format!("fill client: {error}"))??;
                    outcome.appends += latencies.len() as u64;
                    outcome.latencies.extend(latencies);
                }
                () = tokio::time::sleep(POLL) => {}
            }
            if outcome.stopped.is_none()
                && let Some(free) = probe.free()
                && free < settings.min_free
            {
                outcome.stopped = Some(format!(
                    "{} MiB free on the data directory's filesystem, under --min-free-bytes ({} MiB)",
                    free >> 20,
                    settings.min_free >> 20
                ));
                stop.store(true, Ordering::Relaxed);
            }
            if shown.elapsed() >= PROGRESS {
                shown = Instant::now();
                let now = round.start + done.load(Ordering::Relaxed);
                eprintln!(
                    "    {now} events, {:.0} ev/s",
                    (now - segment_start) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        outcome.filled = round.start + done.load(Ordering::Relaxed);
        if outcome.stopped.is_some() {
            break;
        }
    }
    Ok(outcome)
}

/// One fill client: takes the next batch of the round (ending at `end`)
/// until it is done or `stop` is set, and writes it with one multi-stream
/// append. Returns its append latencies.
async fn fill_client(
    client: &Cairn,
    (end, settings): (u64, Settings),
    extras: &Extras,
    (next, done, stop): (&AtomicU64, &AtomicU64, &AtomicBool),
) -> Result<Vec<u64>, BoxError> {
    let plan = settings.plan;
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let start = next.fetch_add(settings.batch, Ordering::Relaxed);
        if start >= end {
            break;
        }
        let batch = start..(start + settings.batch).min(end);
        let began = Instant::now();
        let mut expectations = Vec::with_capacity(settings.batch as usize);
        let parts: Vec<StreamAppend> = batch
            .clone()
            .map(|n| {
                let s = plan.stream_of(n);
                let stream = workload_stream(PREFIX, s);
                let before = plan.round_of(n) + extras.get(&s).copied().unwrap_or(0);
                let expected = Expected::after(before.checked_sub(1));
                let id = event_id(case::FILL, 0, n);
                let data = payload(&id, &stream, n);
                expectations.push((stream.clone(), expected));
                let event = EventData::json_text(EVENT_TYPE, data).id(id);
                StreamAppend::new(stream, expected.into(), vec![event])
            })
            .collect();
        let results = client.client().append_multi(parts).await?;
        if results.len() != expectations.len() {
            return Err(format!(
                "a multi-stream append of {} parts answered {} results",
                expectations.len(),
                results.len()
            )
            .into());
        }
        for ((stream, expected), result) in expectations.iter().zip(results) {
            check_appended(stream, *expected, 1, result.into())?;
        }
        latencies.push(nanos_since(began));
        done.fetch_add(batch.end - batch.start, Ordering::Relaxed);
    }
    Ok(latencies)
}

/// The probes at one checkpoint (`index`-th, `filled` fill events written),
/// by one client; the probes' appends are added to `extras`.
async fn measure(
    target: &Cairn,
    (settings, index, filled): (Settings, usize, u64),
    (extras, random): (&mut Extras, &mut Random),
    probe: &Probe,
) -> Result<Checkpoint, BoxError> {
    let plan = settings.plan;
    let info = target.client().info().await?;
    let existing = plan.streams_after(filled);
    let usage = probe.usage();
    let free = probe.free();
    let writer = index;

    // Appends to random existing streams, each with its exact expectation.
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < settings.append_for {
        let s = random.below(existing);
        let stream = workload_stream(PREFIX, s);
        let expected = Expected::after(stream_len(plan, extras, s, filled).checked_sub(1));
        let seq = latencies.len() as u64;
        let began = Instant::now();
        let id = event_id(case::EXISTING, writer, seq);
        let data = payload(&id, &stream, seq);
        let appended = target
            .append(&stream, expected, vec![NewEvent { id, data }])
            .await?;
        check_appended(&stream, expected, 1, appended)?;
        latencies.push(nanos_since(began));
        *extras.entry(s).or_default() += 1;
    }
    let append_existing = timed(latencies, 1, start);

    // Appends that create new streams.
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < settings.append_for {
        let seq = latencies.len() as u64;
        let stream = format!("{PREFIX}new-{index}-{seq}");
        let began = Instant::now();
        let id = event_id(case::NEW, writer, seq);
        let data = payload(&id, &stream, seq);
        let appended = target
            .append(&stream, Expected::NoStream, vec![NewEvent { id, data }])
            .await?;
        check_appended(&stream, Expected::NoStream, 1, appended)?;
        latencies.push(nanos_since(began));
    }
    let append_new = timed(latencies, 1, start);

    // Whole random existing streams, checked.
    let mut latencies = Vec::with_capacity(settings.reads as usize);
    let mut read_events = 0;
    let start = Instant::now();
    for _ in 0..settings.reads {
        let s = random.below(existing);
        let stream = workload_stream(PREFIX, s);
        let began = Instant::now();
        let events = target.read_stream(&stream).await?;
        latencies.push(nanos_since(began));
        let want = stream_len(plan, extras, s, filled);
        let in_order = events
            .iter()
            .enumerate()
            .all(|(i, event)| event.revision == i as u64 && event.stream == stream);
        if events.len() as u64 != want || !in_order {
            return Err(format!(
                "{stream} returned {} events (in order: {in_order}), it holds {want}",
                events.len()
            )
            .into());
        }
        read_events += want;
    }
    let mut reads = timed(latencies, 0, start);
    reads.events = read_events;

    // `$all` from a random position, in pages, order checked.
    let head = target.client().info().await?.head_position;
    let length = settings.all_events.min(head);
    let first = random.below(head - length + 1);
    let mut latencies = Vec::new();
    let mut position = first;
    let start = Instant::now();
    while position < first + length {
        let began = Instant::now();
        let page = target
            .read_all(position, W4_PAGE.min(first + length - position))
            .await?;
        latencies.push(nanos_since(began));
        if page.is_empty() {
            return Err(format!("$all ended at {position}, before the head {head}").into());
        }
        for event in &page {
            if event.position != position {
                return Err(format!(
                    "$all out of order: position {} where {position} was due",
                    event.position
                )
                .into());
            }
            position += 1;
        }
    }
    let mut all = timed(latencies, 0, start);
    all.events = position - first;

    Ok(Checkpoint {
        filled,
        stopped: None,
        events: info.event_count,
        streams: info.stream_count,
        fill: Timed::default(),
        fill_cpu: CpuUse::default(),
        usage,
        free,
        append_existing,
        append_new,
        reads,
        all,
    })
}

/// A series timed from `start` to now; `per_operation` events each.
fn timed(latencies: Vec<u64>, per_operation: u64, start: Instant) -> Timed {
    let operations = latencies.len() as u64;
    Timed {
        operations,
        events: operations * per_operation,
        seconds: start.elapsed().as_secs_f64(),
        latency: Latency::from_nanos(latencies),
    }
}

/// Everything the run measured.
#[derive(Debug)]
struct Figures {
    settings: Settings,
    clients: usize,
    filled: u64,
    stopped: Option<String>,
    checkpoints: Vec<Checkpoint>,
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1_000.0)
}

/// One line of progress on stderr.
fn progress(checkpoint: &Checkpoint) -> String {
    format!(
        "at {} events: appends {:.0}/s existing, {:.0}/s new; read p50 {} ms; $all {:.0} ev/s; RSS {} MiB; {} B/event on disk",
        checkpoint.filled,
        checkpoint.append_existing.events_per_second(),
        checkpoint.append_new.events_per_second(),
        ms(checkpoint.reads.latency.p50_us),
        checkpoint.all.events_per_second(),
        mib(checkpoint.usage.rss),
        per_event(checkpoint.bytes_per_event())
    )
}

/// The report as text: header, one row per checkpoint, the end against the
/// first checkpoint.
fn table(machine: &Machine, info: &cairn_client::ServerInfo, figures: &Figures) -> String {
    let mut out = server_header("cairn-bench scale", machine, info);
    let plan = figures.settings.plan;
    let _ = writeln!(
        out,
        "fill: {} events planned in {} streams (event n -> sc-<n mod streams>), {} clients, \
         multi-stream appends of {} events; probes: {:.0} s of single appends, {} stream reads, \
         {} events of $all",
        thousands(plan.events as f64),
        thousands(plan.streams as f64),
        figures.clients,
        figures.settings.batch,
        figures.settings.append_for.as_secs_f64(),
        figures.settings.reads,
        thousands(figures.settings.all_events as f64),
    );
    if let Some(reason) = &figures.stopped {
        let _ = writeln!(
            out,
            "FILL STOPPED EARLY at {} of {} events: {reason}",
            thousands(figures.filled as f64),
            thousands(plan.events as f64)
        );
    }
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = figures
        .checkpoints
        .iter()
        .map(|c| {
            vec![
                format!(
                    "{}{}",
                    thousands(c.filled as f64),
                    if c.stopped.is_some() {
                        " (stopped)"
                    } else {
                        ""
                    }
                ),
                thousands(c.streams as f64),
                thousands(c.fill.events_per_second()),
                CpuUse::cell(c.fill_cpu.server_us_per_event()),
                CpuUse::cell(c.fill_cpu.client_us_per_event()),
                thousands(c.append_existing.events_per_second()),
                format!(
                    "{} / {}",
                    ms(c.append_existing.latency.p50_us),
                    ms(c.append_existing.latency.p99_us)
                ),
                thousands(c.append_new.events_per_second()),
                format!(
                    "{} / {}",
                    ms(c.reads.latency.p50_us),
                    ms(c.reads.latency.p99_us)
                ),
                thousands(c.all.events_per_second()),
                mib(c.usage.rss),
                per_event(c.bytes_per_event()),
            ]
        })
        .collect();
    out.push_str(&markdown_table_with(
        &[
            "fill events",
            "streams",
            "fill ev/s",
            "fill srv µs/ev",
            "fill cli µs/ev",
            "append ev/s (existing)",
            "append p50 / p99 ms",
            "append ev/s (new)",
            "read p50 / p99 ms",
            "$all ev/s",
            "RSS MiB",
            "disk B/event",
        ],
        &rows,
        &[0],
    ));
    if let (Some(first), Some(last)) = (figures.checkpoints.first(), figures.checkpoints.last())
        && figures.checkpoints.len() > 1
    {
        let _ = writeln!(
            out,
            "\nlast ÷ first checkpoint: append rate (existing) {:.2}x, (new) {:.2}x; read p50 {:.2}x; \
             $all rate {:.2}x",
            last.append_existing.events_per_second() / first.append_existing.events_per_second(),
            last.append_new.events_per_second() / first.append_new.events_per_second(),
            last.reads.latency.p50_us / first.reads.latency.p50_us.max(f64::MIN_POSITIVE),
            last.all.events_per_second() / first.all.events_per_second(),
        );
    }
    let _ = write!(
        out,
        "\nstreams: as the server counts them (the probes' new streams included). fill: the segment \
         since the previous checkpoint, CPU (user + system) ÷ its events. disk: the data \
         directory ÷ events stored, at the checkpoint, before its probes."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_gives_each_stream_its_events_in_rounds() {
        let plan = Plan {
            events: 20,
            streams: 8,
        };
        // Round 0 creates every stream, then each gets its next event.
        assert_eq!((plan.stream_of(0), plan.round_of(0)), (0, 0));
        assert_eq!((plan.stream_of(7), plan.round_of(7)), (7, 0));
        assert_eq!((plan.stream_of(8), plan.round_of(8)), (0, 1));
        assert_eq!((plan.stream_of(19), plan.round_of(19)), (3, 2));
        // What a stream holds after a prefix matches counting the prefix.
        for filled in 0..=20 {
            for s in 0..8 {
                let counted = (0..filled).filter(|&n| plan.stream_of(n) == s).count() as u64;
                assert_eq!(plan.filled_in(s, filled), counted, "s {s} filled {filled}");
            }
        }
        assert_eq!(plan.streams_after(5), 5);
        assert_eq!(plan.streams_after(20), 8);
        assert_eq!(plan.rounds(3..19), vec![3..8, 8..16, 16..19]);
        assert_eq!(plan.rounds(8..16), vec![8..16]);
        assert_eq!(plan.rounds(5..5), Vec::<Range<u64>>::new());
    }

    #[test]
    fn checkpoints_at_the_issue_figures_or_scaled() {
        let default = Plan {
            events: 20_000_000,
            streams: 10_000_000,
        };
        assert_eq!(
            default.checkpoints(),
            vec![1_000_000, 5_000_000, 10_000_000, 20_000_000]
        );
        let small = Plan {
            events: 200_000,
            streams: 100_000,
        };
        assert_eq!(small.checkpoints(), vec![10_000, 50_000, 100_000, 200_000]);
        let tiny = Plan {
            events: 3,
            streams: 1,
        };
        assert_eq!(tiny.checkpoints(), vec![1, 3]);
    }

    #[test]
    fn probe_appends_count_in_what_a_stream_holds() {
        let plan = Plan {
            events: 20,
            streams: 10,
        };
        let mut extras = Extras::new();
        assert_eq!(stream_len(plan, &extras, 3, 10), 1);
        extras.insert(3, 2);
        assert_eq!(stream_len(plan, &extras, 3, 10), 3);
        assert_eq!(stream_len(plan, &extras, 3, 14), 4);
        assert_eq!(stream_len(plan, &extras, 4, 14), 1);
    }

    #[test]
    fn random_choices_stay_in_range_and_repeat_with_the_seed() {
        let mut a = Random(7);
        let mut b = Random(7);
        let mut seen = [false; 10];
        for _ in 0..1_000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&hit| hit), "{seen:?}");
        assert_eq!(Random(1).below(1), 0);
    }
}
