//! `cairn-client`: a thin, typed Rust client for Cairn.
//!
//! ```no_run
//! use cairn_client::{Client, EventData, ExpectedRevision, ReadOptions};
//! use futures_core::Stream;
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! let placed = EventData::json_text("OrderPlaced", r#"{"sku":"tea"}"#);
//! let result = client.append("order-1", ExpectedRevision::NoStream, vec![placed]).await?;
//! assert_eq!(result.current_revision, Some(0));
//! let events = client.read_stream("order-1", ReadOptions::forwards()).await?.collect_all().await?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok(()) }
//! ```
//!
//! **Retries are safe.** Every event carries an id; appending the same events (same
//! ids, same stream, same expectation) again after a timeout or a dropped
//! connection returns the original result (`idempotent_replay == true`) instead of
//! writing twice. Keep the ids when you retry.
//!
//! **Clusters.** [`ClientBuilder::seeds`] (or [`Client::connect_cluster`])
//! gives several nodes' addresses; the client then sends every call to the
//! node it uses now and moves to the leader when a write is refused
//! ([`Error::NotLeader`]) or its node goes away ([`Error::Unavailable`],
//! [`Error::Connect`]), retrying the write until
//! [`ClientBuilder::failover_deadline`] (10 s by default). Each retry is the
//! exact request (same event ids, same expected revision, same condition): if
//! the first attempt was committed before the leader went away, the retry
//! returns its original result with `idempotent_replay == true`; if not, the
//! retry writes it once. Errors that are answers (`WrongExpectedRevision`,
//! `AppendConditionFailed`, ...) are never retried. A caller that retries
//! such a write itself must also keep its event ids: a new id per attempt is
//! a new event, and may be written twice.
//!
//! ```no_run
//! use cairn_client::{Client, EventData, ExpectedRevision};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = Client::connect_cluster([
//!     "http://node-1:7070",
//!     "http://node-2:7070",
//!     "http://node-3:7070",
//! ])
//! .await?;
//! let shipped = EventData::json_text("OrderShipped", r#"{"by":"post"}"#);
//! let result = client.append("order-1", ExpectedRevision::Any, vec![shipped]).await?;
//! // True when an attempt that failed over had already been committed.
//! let _retried = result.idempotent_replay;
//! # Ok(()) }
//! ```
//!
//! This crate only speaks the gRPC protocol (`cairn-proto`); it never sees the
//! storage engine.

mod aggregate;
mod append_stream;
mod builder;
mod cluster;
mod dcb;
mod error;
mod leader;
mod operations;
mod persistent;
mod subscription;
mod transport;
mod types;
mod users;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_proto::v1 as pb;
use cairn_proto::v1::cluster_client::ClusterClient;
use cairn_proto::v1::operations_client::OperationsClient;
use cairn_proto::v1::persistent_subscriptions_client::PersistentSubscriptionsClient;
use cairn_proto::v1::server_client::ServerClient;
use cairn_proto::v1::streams_client::StreamsClient;
use cairn_proto::v1::subscriptions_client::SubscriptionsClient;
use cairn_proto::v1::users_client::UsersClient;
use futures_core::Stream;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use transport::{Route, Transport};

pub use aggregate::{
    Aggregate, AggregateError, CodecError, Executed, Loaded, Repository, RepositoryOptions,
    SNAPSHOT_EVENT_TYPE, SNAPSHOT_STREAM_PREFIX, SnapshotIgnored, SnapshotUse, snapshot_stream,
};
pub use append_stream::{AppendAnswer, AppendSession};
pub use builder::ClientBuilder;
pub use cluster::{ClusterMember, ClusterMemberKind, ClusterRole, ClusterStatus, NewClusterNode};
pub use dcb::{AppendCondition, Decided, Decider, Decision, Query, QueryItem};
pub use error::{Error, Result};
pub use leader::DEFAULT_FAILOVER_DEADLINE;
pub use operations::{BackupInfo, ScavengeReport, ScavengeState, ScavengeStatus};
pub use persistent::{
    Consumer, ConsumerInfo, Delivery, GroupInfo, GroupOptions, GroupSettings, GroupStart,
    NackAction, Strategy,
};
pub use subscription::{
    ResilientSubscription, SubscribeFrom, SubscribeOptions, Subscription, SubscriptionMessage,
};
pub use types::{
    AppendResult, Direction, EventData, ExpectedRevision, Filter, ReadFrom, ReadOptions,
    RecordedEvent, ServerInfo, StreamInfo, StreamMetadata, StreamPage, StreamState,
};
pub use users::{CreatedToken, NewToken, NewUser, TokenDetails, UserDetails, UserUpdate, WhoAmI};

/// Largest message the client sends or accepts.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A connection to a Cairn server. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct Client {
    streams: StreamsClient<Transport>,
    subscriptions: SubscriptionsClient<Transport>,
    persistent: PersistentSubscriptionsClient<Transport>,
    server: ServerClient<Transport>,
    health: HealthClient<Transport>,
    users: UsersClient<Transport>,
    operations: OperationsClient<Transport>,
    cluster: ClusterClient<Transport>,
    /// Cluster mode (built with seeds): the node in use and how writes move
    /// to the leader; `None` for one address, whose calls are never retried.
    follow: Option<Arc<leader::Follow>>,
}

