//! What a workload needs from a store, as a small trait, and Cairn's
//! implementation of it through `cairn-client`.
//!
//! The workloads of WORKLOAD.md are written against [`Target`] only, so a peer
//! (PostgreSQL, Redis Streams, NATS, UmaDB) can be measured with the same code
//! by implementing it: append with an expected revision, read `$all` and a
//! stream by page, subscribe to `$all`, one trivial round trip. Nothing here
//! knows about gRPC except [`Cairn`].

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use cairn_client::{
    AppendResult, AppendSession, Client, EventData, ExpectedRevision, ReadFrom, ReadOptions,
    SubscribeOptions, SubscriptionMessage,
};
use uuid::Uuid;

use crate::BoxError;
use crate::workload::EVENT_TYPE;

/// The expectation an append carries (WORKLOAD.md: every append has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl Expected {
    /// The expectation for a stream whose last revision is `last`.
    pub(crate) fn after(last: Option<u64>) -> Self {
        last.map_or(Self::NoStream, Self::Exact)
    }

    /// The stream's last revision after appending `count` events, if the
    /// expectation held.
    pub(crate) fn last_after(self, count: u64) -> u64 {
        match self {
            Self::NoStream => count - 1,
            Self::Exact(last) => last + count,
        }
    }
}

impl From<Expected> for ExpectedRevision {
    fn from(expected: Expected) -> Self {
        match expected {
            Expected::NoStream => Self::NoStream,
            Expected::Exact(revision) => Self::Exact(revision),
        }
    }
}

/// An event to append: type [`EVENT_TYPE`], no metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    /// Deterministic id.
    pub(crate) id: Uuid,
    /// The 256-byte JSON data.
    pub(crate) data: String,
}

/// An event as the store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    /// Its id.
    pub(crate) id: Uuid,
    /// Its stream.
    pub(crate) stream: String,
    /// Index within the stream, from 0.
    pub(crate) revision: u64,
    /// Index in `$all`, from 0, gap-free.
    pub(crate) position: u64,
    /// The data as written.
    pub(crate) data: Bytes,
}

/// What an acknowledged append reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// The stream's last revision now.
    pub(crate) last_revision: Option<u64>,
    /// `$all` positions of the first and last event written.
    pub(crate) positions: Option<(u64, u64)>,
}

impl From<AppendResult> for Appended {
    fn from(result: AppendResult) -> Self {
        Self {
            last_revision: result.current_revision,
            positions: result.positions,
        }
    }
}

/// Where a subscription to `$all` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeAt {
    /// From the first event ever written (catch-up, then live).
    Start,
    /// Only events written after the subscription is confirmed.
    End,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The store has registered the subscription: events written from now on
    /// will be delivered.
    Confirmed,
    /// An event.
    Event(StoredEvent),
    /// History delivered; live from here.
    CaughtUp,
}

/// An open subscription.
pub(crate) trait EventSubscription: Send {
    /// The next delivery; `None` when the store ended the subscription.
    fn next(&mut self) -> impl Future<Output = Result<Option<Delivery>, BoxError>> + Send;
}

