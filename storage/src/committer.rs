//! The committer: two threads that turn the request queue into RocksDB write
//! batches, one group at a time, with one WAL sync per group.
//!
//! - The **preparer** (`Committer::run`, thread `cairn-committer`) takes each
//!   command off the queue and prepares it at once into the *open group*:
//!   checks it against the stream heads, assigns positions, puts its records
//!   into the group's `WriteBatch`.
//! - The **writer** (`Writer::run`, thread `cairn-writer`) waits until the open
//!   group is non-empty and the preparer has added everything queued so far,
//!   and takes it whole (so everything that arrives while a group syncs joins
//!   the next group, and a lone request goes at once), seals it (the counters go into its
//!   batch), writes it, applies it to the catalog, publishes it to the live ring
//!   and answers its requests. While it writes, the taken group is the
//!   *in-flight group* and the preparer fills the next open group.
//!
//! The open group, the views of the in-flight groups and the poison live in
//! one [`Pipeline`] (a mutex and a condvar); the preparer holds its lock while
//! it prepares one command, the writer only to take a group and to retire it.
//!
//! Cluster mode: the writer seals a group and proposes it to the replicator
//! (`replication.rs`), which returns at once, and hands it to a third thread,
//! the **completer** (`Completer::run`, thread `cairn-replicated`), which
//! waits for each group's quorum in proposal order and answers it. Up to
//! `StoreOptions::replicated_groups_in_flight` groups are in flight
//! ([`DEFAULT_REPLICATED_GROUPS_IN_FLIGHT`]), each numbered after
//! the one before (the preparer's lookups see every in-flight view), so a
//! request arriving meanwhile waits for its own raft round trip only.
//! When one fails (`NotLeader`: leadership lost, outcome unknown), every
//! group in flight behind it is answered with the same error, since its
//! checks were computed against it, and the node takes no request until it
//! leads again ([`Command::lead`], which waits until nothing is in flight).
//!
//! Invariants this module keeps:
//! - Only these threads write `log`, `stream_index`, `streams`, the name
//!   indexes, `event_ids`, the `head`/`next_stream_id` meta keys and the
//!   `Written` segment counters, and only the writer calls `DB::write`. (The
//!   scavenger deletes hidden records and writes its own counters; the keys
//!   never overlap. In cluster mode its chunks come through here as
//!   `Request::Removals`, so that they are replicated with the groups.)
//! - The preparer's lookups see, in order: the open group, the in-flight group
//!   (its stream records, event ids and events), then the catalog and the
//!   database. The writer retires the in-flight view, under the pipeline's lock,
//!   only after `Catalog::apply` (catalog.rs, invariant 1), so no lookup ever
//!   falls through to a catalog or database that lacks a prepared change.
//! - A request is checked entirely before any of it enters the batch: a failing
//!   part leaves no trace (atomic multi-stream appends).
//! - Nobody is answered before the write of their group returned, and groups are
//!   written and answered in order (by the one writer, or in cluster mode by
//!   the one completer): a check result computed against an in-flight group
//!   (such as a wrong expected revision) goes out only after that group is
//!   durable.
//! - Cluster mode: groups are proposed in position order, and once one is not
//!   proposed (refused before the replicator: the write fault, a panic) the
//!   writer changes the pipeline's state before it takes another group, so a
//!   group numbered after one that is not in the log is never proposed. Each
//!   group carries the term of the leadership it was numbered in
//!   (`SealedGroup::leader_term`); the state machine skips one the log holds
//!   at another term.
//! - Fail-stop: when a write fails, or the writer panics, the store is poisoned:
//!   the in-flight group, the open group, every request still queued and every
//!   later one get `Error::Poisoned`. When the preparer panics while preparing a
//!   command, the open group's batch may hold half of it, so that command and
//!   the open group are poisoned (the in-flight group is written as prepared).
//!   None is told its write happened, and none gets a check result computed
//!   against requests that were not written. Both threads keep running so that
//!   nothing queued is answered `ShuttingDown`, and a restart recovers from
//!   what RocksDB holds.
//! - Positions are assigned in queue order with no gap; the head meta key is
//!   written in the same batch, so a restart never reuses a position.
//! - Group limits (requests and bytes) bound the open group: when it is full
//!   the preparer waits until the writer takes it. Requests count against the
//!   queue's bound (`Shared::queued`) until the writer takes their group.
//! - Shutdown: when the queue closes the preparer drains it, hands over the
//!   last open group and joins the writer, which writes that group and exits.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use rocksdb::{WriteBatch, WriteOptions};
use uuid::Uuid;

use crate::codec::{self, AppendStamp, EventIdEntry, SegmentCounter, StreamRecord, cf, meta_key};
use crate::error::{Error, Result};
use crate::live::CommitNotice;
use crate::model::{
    AppendResult, CurrentRevision, Direction, EventData, ExpectedRevision, RecordedEvent,
    StreamAppend, StreamMetadata, category_of,
};
use crate::observe::CommittedGroup;
use crate::query::{AppendCondition, Cursor, View};
use crate::replication::{GroupEffect, Proposed, SealedGroup};
use crate::scavenge::Removals;
use crate::store::{Durability, Shared, WriteFault, WriteFaultContext};
use crate::ticket::Responder;

/// A request for the committer: what to do, and where its answer goes.
///
/// The two halves are apart so that the committer can hold every reply of a
/// group outside the code that may panic, and answer each one even then. Build
/// commands with the constructors, which pair each request with its kind of reply.
pub(crate) struct Command {
    request: Request,
    /// Public to the store so that it can answer a request the queue refused.
    pub(crate) reply: Reply,
}

impl Command {
    pub(crate) fn append(
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
        reply: AppendReply,
    ) -> Self {
        Self {
            request: Request::Append { parts, condition },
            reply: Reply::Append(reply),
        }
    }

    /// A soft delete, or a tombstone (hard delete) when `tombstone` is set.
    pub(crate) fn delete(
        stream: String,
        expected: ExpectedRevision,
        tombstone: bool,
        reply: Responder<CurrentRevision>,
    ) -> Self {
        Self {
            request: Request::Delete {
                stream,
                expected,
                tombstone,
            },
            reply: Reply::Revision(reply),
        }
    }

    pub(crate) fn set_metadata(
        stream: String,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
        reply: Responder<u64>,
    ) -> Self {
        Self {
            request: Request::SetMetadata {
                stream,
                expected,
                metadata,
            },
            reply: Reply::MetadataRevision(reply),
        }
    }

    /// Cluster mode: this node became the raft leader and has applied every
    /// entry of earlier terms. The preparer reloads its counters from the
    /// database (the applied state) and accepts writes again
    /// (`replication.rs`, "Roles").
    pub(crate) fn lead(term: u64, reply: Responder<()>) -> Self {
        Self {
            request: Request::Lead { term },
            reply: Reply::Unit(reply),
        }
    }

    /// Cluster mode: one chunk of a scavenge's deletions and counters, to be
    /// written (replicated) with the open group (`scavenge.rs`).
    pub(crate) fn removals(removals: Removals, reply: Responder<()>) -> Self {
        Self {
            request: Request::Removals(removals),
            reply: Reply::Unit(reply),
        }
    }

    fn size_hint(&self) -> usize {
        match &self.request {
            Request::Append { parts, .. } => parts
                .iter()
                .flat_map(|part| &part.events)
                .map(|event| event.size() + 64)
                .sum(),
            Request::Removals(removals) => removals.size(),
            _ => 64,
        }
    }
}

