//! `cairn-bench dcb`: the dynamic-consistency-boundary workload of issue 18 —
//! conditional appends, deciders racing on shared tags, and tag-query reads —
//! against Cairn and UmaDB (whose native model DCB is) in one run, printed as
//! one table with Cairn ÷ UmaDB ratios.
//!
//! Each store starts empty on a fresh data directory under `--dir` (Cairn by
//! [`ServerProcess`] with `--durability sync`, UmaDB by `bench/peers.sh`),
//! after a fdatasync probe in the same directory, and runs the same phases,
//! written against [`DcbStore`] only:
//!
//! 1. `append-1`, `append-n`: for `--seconds` each, 1 then `--clients`
//!    clients (each its own connection) append single events, each one
//!    decision with a fresh tag `decision:<phase>:<client>:<n>` (a tag per
//!    decision, like UmaDB's own benchmark) plus the shared tag `dcb-bench`,
//!    under the condition "fail if any event carrying that tag exists" (no
//!    position). None should be rejected; rejections are counted. Then the
//!    condition is shown to bite: appending an existing decision tag again
//!    must be rejected, and accepted with `after` = the position a read of
//!    that tag was consistent through.
//! 2. `deciders`: `--clients` clients over [`HOT_TAGS`] tags `hot:<h>`; an
//!    attempt reads the last event carrying its tag (backwards, limit 1) and
//!    the position the read is consistent through, decides the next sequence
//!    number (the last event's `seq` + 1, or 0) and appends the event
//!    carrying it under "no event tagged `hot:<h>` after that position". A
//!    rejected append is a conflict; the client's next attempt is a new
//!    decision (on the next tag). Afterwards every hot tag's events are read
//!    and must be numbered 0, 1, 2, ... exactly, as many as were accepted: a
//!    lost update would repeat a number.
//! 3. A fill of [`FILL_BATCHES`] appends of [`FILL_BATCH`] events in which
//!    event `e` < [`READ_SETS`] of every batch carries `readset:<e>`: each set
//!    has [`FILL_BATCHES`] events spread over the fill's 10,000 (after
//!    everything before). Then `read-1`, `read-n`: for `--seconds` each, 1 and
//!    `--clients` clients read a whole set forwards by its tag (client `c`'s
//!    `n`-th read: set `(c + n) mod 16`) and check it: every event of the set,
//!    positions ascending, each carrying the tag.
//!
//! A client stops starting operations at `--seconds`; a phase's time runs
//! from the common start (a barrier) to the last client's finish. Latency is
//! per operation: an append, a read, or a decider's read plus append.
//!
//! Cairn needs a stream for every append: client `c` writes to `dcb-<c>` with
//! `ExpectedRevision::Any`, so the DCB condition is the only check, as in
//! UmaDB. Positions are each store's own (Cairn's from 0, UmaDB's from 1); a
//! condition only ever carries a position the same store answered.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{
    AppendCondition, Client, Error as ClientError, EventData, ExpectedRevision, Query, QueryItem,
    ReadFrom, ReadOptions,
};
use serde_json::{Value, json};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::BoxError;
use crate::disk::{self, SyncRate};
use crate::machine::Machine;
use crate::peers::{self, Peer};
use crate::report::{markdown_table_with, thousands};
use crate::server::{self, Durability, ServerProcess};
use crate::stats::{Latency, round, round_to};
use crate::workload::{EVENT_TYPE, event_id, payload};
use crate::workloads::nanos_since;

/// Options of `cairn-bench dcb`.
#[derive(Debug, clap::Args)]
pub(crate) struct DcbArgs {
    /// The stores to measure (Cairn always runs first).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "cairn,umadb")]
    stores: Vec<Store>,

    /// Length of each timed phase.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    seconds: f64,

    /// Clients of the concurrent phases (each its own connection).
    #[arg(long, value_name = "N", default_value_t = 16)]
    clients: usize,

    /// Also write every figure to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Directory for the stores' fresh data directories (removed afterwards)
    /// and the fdatasync probes. It must be on the disk to measure, not tmpfs.
    /// Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,

    /// Length of each fdatasync probe.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fsync_seconds: f64,
}

/// A store of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Store {
    /// Cairn, through `cairn-client`.
    Cairn,
    /// UmaDB, through `umadb-client` (build with `--features cairn-bench/umadb`).
    Umadb,
}

impl Store {
    fn title(self) -> &'static str {
        match self {
            Self::Cairn => "Cairn",
            Self::Umadb => "UmaDB",
        }
    }

    fn settings(self) -> &'static str {
        match self {
            Self::Cairn => {
                "--durability sync (acknowledged after fdatasync: durable); appends to dcb-<client> \
                 with ExpectedRevision::Any plus the DCB condition"
            }
            Self::Umadb => Peer::Umadb.settings(),
        }
    }
}

/// The tag every event of the append phases carries.
const SHARED_TAG: &str = "dcb-bench";
/// Tags the deciders race on.
pub(crate) const HOT_TAGS: usize = 4;
/// Tagged sets the read phases read.
pub(crate) const READ_SETS: usize = 16;
/// Appends of the fill (and so events per read set).
pub(crate) const FILL_BATCHES: u64 = 100;
/// Events per fill append.
pub(crate) const FILL_BATCH: u64 = 100;
const _: () = assert!(READ_SETS as u64 <= FILL_BATCH);

