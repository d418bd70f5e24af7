//! A consumer group's decisions as a sans-I/O state machine.
//!
//! [`GroupMachine`] holds everything a group decides: which events it read from
//! its source and has not finished, which consumer holds which event and until
//! when, retry counts, parking, the checkpoint it may write, pinned-by-stream
//! routing, round robin and dispatch-to-single, and the replay of parked events.
//! It has no clock, no store, no channels and no tasks: the actor (`actor.rs`)
//! feeds it *inputs* (plain values and the current time) and carries out the
//! [`Effect`]s it queues, reporting each write's outcome back as another input.
//! That is what lets the property tests below drive every interleaving in
//! milliseconds.
//!
//! # Inputs
//! - consumers: [`join`](GroupMachine::join), [`leave`](GroupMachine::leave),
//!   [`ack`](GroupMachine::ack), [`nack`](GroupMachine::nack), and
//!   [`deliver_failed`](GroupMachine::deliver_failed) when a `Deliver` could not
//!   be sent;
//! - the source: [`source_event`](GroupMachine::source_event) and
//!   [`source_checkpoint`](GroupMachine::source_checkpoint) (a filtered `$all`
//!   feed's mark for positions examined without an event to deliver); read them
//!   only while [`wants_source`](GroupMachine::wants_source), starting at
//!   [`source_cursor`](GroupMachine::source_cursor);
//! - time: [`tick`](GroupMachine::tick) (message timeouts, the checkpoint timer);
//! - write outcomes: [`parked`](GroupMachine::parked),
//!   [`checkpoint_written`](GroupMachine::checkpoint_written),
//!   [`replay_loaded`](GroupMachine::replay_loaded),
//!   [`replay_truncated`](GroupMachine::replay_truncated);
//! - administration: [`update`](GroupMachine::update),
//!   [`replay_requested`](GroupMachine::replay_requested), and the queries
//!   [`status`](GroupMachine::status) and
//!   [`unwritten_checkpoint`](GroupMachine::unwritten_checkpoint).
//!
//! Every input that changes state ends the same way: the checkpoint moves over
//! the finished prefix of the source order, waiting events go to consumers with
//! room, a checkpoint write is queued when one is due, and the parked stream's
//! truncation is queued once a replay is finished.
//!
//! # Effects
//! Drained with [`poll_effect`](GroupMachine::poll_effect) after every input, in
//! order; see [`Effect`]. The machine has already updated its state as if each
//! effect succeeds: a `Deliver` counts as in flight when it is queued, which is
//! why a failed send must be reported ([`deliver_failed`](GroupMachine::deliver_failed)).
//!
//! # Invariants
//! - An event is *finished* when it was acked, skipped, or durably written to the
//!   parked stream. Only finished events are forgotten.
//! - The source order lists, in source order, every event read from the source
//!   that the checkpoint has not passed (plus marks for positions examined
//!   without an event to deliver). The checkpoint moves only over a finished
//!   prefix of it, so a machine restarted from the last written checkpoint and
//!   fed the source again from [`source_cursor`](GroupMachine::source_cursor)
//!   skips nothing unfinished (at-least-once).
//! - Memory is bounded: [`wants_source`](GroupMachine::wants_source) turns false
//!   while the source order holds [`WINDOW_EVENTS`] entries or [`WINDOW_BYTES`] of
//!   payload, or while [`READ_AHEAD`] events already wait for a consumer.
//! - A consumer is handed an event only while it holds fewer than its
//!   `max_in_flight`; the actor sizes its channel for that, so the machine never
//!   needs to know about channels.
//! - Pinned groups deliver at most one event per stream at a time, and a
//!   stream's events in source order, even across retries and parking.
//! - Each delivery has a timeout; a retry is counted on a timeout, a retry nack
//!   or a disconnect (not on a graceful leave or a STOP), and an event out of
//!   retries is parked.
//! - On `$all`, system streams (`$...`, the group's own state among them) are
//!   passed over, and an event already outstanding (from a replay) is not
//!   tracked twice.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use cairn_storage::{ReadSource, RecordedEvent};
use uuid::Uuid;

