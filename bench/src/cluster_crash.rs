//! `cairn-bench cluster-crash`: does a three-node cluster keep every
//! acknowledged append when its leader is killed (issue 17,
//! `server/CLUSTER.md`)?
//!
//! Three `cairn` processes on loopback (`--durability sync`, each its own data
//! directory, the same `--cluster-peers`), `--runs` rounds. Each round
//! `--clients` clients append single events and small batches to their own
//! streams with exact expected revisions, as [`crate::crash`] does, following
//! the leader: a refusal naming the leader (`NotLeader`) sends the append
//! there, any other unknown outcome (the leader died under the call, a node is
//! down) to the next node; every retry is the *exact* append (same event ids,
//! same expected revision), so a retry of an append that was committed answers
//! the original result (`idempotent_replay`). Every acknowledged event is kept
//! (in memory, as [`Ack`]s). After a random delay the current leader, found by
//! a probe append, gets SIGKILL; the failover time is from the kill to the
//! first append acknowledged by another node. The clients go on on the new
//! leader for `--after-failover-ms`, the killed node is restarted on its data
//! directory (the clients still appending), then the clients stop, and once
//! every node's `$all` ends at the same position every node is checked:
//! [`verify`] against every acknowledgement so far (at its acknowledged
//! stream, revision and position), and the three `$all`s must be identical
//! event for event, every field. The next round continues each stream at the
//! revision the cluster reports.
//!
//! The probe events (stream `cluster-crash-probe`) are benchmark events like
//! the clients' and are acknowledged and checked the same way. Server bugs
//! are reported with the tail of every node's log, never worked around.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_client::{
    AppendResult, Client, Error, EventData, ExpectedRevision, ReadOptions, RecordedEvent,
};
use serde_json::json;

use crate::BoxError;
use crate::crash::{
    ClientPlan, Rng, acknowledgements, batch, next_append, read_all_events, read_streams, stored,
    stream_name,
};
use crate::machine::Machine;
use crate::report::write_server_json;
use crate::server::{self, Durability, ServerProcess, free_port, log_tail};
use crate::stats::Latency;
use crate::target::StoredEvent;
use crate::verify::{Ack, Summary, verify};
use crate::workload::{EVENT_TYPE, event_id, payload};

/// Nodes in the cluster.
pub(crate) const NODES: usize = 3;
/// How long the cluster may take to acknowledge an append after the kill
/// (three to four election timeouts: 2.3-3 s by default) before the round fails.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How long one append may keep being retried across nodes before the round
/// fails: longer than an election, so only a cluster that stays without a
/// leader hits it.
const APPEND_DEADLINE: Duration = Duration::from_secs(60);
/// One attempt's bound. An attempt cut short has an unknown outcome and is
/// retried exactly; it is long, so that a slow but live leader is not sent a
/// retry while the first attempt is still on its way.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed attempt, before the next node is tried.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the nodes may take to end `$all` at the same position once the
/// clients stopped (the restarted node catches up from the raft log).
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);
/// Lines of each node's log shown with a failure.
const LOG_LINES: usize = 40;
/// The event-id "case" of probe events (the clients' is 1000 + round).
const PROBE_CASE: u32 = 999;
/// The stream of the probe events.
const PROBE_STREAM: &str = "cluster-crash-probe";

/// Options of `cairn-bench cluster-crash`.
#[derive(Debug, clap::Args)]
pub(crate) struct ClusterCrashArgs {
    /// Kill-restart-verify rounds on the same cluster.
    #[arg(long, value_name = "R", default_value_t = 20)]
    runs: u32,

    /// Concurrent clients, each with its own connections and streams.
    #[arg(long, value_name = "N", default_value_t = 8)]
    clients: usize,

    /// Streams per client.
    #[arg(long, value_name = "S", default_value_t = 4)]
    streams: usize,

    /// Shortest delay between the start of appending and the kill, ms.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    min_delay_ms: u64,

    /// Longest delay between the start of appending and the kill, ms.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    max_delay_ms: u64,

    /// How long the clients go on on the new leader before the killed node
    /// is restarted, ms.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    after_failover_ms: u64,

    /// Seed of the random delays and batch sizes (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,

    /// A flag for every node's command line (repeatable), such as
    /// `--node-arg=--cluster-election-timeout-ms=300`. A follower starts an
    /// election once it heard nothing from the leader for openraft's leader
    /// lease (twice the election timeout) plus its own timeout (one to two
    /// times it), so failover takes three to four election timeouts.
    #[arg(long = "node-arg", value_name = "FLAG", allow_hyphen_values = true)]
    node_args: Vec<String>,