/// The deterministic-id cases of this benchmark (see [`event_id`]; the other
/// benchmarks use 1..=31).
mod case {
    pub(super) const APPEND_1: u32 = 40;
    pub(super) const APPEND_N: u32 = 41;
    pub(super) const DECIDE: u32 = 42;
    pub(super) const FILL: u32 = 43;
    pub(super) const CHECK: u32 = 44;
}

/// The tag of decision `n` of `client` in phase `phase`.
fn decision_tag(phase: &str, client: usize, n: u64) -> String {
    format!("decision:{phase}:{client}:{n}")
}

/// Cairn's stream of client `c`'s appends.
fn client_stream(c: usize) -> String {
    format!("dcb-{c}")
}

/// Cairn's stream of the fill.
const FILL_STREAM: &str = "dcb-fill";

fn hot_tag(h: usize) -> String {
    format!("hot:{h}")
}

fn read_set_tag(set: usize) -> String {
    format!("readset:{set}")
}

/// An event to append: type [`EVENT_TYPE`], these tags, no metadata.
#[derive(Debug, Clone)]
pub(crate) struct TaggedEvent {
    /// Deterministic id (unique in the run, so no append is an idempotent
    /// replay of another).
    pub(crate) id: Uuid,
    /// Its tags.
    pub(crate) tags: Vec<String>,
    /// 256-byte JSON (see [`payload`]).
    pub(crate) data: String,
}

impl TaggedEvent {
    fn new(id: Uuid, label: &str, seq: u64, tags: Vec<String>) -> Self {
        Self {
            data: payload(&id, label, seq),
            id,
            tags,
        }
    }
}

/// "Fail if an event carrying `tag` exists after `after`" (`None`: at all),
/// in the store's own positions.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) tag: String,
    pub(crate) after: Option<u64>,
}

/// What a conditional append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written; the store's position of the last event.
    Written(u64),
    /// The condition failed: nothing was written.
    Rejected,
}

/// Which events of a tag query a read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// All of them, forwards from the start.
    All,
    /// The last one (backwards from the end, limit 1).
    Last,
}

/// An event a tag query returned.
#[derive(Debug, Clone)]
pub(crate) struct ReadEvent {
    pub(crate) position: u64,
    pub(crate) tags: Vec<String>,
    pub(crate) data: Bytes,
}

/// The answer of a tag query.
#[derive(Debug, Clone)]
pub(crate) struct TagRead {
    pub(crate) events: Vec<ReadEvent>,
    /// A condition `after` this position covers every matching event the
    /// read did not show (`None`: the read saw no events, so "none at all").
    pub(crate) consistent_through: Option<u64>,
}

/// What the DCB phases need from a store. One value is one connection.
pub(crate) trait DcbStore: Sized + Send + Sync + 'static {
    /// A new connection to the same store.
    fn connect_another(&self) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Appends `events` atomically, if `condition` (when given) holds; a
    /// failed condition is [`Outcome::Rejected`], not an error. `stream` is
    /// the Cairn stream written (UmaDB has none).
    fn append(
        &self,
        stream: &str,
        events: Vec<TaggedEvent>,
        condition: Option<&Condition>,
    ) -> impl Future<Output = Result<Outcome, BoxError>> + Send;

    /// The events carrying `tag`.
    fn read_tagged(
        &self,
        tag: &str,
        which: Which,
    ) -> impl Future<Output = Result<TagRead, BoxError>> + Send;
}

/// Cairn through `cairn-client`.
pub(crate) struct CairnDcb {
    address: String,
    client: Client,
}

impl CairnDcb {
    /// Connects to `http://127.0.0.1:PORT`.
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        Ok(Self {
            address: address.to_owned(),
            client: Client::connect(address.to_owned()).await?,
        })
    }
}

/// Events carrying `tag`, of any type.
fn tag_query(tag: &str) -> Query {
    Query::of([QueryItem::tags([tag])])
}

impl DcbStore for CairnDcb {
    async fn connect_another(&self) -> Result<Self, BoxError> {
        Self::connect(&self.address).await
    }

    async fn append(
        &self,
        stream: &str,
        events: Vec<TaggedEvent>,
        condition: Option<&Condition>,
    ) -> Result<Outcome, BoxError> {
        let events = events
            .into_iter()
            .map(|event| {
                EventData::json_text(EVENT_TYPE, event.data)
                    .id(event.id)
                    .tags(event.tags)
            })
            .collect();
        let result = match condition {
            None => {
                self.client
                    .append(stream, ExpectedRevision::Any, events)
                    .await
            }
            Some(condition) => {
                let condition = AppendCondition::new(tag_query(&condition.tag), condition.after);
                self.client
                    .append_if(stream, ExpectedRevision::Any, events, condition)
                    .await
            }
        };
        match result {
            Ok(result) => {
                let (_, last) = result
                    .positions
                    .ok_or("Cairn answered an append without positions")?;
                Ok(Outcome::Written(last))
            }
            Err(ClientError::AppendConditionFailed { .. }) => Ok(Outcome::Rejected),
            Err(error) => Err(error.into()),
        }
    }

