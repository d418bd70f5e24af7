//! Replaying parked events: reading them back from the group's parked stream,
//! putting them into delivery, and hiding them in the parked stream once every
//! one of them is finished (so a crash in between replays them again:
//! at-least-once). One replay runs at a time per group.

use cairn_storage::{
    ExpectedRevision, ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store, StreamMetadata,
};
use tokio::sync::oneshot;

use super::{Command, GroupActor, REPLAY_LIMIT};
use crate::error::Error;
use crate::groups::definition::{ParkedRecord, parked_stream};

/// Parked events read back for a replay.
pub struct ReplayBatch {
    /// (parked-stream revision, the original event if it still exists).
    pub(super) events: Vec<(u64, Option<RecordedEvent>)>,
}

/// A replay in progress.
pub(super) struct Replay {
    /// Replayed events not finished yet.
    pub(super) remaining: u64,
    /// The parked stream's `truncate_before` once they are.
    pub(super) truncate_to: u64,
    /// The truncation write is running.
    pub(super) truncating: bool,
}

impl GroupActor {
    pub(super) fn start_replay(&mut self, max: u64, reply: oneshot::Sender<Result<u64, Error>>) {
        if let Some(replay) = &self.replay {
            let _ = reply.send(Err(Error::ReplayInProgress {
                group: self.definition.group.clone(),
                remaining: replay.remaining,
            }));
            return;
        }
        // Marks the replay as running until the batch is loaded.
        self.replay = Some(Replay {
            remaining: 0,
            truncate_to: 0,
            truncating: true,
        });
        let limit = if max == 0 {
            REPLAY_LIMIT
        } else {
            max.min(REPLAY_LIMIT)
        };
        let store = self.store.clone();
        let group = self.definition.group.clone();
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || load_parked(&store, &group, limit))
                .await
                .unwrap_or_else(|error| Err(Error::Internal(error.to_string())));
            let _ = loopback.send(Command::ReplayLoaded { loaded, reply }).await;
        });
    }

    pub(super) fn on_replay_loaded(
        &mut self,
        loaded: Result<ReplayBatch, Error>,
        reply: oneshot::Sender<Result<u64, Error>>,
    ) {
        let batch = match loaded {
            Ok(batch) => batch,
            Err(error) => {
                self.replay = None;
                let _ = reply.send(Err(error));
                return;
            }
        };
        let Some(last) = batch.events.last().map(|(revision, _)| *revision) else {
            self.replay = None;
            let _ = reply.send(Ok(0));
            return;
        };
        let replayed = batch.events.len() as u64;
        let mut remaining = 0;
        for (_, event) in batch.events {
            // Gone (deleted or scavenged) or already outstanding: nothing to do.
            let Some(event) = event else { continue };
            if self.by_event_id.contains_key(&event.id) {
                continue;
            }
            self.track(event, true);
            remaining += 1;
        }
        self.replay = Some(Replay {
            remaining,
            truncate_to: last + 1,
            truncating: false,
        });
        let _ = reply.send(Ok(replayed));
        self.maybe_truncate_parked();
    }

    /// Once every replayed event is finished, hides them in the parked stream.
    pub(super) fn maybe_truncate_parked(&mut self) {
        let Some(replay) = &mut self.replay else {
            return;
        };
        if replay.truncating || replay.remaining > 0 {
            return;
        }
        replay.truncating = true;
        let truncate_to = replay.truncate_to;
        let store = self.store.clone();
        let stream = parked_stream(&self.definition.group);
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let metadata = store
                .stream_info(&stream)
                .map(|info| info.metadata)
                .unwrap_or_default();
            let metadata = StreamMetadata {
                truncate_before: Some(truncate_to),
                ..metadata
            };
            if let Err(error) = store
                .set_metadata(stream, ExpectedRevision::Any, metadata)
                .await
            {
                // The replayed events stay visible in the parked stream; a later
                // replay delivers them again (at-least-once).
                tracing::warn!(%error, "could not truncate the parked stream after a replay");
            }
            let _ = loopback.send(Command::ReplayTruncated).await;
        });
    }
}

/// Reads up to `limit` parked records and the events they point at.
fn load_parked(store: &Store, group: &str, limit: u64) -> Result<ReplayBatch, Error> {
    let stream = parked_stream(group);
    let Some(info) = store.stream_info(&stream) else {
        return Ok(ReplayBatch { events: Vec::new() });
    };
    let request = ReadRequest::forwards(ReadSource::Stream(stream), limit as usize)
        .from(ReadFrom::At(info.first_visible_revision));
    let page = match store.read(&request) {
        Ok(page) => page,
        Err(cairn_storage::Error::StreamNotFound { .. }) => {
            return Ok(ReplayBatch { events: Vec::new() });
        }
        Err(error) => return Err(error.into()),
    };
    let mut events = Vec::with_capacity(page.events.len());
    for parked in page.events {
        let record: ParkedRecord = serde_json::from_slice(&parked.data).map_err(|error| {
            Error::Corrupt(format!("parked record of group '{group}': {error}"))
        })?;
        let original = ReadRequest::forwards(ReadSource::Stream(record.stream.clone()), 1)
            .from(ReadFrom::At(record.revision));
        let event = match store.read(&original) {
            Ok(page) => page
                .events
                .into_iter()
                .find(|event| event.revision == record.revision && event.id == record.event_id),
            Err(_) => None,
        };
        events.push((parked.revision, event));
    }
    Ok(ReplayBatch { events })
}
