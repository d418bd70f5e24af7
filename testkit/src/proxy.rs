//! A fault-injecting TCP proxy for network-partition tests (issue 17: isolate
//! a raft leader from its followers on loopback).
//!
//! A [`FaultProxy`] listens on `127.0.0.1:0` and forwards every connection it
//! accepts to one target address, both directions, chunk by chunk. A test
//! points a node at the proxy's [`FaultProxy::addr`] instead of at its peer,
//! and can then:
//!
//! - [`FaultProxy::cut`] the link: every open forwarded connection is dropped
//!   at once (its socket to the client and its socket to the target are both
//!   closed), and while the link is cut, new connections are accepted and
//!   closed at once, before anything is read from them;
//! - [`FaultProxy::heal`] it: connections accepted from then on are forwarded
//!   again (the dropped ones stay dropped: peers reconnect, as over a real
//!   network);
//! - [`FaultProxy::set_delay`] every chunk forwarded from then on;
//! - read [`FaultProxy::stats`] to assert that traffic flowed.
//!
//! What it owns: the listener and one task per forwarded connection, holding
//! that connection's two sockets. The accept task owns the connection tasks
//! (a [`JoinSet`]); dropping the proxy aborts the accept task, which drops the
//! listener and the set, which aborts every connection task and so closes its
//! sockets. Nothing outlives the proxy; the sockets close as soon as the
//! runtime next runs those tasks, not inside `drop` itself.
//!
//! Guarantees of a cut: a chunk is checked against the link just before it
//! is written, so once `cut` has returned no chunk read from either side
//! starts on its way to the other (a delayed chunk still waiting out its
//! delay is dropped too). A write already under way may still finish, and
//! bytes already written to a socket — the target's or the client's — are in
//! the kernel and may still arrive at the peer after the cut: a cut stops
//! what the proxy has not forwarded yet, not what it has.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The largest chunk read from one side before it is written to the other.
const CHUNK: usize = 16 * 1024;

/// How long the accept loop waits after a failed `accept` (e.g. out of file
/// descriptors), so that a persistent failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The state of the link, published to every connection task.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// True while the link is cut: new connections are closed unforwarded.
    cut: bool,
    /// How many times the link has been cut. A connection remembers the epoch
    /// it was accepted in and ends once it changes, so a `cut` directly
    /// followed by `heal` still drops it, even if its task did not run in
    /// between.
    epoch: u64,
}

/// The counters, shared by the accept loop and the connection tasks.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    to_target: AtomicU64,
    from_target: AtomicU64,
    /// The per-chunk delay in nanoseconds (0: none).
    delay_nanos: AtomicU64,
}

/// A snapshot of a [`FaultProxy`]'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Connections accepted, forwarded or not.
    pub connections_accepted: u64,
    /// Of those, connections closed unforwarded because the link was cut.
    pub connections_refused: u64,
    /// Bytes forwarded from clients to the target. A chunk is counted just
    /// before it is written, so a peer that has received bytes sees them
    /// counted already.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target back to clients (counted likewise).
    pub bytes_from_target: u64,
}

/// A TCP proxy in front of one target, whose link a test can cut and heal.
/// See the [module docs](self) for what it owns and what a cut guarantees.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where it listens.
    addr: SocketAddr,
    /// Publishes cuts and heals to the accept loop and the connection tasks.
    link: watch::Sender<Link>,
    /// The counters and the delay, shared with the tasks.
    counters: Arc<Counters>,
    /// The accept loop, which owns the listener and the connection tasks;
    /// aborted on drop.
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target`. It accepts
    /// connections once this returns. Panics if it cannot bind.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the fault proxy's address");
        let (link, watching) = watch::channel(Link::default());
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, target, watching, counters.clone()));
        FaultProxy {
            addr,
            link,
            counters,
            accept,
        }
    }

    /// The address it listens on: where clients connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Partitions the link: drops every open forwarded connection and closes
    /// new ones unforwarded until [`FaultProxy::heal`]. Cutting a cut link
    /// changes nothing.
    pub fn cut(&self) {
        self.link.send_if_modified(|link| {
            if link.cut {
                return false;
            }
            link.cut = true;
            link.epoch += 1;
            true
        });
    }

    /// Heals the link: connections accepted from now on are forwarded.
    pub fn heal(&self) {
        // Only a cut link changes (and wakes the tasks): the old value of `cut`.
        self.link
            .send_if_modified(|link| std::mem::replace(&mut link.cut, false));
    }

    /// True while the link is cut.
    pub fn is_cut(&self) -> bool {
        self.link.borrow().cut
    }

    /// Delays every chunk forwarded from now on, in either direction, by
    /// `delay` (zero: no delay). A chunk already waiting keeps its delay.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.counters.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            connections_accepted: load(&self.counters.accepted),
            connections_refused: load(&self.counters.refused),
            bytes_to_target: load(&self.counters.to_target),
            bytes_from_target: load(&self.counters.from_target),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops the listener and its JoinSet, which
        // aborts every connection task.
        self.accept.abort();
    }
}

/// Accepts connections until aborted: closes them while the link is cut,
/// otherwise spawns a task forwarding each one.
async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: watch::Receiver<Link>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Reap the connections that have ended, so the set stays small.
        while connections.try_join_next().is_some() {}
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let accepted_in = *link.borrow();
        if accepted_in.cut {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        connections.spawn(forward(
            client,
            target,
            link.clone(),
            accepted_in.epoch,
            counters.clone(),
        ));
    }
}

/// Forwards one connection until either side closes or fails, or the link is
/// cut after `epoch` (or the proxy is dropped); both sockets close on return.
async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut link: watch::Receiver<Link>,
    epoch: u64,
    counters: Arc<Counters>,
) {
    let watching = link.clone();
    let pumping = async {
        let mut server = TcpStream::connect(target).await?;
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::try_join!(
            pump(
                client_read,
                server_write,
                &counters.to_target,
                &counters,
                &watching,
                epoch
            ),
            pump(
                server_read,
                client_write,
                &counters.from_target,
                &counters,
                &watching,
                epoch
            ),
        )
        .map(|_| ())
    };
    tokio::select! {
        biased;
        // Ok: cut since `epoch`; Err: the proxy was dropped. Either ends it.
        _ = link.wait_for(|link| link.epoch != epoch) => {}
        _ = pumping => {}
    }
}

/// Copies `from` to `to` chunk by chunk, counting into `counted`; at EOF
/// shuts down `to`'s write side (a half-close passes through). Stops without
/// writing a chunk once the link has been cut since `epoch`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counted: &AtomicU64,
    counters: &Counters,
    link: &watch::Receiver<Link>,
    epoch: u64,
) -> std::io::Result<()> {
    let mut buffer = vec![0; CHUNK];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        let delay = counters.delay_nanos.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_nanos(delay)).await;
        }
        if link.borrow().epoch != epoch {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the link was cut",
            ));
        }
        counted.fetch_add(read as u64, Ordering::Relaxed);
        to.write_all(&buffer[..read]).await?;
    }
}
