//! The crash test's checker: given every acknowledged event (from the record
//! file) and what the restarted store returns, find the first broken promise.
//!
//! Promises checked, in order:
//! 1. `$all` positions are 0, 1, 2, ... with no gap and no repeat;
//! 2. every event id appears once in `$all`;
//! 3. every stream read returns revisions 0, 1, 2, ... and exactly the events
//!    `$all` has for that stream, identical (id, position, data);
//! 4. every event's data is an intact benchmark event (its JSON names its own
//!    id and stream);
//! 5. every acknowledged event is there, at the acknowledged stream, revision
//!    and position, with the acknowledged id and data checksum.
//!
//! Events that are present but were never acknowledged are allowed: the server
//! may commit an append and die before the acknowledgement leaves.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::target::StoredEvent;

/// One acknowledged event, as recorded by the crash test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    /// Its stream.
    pub(crate) stream: String,
    /// The revision the acknowledgement implies.
    pub(crate) revision: u64,
    /// Its id.
    pub(crate) id: Uuid,
    /// The `$all` position the acknowledgement reported.
    pub(crate) position: u64,
    /// crc32 of the data sent.
    pub(crate) crc: u32,
}

impl Ack {
    /// The record line: `stream revision id position crc`, space-separated
    /// (stream names of the crash test contain no spaces), newline-terminated.
    pub(crate) fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {:08x}\n",
            self.stream, self.revision, self.id, self.position, self.crc
        )
    }

    /// Parses a record line.
    pub(crate) fn parse(line: &str) -> Result<Self, String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("bad record line {line:?}");
        let [stream, revision, id, position, crc] = fields[..] else {
            return Err(bad());
        };
        Ok(Self {
            stream: stream.to_owned(),
            revision: revision.parse().map_err(|_| bad())?,
            id: Uuid::try_parse(id).map_err(|_| bad())?,
            position: position.parse().map_err(|_| bad())?,
            crc: u32::from_str_radix(crc, 16).map_err(|_| bad())?,
        })
    }
}

/// What a successful check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Events in `$all`.
    pub(crate) events: u64,
    /// Streams.
    pub(crate) streams: usize,
    /// Acknowledged events checked.
    pub(crate) acknowledged: u64,
    /// Events present without an acknowledgement (committed, then the server
    /// died before answering).
    pub(crate) unacknowledged: u64,
}

