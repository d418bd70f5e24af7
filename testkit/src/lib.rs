//! `cairn-testkit`: the one test harness of the workspace, used by the tests of
//! storage, server, cli and shop instead of copies of their own.
//!
//! - [`TestServer`]: a real server in this process on `127.0.0.1:0`, talked to
//!   through the real [`cairn_client::Client`]; `start` returns once it accepts
//!   connections (no sleeps to "let it start"). [`TestServer::channel`] (or
//!   [`channel`] for any address) gives a raw gRPC channel for tests of the
//!   wire protocol itself (generated tonic clients, health, reflection).
//!   [`TestServer::start_secure`] serves TLS with authentication on, with
//!   certificates made for it ([`TestTls`]) and the `admin` user's password
//!   [`ADMIN_PASSWORD`]; [`TestServer::connect_as`],
//!   [`TestServer::connect_with_token`] and [`TestServer::client_builder`]
//!   connect to it.
//! - [`SecureSetup`]: the set-up of access-control tests, a secure server
//!   with its `admin` client and the users a test names (password
//!   [`USER_PASSWORD`]); [`set_acl`] puts an ACL such as [`ALICE_ONLY_ACL`]
//!   on a stream.
//! - [`eventually`]: polls a condition until it holds, with a deadline and a
//!   message naming what was awaited (and what was last seen, when the check
//!   returns a [`Result`]); [`eventually_blocking`] is the same for synchronous
//!   tests (storage).
//! - Event builders: [`event`] and [`numbered`] for the storage API,
//!   [`client_event`] and [`client_numbered`] for the client API.
//! - Whole-source readers: [`read_all`] and [`try_read_all`] over a storage
//!   `Store`, [`read_all_client`] and [`read_all_client_with`] over a client.
//! - [`FaultProxy`] ([`proxy`]): a TCP proxy on `127.0.0.1:0` in front of one
//!   address, whose link a test can cut (dropping every open connection) and
//!   heal, with counters of the traffic that flowed: partition tests.
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

pub mod browser;
pub mod http;
pub mod proxy;
mod secure;

pub use proxy::FaultProxy;
pub use secure::{ALICE_ONLY_ACL, SecureSetup, USER_PASSWORD, set_acl};

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientBuilder};
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

/// The password of the `admin` user of a [`TestServer::start_secure`]
/// server (its `initial_admin_password`).
pub const ADMIN_PASSWORD: &str = "cairn-test-admin-password";

/// The certificates of a secure test server (made by
/// `cairn_server::dev_certs` in a temporary directory kept with the server).
#[derive(Debug)]
pub struct TestTls {
    /// The files: `ca` (what clients trust), `server_cert`/`server_key`
    /// (what the server serves; replace them to test reloads), and
    /// `client_cert`/`client_key` (a client certificate the CA signed).
    pub files: cairn_server::dev_certs::DevCertFiles,
    /// True when the server requires client certificates
    /// (`tls_client_ca_file` was set); [`TestServer::client_builder`] then
    /// presents the client certificate.
    pub mutual: bool,
    /// The directory holding the files.
    pub dir: tempfile::TempDir,
}

