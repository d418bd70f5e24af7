//! `cairn-bench run`: the workloads W1-W6 of `shared/WORKLOAD.md` against a
//! Cairn server, with the null loop, a trivial round trip, the disk's
//! fdatasync rate before and after, and the ratios to the targets.
//!
//! Without `--addr` it starts the `cairn` binary on a fresh data directory and
//! a free loopback port and stops it at the end. The workloads run in
//! WORKLOAD.md's order on that one store, which starts empty: W4 and W5 read
//! what W1-W3 wrote. When `--only` leaves out a workload whose data a later one
//! reads, the same streams and counts are written untimed first.
//!
//! Each workload's row also says the CPU it cost per event (see
//! [`crate::cpu`]): the server's (only for a server this run started: with
//! `--addr` its process is unknown) and this client's, W6's subscriber process
//! included.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::BoxError;
use crate::cpu::{CpuMeter, CpuUse, with_cpu};
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::report::{markdown_table_with, thousands};
use crate::server;
use crate::stats::round;
use crate::target::Cairn;
use crate::targets::{Verdict, verdicts};
use crate::w6;
use crate::workloads::{self, Measured};

/// Options of `cairn-bench run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// Run against this server (it must hold no events) instead of starting one.
    #[arg(long, value_name = "URL")]
    addr: Option<String>,

    /// Start the server with `--durability unsynced`: acknowledged before
    /// fsync, NOT durable. (With --addr the server's own setting applies.)
    #[arg(long)]
    unsynced: bool,

    /// Send every append over one streaming `AppendStream` call that all of a
    /// run's clients share (W2's 16 clients then use one connection).
    #[arg(long)]
    streaming: bool,

    /// Run only these workloads, e.g. `w1,w4` (the null loop and the round
    /// trip always run).
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,...")]
    only: Vec<String>,

    /// Also write every figure to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Directory for the server's fresh data directory (removed afterwards) and
    /// the fdatasync probe. It must be on the disk to measure, not tmpfs.
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
}

/// The workloads, in run order.
const WORKLOADS: [&str; 6] = ["W1", "W2", "W3", "W4", "W5", "W6"];

/// Everything one run measured.
#[derive(Debug)]
struct RunReport {
    machine: Machine,
    /// Where the data and the probe were.
    dir: PathBuf,
    /// The server: version and durability from `Server.Info`, address, and
    /// whether this run started it.
    version: String,
    durability: String,
    address: String,
    started_server: bool,
    /// Appends went over one shared `AppendStream` call (`--streaming`).
    streaming: bool,
    fsync_before: SyncRate,
    fsync_after: SyncRate,
    /// Workloads written untimed because `--only` left them out.
    filled: Vec<String>,
    results: Vec<Measured>,
    /// fdatasync/s just before and after W1 and W2, which are compared with
    /// the disk: its rate drifts within minutes.
    around: Vec<(String, (f64, f64))>,
    /// The CPU each workload of `results` cost, by workload id.
    cpu: Vec<(String, CpuUse)>,
}

impl RunReport {
    /// The rate durable figures are compared with: the mean of the probes.
    fn fsync_reference(&self) -> f64 {
        (self.fsync_before.per_second + self.fsync_after.per_second) / 2.0
    }

    fn durable(&self) -> bool {
        self.durability == "sync"
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let own: Vec<(String, f64)> = self
            .around
            .iter()
            .map(|(id, (before, after))| (id.clone(), (before + after) / 2.0))
            .collect();
        verdicts(&self.results, self.fsync_reference(), &own, self.durable())
    }

    /// The CPU workload `id` cost.
    fn cpu(&self, id: &str) -> Option<&CpuUse> {
        self.cpu
            .iter()
            .find(|(own, _)| own == id)
            .map(|(_, cpu)| cpu)
    }

    /// The probes around workload `id`, if it had its own.
    fn around(&self, id: &str) -> Option<(f64, f64)> {
        self.around
            .iter()
            .find(|(own, _)| own == id)
            .map(|(_, rates)| *rates)
    }
}

