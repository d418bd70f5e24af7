//! Stream metadata through KurrentDB's `$$<stream>` metadata streams,
//! mapped onto Cairn's [`StreamMetadata`]: `$maxCount` ↔ `max_count`,
//! `$maxAge` (seconds) ↔ `max_age`, `$tb` ↔ `truncate_before`, and every
//! other property (`$acl`, `$cacheControl`, the application's own) kept in
//! `custom` as one JSON object, where Cairn's ACL check reads `$acl`.
//!
//! Reading `$$x` gives one event (type `$metadata`) at revision = Cairn's
//! metadata revision; appending to `$$x` sets Cairn's metadata (the last
//! event's data wins) with the expectation checked against that revision.
//! Metadata events are not in `$all` in Cairn, so they carry position 0.

use std::time::Duration;

use cairn_storage::StreamMetadata;
use serde_json::{Map, Value};
use tonic::Status;

use super::error;

/// Prefix of a metadata stream.
pub(super) const METADATA_PREFIX: &str = "$$";
/// The event type of a metadata event.
pub(super) const METADATA_EVENT_TYPE: &str = "$metadata";

const MAX_COUNT: &str = "$maxCount";
const MAX_AGE: &str = "$maxAge";
const TRUNCATE_BEFORE: &str = "$tb";

/// The stream whose metadata `name` is, when `name` is a metadata stream.
pub(super) fn metadata_stream_of(name: &str) -> Option<&str> {
    name.strip_prefix(METADATA_PREFIX)
}

/// Cairn's metadata as KurrentDB JSON.
pub(super) fn to_json(metadata: &StreamMetadata) -> Vec<u8> {
    let mut object = metadata
        .custom
        .as_deref()
        .and_then(|custom| serde_json::from_str::<Value>(custom).ok())
        .and_then(|value| match value {
            Value::Object(object) => Some(object),
            _ => None,
        })
        .unwrap_or_default();
    if let Some(max_count) = metadata.max_count {
        object.insert(MAX_COUNT.to_owned(), Value::from(max_count));
    }
    if let Some(max_age) = metadata.max_age {
        object.insert(MAX_AGE.to_owned(), Value::from(max_age.as_secs()));
    }
    if let Some(truncate_before) = metadata.truncate_before {
        object.insert(TRUNCATE_BEFORE.to_owned(), Value::from(truncate_before));
    }
    Value::Object(object).to_string().into_bytes()
}

/// A non-negative integer property, or `None` when absent or null.
fn count(object: &mut Map<String, Value>, key: &str) -> Result<Option<u64>, Status> {
    match object.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            error::invalid(format!(
                "stream metadata property {key} must be a non-negative integer"
            ))
        }),
    }
}

/// KurrentDB metadata JSON (a metadata event's data) as Cairn's metadata.
pub(super) fn from_json(data: &[u8]) -> Result<StreamMetadata, Status> {
    let value: Value = serde_json::from_slice(data)
        .map_err(|error| error::invalid(format!("stream metadata is not JSON: {error}")))?;
    let Value::Object(mut object) = value else {
        return Err(error::invalid("stream metadata must be a JSON object"));
    };
    let max_count = count(&mut object, MAX_COUNT)?;
    let max_age = count(&mut object, MAX_AGE)?.map(Duration::from_secs);
    let truncate_before = count(&mut object, TRUNCATE_BEFORE)?;
    let custom = (!object.is_empty()).then(|| Value::Object(object).to_string());
    Ok(StreamMetadata {
        max_count,
        max_age,
        truncate_before,
        custom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kurrent_metadata_round_trips_through_cairn_metadata() {
        let json =
            br#"{"$maxCount":10,"$maxAge":3600,"$tb":2,"$acl":{"$r":"alice"},"owner":"team-a"}"#;
        let metadata = from_json(json).unwrap();
        assert_eq!(metadata.max_count, Some(10));
        assert_eq!(metadata.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(metadata.truncate_before, Some(2));
        let custom: Value = serde_json::from_str(metadata.custom.as_deref().unwrap()).unwrap();
        assert_eq!(custom["$acl"]["$r"], "alice");
        assert_eq!(custom["owner"], "team-a");
        let back: Value = serde_json::from_slice(&to_json(&metadata)).unwrap();
        let original: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn bad_metadata_is_refused() {
        assert!(from_json(b"[1]").is_err());
        assert!(from_json(b"not json").is_err());
        assert!(from_json(br#"{"$maxCount":-1}"#).is_err());
        assert_eq!(from_json(b"{}").unwrap(), StreamMetadata::default());
    }
}
