//! NATS JetStream, through `async-nats`.
//!
//! One JetStream stream `CAIRN` (file storage) holds every event; the event
//! stream `s` is the subject `ev.s`, and the JetStream sequence minus one is
//! the global position. The expected revision becomes the header
//! `Nats-Expected-Last-Subject-Sequence`: the server rejects the message when
//! the subject's last sequence differs (0 = no message on the subject). So the
//! client must know the sequence of a stream's last event: each connection
//! remembers (revision, sequence) of the streams it wrote and asks the server
//! (last message by subject) for the others. The revision travels in a header,
//! `Cairn-Revision`, and the id in `Cairn-Id`.
//!
//! Limits of NATS 2.9 (Debian's): no atomic batch publish, so a batch of W3
//! is its first message published with the expectation (a mismatch writes
//! nothing), then the other 99 pipelined without one; a concurrent writer to
//! the same subject could interleave. And the file store never fsyncs per
//! message (acknowledged after the write to the OS): NOT durable.
//!
//! Live delivery (W6) is an ordered push consumer delivering new messages.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull, push};
use async_nats::jetstream::context::Context;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType, Stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use uuid::Uuid;

use crate::BoxError;
use crate::target::{
    Appended, Delivery, EventSubscription, Expected, NewEvent, StoredEvent, SubscribeAt, Target,
};

/// The JetStream stream that holds every event.
const STREAM: &str = "CAIRN";
/// Subjects are `ev.<stream>`.
const SUBJECT_PREFIX: &str = "ev.";
/// Header with the event's revision in its stream.
const REVISION_HEADER: &str = "Cairn-Revision";
/// Header with the event's id.
const ID_HEADER: &str = "Cairn-Id";

/// The subject of an event stream.
pub(crate) fn subject(stream: &str) -> String {
    format!("{SUBJECT_PREFIX}{stream}")
}

/// The last subject sequence to expect: `None` when the connection does not
/// know it and must ask the server. `known` is the (revision, sequence) of the
/// stream's last event as this connection wrote it.
pub(crate) fn expected_sequence(
    expected: Expected,
    known: Option<(u64, u64)>,
) -> Result<Option<u64>, String> {
    match (expected, known) {
        (Expected::NoStream, None) => Ok(Some(0)),
        (Expected::NoStream, Some((revision, _))) => Err(format!(
            "wrong expected version: the stream exists (revision {revision})"
        )),
        (Expected::Exact(want), Some((revision, sequence))) if want == revision => {
            Ok(Some(sequence))
        }
        (Expected::Exact(want), Some((revision, _))) => Err(format!(
            "wrong expected version: expected {want}, the stream is at {revision}"
        )),
        (Expected::Exact(_), None) => Ok(None),
    }
}