/// One stream's part of an atomic multi-stream append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    /// Target stream.
    pub stream: String,
    /// Expectation for this stream.
    pub expected: ExpectedRevision,
    /// Events.
    pub events: Vec<EventData>,
}

impl StreamAppend {
    /// A part.
    pub fn new(
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Self {
        Self {
            stream: stream.into(),
            expected,
            events,
        }
    }

    fn into_proto(self) -> pb::AppendRequest {
        pb::AppendRequest {
            stream: self.stream,
            expected: Some(self.expected.into()),
            events: self.events.into_iter().map(EventData::into_proto).collect(),
            condition: None,
        }
    }
}

impl Client {
    /// Connects to `address`, e.g. `http://127.0.0.1:7070`.
    ///
    /// The client holds one HTTP/2 connection (with TCP_NODELAY) and opens it
    /// again on the first call after it closed (a server restart, say); a call
    /// made while the server is away fails with [`Error::Unavailable`] and is
    /// not retried here.
    ///
    /// An `https://` address uses TLS trusting the system's CAs, without
    /// credentials; [`Client::builder`] sets a CA file, a client certificate,
    /// a user and password or a token.
    pub async fn connect(address: impl Into<String>) -> Result<Self> {
        Self::builder(address).connect().await
    }

    /// Connects to a cluster through `seeds` (`http://host:port` or
    /// `https://host:port`, one scheme for all), as
    /// [`ClientBuilder::seeds`]: writes follow the leader and are retried
    /// exactly (same event ids) while it changes. Use [`Client::builder`] with
    /// [`ClientBuilder::seeds`] for TLS options or credentials.
    pub async fn connect_cluster<S: Into<String>>(
        seeds: impl IntoIterator<Item = S>,
    ) -> Result<Self> {
        let mut seeds = seeds.into_iter().map(Into::into);
        let first = seeds
            .next()
            .ok_or_else(|| Error::Connect("a cluster client needs at least one seed".into()))?;
        Self::builder(first).seeds(seeds).connect().await
    }

    /// Starts a connection with options: TLS (CA file, client certificate)
    /// and credentials sent with every call.
    pub fn builder(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(address.into())
    }

    /// Wraps an existing tonic channel (for TLS, timeouts or load balancing
    /// set up by the caller).
    pub fn from_channel(channel: Channel) -> Self {
        Self::over(Transport::new(Route::Channel(channel), None), None)
    }

    /// The service clients over `transport`; `origin` (scheme and authority)
    /// is set on every request when the transport does not add it itself.
    fn over(transport: Transport, origin: Option<http::Uri>) -> Self {
        macro_rules! service {
            ($client:ident) => {
                match &origin {
                    Some(origin) => $client::with_origin(transport.clone(), origin.clone()),
                    None => $client::new(transport.clone()),
                }
            };
        }
        Self {
            streams: service!(StreamsClient)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            subscriptions: service!(SubscriptionsClient)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            persistent: service!(PersistentSubscriptionsClient)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            server: service!(ServerClient),
            health: service!(HealthClient),
            users: service!(UsersClient).max_decoding_message_size(MAX_MESSAGE_BYTES),
            operations: service!(OperationsClient),
            cluster: service!(ClusterClient),
            follow: None,
        }
    }

