//! The shop's part of the harness: on the workspace's in-process Cairn server
//! (`cairn_testkit::TestServer`), the four shop services and the gateway as
//! tasks, each with its own Cairn connections and its own data directory, and
//! an HTTP client for the gateway.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use cairn_testkit::{TestServer, eventually};
use reqwest::StatusCode;
use serde_json::Value;
use shop::saga::Driver;
use shop::services::{self, Service, ServiceConfig};
use tokio::task::JoinHandle;

/// The shop: four services and a gateway, as tasks.
pub struct Shop {
    pub cairn: TestServer,
    pub data: tempfile::TempDir,
    pub gateway: String,
    pub http: reqwest::Client,
    pub driver: Driver,
    services: HashMap<&'static str, JoinHandle<shop::Result<()>>>,
    /// Second instances of services (sharing the work through their groups).
    extra: Vec<JoinHandle<shop::Result<()>>>,
    gateway_task: JoinHandle<shop::Result<()>>,
}

impl Shop {
    /// The shop with its saga on persistent subscriptions.
    pub async fn start() -> Self {
        Self::start_with(Driver::Persistent).await
    }

    /// The shop with its saga on `driver`.
    pub async fn start_with(driver: Driver) -> Self {
        let cairn = TestServer::start().await;
        let data = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let gateway = format!("http://{}", listener.local_addr().expect("addr"));
        let config = ServiceConfig {
            cairn: cairn.url(),
            data: data.path().join("gateway"),
            driver,
        };
        let gateway_task =
            tokio::spawn(shop::gateway::run(config, listener, std::future::pending()));
        let mut shop = Self {
            cairn,
            data,
            gateway,
            http: reqwest::Client::new(),
            driver,
            services: HashMap::new(),
            extra: Vec::new(),
            gateway_task,
        };
        for service in Service::ALL {
            shop.start_service(service);
        }
        shop
    }

    /// The data directory of one service.
    pub fn service_data(&self, service: Service) -> PathBuf {
        self.data.path().join(service.name())
    }

    /// Starts (or restarts, on the same data directory) one service.
    pub fn start_service(&mut self, service: Service) {
        let config = ServiceConfig {
            cairn: self.cairn.url(),
            data: self.service_data(service),
            driver: self.driver,
        };
        let task = tokio::spawn(services::run(service, config));
        assert!(
            self.services.insert(service.name(), task).is_none(),
            "already running"
        );
    }

    /// Starts another instance of a service, with its own data directory.
    pub fn start_extra_instance(&mut self, service: Service) {
        let config = ServiceConfig {
            cairn: self.cairn.url(),
            data: self
                .data
                .path()
                .join(format!("{}-{}", service.name(), self.extra.len() + 2)),
            driver: self.driver,
        };
        self.extra
            .push(tokio::spawn(services::run(service, config)));
    }

    /// Kills one service as a crash would: its task is dropped wherever it is.
    pub async fn kill_service(&mut self, service: Service) {
        let task = self.services.remove(service.name()).expect("running");
        task.abort();
        let _ = task.await;
    }

    /// Fails the test if a service or the gateway stopped with an error.
    pub fn assert_running(&self) {
        for (name, task) in &self.services {
            assert!(!task.is_finished(), "service {name} stopped");
        }
        for task in &self.extra {
            assert!(!task.is_finished(), "an extra service instance stopped");
        }
        assert!(!self.gateway_task.is_finished(), "gateway stopped");
    }

    /// One SQLite query on a service's own read model (a separate connection).
    pub fn query_service<T>(
        &self,
        service: Service,
        sql: &str,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<T> {
        let path = self
            .service_data(service)
            .join(format!("{}.sqlite", service.name()));
        let connection = rusqlite::Connection::open(path).ok()?;
        connection.query_row(sql, [], row).ok()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.gateway))
            .send()
            .await
            .expect("GET");
        answer(response).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .json(&body)
            .send()
            .await
            .expect("request");
        answer(response).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// Posts and expects success; returns the new resource's id.
    pub async fn create(&self, path: &str, body: Value) -> String {
        let (status, answer) = self.post(path, body).await;
        assert!(status.is_success(), "POST {path}: {status} {answer}");
        answer["id"].as_str().expect("id").to_owned()
    }

    /// Polls `GET path` until `ready` accepts the answer.
    pub async fn get_until(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let what = format!("GET {path}");
        eventually(&what, || async {
            let (status, value) = self.get(path).await;
            (status.is_success() && ready(&value)).then_some(value)
        })
        .await
    }

    /// Waits until an order is approved or rejected; returns it.
    pub async fn settled_order(&self, id: &str) -> Value {
        self.get_until(&format!("/api/orders/{id}"), |order| {
            let status = order["status"].as_str().unwrap_or("");
            status == "rejected" || (status == "approved" && order["invoice_number"].is_number())
        })
        .await
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}
