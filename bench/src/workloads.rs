//! The workloads W1-W6 of `shared/WORKLOAD.md`, the null loop and the trivial
//! round trip, written against [`Target`] only.
//!
//! Every append carries the exact expected revision of its stream and the
//! revision that comes back is checked; every event is built (id, stream name,
//! 256-byte JSON with `t` = the monotonic clock) inside the timed loop. An
//! operation's latency runs from building its events to the acknowledgement
//! (or, for reads, from the call to the last event received).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::BoxError;
use crate::stats::{Latency, round, round_to};
use crate::target::{Appended, Expected, NewEvent, Target};
use crate::workload::{event_id, payload, workload_stream};

/// W1 and W2: events appended.
pub(crate) const SINGLE_EVENTS: u64 = 50_000;
/// W1 and W2: streams written.
pub(crate) const SINGLE_STREAMS: u64 = 1_000;
/// W2: clients, each with its own connection.
pub(crate) const W2_CLIENTS: u64 = 16;
/// W2: events each client appends (50,000 / 16 divides exactly).
const W2_PER_CLIENT: u64 = SINGLE_EVENTS / W2_CLIENTS;
const _: () = assert!(W2_PER_CLIENT * W2_CLIENTS == SINGLE_EVENTS);
/// W3: batches appended.
pub(crate) const W3_BATCHES: u64 = 500;
/// W3: events per batch.
pub(crate) const W3_BATCH: u64 = 100;
/// W3: streams written.
pub(crate) const W3_STREAMS: u64 = 50;
/// W4: events per page of `$all`.
pub(crate) const W4_PAGE: u64 = 1_000;
/// W5: streams read (`w3-0000`..`w3-0019`).
pub(crate) const W5_STREAMS: u64 = 20;
/// W6: events appended and delivered.
pub(crate) const W6_EVENTS: u64 = 1_000;
/// Round trips timed for the protocol floor.
pub(crate) const ROUND_TRIPS: u64 = 2_000;

/// The deterministic-id "case" of each workload (see [`event_id`]).
pub(crate) mod case {
    /// W1.
    pub(crate) const W1: u32 = 1;
    /// W2.
    pub(crate) const W2: u32 = 2;
    /// W3.
    pub(crate) const W3: u32 = 3;
    /// W6.
    pub(crate) const W6: u32 = 6;
    /// The `subscribe` benchmark's live phase.
    pub(crate) const LIVE: u32 = 7;
    /// Fills that stand in for W1/W2/W3 when `--only` leaves them out (plus
    /// the workload's number).
    pub(crate) const FILL: u32 = 20;
    /// The null loop (nothing is written).
    pub(crate) const NULL: u32 = 10;
    /// `cairn-bench large`.
    pub(crate) const LARGE: u32 = 30;
    /// `cairn-bench many-streams`.
    pub(crate) const MANY_STREAMS: u32 = 31;
}

/// What one workload measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// `W1`..`W6`, `null`, `rtt`, or a `subscribe` phase.
    pub(crate) id: String,
    /// One line saying what ran.
    pub(crate) what: String,
    /// Events written or read.
    pub(crate) events: u64,
    /// Appends, reads or round trips.
    pub(crate) operations: u64,
    /// Wall time from the common start to the last finish.
    pub(crate) seconds: f64,
    /// Per operation; W6: append -> delivery.
    pub(crate) latency: Latency,
    /// W6: the durable appends themselves, for "delivery adds".
    pub(crate) append_latency: Option<Latency>,
    /// Stopped at the time cap before finishing.
    pub(crate) capped: bool,
}

impl Measured {
    /// Events per second.
    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Operations per second.
    pub(crate) fn operations_per_second(&self) -> f64 {
        self.operations as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// W6: how much later than the acknowledgement the median event arrives.
    pub(crate) fn delivery_adds_ms(&self) -> Option<f64> {
        self.append_latency
            .map(|append| (self.latency.p50_us - append.p50_us) / 1_000.0)
    }

    /// The figures as a JSON object.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "what": self.what,
            "events": self.events,
            "operations": self.operations,
            "seconds": round_to(self.seconds, 3),
            "events_per_second": round(self.events_per_second()),
            "operations_per_second": round(self.operations_per_second()),
            "latency": self.latency.to_json(),
            "append_latency": self.append_latency.map(Latency::to_json),
            "delivery_adds_ms": self.delivery_adds_ms().map(|ms| round_to(ms, 3)),
            "capped": self.capped,
        })
    }
}

/// Nanoseconds since `start`.
pub(crate) fn nanos_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Checks that an append to `stream` with `expected` and `count` events left the
/// stream at the revision that follows.
pub(crate) fn check_appended(
    stream: &str,
    expected: Expected,
    count: u64,
    appended: Appended,
) -> Result<u64, BoxError> {
    let want = expected.last_after(count);
    if appended.last_revision == Some(want) {
        Ok(want)
    } else {
        Err(format!(
            "append of {count} to {stream} (expected {expected:?}) answered last revision {:?}, \
             not {want}",
            appended.last_revision
        )
        .into())
    }
}

