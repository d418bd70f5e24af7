//! The embedded admin UI: its static assets (`/`, `/ui/...`, compiled into the
//! binary from `ui/`) and the JSON API under `/api/` that the page calls.
//!
//! This module owns the API's routes, its query parameters, the JSON shapes,
//! its bounds (page sizes, bytes per response and per shown payload), the
//! CSRF rule for `POST`s and the security headers of every admin response.
//! It makes no access decision of its own: the authentication middleware of
//! `http/mod.rs` put the caller's [`Principal`] in the request, and every
//! endpoint asks the engine exactly what the gRPC call it mirrors asks
//! (overview: any authenticated caller, as `Server.Info`; streams and events:
//! `Engine::read_access`, filtering index reads and listings as
//! `Streams.Read`/`ListStreams` do; the tail: `Engine::subscribe`; groups:
//! `Engine::authorize_operations`, as `PersistentSubscriptions`; scavenge:
//! `Operations`'s own checks). A refused call changes nothing. It must not
//! touch RocksDB except through `Engine::blocking`, nor name a gRPC type.
//!
//! CSRF: a `POST` must carry the header `X-Cairn-Request: 1`. A cross-site
//! form or `<img>` cannot set a header, and a cross-site `fetch` with one
//! needs a CORS preflight this server never grants, so a page elsewhere
//! cannot make a logged-in browser (which replays Basic credentials by
//! itself) replay parked events or start a scavenge.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use cairn_engine::groups::{ConsumerStatus, GroupReport};
use cairn_engine::{
    BytePermit, EndReason, Engine, Error, Feed, FeedReceiver, Principal, ScavengeStatus,
    ScavengeTrigger, StartFrom, SubscribeRequest,
};
use cairn_storage::{
    Direction, ReadFilter, ReadFrom, ReadRequest, ReadSource, RecordedEvent, StreamInfo,
    StreamState,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::Stream;

/// Default page of `GET /api/streams`.
const STREAMS_DEFAULT: usize = 100;
/// Largest page of `GET /api/streams` (a larger `limit` is cut to it).
pub const STREAMS_MAX: usize = 1000;
/// Byte budget of one stream listing (names and custom metadata): the page
/// ends after the stream that reaches it.
const STREAMS_PAGE_BYTES: usize = 1024 * 1024;
/// Default page of `GET /api/streams/{name}/events`.
const EVENTS_DEFAULT: usize = 20;
/// Largest page of `GET /api/streams/{name}/events`.
pub const EVENTS_MAX: usize = 500;
/// Byte budget of one events page (`ReadRequest::max_bytes`): the page
/// ends after the event that reaches it.
const EVENTS_PAGE_BYTES: usize = 1024 * 1024;
/// Most bytes of one event's data (and, apart, of its metadata) shown in a
/// page; the rest is cut and the payload marked `truncated`.
pub const SHOWN_PAYLOAD_BYTES: usize = 256 * 1024;
/// The same for events of the live tail (many small ones go by).
const TAIL_PAYLOAD_BYTES: usize = 16 * 1024;
/// Pretty-printed JSON longer than this many times its source is shown as
/// the source instead (deeply nested JSON indents every line).
const PRETTY_GROWTH: usize = 4;
/// Longest prefix, `after` or stream name accepted in a query, bytes (the
/// longest stream name).
const MAX_NAME_BYTES: usize = 1024;
/// Longest error message sent, bytes.
const MAX_MESSAGE_BYTES: usize = 1024;

/// The header every `POST` must carry with the value `1` (the CSRF rule).
pub const CSRF_HEADER: &str = "x-cairn-request";

/// Sent with every admin response. Scripts, styles and requests only from
/// this server; no inline script or style; no framing; no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The UI and API routes; the caller adds authentication in front of them.
pub(super) fn routes() -> Router<Engine> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/index.html", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/api/overview", get(overview))
        .route("/api/streams", get(list_streams))
        .route("/api/streams/{name}/events", get(read_events))
        .route("/api/tail", get(tail))
        .route("/api/groups", get(list_groups))
        .route("/api/groups/{name}", get(group_info))
        .route("/api/groups/{name}/replay-parked", post(replay_parked))
        .route("/api/operations", get(operations))
        .route("/api/scavenge", post(start_scavenge))
        .route("/api/scavenge/stop", post(stop_scavenge))
        .layer(middleware::from_fn(security_headers))
}

