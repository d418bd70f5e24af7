//! Tests of the group state machine: a few cases by hand, then property tests
//! that drive it like the actor and a crashing store would, against a model of
//! what the consumers saw and what is durable.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn_storage::RecordedEvent;
use proptest::prelude::*;
use proptest::sample::Index;
use uuid::Uuid;

use super::{
    Effect, GroupMachine, NackAction, ParkKey, ParkedEvent, READ_AHEAD, ReplayBatch, SendFailure,
    WriteOutcome,
};
use crate::error::Error;
use crate::groups::definition::{
    Checkpoint, FilterSpec, GroupDefinition, GroupSettings, ParkedRecord, Strategy as Routing,
};

// ----- helpers -----

fn definition(stream: &str, settings: GroupSettings) -> GroupDefinition {
    GroupDefinition {
        group: "g".into(),
        stream: stream.into(),
        filter: FilterSpec::default(),
        start_cursor: 0,
        settings,
    }
}

fn settings(strategy: Routing) -> GroupSettings {
    GroupSettings {
        strategy,
        max_retries: 2,
        message_timeout_ms: 100,
        max_in_flight_per_consumer: 10,
        checkpoint_after_events: 1,
        checkpoint_after_ms: 1_000,
        max_consumers: 0,
    }
}

/// The id of the event at `position`.
fn id_at(position: u64) -> Uuid {
    Uuid::from_u128(u128::from(position) + 1)
}

fn event(position: u64, stream: &str, revision: u64) -> RecordedEvent {
    RecordedEvent {
        position,
        stream: stream.into(),
        revision,
        id: id_at(position),
        event_type: "Tested".into(),
        content_type: "application/json".into(),
        created: SystemTime::UNIX_EPOCH,
        metadata: Bytes::new(),
        data: Bytes::from_static(b"{}"),
        tags: Vec::new(),
    }
}

/// A fresh machine of an `$all` group.
fn machine(strategy: Routing, now: Instant) -> GroupMachine {
    GroupMachine::new(&definition("$all", settings(strategy)), None, now).unwrap()
}

fn drain(machine: &mut GroupMachine) -> Vec<Effect> {
    std::iter::from_fn(|| machine.poll_effect()).collect()
}

/// (consumer, position, retry count) of each delivery.
fn deliveries(effects: &[Effect]) -> Vec<(u64, u64, u32)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Deliver {
                consumer,
                event,
                retry_count,
            } => Some((*consumer, event.position, *retry_count)),
            _ => None,
        })
        .collect()
}

fn parks(effects: &[Effect]) -> Vec<(ParkKey, ParkedRecord)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Park { key, record } => Some((*key, record.clone())),
            _ => None,
        })
        .collect()
}

fn join(machine: &mut GroupMachine, now: Instant) -> u64 {
    machine
        .join("c".into(), 0, 10, now)
        .expect("room for a consumer")
        .consumer
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A fresh machine of an `$all` group, and the time it starts at.
fn started(strategy: Routing) -> (Instant, GroupMachine) {
    let now = Instant::now();
    (now, machine(strategy, now))
}

/// Feeds the events of stream `s` at `positions` (revision = position).
fn feed(machine: &mut GroupMachine, positions: impl IntoIterator<Item = u64>, now: Instant) {
    for position in positions {
        machine.source_event(event(position, "s", position), now);
    }
}

/// Where the machine's checkpoint is.
fn checkpoint_position(machine: &GroupMachine) -> Option<u64> {
    machine
        .status()
        .checkpoint
        .map(|checkpoint| checkpoint.position)
}

// ----- cases by hand -----

#[test]
fn round_robin_alternates_and_respects_the_in_flight_limit() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = machine.join("a".into(), 2, 10, now).unwrap().consumer;
    let b = machine.join("b".into(), 1, 10, now).unwrap().consumer;
    feed(&mut machine, 0..5, now);
    assert_eq!(
        deliveries(&drain(&mut machine)),
        vec![(a, 0, 0), (b, 1, 0), (a, 2, 0)]
    );
    assert_eq!(machine.status().waiting, 2);
    machine.ack(&[id_at(1)], now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(b, 3, 0)]);
}

#[test]
fn join_is_refused_beyond_max_consumers_and_capped_in_flight() {
    let (now, mut machine) = started(Routing::RoundRobin);
    assert_eq!(
        machine.join("a".into(), 0, 2, now).unwrap().max_in_flight,
        10
    );
    assert_eq!(
        machine.join("b".into(), 50, 2, now).unwrap().max_in_flight,
        10
    );
    assert!(matches!(
        machine.join("c".into(), 1, 2, now),
        Err(Error::LimitExceeded(_))
    ));
}

