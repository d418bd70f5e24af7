//! Fuzzing the request decoders through the real gRPC facade: every
//! `cairn.v1` method gets random structured requests (random strings with
//! unicode, control characters and huge lengths, enums out of range, missing
//! oneofs and expectations), the same requests with their encoding mutated
//! (bytes flipped, cut, inserted), and plain random bytes.
//!
//! Every request is sent as bytes through `tonic::client::Grpc` with a codec
//! that passes bytes through ([`RawCodec`]): a structured request is its prost
//! encoding, so the server sees exactly what a generated client would send,
//! and undecodable bytes travel the same path. For each call:
//!
//! - it answers within [`CALL_TIMEOUT`] (a unary call completes, a read ends,
//!   a subscription or consumer sends its first message or its status);
//! - every error is one the protocol documents for bad input or missing state
//!   ([`documented`]); never INTERNAL, UNKNOWN, OUT_OF_RANGE or UNAVAILABLE;
//! - a consumer's call never ends with OK while the client is still sending;
//!
//! and after every test the server still reports SERVING and takes an append.
//! Each test shares one in-process server across its cases; case counts keep
//! the file well under a minute in the debug profile.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use cairn_client::{EventData, ExpectedRevision};
use cairn_proto::v1 as pb;
use cairn_testkit::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};
use uuid::Uuid;

/// Longest a call may take to complete (unary, Read) or to send its first
/// message or status (Subscribe, Consume) before it counts as a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A subscription or consumer is followed until it is quiet this long.
const QUIET: Duration = Duration::from_millis(100);

/// Codes the protocol documents for a request that is malformed, too large,
/// or names state that does not exist or does not allow it. Anything else
/// (INTERNAL, UNKNOWN, OUT_OF_RANGE, UNAVAILABLE on a healthy server, ...) is
/// a decoder or adapter bug.
fn documented(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
    )
}

// ---------------------------------------------------------------------------
// The raw transport.

/// A codec whose messages are their encoded bytes, sent and received as is.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// How a method answers, which decides how a call is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One response or a status.
    Unary,
    /// A finite stream (Read): drained to its end.
    Finite,
    /// A stream that may stay open (Subscribe): followed until quiet.
    Open,
    /// Client and server streams (Consume): the client keeps its side open.
    Bidi,
}

/// Every method of `cairn.v1` that takes a request, with its shape.
const METHODS: &[(&str, Shape)] = &[
    ("/cairn.v1.Streams/Append", Shape::Unary),
    ("/cairn.v1.Streams/AppendMulti", Shape::Unary),
    ("/cairn.v1.Streams/Read", Shape::Finite),
    ("/cairn.v1.Streams/Delete", Shape::Unary),
    ("/cairn.v1.Streams/Tombstone", Shape::Unary),
    ("/cairn.v1.Streams/GetStreamMetadata", Shape::Unary),
    ("/cairn.v1.Streams/SetStreamMetadata", Shape::Unary),
    ("/cairn.v1.Streams/ListStreams", Shape::Unary),
    ("/cairn.v1.Server/Info", Shape::Unary),
    ("/cairn.v1.Subscriptions/Subscribe", Shape::Open),
    (
        "/cairn.v1.PersistentSubscriptions/CreateGroup",
        Shape::Unary,
    ),
    (
        "/cairn.v1.PersistentSubscriptions/UpdateGroup",
        Shape::Unary,
    ),
    (
        "/cairn.v1.PersistentSubscriptions/DeleteGroup",
        Shape::Unary,
    ),
    ("/cairn.v1.PersistentSubscriptions/ListGroups", Shape::Unary),
    (
        "/cairn.v1.PersistentSubscriptions/GetGroupInfo",
        Shape::Unary,
    ),
    (
        "/cairn.v1.PersistentSubscriptions/ReplayParked",
        Shape::Unary,
    ),
    ("/cairn.v1.PersistentSubscriptions/Consume", Shape::Bidi),
];

