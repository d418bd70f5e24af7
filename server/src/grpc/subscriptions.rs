//! The `cairn.v1.Subscriptions` adapter: converts the request, opens a feed on
//! the engine, and converts its items (and its end) to the wire. The feed
//! engine itself is `cairn_engine::feeds`.

use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_engine::Escaped;
use cairn_engine::{EndReason, Engine, Feed, FeedReceiver, SubscribeRequest};
use cairn_proto::v1 as pb;
use cairn_proto::v1::subscriptions_server::Subscriptions;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth;
use super::status::to_status;
use super::{from_proto, to_proto};

/// The service.
#[derive(Clone)]
pub struct SubscriptionsService {
    /// Opens the feeds.
    engine: Engine,
}

impl SubscriptionsService {
    /// The service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// A feed as a `Stream`. tonic polls it only when it encodes the next
/// message, so each item's bytes go back to the server's budget as the
/// transport takes it.
struct FeedStream(FeedReceiver);

impl Stream for FeedStream {
    type Item = Result<Feed, EndReason>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(context)
    }
}

#[tonic::async_trait]
impl Subscriptions for SubscriptionsService {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("subscribe", stream = %Escaped(&request.stream));
        span.in_scope(|| {
            let source = from_proto::source(&request.stream, request.query)?;
            let filter = from_proto::filter(request.filter.unwrap_or_default())?;
            let receiver = self
                .engine
                .subscribe(
                    &by,
                    SubscribeRequest {
                        source,
                        filter,
                        checkpoint_interval: Some(u64::from(request.checkpoint_interval)),
                        from: from_proto::start_from(request.from),
                    },
                )
                .map_err(|error| to_status(&error))?;
            let responses = FeedStream(receiver).map(|item| {
                item.map(to_proto::feed)
                    .map_err(|reason| to_status(&reason.into_error()))
            });
            let responses: SubscribeStream = Box::pin(responses);
            Ok(Response::new(responses))
        })
    }
}