/// The selected workloads, upper-case, validated.
pub(crate) fn selection(only: &[String]) -> Result<Vec<&'static str>, BoxError> {
    if only.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    let mut selected = Vec::new();
    for name in only {
        let name = name.trim().to_uppercase();
        let known = WORKLOADS
            .iter()
            .find(|known| **known == name)
            .ok_or_else(|| format!("unknown workload {name:?} in --only (W1..W6)"))?;
        selected.push(*known);
    }
    Ok(WORKLOADS
        .into_iter()
        .filter(|known| selected.contains(known))
        .collect())
}

/// Which of W1-W3 must be written untimed because a selected W4/W5 reads them.
fn fills_needed(selected: &[&str]) -> Vec<u32> {
    let mut needed = Vec::new();
    for (number, workload) in [(1, "W1"), (2, "W2"), (3, "W3")] {
        let read_by_w4 = selected.contains(&"W4");
        let read_by_w5 = number == 3 && selected.contains(&"W5");
        if (read_by_w4 || read_by_w5) && !selected.contains(&workload) {
            needed.push(number);
        }
    }
    needed
}

/// Runs `cairn-bench run`.
pub(crate) async fn run(args: &RunArgs) -> Result<(), BoxError> {
    let selected = selection(&args.only)?;
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
            dir.clone()
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
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-run-")
        .tempdir_in(&dir)?;

    eprintln!("measuring the fdatasync rate in {} ...", dir.display());
    let fsync_before = disk::fdatasync_rate(scratch.path(), probe)?;
    eprintln!("  {:.0} fdatasync/s", fsync_before.per_second);

    let (address, mut server) = server::given_or_started(
        args.addr.as_deref(),
        args.server_bin.as_deref(),
        (args.unsynced, &[]),
        scratch.path(),
    )
    .await?;

    let target = if args.streaming {
        Cairn::connect_streaming(&address).await?
    } else {
        Cairn::connect(&address).await?
    };
    let info = target.client().info().await?;
    if info.head_position != 0 {
        return Err(format!(
            "{address} already holds {} events; the workloads need an empty store",
            info.head_position
        )
        .into());
    }
    eprintln!(
        "server {address}: cairn {}, durability {}",
        info.version, info.durability
    );

    let meter = CpuMeter::new(server.as_ref().and_then(server::ServerProcess::pid));
    let (results, filled, around, cpu) = workloads_in_order(
        &target,
        &address,
        &selected,
        cap,
        (scratch.path(), probe, meter),
    )
    .await?;

    eprintln!("measuring the fdatasync rate again ...");
    let fsync_after = disk::fdatasync_rate(scratch.path(), probe)?;
    if let Some(server) = server.as_mut()
        && !server.stop()?
    {
        eprintln!("warning: the server did not stop on SIGTERM and was killed");
    }

    let report = RunReport {
        machine,
        dir,
        version: info.version,
        durability: info.durability,
        address,
        started_server: server.is_some(),
        streaming: args.streaming,
        fsync_before,
        fsync_after,
        filled,
        results,
        around,
        cpu,
    };
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json(&report))? + "\n")?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// Runs the null loop, the round trip and the selected workloads in order.
/// W1 and W2, which are compared with the disk, get an fdatasync probe of
/// their own just before and after (`probe`: directory and length), and
/// every workload CPU samples just before and after it, inside the probes.
/// Returns the results, the workloads written untimed instead, the probes and
/// the CPU.
pub(crate) async fn workloads_in_order(
    target: &Cairn,
    address: &str,
    selected: &[&str],
    cap: Duration,
    probe: (&Path, Duration, CpuMeter),
) -> Result<Outcome, BoxError> {
    let (probe_dir, probe_length, meter) = probe;
    let mut around = Vec::new();
    let mut cpu = Vec::new();
    let mut results = Vec::new();
    let mut filled = Vec::new();
    let mut record = |result: Measured| {
        eprintln!(
            "  {}: {} events in {:.2} s, {:.0} ev/s, p50 {:.3} ms, p99 {:.3} ms{}",
            result.id,
            result.events,
            result.seconds,
            result.events_per_second(),
            result.latency.p50_us / 1_000.0,
            result.latency.p99_us / 1_000.0,
            if result.capped { " (capped)" } else { "" }
        );
        results.push(result);
    };
    eprintln!("null loop ...");
    record(workloads::null_loop());
    eprintln!("round trips ...");
    let sample = meter.sample();
    let rtt = workloads::round_trips(target).await?;
    cpu.push((rtt.id.clone(), meter.since(sample, rtt.events)));
    record(rtt);

    let fills = fills_needed(selected);
    for workload in WORKLOADS {
        let number = u32::from(workload.as_bytes()[1] - b'0');
        if fills.contains(&number) {
            eprintln!("writing W{number}'s streams untimed (W4/W5 read them) ...");
            workloads::fill(target, number).await?;
            filled.push(workload.to_owned());
            continue;
        }
        if !selected.contains(&workload) {
            continue;
        }
        eprintln!("{workload} ...");
        let compared_with_disk = matches!(workload, "W1" | "W2");
        let before = if compared_with_disk {
            Some(disk::fdatasync_rate(probe_dir, probe_length)?.per_second)
        } else {
            None
        };
        let sample = meter.sample();
        let result = match workload {
            "W1" => workloads::w1(target, cap).await?,
            "W2" => workloads::w2(target, cap).await?,
            "W3" => workloads::w3(target, cap).await?,
            "W4" => {
                let head = target.client().info().await?.head_position;
                workloads::w4(target, head, cap).await?
            }
            "W5" => workloads::w5(target).await?,
            _ => w6::w6(target, address).await?,
        };
        let used = meter.since(sample, result.events);
        eprintln!(
            "  CPU µs/ev: server {}, client {}",
            CpuUse::cell(used.server_us_per_event()),
            CpuUse::cell(used.client_us_per_event())
        );
        cpu.push((result.id.clone(), used));
        if let Some(before) = before {
            let after = disk::fdatasync_rate(probe_dir, probe_length)?.per_second;
            around.push((workload.to_owned(), (before, after)));
        }
        record(result);
    }
    Ok((results, filled, around, cpu))
}

