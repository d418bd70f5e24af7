//! UmaDB, a Rust gRPC event store (Dynamic Consistency Boundaries), through
//! `umadb-client`.
//!
//! UmaDB has no streams: one global sequence of events, each with tags, and an
//! append condition "fail if events matching this query exist after position
//! P". A stream is the tag `stream:<name>`; its expected revision becomes the
//! condition "no event tagged `stream:<name>` after the position of the
//! stream's last event" (no position: none at all, i.e. no stream yet). So the
//! client must know the global position of a stream's last event: each
//! connection remembers (revision, position) of the streams it wrote and reads
//! the stream's last event backwards for the others. The revision travels in
//! the event's metadata (`revision`). UmaDB's positions start at 1; the
//! benchmark's at 0.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::StreamExt as _;
use umadb_client::{AsyncUmaDbClient, UmaDbClient};
use umadb_dcb::{
    DcbAppendCondition, DcbEvent, DcbEventStoreAsync as _, DcbQuery, DcbQueryItem,
    DcbSequencedEvent, DcbSubscriptionAsync,
};
use uuid::Uuid;

use crate::BoxError;
use crate::target::{
    Appended, Delivery, EventSubscription, Expected, NewEvent, StoredEvent, SubscribeAt, Target,
};
use crate::workload::EVENT_TYPE;

/// Metadata key of the revision.
const REVISION: &str = "revision";

/// The tag of an event stream.
pub(crate) fn stream_tag(stream: &str) -> String {
    format!("stream:{stream}")
}

/// The append condition's `after` for `expected`, given the stream's last
/// event as (revision, UmaDB position) if it has one; `Err` when the
/// expectation is already known to be wrong.
pub(crate) fn condition_after(
    expected: Expected,
    last: Option<(u64, u64)>,
) -> Result<Option<u64>, String> {
    match (expected, last) {
        (Expected::NoStream, None) => Ok(None),
        (Expected::Exact(want), Some((revision, position))) if want == revision => {
            Ok(Some(position))
        }
        (expected, last) => Err(format!(
            "wrong expected version: expected {expected:?}, the stream's last event is {last:?}"
        )),
    }
}

fn query(stream: &str) -> DcbQuery {
    DcbQuery {
        items: vec![DcbQueryItem {
            types: Vec::new(),
            tags: vec![stream_tag(stream)],
        }],
    }
}

/// One UmaDB connection.
pub(crate) struct Umadb {
    address: String,
    client: AsyncUmaDbClient,
    /// (revision, position) of the last event of each stream this connection
    /// wrote.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl Umadb {
    /// Connects to `http://127.0.0.1:PORT`.
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        let client = UmaDbClient::new(address.to_owned()).connect_async().await?;
        Ok(Self {
            address: address.to_owned(),
            client,
            last: Mutex::new(HashMap::new()),
        })
    }

    fn known(&self, stream: &str) -> Option<(u64, u64)> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(stream)
            .copied()
    }

    /// (revision, position) of the stream's last event, from the server.
    async fn last_on(&self, stream: &str) -> Result<Option<(u64, u64)>, BoxError> {
        let mut read = self
            .client
            .read(Some(query(stream)), None, true, Some(1))
            .await?;
        match read.next().await {
            None => Ok(None),
            Some(event) => {
                let event = stored(event?)?;
                Ok(Some((event.revision, event.position + 1)))
            }
        }
    }

    async fn collect(
        &self,
        query: Option<DcbQuery>,
        start: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<StoredEvent>, BoxError> {
        let mut read = self.client.read(query, start, false, limit).await?;
        let mut events = Vec::new();
        while let Some(event) = read.next().await {
            events.push(stored(event?)?);
        }
        Ok(events)
    }
}