    /// Directory for the nodes' data directories and logs (not tmpfs).
    /// Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// Keep the data directories and logs afterwards (they are always kept
    /// when a check fails).
    #[arg(long)]
    keep: bool,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The three nodes: addresses fixed for the whole command (a restarted node
/// keeps its own, as every node's `--cluster-peers` names it), data
/// directories, logs and the running processes. Index `i` is node id `i + 1`.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The `cairn` binary.
    binary: PathBuf,
    /// Each node's client listener, `host:port` (as `NotLeader` names it).
    pub(crate) listen: Vec<String>,
    /// Each node's node-to-node listener, `host:port`.
    raft: Vec<String>,
    /// Each node's data directory.
    data: Vec<PathBuf>,
    /// Each node's log (stderr, appended across restarts).
    logs: Vec<PathBuf>,
    /// The processes; `None` while a node is down.
    pub(crate) processes: Vec<Option<ServerProcess>>,
    /// Flags every node gets besides the cluster's own.
    node_args: Vec<String>,
}

impl Cluster {
    /// Picks free loopback ports for every node and lays out `root`.
    pub(crate) fn new(binary: PathBuf, root: &Path) -> Result<Self, BoxError> {
        let mut listen = Vec::with_capacity(NODES);
        let mut raft = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            listen.push(format!("127.0.0.1:{}", free_port()?));
            raft.push(format!("127.0.0.1:{}", free_port()?));
        }
        Ok(Self {
            binary,
            listen,
            raft,
            data: (1..=NODES)
                .map(|id| root.join(format!("node-{id}")))
                .collect(),
            logs: (1..=NODES)
                .map(|id| root.join(format!("node-{id}.log")))
                .collect(),
            processes: (0..NODES).map(|_| None).collect(),
            node_args: Vec::new(),
        })
    }

    /// Gives every node `node_args` besides the cluster's own flags (before
    /// it starts).
    pub(crate) fn with_node_args(mut self, node_args: &[String]) -> Self {
        self.node_args = node_args.to_vec();
        self
    }

