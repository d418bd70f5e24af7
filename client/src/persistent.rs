//! Persistent subscriptions (consumer groups): the server remembers where a
//! group is, shares its events among the connected consumers, redelivers what is
//! not acked in time, and parks what keeps failing.
//!
//! ```no_run
//! use cairn_client::{Client, GroupOptions, NackAction};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.create_group("billing", "$ce-order", GroupOptions::default()).await?;
//! let mut consumer = client.consume("billing", "billing-1", 0).await?;
//! while let Some(delivery) = consumer.next().await? {
//!     if delivery.event.event_type == "OrderPlaced" {
//!         delivery.ack().await?;
//!     } else {
//!         delivery.nack(NackAction::Skip, "not for billing").await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at-least-once: after a timeout, a nack with
//! [`NackAction::Retry`], a consumer's disconnect, or a server restart (events
//! acked after the group's last checkpoint write), an event comes again. Make
//! handlers idempotent.

use std::time::Duration;

use cairn_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use crate::{Client, Error, Filter, RecordedEvent, Result, filter_to_proto};

/// Acks and nacks queued per consumer before `ack` waits.
const ACK_BUFFER: usize = 1024;

/// How a group shares events among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each event to the next consumer with room.
    #[default]
    RoundRobin,
    /// Every event to the longest-connected consumer; the others stand by.
    DispatchToSingle,
    /// All events of a stream to one consumer, one at a time, in stream order.
    PinnedByStream,
}

/// A group's tunables. `None` takes the server default on create and keeps the
/// current value on update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// Default round-robin.
    pub strategy: Option<Strategy>,
    /// Deliveries after the first before an event is parked (default 10).
    pub max_retries: Option<u32>,
    /// Redelivery after this long without an ack (default 30 s).
    pub message_timeout: Option<Duration>,
    /// Most unacknowledged events per consumer (default 64).
    pub max_in_flight_per_consumer: Option<u32>,
    /// Write the checkpoint after this many finished events (default 100)...
    pub checkpoint_after_events: Option<u32>,
    /// ...or this long after progress (default 1 s).
    pub checkpoint_after: Option<Duration>,
    /// Most consumers connected at once (default 0: only the server's limit).
    pub max_consumers: Option<u32>,
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

impl GroupSettings {
    fn into_proto(self) -> pb::GroupSettings {
        let strategy = match self.strategy {
            None => pb::DeliveryStrategy::Unspecified,
            Some(Strategy::RoundRobin) => pb::DeliveryStrategy::RoundRobin,
            Some(Strategy::DispatchToSingle) => pb::DeliveryStrategy::DispatchToSingle,
            Some(Strategy::PinnedByStream) => pb::DeliveryStrategy::PinnedByStream,
        };
        pb::GroupSettings {
            strategy: strategy.into(),
            max_retries: self.max_retries,
            message_timeout_ms: self.message_timeout.map(millis),
            max_in_flight_per_consumer: self.max_in_flight_per_consumer,
            checkpoint_after_events: self.checkpoint_after_events,
            checkpoint_after_ms: self.checkpoint_after.map(millis),
            max_consumers: self.max_consumers,
        }
    }

    fn from_proto(settings: pb::GroupSettings) -> Self {
        let strategy = match pb::DeliveryStrategy::try_from(settings.strategy) {
            Ok(pb::DeliveryStrategy::DispatchToSingle) => Strategy::DispatchToSingle,
            Ok(pb::DeliveryStrategy::PinnedByStream) => Strategy::PinnedByStream,
            _ => Strategy::RoundRobin,
        };
        let duration = |ms: Option<u32>| ms.map(|ms| Duration::from_millis(u64::from(ms)));
        Self {
            strategy: Some(strategy),
            max_retries: settings.max_retries,
            message_timeout: duration(settings.message_timeout_ms),
            max_in_flight_per_consumer: settings.max_in_flight_per_consumer,
            checkpoint_after_events: settings.checkpoint_after_events,
            checkpoint_after: duration(settings.checkpoint_after_ms),
            max_consumers: settings.max_consumers,
        }
    }
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupStart {
    /// The first event of the source.
    #[default]
    Beginning,
    /// Events committed after the group is created.
    End,
    /// After this revision (stream groups) or position (others), exclusive.
    After(u64),
}

/// How to create a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupOptions {
    /// Where it starts.
    pub start: GroupStart,
    /// `$all` groups: which events they receive.
    pub filter: Option<Filter>,
    /// Tunables.
    pub settings: GroupSettings,
}

