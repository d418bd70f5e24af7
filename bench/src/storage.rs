//! `cairn-bench storage`: the storage engine alone, in-process.
//!
//! Every case opens a fresh store in its own directory, starts its writer
//! threads together behind a barrier, and measures from the common start to the
//! last writer's finish. Each writer owns its streams (`w-<writer>-<k>`), tracks
//! their revisions and sends every append with the exact expected revision
//! (`NoStream` for the first), as a careful client would. An append's latency
//! runs from building its events (inside the timed loop) to the acknowledgement.
//!
//! The number of committed groups is counted with a commit listener; in durable
//! mode every group is one WAL write with one fdatasync, so events per group is
//! how well concurrent writers share syncs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use cairn_storage::{Durability, EventData, ExpectedRevision, Store, StoreOptions};

use crate::BoxError;
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::report::{self, Report};
use crate::stats::Latency;
use crate::workload;

/// Options of `cairn-bench storage`.
#[derive(Debug, clap::Args)]
pub(crate) struct StorageArgs {
    /// Directory in which every case creates (and then removes) a fresh store.
    /// It must be on the disk to measure, not tmpfs. Default: the system temp
    /// directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// Size of the run. Single-event cases with 16 and 64 writers append N
    /// events; the durable one-writer case appends N/10 (it is bound by the
    /// fsync rate); batch cases append N/100 batches of 100 with one writer
    /// and N/200 batches per writer with 16 writers.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    events: u64,

    /// Also run every case with `Durability::Unsynced`: acknowledged before
    /// the fsync, so NOT durable (survives a process crash, not a power loss).
    #[arg(long)]
    unsynced: bool,

    /// Stop a case after this many seconds; its figures then cover what it did.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    max_seconds: f64,

    /// Length of the fdatasync probe run before and after the cases.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fsync_seconds: f64,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Events per batch in the batch cases (W3's batch size).
const BATCH: usize = 100;
/// Streams shared out among the writers of a single-event case (as in W1/W2).
const SINGLE_EVENT_STREAMS: usize = 1_000;
/// Streams shared out among the writers of a batch case (as in W3).
const BATCH_STREAMS: usize = 50;

/// One measured configuration.
#[derive(Debug, Clone)]
pub(crate) struct CaseSpec {
    /// Short label for the table.
    pub(crate) name: String,
    /// `None` for the null loop (events are built, nothing is called).
    pub(crate) durability: Option<Durability>,
    /// Concurrent writer threads.
    pub(crate) writers: usize,
    /// Events per append.
    pub(crate) batch: usize,
    /// Appends of all writers together.
    pub(crate) appends: u64,
    /// Streams each writer owns.
    pub(crate) streams_per_writer: usize,
}

/// What one case measured.
#[derive(Debug, Clone)]
pub(crate) struct CaseResult {
    /// The configuration.
    pub(crate) spec: CaseSpec,
    /// Events acknowledged.
    pub(crate) events: u64,
    /// Appends acknowledged.
    pub(crate) appends: u64,
    /// From the common start to the last writer's finish.
    pub(crate) seconds: f64,
    /// Per-append latency, building included.
    pub(crate) latency: Latency,
    /// Committed groups (one WAL write each); `None` for the null loop.
    pub(crate) groups: Option<u64>,
    /// The case hit `--max-seconds` before finishing.
    pub(crate) capped: bool,
}

impl CaseResult {
    /// Events per second.
    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// Runs the storage benchmark and prints (and optionally writes) the report.
pub(crate) fn run(args: &StorageArgs) -> Result<(), BoxError> {
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => std::env::temp_dir(),
    };
    let max = positive_seconds(args.max_seconds, "--max-seconds")?;
    let probe = positive_seconds(args.fsync_seconds, "--fsync-seconds")?;

    let machine = Machine::describe(&dir);
    eprintln!(
        "cairn-bench storage: stores in {} ({})",
        dir.display(),
        machine.filesystem_summary()
    );
    if machine.on_memory_fs() {
        eprintln!(
            "warning: {} is on a memory filesystem; fsync costs nothing there",
            dir.display()
        );
    }

    eprintln!(
        "measuring the fdatasync rate for {:.1} s ...",
        probe.as_secs_f64()
    );
    let fsync_before = disk::fdatasync_rate(&dir, probe)?;
    eprintln!("  {:.0} fdatasync/s", fsync_before.per_second);