/// One NATS connection with its JetStream context.
pub(crate) struct Nats {
    address: String,
    client: async_nats::Client,
    jetstream: Context,
    stream: Stream,
    /// (revision, sequence) of the last event of each stream this connection
    /// wrote.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl Nats {
    /// Connects to `127.0.0.1:PORT`; creates the stream `CAIRN` if missing.
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        let client = async_nats::connect(address).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(Config {
                name: STREAM.to_owned(),
                subjects: vec![format!("{SUBJECT_PREFIX}>")],
                storage: StorageType::File,
                ..Config::default()
            })
            .await?;
        Ok(Self {
            address: address.to_owned(),
            client,
            jetstream,
            stream,
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

    fn remember(&self, stream: &str, revision: u64, sequence: u64) {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(stream.to_owned(), (revision, sequence));
    }

    /// (revision, sequence) of the last message on `subject`, from the server.
    async fn last_on(&self, subject: &str) -> Result<Option<(u64, u64)>, BoxError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => {
                let event = stored(
                    subject,
                    Some(&message.headers),
                    message.sequence,
                    message.payload,
                )?;
                Ok(Some((event.revision, message.sequence)))
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    fn message(event: NewEvent, revision: u64) -> PublishMessage {
        let mut headers = HeaderMap::new();
        headers.insert(REVISION_HEADER, revision.to_string().as_str());
        headers.insert(ID_HEADER, event.id.as_hyphenated().to_string().as_str());
        PublishMessage::build()
            .payload(Bytes::from(event.data))
            .headers(headers)
    }

    /// Reads `count` messages from an ordered consumer with `config`.
    async fn consume(
        &self,
        config: pull::OrderedConfig,
        count: u64,
    ) -> Result<Vec<StoredEvent>, BoxError> {
        let mut events = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        if count == 0 {
            return Ok(events);
        }
        let mut messages = self
            .stream
            .create_consumer(config)
            .await?
            .messages()
            .await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let info = message.info()?;
            events.push(stored(
                &message.subject,
                message.headers.as_ref(),
                info.stream_sequence,
                message.payload.clone(),
            )?);
            if events.len() as u64 == count {
                break;
            }
        }
        Ok(events)
    }
}

/// An event from its subject, headers, sequence and payload.
fn stored(
    subject: &str,
    headers: Option<&HeaderMap>,
    sequence: u64,
    payload: Bytes,
) -> Result<StoredEvent, BoxError> {
    let header = |name: &str| {
        headers
            .and_then(|headers| headers.get(name))
            .map(|value| value.as_str().to_owned())
            .ok_or_else(|| format!("message {sequence} has no {name} header"))
    };
    Ok(StoredEvent {
        id: Uuid::try_parse(&header(ID_HEADER)?)?,
        stream: subject
            .strip_prefix(SUBJECT_PREFIX)
            .unwrap_or(subject)
            .to_owned(),
        revision: header(REVISION_HEADER)?.parse()?,
        position: sequence - 1,
        data: payload,
    })
}

impl Target for Nats {
    type Subscription = NatsSubscription;

    async fn connect_another(&self) -> Result<Self, BoxError> {
        Self::connect(&self.address).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, BoxError> {
        let subject = subject(stream);
        let sequence =
            match expected_sequence(expected, self.known(stream))? {
                Some(sequence) => sequence,
                // Not written through this connection: ask the server, and check
                // the expectation against the revision it has.
                None => expected_sequence(expected, self.last_on(&subject).await?)?.ok_or_else(
                    || format!("wrong expected version: {stream} does not exist ({expected:?})"),
                )?,
            };
        let mut revision = match expected {
            Expected::NoStream => 0,
            Expected::Exact(last) => last + 1,
        };
        let mut events = events.into_iter();
        let first = events.next().ok_or("an append needs at least one event")?;
        let message = Self::message(first, revision).expected_last_subject_sequence(sequence);
        let ack = self
            .jetstream
            .send_publish(subject.clone(), message)
            .await?
            .await
            .map_err(|error| format!("appending to {stream} (expected {expected:?}): {error}"))?;
        let first_sequence = ack.sequence;
        let mut last_sequence = ack.sequence;
        let mut acks = Vec::new();
        for event in events {
            revision += 1;
            acks.push(
                self.jetstream
                    .send_publish(subject.clone(), Self::message(event, revision))
                    .await?,
            );
        }
        for ack in acks {
            last_sequence = ack.await?.sequence;
        }
        self.remember(stream, revision, last_sequence);
        Ok(Appended {
            last_revision: Some(revision),
            positions: Some((first_sequence - 1, last_sequence - 1)),
        })
    }

    async fn read_all(&self, position: u64, max: u64) -> Result<Vec<StoredEvent>, BoxError> {
        let head = self.stream.get_info().await?.state.last_sequence;
        let count = head.saturating_sub(position).min(max);
        let config = pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
            ..pull::OrderedConfig::default()
        };
        self.consume(config, count).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, BoxError> {
        let subject = subject(stream);
        let Some((last_revision, _)) = self.last_on(&subject).await? else {
            return Ok(Vec::new());
        };
        let count = last_revision + 1;
        let config = pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: DeliverPolicy::All,
            ..pull::OrderedConfig::default()
        };
        self.consume(config, count).await
    }

    async fn subscribe_all(&self, from: SubscribeAt) -> Result<NatsSubscription, BoxError> {
        let deliver_policy = match from {
            SubscribeAt::Start => DeliverPolicy::All,
            SubscribeAt::End => DeliverPolicy::New,
        };
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy,
                ..push::OrderedConfig::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        Ok(NatsSubscription {
            messages,
            confirmed: false,
        })
    }

    async fn round_trip(&self) -> Result<(), BoxError> {
        // A JetStream API request: the server answers with the account info.
        self.client.request("$JS.API.INFO", Bytes::new()).await?;
        Ok(())
    }
}

/// An ordered push consumer on `CAIRN`.
pub(crate) struct NatsSubscription {
    messages: push::Ordered,
    /// Whether `Confirmed` was handed out (the consumer exists once created).
    confirmed: bool,
}

impl EventSubscription for NatsSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        if !std::mem::replace(&mut self.confirmed, true) {
            return Ok(Some(Delivery::Confirmed));
        }
        let Some(message) = self.messages.next().await else {
            return Ok(None);
        };
        let message = message?;
        let info = message.info()?;
        Ok(Some(Delivery::Event(stored(
            &message.subject,
            message.headers.as_ref(),
            info.stream_sequence,
            message.payload.clone(),
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_become_subject_sequences() {
        assert_eq!(expected_sequence(Expected::NoStream, None), Ok(Some(0)));
        assert!(expected_sequence(Expected::NoStream, Some((0, 5))).is_err());
        assert_eq!(
            expected_sequence(Expected::Exact(3), Some((3, 17))),
            Ok(Some(17))
        );
        assert!(expected_sequence(Expected::Exact(2), Some((3, 17))).is_err());
        assert_eq!(expected_sequence(Expected::Exact(3), None), Ok(None));
        assert_eq!(subject("w1-0042"), "ev.w1-0042");
    }
}
