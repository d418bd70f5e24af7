//! Many appends in flight on one call: [`AppendSession`], over the
//! `AppendStream` RPC.
//!
//! This module owns the session's two halves: the send side (each append is
//! tagged with a fresh correlation id, registered, and queued for the call
//! in the order the methods are called) and the background task that routes
//! every answer to its waiting future by correlation id, and fails every
//! waiting future when the call ends. Answers decode through the unary
//! calls' conversions (`AppendResult::from`, `Error::from(Status)`), so a
//! session's results and errors are exactly the unary calls'.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use cairn_proto::reason;
use cairn_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::dcb::AppendCondition;
use crate::{AppendResult, Client, Error, EventData, ExpectedRevision, Result, StreamAppend};

/// The answer to one request, as the server sent it.
type Reply = pb::append_stream_response::Kind;

/// One open `AppendStream` call: many appends (single-stream or
/// multi-stream, with or without a DCB condition) in flight at once on the
/// client's one connection, each answered as its commit group becomes
/// durable. Cheap to clone (clones share the call); the call is half-closed
/// when the last clone is dropped, and its answers still arrive.
///
/// **Order.** Each method queues its request when it is called, not when
/// its future is first polled: requests go out, and are committed, in the
/// order of the calls (on one task; calls racing on several tasks go out in
/// some order). So appends to one stream with exact expectations can be
/// issued back to back without waiting. Answers arrive in any order.
///
/// **Bounds.** A queued request is held until the server reads it; the
/// server reads at most 256 requests (16 MiB) ahead of their answers per call
/// and then applies HTTP/2 flow control. The client holds one request per
/// future not yet resolved, as it would for as many unary calls: bound the
/// futures you keep, e.g. with a `tokio::sync::Semaphore`. Dropping a future
/// does not withdraw its request (it is already queued); its answer is
/// discarded.
///
/// **Failures.** A request the server refuses fails alone, with the unary
/// call's error (e.g. [`Error::WrongExpectedRevision`]); the others go on. If
/// the call ends (the server shuts down, the connection breaks), every
/// unanswered future fails with [`Error::Unavailable`], and so does every
/// later call on the session: such an append may or may not have been
/// written. Open a new session and resend it with the same event ids (an
/// exact retry returns the original result with `idempotent_replay`).
///
/// ```no_run
/// use cairn_client::{Client, EventData, ExpectedRevision};
///
/// # async fn demo() -> cairn_client::Result<()> {
/// let client = Client::connect("http://127.0.0.1:7070").await?;
/// let session = client.append_session().await?;
/// // Ten appends to one stream, each expecting the one before: all are
/// // queued before any answer comes back.
/// let pending: Vec<_> = (0..10u64)
///     .map(|n| {
///         let expected = match n {
///             0 => ExpectedRevision::NoStream,
///             n => ExpectedRevision::Exact(n - 1),
///         };
///         let event = EventData::json_text("Counted", format!(r#"{{"n":{n}}}"#));
///         session.append("counter-1", expected, vec![event])
///     })
///     .collect();
/// for (n, answer) in pending.into_iter().enumerate() {
///     assert_eq!(answer.await?.current_revision, Some(n as u64));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AppendSession {
    /// The call's request stream. Unbounded because every queued request
    /// belongs to a future its caller holds (see "Bounds").
    requests: mpsc::UnboundedSender<pb::AppendStreamRequest>,
    /// Shared with the routing task.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AppendSession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        formatter
            .debug_struct("AppendSession")
            .field("pending", &state.pending.len())
            .field("ended", &state.ended)
            .finish()
    }
}

/// What the session's senders and its routing task share.
struct Shared {
    /// The next correlation id; ids are never reused within a session, so
    /// no two requests of the call ever share one.
    next_correlation: AtomicU64,
    /// Held for a few instructions, never across an `.await`.
    state: Mutex<State>,
}

