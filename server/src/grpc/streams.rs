//! The `cairn.v1.Streams` service: a thin adapter. It converts requests with
//! `from_proto`, calls the engine (writes are bounded there; reads run on the
//! blocking pool), maps errors with `status::to_status`, and converts results
//! with `to_proto`. Each call runs in a span carrying the stream and the outcome.

use std::pin::Pin;

use cairn_engine::Escaped;
use cairn_engine::{Engine, Error};
use cairn_proto::v1 as pb;
use cairn_proto::v1::streams_server::Streams;
use cairn_storage::{ReadFrom, ReadRequest, Store, StreamAppend};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::status::{invalid_argument, to_status};
use super::{from_proto, to_proto};

/// Soft cap on the encoded size of one `ReadResponse` (a single event larger than
/// this still goes alone).
const READ_RESPONSE_BYTES: usize = 1024 * 1024;
/// Most events one storage call of a read returns. A read is served in chunks
/// of this size, and the next chunk is read on the blocking pool while the
/// current one is encoded, sent and decoded by the client: storage, encoding and
/// the client overlap instead of taking turns on the whole page. Small enough to
/// pipeline a 1,000-event page; large enough that the per-chunk hop (blocking
/// pool, channel, one gRPC message) stays a small share.
const READ_CHUNK_EVENTS: usize = 256;
/// The first chunk is smaller: nothing overlaps with it (it is read before the
/// call is answered), so it should arrive quickly and start the pipeline.
const READ_FIRST_CHUNK_EVENTS: usize = 64;
/// How long a read task tries to hand its closing status to a slow client.
const FINAL_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// Default and largest page of `ListStreams`.
const LIST_DEFAULT: usize = 100;

/// Shared by every call of the service.
#[derive(Clone)]
pub struct StreamsService {
    /// The engine: writes are admitted and bounded there, reads run on its
    /// blocking pool and tracked tasks.
    engine: Engine,
    /// Flips to `true` when the server shuts down; open reads end with UNAVAILABLE.
    shutdown: watch::Receiver<bool>,
}

impl StreamsService {
    /// A service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self {
            shutdown: engine.shutdown_signal(),
            engine,
        }
    }

    async fn commit(
        &self,
        parts: Vec<StreamAppend>,
    ) -> Result<Vec<cairn_storage::AppendResult>, Status> {
        self.engine
            .append_multi(parts)
            .await
            .map_err(|error| to_status(&error))
    }

    /// Starts `work` on the blocking pool at once (not when first polled, unlike
    /// an `async fn`) and returns its outcome as a future.
    fn start_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, cairn_storage::Error> + Send + 'static,
    ) -> impl Future<Output = Result<T, Status>> + Send + 'static {
        let task = self.engine.blocking(work);
        async move { task.await.map_err(|error| to_status(&error)) }
    }
}

/// UNAVAILABLE because the server is shutting down.
fn shutting_down() -> Status {
    to_status(&Error::ShuttingDown)
}

