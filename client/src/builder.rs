//! [`ClientBuilder`]: how a [`Client`] connects — plaintext or TLS, which CAs
//! it trusts, the client certificate it presents (mutual TLS), and the
//! credentials sent with every call; with seeds, the cluster nodes it may
//! use (`leader.rs` follows the leader among them).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::leader::DEFAULT_FAILOVER_DEADLINE;
use crate::transport::{Direct, Route, TlsConnect, Transport};
use crate::{Client, Error, Result, leader};

/// PEM text, from a file or in memory.
#[derive(Debug, Clone)]
enum Pem {
    File(PathBuf),
    Text(Vec<u8>),
}

impl Pem {
    /// The PEM bytes. Files are small and read once per connect, so a
    /// blocking read is acceptable here.
    fn bytes(&self, what: &str) -> Result<Vec<u8>> {
        match self {
            Pem::Text(text) => Ok(text.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|error| {
                Error::Connect(format!(
                    "cannot read the {what} {}: {error}",
                    path.display()
                ))
            }),
        }
    }

    fn certificates(&self, what: &str) -> Result<Vec<CertificateDer<'static>>> {
        let bytes = self.bytes(what)?;
        let certificates = CertificateDer::pem_slice_iter(&bytes)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| Error::Connect(format!("the {what} is not PEM: {error}")))?;
        if certificates.is_empty() {
            return Err(Error::Connect(format!(
                "the {what} holds no CERTIFICATE PEM block"
            )));
        }
        Ok(certificates)
    }
}

/// What is sent as `authorization` on every call.
#[derive(Clone)]
enum Credentials {
    Basic { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => formatter
                .debug_struct("Basic")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(_) => formatter.write_str("Token(<redacted>)"),
        }
    }
}

impl Credentials {
    fn header(&self) -> Result<http::HeaderValue> {
        let value = match self {
            Credentials::Basic { user, password } => {
                if user.contains(':') {
                    return Err(Error::Connect(
                        "a user name cannot contain ':' (HTTP Basic)".into(),
                    ));
                }
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {encoded}")
            }
            Credentials::Token(token) => format!("Bearer {}", token.trim()),
        };
        http::HeaderValue::from_str(&value).map_err(|_| {
            Error::Connect("the token holds characters that cannot be sent in a header".into())
        })
    }
}

/// How to connect: made by [`Client::builder`], finished by
/// [`ClientBuilder::connect`].
///
/// ```no_run
/// # async fn demo() -> cairn_client::Result<()> {
/// let client = cairn_client::Client::builder("https://cairn.internal:7070")
///     .ca_file("certs/ca.pem")
///     .basic("admin", "secret")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connect() is called"]
pub struct ClientBuilder {
    /// `http://host:port` or `https://host:port`.
    address: String,
    /// CAs to trust instead of the system's.
    ca: Option<Pem>,
    /// Client certificate chain and key, for mutual TLS.
    identity: Option<(Pem, Pem)>,
    /// Sent with every call.
    credentials: Option<Credentials>,
    /// Cluster mode: the other seeds (the address is the first); `None`
    /// for a single node, whose calls are never retried.
    seeds: Option<Vec<String>>,
    /// How long a cluster client's write keeps trying to reach the leader.
    failover_deadline: Duration,
}

impl ClientBuilder {
    pub(crate) fn new(address: String) -> Self {
        Self {
            address,
            ca: None,
            identity: None,
            credentials: None,
            seeds: None,
            failover_deadline: DEFAULT_FAILOVER_DEADLINE,
        }
    }

