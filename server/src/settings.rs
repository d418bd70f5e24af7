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

/// An optional listen address: `off`, or `host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Listen {
    /// Not served.
    Off,
    /// Served on this address.
    At(SocketAddr),
}

impl Listen {
    /// The address, when served.
    pub fn address(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::At(address) => Some(address),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        text.parse()
            .map(Listen::At)
            .map_err(|_| format!("`{text}` is neither `off` nor an address like 127.0.0.1:2113"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Off => formatter.write_str("off"),
            Listen::At(address) => address.fmt(formatter),
        }
    }
}

/// Default of [`Settings::block_cache_bytes`]: 256 MiB.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// Defaults of [`Settings::stream_cache_streams`] and
/// [`Settings::stream_cache_bytes`]: the storage engine's.
const DEFAULT_STREAM_CACHE: cairn_storage::CatalogLimits = cairn_storage::CatalogLimits::DEFAULT;

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Settings {
    /// Address to listen on (the `cairn.v1` gRPC facade).
    pub listen: SocketAddr,
    /// Address of the KurrentDB-compatible gRPC facade, or off.
    pub kurrent_listen: Listen,
    /// `host:port` the KurrentDB facade's gossip advertises to clients;
    /// `None`: the address it is bound to.
    pub kurrent_advertise: Option<String>,
    /// Address of the HTTP listener (Prometheus `/metrics`, admin UI), or off.
    pub http_listen: Listen,
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
    /// A read, subscription or consumer whose client takes none of its
    /// responses for this long while some wait is ended (RESOURCE_EXHAUSTED
    /// `CLIENT_STALLED`) and what it buffered freed, milliseconds.
    pub client_stall_timeout_ms: u64,
    /// RocksDB's memory, bytes: its block cache (decompressed data blocks,
    /// shared by every column family), which also carries the memtables
    /// (`cairn_storage::StoreOptions::block_cache_bytes`).
    pub block_cache_bytes: usize,
    /// Most stream records (heads, states, metadata) kept in memory; the rest
    /// are read from disk when used.
    pub stream_cache_streams: usize,
    /// Most bytes of stream records kept in memory (names and custom
    /// metadata plus a fixed overhead per stream).
    pub stream_cache_bytes: usize,
    /// Run a scavenge this often, milliseconds; 0: only when asked.
    pub auto_scavenge_interval_ms: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter, `tracing_subscriber::EnvFilter` syntax (e.g. `info`, `cairn=debug`).
    pub log_level: String,
    /// Serve plaintext without authentication, even off loopback.
    pub insecure: bool,
    /// The server's certificate chain (PEM); with `tls_key_file`, the server
    /// speaks TLS only and requires credentials.
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM); when set, every client must present a
    /// certificate signed by one of them (mutual TLS). Read once at start.
    pub tls_client_ca_file: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes,
    /// milliseconds; 0: reload on SIGHUP only.
    pub tls_reload_interval_ms: u64,
    /// Password of the `admin` user made on the first secure start; without
    /// it a random one is written to `<data>/initial-admin-password`.
    pub initial_admin_password: Option<Secret>,
    /// Cluster mode: this node's id (a key of `cluster_peers`). Unset: a
    /// single node, no raft (`server/CLUSTER.md`).
    #[serde(default)]
    pub cluster_node_id: Option<u64>,
    /// Cluster mode: the node-to-node (raft) listen address.
    #[serde(default)]
    pub cluster_listen: Option<SocketAddr>,
    /// Cluster mode: every member, this node included, as
    /// `ID=RAFT_HOST:PORT/CLIENT_HOST:PORT[/KURRENT_HOST:PORT]` separated by
    /// commas (the raft address peers reach it at; the `cairn.v1` address
    /// clients are redirected to when it leads; optionally the KurrentDB
    /// facade's, for KurrentDB clients' redirects and gossip).
    #[serde(default)]
    pub cluster_peers: Option<String>,
    /// Cluster mode: this node joins a running cluster: it never
    /// initialises one (even with the smallest id) and waits until the
    /// leader adds it (`cairn cluster add`). Its `cluster_peers` need name
    /// only itself.
    #[serde(default)]
    pub cluster_join: bool,
    /// Cluster mode: this node's own way to reach some peers' raft
    /// listeners, as `ID=HOST:PORT` separated by commas, used instead of the
    /// raft address `cluster_peers` publishes for them (another interface,
    /// NAT, a test's proxy on one link). Peers without a route are reached
    /// at their published address.
    #[serde(default)]
    pub cluster_routes: Option<String>,
    /// Cluster mode: the leader's heartbeat interval, milliseconds.
    #[serde(default = "default_cluster_heartbeat_ms")]
    pub cluster_heartbeat_ms: u64,
    /// Cluster mode: the election timeout's lower bound, milliseconds (the
    /// upper bound is twice it).
    #[serde(default = "default_cluster_election_timeout_ms")]
    pub cluster_election_timeout_ms: u64,
    /// Cluster mode: raft entries applied between two snapshots (each one a
    /// checkpoint of the store that is packed and verified whole).
    #[serde(default = "default_cluster_snapshot_entries")]
    pub cluster_snapshot_entries: u64,
    /// Cluster mode: raft entries the log keeps behind the newest snapshot,
    /// so a follower that was briefly away catches up from the log.
    #[serde(default = "default_cluster_keep_log_entries")]
    pub cluster_keep_log_entries: u64,
    /// Cluster mode: commit groups the leader may have proposed and not yet
    /// seen committed at once (1 to 64; `StoreOptions::replicated_groups_in_flight`).
    #[serde(default = "default_cluster_pipeline_depth")]
    pub cluster_pipeline_depth: u64,
    /// Cluster mode: this node's certificate chain (PEM) for mutual TLS
    /// between nodes: served by the node-to-node listener and presented to
    /// peers as a client certificate. All three `cluster_tls_*` or none.
    #[serde(default)]
    pub cluster_tls_cert_file: Option<PathBuf>,
    /// Cluster mode: the private key of `cluster_tls_cert_file` (PEM).
    #[serde(default)]
    pub cluster_tls_key_file: Option<PathBuf>,
    /// Cluster mode: the CA certificates (PEM) that every node's certificate
    /// chains to: peers are accepted, as clients and as servers, only with a
    /// certificate signed by one of them. Read once at start.
    #[serde(default)]
    pub cluster_tls_ca_file: Option<PathBuf>,
    /// Cluster mode: a DNS name every node's certificate carries (a SAN
    /// dNSName): the raft listener accepts a peer only with a certificate of
    /// the cluster CA valid for it, so a CA that also signs client or other
    /// services' certificates does not make them peers. Needs the three
    /// `cluster_tls_*` files; this node's own certificate must carry it too.
    #[serde(default)]
    pub cluster_tls_peer_name: Option<String>,
}

fn default_cluster_snapshot_entries() -> u64 {
    20_000
}

fn default_cluster_pipeline_depth() -> u64 {
    cairn_storage::DEFAULT_REPLICATED_GROUPS_IN_FLIGHT as u64
}

