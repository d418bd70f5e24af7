//! The `cairn.v1` gRPC facade: with `kurrent/` (the KurrentDB-compatible
//! facade, which reuses its `auth` layer), the only code of the daemon that
//! names tonic or `cairn_proto`. One adapter per service (`streams`, with its
//! `append_stream` call, `subscriptions`,
//! `persistent`, `server_info`, `users`, `operations`, `cluster`), one conversion module per direction
//! (`from_proto`, `to_proto`), and one error mapping (`status`). Every
//! decision is the engine's; adapters only convert.

mod append_stream;
pub(crate) mod auth;
mod cluster;
mod from_proto;
mod operations;
mod persistent;
mod server_info;
mod status;
mod streams;
mod subscriptions;
mod to_proto;
mod users;

use std::future::Future;
use std::time::Duration;

use cairn_engine::Engine;
use cairn_proto::v1::cluster_server::ClusterServer;
use cairn_proto::v1::operations_server::OperationsServer;
use cairn_proto::v1::persistent_subscriptions_server::PersistentSubscriptionsServer;
use cairn_proto::v1::server_server::ServerServer;
use cairn_proto::v1::streams_server::StreamsServer;
use cairn_proto::v1::users_server::UsersServer;
use cairn_storage::Durability;
use tokio::net::TcpListener;
use tonic::codegen::http;

use crate::listener::{self, Connection, ConnectionLimits};

/// How long shutdown waits for open calls before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// HTTP/2 keepalive: a ping this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...answered within this, or the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often health checks whether the store stopped accepting writes.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// What the facade needs besides the engine.
#[derive(Clone)]
pub struct GrpcOptions {
    /// Largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Reported by `Server.Info`.
    pub durability: Durability,
    /// Bounds on accepted connections.
    pub connections: ConnectionLimits,
    /// TLS for every connection (`None`: plaintext, insecure mode).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Cluster mode: this node's raft (cluster status); `None` on a single node.
    pub cluster: Option<std::sync::Arc<cairn_cluster::node::ClusterNode>>,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.socket().connect_info()
    }
}

/// Rewrites the statuses tonic produces itself, before a request reaches an
/// adapter, into the protocol's contract: an undecodable request (invalid
/// UTF-8 in a string, a malformed message) is INVALID_ARGUMENT, not INTERNAL;
/// a request over the decoding limit is RESOURCE_EXHAUSTED, not OUT_OF_RANGE.
/// Only trailers-only error responses carry `grpc-status` in their headers, so
/// every other response passes untouched.
fn transport_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let Some(code) = headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
    else {
        return response;
    };
    let message = headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    // grpc-message is percent-encoded; the tonic texts matched are plain ASCII
    // words separated by %20.
    let message = message.replace("%20", " ");
    let rewritten = match code {
        "13" if message.contains("failed to decode") => Some((
            tonic::Code::InvalidArgument,
            "the request is not a valid message (is every string valid UTF-8?)",
        )),
        "11" if message.contains("message length too large") => Some((
            tonic::Code::ResourceExhausted,
            "the request is larger than the server's message limit",
        )),
        _ => None,
    };
    if let Some((code, text)) = rewritten {
        headers.insert("grpc-status", http::HeaderValue::from(code as i32));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_str(&text.replace(' ', "%20")).expect("an ASCII header value"),
        );
    }
    response
}

/// Reports NOT_SERVING (overall and for every service) once the store has
/// stopped accepting writes (fail-stop): an orchestrator's health check then
/// restarts the process, which recovers from the log. Ends at shutdown.
async fn report_fail_stop(engine: Engine, health: tonic_health::server::HealthReporter) {
    let mut shutdown = engine.shutdown_signal();
    let mut poll = tokio::time::interval(HEALTH_POLL);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.wait_for(|stopping| *stopping) => return,
        }
        if let Some(error) = engine.store().poisoned() {
            tracing::error!(%error, "the store stopped accepting writes; health now reports NOT_SERVING");
            health
                .set_not_serving::<StreamsServer<streams::StreamsService>>()
                .await;
            health
                .set_not_serving::<ServerServer<server_info::ServerInfoService>>()
                .await;
            health
                .set_not_serving::<PersistentSubscriptionsServer<persistent::PersistentService>>()
                .await;
            health
                .set_not_serving::<UsersServer<users::UsersService>>()
                .await;
            health
                .set_not_serving::<OperationsServer<operations::OperationsService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            return;
        }
    }
}

