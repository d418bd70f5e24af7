//! One group's actor: the I/O around its [`GroupMachine`].
//!
//! The machine (`machine.rs`) makes every decision; the actor owns what it
//! cannot: the command channel the registry and consumers send on, the group's
//! source (an internal catch-up subscription, a [`Feed`], reopened after a
//! failure), each consumer's channel, the tick timer, and the store writes
//! (parking, checkpoints, replay reads and truncation), which run on spawned
//! tasks that report back as commands. After each command, feed item or tick it
//! carries out the effects the machine queued, in order.
//!
//! The actor never waits on a consumer: a consumer's channel has room for its
//! in-flight limit plus the join and end messages, and sends use `try_send`; a
//! send that fails anyway is reported to the machine, which takes the event back.
//! At shutdown it writes the checkpoint if it moved (waiting for it briefly) and
//! ends every consumer's call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::{
    EventData, ExpectedRevision, ReadFilter, ReadRequest, ReadSource, RecordedEvent, Store,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

mod replay;

pub use super::machine::{ConsumerStatus, GroupStatus, NackAction};

use super::definition::{
    CHECKPOINT_TYPE, Checkpoint, GroupDefinition, GroupSettings, PARKED_TYPE, ParkedRecord,
    checkpoint_stream, parked_stream,
};
use super::machine::{Effect, GroupMachine, ParkKey, ReplayBatch, SendFailure, WriteOutcome};
use crate::error::{EndReason, Error};
use crate::feeds::{Feed, FeedReceiver, FeedSpec, Feeds, Target};

/// Events per checkpoint mark on filtered `$all` groups.
const FEED_CHECKPOINT_INTERVAL: u64 = 1_000;
/// How often timeouts and the checkpoint timer are checked.
const TICK: Duration = Duration::from_millis(50);
/// Wait before reopening a source feed that ended with an error.
const REOPEN_DELAY: Duration = Duration::from_secs(1);
/// How long a shutdown waits for its last checkpoint write.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// A consumer joins; the actor sends [`ConsumerMessage::Joined`] on
    /// `sender` first.
    Join {
        name: String,
        max_in_flight: u32,
        /// Refused when the group already has this many consumers.
        max_consumers: usize,
        sender: ConsumerSender,
        /// The consumer's id, or why it may not join.
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// A consumer's call ended, or must end with `reason`. `graceful`: the
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
        key: ParkKey,
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
    /// The parked stream was truncated after a replay (or that failed).
    ReplayTruncated,
    /// Test seam: the actor panics (to test the registry's supervision).
    Crash,
    /// Restart: write the checkpoint, end every consumer (they reconnect), and
    /// end so that the supervisor starts the group afresh from its checkpoint
    /// and stored settings (KurrentDB's RestartSubsystem).
    Restart,
}

/// How an actor's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// For good: the group was deleted or the server is stopping.
    Finished,
    /// Asked to restart ([`Command::Restart`]).
    Restart,
}

/// A group's actor.
pub struct GroupActor {
    /// The group as defined (its name, source and start; the machine holds the
    /// settings it runs with).
    definition: GroupDefinition,
    /// Every decision.
    machine: GroupMachine,
    /// The compiled `$all` filter (the registry refuses to start a group whose
    /// stored filter does not compile).
    filter: ReadFilter,
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

    /// The channel of each consumer the machine has, by id (join order).
    consumers: BTreeMap<u64, ConsumerSender>,
    /// The caller of the replay being loaded (the machine runs one at a time).
    replay_reply: Option<oneshot::Sender<Result<u64, Error>>>,
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
        tags: Vec::new(),
    }
}

