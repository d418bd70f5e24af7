//! `cairn-bench compare`: Cairn and its peers through the same workloads
//! W1-W6, one store after the other in one run, with the disk's fdatasync rate
//! measured before each store and at the end, printed as one table with
//! Cairn/peer ratios.
//!
//! Every store starts empty on a fresh data directory under `--dir` (Cairn by
//! [`ServerProcess`], the peers by `bench/peers.sh`) and is stopped after its
//! W6. Within a store the workloads run in WORKLOAD.md's order: W4 and W5
//! read what W1-W3 wrote.
//!
//! Every peer of `--peers` (all four by default) runs each time: one that is
//! not installed stops the run before anything is measured, unless
//! `--skip-missing` is given (the header then names what was skipped). A
//! store that fails during its workloads is reported in the table, the other
//! stores still run, and the command exits non-zero at the end.
//!
//! Beside each workload's figure, the CPU it cost per event (see
//! [`crate::cpu`]): the server's (Cairn's child process; a peer's server
//! process as `peers.sh start` reports it, with every process below it, so
//! PostgreSQL's backends count) and the client's (this process, with W6's
//! subscriber process once it has exited), sampled right before and after the
//! workload.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::BoxError;
use crate::cpu::{CpuMeter, CpuUse, with_cpu};
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::peers::{self, Peer, PeerServer};
use crate::report::{markdown_table_with, thousands};
use crate::server::{self, Durability, ServerProcess};
use crate::stats::round;
use crate::target::{Cairn, Expected, NewEvent, Target};
use crate::w6;
use crate::workload::{event_id, payload, workload_stream};
use crate::workloads::{self, Measured, case};

/// Options of `cairn-bench compare`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// The peers to compare with (those not installed are reported as such).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "postgres,redis,nats,umadb"
    )]
    peers: Vec<Peer>,

    /// Also write every figure to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Directory for the stores' fresh data directories (removed afterwards)
    /// and the fdatasync probes. It must be on the disk to measure, not tmpfs.
    /// Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Stop a workload after this many seconds (WORKLOAD.md caps each at 300).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    max_seconds: f64,

    /// Length of each fdatasync probe.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fsync_seconds: f64,

    /// Run without the peers that are not installed (the header says which)
    /// instead of stopping before anything is measured.
    #[arg(long)]
    skip_missing: bool,
}

/// A store of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Cairn,
    Peer(Peer),
}

impl Store {
    fn title(self) -> &'static str {
        match self {
            Self::Cairn => "Cairn",
            Self::Peer(Peer::Postgres) => "PostgreSQL",
            Self::Peer(Peer::Redis) => "Redis",
            Self::Peer(Peer::Nats) => "NATS",
            Self::Peer(Peer::Umadb) => "UmaDB",
        }
    }

    fn settings(self) -> &'static str {
        match self {
            Self::Cairn => "--durability sync (acknowledged after fdatasync: durable)",
            Self::Peer(peer) => peer.settings(),
        }
    }

    fn live(self) -> &'static str {
        match self {
            Self::Cairn => "Subscribe to $all (gRPC stream)",
            Self::Peer(peer) => peer.live_mechanism(),
        }
    }
}

/// What one store did.
#[derive(Debug)]
struct StoreRun {
    store: Store,
    /// The disk's rate just before this store ran.
    fsync_before: Option<SyncRate>,
    /// The disk's rate around W1 and W2.
    around: Around,
    results: Vec<Measured>,
    /// The CPU each workload of `results` cost, by workload id.
    cpu: Vec<(String, CpuUse)>,
    /// Why the store was not measured, or where it failed.
    error: Option<String>,
    /// Not installed and left out (`--skip-missing`).
    skipped: bool,
}

/// The disk's fdatasync rate around a workload: the mean of the probes right
/// before and right after it (the rate drifts within minutes).
#[derive(Debug, Clone, Copy, Default)]
struct Around {
    w1: Option<f64>,
    w2: Option<f64>,
}

