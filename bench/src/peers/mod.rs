//! The peers Cairn is compared with, each behind the same [`Target`] trait as
//! Cairn itself, through its own Rust client: PostgreSQL (Message-DB-style
//! schema), Redis Streams, NATS JetStream and UmaDB.
//!
//! The servers are installed, started on a fresh data directory and stopped by
//! `bench/peers.sh`; [`PeerServer`] drives that script. W6's subscriber runs in
//! another process (`cairn-bench peer-subscriber`, hidden), like Cairn's.

pub(crate) mod nats;
pub(crate) mod postgres;
pub(crate) mod redis;
#[cfg(feature = "umadb")]
pub(crate) mod umadb;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BoxError;
use crate::target::Target;
use crate::w6;
use crate::workloads::W6_EVENTS;

/// A peer store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    /// PostgreSQL, Message-DB-style schema, synchronous_commit=on.
    Postgres,
    /// Redis Streams, appendfsync always, Lua for the version check.
    Redis,
    /// NATS JetStream, file store.
    Nats,
    /// UmaDB, a Rust gRPC event store.
    Umadb,
}

impl Peer {
    /// Every peer, in the order the comparison runs them.
    pub(crate) const ALL: [Self; 4] = [Self::Postgres, Self::Redis, Self::Nats, Self::Umadb];

    /// The name `peers.sh` and `--peers` use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::Umadb => "umadb",
        }
    }

    /// The client's address for a server listening on 127.0.0.1:`port`.
    pub(crate) fn address(self, port: u16) -> String {
        match self {
            Self::Postgres | Self::Nats => format!("127.0.0.1:{port}"),
            Self::Redis => format!("redis://127.0.0.1:{port}/"),
            Self::Umadb => format!("http://127.0.0.1:{port}"),
        }
    }

    /// How the store was configured, for the report.
    pub(crate) fn settings(self) -> &'static str {
        match self {
            Self::Postgres => "synchronous_commit=on, fsync=on (durable)",
            Self::Redis => "appendonly yes, appendfsync always (durable)",
            Self::Nats => "JetStream file store; NATS 2.9 never fsyncs per message (NOT durable)",
            Self::Umadb => "default settings (fsync per commit, group commit: durable)",
        }
    }

    /// Whether this peer acknowledges only after an fsync.
    pub(crate) fn durable(self) -> bool {
        self != Self::Nats
    }

    /// What W6's subscriber uses to be told of new events.
    pub(crate) fn live_mechanism(self) -> &'static str {
        match self {
            Self::Postgres => "polling by global position every 1 ms",
            Self::Redis => "XREAD BLOCK on the $all stream",
            Self::Nats => "ordered push consumer (deliver new)",
            Self::Umadb => "UmaDB subscribe (gRPC stream)",
        }
    }
}

/// `bench/peers.sh`, found next to this crate's sources (the benchmark runs
/// from the repository).
pub(crate) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.sh")
}

/// Why UmaDB cannot be measured by a build without its client.
pub(crate) const NO_UMADB: &str =
    "this cairn-bench was built without UmaDB's client (build with --features cairn-bench/umadb)";

/// Whether `peer` can be started here; the reason if not.
pub(crate) fn available(peer: Peer) -> Result<(), String> {
    if peer == Peer::Umadb && cfg!(not(feature = "umadb")) {
        return Err(NO_UMADB.to_owned());
    }
    let output = Command::new("bash")
        .arg(script())
        .arg("check")
        .arg(peer.name())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", script().display()))?;
    if output.status.success() {
        Ok(())
    } else {
        let reason = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Err(if reason.is_empty() {
            String::from_utf8_lossy(&output.stderr).trim().to_owned()
        } else {
            reason
        })
    }
}

/// A peer server started by `peers.sh start`; stopped by `peers.sh stop` when
/// dropped, so a failed workload never leaves one running.
#[derive(Debug)]
pub(crate) struct PeerServer {
    peer: Peer,
    /// The client's address.
    address: String,
    /// The server's process id (PostgreSQL: the postmaster), as `peers.sh
    /// start` prints it on its last line; `None` if it printed none.
    pid: Option<u32>,
    /// Whether it still has to be stopped.
    running: bool,
}

impl PeerServer {
    /// Starts `peer` on the fresh directory `dir`, on a free loopback port.
    pub(crate) fn start(peer: Peer, dir: &Path) -> Result<Self, BoxError> {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let output = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(peer.name())
            .arg(dir)
            .arg(port.to_string())
            .output()?;
        if !output.status.success() {
            return Err(format!(
                "peers.sh start {} failed: {}",
                peer.name(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        let pid = String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .and_then(|line| line.trim().parse().ok());
        Ok(Self {
            peer,
            address: peer.address(port),
            pid,
            running: true,
        })
    }

    /// The client's address.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The server's process id, whose process tree is the server's CPU.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// `peers.sh stop`.
    pub(crate) fn stop(&mut self) -> Result<(), BoxError> {
        if !std::mem::replace(&mut self.running, false) {
            return Ok(());
        }
        let output = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.peer.name())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "peers.sh stop {} failed: {}",
                self.peer.name(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into())
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("{error}");
        }
    }
}

/// Options of the hidden `cairn-bench peer-subscriber` (W6's subscriber
/// process for a peer).
#[derive(Debug, clap::Args)]
pub(crate) struct PeerSubscriberArgs {
    /// The peer.
    #[arg(long, value_enum)]
    peer: Peer,
    /// Its address.
    #[arg(long)]
    addr: String,
    /// Events to wait for.
    #[arg(long, default_value_t = W6_EVENTS)]
    count: u64,
    /// Only events of streams starting with this count.
    #[arg(long, default_value = "w6-")]
    prefix: String,
}

/// The peer subscriber process: prints `ready` once subscribed, then one JSON
/// line `{"latencies_ns":[...]}` (the protocol of `cairn-bench subscriber`).
pub(crate) async fn subscriber(args: &PeerSubscriberArgs) -> Result<(), BoxError> {
    let latencies = match args.peer {
        Peer::Postgres => follow(&postgres::Postgres::connect(&args.addr).await?, args).await?,
        Peer::Redis => follow(&redis::Redis::connect(&args.addr).await?, args).await?,
        Peer::Nats => follow(&nats::Nats::connect(&args.addr).await?, args).await?,
        #[cfg(feature = "umadb")]
        Peer::Umadb => follow(&umadb::Umadb::connect(&args.addr).await?, args).await?,
        #[cfg(not(feature = "umadb"))]
        Peer::Umadb => return Err(NO_UMADB.into()),
    };
    let report = serde_json::json!({ "latencies_ns": latencies });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{report}")?;
    stdout.flush()?;
    Ok(())
}

async fn follow<T: Target>(target: &T, args: &PeerSubscriberArgs) -> Result<Vec<u64>, BoxError> {
    w6::follow(target, &args.prefix, args.count, || {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready")?;
        stdout.flush()
    })
    .await
}
