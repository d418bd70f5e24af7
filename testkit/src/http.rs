//! A minimal HTTP/1.1 client for tests of the server's HTTP listener
//! (`/metrics`, the admin UI's API): one request per connection
//! (`Connection: close`), over plain TCP or, for a secure [`TestServer`], TLS
//! trusting its CA. Exact bytes on the wire, no client library between the
//! test and the server, so tests see precisely what the server sent
//! (status, headers, chunked bodies).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::TestServer;

/// How long a response may take.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(30);

/// A connection's bytes: TCP or TLS.
pub trait HttpIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> HttpIo for T {}

/// An HTTP response: status, headers (lowercase names) and body (chunked
/// transfer encoding undone).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header values by lowercase name (the last of repeated ones).
    pub headers: HashMap<String, String>,
    /// The body, as text.
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON; panics, showing it, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("{error}: not JSON: {}", self.body))
    }
}

/// `Basic base64(user:password)`, for an `Authorization` header.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A connection to `server`'s HTTP listener: TLS (trusting the server's
/// CA) for a secure server, plain TCP otherwise.
pub async fn connect(server: &TestServer) -> Box<dyn HttpIo> {
    let address = server.http_address.expect("the HTTP listener is on");
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the HTTP listener");
    match &server.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let ca = std::fs::read(&tls.files.ca).expect("read the test CA");
            Box::new(tls_connect(address, &ca, tcp).await)
        }
    }
}

/// A TLS client connection over `tcp`, trusting the certificates of `ca`.
pub async fn tls_connect(
    address: SocketAddr,
    ca: &[u8],
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(address.ip().into()),
            tcp,
        )
        .await
        .expect("TLS handshake")
}

/// Writes one request (`Connection: close`) with the given extra headers
/// (a `POST` gets an empty body).
pub async fn send_request(
    io: &mut (impl AsyncWrite + Unpin + ?Sized),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: cairn\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str("Content-Length: 0\r\n");
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await.expect("send");
}

/// Reads a whole response from `io` (until the server closes).
pub async fn read_response(io: &mut (impl AsyncRead + Unpin + ?Sized)) -> HttpResponse {
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify; what arrived counts.
    let _ = tokio::time::timeout(RESPONSE_DEADLINE, io.read_to_end(&mut raw))
        .await
        .expect("a response in time");
    parse_response(&raw)
}

/// One request to `server`, the whole response.
pub async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut io = connect(server).await;
    send_request(&mut io, method, path, headers).await;
    read_response(&mut io).await
}

/// `GET path`, with an `Authorization` value when given.
pub async fn get(server: &TestServer, path: &str, authorization: Option<&str>) -> HttpResponse {
    match authorization {
        Some(value) => request(server, "GET", path, &[("Authorization", value)]).await,
        None => request(server, "GET", path, &[]).await,
    }
}

/// Parses a response: status line, headers, body.
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let raw = String::from_utf8_lossy(raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header block in {raw:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The body of a chunked transfer encoding.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}
