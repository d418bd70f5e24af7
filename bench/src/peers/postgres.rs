//! PostgreSQL with a Message-DB-style schema, through `tokio-postgres`.
//!
//! One `messages` table: a global `bigserial` position (the `$all` order), the
//! stream name and the position in the stream (unique together), the id
//! (unique), the type, the data as `jsonb`. `write_messages` appends a batch to
//! one stream in one transaction: it takes a transaction-scoped advisory lock
//! on the stream (as Message-DB's `write_message` does), compares the stream's
//! version with the expected one and raises `CB001` on a mismatch before
//! anything is inserted, so a wrong expectation writes nothing. The server
//! runs with `synchronous_commit=on`: a commit returns after the WAL is
//! flushed (PostgreSQL groups concurrent commits into one flush).
//!
//! Live delivery (W6) polls `messages` by global position every millisecond,
//! Message-DB's way of consuming. LISTEN/NOTIFY is not used: a transaction
//! that notifies holds a database-wide lock from before its commit record
//! until after the flush, which serialises commits and would cost every
//! other workload the group commit it gets now.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::{Client, NoTls, Row, Statement};
use uuid::Uuid;

use crate::BoxError;
use crate::target::{
    Appended, Delivery, EventSubscription, Expected, NewEvent, StoredEvent, SubscribeAt, Target,
};
use crate::workload::EVENT_TYPE;

/// The schema and the write function (run once on a fresh database).
pub(crate) const SCHEMA: &str = r"
CREATE TABLE messages (
    global_position bigserial PRIMARY KEY,
    position bigint NOT NULL,
    stream_name text NOT NULL,
    id uuid NOT NULL,
    type text NOT NULL,
    data jsonb,
    metadata jsonb,
    time timestamp without time zone DEFAULT (now() AT TIME ZONE 'utc') NOT NULL
);
CREATE UNIQUE INDEX messages_id ON messages (id);
CREATE UNIQUE INDEX messages_stream ON messages (stream_name, position);

CREATE FUNCTION write_messages(
    _stream text, _expected bigint, _type text, _ids uuid[], _data text[]
) RETURNS TABLE (stream_version bigint, first_global bigint, last_global bigint)
LANGUAGE plpgsql AS $$
DECLARE
    _version bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(_stream, 0));
    SELECT coalesce(max(m.position), -1) INTO _version
        FROM messages m WHERE m.stream_name = _stream;
    IF _version <> _expected THEN
        RAISE EXCEPTION 'Wrong expected version: % (stream: %, stream version: %)',
            _expected, _stream, _version USING ERRCODE = 'CB001';
    END IF;
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO messages (id, stream_name, position, type, data)
        SELECT e.id, _stream, _version + e.n, _type, e.data::jsonb
        FROM unnest(_ids, _data) WITH ORDINALITY AS e(id, data, n)
        ORDER BY e.n
        RETURNING global_position
    )
    SELECT _version + count(*), min(inserted.global_position), max(inserted.global_position)
    FROM inserted;
END
$$;
";

/// The SQLSTATE `write_messages` raises on a wrong expected version.
pub(crate) const WRONG_VERSION: &str = "CB001";

/// The appends' statement.
const WRITE: &str = "SELECT stream_version, first_global, last_global \
                     FROM write_messages($1, $2, $3, $4, $5)";
/// `$all` from a global position (1-based in the table).
const READ_ALL: &str = "SELECT global_position, stream_name, position, id, data::text \
                        FROM messages WHERE global_position >= $1 \
                        ORDER BY global_position LIMIT $2";
/// One stream from its start.
const READ_STREAM: &str = "SELECT global_position, stream_name, position, id, data::text \
                           FROM messages WHERE stream_name = $1 ORDER BY position";

/// How often the live subscription looks for new rows when it found none.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Rows the live subscription reads per poll.
const POLL_ROWS: i64 = 1_000;

/// Message-DB's expected version: the stream's last position, -1 for none.
pub(crate) fn expected_version(expected: Expected) -> i64 {
    match expected {
        Expected::NoStream => -1,
        Expected::Exact(revision) => i64::try_from(revision).unwrap_or(i64::MAX),
    }
}

/// What `write_messages` answers, as an [`Appended`]: the stream's version
/// (-1: empty) and the 1-based global positions of the first and last row.
pub(crate) fn appended(version: i64, first: Option<i64>, last: Option<i64>) -> Appended {
    let to_position = |global: i64| u64::try_from(global - 1).ok();
    Appended {
        last_revision: u64::try_from(version).ok(),
        positions: first.and_then(to_position).zip(last.and_then(to_position)),
    }
}

/// One connection to a PostgreSQL server.
pub(crate) struct Postgres {
    /// `host=... port=... user=postgres dbname=postgres`, for further connections.
    config: String,
    /// This connection (its I/O runs on a spawned task).
    client: Client,
    /// The prepared statements of this connection.
    write: Statement,
    read_all: Statement,
    read_stream: Statement,
}