/// What [`workloads_in_order`] returns: results, fills, probes around W1/W2,
/// CPU per workload.
pub(crate) type Outcome = (
    Vec<Measured>,
    Vec<String>,
    Vec<(String, (f64, f64))>,
    Vec<(String, CpuUse)>,
);

/// Milliseconds from microseconds, three decimals.
fn ms(us: f64) -> String {
    format!("{:.3}", us / 1_000.0)
}

/// The report as text: header, one table of figures, one of targets.
fn table(report: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cairn-bench run, {}", report.machine.date);
    let _ = writeln!(out, "machine: {}", report.machine.summary());
    let _ = writeln!(
        out,
        "server: cairn {} at {} ({}), durability {}{}",
        report.version,
        report.address,
        if report.started_server {
            "started by this run"
        } else {
            "given with --addr"
        },
        report.durability,
        if report.durable() {
            " (acknowledged after fdatasync)"
        } else {
            " (NOT durable: acknowledged before fsync)"
        }
    );
    if report.streaming {
        let _ = writeln!(
            out,
            "appends: --streaming, every client's appends over ONE AppendStream call on one connection"
        );
    }
    let _ = writeln!(
        out,
        "data and probe in: {} ({})",
        report.dir.display(),
        report.machine.filesystem_summary()
    );
    let _ = writeln!(
        out,
        "fdatasync (4 KiB append + fdatasync): {} /s before (p50 {} ms), {} /s after (p50 {} ms)",
        thousands(report.fsync_before.per_second),
        ms(report.fsync_before.latency.p50_us),
        thousands(report.fsync_after.per_second),
        ms(report.fsync_after.latency.p50_us),
    );
    if !report.filled.is_empty() {
        let _ = writeln!(
            out,
            "written untimed for W4/W5 (not selected): {}",
            report.filled.join(", ")
        );
    }
    let _ = writeln!(out);

    let header = [
        "workload",
        "events",
        "ops",
        "s",
        "ev/s",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "srv µs/ev",
        "cli µs/ev",
        "note",
    ];
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|result| {
            let note = match (result.id.as_str(), result.append_latency) {
                ("W6", Some(append)) => format!(
                    "latency = append -> delivery; the append alone: p50 {} / p99 {} ms",
                    ms(append.p50_us),
                    ms(append.p99_us)
                ),
                ("W5", _) => "p50 = median read".to_owned(),
                ("W3", _) => "latency per batch of 100".to_owned(),
                ("W4", _) => "latency per page of 1,000".to_owned(),
                ("rtt", _) => "Server.Info".to_owned(),
                ("null", _) => "no store call".to_owned(),
                _ => report
                    .around(&result.id)
                    .map(|(before, after)| {
                        format!(
                            "fdatasync {} /s before, {} /s after",
                            thousands(before),
                            thousands(after)
                        )
                    })
                    .unwrap_or_default(),
            };
            vec![
                format!(
                    "{}{}",
                    result.id,
                    if result.capped { " (capped)" } else { "" }
                ),
                thousands(result.events as f64),
                thousands(result.operations as f64),
                format!("{:.2}", result.seconds),
                thousands(result.events_per_second()),
                thousands(result.operations_per_second()),
                ms(result.latency.p50_us),
                ms(result.latency.p99_us),
                CpuUse::cell(report.cpu(&result.id).and_then(CpuUse::server_us_per_event)),
                CpuUse::cell(report.cpu(&result.id).and_then(CpuUse::client_us_per_event)),
                note,
            ]
        })
        .collect();
    out.push_str(&markdown_table_with(&header, &rows, &[0, header.len() - 1]));
    let _ = writeln!(
        out,
        "\nsrv / cli µs/ev: CPU (user + system) over the workload ÷ its events, of the server \
         process{} and of cairn-bench with W6's subscriber process (/proc/<pid>/stat, 10 ms ticks).",
        if report.started_server {
            ""
        } else {
            " (unknown with --addr)"
        }
    );

    let verdicts = report.verdicts();
    if !verdicts.is_empty() {
        let _ = writeln!(
            out,
            "\nAgainst WORKLOAD.md's targets (fdatasync reference: W1 and W2 the mean of the probes \
             around each, others the mean of the run's two probes, {:.0}/s):\n",
            report.fsync_reference()
        );
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|verdict| {
                vec![
                    verdict.workload.to_owned(),
                    verdict.measure.to_owned(),
                    verdict.shown.clone(),
                    verdict.goal.clone(),
                    verdict.met_text().to_owned(),
                ]
            })
            .collect();
        out.push_str(&markdown_table_with(
            &["workload", "measure", "value", "goal", "met"],
            &rows,
            &[0, 1, 3, 4],
        ));
    }
    out
}

