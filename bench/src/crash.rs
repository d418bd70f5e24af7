//! `cairn-bench crash`: does every acknowledged append survive a crash?
//!
//! One data directory, `--runs` rounds. Each round, `--clients` clients (own
//! connections, concurrent) append single events and small batches to their
//! own streams, each append with the exact expected revision. For every
//! acknowledged event a line `stream revision id position crc32` is written to
//! a record file *before* the event is counted (the file is not fsynced: this
//! process does not crash, only the server does). After a random delay the
//! server is SIGKILLed, restarted on the same directory, and the whole store
//! is read back ($all and every stream) and checked against every record line
//! of all rounds so far (see [`crate::verify`]). The next round appends on
//! top, continuing each stream at the revision the store reports.
//!
//! The server runs with `--durability sync`. A process kill (not a power cut)
//! is what this can test; an acknowledged append must survive it in any mode.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_client::{
    AppendResult, Client, EventData, ExpectedRevision, ReadFrom, ReadOptions, RecordedEvent,
};

use crate::BoxError;
use crate::server::{self, Durability, ServerProcess};
use crate::target::StoredEvent;
use crate::verify::{Ack, verify};
use crate::workload::{EVENT_TYPE, event_id, payload};

/// Options of `cairn-bench crash`.
#[derive(Debug, clap::Args)]
pub(crate) struct CrashArgs {
    /// Kill-restart-verify rounds on the same data directory.
    #[arg(long, value_name = "R", default_value_t = 20)]
    runs: u32,

    /// Concurrent clients, each with its own connection and streams.
    #[arg(long, value_name = "N", default_value_t = 8)]
    clients: usize,

    /// Streams per client.
    #[arg(long, value_name = "S", default_value_t = 4)]
    streams: usize,

    /// Shortest delay between the start of appending and the kill, ms.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    min_delay_ms: u64,

    /// Longest delay between the start of appending and the kill, ms.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    max_delay_ms: u64,

    /// Seed of the random delays and batch sizes (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,

    /// Directory for the data directory and the record file (not tmpfs).
    /// Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// Keep the data directory and the record file afterwards.
    #[arg(long)]
    keep: bool,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
}

/// A small, seedable generator (xorshift64*): the test needs reproducible
/// delays and batch sizes, not statistical quality.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        // A zero state would stay zero.
        Self(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `low..=high`.
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// The stream `k` of client `c`.
pub(crate) fn stream_name(c: usize, k: usize) -> String {
    format!("crash-{c:02}-{k:02}")
}

/// How a client's round ended.
#[derive(Debug)]
struct ClientEnd {
    /// Events it saw acknowledged.
    acknowledged: u64,
    /// The error that stopped it (expected: the server went away).
    error: cairn_client::Error,
}

/// The record file, shared by the clients of a round.
type Record = Arc<Mutex<File>>;

/// Runs `cairn-bench crash`.
pub(crate) async fn run(args: &CrashArgs) -> Result<(), BoxError> {
    if args.clients == 0 || args.streams == 0 || args.runs == 0 {
        return Err("--runs, --clients and --streams must be at least 1".into());
    }
    if args.min_delay_ms > args.max_delay_ms {
        return Err("--min-delay-ms must not exceed --max-delay-ms".into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
    });
    let mut rng = Rng::new(seed);
    let binary = server::server_binary(args.server_bin.as_deref())?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => std::env::temp_dir(),
    };
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-crash-")
        .tempdir_in(&dir)?;
    let data = scratch.path().join("data");
    let log = scratch.path().join("server.log");
    let record_path = scratch.path().join("acks.log");
    eprintln!(
        "crash test: {} runs, {} clients x {} streams, kill after {}..{} ms, seed {seed}; data in {}",
        args.runs,
        args.clients,
        args.streams,
        args.min_delay_ms,
        args.max_delay_ms,
        data.display()
    );

    let mut server = ServerProcess::start(&binary, &data, Durability::Sync, &log).await?;
    // Each stream's last revision, as the store reports it after a restart.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut acknowledged_total = 0u64;
    for run in 0..args.runs {
        let record: Record = Arc::new(Mutex::new(
            File::options()
                .create(true)
                .append(true)
                .open(&record_path)?,
        ));
        let counted = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for c in 0..args.clients {
            let client = Client::connect(server.address().to_owned()).await?;
            let streams: Vec<(String, Option<u64>)> = (0..args.streams)
                .map(|k| {
                    let name = stream_name(c, k);
                    let revision = last.get(&name).copied();
                    (name, revision)
                })
                .collect();
            let plan = ClientPlan {
                run,
                client: c,
                seed: rng.next(),
            };
            let record = Arc::clone(&record);
            let counted = Arc::clone(&counted);
            clients.push(tokio::spawn(async move {
                append_until_error(&client, plan, streams, &record, &counted).await
            }));
        }
        let delay = Duration::from_millis(rng.between(args.min_delay_ms, args.max_delay_ms));
        let started = Instant::now();
        tokio::time::sleep(delay).await;
        let at_kill = counted.load(Ordering::SeqCst);
        server.kill()?;
        let mut acknowledged = 0;
        for client in clients {
            let end = client
                .await
                .map_err(|error| format!("client task: {error}"))??;
            acknowledged += end.acknowledged;
            check_client_error(&end.error)?;
        }
        acknowledged_total += acknowledged;

        server = ServerProcess::start(&binary, &data, Durability::Sync, &log).await?;
        let client = Client::connect(server.address().to_owned()).await?;
        let (all, streams) = read_back(&client).await?;
        let acks = load_record(&record_path)?;
        if acks.len() as u64 != acknowledged_total {
            return Err(format!(
                "the record file has {} lines but {acknowledged_total} events were acknowledged",
                acks.len()
            )
            .into());
        }
        let summary = match verify(&acks, &all, &streams) {
            Ok(summary) => summary,
            Err(problem) => {
                eprintln!(
                    "run {}: killed after {} ms; data kept in {}",
                    run + 1,
                    started.elapsed().as_millis(),
                    scratch.path().display()
                );
                let kept = scratch.keep();
                let _ = server.stop();
                return Err(format!(
                    "{} runs, {acknowledged_total} acknowledged: {problem} (data kept in {})",
                    run + 1,
                    kept.display()
                )
                .into());
            }
        };
        eprintln!(
            "run {:2}: killed after {:4} ms ({at_kill} acks by then); {acknowledged} acknowledged \
             this run, {acknowledged_total} in all; store: {} events in {} streams, {} committed \
             without an ack; ok",
            run + 1,
            delay.as_millis(),
            summary.events,
            summary.streams,
            summary.unacknowledged
        );
        last = streams
            .iter()
            .filter_map(|(name, events)| Some((name.clone(), events.last()?.revision)))
            .collect();
    }
    if !server.stop()? {
        eprintln!("warning: the server did not stop on SIGTERM and was killed");
    }
    println!(
        "{} runs, {acknowledged_total} acknowledged, 0 lost",
        args.runs
    );
    if args.keep {
        let kept = scratch.keep();
        eprintln!("data and record kept in {}", kept.display());
    }
    Ok(())
}

