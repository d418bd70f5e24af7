//! Running the real `cairn` binary in tests: a command with a clean
//! environment, the daemon as a child process that is killed when dropped,
//! and the "cairn serving" line that tells its address. Shared by the
//! process tests (`process.rs`) and the memory test (`memory.rs`).

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long the daemon may take to start serving or to exit after a signal.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A `cairn` command with no `CAIRN_*` variables inherited and its working
/// directory in `cwd`, so neither the environment nor a stray `./cairn.toml`
/// changes what the test asked for.
pub fn cairn_command(cwd: &Path) -> Command {
    cairn_command_via(cwd, &[])
}

/// Like [`cairn_command`], run through `wrapper` (e.g. `prlimit --nofile=64`).
pub fn cairn_command_via(cwd: &Path, wrapper: &[&str]) -> Command {
    let mut command = match wrapper.split_first() {
        None => Command::new(CAIRN),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(CAIRN);
            command
        }
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAIRN_") {
            command.env_remove(key);
        }
    }
    // Only the gRPC listener, on the port the test gives: the KurrentDB and
    // HTTP listeners' fixed default ports would collide between tests.
    command
        .env("CAIRN_KURRENT_LISTEN", "off")
        .env("CAIRN_HTTP_LISTEN", "off");
    command.current_dir(cwd).stdin(Stdio::null());
    command
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which the human log
/// format may put around field names.
pub fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(character) = chars.next() {
        if character == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(character);
        }
    }
    plain
}

/// The bound address from the "cairn serving" log line, in either format:
/// JSON `"listen":"127.0.0.1:41234"` or human `listen=127.0.0.1:41234`.
pub fn serving_address(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("cairn serving") {
        return None;
    }
    let text = if let Some((_, rest)) = line.split_once("\"listen\":\"") {
        rest.split('"').next()?
    } else {
        let (_, rest) = line.split_once("listen=")?;
        rest.split_whitespace().next()?
    };
    text.parse().ok()
}

/// Polls `child` until it exits or `timeout` passes. Not `eventually`: on a
/// timeout the caller still has to kill the child and show its stderr.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `cairn` daemon. Dropping it kills the process.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Where it serves.
    pub address: SocketAddr,
    /// Every stderr line so far (a thread keeps draining the pipe).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// What starting a daemon led to.
pub enum Started {
    Serving(Daemon),
    /// The process exited before it logged "cairn serving".
    Exited {
        status: ExitStatus,
        stderr: String,
    },
}

impl Started {
    pub fn serving(self) -> Daemon {
        match self {
            Started::Serving(daemon) => daemon,
            Started::Exited { status, stderr } => {
                panic!("cairn exited with {status} before serving; stderr:\n{stderr}")
            }
        }
    }
}

impl Daemon {
    /// Starts `cairn --listen 127.0.0.1:0 --data <data> --durability sync` with
    /// the given log format and waits for its "cairn serving" line.
    pub fn start(root: &Path, data: &Path, log_format: &str) -> Started {
        Self::start_with(root, data, log_format, &[], &[])
    }

