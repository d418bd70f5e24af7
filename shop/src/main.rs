//! The `shop` binary: runs one service (or all of them) or acts as a CLI
//! against the gateway. Parses configuration and dispatches; the work lives in
//! the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shop::cli;
use shop::saga::Driver;
use shop::services::{self, Service, ServiceConfig};

#[derive(Parser)]
#[command(name = "shop", about = "The shop on Cairn: services, gateway and CLI")]
struct Args {
    /// Cairn's address (services and gateway).
    #[arg(
        long,
        env = "CAIRN_ADDR",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    cairn: String,
    /// Data directory: a service's own (for `all`: one subdirectory per service).
    #[arg(long, env = "SHOP_DATA", default_value = "./shop-data", global = true)]
    data: PathBuf,
    /// How the services' saga handlers receive events: `persistent` (consumer
    /// groups, several instances can share a service's work) or `catch-up`
    /// (checkpoint in the service's SQLite, one instance per service).
    #[arg(long, env = "SHOP_SAGA", default_value = "persistent", value_parser = parse_driver, global = true)]
    saga: Driver,
    /// The gateway's URL (CLI commands).
    #[arg(
        long,
        env = "SHOP_GATEWAY",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    gateway: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the catalog service.
    Catalog,
    /// Run the customers service.
    Customers,
    /// Run the orders service; `shop orders list` lists orders instead.
    Orders {
        #[command(subcommand)]
        list: Option<OrdersList>,
    },
    /// Run the accounting service.
    Accounting,
    /// Run the gateway (REST API and dashboard).
    Gateway {
        /// HTTP address.
        #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run every service and the gateway in this process (separate connections).
    All {
        /// HTTP address of the gateway.
        #[arg(long, env = "SHOP_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Categories.
    #[command(subcommand)]
    Category(CategoryCommand),
    /// Products.
    #[command(subcommand)]
    Product(ProductCommand),
    /// Customers.
    #[command(subcommand)]
    Customer(CustomerCommand),
    /// Orders.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Show events: of one stream, or the newest of the whole shop.
    Events {
        /// A stream, e.g. order-<id>.
        stream: Option<String>,
        /// Most events.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Any GET of the API, e.g. `shop get /api/revenue`.
    Get {
        /// The path.
        path: String,
    },
}

/// `shop orders list`: the plural names the service, so listing is a
/// subcommand of it (also `shop order list`).
#[derive(Subcommand)]
enum OrdersList {
    /// List orders (all, or one customer's).
    List {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
    },
}

#[derive(Subcommand)]
enum CategoryCommand {
    /// Add a category.
    Add {
        /// Name.
        name: String,
    },
    /// List categories.
    List,
}

#[derive(Subcommand)]
enum ProductCommand {
    /// Add a product.
    Add {
        /// Category id.
        #[arg(long)]
        category: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// Unit price, e.g. 12.50.
        #[arg(long)]
        price: String,
        /// Supplier.
        #[arg(long)]
        supplier: String,
        /// Units in stock.
        #[arg(long, default_value_t = 0)]
        stock: u32,
    },
    /// Change a product.
    Update {
        /// Product id.
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New unit price, e.g. 12.50.
        #[arg(long)]
        price: Option<String>,
        /// New supplier.
        #[arg(long)]
        supplier: Option<String>,
        /// Units in stock from now on.
        #[arg(long)]
        stock: Option<u32>,
    },
    /// List products.
    List,
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Register a customer.
    Add {
        /// Name.
        #[arg(long)]
        name: String,
        /// Email.
        #[arg(long)]
        email: String,
        /// Password (8 characters or more).
        #[arg(long)]
        password: String,
    },
    /// Set a customer's credit, e.g. 100.00.
    Credit {
        /// Customer id.
        id: String,
        /// Amount.
        amount: String,
    },
    /// Show a customer's profile and credit.
    Show {
        /// Customer id.
        id: String,
    },
    /// List customers.
    List,
}

#[derive(Subcommand)]
enum OrderCommand {
    /// Place an order.
    Place {
        /// Customer id.
        #[arg(long)]
        customer: String,
        /// Product id.
        #[arg(long)]
        product: String,
        /// Units.
        #[arg(long, default_value_t = 1)]
        quantity: u32,
    },
    /// Show an order with its status history.
    Show {
        /// Order id.
        id: String,
    },
    /// List orders (all, or one customer's).
    List {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
    },
}

async fn serve(args: Args) -> shop::Result<()> {
    let config = |data: PathBuf| ServiceConfig {
        cairn: args.cairn.clone(),
        data,
        driver: args.saga,
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let service = match args.command {
        Command::Catalog => Service::Catalog,
        Command::Customers => Service::Customers,
        Command::Orders { list: None } => Service::Orders,
        Command::Accounting => Service::Accounting,
        Command::Gateway { listen } => {
            let listener = bind(listen).await?;
            return shop::gateway::run(config(args.data.clone()), listener, shutdown).await;
        }
        Command::All { listen } => {
            let listener = bind(listen).await?;
            let mut tasks = tokio::task::JoinSet::new();
            for service in Service::ALL {
                tasks.spawn(services::run(
                    service,
                    config(args.data.join(service.name())),
                ));
            }
            tasks.spawn(shop::gateway::run(
                config(args.data.join("gateway")),
                listener,
                shutdown,
            ));
            // The first task to end (Ctrl-C stops the gateway) ends them all.
            let first = tasks.join_next().await;
            tasks.abort_all();
            return match first {
                Some(Ok(result)) => result,
                Some(Err(error)) => Err(shop::ShopError::Internal(error.to_string())),
                None => Ok(()),
            };
        }
        _ => unreachable!("CLI commands are handled by run_cli"),
    };
    tokio::select! {
        result = services::run(service, config(args.data.clone())) => result,
        () = shutdown => Ok(()),
    }
}

fn parse_driver(value: &str) -> Result<Driver, String> {
    match value {
        "persistent" => Ok(Driver::Persistent),
        "catch-up" => Ok(Driver::CatchUp),
        other => Err(format!(
            "'{other}' is not a saga driver: use persistent or catch-up"
        )),
    }
}

async fn bind(listen: SocketAddr) -> shop::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| shop::ShopError::Invalid(format!("cannot listen on {listen}: {error}")))?;
    tracing::info!(
        "gateway on http://{}",
        listener.local_addr().unwrap_or(listen)
    );
    Ok(listener)
}

fn cli_request(command: Command) -> shop::Result<cli::Request> {
    Ok(match command {
        Command::Category(CategoryCommand::Add { name }) => cli::add_category(&name),
        Command::Category(CategoryCommand::List) => cli::get("/api/categories"),
        Command::Product(ProductCommand::Add {
            category,
            name,
            price,
            supplier,
            stock,
        }) => cli::add_product(&category, &name, &price, &supplier, stock)?,
        Command::Product(ProductCommand::Update {
            id,
            name,
            price,
            supplier,
            stock,
        }) => cli::update_product(
            &id,
            name.as_deref(),
            price.as_deref(),
            supplier.as_deref(),
            stock,
        )?,
        Command::Product(ProductCommand::List) => cli::get("/api/products"),
        Command::Customer(CustomerCommand::Add {
            name,
            email,
            password,
        }) => cli::add_customer(&name, &email, &password),
        Command::Customer(CustomerCommand::Credit { id, amount }) => cli::set_credit(&id, &amount)?,
        Command::Customer(CustomerCommand::Show { id }) => {
            cli::get(&format!("/api/customers/{id}"))
        }
        Command::Customer(CustomerCommand::List) => cli::get("/api/customers"),
        Command::Order(OrderCommand::Place {
            customer,
            product,
            quantity,
        }) => cli::place_order(&customer, &product, quantity),
        Command::Order(OrderCommand::Show { id }) => cli::get(&format!("/api/orders/{id}")),
        Command::Orders {
            list: Some(OrdersList::List { customer }),
        }
        | Command::Order(OrderCommand::List { customer }) => cli::list_orders(customer.as_deref()),
        Command::Events { stream, limit } => cli::events(stream.as_deref(), limit),
        Command::Get { path } => cli::get(&path),
        _ => unreachable!("services are handled by serve"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let is_service = matches!(
        args.command,
        Command::Catalog
            | Command::Customers
            | Command::Orders { list: None }
            | Command::Accounting
            | Command::Gateway { .. }
            | Command::All { .. }
    );
    let result = if is_service {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SHOP_LOG")
                    .unwrap_or_else(|_| "info".into()),
            )
            .init();
        serve(args).await
    } else {
        let gateway = args.gateway.clone();
        match cli_request(args.command) {
            Ok(request) => cli::call(&gateway, request).await.map(|answer| {
                if !answer.is_null() {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&answer).unwrap_or_default()
                    );
                }
            }),
            Err(error) => Err(error),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shop: {error}");
            ExitCode::FAILURE
        }
    }
}
