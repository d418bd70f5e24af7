//! `cairn-bench cluster-run`: W1-W3 of `shared/WORKLOAD.md` against one
//! `cairn` node, then against a three-node cluster (issue 17,
//! `server/CLUSTER.md`), in one invocation, printed side by side with the
//! cluster ÷ single ratio.
//!
//! Both phases run what `cairn-bench run` runs for W1-W3, through the same
//! code ([`run::workloads_in_order`] over a [`Cairn`] target): the null loop,
//! the round trip, then the selected workloads with their parameters, an
//! fdatasync probe just before and after W1 and W2, and the CPU each cost.
//! Each phase starts its servers fresh on empty data directories under one
//! scratch directory (removed at the end) and stops them before the next
//! phase starts, so the two never share the disk or the CPUs:
//!
//! - single: one `cairn --durability sync`, as `run` starts it;
//! - cluster: three nodes started as `cluster-crash` starts them
//!   ([`Cluster`]: loopback, `--durability sync`, the same `--cluster-peers`).
//!   Every append goes to the leader, found first by [`find_leader`], whose
//!   probe writes no event, so the cluster starts as empty as the single node.
//!
//! The workloads do not follow a leader change: an append refused with
//! `NOT_LEADER` ends the command with every node's log, because a leader
//! change under a benchmark is a finding, not noise to retry over. The
//! cluster's server CPU is the leader's process only (each follower also
//! writes every event, on its own process).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::{Client, Error, EventData, ExpectedRevision};
use serde_json::{Value, json};

use crate::BoxError;
use crate::cluster_crash::{Cluster, NODES, Route, outcome_unknown};
use crate::cpu::{CpuMeter, CpuUse, with_cpu};
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::report::{markdown_table_with, thousands};
use crate::run;
use crate::server::{self, Durability, ServerProcess, log_tail};
use crate::stats::{round, round_to};
use crate::target::Cairn;
use crate::workload::{EVENT_TYPE, event_id, payload};
use crate::workloads::Measured;

/// The workloads this command can run, in run order.
const WORKLOADS: [&str; 3] = ["W1", "W2", "W3"];
/// The rows of the side-by-side table, in order: the protocol floor, then
/// the workloads (the null loop never reaches a server and is only in the
/// JSON).
const COMPARED: [&str; 4] = ["rtt", "W1", "W2", "W3"];
/// How long a fresh cluster may take to elect a leader that commits.
const LEADER_DEADLINE: Duration = Duration::from_secs(30);
/// One probe attempt's bound; one without an answer moves to the next node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between probe attempts (an election takes 1-2 s).
const PROBE_PAUSE: Duration = Duration::from_millis(50);
/// The stream the leader probe names. It never exists: the probe expects
/// revision 0 of it, so the leader refuses the append and nothing is written.
const PROBE_STREAM: &str = "cluster-run-probe";
/// The event-id "case" of the probe's event (never stored).
const PROBE_CASE: u32 = 998;
/// Lines of the single node's log shown with a failure.
const LOG_LINES: usize = 40;

/// Options of `cairn-bench cluster-run`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterRunArgs {
    /// Run only these of W1-W3, e.g. `w1,w3` (the null loop and the round
    /// trip always run).
    #[arg(long, value_delimiter = ',', value_name = "W1,W2,W3")]
    only: Vec<String>,

    /// Stop a workload after this many seconds (WORKLOAD.md caps each at 300).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    max_seconds: f64,

    /// Length of each fdatasync probe.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fsync_seconds: f64,

    /// Directory for the nodes' fresh data directories and logs (removed
    /// afterwards) and the fdatasync probe. It must be on the disk to
    /// measure, not tmpfs. Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Also write every figure to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// A flag for every cluster node's command line (repeatable), such as
    /// `--node-arg=--cluster-pipeline-depth=8`; the single node gets none.
    #[arg(long = "node-arg", value_name = "FLAG", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

/// The selected workloads (`run`'s parsing), only W1-W3, in run order.
fn selection(only: &[String]) -> Result<Vec<&'static str>, BoxError> {
    if only.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    let selected = run::selection(only)?;
    if let Some(other) = selected.iter().find(|id| !WORKLOADS.contains(id)) {
        return Err(format!("cluster-run measures W1-W3 only, not {other}").into());
    }
    Ok(selected)
}

