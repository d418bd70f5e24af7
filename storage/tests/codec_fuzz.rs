//! Fuzzing the decoders of stored records with damaged and random bytes (a
//! bounded proptest, run by `cargo test`): `log` records, `streams` records,
//! `event_ids` entries (with their idempotency stamps), `segments` counters
//! and `meta` integers.
//!
//! Every decoder must, for any input, return the record or
//! `Error::Corrupt` naming its column family and key (the position, for
//! `log`), and never panic. Valid records round-trip. Records with a crc32
//! (`log`, `streams`) detect every single changed byte, a record moved to
//! another key, and any truncation; damage behind a recomputed crc (what a
//! bug rather than the disk would write) still decodes to `Corrupt` or a
//! well-formed record, never a panic. The fixed-size values without a crc
//! (`event_ids`, `segments`, `meta`) are checked by length only: any other
//! length is `Corrupt`, and every value of the right length decodes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cairn_storage::codec_seam::{
    AppendStamp, EventIdEntry, StreamRecord, decode_counts, decode_header, decode_u64,
    encode_counts, encode_record,
};
use cairn_storage::{Error, EventData, StreamMetadata};
use proptest::prelude::*;
use uuid::Uuid;

/// Cases per property: the whole file runs in a few seconds in debug.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        // Failures are reported with their inputs; no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `Corrupt` in `column_family` at `key`, or a description of what it was.
fn is_corrupt_at<T: std::fmt::Debug>(
    result: &Result<T, Error>,
    column_family: &str,
    key: &str,
) -> Result<(), String> {
    match result {
        Err(Error::Corrupt {
            column_family: found,
            key: at,
            ..
        }) if *found == column_family && at == key => Ok(()),
        other => Err(format!(
            "expected Corrupt in {column_family} at {key}, got {other:?}"
        )),
    }
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// One `log` record's inputs.
#[derive(Debug, Clone)]
struct LogRecord {
    position: u64,
    stream: String,
    revision: u64,
    created: SystemTime,
    event: EventData,
}

impl LogRecord {
    fn encode(&self) -> Vec<u8> {
        encode_record(
            self.position,
            &self.stream,
            self.revision,
            self.created,
            &self.event,
        )
    }
}

fn log_record() -> impl Strategy<Value = LogRecord> {
    (
        any::<u64>(),
        text(24),
        any::<u64>(),
        // Before and after the epoch, to the nanosecond.
        -(1i64 << 62)..(1i64 << 62),
        any::<u128>().prop_filter("event ids are never nil", |id| *id != 0),
        text(24),
        text(24),
        bytes(64),
        bytes(256),
        // Untagged records keep record version 1; tagged ones are version 2.
        proptest::collection::vec(text(8), 0..3),
    )
        .prop_map(
            |(
                position,
                stream,
                revision,
                nanos,
                id,
                event_type,
                content_type,
                metadata,
                data,
                tags,
            )| {
                let created = if nanos >= 0 {
                    UNIX_EPOCH + Duration::from_nanos(nanos as u64)
                } else {
                    UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
                };
                LogRecord {
                    position,
                    stream,
                    revision,
                    created,
                    event: EventData {
                        id: Uuid::from_u128(id),
                        event_type,
                        content_type,
                        metadata,
                        data,
                        tags,
                    },
                }
            },
        )
}

fn stream_record() -> impl Strategy<Value = StreamRecord> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(0..u64::MAX),
        proptest::option::of(any::<u64>()),
        // Stored in whole milliseconds.
        proptest::option::of(any::<u64>().prop_map(Duration::from_millis)),
        proptest::option::of(any::<u64>()),
        proptest::option::of(text(48)),
    )
        .prop_map(
            |(
                id,
                next_revision,
                deleted_before,
                tombstoned,
                metadata_revision,
                max_count,
                max_age,
                truncate_before,
                custom,
            )| StreamRecord {
                id,
                next_revision,
                deleted_before,
                tombstoned,
                metadata_revision,
                metadata: StreamMetadata {
                    max_count,
                    max_age,
                    truncate_before,
                    custom,
                },
            },
        )
}