    async fn read_tagged(&self, tag: &str, which: Which) -> Result<TagRead, BoxError> {
        let options = match which {
            Which::All => ReadOptions::forwards(),
            Which::Last => ReadOptions::backwards().from(ReadFrom::End).max_count(1),
        };
        let mut read = self.client.read_query(tag_query(tag), options).await?;
        let mut events = Vec::new();
        while let Some(event) = read.next_event().await? {
            events.push(ReadEvent {
                position: event.position,
                tags: event.tags,
                data: event.data,
            });
        }
        Ok(TagRead {
            events,
            consistent_through: read.consistent_through(),
        })
    }
}

/// UmaDB through `umadb-client`: its append condition and query are the same
/// model, one to one.
#[cfg(feature = "umadb")]
mod uma {
    use futures_util::StreamExt as _;
    use umadb_client::{AsyncUmaDbClient, UmaDbClient};
    use umadb_dcb::{
        DcbAppendCondition, DcbError, DcbEvent, DcbEventStoreAsync as _, DcbQuery, DcbQueryItem,
    };

    use super::{Condition, DcbStore, Outcome, ReadEvent, TagRead, TaggedEvent, Which};
    use crate::BoxError;
    use crate::workload::EVENT_TYPE;

    /// One UmaDB connection.
    pub(crate) struct UmadbDcb {
        address: String,
        client: AsyncUmaDbClient,
    }

    impl UmadbDcb {
        /// Connects to `http://127.0.0.1:PORT`.
        pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
            let client = UmaDbClient::new(address.to_owned()).connect_async().await?;
            Ok(Self {
                address: address.to_owned(),
                client,
            })
        }
    }

    /// Events carrying `tag`, of any type.
    fn query(tag: &str) -> DcbQuery {
        DcbQuery {
            items: vec![DcbQueryItem {
                types: Vec::new(),
                tags: vec![tag.to_owned()],
            }],
        }
    }

    impl DcbStore for UmadbDcb {
        async fn connect_another(&self) -> Result<Self, BoxError> {
            Self::connect(&self.address).await
        }

        async fn append(
            &self,
            _stream: &str,
            events: Vec<TaggedEvent>,
            condition: Option<&Condition>,
        ) -> Result<Outcome, BoxError> {
            let events = events
                .into_iter()
                .map(|event| DcbEvent {
                    event_type: EVENT_TYPE.to_owned(),
                    tags: event.tags,
                    data: event.data.into_bytes(),
                    uuid: Some(event.id),
                    metadata: Vec::new(),
                })
                .collect();
            let condition = condition.map(|condition| DcbAppendCondition {
                fail_if_events_match: query(&condition.tag),
                after: condition.after,
            });
            match self.client.append(events, condition, None).await {
                Ok(position) => Ok(Outcome::Written(position)),
                Err(DcbError::IntegrityError(_)) => Ok(Outcome::Rejected),
                Err(error) => Err(error.into()),
            }
        }

        async fn read_tagged(&self, tag: &str, which: Which) -> Result<TagRead, BoxError> {
            let (backwards, limit) = match which {
                Which::All => (false, None),
                Which::Last => (true, Some(1)),
            };
            let mut read = self
                .client
                .read(Some(query(tag)), None, backwards, limit)
                .await?;
            let mut events = Vec::new();
            while let Some(event) = read.next().await {
                let event = event?;
                events.push(ReadEvent {
                    position: event.position,
                    tags: event.event.tags,
                    data: event.event.data.into(),
                });
            }
            // With a limit UmaDB answers the last returned event's position
            // (none if nothing matched), without one the head at read: either
            // way nothing matching lies between it and the head at read.
            let consistent_through = read.head().await?;
            Ok(TagRead {
                events,
                consistent_through,
            })
        }
    }
}

/// One operation of a timed phase.
#[derive(Debug, Clone, Copy)]
struct Step {
    /// Accepted (appends), or checked (reads).
    succeeded: bool,
    /// Events written or read.
    events: u64,
}

/// What one phase measured.
#[derive(Debug, Clone)]
struct Phase {
    /// `append-1`, `append-n`, `deciders`, `read-1`, `read-n`.
    id: &'static str,
    /// One line saying what ran.
    what: String,
    clients: usize,
    /// Operations started (appends, reads, decisions attempted).
    attempts: u64,
    /// Of them accepted (appends, decisions) or checked (reads).
    succeeded: u64,
    /// Events written or read.
    events: u64,
    /// From the common start to the last client's finish.
    seconds: f64,
    /// Per operation.
    latency: Latency,
}

impl Phase {
    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    fn rejected(&self) -> u64 {
        self.attempts - self.succeeded
    }

    fn rejected_share(&self) -> f64 {
        self.rejected() as f64 / self.attempts.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "what": self.what,
            "clients": self.clients,
            "attempts": self.attempts,
            "succeeded": self.succeeded,
            "rejected": self.rejected(),
            "rejected_share": round_to(self.rejected_share(), 4),
            "events": self.events,
            "seconds": round_to(self.seconds, 3),
            "succeeded_per_second": round(self.per_second(self.succeeded)),
            "events_per_second": round(self.per_second(self.events)),
            "latency": self.latency.to_json(),
        })
    }
}

/// What one client of a timed phase did.
struct ClientTally {
    latencies: Vec<u64>,
    succeeded: u64,
    events: u64,
    finished: Instant,
}

