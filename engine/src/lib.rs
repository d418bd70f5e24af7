//! `cairn-engine`: what the Cairn server does, in plain Rust types, under every
//! protocol facade.
//!
//! The engine owns the store handle and everything the server runs over it:
//! bounded writes ([`Engine::append_multi`], deletes, metadata), reads on the
//! blocking pool, the catch-up/live feed engine ([`feeds`]), consumer groups
//! ([`groups`]), the task tracker every background task is spawned on, and the
//! shutdown signal. A facade (gRPC `cairn.v1`, the KurrentDB-compatible one, HTTP)
//! holds an [`Engine`], converts its wire messages to these types and maps
//! [`Error`] to its wire status in one function.
//!
//! It must not name a wire type (no tonic, prost or `cairn-proto`: `cargo tree
//! -p cairn-engine` shows it), must not touch RocksDB except through
//! `cairn-storage`, and must not block the runtime: storage reads run on the
//! blocking pool, writes go to the store's committer thread.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_engine::{Engine, EngineOptions, Principal};
//! use cairn_storage::{EventData, ExpectedRevision, Store, StoreOptions, StreamAppend};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), StoreOptions::default())?;
//! let engine = Engine::start(store, EngineOptions::default()).await?;
//! let results = engine
//!     .append_multi(&Principal::system(), vec![StreamAppend {
//!         stream: "order-1".into(),
//!         expected: ExpectedRevision::NoStream,
//!         events: vec![EventData::json("OrderPlaced", r#"{"sku":"tea"}"#)],
//!     }])
//!     .await?;
//! assert_eq!(results[0].current.revision(), Some(0));
//! engine.begin_shutdown();
//! engine.close().await;
//! # Ok(()) }
//! ```

mod budget;
mod error;
mod escape;
pub mod feeds;
pub mod groups;
pub mod metrics;
pub mod operations;
mod outbox;
pub mod security;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_storage::{
    AppendCondition, AppendResult, CurrentRevision, ExpectedRevision, ReadFilter, ReadSource,
    Store, StreamAppend, StreamInfo, StreamMetadata,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;

pub use budget::{ByteBudget, BytePermit};
pub use error::{EndReason, Error, Result};
pub use escape::Escaped;
pub use feeds::{
    Feed, FeedReceiver, FeedSpec, Feeds, StartFrom, SubscriptionLimits, SubscriptionStats, Target,
};
pub use groups::{GroupLimits, Groups};
pub use operations::{
    BackupStatus, LastBackup, Operations, ScavengeState, ScavengeStatus, ScavengeTotals,
    ScavengeTrigger,
};
pub use outbox::{Outbox, OutboxReceiver, StallWatch, Undelivered};
pub use security::acl::{Access, Visibility};
pub use security::{Credentials, Principal, Role, Security, SecurityOptions};

/// How long [`Engine::close`] waits for background tasks before closing the
/// store anyway (a storage read cannot be interrupted).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Default of [`EngineOptions::max_buffered_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;

/// Default of [`EngineOptions::client_stall_timeout`]: 60 s.
pub const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the engine is allowed to hold at once.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Client writes (appends, deletes, metadata, group changes) in flight at
    /// once; beyond it a write fails at once with [`Error::Overloaded`].
    pub max_inflight_writes: usize,
    /// Bytes of event data held on their way to clients, all calls together
    /// (read chunks, buffered subscription events): see
    /// [`Engine::buffer_budget`]. When it is spent, readers wait.
    pub max_buffered_bytes: usize,
    /// Catch-up subscriptions.
    pub subscriptions: SubscriptionLimits,
    /// Consumer groups.
    pub groups: GroupLimits,
    /// A call whose client takes none of its responses for this long while
    /// some wait is ended, and what it buffered is freed at once (see
    /// [`Engine::client_stall_timeout`]).
    pub client_stall_timeout: Duration,
    /// Authentication and authorization (disabled: insecure mode).
    pub security: SecurityOptions,
    /// Scavenge by itself this often (`None`: only when asked).
    pub auto_scavenge_interval: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_inflight_writes: 4096,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            subscriptions: SubscriptionLimits::default(),
            groups: GroupLimits::default(),
            client_stall_timeout: DEFAULT_CLIENT_STALL_TIMEOUT,
            security: SecurityOptions::default(),
            auto_scavenge_interval: None,
        }
    }
}