/// The report as JSON.
fn json(report: &RunReport) -> Value {
    json!({
        "benchmark": "cairn-bench run",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": report.machine.to_json(),
        "dir": report.dir.display().to_string(),
        "server": {
            "version": report.version,
            "durability": report.durability,
            "address": report.address,
            "started_by_run": report.started_server,
        },
        "streaming": report.streaming,
        "fdatasync_before": report.fsync_before.to_json(),
        "fdatasync_after": report.fsync_after.to_json(),
        "fdatasync_reference_per_second": round(report.fsync_reference()),
        "filled_untimed": report.filled,
        "workloads": report.results.iter().map(|result| {
            let mut figures = with_cpu(result.to_json(), report.cpu(&result.id));
            if let Some((before, after)) = report.around(&result.id) {
                figures["fdatasync_around"] = json!({
                    "before_per_second": round(before),
                    "after_per_second": round(after),
                });
            }
            figures
        }).collect::<Vec<_>>(),
        "targets": report.verdicts().iter().map(Verdict::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections() {
        assert_eq!(selection(&[]).expect("all"), WORKLOADS.to_vec());
        let only = ["w4".to_owned(), "W1".to_owned()];
        assert_eq!(selection(&only).expect("two"), vec!["W1", "W4"]);
        assert!(selection(&["w7".to_owned()]).is_err());
    }

    #[test]
    fn fills_for_reads() {
        assert_eq!(fills_needed(&WORKLOADS), Vec::<u32>::new());
        assert_eq!(fills_needed(&["W4"]), vec![1, 2, 3]);
        assert_eq!(fills_needed(&["W1", "W4"]), vec![2, 3]);
        assert_eq!(fills_needed(&["W5"]), vec![3]);
        assert_eq!(fills_needed(&["W6"]), Vec::<u32>::new());
    }
}
