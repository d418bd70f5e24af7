//! `cairn-server`: the Cairn daemon's library. It wires configuration, the store
//! and the [`cairn_engine::Engine`] to the protocol facades: `grpc`
//! (`cairn.v1`, plus `grpc.health.v1.Health` and server reflection) and
//! `kurrent` (the KurrentDB-compatible `event_store.client.*` services), and
//! the `http` listener (Prometheus `/metrics`, the admin UI), each on its own
//! address ([`Listeners`]) with the same TLS, connection bounds and
//! authentication.
//!
//! This crate owns configuration, listeners, the facades and shutdown. Facades
//! are thin adapters: every decision is the engine's, and `server/src/grpc/` and
//! `server/src/kurrent/` are the only places that name tonic or `cairn_proto`. It must not touch RocksDB
//! directly (that is `cairn-storage`'s) nor block the runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cairn_server::{Settings, run};
//! let settings = Settings::for_tests("./data".into());
//! let store = cairn_server::open_store(&settings)?;
//! let listener = tokio::net::TcpListener::bind(settings.listen).await?;
//! run(listener, store, settings, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

mod cluster_metrics;
pub mod dev_certs;
mod grpc;
mod http;
mod kurrent;
mod listener;
mod settings;
mod tls;

use std::future::Future;

use cairn_engine::Engine;
use cairn_storage::{Store, StoreOptions};
use tokio::net::TcpListener;

pub use settings::{
    ClusterSettings, ClusterTlsFiles, DEFAULT_BLOCK_CACHE_BYTES, DurabilitySetting, Listen,
    LogFormat, Mode, Secret, Settings, SettingsArgs, SettingsError, TlsFiles,
};
pub use tls::TlsError;