impl StoreRun {
    fn find(&self, id: &str) -> Option<&Measured> {
        self.results.iter().find(|result| result.id == id)
    }

    fn cpu(&self, id: &str) -> Option<&CpuUse> {
        self.cpu
            .iter()
            .find(|(own, _)| own == id)
            .map(|(_, cpu)| cpu)
    }

    fn new(store: Store) -> Self {
        Self {
            store,
            fsync_before: None,
            around: Around::default(),
            results: Vec::new(),
            cpu: Vec::new(),
            error: None,
            skipped: false,
        }
    }
}

/// The peers of `selected` that cannot be started here, with the reason.
fn missing_peers(selected: &[Peer]) -> Vec<(Peer, String)> {
    Peer::ALL
        .into_iter()
        .filter(|peer| selected.contains(peer))
        .filter_map(|peer| peers::available(peer).err().map(|reason| (peer, reason)))
        .collect()
}

/// The error for missing peers without `--skip-missing`.
fn missing_error(missing: &[(Peer, String)]) -> String {
    let mut text = String::from(
        "compare runs every peer each time, and these are not available here (install them \
         with bench/peers.sh install, or pass --skip-missing):",
    );
    for (peer, reason) in missing {
        let _ = write!(text, "\n  {}: {reason}", peer.name());
    }
    text
}

/// Runs `cairn-bench compare`.
pub(crate) async fn run(args: &CompareArgs) -> Result<(), BoxError> {
    let cap = Duration::try_from_secs_f64(args.max_seconds)
        .ok()
        .filter(|cap| !cap.is_zero())
        .ok_or("--max-seconds must be a positive number")?;
    let probe = Duration::try_from_secs_f64(args.fsync_seconds)
        .ok()
        .filter(|probe| !probe.is_zero())
        .ok_or("--fsync-seconds must be a positive number")?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => std::env::temp_dir(),
    };
    let machine = Machine::describe(&dir);
    if machine.on_memory_fs() {
        eprintln!(
            "warning: {} is on a memory filesystem; fsync costs nothing there",
            dir.display()
        );
    }
    let binary = server::server_binary(args.server_bin.as_deref())?;
    let missing = missing_peers(&args.peers);
    if !missing.is_empty() && !args.skip_missing {
        return Err(missing_error(&missing).into());
    }
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-compare-")
        .tempdir_in(&dir)?;

    eprintln!("null loop ...");
    let null = workloads::null_loop();
    let mut stores = vec![Store::Cairn];
    for peer in Peer::ALL {
        if args.peers.contains(&peer) {
            stores.push(Store::Peer(peer));
        }
    }
    let mut runs = Vec::new();
    for store in stores {
        let data = scratch.path().join(store.title().to_lowercase());
        let mut run = StoreRun::new(store);
        if let Store::Peer(peer) = store
            && let Some((_, reason)) = missing.iter().find(|(own, _)| *own == peer)
        {
            eprintln!("{}: skipped, not available: {reason}", store.title());
            run.error = Some(format!("skipped (--skip-missing), not available: {reason}"));
            run.skipped = true;
            runs.push(run);
            continue;
        }
        eprintln!("{}: measuring the fdatasync rate ...", store.title());
        let rate = disk::fdatasync_rate(scratch.path(), probe)?;
        eprintln!("  {:.0} fdatasync/s", rate.per_second);
        run.fsync_before = Some(rate);
        eprintln!("{}: {} ...", store.title(), store.settings());
        let probe = Probe {
            dir: scratch.path(),
            length: probe,
        };
        let outcome = measure_store(&binary, &data, cap, probe, &mut run).await;
        if let Err(error) = outcome {
            eprintln!("{}: FAILED: {error}", store.title());
            run.error = Some(error.to_string());
        }
        // The data directory is removed now: the next store's disk should not
        // be busy with the previous one's files (PostgreSQL's belong to
        // `postgres`, which root may remove).
        if let Err(error) = std::fs::remove_dir_all(&data) {
            eprintln!("warning: cannot remove {}: {error}", data.display());
        }
        runs.push(run);
    }
    eprintln!("measuring the fdatasync rate again ...");
    let fsync_after = disk::fdatasync_rate(scratch.path(), probe)?;

    let left_out = Peer::ALL
        .into_iter()
        .filter(|peer| !args.peers.contains(peer))
        .collect();
    let report = Report {
        machine,
        dir,
        null,
        runs,
        fsync_after,
        left_out,
    };
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&to_json(&report))? + "\n",
        )?;
        eprintln!("figures written to {}", path.display());
    }
    let failed: Vec<&str> = report
        .runs
        .iter()
        .filter(|run| run.error.is_some() && !run.skipped)
        .map(|run| run.store.title())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failed (see the table's notes)", failed.join(", ")).into())
    }
}

