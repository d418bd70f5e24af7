//! One group's actor: the only owner of its in-memory state.
//!
//! The actor reads its source through an internal catch-up subscription (a
//! [`Feed`]), keeps every event it read and that is not finished yet, hands
//! events to consumers by the group's strategy, and moves the checkpoint.
//!
//! Invariants:
//! - An event is *finished* when it was acked, skipped, or durably written to the
//!   parked stream. Only finished events leave `entries`.
//! - `source_order` lists, in source order, every event read from the source that
//!   the checkpoint has not passed yet (plus marks for positions examined without
//!   an event to deliver). The checkpoint moves only over a finished prefix of it,
//!   so after a restart nothing unfinished is skipped (at-least-once).
//! - Memory is bounded: the actor stops reading its source while `source_order`
//!   holds [`WINDOW_EVENTS`] entries or [`WINDOW_BYTES`] of payload, or while
//!   [`READ_AHEAD`] events already wait for a consumer.
//! - A consumer never holds more than its in-flight limit, and the actor never
//!   waits on a consumer: sends use `try_send` on a channel with room for that limit.
//! - Pinned groups deliver at most one event per stream at a time (`busy_streams`),
//!   so a stream's events are processed in order even across retries.
//!
//! Everything happens on the actor task; storage writes (parking, checkpoints,
//! replay truncation) run on spawned tasks that report back as commands.
//! Replaying parked events lives in `group/replay.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use cairn_storage::{
    EventData, ExpectedRevision, ReadFilter, ReadFrom, ReadRequest, ReadSource, RecordedEvent,
    Store,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

mod replay;

use super::definition::{
    CHECKPOINT_TYPE, Checkpoint, GroupDefinition, GroupSettings, PARKED_TYPE, ParkedRecord,
    Strategy, checkpoint_stream, parked_stream,
};
use crate::error::{EndReason, Error};
use crate::feeds::{Feed, FeedReceiver, FeedSpec, Feeds, Target};
use replay::{Replay, ReplayBatch};

/// Most events read from the source and not yet passed by the checkpoint.
pub const WINDOW_EVENTS: usize = 10_000;
/// Most payload bytes held for those events.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Most events waiting for a consumer before the actor stops reading its source.
const READ_AHEAD: usize = 512;
/// Most parked events moved back into delivery by one replay call.
pub const REPLAY_LIMIT: u64 = 10_000;
/// Events per checkpoint mark on filtered `$all` groups.
const FEED_CHECKPOINT_INTERVAL: u64 = 1_000;
/// How often timeouts and the checkpoint timer are checked.
const TICK: Duration = Duration::from_millis(50);
/// Wait before reopening a source feed that ended with an error.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// What a consumer can do with an event besides acking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Deliver again; counts as a retry.
    Retry,
    /// Park now.
    Park,
    /// Finish without processing.
    Skip,
    /// Give every in-flight event back (no retry counted) and end the call.
    Stop,
}

/// A consumer's live figures.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    pub id: u64,
    pub name: String,
    pub max_in_flight: u32,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub nacked: u64,
}

/// A group's live figures.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    pub checkpoint: Option<Checkpoint>,
    pub in_flight: u64,
    pub waiting: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
    pub retried_total: u64,
    pub parked_total: u64,
    pub consumers: Vec<ConsumerStatus>,
}

/// What a group sends a joined consumer.
#[derive(Debug, Clone)]
pub enum ConsumerMessage {
    /// First message: the consumer is in the group.
    Joined {
        /// Its id within the group.
        consumer_id: u64,
        /// Its in-flight limit (the asked one capped by the group's).
        max_in_flight: u32,
    },
    /// An event to process, then ack or nack.
    Event {
        /// The event.
        event: RecordedEvent,
        /// Deliveries of it before this one.
        retry_count: u32,
    },
    /// The group ended the session.
    End(EndReason),
}

/// Where a consumer's messages go.
pub type ConsumerSender = mpsc::Sender<ConsumerMessage>;