/// Runs `op` from `clients` clients, each on its own connection, until
/// `duration` has passed since their common start. `op(connection, client,
/// n)` is the client's `n`-th operation.
async fn timed<S, Op, Fut>(
    store: &S,
    id: &'static str,
    what: String,
    clients: usize,
    duration: Duration,
    op: Op,
) -> Result<Phase, BoxError>
where
    S: DcbStore,
    Op: Fn(Arc<S>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Step, BoxError>> + Send + 'static,
{
    // Every connection first: a failed connect leaves no task waiting.
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(Arc::new(store.connect_another().await?));
    }
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for (c, connection) in connections.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            let mut tally = ClientTally {
                latencies: Vec::new(),
                succeeded: 0,
                events: 0,
                finished: Instant::now(),
            };
            for n in 0.. {
                let began = Instant::now();
                if began >= deadline {
                    break;
                }
                let step = op(Arc::clone(&connection), c, n).await?;
                tally.latencies.push(nanos_since(began));
                tally.succeeded += u64::from(step.succeeded);
                tally.events += step.events;
            }
            tally.finished = Instant::now();
            Ok::<_, BoxError>(tally)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut succeeded = 0;
    let mut events = 0;
    let mut finished = start;
    for task in tasks {
        let tally = task
            .await
            .map_err(|error| format!("{id} client: {error}"))??;
        latencies.extend(tally.latencies);
        succeeded += tally.succeeded;
        events += tally.events;
        finished = finished.max(tally.finished);
    }
    Ok(Phase {
        id,
        what,
        clients,
        attempts: latencies.len() as u64,
        succeeded,
        events,
        seconds: finished.duration_since(start).as_secs_f64(),
        latency: Latency::from_nanos(latencies),
    })
}

/// Prints a phase's figures as it ends.
fn announce(phase: &Phase) {
    eprintln!(
        "  {}: {} ops ({} accepted/checked, {} rejected), {:.0} ops/s, {:.0} ev/s, p50 {:.3} ms, \
         p99 {:.3} ms",
        phase.id,
        phase.attempts,
        phase.succeeded,
        phase.rejected(),
        phase.per_second(phase.succeeded),
        phase.per_second(phase.events),
        phase.latency.p50_us / 1_000.0,
        phase.latency.p99_us / 1_000.0,
    );
}

/// Phase 1 with `clients` clients: single events, each a decision with a
/// fresh tag and the condition "no event with that tag at all".
async fn conditional_appends<S: DcbStore>(
    store: &S,
    id: &'static str,
    clients: usize,
    duration: Duration,
) -> Result<Phase, BoxError> {
    let (phase, case) = if clients == 1 {
        ("1", case::APPEND_1)
    } else {
        ("n", case::APPEND_N)
    };
    let what = format!(
        "{clients} client(s), single-event appends, each with a fresh tag and the condition \
         \"no event with that tag\""
    );
    timed(
        store,
        id,
        what,
        clients,
        duration,
        move |store, c, n| async move {
            let tag = decision_tag(phase, c, n);
            let event = TaggedEvent::new(
                event_id(case, c, n),
                &tag,
                n,
                vec![tag.clone(), SHARED_TAG.to_owned()],
            );
            let condition = Condition { tag, after: None };
            let outcome = store
                .append(&client_stream(c), vec![event], Some(&condition))
                .await?;
            let succeeded = matches!(outcome, Outcome::Written(_));
            Ok(Step {
                succeeded,
                events: u64::from(succeeded),
            })
        },
    )
    .await
}

/// The condition bites: decision 0 of `append-1`'s client 0 again is
/// rejected while its condition has no position, and accepted with the
/// position a read of its tag was consistent through.
async fn conditions_bite<S: DcbStore>(store: &S) -> Result<(), BoxError> {
    let tag = decision_tag("1", 0, 0);
    let event = |seq| {
        TaggedEvent::new(
            event_id(case::CHECK, 0, seq),
            &tag,
            seq,
            vec![tag.clone(), SHARED_TAG.to_owned()],
        )
    };
    let anywhere = Condition {
        tag: tag.clone(),
        after: None,
    };
    if store
        .append(&client_stream(0), vec![event(0)], Some(&anywhere))
        .await?
        != Outcome::Rejected
    {
        return Err(format!(
            "an append under \"no event tagged {tag}\" was accepted although one exists"
        )
        .into());
    }
    let read = store.read_tagged(&tag, Which::All).await?;
    if read.events.len() != 1 {
        return Err(format!(
            "{} events tagged {tag}, not 1 (a rejected append wrote?)",
            read.events.len()
        )
        .into());
    }
    let after_read = Condition {
        tag: tag.clone(),
        after: read.consistent_through,
    };
    let Outcome::Written(_) = store
        .append(&client_stream(0), vec![event(1)], Some(&after_read))
        .await?
    else {
        return Err(format!(
            "an append under \"no event tagged {tag} after {:?}\" was rejected although none is",
            read.consistent_through
        )
        .into());
    };
    Ok(())
}

/// The `seq` field of a benchmark event's data.
fn seq_of(data: &[u8]) -> Result<u64, BoxError> {
    let value: Value = serde_json::from_slice(data)?;
    value
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| "an event's data has no seq".into())
}

