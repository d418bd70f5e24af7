//! `cairn-server`: the Cairn daemon. It serves the `cairn.v1` gRPC protocol over a
//! [`cairn_storage::Store`], plus `grpc.health.v1.Health` and server reflection.
//!
//! This crate owns configuration, the gRPC adapters, error mapping and shutdown.
//! It must not touch RocksDB directly (that is `cairn-storage`'s) nor block the
//! runtime: appends go to the store's committer thread, reads to the blocking pool.
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

pub mod cli;
mod from_proto;
mod persistent;
mod server_info;
mod settings;
mod status;
mod streams;
pub mod subscriptions;
mod to_proto;

use std::future::Future;
use std::time::Duration;

use cairn_proto::v1::persistent_subscriptions_server::PersistentSubscriptionsServer;
use cairn_proto::v1::server_server::ServerServer;
use cairn_proto::v1::streams_server::StreamsServer;
use cairn_proto::v1::subscriptions_server::SubscriptionsServer;
use cairn_storage::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::task::TaskTracker;

pub use settings::{DurabilitySetting, LogFormat, Settings, SettingsArgs, SettingsError};
pub use status::to_status;

/// Largest gRPC message the server decodes. Above the append limit so that a
/// slightly oversized append reaches the store's own check and gets a clear
/// RESOURCE_EXHAUSTED; far larger messages are refused by the transport.
fn max_message_bytes(settings: &Settings) -> usize {
    (settings.max_append_bytes.saturating_mul(2)).max(16 * 1024 * 1024)
}

/// How long shutdown waits for open calls before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] cairn_storage::Error),
    /// The gRPC transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Persistent subscription groups could not be restored.
    #[error("cannot restore persistent subscription groups: {0}")]
    Groups(String),
    /// Binding the listen address failed.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store the settings describe.
pub fn open_store(settings: &Settings) -> Result<Store, ServerError> {
    let options = StoreOptions {
        durability: settings.durability.into(),
        limits: settings.limits(),
        ring: cairn_storage::RingLimits {
            max_events: settings.live_ring_events.max(1),
            ..cairn_storage::RingLimits::default()
        },
        ..StoreOptions::default()
    };
    Ok(Store::open(&settings.data, options)?)
}

/// Accepted connections with Nagle's algorithm off. gRPC writes a response as
/// several small frames; with Nagle on, the last one waits for the client's
/// delayed ACK (about 40 ms). tonic sets this only on listeners it binds itself.
fn accept_nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
        }
        Ok(stream)
    })
}

/// Serves until `shutdown` resolves, then: stops accepting, ends open streams
/// with UNAVAILABLE, waits for in-flight calls, drains the committer (every
/// queued append is answered) and returns.
pub async fn run(
    listener: TcpListener,
    store: Store,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StreamsServer<streams::StreamsService>>()
        .await;
    health_reporter
        .set_serving::<ServerServer<server_info::ServerInfoService>>()
        .await;
    health_reporter
        .set_serving::<PersistentSubscriptionsServer<persistent::PersistentService>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max_message = max_message_bytes(&settings);
    // Every task that holds the store or writes to it (reads, subscription
    // feeds, group actors and their writes) is spawned here, so that `run`
    // returns only once they are done: group actors write their checkpoints
    // before the committer stops, and the data directory is released.
    let background = TaskTracker::new();
    let streams = StreamsServer::new(streams::StreamsService::new(
        store.clone(),
        settings.max_inflight_appends,
        shutdown_receiver.clone(),
        background.clone(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let feeds =
        subscriptions::Feeds::new(store.clone(), shutdown_receiver.clone(), background.clone());
    let (subscriptions, subscription_stats) =
        subscriptions::SubscriptionsService::new(feeds.clone(), settings.subscription_limits());
    let subscriptions =
        SubscriptionsServer::new(subscriptions).max_encoding_message_size(max_message);
    let groups = persistent::Groups::load(
        store.clone(),
        feeds,
        shutdown_receiver.clone(),
        settings.group_limits(),
    )
    .await
    .map_err(|error| ServerError::Groups(error.to_string()))?;
    let persistent_subscriptions =
        PersistentSubscriptionsServer::new(persistent::PersistentService::new(groups))
            .max_encoding_message_size(max_message);
    let server_info = ServerServer::new(server_info::ServerInfoService::new(
        store.clone(),
        settings.durability.into(),
        subscription_stats,
    ));

    let local = listener.local_addr()?;
    tracing::info!(listen = %local, data = %settings.data.display(), durability = ?settings.durability, "cairn serving");
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, ending open streams");
        health_reporter
            .set_not_serving::<StreamsServer<streams::StreamsService>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = shutdown_sender.send(true);
    };
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(streams)
        .add_service(subscriptions)
        .add_service(persistent_subscriptions)
        .add_service(server_info)
        .serve_with_incoming_shutdown(accept_nodelay(listener), signal);
    // Graceful shutdown waits for every open call. Reads and subscriptions end
    // on the signal, but a call the server cannot end (a health Watch, a client
    // that stopped reading) would hold the process forever: after a grace period
    // the remaining connections are dropped.
    let mut signalled = shutdown_receiver.clone();
    tokio::select! {
        served = serve => served?,
        () = async {
            let _ = signalled.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "closing connections still open after the grace period");
        }
    }
    // The shutdown signal has ended every feed and group actor (the actors
    // write their final checkpoints on the way out); wait for them, bounded,
    // since a storage read cannot be interrupted.
    background.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, background.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = background.len(),
            "background tasks still running after the grace period"
        );
    }
    let closing = store.clone();
    tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .map_err(|error| std::io::Error::other(format!("store shutdown task failed: {error}")))?;
    tracing::info!("stopped cleanly");
    Ok(())
}
