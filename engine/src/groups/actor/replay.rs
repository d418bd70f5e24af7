//! The I/O of replaying parked events: reading the parked records back with the
//! events they point at, and, once the machine says every replayed event is
//! finished, hiding them in the parked stream (`truncate_before`), so a crash in
//! between replays them again (at-least-once). What to do with the events, and
//! that one replay runs at a time, is the machine's.

use cairn_storage::{ExpectedRevision, ReadFrom, ReadRequest, ReadSource, Store, StreamMetadata};
use tokio::sync::oneshot;

use super::{Command, GroupActor};
use crate::error::Error;
use crate::groups::definition::{ParkedRecord, parked_stream};
use crate::groups::machine::{ParkedEvent, ReplayBatch};

impl GroupActor {
    /// Reads up to `limit` parked records on the blocking pool; the caller of
    /// the replay is answered when the machine has them.
    pub(super) fn load_replay(&mut self, limit: u64) {
        // The machine asks for a load only right after accepting a replay.
        let reply = self
            .replay_reply
            .take()
            .unwrap_or_else(|| oneshot::channel().0);
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

    /// Hides the replayed records: the parked stream's `truncate_before`.
    pub(super) fn truncate_parked(&mut self, truncate_before: u64) {
        let store = self.store.clone();
        let stream = parked_stream(&self.definition.group);
        let loopback = self.loopback.clone();
        self.feeds.tasks().spawn(async move {
            let metadata = store
                .stream_info(&stream)
                .map(|info| info.metadata)
                .unwrap_or_default();
            let metadata = StreamMetadata {
                truncate_before: Some(truncate_before),
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
        return Ok(ReplayBatch::default());
    };
    let request = ReadRequest::forwards(ReadSource::Stream(stream), limit as usize)
        .from(ReadFrom::At(info.first_visible_revision));
    let page = match store.read(&request) {
        Ok(page) => page,
        Err(cairn_storage::Error::StreamNotFound { .. }) => return Ok(ReplayBatch::default()),
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
        events.push(ParkedEvent {
            revision: parked.revision,
            event,
        });
    }
    Ok(ReplayBatch { events })
}