/// Phase 2: deciders racing on [`HOT_TAGS`] tags; then every tag's sequence
/// is checked for lost updates.
async fn deciders<S: DcbStore>(
    store: &S,
    clients: usize,
    duration: Duration,
) -> Result<Phase, BoxError> {
    let what = format!(
        "{clients} clients, {HOT_TAGS} hot tags: read the tag's last event, append the next \
         number under \"nothing tagged after the read\""
    );
    let phase = timed(
        store,
        "deciders",
        what,
        clients,
        duration,
        |store, c, n| async move {
            let h = (c + usize::try_from(n % HOT_TAGS as u64).unwrap_or(0)) % HOT_TAGS;
            let tag = hot_tag(h);
            let read = store.read_tagged(&tag, Which::Last).await?;
            let next = match read.events.first() {
                None => 0,
                Some(last) => seq_of(&last.data)? + 1,
            };
            let event =
                TaggedEvent::new(event_id(case::DECIDE, c, n), &tag, next, vec![tag.clone()]);
            let condition = Condition {
                tag,
                after: read.consistent_through,
            };
            let outcome = store
                .append(&client_stream(c), vec![event], Some(&condition))
                .await?;
            let succeeded = matches!(outcome, Outcome::Written(_));
            Ok(Step {
                succeeded,
                events: u64::from(succeeded),
            })
        },
    )
    .await?;
    let mut decided = 0;
    for h in 0..HOT_TAGS {
        let tag = hot_tag(h);
        let read = store.read_tagged(&tag, Which::All).await?;
        let seqs = read
            .events
            .iter()
            .map(|event| seq_of(&event.data))
            .collect::<Result<Vec<_>, _>>()?;
        check_numbered(&tag, &seqs)?;
        decided += seqs.len() as u64;
    }
    if decided != phase.succeeded {
        return Err(format!(
            "the hot tags hold {decided} decisions, but {} appends were accepted",
            phase.succeeded
        )
        .into());
    }
    Ok(phase)
}

/// A hot tag's events are numbered 0, 1, 2, ... in order: every decision saw
/// the one before it (a repeated number is a lost update).
fn check_numbered(tag: &str, seqs: &[u64]) -> Result<(), String> {
    match seqs.iter().zip(0u64..).find(|(seq, i)| **seq != *i) {
        None => Ok(()),
        Some((seq, i)) => Err(format!(
            "lost update: event {i} tagged {tag} carries number {seq}, not {i}"
        )),
    }
}

/// The fill of the read phases: every [`READ_SETS`] set gets one event in each
/// of [`FILL_BATCHES`] appends of [`FILL_BATCH`].
async fn fill<S: DcbStore>(store: &S) -> Result<(), BoxError> {
    for b in 0..FILL_BATCHES {
        let events = (0..FILL_BATCH)
            .map(|e| {
                let seq = b * FILL_BATCH + e;
                let mut tags = vec![SHARED_TAG.to_owned()];
                if let Some(set) = usize::try_from(e).ok().filter(|&e| e < READ_SETS) {
                    tags.push(read_set_tag(set));
                }
                TaggedEvent::new(event_id(case::FILL, 0, seq), FILL_STREAM, seq, tags)
            })
            .collect();
        store.append(FILL_STREAM, events, None).await?;
    }
    Ok(())
}

/// Phase 3 with `clients` clients: whole read sets by their tag, checked.
async fn query_reads<S: DcbStore>(
    store: &S,
    id: &'static str,
    clients: usize,
    duration: Duration,
) -> Result<Phase, BoxError> {
    let what = format!(
        "{clients} client(s), each read the {FILL_BATCHES} events of one tag, spread over \
         {} events",
        FILL_BATCHES * FILL_BATCH
    );
    timed(
        store,
        id,
        what,
        clients,
        duration,
        |store, c, n| async move {
            let set = (c + usize::try_from(n % READ_SETS as u64).unwrap_or(0)) % READ_SETS;
            let tag = read_set_tag(set);
            let read = store.read_tagged(&tag, Which::All).await?;
            check_read_set(&tag, &read.events)?;
            Ok(Step {
                succeeded: true,
                events: read.events.len() as u64,
            })
        },
    )
    .await
}

/// A read set as the fill wrote it: [`FILL_BATCHES`] events, positions
/// ascending, each carrying `tag`.
fn check_read_set(tag: &str, events: &[ReadEvent]) -> Result<(), String> {
    if events.len() as u64 != FILL_BATCHES {
        return Err(format!(
            "a read of {tag} returned {} events, not {FILL_BATCHES}",
            events.len()
        ));
    }
    if let Some(pair) = events
        .windows(2)
        .find(|pair| pair[0].position >= pair[1].position)
    {
        return Err(format!(
            "a read of {tag} returned position {} before {}",
            pair[0].position, pair[1].position
        ));
    }
    if let Some(event) = events
        .iter()
        .find(|event| !event.tags.iter().any(|t| t == tag))
    {
        return Err(format!(
            "a read of {tag} returned the event at {} without that tag",
            event.position
        ));
    }
    Ok(())
}

