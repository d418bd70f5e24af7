//! The server's metrics, in the Prometheus/OpenMetrics text format
//! (`prometheus-client` encodes it; nothing here formats text by hand).
//!
//! Two kinds of figures:
//! - **counted as they happen**: appends by result with their events and
//!   bytes, append latency, and, through the store's [`CommitObserver`], commit
//!   group sizes and the group write (WAL fsync) latency. These live in the
//!   registry for the server's lifetime.
//! - **read at scrape time**: everything the engine or the store already
//!   knows (head, streams, events, disk and RocksDB memory, queue depth, reads
//!   by kind, subscriptions, consumer groups, scavenges, the process's RSS,
//!   CPU and open files). [`Metrics::render`] takes a [`Snapshot`] the engine
//!   gathered and encodes it with the registry; a scrape never holds a lock
//!   anyone else waits on.
//!
//! In cluster mode the snapshot also holds this node's raft state
//! ([`RaftFigures`]), read through the [`ClusterFigures`] hook the server
//! sets on the engine: the engine knows nothing of the cluster crate, only
//! these plain figures. A single node has no hook, and no `cairn_raft_*`
//! metric appears.
//!
//! Label cardinality is bounded: `result` and `kind` take a fixed set of
//! values, `group` one per consumer group (at most `max_groups`) and
//! `follower` one per other member of the cluster. No metric has a
//! per-stream label.
//!
//! This module must not block (the snapshot's storage figures are gathered on
//! the blocking pool by [`crate::Engine::render_metrics`]) and must not name a
//! wire type.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_storage::{CommitObserver, CommittedGroup, MemoryUsage, ReadKind, ReadStats, StoreInfo};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::Error;

/// The `result` label of the append counters: what an append came to.
/// A fixed set, so the label's cardinality is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppendResult {
    /// Written (or an exact idempotent retry of a written append).
    Ok,
    /// An expected revision did not hold.
    WrongExpectedRevision,
    /// A DCB append condition did not hold.
    ConditionFailed,
    /// A stream was deleted or tombstoned.
    StreamDeleted,
    /// An event id was already written elsewhere.
    DuplicateEventId,
    /// Malformed, or over a size limit.
    Invalid,
    /// The caller may not write there (or is not authenticated).
    Denied,
    /// Refused for load or shutdown; retry later.
    Unavailable,
    /// The store failed (fail-stop, corruption, I/O).
    Failed,
}

impl AppendResult {
    /// Every result, so that each series exists (at 0) from the start.
    const ALL: [AppendResult; 9] = [
        AppendResult::Ok,
        AppendResult::WrongExpectedRevision,
        AppendResult::ConditionFailed,
        AppendResult::StreamDeleted,
        AppendResult::DuplicateEventId,
        AppendResult::Invalid,
        AppendResult::Denied,
        AppendResult::Unavailable,
        AppendResult::Failed,
    ];

    /// The result of an append that failed with `error`.
    pub fn of_error(error: &Error) -> Self {
        use cairn_storage::Error as Store;
        match error {
            Error::Store(Store::WrongExpectedRevision { .. }) => {
                AppendResult::WrongExpectedRevision
            }
            Error::Store(Store::AppendConditionFailed { .. }) => AppendResult::ConditionFailed,
            Error::Store(Store::StreamNotFound { .. } | Store::StreamTombstoned { .. }) => {
                AppendResult::StreamDeleted
            }
            Error::Store(Store::DuplicateEventId { .. }) => AppendResult::DuplicateEventId,
            Error::Store(Store::InvalidArgument(_) | Store::LimitExceeded { .. })
            | Error::InvalidArgument(_)
            | Error::LimitExceeded(_) => AppendResult::Invalid,
            Error::PermissionDenied { .. } | Error::Unauthenticated(_) => AppendResult::Denied,
            Error::Store(Store::Overloaded { .. } | Store::ShuttingDown)
            | Error::Overloaded { .. }
            | Error::ShuttingDown => AppendResult::Unavailable,
            _ => AppendResult::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            AppendResult::Ok => "ok",
            AppendResult::WrongExpectedRevision => "wrong_expected_revision",
            AppendResult::ConditionFailed => "condition_failed",
            AppendResult::StreamDeleted => "stream_deleted",
            AppendResult::DuplicateEventId => "duplicate_event_id",
            AppendResult::Invalid => "invalid",
            AppendResult::Denied => "denied",
            AppendResult::Unavailable => "unavailable",
            AppendResult::Failed => "failed",
        }
    }
}

