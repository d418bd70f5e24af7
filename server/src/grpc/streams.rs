//! The `cairn.v1.Streams` service: a thin adapter. It converts requests with
//! `from_proto`, calls the engine (writes are bounded there; reads run on the
//! blocking pool), maps errors with `status::to_status`, and converts results
//! with `to_proto`. Each call runs in a span carrying the stream and the outcome.
//! `AppendStream` is served by `append_stream`, over the same conversions.

use std::pin::Pin;
use std::time::Duration;

use cairn_engine::Escaped;
use cairn_engine::{
    BytePermit, Engine, Error, Outbox, OutboxReceiver, Principal, Undelivered, Visibility,
};
use cairn_proto::v1 as pb;
use cairn_proto::v1::streams_server::Streams;
use cairn_storage::{ReadFrom, ReadRequest, ReadSource, Store, StreamAppend};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth;
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
/// Byte budget of one chunk (`ReadRequest::max_bytes`). 256 events of up to
/// 4 KiB fill a chunk; larger events make chunks of fewer events, so that a
/// read holds a few MiB at most, whatever its events (see `read`).
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Default and largest page of `ListStreams`.
const LIST_DEFAULT: usize = 100;
/// Byte budget of one `ListStreams` page (stream names and custom metadata):
/// the page ends after the stream that reaches it.
const LIST_PAGE_BYTES: usize = 1024 * 1024;

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
        by: &Principal,
        parts: Vec<StreamAppend>,
        condition: Option<cairn_storage::AppendCondition>,
    ) -> Result<Vec<cairn_storage::AppendResult>, Status> {
        self.engine
            .append_multi_if(by, parts, condition)
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

    /// Starts reading one chunk at once, on a tracked task: it reserves
    /// `reservation` bytes of the server's buffer budget (waiting while it is
    /// spent), reads on the blocking pool, and keeps the chunk's actual size
    /// reserved. Dropping the handle before it is done cancels what has not
    /// started (a storage call already running is bounded and finishes).
    fn start_chunk(
        &self,
        read: ReadRequest,
        reservation: usize,
        visibility: &Visibility,
    ) -> ChunkTask {
        let visibility = visibility.clone();
        let engine = self.engine.clone();
        let mut shutdown = self.shutdown.clone();
        let task = self.engine.tasks().spawn(async move {
            let budget = engine.buffer_budget().clone();
            let budgets = [&budget];
            let mut bytes = tokio::select! {
                bytes = BytePermit::reserve(&budgets, reservation) => bytes,
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(shutting_down()),
            };
            let mut chunk = engine
                .blocking(move |store| read_chunk(store, &read, &visibility))
                .await
                .map_err(|error| to_status(&error))?;
            let held = chunk.responses.iter().map(|(_, held)| held).sum();
            tokio::select! {
                () = bytes.resize(&budgets, held) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return Err(shutting_down()),
            }
            chunk.bytes = bytes;
            Ok(chunk)
        });
        ChunkTask(task)
    }
}

/// A chunk being read (`StreamsService::start_chunk`); aborted when dropped.
struct ChunkTask(JoinHandle<Result<Chunk, Status>>);

impl ChunkTask {
    async fn join(mut self) -> Result<Chunk, Status> {
        match (&mut self.0).await {
            Ok(chunk) => chunk,
            Err(error) => Err(to_status(&Error::Internal(format!(
                "read task failed: {error}"
            )))),
        }
    }
}

impl Drop for ChunkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a read's channel carries: a response and the bytes of the server's
/// budget it holds until tonic takes it from the stream.
type Sent = (Result<pb::ReadResponse, Status>, BytePermit);

/// How long a read's `min_position` waits without a deadline, and at most.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
const MAX_CATCH_UP_WAIT: Duration = Duration::from_secs(10);