/// Starts `run.store` on `data`, runs the workloads into `run`, stops it.
async fn measure_store(
    binary: &Path,
    data: &Path,
    cap: Duration,
    probe: Probe<'_>,
    run: &mut StoreRun,
) -> Result<(), BoxError> {
    match run.store {
        Store::Cairn => {
            std::fs::create_dir_all(data)?;
            let mut server = ServerProcess::start(
                binary,
                &data.join("data"),
                Durability::Sync,
                &data.join("server.log"),
            )
            .await?;
            let address = server.address().to_owned();
            let meter = CpuMeter::new(server.pid());
            let target = Cairn::connect(&address).await?;
            let subscriber = ["subscriber".to_owned(), "--addr".to_owned(), address];
            let outcome = workloads_in_order(&target, &subscriber, cap, (probe, meter), run).await;
            drop(target);
            server.stop()?;
            outcome
        }
        Store::Peer(peer) => {
            let mut server = PeerServer::start(peer, data)?;
            let address = server.address().to_owned();
            let meter = CpuMeter::new(server.pid());
            if server.pid().is_none() {
                eprintln!(
                    "  note: peers.sh printed no pid: no server CPU for {}",
                    peer.name()
                );
            }
            let measure = (probe, meter);
            let outcome = match peer {
                Peer::Postgres => {
                    let target = peers::postgres::Postgres::connect(&address).await?;
                    peer_workloads(&target, peer, &address, cap, measure, run).await
                }
                Peer::Redis => {
                    let target = peers::redis::Redis::connect(&address).await?;
                    peer_workloads(&target, peer, &address, cap, measure, run).await
                }
                Peer::Nats => {
                    let target = peers::nats::Nats::connect(&address).await?;
                    peer_workloads(&target, peer, &address, cap, measure, run).await
                }
                #[cfg(feature = "umadb")]
                Peer::Umadb => {
                    let target = peers::umadb::Umadb::connect(&address).await?;
                    peer_workloads(&target, peer, &address, cap, measure, run).await
                }
                #[cfg(not(feature = "umadb"))]
                Peer::Umadb => Err(peers::NO_UMADB.into()),
            };
            server.stop()?;
            outcome
        }
    }
}

async fn peer_workloads<T: Target>(
    target: &T,
    peer: Peer,
    address: &str,
    cap: Duration,
    measure: (Probe<'_>, CpuMeter),
    run: &mut StoreRun,
) -> Result<(), BoxError> {
    let subscriber = [
        "peer-subscriber".to_owned(),
        "--peer".to_owned(),
        peer.name().to_owned(),
        "--addr".to_owned(),
        address.to_owned(),
    ];
    workloads_in_order(target, &subscriber, cap, measure, run).await
}

/// Where and how long the fdatasync probes run.
#[derive(Debug, Clone, Copy)]
struct Probe<'a> {
    dir: &'a Path,
    length: Duration,
}

impl Probe<'_> {
    /// The disk's rate now, per second.
    fn rate(self) -> Result<f64, BoxError> {
        Ok(disk::fdatasync_rate(self.dir, self.length)?.per_second)
    }
}