/// Labels of the append counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Labels of the per-kind read counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// Labels of the per-group figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

/// Labels of the leader's per-follower figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FollowerLabel {
    follower: String,
}

/// Labels of the build info.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// One consumer group's figures at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFigures {
    /// The group's name (its label).
    pub name: String,
    /// Consumers connected now.
    pub consumers: u64,
    /// Events held by consumers, unacknowledged.
    pub in_flight: u64,
    /// Events parked and not replayed yet.
    pub parked: u64,
    /// Acks that finished an event, since the group's actor started.
    pub acked_total: u64,
    /// Retries counted (timeouts, retry nacks, disconnects), since it started.
    pub retried_total: u64,
    /// Events parked, since it started.
    pub parked_total: u64,
    /// Events between the group's checkpoint and the head of its source.
    pub lag: u64,
}

/// What scavenges did since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScavengeFigures {
    /// Scavenges that ended (finished, stopped or failed).
    pub runs: u64,
    /// Of those, the ones that failed.
    pub failed_runs: u64,
    /// Events they removed.
    pub events_removed: u64,
    /// Bytes of records they removed.
    pub bytes_removed: u64,
}

/// What the leader knows of one node it replicates to (a voter or a
/// learner; never itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowerFigures {
    /// The node's id (its label).
    pub id: u64,
    /// Index of the last entry known to be on it; `None` before the leader
    /// learnt of any (the metric is then absent, as index 0 is an entry).
    pub matched_index: Option<u64>,
    /// Entries of the leader's log it lacks.
    pub lag_entries: u64,
}

/// This node's raft state at scrape time, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftFigures {
    /// This node's id.
    pub node_id: u64,
    /// Whether it leads now.
    pub is_leader: bool,
    /// Its current term.
    pub term: u64,
    /// Index of the last entry of its raft log; `None` while the log is
    /// empty (index 0 is an entry, so 0 cannot stand for none).
    pub last_log_index: Option<u64>,
    /// Index of the last entry it applied; `None` before the first.
    pub last_applied_index: Option<u64>,
    /// The leader it knows; `None` while it knows none (an election).
    pub leader_id: Option<u64>,
    /// Voters of the membership its log holds.
    pub voters: u64,
    /// Only on the leader (empty elsewhere): each node it replicates to.
    pub followers: Vec<FollowerFigures>,
}

/// Where the engine reads this node's [`RaftFigures`] at scrape time: the
/// server implements it over its cluster node and sets it once on the
/// engine ([`crate::Engine::set_cluster_figures`]).
///
/// Called on the runtime, once per scrape: it must not block or wait (copy
/// what raft already published, as its metrics channel holds it).
pub trait ClusterFigures: Send + Sync {
    /// This node's raft figures now.
    fn raft_figures(&self) -> RaftFigures;
}