/// Adds the security headers to every admin response and refuses a `POST`
/// without the CSRF header before any handler runs.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = if request.method() == axum::http::Method::POST
        && request
            .headers()
            .get(CSRF_HEADER)
            .is_none_or(|value| value.as_bytes() != b"1")
    {
        api_failure(
            StatusCode::FORBIDDEN,
            format!(
                "a POST to the admin API needs the header `{CSRF_HEADER}: 1` \
                 (the defence against cross-site requests)"
            ),
        )
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// A JSON error `{"error": message}` with `status`.
fn api_failure(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": truncate(message) }))).into_response()
}

/// An engine error as a JSON error response. Failures whose text may come
/// from the operating system or RocksDB (paths, internals) are logged and
/// answered with a fixed sentence.
fn api_error(error: &Error) -> Response {
    use cairn_storage::Error as Store;
    let status = match error {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        Error::GroupNotFound { .. }
        | Error::Store(Store::StreamNotFound { .. } | Store::StreamTombstoned { .. }) => {
            StatusCode::NOT_FOUND
        }
        Error::InvalidArgument(_)
        | Error::Store(Store::InvalidArgument(_) | Store::LimitExceeded { .. }) => {
            StatusCode::BAD_REQUEST
        }
        Error::ReplayInProgress { .. }
        | Error::OperationInProgress { .. }
        | Error::GroupBroken { .. } => StatusCode::CONFLICT,
        Error::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::ShuttingDown
        | Error::Overloaded { .. }
        | Error::Store(Store::ShuttingDown | Store::Overloaded { .. }) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => {
            tracing::warn!(%error, "admin API: answering with an internal failure");
            return api_failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed to answer (the server log has the details)".into(),
            );
        }
    };
    let mut response = api_failure(status, error.to_string());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cairn\", charset=\"UTF-8\""),
        );
    }
    response
}

fn bad_request(message: impl Into<String>) -> Response {
    api_failure(StatusCode::BAD_REQUEST, message.into())
}

/// `text` cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn truncate(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (truncated)");
    }
    text
}

/// Refuses a query value longer than a stream name can be.
fn check_length(what: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} is {} bytes; the limit is {MAX_NAME_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// `GET /api/overview`: version, head, counts, disk, subscriptions, limits
/// and who the caller is. Open to every authenticated caller, as
/// `Server.Info` is.
async fn overview(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let figures = engine
        .blocking(|store| Ok((store.info(), store.disk_bytes())))
        .await;
    let (info, disk_bytes) = match figures {
        Ok(figures) => figures,
        Err(error) => return api_error(&error),
    };
    let limits = engine.store().limits();
    let subscriptions = engine.subscription_stats();
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let may_operate = engine
        .authorize_operations(&principal, "see operations")
        .is_ok();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": engine.uptime().as_secs(),
        "head_position": info.head,
        "stream_count": info.stream_count,
        "event_count": info.event_count,
        "disk_bytes": disk_bytes,
        "active_subscriptions": subscriptions.active.load(std::sync::atomic::Ordering::Relaxed),
        "subscription_fell_behind": load(&subscriptions.fell_behind),
        "delivered_events": load(&subscriptions.delivered),
        "buffered_bytes": engine.buffer_budget().in_use(),
        "max_buffered_bytes": engine.buffer_budget().capacity(),
        "limits": {
            "max_event_bytes": limits.max_event_bytes,
            "max_append_bytes": limits.max_append_bytes,
            "max_read_page": limits.max_read_page,
        },
        "security_enabled": engine.security().enabled(),
        "user": {
            "name": principal.name(),
            "roles": principal.roles().iter().map(|role| role.name()).collect::<Vec<_>>(),
            "may_operate": may_operate,
        },
    }))
    .into_response()
}

/// Query of `GET /api/streams`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Names starting with this (empty: every stream).
    #[serde(default)]
    prefix: String,
    /// Continue after this name (the previous page's `next_after`).
    #[serde(default)]
    after: String,
    /// Page size: default [`STREAMS_DEFAULT`], at most [`STREAMS_MAX`].
    limit: Option<usize>,
}

