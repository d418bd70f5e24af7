//! A group's definition and settings, and the records that store them.
//!
//! Everything a group needs after a restart lives in system streams:
//! - `$sys-ps-groups`: `GroupCreated` (a whole [`GroupDefinition`]),
//!   `GroupUpdated` (new [`GroupSettings`]) and `GroupDeleted`, folded in order at
//!   startup;
//! - `$sys-ps-<group>-checkpoint`: `$checkpoint` records ([`Checkpoint`]), of which
//!   only the newest matters (the stream keeps one, `max_count` 1);
//! - `$sys-ps-<group>-parked`: `$parked` records ([`ParkedRecord`]); events up to
//!   its `truncate_before` were replayed.
//!
//! This module owns the JSON shape of those records; changing a field name is a
//! format change.

use cairn_storage::{ReadFilter, ReadSource};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The prefix of every stream of consumer-group state.
const GROUP_STATE_PREFIX: &str = "$sys-ps-";
/// The stream of group definitions.
pub const GROUPS_STREAM: &str = "$sys-ps-groups";
/// Event type of a checkpoint record.
pub const CHECKPOINT_TYPE: &str = "$checkpoint";
/// Event type of a parked-event record.
pub const PARKED_TYPE: &str = "$parked";
/// The longest group name.
const MAX_GROUP_NAME: usize = 200;
/// The largest per-consumer in-flight limit.
pub const MAX_IN_FLIGHT_LIMIT: u32 = 10_000;

/// The stream holding a group's checkpoint.
pub fn checkpoint_stream(group: &str) -> String {
    format!("$sys-ps-{group}-checkpoint")
}

/// The stream holding a group's parked events.
pub fn parked_stream(group: &str) -> String {
    format!("$sys-ps-{group}-parked")
}

/// Checks a group name: 1..=200 characters of `[A-Za-z0-9_.-]`, so it is safe
/// inside system stream names.
pub fn validate_group_name(group: &str) -> Result<(), Error> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if group.is_empty() || group.len() > MAX_GROUP_NAME || !group.chars().all(valid_char) {
        return Err(Error::InvalidArgument(format!(
            "group name '{group}' is invalid: use 1 to {MAX_GROUP_NAME} characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )));
    }
    Ok(())
}

/// How a group shares events among its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Strategy {
    /// The next consumer with room.
    #[default]
    RoundRobin,
    /// The longest-connected consumer; the others stand by.
    DispatchToSingle,
    /// One consumer per stream, one event of a stream at a time.
    PinnedByStream,
}

/// A group's tunables; see `GroupSettings` in `persistent.proto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// How events are shared among consumers.
    pub strategy: Strategy,
    /// Deliveries after the first before an event is parked.
    pub max_retries: u32,
    /// How long a delivered event may stay unacked before it is retried.
    pub message_timeout_ms: u32,
    /// The most events one consumer holds unacked (a consumer may ask for less).
    pub max_in_flight_per_consumer: u32,
    /// Write the checkpoint after it moved over this many events...
    pub checkpoint_after_events: u32,
    /// ...or this long after the last write, whichever comes first.
    pub checkpoint_after_ms: u32,
    /// Most consumers connected at once; 0: no limit of the group's own (the
    /// server's `max_consumers_per_group` applies either way). Checked when a
    /// consumer joins: lowering it leaves the consumers already connected.
    /// Records written before this setting existed read as 0.
    #[serde(default)]
    pub max_consumers: u32,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            max_retries: 10,
            message_timeout_ms: 30_000,
            max_in_flight_per_consumer: 64,
            checkpoint_after_events: 100,
            checkpoint_after_ms: 1_000,
            max_consumers: 0,
        }
    }
}