/// What one phase measured: `run`'s figures against one target.
#[derive(Debug)]
struct Phase {
    /// The address every call went to (in the cluster, the leader's).
    address: String,
    /// The server's version, from `Server.Info`.
    version: String,
    /// The server's durability, from `Server.Info` (`sync`: acknowledged
    /// after fdatasync).
    durability: String,
    /// The disk's fdatasync rate before the phase's servers are measured.
    fsync_before: SyncRate,
    /// And after the phase's last workload.
    fsync_after: SyncRate,
    /// The null loop, the round trip and the workloads, in run order.
    results: Vec<Measured>,
    /// fdatasync/s just before and after W1 and W2, by workload id.
    around: Vec<(String, (f64, f64))>,
    /// The CPU each result cost, by id.
    cpu: Vec<(String, CpuUse)>,
}

impl Phase {
    /// The result `id`, if it ran.
    fn result(&self, id: &str) -> Option<&Measured> {
        self.results.iter().find(|result| result.id == id)
    }

    /// The probes around workload `id`, if it had its own.
    fn around(&self, id: &str) -> Option<(f64, f64)> {
        self.around
            .iter()
            .find(|(own, _)| own == id)
            .map(|(_, rates)| *rates)
    }

    /// The phase as JSON: address, probes, and every result as `run`
    /// writes it (its CPU, and the probes around it when it had them).
    fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .results
            .iter()
            .map(|result| {
                let cpu = self
                    .cpu
                    .iter()
                    .find(|(id, _)| *id == result.id)
                    .map(|(_, cpu)| cpu);
                let mut figures = with_cpu(result.to_json(), cpu);
                if let Some((before, after)) = self.around(&result.id) {
                    figures["fdatasync_around"] = json!({
                        "before_per_second": round(before),
                        "after_per_second": round(after),
                    });
                }
                figures
            })
            .collect();
        json!({
            "address": self.address,
            "version": self.version,
            "durability": self.durability,
            "fdatasync_before": self.fsync_before.to_json(),
            "fdatasync_after": self.fsync_after.to_json(),
            "workloads": results,
        })
    }
}

/// Runs the phase against the server at `address`, which must hold no
/// events; `server_pid` is the process whose CPU counts as the server's.
/// The fdatasync probes run in `probe`'s directory, for its length.
async fn measure(
    address: &str,
    server_pid: Option<u32>,
    (selected, cap): (&[&str], Duration),
    (probe_dir, probe_length): (&Path, Duration),
) -> Result<Phase, BoxError> {
    eprintln!(
        "measuring the fdatasync rate in {} ...",
        probe_dir.display()
    );
    let fsync_before = disk::fdatasync_rate(probe_dir, probe_length)?;
    eprintln!("  {:.0} fdatasync/s", fsync_before.per_second);
    let target = Cairn::connect(address).await?;
    let info = target.client().info().await?;
    if info.head_position != 0 {
        return Err(format!(
            "{address} already holds {} events; the workloads need an empty store",
            info.head_position
        )
        .into());
    }
    let meter = CpuMeter::new(server_pid);
    let (results, _filled, around, cpu) = run::workloads_in_order(
        &target,
        address,
        selected,
        cap,
        (probe_dir, probe_length, meter),
    )
    .await?;
    eprintln!("measuring the fdatasync rate again ...");
    let fsync_after = disk::fdatasync_rate(probe_dir, probe_length)?;
    Ok(Phase {
        address: address.to_owned(),
        version: info.version,
        durability: info.durability,
        fsync_before,
        fsync_after,
        results,
        around,
        cpu,
    })
}