/// Admits client writes: refuses them while shutting down, and beyond the
/// in-flight bound, without ever waiting (a write never stalls a caller's task).
#[derive(Clone)]
pub(crate) struct WriteGate {
    /// One permit per write in flight.
    permits: Arc<Semaphore>,
    /// The bound, for the error message.
    limit: usize,
    /// Flips to `true` when the server shuts down.
    shutdown: watch::Receiver<bool>,
}

impl WriteGate {
    fn new(limit: usize, shutdown: watch::Receiver<bool>) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shutdown,
        }
    }

    /// Writes admitted and not yet answered.
    fn in_flight(&self) -> usize {
        self.limit.saturating_sub(self.permits.available_permits())
    }

    /// A permit to hold until the write is answered.
    pub(crate) fn enter(&self) -> Result<OwnedSemaphorePermit> {
        if *self.shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Error::Overloaded { limit: self.limit })
    }
}

/// A catch-up subscription as a client asks for it.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// What to follow: a stream, `$all`, `$ce-...` or `$et-...`.
    pub source: ReadSource,
    /// `$all`-style filter; empty lets everything through.
    pub filter: ReadFilter,
    /// Filtered position targets: a checkpoint every this many examined
    /// events; `None` takes [`feeds::DEFAULT_CHECKPOINT_INTERVAL`].
    pub checkpoint_interval: Option<u64>,
    /// Where to start.
    pub from: StartFrom,
}

/// The engine: cheap to clone, one per server, shared by every facade.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store every call works on.
    store: Store,
    /// Starts feed tasks (client subscriptions and group sources).
    feeds: Feeds,
    /// The consumer-group registry.
    groups: Groups,
    /// Users, tokens and access checks.
    security: Arc<Security>,
    /// Client writes in flight.
    writes: WriteGate,
    /// One permit per open client subscription.
    subscription_slots: Arc<Semaphore>,
    /// Messages buffered per client subscription.
    subscription_buffer: usize,
    /// See [`Engine::client_stall_timeout`].
    client_stall_timeout: Duration,
    /// Bytes of event data held for clients, all calls together.
    buffers: ByteBudget,
    /// Every background task that holds the store or writes to it; `close`
    /// waits for them before it closes the store.
    /// The scavenge job runner and backups.
    operations: Operations,
    tasks: TaskTracker,
    /// Flipping it to `true` ends feeds, group actors and new writes.
    shutdown: watch::Sender<bool>,
    /// When the engine started (uptime).
    started: Instant,
    /// When the engine started, wall clock (`process_start_time_seconds`).
    started_at: std::time::SystemTime,
    /// Counters, histograms and the scrape-time collector.
    metrics: metrics::Metrics,
    /// One scrape at a time (the collector encodes a shared snapshot).
    scrape: tokio::sync::Mutex<()>,
    /// Cluster mode: where scrapes read this node's raft figures. Set once,
    /// by the server right after start; empty on a single node.
    cluster_figures: std::sync::OnceLock<Arc<dyn metrics::ClusterFigures>>,
}

