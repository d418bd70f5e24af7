//! The catch-up/live feed engine: what a catch-up subscription (and a consumer
//! group's source) reads, in order, without gap or duplicate.
//!
//! Each subscription is one task with a cursor. It alternates between two phases:
//! - catch-up: pages from storage (on the blocking pool) from the cursor until a
//!   page reaches the head, then `CaughtUp`;
//! - live: events from the store's in-memory ring as they commit. When the ring
//!   no longer holds the cursor (the subscriber was too slow, or a burst
//!   evicted it) the task sends `FellBehind` and returns to catch-up.
//!
//! Invariants: the cursor only moves forwards and an event is delivered only when
//! it is at or beyond the cursor, so switching phases can never duplicate or skip
//! an event. Memory per subscription is bounded in messages (the outgoing
//! channel) and in bytes: a storage page is read with a byte budget, and every
//! buffered event holds a [`BytePermit`] for its size, from the subscription's
//! own budget and the server's, until the consumer takes it. A slow client is
//! handled by gRPC flow control, those budgets (the task waits) and the
//! catch-up fallback, and never slows the writer (the ring never waits). A
//! client subscription whose subscriber takes nothing for the client stall
//! timeout while messages wait is ended, and what it buffered freed at once
//! ([`crate::Outbox`]): a client that never reads cannot pin the budget.
//!
//! This module owns the feed tasks and their counters; it knows nothing of a
//! wire protocol: a feed emits [`Feed`] items and ends with an [`EndReason`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cairn_storage::{
    ALL_STREAM, CATEGORY_PREFIX, EVENT_TYPE_PREFIX, Error as StoreError, FilterMatcher, ReadFilter,
    ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store, StreamState, category_of,
};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::budget::{ByteBudget, BytePermit};
use crate::error::{EndReason, Error};
use crate::escape::Escaped;
use crate::outbox::{self, Outbox, OutboxReceiver, Undelivered};
use crate::security::acl::Visibility;

/// Checkpoint interval when the request leaves it 0.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 1000;
/// Events per storage page during catch-up.
const CATCH_UP_PAGE: usize = 500;
/// Byte budget of a catch-up page (`ReadRequest::max_bytes`): 500 events of
/// up to 2 KiB fill a page; larger events make shorter pages.
const CATCH_UP_BYTES: usize = 1024 * 1024;
/// Events taken from the ring at a time.
const LIVE_BATCH: usize = 256;

/// One item of a feed's channel, with the bytes it holds from the budgets
/// until the consumer takes it.
#[derive(Debug)]
struct Buffered {
    item: Result<Feed, EndReason>,
    _bytes: BytePermit,
}

/// The receiving end of a feed: items in order, then at most one end reason.
/// Taking an item gives its bytes back to the budgets.
#[derive(Debug)]
pub struct FeedReceiver {
    receiver: OutboxReceiver<Buffered>,
}

impl FeedReceiver {
    /// The next item; `None` once the feed ended.
    pub async fn recv(&mut self) -> Option<Result<Feed, EndReason>> {
        self.receiver.recv().await.map(|buffered| buffered.item)
    }

    /// Polls for the next item (for a `Stream` adapter).
    pub fn poll_recv(
        &mut self,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Feed, EndReason>>> {
        self.receiver
            .poll_recv(context)
            .map(|buffered| buffered.map(|buffered| buffered.item))
    }
}

/// Where a subscription starts, as a client asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event.
    Start,
    /// Only events committed from now on.
    End,
    /// Stream targets: after this revision.
    AfterRevision(u64),
    /// Position targets: after this position.
    AfterPosition(u64),
}

/// Limits of the subscription service.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionLimits {
    /// Most concurrent subscriptions; beyond it, RESOURCE_EXHAUSTED.
    pub max_subscriptions: usize,
    /// Messages buffered per subscription between its task and gRPC.
    pub buffer: usize,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        Self {
            max_subscriptions: 1024,
            buffer: 128,
        }
    }
}

/// Counters visible to tests and `Server.Info`.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Subscriptions open now.
    pub active: AtomicUsize,
    /// Times any subscriber fell behind the ring.
    pub fell_behind: AtomicU64,
    /// Events delivered in total.
    pub delivered: AtomicU64,
}