/// The largest `cluster_pipeline_depth`.
const MAX_CLUSTER_PIPELINE_DEPTH: u64 = 64;

fn default_cluster_keep_log_entries() -> u64 {
    5_000
}

fn default_cluster_heartbeat_ms() -> u64 {
    150
}

fn default_cluster_election_timeout_ms() -> u64 {
    750
}

/// Cluster mode as the settings describe it (`Settings::cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: u64,
    /// Where this node listens for its peers.
    pub listen: SocketAddr,
    /// Every member: id to its addresses.
    pub peers: std::collections::BTreeMap<u64, PeerAddresses>,
    /// Join a running cluster instead of initialising one
    /// (`--cluster-join`).
    pub join: bool,
    /// How this node reaches some peers' raft listeners instead of their
    /// `PeerAddresses::raft`: peer id (always another member of `peers`)
    /// to `host:port`.
    pub routes: std::collections::BTreeMap<u64, String>,
    /// Leader heartbeat interval.
    pub heartbeat: std::time::Duration,
    /// Election timeout, lower bound.
    pub election_timeout: std::time::Duration,
    /// Entries between two snapshots (at least 1).
    pub snapshot_entries: u64,
    /// Entries the log keeps behind the newest snapshot.
    pub keep_log_entries: u64,
    /// Commit groups in flight at once (1 to 64).
    pub pipeline_depth: usize,
    /// Mutual TLS between nodes; `None`: the node-to-node traffic is
    /// plaintext and unauthenticated (loopback or `--insecure` only).
    pub tls: Option<ClusterTlsFiles>,
}

/// The PEM files of mutual TLS between cluster nodes
/// (`--cluster-tls-cert-file`, `--cluster-tls-key-file`,
/// `--cluster-tls-ca-file`): one certificate per node, used both as the
/// node-to-node listener's server certificate and as the client certificate
/// the node presents to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsFiles {
    /// This node's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// CA certificates every peer's certificate must chain to.
    pub ca: PathBuf,
    /// The DNS name a peer's certificate must also be valid for
    /// (`--cluster-tls-peer-name`); `None`: any client certificate of the CA
    /// is a peer.
    pub peer_name: Option<rustls::pki_types::DnsName<'static>>,
}

/// One member's addresses (`--cluster-peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddresses {
    /// Where peers reach its raft listener.
    pub raft: String,
    /// Its `cairn.v1` listener, for redirects.
    pub client: String,
    /// Its KurrentDB facade, when given.
    pub kurrent: Option<String>,
}

/// Parses `ID=RAFT/CLIENT[/KURRENT],...`.
fn parse_peers(
    text: &str,
) -> Result<std::collections::BTreeMap<u64, PeerAddresses>, SettingsError> {
    let invalid = |what: String| {
        SettingsError::Invalid(format!(
            "--cluster-peers: {what}; expected ID=RAFT_HOST:PORT/CLIENT_HOST:PORT[/KURRENT_HOST:PORT] \
             separated by commas"
        ))
    };
    let mut peers = std::collections::BTreeMap::new();
    for item in node_items(text) {
        let (item, id, addresses) = item.map_err(invalid)?;
        let parts: Vec<&str> = addresses.split('/').map(str::trim).collect();
        let (raft, client, kurrent) = match parts.as_slice() {
            [raft, client] => (*raft, *client, None),
            [raft, client, kurrent] => (*raft, *client, Some(*kurrent)),
            _ => return Err(invalid(format!("'{item}' needs two or three addresses"))),
        };
        for address in [Some(raft), Some(client), kurrent].into_iter().flatten() {
            if !is_host_port(address) {
                return Err(invalid(format!("'{address}' is not HOST:PORT")));
            }
        }
        let addresses = PeerAddresses {
            raft: raft.to_owned(),
            client: client.to_owned(),
            kurrent: kurrent.map(str::to_owned),
        };
        if peers.insert(id, addresses).is_some() {
            return Err(invalid(format!("node {id} is named twice")));
        }
    }
    Ok(peers)
}

/// The items of a comma-separated `ID=VALUE` list (`--cluster-peers`,
/// `--cluster-routes`), empty items skipped: each item, its node id and its
/// value, or what is wrong with it.
fn node_items(text: &str) -> impl Iterator<Item = Result<(&str, u64, &str), String>> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (id, value) = item
                .split_once('=')
                .ok_or_else(|| format!("'{item}' has no '='"))?;
            let id = id
                .trim()
                .parse()
                .map_err(|_| format!("'{}' is not a node id", id.trim()))?;
            Ok((item, id, value))
        })
}

/// `--cluster-tls-peer-name`: a DNS name (a certificate carries it as a SAN
/// dNSName), not an IP address nor a wildcard.
fn parse_peer_name(name: &str) -> Result<rustls::pki_types::DnsName<'static>, SettingsError> {
    rustls::pki_types::DnsName::try_from(name.trim().to_owned()).map_err(|_| {
        SettingsError::Invalid(format!(
            "--cluster-tls-peer-name '{name}' is not a DNS name (letters, digits, '-' and \
             '.', like cairn-node)"
        ))
    })
}