/// What a command asks for.
enum Request {
    Append {
        parts: Vec<StreamAppend>,
        /// A DCB condition checked with the parts' expectations.
        condition: Option<AppendCondition>,
    },
    Delete {
        stream: String,
        expected: ExpectedRevision,
        tombstone: bool,
    },
    SetMetadata {
        stream: String,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    },
    /// See [`Command::lead`]: the raft term this node leads in.
    Lead { term: u64 },
    /// See [`Command::removals`].
    Removals(Removals),
}

/// Where a command's answer goes; the variant matches the command's request.
pub(crate) enum Reply {
    Append(AppendReply),
    Revision(Responder<CurrentRevision>),
    MetadataRevision(Responder<u64>),
    Unit(Responder<()>),
}

impl Reply {
    /// Answers with the outcome of the request this reply belongs to.
    fn send(self, outcome: Outcome) {
        match (self, outcome) {
            (Reply::Append(reply), Outcome::Append(result)) => reply.send(result),
            (Reply::Revision(reply), Outcome::Revision(result)) => reply.send(result),
            (Reply::MetadataRevision(reply), Outcome::MetadataRevision(result)) => {
                reply.send(result);
            }
            (Reply::Unit(reply), Outcome::Unit(result)) => reply.send(result),
            // The constructors of `Command` pair every request with its kind of
            // reply, and `Committer::prepare` answers each request with the
            // outcome of its kind, so this is never reached.
            (reply, _) => reply.fail(&Error::Io(
                "internal error: a request was answered with another kind of result".into(),
            )),
        }
    }

    /// Answers with `error`.
    pub(crate) fn fail(self, error: &Error) {
        match self {
            Reply::Append(reply) => reply.send(Err(error.clone())),
            Reply::Revision(reply) => reply.send(Err(error.clone())),
            Reply::MetadataRevision(reply) => reply.send(Err(error.clone())),
            Reply::Unit(reply) => reply.send(Err(error.clone())),
        }
    }
}

/// Where an append's answer goes: all parts' results, or the only part's.
pub(crate) enum AppendReply {
    Multi(Responder<Vec<AppendResult>>),
    Single(Responder<AppendResult>),
}

impl AppendReply {
    fn send(self, result: Result<Vec<AppendResult>>) {
        match self {
            AppendReply::Multi(reply) => reply.send(result),
            AppendReply::Single(reply) => reply.send(result.and_then(|mut results| {
                results
                    .pop()
                    .ok_or_else(|| Error::Io("an append returned no result".into()))
            })),
        }
    }
}

/// A request's result, held back until the group is durable.
enum Outcome {
    Append(Result<Vec<AppendResult>>),
    Revision(Result<CurrentRevision>),
    MetadataRevision(Result<u64>),
    Unit(Result<()>),
}

/// Bounds of one group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    pub max_commands: usize,
    pub max_bytes: usize,
    /// Groups in flight at once: 1 on a single node, the store's
    /// `replicated_groups_in_flight` in cluster mode.
    pub max_in_flight: usize,
}

/// The preparer's own state. Everything here is private to the preparer
/// thread; what the writer needs travels in the [`Group`].
pub(crate) struct Committer {
    shared: Arc<Shared>,
    /// Next position to assign.
    head: u64,
    next_stream_id: u64,
    /// Counters of the segment holding `head` (events, bytes written).
    segment: (u64, u64, u64),
    group_limits: GroupLimits,
    /// The test seam consulted before each group's write; handed to the writer.
    write_fault: Option<WriteFault>,
    /// The open group and the in-flight view, shared with the writer.
    pipeline: Arc<Pipeline>,
    /// Shared copy of the poison for callers that check before queueing.
    poison_flag: Arc<Mutex<Option<Error>>>,
    /// Cluster mode: the raft term of the current leadership (the last
    /// [`Command::lead`]); every group numbered from then on carries it.
    leader_term: u64,
}

/// Cluster mode: how many proposed groups may wait for their quorum at once,
/// unless `StoreOptions::replicated_groups_in_flight` says otherwise. With
/// more than one the writer proposes the next group while earlier ones
/// replicate, so a request arriving meanwhile waits for one raft round trip,
/// not for the round of the group ahead of it too; but the writer then takes
/// groups as soon as requests arrive, so there are more and smaller raft
/// entries, each costing CPU on every node (its log append, its apply). On
/// three nodes sharing one 2-core host that cost decides: with 8 in flight
/// the leader spent 227-265 instead of 194 µs of CPU per event in W2 and W2 lost
/// 8-22 % (bench/results/2026-12-04-cluster.md), so the default is one, the
/// grouping of before. More pays where each node has its own cores and the
/// round trip, not the CPU, bounds a group (not measured here). A single
/// node keeps one group in flight: its write is its own fsync, which the
/// next group could not share.
pub const DEFAULT_REPLICATED_GROUPS_IN_FLIGHT: usize = 1;

/// The writer's state: everything it needs besides the group it took.
struct Writer {
    shared: Arc<Shared>,
    /// The test seam consulted before each group's write (`StoreOptions::write_fault`).
    write_fault: Option<WriteFault>,
    /// The open group's bounds, the preparer's too.
    limits: GroupLimits,
    pipeline: Arc<Pipeline>,
    poison_flag: Arc<Mutex<Option<Error>>>,
    /// Cluster mode: where proposed groups go to be waited for and answered
    /// (the completer thread), with that thread's handle; `None` on a single
    /// node, whose writer answers each group itself.
    completions: Option<(Sender<Completion>, JoinHandle<()>)>,
}

/// Cluster mode: a proposed group on its way to the completer, which waits
/// for its outcome and answers its requests (groups in proposal order).
struct Completion {
    proposed: Proposed,
    outcomes: Vec<Outcome>,
    replies: Vec<Reply>,
    /// The group's view, retired from the open group's in-flight list once
    /// the outcome is known.
    in_flight: Arc<InFlight>,
    /// For the observer: whether the group wrote anything (else nothing was
    /// proposed), and when the writer took it.
    wrote: bool,
    started: std::time::Instant,
}

/// Cluster mode's completion thread (`cairn-replicated`): waits for each
/// proposed group in order, retires its view, answers its requests.
struct Completer {
    shared: Arc<Shared>,
    pipeline: Arc<Pipeline>,
    poison_flag: Arc<Mutex<Option<Error>>>,
    /// The error of the first group that failed while others were in flight
    /// behind it: their check results were computed against it, so each of
    /// them is answered with it too, whatever its own outcome (an unknown
    /// outcome either way; an exact retry finds what was committed). Cleared
    /// once no group is in flight: nothing taken later was numbered after a
    /// failed group (the writer takes groups again only after
    /// [`Command::lead`], which waits for that).
    failed: Option<Error>,
}

/// What the preparer and the writer share.
struct Pipeline {
    state: Mutex<PipeState>,
    /// Signalled when the open group gains a request, when the writer takes or
    /// retires a group, on poison and on close.
    changed: Condvar,
}

