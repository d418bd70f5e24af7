//! The command side's one pattern: load an aggregate from its stream, decide,
//! append with the expected revision, and on a concurrent write
//! (`WrongExpectedRevision`) load again and decide again.
//!
//! Owns nothing but that loop; what an aggregate is and what it decides lives
//! in the service modules.

use std::time::Duration;

use cairn_client::{Client, EventData, ExpectedRevision, ReadOptions};
use serde::de::DeserializeOwned;

use crate::error::{Result, ShopError};
use crate::events::decode;

/// State rebuilt from one stream's events.
pub trait Aggregate: Default {
    /// The events of its stream category.
    type Event: DeserializeOwned;
    /// Folds one event in. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);
}

/// An aggregate and the revision it was loaded at.
#[derive(Debug, Clone, Default)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream's last revision (`None`: the stream does not exist).
    pub revision: Option<u64>,
}

impl<A> Loaded<A> {
    /// The expectation an append decided on this state must carry.
    pub fn expected(&self) -> ExpectedRevision {
        match self.revision {
            Some(revision) => ExpectedRevision::Exact(revision),
            None => ExpectedRevision::NoStream,
        }
    }
}

/// Reads `stream` from the start and folds it into `A`.
pub async fn load<A: Aggregate>(client: &Client, stream: &str) -> Result<Loaded<A>> {
    let mut events = match client.read_stream(stream, ReadOptions::forwards()).await {
        Ok(events) => events,
        Err(cairn_client::Error::StreamNotFound { .. }) => return Ok(Loaded::default()),
        Err(error) => return Err(error.into()),
    };
    let mut loaded = Loaded::<A>::default();
    loop {
        match events.next_event().await {
            Ok(Some(event)) => {
                loaded.state.apply(&decode::<A::Event>(&event)?);
                loaded.revision = Some(event.revision);
            }
            Ok(None) => return Ok(loaded),
            Err(cairn_client::Error::StreamNotFound { .. }) => return Ok(Loaded::default()),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Most attempts of one command under contention before giving up with
/// `Conflict`.
const MAX_ATTEMPTS: u32 = 64;

/// Runs a command against the aggregate in `stream`: `decide` sees the current
/// state and returns the events to append (possibly none) and the command's
/// output. Retried on concurrent writes, so `decide` must be a pure function of
/// the state. An append refused because its (derived) event ids were already
/// written counts as done: a redelivered cause already had its effect.
pub async fn execute<A, T>(
    client: &Client,
    stream: &str,
    mut decide: impl FnMut(&A) -> Result<(Vec<EventData>, T)>,
) -> Result<T>
where
    A: Aggregate,
{
    for attempt in 0..MAX_ATTEMPTS {
        let loaded = load::<A>(client, stream).await?;
        let (events, output) = decide(&loaded.state)?;
        if events.is_empty() {
            return Ok(output);
        }
        match client.append(stream, loaded.expected(), events).await {
            Ok(_) => return Ok(output),
            Err(cairn_client::Error::DuplicateEventId(_)) => return Ok(output),
            Err(cairn_client::Error::WrongExpectedRevision { .. }) => {
                backoff(attempt).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(ShopError::Conflict(format!(
        "'{stream}' changed under {MAX_ATTEMPTS} attempts in a row; try again"
    )))
}

/// A short, growing, jittered pause between attempts, so competing writers
/// stop colliding.
pub(crate) async fn backoff(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 4);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}
