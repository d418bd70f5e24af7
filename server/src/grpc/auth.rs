//! Authentication at the facade boundary, once per call: a tower layer reads
//! the `authorization` metadata (HTTP Basic or a bearer token) and the peer
//! address, asks the engine who that is, and either stores the
//! [`Principal`] in the request's extensions or answers UNAUTHENTICATED
//! before any adapter runs. Health checks, reflection and two KurrentDB
//! discovery methods (Gossip.Read, ServerFeatures.GetSupportedMethods) need
//! no credentials, and get no principal.
//!
//! Adapters take the caller with [`principal`] and hand it to the engine,
//! which makes every access decision. This module never logs a credential.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cairn_engine::{Credentials, Error, Principal, Security};
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Status};

use super::status::to_status;

/// Paths served without credentials: health (orchestrators probe it) and
/// reflection (it describes the API, nothing of the data).
const OPEN_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.",
    "/grpc.reflection.v1.",
    "/grpc.reflection.v1alpha.",
];

/// Methods served without credentials, matched exactly: KurrentDB answers
/// them anonymously and its clients call them before authenticating (to find
/// the leader and the methods the server has). They reveal only the
/// advertised host and port and the list of implemented methods; their
/// handlers take no principal. Nothing else of those services is open.
const OPEN_METHODS: [&str; 2] = [
    "/event_store.client.gossip.Gossip/Read",
    "/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
];

/// Whether a call to `path` is served without credentials.
fn is_open(path: &str) -> bool {
    OPEN_PREFIXES.iter().any(|open| path.starts_with(open)) || OPEN_METHODS.contains(&path)
}

/// The caller of `request`, as the authentication layer found it. A request
/// that did not pass the layer has no principal and is refused: a missing
/// layer must never mean an open server.
pub(crate) fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| {
            to_status(&Error::Unauthenticated(
                "the call was not authenticated".into(),
            ))
        })
}

/// The credentials in an `authorization` value (see
/// [`Credentials::from_authorization`]).
fn credentials_of(value: &http::HeaderValue) -> Result<Credentials, Error> {
    Credentials::from_authorization(value.as_bytes())
}

/// The peer's address. Plaintext and TLS connections alike carry
/// `TcpConnectInfo` (the listener does the TLS handshake itself; see
/// `impl Connected for Connection`).
fn source_of<B>(request: &http::Request<B>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|address| address.ip())
}

/// The layer: wraps every routed service of the gRPC server.
#[derive(Clone)]
pub(crate) struct AuthLayer {
    security: Arc<Security>,
}

impl AuthLayer {
    pub(crate) fn new(security: Arc<Security>) -> Self {
        Self { security }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            security: Arc::clone(&self.security),
        }
    }
}

/// The service the layer makes: authenticates, then calls `inner`.
#[derive(Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    security: Arc<Security>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service is the one `poll_ready` was called on; a clone
        // takes its place for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if is_open(path) {
            return Box::pin(inner.call(request));
        }
        if !self.security.enabled() {
            request.extensions_mut().insert(Principal::system());
            return Box::pin(inner.call(request));
        }
        let credentials = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(credentials_of)
            .transpose();
        let source = source_of(&request);
        let security = Arc::clone(&self.security);
        Box::pin(async move {
            let authenticated = match credentials {
                Ok(credentials) => security.authenticate(credentials, source).await,
                Err(error) => Err(error),
            };
            match authenticated {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(error) => Ok(to_status(&error).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(value).unwrap()
    }

    use base64::Engine as _;

    #[test]
    fn basic_and_bearer_credentials_parse() {
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            credentials_of(&header(&format!("Basic {basic}"))).unwrap(),
            Credentials::Basic {
                user: "alice".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            credentials_of(&header("bearer cairn_abc")).unwrap(),
            Credentials::Bearer("cairn_abc".into())
        );
    }

    #[test]
    fn only_health_reflection_and_the_kurrent_discovery_methods_are_open() {
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/event_store.client.gossip.Gossip/Read",
            "/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/event_store.client.streams.Streams/Read",
            "/event_store.client.gossip.Gossip/ReadAll",
            "/event_store.client.gossip.Gossip/",
            "/event_store.client.server_features.ServerFeatures/GetSupportedMethodsX",
            "/event_store.client.operations.Operations/StartScavenge",
            "/cairn.v1.Streams/Read",
            "/event_store.client.gossip.Gossip/Read/",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }

    #[test]
    fn malformed_authorization_is_unauthenticated() {
        for value in [
            "Basic !!!",
            "Basic YWxpY2U=",
            "Digest x",
            "Bearer ",
            "token",
        ] {
            let error = credentials_of(&header(value)).unwrap_err();
            assert!(matches!(error, Error::Unauthenticated(_)), "{value}");
            assert!(!error.to_string().contains("YWxp"), "{value}");
        }
        let long = format!(
            "Bearer {}",
            "x".repeat(cairn_engine::security::MAX_AUTHORIZATION_BYTES)
        );
        assert!(credentials_of(&header(&long)).is_err());
    }
}
