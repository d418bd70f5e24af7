//! Event-sourced aggregates over streams: [`Repository`] loads an
//! [`Aggregate`] from its stream (from the latest snapshot, then only the
//! events after it), runs a command's decision against it, appends the
//! decided events with the expected revision, retries on a concurrent write,
//! and writes a snapshot every N events.
//!
//! ```no_run
//! use cairn_client::{Aggregate, Client, CodecError, EventData, RecordedEvent, Repository};
//!
//! /// Money in an account, in cents.
//! #[derive(Debug, Default)]
//! struct Account {
//!     balance: i64,
//! }
//!
//! impl Aggregate for Account {
//!     // The data of `Deposited` events: the amount as decimal text.
//!     type Event = i64;
//!     const SNAPSHOT_SCHEMA: &'static str = "account/1";
//!
//!     fn decode(event: &RecordedEvent) -> Result<i64, CodecError> {
//!         Ok(std::str::from_utf8(&event.data)?.parse()?)
//!     }
//!     fn apply(&mut self, amount: &i64) {
//!         self.balance += amount;
//!     }
//!     fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
//!         Ok(self.balance.to_string().into_bytes())
//!     }
//!     fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
//!         Ok(Self { balance: std::str::from_utf8(bytes)?.parse()? })
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! let accounts = Repository::<Account>::new(client).snapshot_every(500);
//! // Deposit 10 unless that would take the balance over 1,000.
//! let executed = accounts
//!     .execute("account-7", |account| {
//!         if account.balance + 10 > 1_000 {
//!             return Err("the balance would exceed 1,000");
//!         }
//!         Ok((vec![EventData::binary("Deposited", "10")], account.balance + 10))
//!     })
//!     .await?;
//! println!("balance {} at revision {:?}", executed.output, executed.revision);
//! let loaded = accounts.load("account-7").await?;
//! println!("replayed {} events after {:?}", loaded.replayed, loaded.snapshot);
//! # Ok(()) }
//! ```
//!
//! **Snapshots** of stream `S` are events of the companion stream
//! `$snapshot-S` (the one `$` name a client may write; its access is `S`'s
//! ACL, and it is in no category of `S`): type [`SNAPSHOT_EVENT_TYPE`], the
//! aggregate's bytes as data, and as metadata the JSON
//! `{"revision":R,"first":F,"schema":"<SNAPSHOT_SCHEMA>"}`: the state folds
//! the revisions F..=R of `S` (F: the stream's first readable event when the
//! state was built). The events of `S` are never changed. When the
//! repository creates `$snapshot-S` it sets its `max_count` (default 3), so
//! a scavenge removes old snapshots.
//!
//! A snapshot is a cache and never trusted blindly: one that is not exactly
//! in the form above or has another schema, one whose bytes do not decode,
//! one whose revision is past the stream's last event, one whose first
//! revision is no longer the stream's first readable one (the stream was
//! deleted and recreated, or truncated) and one followed by a gap is ignored
//! with a full replay ([`SnapshotUse`] says which and why): a load always
//! gives the state a full replay of the readable events gives. Bump [`Aggregate::SNAPSHOT_SCHEMA`] whenever the snapshot
//! layout or the meaning of `apply` changes.

use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::types::{EventData, ExpectedRevision, ReadFrom, ReadOptions, RecordedEvent};
use crate::{Client, StreamMetadata};

/// The prefix of a stream's snapshot stream (`$snapshot-order-42`).
pub const SNAPSHOT_STREAM_PREFIX: &str = "$snapshot-";

/// The event type of snapshot events.
pub const SNAPSHOT_EVENT_TYPE: &str = "$snapshot";

/// An aggregate's codec failure (decoding an event, encoding or decoding a
/// snapshot).
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// State rebuilt from one stream's events. `Default` is the state of a
/// stream with no events.
pub trait Aggregate: Default {
    /// One event of the aggregate's stream, decoded.
    type Event;