/// The process, from `/proc/self` (zeros where it is not readable).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessFigures {
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessFigures {
    /// Reads this process's figures now; `started` is its start time.
    pub fn read(start_time_seconds: f64) -> Self {
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("VmRSS:"))
                    .and_then(|value| {
                        value
                            .trim()
                            .trim_end_matches("kB")
                            .trim()
                            .parse::<u64>()
                            .ok()
                    })
            })
            .map_or(0, |kib| kib * 1024);
        let ticks_per_second = rustix::param::clock_ticks_per_second() as f64;
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|stat| {
                // The command name (field 2) may hold spaces; the fields after
                // its closing parenthesis are space-separated. utime and stime
                // are fields 14 and 15, i.e. the 12th and 13th after it.
                let after_name = stat.rsplit_once(')')?.1;
                let mut fields = after_name.split_whitespace().skip(11);
                let user: u64 = fields.next()?.parse().ok()?;
                let system: u64 = fields.next()?.parse().ok()?;
                Some((user + system) as f64 / ticks_per_second.max(1.0))
            })
            .unwrap_or(0.0);
        let open_fds =
            std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64);
        Self {
            resident_bytes,
            cpu_seconds,
            open_fds,
            start_time_seconds,
        }
    }
}

/// Everything read at scrape time, gathered by the engine.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Head, streams and events.
    pub store: StoreInfo,
    /// Storage reads (calls and events by kind).
    pub reads: ReadStats,
    /// Bytes of the data directory.
    pub disk_bytes: u64,
    /// RocksDB's memory.
    pub memory: MemoryUsage,
    /// Requests waiting for the committer.
    pub queue_depth: u64,
    /// Catch-up subscriptions open now.
    pub subscriptions_active: u64,
    /// Times a subscriber fell behind the live ring (moved back to storage).
    pub fell_behind_total: u64,
    /// Events delivered to subscriptions.
    pub delivered_total: u64,
    /// Bytes of event data held for clients now, and the bound.
    pub buffered_bytes: (u64, u64),
    /// Client writes in flight.
    pub inflight_writes: u64,
    /// Consumer groups.
    pub groups: Vec<GroupFigures>,
    /// Scavenges.
    pub scavenges: ScavengeFigures,
    /// The process.
    pub process: ProcessFigures,
    /// Seconds since the engine started.
    pub uptime: Duration,
    /// This node's raft state; `None` on a single node.
    pub raft: Option<RaftFigures>,
}

/// Histogram buckets of latencies: 100 µs to ~52 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.0, 20)
}

/// Histogram buckets of group sizes: 1 to 4096, doubling.
fn size_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 13)
}

/// The counters and histograms fed as things happen.
#[derive(Debug)]
struct Live {
    appends: Family<ResultLabel, Counter>,
    events_appended: Family<ResultLabel, Counter>,
    bytes_appended: Family<ResultLabel, Counter>,
    append_seconds: Histogram,
    group_events: Histogram,
    group_requests: Histogram,
    group_write_seconds: Histogram,
    groups_committed: Counter,
}

impl CommitObserver for Live {
    fn group_committed(&self, group: &CommittedGroup) {
        self.groups_committed.inc();
        self.group_events.observe(group.events as f64);
        self.group_requests.observe(group.requests as f64);
        self.group_write_seconds.observe(group.write.as_secs_f64());
    }
}

