//! `event_store.client.streams.Streams`: Read (reads and catch-up
//! subscriptions of a stream, `$all`, `$ce-`/`$et-` and `$$` metadata
//! streams), Append, BatchAppend, Delete and Tombstone, over the engine with
//! the caller's principal.
//!
//! Reads run on the engine's blocking pool page by page (bounded in events
//! and bytes), each page's bytes reserved from the server's buffer budget
//! until the client took its events; a client that stops reading is cut off
//! after the stall timeout. Subscriptions are `Engine::subscribe` feeds, with
//! the `$all` filter applied here (see `filter`) and a checkpoint every
//! `window × multiplier` considered events.
//!
//! Start rules: a read starts at the given revision or position inclusive; a
//! subscription starts after it (exclusive), as KurrentDB does.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use cairn_engine::{
    BytePermit, Engine, Error, Escaped, Feed, FeedReceiver, Outbox, OutboxReceiver, Principal,
    StartFrom, SubscribeRequest, Undelivered, Visibility,
};
use cairn_proto::kurrent::shared;
use cairn_proto::kurrent::streams as pb;
use cairn_proto::kurrent::streams::read_req::options::{
    self as read_options, all_options, stream_options,
};
use cairn_proto::kurrent::streams::streams_server::Streams;
use cairn_storage::{
    AppendResult, CurrentRevision, Direction, Error as StoreError, EventData, ExpectedRevision,
    ReadFilter, ReadFrom, ReadRequest, ReadSource, StreamAppend,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::convert::{self, UuidForm};
use super::error;
use super::filter::Filter;
use super::metadata;
use crate::grpc::auth;

/// Most events one storage call of a read returns.
const READ_PAGE_EVENTS: usize = 256;
/// Byte budget of one storage page of a read.
const READ_PAGE_BYTES: usize = 1024 * 1024;
/// Responses buffered between a read's task and the transport.
const READ_BUFFER: usize = 32;
/// Items a subscription examines in one poll before yielding (filtered-out
/// events cost no send, so a long run of them must not hog the worker).
const SUBSCRIPTION_POLL_BUDGET: usize = 512;
/// Correlation ids of one BatchAppend call open at once; each holds at most
/// the store's append byte limit, so a call holds at most this many times it.
const MAX_OPEN_BATCHES: usize = 16;
/// BatchAppend responses buffered towards the client.
const BATCH_RESPONSE_BUFFER: usize = 16;

/// The service; cheap to clone.
#[derive(Clone)]
pub(super) struct StreamsService {
    engine: Engine,
    /// Flips to `true` at shutdown; open reads and BatchAppend calls end.
    shutdown: watch::Receiver<bool>,
}

impl StreamsService {
    pub(super) fn new(engine: Engine) -> Self {
        Self {
            shutdown: engine.shutdown_signal(),
            engine,
        }
    }
}

/// What a read's channel carries: a response and the budget bytes it holds.
type Sent = (Result<pb::ReadResp, Status>, BytePermit);

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResp, Status>> + Send>>;
type BatchAppendStream = Pin<Box<dyn Stream<Item = Result<pb::BatchAppendResp, Status>> + Send>>;

/// What a read or subscription targets.
enum Target {
    /// A stream, `$ce-x` or `$et-x` (`index` is then that name: its events
    /// are links), by revision.
    Stream {
        source: ReadSource,
        name: String,
        index: Option<String>,
        revision: StreamRevision,
    },
    /// `$$x`: the metadata of stream `x`.
    Metadata { stream: String },
    /// `$all`, by commit position.
    All { position: AllPosition },
}

#[derive(Clone, Copy)]
enum StreamRevision {
    Start,
    End,
    At(u64),
}

#[derive(Clone, Copy)]
enum AllPosition {
    Start,
    End,
    Commit(u64),
}

/// The target of a request's `stream_option`.
fn target_of(options: &pb::read_req::Options) -> Result<Target, Status> {
    match &options.stream_option {
        Some(read_options::StreamOption::Stream(stream)) => {
            let name = convert::stream_name(stream.stream_identifier.as_ref())?;
            let revision = match stream.revision_option {
                None | Some(stream_options::RevisionOption::Start(_)) => StreamRevision::Start,
                Some(stream_options::RevisionOption::End(_)) => StreamRevision::End,
                Some(stream_options::RevisionOption::Revision(revision)) => {
                    StreamRevision::At(revision)
                }
            };
            if let Some(stream) = metadata::metadata_stream_of(&name) {
                return Ok(Target::Metadata {
                    stream: stream.to_owned(),
                });
            }
            let source = ReadSource::parse(&name)
                .map_err(|error| error::to_status("Read", &Error::Store(error)))?;
            let index = matches!(source, ReadSource::Category(_) | ReadSource::EventType(_))
                .then(|| name.clone());
            if matches!(source, ReadSource::All) {
                let position = match revision {
                    StreamRevision::Start => AllPosition::Start,
                    StreamRevision::End => AllPosition::End,
                    StreamRevision::At(position) => AllPosition::Commit(position),
                };
                return Ok(Target::All { position });
            }
            Ok(Target::Stream {
                source,
                name,
                index,
                revision,
            })
        }
        Some(read_options::StreamOption::All(all)) => {
            let position = match &all.all_option {
                None | Some(all_options::AllOption::Start(_)) => AllPosition::Start,
                Some(all_options::AllOption::End(_)) => AllPosition::End,
                Some(all_options::AllOption::Position(position)) => {
                    AllPosition::Commit(position.commit_position)
                }
            };
            Ok(Target::All { position })
        }
        None => Err(error::invalid("the read names neither a stream nor $all")),
    }
}

/// The UUID form a request asks for (string unless structured is asked).
fn uuid_form(options: &pb::read_req::Options) -> UuidForm {
    match options
        .uuid_option
        .as_ref()
        .and_then(|option| option.content.as_ref())
    {
        Some(read_options::uuid_option::Content::Structured(_)) => UuidForm::Structured,
        _ => UuidForm::String,
    }
}

/// How a read presents its events.
#[derive(Clone)]
struct Presentation {
    /// `$ce-x`/`$et-x`: events are links in this stream.
    index: Option<String>,
    resolve_links: bool,
    form: UuidForm,
}

impl Presentation {
    fn event(&self, event: &cairn_storage::RecordedEvent) -> pb::ReadResp {
        convert::read_event(event, self.index.as_deref(), self.resolve_links, self.form)
    }
}

/// A read planned from a request.
struct ReadPlan {
    read: ReadRequest,
    /// Events still to send.
    remaining: u64,
    filter: Option<Filter>,
    presentation: Presentation,
    visibility: Visibility,
    /// The stream named, for `stream_not_found`.
    stream: Option<String>,
}

fn stream_not_found(name: &str) -> pb::ReadResp {
    pb::ReadResp {
        content: Some(pb::read_resp::Content::StreamNotFound(
            pb::read_resp::StreamNotFound {
                stream_identifier: Some(convert::identifier(name)),
            },
        )),
    }
}

/// Ends a read's channel as `end` says (see `cairn.v1`'s reads: the client
/// gets what is buffered, then the status; a stalled client is cut off).
async fn end_read(sender: &Outbox<Sent>, shutdown: &mut watch::Receiver<bool>, end: ReadEnd) {
    let last = match end {
        ReadEnd::Done => None,
        ReadEnd::Failed(status) => Some((Err(status), BytePermit::default())),
        ReadEnd::Stalled => return cut_off(sender),
    };
    sender.close(last);
    tokio::select! {
        drained = sender.drained() => {
            if drained.is_err() {
                cut_off(sender);
            }
        }
        _ = shutdown.wait_for(|stopping| *stopping) => {}
    }
}

/// How a read ended.
enum ReadEnd {
    Done,
    Failed(Status),
    Stalled,
}

fn cut_off(sender: &Outbox<Sent>) {
    let timeout_ms = sender.stall_timeout().map_or(0, |timeout| {
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
    });
    tracing::info!(
        timeout_ms,
        "KurrentDB read: the client took nothing within the stall timeout; ending it"
    );
    let status = error::to_status("Read", &Error::ClientStalled { timeout_ms });
    sender.cut_off((Err(status), BytePermit::default()));
}

impl StreamsService {
    /// Runs a planned read, sending into `sender`.
    async fn run_read(&self, mut plan: ReadPlan, sender: &Outbox<Sent>) -> ReadEnd {
        let limits = self.engine.store().limits();
        let page_limit = limits.max_read_page.clamp(1, READ_PAGE_EVENTS);
        let reservation = READ_PAGE_BYTES + limits.max_event_bytes;
        let budget = self.engine.buffer_budget().clone();
        let mut shutdown = self.shutdown.clone();
        while plan.remaining > 0 {
            let mut read = plan.read.clone();
            read.max_count = if plan.filter.is_some() {
                page_limit
            } else {
                usize::try_from(plan.remaining)
                    .unwrap_or(usize::MAX)
                    .min(page_limit)
            };
            read.max_bytes = READ_PAGE_BYTES;
            let budgets = [&budget];
            let mut bytes = tokio::select! {
                bytes = BytePermit::reserve(&budgets, reservation) => bytes,
                _ = shutdown.wait_for(|stopping| *stopping) => {
                    return ReadEnd::Failed(error::to_status("Read", &Error::ShuttingDown));
                }
            };
            let page = match self.engine.blocking(move |store| store.read(&read)).await {
                Ok(page) => page,
                Err(Error::Store(StoreError::StreamNotFound { .. })) => {
                    if let Some(name) = &plan.stream {
                        let _ = sender
                            .send((Ok(stream_not_found(name)), BytePermit::default()))
                            .await;
                    }
                    return ReadEnd::Done;
                }
                Err(error) => return ReadEnd::Failed(error::to_status("Read", &error)),
            };
            let held: usize = page
                .events
                .iter()
                .map(cairn_storage::RecordedEvent::size)
                .sum();
            bytes.shrink_to(held);
            for event in &page.events {
                let share = bytes.split(event.size());
                if !plan.visibility.is_everything() && !plan.visibility.admits(&event.stream) {
                    continue;
                }
                if let Some(filter) = &plan.filter {
                    match filter.matches(&event.stream, &event.event_type) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(status) => return ReadEnd::Failed(status),
                    }
                }
                let response = plan.presentation.event(event);
                tokio::select! {
                    sent = sender.send((Ok(response), share)) => match sent {
                        Ok(()) => {}
                        Err(Undelivered::Gone) => return ReadEnd::Done,
                        Err(Undelivered::Stalled) => return ReadEnd::Stalled,
                    },
                    _ = shutdown.wait_for(|stopping| *stopping) => {
                        return ReadEnd::Failed(error::to_status("Read", &Error::ShuttingDown));
                    }
                }
                plan.remaining -= 1;
                if plan.remaining == 0 {
                    break;
                }
            }
            match page.next {
                Some(next) => plan.read.from = ReadFrom::At(next),
                None => break,
            }
        }
        ReadEnd::Done
    }

    /// A read of `count` events.
    fn read_events(
        &self,
        by: &Principal,
        options: &pb::read_req::Options,
        target: Target,
        count: u64,
        filter: Option<Filter>,
    ) -> Result<ReadStream, Status> {
        let direction = match options.read_direction() {
            read_options::ReadDirection::Forwards => Direction::Forwards,
            read_options::ReadDirection::Backwards => Direction::Backwards,
        };
        let form = uuid_form(options);
        let (source, from, index, stream) = match target {
            Target::Metadata { stream } => {
                return self.read_metadata(by, &stream, count, form);
            }
            Target::Stream {
                source,
                name,
                index,
                revision,
            } => {
                let from = match revision {
                    StreamRevision::Start => ReadFrom::Start,
                    StreamRevision::End => ReadFrom::End,
                    StreamRevision::At(revision) => ReadFrom::At(revision),
                };
                (source, from, index, Some(name))
            }
            Target::All { position } => {
                let from = match position {
                    AllPosition::Start => ReadFrom::Start,
                    AllPosition::End => ReadFrom::End,
                    AllPosition::Commit(commit) => match convert::from_commit(commit) {
                        Some(position) => ReadFrom::At(position),
                        // Commit 0 is before the first event.
                        None if direction == Direction::Forwards => ReadFrom::Start,
                        None => return Ok(Box::pin(tokio_stream::empty())),
                    },
                };
                (ReadSource::All, from, None, None)
            }
        };
        let visibility = self
            .engine
            .read_access(by, &source)
            .map_err(|error| error::to_status("Read", &error))?;
        let plan = ReadPlan {
            read: ReadRequest {
                source,
                direction,
                from,
                max_count: READ_PAGE_EVENTS,
                max_bytes: READ_PAGE_BYTES,
                filter: ReadFilter::default(),
            },
            remaining: count,
            filter,
            presentation: Presentation {
                index,
                resolve_links: options.resolve_links,
                form,
            },
            visibility,
            stream,
        };
        let (sender, receiver) = self.engine.outbox::<Sent>(READ_BUFFER);
        let service = self.clone();
        self.engine.tasks().spawn(
            async move {
                let end = service.run_read(plan, &sender).await;
                let mut shutdown = service.shutdown.clone();
                end_read(&sender, &mut shutdown, end).await;
            }
            .instrument(tracing::Span::current()),
        );
        Ok(Box::pin(ReadResponses(receiver)))
    }

    /// A read of `$$stream`: Cairn's metadata of `stream` as one event.
    fn read_metadata(
        &self,
        by: &Principal,
        stream: &str,
        count: u64,
        form: UuidForm,
    ) -> Result<ReadStream, Status> {
        let name = format!("{}{stream}", metadata::METADATA_PREFIX);
        let info = match self.engine.stream_info(by, stream) {
            Ok(info) => info,
            Err(Error::Store(StoreError::StreamNotFound { .. })) => {
                return Ok(Box::pin(tokio_stream::iter([Ok(stream_not_found(&name))])));
            }
            Err(error) => return Err(error::to_status("Read", &error)),
        };
        if info.state == cairn_storage::StreamState::Tombstoned {
            // KurrentDB deletes a tombstoned stream's metadata with it: its
            // `$$` stream reads as deleted, not as missing; the status comes
            // as the read's first item, as KurrentDB sends it (clients read
            // it from the stream, not from the call).
            let status = error::to_status(
                "Read",
                &Error::Store(StoreError::StreamTombstoned { stream: name }),
            );
            return Ok(Box::pin(tokio_stream::iter([Err(status)])));
        }
        let Some(revision) = info.metadata_revision else {
            return Ok(Box::pin(tokio_stream::iter([Ok(stream_not_found(&name))])));
        };
        if count == 0 {
            return Ok(Box::pin(tokio_stream::empty()));
        }
        let event = cairn_storage::RecordedEvent {
            // Not in Cairn's log: position 0 maps to commit 1 below; report 0.
            position: 0,
            stream: name.clone(),
            revision,
            id: metadata_event_id(stream, revision),
            event_type: metadata::METADATA_EVENT_TYPE.to_owned(),
            content_type: "application/json".to_owned(),
            created: std::time::SystemTime::now(),
            metadata: bytes::Bytes::new(),
            data: bytes::Bytes::from(metadata::to_json(&info.metadata)),
            tags: Vec::new(),
        };
        let mut recorded = convert::recorded(&event, &name, revision, form);
        recorded.commit_position = 0;
        recorded.prepare_position = 0;
        let response = pb::ReadResp {
            content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
                event: Some(recorded),
                link: None,
                position: Some(pb::read_resp::read_event::Position::CommitPosition(0)),
            })),
        };
        Ok(Box::pin(tokio_stream::iter([Ok(response)])))
    }

    /// A catch-up subscription.
    fn subscribe(
        &self,
        by: &Principal,
        options: &pb::read_req::Options,
        target: Target,
        filter: Option<Filter>,
    ) -> Result<ReadStream, Status> {
        let (source, from, index, stream) = match target {
            Target::Metadata { .. } => {
                return Err(Status::unimplemented(
                    "subscriptions to $$ metadata streams are not implemented by Cairn",
                ));
            }
            Target::Stream {
                source,
                name,
                index,
                revision,
            } => {
                let from = match (revision, &index) {
                    (StreamRevision::Start, _) => StartFrom::Start,
                    (StreamRevision::End, _) => StartFrom::End,
                    (StreamRevision::At(revision), None) => StartFrom::AfterRevision(revision),
                    // Index streams' revisions are positions.
                    (StreamRevision::At(position), Some(_)) => StartFrom::AfterPosition(position),
                };
                (source, from, index, Some(name))
            }
            Target::All { position } => {
                let from = match position {
                    AllPosition::Start => StartFrom::Start,
                    AllPosition::End => StartFrom::End,
                    AllPosition::Commit(commit) => match convert::from_commit(commit) {
                        Some(position) => StartFrom::AfterPosition(position),
                        None => StartFrom::Start,
                    },
                };
                (ReadSource::All, from, None, None)
            }
        };
        let receiver = self
            .engine
            .subscribe(
                by,
                SubscribeRequest {
                    source,
                    filter: ReadFilter::default(),
                    checkpoint_interval: None,
                    from,
                },
            )
            .map_err(|error| error::to_status("Subscription", &error))?;
        Ok(Box::pin(SubscriptionStream {
            receiver,
            filter,
            examined: 0,
            last_examined: None,
            last_revision: None,
            stream,
            presentation: Presentation {
                index,
                resolve_links: options.resolve_links,
                form: uuid_form(options),
            },
            queued: VecDeque::new(),
            ended: false,
        }))
    }

    /// Commits one append (to a stream, or metadata through `$$x`).
    async fn commit(
        &self,
        by: &Principal,
        stream: String,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        if let Some(target) = metadata::metadata_stream_of(&stream) {
            let Some(last) = events.last() else {
                return Err(Error::InvalidArgument(
                    "an append to a $$ metadata stream needs an event".into(),
                ));
            };
            let metadata = metadata::from_json(&last.data)
                .map_err(|status| Error::InvalidArgument(status.message().to_owned()))?;
            let revision = self
                .engine
                .set_metadata(by, target.to_owned(), expected, metadata)
                .await
                .map_err(|error| rename_metadata_stream(error, &stream))?;
            return Ok(AppendResult {
                current: CurrentRevision::Revision(revision),
                positions: None,
                idempotent_replay: false,
            });
        }
        let mut results = self
            .engine
            .append_multi(by, vec![StreamAppend::new(stream, expected, events)])
            .await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("append returned no result".into()))
    }
}