/// Starts subscription tasks; shared by client subscriptions and persistent
/// subscription groups.
#[derive(Clone)]
pub struct Feeds {
    /// The store read from.
    store: Store,
    /// The committed head, updated by a store commit listener (also bumped when
    /// a stream is deleted, so stream subscribers re-check it).
    heads: watch::Receiver<u64>,
    /// Server shutdown.
    shutdown: watch::Receiver<bool>,
    /// Counters.
    stats: Arc<SubscriptionStats>,
    /// For subscription ids.
    next_id: Arc<AtomicU64>,
    /// The server's background tasks: `run` waits for them before it closes
    /// the store.
    tasks: TaskTracker,
    /// The server-wide budget of buffered event bytes.
    buffers: ByteBudget,
}

/// Where and how a subscription task starts.
pub struct FeedSpec {
    /// What it follows.
    pub target: Target,
    /// Position targets: which events pass.
    pub filter: ReadFilter,
    /// Filtered position targets: a checkpoint every this many examined events.
    pub checkpoint_interval: Option<u64>,
    /// The first revision (stream targets) or position (others) to deliver.
    pub cursor: u64,
    /// Skip history: send `CaughtUp` at once and serve from the ring from this
    /// position (the head when `cursor` was taken, so nothing at or after the
    /// cursor is missed).
    pub live_from: Option<u64>,
    /// Messages buffered between the task and its consumer.
    pub buffer: usize,
    /// A client subscription's slot, released when the task ends.
    pub slot: Option<OwnedSemaphorePermit>,
    /// Client subscriptions: ended when the subscriber takes nothing for
    /// this long while messages wait (see [`crate::Outbox`]). `None` for
    /// the server's own consumers (a group's source waits on its consumers).
    pub stall_timeout: Option<Duration>,
    /// Which streams' events the subscriber may see; the others pass by like
    /// filtered-out events (they advance checkpoints, nothing of them is sent).
    pub visibility: Visibility,
}

impl Feeds {
    /// Feeds over `store`, their tasks tracked by `tasks`, their buffered
    /// events held against `buffers`. Registers a commit listener on the store.
    pub fn new(
        store: Store,
        shutdown: watch::Receiver<bool>,
        tasks: TaskTracker,
        buffers: ByteBudget,
    ) -> Self {
        let (head_sender, heads) = watch::channel(store.live().head());
        store.live().add_listener(Box::new(move |notice| {
            head_sender.send_replace(notice.head);
        }));
        Self {
            store,
            heads,
            shutdown,
            stats: Arc::new(SubscriptionStats::default()),
            next_id: Arc::new(AtomicU64::new(1)),
            tasks,
            buffers,
        }
    }

    /// The server's background tasks; anything spawned that holds the store
    /// or writes to it is spawned here.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The store the feeds read.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The feeds' counters.
    pub fn stats(&self) -> &Arc<SubscriptionStats> {
        &self.stats
    }

