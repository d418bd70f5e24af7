//! The `cairn.v1.PersistentSubscriptions` gRPC adapter: unwraps requests,
//! converts them (`from_proto`/`to_proto`), calls [`Groups`], maps errors
//! (`status::group_status`). No group logic lives here.

use std::pin::Pin;
use std::time::Duration;

use cairn_proto::v1 as pb;
use cairn_proto::v1::persistent_subscriptions_server::PersistentSubscriptions;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{GroupConsumer, GroupError, Groups};
use crate::status::{group_status, invalid_argument};
use crate::{from_proto, to_proto};

/// How long a Consume call may take to send its `open` message.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The service.
#[derive(Clone)]
pub(crate) struct PersistentService {
    groups: Groups,
}

impl PersistentService {
    /// The service over `groups`.
    pub(crate) fn new(groups: Groups) -> Self {
        Self { groups }
    }
}

type ConsumeStream = Pin<Box<dyn Stream<Item = Result<pb::ConsumeResponse, Status>> + Send>>;

fn status(error: GroupError) -> Status {
    group_status(&error)
}

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentService {
    type ConsumeStream = ConsumeStream;

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let request = request.into_inner();
        let span =
            tracing::info_span!("create_group", group = %request.group, stream = %request.stream);
        async {
            let definition = from_proto::group_definition(request, self.groups.store())?;
            self.groups.create(definition).await.map_err(status)?;
            Ok(Response::new(pb::CreateGroupResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn update_group(
        &self,
        request: Request<pb::UpdateGroupRequest>,
    ) -> Result<Response<pb::UpdateGroupResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("update_group", group = %request.group);
        async {
            let patch = request.settings.unwrap_or_default();
            self.groups
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
        let request = request.into_inner();
        let span = tracing::info_span!("delete_group", group = %request.group);
        async {
            self.groups.delete(&request.group).await.map_err(status)?;
            Ok(Response::new(pb::DeleteGroupResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let reports = self.groups.reports().await.map_err(status)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: reports.iter().map(to_proto::group_info).collect(),
        }))
    }

    async fn get_group_info(
        &self,
        request: Request<pb::GetGroupInfoRequest>,
    ) -> Result<Response<pb::GroupInfo>, Status> {
        let request = request.into_inner();
        let report = self.groups.report(&request.group).await.map_err(status)?;
        Ok(Response::new(to_proto::group_info(&report)))
    }

    async fn replay_parked(
        &self,
        request: Request<pb::ReplayParkedRequest>,
    ) -> Result<Response<pb::ReplayParkedResponse>, Status> {
        let request = request.into_inner();
        let span =
            tracing::info_span!("replay_parked", group = %request.group, max = request.max_count);
        async {
            let replayed = self
                .groups
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
        let span =
            tracing::info_span!("consume", group = %open.group, consumer = %open.consumer_name);
        let definition = self.groups.definition(&open.group).map_err(status)?;
        let limit = match open.max_in_flight {
            0 => definition.settings.max_in_flight_per_consumer,
            asked => asked.min(definition.settings.max_in_flight_per_consumer),
        };
        // Room for every in-flight event, the join message and a final status:
        // the group actor never waits on a consumer.
        let (sender, receiver) = mpsc::channel(limit as usize + 2);
        let (id, consumer) = self
            .groups
            .join(&open.group, open.consumer_name, limit, sender)
            .await
            .map_err(status)?;
        tracing::debug!(parent: &span, consumer = id, "consumer joined");
        tokio::spawn(read_acks(requests, consumer).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Forwards a consumer's acks and nacks to its group until its call ends, then
/// leaves (its in-flight events go to the others).
async fn read_acks(mut requests: Streaming<pb::ConsumeRequest>, consumer: GroupConsumer) {
    use pb::consume_request::Content;
    let (ending, graceful) = loop {
        let message = match requests.message().await {
            Ok(Some(message)) => message,
            // The client closed its side after its last acks (`Consumer::close`).
            Ok(None) => break (None, true),
            // The client vanished.
            Err(_) => break (None, false),
        };
        let delivered = match message.content {
            Some(Content::Ack(ack)) => match from_proto::event_ids(ack.event_ids) {
                Ok(ids) => consumer.ack(ids).await,
                Err(status) => break (Some(status), false),
            },
            Some(Content::Nack(nack)) => {
                let action = from_proto::nack_action(nack.action);
                match from_proto::event_ids(nack.event_ids) {
                    Ok(ids) => consumer.nack(ids, action, nack.reason).await,
                    Err(status) => break (Some(status), false),
                }
            }
            Some(Content::Open(_)) => {
                break (
                    Some(invalid_argument(
                        "`open` was already sent; send acks and nacks on this call",
                    )),
                    false,
                );
            }
            None => {
                break (
                    Some(invalid_argument("a Consume message without content")),
                    false,
                );
            }
        };
        if !delivered {
            // The group is gone; its actor already ended the call.
            return;
        }
    };
    consumer.leave(ending, graceful).await;
}
