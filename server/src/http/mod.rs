//! The HTTP listener: Prometheus `/metrics` (and, beside it, the admin UI).
//! Served with axum on its own address (`http_listen`), through the same
//! bounded listener as every facade (connection limit, handshake and idle
//! timeouts, TLS in secure mode), and with the same authentication: HTTP
//! Basic or a bearer token in `authorization`, checked by the engine's
//! [`Security`](cairn_engine::Security). In secure mode `/metrics` needs the
//! `ops` or `admin` role, as every server operation does; an unauthenticated
//! request gets 401 with a `WWW-Authenticate: Basic` challenge (a browser
//! then asks for a login).
//!
//! This module owns HTTP routing and status codes only; every figure comes
//! from [`Engine::render_metrics`] and every access decision from the engine.

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_engine::{Credentials, Engine, Error, Principal};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::listener::{self, Connection, ConnectionLimits};

mod admin;

/// How long shutdown waits for open requests before dropping connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The content type of the OpenMetrics text `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the HTTP listener needs besides the engine.
pub struct HttpOptions {
    /// Bounds on accepted connections.
    pub connections: ConnectionLimits,
    /// TLS for every connection (`None`: plaintext, insecure mode).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The accepted connections, as axum's listener.
struct Accepted {
    connections: ReceiverStream<io::Result<Connection>>,
    local: SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = Connection;
    type Addr = Option<SocketAddr>;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.next().await {
                Some(Ok(connection)) => {
                    let peer = connection.socket().peer_addr().ok();
                    return (connection, peer);
                }
                // The accept loop logs and backs off itself.
                Some(Err(_)) => continue,
                // The accept loop ended (shutdown): accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Some(self.local))
    }
}

/// The peer's address, for the login limiter.
#[derive(Debug, Clone, Copy)]
struct Peer(Option<SocketAddr>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Accepted>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepted>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// The routes, with authentication in front of every one.
fn router(engine: Engine) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .merge(admin::routes())
        .layer(middleware::from_fn_with_state(engine.clone(), authenticate))
        .with_state(engine)
}

/// Serves until the engine's shutdown signal, then waits (bounded) for open
/// requests.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: HttpOptions,
) -> Result<(), String> {
    let local = listener
        .local_addr()
        .map_err(|error| format!("HTTP listener: {error}"))?;
    let accepted = Accepted {
        connections: listener::accept(listener, options.connections, options.tls),
        local,
    };
    tracing::info!(listen = %local, "HTTP serving /metrics");
    let mut stopping = engine.shutdown_signal();
    let mut stopped = engine.shutdown_signal();
    let app = router(engine).into_make_service_with_connect_info::<Peer>();
    let serve = axum::serve(accepted, app)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .into_future();
    tokio::select! {
        served = serve => served.map_err(|error| format!("HTTP listener: {error}")),
        () = async {
            let _ = stopped.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// An engine error as an HTTP response: status and the error's message
/// (engine messages never hold paths or internals).
fn error_response(error: &Error) -> Response {
    let status = match error {
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::PermissionDenied { .. } => StatusCode::FORBIDDEN,
        Error::ShuttingDown | Error::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut response = (status, format!("{error}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"cairn\", charset=\"UTF-8\""),
        );
    }
    response
}

/// Finds the caller (or answers 401) and puts the [`Principal`] in the
/// request's extensions for the handlers.
async fn authenticate(
    State(engine): State<Engine>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let security = engine.security();
    let principal = if security.enabled() {
        let credentials = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|value| Credentials::from_authorization(value.as_bytes()))
            .transpose();
        let authenticated = match credentials {
            Ok(credentials) => {
                security
                    .authenticate(credentials, peer.map(|peer| peer.ip()))
                    .await
            }
            Err(error) => Err(error),
        };
        match authenticated {
            Ok(principal) => principal,
            Err(error) => return error_response(&error),
        }
    } else {
        Principal::system()
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// `GET /metrics`: every metric, for an operator.
async fn metrics(
    State(engine): State<Engine>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Response {
    if let Err(error) = engine.authorize_operations(&principal, "read metrics") {
        return error_response(&error);
    }
    match engine.render_metrics().await {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "metrics could not be gathered");
            error_response(&error)
        }
    }
}
