//! The `cairn` command line: `cairn` (or `cairn serve`) runs the daemon; `cairn
//! append|read|streams|info|health` poke a running server through `cairn-client`;
//! `cairn repair` works on a stopped server's data directory (`cairn-storage`).
//! Output is JSON (serde_json) or plain text lines.

use std::path::{Path, PathBuf};

use cairn_client::{Client, EventData, ExpectedRevision, ReadFrom, ReadOptions};
use cairn_server::SettingsArgs;
use cairn_storage::Store;
use clap::{Parser, Subcommand};
use serde::Serialize;
use uuid::Uuid;

/// Cairn: an event store. Without a subcommand, runs the server.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// Server settings (used by `serve`, the default command).
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// What to do; default: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Append one event to a stream.
    Append {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "CAIRN_ADDR")]
        addr: String,
        /// Target stream.
        stream: String,
        /// Event type.
        event_type: String,
        /// Event data: JSON text, or @path to read a file.
        data: String,
        /// Expected revision: any, no-stream, exists, or a number.
        #[arg(long, default_value = "any")]
        expected: String,
        /// Event id (default: random).
        #[arg(long)]
        id: Option<Uuid>,
    },
    /// Read a stream, $all, $ce-<category> or $et-<type>; prints one JSON line per event.
    Read {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "CAIRN_ADDR")]
        addr: String,
        /// What to read.
        stream: String,
        /// Newest first.
        #[arg(long)]
        backwards: bool,
        /// Start at this revision (stream) or position ($all, $ce-, $et-).
        #[arg(long)]
        from: Option<u64>,
        /// Most events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List streams by name prefix.
    Streams {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "CAIRN_ADDR")]
        addr: String,
        /// Name prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most streams.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the server's grpc.health.v1 status; exits 0 when SERVING.
    Health {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "CAIRN_ADDR")]
        addr: String,
    },
    /// Show server version, head position and counts.
    Info {
        /// Server address.
        #[arg(long, default_value = "http://127.0.0.1:7070", env = "CAIRN_ADDR")]
        addr: String,
    },
    /// Repair a data directory the server refuses to open as damaged: keeps
    /// every event before the damage and reports what was lost (README,
    /// "Damaged data directory"). Works on the directory itself; stop the
    /// server first (a directory in use is refused).
    Repair {
        /// The data directory [default: the server's, from the configuration].
        #[arg(long, env = "CAIRN_DATA")]
        data: Option<PathBuf>,
    },
}

/// Parses `any`, `no-stream`, `exists` or a revision.
pub fn parse_expected(text: &str) -> Result<ExpectedRevision, String> {
    match text {
        "any" => Ok(ExpectedRevision::Any),
        "no-stream" | "no_stream" => Ok(ExpectedRevision::NoStream),
        "exists" | "stream-exists" => Ok(ExpectedRevision::StreamExists),
        number => number.parse().map(ExpectedRevision::Exact).map_err(|_| {
            format!("expected revision '{text}' is not any, no-stream, exists or a number")
        }),
    }
}

/// The line `cairn append` prints.
#[derive(Serialize)]
struct AppendLine {
    current_revision: Option<u64>,
    positions: Option<[u64; 2]>,
    idempotent_replay: bool,
}

/// The line `cairn read` prints per event.
#[derive(Serialize)]
struct EventLine<'a> {
    position: u64,
    stream: &'a str,
    revision: u64,
    id: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    data: serde_json::Value,
}

/// Prints one value as a line of JSON.
fn print_json(value: &impl Serialize) -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Runs `cairn repair` on `data`, printing what it found and did as
/// `key value` lines.
pub fn run_repair(data: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let report = Store::repair(data)?;
    match &report.damage {
        None => println!("nothing to repair: {} opens as it is", data.display()),
        Some(damage) => println!("damage {damage}"),
    }
    let unknown = || "unknown".to_owned();
    println!(
        "head_before {}",
        report
            .head_before
            .map_or_else(unknown, |head| head.to_string())
    );
    println!("head_after {}", report.head_after);
    println!(
        "lost {}",
        report.lost.map_or_else(unknown, |lost| lost.to_string())
    );
    if let Some(backup) = &report.backup {
        println!("backup {}", backup.display());
    }
    Ok(())
}