/// Errors of `$$x` metadata writes name `$$x`, as the client wrote to it.
fn rename_metadata_stream(error: Error, metadata_stream: &str) -> Error {
    match error {
        Error::Store(StoreError::WrongExpectedRevision {
            expected, current, ..
        }) => Error::Store(StoreError::WrongExpectedRevision {
            stream: metadata_stream.to_owned(),
            expected,
            current,
        }),
        other => other,
    }
}

/// A stable id for the metadata event of `stream` at `revision`.
fn metadata_event_id(stream: &str, revision: u64) -> uuid::Uuid {
    const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = stream
        .bytes()
        .chain(revision.to_le_bytes())
        .fold(FNV_OFFSET, |hash, byte| {
            (hash ^ u128::from(byte)).wrapping_mul(FNV_PRIME)
        });
    uuid::Builder::from_u128(hash)
        .with_version(uuid::Version::Random)
        .into_uuid()
}

/// A read's responses as tonic takes them; each frees its budget bytes.
struct ReadResponses(OutboxReceiver<Sent>);

impl Stream for ReadResponses {
    type Item = Result<pb::ReadResp, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_recv(context)
            .map(|sent| sent.map(|(response, _bytes)| response))
    }
}

/// A catch-up subscription as KurrentDB messages: confirmation, events
/// (filtered here), checkpoints, caught_up, fell_behind, then the end.
struct SubscriptionStream {
    receiver: FeedReceiver,
    filter: Option<Filter>,
    /// Events considered since the last checkpoint.
    examined: u64,
    /// The Cairn position of the last event considered.
    last_examined: Option<u64>,
    /// Stream subscriptions: the last revision delivered.
    last_revision: Option<u64>,
    /// The stream followed (`None`: `$all`).
    stream: Option<String>,
    presentation: Presentation,
    /// Responses ready to go before the next feed item.
    queued: VecDeque<Result<pb::ReadResp, Status>>,
    ended: bool,
}

