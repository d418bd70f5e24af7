//! `event_store.client.persistent_subscriptions.PersistentSubscriptions` on
//! Cairn's consumer groups (`engine.groups()`): Create, Update, Delete,
//! GetInfo, List, ReplayParked and the bidirectional Read (options first,
//! then acks and nacks; a confirmation `<stream>::<group>`, then events with
//! their retry counts). It owns the mapping between KurrentDB's
//! (stream, group) pairs and Cairn's global group names, and the wire forms
//! of settings and info. Every decision (delivery, retries, parking,
//! checkpoints, access) is the engine's, with the same checks as the
//! `cairn.v1` adapter (`grpc/persistent.rs`): management needs
//! `authorize_operations`, Read needs `authorize_consume`. It must not touch
//! the store's writes nor the groups' state streams.
//!
//! Group names. KurrentDB names a group by its stream and its name; Cairn's
//! names are global and use `[A-Za-z0-9_.-]` only. A KurrentDB group `G` on
//! `$all` is the Cairn group `G` when `G` is a valid Cairn name; every other
//! pair (S, G) is the Cairn group `enc(S) + "__" + enc(G)`, where `enc` keeps
//! `[A-Za-z0-9.-]` and writes every other byte of the UTF-8 text as `_XX`
//! (upper-case hex), so `order-1`/`billing` is `order-1__billing` and
//! `$ce-order`/`g` is `_24ce-order__g`. `enc` never produces `__`, so the
//! first `__` separates the parts; the whole name is at most 200 characters
//! (longer pairs are refused). A group created through `cairn.v1` is visible
//! here under its stream with the decoded name when it has that form, and
//! under its own name otherwise (Read, GetInfo, Update and Delete find it by
//! that name and stream).
//!
//! Settings. `live_buffer_size` is the group's most events in flight per
//! consumer (capped at the engine's limit) and a Read's `buffer_size` the
//! consumer's own; `message_timeout` (0: none, kept as ~49 days),
//! `max_retry_count`, `max_checkpoint_count` (events) and `checkpoint_after`
//! (time) map one to one; the strategy is RoundRobin, DispatchToSingle or
//! Pinned (Cairn's pinned-by-stream). Cairn groups cannot store the rest:
//! `min_checkpoint_count`, `read_batch_size`, `history_buffer_size` and
//! `extra_statistics` are accepted and ignored (info shows the KurrentDB
//! defaults); `max_subscriber_count` is the group's `max_consumers` (0: no
//! limit of its own; the server's `max_consumers_per_group` applies either
//! way, and a Read beyond either is KurrentDB's "Maximum subscriptions
//! reached"); `resolve_links` is not
//! kept: groups on `$ce-`/`$et-` always deliver the event with its link (as
//! `resolve_links = true`), other sources have no links. An update changes
//! settings only: the start is fixed at creation (groups resume from their
//! checkpoint). `$all` filters take prefixes and regexes the `regex` crate
//! compiles (no look-around), plus the Python client's default exclusion of
//! system events, kept as "event types not starting with `$`".

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use cairn_engine::feeds::{Target, end_of};
use cairn_engine::groups::{
    ConsumerMessage, FilterSpec, GroupConsumer, GroupDefinition, GroupReport, GroupSettings,
    NackAction, Strategy,
};
use cairn_engine::{EndReason, Engine, Error, Escaped, Groups};
use cairn_proto::kurrent::persistent as pb;
use cairn_proto::kurrent::persistent::persistent_subscriptions_server::{
    PersistentSubscriptions, PersistentSubscriptionsServer,
};
use cairn_proto::kurrent::shared;
use cairn_proto::kurrent::streams as streams_pb;
use cairn_storage::{ReadFilter, ReadSource, RecordedEvent};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;
use uuid::Uuid;

use super::convert::{self, UuidForm};
use super::error;
use crate::grpc::auth;

/// How long a Read call may take to send its options.
const OPTIONS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message a Read call may send (an ack of [`MAX_IDS_PER_MESSAGE`]
/// string ids is about 500 KB).
pub(super) const READ_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most event ids in one ack or nack.
const MAX_IDS_PER_MESSAGE: usize = 10_000;
/// The stream name KurrentDB gives `$all`.
const ALL: &str = "$all";
/// Separates the encoded stream and group in a Cairn group name.
const SEPARATOR: &str = "__";
/// The longest Cairn group name (engine's `validate_group_name`).
const MAX_CAIRN_GROUP_NAME: usize = 200;
/// The Python client's default `$all` exclusion (system events,
/// `PersistentConfig<n>`, `Result`), which needs look-ahead.
const PYTHON_DEFAULT_EXCLUSION: &str = r"^(?!(\$.+$|PersistentConfig\d+$|Result$))";
/// What that exclusion is served as: event types not starting with `$`
/// (Cairn writes no `PersistentConfig<n>` or `Result` events of its own).
const SYSTEM_EVENTS_EXCLUDED: &str = "^[^$]";
/// The engine's most events in flight per consumer (not exported).
const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;
/// A message timeout of 0 (KurrentDB: none) as Cairn keeps it.
const NO_MESSAGE_TIMEOUT_MS: u32 = u32::MAX;
/// Longest consumer name taken from a `connection-name` header.
const MAX_CONNECTION_NAME: usize = 128;
/// KurrentDB's defaults, shown for settings Cairn does not keep.
const SHOWN_READ_BATCH_SIZE: i32 = 200;
const SHOWN_HISTORY_BUFFER_SIZE: i32 = 500;
const SHOWN_MIN_CHECKPOINT_COUNT: i32 = 1;
/// What the management calls are called in access errors.
const MANAGE: &str = "manage persistent subscriptions";

/// The service with the facade's message bounds.
pub(super) fn server(
    engine: Engine,
    max_message_bytes: usize,
) -> PersistentSubscriptionsServer<PersistentService> {
    PersistentSubscriptionsServer::new(PersistentService { engine })
        .max_decoding_message_size(max_message_bytes.min(READ_MESSAGE_BYTES))
        .max_encoding_message_size(max_message_bytes)
}

/// The service.
#[derive(Clone)]
pub(super) struct PersistentService {
    engine: Engine,
}

// ---------------------------------------------------------------------------
// Group names

/// `text` with every byte outside `[A-Za-z0-9.-]` written as `_XX`.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("_{byte:02X}"));
        }
    }
    encoded
}

