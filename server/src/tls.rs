//! TLS for the listeners (rustls with the ring provider; no OpenSSL).
//!
//! The server's certificate and key come from PEM files and are reloaded
//! without a restart: on SIGHUP, and when either file changes (the files'
//! modification time and size are polled every `tls_reload_interval_ms`).
//! A reload swaps the key that [`CurrentKey`] hands to new handshakes;
//! connections already open keep the session they negotiated, so nothing is
//! dropped. A reload that fails (a half-written or bad file, a key that does
//! not fit the certificate) keeps the previous certificate and logs an error;
//! a rotation that writes the certificate and then the key may log one such
//! error in between, and the next poll loads the pair.
//!
//! The client CA of mutual TLS (`tls_client_ca_file`) is read once at start:
//! changing which clients are trusted takes a restart.
//!
//! Cluster mode's mutual TLS between nodes ([`ClusterTls`]) uses the same
//! loaders: one certificate per node, served by the node-to-node listener and
//! presented to peers, and one CA that both sides check the other's
//! certificate against. Its files are read once at start (no reload). With
//! a peer name (`--cluster-tls-peer-name`), the node-to-node listener also
//! requires the client certificate to be valid for that DNS name
//! ([`PeerNameVerifier`]), so that the CA's other client certificates (users,
//! services) are no peers, and a dialling node requires the same of the
//! listener it reaches ([`PeerNameServerVerifier`], besides the dialled
//! host's name), so that a server of the CA that is no node (a client
//! listener, another service at a reused address) is not taken for a peer;
//! the node's own certificate is checked for it at start, since its peers
//! check it in turn.
//!
//! The handshake itself runs in the listener ([`crate::listener`]), one task
//! per connection, bounded by the handshake timeout. ALPN offers `h2` only:
//! every facade speaks HTTP/2.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::TlsAcceptor;

use crate::settings::{ClusterTlsFiles, TlsFiles};

/// Why TLS could not be set up or a reload failed. Every message names the
/// file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or is not PEM.
    #[error("cannot read the {what} {}: {error}", path.display())]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
    /// The file holds no PEM block of the kind needed.
    #[error("the {what} {} holds no {expected} PEM block", path.display())]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM label expected, e.g. `CERTIFICATE`.
        expected: &'static str,
    },
    /// The key is unusable or belongs to another certificate.
    #[error("the key {} does not fit the certificate {}: {error}", key.display(), cert.display())]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        error: String,
    },
    /// This node's certificate lacks the peer name its peers require.
    #[error(
        "the cluster TLS certificate file {} is not valid for --cluster-tls-peer-name {name}, \
         so its peers would refuse it ({error}); issue it with {name} as a DNS name among its \
         subject alternative names, or drop --cluster-tls-peer-name",
        cert.display()
    )]
    PeerName {
        /// The certificate file.
        cert: PathBuf,
        /// The peer name.
        name: String,
        /// Why the name check failed (rustls-webpki, in rustls' words).
        error: String,
    },
    /// rustls refused the configuration (e.g. a client CA it cannot use).
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// The crypto provider of every TLS connection of the workspace.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key new handshakes get; swapped by reloads.
#[derive(Debug)]
pub(crate) struct CurrentKey {
    /// Locked only to clone or replace the `Arc`, never across an await.
    key: RwLock<Arc<CertifiedKey>>,
}

impl CurrentKey {
    fn get(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.key.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn set(&self, key: CertifiedKey) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CurrentKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The certificates in `path` (PEM), in file order.
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |error: &dyn std::fmt::Display| TlsError::Read {
        what,
        path: path.to_owned(),
        error: error.to_string(),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| read(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read(&error))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certificates)
}

/// The private key in `path` (PEM: PKCS#8, PKCS#1 or SEC1).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "TLS key file",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        error => TlsError::Read {
            what: "TLS key file",
            path: path.to_owned(),
            error: error.to_string(),
        },
    })
}

/// Loads a certificate chain and its key, checking that they belong together.
pub(crate) fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = certificates("TLS certificate file", cert)?;
    let private = private_key(key)?;
    certified_key(chain, private, cert, key, provider)
}

/// `chain` with its `private` key, refused when they do not belong together
/// (the error names the files they came from).
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    private: PrivateKeyDer<'static>,
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain, private, provider).map_err(|error| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        error: error.to_string(),
    })
}

/// The trust anchors in the CA file `path` (`what` names it in errors).
fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(what, path)? {
        roots.add(certificate).map_err(|error| TlsError::Read {
            what,
            path: path.to_owned(),
            error: error.to_string(),
        })?;
    }
    Ok(roots)
}