impl SubscriptionStream {
    fn position(commit: u64) -> pb::read_resp::Position {
        pb::read_resp::Position {
            commit_position: commit,
            prepare_position: commit,
        }
    }

    /// Converts one feed item, queueing what it yields.
    fn take(&mut self, item: Result<Feed, cairn_engine::EndReason>) {
        use pb::read_resp::Content;
        let response = |content| {
            Ok(pb::ReadResp {
                content: Some(content),
            })
        };
        match item {
            Ok(Feed::Confirmation(id)) => self.queued.push_back(response(Content::Confirmation(
                pb::read_resp::SubscriptionConfirmation {
                    subscription_id: id.to_string(),
                },
            ))),
            Ok(Feed::Event(event)) => {
                self.last_examined = Some(event.position);
                self.last_revision = Some(event.revision);
                let passes = match &self.filter {
                    None => Ok(true),
                    Some(filter) => filter.matches(&event.stream, &event.event_type),
                };
                match passes {
                    Ok(true) => self.queued.push_back(Ok(self.presentation.event(&event))),
                    Ok(false) => {}
                    Err(status) => {
                        self.queued.push_back(Err(status));
                        self.ended = true;
                        return;
                    }
                }
                if let Some(filter) = &self.filter {
                    self.examined += 1;
                    if self.examined >= filter.checkpoint_interval {
                        self.examined = 0;
                        let commit = convert::to_commit(event.position);
                        self.queued.push_back(response(Content::Checkpoint(
                            pb::read_resp::Checkpoint {
                                commit_position: commit,
                                prepare_position: commit,
                                timestamp: Some(convert::now_timestamp()),
                            },
                        )));
                    }
                }
            }
            Ok(Feed::Checkpoint { position }) => {
                let commit = convert::to_commit(position);
                self.queued
                    .push_back(response(Content::Checkpoint(pb::read_resp::Checkpoint {
                        commit_position: commit,
                        prepare_position: commit,
                        timestamp: Some(convert::now_timestamp()),
                    })));
            }
            Ok(Feed::CaughtUp { head }) => {
                let caught_up = match &self.stream {
                    Some(_) => pb::read_resp::CaughtUp {
                        timestamp: Some(convert::now_timestamp()),
                        stream_revision: self
                            .last_revision
                            .and_then(|revision| i64::try_from(revision).ok()),
                        position: None,
                    },
                    // The head is the next position: the last event's commit is head.
                    None => pb::read_resp::CaughtUp {
                        timestamp: Some(convert::now_timestamp()),
                        stream_revision: None,
                        position: Some(Self::position(head)),
                    },
                };
                self.queued
                    .push_back(response(Content::CaughtUp(caught_up)));
            }
            Ok(Feed::FellBehind { position }) => {
                let fell_behind = pb::read_resp::FellBehind {
                    timestamp: Some(convert::now_timestamp()),
                    stream_revision: None,
                    position: Some(Self::position(position)),
                };
                self.queued
                    .push_back(response(Content::FellBehind(fell_behind)));
            }
            Err(reason) => {
                self.queued
                    .push_back(Err(error::to_status("Subscription", &reason.into_error())));
                self.ended = true;
            }
        }
    }
}