/// Largest gRPC message the server decodes. Above the append limit so that a
/// slightly oversized append reaches the store's own check and gets a clear
/// RESOURCE_EXHAUSTED; far larger messages are refused by the transport.
fn max_message_bytes(settings: &Settings) -> usize {
    (settings.max_append_bytes.saturating_mul(2)).max(16 * 1024 * 1024)
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] cairn_storage::Error),
    /// The engine could not start (e.g. consumer groups could not be restored).
    #[error("cannot start: {0}")]
    Engine(#[from] cairn_engine::Error),
    /// A listener failed.
    #[error("{0}")]
    Serve(String),
    /// Binding the listen address failed.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The settings ask for something the server will not do (e.g. serve a
    /// non-loopback address without TLS).
    #[error("{0}")]
    Settings(#[from] SettingsError),
    /// The TLS certificate, key or client CA could not be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Sets up logging to stderr as the settings say (format and filter).
pub fn init_tracing(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never into files or pipes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Opens the store the settings describe.
pub fn open_store(settings: &Settings) -> Result<Store, ServerError> {
    open_store_with(settings, StoreOptions::default())
}

/// Opens the store the settings describe, starting from `base` for what the
/// settings do not cover (tests use it for the storage fault seam).
pub fn open_store_with(settings: &Settings, base: StoreOptions) -> Result<Store, ServerError> {
    let cluster = settings.cluster()?;
    let options = StoreOptions {
        durability: settings.durability.into(),
        limits: settings.limits(),
        block_cache_bytes: settings.block_cache_bytes.max(1024 * 1024),
        catalog: cairn_storage::CatalogLimits {
            max_streams: settings.stream_cache_streams.max(1),
            max_bytes: settings.stream_cache_bytes,
        },
        ring: cairn_storage::RingLimits {
            max_events: settings.live_ring_events.max(1),
            ..cairn_storage::RingLimits::default()
        },
        clustered: cluster.is_some(),
        replicated_groups_in_flight: cluster.map_or(base.replicated_groups_in_flight, |cluster| {
            cluster.pipeline_depth
        }),
        ..base
    };
    Ok(Store::open(&settings.data, options)?)
}

/// The sockets the server serves on: the `cairn.v1` gRPC facade's, and the
/// KurrentDB facade's and the HTTP listener's when they are on.
pub struct Listeners {
    /// `cairn.v1` (and health, reflection).
    pub grpc: TcpListener,
    /// The KurrentDB-compatible facade.
    pub kurrent: Option<TcpListener>,
    /// `/metrics` and the admin UI.
    pub http: Option<TcpListener>,
    /// Cluster mode: the node-to-node (raft) listener.
    pub cluster: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address the settings name: `grpc` is given (the caller
    /// may have bound it already), the others come from the settings.
    pub async fn bind_rest(grpc: TcpListener, settings: &Settings) -> std::io::Result<Self> {
        let bind = |listen: Listen| async move {
            match listen.address() {
                None => Ok(None),
                Some(address) => TcpListener::bind(address).await.map(Some).map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot listen on {address}: {error}"),
                    )
                }),
            }
        };
        Ok(Self {
            grpc,
            kurrent: bind(settings.kurrent_listen).await?,
            http: bind(settings.http_listen).await?,
            cluster: bind(match settings.cluster_listen {
                Some(address) => Listen::At(address),
                None => Listen::Off,
            })
            .await?,
        })
    }

    /// The addresses actually bound, in the settings they came from (port 0
    /// becomes the port chosen).
    fn bound(&self, settings: &Settings) -> std::io::Result<Settings> {
        let local = |listener: &Option<TcpListener>| -> std::io::Result<Listen> {
            Ok(match listener {
                None => Listen::Off,
                Some(listener) => Listen::At(listener.local_addr()?),
            })
        };
        Ok(Settings {
            listen: self.grpc.local_addr()?,
            kurrent_listen: local(&self.kurrent)?,
            http_listen: local(&self.http)?,
            ..settings.clone()
        })
    }
}

/// Serves until `shutdown` resolves: binds the KurrentDB and HTTP listeners
/// the settings name beside `listener`, then [`serve`].
pub async fn run(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let listeners = Listeners::bind_rest(listener, &settings).await?;
    serve(listeners, store, settings, shutdown).await
}

/// Serves every facade on its listener until `shutdown` resolves, then: stops
/// accepting, ends open streams with UNAVAILABLE, waits for in-flight calls,
/// lets every background task finish (group actors write their checkpoints),
/// drains the committer (every queued append is answered), closes the store
/// and returns.
pub async fn serve(
    listeners: Listeners,
    store: Store,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // The mode of the addresses actually bound (the caller may have bound
    // others than the settings name), decided before anything starts.
    let settings = listeners.bound(&settings)?;
    let local = settings.listen;
    let mode = settings.mode()?;
    let tls = match &mode {
        Mode::Secure(files) => Some(tls::ServerTls::load(files)?),
        Mode::Insecure => {
            if settings.tls_cert_file.is_some() || settings.tls_key_file.is_some() {
                tracing::warn!(
                    "--insecure: serving plaintext without authentication; the TLS certificate and key are not used"
                );
            } else if let Some(public) = settings
                .listen_addresses()
                .into_iter()
                .find(|address| !address.ip().is_loopback())
            {
                tracing::warn!(listen = %public, "--insecure: serving plaintext without authentication off loopback");
            }
            None
        }
    };
    let (cluster, cluster_tls) = match settings.cluster()? {
        None => (None, None),
        Some(cluster) => {
            let (node, tls) = start_cluster_node(&store, &settings, cluster).await?;
            (Some(std::sync::Arc::new(node)), tls)
        }
    };
    let engine = Engine::start(store, settings.engine_options()).await?;
    if let Some(node) = &cluster {
        engine.set_cluster_figures(std::sync::Arc::new(cluster_metrics::NodeFigures(
            std::sync::Arc::clone(node),
        )));
    }
    let acceptor = tls.map(|tls| {
        let stopping = engine.shutdown_signal();
        engine.tasks().spawn(tls.reloader.run(async move {
            let mut stopping = stopping;
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }));
        tls.acceptor
    });
    tracing::info!(listen = %local, data = %settings.data.display(), durability = ?settings.durability, tls = acceptor.is_some(), "cairn serving");
    let http_tls = acceptor.clone();
    let kurrent_tls = acceptor.clone();
    let options = grpc::GrpcOptions {
        max_message_bytes: max_message_bytes(&settings),
        durability: settings.durability.into(),
        connections: settings.connection_limits(),
        tls: acceptor,
        cluster: cluster.clone(),
    };
    // The other facades stop on the engine's shutdown signal, which the gRPC
    // facade raises when `shutdown` resolves.
    let mut facades: tokio::task::JoinSet<Result<(), String>> = tokio::task::JoinSet::new();
    if let Some(listener) = listeners.kurrent {
        let bound = listener.local_addr()?;
        let advertise = settings
            .kurrent_advertise
            .as_deref()
            .and_then(|text| {
                let (host, port) = text.rsplit_once(':')?;
                Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
            })
            .unwrap_or_else(|| (bound.ip().to_string(), bound.port()));
        tracing::info!(listen = %bound, advertise = %format!("{}:{}", advertise.0, advertise.1), "KurrentDB facade serving");
        let options = kurrent::KurrentOptions {
            max_message_bytes: max_message_bytes(&settings),
            connections: settings.connection_limits(),
            tls: kurrent_tls,
            advertise,
            cluster: cluster.clone(),
        };
        facades.spawn(kurrent::serve(listener, engine.clone(), options));
    }
    if let (Some(node), Some(listener)) = (&cluster, listeners.cluster) {
        facades.spawn(serve_cluster(
            listener,
            node.raft_service(),
            settings.connection_limits(),
            cluster_tls,
            engine.shutdown_signal(),
        ));
    }
    if let Some(listener) = listeners.http {
        let options = http::HttpOptions {
            connections: settings.connection_limits(),
            tls: http_tls,
        };
        facades.spawn(http::serve(listener, engine.clone(), options));
    }
    let served = grpc::serve(listeners.grpc, engine.clone(), options, shutdown).await;
    engine.begin_shutdown();
    while let Some(outcome) = facades.join_next().await {
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "a facade stopped with an error"),
            Err(error) => tracing::error!(%error, "a facade task failed"),
        }
    }
    if let Some(node) = &cluster {
        // Before the store closes: the state machine applies to it.
        node.shutdown().await;
    }
    engine.close().await;
    served.map_err(ServerError::Serve)?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Starts this node's raft over `store` (opened clustered by
