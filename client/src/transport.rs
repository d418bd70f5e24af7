//! How a [`Client`](crate::Client) reaches the server: its own HTTP/2
//! connection driven by hyper directly ([`Route::Direct`]), in plaintext or
//! TLS (rustls with ring, ALPN `h2`), or a tonic [`Channel`] the caller built
//! ([`Route::Channel`]), or whichever node a cluster client follows now
//! ([`Route::Follow`], see `leader.rs`). Every way the [`Transport`] sets the caller's
//! `authorization` header on every request, unary and streaming alike.
//!
//! The direct connection exists for latency: tonic's `Channel` puts a
//! `tower::Buffer` task between the caller and hyper's connection task, one
//! more hand-off between threads on every call. A direct call goes from the
//! caller's task to the connection task. The connection is opened by
//! `Client::connect` and opened again by the first call after it closed.
//!
//! This module owns the connection; it knows nothing of Cairn's services.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tonic::transport::Channel;

use crate::leader::Follow;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// A client's way to the server, with its credentials (cheap to clone;
/// clones share the connection).
#[derive(Clone)]
pub(crate) struct Transport {
    /// Where requests go.
    route: Route,
    /// Set on every request; marked sensitive (never indexed by HPACK, never
    /// shown by `Debug`).
    authorization: Option<http::HeaderValue>,
}

/// Where a [`Transport`]'s requests go.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// The client's own HTTP/2 connection.
    Direct(Direct),
    /// A channel the caller built.
    Channel(Channel),
    /// The node a cluster client uses now (the leader once a write found
    /// it), switched by `leader.rs` when a write learns of another.
    Follow(Arc<Follow>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Transport")
            .field("route", &self.route)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Transport {
    /// Requests go over `route`, carrying `authorization` when given.
    pub(crate) fn new(route: Route, authorization: Option<http::HeaderValue>) -> Self {
        let authorization = authorization.map(|mut value| {
            value.set_sensitive(true);
            value
        });
        Self {
            route,
            authorization,
        }
    }
}

impl tower_service::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.route {
            // Readiness is awaited per call, on the connection's own sender.
            Route::Direct(_) | Route::Follow(_) => Poll::Ready(Ok(())),
            Route::Channel(channel) => channel.poll_ready(context).map_err(Into::into),
        }
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        match &mut self.route {
            Route::Direct(direct) => {
                let direct = direct.clone();
                Box::pin(async move { direct.send(request).await })
            }
            Route::Channel(channel) => {
                let response = channel.call(request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
            Route::Follow(follow) => {
                let direct = follow.route(&mut request);
                Box::pin(async move { direct.send(request).await })
            }
        }
    }
}

/// What a TLS connection needs: the client configuration (trusted CAs,
/// optional client certificate) and the name the server's certificate must
/// carry.
#[derive(Clone)]
pub(crate) struct TlsConnect {
    /// Handshakes.
    pub(crate) connector: tokio_rustls::TlsConnector,
    /// The host of the address: a DNS name or an IP address.
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

impl TlsConnect {
    /// A TLS client configuration trusting `roots`, presenting `identity`
    /// (chain and key) when given, for `host`.
    pub(crate) fn new(
        roots: rustls::RootCertStore,
        identity: Option<(
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
        host: &str,
    ) -> Result<Self, BoxError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
            server_name: server_name(host)?,
        })
    }

    /// The same configuration for another `host` (another cluster node): its
    /// certificate must carry that host's name.
    pub(crate) fn for_host(&self, host: &str) -> Result<Self, BoxError> {
        Ok(Self {
            connector: self.connector.clone(),
            server_name: server_name(host)?,
        })
    }
}

/// The name a server's certificate must carry for `host`; `[::1]` in a URL
/// is `::1` in a certificate.
fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, BoxError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|error| format!("{host:?} is not a host name or address: {error}").into())
}

/// One HTTP/2 connection to `authority`, reopened when it has closed.
#[derive(Clone)]
pub(crate) struct Direct {
    inner: Arc<DirectInner>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Direct")
            .field("authority", &self.inner.authority)
            .finish()
    }
}

struct DirectInner {
    /// `host:port`.
    authority: String,
    /// TLS, for `https://` addresses.
    tls: Option<TlsConnect>,
    /// The open connection's sender; `None` before the first connect.
    /// Locked only to clone or replace it, never across an await.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Serialises reconnects, so concurrent calls after a drop open one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Direct {
    /// Connects to `authority` (`host:port`), over TLS when `tls` is given.
    pub(crate) async fn connect(
        authority: String,
        tls: Option<TlsConnect>,
    ) -> Result<Self, BoxError> {
        let direct = Self::lazy(authority, tls);
        direct.sender().await?;
        Ok(direct)
    }

    /// A connection to `authority` opened by its first call, not now.
    pub(crate) fn lazy(authority: String, tls: Option<TlsConnect>) -> Self {
        Self {
            inner: Arc::new(DirectInner {
                authority,
                tls,
                sender: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Sends one request. A connection that cannot be opened or that closed
    /// under the call is UNAVAILABLE (what tonic's `Channel` reports too); other
    /// failures go to tonic as they are, which maps HTTP/2 errors to codes.
    pub(crate) async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let unavailable = |error: &dyn std::fmt::Display| -> BoxError {
            Box::new(tonic::Status::unavailable(format!(
                "connection to {}: {error}",
                self.inner.authority
            )))
        };
        let mut sender = self.sender().await.map_err(|error| unavailable(&error))?;
        sender.ready().await.map_err(|error| unavailable(&error))?;
        match sender.send_request(request).await {
            Ok(response) => Ok(response.map(Body::new)),
            Err(error) if error.is_closed() || error.is_canceled() => Err(unavailable(&error)),
            Err(error) => Err(error.into()),
        }
    }

    /// The open connection's sender, connecting first when there is none.
    async fn sender(&self) -> Result<SendRequest<Body>, BoxError> {
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        let _connecting = self.inner.connecting.lock().await;
        // Another call may have reconnected while this one waited.
        if let Some(sender) = self.open_sender() {
            return Ok(sender);
        }
        let stream = tokio::net::TcpStream::connect(&self.inner.authority).await?;
        stream.set_nodelay(true)?;
        let sender = match &self.inner.tls {
            None => handshake(stream).await?,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await?;
                handshake(stream).await?
            }
        };
        *self.lock() = Some(sender.clone());
        Ok(sender)
    }

    fn open_sender(&self) -> Option<SendRequest<Body>> {
        self.lock()
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<Body>>> {
        self.inner
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Opens HTTP/2 over `io` and spawns the task that drives the connection.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        // Ends when the server closes the connection or every sender is
        // dropped; the next call reconnects.
        let _ = connection.await;
    });
    Ok(sender)
}