/// The node that leads and commits: a probe append to [`PROBE_STREAM`]
/// expecting revision 0 (the stream never exists) goes round the nodes
/// until one refuses it with a wrong expected revision. Only a leader's
/// committer checks expectations (a follower answers `NOT_LEADER` before
/// looking at the request), and it answers only once raft committed the
/// failed check, so the refusal proves the node leads and a majority
/// follows it; no event is written (the raft log holds an entry with the
/// failed check, `$all` stays empty). A `NotLeader` naming the leader is
/// followed; any other outcome a fresh cluster may give (no leader yet) moves
/// to the next node, until [`LEADER_DEADLINE`].
async fn find_leader(route: &Route) -> Result<usize, BoxError> {
    let deadline = Instant::now() + LEADER_DEADLINE;
    let mut node = 0;
    let mut attempt = 0u64;
    loop {
        let id = event_id(PROBE_CASE, 0, attempt);
        let event = EventData::json_text(EVENT_TYPE, payload(&id, PROBE_STREAM, attempt)).id(id);
        let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
            let client = Client::connect(route.urls[node].clone()).await?;
            client
                .append(PROBE_STREAM, ExpectedRevision::Exact(0), vec![event])
                .await
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "no answer within {PROBE_TIMEOUT:?}"
            )))
        });
        let error = match answer {
            Err(Error::WrongExpectedRevision { .. }) => return Ok(node),
            Ok(result) => {
                return Err(format!(
                    "node {} acknowledged the probe append to {PROBE_STREAM} expecting \
                     revision 0 ({result:?}), a stream that does not exist",
                    node + 1
                )
                .into());
            }
            Err(error) if !outcome_unknown(&error) => {
                return Err(format!(
                    "node {} answered the leader probe with {error}, which no election explains",
                    node + 1
                )
                .into());
            }
            Err(error) => error,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no node committed as leader within {LEADER_DEADLINE:?}; node {} answered \
                 last: {error}",
                node + 1
            )
            .into());
        }
        node = route.next_node(node, &error);
        attempt += 1;
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Runs `cairn-bench cluster-run`.
pub(crate) async fn run(args: &ClusterRunArgs) -> Result<(), BoxError> {
    let selected = selection(&args.only)?;
    let cap = Duration::try_from_secs_f64(args.max_seconds)
        .ok()
        .filter(|cap| !cap.is_zero())
        .ok_or("--max-seconds must be a positive number")?;
    let probe_length = Duration::try_from_secs_f64(args.fsync_seconds)
        .ok()
        .filter(|probe| !probe.is_zero())
        .ok_or("--fsync-seconds must be a positive number")?;
    let binary = server::server_binary(args.server_bin.as_deref())?;
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
        .prefix("cairn-bench-cluster-run-")
        .tempdir_in(&dir)?;
    let workloads = (selected.as_slice(), cap);
    let probe = (scratch.path(), probe_length);

    let single_dir = scratch.path().join("single");
    std::fs::create_dir_all(&single_dir)?;
    let single_log = single_dir.join("server.log");
    eprintln!("single node: starting {} ...", binary.display());
    let mut server = ServerProcess::start(
        &binary,
        &single_dir.join("data"),
        Durability::Sync,
        &single_log,
    )
    .await?;
    let single = measure(server.address(), server.pid(), workloads, probe).await;
    if !server.stop()? {
        eprintln!("warning: the single node did not stop on SIGTERM and was killed");
    }
    let single = single.map_err(|problem| {
        format!(
            "single node: {problem}\n--- its log ---\n{}",
            log_tail(&single_log, LOG_LINES)
        )
    })?;

    let cluster_dir = scratch.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir)?;
    let mut cluster = Cluster::new(binary, &cluster_dir)?.with_node_args(&args.node_args);
    eprintln!(
        "cluster: starting {NODES} nodes (with [{}]) ...",
        args.node_args.join(" ")
    );
    cluster.start_all().await?;
    let outcome: Result<(usize, Phase), BoxError> = async {
        let route = Route::new(&cluster);
        let leader = find_leader(&route).await?;
        eprintln!("node {} leads ({})", leader + 1, route.urls[leader]);
        let pid = cluster.processes[leader]
            .as_ref()
            .and_then(ServerProcess::pid);
        let phase = measure(&route.urls[leader], pid, workloads, probe).await?;
        Ok((leader, phase))
    }
    .await;
    let (leader, clustered) = match outcome {
        Ok(measured) => {
            cluster.stop_all()?;
            measured
        }
        Err(problem) => {
            let logs = cluster.log_tails();
            let _ = cluster.stop_all();
            return Err(format!("cluster: {problem}\n{logs}").into());
        }
    };

    let report = Report {
        machine,
        dir,
        single,
        leader,
        cluster: clustered,
    };
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&to_json(&report))? + "\n",
        )?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// Everything one invocation measured.
#[derive(Debug)]
struct Report {
    /// Where it ran.
    machine: Machine,
    /// Where the data directories and the probes were.
    dir: PathBuf,
    /// The single node's figures.
    single: Phase,
    /// The cluster's leader while it was measured (index; node id - 1).
    leader: usize,
    /// The cluster's figures, measured through its leader.
    cluster: Phase,
}

