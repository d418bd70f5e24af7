//! `cairn.v1.Streams/AppendStream`: many appends on one call.
//!
//! This module owns one call's loop: it reads the call's requests, submits
//! each to the engine as soon as it is read (in arrival order, without
//! waiting for earlier answers, so that many land in one commit group),
//! bounds what the call has in flight (requests and bytes), and routes every
//! answer, tagged with its correlation id, to the client. It makes no
//! decision of its own about an append: each request goes through the unary
//! calls' conversion (`streams::append_parts`, `streams::multi_parts`), the
//! engine's `append_multi_if` (authorization, the write gate, limits,
//! metrics) and the one error mapping (`status::to_status`, carried as an
//! `AppendError` by `status::append_error`).
//!
//! Invariants:
//! - Every request read is answered at most once, and exactly once unless
//!   the client went away; a request submitted to the engine is always
//!   waited for (the call's task outlives the client), so a submitted append
//!   is committed in full or not at all whatever the client does.
//! - Requests reach the store's queue in arrival order: the engine's append
//!   future submits to the store on its first poll (everything before the
//!   store's ticket is synchronous), and that first poll happens here, in
//!   the reading loop, before the next request is read.
//! - At most [`MAX_IN_FLIGHT`] requests, and less than
//!   [`MAX_IN_FLIGHT_BYTES`] plus one request, are in flight: the loop reads
//!   only while both bounds have room (backpressure; nothing is dropped).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use cairn_engine::{Engine, Error, Escaped, Outbox, OutboxReceiver, Principal, Undelivered};
use cairn_proto::v1 as pb;
use cairn_storage::{AppendCondition, AppendResult, StreamAppend};
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::{Code, Status, Streaming};
use tracing::Instrument;

use super::status::{append_error, invalid_argument, to_status};
use super::streams::{append_parts, multi_parts, shutting_down};
use super::to_proto;

/// Requests of one call in flight at once: read and not yet answered.
/// A quarter of the default server-wide write bound (4096), so that a few
/// streaming clients cannot take every write slot between them.
pub(super) const MAX_IN_FLIGHT: usize = 256;
/// Encoded bytes of one call's requests in flight: the call reads another
/// request only while less than this is held, so it holds at most this plus
/// one request (itself bounded by the server's message limit).
pub(super) const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;

/// What the answers' channel carries: an answer, or the call's closing status.
type Answer = Result<pb::AppendStreamResponse, Status>;

/// Starts serving one AppendStream call for `by` on a tracked task and
/// returns its answers, as tonic takes them.
pub(super) fn start(
    engine: Engine,
    by: Principal,
    deadline: Option<Instant>,
    incoming: Streaming<pb::AppendStreamRequest>,
) -> Answers {
    // Answers are small (revisions and positions); one per request in flight
    // can wait here besides the requests in flight.
    let (outbox, receiver) = engine.outbox::<Answer>(MAX_IN_FLIGHT);
    let span = tracing::info_span!("append_stream");
    let call = Call {
        engine: engine.clone(),
        by,
        outbox,
        gone: false,
    };
    engine
        .tasks()
        .spawn(call.run(incoming, deadline).instrument(span));
    Answers(receiver)
}

/// The call's answers as tonic takes them from the channel.
pub struct Answers(OutboxReceiver<Answer>);

impl Stream for Answers {
    type Item = Answer;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Answer>> {
        self.0.poll_recv(context)
    }
}

/// A request submitted to the engine, as it comes back to the call's loop.
struct Done {
    /// The request's correlation id.
    correlation: u64,
    /// Its answer (success or error).
    kind: pb::append_stream_response::Kind,
}

/// Which unary call a request stands for: it decides the answer's shape.
#[derive(Clone, Copy)]
enum Shape {
    Append,
    Multi,
}

/// One call's state, owned by its task.
struct Call {
    /// Every append goes through it, as a unary append does.
    engine: Engine,
    /// The call's identity (the auth layer's, once per call); every request
    /// is authorized for it by the engine.
    by: Principal,
    /// The answers' channel, with the client stall timeout.
    outbox: Outbox<Answer>,
    /// The client is gone or was cut off: answers are no longer sent.
    gone: bool,
}

/// Why the call stopped reading.
enum End {
    /// The client half-closed: OK after the last answer.
    Finished,
    /// The call ends with this status after the last answer.
    Failed(Status),
    /// The client is gone: nothing more is sent.
    Gone,
}

