//! `cairn-bench large`: appends and reads of large events (64 KiB and 1 MiB by
//! default).
//!
//! For each size, one client appends `count` single-event durable appends
//! (unless `--unsynced`), one after the other; event `k` goes to stream
//! `large<size>-{k mod S}` (`--streams`, default 4) with the exact expected
//! revision, and the revision that comes back is checked. Its data is `size`
//! bytes of binary (`application/octet-stream`) generated from `k` alone
//! (splitmix64), built before the append's clock starts. Figures: ev/s, MB/s
//! (10^6 bytes of event data per second) over the phase, and the append's
//! p50/p99.
//!
//! Then every stream is read from the start (one `Read` call per stream,
//! forwards, no count limit) and every event is checked byte for byte against
//! the data regenerated from its number, after the clock stops: ev/s and MB/s
//! of the reads.
//!
//! Sizes the server refuses (its `max_event_bytes` or `max_append_bytes`, from
//! `Server.Info`) are not shrunk: the case is reported as not run, with the
//! setting that would allow it. Defaults: 4 MiB each, and the server's gRPC
//! message limit is twice the append limit (at least 16 MiB), the client's
//! 64 MiB, so 1 MiB events pass without any setting.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{Client, EventData, ReadFrom, ReadOptions};
use serde_json::{Value, json};

use crate::BoxError;
use crate::machine::Machine;
use crate::report::{markdown_table_with, server_header, thousands};
use crate::server::ServerArgs;
use crate::stats::{Latency, round, round_to};
use crate::target::Expected;
use crate::workload::{event_id, workload_stream};
use crate::workloads::{case, check_appended, nanos_since};

/// Options of `cairn-bench large`.
#[derive(Debug, clap::Args)]
pub(crate) struct LargeArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Event sizes in bytes.
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...", default_values_t = [65_536, 1_048_576])]
    sizes: Vec<usize>,

    /// Events appended per size, one count per size in the same order.
    #[arg(long, value_delimiter = ',', value_name = "N,...", default_values_t = [2_000, 200])]
    counts: Vec<u64>,

    /// Streams each size's events are spread over (event k goes to k mod S).
    #[arg(long, value_name = "S", default_value_t = 4)]
    streams: u64,

    /// Stop a size's appends after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    max_seconds: f64,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The event type of every large event.
const EVENT_TYPE: &str = "BenchLarge";

/// What one size measured, or why it did not run.
#[derive(Debug)]
struct SizeCase {
    size: usize,
    outcome: Result<Measured, String>,
}

/// The appends and the reads of one size.
#[derive(Debug)]
struct Measured {
    append: Phase,
    append_latency: Latency,
    capped: bool,
    read: Phase,
}

/// Events moved in one phase, and how long it took.
#[derive(Debug, Clone, Copy)]
struct Phase {
    events: u64,
    seconds: f64,
}

