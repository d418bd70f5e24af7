//! Accepting connections for every facade, bounded: at most `max_connections`
//! open at once (beyond it the listener stops accepting and new clients wait in
//! the kernel's backlog), a connection that sends nothing within the handshake
//! timeout or stops sending for the idle timeout is closed, and an accept
//! failure (EMFILE at the fd limit, say) is logged and backed off instead of
//! spinning a core. Nagle is off on every accepted socket.
//!
//! With TLS, each accepted socket gets its handshake in a task of its own
//! (the accept loop never waits for a client), bounded by the handshake
//! timeout as a whole, so a client that trickles its hello is closed too; a
//! failed handshake (a plaintext client, an untrusted client certificate) is
//! logged at debug and the connection closed. The node-to-node listener
//! ([`accept_peers`]) logs a handshake TLS refused at warn instead, with the
//! peer's address and rustls' reason, at most once per peer IP per minute
//! ([`RefusalLog`]): there a refusal is a misconfigured node or a probe, which
//! an operator should see. The deadlines sit under TLS: handshake bytes and
//! TLS records count as traffic.
//!
//! This module knows sockets and TLS, not protocols; a facade adapts
//! [`Connection`] to its transport (the gRPC facade implements tonic's
//! `Connected` for it).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// The shortest and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The node-to-node listener logs a refused handshake at warn at most once
/// per peer IP in this long.
const PEER_REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Most peer IPs whose last warned refusal [`RefusalLog`] remembers.
const PEER_REFUSAL_LOG_ADDRESSES: usize = 1024;

/// Bounds on accepted connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A new connection must send its first bytes within this.
    pub handshake_timeout: Duration,
    /// An established connection that sends nothing for this long is closed
    /// (HTTP/2 keepalive pings, answered by live clients, count as traffic).
    pub idle_timeout: Duration,
}

/// An accepted connection: its bytes (in plaintext or TLS) and its place
/// among the open connections (released when it is dropped).
pub struct Connection {
    /// What is read and written.
    io: Io,
    /// Held while the connection is open.
    _slot: OwnedSemaphorePermit,
}

/// A connection's bytes.
enum Io {
    /// Plaintext (insecure mode).
    Plain(Timed),
    /// TLS over the socket (boxed: the session state is large).
    Tls(Box<tokio_rustls::server::TlsStream<Timed>>),
}

impl Connection {
    /// The socket, for its addresses.
    pub fn socket(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(timed) => &timed.stream,
            Io::Tls(tls) => &tls.get_ref().0.stream,
        }
    }
}

/// A socket with read deadlines: the handshake timeout until the first
/// bytes arrive, then the idle timeout, re-armed on every read.
struct Timed {
    /// The socket.
    stream: TcpStream,
    /// When the connection is closed if nothing more arrives.
    deadline: Pin<Box<Sleep>>,
    /// Nothing was received yet (the handshake deadline applies).
    silent: bool,
    /// The idle timeout, re-armed on every read.
    idle_timeout: Duration,
}