    /// Spawns a subscription task. Its first message is `Confirmation`; it ends
    /// with an error item (e.g. UNAVAILABLE at shutdown) or when the receiver
    /// is dropped.
    pub fn start(&self, spec: FeedSpec) -> FeedReceiver {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("subscription", id);
        let (sender, receiver) = outbox::channel(spec.buffer.max(1), spec.stall_timeout);
        // Room for the page being delivered and the next one: a subscriber
        // that stopped reading holds at most this much, whatever the events.
        let page_reservation = CATCH_UP_BYTES + self.store.limits().max_event_bytes;
        let mut subscription = Subscription {
            store: self.store.clone(),
            target: spec.target,
            matcher: spec.filter.matcher(),
            filter: spec.filter,
            visibility: spec.visibility,
            page_reservation,
            own: ByteBudget::new(page_reservation.saturating_mul(2)),
            buffers: self.buffers.clone(),
            checkpoint_interval: spec.checkpoint_interval,
            cursor: spec.cursor,
            unmatched: 0,
            sender,
            heads: self.heads.clone(),
            shutdown: self.shutdown.clone(),
            stats: Arc::clone(&self.stats),
            _slot: spec.slot,
        };
        let stats = Arc::clone(&self.stats);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let live_from = spec.live_from;
        self.tasks.spawn(
            async move {
                let result = async {
                    subscription.send(Feed::Confirmation(id)).await?;
                    if let Some(head) = live_from {
                        subscription.send(Feed::CaughtUp { head }).await?;
                        subscription.live(head).await?;
                    }
                    subscription.run().await
                }
                .await;
                match result {
                    Err(Stop::Fail(reason)) => subscription.end(reason).await,
                    Err(Stop::Stalled) => subscription.cut_off(),
                    Ok(()) | Err(Stop::Gone) => {}
                }
                stats.active.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
        FeedReceiver { receiver }
    }
}

/// What a subscription task emits, before conversion to the wire. Persistent
/// subscription groups consume these directly.
#[derive(Debug)]
pub enum Feed {
    /// First message: the subscription's id.
    Confirmation(u64),
    /// The next event, shared with the live ring and every other
    /// subscription that receives it (nothing is copied per subscriber).
    Event(Arc<RecordedEvent>),
    /// History is exhausted; live delivery follows.
    CaughtUp {
        /// The committed head at that moment.
        head: u64,
    },
    /// The subscriber fell behind the ring and returns to storage reads.
    FellBehind {
        /// The next position to be read.
        position: u64,
    },
    /// Filtered position targets: every position up to this one was examined.
    Checkpoint {
        /// The last examined position.
        position: u64,
    },
}

/// What a subscription follows.
#[derive(Debug, Clone)]
pub enum Target {
    /// One stream, by revision.
    Stream(String),
    /// `$all`, a category or an event type, by position.
    Positions(ReadSource),
}

impl Target {
    /// The target of a parsed source.
    pub fn of(source: ReadSource) -> Self {
        match source {
            ReadSource::Stream(stream) => Target::Stream(stream),
            other => Target::Positions(other),
        }
    }

    /// The name a client subscribes to (`order-1`, `$all`, `$ce-order`, ...).
    pub fn name(&self) -> String {
        match self {
            Target::Stream(stream) | Target::Positions(ReadSource::Stream(stream)) => {
                stream.clone()
            }
            Target::Positions(ReadSource::All) => ALL_STREAM.to_owned(),
            Target::Positions(ReadSource::Category(category)) => {
                format!("{CATEGORY_PREFIX}{category}")
            }
            Target::Positions(ReadSource::EventType(event_type)) => {
                format!("{EVENT_TYPE_PREFIX}{event_type}")
            }
            Target::Positions(ReadSource::Query(_)) => "a DCB query".to_owned(),
        }
    }

    fn matches(&self, event: &RecordedEvent) -> bool {
        match self {
            Target::Stream(stream) => &event.stream == stream,
            Target::Positions(ReadSource::All) => true,
            Target::Positions(ReadSource::Category(category)) => {
                category_of(&event.stream) == Some(category.as_str())
            }
            Target::Positions(ReadSource::EventType(event_type)) => &event.event_type == event_type,
            Target::Positions(ReadSource::Stream(stream)) => &event.stream == stream,
            Target::Positions(ReadSource::Query(query)) => {
                query.matches(&event.event_type, event.tags.iter().map(String::as_str))
            }
        }
    }
}

/// One subscription's state.
struct Subscription {
    store: Store,
    target: Target,
    /// For catch-up requests.
    filter: ReadFilter,
    /// The same filter prepared for checking every live event.
    matcher: FilterMatcher,
    /// Which streams' events the subscriber may see (authorization).
    visibility: Visibility,
    /// Bytes reserved before reading a catch-up page: its byte budget plus
    /// the largest event that may end it.
    page_reservation: usize,
    /// This subscription's own budget of buffered bytes (two pages), so that
    /// it cannot take the whole server's budget.
    own: ByteBudget,
    /// The server-wide budget.
    buffers: ByteBudget,
    checkpoint_interval: Option<u64>,
    /// Stream targets: the next revision to deliver. Position targets: the next
    /// position to examine.
    cursor: u64,
    /// Positions examined without a match since the last checkpoint.
    unmatched: u64,
    sender: Outbox<Buffered>,
    heads: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<SubscriptionStats>,
    /// Held for the subscription's lifetime (client subscriptions only).
    _slot: Option<OwnedSemaphorePermit>,
}

/// Why the task stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    /// End the call with this status.
    Fail(EndReason),
    /// The client took nothing for the stall timeout while messages waited.
    Stalled,
}

impl From<Undelivered> for Stop {
    fn from(undelivered: Undelivered) -> Self {
        match undelivered {
            Undelivered::Gone => Stop::Gone,
            Undelivered::Stalled => Stop::Stalled,
        }
    }
}

type Step<T = ()> = Result<T, Stop>;

impl Subscription {
    async fn send(&self, message: Feed) -> Step {
        self.send_holding(message, BytePermit::default()).await
    }

