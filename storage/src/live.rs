//! What subscribers wait on: the published head and a bounded ring of the most
//! recently committed events.
//!
//! The committer is the only writer here. It publishes a group only after the
//! group is durable and the stream catalog shows it, so anything below the head
//! is readable from storage. The ring holds every committed event, hidden or not
//! (visibility is decided by the reader at delivery time); when it is full the
//! oldest events leave it and a reader asking for them gets `FellBehind` and must
//! read storage instead. Nothing is ever dropped silently.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::RecordedEvent;

/// What the committer announces after each durable group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitNotice {
    /// The new head: the position the next event will get.
    pub head: u64,
    /// Streams whose state or metadata changed in this group (deleted, tombstoned,
    /// metadata set). Subscriptions to them re-check visibility.
    pub changed_streams: Vec<String>,
}

/// A callback run on the committer thread after each group. It must not block.
pub type CommitListener = Box<dyn Fn(&CommitNotice) + Send + Sync>;

/// Bounds of the live ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// Most events held.
    pub max_events: usize,
    /// Most payload bytes held (an event larger than this is still held alone).
    pub max_bytes: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        Self {
            max_events: 16_384,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Ring {
    /// Position of `events[0]`, or the head when empty. Events are contiguous.
    start: u64,
    events: VecDeque<Arc<RecordedEvent>>,
    bytes: usize,
}

/// The head watch and the ring.
pub struct Live {
    head: Mutex<u64>,
    head_moved: Condvar,
    ring: RwLock<Ring>,
    limits: RingLimits,
    listeners: RwLock<Vec<CommitListener>>,
}

fn payload_bytes(event: &RecordedEvent) -> usize {
    event.data.len() + event.metadata.len() + event.stream.len() + event.event_type.len() + 64
}

impl Live {
    pub(crate) fn new(head: u64, limits: RingLimits) -> Self {
        Self {
            head: Mutex::new(head),
            head_moved: Condvar::new(),
            ring: RwLock::new(Ring {
                start: head,
                events: VecDeque::new(),
                bytes: 0,
            }),
            limits,
            listeners: RwLock::new(Vec::new()),
        }
    }

    /// The published head: every position below it is committed and readable.
    pub fn head(&self) -> u64 {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until the head is beyond `position` (i.e. `head > position`) or the
    /// timeout passes; returns the head then.
    pub fn wait_beyond(&self, position: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut head = self.head.lock().unwrap_or_else(PoisonError::into_inner);
        while *head <= position {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            head = self
                .head_moved
                .wait_timeout(head, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *head
    }

    /// Registers a callback run after every committed group.
    pub fn add_listener(&self, listener: CommitListener) {
        self.listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(listener);
    }

    /// Events from `position` (inclusive), at most `max`, from the ring. Empty when
    /// `position` is at or beyond the head. `FellBehind` when the ring no longer
    /// holds `position`.
    pub fn read_from(&self, position: u64, max: usize) -> Result<Vec<Arc<RecordedEvent>>> {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        if position < ring.start {
            return Err(Error::FellBehind {
                requested: position,
                oldest: ring.start,
            });
        }
        let skip = usize::try_from(position - ring.start).unwrap_or(usize::MAX);
        Ok(ring.events.iter().skip(skip).take(max).cloned().collect())
    }

    /// The oldest position the ring holds (equal to the head when empty).
    pub fn ring_start(&self) -> u64 {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .start
    }

    /// Number of events and payload bytes the ring holds now.
    pub fn ring_usage(&self) -> (usize, usize) {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        (ring.events.len(), ring.bytes)
    }

    /// Publishes the head of `notice`, wakes the waiters, then runs the
    /// listeners (after the ring holds what the head covers).
    fn announce(&self, notice: &CommitNotice) {
        *self.head.lock().unwrap_or_else(PoisonError::into_inner) = notice.head;
        self.head_moved.notify_all();
        for listener in self
            .listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            listener(notice);
        }
    }

    /// Moves the head to `head` with an empty ring (cluster mode: the
    /// database's contents were replaced by a snapshot that ends there), then
    /// runs the listeners. Readers and subscriptions below `head` find the
    /// ring behind them ([`Error::FellBehind`]) and read the database, as
    /// after any eviction.
    pub(crate) fn reset(&self, notice: &CommitNotice) {
        {
            let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
            ring.events.clear();
            ring.bytes = 0;
            ring.start = notice.head;
        }
        self.announce(notice);
    }

    /// Publishes a durable group: ring first, then the head, then listeners.
    pub(crate) fn publish(&self, events: Vec<Arc<RecordedEvent>>, notice: &CommitNotice) {
        {
            let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
            for event in events {
                debug_assert_eq!(event.position, ring.start + ring.events.len() as u64);
                ring.bytes += payload_bytes(&event);
                ring.events.push_back(event);
            }
            while ring.events.len() > self.limits.max_events
                || (ring.bytes > self.limits.max_bytes && ring.events.len() > 1)
            {
                if let Some(evicted) = ring.events.pop_front() {
                    ring.bytes -= payload_bytes(&evicted);
                    ring.start += 1;
                }
            }
            if ring.events.is_empty() {
                ring.start = notice.head;
            }
        }
        self.announce(notice);
    }
}