#[test]
fn join_is_refused_beyond_the_groups_own_max_consumers() {
    let now = Instant::now();
    let own = GroupSettings {
        max_consumers: 1,
        ..settings(Routing::RoundRobin)
    };
    let mut machine = GroupMachine::new(&definition("s", own.clone()), None, now).unwrap();
    let first = machine.join("a".into(), 0, 256, now).unwrap().consumer;
    match machine.join("b".into(), 0, 256, now) {
        Err(Error::LimitExceeded(message)) => {
            assert!(message.contains("its max_consumers"), "{message}");
        }
        other => panic!("a second consumer joined a group of one: {other:?}"),
    }
    // The server's lower limit is the one named when it applies first.
    match machine.join("b".into(), 0, 1, now) {
        Err(Error::LimitExceeded(message)) => {
            assert!(message.contains("max_consumers_per_group"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A place frees up when the consumer leaves; 0 lifts the group's limit.
    machine.leave(first, false, now);
    machine.join("b".into(), 0, 256, now).unwrap();
    machine.update(
        GroupSettings {
            max_consumers: 0,
            ..own
        },
        now,
    );
    machine.join("c".into(), 0, 256, now).unwrap();
    assert_eq!(machine.status().consumers.len(), 2);
}

#[test]
fn checkpoint_moves_only_over_the_finished_prefix() {
    let (now, mut machine) = started(Routing::RoundRobin);
    join(&mut machine, now);
    feed(&mut machine, [3, 5, 8], now);
    drain(&mut machine);
    machine.ack(&[id_at(5), id_at(8)], now);
    assert_eq!(machine.status().checkpoint, None);
    assert!(drain(&mut machine).is_empty());
    machine.ack(&[id_at(3)], now);
    let checkpoint = Checkpoint {
        position: 8,
        revision: None,
    };
    assert_eq!(machine.status().checkpoint, Some(checkpoint));
    assert_eq!(
        drain(&mut machine),
        vec![Effect::WriteCheckpoint(checkpoint)]
    );
    assert_eq!(machine.unwritten_checkpoint(), Some(checkpoint));
    machine.checkpoint_written(checkpoint, WriteOutcome::Durable, now);
    assert_eq!(machine.unwritten_checkpoint(), None);
    assert_eq!(machine.source_cursor(), 9);
}

#[test]
fn a_failed_checkpoint_write_is_retried() {
    let (now, mut machine) = started(Routing::RoundRobin);
    machine.source_checkpoint(40, now);
    let checkpoint = Checkpoint {
        position: 40,
        revision: None,
    };
    assert_eq!(
        drain(&mut machine),
        vec![Effect::WriteCheckpoint(checkpoint)]
    );
    machine.checkpoint_written(checkpoint, WriteOutcome::Failed, now);
    // Not due by count (no new mark), due by time.
    assert!(drain(&mut machine).is_empty());
    machine.tick(now + ms(1_000));
    assert_eq!(
        drain(&mut machine),
        vec![Effect::WriteCheckpoint(checkpoint)]
    );
}

#[test]
fn stream_groups_checkpoint_revisions() {
    let now = Instant::now();
    let mut machine =
        GroupMachine::new(&definition("s", settings(Routing::RoundRobin)), None, now).unwrap();
    join(&mut machine, now);
    machine.source_event(event(17, "s", 0), now);
    drain(&mut machine);
    machine.ack(&[id_at(17)], now);
    assert_eq!(
        machine.status().checkpoint,
        Some(Checkpoint {
            position: 17,
            revision: Some(0)
        })
    );
    assert_eq!(machine.source_cursor(), 1);
}

#[test]
fn timeouts_retry_then_park_and_a_durable_park_finishes() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    machine.source_event(event(0, "s", 0), now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 0)]);
    machine.tick(now + ms(99));
    assert!(drain(&mut machine).is_empty());
    machine.tick(now + ms(100));
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 1)]);
    machine.tick(now + ms(200));
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 2)]);
    machine.tick(now + ms(300));
    let effects = drain(&mut machine);
    assert!(deliveries(&effects).is_empty());
    let [(key, record)] = parks(&effects).try_into().unwrap();
    assert_eq!(record.event_id, id_at(0));
    assert_eq!(record.retry_count, 2);
    assert!(record.reason.contains("out of retries after 3 deliveries"));
    // An ack while parking does not count: the park decides.
    machine.ack(&[id_at(0)], now + ms(300));
    assert_eq!(machine.status().acked_total, 0);
    machine.parked(key, WriteOutcome::Failed, now + ms(300));
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 2)]);
    machine.nack(a, &[id_at(0)], NackAction::Park, "poison", now + ms(300));
    let [(key, record)] = parks(&drain(&mut machine)).try_into().unwrap();
    assert_eq!(record.reason, "poison");
    assert_eq!(machine.status().checkpoint, None);
    machine.parked(key, WriteOutcome::Durable, now + ms(300));
    let status = machine.status();
    assert_eq!(status.parked_total, 1);
    assert_eq!(status.retried_total, 2);
    assert_eq!(checkpoint_position(&machine), Some(0));
}

#[test]
fn a_disconnect_counts_a_retry_and_a_graceful_leave_does_not() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    feed(&mut machine, 0..2, now);
    drain(&mut machine);
    machine.leave(a, false, now);
    assert_eq!(drain(&mut machine), vec![Effect::Release { consumer: a }]);
    let b = join(&mut machine, now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(b, 0, 0), (b, 1, 0)]);
    machine.leave(b, true, now);
    drain(&mut machine);
    let c = join(&mut machine, now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(c, 0, 1), (c, 1, 1)]);
    assert_eq!(machine.status().retried_total, 2);
}

#[test]
fn nack_stop_gives_everything_back_and_releases_the_consumer() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    feed(&mut machine, 0..3, now);
    drain(&mut machine);
    machine.nack(a, &[id_at(1)], NackAction::Stop, "", now);
    assert_eq!(drain(&mut machine), vec![Effect::Release { consumer: a }]);
    let status = machine.status();
    assert_eq!((status.waiting, status.retried_total), (3, 0));
    // The nacked events first, then the rest in front of them, oldest first.
    let b = join(&mut machine, now);
    assert_eq!(
        deliveries(&drain(&mut machine)),
        vec![(b, 0, 0), (b, 2, 0), (b, 1, 0)]
    );
}

#[test]
fn nacks_count_only_from_the_holder() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    let b = join(&mut machine, now);
    machine.source_event(event(0, "s", 0), now);
    drain(&mut machine);
    machine.nack(b, &[id_at(0)], NackAction::Skip, "", now);
    assert_eq!(machine.status().in_flight, 1);
    machine.nack(a, &[id_at(0)], NackAction::Skip, "", now);
    let status = machine.status();
    assert_eq!((status.in_flight, status.acked_total), (0, 0));
    assert_eq!(checkpoint_position(&machine), Some(0));
}

#[test]
fn dispatch_to_single_feeds_the_oldest_consumer_only() {
    let (now, mut machine) = started(Routing::DispatchToSingle);
    let a = join(&mut machine, now);
    let b = join(&mut machine, now);
    feed(&mut machine, 0..2, now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 0), (a, 1, 0)]);
    machine.leave(a, false, now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(b, 0, 0), (b, 1, 0)]);
}