    /// [`Daemon::start`] through `wrapper`, with `extra` flags (which may
    /// replace `--listen`, `--log-level` and `--durability`).
    pub fn start_with(
        root: &Path,
        data: &Path,
        log_format: &str,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Started {
        let log_level = if extra.contains(&"--log-level") {
            &[][..]
        } else {
            &["--log-level", "info"][..]
        };
        let durability = if extra.contains(&"--durability") {
            &[][..]
        } else {
            &["--durability", "sync"][..]
        };
        let listen = if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        let mut child = cairn_command_via(root, wrapper)
            .args(listen)
            .args(durability)
            .args(log_level)
            .arg("--data")
            .arg(data)
            .args(["--log-format", log_format])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cairn");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (lines, received) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().expect("log").push(line.clone());
                    // Nobody listens once the address is known; keep draining.
                    let _ = lines.send(line);
                }
            });
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(address) = serving_address(&line) {
                        return Started::Serving(Daemon {
                            child,
                            address,
                            log,
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting.
                    let status = wait_with_timeout(&mut child, PROCESS_TIMEOUT);
                    let stderr = log.lock().expect("log").join("\n");
                    let Some(status) = status else {
                        let _ = child.kill();
                        panic!("cairn closed stderr but did not exit; stderr:\n{stderr}");
                    };
                    return Started::Exited { status, stderr };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "cairn did not log \"cairn serving\" within {PROCESS_TIMEOUT:?}; stderr:\n{}",
                        log.lock().expect("log").join("\n")
                    );
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn stderr(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// Sends SIGTERM (through kill(1): tests cannot use `unsafe`) and waits for
    /// the exit status.
    pub fn terminate(&mut self, context: &str) -> ExitStatus {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed: {kill}");
        match wait_with_timeout(&mut self.child, PROCESS_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cairn did not exit within {PROCESS_TIMEOUT:?} of SIGTERM ({context}); stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("wait");
        assert!(
            !status.success(),
            "a SIGKILLed process cannot exit 0: {status}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Events the cluster snapshot tests append before a node catches up
/// (`CAIRN_SNAPSHOT_TEST_EVENTS` overrides it, e.g. 1000000 for the issue's
/// measurement; CI runs the default).
pub fn snapshot_test_events() -> u64 {
    std::env::var("CAIRN_SNAPSHOT_TEST_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000)
}

/// Appends `events` events to `client` in batches of 100 from four tasks
/// (streams `bulk-<task>`); returns the position of the last one.
pub async fn append_bulk(client: &cairn_client::Client, events: u64) -> u64 {
    const BATCH: u64 = 100;
    let tasks: Vec<_> = (0..4u64)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut last = 0;
                let mut written = task * BATCH;
                while written < events {
                    let batch: Vec<_> = (0..BATCH)
                        .map(|n| {
                            cairn_client::EventData::json_text(
                                "Bulk",
                                format!("{{\"n\":{}}}", written + n),
                            )
                        })
                        .collect();
                    // A leader elected a moment ago accepts writes once it
                    // applied its log: until then the same batch is retried.
                    let refused_until = std::time::Instant::now() + PROCESS_TIMEOUT;
                    let result = loop {
                        match client
                            .append(
                                format!("bulk-{task}"),
                                cairn_client::ExpectedRevision::Any,
                                batch.clone(),
                            )
                            .await
                        {
                            Ok(result) => break result,
                            Err(cairn_client::Error::NotLeader { .. })
                                if std::time::Instant::now() < refused_until =>
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(other) => panic!("bulk append on the leader: {other}"),
                        }
                    };
                    last = last.max(result.positions.expect("positions").1);
                    written += 4 * BATCH;
                }
                last
            })
        })
        .collect();
    let mut last = 0;
    for task in tasks {
        last = last.max(task.await.expect("bulk task"));
    }
    last
}

/// The first port [`free_port`] hands out is this plus a per-process offset;
/// it stays below Linux's ephemeral range (32768-60999 by default).
const FIXED_PORTS_START: u16 = 20_000;
/// How many ports [`free_port`] cycles through.
const FIXED_PORTS: u16 = 12_000;

/// A loopback port for a daemon to listen on, free when this returns. Taken
/// from below the ephemeral range, so no outgoing connection and no
/// `bind(0)` elsewhere can take it between now and the daemon's bind (which
/// `bind(0)`-then-release allows, and which made parallel cluster tests fail
/// with "Address already in use"); each port is handed out once per test
/// process, starting at an offset from the process id so that two test
/// processes at once rarely meet (and a port in use is skipped anyway).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(u16::MAX);
    let _ = NEXT.compare_exchange(
        u16::MAX,
        (std::process::id() % u32::from(FIXED_PORTS)) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..FIXED_PORTS {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % FIXED_PORTS;
        let port = FIXED_PORTS_START + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free loopback port in {FIXED_PORTS_START}..{}",
        FIXED_PORTS_START + FIXED_PORTS
    );
}

/// The runtime of a process test's client side: two workers, like the
/// machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Appends a probe event through `client` to node `index`: true when the
/// node acknowledges it (it leads), false when it refuses as a follower or
/// cannot be reached right now; any other answer fails the test.
pub async fn acknowledges_a_probe(client: &cairn_client::Client, index: usize) -> bool {
    use cairn_client::{Error, EventData, ExpectedRevision};
    let probe = EventData::binary("Probe", &b"leader?"[..]);
    match client
        .append("cluster-probe", ExpectedRevision::Any, vec![probe])
        .await
    {
        Ok(_) => true,
        Err(Error::NotLeader { .. } | Error::Unavailable(_) | Error::Connect(_)) => false,
        Err(other) => panic!("node {} answered a probe with {other}", index + 1),
    }
}