/// One row of the side-by-side table: a result that ran in both phases.
#[derive(Debug, Clone, PartialEq)]
struct Compared {
    /// `rtt`, `W1`, ...
    id: &'static str,
    /// What the rates count: `events`, or `calls` for the round trip
    /// (which has none).
    unit: &'static str,
    /// The single node's rate, `unit` per second.
    single_per_second: f64,
    /// The cluster's rate, `unit` per second.
    cluster_per_second: f64,
    /// cluster ÷ single, of the rates.
    ratio: f64,
    /// The single node's p50 and p99 latency, µs, per operation (append,
    /// batch of 100, call).
    single_latency_us: (f64, f64),
    /// The cluster's, likewise.
    cluster_latency_us: (f64, f64),
    /// Either phase stopped at `--max-seconds` before finishing.
    capped: bool,
}

/// The rows of [`COMPARED`] that ran in both phases.
fn compared(single: &Phase, cluster: &Phase) -> Vec<Compared> {
    COMPARED
        .iter()
        .filter_map(|&id| {
            let (one, three) = (single.result(id)?, cluster.result(id)?);
            // The round trip moves no events: its rate is in calls.
            let (unit, rate): (&str, fn(&Measured) -> f64) = if one.events == 0 {
                ("calls", Measured::operations_per_second)
            } else {
                ("events", Measured::events_per_second)
            };
            Some(Compared {
                id,
                unit,
                single_per_second: rate(one),
                cluster_per_second: rate(three),
                ratio: rate(three) / rate(one).max(f64::MIN_POSITIVE),
                single_latency_us: (one.latency.p50_us, one.latency.p99_us),
                cluster_latency_us: (three.latency.p50_us, three.latency.p99_us),
                capped: one.capped || three.capped,
            })
        })
        .collect()
}

/// Milliseconds from microseconds, three decimals.
fn ms(us: f64) -> String {
    format!("{:.3}", us / 1_000.0)
}

/// The probes of a phase, `before -> after`, fdatasync/s.
fn probes(phase: &Phase) -> String {
    format!(
        "fdatasync {} /s before, {} /s after",
        thousands(phase.fsync_before.per_second),
        thousands(phase.fsync_after.per_second)
    )
}

/// The report as text: header, then one side-by-side table.
fn table(report: &Report) -> String {
    let (single, cluster) = (&report.single, &report.cluster);
    let mut out = String::new();
    let _ = writeln!(out, "cairn-bench cluster-run, {}", report.machine.date);
    let _ = writeln!(out, "machine: {}", report.machine.summary());
    let _ = writeln!(
        out,
        "server: cairn {}, durability {} (single) / {} (cluster leader); every node started \
         fresh by this run",
        single.version, single.durability, cluster.durability
    );
    let _ = writeln!(
        out,
        "single: one node at {}; {}",
        single.address,
        probes(single)
    );
    let _ = writeln!(
        out,
        "cluster: {NODES} nodes on loopback, node {} leads, every call sent to it ({}); an \
         append is acknowledged once a majority has it durable; {}",
        report.leader + 1,
        cluster.address,
        probes(cluster)
    );
    let _ = writeln!(
        out,
        "data and probes in: {} ({})\n",
        report.dir.display(),
        report.machine.filesystem_summary()
    );

    let header = [
        "workload",
        "single /s",
        "cluster /s",
        "cluster ÷ single",
        "single p50 ms",
        "cluster p50 ms",
        "single p99 ms",
        "cluster p99 ms",
        "fdatasync/s around (single; cluster)",
    ];
    let around = |phase: &Phase, id: &str| {
        phase.around(id).map_or_else(
            || "-".to_owned(),
            |(before, after)| format!("{} -> {}", thousands(before), thousands(after)),
        )
    };
    let rows: Vec<Vec<String>> = compared(single, cluster)
        .iter()
        .map(|row| {
            let note = if single.around(row.id).is_some() || cluster.around(row.id).is_some() {
                format!("{}; {}", around(single, row.id), around(cluster, row.id))
            } else {
                String::new()
            };
            vec![
                format!(
                    "{} ({}/s){}",
                    row.id,
                    row.unit,
                    if row.capped { " (capped)" } else { "" }
                ),
                thousands(row.single_per_second),
                thousands(row.cluster_per_second),
                format!("{:.2}x", row.ratio),
                ms(row.single_latency_us.0),
                ms(row.cluster_latency_us.0),
                ms(row.single_latency_us.1),
                ms(row.cluster_latency_us.1),
                note,
            ]
        })
        .collect();
    out.push_str(&markdown_table_with(&header, &rows, &[0, header.len() - 1]));
    let _ = write!(
        out,
        "\nWorkloads as `cairn-bench run` defines them (W3: latency per batch of 100; rtt: \
         Server.Info, the protocol floor). A capped row's rates are over the time it ran. The \
         null loop and CPU per event (the cluster's: the leader's process only) are in the JSON."
    );
    out
}