/// One request as it goes on the wire: a method and its message(s).
#[derive(Clone)]
struct Wire {
    /// Index into [`METHODS`].
    method: usize,
    /// The request message; for Consume, the messages in order.
    frames: Vec<Vec<u8>>,
    /// What the frames were built from, for a failure's report.
    shown: String,
}

/// The report of a failing case: the method, the message it was built from
/// (cut, a huge string would drown it) and the frames' sizes and first bytes.
impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: String = self.shown.chars().take(1_500).collect();
        writeln!(f, "{} built from {shown}", self.path())?;
        for frame in &self.frames {
            writeln!(
                f,
                "  frame of {} bytes: {:02x?}",
                frame.len(),
                &frame[..frame.len().min(64)]
            )?;
        }
        Ok(())
    }
}

impl Wire {
    fn path(&self) -> &'static str {
        METHODS[self.method].0
    }
}

/// Why a case failed, for proptest's report (inputs are printed by proptest).
fn fail(wire: &Wire, what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("{}: {what}", wire.path()))
}

/// Checks one status of a call that was answered.
fn check_status(wire: &Wire, status: &Status) -> Result<(), TestCaseError> {
    if documented(status.code()) {
        Ok(())
    } else {
        Err(fail(
            wire,
            format!(
                "undocumented status {:?}: {}",
                status.code(),
                status.message().chars().take(300).collect::<String>()
            ),
        ))
    }
}

type Responses = tonic::Streaming<Vec<u8>>;

/// Follows a streaming response: `Finite` to its end within [`CALL_TIMEOUT`];
/// `Open`/`Bidi` until the first message or status within [`CALL_TIMEOUT`],
/// then until quiet for [`QUIET`] (at most [`CALL_TIMEOUT`] in all).
async fn follow(wire: &Wire, shape: Shape, mut responses: Responses) -> Result<(), TestCaseError> {
    let started = Instant::now();
    let mut first = true;
    loop {
        let patience = if shape == Shape::Finite || first {
            CALL_TIMEOUT.saturating_sub(started.elapsed())
        } else {
            QUIET
        };
        match tokio::time::timeout(patience, responses.message()).await {
            Err(_) if shape == Shape::Finite || first => {
                return Err(fail(wire, "no answer within the timeout (a hang)"));
            }
            // Open and quiet: the call is alive and waits for events.
            Err(_) => return Ok(()),
            Ok(Ok(Some(_))) => first = false,
            Ok(Ok(None)) if shape == Shape::Bidi => {
                return Err(fail(
                    wire,
                    "the consumer's call ended with OK while the client was still sending",
                ));
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return check_status(wire, &status),
        }
        if started.elapsed() > CALL_TIMEOUT {
            return Ok(());
        }
    }
}

/// Sends one request on `channel` and checks how it was answered.
async fn send(channel: &Channel, wire: &Wire) -> Result<(), TestCaseError> {
    let (path, shape) = METHODS[wire.method];
    let path = PathAndQuery::from_static(path);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let connect = async {
        tokio::time::timeout(CALL_TIMEOUT, grpc.ready())
            .await
            .map_err(|_| fail(wire, "the channel was not ready within the timeout"))?
            .map_err(|error| fail(wire, format!("the channel failed: {error}")))
    };
    connect.await?;
    let first = wire.frames.first().cloned().unwrap_or_default();
    let answered: Result<Result<(), Status>, TestCaseError> = match shape {
        Shape::Unary => {
            let call = grpc.unary(tonic::Request::new(first), path, RawCodec);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Err(_) => return Err(fail(wire, "no answer within the timeout (a hang)")),
                Ok(answer) => Ok(answer.map(drop)),
            }
        }
        Shape::Finite | Shape::Open => {
            let call = grpc.server_streaming(tonic::Request::new(first), path, RawCodec);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Err(_) => return Err(fail(wire, "no answer within the timeout (a hang)")),
                Ok(Ok(response)) => follow(wire, shape, response.into_inner()).await.map(Ok),
                Ok(Err(status)) => Ok(Err(status)),
            }
        }
        Shape::Bidi => {
            // The request stream stays open after the frames, as a live
            // consumer's would: the server must not end the call with OK.
            let requests = tokio_stream::StreamExt::chain(
                tokio_stream::iter(wire.frames.clone()),
                tokio_stream::pending(),
            );
            let call = grpc.streaming(tonic::Request::new(requests), path, RawCodec);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Err(_) => return Err(fail(wire, "no answer within the timeout (a hang)")),
                Ok(Ok(response)) => follow(wire, shape, response.into_inner()).await.map(Ok),
                Ok(Err(status)) => Ok(Err(status)),
            }
        }
    };
    match answered? {
        Ok(()) => Ok(()),
        Err(status) => check_status(wire, &status),
    }
}

