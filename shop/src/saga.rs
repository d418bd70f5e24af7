//! The saga's delivery machinery: runs a [`Handler`] (a function from one event
//! to its effect in Cairn) over the events it follows.
//!
//! Delivery is at-least-once: the checkpoint moves only after the handler's
//! effect is written, so a crash in between delivers the event again. Handlers
//! are therefore idempotent: their events carry ids derived from the cause's id
//! and they check the aggregate before deciding.
//!
//! Two drivers, chosen per service ([`Driver`]):
//! - [`Driver::Persistent`] (the default): a persistent subscription (consumer
//!   group named after the handler) on `$all`; the server keeps the group's
//!   checkpoint, shares events among every running instance of the service,
//!   redelivers what is not acked and parks what keeps failing.
//! - [`Driver::CatchUp`]: a catch-up subscription to `$all` with a durable
//!   checkpoint in the service's SQLite (`checkpoints` table, owned by
//!   `readmodel`); one instance per service.
//!
//! Owns the `parked` table: events a handler refused permanently, kept for a
//! person to look at instead of blocking the saga.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{
    Client, Filter, GroupOptions, GroupSettings, GroupStart, NackAction, RecordedEvent,
    SubscribeOptions, SubscriptionMessage,
};
use tokio::task::JoinSet;

use crate::error::Result;
use crate::readmodel::{Db, write_checkpoint};

/// How a service's saga handler receives its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// A consumer group on the server (several instances share the work).
    #[default]
    Persistent,
    /// A catch-up subscription with the checkpoint in the service's SQLite.
    CatchUp,
}

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

/// Events one consumer of a group works on at once. Handlers of different
/// events may then write the same aggregate concurrently: the expected
/// revision serialises them and `eventstore::execute` retries the loser.
pub const MAX_IN_FLIGHT: u32 = 8;

/// Deliveries after the first before the server parks an event.
const MAX_RETRIES: u32 = 10;

/// Runs `handler` forever as a consumer of its group (created from the start
/// of `$all`, with the handler's filter, if it does not exist yet). Each event
/// is acked after its effect is written; a transient failure is nacked for a
/// retry, a permanent one is parked with its reason. A lost connection is
/// re-established with a growing pause; the server redelivers what was not
/// acked.
///
/// `subscriber` carries only the consumer's call and `client` the handler's
/// reads and appends (see [`run_catch_up`]).
pub async fn run_persistent<H: Handler>(
    subscriber: Client,
    client: Client,
    handler: Arc<H>,
    consumer_name: String,
) -> Result<()> {
    let group = handler.name();
    let options = GroupOptions {
        start: GroupStart::Beginning,
        filter: Some(handler.filter()),
        settings: GroupSettings {
            max_retries: Some(MAX_RETRIES),
            max_in_flight_per_consumer: Some(MAX_IN_FLIGHT),
            ..GroupSettings::default()
        },
    };
    let mut pause = Duration::from_millis(50);
    loop {
        let consumed = async {
            match subscriber
                .create_group(group, "$all", options.clone())
                .await
            {
                Ok(()) | Err(cairn_client::Error::GroupExists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
            let consumer = subscriber
                .consume(group, consumer_name.clone(), MAX_IN_FLIGHT)
                .await?;
            consume(consumer, &client, &handler).await
        };
        match consumed.await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => {
                tracing::warn!(group, %error, "consumer lost; joining again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Handles a consumer's deliveries, up to its in-flight limit at once.
async fn consume<H: Handler>(
    mut consumer: cairn_client::Consumer,
    client: &Client,
    handler: &Arc<H>,
) -> Result<()> {
    let mut working = JoinSet::new();
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery?,
            Some(done) = working.join_next(), if !working.is_empty() => {
                done.map_err(|error| crate::ShopError::Internal(format!("handler task: {error}")))??;
                continue;
            }
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        let (client, handler) = (client.clone(), handler.clone());
        working.spawn(async move {
            match handler.handle(&client, &delivery.event).await {
                Ok(()) => delivery.ack().await?,
                Err(error) if error.is_transient() || matches!(error, crate::ShopError::Conflict(_)) => {
                    tracing::warn!(handler = handler.name(), %error, retry = delivery.retry_count, "retrying");
                    delivery.nack(NackAction::Retry, error.to_string()).await?;
                }
                Err(error) => {
                    tracing::error!(handler = handler.name(), stream = %delivery.event.stream,
                        event_type = %delivery.event.event_type, %error, "parking event");
                    delivery.nack(NackAction::Park, error.to_string()).await?;
                }
            }
            Ok::<(), crate::ShopError>(())
        });
    }
}