struct PipeState {
    /// The group the preparer fills; it also points at the in-flight group.
    open: Group,
    /// Set after a failed write or a panic; every later request gets it.
    poisoned: Option<Error>,
    /// Cluster mode: set (to [`Error::NotLeader`]) while this node may not
    /// write: from the start, whenever it loses leadership, and after a
    /// replicated write failed for that reason. Unlike `poisoned` it clears:
    /// a [`Command::lead`] lifts it once the preparer reloaded its counters.
    not_leader: Option<Error>,
    /// Set by the preparer once the queue is closed and drained: the writer
    /// writes what is open and exits.
    closed: bool,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, PipeState>) -> MutexGuard<'a, PipeState> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Poisons the store: records `error`, publishes it to callers (before anyone
/// is answered, so that a caller who sees `Poisoned` and retries is refused
/// before queueing) and answers every request of the open group with it.
/// In-flight groups stay in view until whoever answers them retires them.
fn poison(
    state: &mut PipeState,
    error: &Error,
    poison_flag: &Mutex<Option<Error>>,
    shared: &Shared,
) {
    tracing::error!(%error, "the store now refuses writes");
    state.poisoned = Some(error.clone());
    *poison_flag.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.clone());
    fail_open_group(state, error, shared);
}

/// Cluster mode: this node may not write (it lost leadership, or never had
/// it). Answers every request of the open group with `error` and refuses
/// later ones until a [`Command::lead`]. The in-flight groups stay in view
/// (the completer answers them), so the preparer's lookups stay consistent.
fn step_down(state: &mut PipeState, error: &Error, shared: &Shared) {
    if state.not_leader.is_none() {
        tracing::info!("this node does not accept writes: {error}");
    }
    state.not_leader = Some(error.clone());
    fail_open_group(state, error, shared);
}

/// Cluster mode's refusal of writes after `error`: a step-down for
/// `NotLeader` (writes resume after the next [`Command::lead`]), else the
/// poison, once.
fn refuse_writes(
    state: &mut PipeState,
    error: &Error,
    poison_flag: &Mutex<Option<Error>>,
    shared: &Shared,
) {
    match error {
        Error::NotLeader { .. } => step_down(state, error, shared),
        _ if state.poisoned.is_none() => poison(state, error, poison_flag, shared),
        _ => {}
    }
}

/// Answers every request of the open group with `error` and empties it,
/// keeping the in-flight list.
fn fail_open_group(state: &mut PipeState, error: &Error, shared: &Shared) {
    let in_flight = std::mem::take(&mut state.open.in_flight);
    let open = std::mem::take(&mut state.open);
    state.open.in_flight = in_flight;
    shared
        .queued
        .fetch_sub(open.replies.len(), std::sync::atomic::Ordering::Relaxed);
    for reply in open.replies {
        reply.fail(error);
    }
}

/// Takes `in_flight` out of the open group's in-flight list.
fn retire(state: &mut PipeState, in_flight: &Arc<InFlight>) {
    state
        .open
        .in_flight
        .retain(|view| !Arc::ptr_eq(view, in_flight));
}

/// A handle the store keeps on the pipeline, for what happens outside the
/// queue's order (cluster mode's loss of leadership).
pub(crate) struct Control {
    pipeline: Arc<Pipeline>,
    shared: Arc<Shared>,
}

impl Control {
    /// The `NotLeader` this node answers writes with now, if it does not
    /// accept writes (cluster mode); `None` on a leader or a single node.
    pub(crate) fn refusal(&self) -> Option<Error> {
        self.pipeline.lock().not_leader.clone()
    }

    /// Refuses writes from now on with [`Error::NotLeader`] (and answers the
    /// open group with it) until a [`Command::lead`]. `error` is the
    /// `NotLeader` to answer with (naming the leader when known).
    pub(crate) fn follow(&self, error: Error) {
        let mut state = self.pipeline.lock();
        if state.poisoned.is_none() {
            step_down(&mut state, &error, &self.shared);
        }
        drop(state);
        self.pipeline.changed.notify_all();
    }
}

/// The work of one group in progress: the open group while the preparer fills
/// it, then the writer's.
#[derive(Default)]
struct Group {
    batch: WriteBatch,
    /// Stream records changed in this group, not yet in the catalog.
    overlay: HashMap<String, StreamRecord>,
    /// Event ids written in this group.
    new_ids: HashMap<Uuid, EventIdEntry>,
    events: Vec<Arc<RecordedEvent>>,
    changed_streams: Vec<String>,
    /// One per request, in queue order.
    outcomes: Vec<Outcome>,
    /// One per request, in queue order (the same as `outcomes`).
    replies: Vec<Reply>,
    /// The requests' size hints, summed (for `GroupLimits::max_bytes`).
    bytes: usize,
    /// The position of the group's first event (for `WriteFaultContext`).
    first_position: u64,
    /// `head`, `next_stream_id` and the segment counters after the group's last
    /// request: what sealing puts into the batch.
    counters: (u64, u64, (u64, u64, u64)),
    /// Whether a scavenge's removals are in the batch (cluster mode): the
    /// group is written even when it adds no event and changes no record.
    removes: bool,
    /// Cluster mode: the term of the leadership the group is numbered in
    /// (`SealedGroup::leader_term`).
    leader_term: u64,
    /// The groups the writer took and whose outcome is not known yet, oldest
    /// first (at most one on a single node, up to
    /// `GroupLimits::max_in_flight` in cluster mode); the preparer's
    /// lookups see them, newest first, after this group's own changes. Kept
    /// only in the open group: a group the writer takes drops its copy.
    in_flight: Vec<Arc<InFlight>>,
}

/// What the preparer sees of an in-flight group. Shared by `Arc`: the writer
/// (or the completer) keeps it while it writes, the open group points at it.
struct InFlight {
    overlay: HashMap<String, StreamRecord>,
    new_ids: HashMap<Uuid, EventIdEntry>,
    events: Vec<Arc<RecordedEvent>>,
}

impl Group {
    /// The stream's record from this group or an in-flight one (the newest
    /// that changed it), if any changed it.
    fn record(&self, stream: &str) -> Option<&StreamRecord> {
        self.overlay.get(stream).or_else(|| {
            self.in_flight
                .iter()
                .rev()
                .find_map(|in_flight| in_flight.overlay.get(stream))
        })
    }

    fn event_id(&self, id: &Uuid) -> Option<EventIdEntry> {
        self.new_ids.get(id).copied().or_else(|| {
            self.in_flight
                .iter()
                .rev()
                .find_map(|in_flight| in_flight.new_ids.get(id).copied())
        })
    }

    /// Whether the group writes anything once `in_flight` (its own view,
    /// taken by the writer) is sealed: events, stream records or a
    /// scavenge's removals. A group whose requests all failed their checks
    /// writes nothing.
    fn writes_something(&self, in_flight: &InFlight) -> bool {
        !in_flight.overlay.is_empty() || !in_flight.events.is_empty() || self.removes
    }

    /// What the write fault is shown of the group's write.
    fn fault_context(&self, in_flight: &InFlight) -> WriteFaultContext {
        WriteFaultContext {
            requests: self.outcomes.len(),
            events: in_flight.events.len(),
            first_position: self.first_position,
        }
    }

    /// Events not known to be in the database: the in-flight groups', then
    /// this group's, in position order.
    fn unwritten_events(&self) -> impl Iterator<Item = &Arc<RecordedEvent>> {
        self.in_flight
            .iter()
            .flat_map(|in_flight| in_flight.events.iter())
            .chain(self.events.iter())
    }
}