    /// Names the snapshot layout (e.g. `order/3`): a snapshot written under
    /// another schema is ignored. Change it whenever [`Aggregate::to_snapshot`]'s
    /// bytes or [`Aggregate::apply`]'s meaning change.
    const SNAPSHOT_SCHEMA: &'static str;

    /// Decodes a recorded event of the stream; a failure fails the load
    /// (events are facts: one the aggregate cannot read is a bug).
    fn decode(event: &RecordedEvent) -> Result<Self::Event, CodecError>;

    /// Folds one event in. Must not fail and must depend only on the state
    /// and the event, so a snapshot plus the later events give the same state
    /// as a full replay.
    fn apply(&mut self, event: &Self::Event);

    /// The state as snapshot bytes.
    fn to_snapshot(&self) -> Result<Vec<u8>, CodecError>;

    /// The state of snapshot bytes written by [`Aggregate::to_snapshot`]
    /// under the same schema; a failure ignores the snapshot.
    fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError>;
}

/// The snapshot stream of `stream`.
pub fn snapshot_stream(stream: &str) -> String {
    format!("{SNAPSHOT_STREAM_PREFIX}{stream}")
}

/// How a [`Repository`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepositoryOptions {
    /// Write a snapshot after a command once this many events of the stream
    /// are not covered by the latest snapshot; 0: no snapshots at all (none
    /// read, none written).
    pub snapshot_every: u64,
    /// Most attempts of one command when others write the stream meanwhile,
    /// before it fails with [`AggregateError::Conflict`] (at least 1).
    pub max_attempts: u32,
    /// The `max_count` set on a snapshot stream when the repository creates
    /// it: how many snapshots a scavenge keeps (at least 1).
    pub snapshots_kept: u64,
}

impl Default for RepositoryOptions {
    fn default() -> Self {
        Self {
            snapshot_every: 100,
            max_attempts: 16,
            snapshots_kept: 3,
        }
    }
}

/// An aggregate as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream's last revision (`None`: it has no events), the
    /// expectation of an append decided on this state.
    pub revision: Option<u64>,
    /// How many events were read and applied (after the snapshot, if one
    /// was used).
    pub replayed: u64,
    /// Whether a snapshot was used.
    pub snapshot: SnapshotUse,
    /// The first revision folded into `state` (through a snapshot or not):
    /// a snapshot of this state is valid while it stays the stream's first
    /// readable revision.
    first: Option<u64>,
}

impl<A> Loaded<A> {
    /// The expectation an append decided on this state carries.
    pub fn expected(&self) -> ExpectedRevision {
        match self.revision {
            Some(revision) => ExpectedRevision::Exact(revision),
            None => ExpectedRevision::NoStream,
        }
    }

    /// The last revision the latest usable snapshot covers, if one was used.
    fn covered(&self) -> Option<u64> {
        match self.snapshot {
            SnapshotUse::Used { revision } => Some(revision),
            _ => None,
        }
    }
}

/// Whether a load started from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotUse {
    /// Snapshots are off, or the stream has none: a full replay.
    None,
    /// The state started from the snapshot covering revisions up to
    /// `revision`; only later events were replayed.
    Used {
        /// The last revision the snapshot covers.
        revision: u64,
    },
    /// The latest snapshot was not trusted; a full replay.
    Ignored(SnapshotIgnored),
}

/// Why the latest snapshot was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotIgnored {
    /// Not a snapshot of this repository's form or of this aggregate's
    /// schema (another writer's event, an older schema).
    Foreign,
    /// The aggregate could not decode its bytes.
    Undecodable(String),
    /// The stream's first readable revision is not the one the snapshot's
    /// state started from: the stream was deleted and recreated (revisions
    /// go on after a soft delete), or truncated.
    Rebased {
        /// The first revision the snapshot folds.
        first: u64,
        /// The stream's first readable revision now (`None`: no events).
        now: Option<u64>,
    },
    /// It covers revisions the stream does not have (`head`: the stream's
    /// last visible revision, `None` when the stream has no events).
    PastHead {
        /// The snapshot's revision.
        revision: u64,
        /// The stream's last revision.
        head: Option<u64>,
    },
    /// The stream still starts where the snapshot's state started, but the
    /// events right after the snapshot cannot be read (hidden by `max_age`,
    /// or deleted between the load's reads): the first event after it is
    /// `next`.
    Gap {
        /// The snapshot's revision.
        revision: u64,
        /// The first revision that can be read after it.
        next: u64,
    },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed<T> {
    /// The decision's output.
    pub output: T,
    /// The stream's last revision after the append (when the decision
    /// appended nothing: the revision it decided on).
    pub revision: Option<u64>,
    /// How many events were appended (0: the decision appended nothing).
    pub appended: usize,
    /// Attempts made (1 without concurrent writes).
    pub attempts: u32,
    /// The revision a snapshot written after the command covers; `None` when
    /// none was due or writing it failed (logged; the command's events are
    /// committed either way).
    pub snapshot: Option<u64>,
}