/// A group's definition and live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Name.
    pub group: String,
    /// Source: a stream, `$ce-...`, `$et-...` or `$all`.
    pub stream: String,
    /// Settings in effect (every field set).
    pub settings: GroupSettings,
    /// Position of the checkpoint: every event up to it was acked, skipped or parked.
    pub checkpoint_position: Option<u64>,
    /// Stream groups: the checkpoint's revision.
    pub checkpoint_revision: Option<u64>,
    /// Events with consumers, not yet acked.
    pub in_flight: u64,
    /// Events waiting for a consumer with room.
    pub waiting: u64,
    /// Parked events not yet replayed.
    pub parked: u64,
    /// Deliveries so far (since the server started).
    pub delivered_total: u64,
    /// Acks so far.
    pub acked_total: u64,
    /// Retries so far.
    pub retried_total: u64,
    /// Events parked so far.
    pub parked_total: u64,
    /// Connected consumers.
    pub consumers: Vec<ConsumerInfo>,
}

/// A connected consumer's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Assigned by the server.
    pub consumer_id: String,
    /// Given by the consumer.
    pub name: String,
    /// Its in-flight limit.
    pub max_in_flight: u32,
    /// Events it holds now.
    pub in_flight: u64,
    /// Events sent to it.
    pub delivered: u64,
    /// Its acks.
    pub acked: u64,
    /// Its nacks.
    pub nacked: u64,
}

impl GroupInfo {
    fn from_proto(info: pb::GroupInfo) -> Self {
        Self {
            group: info.group,
            stream: info.stream,
            settings: GroupSettings::from_proto(info.settings.unwrap_or_default()),
            checkpoint_position: info.checkpoint_position,
            checkpoint_revision: info.checkpoint_revision,
            in_flight: info.in_flight,
            waiting: info.waiting,
            parked: info.parked,
            delivered_total: info.delivered_total,
            acked_total: info.acked_total,
            retried_total: info.retried_total,
            parked_total: info.parked_total,
            consumers: info
                .consumers
                .into_iter()
                .map(|consumer| ConsumerInfo {
                    consumer_id: consumer.consumer_id,
                    name: consumer.name,
                    max_in_flight: consumer.max_in_flight,
                    in_flight: consumer.in_flight,
                    delivered: consumer.delivered,
                    acked: consumer.acked,
                    nacked: consumer.nacked,
                })
                .collect(),
        }
    }
}

/// What to do with an event instead of acking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Deliver it again (to any consumer); counts as a retry, and an event out
    /// of retries is parked.
    Retry,
    /// Park it now (replay it later with [`Client::replay_parked`]).
    Park,
    /// Drop it: it counts as processed.
    Skip,
    /// Give it and every other event this consumer holds back, without a
    /// retry, and end this consumer.
    Stop,
}

impl NackAction {
    fn into_proto(self) -> pb::NackAction {
        match self {
            NackAction::Retry => pb::NackAction::Retry,
            NackAction::Park => pb::NackAction::Park,
            NackAction::Skip => pb::NackAction::Skip,
            NackAction::Stop => pb::NackAction::Stop,
        }
    }
}