impl AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buffer.filled().len();
        match Pin::new(&mut self.stream).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                if buffer.filled().len() > before {
                    self.silent = false;
                    let next = Instant::now() + self.idle_timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match self.deadline.as_mut().poll(context) {
                Poll::Ready(()) => {
                    let what = if self.silent {
                        "sent nothing within the handshake timeout"
                    } else {
                        "was idle past the idle timeout"
                    };
                    tracing::debug!(peer = ?self.stream.peer_addr().ok(), "closing a connection that {what}");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the connection {what}"),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(timed) => Pin::new(timed).poll_read(context, buffer),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(timed) => Pin::new(timed).poll_write(context, data),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(context, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(timed) => Pin::new(timed).poll_flush(context),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(timed) => Pin::new(timed).poll_shutdown(context),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(context),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(timed) => Pin::new(timed).poll_write_vectored(context, buffers),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(timed) => timed.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

/// When refused node-to-node handshakes were last logged at warn, per peer
/// IP: a node that keeps redialling with a certificate the listener refuses
/// (every few hundred milliseconds) logs once per interval, not once per
/// attempt. Bounded: once it remembers `capacity` addresses it forgets those
/// past the interval, and if none is, a refusal from yet another address is
/// logged at debug only (those already warned about cover the flood).
#[derive(Debug)]
pub(crate) struct RefusalLog {
    /// At most one warning per IP in this long.
    interval: Duration,
    /// Most addresses remembered.
    capacity: usize,
    /// Each address's last warning. Locked only to look up and insert, never
    /// across an await.
    warned: Mutex<HashMap<IpAddr, Instant>>,
}

impl RefusalLog {
    fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity,
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a refusal of `ip` at `now` is logged at warn (and if so,
    /// `now` is remembered as its last warning).
    fn warn(&self, ip: IpAddr, now: Instant) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = |at: &Instant| now.saturating_duration_since(*at) < self.interval;
        if warned.get(&ip).is_some_and(recent) {
            return false;
        }
        if !warned.contains_key(&ip) && warned.len() >= self.capacity {
            warned.retain(|_, at| recent(at));
            if warned.len() >= self.capacity {
                return false;
            }
        }
        warned.insert(ip, now);
        true
    }
}

/// How a listener logs a failed TLS handshake.
#[derive(Debug, Clone)]
enum Refusals {
    /// At debug (the client listeners: a client's failure is its own).
    Debug,
    /// TLS refusals at warn through the log's rate limit, other failures (a
    /// peer that closed mid-handshake) at debug: the node-to-node listener.
    Warn(Arc<RefusalLog>),
}

impl Refusals {
    /// Logs that the handshake with `peer` failed with `error`.
    fn handshake_failed(&self, peer: Option<SocketAddr>, error: &io::Error) {
        let refused_by_tls = error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>());
        match (self, peer) {
            (Refusals::Warn(log), Some(address))
                if refused_by_tls && log.warn(address.ip(), Instant::now()) =>
            {
                tracing::warn!(
                    peer = %address,
                    reason = %error,
                    "refused a node-to-node TLS handshake (a misconfigured node or not a node; \
                     further refusals of this address are logged at debug for a minute)"
                );
            }
            _ => tracing::debug!(?peer, %error, "TLS handshake failed; closing the connection"),
        }
    }
}

/// Accepts on `listener` within `limits` until the returned stream is
/// dropped, in plaintext or, with `tls`, handshaking each connection first.
/// The accept loop runs as its own task; it waits for a free slot before
/// accepting, so at the limit clients queue in the backlog (a connection in
/// its TLS handshake holds a slot too). A failed handshake is logged at
/// debug.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<Connection>> {
    accept_logging(listener, limits, tls, Refusals::Debug)
}

/// [`accept`] for the node-to-node (raft) listener: a handshake TLS refuses
/// (a certificate the cluster CA did not sign or without the peer name, a
/// plaintext peer) is logged at warn with the peer's address and rustls'
/// reason, at most once per peer IP per minute.
pub fn accept_peers(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
) -> ReceiverStream<io::Result<Connection>> {
    let log = RefusalLog::new(PEER_REFUSAL_LOG_INTERVAL, PEER_REFUSAL_LOG_ADDRESSES);
    accept_logging(listener, limits, tls, Refusals::Warn(Arc::new(log)))
}

fn accept_logging(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    refusals: Refusals,
) -> ReceiverStream<io::Result<Connection>> {
    let (sender, receiver) = mpsc::channel(16);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF.0;
        let mut failing = false;
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                () = sender.closed() => return,
            };
            if slots.available_permits() == 0 {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections wait until one closes"
                );
            }
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // EMFILE/ENFILE and friends: accept fails at once, again and
                    // again; back off instead of spinning, and say so once.
                    if !failing {
                        tracing::error!(%error, "cannot accept connections; backing off (at the open-file limit?)");
                        failing = true;
                    }
                    drop(slot);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            if failing {
                tracing::info!("accepting connections again");
                failing = false;
            }
            backoff = ACCEPT_BACKOFF.0;
            if let Err(error) = stream.set_nodelay(true) {
                tracing::warn!(%error, "cannot set TCP_NODELAY on an accepted connection");
            }
            let timed = Timed {
                stream,
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                silent: true,
                idle_timeout: limits.idle_timeout,
            };
            match &tls {
                None => {
                    let connection = Connection {
                        io: Io::Plain(timed),
                        _slot: slot,
                    };
                    if sender.send(Ok(connection)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(timed);
                    let sender = sender.clone();
                    let timeout = limits.handshake_timeout;
                    let refusals = refusals.clone();
                    tokio::spawn(async move {
                        let peer = handshake
                            .get_ref()
                            .and_then(|timed| timed.stream.peer_addr().ok());
                        let stream = match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                refusals.handshake_failed(peer, &error);
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(
                                    ?peer,
                                    ?timeout,
                                    "TLS handshake not finished within the handshake timeout; closing the connection"
                                );
                                return;
                            }
                        };
                        let connection = Connection {
                            io: Io::Tls(Box::new(stream)),
                            _slot: slot,
                        };
                        // Fails only once the server stopped taking connections.
                        let _ = sender.send(Ok(connection)).await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_logged_at_warn_once_per_address_per_interval() {
        let log = RefusalLog::new(Duration::from_secs(60), 1024);
        let node: IpAddr = [10, 0, 0, 2].into();
        let probe: IpAddr = [10, 0, 0, 9].into();
        let start = Instant::now();
        assert!(log.warn(node, start));
        assert!(!log.warn(node, start + Duration::from_secs(1)));
        assert!(!log.warn(node, start + Duration::from_secs(59)));
        assert!(
            log.warn(probe, start + Duration::from_secs(30)),
            "another address"
        );
        assert!(
            log.warn(node, start + Duration::from_secs(60)),
            "a minute later"
        );
        assert!(!log.warn(node, start + Duration::from_secs(61)));
        assert!(!log.warn(probe, start + Duration::from_secs(89)));
        assert!(log.warn(probe, start + Duration::from_secs(90)));
    }

    #[test]
    fn a_full_refusal_log_forgets_old_addresses_and_never_grows_past_its_capacity() {
        let log = RefusalLog::new(Duration::from_secs(60), 2);
        let address = |last: u8| IpAddr::from([10, 0, 0, last]);
        let start = Instant::now();
        assert!(log.warn(address(1), start));
        assert!(log.warn(address(2), start + Duration::from_secs(10)));
        // Full, and both are recent: a third address is not warned about.
        assert!(!log.warn(address(3), start + Duration::from_secs(20)));
        // Address 1's warning is past the interval: it is forgotten for 3.
        assert!(log.warn(address(3), start + Duration::from_secs(65)));
        assert!(!log.warn(address(2), start + Duration::from_secs(65)));
        let remembered = log.warned.lock().expect("not poisoned").len();
        assert_eq!(remembered, 2);
    }
}