/// A load or command failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError<E = std::convert::Infallible> {
    /// The decision refused the command; nothing was written.
    #[error("{0}")]
    Rejected(E),
    /// A call to the server failed (an append: nothing was written).
    #[error(transparent)]
    Client(#[from] Error),
    /// An event of the stream does not decode.
    #[error("event {revision} of '{stream}' does not decode: {source}")]
    Decode {
        /// The stream.
        stream: String,
        /// The event's revision.
        revision: u64,
        /// The aggregate's error.
        source: CodecError,
    },
    /// The aggregate could not encode its snapshot.
    #[error("cannot encode the snapshot of '{stream}': {source}")]
    Snapshot {
        /// The stream.
        stream: String,
        /// The aggregate's error.
        source: CodecError,
    },
    /// Others wrote the stream between every load and append.
    #[error("'{stream}' changed under {attempts} attempts in a row; try again")]
    Conflict {
        /// The stream.
        stream: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl AggregateError {
    /// This load error as the error of a command whose decision fails with
    /// `E` (a load never refuses).
    pub fn widen<E>(self) -> AggregateError<E> {
        match self {
            AggregateError::Rejected(never) => match never {},
            AggregateError::Client(error) => AggregateError::Client(error),
            AggregateError::Decode {
                stream,
                revision,
                source,
            } => AggregateError::Decode {
                stream,
                revision,
                source,
            },
            AggregateError::Snapshot { stream, source } => {
                AggregateError::Snapshot { stream, source }
            }
            AggregateError::Conflict { stream, attempts } => {
                AggregateError::Conflict { stream, attempts }
            }
        }
    }
}

/// Loads and runs commands on aggregates of type `A`, one stream per
/// aggregate. Cheap to clone (it holds a [`Client`]).
pub struct Repository<A> {
    client: Client,
    options: RepositoryOptions,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> std::fmt::Debug for Repository<A> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Repository")
            .field("aggregate", &std::any::type_name::<A>())
            .field("options", &self.options)
            .finish()
    }
}

impl<A> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            options: self.options,
            aggregate: PhantomData,
        }
    }
}

/// What [`Repository::fold`] read.
enum Fold<A> {
    /// The stream does not exist (or was soft-deleted).
    Missing,
    /// The first event read was not the expected one.
    Gap { next: u64 },
    /// Folded: `first` and `last` are the first and last revision read.
    Done {
        state: A,
        first: Option<u64>,
        last: Option<u64>,
        replayed: u64,
    },
}

impl<A: Aggregate> Repository<A> {
    /// A repository with the default options (a snapshot every 100 events,
    /// 16 attempts, 3 snapshots kept).
    pub fn new(client: Client) -> Self {
        Self::with_options(client, RepositoryOptions::default())
    }

    /// A repository with these options (`max_attempts` and `snapshots_kept`
    /// are raised to at least 1).
    pub fn with_options(client: Client, options: RepositoryOptions) -> Self {
        Self {
            client,
            options: RepositoryOptions {
                max_attempts: options.max_attempts.max(1),
                snapshots_kept: options.snapshots_kept.max(1),
                ..options
            },
            aggregate: PhantomData,
        }
    }

