//! The `cairn.v1.PersistentSubscriptions` gRPC adapter: unwraps requests,
//! converts them (`from_proto`/`to_proto`), calls the engine's [`Groups`], maps
//! errors (`status::to_status`). No group logic lives here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_engine::Escaped;
use cairn_engine::groups::{ConsumerMessage, GroupConsumer};
use cairn_engine::{EndReason, Engine, Error, Groups};
use cairn_proto::v1 as pb;
use cairn_proto::v1::persistent_subscriptions_server::PersistentSubscriptions;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::auth;
use super::status::{invalid_argument, to_status};
use super::{from_proto, to_proto};

/// How long a Consume call may take to send its `open` message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message a consumer may send (an ack of [`MAX_IDS_PER_MESSAGE`] ids
/// is about 400 KB).
pub const CONSUME_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most event ids in one ack or nack.
const MAX_IDS_PER_MESSAGE: usize = 10_000;

/// The service.
#[derive(Clone)]
pub struct PersistentService {
    /// The engine; groups live in its registry.
    engine: Engine,
}

impl PersistentService {
    /// The service over `engine`'s groups.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    fn groups(&self) -> &Groups {
        self.engine.groups()
    }

    /// Group management (create, update, delete, list, info, replay) is for
    /// operators and admins.
    fn authorize_management<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let by = auth::principal(request)?;
        self.engine
            .authorize_operations(&by, "manage consumer groups")
            .map_err(status)
    }
}

type ConsumeStream = Pin<Box<dyn Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>>;