    /// Sends `message` with the bytes it holds until the consumer takes it.
    async fn send_holding(&self, message: Feed, bytes: BytePermit) -> Step {
        let mut shutdown = self.shutdown.clone();
        let buffered = Buffered {
            item: Ok(message),
            _bytes: bytes,
        };
        tokio::select! {
            sent = self.sender.send(buffered) => sent.map_err(Stop::from),
            // A subscriber that stopped reading must not hold up shutdown.
            _ = shutdown.wait_for(|stopping| *stopping) => Err(Stop::Fail(EndReason::ShuttingDown)),
        }
    }

    /// Waits until this subscription's budget and the server's have `bytes`
    /// free (see [`BytePermit::reserve`]), or the subscriber goes away, or
    /// the server shuts down.
    async fn reserve(&self, bytes: usize) -> Step<BytePermit> {
        let mut permit = BytePermit::default();
        self.resize(&mut permit, bytes).await?;
        Ok(permit)
    }

    /// [`BytePermit::resize`], ended by shutdown or a subscriber gone.
    async fn resize(&self, permit: &mut BytePermit, bytes: usize) -> Step {
        let mut shutdown = self.shutdown.clone();
        let budgets = [&self.own, &self.buffers];
        tokio::select! {
            () = permit.resize(&budgets, bytes) => Ok(()),
            () = self.sender.closed() => Err(Stop::Gone),
            // What it buffered holds bytes others may be waiting for.
            () = self.sender.stalled() => Err(Stop::Stalled),
            _ = shutdown.wait_for(|stopping| *stopping) => Err(Stop::Fail(EndReason::ShuttingDown)),
        }
    }

    /// Delivers `event` if it is at or after the cursor. `bytes` is what it
    /// holds from the budgets already (a catch-up page's share); without it
    /// the event's size is reserved first.
    async fn deliver(&mut self, event: &Arc<RecordedEvent>, bytes: Option<BytePermit>) -> Step {
        let at_or_after_cursor = match self.target {
            Target::Stream(_) => event.revision >= self.cursor,
            Target::Positions(_) => event.position >= self.cursor,
        };
        if !at_or_after_cursor {
            return Ok(());
        }
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => self.reserve(event.size()).await?,
        };
        self.send_holding(Feed::Event(Arc::clone(event)), bytes)
            .await?;
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.cursor = match self.target {
            Target::Stream(_) => event.revision + 1,
            Target::Positions(_) => event.position + 1,
        };
        Ok(())
    }

    /// Position targets: accounts every position in `[cursor, end)` as examined
    /// without a match, sends a checkpoint at each interval boundary, and moves
    /// the cursor to `end`. Checkpoints never precede a delivered event, so
    /// resuming from one can neither skip nor repeat an event.
    async fn skip_to(&mut self, end: u64) -> Step {
        let Target::Positions(_) = self.target else {
            return Ok(());
        };
        if end <= self.cursor {
            return Ok(());
        }
        if let Some(interval) = self.checkpoint_interval {
            let mut start = self.cursor;
            let mut remaining = end - self.cursor;
            while remaining > 0 {
                let needed = interval - self.unmatched;
                if remaining < needed {
                    self.unmatched += remaining;
                    break;
                }
                let position = start + needed - 1;
                self.send(Feed::Checkpoint { position }).await?;
                self.unmatched = 0;
                start += needed;
                remaining -= needed;
            }
        }
        self.cursor = end;
        Ok(())
    }