/// Every phase on one store, in order.
async fn phases<S: DcbStore>(
    store: &S,
    clients: usize,
    duration: Duration,
    phases: &mut Vec<Phase>,
) -> Result<(), BoxError> {
    let record = |phases: &mut Vec<Phase>, phase: Phase| {
        announce(&phase);
        phases.push(phase);
    };
    record(
        phases,
        conditional_appends(store, "append-1", 1, duration).await?,
    );
    record(
        phases,
        conditional_appends(store, "append-n", clients, duration).await?,
    );
    conditions_bite(store).await?;
    eprintln!("  conditions checked: an existing tag is rejected, accepted after its read");
    record(phases, deciders(store, clients, duration).await?);
    eprintln!("  deciders checked: every hot tag numbered 0, 1, 2, ... without a repeat");
    let began = Instant::now();
    fill(store).await?;
    eprintln!(
        "  fill: {} events in {:.2} s",
        FILL_BATCHES * FILL_BATCH,
        began.elapsed().as_secs_f64()
    );
    record(phases, query_reads(store, "read-1", 1, duration).await?);
    record(
        phases,
        query_reads(store, "read-n", clients, duration).await?,
    );
    Ok(())
}

/// What one store did.
#[derive(Debug)]
struct StoreRun {
    store: Store,
    /// The disk's rate just before this store ran.
    fsync_before: Option<SyncRate>,
    phases: Vec<Phase>,
    /// Why the store was not measured, or where it failed.
    error: Option<String>,
}

impl StoreRun {
    fn find(&self, id: &str) -> Option<&Phase> {
        self.phases.iter().find(|phase| phase.id == id)
    }
}

/// Runs `cairn-bench dcb`.
pub(crate) async fn run(args: &DcbArgs) -> Result<(), BoxError> {
    let positive = |secs: f64, flag: &str| {
        Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|duration| !duration.is_zero())
            .ok_or_else(|| format!("{flag} must be a positive number"))
    };
    let duration = positive(args.seconds, "--seconds")?;
    let probe = positive(args.fsync_seconds, "--fsync-seconds")?;
    if args.clients < 2 {
        return Err("--clients must be at least 2 (the 1-client phases always run)".into());
    }
    if args.stores.is_empty() {
        return Err("--stores names no store".into());
    }
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.canonicalize()?
        }
        None => std::env::temp_dir(),
    };
    let machine = Machine::describe(&dir);
    if machine.on_memory_fs() {
        eprintln!(
            "warning: {} is on a memory filesystem; fsync costs nothing there",
            dir.display()
        );
    }
    let binary = if args.stores.contains(&Store::Cairn) {
        Some(server::server_binary(args.server_bin.as_deref())?)
    } else {
        None
    };
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-dcb-")
        .tempdir_in(&dir)?;

    let mut runs = Vec::new();
    for store in [Store::Cairn, Store::Umadb] {
        if !args.stores.contains(&store) {
            continue;
        }
        let mut run = StoreRun {
            store,
            fsync_before: None,
            phases: Vec::new(),
            error: None,
        };
        if store == Store::Umadb
            && let Err(reason) = peers::available(Peer::Umadb)
        {
            eprintln!("UmaDB: not available: {reason}");
            run.error = Some(format!("not available: {reason}"));
            runs.push(run);
            continue;
        }
        eprintln!("{}: measuring the fdatasync rate ...", store.title());
        let rate = disk::fdatasync_rate(scratch.path(), probe)?;
        eprintln!("  {:.0} fdatasync/s", rate.per_second);
        run.fsync_before = Some(rate);
        eprintln!("{}: {} ...", store.title(), store.settings());
        let data = scratch.path().join(store.title().to_lowercase());
        let outcome = match store {
            Store::Cairn => {
                let binary = binary.as_deref().ok_or("no cairn binary")?;
                measure_cairn(binary, &data, args.clients, duration, &mut run.phases).await
            }
            Store::Umadb => measure_umadb(&data, args.clients, duration, &mut run.phases).await,
        };
        if let Err(error) = outcome {
            eprintln!("{}: FAILED: {error}", store.title());
            run.error = Some(error.to_string());
        }
        if let Err(error) = std::fs::remove_dir_all(&data) {
            eprintln!("warning: cannot remove {}: {error}", data.display());
        }
        runs.push(run);
    }

    let report = Report {
        machine,
        dir,
        seconds: args.seconds,
        clients: args.clients,
        runs,
    };
    println!("{}", table(&report));
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&to_json(&report))? + "\n",
        )?;
        eprintln!("figures written to {}", path.display());
    }
    if let Some(failed) = report.runs.iter().find(|run| {
        run.error
            .as_deref()
            .is_some_and(|error| !error.starts_with("not available"))
    }) {
        return Err(format!("{} failed: see the table", failed.store.title()).into());
    }
    Ok(())
}

/// Starts Cairn on `data`, runs the phases, stops it.
async fn measure_cairn(
    binary: &Path,
    data: &Path,
    clients: usize,
    duration: Duration,
    results: &mut Vec<Phase>,
) -> Result<(), BoxError> {
    std::fs::create_dir_all(data)?;
    let mut server = ServerProcess::start(
        binary,
        &data.join("data"),
        Durability::Sync,
        &data.join("server.log"),
    )
    .await?;
    let store = CairnDcb::connect(server.address()).await?;
    let outcome = phases(&store, clients, duration, results).await;
    drop(store);
    server.stop()?;
    outcome
}