/// A change to a record's bytes: overwrite, insert, remove or cut.
#[derive(Debug, Clone)]
enum Damage {
    Overwrite { at: prop::sample::Index, byte: u8 },
    Insert { at: prop::sample::Index, byte: u8 },
    Remove { at: prop::sample::Index },
    Cut { at: prop::sample::Index },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Damage::Overwrite { at, byte }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Damage::Insert { at, byte }),
        any::<prop::sample::Index>().prop_map(|at| Damage::Remove { at }),
        any::<prop::sample::Index>().prop_map(|at| Damage::Cut { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &[Damage]) {
    for change in damage {
        if bytes.is_empty() {
            bytes.push(0);
        }
        match change {
            Damage::Overwrite { at, byte } => {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            Damage::Insert { at, byte } => {
                let at = at.index(bytes.len() + 1);
                bytes.insert(at, *byte);
            }
            Damage::Remove { at } => {
                let at = at.index(bytes.len());
                bytes.remove(at);
            }
            Damage::Cut { at } => {
                let at = at.index(bytes.len());
                bytes.truncate(at);
            }
        }
    }
}

/// The crc32 the codec puts after a record's body: over `prefix ++ body`.
fn sealed(prefix: &[u8], mut body: Vec<u8>) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(&body);
    body.extend_from_slice(&hasher.finalize().to_be_bytes());
    body
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn log_records_round_trip(record in log_record()) {
        let encoded = record.encode();
        let header = decode_header(record.position, &encoded).expect("a valid record decodes");
        let event = header.to_event(record.position, &encoded);
        prop_assert_eq!(event.position, record.position);
        prop_assert_eq!(&event.stream, &record.stream);
        prop_assert_eq!(event.revision, record.revision);
        prop_assert_eq!(event.created, record.created);
        prop_assert_eq!(event.id, record.event.id);
        prop_assert_eq!(&event.event_type, &record.event.event_type);
        prop_assert_eq!(&event.content_type, &record.event.content_type);
        prop_assert_eq!(&event.metadata, &record.event.metadata);
        prop_assert_eq!(&event.data, &record.event.data);
        prop_assert_eq!(&event.tags, &record.event.tags);
    }

    #[test]
    fn every_changed_byte_of_a_log_record_is_detected(
        record in log_record(),
        mask in 1u8..=255,
        other in any::<u64>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = record.encode();
        let key = record.position.to_string();
        for at in 0..encoded.len() {
            let mut flipped = encoded.clone();
            flipped[at] ^= mask;
            is_corrupt_at(&decode_header(record.position, &flipped), "log", &key)
                .map_err(|error| TestCaseError::fail(format!("byte {at} ^ {mask:#04x}: {error}")))?;
        }
        // Under another key (the crc covers the position).
        if other != record.position {
            is_corrupt_at(&decode_header(other, &encoded), "log", &other.to_string())
                .map_err(TestCaseError::fail)?;
        }
        // Torn: any proper prefix.
        let torn = &encoded[..cut.index(encoded.len())];
        is_corrupt_at(&decode_header(record.position, torn), "log", &key)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn random_bytes_are_never_a_log_record(
        position in any::<u64>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        is_corrupt_at(&decode_header(position, &garbage), "log", &position.to_string())
            .map_err(TestCaseError::fail)?;
    }

    /// Damage behind a valid crc reaches the parser itself: every length,
    /// count and string in the layout is checked.
    #[test]
    fn damage_behind_a_valid_crc_never_panics(
        record in log_record(),
        changes in proptest::collection::vec(damage(), 1..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let position = record.position;
        let mut body = record.encode();
        body.truncate(body.len() - 4);
        apply(&mut body, &changes);
        for candidate in [
            sealed(&position.to_be_bytes(), body),
            sealed(&position.to_be_bytes(), garbage),
        ] {
            match decode_header(position, &candidate) {
                Ok(header) => {
                    // Well-formed after all: it decodes whole.
                    let event = header.to_event(position, &candidate);
                    prop_assert_eq!(event.position, position);
                }
                result => is_corrupt_at(&result, "log", &position.to_string())
                    .map_err(TestCaseError::fail)?,
            }
        }
    }

    #[test]
    fn stream_records_round_trip_and_detect_every_changed_byte(
        record in stream_record(),
        name in text(24),
        mask in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let encoded = record.encode(&name);
        prop_assert_eq!(StreamRecord::decode(&name, &encoded).expect("valid"), record);
        for at in 0..encoded.len() {
            let mut flipped = encoded.clone();
            flipped[at] ^= mask;
            is_corrupt_at(&StreamRecord::decode(&name, &flipped), "streams", &name)
                .map_err(|error| TestCaseError::fail(format!("byte {at} ^ {mask:#04x}: {error}")))?;
        }
        // The crc covers the name: the value of one stream is not another's.
        let renamed = format!("{name}x");
        is_corrupt_at(&StreamRecord::decode(&renamed, &encoded), "streams", &renamed)
            .map_err(TestCaseError::fail)?;
        let torn = &encoded[..cut.index(encoded.len())];
        is_corrupt_at(&StreamRecord::decode(&name, torn), "streams", &name)
            .map_err(TestCaseError::fail)?;
    }

    #[test]
    fn damaged_and_random_stream_records_never_panic(
        record in stream_record(),
        name in text(24),
        changes in proptest::collection::vec(damage(), 1..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        is_corrupt_at(&StreamRecord::decode(&name, &garbage), "streams", &name)
            .map_err(TestCaseError::fail)?;
        let mut body = record.encode(&name);
        body.truncate(body.len() - 4);
        apply(&mut body, &changes);
        for candidate in [sealed(name.as_bytes(), body), sealed(name.as_bytes(), garbage)] {
            match StreamRecord::decode(&name, &candidate) {
                // Well-formed after all: it is canonical, so it encodes back
                // to the same bytes.
                Ok(decoded) => prop_assert_eq!(decoded.encode(&name), candidate),
                result => is_corrupt_at(&result, "streams", &name).map_err(TestCaseError::fail)?,
            }
        }
    }

    /// `event_ids` values carry no crc of their own (RocksDB's block
    /// checksums cover them): any length but 24 (format 1) and 36 (with the
    /// idempotency stamp) is `Corrupt`, and any value of those lengths is an
    /// entry that encodes back to the same bytes.
    #[test]
    fn event_id_entries_round_trip_and_refuse_other_lengths(
        stream_id in any::<u64>(),
        revision in any::<u64>(),
        position in any::<u64>(),
        stamp in proptest::option::of((any::<u32>(), any::<u32>(), any::<u32>())),
        id in any::<u128>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let id = Uuid::from_u128(id);
        let entry = EventIdEntry {
            stream_id,
            revision,
            position,
            stamp: stamp.map(|(index, count, hash)| AppendStamp { index, count, hash }),
        };
        let encoded = entry.encode();
        prop_assert_eq!(encoded.len(), if entry.stamp.is_some() { 36 } else { 24 });
        prop_assert_eq!(EventIdEntry::decode(&id, &encoded).expect("valid"), entry);
        match EventIdEntry::decode(&id, &garbage) {
            Ok(decoded) => {
                prop_assert!(garbage.len() == 24 || garbage.len() == 36);
                prop_assert_eq!(decoded.encode(), garbage);
            }
            result => {
                prop_assert!(garbage.len() != 24 && garbage.len() != 36);
                is_corrupt_at(&result, "event_ids", &id.to_string()).map_err(TestCaseError::fail)?;
            }
        }
    }

    #[test]
    fn counters_and_integers_refuse_other_lengths(
        events in any::<u64>(),
        written in any::<u64>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        prop_assert_eq!(decode_counts(&encode_counts(events, written)).expect("valid"), (events, written));
        match decode_counts(&garbage) {
            Ok((events, written)) => prop_assert_eq!(&encode_counts(events, written)[..], &garbage[..]),
            result => {
                prop_assert!(garbage.len() != 16);
                is_corrupt_at(&result, "segments", "segment counters").map_err(TestCaseError::fail)?;
            }
        }
        prop_assert_eq!(decode_u64("default", "head", &events.to_be_bytes()).expect("valid"), events);
        match decode_u64("default", "head", &garbage) {
            Ok(value) => prop_assert_eq!(&value.to_be_bytes()[..], &garbage[..]),
            result => {
                prop_assert!(garbage.len() != 8);
                is_corrupt_at(&result, "default", "head").map_err(TestCaseError::fail)?;
            }
        }
    }
}