struct State {
    /// The waiting future of every request sent and not yet answered.
    pending: HashMap<u64, oneshot::Sender<Result<Reply>>>,
    /// Set once, when the call ended: every waiting future got this error,
    /// and every later request gets it at once. Checked and set under the
    /// lock, so that no request registers after the last waiter was failed.
    ended: Option<Error>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Client {
    /// Opens an [`AppendSession`]: one `AppendStream` call on this client's
    /// connection, for many appends in flight at once. Fails as any call does
    /// when the server cannot be reached or refuses the credentials.
    pub async fn append_session(&self) -> Result<AppendSession> {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let responses = self
            .streams
            .clone()
            .append_stream(UnboundedReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let shared = Arc::new(Shared {
            next_correlation: AtomicU64::new(0),
            state: Mutex::new(State {
                pending: HashMap::new(),
                ended: None,
            }),
        });
        tokio::spawn(route(responses, Arc::clone(&shared)));
        Ok(AppendSession { requests, shared })
    }
}

impl AppendSession {
    /// Appends `events` to `stream` if `expected` holds, as
    /// [`Client::append`]. The request is queued now; the future resolves
    /// with its answer.
    pub fn append(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> AppendAnswer<AppendResult> {
        let request = StreamAppend::new(stream, expected, events).into_proto();
        self.send(pb::append_stream_request::Kind::Append(request), one_result)
    }

    /// [`AppendSession::append`] with a DCB condition, as [`Client::append_if`].
    pub fn append_if(
        &self,
        stream: impl Into<String>,
        expected: ExpectedRevision,
        events: Vec<EventData>,
        condition: AppendCondition,
    ) -> AppendAnswer<AppendResult> {
        let mut request = StreamAppend::new(stream, expected, events).into_proto();
        request.condition = Some(condition.into_proto());
        self.send(pb::append_stream_request::Kind::Append(request), one_result)
    }

    /// Appends to several streams atomically, as [`Client::append_multi`].
    pub fn append_multi(&self, parts: Vec<StreamAppend>) -> AppendAnswer<Vec<AppendResult>> {
        self.append_multi_if(parts, None)
    }

    /// [`AppendSession::append_multi`] with a DCB condition for the whole
    /// request, as [`Client::append_multi_if`].
    pub fn append_multi_if(
        &self,
        parts: Vec<StreamAppend>,
        condition: Option<AppendCondition>,
    ) -> AppendAnswer<Vec<AppendResult>> {
        let request = pb::AppendMultiRequest {
            parts: parts.into_iter().map(StreamAppend::into_proto).collect(),
            condition: condition.map(AppendCondition::into_proto),
        };
        self.send(pb::append_stream_request::Kind::Multi(request), results)
    }

    /// Registers a waiter and queues the request, under the lock (see
    /// [`State::ended`]).
    fn send<T>(
        &self,
        kind: pb::append_stream_request::Kind,
        decode: fn(Reply) -> Result<T>,
    ) -> AppendAnswer<T> {
        let correlation = self.shared.next_correlation.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        let mut state = self.shared.lock();
        if let Some(error) = &state.ended {
            return AppendAnswer::failed(error.clone(), decode);
        }
        let request = pb::AppendStreamRequest {
            correlation_id: correlation,
            kind: Some(kind),
        };
        if self.requests.send(request).is_err() {
            // The transport dropped the request stream: the call is over,
            // and the routing task is about to say how.
            return AppendAnswer::failed(ended_without_status(), decode);
        }
        state.pending.insert(correlation, sender);
        AppendAnswer {
            receiver: Some(receiver),
            failed: None,
            decode,
        }
    }
}

/// The answer to one request of an [`AppendSession`]: resolves to what the
/// unary call would return.
#[must_use = "the request is sent either way; the future only carries its answer"]
pub struct AppendAnswer<T> {
    /// The answer's way back (`None` when it failed before it was sent).
    receiver: Option<oneshot::Receiver<Result<Reply>>>,
    /// The error of a request that was never sent.
    failed: Option<Error>,
    /// The reply as the unary call's result.
    decode: fn(Reply) -> Result<T>,
}

impl<T> AppendAnswer<T> {
    fn failed(error: Error, decode: fn(Reply) -> Result<T>) -> Self {
        Self {
            receiver: None,
            failed: Some(error),
            decode,
        }
    }
}

impl<T> std::fmt::Debug for AppendAnswer<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AppendAnswer")
            .field("sent", &self.receiver.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> Future for AppendAnswer<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Result<T>> {
        let decode = self.decode;
        let Some(receiver) = self.receiver.as_mut() else {
            return Poll::Ready(Err(self.failed.take().unwrap_or_else(ended_without_status)));
        };
        match Pin::new(receiver).poll(context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(answer) => {
                self.receiver = None;
                // The routing task answers every waiter before it ends; a
                // dropped sender means it was stopped (the runtime is going).
                let reply = answer.unwrap_or_else(|_| Err(ended_without_status()));
                Poll::Ready(reply.and_then(decode))
            }
        }
    }
}

/// Routes each answer to its waiter until the call ends, then fails every
/// waiter still there (and every later request) with why it ended.
async fn route(mut responses: tonic::Streaming<pb::AppendStreamResponse>, shared: Arc<Shared>) {
    let ended = loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let waiter = shared.lock().pending.remove(&response.correlation_id);
                let reply = response.kind.ok_or_else(|| Error::Other {
                    code: tonic::Code::Internal,
                    message: "the server sent an AppendStream answer without a result".into(),
                });
                // A waiter that was dropped no longer wants its answer.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
            Ok(None) => break ended_without_status(),
            Err(status) => break ended_with(&status),
        }
    };
    let waiters = {
        let mut state = shared.lock();
        state.ended = Some(ended.clone());
        std::mem::take(&mut state.pending)
    };
    for (_, waiter) in waiters {
        let _ = waiter.send(Err(ended.clone()));
    }
}

/// The error of every append whose answer did not come before the call
/// ended with `status`.
fn ended_with(status: &Status) -> Error {
    Error::Unavailable(format!(
        "the append session ended ({:?}: {}); an append it did not answer may or may not \
         have been written: resend it with the same event ids on a new session",
        status.code(),
        status.message()
    ))
}

/// [`ended_with`] for a call that ended without an error status.
fn ended_without_status() -> Error {
    Error::Unavailable(
        "the append session ended; an append it did not answer may or may not have been \
         written: resend it with the same event ids on a new session"
            .into(),
    )
}

/// A failed request's error, decoded as the unary call's status would be.
fn error_of(error: pb::AppendError) -> Error {
    let reason = pb::ErrorReason::try_from(error.reason)
        .map(|reason| reason.as_str_name())
        .unwrap_or_default();
    let status = Status::with_error_details(
        tonic::Code::from(error.code),
        error.message,
        ErrorDetails::with_error_info(reason, reason::ERROR_DOMAIN, error.metadata),
    );
    status.into()
}

/// The reply to an `append`.
fn one_result(reply: Reply) -> Result<AppendResult> {
    match reply {
        Reply::Append(response) => Ok(response.into()),
        Reply::Error(error) => Err(error_of(error)),
        Reply::Multi(_) => Err(mismatched()),
    }
}

/// The reply to an `append_multi`.
fn results(reply: Reply) -> Result<Vec<AppendResult>> {
    match reply {
        Reply::Multi(response) => Ok(response
            .results
            .into_iter()
            .map(AppendResult::from)
            .collect()),
        Reply::Error(error) => Err(error_of(error)),
        Reply::Append(_) => Err(mismatched()),
    }
}

fn mismatched() -> Error {
    Error::Other {
        code: tonic::Code::Internal,
        message: "the server answered an AppendStream request with the other call's result".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A per-request error decodes to the same variant as the unary call's
    /// status with the same code, reason and metadata.
    #[test]
    fn errors_decode_as_the_unary_status_does() {
        let metadata: HashMap<String, String> = [
            ("stream", "order-1"),
            ("expected", "exact 1"),
            ("current", "4"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
        let error = error_of(pb::AppendError {
            code: tonic::Code::FailedPrecondition as i32,
            message: "wrong expected revision".into(),
            reason: pb::ErrorReason::WrongExpectedRevision as i32,
            metadata,
        });
        assert_eq!(
            error,
            Error::WrongExpectedRevision {
                stream: "order-1".into(),
                expected: "exact 1".into(),
                current: Some(4),
            }
        );
        let denied = error_of(pb::AppendError {
            code: tonic::Code::PermissionDenied as i32,
            message: "bob may not write to 'private-1'".into(),
            reason: pb::ErrorReason::AccessDenied as i32,
            metadata: HashMap::new(),
        });
        assert_eq!(
            denied,
            Error::PermissionDenied("bob may not write to 'private-1'".into())
        );
    }

    #[test]
    fn a_reply_of_the_other_shape_is_an_error() {
        let multi = Reply::Multi(pb::AppendMultiResponse::default());
        assert!(matches!(one_result(multi), Err(Error::Other { .. })));
        let single = Reply::Append(pb::AppendResponse::default());
        assert!(matches!(results(single), Err(Error::Other { .. })));
    }
}