    let mut results = Vec::new();
    for (number, spec) in cases(args.events, args.unsynced).into_iter().enumerate() {
        let case = u32::try_from(number).unwrap_or(u32::MAX);
        eprintln!("running {} ...", spec.name);
        let result = run_case(&dir, case, &spec, max)?;
        eprintln!(
            "  {} events in {:.2} s: {:.0} ev/s, p50 {:.3} ms, p99 {:.3} ms{}",
            result.events,
            result.seconds,
            result.events_per_second(),
            result.latency.p50_us / 1_000.0,
            result.latency.p99_us / 1_000.0,
            if result.capped {
                " (stopped at --max-seconds)"
            } else {
                ""
            },
        );
        results.push(result);
    }

    eprintln!("measuring the fdatasync rate again ...");
    let fsync_after = disk::fdatasync_rate(&dir, probe)?;

    let figures = Report {
        machine,
        dir,
        fsync_before,
        fsync_after,
        results,
    };
    println!("{}", report::table(&figures));
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report::json(&figures))? + "\n",
        )?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// `secs` as a duration, if it is positive and finite.
fn positive_seconds(secs: f64, flag: &str) -> Result<Duration, BoxError> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{flag} must be a positive number of seconds").into())
}

/// The cases of one run, in order.
fn cases(events: u64, unsynced: bool) -> Vec<CaseSpec> {
    let single = |name: &str, durability, writers: usize, appends: u64| CaseSpec {
        name: name.to_owned(),
        durability,
        writers,
        batch: 1,
        appends: appends.max(writers as u64),
        streams_per_writer: (SINGLE_EVENT_STREAMS / writers).max(1),
    };
    let batched = |name: &str, durability, writers: usize, appends: u64| CaseSpec {
        name: name.to_owned(),
        durability,
        writers,
        batch: BATCH,
        appends: appends.max(writers as u64),
        streams_per_writer: (BATCH_STREAMS / writers).max(1),
    };
    let mut cases = vec![single("null loop (build events only)", None, 1, events)];
    let mut modes = vec![(Durability::Sync, "durable")];
    if unsynced {
        modes.push((Durability::Unsynced, "unsynced"));
    }
    for (durability, label) in modes {
        let mode = Some(durability);
        // One durable writer waits for an fsync per event: a tenth keeps it short.
        let one_writer = if durability == Durability::Sync {
            events / 10
        } else {
            events
        };
        cases.push(single(
            &format!("{label} single, 1 writer"),
            mode,
            1,
            one_writer,
        ));
        cases.push(single(
            &format!("{label} single, 16 writers"),
            mode,
            16,
            events,
        ));
        cases.push(single(
            &format!("{label} single, 64 writers"),
            mode,
            64,
            events,
        ));
        cases.push(batched(
            &format!("{label} batch 100, 1 writer"),
            mode,
            1,
            events / 100,
        ));
        cases.push(batched(
            &format!("{label} batch 100, 16 writers"),
            mode,
            16,
            events / 200 * 16,
        ));
    }
    cases
}

/// Runs one case on a fresh store in a fresh directory under `dir`.
fn run_case(dir: &Path, case: u32, spec: &CaseSpec, max: Duration) -> Result<CaseResult, BoxError> {
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-")
        .tempdir_in(dir)?;
    let groups = Arc::new(AtomicU64::new(0));
    let store = match spec.durability {
        Some(durability) => {
            let store = Store::open(
                scratch.path(),
                StoreOptions {
                    durability,
                    ..StoreOptions::default()
                },
            )?;
            let counter = Arc::clone(&groups);
            store.live().add_listener(Box::new(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }));
            Some(store)
        }
        None => None,
    };

    let barrier = Arc::new(Barrier::new(spec.writers + 1));
    let writers = u64::try_from(spec.writers).unwrap_or(u64::MAX);
    let mut handles = Vec::with_capacity(spec.writers);
    for writer in 0..spec.writers {
        let index = u64::try_from(writer).unwrap_or(u64::MAX);
        let plan = WriterPlan {
            case,
            writer,
            // Share the appends out as evenly as possible.
            appends: spec.appends / writers + u64::from(index < spec.appends % writers),
            batch: spec.batch,
            streams: spec.streams_per_writer,
        };
        let store = store.clone();
        let barrier = Arc::clone(&barrier);
        let handle = thread::Builder::new()
            .name(format!("bench-writer-{writer}"))
            .spawn(move || write(store.as_ref(), &plan, &barrier, max))?;
        handles.push(handle);
    }
    barrier.wait();
    let start = Instant::now();

    let mut latencies = Vec::with_capacity(usize::try_from(spec.appends).unwrap_or(0));
    let mut end = start;
    let mut events = 0;
    let mut capped = false;
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(outcome)) => {
                latencies.extend(outcome.latencies);
                end = end.max(outcome.finished);
                events += outcome.events;
                capped |= outcome.capped;
            }
            Ok(Err(error)) => failure = failure.or(Some(error)),
            Err(_) => failure = failure.or(Some("a writer thread panicked".to_owned())),
        }
    }
    if let Some(error) = failure {
        return Err(format!("{}: {error}", spec.name).into());
    }
    if let Some(store) = &store {
        let head = store.info().head;
        if head != events {
            return Err(format!(
                "{}: {events} events acknowledged but the head is {head}",
                spec.name
            )
            .into());
        }
        store.shutdown();
    }
    let appends = latencies.len() as u64;
    Ok(CaseResult {
        spec: spec.clone(),
        events,
        appends,
        seconds: end.duration_since(start).as_secs_f64(),
        latency: Latency::from_nanos(latencies),
        groups: store.map(|_| groups.load(Ordering::Relaxed)),
        capped,
    })
}

