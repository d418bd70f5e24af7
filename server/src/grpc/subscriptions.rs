//! The `cairn.v1.Subscriptions` adapter: converts the request, opens a feed on
//! the engine, and converts its items (and its end) to the wire. The feed
//! engine itself is `cairn_engine::feeds`.
//!
//! **Encoded once for fan-out.** A live event goes to every subscription that
//! wants it; converting and protobuf-encoding it once per subscriber was most
//! of a delivery's cost. This adapter is its own tonic route (not the generated
//! `SubscriptionsServer`) so that its responses can be [`Frame`]s: an event
//! frame carries the event's `cairn.v1.RecordedEvent` bytes from a shared
//! cache ([`EncodedEvents`], keyed by position: an event never changes), and
//! the codec writes `SubscribeResponse { event }` around them (field 1,
//! length-delimited: a message field and its bytes look the same on the wire).
//! The other messages are encoded as generated.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use cairn_engine::Escaped;
use cairn_engine::{EndReason, Engine, Feed, FeedReceiver, SubscribeRequest};
use cairn_proto::v1 as pb;
use cairn_storage::RecordedEvent;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::{Body, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstDecoder;

use super::auth;
use super::status::to_status;
use super::{from_proto, to_proto};

/// Events whose encoded form the cache keeps, by position modulo this: about
/// the live ring's span, so every subscriber of a live event finds it.
const CACHED_EVENTS: usize = 16 * 1024;

/// The route of `cairn.v1.Subscriptions`.
#[derive(Clone)]
pub struct SubscriptionsService {
    /// Opens the feeds.
    engine: Engine,
    /// Encoded events shared by every subscription of this listener.
    encoded: Arc<EncodedEvents>,
    /// Largest response message (`max_message_bytes`).
    max_encoding_message_size: usize,
}

impl SubscriptionsService {
    /// The service over `engine`; no response over `max_message_bytes`.
    pub fn new(engine: Engine, max_message_bytes: usize) -> Self {
        Self {
            engine,
            encoded: Arc::new(EncodedEvents::new(CACHED_EVENTS)),
            max_encoding_message_size: max_message_bytes,
        }
    }

    /// Opens one subscription: checks and converts the request, opens the
    /// feed, and maps its items to frames.
    fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<FrameStream, Status> {
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
            let encoded = Arc::clone(&self.encoded);
            let frames = FeedStream(receiver).map(move |item| match item {
                Ok(Feed::Event(event)) => Ok(Frame::Event(encoded.get(&event))),
                Ok(other) => Ok(Frame::Message(to_proto::feed(other))),
                Err(reason) => Err(to_status(&reason.into_error())),
            });
            let frames: FrameStream = Box::pin(frames);
            Ok(frames)
        })
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

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

/// One `SubscribeResponse` on its way to the wire.
pub enum Frame {
    /// An event: its encoded `RecordedEvent`, shared.
    Event(Bytes),
    /// Anything else, encoded as generated.
    Message(pb::SubscribeResponse),
}

/// The encoded `cairn.v1.RecordedEvent` of recent events, shared by every
/// subscription: a fixed number of slots, the slot of a position being
/// `position % slots`, each behind its own lock (held for a lookup or a
/// store, never while encoding). A miss encodes the event and keeps it.
pub struct EncodedEvents {
    slots: Vec<Mutex<Option<(u64, Bytes)>>>,
}

impl EncodedEvents {
    fn new(slots: usize) -> Self {
        Self {
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// The encoded form of `event`, from the cache or made now.
    fn get(&self, event: &RecordedEvent) -> Bytes {
        let slot = &self.slots[(event.position % self.slots.len() as u64) as usize];
        if let Some((position, bytes)) = &*slot.lock().unwrap_or_else(PoisonError::into_inner)
            && *position == event.position
        {
            return bytes.clone();
        }
        let bytes = Bytes::from(to_proto::event_ref(event).encode_to_vec());
        *slot.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((event.position, bytes.clone()));
        bytes
    }
}

/// `SubscribeResponse.event`: field 1, length-delimited.
const EVENT_FIELD_KEY: u8 = (1 << 3) | 2;

/// Writes [`Frame`]s: an event's shared bytes behind its field key and
/// length, anything else through prost.
#[derive(Debug, Default)]
pub struct FrameEncoder;

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn encode(&mut self, frame: Frame, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match frame {
            Frame::Event(bytes) => {
                buffer.put_u8(EVENT_FIELD_KEY);
                prost::encoding::encode_varint(bytes.len() as u64, buffer);
                buffer.put_slice(&bytes);
                Ok(())
            }
            Frame::Message(message) => message
                .encode(buffer)
                .map_err(|error| Status::internal(format!("encoding a response: {error}"))),
        }
    }
}

/// Frames out, `SubscribeRequest`s in.
#[derive(Debug, Default)]
pub struct FrameCodec;

impl Codec for FrameCodec {
    type Encode = Frame;
    type Decode = pb::SubscribeRequest;
    type Encoder = FrameEncoder;
    type Decoder = ProstDecoder<pb::SubscribeRequest>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// The one method, for tonic's server-streaming machinery.
struct SubscribeMethod(SubscriptionsService);

impl ServerStreamingService<pb::SubscribeRequest> for SubscribeMethod {
    type Response = Frame;
    type ResponseStream = FrameStream;
    type Future = std::future::Ready<Result<Response<FrameStream>, Status>>;

    fn call(&mut self, request: Request<pb::SubscribeRequest>) -> Self::Future {
        std::future::ready(self.0.subscribe(request).map(Response::new))
    }
}

impl NamedService for SubscriptionsService {
    const NAME: &'static str = "cairn.v1.Subscriptions";
}

impl<B> tower::Service<http::Request<B>> for SubscriptionsService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/cairn.v1.Subscriptions/Subscribe" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let max = service.max_encoding_message_size;
            let mut grpc = Grpc::new(FrameCodec).apply_max_message_size_config(None, Some(max));
            Ok(grpc
                .server_streaming(SubscribeMethod(service), request)
                .await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, data: &'static str) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: "s-1".into(),
            revision: position,
            id: uuid::Uuid::from_u128(u128::from(position) + 1),
            event_type: "T".into(),
            content_type: "application/json".into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            metadata: Bytes::new(),
            data: Bytes::from_static(data.as_bytes()),
            tags: vec!["t:1".into()],
        }
    }

    /// What a client decodes from a frame.
    fn decoded(frame: Frame) -> pb::SubscribeResponse {
        let mut wire = bytes::BytesMut::new();
        match frame {
            Frame::Event(bytes) => {
                wire.put_u8(EVENT_FIELD_KEY);
                prost::encoding::encode_varint(bytes.len() as u64, &mut wire);
                wire.put_slice(&bytes);
            }
            Frame::Message(message) => message.encode(&mut wire).unwrap(),
        }
        pb::SubscribeResponse::decode(wire.freeze()).unwrap()
    }

    #[test]
    fn an_event_frame_decodes_as_the_generated_response_would() {
        let cache = EncodedEvents::new(4);
        let original = event(7, "{\"a\":1}");
        let expected = pb::SubscribeResponse {
            content: Some(pb::subscribe_response::Content::Event(to_proto::event_ref(
                &original,
            ))),
        };
        assert_eq!(decoded(Frame::Event(cache.get(&original))), expected);
        // From the cache the second time: the same bytes.
        assert_eq!(cache.get(&original), cache.get(&original));
    }

    #[test]
    fn positions_sharing_a_slot_never_get_each_others_bytes() {
        let cache = EncodedEvents::new(4);
        let first = event(3, "first");
        let second = event(7, "second");
        for _ in 0..3 {
            for event in [&first, &second] {
                let Some(pb::subscribe_response::Content::Event(got)) =
                    decoded(Frame::Event(cache.get(event))).content
                else {
                    panic!("not an event");
                };
                assert_eq!(got.position, event.position);
                assert_eq!(got.data, event.data);
            }
        }
    }
}
