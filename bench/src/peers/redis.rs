//! Redis Streams, through the `redis` crate.
//!
//! Each event stream is a Redis stream of the same name whose entry ids are
//! `0-<revision + 1>`; every event is also added to the stream `$all` with the
//! entry id `0-<position + 1>`, which gives it its global position. Both
//! writes happen in one Lua script, which Redis runs atomically: it compares
//! the stream's length with the expected revision first and returns an error
//! (`WRONGVERSION`) before writing anything when they differ. The server runs
//! with `appendonly yes` and `appendfsync always`: the script's writes reach
//! the append-only file and are fsynced before the reply is sent (one fsync
//! per event-loop round, shared by the clients served in that round).
//!
//! Live delivery (W6) is `XREAD BLOCK` on `$all` from the last entry id seen.

use std::collections::VecDeque;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script, Value};
use uuid::Uuid;

use crate::BoxError;
use crate::target::{
    Appended, Delivery, EventSubscription, Expected, NewEvent, StoredEvent, SubscribeAt, Target,
};
use crate::workload::EVENT_TYPE;

/// The global stream.
pub(crate) const ALL: &str = "$all";

/// `KEYS[1]` the stream, `KEYS[2]` `$all`; `ARGV[1]` the expected last
/// revision (-1: no stream), `ARGV[2]` the type, then id and data per event.
/// Returns `{last revision, first position, last position}`.
pub(crate) const APPEND_LUA: &str = r"
local length = redis.call('XLEN', KEYS[1])
local expected = tonumber(ARGV[1])
if length - 1 ~= expected then
  return redis.error_reply('WRONGVERSION ' .. KEYS[1] .. ' is at revision ' .. (length - 1) ..
    ', expected ' .. expected)
end
local position = redis.call('XLEN', KEYS[2])
local first = position
local revision = length
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '0-' .. (position + 1), 'stream', KEYS[1], 'revision', revision,
    'id', ARGV[i], 'type', ARGV[2], 'data', ARGV[i + 1])
  redis.call('XADD', KEYS[1], '0-' .. (revision + 1), 'position', position, 'id', ARGV[i],
    'type', ARGV[2], 'data', ARGV[i + 1])
  position = position + 1
  revision = revision + 1
end
return {revision - 1, first, position - 1}
";

/// Entries read per `XREAD` of the live subscription.
const LIVE_COUNT: u64 = 1_000;

/// The script's `ARGV[1]`: the expected last revision, -1 for no stream.
pub(crate) fn expected_argument(expected: Expected) -> i64 {
    match expected {
        Expected::NoStream => -1,
        Expected::Exact(revision) => i64::try_from(revision).unwrap_or(i64::MAX),
    }
}

/// The script's answer `{last revision, first position, last position}`.
pub(crate) fn appended(reply: &[i64]) -> Result<Appended, BoxError> {
    match reply {
        [revision, first, last] => Ok(Appended {
            last_revision: u64::try_from(*revision).ok(),
            positions: u64::try_from(*first).ok().zip(u64::try_from(*last).ok()),
        }),
        _ => Err(format!("unexpected answer from the append script: {reply:?}").into()),
    }
}

/// The number after `0-` in an entry id.
pub(crate) fn entry_number(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id.strip_prefix(b"0-")?)
        .ok()?
        .parse()
        .ok()
}

/// One Redis connection.
pub(crate) struct Redis {
    client: Client,
    /// Multiplexed: cloning it is cheap and shares the one socket.
    connection: MultiplexedConnection,
    script: Script,
}

impl Redis {
    /// Connects to `redis://127.0.0.1:PORT/`.
    pub(crate) async fn connect(address: &str) -> Result<Self, BoxError> {
        Self::connect_client(Client::open(address)?).await
    }

    async fn connect_client(client: Client) -> Result<Self, BoxError> {
        // No response timeout: XREAD BLOCK waits as long as it takes.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self {
            client,
            connection,
            script: Script::new(APPEND_LUA),
        })
    }
}

fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

fn int(value: &Value) -> Option<u64> {
    std::str::from_utf8(bulk(value)?).ok()?.parse().ok()
}

/// An entry `[id, [field, value, ...]]` of `$all` or of a stream (`stream`
/// given: the key read, whose entries have a `position` field).
fn entry(value: &Value, stream: Option<&str>) -> Result<StoredEvent, BoxError> {
    let bad = || format!("unexpected stream entry: {value:?}");
    let Value::Array(parts) = value else {
        return Err(bad().into());
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return Err(bad().into());
    };
    let number = bulk(id).and_then(entry_number).ok_or_else(bad)?;
    let mut event = StoredEvent {
        id: Uuid::nil(),
        stream: stream.unwrap_or_default().to_owned(),
        revision: 0,
        position: 0,
        data: Bytes::new(),
    };
    if stream.is_some() {
        event.revision = number - 1;
    } else {
        event.position = number - 1;
    }
    for pair in fields.chunks_exact(2) {
        match bulk(&pair[0]).unwrap_or_default() {
            b"stream" => {
                event.stream = String::from_utf8(bulk(&pair[1]).ok_or_else(bad)?.to_vec())?;
            }
            b"revision" => event.revision = int(&pair[1]).ok_or_else(bad)?,
            b"position" => event.position = int(&pair[1]).ok_or_else(bad)?,
            b"id" => event.id = Uuid::try_parse_ascii(bulk(&pair[1]).ok_or_else(bad)?)?,
            b"data" => event.data = Bytes::copy_from_slice(bulk(&pair[1]).ok_or_else(bad)?),
            _ => {}
        }
    }
    Ok(event)
}

