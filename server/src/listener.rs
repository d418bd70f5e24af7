//! Accepting connections for every facade, bounded: at most `max_connections`
//! open at once (beyond it the listener stops accepting and new clients wait in
//! the kernel's backlog), a connection that sends nothing within the handshake
//! timeout or stops sending for the idle timeout is closed, and an accept
//! failure (EMFILE at the fd limit, say) is logged and backed off instead of
//! spinning a core. Nagle is off on every accepted socket.
//!
//! This module knows sockets, not protocols; a facade adapts [`Connection`]
//! to its transport (the gRPC facade implements tonic's `Connected` for it).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;

/// The shortest and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

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

/// An accepted connection: the socket, its place among the open connections
/// (released when it is dropped), and its read deadlines.
pub struct Connection {
    /// The socket.
    stream: TcpStream,
    /// Held while the connection is open.
    _slot: OwnedSemaphorePermit,
    /// When the connection is closed if nothing more arrives.
    deadline: Pin<Box<Sleep>>,
    /// Nothing was received yet (the handshake deadline applies).
    silent: bool,
    /// The idle timeout, re-armed on every read.
    idle_timeout: Duration,
}

impl Connection {
    /// The socket, for its addresses.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Connection {
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

impl AsyncWrite for Connection {
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

/// Accepts on `listener` within `limits` until the returned stream is
/// dropped. The accept loop runs as its own task; it waits for a free slot
/// before accepting, so at the limit clients queue in the backlog.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
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
            let connection = Connection {
                stream,
                _slot: slot,
                deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
                silent: true,
                idle_timeout: limits.idle_timeout,
            };
            if sender.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
