//! Configuration of the daemon: defaults < `cairn.toml` < `CAIRN_*` environment
//! < command-line flags.
//!
//! The `config` crate layers the defaults and the file; clap reads the
//! environment and the flags (so `cairn --help` lists every setting with its
//! variable), and whatever clap found overrides the layers below it.

use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_storage::{Durability, Limits};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Durability as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// fsync the WAL once per commit group before acknowledging (durable).
    Sync,
    /// Acknowledge before fsync: survives a process crash, NOT a power loss.
    Unsynced,
}

impl From<DurabilitySetting> for Durability {
    fn from(setting: DurabilitySetting) -> Self {
        match setting {
            DurabilitySetting::Sync => Durability::Sync,
            DurabilitySetting::Unsynced => Durability::Unsynced,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (RocksDB).
    pub data: PathBuf,
    /// Durability of acknowledged appends.
    pub durability: DurabilitySetting,
    /// Largest append request, bytes.
    pub max_append_bytes: usize,
    /// Largest single event, bytes.
    pub max_event_bytes: usize,
    /// Most events in one append.
    pub max_events_per_append: usize,
    /// Most events per read page.
    pub max_read_page: usize,
    /// Largest custom metadata (JSON) of one stream, bytes.
    pub max_metadata_bytes: usize,
    /// Bytes of event data the server holds at once on their way to clients
    /// (read chunks and buffered subscription events, all calls together);
    /// when it is reached, reads and subscriptions wait (back-pressure).
    pub max_buffered_bytes: usize,
    /// Writes (appends, deletes, metadata) in flight at once; beyond it
    /// RESOURCE_EXHAUSTED at once.
    pub max_inflight_appends: usize,
    /// Most concurrent subscriptions.
    pub max_subscriptions: usize,
    /// Messages buffered per subscription.
    pub subscription_buffer: usize,
    /// Most persistent subscription groups.
    pub max_groups: usize,
    /// Most consumers connected to one group at once.
    pub max_consumers_per_group: usize,
    /// Recent events kept in memory for live delivery; a subscriber further
    /// behind is served from storage.
    pub live_ring_events: usize,
    /// Most client connections open at once; beyond it new ones wait.
    pub max_connections: usize,
    /// A new connection must send its first bytes within this, milliseconds.
    pub connection_handshake_timeout_ms: u64,
    /// A connection that sends nothing (not even keepalive answers) for this
    /// long is closed, milliseconds.
    pub connection_idle_timeout_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, `tracing_subscriber::EnvFilter` syntax (e.g. `info`, `cairn=debug`).
    pub log_level: String,
}

impl Settings {
    /// The storage limits these settings describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_append_bytes: self.max_append_bytes,
            max_events_per_append: self.max_events_per_append,
            max_read_page: self.max_read_page,
            max_metadata_bytes: self.max_metadata_bytes,
        }
    }

    /// What the engine may hold at once, as these settings describe.
    pub fn engine_options(&self) -> cairn_engine::EngineOptions {
        cairn_engine::EngineOptions {
            max_inflight_writes: self.max_inflight_appends,
            max_buffered_bytes: self.max_buffered_bytes,
            subscriptions: cairn_engine::SubscriptionLimits {
                max_subscriptions: self.max_subscriptions,
                buffer: self.subscription_buffer,
            },
            groups: cairn_engine::GroupLimits {
                max_groups: self.max_groups,
                max_consumers_per_group: self.max_consumers_per_group,
            },
        }
    }

    /// The connection bounds these settings describe.
    pub(crate) fn connection_limits(&self) -> crate::listener::ConnectionLimits {
        crate::listener::ConnectionLimits {
            max_connections: self.max_connections.max(1),
            handshake_timeout: std::time::Duration::from_millis(
                self.connection_handshake_timeout_ms.max(1),
            ),
            idle_timeout: std::time::Duration::from_millis(self.connection_idle_timeout_ms.max(1)),
        }
    }

    /// Defaults for tests: loopback on an ephemeral port, the given data dir.
    pub fn for_tests(data: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            durability: DurabilitySetting::Unsynced,
            max_append_bytes: Limits::default().max_append_bytes,
            max_event_bytes: Limits::default().max_event_bytes,
            max_events_per_append: Limits::default().max_events_per_append,
            max_read_page: Limits::default().max_read_page,
            max_metadata_bytes: Limits::default().max_metadata_bytes,
            max_buffered_bytes: cairn_engine::DEFAULT_MAX_BUFFERED_BYTES,
            max_inflight_appends: 4096,
            max_subscriptions: 1024,
            subscription_buffer: 128,
            max_groups: 1024,
            max_consumers_per_group: 256,
            live_ring_events: 16_384,
            max_connections: 1024,
            connection_handshake_timeout_ms: 10_000,
            connection_idle_timeout_ms: 120_000,
            log_format: LogFormat::Human,
            log_level: "info".into(),
        }
    }
}