// ---------------------------------------------------------------------------
// Strategies: field values.

/// Strings a field might get: names that exist or are reserved, plain
/// names, arbitrary unicode, control and bidi characters, and huge ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "", "order-1", "order-2", "order", "$all", "$ce-order", "$et-Placed", "$",
            "$$", "$$metadata", "$ce-", "$et-", "$sys-ps-groups", "$et-$parked",
            "$sys-ps-g1-parked", "g1", "g2", "-", " ", "\0", "a\nb\x1b[31m",
        ])
        .prop_map(str::to_owned),
        3 => "[a-z]{1,6}-[0-9]{1,3}",
        3 => any::<String>(),
        1 => "[\\x00-\\x1f\\x7f\u{200b}\u{202e}\u{feff}\u{fffd}]{1,16}",
        1 => (1usize..40, 0usize..4).prop_map(|(thousands, unit)| {
            ["x", "é", "\u{10ffff}", "$"][unit].repeat(thousands * 1_000)
        }),
    ]
}

/// Regular expressions, from harmless to pathological (huge repetitions,
/// nested quantifiers, syntax errors), and any [`text`].
fn regex() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "", "order-.*", "^order-[0-9]+$", "(a*)*b", "[", "\\", "(?i)PLACED", "a{1000}{1000}",
            ".{0,65535}", "(?P<x>a)(?P<x>b)", "\\p{Greek}+", "x{4294967295}", "((((((((((a))))))))))*",
        ])
        .prop_map(str::to_owned),
        1 => text(),
    ]
}

/// Event ids: canonical UUIDs, the nil UUID, other UUID forms, and text.
fn uuid_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => Just(Uuid::nil().to_string()),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).simple().to_string()),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).braced().to_string()),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).urn().to_string().to_uppercase()),
        2 => text(),
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::from(u32::MAX)),
        0u64..200,
        any::<u64>(),
    ]
}

fn number32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(u32::MAX), 0u32..20_000, any::<u32>()]
}

/// Enum values: the defined ones and any other i32.
fn enumeration() -> impl Strategy<Value = i32> {
    prop_oneof![3 => 0i32..5, 1 => any::<i32>()]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..64).prop_map(|kib| vec![0xab; kib * 1024]),
    ]
}

// ---------------------------------------------------------------------------
// Strategies: messages.

/// The strategy of a message from one strategy per field:
/// `message!(pb::DeleteRequest { stream: text(), expected: expected() })`.
macro_rules! message {
    ($($message:ident)::+ { $($field:ident: $strategy:expr),+ $(,)? }) => {
        ($($strategy,)+).prop_map(|($($field,)+)| $($message)::+ { $($field),+ })
    };
}

fn expected() -> impl Strategy<Value = Option<pb::ExpectedRevision>> {
    use pb::expected_revision::Kind;
    let kind = prop_oneof![
        Just(None),
        Just(Some(Kind::Any(()))),
        Just(Some(Kind::NoStream(()))),
        Just(Some(Kind::StreamExists(()))),
        number().prop_map(|revision| Some(Kind::Exact(revision))),
    ];
    prop::option::weighted(0.9, kind.prop_map(|kind| pb::ExpectedRevision { kind }))
}

fn proposed_event() -> impl Strategy<Value = pb::ProposedEvent> {
    message!(pb::ProposedEvent {
        id: prop_oneof![1 => Just(String::new()), 3 => uuid_text()],
        r#type: prop_oneof![3 => Just("Placed".to_owned()), 1 => text()],
        content_type: prop_oneof![2 => Just(String::new()), 1 => text()],
        metadata: bytes().prop_map(Into::into),
        data: bytes().prop_map(Into::into),
        tags: prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(text(), 0..80)],
    })
}