use super::definition::{Checkpoint, GroupDefinition, GroupSettings, ParkedRecord, Strategy};
use crate::error::Error;

#[cfg(test)]
mod tests;

/// Most events read from the source and not yet passed by the checkpoint.
pub const WINDOW_EVENTS: usize = 10_000;
/// Most payload bytes held for those events.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;
/// Most events waiting for a consumer before the group stops reading its source.
pub const READ_AHEAD: usize = 512;
/// Most parked events moved back into delivery by one replay.
pub const REPLAY_LIMIT: u64 = 10_000;
/// Pins kept before pins of idle streams are dropped.
const MAX_PINS: usize = 100_000;
/// Stale timeouts tolerated beyond twice the events in flight.
const TIMEOUT_SLACK: usize = 4096;

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
    /// Its id within the group.
    pub id: u64,
    /// The name it joined with.
    pub name: String,
    /// Its in-flight limit (lowered when the group's limit is).
    pub max_in_flight: u32,
    /// Events it holds now.
    pub in_flight: u64,
    /// Deliveries to it, retries included.
    pub delivered: u64,
    /// Its acks of events it held.
    pub acked: u64,
    /// Its nacks of events it held.
    pub nacked: u64,
}

/// A group's live figures.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    /// Where the group stands (not necessarily written yet).
    pub checkpoint: Option<Checkpoint>,
    /// Events held by consumers.
    pub in_flight: u64,
    /// Events waiting for a consumer.
    pub waiting: u64,
    /// Deliveries since the group started, retries included.
    pub delivered_total: u64,
    /// Acks that finished an event.
    pub acked_total: u64,
    /// Retries counted (timeouts, retry nacks, disconnects).
    pub retried_total: u64,
    /// Events durably parked.
    pub parked_total: u64,
    /// The connected consumers, longest-connected first.
    pub consumers: Vec<ConsumerStatus>,
}

/// Names an event being parked, to report the write's outcome with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParkKey(u64);

/// What a write (park, checkpoint) came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The store made it durable.
    Durable,
    /// It failed; nothing of it counts.
    Failed,
}

/// Why a `Deliver` could not be sent to its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The consumer's queue is full (it has not read earlier messages, e.g.
    /// copies of events that timed out): it gets nothing more until the next
    /// tick.
    Full,
    /// The consumer's call ended: it leaves, a disconnect (retries counted).
    Closed,
}

/// A consumer admitted by [`GroupMachine::join`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// Its id within the group.
    pub consumer: u64,
    /// Its in-flight limit: the asked one (0: the group's) capped by the group's.
    pub max_in_flight: u32,
}

/// One record of the parked stream, read back for a replay.
#[derive(Debug, Clone)]
pub struct ParkedEvent {
    /// Its revision in the parked stream.
    pub revision: u64,
    /// The original event, if it still exists.
    pub event: Option<RecordedEvent>,
}

/// Parked events read back for a replay, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ReplayBatch {
    /// The records, in parked-stream order.
    pub events: Vec<ParkedEvent>,
}

/// What the machine asks its driver to do. Queued in order; the driver carries
/// them out in that order and reports outcomes back as inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send `event` to `consumer` (it is counted in flight already). If it cannot
    /// be sent, report [`GroupMachine::deliver_failed`].
    Deliver {
        /// The consumer's id.
        consumer: u64,
        /// The event.
        event: RecordedEvent,
        /// Deliveries of it before this one.
        retry_count: u32,
    },
    /// Append `record` to the group's parked stream; report
    /// [`GroupMachine::parked`] with `key`. The event is finished only when the
    /// write is durable.
    Park {
        /// Names the event in the report.
        key: ParkKey,
        /// What to append.
        record: ParkedRecord,
    },
    /// Append this checkpoint to the group's checkpoint stream; report
    /// [`GroupMachine::checkpoint_written`]. One write runs at a time.
    WriteCheckpoint(Checkpoint),
    /// Read up to `limit` records of the parked stream from its first visible
    /// one, with their original events; report [`GroupMachine::replay_loaded`].
    LoadReplay {
        /// Most records to read.
        limit: u64,
    },
    /// Every replayed event is finished: set the parked stream's
    /// `truncate_before` to this (hiding the replayed records); report
    /// [`GroupMachine::replay_truncated`] whether or not it worked (if not, a
    /// later replay delivers them again).
    TruncateParked {
        /// The parked stream's new `truncate_before`.
        truncate_before: u64,
    },
    /// The consumer is no longer in the group (it left, stopped or
    /// disconnected): drop its channel so its call ends.
    Release {
        /// The consumer's id.
        consumer: u64,
    },
}