impl Stream for SubscriptionStream {
    type Item = Result<pb::ReadResp, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        for _ in 0..SUBSCRIPTION_POLL_BUDGET {
            if let Some(next) = self.queued.pop_front() {
                return Poll::Ready(Some(next));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match self.receiver.poll_recv(context) {
                Poll::Ready(Some(item)) => self.take(item),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
        context.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The expectation of an Append's options.
fn append_expected(
    option: Option<pb::append_req::options::ExpectedStreamRevision>,
) -> ExpectedRevision {
    use pb::append_req::options::ExpectedStreamRevision as Wire;
    match option {
        None | Some(Wire::Any(_)) => ExpectedRevision::Any,
        Some(Wire::Revision(revision)) => ExpectedRevision::Exact(revision),
        Some(Wire::NoStream(_)) => ExpectedRevision::NoStream,
        Some(Wire::StreamExists(_)) => ExpectedRevision::StreamExists,
    }
}

/// The body KurrentDB sends for a failed expectation of an Append.
fn append_wrong_expected(expected: ExpectedRevision, current: CurrentRevision) -> pb::AppendResp {
    use pb::append_resp::wrong_expected_version as wire;
    let empty = shared::Empty {};
    let (current_new, current_old) = match current {
        CurrentRevision::NoStream => (
            wire::CurrentRevisionOption::CurrentNoStream(empty),
            wire::CurrentRevisionOption2060::NoStream2060(empty),
        ),
        CurrentRevision::Revision(revision) => (
            wire::CurrentRevisionOption::CurrentRevision(revision),
            wire::CurrentRevisionOption2060::CurrentRevision2060(revision),
        ),
    };
    let (expected_new, expected_old) = match expected {
        ExpectedRevision::Any => (
            wire::ExpectedRevisionOption::ExpectedAny(empty),
            Some(wire::ExpectedRevisionOption2060::Any2060(empty)),
        ),
        ExpectedRevision::NoStream => (wire::ExpectedRevisionOption::ExpectedNoStream(empty), None),
        ExpectedRevision::StreamExists => (
            wire::ExpectedRevisionOption::ExpectedStreamExists(empty),
            Some(wire::ExpectedRevisionOption2060::StreamExists2060(empty)),
        ),
        ExpectedRevision::Exact(revision) => (
            wire::ExpectedRevisionOption::ExpectedRevision(revision),
            Some(wire::ExpectedRevisionOption2060::ExpectedRevision2060(
                revision,
            )),
        ),
    };
    pb::AppendResp {
        result: Some(pb::append_resp::Result::WrongExpectedVersion(
            pb::append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(current_old),
                expected_revision_option_20_6_0: expected_old,
                current_revision_option: Some(current_new),
                expected_revision_option: Some(expected_new),
            },
        )),
    }
}

/// The body of a successful Append.
fn append_success(result: &AppendResult) -> pb::AppendResp {
    use pb::append_resp::success;
    let current = match result.current {
        CurrentRevision::NoStream => success::CurrentRevisionOption::NoStream(shared::Empty {}),
        CurrentRevision::Revision(revision) => {
            success::CurrentRevisionOption::CurrentRevision(revision)
        }
    };
    let position = match result.positions {
        None => success::PositionOption::NoPosition(shared::Empty {}),
        Some((_, last)) => {
            let commit = convert::to_commit(last);
            success::PositionOption::Position(pb::append_resp::Position {
                commit_position: commit,
                prepare_position: commit,
            })
        }
    };
    pb::AppendResp {
        result: Some(pb::append_resp::Result::Success(pb::append_resp::Success {
            current_revision_option: Some(current),
            position_option: Some(position),
        })),
    }
}

/// Events of one append as they arrive, bounded as the store bounds them.
struct Accumulated {
    events: Vec<EventData>,
    bytes: usize,
}

impl Accumulated {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            bytes: 0,
        }
    }

    /// Adds an event; fails once the append is over the store's byte or
    /// count limit (before holding more than one event beyond it).
    fn push(&mut self, event: EventData, limits: &cairn_storage::Limits) -> Result<(), Status> {
        self.bytes = self.bytes.saturating_add(event.size());
        if self.bytes > limits.max_append_bytes {
            return Err(error::append_too_large(limits.max_append_bytes as u64));
        }
        if self.events.len() >= limits.max_events_per_append {
            return Err(error::invalid(format!(
                "an append holds at most {} events",
                limits.max_events_per_append
            )));
        }
        self.events.push(event);
        Ok(())
    }
}

/// The expectation of a Delete's or Tombstone's options (same wire shape).
fn delete_expected(
    option: Option<pb::delete_req::options::ExpectedStreamRevision>,
) -> ExpectedRevision {
    use pb::delete_req::options::ExpectedStreamRevision as Wire;
    match option {
        None | Some(Wire::Any(_)) => ExpectedRevision::Any,
        Some(Wire::Revision(revision)) => ExpectedRevision::Exact(revision),
        Some(Wire::NoStream(_)) => ExpectedRevision::NoStream,
        Some(Wire::StreamExists(_)) => ExpectedRevision::StreamExists,
    }
}

fn tombstone_expected(
    option: Option<pb::tombstone_req::options::ExpectedStreamRevision>,
) -> ExpectedRevision {
    use pb::tombstone_req::options::ExpectedStreamRevision as Wire;
    match option {
        None | Some(Wire::Any(_)) => ExpectedRevision::Any,
        Some(Wire::Revision(revision)) => ExpectedRevision::Exact(revision),
        Some(Wire::NoStream(_)) => ExpectedRevision::NoStream,
        Some(Wire::StreamExists(_)) => ExpectedRevision::StreamExists,
    }
}

/// The expectation of a BatchAppend's options.
fn batch_expected(
    option: Option<pb::batch_append_req::options::ExpectedStreamPosition>,
) -> ExpectedRevision {
    use pb::batch_append_req::options::ExpectedStreamPosition as Wire;
    match option {
        None | Some(Wire::Any(())) => ExpectedRevision::Any,
        Some(Wire::StreamPosition(revision)) => ExpectedRevision::Exact(revision),
        Some(Wire::NoStream(())) => ExpectedRevision::NoStream,
        Some(Wire::StreamExists(())) => ExpectedRevision::StreamExists,
    }
}

/// One correlation id of a BatchAppend call, until its final message.
struct PendingBatch {
    stream: String,
    expected: ExpectedRevision,
    events: Accumulated,
    /// An error answered already: the rest of this correlation is dropped.
    failed: bool,
    /// The client's deadline for this append, from its options: a batch whose
    /// final message comes after it is refused unwritten.
    deadline: Option<std::time::Instant>,
}

/// When a batch's options say it must be done by: `deadline` is a duration
/// from now (clients since 21.10), `deadline_21_10_0` a wall-clock time.
fn batch_deadline(
    option: Option<pb::batch_append_req::options::DeadlineOption>,
) -> Option<std::time::Instant> {
    use pb::batch_append_req::options::DeadlineOption;
    let now = std::time::Instant::now();
    match option? {
        DeadlineOption::Deadline(duration) => {
            let duration = std::time::Duration::try_from(duration).unwrap_or_default();
            Some(now.checked_add(duration).unwrap_or(now))
        }
        DeadlineOption::Deadline21100(timestamp) => {
            let at = std::time::SystemTime::try_from(timestamp).ok()?;
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            Some(now.checked_add(left).unwrap_or(now))
        }
    }
}

impl StreamsService {
    /// Delete or tombstone, answering as KurrentDB does.
    async fn remove(
        &self,
        by: &Principal,
        stream: String,
        expected: ExpectedRevision,
        tombstone: bool,
    ) -> Result<(), Status> {
        let operation = if tombstone { "Tombstone" } else { "Delete" };
        match self
            .engine
            .delete(by, stream.clone(), expected, tombstone)
            .await
        {
            Ok(_) => Ok(()),
            // KurrentDB reports a missing stream as a failed expectation
            // with actual version -1 (clients raise "not found" from it).
            Err(Error::Store(StoreError::StreamNotFound { .. })) => {
                Err(error::wrong_expected_version(
                    operation,
                    &stream,
                    expected,
                    CurrentRevision::NoStream,
                ))
            }
            Err(error) => Err(error::to_status(operation, &error)),
        }
    }