/// Starts UmaDB on `data` (`bench/peers.sh`), runs the phases, stops it.
#[cfg(feature = "umadb")]
async fn measure_umadb(
    data: &Path,
    clients: usize,
    duration: Duration,
    results: &mut Vec<Phase>,
) -> Result<(), BoxError> {
    let mut server = peers::PeerServer::start(Peer::Umadb, data)?;
    let store = uma::UmadbDcb::connect(server.address()).await?;
    let outcome = phases(&store, clients, duration, results).await;
    drop(store);
    server.stop()?;
    outcome
}

#[cfg(not(feature = "umadb"))]
async fn measure_umadb(
    _data: &Path,
    _clients: usize,
    _duration: Duration,
    _results: &mut Vec<Phase>,
) -> Result<(), BoxError> {
    Err(peers::NO_UMADB.into())
}

/// Everything the run measured.
#[derive(Debug)]
struct Report {
    machine: Machine,
    dir: PathBuf,
    seconds: f64,
    clients: usize,
    runs: Vec<StoreRun>,
}

/// Which figure of a phase a row shows.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// The fdatasync probe before the store.
    Fsync,
    /// Accepted (or checked) operations per second.
    Rate,
    /// Events per second.
    Events,
    /// p50 / p99 ms (the ratio on p50).
    Latency,
    /// Rejected appends, a count.
    Rejected,
    /// Rejected share of the attempts.
    Conflicts,
}

struct Row {
    label: String,
    phase: &'static str,
    figure: Figure,
}

impl Figure {
    fn value(self, run: &StoreRun, phase: &str) -> Option<f64> {
        let phase = run.find(phase);
        match self {
            Self::Fsync => run.fsync_before.map(|rate| rate.per_second),
            Self::Rate => phase.map(|phase| phase.per_second(phase.succeeded)),
            Self::Events => phase.map(|phase| phase.per_second(phase.events)),
            Self::Latency => phase.map(|phase| phase.latency.p50_us),
            Self::Rejected => phase.map(|phase| phase.rejected() as f64),
            Self::Conflicts => phase.map(Phase::rejected_share),
        }
    }

    fn shown(self, run: &StoreRun, phase: &str) -> Option<String> {
        let ms = |us: f64| format!("{:.2}", us / 1_000.0);
        let value = self.value(run, phase)?;
        Some(match self {
            Self::Fsync | Self::Rate | Self::Events => thousands(value),
            Self::Latency => {
                let latency = run.find(phase)?.latency;
                format!("{} / {}", ms(latency.p50_us), ms(latency.p99_us))
            }
            Self::Rejected => format!("{value:.0}"),
            Self::Conflicts => format!("{:.1}%", value * 100.0),
        })
    }

    /// Cairn ÷ UmaDB as shown: throughput Cairn ÷ UmaDB, latency UmaDB ÷
    /// Cairn (above 1: Cairn ahead); counts and shares have none.
    fn ratio(self, cairn: f64, umadb: f64) -> Option<String> {
        let ratio = match self {
            Self::Fsync => return Some(format!("{:.2} (disk)", cairn / umadb)),
            Self::Rate | Self::Events => cairn / umadb,
            Self::Latency => umadb / cairn,
            Self::Rejected | Self::Conflicts => return None,
        };
        ratio.is_finite().then(|| format!("{ratio:.2}x"))
    }
}

fn rows(clients: usize) -> Vec<Row> {
    let row = |label: String, phase, figure| Row {
        label,
        phase,
        figure,
    };
    vec![
        row(
            "fdatasync/s, probe before the store".to_owned(),
            "",
            Figure::Fsync,
        ),
        row(
            "conditional appends/s, 1 client".to_owned(),
            "append-1",
            Figure::Rate,
        ),
        row("  p50 / p99 ms".to_owned(), "append-1", Figure::Latency),
        row(
            "  rejected (expected 0)".to_owned(),
            "append-1",
            Figure::Rejected,
        ),
        row(
            format!("conditional appends/s, {clients} clients"),
            "append-n",
            Figure::Rate,
        ),
        row("  p50 / p99 ms".to_owned(), "append-n", Figure::Latency),
        row(
            "  rejected (expected 0)".to_owned(),
            "append-n",
            Figure::Rejected,
        ),
        row(
            format!("deciders: decisions/s ({clients} clients, {HOT_TAGS} tags)"),
            "deciders",
            Figure::Rate,
        ),
        row(
            "  conflicts (of attempts)".to_owned(),
            "deciders",
            Figure::Conflicts,
        ),
        row(
            "  attempt (read + append) p50 / p99 ms".to_owned(),
            "deciders",
            Figure::Latency,
        ),
        row(
            format!("query reads/s, 1 client ({FILL_BATCHES} events each)"),
            "read-1",
            Figure::Rate,
        ),
        row("  events/s".to_owned(), "read-1", Figure::Events),
        row("  p50 / p99 ms".to_owned(), "read-1", Figure::Latency),
        row(
            format!("query reads/s, {clients} clients"),
            "read-n",
            Figure::Rate,
        ),
        row("  events/s".to_owned(), "read-n", Figure::Events),
        row("  p50 / p99 ms".to_owned(), "read-n", Figure::Latency),
    ]
}

