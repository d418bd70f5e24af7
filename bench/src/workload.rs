//! The benchmark event of `shared/WORKLOAD.md`: type `BenchEvent`, a
//! deterministic UUID, and exactly 256 bytes of compact JSON data
//! `{"id":…,"stream":…,"seq":…,"t":<ns>,"pad":"xxx…"}`, where `t` is
//! `CLOCK_MONOTONIC` in nanoseconds when the event was built (see
//! [`crate::clock`]), so a subscriber in another process can time delivery.

use std::fmt::Write as _;

use cairn_storage::EventData;
use uuid::{Builder, Uuid};

use crate::clock;

/// The event type of every benchmark event.
pub(crate) const EVENT_TYPE: &str = "BenchEvent";

/// Exact size of every event's data, in bytes.
pub(crate) const DATA_BYTES: usize = 256;

/// Stream `k` of writer `writer`. Every writer owns its streams, so its expected
/// revisions are always right.
pub(crate) fn stream_name(writer: usize, k: usize) -> String {
    format!("w-{writer}-{k:04}")
}

/// The stream `<prefix>-<i:04>` of WORKLOAD.md (e.g. `w1-0042`).
pub(crate) fn workload_stream(prefix: &str, i: u64) -> String {
    format!("{prefix}-{i:04}")
}

/// A deterministic, well-formed (version 4 layout) id: case, writer and the
/// writer's event sequence number, so ids never repeat within a run.
pub(crate) fn event_id(case: u32, writer: usize, seq: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&case.to_be_bytes());
    // Bytes 6 and 8 carry the version and variant bits; the fields avoid them.
    bytes[4..6].copy_from_slice(&u16::try_from(writer).unwrap_or(u16::MAX).to_be_bytes());
    bytes[9..16].copy_from_slice(&seq.to_be_bytes()[1..8]);
    Builder::from_random_bytes(bytes).into_uuid()
}

/// The JSON data of one event, padded to exactly [`DATA_BYTES`], with `t` =
/// the monotonic clock now.
pub(crate) fn payload(id: &Uuid, stream: &str, seq: u64) -> String {
    payload_at(id, stream, seq, clock::monotonic_ns())
}

/// The JSON data of one event with a given `t`, padded to exactly
/// [`DATA_BYTES`].
pub(crate) fn payload_at(id: &Uuid, stream: &str, seq: u64, t: u64) -> String {
    let mut data = String::with_capacity(DATA_BYTES);
    // Writing to a String cannot fail.
    let _ = write!(
        data,
        r#"{{"id":"{id}","stream":"{stream}","seq":{seq},"t":{t},"pad":""#
    );
    let closing = "\"}";
    let pad = DATA_BYTES
        .checked_sub(data.len() + closing.len())
        .unwrap_or_else(|| {
            panic!("benchmark stream name '{stream}' is too long for a {DATA_BYTES}-byte event")
        });
    data.extend(std::iter::repeat_n('x', pad));
    data.push_str(closing);
    data
}

/// The `t` field of an event's data (the monotonic clock when it was built), if
/// the data is a benchmark event. Scans for the field instead of parsing the
/// whole document: subscribers call this on the delivery path.
pub(crate) fn event_time(data: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"\"t\":";
    let start = data.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let digits = data[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    std::str::from_utf8(&data[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// One benchmark event for `stream`, built now.
pub(crate) fn event(case: u32, writer: usize, seq: u64, stream: &str) -> EventData {
    let id = event_id(case, writer, seq);
    let data = payload(&id, stream, seq);
    EventData::json(EVENT_TYPE, data).with_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_256_bytes_of_json() {
        let id = event_id(3, 63, 1_234_567);
        let data = payload(&id, &stream_name(63, 999), 1_234_567);
        assert_eq!(data.len(), DATA_BYTES);
        let value: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
        assert_eq!(value["id"], id.to_string());
        assert_eq!(value["stream"], "w-63-0999");
        assert_eq!(value["seq"], 1_234_567);
        assert!(value["t"].as_u64().is_some_and(|t| t > 0));
        assert!(
            value["pad"]
                .as_str()
                .is_some_and(|pad| pad.bytes().all(|b| b == b'x'))
        );
    }

    #[test]
    fn time_is_found_again() {
        let id = event_id(6, 0, 5);
        let data = payload_at(&id, &workload_stream("w6", 0), 5, 123_456_789_012);
        assert_eq!(data.len(), DATA_BYTES);
        assert_eq!(event_time(data.as_bytes()), Some(123_456_789_012));
        assert_eq!(event_time(b"{\"x\":1}"), None);
        let now = payload(&id, "w6-0000", 5);
        assert!(event_time(now.as_bytes()).is_some_and(|t| t > 0));
    }

    #[test]
    fn workload_streams() {
        assert_eq!(workload_stream("w1", 42), "w1-0042");
        assert_eq!(workload_stream("w3", 0), "w3-0000");
    }

    #[test]
    fn ids_are_deterministic_distinct_and_v4() {
        let a = event_id(1, 2, 3);
        assert_eq!(a, event_id(1, 2, 3));
        assert_ne!(a, event_id(1, 2, 4));
        assert_ne!(a, event_id(1, 3, 3));
        assert_ne!(a, event_id(2, 2, 3));
        assert_eq!(a.get_version_num(), 4);
        assert!(!a.is_nil());
    }

    #[test]
    fn event_has_type_and_id() {
        let event = event(1, 0, 7, "w-0-0001");
        assert_eq!(event.event_type, EVENT_TYPE);
        assert_eq!(event.id, event_id(1, 0, 7));
        assert_eq!(event.data.len(), DATA_BYTES);
    }
}