impl GroupSettings {
    /// Refuses settings the group cannot run with.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: String| Err(Error::InvalidArgument(message));
        if self.message_timeout_ms < 10 {
            return fail(format!(
                "message_timeout_ms is {}, the minimum is 10",
                self.message_timeout_ms
            ));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&self.max_in_flight_per_consumer) {
            return fail(format!(
                "max_in_flight_per_consumer is {}, it must be 1 to {MAX_IN_FLIGHT_LIMIT}",
                self.max_in_flight_per_consumer
            ));
        }
        if self.checkpoint_after_events == 0 || self.checkpoint_after_ms == 0 {
            return fail(
                "checkpoint_after_events and checkpoint_after_ms must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// The `$all` filter of a group, as stored (regexes as their source text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// Stream-name prefixes that pass (any of them; empty: all).
    pub stream_prefixes: Vec<String>,
    /// Stream-name regex that must match (empty: none).
    pub stream_regex: String,
    /// Event-type prefixes that pass (any of them; empty: all).
    pub type_prefixes: Vec<String>,
    /// Event-type regex that must match (empty: none).
    pub type_regex: String,
}

impl FilterSpec {
    /// True when the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.stream_prefixes.is_empty()
            && self.stream_regex.is_empty()
            && self.type_prefixes.is_empty()
            && self.type_regex.is_empty()
    }

    /// The compiled filter.
    pub fn compile(&self) -> Result<ReadFilter, Error> {
        let regex = |pattern: &str| -> Result<Option<regex::Regex>, Error> {
            if pattern.is_empty() {
                return Ok(None);
            }
            ReadFilter::regex(pattern)
                .map(Some)
                .map_err(|error| Error::InvalidArgument(error.to_string()))
        };
        Ok(ReadFilter {
            stream_prefixes: self.stream_prefixes.clone(),
            stream_regex: regex(&self.stream_regex)?,
            type_prefixes: self.type_prefixes.clone(),
            type_regex: regex(&self.type_regex)?,
        })
    }
}

/// Everything that defines a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDefinition {
    /// The group's name.
    pub group: String,
    /// What it follows, as a client names it (`orders-1`, `$ce-orders`, `$all`).
    pub stream: String,
    /// `$all` only.
    pub filter: FilterSpec,
    /// The first revision (stream groups) or position (others) to deliver when
    /// the group has no checkpoint yet. "From the end" is resolved to a number
    /// at creation, so a restart before the first checkpoint skips nothing.
    pub start_cursor: u64,
    /// Its tunables.
    pub settings: GroupSettings,
}

impl GroupDefinition {
    /// The parsed source.
    pub fn source(&self) -> Result<ReadSource, Error> {
        ReadSource::parse(&self.stream).map_err(|error| Error::InvalidArgument(error.to_string()))
    }

    /// Checks the whole definition.
    pub fn validate(&self) -> Result<(), Error> {
        validate_group_name(&self.group)?;
        let source = self.source()?;
        if !self.filter.is_empty() && source != ReadSource::All {
            return Err(Error::InvalidArgument(
                "a filter applies only to groups on $all".into(),
            ));
        }
        validate_group_source(&source)?;
        self.filter.compile()?;
        self.settings.validate()
    }
}

/// Refuses sources made of the server's own consumer-group state: a group on
/// `$et-$parked` (or a group's parked stream, `$ce-$sys`, ...) would receive
/// the parks of every group, its own included, and with a short timeout and
/// no retries feed on itself forever. System event types and categories
/// (`$...`) and the `$sys-ps-` streams are never group sources; `$all` groups
/// skip system streams already.
pub fn validate_group_source(source: &ReadSource) -> Result<(), Error> {
    let refused = match source {
        ReadSource::All => None,
        ReadSource::Stream(stream) => stream
            .starts_with(GROUP_STATE_PREFIX)
            .then_some("a stream of consumer-group state"),
        ReadSource::Category(category) => category.starts_with('$').then_some("a system category"),
        ReadSource::EventType(event_type) => {
            event_type.starts_with('$').then_some("a system event type")
        }
        ReadSource::Query(_) => Some("a DCB query (groups follow streams and indexes)"),
    };
    match refused {
        Some(what) => Err(Error::InvalidArgument(format!(
            "a consumer group cannot follow {what}: its own parked events and checkpoints would feed it"
        ))),
        None => Ok(()),
    }
}