impl Committer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        head: u64,
        next_stream_id: u64,
        segment: (u64, u64, u64),
        group_limits: GroupLimits,
        write_fault: Option<WriteFault>,
        poison_flag: Arc<Mutex<Option<Error>>>,
    ) -> Self {
        // A clustered store starts as a follower: it writes only once the
        // cluster crate tells it it leads (`Store::lead`).
        let not_leader = shared.clustered.then_some(Error::NotLeader {
            leader: None,
            kurrent_leader: None,
        });
        let pipeline = Arc::new(Pipeline {
            state: Mutex::new(PipeState {
                open: Group::default(),
                poisoned: None,
                not_leader,
                closed: false,
            }),
            changed: Condvar::new(),
        });
        Self {
            shared,
            head,
            next_stream_id,
            segment,
            group_limits,
            write_fault,
            pipeline,
            poison_flag,
            leader_term: 0,
        }
    }

    /// The store's handle on the pipeline (taken before `start`).
    pub(crate) fn control(&self) -> Control {
        Control {
            pipeline: Arc::clone(&self.pipeline),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Starts the writer and the preparer. The returned handle is the
    /// preparer's, which joins the writer before it ends: joining it joins both.
    pub(crate) fn start(mut self, queue: Receiver<Command>) -> std::io::Result<JoinHandle<()>> {
        let completions = if self.shared.clustered {
            let (sender, receiver) = std::sync::mpsc::channel();
            let completer = Completer {
                shared: Arc::clone(&self.shared),
                pipeline: Arc::clone(&self.pipeline),
                poison_flag: Arc::clone(&self.poison_flag),
                failed: None,
            };
            let handle = std::thread::Builder::new()
                .name("cairn-replicated".into())
                .spawn(move || completer.run(&receiver))?;
            Some((sender, handle))
        } else {
            None
        };
        let writer = Writer {
            shared: Arc::clone(&self.shared),
            write_fault: self.write_fault.take(),
            limits: self.group_limits,
            pipeline: Arc::clone(&self.pipeline),
            poison_flag: Arc::clone(&self.poison_flag),
            completions,
        };
        let writer = std::thread::Builder::new()
            .name("cairn-writer".into())
            .spawn(move || writer.run())?;
        let pipeline = Arc::clone(&self.pipeline);
        let started = std::thread::Builder::new()
            .name("cairn-committer".into())
            .spawn(move || self.run(queue, writer));
        if started.is_err() {
            // The writer would wait for groups forever: let it go.
            pipeline.lock().closed = true;
            pipeline.changed.notify_all();
        }
        started
    }

    /// Runs until every sender is gone and the queue is drained, then lets the
    /// writer finish the last group and waits for it.
    fn run(mut self, queue: Receiver<Command>, writer: JoinHandle<()>) {
        while let Ok(command) = queue.recv() {
            self.take(command);
        }
        self.pipeline.lock().closed = true;
        self.pipeline.changed.notify_all();
        if writer.join().is_err() {
            tracing::error!("the writer thread panicked outside its guard");
        }
        tracing::debug!(
            head = self.head,
            "committer stopped: queue closed and drained"
        );
    }

    /// Prepares one command into the open group, once the group has room; a
    /// poisoned store answers it at once.
    fn take(&mut self, command: Command) {
        let size = command.size_hint();
        let Command { request, reply } = command;
        if let Request::Lead { term } = request {
            self.lead(term, reply);
            return;
        }
        let pipeline = Arc::clone(&self.pipeline);
        let mut state = pipeline.lock();
        let limits = self.group_limits;
        while state.poisoned.is_none()
            && !state.open.replies.is_empty()
            && (state.open.replies.len() >= limits.max_commands
                || state.open.bytes >= limits.max_bytes)
        {
            state = pipeline.wait(state);
        }
        if let Some(error) = &state.poisoned {
            self.shared
                .queued
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            reply.fail(error);
            return;
        }
        if let Some(error) = &state.not_leader {
            self.shared
                .queued
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            reply.fail(error);
            return;
        }
        if state.open.replies.is_empty() {
            state.open.first_position = self.head;
            state.open.leader_term = self.leader_term;
        }
        // The reply lives outside the unwinding code: after a panic it is still
        // here to be told `Poisoned` (a dropped reply would read as
        // `ShuttingDown`).
        let prepared =
            panic::catch_unwind(AssertUnwindSafe(|| self.prepare(request, &mut state.open)));
        match prepared {
            Ok(outcome) => {
                let open = &mut state.open;
                open.outcomes.push(outcome);
                open.replies.push(reply);
                open.bytes += size;
                open.counters = (self.head, self.next_stream_id, self.segment);
            }
            Err(payload) => {
                let error = Error::Poisoned(format!(
                    "the committer thread panicked: {}",
                    panic_message(payload.as_ref())
                ));
                // The open group's batch may hold part of this command.
                poison(&mut state, &error, &self.poison_flag, &self.shared);
                self.shared
                    .queued
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                reply.fail(&error);
            }
        }
        drop(state);
        pipeline.changed.notify_all();
    }
}

impl Committer {
    /// Handles [`Command::lead`]: waits until no group is open or in flight
    /// (after a step-down all of them end with `NotLeader` or, applied,
    /// succeed), reloads the counters from the database, which holds every
    /// applied entry, and accepts writes numbered in `term`.
    fn lead(&mut self, term: u64, reply: Reply) {
        let pipeline = Arc::clone(&self.pipeline);
        let mut state = pipeline.lock();
        while state.poisoned.is_none()
            && (!state.open.in_flight.is_empty() || !state.open.replies.is_empty())
        {
            state = pipeline.wait(state);
        }
        self.shared
            .queued
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(error) = &state.poisoned {
            reply.fail(error);
            return;
        }
        match crate::store::stored_counters(&self.shared.db) {
            Ok((head, next_stream_id, segment)) => {
                self.head = head;
                self.next_stream_id = next_stream_id;
                self.segment = segment;
                self.leader_term = term;
                state.not_leader = None;
                tracing::info!(head, term, "this node leads: accepting writes");
                reply.send(Outcome::Unit(Ok(())));
            }
            Err(error) => reply.fail(&error),
        }
    }
}

impl Writer {
    /// Takes, writes and answers groups until the preparer closed the pipeline
    /// and nothing is open. In cluster mode each group is proposed and handed
    /// to the completer instead; the writer then lets the completer finish
    /// what is in flight before it returns.
    fn run(mut self) {
        let completions = self.completions.take();
        loop {
            let mut state = self.pipeline.lock();
            while !self.may_take(&state) {
                state = self.pipeline.wait(state);
            }
            if state.open.replies.is_empty() {
                break;
            }
            let mut group = std::mem::take(&mut state.open);
            let in_flight = Arc::new(InFlight {
                overlay: std::mem::take(&mut group.overlay),
                new_ids: std::mem::take(&mut group.new_ids),
                events: std::mem::take(&mut group.events),
            });
            state.open.in_flight = std::mem::take(&mut group.in_flight);
            state.open.in_flight.push(Arc::clone(&in_flight));
            self.shared
                .queued
                .fetch_sub(group.replies.len(), std::sync::atomic::Ordering::Relaxed);
            drop(state);
            self.pipeline.changed.notify_all();
            match &completions {
                None => self.commit_group(group, in_flight),
                Some((sender, _)) => self.propose_group(group, in_flight, sender),
            }
        }
        if let Some((sender, completer)) = completions {
            drop(sender);
            if completer.join().is_err() {
                tracing::error!("the completer thread panicked outside its guard");
            }
        }
    }

    /// Whether to take the open group now: it holds a request, and nothing
    /// more is on its way to it, or it is full, or the queue closed. "On its
    /// way": `Shared::queued` counts every request submitted and not yet taken
    /// by the writer, so a count above the open group's means the preparer
    /// has more queued work to add (and notifies when it added it). This keeps
    /// today's batching: everything queued while a group syncs joins the next
    /// group, and a lone request is taken at once. In cluster mode also only
    /// while fewer than `GroupLimits::max_in_flight` groups are in flight
    /// (a single node has none in flight when it gets here).
    fn may_take(&self, state: &PipeState) -> bool {
        let open = &state.open;
        if open.replies.is_empty() {
            return state.closed;
        }
        if open.in_flight.len() >= self.limits.max_in_flight {
            return false;
        }
        let full =
            open.replies.len() >= self.limits.max_commands || open.bytes >= self.limits.max_bytes;
        full || state.closed
            || self
                .shared
                .queued
                .load(std::sync::atomic::Ordering::Acquire)
                <= open.replies.len()
    }

    /// Writes one group and answers every request in it, also when the write
    /// fails or something panics (then all of them, and the open group, get
    /// `Poisoned`). A single node's path.
    fn commit_group(&self, mut group: Group, in_flight: Arc<InFlight>) {
        let replies = std::mem::take(&mut group.replies);
        // The replies live outside the unwinding code, as in `Committer::take`.
        let handled = panic::catch_unwind(AssertUnwindSafe(|| {
            self.write_group(group, Arc::clone(&in_flight))
        }));
        let error = match handled {
            Ok(Ok(outcomes)) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.send(outcome);
                }
                return;
            }
            Ok(Err(error)) => error,
            Err(payload) => Error::Poisoned(format!(
                "the committer thread panicked: {}",
                panic_message(payload.as_ref())
            )),
        };
        {
            let mut state = self.pipeline.lock();
            // Nothing of this group is in the catalog: nobody may look at it.
            retire(&mut state, &in_flight);
            poison(&mut state, &error, &self.poison_flag, &self.shared);
        }
        self.pipeline.changed.notify_all();
        for reply in replies {
            reply.fail(&error);
        }
    }

    /// Seals and writes the group's batch and publishes it. Returns one outcome
    /// per request, in order, or the poison when the write failed (then nothing
    /// of the group reached the catalog or the live ring).
    fn write_group(&self, mut group: Group, in_flight: Arc<InFlight>) -> Result<Vec<Outcome>> {
        let (head, next_stream_id, _) = group.counters;
        let wrote_something = group.writes_something(&in_flight);
        if wrote_something {
            self.put_counters(&mut group.batch, group.counters);
            let context = group.fault_context(&in_flight);
            let started = std::time::Instant::now();
            let batch = std::mem::take(&mut group.batch);
            self.write(batch, &context)
                .map_err(|message| Error::Poisoned(format!("a RocksDB write failed: {message}")))?;
            if let Some(observer) = self.shared.observer.get() {
                observer.group_committed(&CommittedGroup {
                    requests: group.outcomes.len(),
                    events: in_flight.events.len(),
                    write: started.elapsed(),
                    synced: self.shared.durability == Durability::Sync,
                });
            }
        }
        // Retired, and its records handed to the catalog, in one step under
        // the pipeline lock: the preparer looks records up only under that
        // lock, so it finds each changed record in the in-flight view or in
        // the catalog, never in neither. The writer then holds the view's
        // only reference, so the records move instead of being copied.
        let events = {
            let mut state = self.pipeline.lock();
            retire(&mut state, &in_flight);
            let InFlight {
                overlay, events, ..
            } = Arc::try_unwrap(in_flight).unwrap_or_else(|shared| InFlight {
                overlay: shared.overlay.clone(),
                new_ids: HashMap::new(),
                events: shared.events.clone(),
            });
            if wrote_something {
                self.shared.catalog.apply(overlay, next_stream_id);
            }
            events
        };
        self.pipeline.changed.notify_all();
        if wrote_something {
            let notice = CommitNotice {
                head,
                changed_streams: group.changed_streams,
            };
            self.shared.live.publish(events, &notice);
        }
        Ok(group.outcomes)
    }

    /// Cluster mode: seals the group and proposes it to the replicator
    /// (which returns without waiting for the quorum), then hands it to the
    /// completer. A group refused before it reached the replicator (the
    /// write fault, no replicator, a panic) changes the pipeline's state
    /// here, before the writer takes another group: no later group, numbered
    /// after this one, may be proposed once this one is not.
    fn propose_group(
        &self,
        mut group: Group,
        in_flight: Arc<InFlight>,
        completions: &Sender<Completion>,
    ) {
        let replies = std::mem::take(&mut group.replies);
        let wrote = group.writes_something(&in_flight);
        let started = std::time::Instant::now();
        let proposed = panic::catch_unwind(AssertUnwindSafe(|| {
            if wrote {
                self.propose(&mut group, &in_flight)
            } else {
                Ok(Proposed::done(Ok(())))
            }
        }))
        .unwrap_or_else(|payload| {
            Err(Error::Poisoned(format!(
                "the committer thread panicked: {}",
                panic_message(payload.as_ref())
            )))
        });
        let proposed = proposed.unwrap_or_else(|error| {
            refuse_writes(
                &mut self.pipeline.lock(),
                &error,
                &self.poison_flag,
                &self.shared,
            );
            self.pipeline.changed.notify_all();
            Proposed::done(Err(error))
        });
        let completion = Completion {
            proposed,
            outcomes: group.outcomes,
            replies,
            wrote,
            in_flight,
            started,
        };
        if let Err(std::sync::mpsc::SendError(completion)) = completions.send(completion) {
            // The completer is gone (it panicked outside its guard): nobody
            // will learn this group's outcome.
            let error = Error::Poisoned("the completer thread stopped".into());
            {
                let mut state = self.pipeline.lock();
                retire(&mut state, &completion.in_flight);
                refuse_writes(&mut state, &error, &self.poison_flag, &self.shared);
            }
            self.pipeline.changed.notify_all();
            for reply in completion.replies {
                reply.fail(&error);
            }
        }
    }

    /// Cluster mode's write of a group that writes something: seals it, asks
    /// the write fault, then proposes it. (A group whose requests were all
    /// refused by their checks proposes nothing and is answered in its
    /// turn, after the groups ahead of it.)
    fn propose(&self, group: &mut Group, in_flight: &InFlight) -> Result<Proposed> {
        self.put_counters(&mut group.batch, group.counters);
        if let Some(message) = self.injected_fault(&group.fault_context(in_flight)) {
            return Err(Error::Poisoned(format!(
                "a RocksDB write failed: {message}"
            )));
        }
        let Some(replicator) = self.shared.replicator.get() else {
            return Err(Error::NotLeader {
                leader: None,
                kurrent_leader: None,
            });
        };
        let (_, next_stream_id, _) = group.counters;
        let sealed = SealedGroup {
            batch: std::mem::take(&mut group.batch).data().to_vec(),
            first_position: group.first_position,
            events: in_flight.events.len() as u64,
            next_stream_id,
            records: in_flight.overlay.keys().cloned().collect(),
            changed_streams: std::mem::take(&mut group.changed_streams),
            cf_layout: self.shared.cf_layout,
            leader_term: group.leader_term,
        };
        let effect = GroupEffect {
            overlay: in_flight.overlay.clone(),
            events: in_flight.events.clone(),
        };
        Ok(replicator.propose(sealed, effect))
    }

    /// Writes the group's batch with one WAL sync (per `Durability`). The write
    /// fault, when set, is asked first and may fail the write or panic instead.
    fn write(&self, batch: WriteBatch, context: &WriteFaultContext) -> Result<(), String> {
        if let Some(message) = self.injected_fault(context) {
            return Err(message);
        }
        let mut options = WriteOptions::default();
        options.set_sync(self.shared.durability == Durability::Sync);
        self.shared
            .db
            .write_opt(batch, &options)
            .map_err(rocksdb::Error::into_string)
    }

    /// What the write fault (the test seam), when set, says of the group's
    /// write: `Some(message)` fails it (or the fault panics instead).
    fn injected_fault(&self, context: &WriteFaultContext) -> Option<String> {
        self.write_fault
            .as_ref()
            .and_then(|fault| fault.check(context))
    }

    /// Seals a group: the counters as of its last request go into its batch.
    fn put_counters(&self, batch: &mut WriteBatch, counters: (u64, u64, (u64, u64, u64))) {
        let (head, next_stream_id, (segment, events, bytes)) = counters;
        let meta = self.shared.cf(cf::META);
        batch.put_cf(meta, meta_key::HEAD, head.to_be_bytes());
        batch.put_cf(meta, meta_key::NEXT_STREAM_ID, next_stream_id.to_be_bytes());
        batch.put_cf(
            self.shared.cf(cf::SEGMENTS),
            codec::segment_key(segment, SegmentCounter::Written),
            codec::encode_counts(events, bytes),
        );
    }
}