/// The engine's metrics: the live counters and the registry that encodes
/// them with the scrape-time [`Snapshot`].
pub struct Metrics {
    live: Arc<Live>,
    registry: Registry,
    /// The snapshot the collector encodes; set by `render` just before it
    /// encodes (scrapes are serialised by `render`'s caller holding it).
    current: Arc<Mutex<Snapshot>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics (every counter at zero).
    pub fn new() -> Self {
        let live = Arc::new(Live {
            appends: Family::default(),
            events_appended: Family::default(),
            bytes_appended: Family::default(),
            append_seconds: Histogram::new(latency_buckets()),
            group_events: Histogram::new(size_buckets()),
            group_requests: Histogram::new(size_buckets()),
            group_write_seconds: Histogram::new(latency_buckets()),
            groups_committed: Counter::default(),
        });
        for result in AppendResult::ALL {
            let label = ResultLabel {
                result: result.label(),
            };
            // Creating the series is the point; the guards drop at once.
            drop(live.appends.get_or_create(&label));
            drop(live.events_appended.get_or_create(&label));
            drop(live.bytes_appended.get_or_create(&label));
        }
        let mut registry = Registry::default();
        registry.register(
            "cairn_appends",
            "Append requests (single and multi-stream) by result",
            live.appends.clone(),
        );
        registry.register(
            "cairn_appended_events",
            "Events in append requests, by the request's result",
            live.events_appended.clone(),
        );
        registry.register_with_unit(
            "cairn_appended",
            "Bytes of events (data, metadata, type, stream) in append requests, by result",
            Unit::Bytes,
            live.bytes_appended.clone(),
        );
        registry.register_with_unit(
            "cairn_append_duration",
            "Time from an append's arrival at the engine to its answer (durable when ok)",
            Unit::Seconds,
            live.append_seconds.clone(),
        );
        registry.register(
            "cairn_commit_groups",
            "Commit groups written (one RocksDB write, one WAL sync each)",
            live.groups_committed.clone(),
        );
        registry.register(
            "cairn_commit_group_events",
            "Events per commit group",
            live.group_events.clone(),
        );
        registry.register(
            "cairn_commit_group_requests",
            "Requests per commit group (they share one WAL sync)",
            live.group_requests.clone(),
        );
        registry.register_with_unit(
            "cairn_wal_sync_duration",
            "Time of each commit group's RocksDB write: WAL append and, with durability sync, the fsync",
            Unit::Seconds,
            live.group_write_seconds.clone(),
        );
        registry.register(
            "cairn_build",
            "The server's build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let current = Arc::new(Mutex::new(Snapshot::default()));
        registry.register_collector(Box::new(SnapshotCollector {
            current: Arc::clone(&current),
        }));
        Self {
            live,
            registry,
            current,
        }
    }

    /// The observer to give the store ([`cairn_storage::Store::observe_commits`]).
    pub fn commit_observer(&self) -> Arc<dyn CommitObserver> {
        Arc::clone(&self.live) as Arc<dyn CommitObserver>
    }

    /// Counts one append request: its result, events and bytes, and how long
    /// it took.
    pub fn append_finished(&self, result: AppendResult, events: u64, bytes: u64, took: Duration) {
        let label = ResultLabel {
            result: result.label(),
        };
        self.live.appends.get_or_create(&label).inc();
        self.live
            .events_appended
            .get_or_create(&label)
            .inc_by(events);
        self.live.bytes_appended.get_or_create(&label).inc_by(bytes);
        self.live.append_seconds.observe(took.as_secs_f64());
    }

    /// Encodes every metric, with `snapshot` for the scrape-time ones.
    pub fn render(&self, snapshot: Snapshot) -> String {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String does not fail; a collector error is a bug.
            let _ = writeln!(text, "# encoding failed: {error}");
        }
        text
    }
}

/// Encodes the scrape-time [`Snapshot`].
#[derive(Debug)]
struct SnapshotCollector {
    current: Arc<Mutex<Snapshot>>,
}

/// Encodes one unlabelled gauge.
fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