/// What happens to an event now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryState {
    /// Queued for a consumer (in `waiting`).
    Waiting,
    /// Held by a consumer; `delivery` tells stale timeouts apart.
    InFlight { consumer: u64, delivery: u64 },
    /// Being written to the parked stream.
    Parking,
}

/// An unfinished event.
#[derive(Debug)]
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
#[derive(Debug)]
struct SourceMark {
    key: Option<u64>,
    checkpoint: Checkpoint,
}

/// A connected consumer.
#[derive(Debug)]
struct Consumer {
    id: u64,
    name: String,
    max_in_flight: u32,
    /// Keys of the events it holds.
    in_flight: HashSet<u64>,
    /// Its queue was full at the last send: no deliveries until the next tick.
    stalled: bool,
    delivered: u64,
    acked: u64,
    nacked: u64,
}

impl Consumer {
    /// Whether an event may be handed to it now.
    fn has_room(&self) -> bool {
        !self.stalled && self.in_flight.len() < self.max_in_flight as usize
    }
}

/// A replay in progress.
#[derive(Debug)]
struct Replay {
    /// Replayed events not finished yet.
    remaining: u64,
    /// The parked stream's `truncate_before` once they are.
    truncate_to: u64,
    /// Loading, or the truncation is queued or running: nothing to queue.
    truncating: bool,
}

/// A group's in-memory state and every decision over it; see the module docs.
#[derive(Debug)]
pub struct GroupMachine {
    /// The group's name, for error messages.
    group: String,
    settings: GroupSettings,
    /// A stream group: checkpoints carry revisions and the cursor is one.
    is_stream: bool,
    /// An `$all` group: system streams are passed over.
    skip_system_streams: bool,
    /// The next revision or position to read from the source.
    source_cursor: u64,

    /// Unfinished events by key (keys grow with tracking order).
    entries: HashMap<u64, Entry>,
    /// The key of each unfinished event, so none is tracked twice.
    by_event_id: HashMap<Uuid, u64>,
    next_key: u64,
    source_order: VecDeque<SourceMark>,
    /// Payload bytes of the source events in `entries`.
    window_bytes: usize,
    /// Keys waiting for a consumer, in delivery order.
    waiting: VecDeque<u64>,
    /// (deadline, key, delivery), earliest first; stale ones are skipped.
    timeouts: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_delivery: u64,

    /// In join order: `consumers[0]` is the dispatch-to-single consumer.
    consumers: Vec<Consumer>,
    next_consumer: u64,
    /// Where the next round-robin search starts.
    round_robin: usize,
    /// Pinned groups: the consumer of each stream, while it is connected.
    pins: HashMap<String, u64>,
    /// Pinned groups: the one outstanding delivered event of each stream.
    busy_streams: HashMap<String, u64>,

    /// Where the group stands (the finished prefix of the source order).
    checkpoint: Option<Checkpoint>,
    /// The last checkpoint known to be durable.
    written_checkpoint: Option<Checkpoint>,
    /// Checkpoint moves since the last write was queued.
    marks_since_write: u64,
    /// When the last write was queued (or the machine started).
    last_write: Instant,
    writing_checkpoint: bool,

    replay: Option<Replay>,
    /// Counters (the other fields of a status are computed).
    stats: GroupStatus,
    effects: VecDeque<Effect>,
}