/// Runs a client subcommand, printing to stdout. `Serve` and `Repair` are
/// handled by the binary.
pub async fn run_client_command(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve => Err("serve is not a client command".into()),
        Command::Repair { .. } => Err("repair is not a client command".into()),
        Command::Append {
            addr,
            stream,
            event_type,
            data,
            expected,
            id,
        } => {
            let expected = parse_expected(&expected)?;
            let data = match data.strip_prefix('@') {
                Some(path) => std::fs::read(PathBuf::from(path))?,
                None => data.into_bytes(),
            };
            let mut event = EventData::json_text(event_type, data);
            if let Some(id) = id {
                event = event.id(id);
            }
            let client = Client::connect(addr).await?;
            let result = client.append(stream, expected, vec![event]).await?;
            print_json(&AppendLine {
                current_revision: result.current_revision,
                positions: result.positions.map(|(first, last)| [first, last]),
                idempotent_replay: result.idempotent_replay,
            })?;
            Ok(())
        }
        Command::Read {
            addr,
            stream,
            backwards,
            from,
            count,
        } => {
            let mut options = if backwards {
                ReadOptions::backwards()
            } else {
                ReadOptions::forwards()
            };
            if let Some(from) = from {
                options = options.from(ReadFrom::At(from));
            }
            if let Some(count) = count {
                options = options.max_count(count);
            }
            let client = Client::connect(addr).await?;
            let mut events = client.read(stream, options).await?;
            while let Some(event) = events.next_event().await? {
                // JSON data is embedded as JSON; anything else (or JSON that
                // does not parse) as a string.
                let data = (event.content_type == "application/json")
                    .then(|| serde_json::from_slice::<serde_json::Value>(&event.data).ok())
                    .flatten()
                    .unwrap_or_else(|| {
                        serde_json::Value::String(String::from_utf8_lossy(&event.data).into_owned())
                    });
                print_json(&EventLine {
                    position: event.position,
                    stream: &event.stream,
                    revision: event.revision,
                    id: event.id.to_string(),
                    event_type: &event.event_type,
                    data,
                })?;
            }
            Ok(())
        }
        Command::Streams {
            addr,
            prefix,
            limit,
        } => {
            let client = Client::connect(addr).await?;
            let page = client.list_streams(&prefix, None, limit).await?;
            for stream in page.streams {
                println!(
                    "{}\t{:?}\tlast_revision={}",
                    stream.stream,
                    stream.state,
                    stream
                        .last_revision
                        .map_or("-".to_owned(), |r| r.to_string())
                );
            }
            Ok(())
        }
        Command::Health { addr } => {
            let client = Client::connect(addr).await?;
            if client.is_serving().await? {
                println!("SERVING");
                Ok(())
            } else {
                println!("NOT_SERVING");
                Err("not serving".into())
            }
        }
        Command::Info { addr } => {
            let client = Client::connect(addr).await?;
            let info = client.info().await?;
            println!(
                "version {}\nhead_position {}\nstreams {}\nevents {}\nuptime_seconds {}\ndurability {}",
                info.version,
                info.head_position,
                info.stream_count,
                info.event_count,
                info.uptime_seconds,
                info.durability
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_revisions_parse() {
        assert_eq!(parse_expected("any"), Ok(ExpectedRevision::Any));
        assert_eq!(parse_expected("no-stream"), Ok(ExpectedRevision::NoStream));
        assert_eq!(parse_expected("exists"), Ok(ExpectedRevision::StreamExists));
        assert_eq!(parse_expected("12"), Ok(ExpectedRevision::Exact(12)));
        assert!(parse_expected("soon").is_err());
    }
}
