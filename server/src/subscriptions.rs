//! The `cairn.v1.Subscriptions` service: catch-up subscriptions.
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
//! an event. Memory per subscription is bounded by the outgoing channel and one
//! storage page; a slow client is handled by gRPC flow control plus the
//! catch-up fallback, and never slows the writer (the ring never waits).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cairn_proto::v1 as pb;
use cairn_proto::v1::subscriptions_server::Subscriptions;
use cairn_storage::{
    Error as StoreError, ReadFilter, ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store,
    StreamState, category_of,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::status::{shutting_down, status_with_reason, to_status};
use crate::{from_proto, to_proto};

/// Checkpoint interval when the request leaves it 0.
const DEFAULT_CHECKPOINT_INTERVAL: u64 = 1000;
/// Events per storage page during catch-up.
const CATCH_UP_PAGE: usize = 500;
/// How long the task tries to hand the closing status to a slow client.
const FINAL_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Events taken from the ring at a time.
const LIVE_BATCH: usize = 256;

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

/// The service.
#[derive(Clone)]
pub struct SubscriptionsService {
    /// The store read from.
    store: Store,
    /// The committed head, updated by a store commit listener (also bumped when
    /// a stream is deleted, so stream subscribers re-check it).
    heads: watch::Receiver<u64>,
    /// Server shutdown.
    shutdown: watch::Receiver<bool>,
    /// One permit per open subscription.
    slots: Arc<Semaphore>,
    /// Per-subscription buffer.
    buffer: usize,
    /// Counters.
    stats: Arc<SubscriptionStats>,
    /// For subscription ids.
    next_id: Arc<AtomicU64>,
}

impl SubscriptionsService {
    /// A service over `store`. Registers a commit listener on the store.
    pub fn new(
        store: Store,
        limits: SubscriptionLimits,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, Arc<SubscriptionStats>) {
        let (head_sender, heads) = watch::channel(store.live().head());
        store.live().add_listener(Box::new(move |notice| {
            head_sender.send_replace(notice.head);
        }));
        let stats = Arc::new(SubscriptionStats::default());
        let service = Self {
            store,
            heads,
            shutdown,
            slots: Arc::new(Semaphore::new(limits.max_subscriptions.max(1))),
            buffer: limits.buffer.max(1),
            stats: Arc::clone(&stats),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        (service, stats)
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// What a subscription follows.
#[derive(Debug, Clone)]
enum Target {
    Stream(String),
    Positions(ReadSource),
}

impl Target {
    fn matches(&self, event: &RecordedEvent) -> bool {
        match self {
            Target::Stream(stream) => &event.stream == stream,
            Target::Positions(ReadSource::All) => true,
            Target::Positions(ReadSource::Category(category)) => {
                category_of(&event.stream) == Some(category.as_str())
            }
            Target::Positions(ReadSource::EventType(event_type)) => &event.event_type == event_type,
            Target::Positions(ReadSource::Stream(stream)) => &event.stream == stream,
        }
    }
}

/// One subscription's state.
struct Subscription {
    store: Store,
    target: Target,
    filter: ReadFilter,
    checkpoint_interval: Option<u64>,
    /// Stream targets: the next revision to deliver. Position targets: the next
    /// position to examine.
    cursor: u64,
    /// Positions examined without a match since the last checkpoint.
    unmatched: u64,
    sender: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    heads: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<SubscriptionStats>,
    /// Held for the subscription's lifetime.
    _slot: OwnedSemaphorePermit,
}

/// Why the task stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    /// End the call with this status.
    Fail(Status),
}

type Step<T = ()> = Result<T, Stop>;

fn content(content: pb::subscribe_response::Content) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        content: Some(content),
    }
}

impl Subscription {
    async fn send(&self, message: pb::SubscribeResponse) -> Step {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            sent = self.sender.send(Ok(message)) => sent.map_err(|_| Stop::Gone),
            // A subscriber that stopped reading must not hold up shutdown.
            _ = shutdown.wait_for(|stopping| *stopping) => Err(Stop::Fail(shutting_down())),
        }
    }

    async fn deliver(&mut self, event: &RecordedEvent) -> Step {
        let at_or_after_cursor = match self.target {
            Target::Stream(_) => event.revision >= self.cursor,
            Target::Positions(_) => event.position >= self.cursor,
        };
        if !at_or_after_cursor {
            return Ok(());
        }
        self.send(content(pb::subscribe_response::Content::Event(
            to_proto::event(event),
        )))
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
                self.send(content(pb::subscribe_response::Content::Checkpoint(
                    pb::Checkpoint { position },
                )))
                .await?;
                self.unmatched = 0;
                start += needed;
                remaining -= needed;
            }
        }
        self.cursor = end;
        Ok(())
    }

    fn check_shutdown(&self) -> Step {
        if *self.shutdown.borrow() {
            Err(Stop::Fail(shutting_down()))
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
            Some(StreamState::Tombstoned) => {
                Err(Stop::Fail(to_status(&StoreError::StreamTombstoned {
                    stream: stream.clone(),
                })))
            }
            Some(StreamState::SoftDeleted) => {
                Err(Stop::Fail(to_status(&StoreError::StreamNotFound {
                    stream: stream.clone(),
                })))
            }
            _ => Ok(()),
        }
    }

    /// Reads from storage until a page reaches the head. Returns the head
    /// observed before the last page: live delivery starts there.
    async fn catch_up(&mut self) -> Step<u64> {
        loop {
            self.check_shutdown()?;
            let head_before = self.store.live().head();
            let source = match &self.target {
                Target::Stream(stream) => ReadSource::Stream(stream.clone()),
                Target::Positions(source) => source.clone(),
            };
            let request = ReadRequest::forwards(source, CATCH_UP_PAGE)
                .from(ReadFrom::At(self.cursor))
                .filter(self.filter.clone());
            let store = self.store.clone();
            let page = tokio::task::spawn_blocking(move || store.read(&request))
                .await
                .map_err(|error| {
                    Stop::Fail(Status::internal(format!("storage task failed: {error}")))
                })?;
            let page = match page {
                Ok(page) => page,
                // A stream that does not exist yet: nothing to catch up on.
                Err(StoreError::StreamNotFound { .. }) if self.check_stream_state().is_ok() => {
                    return Ok(head_before);
                }
                Err(error) => return Err(Stop::Fail(to_status(&error))),
            };
            for event in &page.events {
                self.skip_to(event.position).await?;
                self.deliver(event).await?;
            }
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
                    let message = pb::FellBehind {
                        position: requested,
                    };
                    self.send(content(pb::subscribe_response::Content::FellBehind(
                        message,
                    )))
                    .await?;
                    self.skip_to(requested).await?;
                    return Ok(());
                }
                Err(error) => return Err(Stop::Fail(to_status(&error))),
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
                            return Err(Stop::Fail(shutting_down()));
                        }
                    }
                    _ = shutdown.changed() => {}
                    () = self.sender.closed() => return Err(Stop::Gone),
                }
                continue;
            }
            for event in batch {
                position = event.position + 1;
                if self.target.matches(&event)
                    && self.filter.matches(&event.stream, &event.event_type)
                    && self.is_visible(&event)
                {
                    self.skip_to(event.position).await?;
                    self.deliver(&event).await?;
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
            self.send(content(pb::subscribe_response::Content::CaughtUp(
                pb::CaughtUp {
                    head_position: head,
                },
            )))
            .await?;
            self.live(live_from).await?;
        }
    }
}