impl Completer {
    /// Answers proposed groups in order until the writer is gone and every
    /// group it sent is answered.
    fn run(mut self, completions: &Receiver<Completion>) {
        while let Ok(completion) = completions.recv() {
            self.complete(completion);
        }
    }

    /// Waits for one group's outcome, retires its view and answers its
    /// requests. The view goes only once the outcome is known: on success
    /// the state machine applied the group here (catalog and live ring
    /// included) before the outcome resolved, so the preparer finds every
    /// change in a view or in the catalog; on failure the node no longer
    /// takes requests until [`Command::lead`], which reloads from the
    /// database.
    fn complete(&mut self, completion: Completion) {
        let Completion {
            proposed,
            outcomes,
            replies,
            in_flight,
            wrote,
            started,
        } = completion;
        let waited =
            panic::catch_unwind(AssertUnwindSafe(|| proposed.wait())).unwrap_or_else(|payload| {
                Err(Error::Poisoned(format!(
                    "the replicator panicked: {}",
                    panic_message(payload.as_ref())
                )))
            });
        let outcome = match &self.failed {
            Some(error) => Err(error.clone()),
            None => waited,
        };
        {
            let mut state = self.pipeline.lock();
            retire(&mut state, &in_flight);
            if let (Err(error), None) = (&outcome, &self.failed) {
                refuse_writes(&mut state, error, &self.poison_flag, &self.shared);
                self.failed = Some(error.clone());
            }
            if state.open.in_flight.is_empty() {
                self.failed = None;
            }
        }
        self.pipeline.changed.notify_all();
        match outcome {
            Ok(()) => {
                if let Some(observer) = self.shared.observer.get()
                    && wrote
                {
                    observer.group_committed(&CommittedGroup {
                        requests: replies.len(),
                        events: in_flight.events.len(),
                        write: started.elapsed(),
                        synced: true,
                    });
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.send(outcome);
                }
            }
            Err(error) => {
                for reply in replies {
                    reply.fail(&error);
                }
            }
        }
    }
}