/// A store the workloads can run against. One value is one connection.
pub(crate) trait Target: Sized + Send + Sync + 'static {
    /// A subscription of this store.
    type Subscription: EventSubscription;

    /// A new connection to the same store (W2's clients each own one).
    fn connect_another(&self) -> impl Future<Output = Result<Self, BoxError>> + Send;

    /// Appends `events` to `stream` atomically if `expected` holds; an
    /// expectation that does not hold is an error and writes nothing.
    fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, BoxError>> + Send;

    /// At most `max` events of `$all` from `position` on, in order.
    fn read_all(
        &self,
        position: u64,
        max: u64,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BoxError>> + Send;

    /// A whole stream from its first revision.
    fn read_stream(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, BoxError>> + Send;

    /// Subscribes to `$all`.
    fn subscribe_all(
        &self,
        from: SubscribeAt,
    ) -> impl Future<Output = Result<Self::Subscription, BoxError>> + Send;

    /// The cheapest call that goes to the store and back.
    fn round_trip(&self) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// Cairn, through `cairn-client`.
#[derive(Debug, Clone)]
pub(crate) struct Cairn {
    /// Where it listens, e.g. `http://127.0.0.1:7070`, for further connections.
    address: String,
    /// This connection.
    client: Client,
    /// With `--streaming`: every append goes over this one `AppendStream`
    /// call, and `connect_another` shares it (many logical clients, one
    /// connection, many appends in flight).
    session: Option<Arc<AppendSession>>,
}

impl Cairn {
    /// Connects to the server at `address`.
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        let client = Client::connect(address.to_owned()).await?;
        Ok(Self {
            address: address.to_owned(),
            client,
            session: None,
        })
    }

    /// Connects to the server at `address` and opens one streaming append
    /// call, which this target and every `connect_another` of it share.
    pub(crate) async fn connect_streaming(address: &str) -> Result<Self, BoxError> {
        let mut target = Self::connect(address).await?;
        target.session = Some(Arc::new(target.client.append_session().await?));
        Ok(target)
    }

    /// The underlying client, for Cairn-only calls (`info`).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

fn stored(event: cairn_client::RecordedEvent) -> StoredEvent {
    StoredEvent {
        id: event.id,
        stream: event.stream,
        revision: event.revision,
        position: event.position,
        data: event.data,
    }
}

impl Target for Cairn {
    type Subscription = CairnSubscription;

    async fn connect_another(&self) -> Result<Self, BoxError> {
        if self.session.is_some() {
            return Ok(self.clone());
        }
        Self::connect(&self.address).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, BoxError> {
        let events = events
            .into_iter()
            .map(|event| EventData::json_text(EVENT_TYPE, event.data).id(event.id))
            .collect();
        let result = match &self.session {
            Some(session) => session.append(stream, expected.into(), events).await?,
            None => self.client.append(stream, expected.into(), events).await?,
        };
        Ok(result.into())
    }

    async fn read_all(&self, position: u64, max: u64) -> Result<Vec<StoredEvent>, BoxError> {
        let options = ReadOptions::forwards()
            .from(ReadFrom::At(position))
            .max_count(max);
        let mut read = self.client.read_all(options).await?;
        let mut events = Vec::with_capacity(usize::try_from(max).unwrap_or(0).min(100_000));
        while let Some(event) = read.next_event().await? {
            events.push(stored(event));
        }
        Ok(events)
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, BoxError> {
        let mut read = self
            .client
            .read_stream(stream, ReadOptions::forwards().from(ReadFrom::Start))
            .await?;
        let mut events = Vec::new();
        while let Some(event) = read.next_event().await? {
            events.push(stored(event));
        }
        Ok(events)
    }

    async fn subscribe_all(&self, from: SubscribeAt) -> Result<CairnSubscription, BoxError> {
        let options = match from {
            SubscribeAt::Start => SubscribeOptions::from_start(),
            SubscribeAt::End => SubscribeOptions::from_end(),
        };
        let inner = self.client.subscribe("$all", options).await?;
        Ok(CairnSubscription { inner })
    }

    async fn round_trip(&self) -> Result<(), BoxError> {
        self.client.info().await?;
        Ok(())
    }
}

/// A Cairn subscription to `$all`.
#[derive(Debug)]
pub(crate) struct CairnSubscription {
    inner: cairn_client::Subscription,
}

impl EventSubscription for CairnSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        loop {
            let delivery = match self.inner.next_message().await? {
                None => return Ok(None),
                Some(SubscriptionMessage::Confirmed { .. }) => Delivery::Confirmed,
                Some(SubscriptionMessage::Event(event)) => Delivery::Event(stored(event)),
                Some(SubscriptionMessage::CaughtUp { .. }) => Delivery::CaughtUp,
                // Served from storage again: nothing is lost, keep reading.
                Some(
                    SubscriptionMessage::FellBehind { .. } | SubscriptionMessage::Checkpoint { .. },
                ) => continue,
            };
            return Ok(Some(delivery));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert_eq!(Expected::after(None), Expected::NoStream);
        assert_eq!(Expected::after(Some(4)), Expected::Exact(4));
        assert_eq!(Expected::NoStream.last_after(1), 0);
        assert_eq!(Expected::NoStream.last_after(100), 99);
        assert_eq!(Expected::Exact(99).last_after(100), 199);
    }
}