/// A stream's info as the API shows it.
fn stream_json(info: &StreamInfo) -> Value {
    let state = match info.state {
        StreamState::Live => "live",
        StreamState::SoftDeleted => "deleted",
        StreamState::Tombstoned => "tombstoned",
    };
    json!({
        "name": info.name,
        "state": state,
        "last_revision": info.last_revision,
        "first_visible_revision": info.first_visible_revision,
        "metadata_revision": info.metadata_revision,
        "metadata": {
            "max_count": info.metadata.max_count,
            "max_age_ms": info.metadata.max_age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            "truncate_before": info.metadata.truncate_before,
            "custom": info.metadata.custom,
        },
    })
}

/// `GET /api/streams?prefix=&after=&limit=`: streams in name order, only
/// those the caller may read (as `ListStreams`); `next_after` continues.
async fn list_streams(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Err(message) =
        check_length("prefix", &query.prefix).and_then(|()| check_length("after", &query.after))
    {
        return bad_request(message);
    }
    let visibility = match engine.read_access(&principal, &ReadSource::All) {
        Ok(visibility) => visibility,
        Err(error) => return api_error(&error),
    };
    let limit = page_size(query.limit, STREAMS_DEFAULT, STREAMS_MAX)
        .min(engine.store().limits().max_read_page);
    let prefix = query.prefix;
    let after = (!query.after.is_empty()).then_some(query.after);
    let page = engine
        .blocking(move |store| {
            store.list_streams_page(&prefix, after.as_deref(), limit, STREAMS_PAGE_BYTES)
        })
        .await;
    let page = match page {
        Ok(page) => page,
        Err(error) => return api_error(&error),
    };
    // The next page starts after the last stream scanned, shown or not.
    let next_after = if page.more {
        page.streams.last().map(|info| info.name.clone())
    } else {
        None
    };
    let streams: Vec<Value> = page
        .streams
        .iter()
        .filter(|info| visibility.admits(&info.name))
        .map(stream_json)
        .collect();
    Json(json!({ "streams": streams, "next_after": next_after })).into_response()
}

/// `limit` of a query: `default` when absent or 0, at most `max`.
fn page_size(limit: Option<usize>, default: usize, max: usize) -> usize {
    match limit {
        None | Some(0) => default,
        Some(limit) => limit.min(max),
    }
}

/// Query of `GET /api/streams/{name}/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// `start`, `end`, or a revision (a stream) or position (an index).
    from: Option<String>,
    /// `forwards` (default) or `backwards`.
    direction: Option<String>,
    /// Page size: default [`EVENTS_DEFAULT`], at most [`EVENTS_MAX`].
    limit: Option<usize>,
    /// Only events of streams starting with this.
    #[serde(default)]
    stream_prefix: String,
    /// Only events whose type starts with this.
    #[serde(default)]
    type_prefix: String,
}

/// A filter of at most one stream prefix and one type prefix.
fn prefix_filter(stream_prefix: &str, type_prefix: &str) -> Result<ReadFilter, Error> {
    let list = |prefix: &str| {
        if prefix.is_empty() {
            Vec::new()
        } else {
            vec![prefix.to_owned()]
        }
    };
    let filter = ReadFilter {
        stream_prefixes: list(stream_prefix),
        type_prefixes: list(type_prefix),
        ..ReadFilter::default()
    };
    ReadFilter::check_prefixes(&filter.stream_prefixes, &filter.type_prefixes)?;
    Ok(filter)
}