impl GroupMachine {
    /// A machine resuming from `checkpoint` (the last one written), or from the
    /// definition's start. Fails when the definition's source does not parse.
    pub fn new(
        definition: &GroupDefinition,
        checkpoint: Option<Checkpoint>,
        now: Instant,
    ) -> Result<Self, Error> {
        let source = definition.source()?;
        let is_stream = matches!(source, ReadSource::Stream(_));
        let source_cursor = checkpoint.map_or(definition.start_cursor, |checkpoint| {
            checkpoint.resume_cursor(is_stream)
        });
        Ok(Self {
            group: definition.group.clone(),
            settings: definition.settings.clone(),
            is_stream,
            skip_system_streams: source == ReadSource::All,
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
            last_write: now,
            writing_checkpoint: false,
            replay: None,
            stats: GroupStatus::default(),
            effects: VecDeque::new(),
        })
    }

    // ----- queries -----

    /// The next effect to carry out, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Whether the source may be read now (the window has room).
    pub fn wants_source(&self) -> bool {
        self.source_order.len() < WINDOW_EVENTS
            && self.window_bytes < WINDOW_BYTES
            && self.waiting.len() < READ_AHEAD
    }

    /// The next revision (stream groups) or position to read from the source.
    pub fn source_cursor(&self) -> u64 {
        self.source_cursor
    }