impl Phase {
    fn per_second(self) -> f64 {
        self.events as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Megabytes (10^6 bytes) of event data per second, for events of `size`.
    fn mb_per_second(self, size: usize) -> f64 {
        self.per_second() * size as f64 / 1e6
    }

    /// One row of the table; `latency` for appends.
    fn row(self, size: usize, name: String, latency: Option<Latency>, note: &str) -> Vec<String> {
        let ms = |us: f64| format!("{:.3}", us / 1_000.0);
        vec![
            size_label(size),
            name,
            thousands(self.events as f64),
            format!("{:.2}", self.seconds),
            thousands(self.per_second()),
            format!("{:.1}", self.mb_per_second(size)),
            latency.map_or_else(|| "-".to_owned(), |latency| ms(latency.p50_us)),
            latency.map_or_else(|| "-".to_owned(), |latency| ms(latency.p99_us)),
            note.to_owned(),
        ]
    }

    fn to_json(self, size: usize) -> Value {
        json!({
            "events": self.events,
            "seconds": round_to(self.seconds, 3),
            "events_per_second": round(self.per_second()),
            "mb_per_second": round(self.mb_per_second(size)),
        })
    }
}

/// `size` bytes generated from the event number `k` alone (splitmix64).
fn event_data(size: usize, k: u64) -> Bytes {
    let mut state = k.wrapping_mul(0xA076_1D64_78BD_642F);
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        data.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    data.truncate(size);
    Bytes::from(data)
}

/// `65536` as `64 KiB`, `1048576` as `1 MiB`.
fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// The streams of one size: `large<size>-0000`, ...
fn stream(size: usize, s: u64) -> String {
    workload_stream(&format!("large{size}"), s)
}

/// Runs `cairn-bench large`.
pub(crate) async fn run(args: &LargeArgs) -> Result<(), BoxError> {
    if args.sizes.len() != args.counts.len() {
        return Err("--sizes and --counts need one count per size".into());
    }
    if args.streams == 0 || args.sizes.contains(&0) {
        return Err("--streams and every size must be at least 1".into());
    }
    let mut distinct = args.sizes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != args.sizes.len() {
        return Err("--sizes must not repeat a size (each has its own streams)".into());
    }
    let cap = Duration::try_from_secs_f64(args.max_seconds)
        .ok()
        .filter(|cap| !cap.is_zero())
        .ok_or("--max-seconds must be a positive number")?;
    let mut session = args.server.session("cairn-bench-large-").await?;
    let machine = Machine::describe(&session.dir);
    let client = Client::connect(session.address.clone()).await?;
    let info = client.info().await?;
    eprintln!(
        "server {}: cairn {}, durability {}, max_event_bytes {}, max_append_bytes {}",
        session.address, info.version, info.durability, info.max_event_bytes, info.max_append_bytes
    );

    let mut cases = Vec::new();
    for (writer, (&size, &count)) in args.sizes.iter().zip(&args.counts).enumerate() {
        let outcome = if let Some(refusal) = refused(size, &info) {
            eprintln!("{}: NOT RUN: {refusal}", size_label(size));
            Err(refusal)
        } else {
            eprintln!("{}: {count} appends ...", size_label(size));
            let measured = one_size(&client, (writer, size), count, args.streams, cap).await?;
            eprintln!(
                "  appends {:.0} ev/s, {:.1} MB/s (p50 {:.3} ms, p99 {:.3} ms); reads {:.0} ev/s, {:.1} MB/s, content checked",
                measured.append.per_second(),
                measured.append.mb_per_second(size),
                measured.append_latency.p50_us / 1_000.0,
                measured.append_latency.p99_us / 1_000.0,
                measured.read.per_second(),
                measured.read.mb_per_second(size),
            );
            Ok(measured)
        };
        cases.push(SizeCase { size, outcome });
    }
    session.stop()?;

    println!("{}", table(&machine, &info, &cases, args.streams));
    if let Some(path) = &args.json {
        let figures = json!({
            "max_event_bytes": info.max_event_bytes,
            "max_append_bytes": info.max_append_bytes,
            "streams_per_size": args.streams,
            "cases": cases.iter().map(case_json).collect::<Vec<_>>(),
        });
        session.write_json(path, "cairn-bench large", (&machine, &info), figures)?;
    }
    Ok(())
}

/// Why the server would refuse events of `size` bytes, if it would.
fn refused(size: usize, info: &cairn_client::ServerInfo) -> Option<String> {
    let size = size as u64;
    if size > info.max_event_bytes {
        Some(format!(
            "{size} bytes exceed the server's max_event_bytes ({}); start it with \
             --max-event-bytes (CAIRN_MAX_EVENT_BYTES) and --max-append-bytes raised",
            info.max_event_bytes
        ))
    } else if size > info.max_append_bytes {
        Some(format!(
            "{size} bytes exceed the server's max_append_bytes ({}); start it with \
             --max-append-bytes (CAIRN_MAX_APPEND_BYTES) raised",
            info.max_append_bytes
        ))
    } else {
        None
    }
}

/// Appends `count` events of `size` bytes, then reads and checks them.
/// `writer`, the size's index, keeps event ids distinct between sizes.
async fn one_size(
    client: &Client,
    (writer, size): (usize, usize),
    count: u64,
    streams: u64,
    cap: Duration,
) -> Result<Measured, BoxError> {
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut last: Vec<Option<u64>> = vec![None; usize::try_from(streams)?];
    let mut capped = false;
    let start = Instant::now();
    for k in 0..count {
        if start.elapsed() >= cap {
            capped = true;
            break;
        }
        let s = usize::try_from(k % streams)?;
        let name = stream(size, k % streams);
        let expected = Expected::after(last[s]);
        let event =
            EventData::binary(EVENT_TYPE, event_data(size, k)).id(event_id(case::LARGE, writer, k));
        let began = Instant::now();
        let appended = client.append(&name, expected.into(), vec![event]).await?;
        last[s] = Some(check_appended(&name, expected, 1, appended.into())?);
        latencies.push(nanos_since(began));
    }
    let append_seconds = start.elapsed().as_secs_f64();
    let appended = latencies.len() as u64;

    // Reads are timed alone; the content is checked afterwards.
    let start = Instant::now();
    let mut read = Vec::with_capacity(latencies.len());
    for s in 0..streams {
        let mut events = client
            .read_stream(
                stream(size, s),
                ReadOptions::forwards().from(ReadFrom::Start),
            )
            .await?;
        while let Some(event) = events.next_event().await? {
            read.push((s, event));
        }
    }
    let read_seconds = start.elapsed().as_secs_f64();
    let mut next = vec![0u64; usize::try_from(streams)?];
    for (s, event) in &read {
        let due = &mut next[usize::try_from(*s)?];
        let k = *due * streams + s;
        if event.revision != *due
            || event.id != event_id(case::LARGE, writer, k)
            || event.data != event_data(size, k)
        {
            return Err(format!(
                "{}: revision {} (due {due}) does not hold event {k} as appended ({} bytes read)",
                event.stream,
                event.revision,
                event.data.len()
            )
            .into());
        }
        *due += 1;
    }
    if read.len() as u64 != appended {
        return Err(format!(
            "{}: read {} events back, {appended} were appended",
            size_label(size),
            read.len()
        )
        .into());
    }
    Ok(Measured {
        append: Phase {
            events: appended,
            seconds: append_seconds,
        },
        append_latency: Latency::from_nanos(latencies),
        capped,
        read: Phase {
            events: read.len() as u64,
            seconds: read_seconds,
        },
    })
}

/// The report as text.
fn table(
    machine: &Machine,
    info: &cairn_client::ServerInfo,
    cases: &[SizeCase],
    streams: u64,
) -> String {
    let mut out = server_header("cairn-bench large", machine, info);
    let _ = writeln!(
        out,
        "limits: max_event_bytes {}, max_append_bytes {}\n\
         one client, single-event appends over {streams} streams per size, exact expected \
         revisions; then every stream read from the start and checked byte for byte\n",
        thousands(info.max_event_bytes as f64),
        thousands(info.max_append_bytes as f64),
    );
    let mut rows = Vec::new();
    for case in cases {
        match &case.outcome {
            Err(refusal) => {
                let mut row = vec!["-".to_owned(); 9];
                row[0] = size_label(case.size);
                row[1] = "NOT RUN".to_owned();
                row[8].clone_from(refusal);
                rows.push(row);
            }
            Ok(measured) => {
                let capped = if measured.capped { " (capped)" } else { "" };
                rows.push(measured.append.row(
                    case.size,
                    format!("append{capped}"),
                    Some(measured.append_latency),
                    "one append at a time, each waited for",
                ));
                rows.push(measured.read.row(
                    case.size,
                    "read".to_owned(),
                    None,
                    "streams from the start; content checked",
                ));
            }
        }
    }
    let header = [
        "size", "phase", "events", "s", "ev/s", "MB/s", "p50 ms", "p99 ms", "note",
    ];
    out.push_str(&markdown_table_with(&header, &rows, &[0, 1, 8]));
    out.push_str("\nMB/s: 10^6 bytes of event data per second.");
    out
}

/// One size as JSON.
fn case_json(case: &SizeCase) -> Value {
    match &case.outcome {
        Err(refusal) => json!({ "size_bytes": case.size, "not_run": refusal }),
        Ok(measured) => {
            let mut append = measured.append.to_json(case.size);
            append["latency"] = measured.append_latency.to_json();
            append["capped"] = json!(measured.capped);
            let mut read = measured.read.to_json(case.size);
            read["content_checked"] = json!(true);
            json!({ "size_bytes": case.size, "append": append, "read": read })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_sized() {
        assert_eq!(event_data(65_536, 7), event_data(65_536, 7));
        assert_ne!(event_data(65_536, 7), event_data(65_536, 8));
        assert_eq!(event_data(1_000_003, 1).len(), 1_000_003);
        assert_eq!(&event_data(100, 3)[..], &event_data(200, 3)[..100]);
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(65_536), "64 KiB");
        assert_eq!(size_label(1_048_576), "1 MiB");
        assert_eq!(size_label(1_000), "1000 B");
        assert_eq!(stream(65_536, 3), "large65536-0003");
    }
}