/// `GET /api/streams/{name}/events?from=&direction=&limit=`: one page of a
/// stream, `$all`, `$ce-<category>` or `$et-<type>`; `next` continues it
/// (as `from`). A stream needs its read permission; an index shows only
/// events of streams the caller may read (as `Streams.Read`).
async fn read_events(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let source = match ReadSource::parse(&name) {
        Ok(source) => source,
        Err(error) => return api_error(&error.into()),
    };
    let visibility = match engine.read_access(&principal, &source) {
        Ok(visibility) => visibility,
        Err(error) => return api_error(&error),
    };
    let direction = match query.direction.as_deref() {
        None | Some("" | "forwards") => Direction::Forwards,
        Some("backwards") => Direction::Backwards,
        Some(other) => {
            return bad_request(format!(
                "direction is `{other}`; use `forwards` or `backwards`"
            ));
        }
    };
    let from = match query.from.as_deref() {
        None | Some("") => match direction {
            Direction::Forwards => ReadFrom::Start,
            Direction::Backwards => ReadFrom::End,
        },
        Some("start") => ReadFrom::Start,
        Some("end") => ReadFrom::End,
        Some(number) => match number.parse() {
            Ok(at) => ReadFrom::At(at),
            Err(_) => {
                return bad_request(format!(
                    "from is `{}`; use `start`, `end` or a number",
                    truncate(number.to_owned())
                ));
            }
        },
    };
    let filter = match prefix_filter(&query.stream_prefix, &query.type_prefix) {
        Ok(filter) => filter,
        Err(error) => return api_error(&error),
    };
    let limit = page_size(query.limit, EVENTS_DEFAULT, EVENTS_MAX);
    let request = match direction {
        Direction::Forwards => ReadRequest::forwards(source, limit),
        Direction::Backwards => ReadRequest::backwards(source, limit),
    }
    .from(from)
    .filter(filter)
    .max_bytes(EVENTS_PAGE_BYTES);
    // The page is held in memory until it is answered: it counts against the
    // server's budget of data on its way to clients, as a gRPC read's chunks do.
    let reservation = EVENTS_PAGE_BYTES + engine.store().limits().max_event_bytes;
    let budget = engine.buffer_budget().clone();
    let budgets = [&budget];
    let mut shutdown = engine.shutdown_signal();
    let _bytes = tokio::select! {
        bytes = BytePermit::reserve(&budgets, reservation) => bytes,
        _ = shutdown.wait_for(|stopping| *stopping) => return api_error(&Error::ShuttingDown),
    };
    let page = engine.blocking(move |store| store.read(&request)).await;
    let page = match page {
        Ok(page) => page,
        Err(error) => return api_error(&error),
    };
    // Events of streams the caller may not read pass by like filtered-out
    // ones: `next` still moves past them.
    let events: Vec<Value> = page
        .events
        .iter()
        .filter(|event| visibility.admits(&event.stream))
        .map(|event| event_json(event, SHOWN_PAYLOAD_BYTES))
        .collect();
    Json(json!({
        "source": name,
        "direction": match direction {
            Direction::Forwards => "forwards",
            Direction::Backwards => "backwards",
        },
        "events": events,
        "next": page.next,
    }))
    .into_response()
}

/// An event as the API shows it; data and metadata up to `shown` bytes each.
fn event_json(event: &RecordedEvent, shown: usize) -> Value {
    json!({
        "stream": event.stream,
        "revision": event.revision,
        "position": event.position,
        "id": event.id.to_string(),
        "type": event.event_type,
        "content_type": event.content_type,
        "tags": event.tags,
        "created_ms": unix_ms(event.created),
        "data": payload_json(&event.data, shown),
        "metadata": payload_json(&event.metadata, shown),
    })
}

/// A payload for people: pretty JSON when it is JSON, else UTF-8 text, else
/// base64; at most `shown` bytes of it (`truncated` says when it was cut).
fn payload_json(bytes: &[u8], shown: usize) -> Value {
    let (encoding, text, truncated) = render_payload(bytes, shown);
    json!({
        "encoding": encoding,
        "text": text,
        "bytes": bytes.len(),
        "truncated": truncated,
    })
}

/// See [`payload_json`]: `(encoding, text, truncated)`.
fn render_payload(bytes: &[u8], shown: usize) -> (&'static str, String, bool) {
    if bytes.is_empty() {
        return ("empty", String::new(), false);
    }
    // Valid JSON (serde_json's check, its nesting limit included) is
    // re-indented as written: key order and number text unchanged.
    if bytes.len() <= shown
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
        && let Ok(text) = std::str::from_utf8(bytes)
    {
        let pretty = jsonformat::format(text, jsonformat::Indentation::TwoSpace);
        if pretty.len() <= bytes.len().saturating_mul(PRETTY_GROWTH) {
            return ("json", pretty, false);
        }
        return ("json", text.to_owned(), false);
    }
    let cut = &bytes[..bytes.len().min(shown)];
    let truncated = cut.len() < bytes.len();
    match std::str::from_utf8(cut) {
        Ok(text) => ("text", text.to_owned(), truncated),
        // Cut inside a character: the text up to it.
        Err(error) if error.error_len().is_none() && cut.len() < bytes.len() => {
            let text = String::from_utf8_lossy(&cut[..error.valid_up_to()]).into_owned();
            ("text", text, true)
        }
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(cut),
            truncated,
        ),
    }
}