impl Engine {
    /// Starts the engine over `store`: restores every consumer group from it
    /// and starts their actors.
    pub async fn start(store: Store, options: EngineOptions) -> Result<Self> {
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let tasks = TaskTracker::new();
        let buffers = ByteBudget::new(options.max_buffered_bytes);
        let feeds = Feeds::new(
            store.clone(),
            shutdown_receiver.clone(),
            tasks.clone(),
            buffers.clone(),
        );
        let writes = WriteGate::new(options.max_inflight_writes, shutdown_receiver.clone());
        let groups = Groups::load(
            store.clone(),
            feeds.clone(),
            shutdown_receiver,
            writes.clone(),
            options.groups,
        )
        .await?;
        let security = Arc::new(Security::start(&store, options.security).await?);
        if store.is_clustered() {
            tasks.spawn(follow_the_role(
                store.clone(),
                groups.clone(),
                Arc::clone(&security),
                shutdown.subscribe(),
            ));
        }
        let operations = Operations::start(
            store.clone(),
            Arc::clone(&security),
            tasks.clone(),
            shutdown.subscribe(),
            options.auto_scavenge_interval,
        );
        let metrics = metrics::Metrics::new();
        store.observe_commits(metrics.commit_observer());
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                feeds,
                groups,
                security,
                writes,
                subscription_slots: Arc::new(Semaphore::new(
                    options.subscriptions.max_subscriptions.max(1),
                )),
                subscription_buffer: options.subscriptions.buffer.max(1),
                client_stall_timeout: options.client_stall_timeout.max(Duration::from_millis(1)),
                buffers,
                operations,
                tasks,
                shutdown,
                started: Instant::now(),
                started_at: std::time::SystemTime::now(),
                metrics,
                scrape: tokio::sync::Mutex::new(()),
                cluster_figures: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The store (for reads that need no engine logic: info, limits, the ring).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The consumer-group registry.
    pub fn groups(&self) -> &Groups {
        &self.inner.groups
    }

    /// Scavenge jobs and backups.
    pub fn operations(&self) -> &Operations {
        &self.inner.operations
    }

    /// Authentication and authorization.
    pub fn security(&self) -> &Arc<Security> {
        &self.inner.security
    }

    /// The server-wide budget of event data held on its way to clients.
    /// Feeds draw on it for every buffered event; a facade's read pipeline
    /// holds a [`BytePermit`] from it for every chunk until the transport has
    /// taken the chunk.
    pub fn buffer_budget(&self) -> &ByteBudget {
        &self.inner.buffers
    }

    /// How long a client call (read, subscription, consumer) may leave its
    /// responses untaken while some wait: then the call ends with
    /// [`Error::ClientStalled`] and what it buffered goes back to
    /// [`Engine::buffer_budget`] at once, even though the client never reads
    /// again. [`Engine::outbox`] makes a call's channel with it.
    pub fn client_stall_timeout(&self) -> Duration {
        self.inner.client_stall_timeout
    }

    /// The outgoing channel of a client call, with the client stall timeout.
    pub fn outbox<T>(&self, capacity: usize) -> (Outbox<T>, OutboxReceiver<T>) {
        outbox::channel(capacity, Some(self.inner.client_stall_timeout))
    }

    /// Subscription counters.
    pub fn subscription_stats(&self) -> &Arc<SubscriptionStats> {
        self.inner.feeds.stats()
    }

    /// The tracker every background task is spawned on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// How long the engine has run.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// True once [`Engine::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// A receiver that flips to `true` when shutdown begins.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Begins shutdown: new writes and subscriptions are refused, feeds end
    /// with [`EndReason::ShuttingDown`], group actors write their checkpoints
    /// and end their consumers.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// After [`Engine::begin_shutdown`]: waits (bounded) for every background
    /// task, then drains and closes the store. Every queued write is answered.
    pub async fn close(&self) {
        self.begin_shutdown();
        let tasks = &self.inner.tasks;
        tasks.close();
        if tokio::time::timeout(CLOSE_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tasks.len(),
                "background tasks still running after the grace period"
            );
        }
        let store = self.inner.store.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || store.shutdown()).await {
            tracing::error!(%error, "store shutdown task failed");
        }
    }

    /// Runs `work` on the blocking pool at once (not when first polled) and
    /// returns its outcome as a future. Tracked: `close` waits for it.
    pub fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> std::result::Result<T, cairn_storage::Error> + Send + 'static,
    ) -> impl Future<Output = Result<T>> + Send + 'static {
        let store = self.inner.store.clone();
        let task = self.inner.tasks.spawn_blocking(move || work(&store));
        async move {
            task.await
                .map_err(|error| Error::Internal(format!("storage task failed: {error}")))?
                .map_err(Error::Store)
        }
    }

    /// Ok when `by` may do `access` on `stream`; else
    /// [`Error::PermissionDenied`]. Every facade's stream call is checked
    /// with this (the engine's own write methods call it themselves).
    pub fn authorize(&self, by: &Principal, access: Access, stream: &str) -> Result<()> {
        self.inner.security.authorizer().check(by, access, stream)
    }

    /// Ok when `by` is an operator (`ops`) or an admin: consumer-group
    /// management, server operations. `operation` names it in the error.
    pub fn authorize_operations(&self, by: &Principal, operation: &str) -> Result<()> {
        if !self.inner.security.enabled() {
            return Ok(());
        }
        by.require_any(&[Role::Ops], operation)
    }

    /// What `by` may see of a read or subscription of `source`: a stream
    /// needs its read permission (else [`Error::PermissionDenied`]); an index
    /// (`$all`, `$ce-`, `$et-`) is open to every authenticated caller but
    /// shows only events of streams the caller may read.
    pub fn read_access(&self, by: &Principal, source: &ReadSource) -> Result<Visibility> {
        match source {
            ReadSource::Stream(stream) => {
                self.authorize(by, Access::Read, stream)?;
                Ok(Visibility::everything())
            }
            ReadSource::All
            | ReadSource::Category(_)
            | ReadSource::EventType(_)
            | ReadSource::Query(_) => Ok(self.inner.security.authorizer().visibility(by)),
        }
    }

    /// Ok when `by` may consume from `group`: a group on one stream needs
    /// that stream's read permission; a group on an index (`$all`, a
    /// category, a type) hands events of any stream to whoever joins, so only
    /// a caller who may read every stream may join it: an admin. (Filtering a
    /// shared group per consumer would take events from the others.)
    pub fn authorize_consume(&self, by: &Principal, group: &str) -> Result<()> {
        if !self.inner.security.enabled() || by.is_admin() {
            return Ok(());
        }
        let definition = self.inner.groups.definition(group)?;
        match ReadSource::parse(&definition.stream)? {
            ReadSource::Stream(stream) => self.authorize(by, Access::Read, &stream),
            _ => by.require_any(
                &[],
                "consume from a group on an index ($all, a category or a type)",
            ),
        }
    }

    /// Appends to one or more streams atomically (all parts or none), when
    /// `by` may write every one of them.
    pub async fn append_multi(
        &self,
        by: &Principal,
        parts: Vec<StreamAppend>,
    ) -> Result<Vec<AppendResult>> {
        self.append_multi_if(by, parts, None).await
    }

    /// [`Engine::append_multi`] with a DCB condition (see
    /// [`cairn_storage::Store::append_multi_if`]): it fails with
    /// `AppendConditionFailed`, writing nothing, when an event matching the
    /// condition's query exists after its position. The condition counts every
    /// event, also of streams `by` may not read: such a conflict tells the
    /// caller only that some matching event was written after its read, and
    /// where (positions are no secret: filtered reads checkpoint past hidden
    /// events too).
    pub async fn append_multi_if(
        &self,
        by: &Principal,
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
    ) -> Result<Vec<AppendResult>> {
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one stream".into(),
            ));
        }
        for part in &parts {
            cairn_storage::validate_stream_name(&part.stream)?;
        }
        let started = Instant::now();
        let events: usize = parts.iter().map(|part| part.events.len()).sum();
        let bytes: usize = parts
            .iter()
            .flat_map(|part| {
                part.events
                    .iter()
                    .map(|event| event.size() + part.stream.len())
            })
            .sum();
        let outcome = self.admitted_append(by, parts, condition).await;
        let result = match &outcome {
            Ok(_) => metrics::AppendResult::Ok,
            Err(error) => metrics::AppendResult::of_error(error),
        };
        self.inner
            .metrics
            .append_finished(result, events as u64, bytes as u64, started.elapsed());
        outcome
    }

    /// [`Engine::append_multi`] after validation: the access check, the
    /// write gate and the store.
    async fn admitted_append(
        &self,
        by: &Principal,
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
    ) -> Result<Vec<AppendResult>> {
        for part in &parts {
            self.authorize(by, Access::Write, &part.stream)?;
        }
        let _permit = self.inner.writes.enter()?;
        Ok(self.inner.store.append_multi_if(parts, condition).await?)
    }

    /// Cluster mode: `source` gives this node's raft figures to every
    /// scrape from now on. The source is this node's raft, which does not
    /// change while the engine runs, so only the first call counts; a later
    /// one is a bug and is ignored.
    pub fn set_cluster_figures(&self, source: Arc<dyn metrics::ClusterFigures>) {
        let first = self.inner.cluster_figures.set(source).is_ok();
        debug_assert!(first, "the cluster figures' source is set once");
    }

    /// Every metric in the Prometheus/OpenMetrics text format: the live
    /// counters and what the engine and the store know now. Storage figures
    /// are read on the blocking pool; scrapes run one at a time.
    pub async fn render_metrics(&self) -> Result<String> {
        let _one_at_a_time = self.inner.scrape.lock().await;
        let started_at = self.inner.started_at;
        let (store, reads, disk_bytes, memory, queue_depth, process) = self
            .blocking(move |store| {
                let start = started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                Ok((
                    store.info(),
                    store.read_stats(),
                    store.disk_bytes(),
                    store.memory_usage(),
                    store.queue_depth() as u64,
                    metrics::ProcessFigures::read(start),
                ))
            })
            .await?;
        let groups = self.group_figures(store.head).await;
        let subscriptions = self.subscription_stats();
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let snapshot = metrics::Snapshot {
            store,
            reads,
            disk_bytes,
            memory,
            queue_depth,
            subscriptions_active: subscriptions
                .active
                .load(std::sync::atomic::Ordering::Relaxed)
                as u64,
            fell_behind_total: load(&subscriptions.fell_behind),
            delivered_total: load(&subscriptions.delivered),
            buffered_bytes: (
                self.inner.buffers.in_use() as u64,
                self.inner.buffers.capacity() as u64,
            ),
            inflight_writes: self.inner.writes.in_flight() as u64,
            groups,
            scavenges: {
                let totals = self.inner.operations.totals();
                metrics::ScavengeFigures {
                    runs: totals.runs,
                    failed_runs: totals.failed_runs,
                    events_removed: totals.events_removed,
                    bytes_removed: totals.bytes_reclaimed,
                }
            },
            process,
            uptime: self.uptime(),
            raft: self
                .inner
                .cluster_figures
                .get()
                .map(|source| source.raft_figures()),
        };
        Ok(self.inner.metrics.render(snapshot))
    }

    /// Events between where a group resumes (after its checkpoint, or its
    /// start before the first checkpoint) and the head of its source:
    /// revisions for a group on one stream, positions otherwise (`head` is
    /// the store's head). The `cairn_group_lag` metric and the admin UI show it.
    pub fn group_lag(&self, report: &groups::GroupReport, head: u64) -> u64 {
        let stream = match ReadSource::parse(&report.definition.stream) {
            Ok(ReadSource::Stream(stream)) => Some(stream),
            _ => None,
        };
        let resume = report
            .status
            .checkpoint
            .as_ref()
            .map_or(report.definition.start_cursor, |checkpoint| {
                checkpoint.resume_cursor(stream.is_some())
            });
        let end = match &stream {
            Some(stream) => self
                .inner
                .store
                .stream_info(stream)
                .and_then(|info| info.last_revision)
                .map_or(0, |last| last + 1),
            None => head,
        };
        end.saturating_sub(resume)
    }

    /// Every consumer group's figures; `head` is the store's head, for lag.
    async fn group_figures(&self, head: u64) -> Vec<metrics::GroupFigures> {
        let reports = match self.inner.groups.reports().await {
            Ok(reports) => reports,
            Err(error) => {
                tracing::warn!(%error, "metrics: consumer groups could not be listed");
                return Vec::new();
            }
        };
        reports
            .into_iter()
            .map(|report| {
                let status = &report.status;
                let lag = self.group_lag(&report, head);
                metrics::GroupFigures {
                    name: report.definition.group.clone(),
                    consumers: status.consumers.len() as u64,
                    in_flight: status.in_flight,
                    parked: report.parked,
                    acked_total: status.acked_total,
                    retried_total: status.retried_total,
                    parked_total: status.parked_total,
                    lag,
                }
            })
            .collect()
    }

    /// Soft-deletes (`tombstone` false) or tombstones a stream; both need
    /// the delete permission.
    pub async fn delete(
        &self,
        by: &Principal,
        stream: String,
        expected: ExpectedRevision,
        tombstone: bool,
    ) -> Result<CurrentRevision> {
        cairn_storage::validate_stream_name(&stream)?;
        self.authorize(by, Access::Delete, &stream)?;
        let _permit = self.inner.writes.enter()?;
        let ticket = if tombstone {
            self.inner.store.tombstone(stream, expected)
        } else {
            self.inner.store.delete(stream, expected)
        };
        Ok(ticket.await?)
    }

    /// Replaces a stream's metadata (its ACL included); returns the new
    /// metadata revision. Needs the metadata-write permission.
    pub async fn set_metadata(
        &self,
        by: &Principal,
        stream: String,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<u64> {
        cairn_storage::validate_stream_name(&stream)?;
        self.authorize(by, Access::MetadataWrite, &stream)?;
        let _permit = self.inner.writes.enter()?;
        Ok(self
            .inner
            .store
            .set_metadata(stream, expected, metadata)
            .await?)
    }

    /// A stream's info (any stored name, system streams included), when `by`
    /// may read its metadata.
    pub fn stream_info(&self, by: &Principal, stream: &str) -> Result<StreamInfo> {
        cairn_storage::validate_stored_stream_name(stream)?;
        self.authorize(by, Access::MetadataRead, stream)?;
        // The fallible lookup: a stream record that cannot be read is an error
        // for the caller, never "no such stream".
        self.inner.store.try_stream_info(stream)?.ok_or_else(|| {
            Error::Store(cairn_storage::Error::StreamNotFound {
                stream: stream.to_owned(),
            })
        })
    }

    /// Opens a catch-up subscription: history from storage, `CaughtUp`, then
    /// live, of what `by` may read ([`Engine::read_access`]). Refused beyond
    /// the subscription limit and while shutting down.
    pub fn subscribe(&self, by: &Principal, request: SubscribeRequest) -> Result<FeedReceiver> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let visibility = self.read_access(by, &request.source)?;
        let target = Target::of(request.source);
        let (cursor, live_from) = feeds::start_of(&self.inner.store, &target, request.from)?;
        let slot = Arc::clone(&self.inner.subscription_slots)
            .try_acquire_owned()
            .map_err(|_| {
                Error::LimitExceeded("too many subscriptions on this server; retry later".into())
            })?;
        let checkpoint_interval = (!request.filter.is_empty()).then(|| {
            request
                .checkpoint_interval
                .filter(|interval| *interval > 0)
                .unwrap_or(feeds::DEFAULT_CHECKPOINT_INTERVAL)
        });
        Ok(self.inner.feeds.start(FeedSpec {
            target,
            filter: request.filter,
            checkpoint_interval,
            cursor,
            live_from,
            buffer: self.inner.subscription_buffer,
            stall_timeout: Some(self.inner.client_stall_timeout),
            slot: Some(slot),
            visibility,
        }))
    }
}