/// True if `address` has the shape `HOST:PORT` (a non-empty host, a `u16`
/// port); the host is resolved only when it is used.
fn is_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// Parses `ID=HOST:PORT,...` (`--cluster-routes`) for node `node_id` of
/// `peers`: every id must be another member of `peers`, each at most once.
fn parse_routes(
    text: &str,
    node_id: u64,
    peers: &std::collections::BTreeMap<u64, PeerAddresses>,
) -> Result<std::collections::BTreeMap<u64, String>, SettingsError> {
    let invalid = |what: String| {
        SettingsError::Invalid(format!(
            "--cluster-routes: {what}; expected ID=HOST:PORT separated by commas, one per peer \
             this node reaches elsewhere than at its --cluster-peers raft address"
        ))
    };
    let mut routes = std::collections::BTreeMap::new();
    for item in node_items(text) {
        let (_, id, address) = item.map_err(invalid)?;
        let address = address.trim();
        if !is_host_port(address) {
            return Err(invalid(format!("'{address}' is not HOST:PORT")));
        }
        if id == node_id {
            return Err(invalid(format!(
                "node {id} is this node (--cluster-node-id), which never connects to itself"
            )));
        }
        if !peers.contains_key(&id) {
            return Err(invalid(format!(
                "node {id} is not one of --cluster-peers ({})",
                peers
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if routes.insert(id, address.to_owned()).is_some() {
            return Err(invalid(format!("node {id} is named twice")));
        }
    }
    Ok(routes)
}

/// A setting that must never appear in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Secret(secret)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(Secret(secret.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// How the server meets its clients, decided by [`Settings::mode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext and no authentication: `--insecure`, or a loopback listen
    /// address without certificates (the development default).
    Insecure,
    /// TLS only, and every call needs credentials.
    Secure(TlsFiles),
}

/// The PEM files of a TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key of the leaf.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for changes; `None`: SIGHUP only.
    pub reload_interval: Option<std::time::Duration>,
}

impl Settings {
    /// The mode these settings ask for. `--insecure` wins (plaintext, no
    /// authentication); else a certificate and key mean TLS with
    /// authentication; else a loopback address is served insecurely (the
    /// development default); anything else is refused, with one line that
    /// says what to give.
    pub fn mode(&self) -> Result<Mode, SettingsError> {
        if self.insecure {
            return Ok(Mode::Insecure);
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Ok(Mode::Secure(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
                reload_interval: (self.tls_reload_interval_ms > 0)
                    .then(|| std::time::Duration::from_millis(self.tls_reload_interval_ms)),
            })),
            (Some(_), None) => Err(SettingsError::Invalid(
                "--tls-cert-file needs --tls-key-file (the certificate's private key)".into(),
            )),
            (None, Some(_)) => Err(SettingsError::Invalid(
                "--tls-key-file needs --tls-cert-file (the certificate it belongs to)".into(),
            )),
            (None, None) if self.tls_client_ca_file.is_some() => Err(SettingsError::Invalid(
                "--tls-client-ca-file needs --tls-cert-file and --tls-key-file".into(),
            )),
            (None, None) => match self
                .listen_addresses()
                .into_iter()
                .find(|address| !address.ip().is_loopback())
            {
                None => Ok(Mode::Insecure),
                Some(public) => Err(SettingsError::Refused(format!(
                    "refusing to serve {public} without TLS; give --tls-cert-file and \
                     --tls-key-file, or --insecure to serve plaintext without authentication"
                ))),
            },
        }
    }

    /// Cluster mode, if these settings ask for it: all of node id, listen
    /// address and peers, or none of them (and then no routes).
    pub fn cluster(&self) -> Result<Option<ClusterSettings>, SettingsError> {
        match (
            self.cluster_node_id,
            self.cluster_listen,
            self.cluster_peers.as_deref(),
        ) {
            (None, None, None) if self.cluster_routes.is_some() => Err(SettingsError::Invalid(
                "--cluster-routes is for cluster mode; give --cluster-node-id, \
                 --cluster-listen and --cluster-peers too, or drop it"
                    .into(),
            )),
            (None, None, None) if self.cluster_join => Err(SettingsError::Invalid(
                "--cluster-join is for cluster mode; give --cluster-node-id, \
                 --cluster-listen and --cluster-peers too, or drop it"
                    .into(),
            )),
            (None, None, None) if self.cluster_tls()?.is_some() => Err(SettingsError::Invalid(
                "--cluster-tls-cert-file, --cluster-tls-key-file and --cluster-tls-ca-file are \
                 for cluster mode; give --cluster-node-id, --cluster-listen and --cluster-peers \
                 too, or drop them"
                    .into(),
            )),
            (None, None, None) => Ok(None),
            (Some(node_id), Some(listen), Some(peers)) => {
                let peers = parse_peers(peers)?;
                if !peers.contains_key(&node_id) {
                    return Err(SettingsError::Invalid(format!(
                        "--cluster-peers does not name this node (--cluster-node-id {node_id})"
                    )));
                }
                let routes = match self.cluster_routes.as_deref() {
                    Some(routes) => parse_routes(routes, node_id, &peers)?,
                    None => std::collections::BTreeMap::new(),
                };
                if !(1..=MAX_CLUSTER_PIPELINE_DEPTH).contains(&self.cluster_pipeline_depth) {
                    return Err(SettingsError::Invalid(format!(
                        "--cluster-pipeline-depth must be 1 to {MAX_CLUSTER_PIPELINE_DEPTH}, not {}",
                        self.cluster_pipeline_depth
                    )));
                }
                let tls = self.cluster_tls()?;
                // With mutual TLS every peer is authenticated by its
                // certificate, so any address may be served.
                if tls.is_none() && !self.insecure && !listen.ip().is_loopback() {
                    return Err(SettingsError::Refused(format!(
                        "refusing to serve the node-to-node listener {listen} off loopback \
                         without authenticating peers; give --cluster-tls-cert-file, \
                         --cluster-tls-key-file and --cluster-tls-ca-file (mutual TLS between \
                         nodes), or --insecure to run a cluster on a trusted network"
                    )));
                }
                Ok(Some(ClusterSettings {
                    node_id,
                    listen,
                    peers,
                    join: self.cluster_join,
                    routes,
                    heartbeat: std::time::Duration::from_millis(self.cluster_heartbeat_ms.max(1)),
                    election_timeout: std::time::Duration::from_millis(
                        self.cluster_election_timeout_ms.max(2),
                    ),
                    snapshot_entries: self.cluster_snapshot_entries.max(1),
                    keep_log_entries: self.cluster_keep_log_entries,
                    pipeline_depth: usize::try_from(self.cluster_pipeline_depth)
                        .unwrap_or(usize::MAX),
                    tls,
                }))
            }
            _ => Err(SettingsError::Invalid(
                "cluster mode needs all of --cluster-node-id, --cluster-listen and \
                 --cluster-peers"
                    .into(),
            )),
        }
    }

    /// The cluster's mutual TLS files: all three given, or none (`None`);
    /// anything between is refused naming what is missing, and so is a peer
    /// name without the files or one that is no DNS name.
    fn cluster_tls(&self) -> Result<Option<ClusterTlsFiles>, SettingsError> {
        match (
            &self.cluster_tls_cert_file,
            &self.cluster_tls_key_file,
            &self.cluster_tls_ca_file,
        ) {
            (None, None, None) if self.cluster_tls_peer_name.is_some() => {
                Err(SettingsError::Invalid(
                    "--cluster-tls-peer-name needs --cluster-tls-cert-file, \
                     --cluster-tls-key-file and --cluster-tls-ca-file (it narrows which \
                     certificates of the cluster CA are peers); give them too, or drop it"
                        .into(),
                ))
            }
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(ClusterTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                peer_name: self
                    .cluster_tls_peer_name
                    .as_deref()
                    .map(parse_peer_name)
                    .transpose()?,
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--cluster-tls-cert-file"),
                    (key.is_none(), "--cluster-tls-key-file"),
                    (ca.is_none(), "--cluster-tls-ca-file"),
                ]
                .into_iter()
                .filter_map(|(missing, flag)| missing.then_some(flag))
                .collect();
                Err(SettingsError::Invalid(format!(
                    "mutual TLS between nodes needs all of --cluster-tls-cert-file, \
                     --cluster-tls-key-file and --cluster-tls-ca-file; missing {}",
                    missing.join(" and ")
                )))
            }
        }
    }

    /// Every address the server listens on: the gRPC facade's, then the
    /// KurrentDB facade's and the HTTP listener's when they are on. The mode
    /// covers them all: one off loopback makes the server need TLS.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.listen)
            .chain(self.kurrent_listen.address())
            .chain(self.http_listen.address())
            .collect()
    }

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
            client_stall_timeout: std::time::Duration::from_millis(
                self.client_stall_timeout_ms.max(1),
            ),
            security: self.security_options(),
            auto_scavenge_interval: (self.auto_scavenge_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(self.auto_scavenge_interval_ms)),
        }
    }

    /// Authentication as these settings describe: enabled unless the mode
    /// is insecure (settings [`Settings::mode`] refuses count as secure, so a
    /// mistake never opens the server).
    fn security_options(&self) -> cairn_engine::SecurityOptions {
        cairn_engine::SecurityOptions {
            enabled: !matches!(self.mode(), Ok(Mode::Insecure)),
            initial_admin_password: self
                .initial_admin_password
                .as_ref()
                .map(|password| password.expose().to_owned()),
            bootstrap_file: Some(self.data.join("initial-admin-password")),
            defaults: Default::default(),
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
            kurrent_listen: Listen::Off,
            kurrent_advertise: None,
            http_listen: Listen::Off,
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
            client_stall_timeout_ms: 60_000,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            stream_cache_streams: DEFAULT_STREAM_CACHE.max_streams,
            stream_cache_bytes: DEFAULT_STREAM_CACHE.max_bytes,
            auto_scavenge_interval_ms: 0,
            log_format: LogFormat::Human,
            log_level: "info".into(),
            insecure: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_reload_interval_ms: 5_000,
            initial_admin_password: None,
            cluster_node_id: None,
            cluster_listen: None,
            cluster_peers: None,
            cluster_join: false,
            cluster_routes: None,
            cluster_heartbeat_ms: default_cluster_heartbeat_ms(),
            cluster_election_timeout_ms: default_cluster_election_timeout_ms(),
            cluster_snapshot_entries: default_cluster_snapshot_entries(),
            cluster_keep_log_entries: default_cluster_keep_log_entries(),
            cluster_pipeline_depth: default_cluster_pipeline_depth(),
            cluster_tls_cert_file: None,
            cluster_tls_key_file: None,
            cluster_tls_ca_file: None,
            cluster_tls_peer_name: None,
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
    /// Address of the KurrentDB-compatible gRPC facade, or `off` [default: 127.0.0.1:2113].
    #[arg(long, env = "CAIRN_KURRENT_LISTEN")]
    pub kurrent_listen: Option<Listen>,
    /// host:port the KurrentDB facade's gossip gives clients [default: the bound address].
    #[arg(long, env = "CAIRN_KURRENT_ADVERTISE")]
    pub kurrent_advertise: Option<String>,
    /// Address of the HTTP listener (/metrics, admin UI), or `off` [default: 127.0.0.1:2114].
    #[arg(long, env = "CAIRN_HTTP_LISTEN")]
    pub http_listen: Option<Listen>,
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
    /// A call whose client takes none of its responses for this many ms is
    /// ended and what it buffered freed [default: 60000].
    #[arg(long, env = "CAIRN_CLIENT_STALL_TIMEOUT_MS")]
    pub client_stall_timeout_ms: Option<u64>,
    /// RocksDB block cache in bytes [default: 268435456].
    #[arg(long, env = "CAIRN_BLOCK_CACHE_BYTES")]
    pub block_cache_bytes: Option<usize>,
    /// Most stream records cached in memory [default: 100000].
    #[arg(long, env = "CAIRN_STREAM_CACHE_STREAMS")]
    pub stream_cache_streams: Option<usize>,
    /// Most bytes of stream records cached in memory [default: 67108864].
    #[arg(long, env = "CAIRN_STREAM_CACHE_BYTES")]
    pub stream_cache_bytes: Option<usize>,
    /// Scavenge every this many ms; 0: only when asked [default: 0].
    #[arg(long, env = "CAIRN_AUTO_SCAVENGE_INTERVAL_MS")]
    pub auto_scavenge_interval_ms: Option<u64>,
    /// Log format [default: human].
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info, debug, cairn_server=debug [default: info].
    #[arg(long, env = "CAIRN_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Serve plaintext without authentication, even off loopback (development only).
    #[arg(long, env = "CAIRN_INSECURE")]
    pub insecure: bool,
    /// Server certificate chain (PEM); with --tls-key-file: TLS and authentication on.
    #[arg(long, env = "CAIRN_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of --tls-cert-file (PEM).
    #[arg(long, env = "CAIRN_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to (mutual TLS).
    #[arg(long, env = "CAIRN_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Check the certificate and key files for changes every this many ms; 0:
    /// reload on SIGHUP only [default: 5000].
    #[arg(long, env = "CAIRN_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<u64>,
    /// Password of the `admin` user made on the first secure start (prefer
    /// the environment variable) [default: random, written to <data>/initial-admin-password].
    #[arg(long, env = "CAIRN_INITIAL_ADMIN_PASSWORD", hide_env_values = true)]
    pub initial_admin_password: Option<Secret>,
    /// Cluster mode: this node's id, one of --cluster-peers (server/CLUSTER.md).
    #[arg(long, env = "CAIRN_CLUSTER_NODE_ID")]
    pub cluster_node_id: Option<u64>,
    /// Cluster mode: the node-to-node (raft) listen address.
    #[arg(long, env = "CAIRN_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Cluster mode: every member as ID=RAFT_HOST:PORT/CLIENT_HOST:PORT, comma-separated.
    #[arg(long, env = "CAIRN_CLUSTER_PEERS")]
    pub cluster_peers: Option<String>,
    /// Cluster mode: join a running cluster (wait to be added with `cairn cluster add`), never initialise one.
    #[arg(long, env = "CAIRN_CLUSTER_JOIN")]
    pub cluster_join: bool,
    /// Cluster mode: ID=HOST:PORT,... to reach those peers' raft listeners at instead of their --cluster-peers address.
    #[arg(long, env = "CAIRN_CLUSTER_ROUTES")]
    pub cluster_routes: Option<String>,
    /// Cluster mode: leader heartbeat interval in ms [default: 150].
    #[arg(long, env = "CAIRN_CLUSTER_HEARTBEAT_MS")]
    pub cluster_heartbeat_ms: Option<u64>,
    /// Cluster mode: election timeout lower bound in ms, upper is twice it [default: 750].
    #[arg(long, env = "CAIRN_CLUSTER_ELECTION_TIMEOUT_MS")]
    pub cluster_election_timeout_ms: Option<u64>,
    /// Cluster mode: raft entries between two snapshots [default: 20000].
    #[arg(long, env = "CAIRN_CLUSTER_SNAPSHOT_ENTRIES")]
    pub cluster_snapshot_entries: Option<u64>,
    /// Cluster mode: raft entries kept behind the newest snapshot [default: 5000].
    #[arg(long, env = "CAIRN_CLUSTER_KEEP_LOG_ENTRIES")]
    pub cluster_keep_log_entries: Option<u64>,
    /// Cluster mode: commit groups in flight at once, 1 to 64 [default: 1].
    #[arg(long, env = "CAIRN_CLUSTER_PIPELINE_DEPTH")]
    pub cluster_pipeline_depth: Option<u64>,
    /// Cluster mode: this node's certificate chain (PEM) for mutual TLS between nodes.
    #[arg(long, env = "CAIRN_CLUSTER_TLS_CERT_FILE")]
    pub cluster_tls_cert_file: Option<PathBuf>,
    /// Cluster mode: private key of --cluster-tls-cert-file (PEM).
    #[arg(long, env = "CAIRN_CLUSTER_TLS_KEY_FILE")]
    pub cluster_tls_key_file: Option<PathBuf>,
    /// Cluster mode: CA certificates (PEM) every node's certificate chains to.
    #[arg(long, env = "CAIRN_CLUSTER_TLS_CA_FILE")]
    pub cluster_tls_ca_file: Option<PathBuf>,
    /// Cluster mode: a DNS name every node's certificate carries; peers without it are refused.
    #[arg(long, env = "CAIRN_CLUSTER_TLS_PEER_NAME")]
    pub cluster_tls_peer_name: Option<String>,
}

/// Why the settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file is unreadable or a value has the wrong type.
    #[error("configuration error: {0}")]
    Config(#[from] config::ConfigError),
    /// Settings that contradict each other (half a TLS configuration).
    #[error("configuration error: {0}")]
    Invalid(String),
    /// The server would be open to the network without TLS.
    #[error("{0}")]
    Refused(String),
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
            .set_default("client_stall_timeout_ms", 60_000u64)?
            .set_default("kurrent_listen", "127.0.0.1:2113")?
            .set_default("http_listen", "127.0.0.1:2114")?
            .set_default("block_cache_bytes", DEFAULT_BLOCK_CACHE_BYTES as u64)?
            .set_default(
                "stream_cache_streams",
                DEFAULT_STREAM_CACHE.max_streams as u64,
            )?
            .set_default("stream_cache_bytes", DEFAULT_STREAM_CACHE.max_bytes as u64)?
            .set_default("auto_scavenge_interval_ms", 0u64)?
            .set_default("log_format", "human")?
            .set_default("log_level", "info")?
            .set_default("insecure", false)?
            .set_default("tls_reload_interval_ms", 5_000u64)?;
        builder = match &self.config {
            Some(path) => builder.add_source(config::File::from(path.as_path()).required(true)),
            None => builder.add_source(config::File::with_name("cairn.toml").required(false)),
        };
        let text = |value: &dyn std::fmt::Display| value.to_string();
        let overrides: [(&str, Option<String>); 21] = [
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
                "client_stall_timeout_ms",
                self.client_stall_timeout_ms.map(|v| text(&v)),
            ),
            (
                "log_format",
                self.log_format.map(|v| format!("{v:?}").to_lowercase()),
            ),
            ("log_level", self.log_level.clone()),
        ];
        let path = |value: &Option<PathBuf>| value.as_ref().map(|v| v.display().to_string());
        let security: [(&str, Option<String>); 6] = [
            ("insecure", self.insecure.then(|| "true".to_owned())),
            ("tls_cert_file", path(&self.tls_cert_file)),
            ("tls_key_file", path(&self.tls_key_file)),
            ("tls_client_ca_file", path(&self.tls_client_ca_file)),
            (
                "tls_reload_interval_ms",
                self.tls_reload_interval_ms.map(|v| text(&v)),
            ),
            (
                "initial_admin_password",
                self.initial_admin_password
                    .as_ref()
                    .map(|v| v.expose().to_owned()),
            ),
        ];
        let facades: [(&str, Option<String>); 7] = [
            ("kurrent_listen", self.kurrent_listen.map(|v| text(&v))),
            ("kurrent_advertise", self.kurrent_advertise.clone()),
            ("http_listen", self.http_listen.map(|v| text(&v))),
            (
                "block_cache_bytes",
                self.block_cache_bytes.map(|v| text(&v)),
            ),
            (
                "stream_cache_streams",
                self.stream_cache_streams.map(|v| text(&v)),
            ),
            (
                "stream_cache_bytes",
                self.stream_cache_bytes.map(|v| text(&v)),
            ),
            (
                "auto_scavenge_interval_ms",
                self.auto_scavenge_interval_ms.map(|v| text(&v)),
            ),
        ];
        let cluster: [(&str, Option<String>); 7] = [
            ("cluster_node_id", self.cluster_node_id.map(|v| text(&v))),
            ("cluster_listen", self.cluster_listen.map(|v| text(&v))),
            ("cluster_peers", self.cluster_peers.clone()),
            ("cluster_join", self.cluster_join.then(|| "true".to_owned())),
            ("cluster_routes", self.cluster_routes.clone()),
            (
                "cluster_heartbeat_ms",
                self.cluster_heartbeat_ms.map(|v| text(&v)),
            ),
            (
                "cluster_election_timeout_ms",
                self.cluster_election_timeout_ms.map(|v| text(&v)),
            ),
        ];
        let snapshots: [(&str, Option<String>); 7] = [
            (
                "cluster_pipeline_depth",
                self.cluster_pipeline_depth.map(|v| text(&v)),
            ),
            (
                "cluster_snapshot_entries",
                self.cluster_snapshot_entries.map(|v| text(&v)),
            ),
            (
                "cluster_keep_log_entries",
                self.cluster_keep_log_entries.map(|v| text(&v)),
            ),
            ("cluster_tls_cert_file", path(&self.cluster_tls_cert_file)),
            ("cluster_tls_key_file", path(&self.cluster_tls_key_file)),
            ("cluster_tls_ca_file", path(&self.cluster_tls_ca_file)),
            ("cluster_tls_peer_name", self.cluster_tls_peer_name.clone()),
        ];
        for (key, value) in overrides
            .into_iter()
            .chain(security)
            .chain(facades)
            .chain(cluster)
            .chain(snapshots)
        {
            builder = builder.set_override_option(key, value)?;
        }
        Ok(builder.build()?.try_deserialize()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clustered(node_id: u64, listen: &str, peers: &str) -> Settings {
        Settings {
            cluster_node_id: Some(node_id),
            cluster_listen: Some(listen.parse().expect("address")),
            cluster_peers: Some(peers.into()),
            ..Settings::for_tests(PathBuf::from("/tmp/unused"))
        }
    }

    #[test]
    fn cluster_peers_parse_with_and_without_a_kurrentdb_address() {
        let settings = clustered(
            2,
            "127.0.0.1:7170",
            "1=127.0.0.1:7170/127.0.0.1:7070, 2=127.0.0.1:7171/127.0.0.1:7071/127.0.0.1:2113",
        );
        let cluster = settings.cluster().expect("valid").expect("clustered");
        assert_eq!(cluster.node_id, 2);
        assert_eq!(
            cluster.peers[&1],
            PeerAddresses {
                raft: "127.0.0.1:7170".into(),
                client: "127.0.0.1:7070".into(),
                kurrent: None,
            }
        );
        assert_eq!(cluster.peers[&2].kurrent.as_deref(), Some("127.0.0.1:2113"));
        assert_eq!(
            Settings::for_tests(PathBuf::new()).cluster().expect("ok"),
            None
        );
    }

    #[test]
    fn bad_cluster_settings_are_refused_with_what_to_give() {
        let invalid = |settings: Settings| match settings.cluster() {
            Err(error) => error.to_string(),
            Ok(cluster) => panic!("accepted: {cluster:?}"),
        };
        for (peers, expected) in [
            ("1", "has no '='"),
            ("x=a:1/b:2", "not a node id"),
            ("1=a:1/b:x", "'b:x' is not HOST:PORT"),
            ("1=a:1/b:2/c:3/d:4", "two or three addresses"),
            ("1=a:1/b:2,1=a:1/b:2", "named twice"),
            ("2=a:1/b:2", "does not name this node"),
        ] {
            let message = invalid(clustered(1, "127.0.0.1:7170", peers));
            assert!(message.contains(expected), "{peers}: {message}");
        }
        let half = Settings {
            cluster_node_id: Some(1),
            ..Settings::for_tests(PathBuf::new())
        };
        assert!(invalid(half).contains("needs all of"));
        let public = clustered(1, "10.0.0.1:7170", "1=10.0.0.1:7170/10.0.0.1:7070");
        assert!(invalid(public).contains("--cluster-tls-ca-file (mutual TLS between nodes)"));
        let insecure = Settings {
            insecure: true,
            ..clustered(1, "10.0.0.1:7170", "1=10.0.0.1:7170/10.0.0.1:7070")
        };
        assert!(insecure.cluster().expect("insecure allows it").is_some());
    }

    /// `settings` with the cluster TLS files that are `Some`.
    fn with_cluster_tls(
        settings: Settings,
        cert: Option<&str>,
        key: Option<&str>,
        ca: Option<&str>,
    ) -> Settings {
        Settings {
            cluster_tls_cert_file: cert.map(PathBuf::from),
            cluster_tls_key_file: key.map(PathBuf::from),
            cluster_tls_ca_file: ca.map(PathBuf::from),
            ..settings
        }
    }

    #[test]
    fn cluster_tls_takes_all_three_files_and_then_serves_off_loopback() {
        let public = || clustered(1, "10.0.0.1:7170", "1=10.0.0.1:7170/10.0.0.1:7070");
        let secured = with_cluster_tls(public(), Some("n.pem"), Some("n.key"), Some("ca.pem"))
            .cluster()
            .expect("mutual TLS authenticates peers off loopback")
            .expect("clustered");
        assert_eq!(
            secured.tls,
            Some(ClusterTlsFiles {
                cert: "n.pem".into(),
                key: "n.key".into(),
                ca: "ca.pem".into(),
                peer_name: None,
            })
        );
        let plain = clustered(1, "127.0.0.1:7170", "1=127.0.0.1:7170/127.0.0.1:7070")
            .cluster()
            .expect("loopback")
            .expect("clustered");
        assert_eq!(plain.tls, None);
        for (cert, key, ca, missing) in [
            (
                Some("n.pem"),
                Some("n.key"),
                None,
                "missing --cluster-tls-ca-file",
            ),
            (
                Some("n.pem"),
                None,
                Some("ca.pem"),
                "missing --cluster-tls-key-file",
            ),
            (
                None,
                Some("n.key"),
                Some("ca.pem"),
                "missing --cluster-tls-cert-file",
            ),
            (
                None,
                None,
                Some("ca.pem"),
                "missing --cluster-tls-cert-file and --cluster-tls-key-file",
            ),
        ] {
            // Refused whatever the address: a half configuration is a mistake.
            for settings in [
                public(),
                clustered(1, "127.0.0.1:7170", "1=127.0.0.1:7170/127.0.0.1:7070"),
            ] {
                match with_cluster_tls(settings, cert, key, ca).cluster() {
                    Err(SettingsError::Invalid(message)) => {
                        assert!(message.contains("needs all of"), "{message}");
                        assert!(message.ends_with(missing), "{message}");
                    }
                    other => panic!("{cert:?} {key:?} {ca:?}: accepted: {other:?}"),
                }
            }
        }
        let single = with_cluster_tls(
            Settings::for_tests(PathBuf::new()),
            Some("n.pem"),
            Some("n.key"),
            Some("ca.pem"),
        );
        match single.cluster() {
            Err(SettingsError::Invalid(message)) => {
                assert!(message.contains("are for cluster mode"), "{message}")
            }
            other => panic!("cluster TLS without cluster mode accepted: {other:?}"),
        }
    }

    #[test]
    fn cluster_tls_files_come_from_flags_and_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cairn.toml");
        std::fs::write(
            &file,
            "cluster_tls_cert_file = \"/etc/cairn/node.pem\"\n\
             cluster_tls_key_file = \"/etc/cairn/node.key\"\n\
             cluster_tls_ca_file = \"/etc/cairn/ca.pem\"\n",
        )
        .expect("write the config file");
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        }
        .resolve()
        .expect("settings");
        assert_eq!(
            from_file.cluster_tls_ca_file,
            Some(PathBuf::from("/etc/cairn/ca.pem"))
        );
        assert_eq!(
            from_file.cluster_tls_key_file,
            Some(PathBuf::from("/etc/cairn/node.key"))
        );
        let flag = SettingsArgs {
            config: Some(file),
            cluster_tls_cert_file: Some("/run/node.pem".into()),
            ..SettingsArgs::default()
        }
        .resolve()
        .expect("settings");
        assert_eq!(
            flag.cluster_tls_cert_file,
            Some(PathBuf::from("/run/node.pem"))
        );
    }

    #[test]
    fn a_cluster_tls_peer_name_needs_the_three_files_and_a_dns_name() {
        let public = || clustered(1, "10.0.0.1:7170", "1=10.0.0.1:7170/10.0.0.1:7070");
        let named = |settings: Settings, name: &str| Settings {
            cluster_tls_peer_name: Some(name.into()),
            ..settings
        };
        let secured = |name: &str| {
            named(
                with_cluster_tls(public(), Some("n.pem"), Some("n.key"), Some("ca.pem")),
                name,
            )
            .cluster()
        };
        let cluster = secured("cairn-node")
            .expect("a peer name with the three files")
            .expect("clustered");
        let tls = cluster.tls.expect("mutual TLS");
        assert_eq!(
            tls.peer_name.as_ref().map(|name| name.as_ref()),
            Some("cairn-node")
        );
        for bad in ["", "10.0.0.1", "*.cairn.lan", "cairn node"] {
            match secured(bad) {
                Err(SettingsError::Invalid(message)) => {
                    assert!(message.contains("is not a DNS name"), "{bad:?}: {message}")
                }
                other => panic!("peer name {bad:?} accepted: {other:?}"),
            }
        }
        // Without the files, in cluster mode or not: refused, naming them.
        for settings in [
            clustered(1, "127.0.0.1:7170", "1=127.0.0.1:7170/127.0.0.1:7070"),
            Settings::for_tests(PathBuf::new()),
        ] {
            match named(settings, "cairn-node").cluster() {
                Err(SettingsError::Invalid(message)) => assert!(
                    message.starts_with(
                        "--cluster-tls-peer-name needs --cluster-tls-cert-file, \
                         --cluster-tls-key-file and --cluster-tls-ca-file"
                    ),
                    "{message}"
                ),
                other => panic!("a peer name without the TLS files accepted: {other:?}"),
            }
        }
        // Half the files: the missing ones are named first.
        match named(
            with_cluster_tls(public(), Some("n.pem"), None, None),
            "cairn-node",
        )
        .cluster()
        {
            Err(SettingsError::Invalid(message)) => assert!(
                message.ends_with("missing --cluster-tls-key-file and --cluster-tls-ca-file"),
                "{message}"
            ),
            other => panic!("half the TLS files accepted: {other:?}"),
        }
    }

    #[test]
    fn the_cluster_tls_peer_name_comes_from_its_flag_and_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cairn.toml");
        std::fs::write(&file, "cluster_tls_peer_name = \"cairn-node\"\n")
            .expect("write the config file");
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        }
        .resolve()
        .expect("settings");
        assert_eq!(
            from_file.cluster_tls_peer_name.as_deref(),
            Some("cairn-node")
        );
        let flag = SettingsArgs {
            config: Some(file),
            cluster_tls_peer_name: Some("node.cairn.lan".into()),
            ..SettingsArgs::default()
        }
        .resolve()
        .expect("settings");
        assert_eq!(
            flag.cluster_tls_peer_name.as_deref(),
            Some("node.cairn.lan")
        );
        // The flag and its variable, as clap reads them.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: SettingsArgs,
        }
        use clap::{CommandFactory, Parser};
        let parsed = Cli::try_parse_from(["cairn", "--cluster-tls-peer-name", "cairn-node"])
            .expect("the flag parses");
        assert_eq!(
            parsed.settings.cluster_tls_peer_name.as_deref(),
            Some("cairn-node")
        );
        let command = Cli::command();
        let argument = command
            .get_arguments()
            .find(|argument| argument.get_id() == "cluster_tls_peer_name")
            .expect("the argument");
        assert_eq!(
            argument.get_env(),
            Some(std::ffi::OsStr::new("CAIRN_CLUSTER_TLS_PEER_NAME"))
        );
    }

    /// Three loopback members; node 1's settings with `routes`.
    fn routed(routes: &str) -> Settings {
        Settings {
            cluster_routes: Some(routes.into()),
            ..clustered(
                1,
                "127.0.0.1:7170",
                "1=127.0.0.1:7170/127.0.0.1:7070,2=127.0.0.1:7171/127.0.0.1:7071,\
                 3=127.0.0.1:7172/127.0.0.1:7072",
            )
        }
    }

    #[test]
    fn cluster_routes_give_this_node_its_own_address_for_some_peers() {
        let cluster = routed(" 2=127.0.0.1:9002 , 3=proxy.local:9003")
            .cluster()
            .expect("valid")
            .expect("clustered");
        assert_eq!(
            cluster.routes,
            std::collections::BTreeMap::from([
                (2, "127.0.0.1:9002".to_owned()),
                (3, "proxy.local:9003".to_owned()),
            ])
        );
        // The membership keeps the published addresses.
        assert_eq!(cluster.peers[&2].raft, "127.0.0.1:7171");
        let partial = routed("3=127.0.0.1:9003").cluster().expect("valid");
        assert_eq!(
            partial
                .expect("clustered")
                .routes
                .keys()
                .collect::<Vec<_>>(),
            [&3]
        );
        let none = clustered(1, "127.0.0.1:7170", "1=127.0.0.1:7170/127.0.0.1:7070")
            .cluster()
            .expect("valid")
            .expect("clustered");
        assert!(none.routes.is_empty());
    }

    #[test]
    fn bad_cluster_routes_are_refused_naming_what_is_wrong() {
        for (routes, expected) in [
            ("2", "'2' has no '='"),
            ("two=127.0.0.1:9002", "'two' is not a node id"),
            ("2=127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
            ("2=127.0.0.1:http", "'127.0.0.1:http' is not HOST:PORT"),
            ("2=:9002", "':9002' is not HOST:PORT"),
            (
                "4=127.0.0.1:9004",
                "node 4 is not one of --cluster-peers (1, 2, 3)",
            ),
            ("1=127.0.0.1:9001", "node 1 is this node"),
            ("2=127.0.0.1:9002,2=127.0.0.1:9012", "node 2 is named twice"),
        ] {
            match routed(routes).cluster() {
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message.contains("--cluster-routes") && message.contains(expected),
                        "{routes}: {message}"
                    );
                }
                Ok(cluster) => panic!("{routes} accepted: {cluster:?}"),
            }
        }
        let single = Settings {
            cluster_routes: Some("2=127.0.0.1:9002".into()),
            ..Settings::for_tests(PathBuf::new())
        };
        let message = single
            .cluster()
            .expect_err("routes without a cluster")
            .to_string();
        assert!(message.contains("is for cluster mode"), "{message}");
    }

    #[test]
    fn cluster_routes_come_from_the_file_and_the_flag_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(
            &file,
            "cluster_node_id = 1\n\
             cluster_listen = \"127.0.0.1:7170\"\n\
             cluster_peers = \"1=127.0.0.1:7170/127.0.0.1:7070,2=127.0.0.1:7171/127.0.0.1:7071\"\n\
             cluster_routes = \"2=127.0.0.1:9002\"\n",
        )
        .unwrap();
        let from_file = SettingsArgs {
            config: Some(file),
            ..SettingsArgs::default()
        };
        let routes = |args: &SettingsArgs| {
            args.resolve()
                .expect("settings")
                .cluster()
                .expect("valid")
                .expect("clustered")
                .routes
        };
        assert_eq!(routes(&from_file)[&2], "127.0.0.1:9002");
        let flag = SettingsArgs {
            cluster_routes: Some("2=127.0.0.1:9012".into()),
            ..from_file.clone()
        };
        assert_eq!(routes(&flag)[&2], "127.0.0.1:9012");
    }

    #[test]
    fn the_cluster_pipeline_depth_comes_from_the_flag_or_the_file_within_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        let node = "cluster_node_id = 1\n\
                    cluster_listen = \"127.0.0.1:7171\"\n\
                    cluster_peers = \"1=127.0.0.1:7171/127.0.0.1:7071\"\n";
        std::fs::write(&file, node).unwrap();
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        };
        let depth = |args: &SettingsArgs| {
            args.resolve()
                .expect("settings")
                .cluster()
                .map(|cluster| cluster.expect("clustered").pipeline_depth)
        };
        assert_eq!(
            depth(&from_file).expect("valid"),
            cairn_storage::DEFAULT_REPLICATED_GROUPS_IN_FLIGHT
        );
        std::fs::write(&file, format!("{node}cluster_pipeline_depth = 4\n")).unwrap();
        assert_eq!(depth(&from_file).expect("valid"), 4);
        let flag = |value| SettingsArgs {
            cluster_pipeline_depth: Some(value),
            ..from_file.clone()
        };
        assert_eq!(depth(&flag(64)).expect("valid"), 64);
        for refused in [0, 65] {
            let message = depth(&flag(refused)).expect_err("out of range").to_string();
            assert!(
                message.contains(&format!(
                    "--cluster-pipeline-depth must be 1 to 64, not {refused}"
                )),
                "{message}"
            );
        }
    }

    #[test]
    fn cluster_join_comes_from_the_file_or_the_flag_and_needs_cluster_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        // A joining node names only itself.
        let joining = "cluster_node_id = 4\n\
                       cluster_listen = \"127.0.0.1:7174\"\n\
                       cluster_peers = \"4=127.0.0.1:7174/127.0.0.1:7074\"\n";
        std::fs::write(&file, joining).unwrap();
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        };
        let join = |args: &SettingsArgs| {
            args.resolve()
                .expect("settings")
                .cluster()
                .expect("valid")
                .expect("clustered")
                .join
        };
        assert!(!join(&from_file), "joining is asked for, never assumed");
        let flag = SettingsArgs {
            cluster_join: true,
            ..from_file.clone()
        };
        assert!(join(&flag));
        std::fs::write(&file, format!("{joining}cluster_join = true\n")).unwrap();
        assert!(join(&from_file));
        let alone = Settings {
            cluster_join: true,
            ..Settings::for_tests(PathBuf::from("/tmp/unused"))
        };
        let message = alone
            .cluster()
            .expect_err("join without a cluster")
            .to_string();
        assert!(
            message.contains("--cluster-join is for cluster mode"),
            "{message}"
        );
    }

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
        assert_eq!(settings.client_stall_timeout_ms, 60_000);
        assert_eq!(
            settings.engine_options().client_stall_timeout,
            std::time::Duration::from_secs(60)
        );

        let flags = SettingsArgs {
            config: Some(file),
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            log_format: Some(LogFormat::Json),
            ..SettingsArgs::default()
        };
        let settings = flags.resolve().unwrap();
        assert_eq!(settings.listen.port(), 9100);
        let stall = SettingsArgs {
            client_stall_timeout_ms: Some(1500),
            ..flags.clone()
        };
        assert_eq!(stall.resolve().unwrap().client_stall_timeout_ms, 1500);
        assert_eq!(settings.max_read_page, 50);
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn the_other_listeners_default_to_loopback_and_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = SettingsArgs {
            config: Some(dir.path().join("cairn.toml")),
            ..SettingsArgs::default()
        };
        std::fs::write(dir.path().join("cairn.toml"), "").unwrap();
        let settings = defaults.resolve().unwrap();
        assert_eq!(
            settings.kurrent_listen,
            Listen::At("127.0.0.1:2113".parse().unwrap())
        );
        assert_eq!(
            settings.http_listen,
            Listen::At("127.0.0.1:2114".parse().unwrap())
        );
        assert_eq!(settings.block_cache_bytes, DEFAULT_BLOCK_CACHE_BYTES);
        assert_eq!(settings.mode().unwrap(), Mode::Insecure);

        let off = SettingsArgs {
            kurrent_listen: Some("off".parse().unwrap()),
            http_listen: Some("OFF".parse().unwrap()),
            ..defaults.clone()
        };
        let settings = off.resolve().unwrap();
        assert_eq!(settings.kurrent_listen, Listen::Off);
        assert_eq!(settings.listen_addresses(), vec![settings.listen]);
        assert!("nowhere".parse::<Listen>().is_err());

        // One public address among them is enough to need TLS.
        let public = SettingsArgs {
            kurrent_listen: Some("0.0.0.0:2113".parse().unwrap()),
            ..defaults
        };
        let refused = public.resolve().unwrap().mode().unwrap_err();
        assert!(refused.to_string().contains("0.0.0.0:2113"), "{refused}");
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

    #[test]
    fn the_mode_is_insecure_on_loopback_secure_with_certificates_refused_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::for_tests(dir.path().to_path_buf());
        assert_eq!(settings.mode().unwrap(), Mode::Insecure, "loopback");
        assert!(!settings.engine_options().security.enabled);

        settings.listen = "0.0.0.0:7070".parse().unwrap();
        let refused = settings.mode().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "refusing to serve 0.0.0.0:7070 without TLS; give --tls-cert-file and \
             --tls-key-file, or --insecure to serve plaintext without authentication"
        );
        assert!(
            settings.engine_options().security.enabled,
            "a refused mode never means an open engine"
        );

        settings.tls_cert_file = Some("server.pem".into());
        assert!(matches!(settings.mode(), Err(SettingsError::Invalid(_))));
        settings.tls_key_file = Some("server.key".into());
        settings.tls_client_ca_file = Some("ca.pem".into());
        match settings.mode().unwrap() {
            Mode::Secure(files) => {
                assert_eq!(files.cert, PathBuf::from("server.pem"));
                assert_eq!(files.client_ca, Some(PathBuf::from("ca.pem")));
                assert_eq!(
                    files.reload_interval,
                    Some(std::time::Duration::from_secs(5))
                );
            }
            other => panic!("{other:?}"),
        }
        let security = settings.engine_options().security;
        assert!(security.enabled);
        assert_eq!(
            security.bootstrap_file,
            Some(dir.path().join("initial-admin-password"))
        );

        settings.insecure = true;
        assert_eq!(settings.mode().unwrap(), Mode::Insecure, "--insecure wins");
        assert!(!settings.engine_options().security.enabled);
    }

    #[test]
    fn tls_settings_layer_and_the_admin_password_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cairn.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:7070\"\ntls_cert_file = \"/certs/server.pem\"\n\
             tls_key_file = \"/certs/server.key\"\ninitial_admin_password = \"from-the-file\"\n",
        )
        .unwrap();
        let from_file = SettingsArgs {
            config: Some(file.clone()),
            ..SettingsArgs::default()
        };
        let settings = from_file.resolve().unwrap();
        assert!(matches!(settings.mode().unwrap(), Mode::Secure(_)));
        assert_eq!(
            settings
                .engine_options()
                .security
                .initial_admin_password
                .as_deref(),
            Some("from-the-file")
        );
        assert_eq!(settings.tls_reload_interval_ms, 5_000);
        assert!(!settings.insecure);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("from-the-file"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");

        let flags = SettingsArgs {
            config: Some(file),
            insecure: true,
            tls_reload_interval_ms: Some(0),
            initial_admin_password: Some("from-a-flag".parse().unwrap()),
            ..SettingsArgs::default()
        };
        assert!(!format!("{flags:?}").contains("from-a-flag"));
        let settings = flags.resolve().unwrap();
        assert!(settings.insecure);
        assert_eq!(settings.mode().unwrap(), Mode::Insecure);
        assert_eq!(settings.tls_reload_interval_ms, 0);
        assert_eq!(
            settings.initial_admin_password.as_ref().map(Secret::expose),
            Some("from-a-flag")
        );
    }
}