/// One member of a group. Events arrive with [`Consumer::next`]; answer each
/// with [`Delivery::ack`] or [`Delivery::nack`]. [`Consumer::close`] leaves the
/// group after the server has every ack sent so far; dropping the consumer
/// leaves at once, and acks still on the way may be lost (their events are
/// delivered again: at-least-once). Either way, the events it holds go to the
/// others.
pub struct Consumer {
    id: String,
    max_in_flight: u32,
    responses: tonic::Streaming<pb::ConsumeResponse>,
    requests: mpsc::Sender<pb::ConsumeRequest>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// An event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: RecordedEvent,
    /// 0 on the first delivery.
    pub retry_count: u32,
    requests: mpsc::Sender<pb::ConsumeRequest>,
}

/// The call's next message; `None` once it ended OK, or ended with the
/// `CONSUMER_STOPPED` status that answers this consumer's own STOP nack.
async fn next_response(
    responses: &mut tonic::Streaming<pb::ConsumeResponse>,
) -> Result<Option<pb::ConsumeResponse>> {
    use tonic_types::StatusExt;
    match responses.message().await {
        Ok(message) => Ok(message),
        Err(status)
            if status
                .get_details_error_info()
                .is_some_and(|info| info.reason == cairn_proto::reason::CONSUMER_STOPPED) =>
        {
            Ok(None)
        }
        Err(status) => Err(status.into()),
    }
}

async fn send(
    requests: &mpsc::Sender<pb::ConsumeRequest>,
    content: pb::consume_request::Content,
) -> Result<()> {
    requests
        .send(pb::ConsumeRequest {
            content: Some(content),
        })
        .await
        .map_err(|_| Error::Unavailable("the consumer's call has ended".into()))
}

impl Delivery {
    /// Marks the event processed.
    pub async fn ack(&self) -> Result<()> {
        send(
            &self.requests,
            pb::consume_request::Content::Ack(pb::Ack {
                event_ids: vec![self.event.id.to_string()],
            }),
        )
        .await
    }

    /// Gives the event back with `action`; `reason` is kept if it gets parked.
    pub async fn nack(&self, action: NackAction, reason: impl Into<String>) -> Result<()> {
        send(
            &self.requests,
            pb::consume_request::Content::Nack(pb::Nack {
                event_ids: vec![self.event.id.to_string()],
                action: action.into_proto().into(),
                reason: reason.into(),
            }),
        )
        .await
    }
}

impl Consumer {
    /// The id the server gave this consumer.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The in-flight limit in effect.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight
    }

    /// The next event; `Ok(None)` when the call ended without an error, or
    /// as this consumer asked with [`NackAction::Stop`].
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        use pb::consume_response::Content;
        loop {
            let Some(response) = next_response(&mut self.responses).await? else {
                return Ok(None);
            };
            if let Some(Content::Event(event)) = response.content {
                let Some(recorded) = event.event else {
                    continue;
                };
                return Ok(Some(Delivery {
                    event: RecordedEvent::from_proto(recorded)?,
                    retry_count: event.retry_count,
                    requests: self.requests.clone(),
                }));
            }
        }
    }

    /// Leaves the group cleanly: the server receives every ack and nack sent
    /// before, then gives the events this consumer still holds to the others
    /// (without counting a retry). Answer or drop every [`Delivery`] first:
    /// each keeps the call open. Gives up waiting after 5 s.
    pub async fn close(self) -> Result<()> {
        let Consumer {
            mut responses,
            requests,
            ..
        } = self;
        drop(requests);
        let drain = async {
            // Events that still arrive go back to the group when the server
            // sees the close.
            while next_response(&mut responses).await?.is_some() {}
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), drain).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(
                "the server did not confirm the close within 5 s".into(),
            )),
        }
    }

    /// Acks several events at once.
    pub async fn ack_ids(&self, ids: &[Uuid]) -> Result<()> {
        send(
            &self.requests,
            pb::consume_request::Content::Ack(pb::Ack {
                event_ids: ids.iter().map(Uuid::to_string).collect(),
            }),
        )
        .await
    }
}