/// An UmaDB event as a [`StoredEvent`].
fn stored(sequenced: DcbSequencedEvent) -> Result<StoredEvent, BoxError> {
    let event = sequenced.event;
    let stream = event
        .tags
        .iter()
        .find_map(|tag| tag.strip_prefix("stream:"))
        .ok_or_else(|| format!("event at {} has no stream tag", sequenced.position))?
        .to_owned();
    let revision = event
        .metadata
        .iter()
        .find(|(key, _)| key == REVISION)
        .ok_or_else(|| format!("event at {} has no revision", sequenced.position))?
        .1
        .parse()?;
    Ok(StoredEvent {
        id: event.uuid.unwrap_or_else(Uuid::nil),
        stream,
        revision,
        position: sequenced
            .position
            .checked_sub(1)
            .ok_or("UmaDB position 0")?,
        data: Bytes::from(event.data),
    })
}

impl Target for Umadb {
    type Subscription = UmadbSubscription;

    async fn connect_another(&self) -> Result<Self, BoxError> {
        Self::connect(&self.address).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, BoxError> {
        let last = match self.known(stream) {
            Some(last) => Some(last),
            None if expected == Expected::NoStream => None,
            None => self.last_on(stream).await?,
        };
        let after = condition_after(expected, last)?;
        let first_revision = match expected {
            Expected::NoStream => 0,
            Expected::Exact(last) => last + 1,
        };
        let count = events.len() as u64;
        let tag = stream_tag(stream);
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| DcbEvent {
                event_type: EVENT_TYPE.to_owned(),
                tags: vec![tag.clone()],
                data: event.data.into_bytes(),
                uuid: Some(event.id),
                metadata: vec![(REVISION.to_owned(), (first_revision + i as u64).to_string())],
            })
            .collect();
        let condition = DcbAppendCondition {
            fail_if_events_match: query(stream),
            after,
        };
        let position = self
            .client
            .append(events, Some(condition), None)
            .await
            .map_err(|error| format!("appending to {stream} (expected {expected:?}): {error}"))?;
        let last_revision = first_revision + count - 1;
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stream.to_owned(), (last_revision, position));
        Ok(Appended {
            last_revision: Some(last_revision),
            positions: Some((position - count, position - 1)),
        })
    }

    async fn read_all(&self, position: u64, max: u64) -> Result<Vec<StoredEvent>, BoxError> {
        self.collect(None, Some(position + 1), Some(u32::try_from(max)?))
            .await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, BoxError> {
        self.collect(Some(query(stream)), None, None).await
    }

    async fn subscribe_all(&self, from: SubscribeAt) -> Result<UmadbSubscription, BoxError> {
        let after = match from {
            SubscribeAt::Start => None,
            SubscribeAt::End => self.client.head().await?,
        };
        let inner = self.client.subscribe(None, after).await?;
        Ok(UmadbSubscription {
            inner,
            confirmed: false,
        })
    }

    async fn round_trip(&self) -> Result<(), BoxError> {
        self.client.head().await?;
        Ok(())
    }
}

/// An UmaDB subscription to every event.
pub(crate) struct UmadbSubscription {
    inner: Box<dyn DcbSubscriptionAsync + Send + 'static>,
    /// Whether `Confirmed` was handed out (the `after` position fixes where
    /// delivery starts, so nothing written after it is missed).
    confirmed: bool,
}

impl EventSubscription for UmadbSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        if !std::mem::replace(&mut self.confirmed, true) {
            return Ok(Some(Delivery::Confirmed));
        }
        match self.inner.next().await {
            None => Ok(None),
            Some(event) => Ok(Some(Delivery::Event(stored(event?)?))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_become_conditions() {
        assert_eq!(condition_after(Expected::NoStream, None), Ok(None));
        assert!(condition_after(Expected::NoStream, Some((0, 3))).is_err());
        assert_eq!(
            condition_after(Expected::Exact(4), Some((4, 90))),
            Ok(Some(90))
        );
        assert!(condition_after(Expected::Exact(4), Some((5, 91))).is_err());
        assert!(condition_after(Expected::Exact(0), None).is_err());
        assert_eq!(stream_tag("w1-0001"), "stream:w1-0001");
    }
}
