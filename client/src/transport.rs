//! How a [`Client`](crate::Client) reaches the server: its own HTTP/2
//! connection driven by hyper directly ([`Transport::Direct`]), or a tonic
//! [`Channel`] the caller built ([`Transport::Channel`]).
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// A client's way to the server (cheap to clone; clones share it).
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    Direct(Direct),
    Channel(Channel),
}

impl tower_service::Service<http::Request<Body>> for Transport {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            // Readiness is awaited per call, on the connection's own sender.
            Transport::Direct(_) => Poll::Ready(Ok(())),
            Transport::Channel(channel) => channel.poll_ready(context).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self {
            Transport::Direct(direct) => {
                let direct = direct.clone();
                Box::pin(async move { direct.send(request).await })
            }
            Transport::Channel(channel) => {
                let response = channel.call(request);
                Box::pin(async move { response.await.map_err(Into::into) })
            }
        }
    }
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
    /// The open connection's sender; `None` before the first connect.
    /// Locked only to clone or replace it, never across an await.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Serialises reconnects, so concurrent calls after a drop open one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Direct {
    /// Connects to `authority` (`host:port`).
    pub(crate) async fn connect(authority: String) -> Result<Self, BoxError> {
        let direct = Self {
            inner: Arc::new(DirectInner {
                authority,
                sender: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        };
        direct.sender().await?;
        Ok(direct)
    }

    /// Sends one request. A connection that cannot be opened or that closed
    /// under the call is UNAVAILABLE (what tonic's `Channel` reports too); other
    /// failures go to tonic as they are, which maps HTTP/2 errors to codes.
    async fn send(&self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
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
        let (sender, connection) = Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or every sender is
            // dropped; the next call reconnects.
            let _ = connection.await;
        });
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