impl Postgres {
    /// Connects to the server on 127.0.0.1:`port` as `postgres` (trust auth).
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("PostgreSQL address {address:?} is not HOST:PORT"))?;
        Self::connect_config(format!(
            "host={host} port={port} user=postgres dbname=postgres"
        ))
        .await
    }

    async fn connect_config(config: String) -> Result<Self, BoxError> {
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("postgres connection: {error}");
            }
        });
        let setup = client
            .query_opt(
                "SELECT 1 FROM pg_proc WHERE proname = 'write_messages'",
                &[],
            )
            .await?;
        if setup.is_none() {
            client.batch_execute(SCHEMA).await?;
        }
        let write = client.prepare(WRITE).await?;
        let read_all = client.prepare(READ_ALL).await?;
        let read_stream = client.prepare(READ_STREAM).await?;
        Ok(Self {
            config,
            client,
            write,
            read_all,
            read_stream,
        })
    }
}

/// A row of `READ_ALL` / `READ_STREAM` as a [`StoredEvent`].
fn stored(row: &Row) -> Result<StoredEvent, BoxError> {
    let global: i64 = row.try_get(0)?;
    let revision: i64 = row.try_get(2)?;
    let data: String = row.try_get(4)?;
    Ok(StoredEvent {
        id: row.try_get::<_, Uuid>(3)?,
        stream: row.try_get(1)?,
        revision: u64::try_from(revision)?,
        position: u64::try_from(global - 1)?,
        data: Bytes::from(data),
    })
}

impl Target for Postgres {
    type Subscription = PostgresSubscription;

    async fn connect_another(&self) -> Result<Self, BoxError> {
        Self::connect_config(self.config.clone()).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, BoxError> {
        let (ids, data): (Vec<Uuid>, Vec<String>) = events
            .into_iter()
            .map(|event| (event.id, event.data))
            .unzip();
        let row = self
            .client
            .query_one(
                &self.write,
                &[
                    &stream,
                    &expected_version(expected),
                    &EVENT_TYPE,
                    &ids,
                    &data,
                ],
            )
            .await
            .map_err(|error| match error.code() {
                Some(code) if code.code() == WRONG_VERSION => {
                    format!("wrong expected version appending to {stream}: {error}").into()
                }
                _ => BoxError::from(error),
            })?;
        Ok(appended(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    async fn read_all(&self, position: u64, max: u64) -> Result<Vec<StoredEvent>, BoxError> {
        let from = i64::try_from(position)? + 1;
        let rows = self
            .client
            .query(&self.read_all, &[&from, &i64::try_from(max)?])
            .await?;
        rows.iter().map(stored).collect()
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, BoxError> {
        let rows = self.client.query(&self.read_stream, &[&stream]).await?;
        rows.iter().map(stored).collect()
    }

    async fn subscribe_all(&self, from: SubscribeAt) -> Result<PostgresSubscription, BoxError> {
        let target = self.connect_another().await?;
        let next = match from {
            SubscribeAt::Start => 1,
            SubscribeAt::End => {
                let head: i64 = target
                    .client
                    .query_one(
                        "SELECT coalesce(max(global_position), 0) FROM messages",
                        &[],
                    )
                    .await?
                    .try_get(0)?;
                head + 1
            }
        };
        Ok(PostgresSubscription {
            target,
            next,
            buffer: VecDeque::from([Delivery::Confirmed]),
        })
    }

    async fn round_trip(&self) -> Result<(), BoxError> {
        self.client.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// A polling subscription to `$all` (see the module docs).
pub(crate) struct PostgresSubscription {
    /// Its own connection.
    target: Postgres,
    /// The next global position (1-based) to read.
    next: i64,
    /// Deliveries read but not yet handed out.
    buffer: VecDeque<Delivery>,
}

impl EventSubscription for PostgresSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(Some(delivery));
            }
            let rows = self
                .target
                .client
                .query(&self.target.read_all, &[&self.next, &POLL_ROWS])
                .await?;
            if rows.is_empty() {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            for row in &rows {
                let mut event = stored(row)?;
                // jsonb gives the data back re-formatted (`"t": 1`); the
                // subscriber reads `t` from compact JSON.
                let value: serde_json::Value = serde_json::from_slice(&event.data)?;
                event.data = Bytes::from(value.to_string());
                self.next = i64::try_from(event.position)? + 2;
                self.buffer.push_back(Delivery::Event(event));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_versions_are_message_db_positions() {
        assert_eq!(expected_version(Expected::NoStream), -1);
        assert_eq!(expected_version(Expected::Exact(0)), 0);
        assert_eq!(expected_version(Expected::Exact(41)), 41);
    }

    #[test]
    fn answers_become_revisions_and_zero_based_positions() {
        let first = appended(0, Some(1), Some(1));
        assert_eq!(first.last_revision, Some(0));
        assert_eq!(first.positions, Some((0, 0)));
        let batch = appended(199, Some(1_101), Some(1_200));
        assert_eq!(batch.last_revision, Some(199));
        assert_eq!(batch.positions, Some((1_100, 1_199)));
        assert_eq!(appended(-1, None, None).last_revision, None);
    }

    #[test]
    fn the_write_function_checks_before_it_inserts() {
        let check = SCHEMA.find("IF _version <> _expected").expect("check");
        let insert = SCHEMA.find("INSERT INTO messages").expect("insert");
        assert!(check < insert);
        assert!(SCHEMA.contains(&format!("ERRCODE = '{WRONG_VERSION}'")));
        assert!(SCHEMA.contains("pg_advisory_xact_lock"));
    }
}