/// Query of `GET /api/tail`.
#[derive(Debug, Deserialize)]
struct TailQuery {
    /// `$all` (default), `$ce-<category>`, `$et-<type>` or a stream.
    source: Option<String>,
    /// Only events of streams starting with this.
    #[serde(default)]
    stream_prefix: String,
    /// Only events whose type starts with this.
    #[serde(default)]
    type_prefix: String,
}

/// `GET /api/tail?source=&stream_prefix=&type_prefix=`: events committed from
/// now on, as server-sent events (`event` with an event's JSON, `caught-up`,
/// `fell-behind`, and `end` with the reason before the stream closes). A
/// catch-up subscription of the engine (`Engine::subscribe`): its access
/// rules, its subscription limit, its per-subscriber buffer, its stall
/// timeout; it ends when the server shuts down.
///
/// Each event carries its position (a stream's: its revision) as the SSE
/// `id`. A browser that lost the connection reconnects with it in
/// `Last-Event-ID` (the listener closes a connection whose client sent
/// nothing for its idle timeout, which an open tail is), and the tail
/// resumes right after that event: nothing is missed or shown twice.
async fn tail(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<TailQuery>,
    headers: HeaderMap,
) -> Response {
    let name = query.source.unwrap_or_else(|| "$all".to_owned());
    let source = match ReadSource::parse(&name) {
        Ok(source) => source,
        Err(error) => return api_error(&error.into()),
    };
    let filter = match prefix_filter(&query.stream_prefix, &query.type_prefix) {
        Ok(filter) => filter,
        Err(error) => return api_error(&error),
    };
    let by_revision = matches!(source, ReadSource::Stream(_));
    let from = match headers.get(LAST_EVENT_ID) {
        None => StartFrom::End,
        Some(value) => match value.to_str().ok().and_then(|id| id.parse().ok()) {
            Some(last) if by_revision => StartFrom::AfterRevision(last),
            Some(last) => StartFrom::AfterPosition(last),
            None => return bad_request("Last-Event-ID must be the id of an event of this tail"),
        },
    };
    let receiver = engine.subscribe(
        &principal,
        SubscribeRequest {
            source,
            filter,
            checkpoint_interval: None,
            from,
        },
    );
    let receiver = match receiver {
        Ok(receiver) => receiver,
        Err(error) => return api_error(&error),
    };
    Sse::new(TailEvents {
        receiver,
        by_revision,
        ended: false,
    })
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    .into_response()
}

/// The header a reconnecting `EventSource` sends: the last `id` it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// The feed as server-sent events; after its end (if any) one `end` event.
/// Polled by the response body only as the connection takes it, so each
/// event's bytes go back to the server's budget as it is sent; dropped (and
/// the subscription with it) when the browser goes away.
struct TailEvents {
    receiver: FeedReceiver,
    /// A stream's tail: events are identified by revision, not position.
    by_revision: bool,
    ended: bool,
}

impl Stream for TailEvents {
    type Item = Result<SseEvent, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            let item = match self.receiver.poll_recv(context) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(item)) => item,
            };
            let event = match item {
                Ok(Feed::Event(event)) => SseEvent::default()
                    .event("event")
                    .id(if self.by_revision {
                        event.revision
                    } else {
                        event.position
                    }
                    .to_string())
                    .json_data(event_json(&event, TAIL_PAYLOAD_BYTES)),
                Ok(Feed::CaughtUp { head }) => SseEvent::default()
                    .event("caught-up")
                    .json_data(json!({ "head": head })),
                Ok(Feed::FellBehind { position }) => SseEvent::default()
                    .event("fell-behind")
                    .json_data(json!({ "position": position })),
                Ok(Feed::Confirmation(_) | Feed::Checkpoint { .. }) => continue,
                Err(reason) => {
                    self.ended = true;
                    SseEvent::default()
                        .event("end")
                        .json_data(json!({ "reason": end_message(reason) }))
                }
            };
            // Encoding a `serde_json::Value` cannot fail.
            return Poll::Ready(Some(Ok(event.unwrap_or_default())));
        }
    }
}

