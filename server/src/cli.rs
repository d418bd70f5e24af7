//! The `cairn` command line: `cairn` (or `cairn serve`) runs the daemon; `cairn
//! append|read|streams|info` poke a running server through `cairn-client`.

use std::path::PathBuf;

use cairn_client::{Client, EventData, ExpectedRevision, ReadFrom, ReadOptions};
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::settings::SettingsArgs;

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

fn escape_json(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    escaped.push('"');
    for character in text.chars() {
        match character {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                escaped.push_str(&format!("\\u{:04x}", control as u32))
            }
            other => escaped.push(other),
        }
    }
    escaped.push('"');
    escaped
}

/// Runs a client subcommand, printing to stdout. `Serve` is handled by the binary.
pub async fn run_client_command(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve => Err("serve is not a client command".into()),
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
            println!(
                "{{\"current_revision\":{},\"positions\":{},\"idempotent_replay\":{}}}",
                result
                    .current_revision
                    .map_or("null".to_owned(), |r| r.to_string()),
                result
                    .positions
                    .map_or("null".to_owned(), |(first, last)| format!(
                        "[{first},{last}]"
                    )),
                result.idempotent_replay
            );
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
                let data = String::from_utf8_lossy(&event.data);
                let data = if event.content_type == "application/json" {
                    data.into_owned()
                } else {
                    escape_json(&data)
                };
                println!(
                    "{{\"position\":{},\"stream\":{},\"revision\":{},\"id\":\"{}\",\"type\":{},\"data\":{}}}",
                    event.position,
                    escape_json(&event.stream),
                    event.revision,
                    event.id,
                    escape_json(&event.event_type),
                    data
                );
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
            use tonic_health::pb::health_check_response::ServingStatus;
            let channel = tonic::transport::Endpoint::from_shared(addr)?
                .connect()
                .await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let response = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            let status = response.into_inner().status();
            println!("{}", status.as_str_name());
            if status == ServingStatus::Serving {
                Ok(())
            } else {
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

    #[test]
    fn json_escaping() {
        assert_eq!(escape_json("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