/// A DCB query: mostly small, sometimes over the item limit.
fn query() -> impl Strategy<Value = pb::Query> {
    let item = || {
        message!(pb::QueryItem {
            types: prop::collection::vec(text(), 0..3),
            tags: prop::collection::vec(text(), 0..3),
        })
    };
    prop_oneof![
        4 => prop::collection::vec(item(), 0..4),
        1 => prop::collection::vec(item(), 90..120),
    ]
    .prop_map(|items| pb::Query { items })
}

fn condition() -> impl Strategy<Value = Option<pb::AppendCondition>> {
    prop::option::weighted(
        0.3,
        message!(pb::AppendCondition {
            query: prop::option::weighted(0.9, query()),
            after: prop::option::of(number()),
        }),
    )
}

fn append_request() -> impl Strategy<Value = pb::AppendRequest> {
    message!(pb::AppendRequest {
        stream: text(),
        expected: expected(),
        events: prop::collection::vec(proposed_event(), 0..4),
        condition: condition(),
    })
}

fn filter() -> impl Strategy<Value = Option<pb::ReadFilter>> {
    prop::option::of(message!(pb::ReadFilter {
        stream_prefixes: prop::collection::vec(text(), 0..4),
        stream_regex: regex(),
        type_prefixes: prop::collection::vec(text(), 0..4),
        type_regex: regex(),
    }))
}

/// Where a read, a subscription or a group begins, in the message's own
/// `oneof`: unset, the start, the end, or at (after) a revision or a
/// position.
fn begin<T: Clone + std::fmt::Debug + 'static>(
    start: T,
    end: T,
    revision: fn(u64) -> T,
    position: fn(u64) -> T,
) -> impl Strategy<Value = Option<T>> {
    prop_oneof![
        Just(None),
        Just(Some(start)),
        Just(Some(end)),
        number().prop_map(move |at| Some(revision(at))),
        number().prop_map(move |at| Some(position(at))),
    ]
}

fn read_request() -> impl Strategy<Value = pb::ReadRequest> {
    use pb::read_request::From;
    message!(pb::ReadRequest {
        stream: text(),
        direction: enumeration(),
        from: begin(
            From::Start(()),
            From::End(()),
            From::Revision,
            From::Position
        ),
        max_count: number(),
        filter: filter(),
        query: prop::option::weighted(0.3, query()),
        // A position beyond the head makes the read wait (up to 5 s without
        // a deadline): not fuzzed; read_at_least.rs tests it.
        min_position: Just(None),
    })
}

fn subscribe_request() -> impl Strategy<Value = pb::SubscribeRequest> {
    use pb::subscribe_request::From;
    message!(pb::SubscribeRequest {
        stream: text(),
        from: begin(
            From::Start(()),
            From::End(()),
            From::AfterRevision,
            From::AfterPosition,
        ),
        filter: filter(),
        checkpoint_interval: number32(),
        query: prop::option::weighted(0.3, query()),
    })
}

fn delete_request() -> impl Strategy<Value = pb::DeleteRequest> {
    message!(pb::DeleteRequest {
        stream: text(),
        expected: expected(),
    })
}

fn set_metadata_request() -> impl Strategy<Value = pb::SetStreamMetadataRequest> {
    let custom_json = prop::option::of(prop_oneof![
        Just("{}".to_owned()),
        Just("{\"a\":[1,2,{\"b\":null}]}".to_owned()),
        (1usize..300).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        Just("[".repeat(100_000)),
        text(),
    ]);
    message!(pb::SetStreamMetadataRequest {
        stream: text(),
        expected: expected(),
        metadata: prop::option::of(message!(pb::StreamMetadata {
            max_count: prop::option::of(number()),
            max_age_seconds: prop::option::of(number()),
            truncate_before: prop::option::of(number()),
            custom_json: custom_json,
        })),
    })
}