    /// Ends the call with `reason` after what the subscriber has not taken
    /// yet. Waits for it to take that (it holds bytes of the budgets), and
    /// cuts it off if it stalls first; not at shutdown.
    async fn end(&self, reason: EndReason) {
        tracing::debug!(?reason, "subscription ended");
        self.sender.close(Some(Buffered {
            item: Err(reason),
            _bytes: BytePermit::default(),
        }));
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            drained = self.sender.drained() => {
                if drained.is_err() {
                    self.cut_off();
                }
            }
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    }

    /// Ends the call of a subscriber that stopped reading: what it buffered
    /// (and the bytes it holds) is dropped now; the subscriber sees
    /// [`Error::ClientStalled`] if it ever reads again.
    fn cut_off(&self) {
        let timeout_ms = self.sender.stall_timeout().map_or(0, |timeout| {
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        });
        tracing::info!(
            source = %Escaped(&self.target.name()),
            timeout_ms,
            "the subscriber took nothing within the stall timeout; ending its subscription and freeing what it buffered"
        );
        self.sender.cut_off(Buffered {
            item: Err(EndReason::Failed(Error::ClientStalled { timeout_ms })),
            _bytes: BytePermit::default(),
        });
    }

    fn check_shutdown(&self) -> Step {
        if *self.shutdown.borrow() {
            Err(Stop::Fail(EndReason::ShuttingDown))
        } else {
            Ok(())
        }
    }

    /// Ends a stream subscription whose stream was deleted or tombstoned.
    fn check_stream_state(&self) -> Step {
        let Target::Stream(stream) = &self.target else {
            return Ok(());
        };
        match self.store.stream_info(stream).map(|info| info.state) {
            Some(StreamState::Tombstoned) => Err(Stop::Fail(EndReason::Failed(Error::Store(
                StoreError::StreamTombstoned {
                    stream: stream.clone(),
                },
            )))),
            Some(StreamState::SoftDeleted) => Err(Stop::Fail(EndReason::Failed(Error::Store(
                StoreError::StreamNotFound {
                    stream: stream.clone(),
                },
            )))),
            _ => Ok(()),
        }
    }

    /// Reads from storage until a page reaches the head. Returns the head
    /// observed before the last page: live delivery starts there.
    ///
    /// Each page is read into bytes reserved before the read (its byte
    /// budget plus one largest event), trimmed to what it holds; each event
    /// takes its share along into the channel.
    async fn catch_up(&mut self) -> Step<u64> {
        loop {
            self.check_shutdown()?;
            let mut permit = self.reserve(self.page_reservation).await?;
            let head_before = self.store.live().head();
            let source = match &self.target {
                Target::Stream(stream) => ReadSource::Stream(stream.clone()),
                Target::Positions(source) => source.clone(),
            };
            let request = ReadRequest::forwards(source, CATCH_UP_PAGE)
                .from(ReadFrom::At(self.cursor))
                .max_bytes(CATCH_UP_BYTES)
                .filter(self.filter.clone());
            let store = self.store.clone();
            let page = tokio::task::spawn_blocking(move || store.read(&request))
                .await
                .map_err(|error| {
                    Stop::Fail(EndReason::Failed(Error::Internal(format!(
                        "storage task failed: {error}"
                    ))))
                })?;
            let page = match page {
                Ok(page) => page,
                // A stream that does not exist yet: nothing to catch up on.
                Err(StoreError::StreamNotFound { .. }) if self.check_stream_state().is_ok() => {
                    return Ok(head_before);
                }
                Err(error) => return Err(Stop::Fail(Error::Store(error).into())),
            };
            let bytes = page.events.iter().map(RecordedEvent::size).sum();
            self.resize(&mut permit, bytes).await?;
            for event in page.events {
                if !self.visibility.admits(&event.stream) {
                    continue;
                }
                self.skip_to(event.position).await?;
                let share = permit.split(event.size());
                self.deliver(&Arc::new(event), Some(share)).await?;
            }
            drop(permit);
            if let Some(scanned) = page.scanned_through {
                self.skip_to(scanned + 1).await?;
            }
            match page.next {
                Some(next) => match self.target {
                    Target::Positions(_) => self.skip_to(next).await?,
                    Target::Stream(_) => self.cursor = self.cursor.max(next),
                },
                None => return Ok(head_before),
            }
        }
    }