/// Errors a client may see when the server is killed under it; anything else
/// (a wrong expected revision, a duplicate id) means the store broke a promise.
fn check_client_error(error: &cairn_client::Error) -> Result<(), BoxError> {
    use cairn_client::Error;
    match error {
        Error::Unavailable(_) | Error::Connect(_) => Ok(()),
        Error::Other {
            code: tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal,
            ..
        } => Ok(()),
        other => {
            Err(format!("a client failed with an error a crash does not explain: {other}").into())
        }
    }
}

/// Who a client is in this round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientPlan {
    /// The round, from 0: part of every event id.
    pub(crate) run: u32,
    /// The client's index: its streams and part of its event ids.
    pub(crate) client: usize,
    /// Seed of its stream choices and batch sizes.
    pub(crate) seed: u64,
}

/// The next append of a client with `streams` streams: which one (an index)
/// and how many events, half single events, half batches of 2..=10.
pub(crate) fn next_append(rng: &mut Rng, streams: usize) -> (usize, u64) {
    let k = usize::try_from(rng.next() % streams as u64).unwrap_or(0);
    let count = if rng.next().is_multiple_of(2) {
        1
    } else {
        rng.between(2, 10)
    };
    (k, count)
}

/// The events `seq..seq + count` of `plan`'s client, for `stream`. Ids are
/// unique across rounds and clients: the round is the id's "case".
pub(crate) fn batch(plan: ClientPlan, seq: u64, count: u64, stream: &str) -> Vec<EventData> {
    let case = 1_000 + plan.run;
    (seq..seq + count)
        .map(|n| {
            let id = event_id(case, plan.client, n);
            EventData::json_text(EVENT_TYPE, payload(&id, stream, n)).id(id)
        })
        .collect()
}