/// A verifier that requires a client certificate chaining to `roots`.
fn client_verifier(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|error| TlsError::Config(error.to_string()))
}

/// A client certificate verifier that takes only certificates its `inner`
/// verifier takes (the chain to the cluster CA, validity, client
/// authentication usage) AND that are valid for `name` as a DNS name
/// (`--cluster-tls-peer-name`: a SAN dNSName, as a server certificate is
/// checked for its host). A refusal fails the handshake with a
/// `bad_certificate` alert. Everything else is `inner`'s.
#[derive(Debug)]
pub(crate) struct PeerNameVerifier {
    /// The cluster CA's verifier.
    inner: Arc<dyn ClientCertVerifier>,
    /// What every peer's certificate must be valid for.
    name: ServerName<'static>,
}

impl PeerNameVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>, name: DnsName<'static>) -> Self {
        Self {
            inner,
            name: ServerName::DnsName(name),
        }
    }
}

/// Whether the leaf `certificate` is valid for `name` (its SANs; webpki
/// parses the certificate); if not, the certificate error a handshake fails
/// with.
fn valid_for(
    certificate: &CertificateDer<'_>,
    name: &ServerName<'_>,
) -> Result<(), CertificateError> {
    let refused = |error: webpki::Error| match error {
        webpki::Error::CertNotValidForName(context) => CertificateError::NotValidForNameContext {
            expected: context.expected,
            presented: context.presented,
        },
        webpki::Error::BadDer | webpki::Error::BadDerTime | webpki::Error::TrailingData(_) => {
            CertificateError::BadEncoding
        }
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    webpki::EndEntityCert::try_from(certificate)
        .and_then(|leaf| leaf.verify_is_valid_for_subject_name(name))
        .map_err(refused)
}

/// The methods a peer-name verifier hands to its `inner` verifier unchanged:
/// the handshake signatures and the schemes (the same signatures on
/// `ClientCertVerifier` and `ServerCertVerifier`).
macro_rules! forward_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }

        fn requires_raw_public_keys(&self) -> bool {
            self.inner.requires_raw_public_keys()
        }
    };
}

impl ClientCertVerifier for PeerNameVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        valid_for(end_entity, &self.name).map_err(rustls::Error::InvalidCertificate)?;
        Ok(verified)
    }

    forward_signature_checks!();
}

/// The dialling side's check of a peer name (cluster mode with
/// `--cluster-tls-peer-name`): the peer's server certificate must pass
/// `inner` (the cluster CA, and the name of the host dialled) and be valid
/// for the peer name too, else the handshake fails with the certificate
/// error. Everything else is `inner`'s.
#[derive(Debug)]
pub(crate) struct PeerNameServerVerifier {
    /// The cluster CA's verifier, which checks the dialled host's name.
    inner: Arc<dyn ServerCertVerifier>,
    /// What every peer's certificate must be valid for, as well.
    name: ServerName<'static>,
}

impl PeerNameServerVerifier {
    pub(crate) fn new(inner: Arc<dyn ServerCertVerifier>, name: DnsName<'static>) -> Self {
        Self {
            inner,
            name: ServerName::DnsName(name),
        }
    }
}

impl ServerCertVerifier for PeerNameServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        valid_for(end_entity, &self.name).map_err(rustls::Error::InvalidCertificate)?;
        Ok(verified)
    }

    forward_signature_checks!();

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// Both ends of mutual TLS between cluster nodes, from one node's files.
pub(crate) struct ClusterTls {
    /// The node-to-node listener's handshakes: this node's certificate, and a
    /// client certificate signed by the cluster CA (and valid for the peer
    /// name, when there is one) required of every peer.
    pub(crate) acceptor: TlsAcceptor,
    /// What this node dials its peers with: the cluster CA as the only trust
    /// anchor (and, with a peer name, a server certificate valid for it
    /// required besides the dialled host's name), this node's certificate as
    /// its client certificate (ALPN is the network's to set).
    pub(crate) client: rustls::ClientConfig,
}

