//! Running the `cairn` binary as a child process: find it, start it on a data
//! directory and a free loopback port, wait until its health service says
//! SERVING, and stop it gently (SIGTERM) or not (SIGKILL).

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::BoxError;
use crate::machine::Machine;
use crate::report::write_server_json;

/// How long a starting server may take to report SERVING (opening a large
/// store replays its WAL).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Durability the server is started with (its `--durability` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Acknowledged after fdatasync.
    Sync,
    /// Acknowledged before any fsync: NOT durable.
    Unsynced,
}

impl Durability {
    /// The flag's value.
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Unsynced => "unsynced",
        }
    }
}

/// The server a benchmark talks to: `addr` when given, else a fresh `cairn`
/// (see [`server_binary`]) started on `scratch/data` with `unsynced` durability
/// or not and the flags `extra` added, logging to `scratch/server.log`.
/// Returns its address and the started process, if any, for the caller to stop
/// at the end.
pub(crate) async fn given_or_started(
    addr: Option<&str>,
    server_bin: Option<&Path>,
    (unsynced, extra): (bool, &[String]),
    scratch: &Path,
) -> Result<(String, Option<ServerProcess>), BoxError> {
    if let Some(addr) = addr {
        if unsynced {
            eprintln!("note: --unsynced has no effect with --addr");
        }
        if !extra.is_empty() {
            eprintln!("note: --server-arg has no effect with --addr");
        }
        return Ok((addr.to_owned(), None));
    }
    let binary = server_binary(server_bin)?;
    let durability = if unsynced {
        Durability::Unsynced
    } else {
        Durability::Sync
    };
    let data = scratch.join("data");
    eprintln!(
        "starting {} --durability {}{}{} on {} ...",
        binary.display(),
        durability.flag(),
        if extra.is_empty() { "" } else { " " },
        extra.join(" "),
        data.display()
    );
    let started = ServerProcess::start_with(
        &binary,
        &data,
        durability,
        &scratch.join("server.log"),
        extra,
    )
    .await?;
    Ok((started.address().to_owned(), Some(started)))
}

/// The options of a benchmark that talks to one server, started here unless
/// `--addr` is given (flattened into its arguments).
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Run against this server instead of starting one.
    #[arg(long, value_name = "URL")]
    pub(crate) addr: Option<String>,

    /// Start the server with `--durability unsynced` (NOT durable).
    #[arg(long)]
    pub(crate) unsynced: bool,

    /// Directory for the server's fresh data directory, removed afterwards (not
    /// tmpfs). Default: the system temp directory.
    #[arg(long, value_name = "PATH")]
    pub(crate) dir: Option<PathBuf>,

    /// The `cairn` binary. Default: `cairn` next to this executable.
    #[arg(long, value_name = "PATH")]
    pub(crate) server_bin: Option<PathBuf>,

    /// A flag for the started server, added after the benchmark's own
    /// (repeat it, e.g. `--server-arg=--block-cache-bytes=1073741824`).
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub(crate) server_args: Vec<String>,
}

/// A benchmark's server and its scratch directory (removed when dropped).
#[derive(Debug)]
pub(crate) struct Session {
    /// `--dir`, or the system temp directory.
    pub(crate) dir: PathBuf,
    /// `<dir>/<prefix>XXXX`: the started server's `data` and `server.log`.
    pub(crate) scratch: tempfile::TempDir,
    /// The server's address.
    pub(crate) address: String,
    /// The server this run started, if it did.
    pub(crate) server: Option<ServerProcess>,
}

impl ServerArgs {
    /// Creates the scratch directory (`prefix` names it) and starts the server
    /// in it, or takes `--addr`.
    pub(crate) async fn session(&self, prefix: &str) -> Result<Session, BoxError> {
        let dir = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => std::env::temp_dir(),
        };
        let scratch = tempfile::Builder::new().prefix(prefix).tempdir_in(&dir)?;
        let (address, server) = given_or_started(
            self.addr.as_deref(),
            self.server_bin.as_deref(),
            (self.unsynced, &self.server_args),
            scratch.path(),
        )
        .await?;
        Ok(Session {
            dir,
            scratch,
            address,
            server,
        })
    }
}

impl Session {
    /// The started server's data directory (`None` with `--addr`).
    pub(crate) fn data_dir(&self) -> Option<PathBuf> {
        self.server
            .as_ref()
            .map(|_| self.scratch.path().join("data"))
    }