/// A raw gRPC channel to `address` over TLS, trusting `ca_pem` and
/// presenting `identity` (certificate and key PEM) when given: the protocol
/// as other tools see it, against a secure server.
pub async fn tls_channel(
    address: SocketAddr,
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> tonic::transport::Channel {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(certificate.expect("CA PEM"))
            .expect("a usable CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate PEM"),
                PrivateKeyDer::from_pem_slice(key).expect("client key PEM"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    // The channel's own scheme stays http: the connector below does TLS.
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(address).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(address.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap_or_else(|error| panic!("TLS connect to {address}: {error}"))
}

/// A running in-process server. Dropping it without [`TestServer::stop`]
/// aborts the server task.
pub struct TestServer {
    /// Where it listens (`cairn.v1`).
    pub address: SocketAddr,
    /// Where the KurrentDB-compatible facade listens, when the settings
    /// turned it on (`kurrent_listen`; port 0 picks a free one).
    pub kurrent_address: Option<SocketAddr>,
    /// Where the HTTP listener (metrics, admin UI) listens, when on
    /// (`http_listen`).
    pub http_address: Option<SocketAddr>,
    /// Its data directory (kept alive with the server).
    pub data: tempfile::TempDir,
    /// Its certificates, for a server started by [`TestServer::start_secure`].
    pub tls: Option<TestTls>,
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

    /// Starts a secure server: TLS with certificates made for it (see
    /// [`TestServer::tls`]) and authentication on, the `admin` user's
    /// password being [`ADMIN_PASSWORD`].
    pub async fn start_secure() -> Self {
        Self::start_secure_with(|_, _| {}).await
    }

    /// [`TestServer::start_secure`] after letting the caller adjust the
    /// settings (e.g. `tls_client_ca_file`, `tls_reload_interval_ms`); the
    /// certificates' paths are in the settings already.
    pub async fn start_secure_with(adjust: impl FnOnce(&mut Settings, &TestTls)) -> Self {
        Self::start_secure_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// [`TestServer::start_secure_with`] on an existing data directory (a
    /// restart: the users made before are still there). The certificates are
    /// new.
    pub async fn start_secure_in(
        data: tempfile::TempDir,
        adjust: impl FnOnce(&mut Settings, &TestTls),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = cairn_server::dev_certs::write(dir.path(), &[]).expect("dev certificates");
        let mut tls = TestTls {
            files,
            mutual: false,
            dir,
        };
        let mut settings = Settings::for_tests(data.path().to_path_buf());
        settings.tls_cert_file = Some(tls.files.server_cert.clone());
        settings.tls_key_file = Some(tls.files.server_key.clone());
        settings.initial_admin_password = Some(ADMIN_PASSWORD.to_owned().into());
        adjust(&mut settings, &tls);
        tls.mutual = settings.tls_client_ca_file.is_some();
        Self::launch(data, settings, StoreOptions::default(), Some(tls)).await
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
        Self::launch(data, settings, store_options, None).await
    }

    async fn launch(
        data: tempfile::TempDir,
        settings: Settings,
        store_options: StoreOptions,
        tls: Option<TestTls>,
    ) -> Self {
        let store = cairn_server::open_store_with(&settings, store_options).expect("open store");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let address = listener.local_addr().expect("local addr");
        let listeners = cairn_server::Listeners::bind_rest(listener, &settings)
            .await
            .expect("bind the KurrentDB and HTTP listeners");
        let local = |listener: &Option<tokio::net::TcpListener>| {
            listener
                .as_ref()
                .map(|listener| listener.local_addr().expect("local addr"))
        };
        let kurrent_address = local(&listeners.kurrent);
        let http_address = local(&listeners.http);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_server::serve(
            listeners,
            store,
            settings,
            async move {
                let _ = stopped.await;
            },
        ));
        let mut server = Self {
            address,
            kurrent_address,
            http_address,
            data,
            tls,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_until_serving().await;
        server
    }

    /// Readiness: waits until the server answers its health check; a server
    /// that stopped instead fails the test with its error.
    async fn wait_until_serving(&mut self) {
        let task = self.task.as_ref().expect("server task");
        let stopped = eventually("the test server to serve", || async {
            if task.is_finished() {
                return Some(true);
            }
            let client = self.client_builder().connect().await.ok()?;
            client.is_serving().await.ok()?.then_some(false)
        })
        .await;
        if stopped {
            let task = self.task.take().expect("server task");
            match task.await {
                Ok(Ok(())) => panic!("the test server stopped before serving"),
                Ok(Err(error)) => panic!("the test server did not start: {error}"),
                Err(error) => panic!("the test server task failed: {error}"),
            }
        }
    }

    /// The URL clients connect to: `https://` for a secure server.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.address),
            None => format!("http://{}", self.address),
        }
    }

    /// A builder for clients of this server, without credentials: trusting
    /// its CA (and presenting the client certificate, when it requires one)
    /// for a secure server.
    pub fn client_builder(&self) -> ClientBuilder {
        let builder = Client::builder(self.url());
        match &self.tls {
            None => builder,
            Some(tls) if tls.mutual => builder
                .ca_file(&tls.files.ca)
                .identity(&tls.files.client_cert, &tls.files.client_key),
            Some(tls) => builder.ca_file(&tls.files.ca),
        }
    }

    /// A connected client (without credentials: on a secure server only
    /// health answers it).
    pub async fn client(&self) -> Client {
        self.client_builder().connect().await.expect("connect")
    }

    /// A client that authenticates every call as `user` with `password`.
    pub async fn connect_as(&self, user: &str, password: &str) -> Client {
        self.client_builder()
            .basic(user, password)
            .connect()
            .await
            .expect("connect")
    }

    /// A client that authenticates every call with a bearer `token`.
    pub async fn connect_with_token(&self, token: &str) -> Client {
        self.client_builder()
            .token(token)
            .connect()
            .await
            .expect("connect")
    }

    /// A client of the `admin` user of a secure server ([`ADMIN_PASSWORD`]).
    pub async fn admin(&self) -> Client {
        self.connect_as("admin", ADMIN_PASSWORD).await
    }

    /// A raw gRPC channel to the server (see [`channel`] and
    /// [`tls_channel`]); over TLS for a secure server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        match &self.tls {
            None => channel(&self.url()).await,
            Some(tls) => {
                let read = |path: &std::path::Path| {
                    std::fs::read(path)
                        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
                };
                let ca = read(&tls.files.ca);
                let identity = tls
                    .mutual
                    .then(|| (read(&tls.files.client_cert), read(&tls.files.client_key)));
                tls_channel(
                    self.address,
                    &ca,
                    identity
                        .as_ref()
                        .map(|(cert, key)| (cert.as_slice(), key.as_slice())),
                )
                .await
            }
        }
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
