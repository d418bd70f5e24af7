//! `cairn-server`: the Cairn daemon's library. It wires configuration, the store
//! and the [`cairn_engine::Engine`] to the protocol facades: today `grpc`
//! (`cairn.v1`, plus `grpc.health.v1.Health` and server reflection).
//!
//! This crate owns configuration, listeners, the facades and shutdown. Facades
//! are thin adapters: every decision is the engine's, and `server/src/grpc/` is
//! the only place that names tonic or `cairn_proto`. It must not touch RocksDB
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

pub mod dev_certs;
mod grpc;
mod listener;
mod settings;
mod tls;

use std::future::Future;

use cairn_engine::Engine;
use cairn_storage::{Store, StoreOptions};
use tokio::net::TcpListener;

pub use settings::{
    DurabilitySetting, LogFormat, Mode, Secret, Settings, SettingsArgs, SettingsError, TlsFiles,
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
    let options = StoreOptions {
        durability: settings.durability.into(),
        limits: settings.limits(),
        ring: cairn_storage::RingLimits {
            max_events: settings.live_ring_events.max(1),
            ..cairn_storage::RingLimits::default()
        },
        ..base
    };
    Ok(Store::open(&settings.data, options)?)
}

/// Serves until `shutdown` resolves, then: stops accepting, ends open streams
/// with UNAVAILABLE, waits for in-flight calls, lets every background task
/// finish (group actors write their checkpoints), drains the committer (every
/// queued append is answered), closes the store and returns.
pub async fn run(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let local = listener.local_addr()?;
    // The mode of the address actually bound (the caller may have bound
    // another than `settings.listen`), decided before anything starts.
    let mode = Settings {
        listen: local,
        ..settings.clone()
    }
    .mode()?;
    let tls = match &mode {
        Mode::Secure(files) => Some(tls::ServerTls::load(files)?),
        Mode::Insecure => {
            if settings.tls_cert_file.is_some() || settings.tls_key_file.is_some() {
                tracing::warn!(
                    "--insecure: serving plaintext without authentication; the TLS certificate and key are not used"
                );
            } else if !local.ip().is_loopback() {
                tracing::warn!(listen = %local, "--insecure: serving plaintext without authentication off loopback");
            }
            None
        }
    };
    let engine = Engine::start(store, settings.engine_options()).await?;
    let acceptor = tls.map(|tls| {
        let stopping = engine.shutdown_signal();
        engine.tasks().spawn(tls.reloader.run(async move {
            let mut stopping = stopping;
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }));
        tls.acceptor
    });
    tracing::info!(listen = %local, data = %settings.data.display(), durability = ?settings.durability, tls = acceptor.is_some(), "cairn serving");
    let options = grpc::GrpcOptions {
        max_message_bytes: max_message_bytes(&settings),
        durability: settings.durability.into(),
        connections: settings.connection_limits(),
        tls: acceptor,
    };
    let served = grpc::serve(listener, engine.clone(), options, shutdown).await;
    engine.close().await;
    served.map_err(ServerError::Serve)?;
    tracing::info!("stopped cleanly");
    Ok(())
}