/// Checks the store's `$all` (`all`) and its streams (`streams`, each read
/// from revision 0) against the acknowledgements. Returns the first problem.
pub(crate) fn verify(
    acks: &[Ack],
    all: &[StoredEvent],
    streams: &HashMap<String, Vec<StoredEvent>>,
) -> Result<Summary, String> {
    // 1. Positions.
    for (expected, event) in all.iter().enumerate() {
        if event.position != expected as u64 {
            return Err(format!(
                "$all has a gap or repeat: position {} where {expected} was due (event {})",
                event.position, event.id
            ));
        }
    }
    // 2. Ids.
    let mut seen = HashSet::with_capacity(all.len());
    for event in all {
        if !seen.insert(event.id) {
            return Err(format!(
                "event {} appears more than once in $all (again at position {})",
                event.id, event.position
            ));
        }
    }
    // 3. Streams against $all.
    let mut by_stream: HashMap<&str, Vec<&StoredEvent>> = HashMap::new();
    for event in all {
        by_stream.entry(&event.stream).or_default().push(event);
    }
    for (name, in_all) in &by_stream {
        let read = streams
            .get(*name)
            .ok_or_else(|| format!("stream {name} is in $all but was not read back"))?;
        if read.len() != in_all.len() {
            return Err(format!(
                "stream {name} returns {} events but $all has {}",
                read.len(),
                in_all.len()
            ));
        }
        for (revision, (event, from_all)) in read.iter().zip(in_all).enumerate() {
            if event.revision != revision as u64 {
                return Err(format!(
                    "stream {name} has a gap: revision {} where {revision} was due",
                    event.revision
                ));
            }
            if event != *from_all {
                return Err(format!(
                    "stream {name} revision {revision} differs from $all position {}",
                    from_all.position
                ));
            }
        }
    }
    if let Some((name, read)) = streams
        .iter()
        .find(|(name, read)| !read.is_empty() && !by_stream.contains_key(name.as_str()))
    {
        return Err(format!(
            "stream {name} returns {} events that $all does not have",
            read.len()
        ));
    }
    // 4. Data.
    for event in all {
        let intact = serde_json::from_slice::<serde_json::Value>(&event.data).is_ok_and(|json| {
            json["id"].as_str() == Some(&event.id.to_string())
                && json["stream"].as_str() == Some(&event.stream)
        });
        if !intact {
            return Err(format!(
                "event {} ({}@{}, position {}) has damaged data",
                event.id, event.stream, event.revision, event.position
            ));
        }
    }
    // 5. Acknowledgements.
    for ack in acks {
        let lost = |why: String| {
            format!(
                "LOST: acknowledged event {} ({}@{}, position {}): {why}",
                ack.id, ack.stream, ack.revision, ack.position
            )
        };
        let stored = usize::try_from(ack.position)
            .ok()
            .and_then(|position| all.get(position))
            .ok_or_else(|| lost(format!("$all ends at position {}", all.len())))?;
        if stored.id != ack.id {
            return Err(lost(format!(
                "position {} holds event {} instead",
                ack.position, stored.id
            )));
        }
        if stored.stream != ack.stream || stored.revision != ack.revision {
            return Err(lost(format!(
                "stored as {}@{}",
                stored.stream, stored.revision
            )));
        }
        if crc32fast::hash(&stored.data) != ack.crc {
            return Err(lost("its data changed".to_owned()));
        }
    }
    let acknowledged = acks.len() as u64;
    let acked_ids: HashSet<Uuid> = acks.iter().map(|ack| ack.id).collect();
    if acked_ids.len() != acks.len() {
        return Err("the record file lists an event id twice".to_owned());
    }
    Ok(Summary {
        events: all.len() as u64,
        streams: by_stream.len(),
        acknowledged,
        unacknowledged: all.len() as u64 - acknowledged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{event_id, payload};

    /// A store of `per_stream` events in each of `streams` streams,
    /// interleaved in `$all`, with the acknowledgements of all of them.
    fn store(streams: u64, per_stream: u64) -> (Vec<Ack>, Vec<StoredEvent>) {
        let mut all = Vec::new();
        let mut acks = Vec::new();
        for revision in 0..per_stream {
            for s in 0..streams {
                let stream = format!("crash-{s:02}");
                let id = event_id(1, usize::try_from(s).unwrap_or(0), revision);
                let data = payload(&id, &stream, revision);
                let event = StoredEvent {
                    id,
                    stream: stream.clone(),
                    revision,
                    position: all.len() as u64,
                    data: data.into(),
                };
                acks.push(Ack {
                    stream,
                    revision,
                    id,
                    position: event.position,
                    crc: crc32fast::hash(&event.data),
                });
                all.push(event);
            }
        }
        (acks, all)
    }

    fn split(all: &[StoredEvent]) -> HashMap<String, Vec<StoredEvent>> {
        let mut streams: HashMap<String, Vec<StoredEvent>> = HashMap::new();
        for event in all {
            streams
                .entry(event.stream.clone())
                .or_default()
                .push(event.clone());
        }
        streams
    }

    #[test]
    fn record_lines_round_trip() {
        let (acks, _) = store(1, 1);
        let line = acks[0].to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(Ack::parse(&line), Ok(acks[0].clone()));
        assert!(Ack::parse("crash-00 1 not-a-uuid 3 0").is_err());
        assert!(Ack::parse("crash-00 1").is_err());
    }

    #[test]
    fn an_intact_store_passes() {
        let (acks, all) = store(3, 4);
        let summary = verify(&acks, &all, &split(&all)).expect("intact");
        assert_eq!(summary.events, 12);
        assert_eq!(summary.streams, 3);
        assert_eq!(summary.acknowledged, 12);
        assert_eq!(summary.unacknowledged, 0);
    }

    #[test]
    fn unacknowledged_events_are_allowed() {
        let (mut acks, all) = store(2, 3);
        acks.truncate(4);
        let summary = verify(&acks, &all, &split(&all)).expect("extra events are fine");
        assert_eq!(summary.unacknowledged, 2);
    }

    #[test]
    fn a_lost_tail_is_found() {
        let (acks, mut all) = store(2, 3);
        all.pop();
        let error = verify(&acks, &all, &split(&all)).expect_err("lost");
        assert!(error.starts_with("LOST:"), "{error}");
        assert!(error.contains("$all ends at position 5"), "{error}");
    }

    #[test]
    fn a_lost_event_in_the_middle_is_a_gap() {
        let (acks, mut all) = store(2, 3);
        all.remove(2);
        let error = verify(&acks, &all, &split(&all)).expect_err("gap");
        assert!(error.contains("gap"), "{error}");
    }

    #[test]
    fn a_duplicate_is_found() {
        let (acks, mut all) = store(2, 2);
        let mut again = all[1].clone();
        again.position = all.len() as u64;
        again.revision = 2;
        all.push(again);
        let error = verify(&acks, &all, &split(&all)).expect_err("duplicate");
        assert!(error.contains("more than once"), "{error}");
    }

    #[test]
    fn changed_data_is_found() {
        let (acks, mut all) = store(1, 2);
        let mut data = all[1].data.to_vec();
        let last_x = data.iter().rposition(|&b| b == b'x').expect("padding");
        data[last_x] = b'y';
        all[1].data = data.into();
        let error = verify(&acks, &all, &split(&all)).expect_err("changed");
        assert!(error.contains("data changed"), "{error}");
    }

    #[test]
    fn a_stream_read_that_disagrees_is_found() {
        let (acks, all) = store(2, 2);
        let mut streams = split(&all);
        streams.get_mut("crash-01").expect("stream").truncate(1);
        let error = verify(&acks, &all, &streams).expect_err("short stream");
        assert!(error.contains("crash-01"), "{error}");
    }

    #[test]
    fn an_acknowledgement_at_the_wrong_place_is_found() {
        let (mut acks, all) = store(2, 2);
        acks[0].revision = 1;
        let error = verify(&acks, &all, &split(&all)).expect_err("moved");
        assert!(error.contains("stored as crash-00@0"), "{error}");
    }
}
