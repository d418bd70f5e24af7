//! The smallest event-sourced system on Cairn: two services reduce the same
//! stream of integers, one to their sum and one to their product.
//!
//! Each service has its own connection and its own state, built only from the
//! log: at start it replays the stream `numbers` from the first event, then it
//! follows it live. Nothing is shared but the stream.
//!
//! ```sh
//! cargo run --release -p cairn-server --bin cairn     # terminal 1
//! cargo run --example sum_and_product -- 3 4 5        # terminal 2: appends 3, 4, 5
//! cargo run --example sum_and_product -- 2            # replays 3, 4, 5, then adds 2
//! cargo run --example sum_and_product -- --follow     # replays, then prints live
//! ```
//!
//! `CAIRN_ADDR` points elsewhere (default `http://127.0.0.1:7070`).

use std::error::Error;

use cairn_client::{Client, EventData, ExpectedRevision, SubscribeOptions, SubscriptionMessage};
use tokio::sync::watch;

/// The stream both services reduce.
const STREAM: &str = "numbers";
/// The type of each event; its data is the integer as JSON text, e.g. `42`.
const EVENT_TYPE: &str = "NumberAdded";

/// How a service folds one integer into its state.
type Step = fn(i64, i64) -> i64;

/// A service: folds every integer of the stream into `state` with `step`, and
/// publishes the revision it has reduced up to with the state at that revision,
/// so `main` knows when it has seen the numbers it appended.
async fn reduce(
    name: &'static str,
    address: String,
    initial: i64,
    step: Step,
    reduced_up_to: watch::Sender<Option<(u64, i64)>>,
) -> Result<(), cairn_client::Error> {
    let client = Client::connect(address).await?;
    let mut state = initial;
    let mut live = false;
    let mut numbers = client.subscribe_resilient(STREAM, SubscribeOptions::from_start());
    loop {
        match numbers.next().await? {
            SubscriptionMessage::Event(event) if event.event_type == EVENT_TYPE => {
                let number: i64 = event.json()?;
                state = step(state, number);
                if live {
                    println!("{name}: +{number} -> {state} (live)");
                }
                reduced_up_to.send_replace(Some((event.revision, state)));
            }
            SubscriptionMessage::CaughtUp { .. } if !live => {
                live = true;
                println!("{name}: rebuilt from the log: {state}");
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let address =
        std::env::var("CAIRN_ADDR").unwrap_or_else(|_| "http://127.0.0.1:7070".to_owned());
    let mut follow = false;
    let mut numbers = Vec::new();
    for argument in std::env::args().skip(1) {
        if argument == "--follow" {
            follow = true;
        } else {
            let number: i64 = argument.parse().map_err(|_| {
                format!("'{argument}' is not an integer; pass integers or --follow")
            })?;
            numbers.push(number);
        }
    }

    let mut progress = Vec::new();
    let services: [(&'static str, i64, Step); 2] = [
        ("sum", 0, i64::saturating_add),
        ("product", 1, i64::saturating_mul),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (name, initial, step) in services {
        let (sender, receiver) = watch::channel(None);
        progress.push((name, receiver));
        tasks.spawn(reduce(name, address.clone(), initial, step, sender));
    }

    // The writer: its own connection, one append per number.
    let writer = Client::connect(address).await?;
    let mut last = None;
    for number in numbers {
        let event = EventData::json(EVENT_TYPE, &number)?;
        let result = writer
            .append(STREAM, ExpectedRevision::Any, vec![event])
            .await?;
        last = result.current_revision;
    }

    if follow {
        // Runs until a service fails or Ctrl-C.
        tokio::select! {
            Some(ended) = tasks.join_next() => ended??,
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }
    // Waits until both services have reduced what this run appended (or what
    // the stream held, if nothing was appended), then exits.
    let target = match last {
        Some(revision) => Some(revision),
        None => match writer.get_stream_metadata(STREAM).await {
            Ok(info) => info.last_revision,
            Err(cairn_client::Error::StreamNotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        },
    };
    if let Some(target) = target {
        for (name, receiver) in &mut progress {
            let reduced = receiver
                .wait_for(|reduced| reduced.is_some_and(|(revision, _)| revision >= target))
                .await?;
            if let Some((revision, state)) = *reduced {
                println!("{name} of revisions 0..={revision}: {state}");
            }
        }
    } else {
        println!("the stream '{STREAM}' is empty: pass some integers");
    }
    Ok(())
}