    /// `--cluster-peers`, the same for every node.
    fn peers(&self) -> String {
        (0..NODES)
            .map(|node| format!("{}={}/{}", node + 1, self.raft[node], self.listen[node]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster flags of `node`.
    fn flags(&self, node: usize) -> Vec<String> {
        let mut flags = vec![
            "--cluster-node-id".to_owned(),
            (node + 1).to_string(),
            "--cluster-listen".to_owned(),
            self.raft[node].clone(),
            "--cluster-peers".to_owned(),
            self.peers(),
        ];
        flags.extend(self.node_args.iter().cloned());
        flags
    }

    /// Starts every node at once (the smallest id initialises the cluster
    /// once it reaches the others) and waits until each reports SERVING.
    pub(crate) async fn start_all(&mut self) -> Result<(), BoxError> {
        let flags: Vec<Vec<String>> = (0..NODES).map(|node| self.flags(node)).collect();
        let started = futures_util::future::try_join_all((0..NODES).map(|node| {
            ServerProcess::start_listening(
                &self.binary,
                &self.data[node],
                Durability::Sync,
                &self.logs[node],
                &self.listen[node],
                &flags[node],
            )
        }))
        .await?;
        for (slot, process) in self.processes.iter_mut().zip(started) {
            *slot = Some(process);
        }
        Ok(())
    }

    /// Starts `node` again on its data directory and addresses.
    async fn restart(&mut self, node: usize) -> Result<(), BoxError> {
        let process = ServerProcess::start_listening(
            &self.binary,
            &self.data[node],
            Durability::Sync,
            &self.logs[node],
            &self.listen[node],
            &self.flags(node),
        )
        .await?;
        self.processes[node] = Some(process);
        Ok(())
    }

    /// SIGKILL to `node`, waiting until it is gone.
    fn kill(&mut self, node: usize) -> Result<(), BoxError> {
        if let Some(mut process) = self.processes[node].take() {
            process.kill()?;
        }
        Ok(())
    }

    /// SIGTERM to every running node, saying so for each that had to be
    /// killed.
    pub(crate) fn stop_all(&mut self) -> Result<(), BoxError> {
        for (node, slot) in self.processes.iter_mut().enumerate() {
            if let Some(mut process) = slot.take()
                && !process.stop()?
            {
                eprintln!(
                    "warning: node {} did not stop on SIGTERM and was killed",
                    node + 1
                );
            }
        }
        Ok(())
    }

    /// The last lines of every node's log.
    pub(crate) fn log_tails(&self) -> String {
        self.logs
            .iter()
            .enumerate()
            .map(|(node, log)| {
                format!(
                    "--- node {} ({}) ---\n{}",
                    node + 1,
                    log.display(),
                    log_tail(log, LOG_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What every client shares about the cluster: where the nodes listen and
/// which one acknowledged last (the first node an append is sent to).
#[derive(Debug)]
pub(crate) struct Route {
    /// `http://host:port` of each node.
    pub(crate) urls: Vec<String>,
    /// `host:port` of each node, as `NotLeader` names the leader.
    listen: Vec<String>,
    /// The node believed to lead: the last one that acknowledged an append.
    leader: AtomicUsize,
}

impl Route {
    pub(crate) fn new(cluster: &Cluster) -> Self {
        Self {
            urls: cluster
                .listen
                .iter()
                .map(|listen| format!("http://{listen}"))
                .collect(),
            listen: cluster.listen.clone(),
            leader: AtomicUsize::new(0),
        }
    }

    /// Where to send an attempt after `failed` answered `error`: the leader it
    /// named, else the next node.
    pub(crate) fn next_node(&self, failed: usize, error: &Error) -> usize {
        if let Error::NotLeader {
            leader: Some(named),
            ..
        } = error
            && let Some(node) = self.listen.iter().position(|listen| listen == named)
            && node != failed
        {
            return node;
        }
        (failed + 1) % self.listen.len()
    }
}

/// One client's connections, one per node, opened on first use (a client
/// connects again by itself on the first call after its node came back).
#[derive(Debug)]
struct Connections {
    /// Index = node; `None` until first used (or while it cannot be reached).
    clients: Vec<Option<Client>>,
}

impl Connections {
    fn new() -> Self {
        Self {
            clients: (0..NODES).map(|_| None).collect(),
        }
    }

    /// The connection to `node`.
    async fn to(&mut self, route: &Route, node: usize) -> Result<Client, Error> {
        if let Some(client) = &self.clients[node] {
            return Ok(client.clone());
        }
        let client = Client::connect(route.urls[node].clone()).await?;
        self.clients[node] = Some(client.clone());
        Ok(client)
    }
}

/// Whether `error` is what a write may meet while leadership moves or a node
/// is down: its outcome is unknown and the exact retry on the leader settles
/// it. `Unknown`, `Cancelled` and `Internal` are how a call ends when the
/// connection under it is reset (the killed leader), as in [`crate::crash`].
/// Anything else (a wrong expected revision, a duplicate id) means the
/// cluster broke a promise.
pub(crate) fn outcome_unknown(error: &Error) -> bool {
    match error {
        Error::NotLeader { .. } | Error::Unavailable(_) | Error::Connect(_) => true,
        Error::Other { code, .. } => matches!(
            code,
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
        ),
        _ => false,
    }
}

/// An acknowledged append.
#[derive(Debug, Clone, Copy)]
struct Answered {
    /// The node that acknowledged it (the leader then).
    node: usize,
    /// Its answer.
    result: AppendResult,
    /// Attempts it took (1: no retry).
    attempts: u32,
}

/// Appends `events` to `stream` with `expected` on whichever node leads,
/// retrying the exact append after every unknown outcome until a node
/// acknowledges it or [`APPEND_DEADLINE`] passes.
async fn append_following_leader(
    route: &Route,
    connections: &mut Connections,
    stream: &str,
    expected: ExpectedRevision,
    events: &[EventData],
) -> Result<Answered, BoxError> {
    let deadline = Instant::now() + APPEND_DEADLINE;
    let mut node = route.leader.load(Ordering::Relaxed);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = match connections.to(route, node).await {
            Ok(client) => tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                client.append(stream, expected, events.to_vec()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "no answer within {ATTEMPT_TIMEOUT:?}"
                )))
            }),
            Err(error) => Err(error),
        };
        let what = || {
            format!(
                "append of {} events to {stream} ({expected:?}), attempt {attempts} on node {}",
                events.len(),
                node + 1
            )
        };
        match outcome {
            Ok(result) => {
                route.leader.store(node, Ordering::Relaxed);
                return Ok(Answered {
                    node,
                    result,
                    attempts,
                });
            }
            Err(error) if !outcome_unknown(&error) => {
                return Err(format!(
                    "{}: {error} (a failover does not explain this answer)",
                    what()
                )
                .into());
            }
            Err(error) if Instant::now() >= deadline => {
                return Err(format!(
                    "{}: {error}; no node acknowledged it within {APPEND_DEADLINE:?}",
                    what()
                )
                .into());
            }
            Err(error) => {
                node = route.next_node(node, &error);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// The failover clock of one round.
#[derive(Debug, Default)]
struct Failover {
    /// The killed node and when SIGKILL was sent.
    killed: Mutex<Option<(usize, Instant)>>,
    /// The node that acknowledged the first append after the kill, and when.
    recovered: Mutex<Option<(usize, Instant)>>,
}

impl Failover {
    /// Marks the kill of `node`, now: called right before SIGKILL.
    fn kill(&self, node: usize) {
        *self.killed.lock().unwrap_or_else(PoisonError::into_inner) = Some((node, Instant::now()));
    }

    /// Called for every acknowledgement, by `node`. Only another node than
    /// the killed one ends the failover: an acknowledgement from the killed
    /// node may still be on its way when the kill is marked.
    fn acknowledged_by(&self, node: usize) {
        let killed = *self.killed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((victim, _)) = killed
            && victim != node
        {
            self.recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert((node, Instant::now()));
        }
    }

    /// The new leader and the time from the kill to its first
    /// acknowledgement, once there was one.
    fn time(&self) -> Option<(usize, Duration)> {
        let killed = *self.killed.lock().unwrap_or_else(PoisonError::into_inner);
        let recovered = *self
            .recovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ((_, at), (node, first)) = killed.zip(recovered)?;
        Some((node, first.duration_since(at)))
    }
}

/// What a client did in a round.
#[derive(Debug, Default, Clone, Copy)]
struct ClientEnd {
    /// Events it saw acknowledged.
    acknowledged: u64,
    /// Appends that took more than one attempt.
    retried: u64,
    /// Appends answered as the replay of an earlier attempt that had been
    /// committed (`idempotent_replay`).
    replays: u64,
}

/// Everything a round's clients share.
#[derive(Debug)]
struct Shared {
    /// Where the nodes are and which one leads.
    route: Arc<Route>,
    /// The round's failover clock.
    failover: Arc<Failover>,
    /// Every acknowledged event of every round.
    acks: Arc<Mutex<Vec<Ack>>>,
    /// Set when the clients are to stop (after their append under way).
    stop: Arc<AtomicBool>,
}

/// Sets a round's `stop` when dropped, so that a round that fails early
/// does not leave its clients appending.
#[derive(Debug)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Appends until `stop` is set, finishing the append under way (so no
/// append is left with an unknown outcome): a random stream of its own, half
/// single events, half batches of 2..=10, each with the exact expected
/// revision, following the leader. Keeps every acknowledged event.
async fn append_until_stopped(
    shared: &Shared,
    plan: ClientPlan,
    mut streams: Vec<(String, Option<u64>)>,
) -> Result<ClientEnd, BoxError> {
    let mut connections = Connections::new();
    let mut rng = Rng::new(plan.seed);
    let mut seq = 0u64;
    let mut end = ClientEnd::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let (k, count) = next_append(&mut rng, streams.len());
        let (stream, last) = &streams[k];
        let events = batch(plan, seq, count, stream);
        seq += count;
        let expected = last.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
        let answered =
            append_following_leader(&shared.route, &mut connections, stream, expected, &events)
                .await?;
        shared.failover.acknowledged_by(answered.node);
        let acks = acknowledgements(stream, *last, &events, &answered.result)?;
        end.acknowledged += count;
        end.retried += u64::from(answered.attempts > 1);
        end.replays += u64::from(answered.result.idempotent_replay);
        streams[k].1 = acks.last().map(|ack| ack.revision);
        shared
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(acks);
    }
    Ok(end)
}

/// The end of `$all` on `client`'s node: the position after its last event.
async fn head(client: &Client) -> Result<u64, BoxError> {
    let mut read = client
        .read_all(ReadOptions::backwards().max_count(1))
        .await?;
    Ok(read
        .next_event()
        .await?
        .map_or(0, |event| event.position + 1))
}

/// The first difference between two nodes' `$all`, naming the position and
/// the field, or `None` when they are identical event for event.
fn first_difference(reference: &[RecordedEvent], other: &[RecordedEvent]) -> Option<String> {
    for (a, b) in reference.iter().zip(other) {
        if a == b {
            continue;
        }
        let fields: [(&str, bool, String, String); 10] = [
            ("id", a.id == b.id, a.id.to_string(), b.id.to_string()),
            (
                "stream",
                a.stream == b.stream,
                a.stream.clone(),
                b.stream.clone(),
            ),
            (
                "revision",
                a.revision == b.revision,
                a.revision.to_string(),
                b.revision.to_string(),
            ),
            (
                "position",
                a.position == b.position,
                a.position.to_string(),
                b.position.to_string(),
            ),
            (
                "type",
                a.event_type == b.event_type,
                a.event_type.clone(),
                b.event_type.clone(),
            ),
            (
                "content type",
                a.content_type == b.content_type,
                a.content_type.clone(),
                b.content_type.clone(),
            ),
            (
                "created",
                a.created == b.created,
                format!("{:?}", a.created),
                format!("{:?}", b.created),
            ),
            (
                "metadata",
                a.metadata == b.metadata,
                format!("{} bytes", a.metadata.len()),
                format!("{} bytes", b.metadata.len()),
            ),
            (
                "data",
                a.data == b.data,
                format!("crc32 {:08x}", crc32fast::hash(&a.data)),
                format!("crc32 {:08x}", crc32fast::hash(&b.data)),
            ),
            (
                "tags",
                a.tags == b.tags,
                format!("{:?}", a.tags),
                format!("{:?}", b.tags),
            ),
        ];
        if let Some((field, _, left, right)) = fields.into_iter().find(|(_, same, ..)| !same) {
            return Some(format!(
                "the event at index {} ({}) differs in its {field}: {left} against {right}",
                a.position, a.id
            ));
        }
    }
    (reference.len() != other.len()).then(|| {
        format!(
            "one holds {} events, the other {}",
            reference.len(),
            other.len()
        )
    })
}

/// What one round found.
#[derive(Debug)]
struct RoundOutcome {
    /// The leader that was killed.
    killed: usize,
    /// When it was killed, from the start of appending.
    killed_after: Duration,
    /// The node that acknowledged first after the kill: the new leader.
    new_leader: usize,
    /// From the kill to that first acknowledgement.
    failover: Duration,
    /// What the clients did.
    clients: ClientEnd,
    /// What the check of node 1 found (the others hold the same).
    summary: Summary,
}

/// One node's store, read back and checked.
#[derive(Debug)]
struct CheckedNode {
    /// Its `$all`, whole.
    all: Vec<RecordedEvent>,
    /// What [`verify`] found.
    summary: Summary,
    /// Every stream in it, read whole.
    streams: HashMap<String, Vec<StoredEvent>>,
}

/// The whole test: the cluster, what every client shares, and every
/// acknowledgement so far.
#[derive(Debug)]
struct Test {
    /// The nodes.
    cluster: Cluster,
    /// Where the nodes are and which one leads, shared with the clients.
    route: Arc<Route>,
    /// Every acknowledged event of every round, probes included.
    acks: Arc<Mutex<Vec<Ack>>>,
    /// The test's own connections (probes, convergence, reads).
    connections: Connections,
    /// Probe events sent so far (the next one's sequence number).
    probes: u64,
    /// Each stream's last revision, as the cluster reports it.
    last: HashMap<String, u64>,
    /// Delays and the clients' seeds (`--seed`).
    rng: Rng,
    /// `--clients`.
    clients: usize,
    /// `--streams`.
    streams: usize,
    /// `--min-delay-ms`, `--max-delay-ms`.
    delay_ms: (u64, u64),
    /// `--after-failover-ms`.
    after_failover: Duration,
}

impl Test {
    /// Appends one probe event on whichever node leads and returns that node
    /// (the leader when it answered). The event is kept as acknowledged.
    async fn probe(&mut self) -> Result<usize, BoxError> {
        let seq = self.probes;
        self.probes += 1;
        let id = event_id(PROBE_CASE, 0, seq);
        let event = EventData::json_text(EVENT_TYPE, payload(&id, PROBE_STREAM, seq)).id(id);
        let answered = append_following_leader(
            &self.route,
            &mut self.connections,
            PROBE_STREAM,
            ExpectedRevision::Any,
            std::slice::from_ref(&event),
        )
        .await?;
        let (Some(revision), Some((position, _))) =
            (answered.result.current_revision, answered.result.positions)
        else {
            return Err(format!(
                "a probe append was acknowledged without a revision or position: {:?}",
                answered.result
            )
            .into());
        };
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Ack {
                stream: PROBE_STREAM.to_owned(),
                revision,
                id,
                position,
                crc: crc32fast::hash(&event.data),
            });
        Ok(answered.node)
    }

    /// One round: load, kill the leader, failover, restart, converge, check.
    async fn round(&mut self, run: u32) -> Result<RoundOutcome, BoxError> {
        let shared = Arc::new(Shared {
            route: Arc::clone(&self.route),
            failover: Arc::new(Failover::default()),
            acks: Arc::clone(&self.acks),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let _stop_clients = StopOnDrop(Arc::clone(&shared.stop));
        let started = Instant::now();
        let mut clients = Vec::with_capacity(self.clients);
        for c in 0..self.clients {
            let streams: Vec<(String, Option<u64>)> = (0..self.streams)
                .map(|k| {
                    let name = stream_name(c, k);
                    let revision = self.last.get(&name).copied();
                    (name, revision)
                })
                .collect();
            let plan = ClientPlan {
                run,
                client: c,
                seed: self.rng.next(),
            };
            let shared = Arc::clone(&shared);
            clients.push(tokio::spawn(async move {
                append_until_stopped(&shared, plan, streams).await
            }));
        }
        let (min, max) = self.delay_ms;
        tokio::time::sleep(Duration::from_millis(self.rng.between(min, max))).await;

        // The probe's answer names the leader of this moment. Should
        // leadership move between it and the kill, the killed node no longer
        // led and this round's failover figure is near zero, not wrong data.
        let leader = self.probe().await?;
        let killed_after = started.elapsed();
        shared.failover.kill(leader);
        self.cluster.kill(leader)?;
        let failover_deadline = Instant::now() + FAILOVER_DEADLINE;
        let recovered = loop {
            if let Some(recovered) = shared.failover.time() {
                break Some(recovered);
            }
            if Instant::now() >= failover_deadline || clients.iter().any(|c| c.is_finished()) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if recovered.is_some() {
            tokio::time::sleep(self.after_failover).await;
            self.cluster.restart(leader).await?;
        }
        shared.stop.store(true, Ordering::SeqCst);
        let mut ends = ClientEnd::default();
        for client in clients {
            let end = client
                .await
                .map_err(|error| format!("client task: {error}"))??;
            ends.acknowledged += end.acknowledged;
            ends.retried += end.retried;
            ends.replays += end.replays;
        }
        let Some((new_leader, failover)) = recovered else {
            return Err(format!(
                "no other node acknowledged an append within {FAILOVER_DEADLINE:?} of the kill \
                 of node {}",
                leader + 1
            )
            .into());
        };

        let heads = self.converge().await?;
        let acks = self
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let reference = self.check_node(0, &acks, heads[0]).await?;
        for (node, &end) in heads.iter().enumerate().skip(1) {
            let checked = self.check_node(node, &acks, end).await?;
            if let Some(difference) = first_difference(&reference.all, &checked.all) {
                return Err(format!(
                    "MISMATCH: node 1 and node {} hold different $all: {difference}",
                    node + 1
                )
                .into());
            }
        }
        self.last = reference
            .streams
            .iter()
            .filter_map(|(name, events)| Some((name.clone(), events.last()?.revision)))
            .collect();
        Ok(RoundOutcome {
            killed: leader,
            killed_after,
            new_leader,
            failover,
            clients: ends,
            summary: reference.summary,
        })
    }

    /// Reads `node`'s `$all` (which ends at `end`) and every stream in it and
    /// checks them against `acks` ([`verify`]).
    async fn check_node(
        &mut self,
        node: usize,
        acks: &[Ack],
        end: u64,
    ) -> Result<CheckedNode, BoxError> {
        let client = self.connections.to(&self.route, node).await?;
        let all = read_all_events(&client).await?;
        let checked: Vec<StoredEvent> = all.iter().cloned().map(stored).collect();
        let streams = read_streams(&client, &checked).await?;
        let summary = verify(acks, &checked, &streams)
            .map_err(|problem| format!("node {} (its $all ends at {end}): {problem}", node + 1))?;
        Ok(CheckedNode {
            all,
            summary,
            streams,
        })
    }

    /// Waits until every node's `$all` ends at the same position (nothing is
    /// appended now) and returns the heads.
    async fn converge(&mut self) -> Result<Vec<u64>, BoxError> {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let mut heads = Vec::with_capacity(NODES);
            let mut problem = None;
            for node in 0..NODES {
                let read = match self.connections.to(&self.route, node).await {
                    Ok(client) => head(&client).await,
                    Err(error) => Err(error.into()),
                };
                match read {
                    Ok(end) => heads.push(end),
                    Err(error) => {
                        problem = Some(format!("node {}: {error}", node + 1));
                        break;
                    }
                }
            }
            if problem.is_none() && heads.iter().all(|end| *end == heads[0]) {
                return Ok(heads);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the nodes did not converge within {CONVERGE_DEADLINE:?}: $all ends at \
                     {heads:?}{}",
                    problem.map_or_else(String::new, |problem| format!(" ({problem})"))
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs `cairn-bench cluster-crash`.
pub(crate) async fn run(args: &ClusterCrashArgs) -> Result<(), BoxError> {
    if args.clients == 0 || args.streams == 0 || args.runs == 0 {
        return Err("--runs, --clients and --streams must be at least 1".into());
    }
    if args.min_delay_ms > args.max_delay_ms {
        return Err("--min-delay-ms must not exceed --max-delay-ms".into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
    });
    let binary = server::server_binary(args.server_bin.as_deref())?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => std::env::temp_dir(),
    };
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-cluster-crash-")
        .tempdir_in(&dir)?;
    let mut cluster = Cluster::new(binary, scratch.path())?.with_node_args(&args.node_args);
    eprintln!(
        "cluster crash test: {NODES} nodes, {} runs, {} clients x {} streams, kill after {}..{} \
         ms, restart {} ms after the failover, node flags [{}], seed {seed}; nodes in {}",
        args.runs,
        args.clients,
        args.streams,
        args.min_delay_ms,
        args.max_delay_ms,
        args.after_failover_ms,
        args.node_args.join(" "),
        scratch.path().display()
    );
    cluster.start_all().await?;
    let route = Arc::new(Route::new(&cluster));
    let mut test = Test {
        cluster,
        route,
        acks: Arc::new(Mutex::new(Vec::new())),
        connections: Connections::new(),
        probes: 0,
        last: HashMap::new(),
        rng: Rng::new(seed),
        clients: args.clients,
        streams: args.streams,
        delay_ms: (args.min_delay_ms, args.max_delay_ms),
        after_failover: Duration::from_millis(args.after_failover_ms),
    };

    let mut failovers = Vec::with_capacity(args.runs as usize);
    let mut totals = ClientEnd::default();
    let mut last_summary = None;
    let outcome: Result<(), BoxError> = async {
        let leader = test.probe().await?;
        eprintln!("node {} leads", leader + 1);
        for run in 0..args.runs {
            let round = test
                .round(run)
                .await
                .map_err(|problem| format!("run {}: {problem}", run + 1))?;
            totals.acknowledged += round.clients.acknowledged;
            totals.retried += round.clients.retried;
            totals.replays += round.clients.replays;
            failovers.push(round.failover);
            eprintln!(
                "run {:2}: killed node {} (leader) after {:4} ms; node {} acknowledged {:4} ms \
                 later; {} acknowledged this run ({} appends retried, {} answered as replays), \
                 {} in all; every node: {} events in {} streams, {} committed without an ack; ok",
                run + 1,
                round.killed + 1,
                round.killed_after.as_millis(),
                round.new_leader + 1,
                round.failover.as_millis(),
                round.clients.acknowledged,
                round.clients.retried,
                round.clients.replays,
                totals.acknowledged,
                round.summary.events,
                round.summary.streams,
                round.summary.unacknowledged
            );
            last_summary = Some(round.summary);
        }
        Ok(())
    }
    .await;
    if let Err(problem) = outcome {
        let logs = test.cluster.log_tails();
        let record = scratch.path().join("acks.log");
        let lines: String = test
            .acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Ack::to_line)
            .collect();
        let _ = std::fs::write(&record, lines);
        // Stop the nodes before the directory is left to the caller.
        let _ = test.cluster.stop_all();
        let kept = scratch.keep();
        return Err(format!(
            "{problem}\n(data, node logs and acks.log kept in {})\n{logs}",
            kept.display()
        )
        .into());
    }

    let failover = Latency::from_nanos(
        failovers
            .iter()
            .map(|time| u64::try_from(time.as_nanos()).unwrap_or(u64::MAX))
            .collect(),
    );
    let ms = |us: f64| (us / 1_000.0).round();
    if let Some(path) = &args.json {
        let leader = test.route.leader.load(Ordering::Relaxed);
        let client = test.connections.to(&test.route, leader).await?;
        let info = client.info().await?;
        let machine = Machine::describe(&dir);
        let figures = json!({
            "nodes": NODES,
            "runs": args.runs,
            "clients": args.clients,
            "streams_per_client": args.streams,
            "seed": seed,
            "acknowledged": totals.acknowledged,
            "lost": 0,
            "retried_appends": totals.retried,
            "idempotent_replays": totals.replays,
            "events": last_summary.map(|summary| summary.events),
            "committed_without_ack": last_summary.map(|summary| summary.unacknowledged),
            "failover_ms": {
                "p50": ms(failover.p50_us),
                "max": ms(failover.max_us),
                "each": failovers
                    .iter()
                    .map(|time| (time.as_secs_f64() * 1_000.0).round())
                    .collect::<Vec<_>>(),
            },
        });
        write_server_json(
            path,
            "cairn-bench cluster-crash",
            (&machine, &dir),
            (&info, &test.route.urls[leader]),
            figures,
        )?;
    }
    test.cluster.stop_all()?;
    println!(
        "{} runs, {} acknowledged, 0 lost; failover p50 {} ms, max {} ms",
        args.runs,
        totals.acknowledged,
        ms(failover.p50_us),
        ms(failover.max_us)
    );
    if args.keep {
        let kept = scratch.keep();
        eprintln!("data and node logs kept in {}", kept.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use uuid::Uuid;

    use super::*;

    fn event(position: u64) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::from_u128(u128::from(position) + 1),
            stream: "crash-00-00".to_owned(),
            revision: position,
            position,
            event_type: EVENT_TYPE.to_owned(),
            content_type: "application/json".to_owned(),
            created: UNIX_EPOCH + Duration::from_secs(position),
            metadata: Bytes::new(),
            data: Bytes::from_static(b"{}"),
            tags: Vec::new(),
        }
    }

    fn route() -> Route {
        Route {
            urls: (0..3)
                .map(|n| format!("http://127.0.0.1:{}", 7000 + n))
                .collect(),
            listen: (0..3).map(|n| format!("127.0.0.1:{}", 7000 + n)).collect(),
            leader: AtomicUsize::new(0),
        }
    }

    #[test]
    fn identical_logs_have_no_difference() {
        let log: Vec<RecordedEvent> = (0..4).map(event).collect();
        assert_eq!(first_difference(&log, &log.clone()), None);
    }

    #[test]
    fn a_different_created_time_is_named() {
        let log: Vec<RecordedEvent> = (0..4).map(event).collect();
        let mut other = log.clone();
        other[2].created += Duration::from_millis(1);
        let difference = first_difference(&log, &other).expect("differs");
        assert!(difference.contains("index 2"), "{difference}");
        assert!(difference.contains("created"), "{difference}");
    }

    #[test]
    fn different_data_and_lengths_are_found() {
        let log: Vec<RecordedEvent> = (0..4).map(event).collect();
        let mut other = log.clone();
        other[0].data = Bytes::from_static(b"{ }");
        let difference = first_difference(&log, &other).expect("differs");
        assert!(difference.contains("data"), "{difference}");
        let difference = first_difference(&log, &log[..3]).expect("shorter");
        assert!(difference.contains("4 events, the other 3"), "{difference}");
    }

    #[test]
    fn a_refusal_naming_the_leader_is_followed() {
        let route = route();
        let named = Error::NotLeader {
            leader: Some("127.0.0.1:7002".to_owned()),
            message: "not the leader".to_owned(),
        };
        assert_eq!(route.next_node(0, &named), 2);
        let unnamed = Error::NotLeader {
            leader: None,
            message: "no leader yet".to_owned(),
        };
        assert_eq!(route.next_node(2, &unnamed), 0);
        assert_eq!(route.next_node(1, &Error::Connect("refused".into())), 2);
    }

    #[test]
    fn only_failover_errors_are_retried() {
        assert!(outcome_unknown(&Error::Unavailable("gone".into())));
        assert!(outcome_unknown(&Error::NotLeader {
            leader: None,
            message: String::new()
        }));
        assert!(!outcome_unknown(&Error::WrongExpectedRevision {
            stream: "s".into(),
            expected: "3".into(),
            current: Some(4),
        }));
        assert!(!outcome_unknown(&Error::DuplicateEventId("id".into())));
    }

    #[test]
    fn the_failover_ends_only_with_another_node() {
        let failover = Failover::default();
        failover.acknowledged_by(1);
        assert!(failover.time().is_none(), "no kill yet");
        failover.kill(1);
        failover.acknowledged_by(1);
        assert!(failover.time().is_none(), "the killed node's late answer");
        failover.acknowledged_by(2);
        assert_eq!(failover.time().map(|(node, _)| node), Some(2));
    }
}