/// Serves `cairn.v1`, health and reflection on `listener` until `shutdown`
/// resolves; then begins the engine's shutdown (open streams end with
/// UNAVAILABLE), waits for open calls and, after a grace period, drops the
/// connections still open. Does not close the engine.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
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
    health_reporter
        .set_serving::<UsersServer<users::UsersService>>()
        .await;
    health_reporter
        .set_serving::<OperationsServer<operations::OperationsService>>()
        .await;

    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|error| format!("reflection setup failed: {error}"))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|error| format!("reflection setup failed: {error}"))?;

    let max_message = options.max_message_bytes;
    let streams = StreamsServer::new(streams::StreamsService::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let subscriptions = subscriptions::SubscriptionsService::new(engine.clone(), max_message);
    let persistent_subscriptions =
        PersistentSubscriptionsServer::new(persistent::PersistentService::new(engine.clone()))
            .max_decoding_message_size(persistent::CONSUME_MESSAGE_BYTES)
            .max_encoding_message_size(max_message);
    let server_info = ServerServer::new(server_info::ServerInfoService::new(
        engine.clone(),
        options.durability,
    ));
    let operations = OperationsServer::new(operations::OperationsService::new(engine.clone()))
        .max_decoding_message_size(operations::OPERATIONS_REQUEST_BYTES)
        .max_encoding_message_size(max_message);
    let cluster = ClusterServer::new(cluster::ClusterService::new(
        engine.clone(),
        options.cluster.clone(),
    ))
    .max_decoding_message_size(cluster::CLUSTER_REQUEST_BYTES)
    .max_encoding_message_size(max_message);
    let users = UsersServer::new(users::UsersService::new(engine.clone()))
        .max_decoding_message_size(users::USERS_REQUEST_BYTES)
        .max_encoding_message_size(max_message);

    engine
        .tasks()
        .spawn(report_fail_stop(engine.clone(), health_reporter.clone()));

    let signalled_engine = engine.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, ending open streams");
        health_reporter
            .set_not_serving::<StreamsServer<streams::StreamsService>>()
            .await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        signalled_engine.begin_shutdown();
    };
    let serve = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            transport_status::<tonic::body::Body>,
        ))
        // Every call but health and reflection is authenticated here, once.
        .layer(auth::AuthLayer::new(std::sync::Arc::clone(
            engine.security(),
        )))
        // Pings find dead peers (no answer within the timeout closes the
        // connection), and their answers are traffic: a live client with a
        // quiet subscription never reaches the idle timeout, because pings
        // come at least four times per idle timeout.
        .http2_keepalive_interval(Some(
            KEEPALIVE_INTERVAL.min(options.connections.idle_timeout / 4),
        ))
        .http2_keepalive_timeout(Some(
            KEEPALIVE_TIMEOUT.min(options.connections.idle_timeout / 4),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(streams)
        .add_service(subscriptions)
        .add_service(persistent_subscriptions)
        .add_service(server_info)
        .add_service(users)
        .add_service(operations)
        .add_service(cluster)
        .serve_with_incoming_shutdown(
            listener::accept(listener, options.connections, options.tls),
            signal,
        );
    // Graceful shutdown waits for every open call. Reads and subscriptions end
    // on the signal, but a call the server cannot end (a health Watch, a client
    // that stopped reading) would hold the process forever: after a grace period
    // the remaining connections are dropped.
    let mut signalled = engine.shutdown_signal();
    tokio::select! {
        served = serve => served.map_err(|error| format!("gRPC transport error: {error}"))?,
        () = async {
            let _ = signalled.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "closing connections still open after the grace period");
        }
    }
    Ok(())
}
