//! `cairn-testkit`: the one test harness of the workspace, used by the tests of
//! storage, server, cli and shop instead of copies of their own.
//!
//! - [`TestServer`]: a real server in this process on `127.0.0.1:0`, talked to
//!   through the real [`cairn_client::Client`]; `start` returns once it accepts
//!   connections (no sleeps to "let it start"). [`TestServer::channel`] (or
//!   [`channel`] for any address) gives a raw gRPC channel for tests of the
//!   wire protocol itself (generated tonic clients, health, reflection).
//! - [`eventually`]: polls a condition until it holds, with a deadline and a
//!   message naming what was awaited (and what was last seen, when the check
//!   returns a [`Result`]); [`eventually_blocking`] is the same for synchronous
//!   tests (storage).
//! - Event builders: [`event`] and [`numbered`] for the storage API,
//!   [`client_event`] and [`client_numbered`] for the client API.
//! - Whole-source readers: [`read_all`] and [`try_read_all`] over a storage
//!   `Store`, [`read_all_client`] and [`read_all_client_with`] over a client.
//!
//! It is a dev-dependency only; nothing ships with it.
//!
//! ```no_run
//! # async fn demo() {
//! let server = cairn_testkit::TestServer::start().await;
//! let client = server.client().await;
//! let info = client.info().await.unwrap();
//! assert_eq!(info.head_position, 0);
//! server.stop().await;
//! # }
//! ```

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_client::Client;
use cairn_server::Settings;
use cairn_storage::{
    Direction, ReadFrom, ReadRequest, ReadSource, RecordedEvent, Store, StoreOptions,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`eventually`] waits before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often [`eventually`] checks.
const POLL: Duration = Duration::from_millis(20);

/// What one check of [`eventually`] found: ready (with the value to return) or
/// not yet. A check returns an `Option` (`None`: not yet), or a `Result` whose
/// `Err` is what it saw instead, shown in the failure message on timeout (it is
/// "not yet", never a failure by itself).
pub trait Outcome {
    /// What `eventually` returns once the check is ready.
    type Value;
    /// `Ok` when ready; otherwise what was seen, if the check says.
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(format!("{seen:?}")))
    }
}

/// The failure of a check that never became ready.
fn timed_out(patience: Duration, what: &str, seen: Option<String>) -> ! {
    match seen {
        Some(seen) => panic!("timed out after {patience:?} waiting for {what}; last seen: {seen}"),
        None => panic!("timed out after {patience:?} waiting for {what}"),
    }
}

/// Polls `check` until it is ready (see [`Outcome`]), and returns its value.
/// Fails the test with "timed out waiting for {what}" after [`PATIENCE`].
pub async fn eventually<O, F, Fut>(what: &str, check: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    eventually_within(PATIENCE, what, check).await
}

