//! `cairn-bench soak`: a steady mixed load for a long time (`--duration`,
//! default 1 h), with the server process's resources sampled, to show that
//! memory and file descriptors stay flat.
//!
//! The load, every part bounded in count and time and aimed only at the
//! server's loopback address:
//!
//! - **writers** (`--writers`, default 4, each its own connection): single
//!   durable appends of a 256-byte JSON event, `--rate` appends/s in all
//!   (default 400), to `soak-w<w>s<0..50>` (the category `soak`); every append
//!   is timed;
//! - **readers** (`--readers`, default 2): a stream from its start (at most 100
//!   events), then 500 events of `$all` behind the head, in a loop;
//! - **subscriptions**: `--subscribers` (default 2) live `$all` subscriptions
//!   from the end for the whole run, and one catch-up subscription at a time
//!   that starts 5,000 events behind the head, reads to `CaughtUp`, follows live
//!   for 5 s and ends;
//! - **a consumer group** `soak` on `$ce-soak` with `--consumers` (default 2)
//!   consumers acking every event;
//! - **idle clients** (`--idle`, default 16): connected at the start, used
//!   once, then silent until the end, when each must still answer;
//! - **abusive connections** (`--abusive` slots, default 8), in turn: a TCP
//!   connection that sends nothing, one that sends 64 garbage bytes, one that
//!   sends the HTTP/2 preface and then nothing, and a `Read` of all of `$all`
//!   whose response is never consumed (held 30 s, then dropped). The first
//!   three must be closed by the server (handshake or idle timeout, keepalive);
//!   each is waited for at most [`ABUSE_WAIT`].
//!
//! Every `--sample-seconds` (default 10) one row: the server's RSS
//! (`VmRSS` of `/proc/<pid>/status`), open fds (entries of `/proc/<pid>/fd`),
//! CPU (utime + stime of `/proc/<pid>/stat` over the interval), RocksDB's
//! memory (block cache, memtables and table readers, from `Server.Info`) and
//! RSS minus it, and the
//! interval's appends, append latency p50/p99, reads, subscription deliveries,
//! acks and abusive connections closed. At the end: start, end and max per
//! column, and the check: the median of RSS minus RocksDB's memory in the
//! last quarter of the samples may exceed the first quarter's by at most
//! `max(--rss-tolerance-mib, --rss-tolerance-pct %)` (the block cache fills up
//! to its configured capacity, `--block-cache-bytes` of the server, and is
//! reported apart; a server without those figures is judged on its whole
//! RSS), the median fd count by at most `--fd-tolerance`;
//! beyond that, or after a failed append, an idle client that no longer
//! answers, or an abusive connection the server never closed, the command
//! exits non-zero.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{
    Client, EventData, ExpectedRevision, GroupOptions, GroupStart, ReadFrom, ReadOptions,
    SubscribeOptions, SubscriptionMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::BoxError;
use crate::report::markdown_table;
use crate::sample::rss_bytes;
use crate::server::ServerArgs;
use crate::stats::Latency;

/// Options of `cairn-bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// The server's process id, with `--addr` (for RSS, fds and CPU).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// How long the load runs: seconds, or a number with `s`, `m` or `h`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    duration: Duration,

    /// Seconds between samples.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    sample_seconds: u64,

    /// Appending clients.
    #[arg(long, value_name = "N", default_value_t = 4)]
    writers: usize,

    /// Appends per second, all writers together.
    #[arg(long, value_name = "N", default_value_t = 400)]
    rate: u64,

    /// Reading clients.
    #[arg(long, value_name = "N", default_value_t = 2)]
    readers: usize,

    /// Live `$all` subscriptions held for the whole run.
    #[arg(long, value_name = "N", default_value_t = 2)]
    subscribers: usize,

    /// Consumers of the group `soak`.
    #[arg(long, value_name = "N", default_value_t = 2)]
    consumers: usize,

    /// Idle clients held for the whole run.
    #[arg(long, value_name = "N", default_value_t = 16)]
    idle: usize,

    /// Abusive connections open at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    abusive: usize,

    /// RSS growth allowed between the first and last quarter (MiB) ...
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    rss_tolerance_mib: u64,

    /// ... or this percentage of the first quarter's, whichever is larger.
    #[arg(long, value_name = "PCT", default_value_t = 20)]
    rss_tolerance_pct: u64,

    /// Open-fd growth allowed between the first and last quarter.
    #[arg(long, value_name = "N", default_value_t = 32)]
    fd_tolerance: u64,
}