/// Why a tail ended, for people; storage failures in a fixed sentence.
fn end_message(reason: EndReason) -> String {
    match reason {
        EndReason::ShuttingDown => "the server is shutting down".to_owned(),
        other => match other.into_error() {
            error @ (Error::Store(_) | Error::Internal(_) | Error::Corrupt(_)) => {
                tracing::warn!(%error, "admin tail ended by a failure");
                "the tail failed (the server log has the details)".to_owned()
            }
            error => truncate(error.to_string()),
        },
    }
}

/// A consumer's figures.
fn consumer_json(consumer: &ConsumerStatus) -> Value {
    json!({
        "id": consumer.id,
        "name": consumer.name,
        "max_in_flight": consumer.max_in_flight,
        "in_flight": consumer.in_flight,
        "delivered": consumer.delivered,
        "acked": consumer.acked,
        "nacked": consumer.nacked,
    })
}

/// A group's definition and figures; its consumers when `with_consumers`.
/// `head` is the store's head, for the lag of groups on an index.
fn group_json(engine: &Engine, report: &GroupReport, head: u64, with_consumers: bool) -> Value {
    let status = &report.status;
    let definition = &report.definition;
    let mut value = json!({
        "name": definition.group,
        "stream": definition.stream,
        "filter": definition.filter,
        "start_cursor": definition.start_cursor,
        "settings": definition.settings,
        "checkpoint": status.checkpoint,
        "consumer_count": status.consumers.len(),
        "in_flight": status.in_flight,
        "waiting": status.waiting,
        "delivered_total": status.delivered_total,
        "acked_total": status.acked_total,
        "retried_total": status.retried_total,
        "parked_total": status.parked_total,
        "parked": report.parked,
        "lag": engine.group_lag(report, head),
    });
    if with_consumers {
        value["consumers"] = status.consumers.iter().map(consumer_json).collect();
    }
    value
}

/// The operation named when a caller may not manage groups (as the gRPC
/// `PersistentSubscriptions` management calls name it).
const MANAGE_GROUPS: &str = "manage consumer groups";

/// `GET /api/groups`: every consumer group with its figures (operators, as
/// `ListGroups`). Bounded by the server's `max_groups`.
async fn list_groups(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
) -> Response {
    if let Err(error) = engine.authorize_operations(&principal, MANAGE_GROUPS) {
        return api_error(&error);
    }
    let reports = match engine.groups().reports().await {
        Ok(reports) => reports,
        Err(error) => return api_error(&error),
    };
    let head = engine.store().info().head;
    let groups: Vec<Value> = reports
        .iter()
        .map(|report| group_json(&engine, report, head, false))
        .collect();
    Json(json!({ "groups": groups })).into_response()
}

