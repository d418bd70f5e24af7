//! The `cairn` command line: `cairn` (or `cairn serve`) runs the daemon; `cairn
//! append|read|streams|info|health` poke a running server through `cairn-client`;
//! `cairn repair` works on a stopped server's data directory (`cairn-storage`);
//! `cairn dev-certs` writes certificates for trying TLS locally.
//! Output is JSON (serde_json) or plain text lines.
//!
//! Every client subcommand reaches the server as the global [`ConnectArgs`]
//! say (`--addr`, `--ca-file`, `--cert-file`, `--key-file`, `--user`,
//! `--password`, `--token`, or their `CAIRN_*` variables); a subcommand
//! must not declare an `--addr` of its own (clap refuses duplicate names).

use std::path::{Path, PathBuf};

use cairn_client::{Client, EventData, ExpectedRevision, ReadFrom, ReadOptions};
use cairn_server::{Secret, SettingsArgs};
use cairn_storage::Store;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use uuid::Uuid;

/// Cairn: an event store. Without a subcommand, runs the server.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None)]
pub struct Cli {
    /// Server settings (used by `serve`, the default command).
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// How client subcommands reach the server.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// What to do; default: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The default server address of client subcommands.
const DEFAULT_ADDRESS: &str = "http://127.0.0.1:7070";

/// How client subcommands reach the server: address, TLS and credentials.
/// Global: they go before or after the subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// Server address: http://host:port, or https://host:port for TLS (also
    /// CAIRN_SERVER) [default: http://127.0.0.1:7070].
    #[arg(
        long = "addr",
        visible_alias = "server",
        env = "CAIRN_ADDR",
        global = true,
        help_heading = "Client connection"
    )]
    pub addr: Option<String>,
    /// CA certificates (PEM) to trust for an https:// server [default: the system's].
    #[arg(
        long,
        env = "CAIRN_CA_FILE",
        global = true,
        help_heading = "Client connection"
    )]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires one (mutual TLS).
    #[arg(
        long,
        env = "CAIRN_CERT_FILE",
        global = true,
        help_heading = "Client connection"
    )]
    pub cert_file: Option<PathBuf>,
    /// Key (PEM) of --cert-file.
    #[arg(
        long,
        env = "CAIRN_KEY_FILE",
        global = true,
        help_heading = "Client connection"
    )]
    pub key_file: Option<PathBuf>,
    /// User name, with --password (HTTP Basic).
    #[arg(
        long,
        env = "CAIRN_USER",
        global = true,
        help_heading = "Client connection"
    )]
    pub user: Option<String>,
    /// Password of --user (prefer CAIRN_PASSWORD: flags show in `ps`).
    #[arg(
        long,
        env = "CAIRN_PASSWORD",
        hide_env_values = true,
        global = true,
        help_heading = "Client connection"
    )]
    pub password: Option<Secret>,
    /// Bearer token, instead of --user and --password.
    #[arg(
        long,
        env = "CAIRN_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Client connection"
    )]
    pub token: Option<Secret>,
}