    /// The checkpoint, if it moved past the last one written (what a shutdown
    /// should still write).
    pub fn unwritten_checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint
            .filter(|checkpoint| self.written_checkpoint != Some(*checkpoint))
    }

    /// Live figures.
    pub fn status(&self) -> GroupStatus {
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

    // ----- consumers -----

    /// Admits a consumer, unless the group already has `max_consumers` (the
    /// server's limit) or its own `settings.max_consumers` (when not 0),
    /// whichever is lower; the refusal names the limit that applied (the
    /// server's when they are equal).
    /// `max_in_flight` 0 takes the group's limit; a larger one is capped by it.
    /// Deliveries to it may be queued at once: tell it it joined before
    /// carrying them out (and [`leave`](Self::leave) if that fails).
    pub fn join(
        &mut self,
        name: String,
        max_in_flight: u32,
        max_consumers: usize,
        now: Instant,
    ) -> Result<Joined, Error> {
        let own_limit = usize::try_from(self.settings.max_consumers).unwrap_or(usize::MAX);
        if own_limit > 0 && own_limit < max_consumers && self.consumers.len() >= own_limit {
            return Err(Error::LimitExceeded(format!(
                "group '{}' already has {own_limit} consumers (its max_consumers setting)",
                self.group
            )));
        }
        if self.consumers.len() >= max_consumers {
            return Err(Error::LimitExceeded(format!(
                "group '{}' already has {max_consumers} consumers (the server's max_consumers_per_group)",
                self.group
            )));
        }
        let group_limit = self.settings.max_in_flight_per_consumer;
        let max_in_flight = match max_in_flight {
            0 => group_limit,
            asked => asked.min(group_limit),
        };
        let id = self.next_consumer;
        self.next_consumer += 1;
        self.consumers.push(Consumer {
            id,
            name,
            max_in_flight,
            in_flight: HashSet::new(),
            stalled: false,
            delivered: 0,
            acked: 0,
            nacked: 0,
        });
        self.settle(now);
        Ok(Joined {
            consumer: id,
            max_in_flight,
        })
    }

    /// Removes a consumer (queues [`Effect::Release`]) and gives what it holds
    /// back, oldest first. `count_retry`: a disconnect counts as a retry (a
    /// handler that crashes its process on an event must not loop forever); a
    /// graceful close does not. Deliveries to it still queued are withdrawn as
    /// if never made. Unknown consumers are ignored.
    pub fn leave(&mut self, consumer: u64, count_retry: bool, now: Instant) {
        self.withdraw_queued(consumer);
        self.remove_consumer(consumer, count_retry);
        self.settle(now);
    }

    /// Events finished by a consumer (any consumer: after a timeout the event
    /// may be with another one already). Events being parked, unknown or
    /// already finished are ignored.
    pub fn ack(&mut self, ids: &[Uuid], now: Instant) {
        for id in ids {
            let Some(&key) = self.by_event_id.get(id) else {
                continue;
            };
            let state = self.entries[&key].state;
            if state == EntryState::Parking {
                continue;
            }
            if let EntryState::InFlight { consumer, .. } = state
                && let Some(holder) = self.consumer_mut(consumer)
            {
                holder.acked += 1;
            }
            self.stats.acked_total += 1;
            self.finish(key);
        }
        self.settle(now);
    }

    /// Events a consumer gives back. Only events it holds count (after a
    /// timeout the event may be with someone else already). `Stop` gives back
    /// everything it holds without counting a retry and removes it.
    pub fn nack(
        &mut self,
        consumer: u64,
        ids: &[Uuid],
        action: NackAction,
        reason: &str,
        now: Instant,
    ) {
        for id in ids {
            let Some(&key) = self.by_event_id.get(id) else {
                continue;
            };
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
            self.withdraw_queued(consumer);
            self.remove_consumer(consumer, false);
        }
        self.settle(now);
    }

    /// A [`Effect::Deliver`] of `event` to `consumer` could not be sent. It and
    /// the deliveries to that consumer still queued are undone (no retry
    /// counted, back to the front of the queue). `Full`: the consumer gets
    /// nothing until the next tick. `Closed`: it leaves as a disconnect.
    pub fn deliver_failed(
        &mut self,
        consumer: u64,
        event: Uuid,
        failure: SendFailure,
        now: Instant,
    ) {
        // Later deliveries first, so the queue's front keeps delivery order.
        self.withdraw_queued(consumer);
        if let Some(&key) = self.by_event_id.get(&event) {
            self.undeliver(consumer, key);
        }
        match failure {
            SendFailure::Full => {
                if let Some(stalled) = self.consumer_mut(consumer) {
                    stalled.stalled = true;
                }
            }
            SendFailure::Closed => self.remove_consumer(consumer, true),
        }
        self.settle(now);
    }

    // ----- source -----

    /// An event read from the source, in source order.
    pub fn source_event(&mut self, event: RecordedEvent, now: Instant) {
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
        let system = self.skip_system_streams && event.stream.starts_with('$');
        // Already outstanding (a replay of it is running): not twice.
        if system || self.by_event_id.contains_key(&event.id) {
            self.push_mark(None, checkpoint);
        } else {
            self.window_bytes += event.data.len();
            let key = self.track(event, false);
            self.push_mark(Some(key), checkpoint);
        }
        self.settle(now);
    }

    /// A filtered source examined everything up to `position` without an event
    /// to deliver.
    pub fn source_checkpoint(&mut self, position: u64, now: Instant) {
        self.source_cursor = self.source_cursor.max(position + 1);
        self.push_mark(
            None,
            Checkpoint {
                position,
                revision: None,
            },
        );
        self.settle(now);
    }

    // ----- time -----

    /// Time passed: deliveries past their timeout are retried, stalled
    /// consumers may be tried again, a checkpoint write may be due.
    pub fn tick(&mut self, now: Instant) {
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
        for consumer in &mut self.consumers {
            consumer.stalled = false;
        }
        self.settle(now);
    }

    // ----- write outcomes -----

    /// A park write finished: durable, the event is finished; failed, it goes
    /// back to the front of the queue.
    pub fn parked(&mut self, key: ParkKey, outcome: WriteOutcome, now: Instant) {
        let parking = self
            .entries
            .get(&key.0)
            .is_some_and(|entry| entry.state == EntryState::Parking);
        match outcome {
            _ if !parking => {}
            WriteOutcome::Durable => {
                self.stats.parked_total += 1;
                self.finish(key.0);
            }
            WriteOutcome::Failed => self.requeue_front(key.0),
        }
        self.settle(now);
    }

    /// A checkpoint write finished. A failed one is retried when the next is due.
    pub fn checkpoint_written(
        &mut self,
        checkpoint: Checkpoint,
        outcome: WriteOutcome,
        now: Instant,
    ) {
        self.writing_checkpoint = false;
        if outcome == WriteOutcome::Durable {
            self.written_checkpoint = Some(checkpoint);
        }
        self.settle(now);
    }

    // ----- administration -----

    /// New settings. Consumers' in-flight limits are lowered to the group's;
    /// what they hold beyond it stays with them.
    pub fn update(&mut self, settings: GroupSettings, now: Instant) {
        self.settings = settings;
        let limit = self.settings.max_in_flight_per_consumer;
        for consumer in &mut self.consumers {
            consumer.max_in_flight = consumer.max_in_flight.min(limit);
        }
        self.settle(now);
    }

    /// Starts moving up to `max` parked events (0: [`REPLAY_LIMIT`]) back into
    /// delivery: queues [`Effect::LoadReplay`]. One replay runs at a time.
    pub fn replay_requested(&mut self, max: u64, now: Instant) -> Result<(), Error> {
        if let Some(replay) = &self.replay {
            return Err(Error::ReplayInProgress {
                group: self.group.clone(),
                remaining: replay.remaining,
            });
        }
        // Marks the replay as running until the batch is loaded.
        self.replay = Some(Replay {
            remaining: 0,
            truncate_to: 0,
            truncating: true,
        });
        let limit = if max == 0 {
            REPLAY_LIMIT
        } else {
            max.min(REPLAY_LIMIT)
        };
        self.effects.push_back(Effect::LoadReplay { limit });
        self.settle(now);
        Ok(())
    }

    /// The parked records a replay read: their events (those that still exist
    /// and are not outstanding already) join the back of the queue. Returns
    /// what the replay's caller is answered: how many records it covers.
    pub fn replay_loaded(
        &mut self,
        loaded: Result<ReplayBatch, Error>,
        now: Instant,
    ) -> Result<u64, Error> {
        let batch = match loaded {
            Ok(batch) => batch,
            Err(error) => {
                self.replay = None;
                return Err(error);
            }
        };
        let Some(last) = batch.events.last().map(|parked| parked.revision) else {
            self.replay = None;
            return Ok(0);
        };
        let replayed = batch.events.len() as u64;
        let mut remaining = 0;
        for parked in batch.events {
            // Gone (deleted or scavenged) or already outstanding: nothing to do.
            let Some(event) = parked.event else { continue };
            if self.by_event_id.contains_key(&event.id) {
                continue;
            }
            self.track(event, true);
            remaining += 1;
        }
        self.replay = Some(Replay {
            remaining,
            truncate_to: last + 1,
            truncating: false,
        });
        self.settle(now);
        Ok(replayed)
    }

    /// The truncation after a replay finished (or failed): replays may start again.
    pub fn replay_truncated(&mut self, now: Instant) {
        self.replay = None;
        self.settle(now);
    }

    // ----- internals -----

    fn consumer_mut(&mut self, id: u64) -> Option<&mut Consumer> {
        self.consumers.iter_mut().find(|consumer| consumer.id == id)
    }

    /// What every input ends with.
    fn settle(&mut self, now: Instant) {
        self.advance_checkpoint();
        self.pump(now);
        self.maybe_write_checkpoint(now);
        self.maybe_truncate_parked();
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

    fn maybe_write_checkpoint(&mut self, now: Instant) {
        if self.writing_checkpoint || self.checkpoint == self.written_checkpoint {
            return;
        }
        let Some(checkpoint) = self.checkpoint else {
            return;
        };
        let due = self.marks_since_write >= u64::from(self.settings.checkpoint_after_events)
            || now.saturating_duration_since(self.last_write)
                >= Duration::from_millis(u64::from(self.settings.checkpoint_after_ms));
        if !due {
            return;
        }
        self.writing_checkpoint = true;
        self.marks_since_write = 0;
        self.last_write = now;
        self.effects.push_back(Effect::WriteCheckpoint(checkpoint));
    }

    /// Once every replayed event is finished, queues hiding them in the parked stream.
    fn maybe_truncate_parked(&mut self) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        if replay.truncating || replay.remaining > 0 {
            return;
        }
        replay.truncating = true;
        self.effects.push_back(Effect::TruncateParked {
            truncate_before: replay.truncate_to,
        });
    }

    /// Removes a consumer and gives its in-flight events back, oldest first.
    fn remove_consumer(&mut self, consumer: u64, count_retry: bool) {
        let Some(index) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        let gone = self.consumers.remove(index);
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
        self.effects.push_back(Effect::Release { consumer });
    }

    /// Takes back the deliveries to `consumer` still queued, as if never made.
    fn withdraw_queued(&mut self, consumer: u64) {
        let mut withdrawn = Vec::new();
        self.effects.retain(|effect| match effect {
            Effect::Deliver {
                consumer: to,
                event,
                ..
            } if *to == consumer => {
                withdrawn.push(event.id);
                false
            }
            _ => true,
        });
        // Latest first: each goes to the front, so the queue keeps their order.
        for id in withdrawn.into_iter().rev() {
            if let Some(&key) = self.by_event_id.get(&id) {
                self.undeliver(consumer, key);
            }
        }
    }

    /// Undoes a delivery that never reached `consumer`: no retry counted, back
    /// to the front of the queue.
    fn undeliver(&mut self, consumer: u64, key: u64) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if !matches!(entry.state,
            EntryState::InFlight { consumer: holder, .. } if holder == consumer)
        {
            return;
        }
        entry.state = EntryState::Waiting;
        if self.busy_streams.get(&entry.event.stream) == Some(&key) {
            self.busy_streams.remove(&entry.event.stream);
        }
        self.waiting.push_front(key);
        self.stats.delivered_total = self.stats.delivered_total.saturating_sub(1);
        if let Some(holder) = self.consumer_mut(consumer) {
            holder.in_flight.remove(&key);
            holder.delivered = holder.delivered.saturating_sub(1);
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
        let max_retries = self.settings.max_retries;
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

    /// Queues writing the event to the parked stream; it is finished when that
    /// is durable.
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
        self.effects.push_back(Effect::Park {
            key: ParkKey(key),
            record,
        });
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

    /// Hands waiting events to consumers with room, by strategy.
    fn pump(&mut self, now: Instant) {
        if self.waiting.is_empty() || !self.consumers.iter().any(Consumer::has_room) {
            return;
        }
        match self.settings.strategy {
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
                    self.deliver(key, index, now);
                }
            }
            Strategy::DispatchToSingle => {
                while !self.waiting.is_empty() && self.consumers[0].has_room() {
                    let key = self.waiting.pop_front().expect("not empty");
                    self.deliver(key, 0, now);
                }
            }
            Strategy::PinnedByStream => self.pump_pinned(now),
        }
    }

    /// One pass over the queue: an event goes out when no earlier event of its
    /// stream is outstanding and its stream's consumer has room.
    fn pump_pinned(&mut self, now: Instant) {
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
            self.deliver(key, index, now);
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
        if self.pins.len() >= MAX_PINS {
            let busy = &self.busy_streams;
            self.pins.retain(|stream, _| busy.contains_key(stream));
        }
        self.pins.insert(stream, consumer);
    }

    /// Hands one waiting event to `consumers[index]` (which has room).
    fn deliver(&mut self, key: u64, index: usize, now: Instant) {
        let timeout = Duration::from_millis(u64::from(self.settings.message_timeout_ms));
        let delivery = self.next_delivery;
        self.next_delivery += 1;
        let consumer = &mut self.consumers[index];
        let entry = self
            .entries
            .get_mut(&key)
            .expect("waiting events are tracked");
        entry.state = EntryState::InFlight {
            consumer: consumer.id,
            delivery,
        };
        consumer.in_flight.insert(key);
        consumer.delivered += 1;
        self.stats.delivered_total += 1;
        self.timeouts.push(Reverse((now + timeout, key, delivery)));
        self.effects.push_back(Effect::Deliver {
            consumer: consumer.id,
            event: entry.event.clone(),
            retry_count: entry.retry_count,
        });
        self.prune_timeouts();
    }

    /// Acked events leave their timeout in the heap until its deadline; at high
    /// rates that is many per second of timeout. Once stale ones outnumber the
    /// events in flight, drop them, so the heap stays proportional to what is
    /// in flight.
    fn prune_timeouts(&mut self) {
        let in_flight: usize = self
            .consumers
            .iter()
            .map(|consumer| consumer.in_flight.len())
            .sum();
        if self.timeouts.len() <= 2 * in_flight + TIMEOUT_SLACK {
            return;
        }
        let entries = &self.entries;
        self.timeouts.retain(|Reverse((_, key, delivery))| {
            matches!(entries.get(key).map(|entry| entry.state),
                Some(EntryState::InFlight { delivery: current, .. }) if current == *delivery)
        });
    }
}
