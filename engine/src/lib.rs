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
//! use cairn_engine::{Engine, EngineOptions};
//! use cairn_storage::{EventData, ExpectedRevision, Store, StoreOptions, StreamAppend};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), StoreOptions::default())?;
//! let engine = Engine::start(store, EngineOptions::default()).await?;
//! let results = engine
//!     .append_multi(vec![StreamAppend {
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

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_storage::{
    AppendResult, CurrentRevision, ExpectedRevision, ReadFilter, ReadSource, Store, StreamAppend,
    StreamInfo, StreamMetadata,
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

/// How long [`Engine::close`] waits for background tasks before closing the
/// store anyway (a storage read cannot be interrupted).
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Default of [`EngineOptions::max_buffered_bytes`]: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;

/// What the engine is allowed to hold at once.
#[derive(Debug, Clone, Copy)]
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
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_inflight_writes: 4096,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            subscriptions: SubscriptionLimits::default(),
            groups: GroupLimits::default(),
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
    /// Client writes in flight.
    writes: WriteGate,
    /// One permit per open client subscription.
    subscription_slots: Arc<Semaphore>,
    /// Messages buffered per client subscription.
    subscription_buffer: usize,
    /// Bytes of event data held for clients, all calls together.
    buffers: ByteBudget,
    /// Every background task that holds the store or writes to it; `close`
    /// waits for them before it closes the store.
    tasks: TaskTracker,
    /// Flipping it to `true` ends feeds, group actors and new writes.
    shutdown: watch::Sender<bool>,
    /// When the engine started (uptime).
    started: Instant,
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
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                feeds,
                groups,
                writes,
                subscription_slots: Arc::new(Semaphore::new(
                    options.subscriptions.max_subscriptions.max(1),
                )),
                subscription_buffer: options.subscriptions.buffer.max(1),
                buffers,
                tasks,
                shutdown,
                started: Instant::now(),
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

    /// The server-wide budget of event data held on its way to clients.
    /// Feeds draw on it for every buffered event; a facade's read pipeline
    /// holds a [`BytePermit`] from it for every chunk until the transport has
    /// taken the chunk.
    pub fn buffer_budget(&self) -> &ByteBudget {
        &self.inner.buffers
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

    /// Appends to one or more streams atomically (all parts or none).
    pub async fn append_multi(&self, parts: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        if parts.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one stream".into(),
            ));
        }
        for part in &parts {
            cairn_storage::validate_stream_name(&part.stream)?;
        }
        let _permit = self.inner.writes.enter()?;
        Ok(self.inner.store.append_multi(parts).await?)
    }

    /// Soft-deletes (`tombstone` false) or tombstones a stream.
    pub async fn delete(
        &self,
        stream: String,
        expected: ExpectedRevision,
        tombstone: bool,
    ) -> Result<CurrentRevision> {
        cairn_storage::validate_stream_name(&stream)?;
        let _permit = self.inner.writes.enter()?;
        let ticket = if tombstone {
            self.inner.store.tombstone(stream, expected)
        } else {
            self.inner.store.delete(stream, expected)
        };
        Ok(ticket.await?)
    }

    /// Replaces a stream's metadata; returns the new metadata revision.
    pub async fn set_metadata(
        &self,
        stream: String,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<u64> {
        cairn_storage::validate_stream_name(&stream)?;
        let _permit = self.inner.writes.enter()?;
        Ok(self
            .inner
            .store
            .set_metadata(stream, expected, metadata)
            .await?)
    }

    /// A stream's info (any stored name, system streams included).
    pub fn stream_info(&self, stream: &str) -> Result<StreamInfo> {
        cairn_storage::validate_stored_stream_name(stream)?;
        self.inner.store.stream_info(stream).ok_or_else(|| {
            Error::Store(cairn_storage::Error::StreamNotFound {
                stream: stream.to_owned(),
            })
        })
    }

    /// Opens a catch-up subscription: history from storage, `CaughtUp`, then
    /// live. Refused beyond the subscription limit and while shutting down.
    pub fn subscribe(&self, request: SubscribeRequest) -> Result<FeedReceiver> {
        if self.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
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
            slot: Some(slot),
        }))
    }
}