    /// The started server's process id (`None` with `--addr` or once stopped).
    pub(crate) fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(ServerProcess::pid)
    }

    /// Writes `figures` of `benchmark` to `path` as JSON, with the machine,
    /// this session's directory and the server (`info`, its address) beside
    /// them (see [`write_server_json`]).
    pub(crate) fn write_json(
        &self,
        path: &Path,
        benchmark: &str,
        (machine, info): (&Machine, &cairn_client::ServerInfo),
        figures: serde_json::Value,
    ) -> Result<(), BoxError> {
        write_server_json(
            path,
            benchmark,
            (machine, &self.dir),
            (info, &self.address),
            figures,
        )
    }

    /// Stops the started server (SIGTERM), saying so if it had to be killed.
    pub(crate) fn stop(&mut self) -> Result<(), BoxError> {
        if let Some(server) = self.server.as_mut()
            && !server.stop()?
        {
            eprintln!("warning: the server did not stop on SIGTERM and was killed");
        }
        Ok(())
    }
}

/// The `cairn` binary: `flag` if given, else the one next to this executable
/// (cargo builds both into the same directory).
pub(crate) fn server_binary(flag: Option<&Path>) -> Result<PathBuf, BoxError> {
    let path = match flag {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("the cairn-bench executable has no directory")?
            .join("cairn"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "server binary {} not found: build it (cargo build --release --workspace --bins) \
             or pass --server-bin",
            path.display()
        )
        .into())
    }
}

/// A free port on 127.0.0.1, found by binding port 0. Another process could
/// take it before the server binds it; the server then fails to start and says
/// so.
pub(crate) fn free_port() -> Result<u16, BoxError> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The last `lines` lines of a server log file (empty if it cannot be read).
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running `cairn` server that this process started.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    /// The child; `None` once it was stopped or killed.
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    address: String,
    /// Where its stderr goes, to show when it fails.
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `binary` on `data` with `durability`, logging to `log` (appended),
    /// and waits until it reports SERVING. The working directory is `data`'s
    /// parent and `CAIRN_*` variables are removed, so no stray `cairn.toml` or
    /// environment changes the settings.
    pub(crate) async fn start(
        binary: &Path,
        data: &Path,
        durability: Durability,
        log: &Path,
    ) -> Result<Self, BoxError> {
        Self::start_with(binary, data, durability, log, &[]).await
    }

    /// [`Self::start`] with the flags `extra` after the benchmark's own; they
    /// must not repeat those (`--listen`, `--data`, `--durability`, ...): the
    /// server rejects a flag given twice.
    pub(crate) async fn start_with(
        binary: &Path,
        data: &Path,
        durability: Durability,
        log: &Path,
        extra: &[String],
    ) -> Result<Self, BoxError> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        Self::start_listening(binary, data, durability, log, &listen, extra).await
    }

    /// [`Self::start_with`] on the client address `listen` (`host:port`)
    /// chosen by the caller: a cluster node's address must be known before
    /// it starts (every node's `--cluster-peers` names it), and a restarted
    /// node keeps its address.
    pub(crate) async fn start_listening(
        binary: &Path,
        data: &Path,
        durability: Durability,
        log: &Path,
        listen: &str,
        extra: &[String],
    ) -> Result<Self, BoxError> {
        let log_file = File::options().create(true).append(true).open(log)?;
        let mut command = Command::new(binary);
        // The KurrentDB and HTTP listeners run as in production, on ports
        // of their own choosing (their defaults could be taken).
        command
            .arg("--listen")
            .arg(listen)
            .args([
                "--kurrent-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--data")
            .arg(data)
            .arg("--durability")
            .arg(durability.flag())
            .arg("--log-level")
            .arg("warn")
            .args(extra)
            .current_dir(data.parent().unwrap_or(data))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CAIRN_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        let mut server = Self {
            child: Some(child),
            address: format!("http://{listen}"),
            log: log.to_path_buf(),
        };
        server.wait_serving().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `grpc.health.v1.Health/Check` until the server says SERVING.
    async fn wait_serving(&mut self) -> Result<(), BoxError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(format!(
                    "the server exited while starting ({status}); its log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            if self.serving().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the server did not report SERVING within {START_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the health service answers SERVING now.
    async fn serving(&self) -> bool {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(self.address.clone()) else {
            return false;
        };
        let Ok(channel) = endpoint
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
        else {
            return false;
        };
        let request = HealthCheckRequest {
            service: String::new(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .is_ok_and(|response| response.into_inner().status == ServingStatus::Serving as i32)
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }

    /// SIGKILL: the process dies at once, wherever it was (a crash).
    pub(crate) fn kill(&mut self) -> Result<(), BoxError> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not stopped within [`STOP_TIMEOUT`].
    /// Returns whether it stopped by itself.
    pub(crate) fn stop(&mut self) -> Result<bool, BoxError> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        // std has no way to send SIGTERM and the workspace forbids unsafe code;
        // kill(1) sends it.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while sent && Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(false)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Never leave a server behind, even when a workload failed.
        let _ = self.kill();
    }
}
