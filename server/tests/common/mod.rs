//! Shared harness: a real server on 127.0.0.1:0 in this process, a real client.

#![allow(dead_code)]

use std::net::SocketAddr;

use cairn_client::Client;
use cairn_server::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running in-process server.
pub struct TestServer {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its data directory (kept alive with the server).
    pub data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cairn_server::ServerError>>>,
}

impl TestServer {
    /// Starts a server with default test settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting the caller adjust the settings.
    pub async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// Starts a server on an existing data directory.
    pub async fn start_in(data: tempfile::TempDir, adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::for_tests(data.path().to_path_buf());
        adjust(&mut settings);
        let store = cairn_server::open_store(&settings).expect("open store");
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .expect("bind");
        let address = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cairn_server::run(listener, store, settings, async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            data,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.url()).await.expect("connect")
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    /// Stops the server and hands back its data directory (to restart on it).
    pub async fn stop_keep_data(mut self) -> (tempfile::TempDir, SocketAddr) {
        self.stop_in_place().await;
        let address = self.address;
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().expect("temp dir"));
        (data, address)
    }

    /// Like `stop`, but keeps the data directory for inspection.
    pub async fn stop_in_place(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }
}