/// Encodes one unlabelled counter.
fn counter<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> std::fmt::Result
where
    ConstCounter<V>: EncodeMetric,
{
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, unit, counter.metric_type())?;
    counter.encode(metric)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshot = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let encoder = &mut encoder;
        let bytes = Some(&Unit::Bytes);
        let seconds = Some(&Unit::Seconds);
        let store = &snapshot.store;
        gauge(
            encoder,
            "cairn_head_position",
            "The position the next event will get (events ever appended)",
            None,
            store.head as i64,
        )?;
        gauge(
            encoder,
            "cairn_streams",
            "Streams the store knows, in any state",
            None,
            store.stream_count as i64,
        )?;
        gauge(
            encoder,
            "cairn_events",
            "Events stored (appended minus removed by scavenges)",
            None,
            store.event_count as i64,
        )?;
        gauge(
            encoder,
            "cairn_store_disk",
            "Bytes of the data directory (SST files, WAL, manifest)",
            bytes,
            snapshot.disk_bytes as i64,
        )?;
        let memory = &snapshot.memory;
        gauge(
            encoder,
            "cairn_rocksdb_block_cache_usage",
            "Bytes in RocksDB's block cache (the memtables' charge included)",
            bytes,
            memory.block_cache_bytes as i64,
        )?;
        gauge(
            encoder,
            "cairn_rocksdb_block_cache_capacity",
            "Capacity of RocksDB's block cache (block_cache_bytes)",
            bytes,
            memory.block_cache_capacity as i64,
        )?;
        gauge(
            encoder,
            "cairn_rocksdb_block_cache_pinned",
            "Bytes of the block cache pinned by readers",
            bytes,
            memory.block_cache_pinned_bytes as i64,
        )?;
        gauge(
            encoder,
            "cairn_rocksdb_memtables",
            "Bytes of RocksDB's memtables, all column families (charged to the block cache)",
            bytes,
            memory.memtable_bytes as i64,
        )?;
        gauge(
            encoder,
            "cairn_rocksdb_table_readers",
            "Bytes of SST index and filter blocks outside the block cache",
            bytes,
            memory.table_readers_bytes as i64,
        )?;
        gauge(
            encoder,
            "cairn_committer_queue_depth",
            "Requests waiting for the committer",
            None,
            snapshot.queue_depth as i64,
        )?;
        gauge(
            encoder,
            "cairn_inflight_writes",
            "Client writes admitted and not yet answered",
            None,
            snapshot.inflight_writes as i64,
        )?;
        gauge(
            encoder,
            "cairn_buffered",
            "Bytes of event data held on their way to clients",
            bytes,
            snapshot.buffered_bytes.0 as i64,
        )?;
        gauge(
            encoder,
            "cairn_buffered_limit",
            "Bound of cairn_buffered_bytes (max_buffered_bytes)",
            bytes,
            snapshot.buffered_bytes.1 as i64,
        )?;

        let mut reads = encoder.encode_descriptor(
            "cairn_reads",
            "Storage reads (pages), by what they read; includes subscription catch-up",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in ReadKind::ALL {
            let label = KindLabel { kind: kind.name() };
            ConstCounter::new(snapshot.reads.calls_by_kind[kind.index()])
                .encode(reads.encode_family(&label)?)?;
        }
        let mut events_read = encoder.encode_descriptor(
            "cairn_read_events",
            "Events returned by storage reads, by what they read",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in ReadKind::ALL {
            let label = KindLabel { kind: kind.name() };
            ConstCounter::new(snapshot.reads.events_by_kind[kind.index()])
                .encode(events_read.encode_family(&label)?)?;
        }

        gauge(
            encoder,
            "cairn_subscriptions_active",
            "Catch-up subscriptions open now",
            None,
            snapshot.subscriptions_active as i64,
        )?;
        counter(
            encoder,
            "cairn_subscription_fell_behind",
            "Times a subscriber fell behind the live ring and went back to storage reads",
            None,
            snapshot.fell_behind_total,
        )?;
        counter(
            encoder,
            "cairn_subscription_delivered_events",
            "Events delivered to catch-up subscriptions",
            None,
            snapshot.delivered_total,
        )?;

        gauge(
            encoder,
            "cairn_groups",
            "Consumer groups",
            None,
            snapshot.groups.len() as i64,
        )?;
        type Pick = fn(&GroupFigures) -> u64;
        let group_gauges: [(&str, &str, Pick); 4] = [
            (
                "cairn_group_consumers",
                "Consumers connected to the group",
                |g| g.consumers,
            ),
            (
                "cairn_group_in_flight",
                "Events held by the group's consumers, unacknowledged",
                |g| g.in_flight,
            ),
            (
                "cairn_group_parked",
                "Parked events of the group not replayed yet",
                |g| g.parked,
            ),
            (
                "cairn_group_lag",
                "Events between the group's checkpoint and the head of its source",
                |g| g.lag,
            ),
        ];
        for (name, help, pick) in group_gauges {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for group in &snapshot.groups {
                let label = GroupLabel {
                    group: group.name.clone(),
                };
                ConstGauge::new(pick(group) as i64).encode(family.encode_family(&label)?)?;
            }
        }
        let group_counters: [(&str, &str, Pick); 3] = [
            (
                "cairn_group_acked",
                "Acks that finished an event, since the group's actor started",
                |g| g.acked_total,
            ),
            (
                "cairn_group_retried",
                "Retries (timeouts, retry nacks, disconnects), since the actor started",
                |g| g.retried_total,
            ),
            (
                "cairn_group_parked_events",
                "Events parked, since the actor started",
                |g| g.parked_total,
            ),
        ];
        for (name, help, pick) in group_counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for group in &snapshot.groups {
                let label = GroupLabel {
                    group: group.name.clone(),
                };
                ConstCounter::new(pick(group)).encode(family.encode_family(&label)?)?;
            }
        }

        let scavenges = &snapshot.scavenges;
        counter(
            encoder,
            "cairn_scavenges",
            "Scavenges that ended (finished, stopped or failed) since the server started",
            None,
            scavenges.runs,
        )?;
        counter(
            encoder,
            "cairn_scavenges_failed",
            "Scavenges that failed since the server started",
            None,
            scavenges.failed_runs,
        )?;
        counter(
            encoder,
            "cairn_scavenge_removed_events",
            "Events removed by scavenges since the server started",
            None,
            scavenges.events_removed,
        )?;
        counter(
            encoder,
            "cairn_scavenge_reclaimed",
            "Bytes of records removed by scavenges since the server started",
            bytes,
            scavenges.bytes_removed,
        )?;

        let process = &snapshot.process;
        gauge(
            encoder,
            "process_resident_memory",
            "Resident memory size",
            bytes,
            process.resident_bytes as i64,
        )?;
        counter(
            encoder,
            "process_cpu",
            "User and system CPU time spent",
            seconds,
            process.cpu_seconds,
        )?;
        gauge(
            encoder,
            "process_open_fds",
            "Open file descriptors",
            None,
            process.open_fds as i64,
        )?;
        gauge(
            encoder,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            seconds,
            process.start_time_seconds,
        )?;
        gauge(
            encoder,
            "cairn_uptime",
            "Time since the server started",
            seconds,
            snapshot.uptime.as_secs_f64(),
        )?;
        if let Some(raft) = &snapshot.raft {
            encode_raft(encoder, raft)?;
        }
        Ok(())
    }
}