#[test]
fn pinned_groups_deliver_one_event_per_stream_in_order() {
    let (now, mut machine) = started(Routing::PinnedByStream);
    let a = join(&mut machine, now);
    let b = join(&mut machine, now);
    machine.source_event(event(0, "x", 0), now);
    machine.source_event(event(1, "x", 1), now);
    machine.source_event(event(2, "y", 0), now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 0), (b, 2, 0)]);
    // A retry keeps the stream busy: the next event of x waits.
    machine.nack(a, &[id_at(0)], NackAction::Retry, "again", now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 1)]);
    machine.ack(&[id_at(0)], now);
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 1, 0)]);
}

#[test]
fn system_streams_are_passed_over_on_all() {
    let (now, mut machine) = started(Routing::RoundRobin);
    join(&mut machine, now);
    machine.source_event(event(0, "$sys-ps-g-checkpoint", 0), now);
    assert!(deliveries(&drain(&mut machine)).is_empty());
    assert_eq!(checkpoint_position(&machine), Some(0));
}

#[test]
fn a_full_consumer_is_skipped_until_the_next_tick() {
    let (now, mut machine) = started(Routing::RoundRobin);
    feed(&mut machine, 0..2, now);
    let a = join(&mut machine, now);
    // The first send fails: the second delivery, still queued, is undone too,
    // and the queue keeps its order.
    let first = machine.poll_effect().expect("a delivery");
    assert_eq!(deliveries(&[first]), vec![(a, 0, 0)]);
    machine.deliver_failed(a, id_at(0), SendFailure::Full, now);
    assert!(drain(&mut machine).is_empty());
    let status = machine.status();
    assert_eq!(
        (status.in_flight, status.waiting, status.delivered_total),
        (0, 2, 0)
    );
    machine.tick(now + ms(1));
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 0), (a, 1, 0)]);
}

#[test]
fn a_closed_consumer_leaves_as_a_disconnect() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    machine.source_event(event(0, "s", 0), now);
    drain(&mut machine);
    machine.source_event(event(1, "s", 1), now);
    drain(&mut machine);
    machine.deliver_failed(a, id_at(1), SendFailure::Closed, now);
    assert_eq!(drain(&mut machine), vec![Effect::Release { consumer: a }]);
    let b = join(&mut machine, now);
    // The delivered event counts a retry, the one never sent does not.
    assert_eq!(deliveries(&drain(&mut machine)), vec![(b, 0, 1), (b, 1, 0)]);
}

#[test]
fn a_consumer_leaving_before_its_deliveries_are_sent_gets_none() {
    let (now, mut machine) = started(Routing::RoundRobin);
    machine.source_event(event(0, "s", 0), now);
    let a = join(&mut machine, now);
    // Its Joined message could not be sent.
    machine.leave(a, false, now);
    assert_eq!(drain(&mut machine), vec![Effect::Release { consumer: a }]);
    let status = machine.status();
    assert_eq!((status.waiting, status.delivered_total), (1, 0));
}

#[test]
fn replays_deliver_parked_events_again_then_truncate() {
    let (now, mut machine) = started(Routing::RoundRobin);
    let a = join(&mut machine, now);
    machine.replay_requested(0, now).unwrap();
    assert_eq!(
        drain(&mut machine),
        vec![Effect::LoadReplay { limit: 10_000 }]
    );
    assert!(matches!(
        machine.replay_requested(5, now),
        Err(Error::ReplayInProgress { .. })
    ));
    let batch = ReplayBatch {
        events: vec![
            ParkedEvent {
                revision: 4,
                event: Some(event(0, "s", 0)),
            },
            ParkedEvent {
                revision: 5,
                event: None,
            },
        ],
    };
    assert_eq!(machine.replay_loaded(Ok(batch), now), Ok(2));
    assert_eq!(deliveries(&drain(&mut machine)), vec![(a, 0, 0)]);
    // The source reaching the same event meanwhile does not track it twice.
    machine.source_event(event(0, "s", 0), now);
    assert!(deliveries(&drain(&mut machine)).is_empty());
    assert_eq!(checkpoint_position(&machine), Some(0));
    machine.ack(&[id_at(0)], now);
    assert_eq!(
        drain(&mut machine),
        vec![Effect::TruncateParked { truncate_before: 6 }]
    );
    machine.replay_truncated(now);
    machine.replay_requested(1, now).unwrap();
    assert_eq!(drain(&mut machine), vec![Effect::LoadReplay { limit: 1 }]);
    assert_eq!(
        machine.replay_loaded(Ok(ReplayBatch::default()), now),
        Ok(0)
    );
    machine.replay_requested(1, now).unwrap();
    drain(&mut machine);
    let failed = Err(Error::Internal("read failed".into()));
    assert!(machine.replay_loaded(failed, now).is_err());
    assert!(machine.replay_requested(1, now).is_ok());
}

#[test]
fn the_source_is_not_read_beyond_the_read_ahead() {
    let (now, mut machine) = started(Routing::RoundRobin);
    for position in 0..READ_AHEAD as u64 {
        assert!(machine.wants_source());
        machine.source_event(event(position, "s", position), now);
    }
    assert!(!machine.wants_source());
    join(&mut machine, now);
    assert!(machine.wants_source());
}

#[test]
fn updates_lower_consumers_limits() {
    let (now, mut machine) = started(Routing::RoundRobin);
    join(&mut machine, now);
    machine.update(
        GroupSettings {
            max_in_flight_per_consumer: 1,
            ..settings(Routing::RoundRobin)
        },
        now,
    );
    feed(&mut machine, 0..3, now);
    assert_eq!(deliveries(&drain(&mut machine)).len(), 1);
    assert_eq!(machine.status().consumers[0].max_in_flight, 1);
}

// ----- property tests -----