/// Settings given as flags or environment variables (all optional: unset means
/// "use the file or the default").
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// Configuration file (TOML). Default: ./cairn.toml if it exists.
    #[arg(long, env = "CAIRN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070].
    #[arg(long, env = "CAIRN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./data].
    #[arg(long, env = "CAIRN_DATA")]
    pub data: Option<PathBuf>,
    /// sync: fsync per commit group before acknowledging (durable). unsynced: not
    /// durable across power loss [default: sync].
    #[arg(long, env = "CAIRN_DURABILITY", value_enum)]
    pub durability: Option<DurabilitySetting>,
    /// Largest append request in bytes [default: 4194304].
    #[arg(long, env = "CAIRN_MAX_APPEND_BYTES")]
    pub max_append_bytes: Option<usize>,
    /// Largest single event in bytes [default: 4194304].
    #[arg(long, env = "CAIRN_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Most events in one append [default: 10000].
    #[arg(long, env = "CAIRN_MAX_EVENTS_PER_APPEND")]
    pub max_events_per_append: Option<usize>,
    /// Most events per read page [default: 10000].
    #[arg(long, env = "CAIRN_MAX_READ_PAGE")]
    pub max_read_page: Option<usize>,
    /// Largest custom metadata (JSON) of one stream in bytes [default: 65536].
    #[arg(long, env = "CAIRN_MAX_METADATA_BYTES")]
    pub max_metadata_bytes: Option<usize>,
    /// Bytes of event data held for clients at once, all reads and
    /// subscriptions together; beyond it they wait [default: 268435456].
    #[arg(long, env = "CAIRN_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<usize>,
    /// Writes in flight at once; beyond it RESOURCE_EXHAUSTED [default: 4096].
    #[arg(long, env = "CAIRN_MAX_INFLIGHT_APPENDS")]
    pub max_inflight_appends: Option<usize>,
    /// Most concurrent subscriptions [default: 1024].
    #[arg(long, env = "CAIRN_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    /// Messages buffered per subscription [default: 128].
    #[arg(long, env = "CAIRN_SUBSCRIPTION_BUFFER")]
    pub subscription_buffer: Option<usize>,
    /// Most persistent subscription groups [default: 1024].
    #[arg(long, env = "CAIRN_MAX_GROUPS")]
    pub max_groups: Option<usize>,
    /// Most consumers connected to one group at once [default: 256].
    #[arg(long, env = "CAIRN_MAX_CONSUMERS_PER_GROUP")]
    pub max_consumers_per_group: Option<usize>,
    /// Recent events kept in memory for live subscribers [default: 16384].
    #[arg(long, env = "CAIRN_LIVE_RING_EVENTS")]
    pub live_ring_events: Option<usize>,
    /// Most client connections open at once; beyond it new ones wait [default: 1024].
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A new connection must send its first bytes within this many ms [default: 10000].
    #[arg(long, env = "CAIRN_CONNECTION_HANDSHAKE_TIMEOUT_MS")]
    pub connection_handshake_timeout_ms: Option<u64>,
    /// A connection silent for this many ms (keepalive answers count) is closed [default: 120000].
    #[arg(long, env = "CAIRN_CONNECTION_IDLE_TIMEOUT_MS")]
    pub connection_idle_timeout_ms: Option<u64>,
    /// Log format [default: human].
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info, debug, cairn_server=debug [default: info].
    #[arg(long, env = "CAIRN_LOG_LEVEL")]
    pub log_level: Option<String>,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file is unreadable or a value has the wrong type.
    #[error("configuration error: {0}")]
    Config(#[from] config::ConfigError),
}