    /// Appends `events` to `stream` if `expected` holds. On a cluster client
    /// it goes to the leader and is retried exactly while the leader changes
    /// (see the crate docs).
    pub async fn append(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let request = StreamAppend::new(stream, expected, events).into_proto();
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.append(request).await
            })
            .await?;
        Ok(response.into())
    }

    /// Appends to several streams atomically (all parts or none).
    pub async fn append_multi(&self, parts: Vec<StreamAppend>) -> Result<Vec<AppendResult>> {
        self.append_multi_if(parts, None).await
    }

    /// Reads `source`: a stream, `$all`, `$ce-<category>` or `$et-<type>`.
    pub async fn read(
        &self,
        source: impl Into<String>,
        options: ReadOptions,
    ) -> Result<EventStream> {
        self.read_request(source.into(), options, None).await
    }

    /// Reads `stream` (a name), or with `query` the events matching it
    /// (`stream` empty); `options.from` is a revision only for a stream name.
    async fn read_request(
        &self,
        stream: String,
        options: ReadOptions,
        query: Option<pb::Query>,
    ) -> Result<EventStream> {
        let by_revision = query.is_none() && is_stream_name(&stream);
        let from = match options.from {
            ReadFrom::Default => None,
            ReadFrom::Start => Some(pb::read_request::From::Start(())),
            ReadFrom::End => Some(pb::read_request::From::End(())),
            ReadFrom::At(at) if by_revision => Some(pb::read_request::From::Revision(at)),
            ReadFrom::At(at) => Some(pb::read_request::From::Position(at)),
        };
        let request = pb::ReadRequest {
            stream,
            direction: match options.direction {
                Direction::Forwards => pb::Direction::Forwards as i32,
                Direction::Backwards => pb::Direction::Backwards as i32,
            },
            from,
            max_count: options.max_count.unwrap_or(0),
            filter: options.filter.map(filter_to_proto),
            query,
            min_position: options.min_position,
        };
        let response = self.streams.clone().read(request).await?;
        Ok(EventStream {
            inner: response.into_inner(),
            buffered: Vec::new().into_iter(),
            next: None,
            consistent_through: None,
            done: false,
        })
    }

    /// Reads one stream (by revision).
    pub async fn read_stream(
        &self,
        stream: impl Into<String>,
        options: ReadOptions,
    ) -> Result<EventStream> {
        self.read(stream, options).await
    }

    /// Reads `$all` (by position).
    pub async fn read_all(&self, options: ReadOptions) -> Result<EventStream> {
        self.read("$all", options).await
    }

    /// Reads a category: every stream named `<category>-...` (by position).
    pub async fn read_category(&self, category: &str, options: ReadOptions) -> Result<EventStream> {
        self.read(format!("$ce-{category}"), options).await
    }

    /// Reads every event of one type (by position).
    pub async fn read_type(&self, event_type: &str, options: ReadOptions) -> Result<EventStream> {
        self.read(format!("$et-{event_type}"), options).await
    }

    /// Soft-deletes a stream; returns the revision it had.
    pub async fn delete(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
    ) -> Result<Option<u64>> {
        let request = pb::DeleteRequest {
            stream: stream.into(),
            expected: Some(expected.into()),
        };
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.delete(request).await
            })
            .await?;
        Ok(response.deleted_at_revision)
    }

    /// Tombstones a stream: it can never be used again.
    pub async fn tombstone(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
    ) -> Result<Option<u64>> {
        let request = pb::DeleteRequest {
            stream: stream.into(),
            expected: Some(expected.into()),
        };
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.tombstone(request).await
            })
            .await?;
        Ok(response.deleted_at_revision)
    }

    /// A stream's state and metadata.
    pub async fn get_stream_metadata(&self, stream: impl Into<String>) -> Result<StreamInfo> {
        let request = pb::GetStreamMetadataRequest {
            stream: stream.into(),
        };
        Ok(self
            .streams
            .clone()
            .get_stream_metadata(request)
            .await?
            .into_inner()
            .into())
    }

    /// Replaces a stream's metadata; `expected` applies to the metadata revision.
    /// Returns the new metadata revision.
    pub async fn set_stream_metadata(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        metadata: StreamMetadata,
    ) -> Result<u64> {
        let request = pb::SetStreamMetadataRequest {
            stream: stream.into(),
            expected: Some(expected.into()),
            metadata: Some(metadata.into()),
        };
        let response = self
            .on_leader(request, |mut streams, request| async move {
                streams.set_stream_metadata(request).await
            })
            .await?;
        Ok(response.metadata_revision)
    }

    /// One page of streams whose name starts with `prefix`, after `after`.
    pub async fn list_streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<StreamPage> {
        let request = pb::ListStreamsRequest {
            prefix: prefix.to_owned(),
            after: after.unwrap_or_default().to_owned(),
            limit,
        };
        let response = self
            .streams
            .clone()
            .list_streams(request)
            .await?
            .into_inner();
        Ok(StreamPage {
            streams: response.streams.into_iter().map(StreamInfo::from).collect(),
            next_after: response.next_after,
        })
    }

    /// Server version, head and counts.
    pub async fn info(&self) -> Result<ServerInfo> {
        Ok(self.server.clone().info(()).await?.into_inner())
    }

    /// Whether the server is serving (`grpc.health.v1`, overall status): false
    /// while it is shutting down.
    pub async fn is_serving(&self) -> Result<bool> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus;
        let response = self
            .health
            .clone()
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        Ok(response.into_inner().status() == ServingStatus::Serving)
    }
}