impl Committer {
    fn prepare(&mut self, request: Request, group: &mut Group) -> Outcome {
        match request {
            Request::Append { parts, condition } => {
                Outcome::Append(self.prepare_append(parts, condition.as_ref(), group))
            }
            Request::Delete {
                stream,
                expected,
                tombstone,
            } => Outcome::Revision(self.prepare_delete(&stream, expected, tombstone, group)),
            Request::SetMetadata {
                stream,
                expected,
                metadata,
            } => {
                Outcome::MetadataRevision(self.prepare_metadata(&stream, expected, metadata, group))
            }
            // `take` handles it before preparing anything.
            Request::Lead { .. } => Outcome::Unit(Ok(())),
            Request::Removals(removals) => {
                // Deletes of hidden records and the scavenge's own counters:
                // no key the preparer writes (module invariants).
                removals.add_to(&mut group.batch, &self.shared);
                group.removes = true;
                Outcome::Unit(Ok(()))
            }
        }
    }

    /// The stream's record as of this point in the group: the group's own
    /// change, else the in-flight group's, else the catalog's latest
    /// (`catalog.rs`, invariant 1: the database holds every group before the
    /// in-flight one, whose writes returned and which the catalog applied).
    fn record(&self, stream: &str, group: &Group) -> Result<Option<StreamRecord>> {
        if let Some(record) = group.record(stream) {
            return Ok(Some(record.clone()));
        }
        self.shared.catalog.get_latest(&self.shared.db, stream)
    }

    fn new_record(&mut self) -> StreamRecord {
        let id = self.next_stream_id;
        self.next_stream_id += 1;
        StreamRecord {
            id,
            ..StreamRecord::default()
        }
    }