/// The text `encode` made `encoded` from; `None` when it is not such a form.
fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'_' => {
                let hex = encoded.get(index + 1..index + 3)?;
                if !hex
                    .bytes()
                    .all(|digit| matches!(digit, b'0'..=b'9' | b'A'..=b'F'))
                {
                    return None;
                }
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            byte if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' => {
                decoded.push(byte);
                index += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(decoded).ok()
}

/// Whether `name` passes the engine's group-name check (1 to
/// [`MAX_CAIRN_GROUP_NAME`] characters of `[A-Za-z0-9_.-]`; the engine does
/// not export it).
fn is_cairn_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CAIRN_GROUP_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The Cairn group name of KurrentDB's group `group` on `stream` (see the
/// module docs).
fn cairn_name(stream: &str, group: &str) -> Result<String, Status> {
    if group.is_empty() {
        return Err(error::invalid("the group name is empty"));
    }
    if stream == ALL && is_cairn_group_name(group) {
        return Ok(group.to_owned());
    }
    let name = format!("{}{SEPARATOR}{}", encode(stream), encode(group));
    if name.len() > MAX_CAIRN_GROUP_NAME {
        return Err(error::invalid(format!(
            "the stream and group names are too long for a Cairn group: encoded, they take {} characters, the limit is {MAX_CAIRN_GROUP_NAME}",
            name.len()
        )));
    }
    Ok(name)
}

/// The KurrentDB name of a Cairn group.
fn kurrent_name(definition: &GroupDefinition) -> String {
    let prefix = format!("{}{SEPARATOR}", encode(&definition.stream));
    definition
        .group
        .strip_prefix(&prefix)
        .and_then(decode)
        .unwrap_or_else(|| definition.group.clone())
}

/// A stream as KurrentDB names it in a request.
fn requested_stream(identifier: &shared::StreamIdentifier) -> Result<String, Status> {
    let stream = convert::stream_name(Some(identifier))?;
    if stream == ALL {
        return Err(error::invalid(
            "name $all with the `all` option, not as a stream",
        ));
    }
    Ok(stream)
}

// ---------------------------------------------------------------------------
// Errors

/// A status with KurrentDB's `exception` trailer and the names.
fn group_status(error: Error, stream: &str, group: &str) -> Status {
    match error {
        Error::GroupNotFound { .. } => error::with_trailers(
            Code::NotFound,
            format!(
                "Subscription group '{}' on stream '{}' does not exist.",
                error::echoed(group),
                error::echoed(stream)
            ),
            "persistent-subscription-does-not-exist",
            &[
                ("stream-name", error::echoed(stream).to_owned()),
                ("group-name", error::echoed(group).to_owned()),
            ],
        ),
        Error::GroupExists { .. } => error::with_trailers(
            Code::AlreadyExists,
            format!(
                "Subscription group '{}' on stream '{}' exists.",
                error::echoed(group),
                error::echoed(stream)
            ),
            "persistent-subscription-exists",
            &[
                ("stream-name", error::echoed(stream).to_owned()),
                ("group-name", error::echoed(group).to_owned()),
            ],
        ),
        Error::GroupBroken { .. } => Status::failed_precondition(error.to_string()),
        other => error::to_status("PersistentSubscription", &other),
    }
}

/// A join refused for a consumer limit (the group's `max_subscriber_count`
/// or the server's), as KurrentDB words it: clients match the message's
/// start ("Maximum subscriptions reached") or the `exception` trailer and
/// raise their "maximum subscriptions reached" error, naming the stream and
/// group from the trailers.
fn join_status(error: Error, stream: &str, group: &str) -> Status {
    match error {
        Error::LimitExceeded(message) => error::with_trailers(
            Code::FailedPrecondition,
            format!(
                "Maximum subscriptions reached for subscription group '{}' on stream '{}': {message}",
                error::echoed(group),
                error::echoed(stream)
            ),
            "maximum-subscribers-reached",
            &[
                ("stream-name", error::echoed(stream).to_owned()),
                ("group-name", error::echoed(group).to_owned()),
            ],
        ),
        other => group_status(other, stream, group),
    }
}

impl PersistentService {
    fn groups(&self) -> &Groups {
        self.engine.groups()
    }

    fn authorize_management<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let by = auth::principal(request)?;
        self.engine
            .authorize_operations(&by, MANAGE)
            .map_err(|error| error::to_status("PersistentSubscription", &error))
    }

    /// The Cairn group KurrentDB's `group` on `stream` names: its canonical
    /// name, or a `cairn.v1` group of that very name on that stream.
    fn resolve(&self, stream: &str, group: &str) -> Result<GroupDefinition, Status> {
        let canonical = cairn_name(stream, group)?;
        let on_stream = |name: &str| {
            self.groups()
                .definition(name)
                .ok()
                .filter(|found| found.stream == stream)
        };
        on_stream(&canonical)
            .or_else(|| {
                is_cairn_group_name(group)
                    .then(|| on_stream(group))
                    .flatten()
            })
            .ok_or_else(|| {
                group_status(
                    Error::GroupNotFound {
                        group: group.to_owned(),
                    },
                    stream,
                    group,
                )
            })
    }
}

// ---------------------------------------------------------------------------
// Settings

/// The settings fields Create and Update share.
struct WireSettings {
    max_retry_count: i32,
    max_checkpoint_count: i32,
    live_buffer_size: i32,
    /// Milliseconds, if set.
    message_timeout_ms: Option<i64>,
    checkpoint_after_ms: Option<i64>,
    strategy: Strategy,
    /// 0: no limit of the group's own.
    max_subscriber_count: i32,
}

/// 100 ns ticks as milliseconds.
fn ticks_to_ms(ticks: i64) -> i64 {
    ticks / 10_000
}