impl StreamsService {
    /// Waits until this node's head is beyond `position` (a follower still
    /// applying), up to nearly the call's deadline (bounded); NOT_CAUGHT_UP
    /// when it is not. A node already there answers at once.
    async fn catch_up(&self, position: u64, deadline: Option<Instant>) -> Result<(), Status> {
        let store = self.engine.store().clone();
        if store.live().head() > position {
            return Ok(());
        }
        // Nine tenths of what is left, so that the answer (with its reason)
        // reaches the client before its own deadline cancels the call.
        let wait = deadline
            .map_or(CATCH_UP_WAIT, |deadline| {
                deadline.saturating_duration_since(Instant::now()) * 9 / 10
            })
            .min(MAX_CATCH_UP_WAIT);
        let head = tokio::task::spawn_blocking(move || store.live().wait_beyond(position, wait))
            .await
            .map_err(|error| {
                to_status(&Error::Internal(format!("catch-up wait failed: {error}")))
            })?;
        if head > position {
            Ok(())
        } else {
            Err(super::status::not_caught_up(position, head))
        }
    }
}

/// When the call's `grpc-timeout` runs out, if the client set one (gRPC over
/// HTTP/2: 1 to 8 digits and a unit, `H` `M` `S` `m` `u` `n`). tonic enforces
/// it only until the response starts; the read task enforces it for the rest.
pub(super) fn deadline_of(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let digits = value.get(..value.len().checked_sub(1)?)?;
    let unit = value.get(digits.len()..)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// What an `AppendRequest` asks of the engine: its one part and its
/// condition, converted and checked as far as the adapter checks (the engine
/// and the store check the rest). Shared by `Append` and `AppendStream`.
pub(super) fn append_parts(
    mut request: pb::AppendRequest,
) -> Result<(Vec<StreamAppend>, Option<cairn_storage::AppendCondition>), Status> {
    let condition = from_proto::condition(request.condition.take())?;
    let part = from_proto::append(request)?;
    Ok((vec![part], condition))
}

/// What an `AppendMultiRequest` asks of the engine: its parts and its
/// condition, as [`append_parts`]. Shared by `AppendMulti` and `AppendStream`.
pub(super) fn multi_parts(
    request: pb::AppendMultiRequest,
) -> Result<(Vec<StreamAppend>, Option<cairn_storage::AppendCondition>), Status> {
    if request.parts.is_empty() {
        return Err(invalid_argument("append_multi needs at least one part"));
    }
    if request.parts.iter().any(|part| part.condition.is_some()) {
        return Err(invalid_argument(
            "append_multi takes one condition for the whole request, not one per part",
        ));
    }
    let condition = from_proto::condition(request.condition)?;
    let parts = request
        .parts
        .into_iter()
        .map(from_proto::append)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((parts, condition))
}

/// UNAVAILABLE because the server is shutting down.
pub(super) fn shutting_down() -> Status {
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
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("append", stream = %Escaped(&request.stream), events = request.events.len(), outcome = tracing::field::Empty);
        async {
            let result = async {
                let (parts, condition) = append_parts(request)?;
                let mut results = self.commit(&by, parts, condition).await?;
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
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let streams: Vec<&str> = request
            .parts
            .iter()
            .map(|part| part.stream.as_str())
            .collect();
        let span = tracing::info_span!("append_multi", streams = ?streams, outcome = tracing::field::Empty);
        async {
            let result = match multi_parts(request) {
                Ok((parts, condition)) => self.commit(&by, parts, condition).await,
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

    type AppendStreamStream = super::append_stream::Answers;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<pb::AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let by = auth::principal(&request)?;
        Ok(Response::new(super::append_stream::start(
            self.engine.clone(),
            by,
            deadline,
            request.into_inner(),
        )))
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let deadline = deadline_of(request.metadata());
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let min_position = request.min_position;
        let span = tracing::info_span!("read", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        // The span is entered only around synchronous work and attached to the
        // futures with `instrument`: a guard held across an `.await` would leak
        // into whatever else the worker thread polls meanwhile.
        let (mut read, max_total) = span.in_scope(|| outcome(from_proto::read(request)))?;
        let visibility = span.in_scope(|| {
            outcome(
                self.engine
                    .read_access(&by, &read.source)
                    .map_err(|error| to_status(&error)),
            )
        })?;
        if let Some(position) = min_position {
            self.catch_up(position, deadline).await?;
        }
        read.max_bytes = READ_CHUNK_BYTES;
        let limits = self.engine.store().limits();
        let page_limit = limits.max_read_page.min(READ_CHUNK_EVENTS);
        // A chunk ends after the event that reaches its byte budget, so it
        // holds at most the budget plus one event: that much is reserved
        // before the read and trimmed to the chunk's size after it. A read
        // whose client stopped reading holds at most the chunk being sent
        // (partly in the channel) and the one read ahead.
        let reservation = READ_CHUNK_BYTES + limits.max_event_bytes;
        // The first chunk is read before answering so that NOT_FOUND and similar
        // errors arrive as the call's status, not inside the stream.
        let first = {
            let read = with_count(&read, max_total, page_limit.min(READ_FIRST_CHUNK_EVENTS));
            let chunk = self.start_chunk(read, reservation, &visibility);
            async { outcome(chunk.join().await) }
                .instrument(span.clone())
                .await?
        };
        let (sender, receiver) = self.engine.outbox::<Sent>(2);
        let service = self.clone();
        let read_span = span.clone();
        self.engine.tasks().spawn(
            async move {
                let plan = ChunkPlan {
                    page_limit,
                    reservation,
                    visibility,
                };
                let pipeline = service.pipeline(read, max_total, &plan, first, &sender);
                let end = match deadline {
                    None => pipeline.await,
                    Some(deadline) => tokio::time::timeout_at(deadline, pipeline)
                        .await
                        .unwrap_or_else(|_| {
                            tracing::debug!("deadline passed");
                            ReadEnd::Failed(to_status(&Error::DeadlineExceeded))
                        }),
                };
                service.end_read(&sender, end).await;
            }
            .instrument(read_span),
        );
        span.record("outcome", "ok");
        Ok(Response::new(Box::pin(ReadResponses(receiver))))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let by = auth::principal(&request)?;
        self.delete_or_tombstone(&by, request.into_inner(), false)
            .await
    }

    async fn tombstone(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let by = auth::principal(&request)?;
        self.delete_or_tombstone(&by, request.into_inner(), true)
            .await
    }

    async fn get_stream_metadata(
        &self,
        request: Request<pb::GetStreamMetadataRequest>,
    ) -> Result<Response<pb::StreamInfo>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("get_stream_metadata", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        span.in_scope(|| {
            outcome(
                self.engine
                    .stream_info(&by, &request.stream)
                    .map(|info| Response::new(to_proto::stream_info(&info)))
                    .map_err(|error| to_status(&error)),
            )
        })
    }

    async fn set_stream_metadata(
        &self,
        request: Request<pb::SetStreamMetadataRequest>,
    ) -> Result<Response<pb::SetStreamMetadataResponse>, Status> {
        let by = auth::principal(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("set_stream_metadata", stream = %Escaped(&request.stream), outcome = tracing::field::Empty);
        async {
            let result = async {
                from_proto::writable_stream(&request.stream)?;
                let expected =
                    from_proto::expected_revision(request.expected, "set_stream_metadata")?;
                let metadata = from_proto::metadata(request.metadata);
                self.engine
                    .set_metadata(&by, request.stream, expected, metadata)
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
        let by = auth::principal(&request)?;
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
            let page = match self
                .start_blocking(move |store| {
                    store.list_streams_page(&prefix, after.as_deref(), limit, LIST_PAGE_BYTES)
                })
                .await
            {
                Ok(page) => page,
                Err(status) => return outcome(Err(status)),
            };
            // The page continues after the last stream scanned, listed or
            // not: a caller sees only the streams it may read.
            let next_after = if page.more {
                page.streams.last().map(|info| info.name.clone())
            } else {
                None
            };
            let visibility = match self.engine.read_access(&by, &ReadSource::All) {
                Ok(visibility) => visibility,
                Err(error) => return outcome(Err(to_status(&error))),
            };
            let streams: Vec<pb::StreamInfo> = page
                .streams
                .iter()
                .filter(|info| visibility.admits(&info.name))
                .map(to_proto::stream_info)
                .collect();
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
    /// The rest of a read after its first chunk: sends each chunk while the
    /// next one is read, until the read is done, the reader goes away (a
    /// dropped stream: no further chunk is started, the one being read is
    /// aborted), the reader stalls, or the server shuts down. Says how the
    /// call is to end ([`StreamsService::end_read`]).
    async fn pipeline(
        &self,
        mut read: ReadRequest,
        max_total: u64,
        plan: &ChunkPlan,
        first: Chunk,
        sender: &Outbox<Sent>,
    ) -> ReadEnd {
        let mut chunk = first;
        let mut shutdown = self.shutdown.clone();
        let mut sent: u64 = 0;
        loop {
            sent += chunk.events;
            // Start reading the next chunk now; at most one chunk is read
            // ahead of the one being sent.
            let ahead = chunk.next.filter(|_| sent < max_total).map(|next| {
                read.from = ReadFrom::At(next);
                let request = with_count(&read, max_total - sent, plan.page_limit);
                self.start_chunk(request, plan.reservation, &plan.visibility)
            });
            if let Err(end) = send_chunk(sender, &mut shutdown, chunk).await {
                return end;
            }
            let Some(ahead) = ahead else {
                return ReadEnd::Done;
            };
            if *self.shutdown.borrow() {
                return ReadEnd::Failed(shutting_down());
            }
            chunk = tokio::select! {
                chunk = ahead.join() => match chunk {
                    Ok(chunk) => chunk,
                    Err(status) => return ReadEnd::Failed(status),
                },
                // Gone while the chunk is read: stop now (dropping `ahead`
                // aborts it), not after the chunk.
                () = sender.closed() => {
                    tracing::debug!("reader went away");
                    return ReadEnd::Done;
                }
                // What the reader has not taken holds bytes that the chunk
                // being read (or another call) may be waiting for.
                () = sender.stalled() => return ReadEnd::Stalled,
            };
        }
    }

    /// Ends a read's channel as `end` says. Done or failed: the client gets
    /// what is buffered, then the closing status (OK only when the read is
    /// complete); the task waits until it took that (the responses hold
    /// bytes of the budget) and cuts it off if it stalls first. Stalled:
    /// cut off now.
    async fn end_read(&self, sender: &Outbox<Sent>, end: ReadEnd) {
        let last = match end {
            ReadEnd::Done => None,
            ReadEnd::Failed(status) => Some((Err(status), BytePermit::default())),
            ReadEnd::Stalled => return cut_off(sender),
        };
        sender.close(last);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            drained = sender.drained() => {
                if drained.is_err() {
                    cut_off(sender);
                }
            }
            // Connections still open are dropped after the grace period.
            _ = shutdown.wait_for(|stopping| *stopping) => {}
        }
    }

    async fn delete_or_tombstone(
        &self,
        by: &Principal,
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
                    .delete(by, request.stream, expected, tombstone)
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

/// How the chunks after a read's first are made; fixed for the call.
struct ChunkPlan {
    /// Most events per chunk.
    page_limit: usize,
    /// Bytes reserved before each chunk is read.
    reservation: usize,
    /// Which streams' events the caller may see.
    visibility: Visibility,
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
    /// At least one response, each with the bytes (`RecordedEvent::size`) of
    /// its events; `next` and `scanned_through` ride on the last.
    responses: Vec<(pb::ReadResponse, usize)>,
    /// Events in `responses`.
    events: u64,
    /// Where the following chunk starts, if the read goes on.
    next: Option<u64>,
    /// The chunk's bytes, reserved from the server's buffer budget.
    bytes: BytePermit,
}

/// Reads one page and converts it to responses of bounded size. Runs on the
/// blocking pool, so the conversion (and dropping the storage events) does not
/// take runtime time from encoding and sending the previous chunk.
fn read_chunk(
    store: &Store,
    read: &ReadRequest,
    visibility: &Visibility,
) -> Result<Chunk, cairn_storage::Error> {
    let mut page = store.read(read)?;
    // Events of streams the caller may not read pass by like filtered-out
    // ones: `next` and `scanned_through` still move past them.
    if !visibility.is_everything() {
        page.events.retain(|event| visibility.admits(&event.stream));
    }
    let events = page.events.len() as u64;
    let mut responses = Vec::with_capacity(1);
    let mut response = pb::ReadResponse {
        events: Vec::with_capacity(page.events.len()),
        ..pb::ReadResponse::default()
    };
    let mut bytes = 0usize;
    let mut held = 0usize;
    for event in page.events {
        let size = event.data.len() + event.metadata.len() + event.stream.len() + 96;
        if !response.events.is_empty() && bytes + size > READ_RESPONSE_BYTES {
            responses.push((std::mem::take(&mut response), held));
            bytes = 0;
            held = 0;
        }
        bytes += size;
        held += event.size();
        response.events.push(to_proto::event_owned(event));
    }
    response.next = page.next;
    response.scanned_through = page.scanned_through;
    response.consistent_through = page.head.checked_sub(1);
    responses.push((response, held));
    Ok(Chunk {
        responses,
        events,
        next: page.next,
        bytes: BytePermit::default(),
    })
}

/// Sends a chunk's responses in order, each holding its share of the chunk's
/// bytes. Fails with how the call ends when the reader is gone or stalled,
/// or the server is shutting down.
async fn send_chunk(
    sender: &Outbox<Sent>,
    shutdown: &mut watch::Receiver<bool>,
    chunk: Chunk,
) -> Result<(), ReadEnd> {
    let mut bytes = chunk.bytes;
    for (response, held) in chunk.responses {
        let share = bytes.split(held);
        tokio::select! {
            sent = sender.send((Ok(response), share)) => match sent {
                Ok(()) => {}
                Err(Undelivered::Gone) => {
                    tracing::debug!("reader went away");
                    return Err(ReadEnd::Done);
                }
                Err(Undelivered::Stalled) => return Err(ReadEnd::Stalled),
            },
            // A reader that stopped reading must not hold up shutdown.
            _ = shutdown.wait_for(|stopping| *stopping) => return Err(ReadEnd::Failed(shutting_down())),
        }
    }
    Ok(())
}

/// How a read's pipeline ended.
enum ReadEnd {
    /// Everything was sent, or the reader went away.
    Done,
    /// The call ends with this status after what is buffered.
    Failed(Status),
    /// The reader took nothing for the client stall timeout while
    /// responses waited.
    Stalled,
}

/// Ends the read of a client that stopped reading: what it buffered (and
/// the bytes it holds) is dropped now; it sees CLIENT_STALLED if it ever
/// reads again. The call's span names the stream.
fn cut_off(sender: &Outbox<Sent>) {
    let timeout_ms = sender.stall_timeout().map_or(0, |timeout| {
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    });
    tracing::info!(
        timeout_ms,
        "the reader took nothing within the stall timeout; ending the read and freeing what it buffered"
    );
    let status = to_status(&Error::ClientStalled { timeout_ms });
    sender.cut_off((Err(status), BytePermit::default()));
}

/// A read's responses as tonic takes them; each response's bytes go back to
/// the server's budget as it is taken.
struct ReadResponses(OutboxReceiver<Sent>);

impl Stream for ReadResponses {
    type Item = Result<pb::ReadResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(context)
            .map(|sent| sent.map(|(response, _bytes)| response))
    }
}
