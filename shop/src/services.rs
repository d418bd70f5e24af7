//! Starting the services: each with its own Cairn connections and its own
//! SQLite file in its own data directory. Owns no state of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Client;

use crate::accounting::{AccountingProjection, InvoiceHandler};
use crate::catalog::{CatalogProjection, StockHandler};
use crate::customers::{CreditHandler, CustomersProjection};
use crate::error::{Result, ShopError};
use crate::orders::{DecisionHandler, OrdersProjection};
use crate::readmodel::{Db, Projection, run_projection};
use crate::saga::{Driver, Handler, run_catch_up, run_persistent};

/// One of the four back-end services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Categories, products, stock.
    Catalog,
    /// Customers, credit.
    Customers,
    /// Orders.
    Orders,
    /// Invoices, revenue.
    Accounting,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 4] = [
        Service::Catalog,
        Service::Customers,
        Service::Orders,
        Service::Accounting,
    ];

    /// Its name (also its SQLite file's name).
    pub fn name(self) -> &'static str {
        match self {
            Service::Catalog => "catalog",
            Service::Customers => "customers",
            Service::Orders => "orders",
            Service::Accounting => "accounting",
        }
    }
}

/// Where a service finds Cairn and keeps its files.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Cairn's URL, e.g. `http://127.0.0.1:7070`.
    pub cairn: String,
    /// This service's own data directory.
    pub data: PathBuf,
    /// How its saga handler receives events.
    pub driver: Driver,
}

impl ServiceConfig {
    /// Opens (creating the directory) the service's SQLite file `name.sqlite`.
    pub fn open_db(&self, name: &str) -> Result<Db> {
        std::fs::create_dir_all(&self.data).map_err(|error| {
            ShopError::Internal(format!("cannot create {}: {error}", self.data.display()))
        })?;
        Db::open(&self.data.join(format!("{name}.sqlite")))
    }
}

/// How long a starting service waits for Cairn to accept connections.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// How the shop reaches a secured Cairn, from the environment (the same
/// variables as the `cairn` CLI): `CAIRN_CA_FILE` (the CA that signed the
/// server's certificate, for `https://` addresses), `CAIRN_CERT_FILE` and
/// `CAIRN_KEY_FILE` (a client certificate, when the server requires one), and
/// `CAIRN_TOKEN`, or `CAIRN_USER` with `CAIRN_PASSWORD` (the shop's service
/// user). None of them set: a plaintext, unauthenticated connection.
fn client_builder(url: &str) -> cairn_client::ClientBuilder {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let mut builder = Client::builder(url.to_owned());
    if let Some(ca) = var("CAIRN_CA_FILE") {
        builder = builder.ca_file(ca);
    }
    if let (Some(cert), Some(key)) = (var("CAIRN_CERT_FILE"), var("CAIRN_KEY_FILE")) {
        builder = builder.identity(cert, key);
    }
    if let Some(token) = var("CAIRN_TOKEN") {
        builder = builder.token(token);
    } else if let (Some(user), Some(password)) = (var("CAIRN_USER"), var("CAIRN_PASSWORD")) {
        builder = builder.basic(user, password);
    }
    builder
}

/// A new connection to Cairn, retried while Cairn is starting.
pub async fn connect(url: &str) -> Result<Client> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match client_builder(url).connect().await {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() < deadline => {
                tracing::info!(%error, url, "waiting for Cairn");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Runs a service until an error stops it: its read model and its saga
/// handler, each on its own connections.
pub async fn run(service: Service, config: ServiceConfig) -> Result<()> {
    let db = config.open_db(service.name())?;
    match service {
        Service::Catalog => run_parts(&config, db, CatalogProjection, StockHandler).await,
        Service::Customers => run_parts(&config, db, CustomersProjection, CreditHandler).await,
        Service::Orders => run_parts(&config, db, OrdersProjection, DecisionHandler).await,
        Service::Accounting => run_parts(&config, db, AccountingProjection, InvoiceHandler).await,
    }
}

async fn run_parts<P: Projection, H: Handler>(
    config: &ServiceConfig,
    db: Db,
    projection: P,
    handler: H,
) -> Result<()> {
    let projection_client = connect(&config.cairn).await?;
    let subscriber = connect(&config.cairn).await?;
    let commands = connect(&config.cairn).await?;
    tracing::info!(
        projection = projection.name(),
        handler = handler.name(),
        "service started"
    );
    let handler = Arc::new(handler);
    let saga = async {
        match config.driver {
            Driver::Persistent => {
                let consumer = format!("{}-{}", handler.name(), uuid::Uuid::new_v4().simple());
                run_persistent(subscriber, commands, handler.clone(), consumer).await
            }
            Driver::CatchUp => {
                run_catch_up(subscriber, commands, db.clone(), handler.clone()).await
            }
        }
    };
    tokio::try_join!(
        run_projection(projection_client, db.clone(), Arc::new(projection)),
        saga,
    )?;
    Ok(())
}