/// Most consumers the model's group admits.
const MAX_CONSUMERS: usize = 3;

/// What the source holds at one position.
#[derive(Debug, Clone)]
enum Item {
    Event(RecordedEvent),
    /// Filtered out; `reported`: the feed sends a checkpoint mark for it.
    Filtered {
        position: u64,
        reported: bool,
    },
}

/// One step of the world.
#[derive(Debug, Clone)]
enum Op {
    Join {
        max_in_flight: u32,
    },
    /// Joins, but its `Joined` message cannot be sent, so the actor makes it leave.
    JoinAbandoned,
    Leave {
        consumer: Index,
        graceful: bool,
    },
    /// The consumer's call ends without a `Leave`: its channel is closed.
    Close {
        consumer: Index,
    },
    /// The consumer's channel is full for the next delivery.
    Stall {
        consumer: Index,
    },
    Ack {
        consumer: Index,
        count: usize,
    },
    Nack {
        consumer: Index,
        count: usize,
        action: NackAction,
    },
    Feed {
        count: usize,
    },
    /// The feed failed and is reopened at the machine's cursor.
    Reopen,
    Advance {
        millis: u64,
    },
    CompletePark {
        which: Index,
        durable: bool,
    },
    CompleteCheckpoint {
        durable: bool,
    },
    Replay {
        max: u64,
    },
    CompleteReplayLoad {
        ok: bool,
    },
    CompleteTruncate {
        durable: bool,
    },
    Update {
        tunables: Tunables,
    },
    /// The actor restarts from the durable checkpoint; each write in flight
    /// landed or not.
    Restart {
        parks_landed: u64,
        checkpoint_landed: bool,
        truncation_landed: bool,
    },
}

/// Settings other than the strategy (which a run keeps, so its promises apply).
#[derive(Debug, Clone, Copy)]
struct Tunables {
    max_retries: u32,
    message_timeout_ms: u32,
    max_in_flight_per_consumer: u32,
    checkpoint_after_events: u32,
    checkpoint_after_ms: u32,
}

impl Tunables {
    fn settings(self, strategy: Routing) -> GroupSettings {
        GroupSettings {
            strategy,
            max_retries: self.max_retries,
            message_timeout_ms: self.message_timeout_ms,
            max_in_flight_per_consumer: self.max_in_flight_per_consumer,
            checkpoint_after_events: self.checkpoint_after_events,
            checkpoint_after_ms: self.checkpoint_after_ms,
            max_consumers: 0,
        }
    }
}

fn tunables() -> impl Strategy<Value = Tunables> {
    (0u32..4, 10u32..200, 1u32..5, 1u32..6, 1u32..200).prop_map(
        |(max_retries, timeout, in_flight, after_events, after_ms)| Tunables {
            max_retries,
            message_timeout_ms: timeout,
            max_in_flight_per_consumer: in_flight,
            checkpoint_after_events: after_events,
            checkpoint_after_ms: after_ms,
        },
    )
}

fn nack_action() -> impl Strategy<Value = NackAction> {
    prop_oneof![
        3 => Just(NackAction::Retry),
        2 => Just(NackAction::Park),
        2 => Just(NackAction::Skip),
        1 => Just(NackAction::Stop),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..6).prop_map(|max_in_flight| Op::Join { max_in_flight }),
        1 => Just(Op::JoinAbandoned),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(consumer, graceful)| Op::Leave { consumer, graceful }),
        1 => any::<Index>().prop_map(|consumer| Op::Close { consumer }),
        1 => any::<Index>().prop_map(|consumer| Op::Stall { consumer }),
        6 => (any::<Index>(), 1usize..4).prop_map(|(consumer, count)| Op::Ack { consumer, count }),
        4 => (any::<Index>(), 1usize..3, nack_action())
            .prop_map(|(consumer, count, action)| Op::Nack { consumer, count, action }),
        6 => (1usize..6).prop_map(|count| Op::Feed { count }),
        1 => Just(Op::Reopen),
        4 => (1u64..250).prop_map(|millis| Op::Advance { millis }),
        3 => (any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(which, durable)| Op::CompletePark { which, durable }),
        2 => prop::bool::weighted(0.8).prop_map(|durable| Op::CompleteCheckpoint { durable }),
        1 => (0u64..4).prop_map(|max| Op::Replay { max }),
        1 => prop::bool::weighted(0.8).prop_map(|ok| Op::CompleteReplayLoad { ok }),
        1 => any::<bool>().prop_map(|durable| Op::CompleteTruncate { durable }),
        1 => tunables().prop_map(|tunables| Op::Update { tunables }),
        1 => (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(parks_landed, checkpoint_landed, truncation_landed)| Op::Restart {
                parks_landed,
                checkpoint_landed,
                truncation_landed,
            }
        ),
    ]
}

/// A whole run: the group, its source, and what happens.
#[derive(Debug, Clone)]
struct Case {
    on_all: bool,
    strategy: Routing,
    tunables: Tunables,
    /// 0-2: an event of stream `s0`-`s2`; 3: of a system stream; 4/5: filtered
    /// out, reported or not (stream groups: every item is an event of `s0`).
    source: Vec<u8>,
    ops: Vec<Op>,
}

fn case(strategy: impl Strategy<Value = Routing>) -> impl Strategy<Value = Case> {
    (
        prop::bool::weighted(0.75),
        strategy,
        tunables(),
        prop::collection::vec(0u8..6, 0..30),
        prop::collection::vec(op(), 0..120),
    )
        .prop_map(|(on_all, strategy, tunables, source, ops)| Case {
            on_all,
            strategy,
            tunables,
            source,
            ops,
        })
}

fn any_routing() -> impl Strategy<Value = Routing> {
    prop_oneof![
        Just(Routing::RoundRobin),
        Just(Routing::DispatchToSingle),
        Just(Routing::PinnedByStream),
    ]
}

