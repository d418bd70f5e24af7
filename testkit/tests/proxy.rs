//! The fault-injecting proxy against an echo server on `127.0.0.1:0`: bytes
//! round-trip and are counted, a cut drops open connections and refuses new
//! ones, a heal forwards new connections again, and dropping the proxy closes
//! its connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_testkit::{FaultProxy, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A hang guard only: how long an awaited socket event may take before the
/// test fails instead of hanging. Never a measured time.
const GUARD: Duration = Duration::from_secs(30);

/// An echo server: every connection gets back what it sends, until EOF.
struct Echo {
    addr: SocketAddr,
    /// Connections the echo server accepted (through the proxy).
    accepted: Arc<AtomicUsize>,
    /// One message per echo connection that has ended (EOF or error).
    closed: mpsc::UnboundedReceiver<()>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (report, closed) = mpsc::unbounded_channel();
        let counting = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.expect("echo accept");
                counting.fetch_add(1, Ordering::SeqCst);
                let report = report.clone();
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = report.send(());
                });
            }
        });
        Echo {
            addr,
            accepted,
            closed,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until one more echo connection has ended.
    async fn one_closed(&mut self) {
        guard("the echo server's connection to close", self.closed.recv())
            .await
            .expect("the echo server is running");
    }
}

async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {GUARD:?} waiting for {what}"))
}

/// Sends `message` through `stream` and returns what comes back, sending and
/// receiving at once (a large message does not fit in the socket buffers).
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    let (mut read, mut write) = stream.split();
    let mut echoed = vec![0; message.len()];
    let (written, received) = guard("the echo", async {
        tokio::join!(write.write_all(message), read.read_exact(&mut echoed))
    })
    .await;
    written.expect("write through the proxy");
    received.expect("read the echo through the proxy");
    echoed
}

/// Reads until the connection ends (EOF or an error such as a reset) and
/// returns whatever arrived before that.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut arrived = Vec::new();
    guard("the connection to close", async {
        let mut buffer = [0; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => arrived.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    arrived
}

/// A new connection through a cut proxy: whatever it sends, nothing comes
/// back, and the connection ends.
async fn assert_refused(proxy: &FaultProxy) {
    // The kernel may complete the handshake before the proxy closes the
    // connection, or refuse it outright: either way nothing gets through.
    let Ok(mut stream) = guard("connect", TcpStream::connect(proxy.addr())).await else {
        return;
    };
    let _ = stream.write_all(b"anyone there?").await;
    let arrived = until_closed(&mut stream).await;
    assert!(
        arrived.is_empty(),
        "a cut proxy let {arrived:?} through a new connection"
    );
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn bytes_round_trip_and_are_counted() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    assert_ne!(proxy.addr(), echo.addr);
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");

    assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
    // More than one chunk of the proxy's buffer, both ways at once.
    let large = pattern(300 * 1024);
    assert_eq!(round_trip(&mut stream, &large).await, large);

    let stats = proxy.stats();
    let sent = (5 + large.len()) as u64;
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_refused, 0);
    assert_eq!(stats.bytes_to_target, sent);
    assert_eq!(stats.bytes_from_target, sent);
    assert_eq!(echo.accepted(), 1);
    assert!(!proxy.is_cut());
}

#[tokio::test]
async fn a_delay_still_forwards_every_byte() {
    let echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    proxy.set_delay(Duration::from_millis(5));
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");

    let message = pattern(64 * 1024);
    assert_eq!(round_trip(&mut stream, &message).await, message);
    proxy.set_delay(Duration::ZERO);
    assert_eq!(round_trip(&mut stream, b"undelayed").await, b"undelayed");
    assert_eq!(proxy.stats().bytes_from_target, (message.len() + 9) as u64);
}

#[tokio::test]
async fn a_cut_drops_open_connections_and_refuses_new_ones() {
    let mut echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut open, b"before").await, b"before");

    proxy.cut();
    assert!(proxy.is_cut());
    // Both of the forwarded connection's sockets close.
    let arrived = until_closed(&mut open).await;
    assert!(arrived.is_empty(), "{arrived:?} arrived after the cut");
    echo.one_closed().await;

    assert_refused(&proxy).await;
    assert_refused(&proxy).await;
    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 3);
    assert_eq!(stats.connections_refused, 2);
    assert_eq!(stats.bytes_to_target, 6);
    assert_eq!(echo.accepted(), 1, "a cut proxy reached the target");
}

#[tokio::test]
async fn a_heal_forwards_new_connections_again() {
    let mut echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    proxy.cut();
    assert_refused(&proxy).await;

    proxy.heal();
    assert!(!proxy.is_cut());
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut stream, b"healed").await, b"healed");
    assert_eq!(echo.accepted(), 1);

    // A cut healed at once still drops the connections open before it.
    proxy.cut();
    proxy.heal();
    let arrived = until_closed(&mut stream).await;
    assert!(arrived.is_empty(), "{arrived:?} arrived after the cut");
    echo.one_closed().await;
    let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut again, b"again").await, b"again");
    assert_eq!(echo.accepted(), 2);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections_and_listener() {
    let mut echo = Echo::start().await;
    let proxy = FaultProxy::start(echo.addr).await;
    let addr = proxy.addr();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(round_trip(&mut stream, b"last words").await, b"last words");

    drop(proxy);
    let arrived = until_closed(&mut stream).await;
    assert!(arrived.is_empty(), "{arrived:?} arrived after the drop");
    echo.one_closed().await;
    eventually("the proxy's listener to close", || async {
        TcpStream::connect(addr).await.err()
    })
    .await;
    assert_eq!(echo.accepted(), 1);
}