    /// Serves from the ring until the subscriber falls behind it.
    async fn live(&mut self, mut position: u64) -> Step {
        loop {
            self.check_shutdown()?;
            self.check_stream_state()?;
            let batch = match self.store.live().read_from(position, LIVE_BATCH) {
                Ok(batch) => batch,
                Err(StoreError::FellBehind { requested, .. }) => {
                    self.stats.fell_behind.fetch_add(1, Ordering::Relaxed);
                    self.send(Feed::FellBehind {
                        position: requested,
                    })
                    .await?;
                    self.skip_to(requested).await?;
                    return Ok(());
                }
                Err(error) => return Err(Stop::Fail(Error::Store(error).into())),
            };
            if batch.is_empty() {
                self.heads.borrow_and_update();
                if self.store.live().head() > position {
                    continue;
                }
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    changed = self.heads.changed() => {
                        if changed.is_err() {
                            return Err(Stop::Fail(EndReason::ShuttingDown));
                        }
                    }
                    _ = shutdown.changed() => {}
                    () = self.sender.closed() => return Err(Stop::Gone),
                    () = self.sender.stalled() => return Err(Stop::Stalled),
                }
                continue;
            }
            for event in batch {
                position = event.position + 1;
                if self.target.matches(&event)
                    && self.matcher.matches(&event.stream, &event.event_type)
                    && self.is_visible(&event)
                    && self.visibility.admits(&event.stream)
                {
                    self.skip_to(event.position).await?;
                    self.deliver(&event, None).await?;
                } else {
                    self.skip_to(position).await?;
                }
            }
        }
    }

    fn is_visible(&self, event: &RecordedEvent) -> bool {
        self.store.stream_info(&event.stream).is_some_and(|info| {
            info.state != StreamState::Tombstoned && event.revision >= info.first_visible_revision
        })
    }

    async fn run(&mut self) -> Step {
        loop {
            let live_from = self.catch_up().await?;
            let head = self.store.live().head();
            self.send(Feed::CaughtUp { head }).await?;
            self.live(live_from).await?;
        }
    }
}

/// The first revision or position to deliver for a `from` of the protocol, and
/// for `End` the head to serve the ring from (see [`FeedSpec::live_from`]).
pub fn start_of(
    store: &Store,
    target: &Target,
    from: StartFrom,
) -> Result<(u64, Option<u64>), Error> {
    let is_stream = matches!(target, Target::Stream(_));
    Ok(match from {
        StartFrom::Start => (0, None),
        StartFrom::End => {
            // Head first: an event committed in between is then at or after
            // both the ring start and the cursor, so it is delivered.
            let head = store.live().head();
            (end_of(store, target), Some(head))
        }
        StartFrom::AfterRevision(revision) if is_stream => (revision.saturating_add(1), None),
        StartFrom::AfterPosition(position) if !is_stream => (position.saturating_add(1), None),
        StartFrom::AfterRevision(_) => {
            return Err(Error::InvalidArgument(
                "after_revision applies to streams; use after_position".into(),
            ));
        }
        StartFrom::AfterPosition(_) => {
            return Err(Error::InvalidArgument(
                "after_position applies to $all, $ce- and $et-; use after_revision".into(),
            ));
        }
    })
}

/// The revision (streams) or position (others) the next event will get.
pub fn end_of(store: &Store, target: &Target) -> u64 {
    match target {
        Target::Stream(stream) => store
            .stream_info(stream)
            .and_then(|info| info.last_revision)
            .map_or(0, |revision| revision + 1),
        Target::Positions(_) => store.live().head(),
    }
}