fn group_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["g1", "g2", "fuzz.group-1"]).prop_map(str::to_owned),
        1 => text(),
    ]
}

fn group_settings() -> impl Strategy<Value = Option<pb::GroupSettings>> {
    prop::option::of(message!(pb::GroupSettings {
        strategy: enumeration(),
        max_retries: prop::option::of(number32()),
        message_timeout_ms: prop::option::of(number32()),
        max_in_flight_per_consumer: prop::option::of(number32()),
        checkpoint_after_events: prop::option::of(number32()),
        checkpoint_after_ms: prop::option::of(number32()),
        max_consumers: prop::option::of(number32()),
    }))
}

fn create_group_request() -> impl Strategy<Value = pb::CreateGroupRequest> {
    use pb::create_group_request::Start;
    message!(pb::CreateGroupRequest {
        group: group_name(),
        stream: text(),
        start: begin(
            Start::StartBeginning(()),
            Start::StartEnd(()),
            Start::StartAfterRevision,
            Start::StartAfterPosition,
        ),
        filter: filter(),
        settings: group_settings(),
    })
}

fn consume_request() -> impl Strategy<Value = pb::ConsumeRequest> {
    use pb::consume_request::Content;
    let ids = || prop::collection::vec(uuid_text(), 0..4);
    let content = prop_oneof![
        1 => Just(None),
        3 => (group_name(), text(), number32()).prop_map(|(group, consumer_name, max_in_flight)| {
            Some(Content::Open(pb::ConsumeOpen {
                group,
                consumer_name,
                max_in_flight,
            }))
        }),
        1 => ids().prop_map(|event_ids| Some(Content::Ack(pb::Ack { event_ids }))),
        1 => (ids(), enumeration(), text()).prop_map(|(event_ids, action, reason)| {
            Some(Content::Nack(pb::Nack {
                event_ids,
                action,
                reason,
            }))
        }),
    ];
    content.prop_map(|content| pb::ConsumeRequest { content })
}

/// A structured request to one method (index into [`METHODS`]), encoded.
fn structured() -> impl Strategy<Value = Wire> {
    fn one<M: Message + std::fmt::Debug + 'static>(
        method: usize,
        strategy: impl Strategy<Value = M> + 'static,
    ) -> BoxedStrategy<Wire> {
        strategy
            .prop_map(move |message| Wire {
                method,
                frames: vec![message.encode_to_vec()],
                shown: format!("{message:?}"),
            })
            .boxed()
    }
    prop_oneof![
        3 => one(0, append_request()),
        1 => one(1, (prop::collection::vec(append_request(), 0..4), condition())
            .prop_map(|(parts, condition)| pb::AppendMultiRequest { parts, condition })),
        3 => one(2, read_request()),
        1 => one(3, delete_request()),
        1 => one(4, delete_request()),
        1 => one(5, text().prop_map(|stream| pb::GetStreamMetadataRequest { stream })),
        2 => one(6, set_metadata_request()),
        1 => one(7, (text(), text(), number32())
            .prop_map(|(prefix, after, limit)| pb::ListStreamsRequest { prefix, after, limit })),
        1 => one(8, Just(())),
        2 => one(9, subscribe_request()),
        2 => one(10, create_group_request()),
        1 => one(11, (group_name(), group_settings())
            .prop_map(|(group, settings)| pb::UpdateGroupRequest { group, settings })),
        1 => one(12, group_name().prop_map(|group| pb::DeleteGroupRequest { group })),
        1 => one(13, Just(pb::ListGroupsRequest {})),
        1 => one(14, group_name().prop_map(|group| pb::GetGroupInfoRequest { group })),
        1 => one(15, (group_name(), number())
            .prop_map(|(group, max_count)| pb::ReplayParkedRequest { group, max_count })),
        2 => prop::collection::vec(consume_request(), 1..5).prop_map(|messages| Wire {
            method: 16,
            frames: messages.iter().map(Message::encode_to_vec).collect(),
            shown: format!("{messages:?}"),
        }),
    ]
}