/// Records the outcome on the current span and passes the result through.
fn outcome<T>(result: Result<T, Status>) -> Result<T, Status> {
    let span = tracing::Span::current();
    match &result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(status) => {
            span.record("outcome", format!("{:?}", status.code()));
            tracing::debug!(code = ?status.code(), message = %Escaped(status.message()), "request failed");
        }
    }
    result
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("append", stream = %Escaped(&request.stream), events = request.events.len(), outcome = tracing::field::Empty);
        async {
            let result = async {
                let part = from_proto::append(request)?;
                let mut results = self.commit(vec![part]).await?;
                results
                    .pop()
                    .ok_or_else(|| Status::internal("append returned no result"))
            }
            .await;
            outcome(result.map(|result| Response::new(to_proto::append_result(&result))))
        }
        .instrument(span)
        .await
    }

    async fn append_multi(
        &self,
        request: Request<pb::AppendMultiRequest>,
    ) -> Result<Response<pb::AppendMultiResponse>, Status> {
        let request = request.into_inner();
        let streams: Vec<&str> = request
            .parts
            .iter()
            .map(|part| part.stream.as_str())
            .collect();
        let span = tracing::info_span!("append_multi", streams = ?streams, outcome = tracing::field::Empty);
        async {
            if request.parts.is_empty() {
                return outcome(Err(invalid_argument(
                    "append_multi needs at least one part",
                )));
            }
            let parts = request
                .parts
                .into_iter()
                .map(from_proto::append)
                .collect::<Result<Vec<_>, _>>();
            let result = match parts {
                Ok(parts) => self.commit(parts).await,
                Err(status) => Err(status),
            };
            outcome(result.map(|results| {
                Response::new(pb::AppendMultiResponse {
                    results: results.iter().map(to_proto::append_result).collect(),
                })
            }))
        }
        .instrument(span)
        .await
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("read", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        // The span is entered only around synchronous work and attached to the
        // futures with `instrument`: a guard held across an `.await` would leak
        // into whatever else the worker thread polls meanwhile.
        let (read, max_total) = span.in_scope(|| outcome(from_proto::read(request)))?;
        let page_limit = self
            .engine
            .store()
            .limits()
            .max_read_page
            .min(READ_CHUNK_EVENTS);
        // The first chunk is read before answering so that NOT_FOUND and similar
        // errors arrive as the call's status, not inside the stream.
        let first = {
            let read = with_count(&read, max_total, page_limit.min(READ_FIRST_CHUNK_EVENTS));
            let chunk = self.start_blocking(move |store| read_chunk(store, &read));
            async { outcome(chunk.await) }
                .instrument(span.clone())
                .await?
        };
        let (sender, receiver) = mpsc::channel(2);
        let service = self.clone();
        let read_span = span.clone();
        self.engine.tasks().spawn(
            async move {
                let mut read = read;
                let mut chunk = first;
                let mut shutdown = service.shutdown.clone();
                let mut sent: u64 = 0;
                loop {
                    sent += chunk.events;
                    // Start reading the next chunk now; at most one chunk is read
                    // ahead of the one being sent.
                    let ahead = chunk.next.filter(|_| sent < max_total).map(|next| {
                        read.from = ReadFrom::At(next);
                        let request = with_count(&read, max_total - sent, page_limit);
                        service.start_blocking(move |store| read_chunk(store, &request))
                    });
                    if !send_chunk(&sender, &mut shutdown, chunk.responses).await {
                        tracing::debug!("reader went away");
                        return;
                    }
                    let Some(ahead) = ahead else {
                        return;
                    };
                    if *service.shutdown.borrow() {
                        let _ = tokio::time::timeout(
                            FINAL_STATUS_WAIT,
                            sender.send(Err(shutting_down())),
                        )
                        .await;
                        return;
                    }
                    chunk = match ahead.await {
                        Ok(chunk) => chunk,
                        Err(status) => {
                            let _ =
                                tokio::time::timeout(FINAL_STATUS_WAIT, sender.send(Err(status)))
                                    .await;
                            return;
                        }
                    };
                }
            }
            .instrument(read_span),
        );
        span.record("outcome", "ok");
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.delete_or_tombstone(request.into_inner(), false).await
    }

    async fn tombstone(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.delete_or_tombstone(request.into_inner(), true).await
    }

    async fn get_stream_metadata(
        &self,
        request: Request<pb::GetStreamMetadataRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("get_stream_metadata", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        span.in_scope(|| {
            outcome(
                self.engine
                    .stream_info(&request.stream)
                    .map(|info| Response::new(to_proto::stream_info(&info)))
                    .map_err(|error| to_status(&error)),
            )
        })
    }

    async fn set_stream_metadata(
        &self,
        request: Request<pb::SetStreamMetadataRequest>,
    ) -> Result<Response<pb::SetStreamMetadataResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("set_stream_metadata", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        async {
            let result = async {
                from_proto::writable_stream(&request.stream)?;
                let expected =
                    from_proto::expected_revision(request.expected, "set_stream_metadata")?;
                let metadata = from_proto::metadata(request.metadata);
                self.engine
                    .set_metadata(request.stream, expected, metadata)
                    .await
                    .map_err(|error| to_status(&error))
            }
            .await;
            outcome(result.map(|revision| {
                Response::new(pb::SetStreamMetadataResponse {
                    metadata_revision: revision,
                })
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_streams(
        &self,
        request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!("list_streams", prefix = %Escaped(&request.prefix), outcome = tracing::field::Empty);
        async {
            let max = self.engine.store().limits().max_read_page;
            let limit = match request.limit as usize {
                0 => LIST_DEFAULT.min(max),
                limit => limit.min(max),
            };
            let prefix = request.prefix;
            let after = (!request.after.is_empty()).then_some(request.after);
            let streams = match self
                .start_blocking(move |store| {
                    store.list_streams(&prefix, after.as_deref(), limit + 1)
                })
                .await
            {
                Ok(streams) => streams,
                Err(status) => return outcome(Err(status)),
            };
            let more = streams.len() > limit;
            let streams: Vec<pb::StreamInfo> = streams
                .iter()
                .take(limit)
                .map(to_proto::stream_info)
                .collect();
            let next_after = if more {
                streams.last().map(|info| info.stream.clone())
            } else {
                None
            };
            outcome(Ok(Response::new(pb::ListStreamsResponse {
                streams,
                next_after,
            })))
        }
        .instrument(span)
        .await
    }
}

impl StreamsService {
    async fn delete_or_tombstone(
        &self,
        request: pb::DeleteRequest,
        tombstone: bool,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let name = if tombstone { "tombstone" } else { "delete" };
        let span = tracing::info_span!("delete", kind = name, stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        async {
            let expected = match from_proto::writable_stream(&request.stream)
                .and_then(|()| from_proto::expected_revision(request.expected, name))
            {
                Ok(expected) => expected,
                Err(status) => return outcome(Err(status)),
            };
            outcome(
                self.engine
                    .delete(request.stream, expected, tombstone)
                    .await
                    .map(|current| {
                        Response::new(pb::DeleteResponse {
                            deleted_at_revision: current.revision(),
                        })
                    })
                    .map_err(|error| to_status(&error)),
            )
        }
        .instrument(span)
        .await
    }
}

/// The same read with a page size of at most `remaining` and the page limit.
fn with_count(read: &ReadRequest, remaining: u64, page_limit: usize) -> ReadRequest {
    let mut read = read.clone();
    read.max_count = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(page_limit);
    read
}

/// One storage page of a read, already converted to responses.
struct Chunk {
    /// At least one response; `next` and `scanned_through` ride on the last.
    responses: Vec<pb::ReadResponse>,
    /// Events in `responses`.
    events: u64,
    /// Where the following chunk starts, if the read goes on.
    next: Option<u64>,
}

/// Reads one page and converts it to responses of bounded size. Runs on the
/// blocking pool, so the conversion (and dropping the storage events) does not
/// take runtime time from encoding and sending the previous chunk.
fn read_chunk(store: &Store, read: &ReadRequest) -> Result<Chunk, cairn_storage::Error> {
    let page = store.read(read)?;
    let events = page.events.len() as u64;
    let mut responses = Vec::with_capacity(1);
    let mut response = pb::ReadResponse {
        events: Vec::with_capacity(page.events.len()),
        ..pb::ReadResponse::default()
    };
    let mut bytes = 0usize;
    for event in page.events {
        let size = event.data.len() + event.metadata.len() + event.stream.len() + 96;
        if !response.events.is_empty() && bytes + size > READ_RESPONSE_BYTES {
            responses.push(std::mem::take(&mut response));
            bytes = 0;
        }
        bytes += size;
        response.events.push(to_proto::event_owned(event));
    }
    response.next = page.next;
    response.scanned_through = page.scanned_through;
    responses.push(response);
    Ok(Chunk {
        responses,
        events,
        next: page.next,
    })
}

/// Sends a chunk's responses in order. Returns false when the reader is gone or
/// the server is shutting down.
async fn send_chunk(
    sender: &mpsc::Sender<Result<pb::ReadResponse, Status>>,
    shutdown: &mut watch::Receiver<bool>,
    responses: Vec<pb::ReadResponse>,
) -> bool {
    for response in responses {
        let sent = tokio::select! {
            sent = sender.send(Ok(response)) => sent.is_ok(),
            // A reader that stopped reading must not hold up shutdown.
            _ = shutdown.wait_for(|stopping| *stopping) => false,
        };
        if !sent {
            return false;
        }
    }
    true
}