impl SettingsArgs {
    /// Resolves defaults < file < environment/flags.
    pub fn resolve(&self) -> Result<Settings, SettingsError> {
        let limits = Limits::default();
        let mut builder = config::Config::builder()
            .set_default("listen", "127.0.0.1:7070")?
            .set_default("data", "./data")?
            .set_default("durability", "sync")?
            .set_default("max_append_bytes", limits.max_append_bytes as u64)?
            .set_default("max_event_bytes", limits.max_event_bytes as u64)?
            .set_default("max_events_per_append", limits.max_events_per_append as u64)?
            .set_default("max_read_page", limits.max_read_page as u64)?
            .set_default("max_metadata_bytes", limits.max_metadata_bytes as u64)?
            .set_default(
                "max_buffered_bytes",
                cairn_engine::DEFAULT_MAX_BUFFERED_BYTES as u64,
            )?
            .set_default("max_inflight_appends", 4096u64)?
            .set_default("max_subscriptions", 1024u64)?
            .set_default("subscription_buffer", 128u64)?
            .set_default("max_groups", 1024u64)?
            .set_default("max_consumers_per_group", 256u64)?
            .set_default("live_ring_events", 16_384u64)?
            .set_default("max_connections", 1024u64)?
            .set_default("connection_handshake_timeout_ms", 10_000u64)?
            .set_default("connection_idle_timeout_ms", 120_000u64)?
            .set_default("log_format", "human")?
            .set_default("log_level", "info")?;
        builder = match &self.config {
            Some(path) => builder.add_source(config::File::from(path.as_path()).required(true)),
            None => builder.add_source(config::File::with_name("cairn.toml").required(false)),
        };
        let text = |value: &dyn std::fmt::Display| value.to_string();
        let overrides: [(&str, Option<String>); 20] = [
            ("listen", self.listen.as_ref().map(|v| text(v))),
            ("data", self.data.as_ref().map(|v| v.display().to_string())),
            (
                "durability",
                self.durability.map(|v| format!("{v:?}").to_lowercase()),
            ),
            ("max_append_bytes", self.max_append_bytes.map(|v| text(&v))),
            ("max_event_bytes", self.max_event_bytes.map(|v| text(&v))),
            (
                "max_events_per_append",
                self.max_events_per_append.map(|v| text(&v)),
            ),
            ("max_read_page", self.max_read_page.map(|v| text(&v))),
            (
                "max_metadata_bytes",
                self.max_metadata_bytes.map(|v| text(&v)),
            ),
            (
                "max_buffered_bytes",
                self.max_buffered_bytes.map(|v| text(&v)),
            ),
            (
                "max_inflight_appends",
                self.max_inflight_appends.map(|v| text(&v)),
            ),
            (
                "max_subscriptions",
                self.max_subscriptions.map(|v| text(&v)),
            ),
            (
                "subscription_buffer",
                self.subscription_buffer.map(|v| text(&v)),
            ),
            ("max_groups", self.max_groups.map(|v| text(&v))),
            (
                "max_consumers_per_group",
                self.max_consumers_per_group.map(|v| text(&v)),
            ),
            ("live_ring_events", self.live_ring_events.map(|v| text(&v))),
            ("max_connections", self.max_connections.map(|v| text(&v))),
            (
                "connection_handshake_timeout_ms",
                self.connection_handshake_timeout_ms.map(|v| text(&v)),
            ),
            (
                "connection_idle_timeout_ms",
                self.connection_idle_timeout_ms.map(|v| text(&v)),
            ),
            (
                "log_format",
                self.log_format.map(|v| format!("{v:?}").to_lowercase()),
            ),
            ("log_level", self.log_level.clone()),
        ];
        for (key, value) in overrides {
            builder = builder.set_override_option(key, value)?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = SettingsArgs {
            config: Some(dir.path().join("none.toml")),
            ..SettingsArgs::default()
        };
        assert!(
            defaults.resolve().is_err(),
            "an explicit missing file is an error"
        );

        let file = dir.path().join("cairn.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nmax_read_page = 50\ndurability = \"unsynced\"\n",
        )
        .unwrap();
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        };
        let settings = from_file.resolve().unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.max_read_page, 50);
        assert_eq!(settings.durability, DurabilitySetting::Unsynced);
        assert_eq!(settings.data, PathBuf::from("./data"));
        assert_eq!(settings.max_append_bytes, 4 * 1024 * 1024);
        assert_eq!(settings.max_metadata_bytes, 64 * 1024);
        assert_eq!(settings.max_buffered_bytes, 256 * 1024 * 1024);

        let flags = SettingsArgs {
            config: Some(file),
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            log_format: Some(LogFormat::Json),
            ..SettingsArgs::default()
        };
        let settings = flags.resolve().unwrap();
        assert_eq!(settings.listen.port(), 9100);
        assert_eq!(settings.max_read_page, 50);
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(&file, "durability = \"sometimes\"\n").unwrap();
        let args = SettingsArgs {
            config: Some(file),
            ..SettingsArgs::default()
        };
        assert!(args.resolve().is_err());
    }
}