impl Call {
    async fn run(
        mut self,
        mut incoming: Streaming<pb::AppendStreamRequest>,
        deadline: Option<Instant>,
    ) {
        // One message per submitted request, sent once by the request's task:
        // never more than MAX_IN_FLIGHT are queued.
        let (done_sender, mut done) = mpsc::unbounded_channel::<Done>();
        // Correlation id -> encoded size, of every request in flight.
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut bytes = 0usize;
        let mut shutdown = self.engine.shutdown_signal();
        let end = loop {
            let room = open.len() < MAX_IN_FLIGHT && bytes < MAX_IN_FLIGHT_BYTES;
            tokio::select! {
                // Answers first: they free room and the client waits for them.
                biased;
                Some(finished) = done.recv() => {
                    if let Some(size) = open.remove(&finished.correlation) {
                        bytes -= size;
                    }
                    self.answer(finished.correlation, finished.kind).await;
                    if self.gone {
                        break End::Gone;
                    }
                }
                () = stopping(&mut shutdown) => break End::Failed(shutting_down()),
                () = sleep_until(deadline) => {
                    tracing::debug!("deadline passed");
                    break End::Failed(to_status(&Error::DeadlineExceeded));
                }
                () = self.outbox.closed() => break End::Gone,
                message = incoming.message(), if room => match message {
                    Ok(Some(request)) => {
                        let correlation = request.correlation_id;
                        if open.contains_key(&correlation) {
                            break End::Failed(invalid_argument(format!(
                                "correlation id {correlation} is in use by an unanswered request of this call"
                            )));
                        }
                        let size = request.encoded_len();
                        match self.submit(request, &done_sender) {
                            Ok(()) => {
                                open.insert(correlation, size);
                                bytes += size;
                            }
                            Err(kind) => {
                                self.answer(correlation, kind).await;
                                if self.gone {
                                    break End::Gone;
                                }
                            }
                        }
                    }
                    Ok(None) => break End::Finished,
                    Err(status) => break read_failure(status),
                },
            }
        };
        // Stop reading; wait for every submitted request (the engine answers
        // each one, also at shutdown), answering while the client is there.
        let mut gone = matches!(end, End::Gone);
        while !open.is_empty() {
            let Some(finished) = done.recv().await else {
                break;
            };
            open.remove(&finished.correlation);
            if !gone {
                self.answer(finished.correlation, finished.kind).await;
                gone = self.gone;
            }
        }
        if gone {
            return;
        }
        let last = match end {
            End::Finished | End::Gone => None,
            End::Failed(status) => {
                tracing::debug!(code = ?status.code(), message = %Escaped(status.message()), "append stream ended");
                Some(Err(status))
            }
        };
        self.outbox.close(last);
        tokio::select! {
            drained = self.outbox.drained() => {
                if drained.is_err() {
                    self.cut_off();
                }
            }
            // Connections still open are dropped after the grace period.
            () = stopping(&mut shutdown) => {}
        }
    }

    /// Converts `request` and submits it to the engine now; its answer
    /// comes back on `done`. A request the adapter refuses is not submitted:
    /// its error answer is returned.
    fn submit(
        &self,
        request: pb::AppendStreamRequest,
        done: &mpsc::UnboundedSender<Done>,
    ) -> Result<(), pb::append_stream_response::Kind> {
        use pb::append_stream_request::Kind;
        let correlation = request.correlation_id;
        let (shape, converted) = match request.kind {
            Some(Kind::Append(append)) => (Shape::Append, append_parts(append)),
            Some(Kind::Multi(multi)) => (Shape::Multi, multi_parts(multi)),
            None => (
                Shape::Append,
                Err(invalid_argument(
                    "an AppendStreamRequest needs `append` or `multi`",
                )),
            ),
        };
        let (parts, condition) = converted.map_err(|status| error_kind(&status))?;
        let span = tracing::info_span!(
            "append_stream_request",
            correlation,
            stream = %Escaped(parts.first().map_or("", |part| part.stream.as_str())),
            parts = parts.len(),
            events = parts.iter().map(|part| part.events.len()).sum::<usize>(),
            outcome = tracing::field::Empty,
        );
        let mut commit = Box::pin(commit(
            self.engine.clone(),
            self.by.clone(),
            parts,
            condition,
        ));
        // The first poll submits the request to the store (see the module
        // docs); the task below polls it again with its own waker, so the
        // waker given here needs to wake nothing.
        let first = span.in_scope(|| {
            commit
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        });
        let done = done.clone();
        let answer = async move {
            let result = match first {
                Poll::Ready(result) => result,
                Poll::Pending => commit.await,
            };
            let kind = answer_kind(shape, &result);
            record_outcome(&result);
            // The call's loop waits for every submitted request, so it is
            // still there.
            let _ = done.send(Done { correlation, kind });
        };
        self.engine.tasks().spawn(answer.instrument(span));
        Ok(())
    }