/// The report as JSON.
fn to_json(report: &Report) -> Value {
    let comparison: Vec<Value> = compared(&report.single, &report.cluster)
        .iter()
        .map(|row| {
            json!({
                "id": row.id,
                "unit": row.unit,
                "single_per_second": round(row.single_per_second),
                "cluster_per_second": round(row.cluster_per_second),
                "cluster_over_single": round_to(row.ratio, 3),
                "single_latency_ms": {
                    "p50": round_to(row.single_latency_us.0 / 1_000.0, 3),
                    "p99": round_to(row.single_latency_us.1 / 1_000.0, 3),
                },
                "cluster_latency_ms": {
                    "p50": round_to(row.cluster_latency_us.0 / 1_000.0, 3),
                    "p99": round_to(row.cluster_latency_us.1 / 1_000.0, 3),
                },
                "capped": row.capped,
            })
        })
        .collect();
    let mut cluster = report.cluster.to_json();
    cluster["nodes"] = json!(NODES);
    cluster["leader_node_id"] = json!(report.leader + 1);
    cluster["server_cpu"] = json!("the leader's process only");
    json!({
        "benchmark": "cairn-bench cluster-run",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": report.machine.to_json(),
        "dir": report.dir.display().to_string(),
        "single": report.single.to_json(),
        "cluster": cluster,
        "comparison": comparison,
    })
}

#[cfg(test)]
mod tests {
    use crate::stats::Latency;

    use super::*;

    fn measured(id: &str, events: u64, operations: u64, seconds: f64) -> Measured {
        Measured {
            id: id.to_owned(),
            what: String::new(),
            events,
            operations,
            seconds,
            latency: Latency::from_nanos(vec![1_000_000 * operations]),
            append_latency: None,
            capped: false,
        }
    }

    fn phase(results: Vec<Measured>) -> Phase {
        let rate = SyncRate {
            syncs: 0,
            seconds: 1.0,
            per_second: 0.0,
            latency: Latency::default(),
        };
        Phase {
            address: String::new(),
            version: String::new(),
            durability: "sync".to_owned(),
            fsync_before: rate,
            fsync_after: rate,
            results,
            around: Vec::new(),
            cpu: Vec::new(),
        }
    }

    #[test]
    fn only_w1_to_w3_are_selected() {
        assert_eq!(selection(&[]).expect("all"), WORKLOADS.to_vec());
        let only = ["w3".to_owned(), "W1".to_owned()];
        assert_eq!(selection(&only).expect("two"), vec!["W1", "W3"]);
        assert!(selection(&["w4".to_owned()]).is_err());
        assert!(selection(&["w9".to_owned()]).is_err());
    }

    #[test]
    fn rows_compare_rates_and_skip_what_ran_once() {
        let single = phase(vec![
            measured("null", 100, 100, 1.0),
            measured("rtt", 0, 2_000, 1.0),
            measured("W1", 1_000, 1_000, 1.0),
            measured("W3", 5_000, 50, 1.0),
        ]);
        let mut capped = measured("W1", 1_000, 1_000, 4.0);
        capped.capped = true;
        let cluster = phase(vec![
            measured("rtt", 0, 1_000, 1.0),
            capped,
            measured("W2", 500, 500, 1.0),
        ]);
        let rows = compared(&single, &cluster);
        let ids: Vec<&str> = rows.iter().map(|row| row.id).collect();
        assert_eq!(ids, ["rtt", "W1"]);
        assert_eq!(rows[0].unit, "calls");
        assert_eq!(rows[0].single_per_second, 2_000.0);
        assert_eq!(rows[0].ratio, 0.5);
        assert_eq!(rows[1].unit, "events");
        assert_eq!(rows[1].cluster_per_second, 250.0);
        assert_eq!(rows[1].ratio, 0.25);
        assert!(rows[1].capped);
        assert_eq!(rows[1].cluster_latency_us.0, 1_000_000.0);
    }
}