fn build_source(kinds: &[u8], on_all: bool) -> Vec<Item> {
    let mut revisions = [0u64; 4];
    kinds
        .iter()
        .enumerate()
        .map(|(index, &kind)| {
            // Positions with gaps, as other streams' events would leave.
            let position = 3 * index as u64 + 2;
            let stream = match kind {
                _ if !on_all => 0,
                0..=3 => usize::from(kind),
                reported => {
                    return Item::Filtered {
                        position,
                        reported: reported == 4,
                    };
                }
            };
            let name = if stream == 3 {
                "$sys-other".to_owned()
            } else {
                format!("s{stream}")
            };
            let revision = revisions[stream];
            revisions[stream] += 1;
            Item::Event(event(position, &name, revision))
        })
        .collect()
}

/// An event a consumer holds, as the consumer sees it.
#[derive(Debug)]
struct Held {
    id: Uuid,
    stream: String,
    /// When the machine takes it back.
    deadline: Instant,
}

/// A consumer as the actor and the consumer see it.
#[derive(Debug)]
struct ModelConsumer {
    id: u64,
    holding: Vec<Held>,
    /// Its channel is closed (its call ended without a `Leave`).
    closed: bool,
    /// Its channel is full for the next delivery.
    stall_next: bool,
    /// Never told it joined: must get nothing.
    abandoned: bool,
}

impl ModelConsumer {
    /// A consumer that just joined, holding nothing.
    fn new(id: u64, abandoned: bool) -> Self {
        Self {
            id,
            holding: Vec::new(),
            closed: false,
            stall_next: false,
            abandoned,
        }
    }

    /// Gives up the ids of the first `count` events it holds (fewer if it
    /// holds fewer), as an ack or nack names them.
    fn give_up(&mut self, count: usize) -> Vec<Uuid> {
        let count = count.min(self.holding.len());
        self.holding.drain(..count).map(|held| held.id).collect()
    }
}

/// The machine, the actor's I/O around it, a store that may lose writes in
/// flight at a restart, and what consumers saw.
struct World {
    definition: GroupDefinition,
    is_stream: bool,
    source: Vec<Item>,
    machine: GroupMachine,
    now: Instant,
    /// The next source item the feed gives.
    feed_at: usize,

    // The store.
    durable_checkpoint: Option<Checkpoint>,
    parked: Vec<ParkedRecord>,
    truncate_before: usize,

    // Writes in flight.
    parks: Vec<(ParkKey, ParkedRecord)>,
    checkpoint_write: Option<Checkpoint>,
    load: Option<u64>,
    truncation: Option<u64>,
    replay_running: bool,

    consumers: Vec<ModelConsumer>,

    /// Events acked or skipped by a holder, or durably parked, ever.
    done: HashSet<Uuid>,
    /// The same since the last restart.
    done_here: HashSet<Uuid>,
    /// Events in a replay batch since the last restart.
    replayed_here: HashSet<Uuid>,
    /// Deliverable source events fed since the last restart, in order.
    fed_here: Vec<RecordedEvent>,
    /// The machine's checkpoint last seen (it must not move back).
    seen_checkpoint: Option<Checkpoint>,
    /// At the end: every replayed event must be delivered again.
    check_replays: bool,
    /// Replayed events not delivered yet (while `check_replays`).
    awaiting_replay: HashSet<Uuid>,
}

impl World {
    fn new(case: &Case) -> Self {
        let stream = if case.on_all { "$all" } else { "s0" };
        let definition = definition(stream, case.tunables.settings(case.strategy));
        let now = Instant::now();
        let machine = GroupMachine::new(&definition, None, now).unwrap();
        Self {
            definition,
            is_stream: !case.on_all,
            source: build_source(&case.source, case.on_all),
            machine,
            now,
            feed_at: 0,
            durable_checkpoint: None,
            parked: Vec::new(),
            truncate_before: 0,
            parks: Vec::new(),
            checkpoint_write: None,
            load: None,
            truncation: None,
            replay_running: false,
            consumers: Vec::new(),
            done: HashSet::new(),
            done_here: HashSet::new(),
            replayed_here: HashSet::new(),
            fed_here: Vec::new(),
            seen_checkpoint: None,
            check_replays: false,
            awaiting_replay: HashSet::new(),
        }
    }

    fn strategy(&self) -> Routing {
        self.definition.settings.strategy
    }

    fn finished(&mut self, id: Uuid) {
        self.done.insert(id);
        self.done_here.insert(id);
    }

    /// The open consumer `index` picks, if any.
    fn pick(&self, index: &Index) -> Option<usize> {
        let open: Vec<usize> = (0..self.consumers.len())
            .filter(|&at| !self.consumers[at].closed && !self.consumers[at].abandoned)
            .collect();
        (!open.is_empty()).then(|| open[index.index(open.len())])
    }