/// The round trip and W1-W6 in order, with fdatasync probes right before and
/// after W1 and W2 (the workloads judged against the disk) and CPU samples
/// right before and after each workload (inside the probes, so a probe's
/// fsyncs never count); `subscriber` is the argument list that starts W6's
/// subscriber process (this executable).
async fn workloads_in_order<T: Target>(
    target: &T,
    subscriber: &[String],
    cap: Duration,
    (probe, meter): (Probe<'_>, CpuMeter),
    run: &mut StoreRun,
) -> Result<(), BoxError> {
    let mut record = |result: Measured, cpu: CpuUse| {
        eprintln!(
            "  {}: {} events in {:.2} s, {:.0} ev/s, p50 {:.3} ms, p99 {:.3} ms, \
             CPU µs/ev server {} client {}{}",
            result.id,
            result.events,
            result.seconds,
            result.events_per_second(),
            result.latency.p50_us / 1_000.0,
            result.latency.p99_us / 1_000.0,
            CpuUse::cell(cpu.server_us_per_event()),
            CpuUse::cell(cpu.client_us_per_event()),
            if result.capped { " (capped)" } else { "" }
        );
        run.cpu.push((result.id.clone(), cpu));
        run.results.push(result);
    };
    let cpu = meter.sample();
    let rtt = workloads::round_trips(target).await?;
    let used = meter.since(cpu, rtt.events);
    record(rtt, used);
    let before = probe.rate()?;
    let cpu = meter.sample();
    let w1 = workloads::w1(target, cap).await?;
    let used = meter.since(cpu, w1.events);
    run.around.w1 = Some((before + probe.rate()?) / 2.0);
    let mut written = w1.events;
    record(w1, used);
    let before = probe.rate()?;
    let cpu = meter.sample();
    let w2 = workloads::w2(target, cap).await?;
    let used = meter.since(cpu, w2.events);
    run.around.w2 = Some((before + probe.rate()?) / 2.0);
    written += w2.events;
    record(w2, used);
    let cpu = meter.sample();
    let w3 = workloads::w3(target, cap).await?;
    let used = meter.since(cpu, w3.events);
    written += w3.events;
    let w3_complete = !w3.capped;
    record(w3, used);
    let cpu = meter.sample();
    let w4 = workloads::w4(target, written, cap).await?;
    let used = meter.since(cpu, w4.events);
    record(w4, used);
    if w3_complete {
        let cpu = meter.sample();
        let w5 = workloads::w5(target).await?;
        let used = meter.since(cpu, w5.events);
        record(w5, used);
    }
    let cpu = meter.sample();
    let w6 = w6::w6_with(target, subscriber).await?;
    let used = meter.since(cpu, w6.events);
    record(w6, used);
    conflicts_rejected(target).await?;
    eprintln!("  wrong expected revisions rejected, nothing written");
    Ok(())
}

/// The store rejects appends whose expectation does not hold and writes
/// nothing for them: a second connection (which has not seen the stream)
/// appends to an existing stream as if it were new, then with a revision that
/// does not exist yet. Runs after W6, on a stream no workload reads.
async fn conflicts_rejected<T: Target>(target: &T) -> Result<(), BoxError> {
    let stream = workload_stream("conflict", 0);
    let event = |seq| {
        let id = event_id(case::NULL, 1, seq);
        let data = payload(&id, &stream, seq);
        vec![NewEvent { id, data }]
    };
    target.append(&stream, Expected::NoStream, event(0)).await?;
    let other = target.connect_another().await?;
    for (seq, expected) in [(1, Expected::NoStream), (2, Expected::Exact(1))] {
        if other.append(&stream, expected, event(seq)).await.is_ok() {
            return Err(
                format!("an append to {stream} expecting {expected:?} was accepted").into(),
            );
        }
    }
    let read = other.read_stream(&stream).await?;
    if read.len() != 1 {
        return Err(format!(
            "{stream} holds {} events after the rejected appends, not 1",
            read.len()
        )
        .into());
    }
    Ok(())
}

/// Everything the comparison measured.
#[derive(Debug)]
struct Report {
    machine: Machine,
    dir: PathBuf,
    null: Measured,
    runs: Vec<StoreRun>,
    fsync_after: SyncRate,
    /// Peers not selected by `--peers`.
    left_out: Vec<Peer>,
}

/// A row of the table: how to get the figure from a store's run, and whether
/// more is better (throughput) or less (latency).
struct Row {
    label: &'static str,
    value: fn(&StoreRun) -> Option<f64>,
    shown: fn(&StoreRun) -> Option<String>,
    higher_is_better: bool,
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1_000.0)
}