/// W1's expectation for event `k`: stream `k mod 1000` already holds
/// `k div 1000` events.
fn w1_expected(k: u64) -> Expected {
    Expected::after((k / SINGLE_STREAMS).checked_sub(1))
}

/// W3's expectation for batch `b`: stream `b mod 50` already holds
/// `b div 50` batches.
fn w3_expected(b: u64) -> Expected {
    Expected::after((b / W3_STREAMS * W3_BATCH).checked_sub(1))
}

/// The null loop: W1's client loop (stream name, expectation, id, 256-byte
/// JSON) with the store call replaced by nothing.
pub(crate) fn null_loop() -> Measured {
    let mut latencies = Vec::with_capacity(SINGLE_EVENTS as usize);
    let start = Instant::now();
    for k in 0..SINGLE_EVENTS {
        let began = Instant::now();
        let stream = workload_stream("w1", k % SINGLE_STREAMS);
        let expected = w1_expected(k);
        let id = event_id(case::NULL, 0, k);
        let data = payload(&id, &stream, k);
        std::hint::black_box((stream, expected, NewEvent { id, data }));
        latencies.push(nanos_since(began));
    }
    Measured {
        id: "null".to_owned(),
        what: "null loop: W1's client loop without the store call".to_owned(),
        events: SINGLE_EVENTS,
        operations: SINGLE_EVENTS,
        seconds: start.elapsed().as_secs_f64(),
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped: false,
    }
}

/// The protocol floor: the cheapest call to the store and back, one at a time.
pub(crate) async fn round_trips<T: Target>(target: &T) -> Result<Measured, BoxError> {
    let mut latencies = Vec::with_capacity(ROUND_TRIPS as usize);
    let start = Instant::now();
    for _ in 0..ROUND_TRIPS {
        let began = Instant::now();
        target.round_trip().await?;
        latencies.push(nanos_since(began));
    }
    Ok(Measured {
        id: "rtt".to_owned(),
        what: "trivial round trip (Server.Info), sequential".to_owned(),
        events: 0,
        operations: ROUND_TRIPS,
        seconds: start.elapsed().as_secs_f64(),
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped: false,
    })
}

/// W1: one client, 50,000 sequential single-event appends; event `k` goes to
/// `w1-{k mod 1000}` with expected revision `k div 1000 - 1`.
pub(crate) async fn w1<T: Target>(target: &T, cap: Duration) -> Result<Measured, BoxError> {
    let mut latencies = Vec::with_capacity(SINGLE_EVENTS as usize);
    let mut capped = false;
    let start = Instant::now();
    for k in 0..SINGLE_EVENTS {
        let began = Instant::now();
        if began.duration_since(start) >= cap {
            capped = true;
            break;
        }
        let stream = workload_stream("w1", k % SINGLE_STREAMS);
        let expected = w1_expected(k);
        let id = event_id(case::W1, 0, k);
        let data = payload(&id, &stream, k);
        let appended = target
            .append(&stream, expected, vec![NewEvent { id, data }])
            .await?;
        check_appended(&stream, expected, 1, appended)?;
        latencies.push(nanos_since(began));
    }
    let seconds = start.elapsed().as_secs_f64();
    let appends = latencies.len() as u64;
    Ok(Measured {
        id: "W1".to_owned(),
        what: "1 client, sequential single-event appends, 1,000 streams".to_owned(),
        events: appends,
        operations: appends,
        seconds,
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped,
    })
}

/// What one W2 client did.
struct ClientOutcome {
    latencies: Vec<u64>,
    finished: Instant,
    capped: bool,
}

/// W2: 16 clients with their own connections; client `c` owns the streams
/// `w2-s` with `s mod 16 = c` and appends single events round-robin over them,
/// 50,000 events in all. Time runs from the common start to the last finish.
pub(crate) async fn w2<T: Target>(target: &T, cap: Duration) -> Result<Measured, BoxError> {
    let barrier = Arc::new(Barrier::new(W2_CLIENTS as usize + 1));
    let mut tasks = Vec::new();
    for c in 0..W2_CLIENTS {
        let client = target.connect_another().await?;
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            w2_client(&client, c, W2_PER_CLIENT, &barrier, cap).await
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(SINGLE_EVENTS as usize);
    let mut finished = start;
    let mut capped = false;
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| format!("W2 client: {error}"))??;
        latencies.extend(outcome.latencies);
        finished = finished.max(outcome.finished);
        capped |= outcome.capped;
    }
    let appends = latencies.len() as u64;
    Ok(Measured {
        id: "W2".to_owned(),
        what: "16 clients (own connections), single-event appends, 1,000 streams".to_owned(),
        events: appends,
        operations: appends,
        seconds: finished.duration_since(start).as_secs_f64(),
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped,
    })
}