/// One writer thread's share of a case.
#[derive(Debug, Clone, Copy)]
struct WriterPlan {
    case: u32,
    writer: usize,
    appends: u64,
    batch: usize,
    streams: usize,
}

/// What one writer thread did.
struct WriterOutcome {
    latencies: Vec<u64>,
    events: u64,
    finished: Instant,
    capped: bool,
}

/// A writer: appends round-robin over its own streams with exact expected
/// revisions, waiting for each acknowledgement. With no store it only builds the
/// events (the null loop).
fn write(
    store: Option<&Store>,
    plan: &WriterPlan,
    barrier: &Barrier,
    max: Duration,
) -> Result<WriterOutcome, String> {
    let streams: Vec<String> = (0..plan.streams)
        .map(|k| workload::stream_name(plan.writer, k))
        .collect();
    let mut revisions: Vec<Option<u64>> = vec![None; plan.streams];
    let mut latencies = Vec::with_capacity(usize::try_from(plan.appends).unwrap_or(0));
    let mut seq = 0u64;
    let mut events = 0u64;
    let mut capped = false;
    let batch = plan.batch as u64;

    barrier.wait();
    let deadline = Instant::now() + max;
    for append in 0..plan.appends {
        let started = Instant::now();
        if started >= deadline {
            capped = true;
            break;
        }
        let k = usize::try_from(append % plan.streams as u64).unwrap_or(0);
        let stream = &streams[k];
        let batch_events: Vec<EventData> = (0..batch)
            .map(|i| workload::event(plan.case, plan.writer, seq + i, stream))
            .collect();
        seq += batch;
        let expected = match revisions[k] {
            None => ExpectedRevision::NoStream,
            Some(revision) => ExpectedRevision::Exact(revision),
        };
        match store {
            Some(store) => {
                let result = store
                    .append(stream.clone(), expected, batch_events)
                    .wait()
                    .map_err(|error| {
                        format!("append to {stream} (expected {expected}) failed: {error}")
                    })?;
                let want = revisions[k].map_or(batch - 1, |revision| revision + batch);
                if result.current.revision() != Some(want) {
                    return Err(format!(
                        "append to {stream} answered {}, expected revision {want}",
                        result.current
                    ));
                }
                revisions[k] = Some(want);
            }
            None => {
                std::hint::black_box((expected, batch_events));
            }
        }
        latencies.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        events += batch;
    }
    Ok(WriterOutcome {
        latencies,
        events,
        finished: Instant::now(),
        capped,
    })
}

/// Used by the report to compare durable figures with the disk.
pub(crate) fn sync_ratio(result: &CaseResult, fsync: &SyncRate) -> Option<f64> {
    (result.spec.durability == Some(Durability::Sync) && fsync.per_second > 0.0)
        .then(|| result.events_per_second() / fsync.per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cases() {
        let default = cases(20_000, false);
        let summary: Vec<(usize, usize, u64)> = default
            .iter()
            .map(|case| (case.writers, case.batch, case.appends))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, 1, 20_000),
                (1, 1, 2_000),
                (16, 1, 20_000),
                (64, 1, 20_000),
                (1, 100, 200),
                (16, 100, 1_600)
            ]
        );
        assert_eq!(cases(20_000, true).len(), 11);
    }

    #[test]
    fn a_tiny_run_commits_everything() {
        let dir = tempfile::tempdir().expect("temp dir");
        for spec in cases(400, true) {
            let result =
                run_case(dir.path(), 0, &spec, Duration::from_secs(60)).expect("case runs");
            assert_eq!(
                result.events,
                spec.appends * spec.batch as u64,
                "{}",
                spec.name
            );
            assert_eq!(result.appends, spec.appends);
            assert!(!result.capped);
            if spec.durability.is_some() {
                let groups = result.groups.expect("groups counted");
                assert!(
                    (1..=result.appends).contains(&groups),
                    "{}: {groups} groups",
                    spec.name
                );
            }
        }
    }
}