/// `600`, `600s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3_600),
        _ => (text, 1),
    };
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text} (use 600, 600s, 10m or 1h)"))?;
    Duration::try_from_secs_f64(number * f64::from(unit)).map_err(|error| error.to_string())
}

/// The longest an abusive connection is waited for before it counts as never
/// closed: past the default handshake timeout (10 s) and the idle timeout
/// (120 s) with its keepalive (a ping unanswered for 20 s).
const ABUSE_WAIT: Duration = Duration::from_secs(180);
/// How long a never-consumed read is held.
const STALLED_READ: Duration = Duration::from_secs(30);
/// A catch-up subscription starts this far behind the head...
const CATCH_UP_BEHIND: u64 = 5_000;
/// ...and follows live this long after `CaughtUp`.
const CATCH_UP_LIVE: Duration = Duration::from_secs(5);
/// Streams per writer.
const STREAMS_PER_WRITER: u64 = 50;
/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the load did, counted as it happens (the sampler takes differences).
#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    append_errors: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    delivered: AtomicU64,
    catch_ups: AtomicU64,
    subscription_errors: AtomicU64,
    acked: AtomicU64,
    consumer_errors: AtomicU64,
    abusive_opened: AtomicU64,
    abusive_closed: AtomicU64,
    abusive_not_closed: AtomicU64,
    stalled_reads: AtomicU64,
    /// Latest close time of a silent or garbage connection, in ms.
    slowest_close_ms: AtomicU64,
    /// Append latencies since the last sample, in ns (no await while held).
    latencies: Mutex<Vec<u64>>,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Everything a load task needs.
#[derive(Debug, Clone)]
struct Load {
    address: String,
    end: Instant,
    counters: Arc<Counters>,
}