/// Encodes this node's raft figures (cluster mode only). A figure that is
/// not known (no leader, an empty log, a follower the leader has no match
/// for) has no sample rather than a made-up value.
fn encode_raft(encoder: &mut DescriptorEncoder, raft: &RaftFigures) -> std::fmt::Result {
    gauge(
        encoder,
        "cairn_raft_node_id",
        "This node's id in the cluster",
        None,
        raft.node_id as i64,
    )?;
    gauge(
        encoder,
        "cairn_raft_is_leader",
        "1 while this node leads, 0 otherwise",
        None,
        i64::from(raft.is_leader),
    )?;
    gauge(
        encoder,
        "cairn_raft_term",
        "This node's current raft term",
        None,
        raft.term as i64,
    )?;
    if let Some(index) = raft.last_log_index {
        gauge(
            encoder,
            "cairn_raft_last_log_index",
            "Index of the last entry of this node's raft log",
            None,
            index as i64,
        )?;
    }
    if let Some(index) = raft.last_applied_index {
        gauge(
            encoder,
            "cairn_raft_last_applied_index",
            "Index of the last raft entry this node applied to its store",
            None,
            index as i64,
        )?;
    }
    if let Some(leader) = raft.leader_id {
        gauge(
            encoder,
            "cairn_raft_leader_id",
            "The id of the leader this node knows",
            None,
            leader as i64,
        )?;
    }
    gauge(
        encoder,
        "cairn_raft_members",
        "Voters of the cluster membership this node's log holds",
        None,
        raft.voters as i64,
    )?;
    if raft.followers.is_empty() {
        return Ok(());
    }
    let mut matched = encoder.encode_descriptor(
        "cairn_raft_follower_matched_index",
        "On the leader: index of the last entry known to be on each node it replicates to",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for follower in &raft.followers {
        if let Some(index) = follower.matched_index {
            let label = FollowerLabel {
                follower: follower.id.to_string(),
            };
            ConstGauge::new(index as i64).encode(matched.encode_family(&label)?)?;
        }
    }
    let mut lag = encoder.encode_descriptor(
        "cairn_raft_follower_lag_entries",
        "On the leader: entries of its log each node it replicates to lacks",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for follower in &raft.followers {
        let label = FollowerLabel {
            follower: follower.id.to_string(),
        };
        ConstGauge::new(follower.lag_entries as i64).encode(lag.encode_family(&label)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of `text` whose name (and labels) start `cairn_raft_`,
    /// as `name{labels} value` lines.
    fn raft_samples(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|line| line.starts_with("cairn_raft_"))
            .collect()
    }

    #[test]
    fn a_leaders_raft_figures_are_rendered_with_one_series_per_follower() {
        let raft = RaftFigures {
            node_id: 1,
            is_leader: true,
            term: 4,
            last_log_index: Some(9),
            last_applied_index: Some(8),
            leader_id: Some(1),
            voters: 3,
            followers: vec![
                FollowerFigures {
                    id: 2,
                    matched_index: Some(7),
                    lag_entries: 2,
                },
                // Nothing matched yet: no matched sample, the whole log lags.
                FollowerFigures {
                    id: 3,
                    matched_index: None,
                    lag_entries: 10,
                },
            ],
        };
        let text = Metrics::new().render(Snapshot {
            raft: Some(raft),
            ..Snapshot::default()
        });
        assert_eq!(
            raft_samples(&text),
            [
                "cairn_raft_node_id 1",
                "cairn_raft_is_leader 1",
                "cairn_raft_term 4",
                "cairn_raft_last_log_index 9",
                "cairn_raft_last_applied_index 8",
                "cairn_raft_leader_id 1",
                "cairn_raft_members 3",
                "cairn_raft_follower_matched_index{follower=\"2\"} 7",
                "cairn_raft_follower_lag_entries{follower=\"2\"} 2",
                "cairn_raft_follower_lag_entries{follower=\"3\"} 10",
            ]
        );
        assert!(text.contains("# TYPE cairn_raft_follower_lag_entries gauge"));
    }

    #[test]
    fn a_follower_without_a_leader_shows_no_leader_and_no_follower_series() {
        let raft = RaftFigures {
            node_id: 2,
            is_leader: false,
            term: 5,
            last_log_index: None,
            last_applied_index: None,
            leader_id: None,
            voters: 3,
            followers: Vec::new(),
        };
        let text = Metrics::new().render(Snapshot {
            raft: Some(raft),
            ..Snapshot::default()
        });
        assert_eq!(
            raft_samples(&text),
            [
                "cairn_raft_node_id 2",
                "cairn_raft_is_leader 0",
                "cairn_raft_term 5",
                "cairn_raft_members 3",
            ]
        );
    }

    #[test]
    fn a_single_node_renders_no_raft_metric() {
        let text = Metrics::new().render(Snapshot::default());
        assert!(text.contains("cairn_uptime_seconds"), "{text}");
        assert!(!text.contains("cairn_raft_"), "{text}");
    }
}