    /// Hands one answer to the transport, waiting while the client reads;
    /// marks the call gone when the client went away or stalled (then cut off).
    async fn answer(&mut self, correlation: u64, kind: pb::append_stream_response::Kind) {
        if self.gone {
            return;
        }
        let response = pb::AppendStreamResponse {
            correlation_id: correlation,
            kind: Some(kind),
        };
        match self.outbox.send(Ok(response)).await {
            Ok(()) => {}
            Err(Undelivered::Gone) => {
                tracing::debug!("the client went away");
                self.gone = true;
            }
            Err(Undelivered::Stalled) => {
                self.cut_off();
                self.gone = true;
            }
        }
    }

    /// Ends the call of a client that took no answer for the stall timeout:
    /// what it buffered is dropped now; it sees CLIENT_STALLED if it reads
    /// again.
    fn cut_off(&self) {
        let timeout_ms = self.outbox.stall_timeout().map_or(0, |timeout| {
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        });
        tracing::info!(
            timeout_ms,
            "the client took no answer within the stall timeout; ending the append stream"
        );
        self.outbox
            .cut_off(Err(to_status(&Error::ClientStalled { timeout_ms })));
    }
}

/// The engine's append, as the unary calls make it; `'static` so that it can
/// move to the request's task after its first poll.
async fn commit(
    engine: Engine,
    by: Principal,
    parts: Vec<StreamAppend>,
    condition: Option<AppendCondition>,
) -> Result<Vec<AppendResult>, Status> {
    engine
        .append_multi_if(&by, parts, condition)
        .await
        .map_err(|error| to_status(&error))
}

/// The answer to a submitted request, shaped as the unary call's response.
fn answer_kind(
    shape: Shape,
    result: &Result<Vec<AppendResult>, Status>,
) -> pb::append_stream_response::Kind {
    use pb::append_stream_response::Kind;
    match (shape, result) {
        (_, Err(status)) => error_kind(status),
        (Shape::Append, Ok(results)) => match results.first() {
            Some(result) if results.len() == 1 => Kind::Append(to_proto::append_result(result)),
            _ => error_kind(&Status::internal("append returned no result")),
        },
        (Shape::Multi, Ok(results)) => Kind::Multi(pb::AppendMultiResponse {
            results: results.iter().map(to_proto::append_result).collect(),
        }),
    }
}

/// A failed request's answer.
fn error_kind(status: &Status) -> pb::append_stream_response::Kind {
    pb::append_stream_response::Kind::Error(append_error(status))
}

/// Records a request's outcome on its span, as the unary calls do.
fn record_outcome(result: &Result<Vec<AppendResult>, Status>) {
    let span = tracing::Span::current();
    match result {
        Ok(_) => {
            span.record("outcome", "ok");
        }
        Err(status) => {
            span.record("outcome", format!("{:?}", status.code()));
            tracing::debug!(code = ?status.code(), message = %Escaped(status.message()), "request failed");
        }
    }
}

/// How the call ends when reading its next request failed. A request over
/// the message limit, or one that does not decode, ends the call with the
/// status the unary call gets for it (`grpc::transport_status` rewrites
/// tonic's for unary calls; here tonic's status would reach the client in
/// trailers untouched). Anything else is the client's stream breaking
/// (reset, disconnect): the client is gone.
fn read_failure(status: Status) -> End {
    match status.code() {
        Code::OutOfRange => End::Failed(to_status(&Error::LimitExceeded(
            "a request is larger than the server's message limit".into(),
        ))),
        Code::Internal if status.message().contains("failed to decode") => End::Failed(
            invalid_argument("a request is not a valid message (is every string valid UTF-8?)"),
        ),
        _ => {
            tracing::debug!(code = ?status.code(), message = %Escaped(status.message()), "append stream broke");
            End::Gone
        }
    }
}

/// Resolves once the server is shutting down (never holding the watch's
/// guard, which is not `Send`).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// Resolves at `deadline`; never without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