fn capped(result: &Measured) -> &'static str {
    if result.capped { " (capped)" } else { "" }
}

fn rate(run: &StoreRun, id: &str) -> Option<f64> {
    run.find(id).map(Measured::events_per_second)
}

fn rate_text(run: &StoreRun, id: &str) -> Option<String> {
    run.find(id).map(|result| {
        format!(
            "{}{}",
            thousands(result.events_per_second()),
            capped(result)
        )
    })
}

fn p50(run: &StoreRun, id: &str) -> Option<f64> {
    run.find(id).map(|result| result.latency.p50_us)
}

fn p50_p99(run: &StoreRun, id: &str) -> Option<String> {
    run.find(id).map(|result| {
        format!(
            "{} / {}",
            ms(result.latency.p50_us),
            ms(result.latency.p99_us)
        )
    })
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            label: "fdatasync/s, probe before the store",
            value: |run| run.fsync_before.map(|rate| rate.per_second),
            shown: |run| run.fsync_before.map(|rate| thousands(rate.per_second)),
            higher_is_better: true,
        },
        Row {
            label: "round trip p50 ms",
            value: |run| p50(run, "rtt"),
            shown: |run| p50(run, "rtt").map(|us| format!("{:.3}", us / 1_000.0)),
            higher_is_better: false,
        },
        Row {
            label: "W1 ev/s (1 client)",
            value: |run| rate(run, "W1"),
            shown: |run| rate_text(run, "W1"),
            higher_is_better: true,
        },
        Row {
            label: "fdatasync/s around W1 (mean)",
            value: |run| run.around.w1,
            shown: |run| run.around.w1.map(thousands),
            higher_is_better: true,
        },
        Row {
            label: "W1 ÷ fdatasync/s",
            value: |run| Some(run.find("W1")?.events_per_second() / run.around.w1?),
            shown: |run| {
                let ratio = run.find("W1")?.events_per_second() / run.around.w1?;
                Some(format!("{ratio:.2}x"))
            },
            higher_is_better: true,
        },
        Row {
            label: "W1 p50 / p99 ms",
            value: |run| p50(run, "W1"),
            shown: |run| p50_p99(run, "W1"),
            higher_is_better: false,
        },
        Row {
            label: "W2 ev/s (16 clients)",
            value: |run| rate(run, "W2"),
            shown: |run| rate_text(run, "W2"),
            higher_is_better: true,
        },
        Row {
            label: "W2 ÷ fdatasync/s (around W2)",
            value: |run| Some(run.find("W2")?.events_per_second() / run.around.w2?),
            shown: |run| {
                let ratio = run.find("W2")?.events_per_second() / run.around.w2?;
                Some(format!("{ratio:.2}x"))
            },
            higher_is_better: true,
        },
        Row {
            label: "W2 p50 / p99 ms",
            value: |run| p50(run, "W2"),
            shown: |run| p50_p99(run, "W2"),
            higher_is_better: false,
        },
        Row {
            label: "W3 ev/s (batches of 100)",
            value: |run| rate(run, "W3"),
            shown: |run| rate_text(run, "W3"),
            higher_is_better: true,
        },
        Row {
            label: "W3 batch p50 / p99 ms",
            value: |run| p50(run, "W3"),
            shown: |run| p50_p99(run, "W3"),
            higher_is_better: false,
        },
        Row {
            label: "W4 ev/s (read $all)",
            value: |run| rate(run, "W4"),
            shown: |run| rate_text(run, "W4"),
            higher_is_better: true,
        },
        Row {
            label: "W5 median ms (read 1,000)",
            value: |run| p50(run, "W5"),
            shown: |run| p50(run, "W5").map(ms),
            higher_is_better: false,
        },
        Row {
            label: "W6 append->delivery p50 / p99 ms",
            value: |run| p50(run, "W6"),
            shown: |run| p50_p99(run, "W6"),
            higher_is_better: false,
        },
        Row {
            label: "W6 the append alone p50 ms",
            value: |run| run.find("W6")?.append_latency.map(|append| append.p50_us),
            shown: |run| {
                run.find("W6")?
                    .append_latency
                    .map(|append| ms(append.p50_us))
            },
            higher_is_better: false,
        },
    ]
}

