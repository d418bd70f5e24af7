//! The in-memory table of streams: heads, states and metadata, and the one place
//! that decides whether an event is visible.
//!
//! The committer is the only writer: it applies a group's changes here after the
//! group is durable and before the head is published, so a reader that saw head
//! `H` finds every stream of every event below `H`. Readers take the read lock for
//! at most one page.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::SystemTime;

use crate::codec::StreamRecord;
use crate::model::{CurrentRevision, StreamInfo, StreamState};

impl StreamRecord {
    /// The revision a writer's expectation is checked against.
    pub fn current(&self) -> CurrentRevision {
        if self.tombstoned || self.next_revision == 0 || self.deleted_before >= self.next_revision {
            CurrentRevision::NoStream
        } else {
            CurrentRevision::Revision(self.next_revision - 1)
        }
    }

    /// Live, soft-deleted or tombstoned.
    pub fn state(&self) -> StreamState {
        if self.tombstoned {
            StreamState::Tombstoned
        } else if self.next_revision > 0 && self.deleted_before >= self.next_revision {
            StreamState::SoftDeleted
        } else {
            StreamState::Live
        }
    }

    /// Every revision below this is hidden by a delete, `truncate_before` or
    /// `max_count`.
    pub fn first_visible_revision(&self) -> u64 {
        let by_count = self
            .metadata
            .max_count
            .map_or(0, |max_count| self.next_revision.saturating_sub(max_count));
        self.deleted_before
            .max(self.metadata.truncate_before.unwrap_or(0))
            .max(by_count)
    }

    /// Whether an event of this stream at `revision`, committed at `created`, is
    /// visible at `now`.
    pub fn is_visible(&self, revision: u64, created: SystemTime, now: SystemTime) -> bool {
        if self.tombstoned || revision < self.first_visible_revision() {
            return false;
        }
        match self.metadata.max_age {
            Some(max_age) => created
                .checked_add(max_age)
                .is_none_or(|expiry| expiry >= now),
            None => true,
        }
    }

    /// The public view of this record.
    pub fn info(&self, name: &str) -> StreamInfo {
        StreamInfo {
            name: name.to_owned(),
            state: self.state(),
            last_revision: self.next_revision.checked_sub(1),
            first_visible_revision: self.first_visible_revision(),
            metadata: self.metadata.clone(),
            metadata_revision: self.metadata_revision,
        }
    }
}

/// All streams by name.
pub(crate) struct Catalog {
    streams: RwLock<HashMap<String, StreamRecord>>,
}

impl Catalog {
    pub(crate) fn new(streams: HashMap<String, StreamRecord>) -> Self {
        Self {
            streams: RwLock::new(streams),
        }
    }

    /// A read view for one page of work.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<String, StreamRecord>> {
        self.streams.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of one stream's record.
    pub(crate) fn get(&self, name: &str) -> Option<StreamRecord> {
        self.read().get(name).cloned()
    }

    /// Applies a durable group's changes (committer only).
    pub(crate) fn apply(&self, changes: HashMap<String, StreamRecord>) {
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        streams.extend(changes);
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::StreamMetadata;

    #[test]
    fn visibility_rules() {
        let now = SystemTime::now();
        let mut record = StreamRecord {
            id: 1,
            next_revision: 10,
            ..StreamRecord::default()
        };
        assert_eq!(record.current(), CurrentRevision::Revision(9));
        assert!(record.is_visible(0, now, now));
        record.metadata = StreamMetadata {
            max_count: Some(3),
            ..StreamMetadata::default()
        };
        assert_eq!(record.first_visible_revision(), 7);
        record.metadata.truncate_before = Some(8);
        assert_eq!(record.first_visible_revision(), 8);
        record.metadata.max_age = Some(Duration::from_secs(5));
        assert!(record.is_visible(9, now, now));
        assert!(!record.is_visible(9, now - Duration::from_secs(6), now));
        record.deleted_before = 10;
        assert_eq!(record.state(), StreamState::SoftDeleted);
        assert_eq!(record.current(), CurrentRevision::NoStream);
        record.next_revision = 11;
        assert_eq!(record.state(), StreamState::Live);
        assert_eq!(record.current(), CurrentRevision::Revision(10));
        record.tombstoned = true;
        assert!(!record.is_visible(10, now, now));
        assert_eq!(record.state(), StreamState::Tombstoned);
    }
}