/// A record of `$sys-ps-groups`. The variant names are the stored event types
/// and JSON tags, so they keep their `Group` prefix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// A new group.
    GroupCreated(GroupDefinition),
    /// New settings for a group.
    GroupUpdated {
        group: String,
        settings: GroupSettings,
    },
    /// A group was deleted.
    GroupDeleted { group: String },
}

impl GroupRecord {
    /// The event type the record is stored under.
    pub fn event_type(&self) -> &'static str {
        match self {
            GroupRecord::GroupCreated(_) => "GroupCreated",
            GroupRecord::GroupUpdated { .. } => "GroupUpdated",
            GroupRecord::GroupDeleted { .. } => "GroupDeleted",
        }
    }
}

/// Where a group stands: the last source event such that it and every event
/// before it were acked, skipped or parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its position (position groups: possibly a filtered-out position).
    pub position: u64,
    /// Stream groups: its revision.
    pub revision: Option<u64>,
}

impl Checkpoint {
    /// The cursor to resume from: the next revision (stream groups) or position.
    pub fn resume_cursor(&self, is_stream: bool) -> u64 {
        match (is_stream, self.revision) {
            (true, Some(revision)) => revision + 1,
            _ => self.position + 1,
        }
    }
}

/// A record of a group's parked stream: which event was parked and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedRecord {
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub retry_count: u32,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_checked() {
        assert!(validate_group_name("orders-handler.v2_a").is_ok());
        for bad in ["", "a b", "x/y", "$x", &"n".repeat(201)] {
            assert!(validate_group_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(GroupSettings::default().validate().is_ok());
        let zero_in_flight = GroupSettings {
            max_in_flight_per_consumer: 0,
            ..GroupSettings::default()
        };
        assert!(zero_in_flight.validate().is_err());
        let tiny_timeout = GroupSettings {
            message_timeout_ms: 1,
            ..GroupSettings::default()
        };
        assert!(tiny_timeout.validate().is_err());
    }

    #[test]
    fn groups_cannot_follow_group_state() {
        for refused in [
            "$et-$parked",
            "$et-$checkpoint",
            "$ce-$sys",
            "$sys-ps-billing-parked",
            "$sys-ps-groups",
        ] {
            let source = ReadSource::parse(refused).unwrap();
            assert!(validate_group_source(&source).is_err(), "{refused}");
        }
        for allowed in ["$all", "$ce-order", "$et-OrderPlaced", "order-1"] {
            let source = ReadSource::parse(allowed).unwrap();
            assert!(validate_group_source(&source).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn filters_only_on_all() {
        let definition = GroupDefinition {
            group: "g".into(),
            stream: "orders-1".into(),
            filter: FilterSpec {
                stream_prefixes: vec!["a".into()],
                ..FilterSpec::default()
            },
            start_cursor: 0,
            settings: GroupSettings::default(),
        };
        assert!(definition.validate().is_err());
        let on_all = GroupDefinition {
            stream: "$all".into(),
            ..definition
        };
        assert!(on_all.validate().is_ok());
    }

    #[test]
    fn records_round_trip_as_json() {
        let record = GroupRecord::GroupUpdated {
            group: "g".into(),
            settings: GroupSettings::default(),
        };
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(
            serde_json::from_slice::<GroupRecord>(&json).unwrap(),
            record
        );
    }

    #[test]
    fn settings_stored_before_max_consumers_read_as_unlimited() {
        let stored = br#"{"strategy":"RoundRobin","max_retries":10,"message_timeout_ms":30000,"max_in_flight_per_consumer":64,"checkpoint_after_events":100,"checkpoint_after_ms":1000}"#;
        let settings: GroupSettings = serde_json::from_slice(stored).unwrap();
        assert_eq!(settings, GroupSettings::default());
        assert_eq!(settings.max_consumers, 0);
    }

    #[test]
    fn resume_cursor_follows_the_group_kind() {
        let checkpoint = Checkpoint {
            position: 40,
            revision: Some(3),
        };
        assert_eq!(checkpoint.resume_cursor(true), 4);
        assert_eq!(checkpoint.resume_cursor(false), 41);
    }
}