    /// Sets [`RepositoryOptions::snapshot_every`] (0: no snapshots).
    #[must_use]
    pub fn snapshot_every(mut self, events: u64) -> Self {
        self.options.snapshot_every = events;
        self
    }

    /// Sets [`RepositoryOptions::max_attempts`] (at least 1).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = attempts.max(1);
        self
    }

    /// The options in force.
    pub fn options(&self) -> RepositoryOptions {
        self.options
    }

    /// Loads the aggregate of `stream`: from its latest snapshot (when
    /// snapshots are on and the snapshot is trustworthy), then the events
    /// after it; else every event.
    pub async fn load(&self, stream: &str) -> Result<Loaded<A>, AggregateError> {
        let snapshot = if self.options.snapshot_every == 0 {
            SnapshotUse::None
        } else {
            match self.latest_snapshot(stream).await? {
                Candidate::None => SnapshotUse::None,
                Candidate::Ignored(why) => SnapshotUse::Ignored(why),
                Candidate::Usable {
                    state,
                    first,
                    revision,
                } => match self.load_after(stream, state, first, revision).await? {
                    Ok(loaded) => return Ok(loaded),
                    Err(why) => SnapshotUse::Ignored(why),
                },
            }
        };
        match &snapshot {
            // Only a corrupt snapshot is news: the others are a recreated or
            // truncated stream, or a layout change, and heal with the next
            // snapshot written.
            SnapshotUse::Ignored(why @ SnapshotIgnored::Undecodable(_)) => {
                tracing::warn!(stream, ?why, "snapshot ignored; replaying the whole stream");
            }
            SnapshotUse::Ignored(why) => {
                tracing::debug!(stream, ?why, "snapshot ignored; replaying the whole stream");
            }
            _ => {}
        }
        let loaded = match self.fold(stream, A::default(), None).await? {
            Fold::Missing | Fold::Gap { .. } => Loaded {
                state: A::default(),
                revision: None,
                replayed: 0,
                snapshot,
                first: None,
            },
            Fold::Done {
                state,
                first,
                last,
                replayed,
            } => Loaded {
                state,
                revision: last,
                replayed,
                snapshot,
                first,
            },
        };
        Ok(loaded)
    }

    /// Runs a command on the aggregate of `stream`: `decide` sees the
    /// current state and returns the events to append (none: nothing is
    /// written) and the command's output, or refuses with `E`. The events
    /// are appended with the loaded revision as expectation; when another
    /// writer got there first the aggregate is loaded again and `decide`
    /// runs again (so it must depend only on the state), up to
    /// [`RepositoryOptions::max_attempts`] times.
    ///
    /// Event ids are the caller's: keep them across attempts (decide them
    /// before calling) so a retry after a lost response is recognised by the
    /// server; an id written before with another expectation fails with
    /// [`Error::DuplicateEventId`].
    ///
    /// After the append, a snapshot is written when at least
    /// [`RepositoryOptions::snapshot_every`] events are not covered by the
    /// latest one; a failure to write it is logged and does not fail the
    /// command.
    pub async fn execute<T, E>(
        &self,
        stream: &str,
        mut decide: impl FnMut(&A) -> Result<(Vec<EventData>, T), E>,
    ) -> Result<Executed<T>, AggregateError<E>> {
        let attempts = self.options.max_attempts;
        for attempt in 1..=attempts {
            let loaded = self.load(stream).await.map_err(AggregateError::widen)?;
            let (events, output) = decide(&loaded.state).map_err(AggregateError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    output,
                    revision: loaded.revision,
                    appended: 0,
                    attempts: attempt,
                    snapshot: None,
                });
            }
            let appended = events.len();
            match self.client.append(stream, loaded.expected(), events).await {
                Ok(result) => {
                    let revision = result.current_revision;
                    let snapshot = self.snapshot_if_due(stream, loaded, revision).await;
                    return Ok(Executed {
                        output,
                        revision,
                        appended,
                        attempts: attempt,
                        snapshot,
                    });
                }
                Err(Error::WrongExpectedRevision { .. }) if attempt < attempts => {
                    backoff(attempt).await;
                }
                Err(Error::WrongExpectedRevision { .. }) => break,
                Err(error) => return Err(AggregateError::Client(error)),
            }
        }
        Err(AggregateError::Conflict {
            stream: stream.to_owned(),
            attempts,
        })
    }

    /// Writes a snapshot of `loaded` (the state at `loaded.revision`) to
    /// `$snapshot-<stream>` now; returns the revision it covers (`None`: the
    /// stream has no events, nothing to snapshot). [`Repository::execute`]
    /// calls this itself every N events; call it to snapshot an aggregate
    /// that is read far more often than written.
    pub async fn write_snapshot(
        &self,
        stream: &str,
        loaded: &Loaded<A>,
    ) -> Result<Option<u64>, AggregateError> {
        let (Some(first), Some(revision)) = (loaded.first, loaded.revision) else {
            return Ok(None);
        };
        let bytes = loaded
            .state
            .to_snapshot()
            .map_err(|source| AggregateError::Snapshot {
                stream: stream.to_owned(),
                source,
            })?;
        let event = EventData::binary(SNAPSHOT_EVENT_TYPE, bytes).metadata(snapshot_metadata(
            &SnapshotHeader { first, revision },
            A::SNAPSHOT_SCHEMA,
        ));
        let snapshots = snapshot_stream(stream);
        // Any: snapshots of concurrent writers may land out of order; an
        // older one on top is still valid, only less fresh.
        let result = self
            .client
            .append(&snapshots, ExpectedRevision::Any, vec![event])
            .await?;
        if result.current_revision == Some(0) {
            // This append created the snapshot stream: bound it, unless
            // someone set its metadata already (NoStream: never set).
            let metadata = StreamMetadata {
                max_count: Some(self.options.snapshots_kept),
                ..StreamMetadata::default()
            };
            if let Err(error) = self
                .client
                .set_stream_metadata(&snapshots, ExpectedRevision::NoStream, metadata)
                .await
            {
                tracing::warn!(stream = snapshots, %error, "cannot set the snapshot stream's max_count");
            }
        }
        Ok(Some(revision))
    }

    /// After a committed append that took `stream` to `revision`: writes a
    /// snapshot when enough events are uncovered. Never fails: the command's
    /// events are committed, a snapshot is only a cache.
    async fn snapshot_if_due(
        &self,
        stream: &str,
        loaded: Loaded<A>,
        revision: Option<u64>,
    ) -> Option<u64> {
        let every = self.options.snapshot_every;
        let head = revision?;
        let uncovered = match loaded.covered() {
            Some(covered) => head.saturating_sub(covered),
            None => head + 1,
        };
        if every == 0 || uncovered < every {
            return None;
        }
        // The state after the command: the loaded one plus what was
        // committed since, read back (exactly what a load would fold).
        let folded = match loaded.revision {
            Some(from) => self.fold(stream, loaded.state, Some(from)).await,
            None => self.fold(stream, A::default(), None).await,
        };
        let current = match folded {
            Ok(Fold::Done {
                state, first, last, ..
            }) => Loaded {
                state,
                revision: last.or(loaded.revision),
                replayed: 0,
                snapshot: SnapshotUse::None,
                first: loaded.first.or(first),
            },
            Ok(Fold::Missing | Fold::Gap { .. }) => {
                tracing::warn!(stream, "stream changed under the snapshot; none written");
                return None;
            }
            Err(error) => {
                tracing::warn!(stream, %error, "cannot fold the state to snapshot; none written");
                return None;
            }
        };
        match self.write_snapshot(stream, &current).await {
            Ok(covered) => covered,
            Err(error) => {
                tracing::warn!(stream, %error, "snapshot not written (the command's events are committed)");
                None
            }
        }
    }

    /// The latest snapshot of `stream`, decoded if it is of this aggregate.
    async fn latest_snapshot(&self, stream: &str) -> Result<Candidate<A>, AggregateError> {
        let read = self
            .client
            .read_stream(
                snapshot_stream(stream),
                ReadOptions::backwards().max_count(1),
            )
            .await;
        let event = match read {
            Ok(events) => match events.collect_all().await {
                Ok(mut events) => events.pop(),
                Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => None,
                Err(error) => return Err(error.into()),
            },
            Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        let Some(event) = event else {
            return Ok(Candidate::None);
        };
        let header = match parse_snapshot_metadata(&event.metadata, A::SNAPSHOT_SCHEMA) {
            Some(header) if event.event_type == SNAPSHOT_EVENT_TYPE => header,
            _ => return Ok(Candidate::Ignored(SnapshotIgnored::Foreign)),
        };
        Ok(match A::from_snapshot(&event.data) {
            Ok(state) => Candidate::Usable {
                state,
                first: header.first,
                revision: header.revision,
            },
            Err(error) => Candidate::Ignored(SnapshotIgnored::Undecodable(error.to_string())),
        })
    }

    /// Loads from a snapshot folding revisions `first..=revision`: `first`
    /// must still be the stream's first readable revision, the events from
    /// `revision + 1` on must follow without a gap, and the stream must reach
    /// `revision`; else the reason to ignore the snapshot.
    async fn load_after(
        &self,
        stream: &str,
        state: A,
        first: u64,
        revision: u64,
    ) -> Result<Result<Loaded<A>, SnapshotIgnored>, AggregateError> {
        let now = self.edge(stream, ReadOptions::forwards()).await?;
        if now != Some(first) {
            return Ok(Err(SnapshotIgnored::Rebased { first, now }));
        }
        let used = |state, revision_now, replayed| {
            Ok(Ok(Loaded {
                state,
                revision: Some(revision_now),
                replayed,
                snapshot: SnapshotUse::Used { revision },
                first: Some(first),
            }))
        };
        match self.fold(stream, state, Some(revision)).await? {
            Fold::Missing => Ok(Err(SnapshotIgnored::PastHead {
                revision,
                head: None,
            })),
            Fold::Gap { next } => Ok(Err(SnapshotIgnored::Gap { revision, next })),
            Fold::Done {
                state,
                last: Some(last),
                replayed,
                ..
            } => used(state, last, replayed),
            Fold::Done {
                state, last: None, ..
            } => {
                // Nothing after the snapshot: valid only if the stream
                // reaches its revision. A head beyond it was appended after
                // the fold read: the state is still exact as of `revision`
                // (an append decided on it conflicts and reloads).
                match self.edge(stream, ReadOptions::backwards()).await? {
                    Some(head) if head >= revision => used(state, revision, 0),
                    head => Ok(Err(SnapshotIgnored::PastHead { revision, head })),
                }
            }
        }
    }

    /// The revision of the stream's first (forwards) or last (backwards)
    /// readable event; `None` when it has none.
    async fn edge(
        &self,
        stream: &str,
        options: ReadOptions,
    ) -> Result<Option<u64>, AggregateError> {
        let read = self.client.read_stream(stream, options.max_count(1)).await;
        match read {
            Ok(events) => match events.collect_all().await {
                Ok(events) => Ok(events.first().map(|event| event.revision)),
                Err(Error::StreamNotFound { .. }) => Ok(None),
                Err(error) => Err(error.into()),
            },
            Err(Error::StreamNotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Folds the events of `stream` after `after` (all when `None`) into
    /// `state`. With `after` the first event must be `after + 1`.
    async fn fold(
        &self,
        stream: &str,
        mut state: A,
        after: Option<u64>,
    ) -> Result<Fold<A>, AggregateError> {
        let options = match after {
            Some(revision) => ReadOptions::forwards().from(ReadFrom::At(revision + 1)),
            None => ReadOptions::forwards(),
        };
        let mut events = match self.client.read_stream(stream, options).await {
            Ok(events) => events,
            Err(Error::StreamNotFound { .. }) => return Ok(Fold::Missing),
            Err(error) => return Err(error.into()),
        };
        let mut first = None;
        let mut last = None;
        let mut replayed = 0u64;
        loop {
            let event = match events.next_event().await {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(Error::StreamNotFound { .. }) => return Ok(Fold::Missing),
                Err(error) => return Err(error.into()),
            };
            if replayed == 0
                && let Some(after) = after
                && event.revision != after + 1
            {
                return Ok(Fold::Gap {
                    next: event.revision,
                });
            }
            let decoded = A::decode(&event).map_err(|source| AggregateError::Decode {
                stream: stream.to_owned(),
                revision: event.revision,
                source,
            })?;
            state.apply(&decoded);
            first = first.or(Some(event.revision));
            last = Some(event.revision);
            replayed += 1;
        }
        Ok(Fold::Done {
            state,
            first,
            last,
            replayed,
        })
    }
}

/// The latest snapshot as read.
enum Candidate<A> {
    /// No snapshot.
    None,
    /// One that is not usable.
    Ignored(SnapshotIgnored),
    /// Decoded; still to be checked against the stream.
    Usable { state: A, first: u64, revision: u64 },
}

/// A short, growing, jittered pause between attempts, so competing writers
/// stop colliding.
async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 4);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// What a snapshot covers: the revisions `first..=revision` of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SnapshotHeader {
    first: u64,
    revision: u64,
}

/// A snapshot event's metadata: `{"revision":R,"first":F,"schema":"S"}`.
fn snapshot_metadata(header: &SnapshotHeader, schema: &str) -> Vec<u8> {
    format!(
        r#"{{"revision":{},"first":{},"schema":{}}}"#,
        header.revision,
        header.first,
        json_string(schema)
    )
    .into_bytes()
}

/// A snapshot event's header, when its metadata is exactly the form
/// [`snapshot_metadata`] writes for `schema` (anything else is foreign).
fn parse_snapshot_metadata(metadata: &[u8], schema: &str) -> Option<SnapshotHeader> {
    let text = std::str::from_utf8(metadata).ok()?;
    let rest = text.strip_prefix(r#"{"revision":"#)?;
    let (revision, rest) = leading_number(rest)?;
    let rest = rest.strip_prefix(r#","first":"#)?;
    let (first, rest) = leading_number(rest)?;
    let header = SnapshotHeader { first, revision };
    (rest == format!(r#","schema":{}}}"#, json_string(schema)) && first <= revision)
        .then_some(header)
}

/// The decimal number `text` starts with (no sign, no leading zero), and
/// the rest.
fn leading_number(text: &str) -> Option<(u64, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    Some((digits.parse().ok()?, rest))
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_metadata_round_trips_and_rejects_anything_else() {
        let header = SnapshotHeader {
            first: 3,
            revision: 42,
        };
        let metadata = snapshot_metadata(&header, "order/\"3\"");
        assert_eq!(
            std::str::from_utf8(&metadata).unwrap(),
            r#"{"revision":42,"first":3,"schema":"order/\"3\""}"#
        );
        assert_eq!(
            parse_snapshot_metadata(&metadata, "order/\"3\""),
            Some(header)
        );
        assert_eq!(parse_snapshot_metadata(&metadata, "order/3"), None);
        for foreign in [
            &b""[..],
            b"{}",
            br#"{"revision":,"first":0,"schema":"a"}"#,
            br#"{"revision":-1,"first":0,"schema":"a"}"#,
            br#"{"revision":01,"first":0,"schema":"a"}"#,
            br#"{"revision":1,"first":0,"schema":"a"} "#,
            br#"{"revision":1,"schema":"a"}"#,
            br#"{"revision":1,"first":2,"schema":"a"}"#,
            br#"{"revision":99999999999999999999999,"first":0,"schema":"a"}"#,
            br#"{ "revision":1,"first":0,"schema":"a"}"#,
            b"\xff",
        ] {
            assert_eq!(parse_snapshot_metadata(foreign, "a"), None, "{foreign:?}");
        }
        for header in [
            SnapshotHeader {
                first: 0,
                revision: 0,
            },
            SnapshotHeader {
                first: u64::MAX,
                revision: u64::MAX,
            },
        ] {
            assert_eq!(
                parse_snapshot_metadata(&snapshot_metadata(&header, "a"), "a"),
                Some(header)
            );
        }
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