/// Reads every visible event of one of the engine's own system streams
/// (group definitions, users, tokens: small), page by page; a stream that
/// does not exist yet is empty.
pub(crate) fn read_stream(
    store: &Store,
    stream: &str,
) -> Result<Vec<cairn_storage::RecordedEvent>> {
    read_stream_from(store, stream, 0)
}

/// [`read_stream`] from revision `from` on.
pub(crate) fn read_stream_from(
    store: &Store,
    stream: &str,
    mut from: u64,
) -> Result<Vec<cairn_storage::RecordedEvent>> {
    let mut events = Vec::new();
    loop {
        let request =
            cairn_storage::ReadRequest::forwards(ReadSource::Stream(stream.to_owned()), 1000)
                .from(cairn_storage::ReadFrom::At(from));
        let page = match store.read(&request) {
            Ok(page) => page,
            Err(cairn_storage::Error::StreamNotFound { .. }) => return Ok(events),
            Err(error) => return Err(error.into()),
        };
        events.extend(page.events);
        match page.next {
            Some(next) => from = next,
            None => return Ok(events),
        }
    }
}

/// How often a cluster node checks whether it leads (the store's role).
const ROLE_POLL: Duration = Duration::from_millis(100);

/// Cluster mode: runs the consumer groups only while this node leads, has
/// the new leader do its security duties (`Security::lead`: the first admin
/// of a secure cluster), and keeps the user registry up to what replication
/// brought (`Security::catch_up`) on every node. The store's role
/// (`Store::write_refusal`) changes when raft elects; groups start on
/// leadership (from their durable checkpoints) and stop on its loss, so only
/// the leader's actors write checkpoints. Polled: a role change costs at most
/// `ROLE_POLL` of group downtime on top of the election, and a user change
/// made on the leader takes at most `ROLE_POLL` after its replication to
/// apply on a follower.
async fn follow_the_role(
    store: Store,
    groups: Groups,
    security: Arc<Security>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut leading = false;
    let mut security_led = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(ROLE_POLL) => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        if let Err(error) = security.catch_up().await {
            tracing::error!(%error, "cannot apply the replicated user records; retrying");
        }
        let leads = store.write_refusal().is_none();
        if leads && !security_led {
            match security.lead().await {
                Ok(()) => security_led = true,
                Err(error) => {
                    tracing::warn!(%error, "cannot set up security as the new leader; retrying");
                }
            }
        } else if !leads {
            security_led = false;
        }
        if leads == leading {
            continue;
        }
        if leads {
            match groups.lead().await {
                Ok(()) => leading = true,
                Err(error) => {
                    tracing::error!(%error, "cannot start the persistent subscription groups; retrying");
                }
            }
        } else {
            groups.follow().await;
            leading = false;
        }
    }
}