fn strategy_named(name: &str) -> Result<Strategy, Status> {
    match name {
        "RoundRobin" => Ok(Strategy::RoundRobin),
        "DispatchToSingle" => Ok(Strategy::DispatchToSingle),
        "Pinned" => Ok(Strategy::PinnedByStream),
        other => Err(error::invalid(format!(
            "consumer strategy {:?} is not supported: use RoundRobin, DispatchToSingle or Pinned (by stream)",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

fn strategy_numbered(number: i32) -> Result<Strategy, Status> {
    match number {
        0 => Ok(Strategy::DispatchToSingle),
        1 => Ok(Strategy::RoundRobin),
        2 => Ok(Strategy::PinnedByStream),
        other => Err(error::invalid(format!(
            "consumer strategy {other} is not supported: use RoundRobin, DispatchToSingle or Pinned"
        ))),
    }
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::RoundRobin => "RoundRobin",
        Strategy::DispatchToSingle => "DispatchToSingle",
        Strategy::PinnedByStream => "Pinned",
    }
}

impl WireSettings {
    fn of_create(settings: &pb::create_req::Settings) -> Result<Self, Status> {
        use pb::create_req::settings::{CheckpointAfter, MessageTimeout};
        let strategy = if settings.consumer_strategy.is_empty() {
            #[allow(deprecated)]
            strategy_numbered(settings.named_consumer_strategy)?
        } else {
            strategy_named(&settings.consumer_strategy)?
        };
        Ok(Self {
            max_retry_count: settings.max_retry_count,
            max_checkpoint_count: settings.max_checkpoint_count,
            live_buffer_size: settings.live_buffer_size,
            message_timeout_ms: settings.message_timeout.map(|timeout| match timeout {
                MessageTimeout::MessageTimeoutTicks(ticks) => ticks_to_ms(ticks),
                MessageTimeout::MessageTimeoutMs(ms) => i64::from(ms),
            }),
            checkpoint_after_ms: settings.checkpoint_after.map(|after| match after {
                CheckpointAfter::CheckpointAfterTicks(ticks) => ticks_to_ms(ticks),
                CheckpointAfter::CheckpointAfterMs(ms) => i64::from(ms),
            }),
            strategy,
            max_subscriber_count: settings.max_subscriber_count,
        })
    }

    fn of_update(settings: &pb::update_req::Settings) -> Result<Self, Status> {
        use pb::update_req::settings::{CheckpointAfter, MessageTimeout};
        Ok(Self {
            max_retry_count: settings.max_retry_count,
            max_checkpoint_count: settings.max_checkpoint_count,
            live_buffer_size: settings.live_buffer_size,
            message_timeout_ms: settings.message_timeout.map(|timeout| match timeout {
                MessageTimeout::MessageTimeoutTicks(ticks) => ticks_to_ms(ticks),
                MessageTimeout::MessageTimeoutMs(ms) => i64::from(ms),
            }),
            checkpoint_after_ms: settings.checkpoint_after.map(|after| match after {
                CheckpointAfter::CheckpointAfterTicks(ticks) => ticks_to_ms(ticks),
                CheckpointAfter::CheckpointAfterMs(ms) => i64::from(ms),
            }),
            strategy: strategy_numbered(settings.named_consumer_strategy)?,
            max_subscriber_count: settings.max_subscriber_count,
        })
    }

    /// `base` with these settings; unset (zero) counts keep `base`'s, except
    /// `max_subscriber_count`, whose 0 means "no limit" (clients always send
    /// it, Update included).
    fn apply(&self, base: &GroupSettings) -> Result<GroupSettings, Status> {
        let non_negative = |value: i64, what: &str| -> Result<u32, Status> {
            if value < 0 {
                return Err(error::invalid(format!(
                    "{what} is {value}; it cannot be negative"
                )));
            }
            Ok(u32::try_from(value).unwrap_or(u32::MAX))
        };
        let max_retries = non_negative(i64::from(self.max_retry_count), "max_retry_count")?;
        let message_timeout_ms = match self.message_timeout_ms {
            None => base.message_timeout_ms,
            Some(0) => NO_MESSAGE_TIMEOUT_MS,
            Some(ms) => non_negative(ms, "message_timeout")?,
        };
        let checkpoint_after_ms = match self.checkpoint_after_ms {
            None => base.checkpoint_after_ms,
            Some(ms) => non_negative(ms, "checkpoint_after")?.max(1),
        };
        let checkpoint_after_events =
            match non_negative(i64::from(self.max_checkpoint_count), "max_checkpoint_count")? {
                0 => base.checkpoint_after_events,
                count => count,
            };
        let max_in_flight_per_consumer =
            match non_negative(i64::from(self.live_buffer_size), "live_buffer_size")? {
                0 => base.max_in_flight_per_consumer,
                size => size.min(MAX_IN_FLIGHT_LIMIT),
            };
        let max_consumers =
            non_negative(i64::from(self.max_subscriber_count), "max_subscriber_count")?;
        Ok(GroupSettings {
            strategy: self.strategy,
            max_retries,
            message_timeout_ms,
            max_in_flight_per_consumer,
            checkpoint_after_events,
            checkpoint_after_ms,
            max_consumers,
        })
    }
}

/// A `$all` group's filter from KurrentDB's filter options.
fn filter_spec(
    filter: Option<&pb::create_req::all_options::FilterOptions>,
) -> Result<FilterSpec, Status> {
    use pb::create_req::all_options::filter_options::Filter;
    let Some(filter) = filter else {
        return Ok(FilterSpec::default());
    };
    let (on_streams, expression) = match &filter.filter {
        None => return Ok(FilterSpec::default()),
        Some(Filter::StreamIdentifier(expression)) => (true, expression),
        Some(Filter::EventType(expression)) => (false, expression),
    };
    let regex = if expression.regex == PYTHON_DEFAULT_EXCLUSION {
        SYSTEM_EVENTS_EXCLUDED.to_owned()
    } else {
        if !expression.regex.is_empty() {
            ReadFilter::regex(&expression.regex).map_err(|failure| {
                error::invalid(format!(
                    "a persistent subscription's filter regex must compile without look-around or back-references (Cairn's groups filter with the `regex` crate): {failure}"
                ))
            })?;
        }
        expression.regex.clone()
    };
    let (stream_prefixes, type_prefixes) = if on_streams {
        (expression.prefix.clone(), Vec::new())
    } else {
        (Vec::new(), expression.prefix.clone())
    };
    ReadFilter::check_prefixes(&stream_prefixes, &type_prefixes)
        .map_err(|failure| error::invalid(failure.to_string()))?;
    Ok(if on_streams {
        FilterSpec {
            stream_prefixes,
            stream_regex: regex,
            ..FilterSpec::default()
        }
    } else {
        FilterSpec {
            type_prefixes,
            type_regex: regex,
            ..FilterSpec::default()
        }
    })
}

/// Where a new group starts, as a client asks for it.
enum Start {
    Beginning,
    End,
    /// A stream revision (for `$ce-`/`$et-`: a link revision, which is the
    /// Cairn position).
    Revision(u64),
    /// A KurrentDB commit position.
    Commit(u64),
}

fn stream_start(option: Option<&pb::create_req::stream_options::RevisionOption>) -> Start {
    use pb::create_req::stream_options::RevisionOption;
    match option {
        None | Some(RevisionOption::Start(_)) => Start::Beginning,
        Some(RevisionOption::End(_)) => Start::End,
        Some(RevisionOption::Revision(revision)) => Start::Revision(*revision),
    }
}

fn all_start(option: Option<&pb::create_req::all_options::AllOption>) -> Start {
    use pb::create_req::all_options::AllOption;
    match option {
        None | Some(AllOption::Start(_)) => Start::Beginning,
        Some(AllOption::End(_)) => Start::End,
        Some(AllOption::Position(position)) => Start::Commit(position.commit_position),
    }
}

// ---------------------------------------------------------------------------
// Info

/// A position as KurrentDB shows it for a group on `stream`: a revision
/// (streams; the link revision, i.e. the position, for `$ce-`/`$et-`) or
/// `C:<commit>/P:<prepare>` for `$all`.
fn shown_position(stream: &str, revision: Option<u64>, position: u64) -> String {
    if stream == ALL {
        let commit = convert::to_commit(position);
        format!("C:{commit}/P:{commit}")
    } else {
        revision.unwrap_or(position).to_string()
    }
}

fn saturating_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn is_index(stream: &str) -> bool {
    matches!(
        ReadSource::parse(stream),
        Ok(ReadSource::Category(_) | ReadSource::EventType(_))
    )
}

fn subscription_info(report: &GroupReport) -> pb::SubscriptionInfo {
    let definition = &report.definition;
    let settings = &definition.settings;
    let status = &report.status;
    let stream = definition.stream.as_str();
    let start_from = match (stream == ALL, definition.start_cursor) {
        (true, 0) => "C:0/P:0".to_owned(),
        (true, position) => shown_position(stream, None, position),
        (false, revision) => revision.to_string(),
    };
    let checkpoint = status
        .checkpoint
        .map(|checkpoint| shown_position(stream, checkpoint.revision, checkpoint.position))
        .unwrap_or_default();
    let message_timeout_ms = if settings.message_timeout_ms == NO_MESSAGE_TIMEOUT_MS {
        0
    } else {
        saturating_i32(u64::from(settings.message_timeout_ms))
    };
    let connections = status
        .consumers
        .iter()
        .map(|consumer| pb::subscription_info::ConnectionInfo {
            from: String::new(),
            username: String::new(),
            average_items_per_second: 0,
            total_items: saturating_i64(consumer.delivered),
            count_since_last_measurement: 0,
            observed_measurements: Vec::new(),
            available_slots: saturating_i32(
                u64::from(consumer.max_in_flight).saturating_sub(consumer.in_flight),
            ),
            in_flight_messages: saturating_i32(consumer.in_flight),
            connection_name: consumer.name.clone(),
        })
        .collect();
    pb::SubscriptionInfo {
        event_source: definition.stream.clone(),
        group_name: kurrent_name(definition),
        status: "Live".to_owned(),
        connections,
        average_per_second: 0,
        total_items: saturating_i64(status.delivered_total),
        count_since_last_measurement: 0,
        last_checkpointed_event_position: checkpoint.clone(),
        last_known_event_position: checkpoint,
        resolve_link_tos: is_index(stream),
        start_from,
        message_timeout_milliseconds: message_timeout_ms,
        extra_statistics: false,
        max_retry_count: saturating_i32(u64::from(settings.max_retries)),
        live_buffer_size: saturating_i32(u64::from(settings.max_in_flight_per_consumer)),
        buffer_size: SHOWN_HISTORY_BUFFER_SIZE,
        read_batch_size: SHOWN_READ_BATCH_SIZE,
        check_point_after_milliseconds: saturating_i32(u64::from(settings.checkpoint_after_ms)),
        min_check_point_count: SHOWN_MIN_CHECKPOINT_COUNT,
        max_check_point_count: saturating_i32(u64::from(settings.checkpoint_after_events)),
        read_buffer_count: saturating_i32(status.waiting),
        live_buffer_count: saturating_i64(status.waiting),
        retry_buffer_count: 0,
        total_in_flight_messages: saturating_i32(status.in_flight),
        outstanding_messages_count: saturating_i32(status.in_flight),
        named_consumer_strategy: strategy_name(settings.strategy).to_owned(),
        max_subscriber_count: saturating_i32(u64::from(settings.max_consumers)),
        parked_message_count: saturating_i64(report.parked),
    }
}

// ---------------------------------------------------------------------------
// Events

/// The XOR mask between an event's id and its link's id in `index` (the
/// facade's link ids are the event id mixed with a hash of the index name):
/// acks of links name the event through it.
fn link_mask(index: &str) -> u128 {
    let probe = RecordedEvent {
        position: 0,
        stream: String::new(),
        revision: 0,
        id: Uuid::nil(),
        event_type: String::new(),
        content_type: String::new(),
        created: UNIX_EPOCH,
        metadata: Bytes::new(),
        data: Bytes::new(),
        tags: Vec::new(),
    };
    let read = convert::read_event(&probe, Some(index), true, UuidForm::String);
    let link_id = match read.content {
        Some(streams_pb::read_resp::Content::Event(event)) => event
            .link
            .and_then(|link| convert::uuid_from_wire(link.id.as_ref(), "link id").ok()),
        _ => None,
    };
    link_id.map_or(0, |id| id.as_u128())
}

fn recorded(
    event: streams_pb::read_resp::read_event::RecordedEvent,
) -> pb::read_resp::read_event::RecordedEvent {
    pb::read_resp::read_event::RecordedEvent {
        id: event.id,
        stream_identifier: event.stream_identifier,
        stream_revision: event.stream_revision,
        prepare_position: event.prepare_position,
        commit_position: event.commit_position,
        metadata: event.metadata,
        custom_metadata: event.custom_metadata,
        data: event.data,
    }
}

/// One delivered event on the wire: the event (and its link for index
/// groups) with its retry count.
fn delivered(
    event: &RecordedEvent,
    index: Option<&str>,
    retry_count: u32,
    form: UuidForm,
) -> pb::ReadResp {
    use pb::read_resp::read_event::{Count, Position};
    let read = convert::read_event(event, index, true, form);
    let (recorded_event, link) = match read.content {
        Some(streams_pb::read_resp::Content::Event(read_event)) => (
            read_event.event.map(recorded),
            read_event.link.map(recorded),
        ),
        _ => (None, None),
    };
    pb::ReadResp {
        content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
            event: recorded_event,
            link,
            position: Some(Position::CommitPosition(convert::to_commit(event.position))),
            count: Some(Count::RetryCount(saturating_i32(u64::from(retry_count)))),
        })),
    }
}

// ---------------------------------------------------------------------------
// The service

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResp, Status>> + Send>>;

#[tonic::async_trait]
impl PersistentSubscriptions for PersistentService {
    type ReadStream = ReadStream;

    async fn create(
        &self,
        request: Request<pb::CreateReq>,
    ) -> Result<Response<pb::CreateResp>, Status> {
        use pb::create_req::options::StreamOption;
        self.authorize_management(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the options are missing"))?;
        let settings = options.settings.clone().unwrap_or_default();
        let (stream, start, filter) = match &options.stream_option {
            Some(StreamOption::Stream(stream)) => {
                let identifier = stream
                    .stream_identifier
                    .as_ref()
                    .ok_or_else(|| error::invalid("the stream identifier is missing"))?;
                (
                    requested_stream(identifier)?,
                    stream_start(stream.revision_option.as_ref()),
                    FilterSpec::default(),
                )
            }
            Some(StreamOption::All(all)) => {
                use pb::create_req::all_options::FilterOption;
                let filter = match &all.filter_option {
                    Some(FilterOption::Filter(filter)) => filter_spec(Some(filter))?,
                    Some(FilterOption::NoFilter(_)) | None => FilterSpec::default(),
                };
                (ALL.to_owned(), all_start(all.all_option.as_ref()), filter)
            }
            // Clients before 21.10 name the stream here, the start in the settings.
            None => {
                #[allow(deprecated)]
                let identifier = options
                    .stream_identifier
                    .as_ref()
                    .ok_or_else(|| error::invalid("the stream is missing"))?;
                #[allow(deprecated)]
                let revision = settings.revision;
                (
                    requested_stream(identifier)?,
                    Start::Revision(revision),
                    FilterSpec::default(),
                )
            }
        };
        let group = options.group_name;
        let span = tracing::info_span!("kurrent_create_group", group = %Escaped(&group), stream = %Escaped(&stream));
        async {
            let name = cairn_name(&stream, &group)?;
            // A cairn.v1 group of this very name on this stream already is it.
            if is_cairn_group_name(&group) && self.resolve(&stream, &group).is_ok() {
                return Err(group_status(
                    Error::GroupExists {
                        group: group.clone(),
                    },
                    &stream,
                    &group,
                ));
            }
            let source = ReadSource::parse(&stream)
                .map_err(|failure| error::invalid(failure.to_string()))?;
            let target = Target::of(source);
            let start_cursor = match start {
                Start::Beginning => 0,
                Start::End => end_of(self.engine.store(), &target),
                Start::Revision(revision) => revision,
                Start::Commit(commit) => convert::from_commit(commit).unwrap_or(0),
            };
            let definition = GroupDefinition {
                group: name,
                stream: stream.clone(),
                filter,
                start_cursor,
                settings: WireSettings::of_create(&settings)?.apply(&GroupSettings::default())?,
            };
            self.groups()
                .create(definition)
                .await
                .map_err(|failure| group_status(failure, &stream, &group))?;
            Ok(Response::new(pb::CreateResp {}))
        }
        .instrument(span)
        .await
    }

    async fn update(
        &self,
        request: Request<pb::UpdateReq>,
    ) -> Result<Response<pb::UpdateResp>, Status> {
        use pb::update_req::options::StreamOption;
        self.authorize_management(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the options are missing"))?;
        let stream = match &options.stream_option {
            Some(StreamOption::Stream(stream)) => requested_stream(
                stream
                    .stream_identifier
                    .as_ref()
                    .ok_or_else(|| error::invalid("the stream identifier is missing"))?,
            )?,
            Some(StreamOption::All(_)) => ALL.to_owned(),
            None => {
                #[allow(deprecated)]
                let identifier = options
                    .stream_identifier
                    .as_ref()
                    .ok_or_else(|| error::invalid("the stream is missing"))?;
                requested_stream(identifier)?
            }
        };
        let group = options.group_name;
        let wire = WireSettings::of_update(&options.settings.unwrap_or_default())?;
        let definition = self.resolve(&stream, &group)?;
        let settings = wire.apply(&definition.settings)?;
        self.groups()
            .update(&definition.group, |_| settings)
            .await
            .map_err(|failure| group_status(failure, &stream, &group))?;
        Ok(Response::new(pb::UpdateResp {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteReq>,
    ) -> Result<Response<pb::DeleteResp>, Status> {
        use pb::delete_req::options::StreamOption;
        self.authorize_management(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the options are missing"))?;
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(identifier)) => requested_stream(identifier)?,
            Some(StreamOption::All(_)) => ALL.to_owned(),
            None => return Err(error::invalid("the stream is missing")),
        };
        let group = options.group_name;
        let definition = self.resolve(&stream, &group)?;
        self.groups()
            .delete(&definition.group)
            .await
            .map_err(|failure| group_status(failure, &stream, &group))?;
        Ok(Response::new(pb::DeleteResp {}))
    }

    async fn get_info(
        &self,
        request: Request<pb::GetInfoReq>,
    ) -> Result<Response<pb::GetInfoResp>, Status> {
        use pb::get_info_req::options::StreamOption;
        self.authorize_management(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the options are missing"))?;
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(identifier)) => requested_stream(identifier)?,
            Some(StreamOption::All(_)) => ALL.to_owned(),
            None => return Err(error::invalid("the stream is missing")),
        };
        let group = options.group_name;
        let definition = self.resolve(&stream, &group)?;
        let report = self
            .groups()
            .report(&definition.group)
            .await
            .map_err(|failure| group_status(failure, &stream, &group))?;
        Ok(Response::new(pb::GetInfoResp {
            subscription_info: Some(subscription_info(&report)),
        }))
    }

    async fn list(&self, request: Request<pb::ListReq>) -> Result<Response<pb::ListResp>, Status> {
        use pb::list_req::options::ListOption;
        use pb::list_req::stream_option::StreamOption;
        self.authorize_management(&request)?;
        let options = request.into_inner().options.unwrap_or_default();
        let only = match options.list_option {
            None | Some(ListOption::ListAllSubscriptions(_)) => None,
            Some(ListOption::ListForStream(stream)) => match stream.stream_option {
                Some(StreamOption::Stream(identifier)) => Some(requested_stream(&identifier)?),
                Some(StreamOption::All(_)) => Some(ALL.to_owned()),
                None => return Err(error::invalid("the stream is missing")),
            },
        };
        let reports = self
            .groups()
            .reports()
            .await
            .map_err(|failure| error::to_status("PersistentSubscription", &failure))?;
        let subscriptions = reports
            .iter()
            .filter(|report| {
                only.as_deref()
                    .is_none_or(|stream| report.definition.stream == stream)
            })
            .map(subscription_info)
            .collect();
        Ok(Response::new(pb::ListResp { subscriptions }))
    }

    async fn replay_parked(
        &self,
        request: Request<pb::ReplayParkedReq>,
    ) -> Result<Response<pb::ReplayParkedResp>, Status> {
        use pb::replay_parked_req::options::{StopAtOption, StreamOption};
        self.authorize_management(&request)?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| error::invalid("the options are missing"))?;
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(identifier)) => requested_stream(identifier)?,
            Some(StreamOption::All(_)) => ALL.to_owned(),
            None => return Err(error::invalid("the stream is missing")),
        };
        // 0: as many as the engine replays in one call.
        let max = match options.stop_at_option {
            Some(StopAtOption::StopAt(stop_at)) if stop_at > 0 => {
                u64::try_from(stop_at).unwrap_or(0)
            }
            Some(StopAtOption::StopAt(_) | StopAtOption::NoLimit(_)) | None => 0,
        };
        let group = options.group_name;
        let definition = self.resolve(&stream, &group)?;
        let span =
            tracing::info_span!("kurrent_replay_parked", group = %Escaped(&definition.group), max);
        self.groups()
            .replay_parked(&definition.group, max)
            .instrument(span)
            .await
            .map_err(|failure| group_status(failure, &stream, &group))?;
        Ok(Response::new(pb::ReplayParkedResp {}))
    }

    async fn truncate_parked(
        &self,
        _: Request<pb::TruncateParkedReq>,
    ) -> Result<Response<pb::TruncateParkedResp>, Status> {
        Err(Status::unimplemented(
            "TruncateParked is not implemented by Cairn's KurrentDB facade: replay parked events instead",
        ))
    }

    /// Restarts every consumer group, as KurrentDB restarts its subsystem:
    /// each writes its checkpoint, drops its consumers (they reconnect; what
    /// they held comes again) and starts from its checkpoint and stored
    /// settings.
    async fn restart_subsystem(
        &self,
        request: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        self.authorize_management(&request)?;
        let restarted = self.engine.groups().restart_all().await;
        tracing::info!(
            restarted,
            "persistent subscriptions restarted (RestartSubsystem)"
        );
        Ok(Response::new(shared::Empty {}))
    }

    async fn read(
        &self,
        request: Request<Streaming<pb::ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        use pb::read_req::Content;
        use pb::read_req::options::{StreamOption, uuid_option};
        let by = auth::principal(&request)?;
        let consumer_name = connection_name(request.metadata());
        let mut requests = request.into_inner();
        // A call that never says which group it joins would hold a task forever.
        let first = tokio::time::timeout(OPTIONS_TIMEOUT, requests.message())
            .await
            .map_err(|_| {
                error::invalid(format!(
                    "Read sent no options within {} s",
                    OPTIONS_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| error::invalid("Read ended before its options"))?;
        let Some(Content::Options(options)) = first.content else {
            return Err(error::invalid(
                "the first message of Read must be the options",
            ));
        };
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(identifier)) => requested_stream(identifier)?,
            Some(StreamOption::All(_)) => ALL.to_owned(),
            None => return Err(error::invalid("the stream is missing")),
        };
        let form = match options.uuid_option.and_then(|option| option.content) {
            Some(uuid_option::Content::Structured(_)) => UuidForm::Structured,
            Some(uuid_option::Content::String(_)) | None => UuidForm::String,
        };
        let group = options.group_name;
        let definition = self.resolve(&stream, &group)?;
        let span = tracing::info_span!("kurrent_read_group", group = %Escaped(&definition.group), consumer = %Escaped(&consumer_name));
        self.engine
            .authorize_consume(&by, &definition.group)
            .map_err(|failure| group_status(failure, &stream, &group))?;
        let index = is_index(&definition.stream).then(|| definition.stream.clone());
        let mask = index.as_deref().map_or(0, link_mask);
        let max_in_flight = u32::try_from(options.buffer_size.max(0)).unwrap_or(0);
        let (consumer, receiver) = self
            .groups()
            .join(&definition.group, consumer_name, max_in_flight)
            .await
            .map_err(|failure| join_status(failure, &stream, &group))?;
        tracing::debug!(parent: &span, consumer = consumer.id(), "KurrentDB consumer joined");
        let left = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_acks(requests, consumer, Arc::clone(&left), mask).instrument(span));
        Ok(Response::new(Box::pin(ReadResponses {
            receiver,
            left,
            ended: false,
            subscription_id: format!("{stream}::{group}"),
            stream,
            group,
            index,
            form,
        })))
    }
}

/// The consumer's name: the client's `connection-name` header, if any.
fn connection_name(metadata: &MetadataMap) -> String {
    metadata
        .get("connection-name")
        .and_then(|value| value.to_str().ok())
        .filter(|name| !name.is_empty())
        .map_or_else(
            || "kurrentdb-client".to_owned(),
            |name| name.chars().take(MAX_CONNECTION_NAME).collect(),
        )
}

/// The Cairn event ids of acked or nacked ids (links name their event
/// through `mask`), at most [`MAX_IDS_PER_MESSAGE`].
fn event_ids(ids: &[shared::Uuid], mask: u128) -> Result<Vec<Uuid>, Error> {
    if ids.len() > MAX_IDS_PER_MESSAGE {
        return Err(Error::LimitExceeded(format!(
            "an ack or nack names {} events, the limit is {MAX_IDS_PER_MESSAGE}",
            ids.len()
        )));
    }
    ids.iter()
        .map(|id| {
            convert::uuid_from_wire(Some(id), "an acked event id")
                .map(|id| Uuid::from_u128(id.as_u128() ^ mask))
                .map_err(|status| Error::InvalidArgument(status.message().to_owned()))
        })
        .collect()
}

fn nack_action(action: i32) -> NackAction {
    use pb::read_req::nack::Action;
    match Action::try_from(action) {
        Ok(Action::Park) => NackAction::Park,
        Ok(Action::Skip) => NackAction::Skip,
        Ok(Action::Stop) => NackAction::Stop,
        Ok(Action::Retry | Action::Unknown) | Err(_) => NackAction::Retry,
    }
}

/// Forwards a consumer's acks and nacks to its group until its call ends,
/// then leaves (what it holds goes to the others). A message the server
/// cannot take ends the call with its error.
async fn read_acks(
    mut requests: Streaming<pb::ReadReq>,
    consumer: GroupConsumer,
    left: Arc<AtomicBool>,
    mask: u128,
) {
    use pb::read_req::Content;
    let (ending, graceful) = loop {
        let message = match requests.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break (None, true),
            Err(status) => match status.code() {
                Code::OutOfRange | Code::ResourceExhausted => {
                    break (
                        Some(Error::LimitExceeded(format!(
                            "a Read message is larger than {READ_MESSAGE_BYTES} bytes; ack or nack fewer events per message"
                        ))),
                        false,
                    );
                }
                Code::InvalidArgument | Code::Internal => {
                    break (
                        Some(Error::InvalidArgument(
                            "a Read message could not be decoded".into(),
                        )),
                        false,
                    );
                }
                // The client went away.
                _ => break (None, false),
            },
        };
        let delivered = match message.content {
            Some(Content::Ack(ack)) => match event_ids(&ack.ids, mask) {
                Ok(ids) => consumer.ack(ids).await,
                Err(failure) => break (Some(failure), false),
            },
            Some(Content::Nack(nack)) => match event_ids(&nack.ids, mask) {
                Ok(ids) => {
                    consumer
                        .nack(ids, nack_action(nack.action), nack.reason)
                        .await
                }
                Err(failure) => break (Some(failure), false),
            },
            Some(Content::Options(_)) => {
                break (
                    Some(Error::InvalidArgument(
                        "the options were already sent; send acks and nacks on this call".into(),
                    )),
                    false,
                );
            }
            None => {
                break (
                    Some(Error::InvalidArgument(
                        "a Read message without content".into(),
                    )),
                    false,
                );
            }
        };
        if !delivered {
            // The group is gone; its actor already ended the call.
            return;
        }
    };
    left.store(true, Ordering::Release);
    if let Some(failure) = &ending {
        tracing::debug!(%failure, "ending a KurrentDB consumer's call");
    }
    consumer
        .leave(ending.map(EndReason::Failed), graceful)
        .await;
}

