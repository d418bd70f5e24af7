//! A headless Chromium page driven over the DevTools protocol, for the tests
//! of the web pages of the workspace (the shop's dashboard, Cairn's admin
//! UI): [`Browser::launch`] starts Debian's `chromium` with a fresh profile,
//! [`Browser::call`] sends one DevTools command, [`Browser::evaluate`] and
//! [`Browser::wait_for`] read the page, [`Browser::screenshot`] saves a PNG.
//!
//! [`chromium_available`] decides whether such a test runs: without
//! `chromium` it says so on stderr and the test returns early, unless
//! `CAIRN_REQUIRE_BROWSER` is set (CI sets it), which turns the absence into
//! a failure.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::eventually;

/// How long Chromium may take to open its DevTools port.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// True when `chromium` runs here. When it does not: panics if
/// `CAIRN_REQUIRE_BROWSER` is set, else prints that `test` is skipped and
/// returns false (the test then returns).
pub fn chromium_available(test: &str) -> bool {
    let installed = std::process::Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        // CI installs chromium and sets this, so there the test cannot be skipped.
        assert!(
            std::env::var_os("CAIRN_REQUIRE_BROWSER").is_none(),
            "chromium is not installed and CAIRN_REQUIRE_BROWSER is set"
        );
        eprintln!("{test} skipped: chromium is not installed (apt-get install chromium)");
    }
    installed
}

type Page =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page of a headless Chromium, driven over the DevTools protocol. The
/// browser is killed when this is dropped.
pub struct Browser {
    process: tokio::process::Child,
    /// Behind a lock so that commands take `&self`, as `eventually`'s checks
    /// need; one command at a time holds it until its answer arrived.
    page: Mutex<Page>,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (headless, 1400x900, a new profile) on `about:blank`
    /// and connects to its page.
    pub async fn launch() -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut process = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1400,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/..." on stderr.
        let mut lines = BufReader::new(process.stderr.take().expect("stderr")).lines();
        let port = tokio::time::timeout(LAUNCH_TIMEOUT, async {
            while let Some(line) = lines.next_line().await.expect("stderr line") {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().expect("port").to_owned();
                }
            }
            panic!("chromium exited before listening");
        })
        .await
        .expect("chromium's DevTools address");
        // Keep draining stderr so Chromium never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("targets")
            .json()
            .await
            .expect("targets json");
        let page_url = targets
            .as_array()
            .expect("targets")
            .iter()
            .find(|target| target["type"] == "page")
            .and_then(|target| target["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (page, _) = tokio_tungstenite::connect_async(page_url)
            .await
            .expect("connect to the page");
        Self {
            process,
            page: Mutex::new(page),
            next_id: AtomicU64::new(0),
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result; a command the
    /// browser refuses fails the test.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let command = json!({ "id": id, "method": method, "params": params });
        let mut page = self.page.lock().await;
        page.send(Message::text(command.to_string()))
            .await
            .expect("send");
        loop {
            let message = page.next().await.expect("open").expect("message");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("json");
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in the page.
    pub async fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates a JavaScript expression in the page; returns its value
    /// (`null` when it threw or has no JSON value).
    pub async fn evaluate(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Polls `expression` until `ready` accepts its value; returns it.
    pub async fn wait_for(&self, expression: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let what = format!("the page to satisfy `{expression}`");
        eventually(&what, || async {
            let value = self.evaluate(expression).await;
            if ready(&value) {
                Ok(value)
            } else {
                Err(value.to_string())
            }
        })
        .await
    }

    /// Saves a PNG of the page at `path`.
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, &png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// Stops the browser now (dropping it does too).
    pub fn close(&mut self) {
        let _ = self.process.start_kill();
    }
}