    /// One BatchAppend call: reads requests, commits each correlation id at
    /// its final message, answers in order of completion.
    async fn run_batch_append(
        &self,
        by: Principal,
        mut incoming: Streaming<pb::BatchAppendReq>,
        responses: mpsc::Sender<Result<pb::BatchAppendResp, Status>>,
    ) {
        let limits = self.engine.store().limits();
        let mut pending: HashMap<uuid::Uuid, PendingBatch> = HashMap::new();
        let mut shutdown = self.shutdown.clone();
        loop {
            let message = tokio::select! {
                message = incoming.message() => Some(message),
                _ = shutdown.wait_for(|stopping| *stopping) => None,
            };
            let Some(message) = message else {
                let _ = responses
                    .send(Err(error::to_status("BatchAppend", &Error::ShuttingDown)))
                    .await;
                return;
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "BatchAppend request stream failed");
                    return;
                }
            };
            let correlation_wire = request.correlation_id.clone();
            let correlation =
                match convert::uuid_from_wire(correlation_wire.as_ref(), "the correlation id") {
                    Ok(correlation) => correlation,
                    Err(status) => {
                        let _ = responses.send(Err(status)).await;
                        return;
                    }
                };
            let answer = |result, stream: &str, expected: ExpectedRevision| {
                batch_response(correlation_wire.clone(), result, stream, expected)
            };
            if let Some(options) = request.options {
                let stream = match convert::stream_name(options.stream_identifier.as_ref()) {
                    Ok(stream) => stream,
                    Err(status) => {
                        let result =
                            pb::batch_append_resp::Result::Error(error::batch_from_unary(&status));
                        if responses
                            .send(Ok(answer(result, "", ExpectedRevision::Any)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                };
                if !pending.contains_key(&correlation) && pending.len() >= MAX_OPEN_BATCHES {
                    let status = error::invalid(format!(
                        "a BatchAppend call has at most {MAX_OPEN_BATCHES} appends open at once"
                    ));
                    let _ = responses.send(Err(status)).await;
                    return;
                }
                pending.insert(
                    correlation,
                    PendingBatch {
                        stream,
                        expected: batch_expected(options.expected_stream_position),
                        events: Accumulated::new(),
                        failed: false,
                        deadline: batch_deadline(options.deadline_option),
                    },
                );
            }
            let Some(batch) = pending.get_mut(&correlation) else {
                let status =
                    error::invalid("the first message of a correlation id must carry its options");
                let result = pb::batch_append_resp::Result::Error(error::batch_from_unary(&status));
                if responses
                    .send(Ok(answer(result, "", ExpectedRevision::Any)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            if !batch.failed {
                for message in request.proposed_messages {
                    let pushed = convert::proposed_event(
                        message.id.as_ref(),
                        &message.metadata,
                        message.custom_metadata,
                        message.data,
                    )
                    .and_then(|event| batch.events.push(event, &limits));
                    if let Err(status) = pushed {
                        batch.failed = true;
                        batch.events = Accumulated::new();
                        let result =
                            pb::batch_append_resp::Result::Error(error::batch_from_unary(&status));
                        if responses
                            .send(Ok(answer(result, &batch.stream, batch.expected)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        break;
                    }
                }
            }
            if !request.is_final {
                continue;
            }
            let Some(batch) = pending.remove(&correlation) else {
                continue;
            };
            if batch.failed {
                continue;
            }
            if batch
                .deadline
                .is_some_and(|deadline| std::time::Instant::now() >= deadline)
            {
                // As KurrentDB answers an append whose deadline passed; it
                // was never submitted, so nothing of it is written.
                let status = Status::deadline_exceeded("Timeout");
                let result =
                    pb::batch_append_resp::Result::Error(error::from_status(&status, None));
                if responses
                    .send(Ok(answer(result, &batch.stream, batch.expected)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let span = tracing::info_span!("kurrent_batch_append", stream = %Escaped(&batch.stream), events = batch.events.events.len());
            let outcome = self
                .commit(
                    &by,
                    batch.stream.clone(),
                    batch.expected,
                    batch.events.events,
                )
                .instrument(span)
                .await;
            let result = match outcome {
                Ok(result) => pb::batch_append_resp::Result::Success(batch_success(&result)),
                Err(error) => pb::batch_append_resp::Result::Error(error::batch_status(&error)),
            };
            if responses
                .send(Ok(answer(result, &batch.stream, batch.expected)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn batch_success(result: &AppendResult) -> pb::batch_append_resp::Success {
    use pb::batch_append_resp::success;
    pb::batch_append_resp::Success {
        current_revision_option: Some(match result.current {
            CurrentRevision::NoStream => success::CurrentRevisionOption::NoStream(()),
            CurrentRevision::Revision(revision) => {
                success::CurrentRevisionOption::CurrentRevision(revision)
            }
        }),
        position_option: Some(match result.positions {
            None => success::PositionOption::NoPosition(()),
            Some((_, last)) => {
                let commit = convert::to_commit(last);
                success::PositionOption::Position(shared::AllStreamPosition {
                    commit_position: commit,
                    prepare_position: commit,
                })
            }
        }),
    }
}

fn batch_response(
    correlation_id: Option<shared::Uuid>,
    result: pb::batch_append_resp::Result,
    stream: &str,
    expected: ExpectedRevision,
) -> pb::BatchAppendResp {
    use pb::batch_append_resp::ExpectedStreamPosition as Wire;
    pb::BatchAppendResp {
        correlation_id,
        result: Some(result),
        stream_identifier: Some(convert::identifier(stream)),
        expected_stream_position: Some(match expected {
            ExpectedRevision::Any => Wire::Any(()),
            ExpectedRevision::NoStream => Wire::NoStream(()),
            ExpectedRevision::StreamExists => Wire::StreamExists(()),
            ExpectedRevision::Exact(revision) => Wire::StreamPosition(revision),
        }),
    }
}

/// Records the outcome of a unary call on its span.
fn outcome<T>(result: Result<T, Status>) -> Result<T, Status> {
    if let Err(status) = &result {
        tracing::debug!(code = ?status.code(), message = %Escaped(status.message()), "KurrentDB call failed");
    }
    result
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<pb::ReadReq>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let by = auth::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the read has no options"))?;
        let target = outcome(target_of(&options))?;
        let filter = match &options.filter_option {
            Some(read_options::FilterOption::Filter(filter)) => outcome(Filter::of(Some(filter)))?,
            _ => None,
        };
        let stream = match options.count_option {
            Some(read_options::CountOption::Subscription(_)) => {
                self.subscribe(&by, &options, target, filter)
            }
            Some(read_options::CountOption::Count(count)) => {
                self.read_events(&by, &options, target, count, filter)
            }
            None => self.read_events(&by, &options, target, u64::MAX, filter),
        };
        outcome(stream).map(Response::new)
    }

    async fn append(
        &self,
        request: Request<Streaming<pb::AppendReq>>,
    ) -> Result<Response<pb::AppendResp>, Status> {
        let by = auth::principal(&request)?;
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| error::invalid("the append sent no options"))?;
        let Some(pb::append_req::Content::Options(options)) = first.content else {
            return Err(error::invalid(
                "the first message of an append must be its options",
            ));
        };
        let stream = convert::stream_name(options.stream_identifier.as_ref())?;
        let expected = append_expected(options.expected_stream_revision);
        let limits = self.engine.store().limits();
        let mut events = Accumulated::new();
        while let Some(message) = incoming.message().await? {
            match message.content {
                Some(pb::append_req::Content::ProposedMessage(message)) => {
                    let event = convert::proposed_event(
                        message.id.as_ref(),
                        &message.metadata,
                        message.custom_metadata,
                        message.data,
                    )?;
                    outcome(events.push(event, &limits))?;
                }
                _ => return Err(error::invalid("an append sends its options once, first")),
            }
        }
        let span = tracing::info_span!("kurrent_append", stream = %Escaped(&stream), events = events.events.len());
        match self
            .commit(&by, stream, expected, events.events)
            .instrument(span)
            .await
        {
            Ok(result) => Ok(Response::new(append_success(&result))),
            Err(Error::Store(StoreError::WrongExpectedRevision {
                expected, current, ..
            })) => Ok(Response::new(append_wrong_expected(expected, current))),
            Err(error) => outcome(Err(error::to_status("Append", &error))),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteReq>,
    ) -> Result<Response<pb::DeleteResp>, Status> {
        let by = auth::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the delete has no options"))?;
        let stream = convert::stream_name(options.stream_identifier.as_ref())?;
        let expected = delete_expected(options.expected_stream_revision);
        outcome(self.remove(&by, stream, expected, false).await)?;
        Ok(Response::new(pb::DeleteResp {
            position_option: Some(pb::delete_resp::PositionOption::NoPosition(
                shared::Empty {},
            )),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<pb::TombstoneReq>,
    ) -> Result<Response<pb::TombstoneResp>, Status> {
        let by = auth::principal(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the tombstone has no options"))?;
        let stream = convert::stream_name(options.stream_identifier.as_ref())?;
        let expected = tombstone_expected(options.expected_stream_revision);
        outcome(self.remove(&by, stream, expected, true).await)?;
        Ok(Response::new(pb::TombstoneResp {
            position_option: Some(pb::tombstone_resp::PositionOption::NoPosition(
                shared::Empty {},
            )),
        }))
    }

    type BatchAppendStream = BatchAppendStream;

    async fn batch_append(
        &self,
        request: Request<Streaming<pb::BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let by = auth::principal(&request)?;
        // A cluster follower fails the whole call with KurrentDB's
        // `not-leader`, as KurrentDB does: a batch's per-request error has no
        // way to name the leader, and clients reconnect on this status.
        if let Some(refusal) = self.engine.store().write_refusal() {
            return Err(error::to_status("BatchAppend", &Error::Store(refusal)));
        }
        let incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(BATCH_RESPONSE_BUFFER);
        let service = self.clone();
        self.engine
            .tasks()
            .spawn(async move { service.run_batch_append(by, incoming, sender).await });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_append_bytes: usize, max_events_per_append: usize) -> cairn_storage::Limits {
        cairn_storage::Limits {
            max_append_bytes,
            max_events_per_append,
            ..cairn_storage::Limits::default()
        }
    }

    fn event(bytes: usize) -> EventData {
        EventData::json("T", vec![b'x'; bytes])
    }

    #[test]
    fn an_append_is_refused_once_over_the_byte_limit() {
        let limits = limits(100, 1000);
        let mut accumulated = Accumulated::new();
        // Each event is 1 + 16 ("application/json") + data bytes.
        accumulated.push(event(33), &limits).unwrap();
        accumulated.push(event(33), &limits).unwrap();
        let status = accumulated.push(event(1), &limits).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.metadata().get("exception").unwrap(),
            "maximum-append-size-exceeded"
        );
        assert_eq!(accumulated.events.len(), 2);
    }

    #[test]
    fn an_append_is_refused_once_over_the_count_limit() {
        let limits = limits(1 << 20, 2);
        let mut accumulated = Accumulated::new();
        accumulated.push(event(0), &limits).unwrap();
        accumulated.push(event(0), &limits).unwrap();
        let status = accumulated.push(event(0), &limits).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(accumulated.events.len(), 2);
    }

    #[test]
    fn wrong_expected_version_bodies_carry_both_forms() {
        let body = append_wrong_expected(ExpectedRevision::Exact(3), CurrentRevision::Revision(5));
        let Some(pb::append_resp::Result::WrongExpectedVersion(wrong)) = body.result else {
            panic!("not a wrong expected version: {body:?}");
        };
        use pb::append_resp::wrong_expected_version as wire;
        assert_eq!(
            wrong.current_revision_option,
            Some(wire::CurrentRevisionOption::CurrentRevision(5))
        );
        assert_eq!(
            wrong.expected_revision_option,
            Some(wire::ExpectedRevisionOption::ExpectedRevision(3))
        );
        assert_eq!(
            wrong.current_revision_option_20_6_0,
            Some(wire::CurrentRevisionOption2060::CurrentRevision2060(5))
        );
    }
}
