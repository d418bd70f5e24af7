//! The saga's delivery machinery: runs a [`Handler`] (a function from one event
//! to its effect in Cairn) over the events it follows.
//!
//! Delivery is at-least-once: the checkpoint moves only after the handler's
//! effect is written, so a crash in between delivers the event again. Handlers
//! are therefore idempotent: their events carry ids derived from the cause's id
//! and they check the aggregate before deciding.
//!
//! Driver in use: a catch-up subscription to `$all` with a durable checkpoint
//! in the service's SQLite (`checkpoints` table, owned by `readmodel`). The
//! handlers do not depend on it and can move to a persistent subscription
//! (consumer group) unchanged.
//!
//! Owns the `parked` table: events a handler refused permanently, kept for a
//! person to look at instead of blocking the saga.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, Filter, RecordedEvent, SubscribeOptions, SubscriptionMessage};

use crate::error::Result;
use crate::readmodel::{Db, write_checkpoint};

/// One step of the saga: reacts to one event by writing its effect.
pub trait Handler: Send + Sync + 'static {
    /// Its checkpoint's name, unique within a database.
    fn name(&self) -> &'static str;
    /// What it follows in `$all`.
    fn filter(&self) -> Filter;
    /// Handles one event. Must be idempotent: called again with the same event
    /// it writes nothing new.
    fn handle(
        &self,
        client: &Client,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<()>> + Send;
}

const PARKED_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS parked (
    handler TEXT NOT NULL,
    position INTEGER NOT NULL,
    stream TEXT NOT NULL,
    event_type TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (handler, position)
);";

/// Runs `handler` forever on a catch-up subscription, resuming after its
/// checkpoint in `db`. Transient failures (Cairn unavailable) are retried
/// with a growing pause; a permanent one parks the event and moves on.
///
/// `subscriber` carries only the subscription and `client` the handler's
/// reads and appends: on one shared connection, events waiting unread while
/// the handler works could hold up the handler's own responses.
pub async fn run_catch_up<H: Handler>(
    subscriber: Client,
    client: Client,
    db: Db,
    handler: Arc<H>,
) -> Result<()> {
    db.call(|connection| Ok(connection.execute_batch(PARKED_SCHEMA)?))
        .await?;
    let name = handler.name();
    let options = match db.checkpoint(name).await? {
        Some(position) => SubscribeOptions::after(position),
        None => SubscribeOptions::from_start(),
    }
    .filter(handler.filter(), 0);
    let mut subscription = subscriber.subscribe_resilient("$all", options);
    loop {
        match subscription.next().await? {
            SubscriptionMessage::Event(event) => {
                handle_until_done(&client, &db, handler.as_ref(), &event).await?;
                db.set_checkpoint(name, event.position).await?;
            }
            SubscriptionMessage::Checkpoint { position } => {
                db.set_checkpoint(name, position).await?;
            }
            _ => {}
        }
    }
}

/// Calls the handler until it succeeds or fails permanently (then parks).
async fn handle_until_done<H: Handler>(
    client: &Client,
    db: &Db,
    handler: &H,
    event: &RecordedEvent,
) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    loop {
        match handler.handle(client, event).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => {
                tracing::warn!(handler = handler.name(), %error, "retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                tracing::error!(handler = handler.name(), stream = %event.stream,
                    event_type = %event.event_type, %error, "parking event");
                let (name, position) = (handler.name(), event.position);
                let (stream, event_type, error) = (
                    event.stream.clone(),
                    event.event_type.clone(),
                    error.to_string(),
                );
                return db
                    .call(move |connection| {
                        let transaction = connection.transaction()?;
                        transaction.execute(
                            "INSERT OR REPLACE INTO parked VALUES (?1, ?2, ?3, ?4, ?5)",
                            rusqlite::params![name, position as i64, stream, event_type, error],
                        )?;
                        write_checkpoint(&transaction, name, position)?;
                        transaction.commit()?;
                        Ok(())
                    })
                    .await;
            }
        }
    }
}