/// Checks that `result` is what an append of `events` to `stream`, whose last
/// revision was `last`, must answer (the next revisions, one position per
/// event), and returns the acknowledgement of each event.
pub(crate) fn acknowledgements(
    stream: &str,
    last: Option<u64>,
    events: &[EventData],
    result: &AppendResult,
) -> Result<Vec<Ack>, BoxError> {
    let count = events.len() as u64;
    let first_revision = last.map_or(0, |last| last + 1);
    let want = first_revision + count - 1;
    let Some((first_position, last_position)) = result.positions else {
        return Err(format!("append to {stream} acknowledged without positions").into());
    };
    if result.current_revision != Some(want) || last_position - first_position + 1 != count {
        return Err(format!(
            "append of {count} to {stream} (last revision {last:?}) answered revision {:?}, \
             positions {first_position}..={last_position}",
            result.current_revision
        )
        .into());
    }
    Ok((0..count)
        .zip(events)
        .map(|(i, event)| Ack {
            stream: stream.to_owned(),
            revision: first_revision + i,
            id: event.id,
            position: first_position + i,
            crc: crc32fast::hash(&event.data),
        })
        .collect())
}

/// Appends until an error (the kill) stops it: a random stream of its own, half
/// single events, half batches of 2..=10, each with the exact expected
/// revision. Records every acknowledged event before counting it.
async fn append_until_error(
    client: &Client,
    plan: ClientPlan,
    mut streams: Vec<(String, Option<u64>)>,
    record: &Mutex<File>,
    counted: &AtomicU64,
) -> Result<ClientEnd, BoxError> {
    let mut rng = Rng::new(plan.seed);
    let mut seq = 0u64;
    let mut acknowledged = 0u64;
    loop {
        let (k, count) = next_append(&mut rng, streams.len());
        let (stream, last) = &streams[k];
        let events = batch(plan, seq, count, stream);
        seq += count;
        let expected = last.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
        let result = match client.append(stream, expected, events.clone()).await {
            Ok(result) => result,
            Err(error) => {
                return Ok(ClientEnd {
                    acknowledged,
                    error,
                });
            }
        };
        let acks = acknowledgements(stream, *last, &events, &result)?;
        let lines: String = acks.iter().map(Ack::to_line).collect();
        record
            .lock()
            .map_err(|_| "the record file lock is poisoned")?
            .write_all(lines.as_bytes())?;
        acknowledged += count;
        counted.fetch_add(count, Ordering::SeqCst);
        streams[k].1 = acks.last().map(|ack| ack.revision);
    }
}

/// Everything the store holds: `$all` and every stream in it.
async fn read_back(
    client: &Client,
) -> Result<(Vec<StoredEvent>, HashMap<String, Vec<StoredEvent>>), BoxError> {
    let all: Vec<StoredEvent> = read_all_events(client)
        .await?
        .into_iter()
        .map(stored)
        .collect();
    let streams = read_streams(client, &all).await?;
    Ok((all, streams))
}

/// `$all`, whole, from the start.
pub(crate) async fn read_all_events(client: &Client) -> Result<Vec<RecordedEvent>, BoxError> {
    let mut all = Vec::new();
    let mut read = client
        .read_all(ReadOptions::forwards().from(ReadFrom::Start))
        .await?;
    while let Some(event) = read.next_event().await? {
        all.push(event);
    }
    Ok(all)
}

/// What the checker compares of an event.
pub(crate) fn stored(event: RecordedEvent) -> StoredEvent {
    StoredEvent {
        id: event.id,
        stream: event.stream,
        revision: event.revision,
        position: event.position,
        data: event.data,
    }
}

/// Every stream that has an event in `all`, read whole from revision 0.
pub(crate) async fn read_streams(
    client: &Client,
    all: &[StoredEvent],
) -> Result<HashMap<String, Vec<StoredEvent>>, BoxError> {
    let mut names: Vec<&str> = all.iter().map(|event| event.stream.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut streams = HashMap::new();
    for name in names {
        let mut read = client
            .read_stream(name, ReadOptions::forwards().from(ReadFrom::Start))
            .await?;
        let mut events = Vec::new();
        while let Some(event) = read.next_event().await? {
            events.push(stored(event));
        }
        streams.insert(name.to_owned(), events);
    }
    Ok(streams)
}

/// Every acknowledgement recorded so far.
fn load_record(path: &Path) -> Result<Vec<Ack>, BoxError> {
    let mut acks = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if !line.is_empty() {
            acks.push(Ack::parse(&line)?);
        }
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1_000 {
            let x = a.between(200, 3_000);
            assert_eq!(x, b.between(200, 3_000));
            assert!((200..=3_000).contains(&x));
        }
        assert_ne!(Rng::new(0).next(), 0);
    }

    #[test]
    fn names() {
        assert_eq!(stream_name(3, 1), "crash-03-01");
    }

    #[test]
    fn crash_errors_are_expected_others_are_not() {
        assert!(check_client_error(&cairn_client::Error::Unavailable("gone".into())).is_ok());
        assert!(
            check_client_error(&cairn_client::Error::WrongExpectedRevision {
                stream: "s".into(),
                expected: "0".into(),
                current: Some(1),
            })
            .is_err()
        );
    }
}
