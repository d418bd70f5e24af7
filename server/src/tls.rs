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
//! certificate against. Its files are read once at start (no reload).
//!
//! The handshake itself runs in the listener ([`crate::listener`]), one task
//! per connection, bounded by the handshake timeout. ALPN offers `h2` only:
//! every facade speaks HTTP/2.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
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
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|error| TlsError::Config(error.to_string()))
}

/// Both ends of mutual TLS between cluster nodes, from one node's files.
pub(crate) struct ClusterTls {
    /// The node-to-node listener's handshakes: this node's certificate, and a
    /// client certificate signed by the cluster CA required of every peer.
    pub(crate) acceptor: TlsAcceptor,
    /// What this node dials its peers with: the cluster CA as the only trust
    /// anchor, this node's certificate as its client certificate (ALPN is
    /// the network's to set).
    pub(crate) client: rustls::ClientConfig,
}

impl ClusterTls {
    /// Reads the files (TLS 1.2 and 1.3, ring, ALPN `h2` on the listener).
    pub(crate) fn load(files: &ClusterTlsFiles) -> Result<Self, TlsError> {
        let provider = provider();
        let chain = certificates("TLS certificate file", &files.cert)?;
        let private = private_key(&files.key)?;
        // Refuses a key of another certificate before either side uses it.
        let certified = certified_key(
            chain.clone(),
            private.clone_key(),
            &files.cert,
            &files.key,
            &provider,
        )?;
        let config = |error: rustls::Error| TlsError::Config(error.to_string());
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(client_verifier(
                roots("cluster TLS CA file", &files.ca)?,
                &provider,
            )?)
            .with_cert_resolver(Arc::new(CurrentKey {
                key: RwLock::new(Arc::new(certified)),
            }) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_root_certificates(roots("cluster TLS CA file", &files.ca)?)
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