/// How many times better Cairn did than a peer: throughput Cairn ÷ peer,
/// latency peer ÷ Cairn (above 1: Cairn is ahead either way).
fn ratio(cairn: f64, peer: f64, higher_is_better: bool) -> Option<f64> {
    let ratio = if higher_is_better {
        cairn / peer
    } else {
        peer / cairn
    };
    ratio.is_finite().then_some(ratio)
}

/// The report as text: header, the table, the notes per store.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cairn-bench compare, {}", report.machine.date);
    let _ = writeln!(out, "machine: {}", report.machine.summary());
    let _ = writeln!(
        out,
        "stores and probes in: {} ({})",
        report.dir.display(),
        report.machine.filesystem_summary()
    );
    let before: Vec<String> = report
        .runs
        .iter()
        .filter_map(|run| {
            run.fsync_before
                .map(|rate| format!("{} {}", run.store.title(), thousands(rate.per_second)))
        })
        .collect();
    let _ = writeln!(
        out,
        "fdatasync/s (4 KiB append + fdatasync, 2 s probes): before {}; at the end {}",
        before.join(", "),
        thousands(report.fsync_after.per_second)
    );
    let _ = writeln!(
        out,
        "null loop (W1's client loop without the store): {} ev/s",
        thousands(report.null.events_per_second())
    );
    let skipped: Vec<&str> = report
        .runs
        .iter()
        .filter(|run| run.skipped)
        .map(|run| run.store.title())
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            out,
            "SKIPPED, not installed (--skip-missing): {}",
            skipped.join(", ")
        );
    }
    if !report.left_out.is_empty() {
        let names: Vec<&str> = report.left_out.iter().map(|peer| peer.name()).collect();
        let _ = writeln!(out, "left out by --peers: {}", names.join(", "));
    }
    let _ = writeln!(out);

    let cairn = report.runs.iter().find(|run| run.store == Store::Cairn);
    let mut header: Vec<String> = vec!["workload".to_owned()];
    for run in &report.runs {
        header.push(run.store.title().to_owned());
        if run.store != Store::Cairn {
            header.push(format!("Cairn ÷ {}", run.store.title()));
        }
    }
    let mut rows_out = Vec::new();
    for row in rows() {
        let mut cells = vec![row.label.to_owned()];
        let cairn_value = cairn.and_then(row.value);
        for run in &report.runs {
            let cell = if run.error.is_some() && run.results.is_empty() {
                "-".to_owned()
            } else {
                (row.shown)(run).unwrap_or_else(|| "-".to_owned())
            };
            cells.push(cell);
            if run.store != Store::Cairn {
                let shown = match (cairn_value, (row.value)(run)) {
                    (Some(cairn), Some(peer)) if row.label.starts_with("fdatasync") => {
                        // Not a ratio of stores: the disk's drift between them.
                        format!("{:.2} (disk)", cairn / peer)
                    }
                    (Some(cairn), Some(peer)) => ratio(cairn, peer, row.higher_is_better)
                        .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}x")),
                    _ => "-".to_owned(),
                };
                cells.push(shown);
            }
        }
        rows_out.push(cells);
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    out.push_str(&markdown_table_with(&header_refs, &rows_out, &[0]));
    let _ = writeln!(
        out,
        "\nCairn ÷ peer: above 1 means Cairn is ahead (throughput Cairn ÷ peer, latency peer ÷ Cairn).\n"
    );
    out.push_str(&cpu_table(report));
    let _ = writeln!(
        out,
        "\nCPU per event: user + system time over the workload ÷ its events; srv: the server's \
         process and every process below it (PostgreSQL's backends), cli: cairn-bench with W6's \
         subscriber process (/proc/<pid>/stat, 10 ms ticks).\n"
    );
    for run in &report.runs {
        let _ = writeln!(
            out,
            "- {}: {}; W6 live delivery: {}{}",
            run.store.title(),
            run.store.settings(),
            run.store.live(),
            run.error
                .as_ref()
                .map(|error| format!(". {error}"))
                .unwrap_or_default()
        );
    }
    out
}

