//! The query side's machinery: an embedded SQLite database per service and the
//! loop that feeds it from a catch-up subscription.
//!
//! Invariant: a projection's checkpoint (the `$all` position of the last event
//! it applied) is written in the same SQLite transaction as the rows that event
//! changed. After a crash or restart the projection resumes right after the
//! checkpoint, so no event is skipped and none is applied twice.
//!
//! Owns the `checkpoints` table; each projection owns its own tables and never
//! writes another's.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cairn_client::{Client, Filter, RecordedEvent, SubscribeOptions, SubscriptionMessage};
use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::error::{Result, ShopError};

/// A service's SQLite database. Cheap to clone. All access goes through
/// `spawn_blocking`, so SQLite never blocks the async runtime; the mutex is
/// never held across an await.
#[derive(Clone)]
pub struct Db {
    connection: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (or creates) the database file `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let connection = Connection::open(path)?;
        // WAL: readers do not wait for the writer. NORMAL: a commit survives a
        // process crash (what the checkpoint invariant needs); power loss may
        // lose the last commits, which the subscription then delivers again.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(connection)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(connection: Connection) -> Result<Self> {
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS checkpoints (
                 name TEXT PRIMARY KEY,
                 position INTEGER NOT NULL
             );",
        )?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Runs `work` on the connection on a blocking thread.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .map_err(|_| ShopError::Internal("read model lock poisoned".into()))?;
            work(&mut connection)
        })
        .await
        .map_err(|error| ShopError::Internal(format!("read model task: {error}")))?
    }

    /// The checkpoint stored under `name`.
    pub async fn checkpoint(&self, name: &'static str) -> Result<Option<u64>> {
        self.call(move |connection| read_checkpoint(connection, name))
            .await
    }

    /// Stores the checkpoint `name` in its own transaction (a filtered
    /// subscription's progress through events that changed nothing).
    pub async fn set_checkpoint(&self, name: &'static str, position: u64) -> Result<()> {
        self.call(move |connection| write_checkpoint(connection, name, position))
            .await
    }
}

/// Reads a checkpoint inside any connection or transaction.
pub fn read_checkpoint(connection: &Connection, name: &str) -> Result<Option<u64>> {
    let position: Option<i64> = connection
        .query_row(
            "SELECT position FROM checkpoints WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .optional()?;
    Ok(position.map(|position| position as u64))
}

/// Writes a checkpoint inside any connection or transaction.
pub fn write_checkpoint(connection: &Connection, name: &str, position: u64) -> Result<()> {
    let position = i64::try_from(position)
        .map_err(|_| ShopError::Internal(format!("position {position} beyond SQLite's range")))?;
    connection.execute(
        "INSERT INTO checkpoints (name, position) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        rusqlite::params![name, position],
    )?;
    Ok(())
}

/// A read model: tables and how each event changes them.
pub trait Projection: Send + Sync + 'static {
    /// Its checkpoint's name, unique within a database.
    fn name(&self) -> &'static str;
    /// What it subscribes to in `$all` (stream prefixes, event types).
    fn filter(&self) -> Filter;
    /// `CREATE TABLE IF NOT EXISTS ...` for its tables.
    fn schema(&self) -> &'static str;
    /// Applies one event inside the transaction that will also hold the
    /// checkpoint. Events it does not care about are ignored.
    fn apply(&self, transaction: &Transaction<'_>, event: &RecordedEvent) -> Result<()>;
}

/// Creates the projection's tables.
pub async fn install<P: Projection>(db: &Db, projection: Arc<P>) -> Result<()> {
    db.call(move |connection| Ok(connection.execute_batch(projection.schema())?))
        .await
}

/// Feeds `projection` from `$all` forever: resumes after its checkpoint, and
/// applies each event and the new checkpoint in one transaction. Returns only
/// on a permanent error (an undecodable event stops it, loudly, rather than
/// being skipped into a wrong read model).
pub async fn run_projection<P: Projection>(
    client: Client,
    db: Db,
    projection: Arc<P>,
) -> Result<()> {
    install(&db, projection.clone()).await?;
    let name = projection.name();
    let options = match db.checkpoint(name).await? {
        Some(position) => SubscribeOptions::after(position),
        None => SubscribeOptions::from_start(),
    }
    .filter(projection.filter(), 0);
    let mut subscription = client.subscribe_resilient("$all", options);
    loop {
        match subscription.next().await? {
            SubscriptionMessage::Event(event) => {
                let projection = projection.clone();
                db.call(move |connection| {
                    let transaction = connection.transaction()?;
                    // A resilient subscription never repeats an event, but a
                    // stale checkpoint must never be applied twice either.
                    if read_checkpoint(&transaction, name)?
                        .is_some_and(|done| done >= event.position)
                    {
                        return Ok(());
                    }
                    projection.apply(&transaction, &event)?;
                    write_checkpoint(&transaction, name, event.position)?;
                    transaction.commit()?;
                    Ok(())
                })
                .await?;
            }
            SubscriptionMessage::Checkpoint { position } => {
                db.set_checkpoint(name, position).await?;
            }
            _ => {}
        }
    }
}
