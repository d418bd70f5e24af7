//! `cairn-bench persistent`: consumer-group delivery and ack rate.
//!
//! The store is filled first (untimed): `--events` WORKLOAD.md events over 100
//! streams `ps-0000`..`ps-0099`, in batches of 1,000. Then, for 1 and for 4
//! consumers (each its own connection, like separate service instances), a
//! fresh round-robin group on `$ce-ps` starts from the beginning; every
//! consumer acks each event as it arrives. The time runs from the first
//! `consume` call until the server reports every event acked
//! (`GroupInfo.acked_total`), so it covers delivery, the acks' way back and the
//! group's bookkeeping. Each event must arrive exactly once (nothing fails, so
//! nothing may be retried).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{Client, EventData, ExpectedRevision, GroupOptions};
use serde_json::json;

use crate::BoxError;
use crate::machine::Machine;
use crate::report::{markdown_table, thousands};
use crate::server::ServerArgs;
use crate::stats::round;
use crate::workload::{event_id, payload};

/// Options of `cairn-bench persistent`.
#[derive(Debug, clap::Args)]
pub(crate) struct PersistentArgs {
    #[command(flatten)]
    server: ServerArgs,

    /// Events each group consumes.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    events: u64,

    /// Unacknowledged events each consumer may hold (0: the group's default, 64).
    #[arg(long, value_name = "N", default_value_t = 0)]
    in_flight: u32,

    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Streams the events are spread over.
const STREAMS: u64 = 100;
/// Events per append while filling.
const FILL_BATCH: u64 = 1_000;
/// Consumer counts measured.
const CONSUMER_COUNTS: [usize; 2] = [1, 4];
/// Longest a case may run (WORKLOAD.md's cap).
const CASE_CAP: Duration = Duration::from_secs(300);

/// One case's outcome.
#[derive(Debug, Clone)]
struct Case {
    consumers: usize,
    events: u64,
    seconds: f64,
    per_consumer: Vec<u64>,
}

/// Runs `cairn-bench persistent`.
pub(crate) async fn run(args: &PersistentArgs) -> Result<(), BoxError> {
    if args.events == 0 {
        return Err("--events must be at least 1".into());
    }
    let mut session = args.server.session("cairn-bench-persistent-").await?;
    let machine = Machine::describe(&session.dir);
    let address = session.address.clone();
    let client = Client::connect(address.clone()).await?;
    let info = client.info().await?;
    eprintln!(
        "server {address}: cairn {}, durability {}",
        info.version, info.durability
    );
    eprintln!("writing {} events (untimed) ...", args.events);
    fill(&client, args.events).await?;

    let mut cases = Vec::new();
    for consumers in CONSUMER_COUNTS {
        eprintln!("{consumers} consumer(s) ...");
        let case = consume_all(&client, &address, consumers, args).await?;
        eprintln!(
            "  {} events in {:.2} s: {:.0} ev/s, split {:?}",
            case.events,
            case.seconds,
            case.events as f64 / case.seconds,
            case.per_consumer
        );
        cases.push(case);
    }
    session.stop()?;

    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|case| {
            vec![
                case.consumers.to_string(),
                thousands(case.events as f64),
                format!("{:.2}", case.seconds),
                thousands(case.events as f64 / case.seconds),
                format!("{:?}", case.per_consumer),
            ]
        })
        .collect();
    println!(
        "cairn-bench persistent: {}, server {} ({})\n",
        machine.summary(),
        info.version,
        info.durability
    );
    println!(
        "{}",
        markdown_table(
            &[
                "consumers",
                "events",
                "seconds",
                "delivered+acked ev/s",
                "split"
            ],
            &rows
        )
    );
    if let Some(path) = &args.json {
        let figures = json!({
            "benchmark": "cairn-bench persistent",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": machine.to_json(),
            "server": { "version": info.version, "durability": info.durability, "address": address },
            "cases": cases.iter().map(|case| json!({
                "consumers": case.consumers,
                "events": case.events,
                "seconds": case.seconds,
                "events_per_second": round(case.events as f64 / case.seconds),
                "per_consumer": case.per_consumer,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// Writes `events` WORKLOAD.md events round-robin over the `ps-` streams.
async fn fill(client: &Client, events: u64) -> Result<(), BoxError> {
    let mut written = 0;
    let mut batch_number = 0u64;
    while written < events {
        let stream = format!("ps-{:04}", batch_number % STREAMS);
        let count = FILL_BATCH.min(events - written);
        let batch: Vec<EventData> = (written..written + count)
            .map(|seq| {
                let id = event_id(7, 0, seq);
                EventData::json_text(crate::workload::EVENT_TYPE, payload(&id, &stream, seq)).id(id)
            })
            .collect();
        client.append(stream, ExpectedRevision::Any, batch).await?;
        written += count;
        batch_number += 1;
    }
    Ok(())
}

/// One case: a fresh group, `consumers` consumers acking everything.
async fn consume_all(
    client: &Client,
    address: &str,
    consumers: usize,
    args: &PersistentArgs,
) -> Result<Case, BoxError> {
    let group = format!("bench-{consumers}");
    client
        .create_group(group.clone(), "$ce-ps", GroupOptions::default())
        .await?;
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..consumers {
        let connection = Client::connect(address.to_owned()).await?;
        let group = group.clone();
        let total = Arc::clone(&total);
        let (events, in_flight) = (args.events, args.in_flight);
        tasks.spawn(async move {
            let mut consumer = connection
                .consume(group, format!("consumer-{n}"), in_flight)
                .await?;
            let mut seen = HashSet::new();
            while total.load(Ordering::SeqCst) < events {
                let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
                let Ok(next) = next else { continue };
                let Some(delivery) = next? else { break };
                if delivery.retry_count != 0 || !seen.insert(delivery.event.id) {
                    return Err::<u64, BoxError>(
                        format!("event {} delivered twice", delivery.event.id).into(),
                    );
                }
                delivery.ack().await?;
                total.fetch_add(1, Ordering::SeqCst);
            }
            consumer.close().await?;
            Ok(seen.len() as u64)
        });
    }
    // Done when the server has every ack, not when the consumers sent them.
    loop {
        let info = client.group_info(group.clone()).await?;
        if info.acked_total >= args.events {
            break;
        }
        if start.elapsed() > CASE_CAP {
            return Err(format!(
                "{consumers} consumer(s): only {} of {} acked within {CASE_CAP:?}",
                info.acked_total, args.events
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut per_consumer = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        per_consumer.push(joined??);
    }
    if per_consumer.iter().sum::<u64>() != args.events {
        return Err(format!(
            "consumers received {per_consumer:?}, expected {} in all",
            args.events
        )
        .into());
    }
    client.delete_group(group).await?;
    Ok(Case {
        consumers,
        events: args.events,
        seconds,
        per_consumer,
    })
}