/// [`open_store_with`]), and returns it with the node-to-node listener's TLS
/// acceptor when the settings give mutual TLS between nodes (the node's
/// channels to its peers then use the same files). The client listeners'
/// mode is independent of it: in a secure cluster the first leader creates
/// the first admin (`cairn_engine::Security::lead`).
async fn start_cluster_node(
    store: &Store,
    settings: &Settings,
    cluster: settings::ClusterSettings,
) -> Result<
    (
        cairn_cluster::node::ClusterNode,
        Option<tokio_rustls::TlsAcceptor>,
    ),
    ServerError,
> {
    let (acceptor, client_tls) = match &cluster.tls {
        None => (None, None),
        Some(files) => {
            let tls = tls::ClusterTls::load(files)?;
            (Some(tls.acceptor), Some(tls.client))
        }
    };
    let options = cairn_cluster::node::NodeOptions {
        node_id: cluster.node_id,
        peers: cluster
            .peers
            .into_iter()
            .map(|(id, peer)| {
                let settings::PeerAddresses {
                    raft,
                    client,
                    kurrent,
                } = peer;
                (
                    id,
                    cairn_cluster::node::Peer {
                        raft,
                        client,
                        kurrent,
                    },
                )
            })
            .collect(),
        join: cluster.join,
        routes: cluster.routes.into_iter().collect(),
        raft_dir: settings.data.join("raft"),
        heartbeat: cluster.heartbeat,
        election_timeout: cluster.election_timeout,
        max_message_bytes: max_message_bytes(settings).max(CLUSTER_MESSAGE_BYTES),
        snapshot_entries: cluster.snapshot_entries,
        keep_log_entries: cluster.keep_log_entries,
        tls: client_tls,
    };
    tracing::info!(
        node_id = cluster.node_id,
        listen = %cluster.listen,
        mutual_tls = acceptor.is_some(),
        peer_name = cluster
            .tls
            .as_ref()
            .and_then(|files| files.peer_name.as_ref())
            .map(|name| name.as_ref()),
        "cluster node starting"
    );
    let node = cairn_cluster::node::ClusterNode::start(store.clone(), options)
        .await
        .map_err(|error| ServerError::Serve(error.to_string()))?;
    Ok((node, acceptor))
}

/// The smallest bound on one node-to-node message: a full commit group
/// (`StoreOptions::max_group_bytes`) and its framing fit.
const CLUSTER_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Serves the node-to-node raft service until the engine shuts down; with
/// `tls`, only to peers whose TLS client certificate the cluster CA signed
/// (and that is valid for the peer name, when one is set): a plaintext or
/// unauthenticated connection fails its handshake in the listener, is
/// closed and logged at warn ([`listener::accept_peers`]).
async fn serve_cluster(
    listener: TcpListener,
    service: cairn_proto::cluster::v1::raft_server::RaftServer<
        cairn_cluster::network::RaftService<cairn_cluster::types::TypeConfig>,
    >,
    limits: listener::ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    tracing::info!(listen = %address, mutual_tls = tls.is_some(), "cluster listener serving");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(listener::accept_peers(listener, limits, tls), async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
        .map_err(|error| format!("the cluster listener failed: {error}"))
}