impl ConnectArgs {
    /// The server address: --addr, CAIRN_ADDR, CAIRN_SERVER, or the default.
    pub fn address(&self) -> String {
        self.addr
            .clone()
            .or_else(|| {
                std::env::var("CAIRN_SERVER")
                    .ok()
                    .filter(|addr| !addr.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned())
    }

    /// A client connected as these arguments say.
    pub async fn client(&self) -> Result<Client, Box<dyn std::error::Error>> {
        let mut builder = Client::builder(self.address());
        if let Some(ca) = &self.ca_file {
            builder = builder.ca_file(ca);
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => builder = builder.identity(cert, key),
            (None, None) => {}
            (Some(_), None) => return Err("--cert-file needs --key-file".into()),
            (None, Some(_)) => return Err("--key-file needs --cert-file".into()),
        }
        match (&self.user, &self.password, &self.token) {
            (None, None, None) => {}
            (Some(user), Some(password), None) => builder = builder.basic(user, password.expose()),
            (None, None, Some(token)) => builder = builder.token(token.expose()),
            (Some(_), Some(_), Some(_)) => {
                return Err("give --user and --password, or --token, not both".into());
            }
            (Some(_), None, _) => return Err("--user needs --password (or CAIRN_PASSWORD)".into()),
            (None, Some(_), _) => return Err("--password needs --user (or CAIRN_USER)".into()),
        }
        Ok(builder.connect().await?)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Append one event to a stream.
    Append {
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
        /// A DCB tag for the event (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Read a stream, $all, $ce-<category> or $et-<type>; prints one JSON line per event.
    Read {
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
        /// Name prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most streams.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the server's grpc.health.v1 status; exits 0 when SERVING.
    Health,
    /// Show server version, head position and counts.
    Info,
    /// Repair a data directory the server refuses to open as damaged: keeps
    /// every event before the damage and reports what was lost (README,
    /// "Damaged data directory"). Works on the directory itself; stop the
    /// server first (a directory in use is refused).
    Repair {
        /// The data directory [default: the server's, from the configuration].
        #[arg(long, env = "CAIRN_DATA")]
        data: Option<PathBuf>,
    },
    /// Start, watch or stop a scavenge on the server, which removes events
    /// that reads already hide (deleted and truncated streams) and gives
    /// their space back (`ops` or `admin`; README, "Scavenge").
    Scavenge(crate::operations::ScavengeArgs),
    /// Take an online backup of the running server (`admin`). DIR is on the
    /// SERVER's filesystem and the server writes it: an absolute path that
    /// does not exist yet. Restore it with `cairn restore` (README, "Backup
    /// and restore").
    Backup {
        /// The backup directory, an absolute path on the server's host.
        #[arg(long)]
        to: String,
    },
    /// Restore a backup into a new data directory (offline, like `repair`):
    /// verifies the backup (manifest, every file's crc, every record's crc,
    /// no gap below its head), copies it, verifies the copy, and only then
    /// reports success. The target must not exist or be empty.
    Restore {
        /// The backup directory (as written by `cairn backup`).
        #[arg(long)]
        from: PathBuf,
        /// The new data directory.
        #[arg(long)]
        data: PathBuf,
    },
    /// Write a development CA, a server certificate and key (localhost,
    /// 127.0.0.1, ::1 and every --host), a client certificate and key (for
    /// mutual TLS) and a cluster node's certificate and key (the server's
    /// names and cairn-node, for mutual TLS between nodes with
    /// --cluster-tls-peer-name cairn-node) into a directory, and print how to
    /// use them. Run again to re-issue them under the same CA.
    DevCerts {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Another host name or IP address for the server and node certificates (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// Manage users (admin) and your own password.
    User {
        /// What to do.
        #[command(subcommand)]
        command: crate::users::UserCommand,
    },
    /// Cluster mode: show the cluster as a node sees it (admin).
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: crate::cluster::ClusterCommand,
    },
    /// Create, list and revoke bearer tokens.
    Token {
        /// What to do.
        #[command(subcommand)]
        command: crate::users::TokenCommand,
    },
    /// Show who the server takes you for, and your roles.
    Whoami,
    /// Read or replace a stream's metadata (its ACL is the `$acl` key of the
    /// custom JSON; README, "Access control").
    Metadata {
        /// What to do.
        #[command(subcommand)]
        command: MetadataCommand,
    },
}

/// `cairn metadata ...`.
#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Print a stream's metadata as one JSON line.
    Get {
        /// The stream.
        stream: String,
    },
    /// Replace a stream's metadata: every field not given is cleared.
    Set {
        /// The stream.
        stream: String,
        /// Custom JSON (ACLs go under `$acl`), or @path to read a file.
        #[arg(long)]
        custom: Option<String>,
        /// Keep at most this many newest events.
        #[arg(long)]
        max_count: Option<u64>,
        /// Hide events older than this many seconds.
        #[arg(long)]
        max_age_seconds: Option<u64>,
        /// Hide revisions below this.
        #[arg(long)]
        truncate_before: Option<u64>,
        /// Expected metadata revision: any, no-stream, or a number.
        #[arg(long, default_value = "any")]
        expected: String,
    },
}

/// The line `cairn metadata get` prints.
#[derive(Serialize)]
struct MetadataLine<'a> {
    stream: &'a str,
    metadata_revision: Option<u64>,
    max_count: Option<u64>,
    max_age_seconds: Option<u64>,
    truncate_before: Option<u64>,
    custom: Option<serde_json::Value>,
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
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
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

/// Runs `cairn dev-certs`: writes the files and prints the commands that use
/// them.
pub fn run_dev_certs(out: &Path, hosts: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let files = cairn_server::dev_certs::write(out, hosts)?;
    let show = |path: &Path| path.display().to_string();
    if files.reused_ca {
        println!(
            "reused the CA in {} (delete the directory for a new one)",
            show(out)
        );
    }
    println!(
        "wrote {} (CA), {} (CA key), {} and {} (server), {} and {} (client, for mutual TLS), \
         {} and {} (cluster node, for mutual TLS between nodes)",
        show(&files.ca),
        show(&files.ca_key),
        show(&files.server_cert),
        show(&files.server_key),
        show(&files.client_cert),
        show(&files.client_key),
        show(&files.node_cert),
        show(&files.node_key)
    );
    let serve = format!(
        "cairn --tls-cert-file {} --tls-key-file {}",
        show(&files.server_cert),
        show(&files.server_key)
    );
    println!();
    println!("Serve over TLS (add --listen 0.0.0.0:7070 to serve the network):");
    println!("  {serve}");
    println!("Serve over TLS, requiring client certificates (mutual TLS):");
    println!("  {serve} --tls-client-ca-file {}", show(&files.ca));
    println!();
    println!("Connect (health needs no credentials):");
    println!(
        "  cairn health --addr https://localhost:7070 --ca-file {}",
        show(&files.ca)
    );
    println!(
        "  cairn info --addr https://localhost:7070 --ca-file {} --user admin --password \"$(cat data/initial-admin-password)\"",
        show(&files.ca)
    );
    println!(
        "  with mutual TLS add: --cert-file {} --key-file {}",
        show(&files.client_cert),
        show(&files.client_key)
    );
    println!("  grpcurl -cacert {} localhost:7070 list", show(&files.ca));
    println!();
    println!(
        "Cluster mode, mutual TLS between the nodes (add to each node's --cluster-* flags; \
         on one machine the nodes may share the files; the peer name makes the raft \
         listeners take node certificates only, not client.pem):"
    );
    println!(
        "  --cluster-tls-cert-file {} --cluster-tls-key-file {} --cluster-tls-ca-file {} \
         --cluster-tls-peer-name {}",
        show(&files.node_cert),
        show(&files.node_key),
        show(&files.ca),
        cairn_server::dev_certs::NODE_PEER_NAME
    );
    println!();
    println!(
        "The first TLS start creates the user admin with CAIRN_INITIAL_ADMIN_PASSWORD, or writes a random password to <data>/initial-admin-password."
    );
    println!(
        "The server and node certificates are valid for localhost, 127.0.0.1, ::1{}, \
         the node certificate for {} too; a node's must name the host its peers reach it \
         at (--host).",
        hosts
            .iter()
            .map(|host| format!(", {host}"))
            .collect::<String>(),
        cairn_server::dev_certs::NODE_PEER_NAME
    );
    Ok(())
}

/// Runs a client subcommand, printing to stdout, connected as `connect`
/// says. `Serve`, `Repair`, `Restore` and `DevCerts` are handled by the binary.
pub async fn run_client_command(
    command: Command,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve => Err("serve is not a client command".into()),
        Command::Repair { .. } => Err("repair is not a client command".into()),
        Command::Restore { .. } => Err("restore is not a client command".into()),
        Command::Scavenge(args) => crate::operations::run_scavenge(args, connect).await,
        Command::Backup { to } => crate::operations::run_backup(to, connect).await,
        Command::DevCerts { .. } => Err("dev-certs is not a client command".into()),
        Command::Append {
            stream,
            event_type,
            data,
            expected,
            id,
            tags,
        } => {
            let expected = parse_expected(&expected)?;
            let data = match data.strip_prefix('@') {
                Some(path) => std::fs::read(PathBuf::from(path))?,
                None => data.into_bytes(),
            };
            let mut event = EventData::json_text(event_type, data).tags(tags);
            if let Some(id) = id {
                event = event.id(id);
            }
            let client = connect.client().await?;
            let result = client.append(stream, expected, vec![event]).await?;
            print_json(&AppendLine {
                current_revision: result.current_revision,
                positions: result.positions.map(|(first, last)| [first, last]),
                idempotent_replay: result.idempotent_replay,
            })?;
            Ok(())
        }
        Command::Read {
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
            let client = connect.client().await?;
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
                    tags: &event.tags,
                    data,
                })?;
            }
            Ok(())
        }
        Command::Streams { prefix, limit } => {
            let client = connect.client().await?;
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
        Command::Metadata { command } => metadata(command, connect).await,
        Command::Health => {
            let client = connect.client().await?;
            if client.is_serving().await? {
                println!("SERVING");
                Ok(())
            } else {
                println!("NOT_SERVING");
                Err("not serving".into())
            }
        }
        Command::Info => {
            let client = connect.client().await?;
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
        Command::User { command } => crate::users::run_user(command, connect).await,
        Command::Token { command } => crate::users::run_token(command, connect).await,
        Command::Cluster { command } => crate::cluster::run_cluster(command, connect).await,
        Command::Whoami => crate::users::run_whoami(connect).await,
    }
}

/// Runs `cairn metadata ...`.
async fn metadata(
    command: MetadataCommand,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect.client().await?;
    match command {
        MetadataCommand::Get { stream } => {
            let info = client.get_stream_metadata(&stream).await?;
            let custom = info
                .metadata
                .custom_json
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?;
            let line = MetadataLine {
                stream: &stream,
                metadata_revision: info.metadata_revision,
                max_count: info.metadata.max_count,
                max_age_seconds: info.metadata.max_age_seconds,
                truncate_before: info.metadata.truncate_before,
                custom,
            };
            println!("{}", serde_json::to_string(&line)?);
        }
        MetadataCommand::Set {
            stream,
            custom,
            max_count,
            max_age_seconds,
            truncate_before,
            expected,
        } => {
            let custom_json = match custom {
                Some(text) => Some(match text.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)?,
                    None => text,
                }),
                None => None,
            };
            let metadata = cairn_client::StreamMetadata {
                max_count,
                max_age_seconds,
                truncate_before,
                custom_json,
            };
            let revision = client
                .set_stream_metadata(&stream, parse_expected(&expected)?, metadata)
                .await?;
            println!(
                "{}",
                serde_json::json!({"stream": stream, "metadata_revision": revision})
            );
        }
    }
    Ok(())
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