    /// Cluster mode: the builder's address and `seeds` (duplicates
    /// ignored, one scheme for all) are nodes of one cluster. The client
    /// connects to the first that answers; writes go to the leader: on
    /// [`Error::NotLeader`] naming it the client switches there, on
    /// `NotLeader` without a leader, [`Error::Unavailable`] or
    /// [`Error::Connect`] it tries the next seed, waiting 50 ms doubling up
    /// to 250 ms, until [`ClientBuilder::failover_deadline`]; then the last
    /// error is returned. Each retry is the exact request (same event ids
    /// and expectations), so a write committed before its leader went away
    /// comes back with `idempotent_replay == true` instead of twice. Other
    /// errors are answers and are never retried.
    ///
    /// User and token changes, membership changes and scavenge start/stop
    /// follow the leader the same way (`create_token` only after
    /// `NotLeader`: see `Client::create_token`). Every other call (reads,
    /// subscriptions, consumer groups, user and status queries) goes to the
    /// node in use without retries: the leader once a
    /// write found it, until then the first seed that answered (a follower
    /// serves reads from its applied prefix; pass
    /// [`ReadOptions::at_least`](crate::ReadOptions::at_least) to read your
    /// own writes there). An [`Client::append_session`] stays on the node it
    /// was opened on. The TLS settings and credentials apply to every node;
    /// each node's certificate is checked against its own host name.
    ///
    /// Without seeds a client uses its one address and retries nothing.
    ///
    /// ```no_run
    /// # async fn demo() -> cairn_client::Result<()> {
    /// let client = cairn_client::Client::builder("https://node-1:7070")
    ///     .seeds(["https://node-2:7070", "https://node-3:7070"])
    ///     .ca_file("certs/ca.pem")
    ///     .token("...")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn seeds<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.seeds
            .get_or_insert_with(Vec::new)
            .extend(seeds.into_iter().map(Into::into));
        self
    }

    /// How long a cluster client's write keeps trying to reach the leader
    /// (10 s by default, [`DEFAULT_FAILOVER_DEADLINE`]): it bounds the whole
    /// call, attempts and waits together. Only with
    /// [`ClientBuilder::seeds`].
    pub fn failover_deadline(mut self, deadline: Duration) -> Self {
        self.failover_deadline = deadline;
        self
    }

    /// Trusts the CA certificates in this PEM file (instead of the
    /// operating system's), e.g. the `ca.pem` of `cairn dev-certs`.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Pem::File(path.into()));
        self
    }

    /// Trusts the CA certificates in this PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Text(pem.into()));
        self
    }

    /// Presents this certificate chain and key (PEM files) to a server that
    /// requires client certificates (mutual TLS).
    pub fn identity(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.identity = Some((Pem::File(cert_file.into()), Pem::File(key_file.into())));
        self
    }

    /// [`ClientBuilder::identity`] from PEM text.
    pub fn identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((Pem::Text(cert_pem.into()), Pem::Text(key_pem.into())));
        self
    }

    /// Authenticates every call as `user` with `password` (HTTP Basic; use
    /// it over TLS only). Replaces a token given before.
    pub fn basic(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Authenticates every call with a bearer token. Replaces a user and
    /// password given before.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Some(Credentials::Token(token.into()));
        self
    }

    /// Connects. `https://` addresses use TLS and check the server's
    /// certificate against the CA file (or the system's CAs); `http://` ones
    /// are plaintext. Credentials are sent with every call, streaming ones
    /// included; a server that refuses them answers calls with
    /// [`Error::Unauthenticated`], not here (health checks need none).
    pub async fn connect(self) -> Result<Client> {
        let address = self.address.clone();
        let (origin, tls, authority) = parse_address(&address)?;
        let tls = if tls {
            let roots = match &self.ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    for certificate in ca.certificates("CA file")? {
                        roots.add(certificate).map_err(|error| {
                            Error::Connect(format!("cannot trust the CA file: {error}"))
                        })?;
                    }
                    roots
                }
                None => system_roots()?,
            };
            let identity = match &self.identity {
                None => None,
                Some((cert, key)) => {
                    let chain = cert.certificates("client certificate file")?;
                    let key = PrivateKeyDer::from_pem_slice(&key.bytes("client key file")?)
                        .map_err(|error| {
                            Error::Connect(format!(
                                "the client key file holds no usable key: {error}"
                            ))
                        })?;
                    Some((chain, key))
                }
            };
            Some(
                TlsConnect::new(roots, identity, authority.host())
                    .map_err(|error| Error::Connect(format!("cannot set up TLS: {error}")))?,
            )
        } else {
            if self.ca.is_some() || self.identity.is_some() {
                return Err(Error::Connect(format!(
                    "bad address {address:?}: a CA file or client certificate needs an \
                     https:// address"
                )));
            }
            None
        };
        let authorization = self
            .credentials
            .as_ref()
            .map(Credentials::header)
            .transpose()?;
        let Some(seeds) = &self.seeds else {
            let direct = Direct::connect(authority.to_string(), tls)
                .await
                .map_err(|error| Error::Connect(format!("cannot connect to {address}: {error}")))?;
            return Ok(Client::over(
                Transport::new(Route::Direct(direct), authorization),
                Some(origin),
            ));
        };
        let mut nodes = vec![authority];
        for seed in seeds {
            let (seed_origin, _, seed_authority) = parse_address(seed)?;
            if seed_origin.scheme() != origin.scheme() {
                return Err(Error::Connect(format!(
                    "seed {seed:?} has another scheme than {address:?}: give every node's \
                     address with the same one"
                )));
            }
            if !nodes.contains(&seed_authority) {
                nodes.push(seed_authority);
            }
        }
        let follow = leader::connect(nodes, tls, self.failover_deadline).await?;
        let mut client = Client::over(
            Transport::new(Route::Follow(follow.clone()), authorization),
            Some(origin),
        );
        client.follow = Some(follow);
        Ok(client)
    }
}

/// `address` as an origin, whether it is `https://`, and its `host:port`.
fn parse_address(address: &str) -> Result<(http::Uri, bool, http::uri::Authority)> {
    let bad = |why: &str| Error::Connect(format!("bad address {address:?}: {why}"));
    let origin: http::Uri = address
        .parse()
        .map_err(|error: http::uri::InvalidUri| bad(&error.to_string()))?;
    match (origin.scheme_str(), origin.authority()) {
        (Some("http"), Some(authority)) => {
            let authority = authority.clone();
            Ok((origin, false, authority))
        }
        (Some("https"), Some(authority)) => {
            let authority = authority.clone();
            Ok((origin, true, authority))
        }
        _ => Err(bad("expected http://host:port or https://host:port")),
    }
}

/// The operating system's CA certificates.
fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(Error::Connect(format!(
            "no CA file given and no system CA certificates found ({}); give a CA file",
            errors.join("; ")
        )));
    }
    Ok(roots)
}