impl ClusterTls {
    /// Reads the files (TLS 1.2 and 1.3, ring, ALPN `h2` on the listener);
    /// with a peer name, refuses a certificate of this node that lacks it.
    pub(crate) fn load(files: &ClusterTlsFiles) -> Result<Self, TlsError> {
        let provider = provider();
        let chain = certificates("TLS certificate file", &files.cert)?;
        let private = private_key(&files.key)?;
        if let Some(name) = &files.peer_name {
            // `certificates` returns at least one: the leaf.
            valid_for(&chain[0], &ServerName::DnsName(name.clone())).map_err(|error| {
                TlsError::PeerName {
                    cert: files.cert.clone(),
                    name: name.as_ref().to_owned(),
                    error: error.to_string(),
                }
            })?;
        }
        // Refuses a key of another certificate before either side uses it.
        let certified = certified_key(
            chain.clone(),
            private.clone_key(),
            &files.cert,
            &files.key,
            &provider,
        )?;
        let config = |error: rustls::Error| TlsError::Config(error.to_string());
        let mut peers = client_verifier(roots("cluster TLS CA file", &files.ca)?, &provider)?;
        if let Some(name) = &files.peer_name {
            peers = Arc::new(PeerNameVerifier::new(peers, name.clone()));
        }
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(peers)
            .with_cert_resolver(Arc::new(CurrentKey {
                key: RwLock::new(Arc::new(certified)),
            }) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec()];
        let dialling = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(config)?;
        let cluster_ca = roots("cluster TLS CA file", &files.ca)?;
        let dialling = match &files.peer_name {
            None => dialling.with_root_certificates(cluster_ca),
            Some(name) => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(cluster_ca),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|error| TlsError::Config(error.to_string()))?;
                dialling
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PeerNameServerVerifier::new(
                        inner,
                        name.clone(),
                    )))
            }
        };
        let client = dialling
            .with_client_auth_cert(chain, private)
            .map_err(config)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client,
        })
    }
}

/// The server side of TLS: the acceptor the listener hands connections to,
/// and the reloader that keeps its certificate current.
pub(crate) struct ServerTls {
    /// Handshakes with the current certificate.
    pub(crate) acceptor: TlsAcceptor,
    /// Swaps the certificate when the files change or on SIGHUP.
    pub(crate) reloader: Reloader,
}

impl ServerTls {
    /// Reads the files and builds the server configuration (TLS 1.2 and 1.3,
    /// ALPN `h2`, client certificates required when a client CA is given).
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = provider();
        let current = Arc::new(CurrentKey {
            key: RwLock::new(Arc::new(load_certified_key(
                &files.cert,
                &files.key,
                &provider,
            )?)),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(
                roots("TLS client CA file", path)?,
                &provider,
            )?),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            reloader: Reloader {
                cert: files.cert.clone(),
                key: files.key.clone(),
                interval: files.reload_interval,
                provider,
                current,
                // Listening from here on, before the server serves: a SIGHUP
                // sent once it answers is never the default (terminating) one.
                hangup: hangups(),
            },
        })
    }
}

/// What a file looked like at the last check: modification time and size
/// (`None`: it could not be read).
type Stamp = Option<(SystemTime, u64)>;

async fn stamp(path: &Path) -> Stamp {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Keeps [`CurrentKey`] in step with the files.
pub(crate) struct Reloader {
    /// The certificate chain file.
    cert: PathBuf,
    /// The key file.
    key: PathBuf,
    /// How often the files are polled; `None`: SIGHUP only.
    interval: Option<Duration>,
    /// Parses the key.
    provider: Arc<CryptoProvider>,
    /// What handshakes use.
    current: Arc<CurrentKey>,
    /// SIGHUP, when it can be listened for.
    hangup: Hangups,
}

impl Reloader {
    /// Reloads on SIGHUP and on file changes until `stop` resolves.
    pub(crate) async fn run(mut self, stop: impl Future<Output = ()>) {
        let mut hangup = self.hangup.take();
        let this = Arc::new(self);
        let mut seen = (stamp(&this.cert).await, stamp(&this.key).await);
        let mut poll = this.interval.map(|interval| {
            let mut poll = tokio::time::interval(interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll
        });
        tokio::pin!(stop);
        loop {
            let why = tokio::select! {
                () = &mut stop => return,
                Some(()) = next_hangup(&mut hangup) => "SIGHUP",
                () = tick(&mut poll) => {
                    let now = (stamp(&this.cert).await, stamp(&this.key).await);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "a changed file"
                }
            };
            let reloading = Arc::clone(&this);
            match tokio::task::spawn_blocking(move || reloading.reload()).await {
                Ok(Ok(())) => tracing::info!(
                    cert = %this.cert.display(),
                    key = %this.key.display(),
                    "reloaded the TLS certificate after {why}"
                ),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    "cannot reload the TLS certificate after {why}; still serving the previous one"
                ),
                Err(error) => tracing::error!(%error, "the TLS reload task failed"),
            }
        }
    }

    /// Loads the files and, when they are good, makes them current.
    fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert, &self.key, &self.provider)?;
        self.current.set(key);
        Ok(())
    }
}