    fn apply(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Join { max_in_flight } => self.join(*max_in_flight),
            Op::JoinAbandoned => {
                if self.consumers.len() < MAX_CONSUMERS {
                    let joined = self
                        .machine
                        .join("abandoned".into(), 0, MAX_CONSUMERS, now)
                        .unwrap();
                    self.consumers
                        .push(ModelConsumer::new(joined.consumer, true));
                    self.machine.leave(joined.consumer, false, now);
                }
            }
            Op::Leave { consumer, graceful } => {
                if let Some(at) = self.pick(consumer) {
                    let id = self.consumers[at].id;
                    self.machine.leave(id, !graceful, now);
                }
            }
            Op::Close { consumer } => {
                if let Some(at) = self.pick(consumer) {
                    self.consumers[at].closed = true;
                }
            }
            Op::Stall { consumer } => {
                if let Some(at) = self.pick(consumer) {
                    self.consumers[at].stall_next = true;
                }
            }
            Op::Ack { consumer, count } => {
                if let Some(at) = self.pick(consumer) {
                    let mut ids = self.consumers[at].give_up(*count);
                    for id in &ids {
                        self.finished(*id);
                    }
                    // Unknown ids are ignored.
                    ids.push(Uuid::from_u128(u128::MAX));
                    self.machine.ack(&ids, now);
                }
            }
            Op::Nack {
                consumer,
                count,
                action,
            } => {
                if let Some(at) = self.pick(consumer) {
                    let id = self.consumers[at].id;
                    let ids = self.consumers[at].give_up(*count);
                    if *action == NackAction::Skip {
                        for id in &ids {
                            self.finished(*id);
                        }
                    }
                    self.machine.nack(id, &ids, *action, "nacked", now);
                }
            }
            Op::Feed { count } => {
                for _ in 0..*count {
                    if !self.feed_one() {
                        break;
                    }
                }
            }
            Op::Reopen => self.reopen(),
            Op::Advance { millis } => self.advance(Duration::from_millis(*millis)),
            Op::CompletePark { which, durable } => {
                if !self.parks.is_empty() {
                    let at = which.index(self.parks.len());
                    self.complete_park(at, *durable);
                }
            }
            Op::CompleteCheckpoint { durable } => self.complete_checkpoint(*durable),
            Op::Replay { max } => self.replay(*max),
            Op::CompleteReplayLoad { ok } => {
                self.complete_load(*ok);
            }
            Op::CompleteTruncate { durable } => self.complete_truncation(*durable),
            Op::Update { tunables } => {
                let settings = tunables.settings(self.strategy());
                self.definition.settings = settings.clone();
                self.machine.update(settings, now);
            }
            Op::Restart {
                parks_landed,
                checkpoint_landed,
                truncation_landed,
            } => self.restart(*parks_landed, *checkpoint_landed, *truncation_landed),
        }
        self.drain();
    }

    fn join(&mut self, max_in_flight: u32) {
        let now = self.now;
        let joined = self
            .machine
            .join("c".into(), max_in_flight, MAX_CONSUMERS, now);
        let Ok(joined) = joined else {
            assert_eq!(
                self.consumers.len(),
                MAX_CONSUMERS,
                "refused below the limit"
            );
            return;
        };
        assert!(
            self.consumers.len() < MAX_CONSUMERS,
            "admitted over the limit"
        );
        let limit = self.definition.settings.max_in_flight_per_consumer;
        let expected = if max_in_flight == 0 {
            limit
        } else {
            max_in_flight.min(limit)
        };
        assert_eq!(joined.max_in_flight, expected);
        self.consumers
            .push(ModelConsumer::new(joined.consumer, false));
        self.drain();
    }

    /// Feeds the next source item if the machine wants one; false if not.
    fn feed_one(&mut self) -> bool {
        if self.feed_at >= self.source.len() || !self.machine.wants_source() {
            return false;
        }
        let item = self.source[self.feed_at].clone();
        self.feed_at += 1;
        match item {
            Item::Event(event) => {
                if self.is_stream || !event.stream.starts_with('$') {
                    self.fed_here.push(event.clone());
                }
                self.machine.source_event(event, self.now);
            }
            Item::Filtered { position, reported } => {
                if reported {
                    self.machine.source_checkpoint(position, self.now);
                }
            }
        }
        self.drain();
        true
    }

    fn cursor_of(&self, item: &Item) -> u64 {
        match item {
            Item::Event(event) if self.is_stream => event.revision,
            Item::Event(event) => event.position,
            Item::Filtered { position, .. } => *position,
        }
    }

    /// Where a feed opened at the machine's cursor starts.
    fn reopen(&mut self) {
        let cursor = self.machine.source_cursor();
        self.feed_at = self
            .source
            .iter()
            .position(|item| self.cursor_of(item) >= cursor)
            .unwrap_or(self.source.len());
    }

    /// Time passes and the actor ticks: timeouts, then closed consumers leave.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for consumer in &mut self.consumers {
            consumer.holding.retain(|held| held.deadline > now);
        }
        self.machine.tick(now);
        self.drain();
        self.leave_closed();
    }

    /// The actor makes every consumer whose channel is closed leave.
    fn leave_closed(&mut self) {
        let closed: Vec<u64> = self
            .consumers
            .iter()
            .filter(|consumer| consumer.closed)
            .map(|consumer| consumer.id)
            .collect();
        for id in closed {
            self.machine.leave(id, true, self.now);
            self.drain();
        }
    }

    fn complete_park(&mut self, at: usize, durable: bool) {
        let (key, record) = self.parks.remove(at);
        let outcome = if durable {
            self.finished(record.event_id);
            self.parked.push(record);
            WriteOutcome::Durable
        } else {
            WriteOutcome::Failed
        };
        self.machine.parked(key, outcome, self.now);
        self.drain();
    }

    fn complete_checkpoint(&mut self, durable: bool) {
        let Some(checkpoint) = self.checkpoint_write.take() else {
            return;
        };
        let outcome = if durable {
            if let Some(before) = self.durable_checkpoint {
                assert!(
                    checkpoint.position >= before.position,
                    "checkpoint moved back"
                );
            }
            self.durable_checkpoint = Some(checkpoint);
            WriteOutcome::Durable
        } else {
            WriteOutcome::Failed
        };
        self.machine
            .checkpoint_written(checkpoint, outcome, self.now);
        self.drain();
    }

    fn replay(&mut self, max: u64) {
        match self.machine.replay_requested(max, self.now) {
            Ok(()) => {
                assert!(!self.replay_running, "two replays at once");
                self.replay_running = true;
            }
            Err(Error::ReplayInProgress { .. }) => assert!(self.replay_running),
            Err(other) => panic!("replay refused: {other}"),
        }
        self.drain();
    }

    /// Answers a pending replay load; returns the replayed ids (if it was ok).
    fn complete_load(&mut self, ok: bool) -> Option<Vec<Uuid>> {
        let limit = self.load.take()?;
        let loaded = if ok {
            let events = self.parked[self.truncate_before..]
                .iter()
                .zip(self.truncate_before..)
                .take(limit as usize)
                .map(|(record, revision)| ParkedEvent {
                    revision: revision as u64,
                    event: self.source.iter().find_map(|item| match item {
                        Item::Event(event) if event.id == record.event_id => Some(event.clone()),
                        _ => None,
                    }),
                })
                .collect();
            Ok(ReplayBatch { events })
        } else {
            Err(Error::Internal("load failed".into()))
        };
        let ids: Vec<Uuid> = match &loaded {
            Ok(batch) => batch
                .events
                .iter()
                .filter_map(|parked| parked.event.as_ref().map(|event| event.id))
                .collect(),
            Err(_) => Vec::new(),
        };
        if self.check_replays {
            self.awaiting_replay.extend(ids.iter().copied());
        }
        let expected = loaded.as_ref().ok().map(|batch| batch.events.len() as u64);
        let answer = self.machine.replay_loaded(loaded, self.now);
        assert_eq!(answer.as_ref().ok().copied(), expected);
        if answer != Ok(0) && answer.is_ok() {
            self.replayed_here.extend(ids.iter().copied());
        } else {
            self.replay_running = false;
        }
        self.drain();
        answer.is_ok().then_some(ids)
    }

    fn complete_truncation(&mut self, durable: bool) {
        let Some(truncate_before) = self.truncation.take() else {
            return;
        };
        if durable {
            self.truncate_before = truncate_before as usize;
        }
        self.replay_running = false;
        self.machine.replay_truncated(self.now);
        self.drain();
    }

    fn restart(&mut self, parks_landed: u64, checkpoint_landed: bool, truncation_landed: bool) {
        for (index, (_, record)) in std::mem::take(&mut self.parks).into_iter().enumerate() {
            if parks_landed >> (index % 64) & 1 == 1 {
                self.done.insert(record.event_id);
                self.parked.push(record);
            }
        }
        if let Some(checkpoint) = self.checkpoint_write.take()
            && checkpoint_landed
        {
            self.durable_checkpoint = Some(checkpoint);
        }
        if let Some(truncate_before) = self.truncation.take()
            && truncation_landed
        {
            self.truncate_before = truncate_before as usize;
        }
        self.load = None;
        self.replay_running = false;
        self.consumers.clear();
        self.done_here.clear();
        self.replayed_here.clear();
        self.fed_here.clear();
        self.awaiting_replay.clear();
        self.seen_checkpoint = self.durable_checkpoint;
        self.machine =
            GroupMachine::new(&self.definition, self.durable_checkpoint, self.now).unwrap();
        self.reopen();
    }

    /// Carries out the machine's effects as the actor does, checking each.
    fn drain(&mut self) {
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Deliver {
                    consumer, event, ..
                } => self.deliver(consumer, event),
                Effect::Park { key, record } => {
                    assert!(
                        !self
                            .parks
                            .iter()
                            .any(|(_, parking)| parking.event_id == record.event_id),
                        "parked twice at once"
                    );
                    self.parks.push((key, record));
                }
                Effect::WriteCheckpoint(checkpoint) => {
                    assert!(
                        self.checkpoint_write.is_none(),
                        "two checkpoint writes at once"
                    );
                    self.check_checkpoint(checkpoint);
                    self.checkpoint_write = Some(checkpoint);
                }
                Effect::LoadReplay { limit } => {
                    assert!(self.load.is_none(), "two replay loads at once");
                    self.load = Some(limit);
                }
                Effect::TruncateParked { truncate_before } => {
                    assert!(self.truncation.is_none(), "two truncations at once");
                    self.truncation = Some(truncate_before);
                }
                Effect::Release { consumer } => {
                    let at = self
                        .consumers
                        .iter()
                        .position(|known| known.id == consumer)
                        .expect("released consumers joined");
                    self.consumers.remove(at);
                }
            }
        }
        self.check();
    }

    fn deliver(&mut self, consumer: u64, event: RecordedEvent) {
        let now = self.now;
        let at = self
            .consumers
            .iter()
            .position(|known| known.id == consumer)
            .expect("deliveries go to joined consumers");
        let target = &mut self.consumers[at];
        assert!(
            !target.abandoned,
            "delivery to a consumer never told it joined"
        );
        if target.closed {
            self.machine
                .deliver_failed(consumer, event.id, SendFailure::Closed, now);
            return;
        }
        if target.stall_next {
            target.stall_next = false;
            self.machine
                .deliver_failed(consumer, event.id, SendFailure::Full, now);
            return;
        }
        for other in &self.consumers {
            for held in &other.holding {
                assert_ne!(held.id, event.id, "delivered while held by {}", other.id);
                if self.strategy() == Routing::PinnedByStream {
                    assert_ne!(
                        held.stream, event.stream,
                        "two events of a pinned stream out at once"
                    );
                }
            }
        }
        let status = self.machine.status();
        let figures = status
            .consumers
            .iter()
            .find(|known| known.id == consumer)
            .expect("the machine knows its consumer");
        assert!(
            figures.in_flight <= u64::from(figures.max_in_flight),
            "consumer {consumer} holds {} of {}",
            figures.in_flight,
            figures.max_in_flight
        );
        if self.strategy() == Routing::PinnedByStream && !self.replayed_here.contains(&event.id) {
            for earlier in &self.fed_here {
                if earlier.stream == event.stream
                    && earlier.position < event.position
                    && !self.replayed_here.contains(&earlier.id)
                {
                    assert!(
                        self.done_here.contains(&earlier.id),
                        "{} at {} delivered before {} finished",
                        event.stream,
                        event.position,
                        earlier.position
                    );
                }
            }
        }
        let timeout = Duration::from_millis(u64::from(self.definition.settings.message_timeout_ms));
        self.awaiting_replay.remove(&event.id);
        self.consumers[at].holding.push(Held {
            id: event.id,
            stream: event.stream,
            deadline: now + timeout,
        });
    }

    fn passed(&self, checkpoint: Checkpoint, event: &RecordedEvent) -> bool {
        if self.is_stream {
            Some(event.revision) <= checkpoint.revision
        } else {
            event.position <= checkpoint.position
        }
    }

    /// The checkpoint never passes an unfinished event.
    fn check_checkpoint(&self, checkpoint: Checkpoint) {
        for event in &self.fed_here {
            if self.passed(checkpoint, event) {
                assert!(
                    self.done_here.contains(&event.id) || self.replayed_here.contains(&event.id),
                    "checkpoint {checkpoint:?} passed the unfinished event at {}",
                    event.position
                );
            }
        }
    }

    /// After every step: the machine agrees with what consumers hold, and its
    /// checkpoint is sound and never moves back.
    fn check(&mut self) {
        let status = self.machine.status();
        let ids: Vec<u64> = status.consumers.iter().map(|known| known.id).collect();
        let model: Vec<u64> = self.consumers.iter().map(|known| known.id).collect();
        assert_eq!(ids, model, "consumers");
        for (figures, consumer) in status.consumers.iter().zip(&self.consumers) {
            assert_eq!(
                figures.in_flight,
                consumer.holding.len() as u64,
                "in flight with consumer {}",
                consumer.id
            );
        }
        if let Some(checkpoint) = status.checkpoint {
            self.check_checkpoint(checkpoint);
            if let Some(seen) = self.seen_checkpoint {
                assert!(
                    checkpoint.position >= seen.position,
                    "checkpoint moved back"
                );
            }
            self.seen_checkpoint = Some(checkpoint);
        }
    }

    fn complete_all_writes(&mut self) {
        loop {
            if !self.parks.is_empty() {
                self.complete_park(0, true);
            } else if self.checkpoint_write.is_some() {
                self.complete_checkpoint(true);
            } else if self.load.is_some() {
                self.complete_load(true);
            } else if self.truncation.is_some() {
                self.complete_truncation(true);
            } else {
                return;
            }
        }
    }

    /// Acks whatever consumers hold until they hold nothing.
    fn ack_everything(&mut self) {
        loop {
            let ids: Vec<Uuid> = self
                .consumers
                .iter_mut()
                .flat_map(|consumer| consumer.holding.drain(..))
                .map(|held| held.id)
                .collect();
            if ids.is_empty() {
                return;
            }
            for id in &ids {
                self.finished(*id);
            }
            self.machine.ack(&ids, self.now);
            self.drain();
        }
    }

    /// Nothing left to do: everything fed and finished, every write done.
    fn quiet(&self) -> bool {
        let status = self.machine.status();
        self.feed_at >= self.source.len()
            && status.waiting == 0
            && status.in_flight == 0
            && self.parks.is_empty()
            && self.checkpoint_write.is_none()
            && self.load.is_none()
            && self.truncation.is_none()
            && self.machine.unwritten_checkpoint().is_none()
    }

    /// A healthy consumer acks everything, writes land and time passes, until
    /// the group has nothing left to do.
    fn settle(&mut self) {
        self.leave_closed();
        for consumer in &mut self.consumers {
            consumer.stall_next = false;
        }
        if self.consumers.is_empty() {
            self.join(0);
        }
        let pause = Duration::from_millis(u64::from(
            self.definition.settings.message_timeout_ms
                + self.definition.settings.checkpoint_after_ms,
        ));
        for _ in 0..1_000 {
            self.complete_all_writes();
            while self.feed_one() {}
            self.ack_everything();
            self.complete_all_writes();
            self.ack_everything();
            if self.quiet() {
                return;
            }
            self.advance(pause);
        }
        panic!("the group never settled: {:?}", self.machine.status());
    }

    /// The promises at the end of a run.
    fn check_the_end(&mut self) {
        self.settle();
        // At-least-once, across restarts.
        for item in &self.source {
            if let Item::Event(event) = item
                && (self.is_stream || !event.stream.starts_with('$'))
            {
                assert!(
                    self.done.contains(&event.id),
                    "the event at {} was never acked, skipped or parked",
                    event.position
                );
            }
        }
        // The checkpoint reached the last position the group saw, durably.
        let last = self.source.iter().rev().find_map(|item| match item {
            Item::Event(event) => Some(Checkpoint {
                position: event.position,
                revision: self.is_stream.then_some(event.revision),
            }),
            Item::Filtered {
                position,
                reported: true,
            } => Some(Checkpoint {
                position: *position,
                revision: None,
            }),
            Item::Filtered { .. } => None,
        });
        if last.is_some() {
            assert_eq!(self.machine.status().checkpoint, last);
            assert_eq!(self.durable_checkpoint, last);
        }
        // Parked events are replayable: a replay delivers each of them again.
        self.check_replays = true;
        for _ in 0..3 {
            self.replay(0);
            let Some(ids) = self.complete_load(true) else {
                panic!("the replay load failed");
            };
            if ids.is_empty() {
                assert_eq!(
                    self.truncate_before,
                    self.parked.len(),
                    "parked events left"
                );
                return;
            }
            self.settle();
            assert!(
                self.awaiting_replay.is_empty(),
                "replayed events never delivered: {:?}",
                self.awaiting_replay
            );
        }
        panic!("replays did not empty the parked stream");
    }
}

fn run(case: &Case) {
    let mut world = World::new(case);
    world.drain();
    for op in &case.ops {
        world.apply(op);
    }
    world.check_the_end();
}

/// 256 cases (a second or two), or `PROPTEST_CASES` for a longer hunt.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// At-least-once across restarts, a sound checkpoint, in-flight limits,
    /// no double delivery, replayable parked events, for every strategy.
    #[test]
    fn groups_keep_their_promises(case in case(any_routing())) {
        run(&case);
    }

    /// The same with pinning, whose per-stream order is checked at every delivery.
    #[test]
    fn pinned_groups_keep_stream_order(case in case(Just(Routing::PinnedByStream))) {
        run(&case);
    }
}