impl Load {
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Time left, at least 1 ms.
    fn left(&self) -> Duration {
        self.end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}

/// A tiny xorshift generator: which stream to read (no `rand` in this crate).
struct Pick(u64);

impl Pick {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

fn stream_name(writer: u64, k: u64) -> String {
    format!("soak-w{writer}s{}", k % STREAMS_PER_WRITER)
}

async fn writer(load: Load, writer: u64, every: Duration) -> Result<(), BoxError> {
    let client = Client::connect(load.address.clone()).await?;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut k = 0u64;
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(244));
    while load.running() {
        tick.tick().await;
        let event = EventData::json_text("SoakEvent", body.clone());
        let started = Instant::now();
        let appended = client
            .append(stream_name(writer, k), ExpectedRevision::Any, vec![event])
            .await;
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        match appended {
            Ok(_) => {
                Counters::count(&load.counters.appends);
                load.counters
                    .latencies
                    .lock()
                    .expect("latencies")
                    .push(took);
            }
            Err(error) => {
                if Counters::get(&load.counters.append_errors) < 5 {
                    eprintln!("append failed: {error}");
                }
                Counters::count(&load.counters.append_errors);
            }
        }
        k += 1;
    }
    Ok(())
}

/// Reads one stream or `$all` page, draining it.
async fn read_once(client: &Client, source: String, options: ReadOptions) -> Result<(), BoxError> {
    let mut events = client.read(source, options).await?;
    while events.next_event().await?.is_some() {}
    Ok(())
}

async fn reader(load: Load, reader: u64, writers: u64) -> Result<(), BoxError> {
    let client = Client::connect(load.address.clone()).await?;
    let mut pick = Pick(0x9e37_79b9_7f4a_7c15 ^ (reader + 1));
    while load.running() {
        let stream = stream_name(pick.next(writers), pick.next(STREAMS_PER_WRITER));
        let head = client.info().await?.head_position;
        let results = [
            read_once(
                &client,
                stream,
                ReadOptions::forwards().from(ReadFrom::Start).max_count(100),
            )
            .await,
            read_once(
                &client,
                "$all".to_owned(),
                ReadOptions::forwards()
                    .from(ReadFrom::At(head.saturating_sub(500)))
                    .max_count(500),
            )
            .await,
        ];
        for result in results {
            match result {
                Ok(()) => Counters::count(&load.counters.reads),
                // A stream not written yet is NOT_FOUND: a normal answer.
                Err(error) if error.to_string().contains("not found") => {
                    Counters::count(&load.counters.reads);
                }
                Err(error) => {
                    if Counters::get(&load.counters.read_errors) < 5 {
                        eprintln!("read failed: {error}");
                    }
                    Counters::count(&load.counters.read_errors);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Follows `subscription` until `until`, counting events; `stop_at_catch_up`
/// ends the wait at `CaughtUp` (returns true then).
async fn follow(
    load: &Load,
    subscription: &mut cairn_client::Subscription,
    until: Instant,
    stop_at_catch_up: bool,
) -> Result<bool, BoxError> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        match tokio::time::timeout(left, subscription.next_message()).await {
            Err(_) => return Ok(false),
            Ok(message) => match message? {
                Some(SubscriptionMessage::Event(_)) => Counters::count(&load.counters.delivered),
                Some(SubscriptionMessage::CaughtUp { .. }) if stop_at_catch_up => return Ok(true),
                Some(_) => {}
                None => return Err("the server ended the subscription".into()),
            },
        }
    }
}

async fn live_subscriber(load: Load) -> Result<(), BoxError> {
    let client = Client::connect(load.address.clone()).await?;
    while load.running() {
        let followed = async {
            let mut subscription = client
                .subscribe("$all", SubscribeOptions::from_end())
                .await?;
            follow(&load, &mut subscription, load.end, false).await
        };
        if let Err(error) = followed.await {
            eprintln!("live subscription: {error}; subscribing again");
            Counters::count(&load.counters.subscription_errors);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

async fn catch_up_subscriber(load: Load) -> Result<(), BoxError> {
    let client = Client::connect(load.address.clone()).await?;
    while load.running() {
        let round = async {
            let head = client.info().await?.head_position;
            let from = head.saturating_sub(CATCH_UP_BEHIND);
            let options = if from == 0 {
                SubscribeOptions::from_start()
            } else {
                SubscribeOptions::after(from - 1)
            };
            let mut subscription = client.subscribe("$all", options).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            if !follow(&load, &mut subscription, deadline.min(load.end), true).await? {
                return Ok::<_, BoxError>(());
            }
            Counters::count(&load.counters.catch_ups);
            let live = (Instant::now() + CATCH_UP_LIVE).min(load.end);
            follow(&load, &mut subscription, live, false).await?;
            Ok(())
        };
        if let Err(error) = round.await {
            eprintln!("catch-up subscription: {error}");
            Counters::count(&load.counters.subscription_errors);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

async fn consumer(load: Load, n: usize) -> Result<(), BoxError> {
    let client = Client::connect(load.address.clone()).await?;
    while load.running() {
        let consumed = async {
            let mut consumer = client.consume("soak", format!("soak-{n}"), 0).await?;
            loop {
                match tokio::time::timeout(load.left(), consumer.next()).await {
                    Err(_) => return Ok::<_, BoxError>(()),
                    Ok(delivery) => match delivery? {
                        Some(delivery) => {
                            delivery.ack().await?;
                            Counters::count(&load.counters.acked);
                        }
                        None => return Err("the server ended the consumer's call".into()),
                    },
                }
            }
        };
        if let Err(error) = consumed.await {
            eprintln!("consumer {n}: {error}; joining again");
            Counters::count(&load.counters.consumer_errors);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

/// Waits until the server closes `socket` (EOF or reset), reading and
/// discarding what it sends; false if it is still open after [`ABUSE_WAIT`].
async fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    let wait = async {
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(ABUSE_WAIT, wait).await.is_ok()
}

/// One abusive slot: silent, garbage, preface-only and stalled-read
/// connections in turn, one at a time, until the end.
async fn abuser(load: Load, target: SocketAddr, slot: u64) -> Result<(), BoxError> {
    let mut turn = slot;
    while load.running() {
        Counters::count(&load.counters.abusive_opened);
        let kind = turn % 4;
        turn += 1;
        if kind == 3 {
            // A read of all of `$all` whose response is never consumed.
            let client = Client::connect(load.address.clone()).await?;
            let stalled = client
                .read_all(ReadOptions::forwards().from(ReadFrom::Start))
                .await;
            tokio::time::sleep(STALLED_READ.min(load.left())).await;
            drop(stalled);
            drop(client);
            Counters::count(&load.counters.stalled_reads);
            continue;
        }
        let mut socket = TcpStream::connect(target).await?;
        let started = Instant::now();
        match kind {
            0 => {}
            1 => {
                let garbage: Vec<u8> = (0..64u8).map(|b| b.wrapping_mul(37) ^ 0x5a).collect();
                let _ = socket.write_all(&garbage).await;
            }
            _ => {
                let _ = socket.write_all(PREFACE).await;
            }
        }
        if closed_by_server(&mut socket).await {
            Counters::count(&load.counters.abusive_closed);
            if kind < 2 {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                load.counters
                    .slowest_close_ms
                    .fetch_max(ms, Ordering::Relaxed);
            }
        } else {
            Counters::count(&load.counters.abusive_not_closed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// The server's resources at one moment (`None`: unknown or unreadable).
#[derive(Debug, Clone, Copy, Default)]
struct Resources {
    /// `VmRSS`, bytes.
    rss: Option<u64>,
    fds: Option<u64>,
    /// utime + stime in clock ticks (USER_HZ, 100 on Linux).
    cpu_ticks: Option<u64>,
}

fn resources(pid: Option<u32>) -> Resources {
    let Some(pid) = pid else {
        return Resources::default();
    };
    let rss = rss_bytes(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count() as u64);
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): state is
            // field 3, utime 14 and stime 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        });
    Resources {
        rss,
        fds,
        cpu_ticks,
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
const USER_HZ: f64 = 100.0;

/// One row of the table.
#[derive(Debug, Clone)]
struct Sample {
    seconds: f64,
    rss_mib: Option<f64>,
    /// RocksDB's block cache + memtables + table readers (`Server.Info`).
    rocksdb_mib: Option<f64>,
    fds: Option<u64>,
    cpu_pct: Option<f64>,
    appends: u64,
    p50_ms: f64,
    p99_ms: f64,
    reads: u64,
    delivered: u64,
    acked: u64,
    abusive_closed: u64,
}

fn show(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.decimals$}"))
}

impl Sample {
    /// What the server holds beside RocksDB's caches and memtables.
    fn own_mib(&self) -> Option<f64> {
        Some(self.rss_mib? - self.rocksdb_mib?)
    }

    fn row(&self) -> Vec<String> {
        vec![
            format!("{:.0}", self.seconds),
            show(self.rss_mib, 1),
            show(self.rocksdb_mib, 1),
            show(self.own_mib(), 1),
            self.fds
                .map_or_else(|| "-".to_owned(), |fds| fds.to_string()),
            show(self.cpu_pct, 1),
            self.appends.to_string(),
            format!("{:.2}", self.p50_ms),
            format!("{:.2}", self.p99_ms),
            self.reads.to_string(),
            self.delivered.to_string(),
            self.acked.to_string(),
            self.abusive_closed.to_string(),
        ]
    }
}

const HEADER: [&str; 13] = [
    "t s",
    "RSS MiB",
    "RocksDB MiB",
    "RSS - RocksDB MiB",
    "fds",
    "CPU %",
    "appends",
    "p50 ms",
    "p99 ms",
    "reads",
    "sub events",
    "acked",
    "abusive closed",
];

/// The median of the values `pick` finds in `samples`.
fn median(samples: &[Sample], pick: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = samples.iter().filter_map(pick).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Start, end and max of one column.
fn summary_row(
    name: &str,
    samples: &[Sample],
    pick: impl Fn(&Sample) -> Option<f64>,
) -> Vec<String> {
    let values: Vec<f64> = samples.iter().filter_map(&pick).collect();
    let max = values.iter().copied().reduce(f64::max);
    vec![
        name.to_owned(),
        show(values.first().copied(), 2),
        show(values.last().copied(), 2),
        show(max, 2),
    ]
}

/// Runs `cairn-bench soak`.
pub(crate) async fn run(args: &SoakArgs) -> Result<(), BoxError> {
    if args.writers == 0 || args.rate == 0 || args.sample_seconds == 0 {
        return Err("--writers, --rate and --sample-seconds must be at least 1".into());
    }
    let mut session = args.server.session("cairn-bench-soak-").await?;
    let pid = session.server_pid().or(args.server_pid);
    if pid.is_none() {
        eprintln!(
            "note: the server's pid is unknown (--addr without --server-pid): no RSS, fds or CPU"
        );
    }
    let target: SocketAddr = session
        .address
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("--addr must be http://<ip>:<port>, got {}", session.address))?;
    let abusive = if target.ip().is_loopback() {
        args.abusive
    } else {
        eprintln!("note: {target} is not a loopback address: no abusive connections");
        0
    };
    let setup = Client::connect(session.address.clone()).await?;
    let info = setup.info().await?;
    setup
        .create_group(
            "soak",
            "$ce-soak",
            GroupOptions {
                start: GroupStart::End,
                ..GroupOptions::default()
            },
        )
        .await?;
    eprintln!(
        "server {} (cairn {}, durability {}): soak for {:?}: {} writers at {} appends/s, {} readers, \
         {} live + 1 catch-up subscriptions, {} consumers, {} idle clients, {} abusive slots",
        session.address,
        info.version,
        info.durability,
        args.duration,
        args.writers,
        args.rate,
        args.readers,
        args.subscribers,
        args.consumers,
        args.idle,
        abusive
    );

    let mut idle = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        let client = Client::connect(session.address.clone()).await?;
        client.info().await?;
        idle.push(client);
    }

    let started = Instant::now();
    let load = Load {
        address: session.address.clone(),
        end: started + args.duration,
        counters: Arc::new(Counters::default()),
    };
    let mut tasks = JoinSet::new();
    let every = Duration::from_secs_f64(args.writers as f64 / args.rate as f64);
    for w in 0..args.writers {
        tasks.spawn(writer(load.clone(), w as u64, every));
    }
    for r in 0..args.readers {
        tasks.spawn(reader(load.clone(), r as u64, args.writers as u64));
    }
    for _ in 0..args.subscribers {
        tasks.spawn(live_subscriber(load.clone()));
    }
    tasks.spawn(catch_up_subscriber(load.clone()));
    for n in 0..args.consumers {
        tasks.spawn(consumer(load.clone(), n));
    }
    for slot in 0..abusive {
        tasks.spawn(abuser(load.clone(), target, slot as u64));
    }

    let counters = Arc::clone(&load.counters);
    let mut samples = Vec::new();
    let mut before = resources(pid);
    let mut last = (started, [0u64; 5]);
    let interval = Duration::from_secs(args.sample_seconds);
    let mut next = started;
    eprintln!("{}", HEADER.join(" | "));
    let mut failed_task = None;
    while load.running() {
        next += interval;
        let sleep = tokio::time::sleep_until(next.min(load.end).into());
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => {}
            joined = tasks.join_next(), if !tasks.is_empty() => {
                match joined {
                    Some(Ok(Ok(()))) | None => {}
                    Some(Ok(Err(error))) => {
                        failed_task = Some(error.to_string());
                        break;
                    }
                    Some(Err(error)) => {
                        failed_task = Some(error.to_string());
                        break;
                    }
                }
                next -= interval;
                continue;
            }
        }
        let now = Instant::now();
        let current = resources(pid);
        let rocksdb_mib = match tokio::time::timeout(Duration::from_secs(5), setup.info()).await {
            Ok(Ok(info)) => Some(
                (info.rocksdb_block_cache_bytes
                    + info.rocksdb_memtable_bytes
                    + info.rocksdb_table_readers_bytes) as f64
                    / (1024.0 * 1024.0),
            ),
            _ => None,
        };
        let totals = [
            Counters::get(&counters.appends),
            Counters::get(&counters.reads),
            Counters::get(&counters.delivered),
            Counters::get(&counters.acked),
            Counters::get(&counters.abusive_closed),
        ];
        let latencies = std::mem::take(&mut *counters.latencies.lock().expect("latencies"));
        let latency = Latency::from_nanos(latencies);
        let elapsed = now.duration_since(last.0).as_secs_f64();
        let cpu_pct = match (before.cpu_ticks, current.cpu_ticks) {
            (Some(a), Some(b)) if elapsed > 0.0 => {
                Some((b.saturating_sub(a)) as f64 / USER_HZ / elapsed * 100.0)
            }
            _ => None,
        };
        let delta = |i: usize| totals[i] - last.1[i];
        let sample = Sample {
            seconds: now.duration_since(started).as_secs_f64(),
            rss_mib: current.rss.map(|bytes| bytes as f64 / f64::from(1 << 20)),
            rocksdb_mib,
            fds: current.fds,
            cpu_pct,
            appends: delta(0),
            p50_ms: latency.p50_us / 1_000.0,
            p99_ms: latency.p99_us / 1_000.0,
            reads: delta(1),
            delivered: delta(2),
            acked: delta(3),
            abusive_closed: delta(4),
        };
        eprintln!("{}", sample.row().join(" | "));
        samples.push(sample);
        before = current;
        last = (now, totals);
    }

    // Stop the load (tasks notice the end; abusive waits are cut here).
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let mut idle_lost = 0;
    for client in &idle {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(10), client.is_serving()).await,
            Ok(Ok(true))
        ) {
            idle_lost += 1;
        }
    }
    drop(idle);
    let group = setup.group_info("soak").await.ok();
    session.stop()?;

    let rows: Vec<Vec<String>> = samples.iter().map(Sample::row).collect();
    let mut report = String::new();
    writeln!(report, "\n{}", markdown_table(&HEADER, &rows))?;
    let summary = vec![
        summary_row("RSS MiB", &samples, |s| s.rss_mib),
        summary_row("RocksDB MiB", &samples, |s| s.rocksdb_mib),
        summary_row("RSS - RocksDB MiB", &samples, Sample::own_mib),
        summary_row("fds", &samples, |s| s.fds.map(|fds| fds as f64)),
        summary_row("CPU %", &samples, |s| s.cpu_pct),
        summary_row("appends per sample", &samples, |s| Some(s.appends as f64)),
        summary_row("append p50 ms", &samples, |s| Some(s.p50_ms)),
        summary_row("append p99 ms", &samples, |s| Some(s.p99_ms)),
    ];
    writeln!(
        report,
        "\n{}",
        markdown_table(&["column", "start", "end", "max"], &summary)
    )?;
    let c = &counters;
    writeln!(
        report,
        "\ntotals: {} appends ({} failed), {} reads ({} failed), {} subscription events, {} catch-ups \
         ({} subscription errors), {} acked ({} consumer errors), {} abusive connections \
         ({} closed by the server, {} never closed, {} stalled reads; slowest close of a silent or \
         garbage connection {} ms), {} of {} idle clients lost",
        Counters::get(&c.appends),
        Counters::get(&c.append_errors),
        Counters::get(&c.reads),
        Counters::get(&c.read_errors),
        Counters::get(&c.delivered),
        Counters::get(&c.catch_ups),
        Counters::get(&c.subscription_errors),
        Counters::get(&c.acked),
        Counters::get(&c.consumer_errors),
        Counters::get(&c.abusive_opened),
        Counters::get(&c.abusive_closed),
        Counters::get(&c.abusive_not_closed),
        Counters::get(&c.stalled_reads),
        Counters::get(&c.slowest_close_ms),
        idle_lost,
        args.idle,
    )?;
    if let Some(group) = &group {
        writeln!(
            report,
            "group soak: delivered {}, acked {}, in flight {}, waiting {}, parked {}",
            group.delivered_total, group.acked_total, group.in_flight, group.waiting, group.parked
        )?;
    }

    let mut failures = Vec::new();
    if let Some(error) = failed_task {
        failures.push(format!("a load task failed: {error}"));
    }
    let quarter = (samples.len() / 4).max(1);
    if samples.len() >= 4 {
        let (first, last) = (&samples[..quarter], &samples[samples.len() - quarter..]);
        if let (Some(a), Some(b)) = (median(first, |s| s.rss_mib), median(last, |s| s.rss_mib)) {
            writeln!(
                report,
                "RSS median: first quarter {a:.1} MiB, last quarter {b:.1} MiB (growth {:.1}; \
                 RocksDB's block cache fills up to its capacity and is judged apart)",
                b - a
            )?;
        }
        if let (Some(a), Some(b)) = (
            median(first, |s| s.rocksdb_mib),
            median(last, |s| s.rocksdb_mib),
        ) {
            writeln!(
                report,
                "RocksDB (block cache + memtables + table readers) median: first quarter {a:.1} MiB, \
                 last quarter {b:.1} MiB (growth {:.1}; bounded by block_cache_bytes and the write buffers)",
                b - a
            )?;
        }
        // The check: what the server holds beside RocksDB's bounded caches.
        if let (Some(a), Some(b)) = (
            median(first, Sample::own_mib),
            median(last, Sample::own_mib),
        ) {
            let allowed =
                (args.rss_tolerance_mib as f64).max(a * args.rss_tolerance_pct as f64 / 100.0);
            writeln!(
                report,
                "RSS - RocksDB median: first quarter {a:.1} MiB, last quarter {b:.1} MiB (growth {:.1}, allowed {allowed:.1})",
                b - a
            )?;
            if b - a > allowed {
                failures.push(format!(
                    "RSS beside RocksDB's caches grew by {:.1} MiB (allowed {allowed:.1})",
                    b - a
                ));
            }
        } else if let (Some(a), Some(b)) =
            (median(first, |s| s.rss_mib), median(last, |s| s.rss_mib))
        {
            // No RocksDB figures (an older server): judge the whole RSS.
            let allowed =
                (args.rss_tolerance_mib as f64).max(a * args.rss_tolerance_pct as f64 / 100.0);
            if b - a > allowed {
                failures.push(format!(
                    "RSS grew by {:.1} MiB (allowed {allowed:.1}; the server reports no RocksDB figures)",
                    b - a
                ));
            }
        }
        let fds = |s: &Sample| s.fds.map(|fds| fds as f64);
        if let (Some(a), Some(b)) = (median(first, fds), median(last, fds)) {
            writeln!(
                report,
                "fds median: first quarter {a:.0}, last quarter {b:.0} (growth {:.0}, allowed {})",
                b - a,
                args.fd_tolerance
            )?;
            if b - a > args.fd_tolerance as f64 {
                failures.push(format!(
                    "open fds grew by {:.0} (allowed {})",
                    b - a,
                    args.fd_tolerance
                ));
            }
        }
    } else {
        writeln!(report, "fewer than 4 samples: no growth check")?;
    }
    if Counters::get(&c.append_errors) > 0 {
        failures.push(format!(
            "{} appends failed",
            Counters::get(&c.append_errors)
        ));
    }
    if Counters::get(&c.abusive_not_closed) > 0 {
        failures.push(format!(
            "{} abusive connections were never closed by the server",
            Counters::get(&c.abusive_not_closed)
        ));
    }
    if idle_lost > 0 {
        failures.push(format!("{idle_lost} idle clients no longer answered"));
    }
    print!("{report}");
    if failures.is_empty() {
        println!("soak: OK");
        Ok(())
    } else {
        Err(format!("soak failed: {}", failures.join("; ")).into())
    }
}