async fn w2_client<T: Target>(
    target: &T,
    c: u64,
    count: u64,
    barrier: &Barrier,
    cap: Duration,
) -> Result<ClientOutcome, BoxError> {
    let streams: Vec<String> = (c..SINGLE_STREAMS)
        .step_by(W2_CLIENTS as usize)
        .map(|s| workload_stream("w2", s))
        .collect();
    let mut last: Vec<Option<u64>> = vec![None; streams.len()];
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut capped = false;
    let writer = usize::try_from(c).unwrap_or(usize::MAX);
    barrier.wait().await;
    let start = Instant::now();
    for i in 0..count {
        let began = Instant::now();
        if began.duration_since(start) >= cap {
            capped = true;
            break;
        }
        let k = usize::try_from(i % streams.len() as u64).unwrap_or(0);
        let stream = &streams[k];
        let expected = Expected::after(last[k]);
        let id = event_id(case::W2, writer, i);
        let data = payload(&id, stream, i);
        let appended = target
            .append(stream, expected, vec![NewEvent { id, data }])
            .await?;
        last[k] = Some(check_appended(stream, expected, 1, appended)?);
        latencies.push(nanos_since(began));
    }
    Ok(ClientOutcome {
        latencies,
        finished: Instant::now(),
        capped,
    })
}

/// W3: one client, 500 batches of 100 events with one expected revision each;
/// batch `b` goes to `w3-{b mod 50}`.
pub(crate) async fn w3<T: Target>(target: &T, cap: Duration) -> Result<Measured, BoxError> {
    let mut latencies = Vec::with_capacity(W3_BATCHES as usize);
    let mut capped = false;
    let start = Instant::now();
    for b in 0..W3_BATCHES {
        let began = Instant::now();
        if began.duration_since(start) >= cap {
            capped = true;
            break;
        }
        let stream = workload_stream("w3", b % W3_STREAMS);
        let expected = w3_expected(b);
        let events = (b * W3_BATCH..(b + 1) * W3_BATCH)
            .map(|seq| {
                let id = event_id(case::W3, 0, seq);
                let data = payload(&id, &stream, seq);
                NewEvent { id, data }
            })
            .collect();
        let appended = target.append(&stream, expected, events).await?;
        check_appended(&stream, expected, W3_BATCH, appended)?;
        latencies.push(nanos_since(began));
    }
    let seconds = start.elapsed().as_secs_f64();
    let batches = latencies.len() as u64;
    Ok(Measured {
        id: "W3".to_owned(),
        what: "1 client, batches of 100 events, 50 streams".to_owned(),
        events: batches * W3_BATCH,
        operations: batches,
        seconds,
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped,
    })
}