fn entries(value: &Value, stream: Option<&str>) -> Result<Vec<StoredEvent>, BoxError> {
    match value {
        Value::Array(items) => items.iter().map(|item| entry(item, stream)).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("unexpected XRANGE answer: {other:?}").into()),
    }
}

impl Target for Redis {
    type Subscription = RedisSubscription;

    async fn connect_another(&self) -> Result<Self, BoxError> {
        Self::connect_client(self.client.clone()).await
    }

    async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, BoxError> {
        let mut invocation = self.script.key(stream);
        invocation
            .key(ALL)
            .arg(expected_argument(expected))
            .arg(EVENT_TYPE);
        for event in &events {
            invocation
                .arg(event.id.as_hyphenated().to_string())
                .arg(&event.data);
        }
        let reply: Vec<i64> = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        appended(&reply)
    }

    async fn read_all(&self, position: u64, max: u64) -> Result<Vec<StoredEvent>, BoxError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(ALL)
            .arg(format!("0-{}", position + 1))
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.connection.clone())
            .await?;
        entries(&reply, None)
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<StoredEvent>, BoxError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut self.connection.clone())
            .await?;
        entries(&reply, Some(stream))
    }

    async fn subscribe_all(&self, from: SubscribeAt) -> Result<RedisSubscription, BoxError> {
        let own = self.connect_another().await?;
        let last = match from {
            SubscribeAt::Start => 0,
            SubscribeAt::End => {
                redis::cmd("XLEN")
                    .arg(ALL)
                    .query_async::<u64>(&mut own.connection.clone())
                    .await?
            }
        };
        Ok(RedisSubscription {
            connection: own.connection,
            last,
            buffer: VecDeque::from([Delivery::Confirmed]),
        })
    }

    async fn round_trip(&self) -> Result<(), BoxError> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection.clone())
            .await?;
        Ok(())
    }
}

/// `XREAD BLOCK` on `$all`, on a connection of its own.
pub(crate) struct RedisSubscription {
    connection: MultiplexedConnection,
    /// The number of the last entry id seen (`0-<last>`).
    last: u64,
    buffer: VecDeque<Delivery>,
}

impl EventSubscription for RedisSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BoxError> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(Some(delivery));
            }
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(LIVE_COUNT)
                .arg("BLOCK")
                .arg(0)
                .arg("STREAMS")
                .arg(ALL)
                .arg(format!("0-{}", self.last))
                .query_async(&mut self.connection)
                .await?;
            // RESP2: [[key, [entry, ...]]]; RESP3 would be a map.
            let streams = match &reply {
                Value::Array(streams) => streams.clone(),
                Value::Map(pairs) => pairs
                    .iter()
                    .map(|(key, value)| Value::Array(vec![key.clone(), value.clone()]))
                    .collect(),
                Value::Nil => continue,
                other => return Err(format!("unexpected XREAD answer: {other:?}").into()),
            };
            for stream in &streams {
                let Value::Array(parts) = stream else {
                    return Err(format!("unexpected XREAD answer: {reply:?}").into());
                };
                for event in entries(parts.get(1).unwrap_or(&Value::Nil), None)? {
                    self.last = event.position + 1;
                    self.buffer.push_back(Delivery::Event(event));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_last_revisions() {
        assert_eq!(expected_argument(Expected::NoStream), -1);
        assert_eq!(expected_argument(Expected::Exact(7)), 7);
    }

    #[test]
    fn the_script_checks_before_it_writes() {
        let check = APPEND_LUA.find("if length - 1 ~= expected").expect("check");
        let write = APPEND_LUA.find("XADD").expect("write");
        assert!(check < write);
        assert!(APPEND_LUA.contains("error_reply('WRONGVERSION"));
    }

    #[test]
    fn answers_and_entry_ids() {
        let answer = appended(&[99, 1_000, 1_099]).expect("three numbers");
        assert_eq!(answer.last_revision, Some(99));
        assert_eq!(answer.positions, Some((1_000, 1_099)));
        assert!(appended(&[1]).is_err());
        assert_eq!(entry_number(b"0-151"), Some(151));
        assert_eq!(entry_number(b"1700000000000-0x"), None);
    }

    #[test]
    fn entries_of_all_and_of_a_stream() {
        let id = Uuid::from_u128(42);
        let text = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let all = Value::Array(vec![
            text("0-8"),
            Value::Array(vec![
                text("stream"),
                text("w1-0001"),
                text("revision"),
                text("3"),
                text("id"),
                text(&id.to_string()),
                text("type"),
                text(EVENT_TYPE),
                text("data"),
                text("{}"),
            ]),
        ]);
        let event = entry(&all, None).expect("entry");
        assert_eq!(
            (event.position, event.revision, event.stream.as_str()),
            (7, 3, "w1-0001")
        );
        assert_eq!((event.id, event.data.as_ref()), (id, b"{}".as_slice()));
        let own = Value::Array(vec![
            text("0-4"),
            Value::Array(vec![text("position"), text("7"), text("data"), text("{}")]),
        ]);
        let event = entry(&own, Some("w1-0001")).expect("entry");
        assert_eq!((event.position, event.revision), (7, 3));
    }
}