/// SIGHUP as a stream; `None` where there are no signals or it cannot be
/// listened for (then only the file poll reloads).
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS files reload on change only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangups) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_hangup: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

/// The poll's next tick; never, without a poll.
async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(poll) => {
            poll.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use rustls::{AlertDescription, ClientConfig, ClientConnection, Connection, ServerConnection};

    use super::*;
    use crate::dev_certs::{self, DevCertFiles, NODE_PEER_NAME};

    fn peer_name() -> DnsName<'static> {
        DnsName::try_from(NODE_PEER_NAME).expect("a DNS name")
    }

    /// `certs`' node files, with `peer_name`.
    fn cluster_files(certs: &DevCertFiles, peer_name: Option<DnsName<'static>>) -> ClusterTlsFiles {
        ClusterTlsFiles {
            cert: certs.node_cert.clone(),
            key: certs.node_key.clone(),
            ca: certs.ca.clone(),
            peer_name,
        }
    }

    /// What a peer dialling with `cert` and `key` (trusting `ca`) sends.
    fn dialler(ca: &Path, cert: &Path, key: &Path) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots("CA", ca).expect("the CA"))
            .with_client_auth_cert(
                certificates("cert", cert).expect("the certificate"),
                private_key(key).expect("the key"),
            )
            .expect("a client configuration")
    }

    /// A handshake between `client` (dialling `localhost`) and `server`, in
    /// memory, to its end: what processing the other side's bytes last said,
    /// the client's first.
    fn handshake(client: ClientConfig, server: &TlsAcceptor) -> [Result<(), rustls::Error>; 2] {
        let name = ServerName::try_from("localhost").expect("a name");
        let mut sides = [
            Connection::Client(ClientConnection::new(Arc::new(client), name).expect("client")),
            Connection::Server(ServerConnection::new(Arc::clone(server.config())).expect("server")),
        ];
        let mut results = [Ok(()), Ok(())];
        // A TLS 1.3 handshake with client authentication takes four flights
        // (and an alert or the session tickets); more rounds change nothing.
        for round in 0..12 {
            let (from, to) = (round % 2, 1 - round % 2);
            let mut bytes = Vec::new();
            while sides[from].wants_write() {
                sides[from].write_tls(&mut bytes).expect("write to memory");
            }
            let mut unread = bytes.as_slice();
            while !unread.is_empty() && results[to].is_ok() {
                sides[to].read_tls(&mut unread).expect("read from memory");
                if let Err(error) = sides[to].process_new_packets() {
                    results[to] = Err(error);
                }
            }
        }
        for (side, result) in sides.iter().zip(&results) {
            if result.is_ok() {
                assert!(!side.is_handshaking(), "a handshake that did not end");
            }
        }
        results
    }

    #[test]
    fn with_a_peer_name_the_listener_takes_only_cluster_certificates_valid_for_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dev_certs::write(dir.path(), &[]).expect("dev certificates");
        let stranger =
            dev_certs::write(&dir.path().join("stranger"), &[]).expect("another CA's certificates");
        let named = ClusterTls::load(&cluster_files(&certs, Some(peer_name()))).expect("load");
        let unnamed = ClusterTls::load(&cluster_files(&certs, None)).expect("load");

        // A node's certificate carries the name: every peer dials with it.
        let [client, server] = handshake(named.client.clone(), &named.acceptor);
        client.expect("the dialling node");
        server.expect("the listening node");

        // The CA's client certificate lacks it: taken without a peer name,
        // refused with one, and the dialler gets the alert.
        let client_pem = || dialler(&certs.ca, &certs.client_cert, &certs.client_key);
        let [client, server] = handshake(client_pem(), &unnamed.acceptor);
        client.expect("the client certificate without a peer name");
        server.expect("the client certificate without a peer name");
        let [client, server] = handshake(client_pem(), &named.acceptor);
        match server {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                presented,
            })) => {
                assert_eq!(expected.to_str(), NODE_PEER_NAME);
                assert_eq!(
                    presented,
                    [format!("DnsName(\"{}\")", dev_certs::CLIENT_NAME)]
                );
            }
            other => panic!("the client certificate on the listener: {other:?}"),
        }
        match client {
            Err(rustls::Error::AlertReceived(AlertDescription::BadCertificate)) => {}
            other => panic!("the client certificate's dialler: {other:?}"),
        }

        // The name is no substitute for the CA: another CA's node
        // certificate carries it and is refused for its chain (both CAs
        // have the same name, so as a bad signature).
        let [_, server] = handshake(
            dialler(&certs.ca, &stranger.node_cert, &stranger.node_key),
            &named.acceptor,
        );
        match server {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer,
            )) => {}
            other => panic!("another CA's node certificate: {other:?}"),
        }
    }

    #[test]
    fn with_a_peer_name_a_dialling_node_takes_only_listeners_whose_certificate_carries_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dev_certs::write(dir.path(), &[]).expect("dev certificates");
        let named = ClusterTls::load(&cluster_files(&certs, Some(peer_name()))).expect("load");
        let unnamed = ClusterTls::load(&cluster_files(&certs, None)).expect("load");
        // A listener of the cluster CA for `localhost` whose certificate
        // lacks the peer name (the client listeners' server certificate).
        let not_a_node = ClusterTls::load(&ClusterTlsFiles {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            ca: certs.ca.clone(),
            peer_name: None,
        })
        .expect("load");

        let [client, server] = handshake(named.client.clone(), &unnamed.acceptor);
        client.expect("a node's listener");
        server.expect("a node's listener");
        let [client, _] = handshake(unnamed.client.clone(), &not_a_node.acceptor);
        client.expect("without a peer name, any listener of the cluster CA");
        let [client, _] = handshake(named.client.clone(), &not_a_node.acceptor);
        match client {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                ..
            })) => assert_eq!(expected.to_str(), NODE_PEER_NAME),
            other => panic!("a listener without the peer name: {other:?}"),
        }
    }

    #[test]
    fn the_peer_name_verifier_hands_everything_else_to_the_cluster_ca_verifier() {
        let ca = dev_certs::DevCa::generate().expect("a CA");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("PEM"))
            .expect("a root");
        let inner = client_verifier(roots, &provider()).expect("a verifier");
        let verifier = PeerNameVerifier::new(Arc::clone(&inner), peer_name());
        let hints = |verifier: &dyn ClientCertVerifier| {
            let subjects = verifier.root_hint_subjects().iter();
            subjects
                .map(|name| name.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(hints(&verifier), hints(inner.as_ref()));
        assert!(!hints(&verifier).is_empty(), "the CA's name as the hint");
        assert_eq!(
            verifier.supported_verify_schemes(),
            inner.supported_verify_schemes()
        );
        assert!(verifier.offer_client_auth() && verifier.client_auth_mandatory());
        assert!(!verifier.requires_raw_public_keys());
        let now = UnixTime::now();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
        verifier
            .verify_client_cert(&der(&ca.node(&[]).expect("node").cert_pem), &[], now)
            .expect("a node certificate");
        // A server-only certificate is refused by the CA verifier's usage
        // check whatever its names.
        let server = ca.server(&[NODE_PEER_NAME.to_owned()]).expect("server");
        match verifier.verify_client_cert(&der(&server.cert_pem), &[], now) {
            Err(rustls::Error::InvalidCertificate(error)) => assert!(
                !matches!(error, CertificateError::NotValidForNameContext { .. }),
                "{error:?}"
            ),
            other => panic!("a server-only certificate: {other:?}"),
        }
    }

    #[test]
    fn a_node_whose_own_certificate_lacks_the_peer_name_does_not_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dev_certs::write(dir.path(), &[]).expect("dev certificates");
        let files = ClusterTlsFiles {
            cert: certs.client_cert.clone(),
            key: certs.client_key.clone(),
            ..cluster_files(&certs, Some(peer_name()))
        };
        let error = match ClusterTls::load(&files) {
            Err(error @ TlsError::PeerName { .. }) => error.to_string(),
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("loaded a certificate without the peer name"),
        };
        let expected = format!(
            "the cluster TLS certificate file {} is not valid for --cluster-tls-peer-name \
             cairn-node",
            certs.client_cert.display()
        );
        assert!(error.starts_with(&expected), "{error}");
        assert!(error.contains("certificate is only valid for"), "{error}");
        // The node's certificate from `cairn dev-certs` carries it; without
        // a peer name the client certificate loads as before.
        ClusterTls::load(&cluster_files(&certs, Some(peer_name()))).expect("node.pem");
        ClusterTls::load(&ClusterTlsFiles {
            peer_name: None,
            ..files
        })
        .expect("no peer name, no check");
    }
}