    fn prepare_append(
        &mut self,
        parts: Vec<StreamAppend>,
        condition: Option<&AppendCondition>,
        group: &mut Group,
    ) -> Result<Vec<AppendResult>> {
        // The request's event ids, all parts in order. A request is an
        // idempotent retry as a whole or not at all (FORMAT.md, "Idempotent
        // retries").
        let entries = self.lookup_ids(
            parts
                .iter()
                .flat_map(|part| part.events.iter().map(|event| event.id)),
            group,
        )?;
        let exact_retry = self.is_exact_retry(&parts, &entries, group)?;
        // Pass 1: check every part; nothing is changed yet.
        let mut plans = Vec::with_capacity(parts.len());
        let mut part_entries = entries.as_slice();
        for part in &parts {
            let (entries, rest) = part_entries.split_at(part.events.len());
            part_entries = rest;
            let record = self.record(&part.stream, group)?;
            if record.as_ref().is_some_and(|record| record.tombstoned) {
                return Err(Error::StreamTombstoned {
                    stream: part.stream.clone(),
                });
            }
            let current = record
                .as_ref()
                .map_or(CurrentRevision::NoStream, StreamRecord::current);
            if let Some(replay) = self.find_replay(part, entries, exact_retry, current, group)? {
                plans.push(Err(replay));
                continue;
            }
            if !part.expected.holds_for(current) {
                return Err(Error::WrongExpectedRevision {
                    stream: part.stream.clone(),
                    expected: part.expected,
                    current,
                });
            }
            plans.push(Ok(record));
        }
        // The DCB condition, unless the request is an exact retry (then its own
        // events would be the conflict; the original result comes back).
        if let Some(condition) = condition
            && !exact_retry
            && let Some(position) = self.condition_conflict(condition, group)?
        {
            return Err(Error::AppendConditionFailed { position });
        }
        // Pass 2: apply.
        let created = SystemTime::now();
        let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        let mut index = 0u32;
        let mut results = Vec::with_capacity(parts.len());
        for (part, plan) in parts.into_iter().zip(plans) {
            let record = match plan {
                Err(replayed) => {
                    results.push(replayed);
                    continue;
                }
                Ok(record) => record,
            };
            if part.events.is_empty() {
                let current = record
                    .as_ref()
                    .map_or(CurrentRevision::NoStream, StreamRecord::current);
                results.push(AppendResult {
                    current,
                    positions: None,
                    idempotent_replay: false,
                });
                continue;
            }
            let mut record = match record {
                Some(record) => record,
                None => self.new_record(),
            };
            let first_position = self.head;
            for event in part.events {
                let position = self.head;
                let revision = record.next_revision;
                let encoded =
                    codec::encode_record(position, &part.stream, revision, created, &event);
                self.count_written(position, encoded.len() as u64, &mut group.batch);
                let shared = &self.shared;
                group
                    .batch
                    .put_cf(shared.cf(cf::LOG), codec::log_key(position), &encoded);
                group.batch.put_cf(
                    shared.cf(cf::STREAM_INDEX),
                    codec::stream_index_key(record.id, revision),
                    position.to_be_bytes(),
                );
                if let Some(category) = category_of(&part.stream) {
                    group.batch.put_cf(
                        shared.cf(cf::CATEGORY_INDEX),
                        codec::name_index_key(category, position),
                        [],
                    );
                }
                group.batch.put_cf(
                    shared.cf(cf::TYPE_INDEX),
                    codec::name_index_key(&event.event_type, position),
                    [],
                );
                for tag in &event.tags {
                    group.batch.put_cf(
                        shared.cf(cf::TAG_INDEX),
                        codec::name_index_key(tag, position),
                        [],
                    );
                }
                let entry = EventIdEntry {
                    stream_id: record.id,
                    revision,
                    position,
                    stamp: Some(AppendStamp {
                        index,
                        count,
                        hash: event_hash(&event),
                    }),
                };
                index = index.saturating_add(1);
                group.batch.put_cf(
                    shared.cf(cf::EVENT_IDS),
                    event.id.as_bytes(),
                    entry.encode(),
                );
                group.new_ids.insert(event.id, entry);
                group.events.push(Arc::new(RecordedEvent {
                    position,
                    stream: part.stream.clone(),
                    revision,
                    id: event.id,
                    event_type: event.event_type,
                    content_type: event.content_type,
                    created,
                    // Copied: a caller's `Bytes` may be a slice of a much
                    // larger buffer (a transport's whole decode buffer), which
                    // the live ring would otherwise keep alive per event (a
                    // 1-hour soak held ~6 KiB per 300-byte event this way).
                    // Ring memory must match what `RingLimits::max_bytes` counts.
                    metadata: bytes::Bytes::copy_from_slice(&event.metadata),
                    data: bytes::Bytes::copy_from_slice(&event.data),
                    tags: event.tags,
                }));
                record.next_revision += 1;
                self.head += 1;
            }
            group.batch.put_cf(
                self.shared.cf(cf::STREAMS),
                part.stream.as_bytes(),
                record.encode(&part.stream),
            );
            results.push(AppendResult {
                current: record.current(),
                positions: Some((first_position, self.head - 1)),
                idempotent_replay: false,
            });
            group.overlay.insert(part.stream, record);
        }
        Ok(results)
    }

    /// The first position after the condition's `after` holding an event that
    /// matches its query: among the committed events (the database, which only
    /// the writer writes), then those of the in-flight group and those earlier
    /// in this group. `None`: the condition holds.
    fn condition_conflict(
        &self,
        condition: &AppendCondition,
        group: &Group,
    ) -> Result<Option<u64>> {
        let start = condition.after.map_or(0, |after| after.saturating_add(1));
        // Every position below the in-flight group's first (or this group's,
        // or the head) is in the database.
        let committed_head = group
            .unwritten_events()
            .next()
            .map_or(self.head, |event| event.position);
        if start < committed_head {
            let db = &self.shared.db;
            let view = View::Database(db);
            let mut cursor = Cursor::new(
                db,
                &view,
                &condition.query,
                start,
                committed_head,
                Direction::Forwards,
            )?;
            let log = self.shared.cf(cf::LOG);
            while let Some(position) = cursor.next_position()? {
                // Scavenged since the index entry was read: not an event any more.
                let Some(value) = db.get_pinned_cf(log, codec::log_key(position))? else {
                    continue;
                };
                let header = codec::decode_header(position, &value)?;
                if condition.query.matches_record(&header, &value) {
                    return Ok(Some(position));
                }
            }
        }
        Ok(group
            .unwritten_events()
            .filter(|event| event.position >= start)
            .find(|event| {
                condition
                    .query
                    .matches(&event.event_type, event.tags.iter().map(String::as_str))
            })
            .map(|event| event.position))
    }

    /// Tracks the `Written` counters of the segment being filled; when `position`
    /// opens a new segment, the finished one's counters go into the batch.
    fn count_written(&mut self, position: u64, bytes: u64, batch: &mut WriteBatch) {
        let segment = codec::segment_of(position);
        if segment != self.segment.0 {
            let (finished, events, written) = self.segment;
            batch.put_cf(
                self.shared.cf(cf::SEGMENTS),
                codec::segment_key(finished, SegmentCounter::Written),
                codec::encode_counts(events, written),
            );
            self.segment = (segment, 0, 0);
        }
        self.segment.1 += 1;
        self.segment.2 += bytes;
    }