impl Client {
    /// Creates a consumer group on `stream` (a stream, `$ce-<category>`,
    /// `$et-<type>` or `$all`; `$all` groups never receive system streams).
    pub async fn create_group(
        &self,
        group: impl Into<String>,
        stream: impl Into<String>,
        options: GroupOptions,
    ) -> Result<()> {
        use pb::create_group_request::Start;
        let stream = stream.into();
        let is_stream = !stream.starts_with('$');
        let start = match options.start {
            GroupStart::Beginning => Start::StartBeginning(()),
            GroupStart::End => Start::StartEnd(()),
            GroupStart::After(at) if is_stream => Start::StartAfterRevision(at),
            GroupStart::After(at) => Start::StartAfterPosition(at),
        };
        self.persistent
            .clone()
            .create_group(pb::CreateGroupRequest {
                group: group.into(),
                stream,
                start: Some(start),
                filter: options.filter.map(filter_to_proto),
                settings: Some(options.settings.into_proto()),
            })
            .await?;
        Ok(())
    }

    /// Changes the settings a group's `settings` sets; the others stay.
    pub async fn update_group(
        &self,
        group: impl Into<String>,
        settings: GroupSettings,
    ) -> Result<()> {
        self.persistent
            .clone()
            .update_group(pb::UpdateGroupRequest {
                group: group.into(),
                settings: Some(settings.into_proto()),
            })
            .await?;
        Ok(())
    }

    /// Deletes a group, its checkpoint and its parked events; its consumers end
    /// with [`Error::GroupNotFound`].
    pub async fn delete_group(&self, group: impl Into<String>) -> Result<()> {
        self.persistent
            .clone()
            .delete_group(pb::DeleteGroupRequest {
                group: group.into(),
            })
            .await?;
        Ok(())
    }

    /// Every group, by name.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>> {
        let response = self
            .persistent
            .clone()
            .list_groups(pb::ListGroupsRequest {})
            .await?;
        Ok(response
            .into_inner()
            .groups
            .into_iter()
            .map(GroupInfo::from_proto)
            .collect())
    }

    /// One group's state.
    pub async fn group_info(&self, group: impl Into<String>) -> Result<GroupInfo> {
        let response = self
            .persistent
            .clone()
            .get_group_info(pb::GetGroupInfoRequest {
                group: group.into(),
            })
            .await?;
        Ok(GroupInfo::from_proto(response.into_inner()))
    }

    /// Moves parked events back into delivery, oldest first: at most `max_count`
    /// (`0`: all, up to 10,000 per call). Returns how many.
    pub async fn replay_parked(&self, group: impl Into<String>, max_count: u64) -> Result<u64> {
        let response = self
            .persistent
            .clone()
            .replay_parked(pb::ReplayParkedRequest {
                group: group.into(),
                max_count,
            })
            .await?;
        Ok(response.into_inner().replayed)
    }

    /// Joins `group` as a consumer named `name`, holding at most
    /// `max_in_flight` unacknowledged events (`0`: the group's limit).
    ///
    /// A consumer's events flow over this client's connection: as with
    /// subscriptions, give a consumer that may stop reading a `Client` of its own.
    pub async fn consume(
        &self,
        group: impl Into<String>,
        name: impl Into<String>,
        max_in_flight: u32,
    ) -> Result<Consumer> {
        use pb::consume_response::Content;
        let (requests, outgoing) = mpsc::channel(ACK_BUFFER);
        send(
            &requests,
            pb::consume_request::Content::Open(pb::ConsumeOpen {
                group: group.into(),
                consumer_name: name.into(),
                max_in_flight,
            }),
        )
        .await?;
        let mut responses = self
            .persistent
            .clone()
            .consume(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let joined = loop {
            match responses.message().await? {
                Some(pb::ConsumeResponse {
                    content: Some(Content::Joined(joined)),
                }) => break joined,
                Some(_) => continue,
                None => {
                    return Err(Error::Unavailable(
                        "the server ended Consume before the consumer joined".into(),
                    ));
                }
            }
        };
        Ok(Consumer {
            id: joined.consumer_id,
            max_in_flight: joined.max_in_flight,
            responses,
            requests,
        })
    }
}