#[tonic::async_trait]
impl Subscriptions for SubscriptionsService {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use pb::subscribe_request::From;
        let request = request.into_inner();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("subscribe", id, stream = %request.stream);
        let _entered = span.enter();
        if *self.shutdown.borrow() {
            return Err(shutting_down());
        }
        let source = ReadSource::parse(&request.stream).map_err(|error| to_status(&error))?;
        let filter = from_proto::filter(request.filter.unwrap_or_default())?;
        let target = match source {
            ReadSource::Stream(stream) => Target::Stream(stream),
            other => Target::Positions(other),
        };
        let is_stream = matches!(target, Target::Stream(_));
        let head = self.store.live().head();
        let (cursor, start_live) = match request.from {
            None | Some(From::Start(())) => (0, false),
            Some(From::End(())) => match &target {
                Target::Stream(stream) => (
                    self.store
                        .stream_info(stream)
                        .and_then(|info| info.last_revision)
                        .map_or(0, |r| r + 1),
                    true,
                ),
                Target::Positions(_) => (head, true),
            },
            Some(From::AfterRevision(revision)) if is_stream => (revision.saturating_add(1), false),
            Some(From::AfterPosition(position)) if !is_stream => {
                (position.saturating_add(1), false)
            }
            Some(From::AfterRevision(_)) => {
                return Err(crate::status::invalid_argument(
                    "after_revision applies to streams; use after_position",
                ));
            }
            Some(From::AfterPosition(_)) => {
                return Err(crate::status::invalid_argument(
                    "after_position applies to $all, $ce- and $et-; use after_revision",
                ));
            }
        };
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            status_with_reason(
                tonic::Code::ResourceExhausted,
                "too many subscriptions on this server; retry later",
                "LIMIT_EXCEEDED",
                Default::default(),
            )
        })?;
        let checkpoint_interval = (!filter.is_empty()).then(|| match request.checkpoint_interval {
            0 => DEFAULT_CHECKPOINT_INTERVAL,
            interval => u64::from(interval),
        });
        let (sender, receiver) = mpsc::channel(self.buffer);
        let mut subscription = Subscription {
            store: self.store.clone(),
            target,
            filter,
            checkpoint_interval,
            cursor,
            unmatched: 0,
            sender,
            heads: self.heads.clone(),
            shutdown: self.shutdown.clone(),
            stats: Arc::clone(&self.stats),
            _slot: slot,
        };
        let stats = Arc::clone(&self.stats);
        stats.active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            async move {
                let confirmation = pb::Confirmation {
                    subscription_id: id.to_string(),
                };
                let mut result = subscription
                    .send(content(pb::subscribe_response::Content::Confirmation(
                        confirmation,
                    )))
                    .await;
                if result.is_ok() {
                    result = if start_live {
                        async {
                            subscription
                                .send(content(pb::subscribe_response::Content::CaughtUp(
                                    pb::CaughtUp {
                                        head_position: head,
                                    },
                                )))
                                .await?;
                            subscription.live(head).await?;
                            subscription.run().await
                        }
                        .await
                    } else {
                        subscription.run().await
                    };
                }
                if let Err(Stop::Fail(status)) = result {
                    tracing::debug!(code = ?status.code(), "subscription ended");
                    // Bounded: a client that stopped reading cannot hold the task.
                    let final_send = subscription.sender.send(Err(status));
                    let _ = tokio::time::timeout(FINAL_STATUS_WAIT, final_send).await;
                }
                stats.active.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span.clone()),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