/// `GET /api/groups/{name}`: one group with its consumers (as `GetGroupInfo`).
async fn group_info(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Response {
    if let Err(error) = engine.authorize_operations(&principal, MANAGE_GROUPS) {
        return api_error(&error);
    }
    match engine.groups().report(&name).await {
        Ok(report) => {
            let head = engine.store().info().head;
            Json(group_json(&engine, &report, head, true)).into_response()
        }
        Err(error) => api_error(&error),
    }
}

/// Query of `POST /api/groups/{name}/replay-parked`.
#[derive(Debug, Deserialize)]
struct ReplayQuery {
    /// Most events to replay (absent or 0: as many as one call allows).
    max: Option<u64>,
}

/// `POST /api/groups/{name}/replay-parked?max=`: moves parked events back
/// into delivery (operators, as `ReplayParked`); answers how many.
async fn replay_parked(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    Query(query): Query<ReplayQuery>,
) -> Response {
    if let Err(error) = engine.authorize_operations(&principal, MANAGE_GROUPS) {
        return api_error(&error);
    }
    match engine
        .groups()
        .replay_parked(&name, query.max.unwrap_or(0))
        .await
    {
        Ok(replayed) => {
            tracing::info!(group = %cairn_engine::Escaped(&name), replayed, by = %cairn_engine::Escaped(principal.name()), "parked events replayed from the admin UI");
            Json(json!({ "replayed": replayed })).into_response()
        }
        Err(error) => api_error(&error),
    }
}

/// The scavenge job's status as the API shows it.
fn scavenge_json(status: &ScavengeStatus) -> Value {
    json!({
        "state": status.state.as_str(),
        "run": status.run,
        "scheduled": status.trigger == Some(ScavengeTrigger::Schedule),
        "progress": {
            "segments_total": status.progress.segments_total,
            "segments_done": status.progress.segments_done,
            "scanned": status.progress.scanned,
            "removed": status.progress.removed,
            "bytes_removed": status.progress.bytes_removed,
            "stop_requested": status.progress.stop_requested,
        },
        "last_report": status.last_report.map(|report| json!({
            "scanned": report.scanned,
            "removed": report.removed,
            "bytes_removed": report.bytes_removed,
            "segments": report.segments,
        })),
        "started_ms": status.started_at.map(unix_ms),
        "finished_ms": status.finished_at.map(unix_ms),
        "error": status.error,
    })
}

/// `GET /api/operations`: the scavenge job's status (operators, as
/// `GetScavenge`). The engine keeps no backup status to show.
async fn operations(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let operations = engine.operations();
    let status = operations
        .scavenge_status(&principal)
        .and_then(|scavenge| Ok((scavenge, operations.backup_status(&principal)?)));
    match status {
        Ok((scavenge, backups)) => Json(json!({
            "scavenge": scavenge_json(&scavenge),
            "backup": {
                "running": backups.running,
                "taken": backups.taken,
                "failed": backups.failed,
                "last_finished_ms": backups.last.as_ref().map(|last| unix_ms(last.finished_at)),
                "last_head": backups.last.as_ref().and_then(|last| last.head_and_events.map(|(head, _)| head)),
                "last_events": backups.last.as_ref().and_then(|last| last.head_and_events.map(|(_, events)| events)),
                "last_ok": backups.last.as_ref().map(|last| last.head_and_events.is_some()),
            },
        }))
        .into_response(),
        Err(error) => api_error(&error),
    }
}

/// `POST /api/scavenge`: starts a scavenge (as `StartScavenge`).
async fn start_scavenge(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
) -> Response {
    match engine.operations().start_scavenge(&principal) {
        Ok(status) => Json(json!({ "scavenge": scavenge_json(&status) })).into_response(),
        Err(error) => api_error(&error),
    }
}

/// `POST /api/scavenge/stop`: asks the running scavenge to stop (as
/// `StopScavenge`).
async fn stop_scavenge(
    State(engine): State<Engine>,
    Extension(principal): Extension<Principal>,
) -> Response {
    match engine.operations().stop_scavenge(&principal) {
        Ok(status) => Json(json!({ "scavenge": scavenge_json(&status) })).into_response(),
        Err(error) => api_error(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_are_pretty_printed_as_written() {
        let (encoding, text, truncated) = render_payload(
            br#"{"sku":"tea","n":[1,2],"big":123456789012345678901234567890}"#,
            1024,
        );
        assert_eq!(encoding, "json");
        assert!(!truncated);
        let sku = text.find("\n  \"sku\": \"tea\"").expect("sku");
        let n = text.find("\"n\"").expect("n");
        assert!(sku < n, "key order kept: {text}");
        assert!(text.contains("123456789012345678901234567890"), "{text}");
    }

    #[test]
    fn deeply_nested_json_is_shown_as_written_not_pretty_printed() {
        let nested = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let (encoding, text, _) = render_payload(nested.as_bytes(), 1024);
        assert_eq!(encoding, "json");
        assert_eq!(text, nested);
    }

    #[test]
    fn text_and_binary_payloads_are_cut_to_the_shown_bytes() {
        let (encoding, text, truncated) = render_payload("héllo wörld".as_bytes(), 2);
        assert_eq!((encoding, text.as_str(), truncated), ("text", "h", true));
        let (encoding, text, truncated) = render_payload(&[0xff, 0xfe, 0x00, 0x01], 3);
        assert_eq!(
            (encoding, text.as_str(), truncated),
            ("base64", "//4A", true)
        );
        let (encoding, _, truncated) = render_payload(&[0xff; 10], 100);
        assert_eq!((encoding, truncated), ("base64", false));
        assert_eq!(render_payload(b"", 10).0, "empty");
    }

    #[test]
    fn page_sizes_default_and_are_capped() {
        assert_eq!(page_size(None, 20, 500), 20);
        assert_eq!(page_size(Some(0), 20, 500), 20);
        assert_eq!(page_size(Some(7), 20, 500), 7);
        assert_eq!(page_size(Some(1_000_000), 20, 500), 500);
    }
}