/// The second table: per store and workload, the figure and the CPU it cost
/// per event on each side.
fn cpu_table(report: &Report) -> String {
    let mut rows = Vec::new();
    for run in &report.runs {
        for result in &run.results {
            if result.events == 0 {
                continue;
            }
            let cpu = run.cpu(&result.id).copied().unwrap_or_default();
            let total = cpu
                .server_us_per_event()
                .zip(cpu.client_us_per_event())
                .map(|(server, client)| server + client);
            rows.push(vec![
                run.store.title().to_owned(),
                result.id.clone(),
                format!(
                    "{}{}",
                    thousands(result.events_per_second()),
                    capped(result)
                ),
                CpuUse::cell(cpu.server_us_per_event()),
                CpuUse::cell(cpu.client_us_per_event()),
                CpuUse::cell(total),
            ]);
        }
    }
    markdown_table_with(
        &[
            "store",
            "workload",
            "ev/s",
            "srv µs/ev",
            "cli µs/ev",
            "both µs/ev",
        ],
        &rows,
        &[0, 1],
    )
}

/// The report as JSON.
fn to_json(report: &Report) -> Value {
    json!({
        "benchmark": "cairn-bench compare",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": report.machine.to_json(),
        "dir": report.dir.display().to_string(),
        "null_loop": report.null.to_json(),
        "fdatasync_at_the_end": report.fsync_after.to_json(),
        "peers_left_out": report.left_out.iter().map(|peer| peer.name()).collect::<Vec<_>>(),
        "stores": report.runs.iter().map(|run| json!({
            "store": run.store.title(),
            "settings": run.store.settings(),
            "durable": match run.store { Store::Cairn => true, Store::Peer(peer) => peer.durable() },
            "live_delivery": run.store.live(),
            "fdatasync_before": run.fsync_before.map(SyncRate::to_json),
            "fdatasync_before_per_second": run.fsync_before.map(|rate| round(rate.per_second)),
            "fdatasync_around_w1_per_second": run.around.w1.map(round),
            "fdatasync_around_w2_per_second": run.around.w2.map(round),
            "error": run.error,
            "skipped": run.skipped,
            "workloads": run
                .results
                .iter()
                .map(|result| with_cpu(result.to_json(), run.cpu(&result.id)))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_peers_are_named_with_their_reason_and_the_way_out() {
        let text = missing_error(&[
            (Peer::Redis, "redis-server not installed".to_owned()),
            (Peer::Umadb, "built without UmaDB's client".to_owned()),
        ]);
        assert!(
            text.contains("\n  redis: redis-server not installed"),
            "{text}"
        );
        assert!(
            text.contains("\n  umadb: built without UmaDB's client"),
            "{text}"
        );
        assert!(text.contains("--skip-missing"), "{text}");
        assert!(text.contains("bench/peers.sh install"), "{text}");
    }

    #[test]
    fn ratios_say_how_far_ahead_cairn_is() {
        assert_eq!(ratio(3_000.0, 1_000.0, true), Some(3.0));
        assert_eq!(ratio(2.0, 4.0, false), Some(2.0));
        assert_eq!(ratio(1.0, 0.0, false), Some(0.0));
        assert_eq!(ratio(1.0, 0.0, true), None);
    }
}