/// The machine's clock: tokio's, so tests with a paused clock see timeouts.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl GroupActor {
    /// An actor resuming from `checkpoint` (or the definition's start).
    #[allow(clippy::too_many_arguments)]
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
        let machine = GroupMachine::new(&definition, checkpoint, now())?;
        Ok(Self {
            definition,
            machine,
            filter,
            store,
            feeds,
            commands,
            loopback,
            shutdown,
            feed: None,
            reopen_at: Some(Instant::now()),
            last_feed_error: None,
            consumers: BTreeMap::new(),
            replay_reply: None,
        })
    }

    /// Runs until the group is deleted, the server shuts down, or a restart
    /// is asked for.
    pub async fn run(mut self) -> RunEnd {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            let wants_source = self.machine.wants_source() && self.feed.is_some();
            tokio::select! {
                command = self.commands.recv() => {
                    let Some(command) = command else { return RunEnd::Finished };
                    if matches!(command, Command::Restart) {
                        self.flush_checkpoint().await;
                        self.end_all(EndReason::Failed(Error::Internal(format!(
                            "persistent subscription group '{}' was restarted; reconnect",
                            self.definition.group
                        ))));
                        return RunEnd::Restart;
                    }
                    if let Some(reason) = self.handle(command) {
                        self.end_all(reason);
                        return RunEnd::Finished;
                    }
                }
                item = next_feed(&mut self.feed), if wants_source => {
                    self.on_feed(item);
                }
                _ = tick.tick() => self.on_tick(),
                () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
                    self.flush_checkpoint().await;
                    self.end_all(EndReason::ShuttingDown);
                    return RunEnd::Finished;
                }
            }
            self.carry_out();
        }
    }

    /// Handles one command; `Some(reason)` ends the group.
    fn handle(&mut self, command: Command) -> Option<EndReason> {
        let now = now();
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
                    && let Some(sender) = self.consumers.get(&consumer)
                {
                    let _ = sender.try_send(ConsumerMessage::End(reason));
                }
                self.machine.leave(consumer, !graceful, now);
            }
            Command::Ack { ids } => self.machine.ack(&ids, now),
            Command::Nack {
                consumer,
                ids,
                action,
                reason,
            } => {
                // A STOP removes the consumer: it is told why before its
                // sender goes (`Effect::Release`), behind what it was sent
                // already. There is room: its channel holds its in-flight
                // limit, `Joined` and this.
                if action == NackAction::Stop
                    && let Some(sender) = self.consumers.get(&consumer)
                {
                    let _ = sender.try_send(ConsumerMessage::End(EndReason::Stopped));
                }
                self.machine.nack(consumer, &ids, action, &reason, now);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.machine.status());
            }
            Command::Update { settings } => {
                self.definition.settings = settings.clone();
                self.machine.update(settings, now);
            }
            Command::Replay { max, reply } => match self.machine.replay_requested(max, now) {
                // Answered when the batch is loaded.
                Ok(()) => self.replay_reply = Some(reply),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Command::Stop { reason } => return Some(reason),
            Command::Parked { key, result } => {
                let outcome =
                    self.outcome(result, "parking failed; the event goes back to delivery");
                self.machine.parked(key, outcome, now);
            }
            Command::CheckpointWritten { checkpoint, result } => {
                let outcome = self.outcome(result, "checkpoint write failed; will retry");
                self.machine.checkpoint_written(checkpoint, outcome, now);
            }
            Command::ReplayLoaded { loaded, reply } => {
                let _ = reply.send(self.machine.replay_loaded(loaded, now));
            }
            Command::ReplayTruncated => self.machine.replay_truncated(now),
            Command::Crash => panic!(
                "group '{}' was told to crash (test seam)",
                self.definition.group
            ),
            // Handled by `run` before it gets here.
            Command::Restart => {}
        }
        None
    }

    /// A write's outcome for the machine; a failure is logged.
    fn outcome(&self, result: Result<(), String>, failed: &str) -> WriteOutcome {
        match result {
            Ok(()) => WriteOutcome::Durable,
            Err(error) => {
                tracing::warn!(group = %self.definition.group, %error, "{failed}");
                WriteOutcome::Failed
            }
        }
    }

    /// Admits a consumer if the machine does and it can be told so.
    fn join(
        &mut self,
        name: String,
        max_in_flight: u32,
        max_consumers: usize,
        sender: ConsumerSender,
        reply: oneshot::Sender<Result<u64, Error>>,
    ) {
        let now = now();
        let joined = match self
            .machine
            .join(name.clone(), max_in_flight, max_consumers, now)
        {
            Ok(joined) => joined,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let id = joined.consumer;
        let message = ConsumerMessage::Joined {
            consumer_id: id,
            max_in_flight: joined.max_in_flight,
        };
        // Before any delivery the machine queued for it.
        if sender.try_send(message).is_err() || reply.send(Ok(id)).is_err() {
            self.machine.leave(id, false, now);
            return;
        }
        tracing::debug!(group = %self.definition.group, consumer = id, %name, "consumer joined");
        self.consumers.insert(id, sender);
    }

    /// Carries out the machine's effects, in order.
    fn carry_out(&mut self) {
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Deliver {
                    consumer,
                    event,
                    retry_count,
                } => self.deliver(consumer, event, retry_count),
                Effect::Park { key, record } => self.park(key, &record),
                Effect::WriteCheckpoint(checkpoint) => self.write_checkpoint(checkpoint),
                Effect::LoadReplay { limit } => self.load_replay(limit),
                Effect::TruncateParked { truncate_before } => self.truncate_parked(truncate_before),
                Effect::Release { consumer } => {
                    if self.consumers.remove(&consumer).is_some() {
                        tracing::debug!(group = %self.definition.group, consumer, "consumer left");
                    }
                }
            }
        }
    }

    fn deliver(&mut self, consumer: u64, event: RecordedEvent, retry_count: u32) {
        let id = event.id;
        let failure = match self.consumers.get(&consumer) {
            None => SendFailure::Closed,
            Some(sender) => match sender.try_send(ConsumerMessage::Event { event, retry_count }) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => SendFailure::Full,
                Err(TrySendError::Closed(_)) => SendFailure::Closed,
            },
        };
        self.machine.deliver_failed(consumer, id, failure, now());
    }

    /// Appends to the parked stream; the event is finished when that is durable.
    fn park(&self, key: ParkKey, record: &ParkedRecord) {
        let data = serde_json::to_vec(record).expect("a parked record serialises");
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

    fn write_checkpoint(&self, checkpoint: Checkpoint) {
        let ticket = self.append_checkpoint(checkpoint);
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let result = ticket.await.map(|_| ()).map_err(|error| error.to_string());
            let _ = loopback
                .send(Command::CheckpointWritten { checkpoint, result })
                .await;
        });
    }

    fn append_checkpoint(
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
        if let Some(checkpoint) = self.machine.unwritten_checkpoint() {
            let ticket = self.append_checkpoint(checkpoint);
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, ticket).await;
        }
    }

    fn on_feed(&mut self, item: Option<Result<Feed, EndReason>>) {
        match item {
            Some(Ok(Feed::Event(event))) => {
                self.last_feed_error = None;
                self.machine
                    .source_event(Arc::unwrap_or_clone(event), now());
            }
            Some(Ok(Feed::Checkpoint { position })) => {
                self.machine.source_checkpoint(position, now());
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

    /// Reopens a failed feed when due, lets the machine see the time, and
    /// removes consumers whose call ended without a `Leave` (a disconnect).
    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.feed.is_none() && self.reopen_at.is_some_and(|at| at <= now) {
            self.reopen_at = None;
            self.open_feed();
        }
        self.machine.tick(now.into_std());
        let closed: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, sender)| sender.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for consumer in closed {
            self.machine.leave(consumer, true, now.into_std());
        }
    }

    fn open_feed(&mut self) {
        let source = match self.definition.source() {
            Ok(source) => source,
            Err(error) => {
                tracing::error!(group = %self.definition.group, %error, "group source is invalid");
                return;
            }
        };
        // Filtered and `$all` feeds send marks, so the checkpoint moves over
        // what the group never sees (on `$all`: at least its own state).
        let checkpoint_interval = match source {
            ReadSource::Stream(_) => None,
            ReadSource::All => Some(FEED_CHECKPOINT_INTERVAL),
            _ => (!self.filter.is_empty()).then_some(FEED_CHECKPOINT_INTERVAL),
        };
        self.feed = Some(self.feeds.start(FeedSpec {
            target: Target::of(source),
            filter: self.filter.clone(),
            checkpoint_interval,
            cursor: self.machine.source_cursor(),
            live_from: None,
            buffer: 256,
            slot: None,
            // The group's own source waits on its consumers; never cut off.
            stall_timeout: None,
            // Who may consume is decided when a consumer joins.
            visibility: crate::security::acl::Visibility::everything(),
        }));
    }

    /// Ends every consumer's call (group deleted or server stopping).
    fn end_all(&mut self, reason: EndReason) {
        for sender in std::mem::take(&mut self.consumers).into_values() {
            let _ = sender.try_send(ConsumerMessage::End(reason.clone()));
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