/// Whether `source` names one stream (read by revision) rather than an index
/// (`$all`, `$ce-...`, `$et-...`, read by position). `$snapshot-...` and
/// `$sys-...` are streams.
fn is_stream_name(source: &str) -> bool {
    !(source == "$all" || source.starts_with("$ce-") || source.starts_with("$et-"))
}

fn filter_to_proto(filter: Filter) -> pb::ReadFilter {
    pb::ReadFilter {
        stream_prefixes: filter.stream_prefixes,
        stream_regex: filter.stream_regex.unwrap_or_default(),
        type_prefixes: filter.type_prefixes,
        type_regex: filter.type_regex.unwrap_or_default(),
    }
}

/// The events of a read, one at a time, as the server streams them in batches.
pub struct EventStream {
    inner: tonic::Streaming<pb::ReadResponse>,
    /// The current response's remaining events; taken whole from the response
    /// (no copy into another queue).
    buffered: std::vec::IntoIter<pb::RecordedEvent>,
    next: Option<u64>,
    /// The last `consistent_through` the server reported.
    consistent_through: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("buffered", &self.buffered.len())
            .field("done", &self.done)
            .finish()
    }
}

impl EventStream {
    /// Where a follow-up read would continue (revision or position), as last
    /// reported by the server; `None` once the read reached the end.
    pub fn next_from(&self) -> Option<u64> {
        self.next
    }

    /// The last position that existed when the server read the latest batch
    /// (`None` before the first batch, or while the store is empty). Once a
    /// forwards read is drained, it has shown every matching event up to
    /// here: a DCB decision's condition position.
    pub fn consistent_through(&self) -> Option<u64> {
        self.consistent_through
    }

    /// The next event, or `None` at the end.
    pub async fn next_event(&mut self) -> Result<Option<RecordedEvent>> {
        std::future::poll_fn(|context| Pin::new(&mut *self).poll_next(context))
            .await
            .transpose()
    }

    /// Collects every remaining event.
    pub async fn collect_all(mut self) -> Result<Vec<RecordedEvent>> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await? {
            events.push(event);
        }
        Ok(events)
    }
}

impl Stream for EventStream {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.buffered.next() {
                return Poll::Ready(Some(RecordedEvent::from_proto(event)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_next(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                }
                Poll::Ready(Some(Err(status))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(status.into())));
                }
                Poll::Ready(Some(Ok(response))) => {
                    self.next = response.next;
                    if response.consistent_through.is_some() {
                        self.consistent_through = response.consistent_through;
                    }
                    self.buffered = response.events.into_iter();
                }
            }
        }
    }
}
