//! The KurrentDB-compatible gRPC facade: existing KurrentDB/EventStoreDB
//! clients (packages `event_store.client.*`) talk to Cairn unchanged, on
//! their own listener, over the same engine as `cairn.v1`.
//!
//! This module and `grpc/` are the only code of the daemon that names tonic
//! or `cairn_proto`. It owns: the listener's tonic server (the same
//! authentication layer, TLS acceptor and connection limits as `cairn.v1`),
//! one adapter per service (`streams`, `persistent`, `operations`, `gossip`,
//! `features`), the wire
//! conversions (`convert`), the `$all` filter (`filter`), the `$$<stream>`
//! metadata mapping (`metadata`) and the one error mapping (`error`). Every
//! decision is the engine's: adapters convert and call it with the caller's
//! principal; nothing here touches the store's writes directly.
//!
//! Position mapping (see `convert`): a KurrentDB commit (and prepare)
//! position is Cairn's global position + 1, so the first event is at 1 and 0
//! means "before everything"; the mapping is reversible both ways.

mod convert;
mod error;
mod features;
mod filter;
mod gossip;
mod metadata;
mod operations;
mod persistent;
mod streams;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_engine::Engine;
use cairn_proto::kurrent::gossip::gossip_server::GossipServer;
use cairn_proto::kurrent::server_features::server_features_server::ServerFeaturesServer;
use cairn_proto::kurrent::streams::streams_server::StreamsServer;
use tokio::net::TcpListener;
use tonic::codegen::http;

use crate::grpc::auth;
use crate::listener::{self, ConnectionLimits};

/// How long shutdown waits for open calls before dropping their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// HTTP/2 keepalive ping interval (capped by a quarter of the idle timeout).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A ping unanswered for this long closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// gRPC services (path prefixes) this facade serves; every other path is
/// answered UNIMPLEMENTED with a message naming the service.
const SERVED_PREFIXES: [&str; 6] = [
    "/event_store.client.streams.Streams/",
    "/event_store.client.persistent_subscriptions.PersistentSubscriptions/",
    "/event_store.client.gossip.Gossip/",
    "/event_store.client.server_features.ServerFeatures/",
    "/event_store.client.operations.Operations/",
    "/grpc.health.v1.Health/",
];

/// What the facade needs besides the engine.
#[derive(Clone)]
pub(crate) struct KurrentOptions {
    /// Largest message decoded or encoded.
    pub max_message_bytes: usize,
    /// Bounds on accepted connections.
    pub connections: ConnectionLimits,
    /// TLS for every connection (`None`: plaintext, insecure mode).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Host and port gossip advertises (the bound address unless configured).
    pub advertise: (String, u16),
    /// Cluster mode: this node's raft, for gossip's members.
    pub cluster: Option<std::sync::Arc<cairn_cluster::node::ClusterNode>>,
}

/// Answers every call to a service the facade does not implement
/// (projections, users, monitoring...) with
/// UNIMPLEMENTED and a message that names it, before authentication.
#[derive(Clone)]
struct UnimplementedLayer;

impl<S> tower::Layer<S> for UnimplementedLayer {
    type Service = Unimplemented<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Unimplemented { inner }
    }
}

#[derive(Clone)]
struct Unimplemented<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Unimplemented<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if SERVED_PREFIXES
            .iter()
            .any(|served| path.starts_with(served))
        {
            return Box::pin(inner.call(request));
        }
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let shown: String = service.chars().take(128).collect();
        let status = tonic::Status::unimplemented(format!(
            "{shown} is not implemented by Cairn's KurrentDB facade \
             (served: Streams, PersistentSubscriptions, Operations scavenge, Gossip, ServerFeatures; see the README's \"KurrentDB clients\")"
        ));
        Box::pin(async move { Ok(status.into_http()) })
    }
}

/// Removes `grpc-status-details-bin` from trailers-only error responses.
/// The shared authentication layer answers with `cairn.v1`'s error contract
/// (a `google.rpc.ErrorInfo` detail); KurrentDB clients that find a rich
/// status take it for one of KurrentDB's own and no longer map the code
/// (UNAUTHENTICATED would become a generic error). This facade's own
/// statuses carry no details, so nothing of its contract is lost.
fn without_cairn_details<B>(mut response: http::Response<B>) -> http::Response<B> {
    response.headers_mut().remove("grpc-status-details-bin");
    response
}

/// Serves the KurrentDB services on `listener` until the engine's shutdown
/// signal flips (the `cairn.v1` facade flips it); then stops accepting, lets
/// open calls finish for a grace period and drops the connections left.
pub(crate) async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: KurrentOptions,
) -> Result<(), String> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<StreamsServer<streams::StreamsService>>()
        .await;
    let max_message = options.max_message_bytes;
    let streams = StreamsServer::new(streams::StreamsService::new(engine.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let gossip = GossipServer::new(gossip::GossipService::new(
        options.advertise.clone(),
        options.cluster.clone(),
    ));
    let features = ServerFeaturesServer::new(features::FeaturesService);

    let mut stopping = engine.shutdown_signal();
    let signal = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    let serve = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            without_cairn_details::<tonic::body::Body>,
        ))
        .layer(UnimplementedLayer)
        .layer(auth::AuthLayer::new(std::sync::Arc::clone(
            engine.security(),
        )))
        .http2_keepalive_interval(Some(
            KEEPALIVE_INTERVAL.min(options.connections.idle_timeout / 4),
        ))
        .http2_keepalive_timeout(Some(
            KEEPALIVE_TIMEOUT.min(options.connections.idle_timeout / 4),
        ))
        .add_service(health_service)
        .add_service(streams)
        .add_service(gossip)
        .add_service(features)
        .add_service(persistent::server(engine.clone(), max_message))
        .add_service(operations::server(engine.clone()))
        .serve_with_incoming_shutdown(
            listener::accept(listener, options.connections, options.tls),
            signal,
        );
    // Subscriptions end on the signal; a call that cannot be ended (a client
    // that stopped reading) must not hold the process: after the grace period
    // the remaining connections are dropped.
    let mut signalled = engine.shutdown_signal();
    tokio::select! {
        served = serve => served.map_err(|error| format!("KurrentDB facade transport error: {error}"))?,
        () = async {
            let _ = signalled.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "KurrentDB facade: closing connections still open after the grace period");
        }
    }
    Ok(())
}