/// W4: reads `$all` from the start in pages of 1,000 and checks the order:
/// positions must be 0, 1, 2, ... with no gap. `expected` is how many events
/// the store must hold.
pub(crate) async fn w4<T: Target>(
    target: &T,
    expected: u64,
    cap: Duration,
) -> Result<Measured, BoxError> {
    let mut latencies = Vec::new();
    let mut next = 0u64;
    let mut capped = false;
    let start = Instant::now();
    loop {
        let began = Instant::now();
        if began.duration_since(start) >= cap {
            capped = true;
            break;
        }
        let page = target.read_all(next, W4_PAGE).await?;
        for event in &page {
            if event.position != next {
                return Err(format!(
                    "W4: $all out of order: position {} where {next} was due",
                    event.position
                )
                .into());
            }
            next += 1;
        }
        latencies.push(nanos_since(began));
        if (page.len() as u64) < W4_PAGE {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if !capped && next != expected {
        return Err(format!("W4: read {next} events from $all, the store holds {expected}").into());
    }
    Ok(Measured {
        id: "W4".to_owned(),
        what: format!(
            "read $all from the start in pages of 1,000 ({expected} events), order checked"
        ),
        events: next,
        operations: latencies.len() as u64,
        seconds,
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped,
    })
}

/// W5: reads `w3-0000`..`w3-0019` (1,000 events each) from the start, one
/// after the other; the figure is the median read.
pub(crate) async fn w5<T: Target>(target: &T) -> Result<Measured, BoxError> {
    let per_stream = W3_BATCHES / W3_STREAMS * W3_BATCH;
    let mut latencies = Vec::with_capacity(W5_STREAMS as usize);
    let mut events = 0;
    let start = Instant::now();
    for s in 0..W5_STREAMS {
        let stream = workload_stream("w3", s);
        let began = Instant::now();
        let read = target.read_stream(&stream).await?;
        latencies.push(nanos_since(began));
        let in_order = read
            .iter()
            .enumerate()
            .all(|(i, event)| event.revision == i as u64 && event.stream == stream);
        if read.len() as u64 != per_stream || !in_order {
            return Err(format!(
                "W5: {stream} returned {} events (in order: {in_order}), expected revisions 0..{per_stream}",
                read.len()
            )
            .into());
        }
        events += read.len() as u64;
    }
    Ok(Measured {
        id: "W5".to_owned(),
        what: "read w3-0000..w3-0019 (1,000 events each) from the start".to_owned(),
        events,
        operations: W5_STREAMS,
        seconds: start.elapsed().as_secs_f64(),
        latency: Latency::from_nanos(latencies),
        append_latency: None,
        capped: false,
    })
}

/// The writer half of W6 (and of `cairn-bench subscribe`'s live phase): `count`
/// single-event appends to `stream`, each waited for. Returns the append
/// latencies.
pub(crate) async fn single_appends<T: Target>(
    target: &T,
    case: u32,
    stream: &str,
    count: u64,
) -> Result<Vec<u64>, BoxError> {
    batched_appends(target, case, stream, count, 1).await
}

/// `count` events to `stream` in appends of `batch` events (the last may hold
/// fewer), each waited for, revisions 0.. and ids `event_id(case, 0, seq)`;
/// every event's `t` is taken just before its append call. Returns the
/// latency of each append call.
pub(crate) async fn batched_appends<T: Target>(
    target: &T,
    case: u32,
    stream: &str,
    count: u64,
    batch: u64,
) -> Result<Vec<u64>, BoxError> {
    let batch = batch.max(1);
    let mut latencies = Vec::with_capacity(usize::try_from(count.div_ceil(batch)).unwrap_or(0));
    let mut last = None;
    let mut seq = 0;
    while seq < count {
        let began = Instant::now();
        let expected = Expected::after(last);
        let events: Vec<NewEvent> = (seq..count.min(seq + batch))
            .map(|seq| {
                let id = event_id(case, 0, seq);
                let data = payload(&id, stream, seq);
                NewEvent { id, data }
            })
            .collect();
        let size = events.len() as u64;
        let appended = target.append(stream, expected, events).await?;
        last = Some(check_appended(stream, expected, size, appended)?);
        latencies.push(nanos_since(began));
        seq += size;
    }
    Ok(latencies)
}

/// Writes what W1, W2 and W3 would have written (same streams, event counts
/// and revisions), in large batches, untimed: the stand-in when `--only` runs
/// W4 or W5 without them.
/// `workload` is 1, 2 or 3.
pub(crate) async fn fill<T: Target>(target: &T, workload: u32) -> Result<(), BoxError> {
    let prefix = format!("w{workload}");
    let (streams, per_stream) = if workload == 3 {
        (W3_STREAMS, W3_BATCHES / W3_STREAMS * W3_BATCH)
    } else {
        (SINGLE_STREAMS, SINGLE_EVENTS / SINGLE_STREAMS)
    };
    for s in 0..streams {
        let stream = workload_stream(&prefix, s);
        let writer = usize::try_from(s).unwrap_or(usize::MAX);
        let events = (0..per_stream)
            .map(|seq| {
                let id = event_id(case::FILL + workload, writer, seq);
                let data = payload(&id, &stream, seq);
                NewEvent { id, data }
            })
            .collect();
        let appended = target.append(&stream, Expected::NoStream, events).await?;
        check_appended(&stream, Expected::NoStream, per_stream, appended)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w1_expectations_follow_the_workload() {
        assert_eq!(w1_expected(0), Expected::NoStream);
        assert_eq!(w1_expected(999), Expected::NoStream);
        assert_eq!(w1_expected(1_000), Expected::Exact(0));
        assert_eq!(w1_expected(1_999), Expected::Exact(0));
        assert_eq!(w1_expected(49_999), Expected::Exact(48));
    }

    #[test]
    fn w3_expectations_follow_the_workload() {
        assert_eq!(w3_expected(0), Expected::NoStream);
        assert_eq!(w3_expected(49), Expected::NoStream);
        assert_eq!(w3_expected(50), Expected::Exact(99));
        assert_eq!(w3_expected(499), Expected::Exact(899));
        // Ten batches of 100 per stream: W5 reads 1,000 events from each.
        assert_eq!(W3_BATCHES / W3_STREAMS * W3_BATCH, 1_000);
    }

    #[test]
    fn w2_clients_share_streams_and_events() {
        let streams: u64 = (0..W2_CLIENTS)
            .map(|c| (c..SINGLE_STREAMS).step_by(W2_CLIENTS as usize).count() as u64)
            .sum();
        assert_eq!(streams, SINGLE_STREAMS);
        assert_eq!(W2_PER_CLIENT * W2_CLIENTS, SINGLE_EVENTS);
    }
}