    /// Whether the request is an exact retry of one earlier append request:
    /// every id was written by it, in the same streams and the same order, with
    /// the same content, and the earlier request had no other events.
    ///
    /// Entries with a stamp (format 2) carry the event's index in its request,
    /// the request's event count and a content hash. Entries without one
    /// (written by format 1) are checked against the stored records: the same
    /// content, and, since format 1 stamped every event of a request with one
    /// `created` time, the same `created` on all of them and another one on the
    /// records just before and after.
    fn is_exact_retry(
        &self,
        parts: &[StreamAppend],
        entries: &[Option<EventIdEntry>],
        group: &Group,
    ) -> Result<bool> {
        let Some(Some(first)) = entries.first().copied() else {
            return Ok(false);
        };
        let count = entries.len();
        let legacy = first.stamp.is_none();
        let mut created = None;
        let mut entries = entries.iter();
        let mut index = 0u64;
        for part in parts {
            if part.events.is_empty() {
                continue;
            }
            let Some(record) = self.record(&part.stream, group)? else {
                return Ok(false);
            };
            let mut part_first_revision = None;
            for (offset, event) in part.events.iter().enumerate() {
                let Some(Some(entry)) = entries.next().copied() else {
                    return Ok(false);
                };
                let base = *part_first_revision.get_or_insert(entry.revision);
                if entry.stream_id != record.id
                    || entry.position != first.position + index
                    || entry.revision != base + offset as u64
                    || entry.stamp.is_none() != legacy
                {
                    return Ok(false);
                }
                let same = match entry.stamp {
                    Some(stamp) => {
                        stamp.index as usize == index as usize
                            && stamp.count as usize == count
                            && stamp.hash == event_hash(event)
                    }
                    None => match self.stored_content(entry.position)? {
                        Some((hash, at)) => {
                            hash == event_hash(event) && *created.get_or_insert(at) == at
                        }
                        None => false,
                    },
                };
                if !same {
                    return Ok(false);
                }
                index += 1;
            }
        }
        if let Some(created) = created {
            // Format 1: the request had no events before or after these.
            let last = first.position + index - 1;
            for neighbour in [first.position.checked_sub(1), last.checked_add(1)]
                .into_iter()
                .flatten()
            {
                if let Some((_, at)) = self.stored_content(neighbour)?
                    && at == created
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The content hash and commit time of the stored record at `position`,
    /// `None` if there is none (never written, or scavenged).
    fn stored_content(&self, position: u64) -> Result<Option<(u32, SystemTime)>> {
        let Some(value) = self
            .shared
            .db
            .get_cf(self.shared.cf(cf::LOG), codec::log_key(position))?
        else {
            return Ok(None);
        };
        let header = codec::decode_header(position, &value)?;
        Ok(Some((header.content_hash(&value), header.created)))
    }

    /// Decides whether `part` is a retry of an append that already happened.
    /// `entries` are the ids' entries of this part, `exact_retry` whether the
    /// whole request is one (`is_exact_retry`).
    /// `Ok(Some(result))`: yes, answer with the original result and write nothing.
    /// `Ok(None)`: none of its ids were written before; append normally.
    /// `Err`: some ids were written, but not by this exact append.
    fn find_replay(
        &self,
        part: &StreamAppend,
        entries: &[Option<EventIdEntry>],
        exact_retry: bool,
        current: CurrentRevision,
        group: &Group,
    ) -> Result<Option<AppendResult>> {
        if part.events.is_empty() {
            return Ok(None);
        }
        if !exact_retry {
            let Some((index, entry)) = entries
                .iter()
                .enumerate()
                .find_map(|(index, entry)| entry.map(|entry| (index, entry)))
            else {
                return Ok(None);
            };
            return Err(Error::DuplicateEventId {
                event_id: part.events[index].id,
                stream: self
                    .stream_name_at(entry.position, group)
                    .unwrap_or_else(|| part.stream.clone()),
                revision: entry.revision,
            });
        }
        let (Some(Some(first)), Some(Some(last))) = (entries.first(), entries.last()) else {
            return Err(Error::Io("event id lookup lost its entry".into()));
        };
        let expectation_matches_original = match part.expected {
            ExpectedRevision::Any => true,
            // The soft-delete point may have moved since the original append
            // (the stream was deleted again), so it cannot be checked; the ids
            // already prove this is the same append.
            ExpectedRevision::NoStream => true,
            ExpectedRevision::StreamExists => first.revision > 0,
            ExpectedRevision::Exact(expected) => expected.checked_add(1) == Some(first.revision),
        };
        if !expectation_matches_original {
            return Err(Error::WrongExpectedRevision {
                stream: part.stream.clone(),
                expected: part.expected,
                current,
            });
        }
        Ok(Some(AppendResult {
            current: CurrentRevision::Revision(last.revision),
            positions: Some((first.position, last.position)),
            idempotent_replay: true,
        }))
    }

    fn lookup_ids(
        &self,
        ids: impl Iterator<Item = Uuid>,
        group: &Group,
    ) -> Result<Vec<Option<EventIdEntry>>> {
        let ids: Vec<Uuid> = ids.collect();
        let event_ids = self.shared.cf(cf::EVENT_IDS);
        let stored = self.shared.db.batched_multi_get_cf(
            event_ids,
            ids.iter().map(|id| id.as_bytes().as_slice()),
            false,
        );
        ids.iter()
            .zip(stored)
            .map(|(id, stored)| {
                if let Some(entry) = group.event_id(id) {
                    return Ok(Some(entry));
                }
                match stored? {
                    Some(value) => EventIdEntry::decode(id, &value).map(Some),
                    None => Ok(None),
                }
            })
            .collect()
    }

    /// The stream name of the event at `position` (for error messages).
    fn stream_name_at(&self, position: u64, group: &Group) -> Option<String> {
        if let Some(event) = group
            .unwritten_events()
            .find(|event| event.position == position)
        {
            return Some(event.stream.clone());
        }
        let value = self
            .shared
            .db
            .get_cf(self.shared.cf(cf::LOG), codec::log_key(position))
            .ok()??;
        codec::decode_header(position, &value)
            .ok()
            .map(|header| header.stream.to_owned())
    }

    fn prepare_delete(
        &mut self,
        stream: &str,
        expected: ExpectedRevision,
        tombstone: bool,
        group: &mut Group,
    ) -> Result<CurrentRevision> {
        let existing = self.record(stream, group)?;
        if existing.as_ref().is_some_and(|record| record.tombstoned) {
            return Err(Error::StreamTombstoned {
                stream: stream.to_owned(),
            });
        }
        let current = existing
            .as_ref()
            .map_or(CurrentRevision::NoStream, StreamRecord::current);
        if !expected.holds_for(current) {
            return Err(Error::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected,
                current,
            });
        }
        if !tombstone && current == CurrentRevision::NoStream {
            return Err(Error::StreamNotFound {
                stream: stream.to_owned(),
            });
        }
        let mut record = match existing {
            Some(record) => record,
            None => self.new_record(),
        };
        if tombstone {
            record.tombstoned = true;
        } else {
            record.deleted_before = record.next_revision;
        }
        self.stage_record(stream, record, group);
        Ok(current)
    }

    fn prepare_metadata(
        &mut self,
        stream: &str,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
        group: &mut Group,
    ) -> Result<u64> {
        if let Some(custom) = &metadata.custom {
            serde_json::from_str::<serde_json::Value>(custom).map_err(|error| {
                Error::InvalidArgument(format!("custom stream metadata is not valid JSON: {error}"))
            })?;
        }
        let existing = self.record(stream, group)?;
        if existing.as_ref().is_some_and(|record| record.tombstoned) {
            return Err(Error::StreamTombstoned {
                stream: stream.to_owned(),
            });
        }
        let current = existing
            .as_ref()
            .and_then(|record| record.metadata_revision)
            .map_or(CurrentRevision::NoStream, CurrentRevision::Revision);
        if !expected.holds_for(current) {
            return Err(Error::WrongExpectedRevision {
                stream: format!("$$metadata of {stream}"),
                expected,
                current,
            });
        }
        let mut record = match existing {
            Some(record) => record,
            None => self.new_record(),
        };
        let revision = record.metadata_revision.map_or(0, |revision| revision + 1);
        record.metadata_revision = Some(revision);
        record.metadata = metadata;
        self.stage_record(stream, record, group);
        Ok(revision)
    }

    fn stage_record(&self, stream: &str, record: StreamRecord, group: &mut Group) {
        group.batch.put_cf(
            self.shared.cf(cf::STREAMS),
            stream.as_bytes(),
            record.encode(stream),
        );
        group.overlay.insert(stream.to_owned(), record);
        group.changed_streams.push(stream.to_owned());
    }
}

/// The content hash an idempotent retry must match (`codec::content_hash`).
fn event_hash(event: &EventData) -> u32 {
    codec::content_hash(
        &event.event_type,
        &event.content_type,
        &event.metadata,
        &event.data,
        event.tags.iter().map(String::as_str),
    )
}

/// The message of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(the panic carried no message)")
}