/// Messages to the actor.
pub enum Command {
    /// A consumer joins; the actor sends `ConsumerJoined` on `sender` first.
    Join {
        name: String,
        max_in_flight: u32,
        /// Refused when the group already has this many consumers.
        max_consumers: usize,
        sender: ConsumerSender,
        /// The consumer's id, or why it may not join.
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// A consumer's call ended, or must end with `status`. `graceful`: the
    /// consumer closed its side after sending its last acks, so what it still
    /// holds goes back without counting a retry.
    Leave {
        consumer: u64,
        reason: Option<EndReason>,
        graceful: bool,
    },
    /// Events finished by a consumer.
    Ack { ids: Vec<Uuid> },
    /// Events a consumer gives back.
    Nack {
        consumer: u64,
        ids: Vec<Uuid>,
        action: NackAction,
        reason: String,
    },
    /// Live figures.
    Status { reply: oneshot::Sender<GroupStatus> },
    /// New settings.
    Update { settings: GroupSettings },
    /// Moves parked events back into delivery.
    Replay {
        max: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// The group was deleted: end every consumer's call with this reason.
    Stop { reason: EndReason },
    /// A park write finished.
    Parked {
        key: u64,
        result: Result<(), String>,
    },
    /// A checkpoint write finished.
    CheckpointWritten {
        checkpoint: Checkpoint,
        result: Result<(), String>,
    },
    /// A replay read finished.
    ReplayLoaded {
        loaded: Result<ReplayBatch, Error>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// The parked stream was truncated after a replay.
    ReplayTruncated,
    /// Test seam: the actor panics (to test the registry's supervision).
    Crash,
}

/// What happens to an event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// Queued for a consumer (in `waiting`).
    Waiting,
    /// Sent to a consumer; `delivery` tells stale timeouts apart.
    InFlight { consumer: u64, delivery: u64 },
    /// Being written to the parked stream.
    Parking,
}

/// An unfinished event.
struct Entry {
    event: RecordedEvent,
    /// Deliveries after the first.
    retry_count: u32,
    state: EntryState,
    /// Replayed from the parked stream (not part of the source order).
    replayed: bool,
}

/// A position in the source the checkpoint may move to once `key` is finished
/// (`None`: nothing to wait for).
struct SourceMark {
    key: Option<u64>,
    checkpoint: Checkpoint,
}

/// A connected consumer.
struct Consumer {
    id: u64,
    name: String,
    max_in_flight: u32,
    sender: ConsumerSender,
    in_flight: HashSet<u64>,
    delivered: u64,
    acked: u64,
    nacked: u64,
}

impl Consumer {
    /// Whether an event may be sent now. A consumer whose call ended (receiver
    /// dropped, removed at the next tick or `Leave`) has no room: otherwise the
    /// pump would hand it the same event again and again.
    fn has_room(&self) -> bool {
        !self.sender.is_closed()
            && self.in_flight.len() < self.max_in_flight as usize
            && self.sender.capacity() > 0
    }
}

/// The actor's state.
pub struct GroupActor {
    definition: GroupDefinition,
    /// The compiled `$all` filter (the registry refuses to start a group whose
    /// stored filter does not compile).
    filter: ReadFilter,
    is_stream: bool,
    skip_system_streams: bool,
    store: Store,
    feeds: Feeds,
    commands: mpsc::Receiver<Command>,
    /// For the spawned write tasks to report back.
    loopback: mpsc::Sender<Command>,
    shutdown: watch::Receiver<bool>,

    feed: Option<FeedReceiver>,
    /// When to reopen a failed feed.
    reopen_at: Option<Instant>,
    /// The last feed failure logged, so a persisting one is logged once.
    last_feed_error: Option<String>,
    /// The next revision or position to read from the source.
    source_cursor: u64,

    entries: HashMap<u64, Entry>,
    by_event_id: HashMap<Uuid, u64>,
    next_key: u64,
    source_order: VecDeque<SourceMark>,
    window_bytes: usize,
    waiting: VecDeque<u64>,
    timeouts: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_delivery: u64,

    consumers: Vec<Consumer>,
    next_consumer: u64,
    round_robin: usize,
    /// Pinned groups: the consumer of each stream.
    pins: HashMap<String, u64>,
    /// Pinned groups: the one outstanding delivered event of each stream.
    busy_streams: HashMap<String, u64>,

    checkpoint: Option<Checkpoint>,
    written_checkpoint: Option<Checkpoint>,
    marks_since_write: u64,
    last_write: Instant,
    writing_checkpoint: bool,

    replay: Option<Replay>,
    stats: GroupStatus,
}

/// Reads every visible event of a stream (system streams are small).
pub fn read_stream(store: &Store, stream: &str) -> Result<Vec<RecordedEvent>, Error> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let request = ReadRequest::forwards(ReadSource::Stream(stream.to_owned()), 1000)
            .from(ReadFrom::At(from));
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

/// The newest checkpoint of a group, if it wrote one.
pub fn load_checkpoint(store: &Store, group: &str) -> Result<Option<Checkpoint>, Error> {
    let request = ReadRequest::backwards(ReadSource::Stream(checkpoint_stream(group)), 1);
    match store.read(&request) {
        Ok(page) => page
            .events
            .first()
            .map(|event| {
                serde_json::from_slice(&event.data).map_err(|error| {
                    Error::Corrupt(format!("checkpoint of group '{group}': {error}"))
                })
            })
            .transpose(),
        Err(cairn_storage::Error::StreamNotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn json_event(event_type: &str, data: Vec<u8>) -> EventData {
    EventData {
        id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        content_type: "application/json".to_owned(),
        metadata: Default::default(),
        data: data.into(),
    }
}

impl GroupActor {
    /// An actor resuming from `checkpoint` (or the definition's start).
    pub fn new(
        definition: GroupDefinition,
        filter: ReadFilter,
        checkpoint: Option<Checkpoint>,
        store: Store,
        feeds: Feeds,
        shutdown: watch::Receiver<bool>,
        commands: mpsc::Receiver<Command>,
        loopback: mpsc::Sender<Command>,
    ) -> Result<Self, Error> {
        let source = definition.source()?;
        let is_stream = matches!(source, ReadSource::Stream(_));
        let source_cursor = checkpoint.map_or(definition.start_cursor, |checkpoint| {
            checkpoint.resume_cursor(is_stream)
        });
        Ok(Self {
            filter,
            skip_system_streams: source == ReadSource::All,
            is_stream,
            definition,
            store,
            feeds,
            commands,
            loopback,
            shutdown,
            feed: None,
            reopen_at: Some(Instant::now()),
            last_feed_error: None,
            source_cursor,
            entries: HashMap::new(),
            by_event_id: HashMap::new(),
            next_key: 0,
            source_order: VecDeque::new(),
            window_bytes: 0,
            waiting: VecDeque::new(),
            timeouts: BinaryHeap::new(),
            next_delivery: 0,
            consumers: Vec::new(),
            next_consumer: 1,
            round_robin: 0,
            pins: HashMap::new(),
            busy_streams: HashMap::new(),
            checkpoint,
            written_checkpoint: checkpoint,
            marks_since_write: 0,
            last_write: Instant::now(),
            writing_checkpoint: false,
            replay: None,
            stats: GroupStatus::default(),
        })
    }

    fn settings(&self) -> &GroupSettings {
        &self.definition.settings
    }

    fn wants_source(&self) -> bool {
        self.source_order.len() < WINDOW_EVENTS
            && self.window_bytes < WINDOW_BYTES
            && self.waiting.len() < READ_AHEAD
    }

    /// Runs until the group is deleted or the server shuts down.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            let wants_source = self.wants_source() && self.feed.is_some();
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return };
                    if let Some(reason) = self.handle(command) {
                        self.end_all(reason);
                        return;
                    }
                }
                item = next_feed(&mut self.feed), if wants_source => {
                    self.on_feed(item);
                }
                _ = tick.tick() => self.on_tick(),
                () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                    self.flush_checkpoint().await;
                    self.end_all(EndReason::ShuttingDown);
                    return;
                }
            }
            self.advance_checkpoint();
            self.pump();
            self.maybe_write_checkpoint();
            self.maybe_truncate_parked();
        }
    }

    /// Handles one command; `Some(reason)` ends the group.
    fn handle(&mut self, command: Command) -> Option<EndReason> {
        match command {
            Command::Join {
                name,
                max_in_flight,
                max_consumers,
                sender,
                reply,
            } => self.join(name, max_in_flight, max_consumers, sender, reply),
            Command::Leave {
                consumer,
                reason,
                graceful,
            } => {
                if let Some(reason) = reason
                    && let Some(gone) = self.consumer_mut(consumer)
                {
                    let _ = gone.sender.try_send(ConsumerMessage::End(reason));
                }
                self.leave(consumer, !graceful);
            }
            Command::Ack { ids } => {
                for id in ids {
                    if let Some(&key) = self.by_event_id.get(&id)
                        && self.entries[&key].state != EntryState::Parking
                    {
                        if let EntryState::InFlight { consumer, .. } = self.entries[&key].state
                            && let Some(holder) = self.consumer_mut(consumer)
                        {
                            holder.acked += 1;
                        }
                        self.stats.acked_total += 1;
                        self.finish(key);
                    }
                }
            }
            Command::Nack {
                consumer,
                ids,
                action,
                reason,
            } => self.nack(consumer, ids, action, &reason),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Update { settings } => {
                self.definition.settings = settings;
                for consumer in &mut self.consumers {
                    consumer.max_in_flight = consumer
                        .max_in_flight
                        .min(self.definition.settings.max_in_flight_per_consumer);
                }
            }
            Command::Replay { max, reply } => self.start_replay(max, reply),
            Command::Stop { reason } => return Some(reason),
            Command::Parked { key, result } => self.on_parked(key, result),
            Command::CheckpointWritten { checkpoint, result } => {
                self.writing_checkpoint = false;
                match result {
                    Ok(()) => self.written_checkpoint = Some(checkpoint),
                    Err(error) => {
                        tracing::warn!(group = %self.definition.group, %error, "checkpoint write failed; will retry");
                    }
                }
            }
            Command::ReplayLoaded { loaded, reply } => self.on_replay_loaded(loaded, reply),
            Command::ReplayTruncated => self.replay = None,
            Command::Crash => panic!(
                "group '{}' was told to crash (test seam)",
                self.definition.group
            ),
        }
        None
    }

    fn consumer_mut(&mut self, id: u64) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|consumer| consumer.id == id)
    }

    fn join(
        &mut self,
        name: String,
        max_in_flight: u32,
        max_consumers: usize,
        sender: ConsumerSender,
        reply: oneshot::Sender<Result<u64, Error>>,
    ) {
        if self.consumers.len() >= max_consumers {
            let _ = reply.send(Err(Error::LimitExceeded(format!(
                "group '{}' already has {max_consumers} consumers (the server's max_consumers_per_group)",
                self.definition.group
            ))));
            return;
        }
        let group_limit = self.settings().max_in_flight_per_consumer;
        let max_in_flight = match max_in_flight {
            0 => group_limit,
            asked => asked.min(group_limit),
        };
        let id = self.next_consumer;
        self.next_consumer += 1;
        let joined = ConsumerMessage::Joined {
            consumer_id: id,
            max_in_flight,
        };
        if sender.try_send(joined).is_err() || reply.send(Ok(id)).is_err() {
            return;
        }
        tracing::debug!(group = %self.definition.group, consumer = id, %name, "consumer joined");
        self.consumers.push(Consumer {
            id,
            name,
            max_in_flight,
            sender,
            in_flight: HashSet::new(),
            delivered: 0,
            acked: 0,
            nacked: 0,
        });
    }

    /// Removes a consumer and gives its in-flight events back, oldest first.
    /// `count_retry`: a disconnect counts as a retry (a handler that crashes its
    /// process on an event must not loop forever); a graceful close or an
    /// explicit STOP does not.
    fn leave(&mut self, consumer: u64, count_retry: bool) {
        let Some(index) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        let gone = self.consumers.remove(index);
        tracing::debug!(group = %self.definition.group, consumer, "consumer left");
        self.pins.retain(|_, pinned| *pinned != consumer);
        let mut keys: Vec<u64> = gone.in_flight.into_iter().collect();
        keys.sort_unstable();
        for key in keys.into_iter().rev() {
            if count_retry {
                self.retry(key, "consumer disconnected");
            } else {
                self.requeue_front(key);
            }
        }
    }

    fn nack(&mut self, consumer: u64, ids: Vec<Uuid>, action: NackAction, reason: &str) {
        for id in ids {
            let Some(&key) = self.by_event_id.get(&id) else {
                continue;
            };
            // Only the holder's nack counts: after a timeout the event may be
            // with someone else already.
            let held = matches!(self.entries[&key].state,
                EntryState::InFlight { consumer: holder, .. } if holder == consumer);
            if !held {
                continue;
            }
            if let Some(holder) = self.consumer_mut(consumer) {
                holder.nacked += 1;
                holder.in_flight.remove(&key);
            }
            match action {
                NackAction::Retry => self.retry(key, reason),
                NackAction::Park => self.park(key, reason),
                NackAction::Skip => self.finish(key),
                NackAction::Stop => self.requeue_front(key),
            }
        }
        if action == NackAction::Stop {
            self.leave(consumer, false);
        }
    }

    /// Puts an event back at the front of the queue without counting a retry.
    fn requeue_front(&mut self, key: u64) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.state = EntryState::Waiting;
            self.waiting.push_front(key);
        }
    }

    /// Counts a retry; an event out of retries is parked, others go to the front.
    fn retry(&mut self, key: u64, reason: &str) {
        let max_retries = self.settings().max_retries;
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if let EntryState::InFlight { consumer, .. } = entry.state
            && let Some(index) = self.consumers.iter().position(|c| c.id == consumer)
        {
            self.consumers[index].in_flight.remove(&key);
        }
        if entry.retry_count >= max_retries {
            let reason = format!(
                "{reason}; out of retries after {} deliveries",
                entry.retry_count + 1
            );
            self.park(key, &reason);
            return;
        }
        entry.retry_count += 1;
        self.stats.retried_total += 1;
        self.requeue_front(key);
    }

    /// Writes the event to the parked stream; it is finished when that is durable.
    fn park(&mut self, key: u64, reason: &str) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if entry.state == EntryState::Waiting {
            self.waiting.retain(|waiting| *waiting != key);
        }
        entry.state = EntryState::Parking;
        let record = ParkedRecord {
            stream: entry.event.stream.clone(),
            revision: entry.event.revision,
            position: entry.event.position,
            event_id: entry.event.id,
            event_type: entry.event.event_type.clone(),
            retry_count: entry.retry_count,
            reason: reason.to_owned(),
        };
        let data = serde_json::to_vec(&record).expect("a parked record serialises");
        let ticket = self.store.append(
            parked_stream(&self.definition.group),
            ExpectedRevision::Any,
            vec![json_event(PARKED_TYPE, data)],
        );
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let result = ticket.await.map(|_| ()).map_err(|error| error.to_string());
            let _ = loopback.send(Command::Parked { key, result }).await;
        });
    }

    fn on_parked(&mut self, key: u64, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.stats.parked_total += 1;
                self.finish(key);
            }
            Err(error) => {
                tracing::warn!(group = %self.definition.group, %error, "parking failed; the event goes back to delivery");
                self.requeue_front(key);
            }
        }
    }

    /// Forgets a finished event.
    fn finish(&mut self, key: u64) {
        let Some(entry) = self.entries.remove(&key) else {
            return;
        };
        self.by_event_id.remove(&entry.event.id);
        match entry.state {
            EntryState::InFlight { consumer, .. } => {
                if let Some(holder) = self.consumer_mut(consumer) {
                    holder.in_flight.remove(&key);
                }
            }
            EntryState::Waiting => self.waiting.retain(|waiting| *waiting != key),
            EntryState::Parking => {}
        }
        if self.busy_streams.get(&entry.event.stream) == Some(&key) {
            self.busy_streams.remove(&entry.event.stream);
        }
        if entry.replayed {
            if let Some(replay) = &mut self.replay {
                replay.remaining = replay.remaining.saturating_sub(1);
            }
        } else {
            self.window_bytes = self.window_bytes.saturating_sub(entry.event.data.len());
        }
    }

    fn status(&self) -> GroupStatus {
        let mut status = self.stats.clone();
        status.checkpoint = self.checkpoint;
        status.in_flight = self
            .consumers
            .iter()
            .map(|consumer| consumer.in_flight.len() as u64)
            .sum();
        status.waiting = self.waiting.len() as u64;
        status.consumers = self
            .consumers
            .iter()
            .map(|consumer| ConsumerStatus {
                id: consumer.id,
                name: consumer.name.clone(),
                max_in_flight: consumer.max_in_flight,
                in_flight: consumer.in_flight.len() as u64,
                delivered: consumer.delivered,
                acked: consumer.acked,
                nacked: consumer.nacked,
            })
            .collect();
        status
    }

    fn on_feed(&mut self, item: Option<Result<Feed, EndReason>>) {
        match item {
            Some(Ok(Feed::Event(event))) => {
                self.last_feed_error = None;
                self.on_source_event(event);
            }
            Some(Ok(Feed::Checkpoint { position })) => {
                self.source_cursor = self.source_cursor.max(position + 1);
                self.push_mark(
                    None,
                    Checkpoint {
                        position,
                        revision: None,
                    },
                );
            }
            Some(Ok(Feed::Confirmation(_) | Feed::CaughtUp { .. } | Feed::FellBehind { .. })) => {}
            Some(Err(reason)) => {
                // Once per cause: a deleted source stream fails every reopen.
                let cause = match &reason {
                    EndReason::Failed(error) => error.to_string(),
                    other => format!("{other:?}"),
                };
                if reason != EndReason::ShuttingDown
                    && self.last_feed_error.as_deref() != Some(cause.as_str())
                {
                    tracing::warn!(group = %self.definition.group, message = %cause, "source feed ended; reopening every second until it works");
                }
                self.last_feed_error = Some(cause);
                self.feed = None;
                self.reopen_at = Some(Instant::now() + REOPEN_DELAY);
            }
            None => {
                self.feed = None;
                self.reopen_at = Some(Instant::now() + REOPEN_DELAY);
            }
        }
    }

    fn on_source_event(&mut self, event: RecordedEvent) {
        let checkpoint = Checkpoint {
            position: event.position,
            revision: self.is_stream.then_some(event.revision),
        };
        self.source_cursor = if self.is_stream {
            event.revision + 1
        } else {
            event.position + 1
        };
        // The group's own state (and every other system stream) is never
        // delivered from $all: a group would otherwise feed on its checkpoints.
        if self.skip_system_streams && event.stream.starts_with('$') {
            self.push_mark(None, checkpoint);
            return;
        }
        if self.by_event_id.contains_key(&event.id) {
            // Already outstanding (a replay of it is running): not twice.
            self.push_mark(None, checkpoint);
            return;
        }
        self.window_bytes += event.data.len();
        let key = self.track(event, false);
        self.push_mark(Some(key), checkpoint);
    }

    /// Starts tracking an event: it waits for a consumer at the back of the queue.
    fn track(&mut self, event: RecordedEvent, replayed: bool) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.by_event_id.insert(event.id, key);
        self.entries.insert(
            key,
            Entry {
                event,
                retry_count: 0,
                state: EntryState::Waiting,
                replayed,
            },
        );
        self.waiting.push_back(key);
        key
    }

    fn push_mark(&mut self, key: Option<u64>, checkpoint: Checkpoint) {
        if key.is_none() && self.source_order.is_empty() {
            self.checkpoint = Some(checkpoint);
            self.marks_since_write += 1;
            return;
        }
        self.source_order.push_back(SourceMark { key, checkpoint });
    }

    /// Moves the checkpoint over the finished prefix of the source order.
    fn advance_checkpoint(&mut self) {
        while let Some(front) = self.source_order.front() {
            if front.key.is_some_and(|key| self.entries.contains_key(&key)) {
                break;
            }
            self.checkpoint = Some(front.checkpoint);
            self.marks_since_write += 1;
            self.source_order.pop_front();
        }
    }

    fn maybe_write_checkpoint(&mut self) {
        if self.writing_checkpoint || self.checkpoint == self.written_checkpoint {
            return;
        }
        let Some(checkpoint) = self.checkpoint else {
            return;
        };
        let settings = self.settings();
        let due = self.marks_since_write >= u64::from(settings.checkpoint_after_events)
            || self.last_write.elapsed()
                >= Duration::from_millis(u64::from(settings.checkpoint_after_ms));
        if !due {
            return;
        }
        self.writing_checkpoint = true;
        self.marks_since_write = 0;
        self.last_write = Instant::now();
        let ticket = self.write_checkpoint(checkpoint);
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let result = ticket.await.map(|_| ()).map_err(|error| error.to_string());
            let _ = loopback
                .send(Command::CheckpointWritten { checkpoint, result })
                .await;
        });
    }

    fn write_checkpoint(
        &self,
        checkpoint: Checkpoint,
    ) -> cairn_storage::Ticket<Vec<cairn_storage::AppendResult>> {
        let data = serde_json::to_vec(&checkpoint).expect("a checkpoint serialises");
        self.store.append_multi(vec![cairn_storage::StreamAppend {
            stream: checkpoint_stream(&self.definition.group),
            expected: ExpectedRevision::Any,
            events: vec![json_event(CHECKPOINT_TYPE, data)],
        }])
    }

    /// At shutdown: writes the checkpoint if it moved, and waits for it briefly.
    async fn flush_checkpoint(&mut self) {
        self.advance_checkpoint();
        let Some(checkpoint) = self.checkpoint else {
            return;
        };
        if self.written_checkpoint == Some(checkpoint) {
            return;
        }
        let ticket = self.write_checkpoint(checkpoint);
        let _ = tokio::time::timeout(Duration::from_secs(1), ticket).await;
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.feed.is_none() && self.reopen_at.is_some_and(|at| at <= now) {
            self.reopen_at = None;
            self.open_feed();
        }
        while let Some(Reverse((deadline, key, delivery))) = self.timeouts.peek().copied() {
            if deadline > now {
                break;
            }
            self.timeouts.pop();
            let current = self.entries.get(&key).map(|entry| entry.state);
            if let Some(EntryState::InFlight {
                delivery: current, ..
            }) = current
                && current == delivery
            {
                self.retry(key, "not acked within the message timeout");
            }
        }
        let dead: Vec<u64> = self
            .consumers
            .iter()
            .filter(|consumer| consumer.sender.is_closed())
            .map(|consumer| consumer.id)
            .collect();
        for consumer in dead {
            self.leave(consumer, true);
        }
    }

    fn open_feed(&mut self) {
        let target = match self.definition.source() {
            Ok(source) => Target::of(source),
            Err(error) => {
                tracing::error!(group = %self.definition.group, %error, "group source is invalid");
                return;
            }
        };
        let filter = self.filter.clone();
        let checkpoint_interval = (!self.is_stream
            && (!filter.is_empty() || self.skip_system_streams))
            .then_some(FEED_CHECKPOINT_INTERVAL);
        self.feed = Some(self.feeds.start(FeedSpec {
            target,
            filter,
            checkpoint_interval,
            cursor: self.source_cursor,
            live_from: None,
            buffer: 256,
            slot: None,
        }));
    }

    /// Hands waiting events to consumers with room, by strategy.
    fn pump(&mut self) {
        if self.waiting.is_empty() || !self.consumers.iter().any(Consumer::has_room) {
            return;
        }
        match self.settings().strategy {
            Strategy::RoundRobin => {
                while !self.waiting.is_empty() {
                    let count = self.consumers.len();
                    let Some(index) = (0..count)
                        .map(|step| (self.round_robin + step) % count)
                        .find(|&index| self.consumers[index].has_room())
                    else {
                        break;
                    };
                    let key = self.waiting.pop_front().expect("not empty");
                    self.round_robin = index + 1;
                    self.deliver(key, index);
                }
            }
            Strategy::DispatchToSingle => {
                while !self.waiting.is_empty() && self.consumers[0].has_room() {
                    let key = self.waiting.pop_front().expect("not empty");
                    self.deliver(key, 0);
                }
            }
            Strategy::PinnedByStream => self.pump_pinned(),
        }
    }

    /// One pass over the queue: an event goes out when no earlier event of its
    /// stream is outstanding and its stream's consumer has room.
    fn pump_pinned(&mut self) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        let mut blocked: HashSet<String> = HashSet::new();
        while let Some(key) = self.waiting.pop_front() {
            if !self.consumers.iter().any(Consumer::has_room) {
                kept.push_back(key);
                kept.extend(self.waiting.drain(..));
                break;
            }
            let stream = self.entries[&key].event.stream.clone();
            let busy_with_other = self
                .busy_streams
                .get(&stream)
                .is_some_and(|busy| *busy != key);
            if busy_with_other || blocked.contains(&stream) {
                kept.push_back(key);
                continue;
            }
            let pinned = self
                .pins
                .get(&stream)
                .and_then(|id| self.consumers.iter().position(|c| c.id == *id));
            let index = match pinned {
                Some(index) => index,
                None => {
                    let Some(index) = self.least_pinned_with_room() else {
                        kept.push_back(key);
                        blocked.insert(stream);
                        continue;
                    };
                    self.pin(stream.clone(), self.consumers[index].id);
                    index
                }
            };
            if !self.consumers[index].has_room() {
                kept.push_back(key);
                blocked.insert(stream);
                continue;
            }
            self.busy_streams.insert(stream, key);
            self.deliver(key, index);
        }
        self.waiting = kept;
    }

    fn least_pinned_with_room(&self) -> Option<usize> {
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for consumer in self.pins.values() {
            *counts.entry(*consumer).or_default() += 1;
        }
        (0..self.consumers.len())
            .filter(|&index| self.consumers[index].has_room())
            .min_by_key(|&index| counts.get(&self.consumers[index].id).copied().unwrap_or(0))
    }

    /// Pins are kept while their consumer is connected. To bound the map on
    /// groups over very many streams, pins of streams with nothing outstanding
    /// are dropped once it grows large (their next event may go elsewhere).
    fn pin(&mut self, stream: String, consumer: u64) {
        const MAX_PINS: usize = 100_000;
        if self.pins.len() >= MAX_PINS {
            let busy = &self.busy_streams;
            self.pins.retain(|stream, _| busy.contains_key(stream));
        }
        self.pins.insert(stream, consumer);
    }

    /// Sends one event to `consumers[index]` (which has room).
    fn deliver(&mut self, key: u64, index: usize) {
        let timeout = Duration::from_millis(u64::from(self.settings().message_timeout_ms));
        let delivery = self.next_delivery;
        self.next_delivery += 1;
        let entry = self.entries.get_mut(&key).expect("waiting events exist");
        let message = ConsumerMessage::Event {
            event: entry.event.clone(),
            retry_count: entry.retry_count,
        };
        let consumer = &mut self.consumers[index];
        if consumer.sender.try_send(message).is_err() {
            // Closed (the call ended); the tick removes the consumer.
            entry.state = EntryState::Waiting;
            self.waiting.push_front(key);
            if self.busy_streams.get(&entry.event.stream) == Some(&key) {
                self.busy_streams.remove(&entry.event.stream);
            }
            return;
        }
        entry.state = EntryState::InFlight {
            consumer: consumer.id,
            delivery,
        };
        consumer.in_flight.insert(key);
        consumer.delivered += 1;
        self.stats.delivered_total += 1;
        self.timeouts
            .push(Reverse((Instant::now() + timeout, key, delivery)));
        self.prune_timeouts();
    }

    /// Acked events leave their timeout in the heap until its deadline; at high
    /// rates that is many per second of timeout. Once stale ones outnumber the
    /// events in flight, drop them, so the heap stays proportional to what is
    /// in flight.
    fn prune_timeouts(&mut self) {
        const SLACK: usize = 4096;
        let in_flight: usize = self
            .consumers
            .iter()
            .map(|consumer| consumer.in_flight.len())
            .sum();
        if self.timeouts.len() <= 2 * in_flight + SLACK {
            return;
        }
        let entries = &self.entries;
        self.timeouts.retain(|Reverse((_, key, delivery))| {
            matches!(entries.get(key).map(|entry| entry.state),
                Some(EntryState::InFlight { delivery: current, .. }) if current == *delivery)
        });
    }

    /// Ends every consumer's call (group deleted or server stopping).
    fn end_all(&mut self, reason: EndReason) {
        for consumer in self.consumers.drain(..) {
            let _ = consumer
                .sender
                .try_send(ConsumerMessage::End(reason.clone()));
        }
    }
}

/// The next item of the source feed; pending while there is none.
async fn next_feed(feed: &mut Option<FeedReceiver>) -> Option<Result<Feed, EndReason>> {
    match feed {
        Some(feed) => feed.recv().await,
        None => std::future::pending().await,
    }
}