fn status(error: Error) -> Status {
    to_status(&error)
}

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentService {
    type ConsumeStream = ConsumeStream;

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        self.authorize_management(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("create_group", group = %Escaped(&request.group), stream = %Escaped(&request.stream));
        async {
            let definition = from_proto::group_definition(request, self.engine.store())?;
            self.groups().create(definition).await.map_err(status)?;
            Ok(Response::new(pb::CreateGroupResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::UpdateGroupResponse>, Status> {
        self.authorize_management(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("update_group", group = %Escaped(&request.group));
        async {
            let patch = request.settings.unwrap_or_default();
            self.groups()
                .update(&request.group, |current| {
                    from_proto::group_settings(current, &patch)
                })
                .await
                .map_err(status)?;
            Ok(Response::new(pb::UpdateGroupResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        self.authorize_management(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("delete_group", group = %Escaped(&request.group));
        async {
            self.groups().delete(&request.group).await.map_err(status)?;
            Ok(Response::new(pb::DeleteGroupResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        self.authorize_management(&request)?;
        let reports = self.groups().reports().await.map_err(status)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: reports.iter().map(to_proto::group_info).collect(),
        }))
    }

    async fn get_group_info(
        &self,
        request: Request<pb::GetGroupInfoRequest>,
    ) -> Result<Response<pb::GroupInfo>, Status> {
        self.authorize_management(&request)?;
        let request = request.into_inner();
        let report = self.groups().report(&request.group).await.map_err(status)?;
        Ok(Response::new(to_proto::group_info(&report)))
    }

    async fn replay_parked(
        &self,
        request: Request<pb::ReplayParkedRequest>,
    ) -> Result<Response<pb::ReplayParkedResponse>, Status> {
        self.authorize_management(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("replay_parked", group = %Escaped(&request.group), max = request.max_count);
        async {
            let replayed = self
                .groups()
                .replay_parked(&request.group, request.max_count)
                .await
                .map_err(status)?;
            Ok(Response::new(pb::ReplayParkedResponse { replayed }))
        }
        .instrument(span)
        .await
    }

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        use pb::consume_request::Content;
        let by = auth::principal(&request)?;
        let mut requests = request.into_inner();
        // A call that never says which group it joins would hold a stream and a
        // task forever.
        let first = tokio::time::timeout(OPEN_TIMEOUT, requests.message())
            .await
            .map_err(|_| {
                invalid_argument(format!(
                    "Consume sent no `open` message within {} s",
                    OPEN_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| invalid_argument("Consume ended before its `open` message"))?;
        let Some(Content::Open(open)) = first.content else {
            return Err(invalid_argument(
                "the first message of Consume must be `open`",
            ));
        };
        let span = tracing::info_span!("consume", group = %Escaped(&open.group), consumer = %Escaped(&open.consumer_name));
        self.engine
            .authorize_consume(&by, &open.group)
            .map_err(status)?;
        let (consumer, receiver) = self
            .groups()
            .join(&open.group, open.consumer_name, open.max_in_flight)
            .await
            .map_err(status)?;
        tracing::debug!(parent: &span, consumer = consumer.id(), "consumer joined");
        let left = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_acks(requests, consumer, Arc::clone(&left)).instrument(span));
        Ok(Response::new(Box::pin(ConsumeResponses {
            receiver,
            left,
            ended: false,
        })))
    }
}

/// Forwards a consumer's acks and nacks to its group until its call ends, then
/// leaves (its in-flight events go to the others). A message the server cannot
/// take (too large, too many ids, malformed) ends the call with its error,
/// never with OK.
async fn read_acks(
    mut requests: Streaming<pb::ConsumeRequest>,
    consumer: GroupConsumer,
    left: Arc<AtomicBool>,
) {
    use pb::consume_request::Content;
    let (ending, graceful) = loop {
        let message = match requests.message().await {
            Ok(Some(message)) => message,
            // The client closed its side after its last acks (`Consumer::close`).
            Ok(None) => break (None, true),
            Err(status) => match inbound_failure(&status) {
                Some(error) => break (Some(error), false),
                // The client vanished.
                None => break (None, false),
            },
        };
        let delivered = match message.content {
            Some(Content::Ack(ack)) => match checked_ids(ack.event_ids) {
                Ok(ids) => consumer.ack(ids).await,
                Err(error) => break (Some(error), false),
            },
            Some(Content::Nack(nack)) => {
                let action = from_proto::nack_action(nack.action);
                match checked_ids(nack.event_ids) {
                    // A STOP ends the responses with the group's `End`.
                    Ok(ids) => consumer.nack(ids, action, nack.reason).await,
                    Err(error) => break (Some(error), false),
                }
            }
            Some(Content::Open(_)) => {
                break (
                    Some(Error::InvalidArgument(
                        "`open` was already sent; send acks and nacks on this call".into(),
                    )),
                    false,
                );
            }
            None => {
                break (
                    Some(Error::InvalidArgument(
                        "a Consume message without content".into(),
                    )),
                    false,
                );
            }
        };
        if !delivered {
            // The group is gone; its actor already ended the call.
            return;
        }
    };
    left.store(true, Ordering::Release);
    if let Some(error) = &ending {
        tracing::debug!(%error, "ending a consumer's call");
    }
    consumer
        .leave(ending.map(EndReason::Failed), graceful)
        .await;
}

/// The error to end the call with when reading the consumer's next message
/// failed on the server's side (too large, undecodable); `None` when the client
/// went away (cancelled, reset, connection lost).
fn inbound_failure(status: &Status) -> Option<Error> {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Some(Error::LimitExceeded(format!(
                "a Consume message is larger than {CONSUME_MESSAGE_BYTES} bytes; ack or nack fewer events per message"
            )))
        }
        tonic::Code::InvalidArgument | tonic::Code::Internal => Some(Error::InvalidArgument(
            "a Consume message could not be decoded".into(),
        )),
        _ => None,
    }
}

/// The event ids of an ack or nack, at most [`MAX_IDS_PER_MESSAGE`].
fn checked_ids(ids: Vec<String>) -> Result<Vec<uuid::Uuid>, Error> {
    if ids.len() > MAX_IDS_PER_MESSAGE {
        return Err(Error::LimitExceeded(format!(
            "an ack or nack names {} events, the limit is {MAX_IDS_PER_MESSAGE}",
            ids.len()
        )));
    }
    from_proto::event_ids(ids)
}

/// A consumer's outgoing messages. The group ends a session it ends itself
/// with an `End` message (turned into the call's status here); a channel that
/// closes without one after the consumer left is a normal end, and before it an
/// internal failure (the group's actor stopped), never a silent end of stream.
struct ConsumeResponses {
    /// From the group's actor.
    receiver: mpsc::Receiver<ConsumerMessage>,
    /// Set once the consumer's own side ended (it closed or left).
    left: Arc<AtomicBool>,
    /// The closing status was sent.
    ended: bool,
}

impl Stream for ConsumeResponses {
    type Item = Result<pb::ConsumeResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        loop {
            let message = match self.receiver.poll_recv(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(message) => message,
            };
            let reason = match message {
                Some(ConsumerMessage::End(reason)) => reason,
                Some(message) => match to_proto::consumer_message(message) {
                    Some(response) => return Poll::Ready(Some(Ok(response))),
                    None => continue,
                },
                None if self.left.load(Ordering::Acquire) => return Poll::Ready(None),
                None => EndReason::Failed(Error::Internal(
                    "the consumer group's actor stopped unexpectedly; reconnect".into(),
                )),
            };
            self.ended = true;
            return Poll::Ready(Some(Err(to_status(&reason.into_error()))));
        }
    }
}