/// The report as text: header, the table, a note per store.
fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cairn-bench dcb, {}", report.machine.date);
    let _ = writeln!(out, "machine: {}", report.machine.summary());
    let _ = writeln!(
        out,
        "stores and probes in: {} ({}); {} s per phase",
        report.dir.display(),
        report.machine.filesystem_summary(),
        report.seconds
    );
    let _ = writeln!(out);
    let cairn = report.runs.iter().find(|run| run.store == Store::Cairn);
    let umadb = report.runs.iter().find(|run| run.store == Store::Umadb);
    let mut header = vec!["figure".to_owned()];
    header.extend(report.runs.iter().map(|run| run.store.title().to_owned()));
    if cairn.is_some() && umadb.is_some() {
        header.push("Cairn ÷ UmaDB".to_owned());
    }
    let mut cells = Vec::new();
    for row in rows(report.clients) {
        let mut line = vec![row.label.clone()];
        for run in &report.runs {
            line.push(
                row.figure
                    .shown(run, row.phase)
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        if let (Some(cairn), Some(umadb)) = (cairn, umadb) {
            let ratio = row
                .figure
                .value(cairn, row.phase)
                .zip(row.figure.value(umadb, row.phase))
                .and_then(|(cairn, umadb)| row.figure.ratio(cairn, umadb));
            line.push(ratio.unwrap_or_else(|| "-".to_owned()));
        }
        cells.push(line);
    }
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    out.push_str(&markdown_table_with(&header_refs, &cells, &[0]));
    if cairn.is_some() && umadb.is_some() {
        let _ = writeln!(
            out,
            "\nCairn ÷ UmaDB: above 1 means Cairn is ahead (throughput Cairn ÷ UmaDB, latency \
             UmaDB ÷ Cairn)."
        );
    }
    let _ = writeln!(out);
    for run in &report.runs {
        let _ = writeln!(
            out,
            "- {}: {}{}",
            run.store.title(),
            run.store.settings(),
            run.error
                .as_ref()
                .map(|error| format!(". {error}"))
                .unwrap_or_default()
        );
    }
    out
}

/// The report as JSON.
fn to_json(report: &Report) -> Value {
    json!({
        "benchmark": "cairn-bench dcb",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "machine": report.machine.to_json(),
        "dir": report.dir.display().to_string(),
        "seconds_per_phase": report.seconds,
        "clients": report.clients,
        "hot_tags": HOT_TAGS,
        "read_sets": READ_SETS,
        "events_per_read_set": FILL_BATCHES,
        "stores": report.runs.iter().map(|run| json!({
            "store": run.store.title(),
            "settings": run.store.settings(),
            "fdatasync_before": run.fsync_before.map(SyncRate::to_json),
            "error": run.error,
            "phases": run.phases.iter().map(Phase::to_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, tags: &[&str]) -> ReadEvent {
        ReadEvent {
            position,
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            data: Bytes::new(),
        }
    }

    #[test]
    fn a_repeated_number_is_a_lost_update() {
        assert!(check_numbered("hot:0", &[]).is_ok());
        assert!(check_numbered("hot:0", &[0, 1, 2]).is_ok());
        let error = check_numbered("hot:0", &[0, 1, 1, 2]).unwrap_err();
        assert!(error.contains("event 2"), "{error}");
        assert!(check_numbered("hot:0", &[1]).is_err());
    }

    #[test]
    fn read_sets_are_checked_whole_in_order_and_tagged() {
        let tag = read_set_tag(3);
        let set: Vec<ReadEvent> = (0..FILL_BATCHES)
            .map(|i| event(10 + i * FILL_BATCH, &["dcb-bench", &tag]))
            .collect();
        assert!(check_read_set(&tag, &set).is_ok());
        assert!(check_read_set(&tag, &set[1..]).is_err());
        let mut swapped = set.clone();
        swapped.swap(4, 5);
        assert!(check_read_set(&tag, &swapped).is_err());
        let mut untagged = set;
        untagged[7] = event(untagged[7].position, &["dcb-bench"]);
        assert!(check_read_set(&tag, &untagged).is_err());
    }

    #[test]
    fn seq_comes_from_the_payload() {
        let id = event_id(case::DECIDE, 3, 9);
        let data = payload(&id, &hot_tag(1), 41);
        assert_eq!(seq_of(data.as_bytes()).unwrap(), 41);
        assert!(seq_of(b"{}").is_err());
        assert!(seq_of(b"not json").is_err());
    }

    #[test]
    fn ratios_say_how_far_ahead_cairn_is() {
        assert_eq!(
            Figure::Rate.ratio(3_000.0, 1_000.0).as_deref(),
            Some("3.00x")
        );
        assert_eq!(Figure::Latency.ratio(2.0, 4.0).as_deref(), Some("2.00x"));
        assert_eq!(Figure::Rate.ratio(1.0, 0.0), None);
        assert_eq!(Figure::Conflicts.ratio(0.1, 0.2), None);
        assert_eq!(
            Figure::Fsync.ratio(1_000.0, 2_000.0).as_deref(),
            Some("0.50 (disk)")
        );
    }

    #[test]
    fn every_phase_has_a_row_and_tags_fit() {
        for id in ["append-1", "append-n", "deciders", "read-1", "read-n"] {
            assert!(rows(16).iter().any(|row| row.phase == id), "{id}");
        }
        let longest = decision_tag("n", usize::MAX, u64::MAX);
        assert!(longest.len() <= cairn_storage::MAX_TAG_BYTES);
    }
}