/// [`eventually`] with its own deadline.
pub async fn eventually_within<O, F, Fut>(patience: Duration, what: &str, mut check: F) -> O::Value
where
    O: Outcome,
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
{
    let deadline = Instant::now() + patience;
    loop {
        let seen = match check().await.ready() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            timed_out(patience, what, seen);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for synchronous tests: the thread sleeps between checks.
pub fn eventually_blocking<O: Outcome>(what: &str, check: impl FnMut() -> O) -> O::Value {
    eventually_blocking_within(PATIENCE, what, check)
}

/// [`eventually_blocking`] with its own deadline.
pub fn eventually_blocking_within<O: Outcome>(
    patience: Duration,
    what: &str,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + patience;
    loop {
        let seen = match check().ready() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            timed_out(patience, what, seen);
        }
        std::thread::sleep(POLL);
    }
}

/// A storage event of type `type` with `data` as JSON text.
pub fn event(event_type: &str, data: &str) -> cairn_storage::EventData {
    cairn_storage::EventData::json(event_type.to_owned(), data.to_owned())
}

/// A storage event whose data names its number (`{"n":7}`), for checking order
/// and completeness.
pub fn numbered(event_type: &str, n: u64) -> cairn_storage::EventData {
    event(event_type, &format!("{{\"n\":{n}}}"))
}

/// A client event of type `type` with `data` as JSON text.
pub fn client_event(event_type: &str, data: &str) -> cairn_client::EventData {
    cairn_client::EventData::json_text(event_type.to_owned(), data.to_owned())
}

/// A client event whose data names its number (`{"n":7}`), like [`numbered`].
pub fn client_numbered(event_type: &str, n: u64) -> cairn_client::EventData {
    client_event(event_type, &format!("{{\"n\":{n}}}"))
}

/// Reads a whole source forwards from a store, page by page. Panics (naming
/// the source) on a read error.
pub fn read_all(store: &Store, source: ReadSource) -> Vec<RecordedEvent> {
    try_read_all(store, ReadRequest::forwards(source.clone(), 1000))
        .unwrap_or_else(|error| panic!("reading {source:?}: {error}"))
}

/// Reads every page of `request` (any source, direction, page size or
/// filter), following `page.next`, and returns the first read error.
///
/// It checks the paging contract on the way: no page is larger than
/// `max_count`, and each `next` cursor lies past the previous one in the
/// direction of the read (so paging always ends).
pub fn try_read_all(
    store: &Store,
    mut request: ReadRequest,
) -> Result<Vec<RecordedEvent>, cairn_storage::Error> {
    let mut events = Vec::new();
    loop {
        let page = store.read(&request)?;
        assert!(
            page.events.len() <= request.max_count,
            "a page of {} events for max_count {} ({request:?})",
            page.events.len(),
            request.max_count
        );
        events.extend(page.events);
        let Some(next) = page.next else {
            return Ok(events);
        };
        if let ReadFrom::At(from) = request.from {
            let onwards = match request.direction {
                Direction::Forwards => next > from,
                Direction::Backwards => next < from,
            };
            assert!(
                onwards,
                "paging does not move on: next {next} after {from} ({request:?})"
            );
        }
        request.from = ReadFrom::At(next);
    }
}

/// Reads a whole stream (or `$all`, `$ce-`, `$et-`) forwards through a client.
pub async fn read_all_client(
    client: &Client,
    stream: &str,
) -> cairn_client::Result<Vec<cairn_client::RecordedEvent>> {
    read_all_client_with(client, stream, cairn_client::ReadOptions::forwards()).await
}

/// Reads everything `options` select from a stream (or `$all`, `$ce-`,
/// `$et-`) through a client; the server pages internally.
pub async fn read_all_client_with(
    client: &Client,
    stream: &str,
    options: cairn_client::ReadOptions,
) -> cairn_client::Result<Vec<cairn_client::RecordedEvent>> {
    client.read(stream, options).await?.collect_all().await
}

/// A raw gRPC channel to `url` (`http://host:port`), for generated tonic
/// clients: the protocol as other tools and languages see it.
pub async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap_or_else(|error| panic!("bad url {url}: {error}"))
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

/// A running in-process server. Dropping it without [`TestServer::stop`]
/// aborts the server task.
pub struct TestServer {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its data directory (kept alive with the server).
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cairn_server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with default test settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting the caller adjust the settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// Starts a server on an existing data directory.
    pub async fn start_in(data: tempfile::TempDir, adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::start_full(data, adjust, StoreOptions::default()).await
    }

    /// Starts a server on `data` with adjusted settings and store options
    /// (e.g. the storage fault seam) as the base of what settings set.
    pub async fn start_full(
        data: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings),
        store_options: StoreOptions,
    ) -> Self {
        let mut settings = Settings::for_tests(data.path().to_path_buf());
        adjust(&mut settings);
        let store = cairn_server::open_store_with(&settings, store_options).expect("open store");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let address = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_server::run(listener, store, settings, async move {
            let _ = stopped.await;
        }));
        let server = Self {
            address,
            data,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_until_serving().await;
        server
    }

    /// Readiness: waits until the server answers its health check.
    async fn wait_until_serving(&self) {
        let url = self.url();
        eventually("the test server to serve", || {
            let url = url.clone();
            async move {
                let client = Client::connect(url).await.ok()?;
                client.is_serving().await.ok()?.then_some(())
            }
        })
        .await;
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.expect("connect")
    }

    /// A raw gRPC channel to the server (see [`channel`]).
    pub async fn channel(&self) -> tonic::transport::Channel {
        channel(&self.url()).await
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    /// Stops the server and hands back its data directory (to restart on it).
    pub async fn stop_keep_data(mut self) -> (tempfile::TempDir, SocketAddr) {
        self.stop_in_place().await;
        let address = self.address;
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("temp dir"));
        (data, address)
    }

    /// Like `stop`, but keeps the data directory for inspection.
    pub async fn stop_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