/// A consumer's outgoing messages: the confirmation (when the group took
/// it), then its events. The group ends a session with an `End` message
/// (the call's status); a channel that closes without one after the
/// consumer left is a normal end, before it an internal failure.
struct ReadResponses {
    receiver: mpsc::Receiver<ConsumerMessage>,
    left: Arc<AtomicBool>,
    ended: bool,
    /// `<stream>::<group>` as the client named them.
    subscription_id: String,
    stream: String,
    group: String,
    /// The `$ce-`/`$et-` stream of an index group (its events carry links).
    index: Option<String>,
    form: UuidForm,
}

impl Stream for ReadResponses {
    type Item = Result<pb::ReadResp, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let message = match self.receiver.poll_recv(context) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(message) => message,
        };
        let reason = match message {
            Some(ConsumerMessage::Joined { .. }) => {
                let confirmation = pb::read_resp::SubscriptionConfirmation {
                    subscription_id: self.subscription_id.clone(),
                };
                return Poll::Ready(Some(Ok(pb::ReadResp {
                    content: Some(pb::read_resp::Content::SubscriptionConfirmation(
                        confirmation,
                    )),
                })));
            }
            Some(ConsumerMessage::Event { event, retry_count }) => {
                let response = delivered(&event, self.index.as_deref(), retry_count, self.form);
                return Poll::Ready(Some(Ok(response)));
            }
            Some(ConsumerMessage::End(reason)) => reason,
            None if self.left.load(Ordering::Acquire) => return Poll::Ready(None),
            None => EndReason::Failed(Error::Internal(
                "the consumer group's actor stopped unexpectedly; reconnect".into(),
            )),
        };
        self.ended = true;
        let status = group_status(reason.into_error(), &self.stream, &self.group);
        Poll::Ready(Some(Err(status)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_stay_valid_cairn_names() {
        for (stream, group) in [
            ("order-1", "billing"),
            ("$ce-order", "g"),
            ("a::b", "c"),
            ("a", "b::c"),
            ("a:", ":b"),
            ("snow ☃", "группа"),
            ("x__y", "z_"),
            (ALL, "needs encoding!"),
        ] {
            let name = cairn_name(stream, group).unwrap();
            assert!(is_cairn_group_name(&name), "{name}");
            let definition = GroupDefinition {
                group: name.clone(),
                stream: stream.to_owned(),
                filter: FilterSpec::default(),
                start_cursor: 0,
                settings: GroupSettings::default(),
            };
            assert_eq!(kurrent_name(&definition), group, "{name}");
        }
        assert_eq!(
            cairn_name("order-1", "billing").unwrap(),
            "order-1__billing"
        );
        assert_eq!(cairn_name(ALL, "billing").unwrap(), "billing");
        // Different pairs never share a name.
        assert_ne!(
            cairn_name("a::b", "c").unwrap(),
            cairn_name("a", "b::c").unwrap()
        );
    }

    #[test]
    fn names_too_long_once_encoded_are_refused() {
        let status = cairn_name(&"$".repeat(100), "g").unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("200"), "{}", status.message());
        assert!(cairn_name("s", "").is_err());
    }

    #[test]
    fn cairn_groups_without_the_form_keep_their_name() {
        let definition = GroupDefinition {
            group: "billing".into(),
            stream: "order-1".into(),
            filter: FilterSpec::default(),
            start_cursor: 0,
            settings: GroupSettings::default(),
        };
        assert_eq!(kurrent_name(&definition), "billing");
    }

    #[test]
    fn acks_are_bounded_in_count_and_map_links_to_events() {
        let id = Uuid::new_v4();
        let wire = convert::uuid_to_wire(id, UuidForm::String);
        let too_many = vec![wire.clone(); MAX_IDS_PER_MESSAGE + 1];
        assert!(matches!(
            event_ids(&too_many, 0),
            Err(Error::LimitExceeded(_))
        ));
        assert_eq!(event_ids(&[wire], 0).unwrap(), [id]);
        // A link's id names its event.
        let index = "$ce-order";
        let event = RecordedEvent {
            position: 7,
            stream: "order-1".into(),
            revision: 0,
            id,
            event_type: "Placed".into(),
            content_type: "application/json".into(),
            created: UNIX_EPOCH,
            metadata: Bytes::new(),
            data: Bytes::new(),
            tags: Vec::new(),
        };
        let response = delivered(&event, Some(index), 2, UuidForm::String);
        let Some(pb::read_resp::Content::Event(read)) = response.content else {
            panic!("an event");
        };
        assert_eq!(
            read.count,
            Some(pb::read_resp::read_event::Count::RetryCount(2))
        );
        let link_id = read.link.unwrap().id.unwrap();
        assert_eq!(event_ids(&[link_id], link_mask(index)).unwrap(), [id]);
    }

    #[test]
    fn settings_map_and_bad_ones_are_refused() {
        let wire = WireSettings {
            max_retry_count: 3,
            max_checkpoint_count: 50,
            live_buffer_size: 20_000,
            message_timeout_ms: Some(0),
            checkpoint_after_ms: Some(2_000),
            strategy: Strategy::PinnedByStream,
            max_subscriber_count: 1,
        };
        let settings = wire.apply(&GroupSettings::default()).unwrap();
        assert_eq!(settings.max_consumers, 1);
        let unlimited = WireSettings {
            max_subscriber_count: 0,
            ..wire
        };
        let with_limit = GroupSettings {
            max_consumers: 3,
            ..GroupSettings::default()
        };
        assert_eq!(unlimited.apply(&with_limit).unwrap().max_consumers, 0);
        assert_eq!(settings.max_retries, 3);
        assert_eq!(settings.checkpoint_after_events, 50);
        assert_eq!(settings.max_in_flight_per_consumer, MAX_IN_FLIGHT_LIMIT);
        assert_eq!(settings.message_timeout_ms, NO_MESSAGE_TIMEOUT_MS);
        assert_eq!(settings.checkpoint_after_ms, 2_000);
        let negative = WireSettings {
            max_retry_count: -1,
            ..wire
        };
        assert!(negative.apply(&GroupSettings::default()).is_err());
        let negative = WireSettings {
            max_subscriber_count: -1,
            ..wire
        };
        assert!(negative.apply(&GroupSettings::default()).is_err());
        assert!(strategy_named("PinnedByCorrelation").is_err());
        assert_eq!(strategy_named("Pinned").unwrap(), Strategy::PinnedByStream);
        assert_eq!(ticks_to_ms(30_000 * 10_000), 30_000);
    }

    #[test]
    fn filters_take_the_default_exclusion_and_refuse_look_around() {
        use pb::create_req::all_options::FilterOptions;
        use pb::create_req::all_options::filter_options::{Expression, Filter};
        let options = |regex: &str| FilterOptions {
            filter: Some(Filter::EventType(Expression {
                regex: regex.to_owned(),
                prefix: Vec::new(),
            })),
            window: None,
            checkpoint_interval_multiplier: 1,
        };
        let spec = filter_spec(Some(&options(PYTHON_DEFAULT_EXCLUSION))).unwrap();
        assert_eq!(spec.type_regex, SYSTEM_EVENTS_EXCLUDED);
        assert!(spec.compile().is_ok());
        let spec = filter_spec(Some(&options("^Order"))).unwrap();
        assert_eq!(spec.type_regex, "^Order");
        let status = filter_spec(Some(&options("^(?!Internal)"))).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