/// One change to an encoding.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at this index (modulo the length) with a non-zero value.
    Flip(usize, u8),
    /// Cut the message at this index (modulo the length + 1).
    Truncate(usize),
    /// Insert bytes at this index (modulo the length + 1).
    Insert(usize, Vec<u8>),
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::Flip(at, mask) if !bytes.is_empty() => {
            let at = at % bytes.len();
            bytes[at] ^= *mask;
        }
        Mutation::Flip(..) => {}
        Mutation::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Mutation::Insert(at, inserted) => {
            let at = at % (bytes.len() + 1);
            bytes.splice(at..at, inserted.iter().copied());
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop_oneof![
            prop::collection::vec(any::<u8>(), 1..8),
            // A field header with a huge length, a deep group, invalid wire types.
            Just(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
            Just(vec![0x0b; 64]),
            Just(vec![0x0f, 0x07, 0x06]),
        ])
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
    ]
}

/// A structured request with 1..4 mutations applied to one of its frames.
fn mutated() -> impl Strategy<Value = Wire> {
    (
        structured(),
        any::<usize>(),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(mut wire, frame, mutations)| {
            let frame = frame % wire.frames.len();
            for mutation in &mutations {
                mutate(&mut wire.frames[frame], mutation);
            }
            wire.shown = format!("{}, frame {frame} mutated by {mutations:?}", wire.shown);
            wire
        })
}

/// Random bytes to any method.
fn random_bytes() -> impl Strategy<Value = Wire> {
    (
        0..METHODS.len(),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..512), 1..3),
    )
        .prop_map(|(method, frames)| Wire {
            method,
            frames,
            shown: "random bytes".to_owned(),
        })
}

// ---------------------------------------------------------------------------
// The runner.

/// Runs `cases` cases of `strategy` against one fresh server on a runtime of
/// its own, then checks that the server still serves.
fn fuzz(cases: u32, strategy: impl Strategy<Value = Wire>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (server, channel) = runtime.block_on(async {
        let server = TestServer::start().await;
        seed(&server).await;
        let channel = server.channel().await;
        (server, channel)
    });
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Shrinking resends requests; a bounded number keeps a failing run short.
        max_shrink_iters: 256,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |wire| runtime.block_on(send(&channel, &wire)));
    runtime.block_on(still_serves(&server));
    runtime.block_on(server.stop());
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

/// Some state for requests to meet: streams with events, metadata, a group.
async fn seed(server: &TestServer) {
    let client = server.client().await;
    for stream in ["order-1", "order-2"] {
        client
            .append(
                stream,
                ExpectedRevision::Any,
                (0..5)
                    .map(|n| EventData::json_text("Placed", format!("{{\"n\":{n}}}")))
                    .collect(),
            )
            .await
            .expect("seed append");
    }
    client
        .create_group("g1", "$ce-order", cairn_client::GroupOptions::default())
        .await
        .expect("seed group");
}

/// The server is healthy after the cases: SERVING, and it takes an append.
async fn still_serves(server: &TestServer) {
    let check = async {
        let client = server.client().await;
        assert!(client.is_serving().await.expect("health check"), "SERVING");
        client
            .append(
                format!("after-{}", Uuid::new_v4()),
                ExpectedRevision::NoStream,
                vec![EventData::json_text("Checked", "{}")],
            )
            .await
            .expect("an append after the fuzz cases");
        client.info().await.expect("Server.Info");
    };
    let check: Pin<Box<dyn Future<Output = ()> + Send + '_>> = Box::pin(check);
    tokio::time::timeout(CALL_TIMEOUT, check)
        .await
        .expect("the server answers after the fuzz cases");
}

/// Well-formed messages with hostile values, to every method.
#[test]
fn structured_requests_get_documented_answers() {
    fuzz(1_500, structured());
}

/// The same messages with their encoding damaged.
#[test]
fn mutated_encodings_get_documented_answers() {
    fuzz(1_500, mutated());
}

/// Bytes that are mostly not a message at all.
#[test]
fn random_bytes_get_documented_answers() {
    fuzz(1_000, random_bytes());
}
