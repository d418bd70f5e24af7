//! The gateway: the shop's HTTP/JSON API, the live dashboard and its event
//! feed. Commands go straight to the services' command functions (which load
//! and append aggregates in Cairn); queries read the gateway's own SQLite read
//! model, fed by the same projections the services run, so answers are
//! eventually consistent with the log.
//!
//! Owns the HTTP surface and the mapping of [`ShopError`] to HTTP statuses
//! (`ApiError`); never writes a read-model table itself.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_client::{
    Client, ReadFrom, ReadOptions, RecordedEvent, SubscribeOptions, SubscriptionMessage,
};
use rusqlite::types::ValueRef;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use crate::accounting::AccountingProjection;
use crate::catalog::{self, CatalogProjection, NewProduct, ProductChanges};
use crate::customers::{self, CustomersProjection};
use crate::error::ShopError;
use crate::events::{CATEGORY, CUSTOMER, INVOICE, ORDER, PRODUCT, stream};
use crate::eventstore::load;
use crate::orders::{self, OrdersProjection};
use crate::readmodel::{Db, install, run_projection};
use crate::services::{ServiceConfig, connect};

/// Live events buffered per dashboard; a slower page is told it lagged.
const FEED_BUFFER: usize = 1024;
/// Most events one `/api/events` call returns.
const MAX_EVENTS_PAGE: u64 = 1000;

/// What every request handler shares.
#[derive(Clone)]
struct AppState {
    /// Commands and event-history reads.
    client: Client,
    /// The gateway's read model (every projection).
    db: Db,
    /// Live events from `$all` (non-system streams), for the dashboards.
    feed: broadcast::Sender<Arc<Value>>,
}

/// Runs the gateway on `listener` until `shutdown` completes: its projections,
/// its live feed and the HTTP server, each with its own Cairn connection.
pub async fn run(
    config: ServiceConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let db = config.open_db("gateway")?;
    // Tables first, so queries work before the first event arrives.
    install(&db, Arc::new(CatalogProjection)).await?;
    install(&db, Arc::new(CustomersProjection)).await?;
    install(&db, Arc::new(OrdersProjection)).await?;
    install(&db, Arc::new(AccountingProjection)).await?;
    let (feed, _) = broadcast::channel(FEED_BUFFER);
    let state = AppState {
        client: connect(&config.cairn).await?,
        db: db.clone(),
        feed: feed.clone(),
    };
    let (catalog, customers, orders, accounting, feeder) = (
        connect(&config.cairn).await?,
        connect(&config.cairn).await?,
        connect(&config.cairn).await?,
        connect(&config.cairn).await?,
        connect(&config.cairn).await?,
    );
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown);
    tokio::select! {
        result = server => result.map_err(|error| ShopError::Internal(format!("http: {error}"))),
        result = run_projection(catalog, db.clone(), Arc::new(CatalogProjection)) => result,
        result = run_projection(customers, db.clone(), Arc::new(CustomersProjection)) => result,
        result = run_projection(orders, db.clone(), Arc::new(OrdersProjection)) => result,
        result = run_projection(accounting, db, Arc::new(AccountingProjection)) => result,
        result = run_feed(feeder, feed) => result,
    }
}

/// Follows `$all` from now on and publishes every event of a non-system
/// stream to the dashboards.
async fn run_feed(client: Client, feed: broadcast::Sender<Arc<Value>>) -> crate::Result<()> {
    let mut subscription = client.subscribe_resilient("$all", SubscribeOptions::from_end());
    loop {
        if let SubscriptionMessage::Event(event) = subscription.next().await?
            && !event.stream.starts_with('$')
        {
            // No dashboard open is not an error.
            let _ = feed.send(Arc::new(event_json(&event)));
        }
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/api", get(index))
        .route("/api/categories", get(list_categories).post(add_category))
        .route(
            "/api/categories/{id}",
            get(get_category)
                .patch(rename_category)
                .delete(delete_category),
        )
        .route("/api/categories/{id}/events", get(category_events))
        .route("/api/products", get(list_products).post(add_product))
        .route(
            "/api/products/{id}",
            get(get_product)
                .patch(update_product)
                .delete(delete_product),
        )
        .route("/api/products/{id}/events", get(product_events))
        .route("/api/customers", get(list_customers).post(register))
        .route(
            "/api/customers/{id}",
            get(get_customer).patch(change_profile),
        )
        .route("/api/customers/{id}/credit", put(set_credit))
        .route("/api/customers/{id}/orders", get(customer_orders))
        .route("/api/customers/{id}/events", get(customer_events))
        .route("/api/login", post(login))
        .route("/api/orders", get(list_orders).post(place_order))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/events", get(order_events))
        .route("/api/invoices", get(list_invoices))
        .route("/api/invoices/{order_id}", get(get_invoice))
        .route("/api/invoices/{order_id}/events", get(invoice_events))
        .route("/api/revenue", get(revenue))
        .route("/api/events", get(events))
        .route("/api/feed", get(feed))
        .route("/api/dashboard", get(dashboard_data))
        .fallback(not_found)
        .with_state(state)
}

/// A [`ShopError`] as an HTTP response: `{"error": "..."}` with a 4xx status
/// for anything the caller can fix, 503 when Cairn is unreachable.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<ShopError> for ApiError {
    fn from(error: ShopError) -> Self {
        Self::new(status_of(&error), error.to_string())
    }
}

/// The one mapping from the shop's errors to HTTP statuses.
pub fn status_of(error: &ShopError) -> StatusCode {
    use cairn_client::Error as Cairn;
    match error {
        ShopError::Invalid(_) => StatusCode::BAD_REQUEST,
        ShopError::NotFound { .. } => StatusCode::NOT_FOUND,
        ShopError::Conflict(_) => StatusCode::CONFLICT,
        ShopError::Cairn(Cairn::WrongExpectedRevision { .. }) => StatusCode::CONFLICT,
        ShopError::Cairn(Cairn::Unavailable(_) | Cairn::Connect(_)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such resource; see GET /api")
}

/// Parses a path id, saying which kind of id was expected.
fn parse_id(what: &str, id: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "'{id}' is not a {what} id (a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8)"
            ),
        )
    })
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    Ok(body?.0)
}

/// Runs a query on the read model: every row as a JSON object keyed by column.
async fn rows(db: &Db, sql: &'static str, params: Vec<String>) -> Result<Vec<Value>, ApiError> {
    Ok(db
        .call(move |connection| {
            let mut statement = connection.prepare_cached(sql)?;
            let names: Vec<String> = statement
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            let mut rows = statement.query(rusqlite::params_from_iter(params))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut object = serde_json::Map::new();
                for (index, name) in names.iter().enumerate() {
                    let value = match row.get_ref(index)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(integer) => json!(integer),
                        ValueRef::Real(real) => json!(real),
                        ValueRef::Text(text) | ValueRef::Blob(text) => {
                            json!(String::from_utf8_lossy(text))
                        }
                    };
                    object.insert(name.clone(), value);
                }
                out.push(Value::Object(object));
            }
            Ok(out)
        })
        .await?)
}

async fn one(db: &Db, sql: &'static str, id: Uuid, what: &'static str) -> ApiResult<Value> {
    rows(db, sql, vec![id.to_string()])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ShopError::NotFound {
                what,
                id: id.to_string(),
            }
            .into()
        })
}

/// Adds `links` (itself and its event history) to a resource.
fn linked(mut resource: Value, collection: &str, id_field: &str) -> Value {
    if let Some(id) = resource
        .get(id_field)
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        resource["links"] = json!({
            "self": format!("/api/{collection}/{id}"),
            "events": format!("/api/{collection}/{id}/events"),
        });
    }
    resource
}

fn all_linked(resources: Vec<Value>, collection: &str, id_field: &str) -> Value {
    Value::Array(
        resources
            .into_iter()
            .map(|resource| linked(resource, collection, id_field))
            .collect(),
    )
}

/// An event as JSON: its place in the log and its data. Password hashes are
/// kept in the log (the customers service checks logins against them) but
/// never served.
fn event_json(event: &RecordedEvent) -> Value {
    let mut data = serde_json::from_slice::<Value>(&event.data)
        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&event.data)));
    if let Some(hash) = data.get_mut("password_hash")
        && !hash.is_null()
    {
        *hash = json!("(hidden)");
    }
    json!({
        "id": event.id,
        "stream": event.stream,
        "revision": event.revision,
        "position": event.position,
        "type": event.event_type,
        "created_ms": crate::catalog::millis(event),
        "data": data,
    })
}

/// Every event of one stream, oldest first (an empty list if it has none).
async fn stream_events(client: &Client, stream: String) -> ApiResult {
    let events = match client
        .read_stream(stream, ReadOptions::forwards().max_count(MAX_EVENTS_PAGE))
        .await
    {
        Ok(events) => events.collect_all().await,
        Err(error) => Err(error),
    };
    let events = match events {
        Ok(events) => events,
        Err(cairn_client::Error::StreamNotFound { .. }) => Vec::new(),
        Err(error) => return Err(ShopError::from(error).into()),
    };
    Ok(Json(Value::Array(events.iter().map(event_json).collect())))
}

async fn index() -> Json<Value> {
    Json(json!({
        "dashboard": "/",
        "categories": "/api/categories",
        "products": "/api/products",
        "customers": "/api/customers",
        "login": "/api/login",
        "orders": "/api/orders",
        "invoices": "/api/invoices",
        "revenue": "/api/revenue",
        "events": "/api/events?stream=<name>&limit=<n>",
        "feed": "/api/feed",
    }))
}

// ---- categories ----

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

async fn list_categories(State(state): State<AppState>) -> ApiResult {
    let categories = rows(
        &state.db,
        "SELECT * FROM categories WHERE deleted = 0 ORDER BY name",
        vec![],
    )
    .await?;
    Ok(Json(all_linked(categories, "categories", "id")))
}

async fn add_category(
    State(state): State<AppState>,
    request: Result<Json<NameBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request = body(request)?;
    let id = catalog::add_category(&state.client, &request.name).await?;
    Ok(created(json!({ "id": id }), "categories"))
}

fn created(resource: Value, collection: &str) -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(linked_id(resource, collection)))
}

fn linked_id(resource: Value, collection: &str) -> Value {
    linked(resource, collection, "id")
}

async fn get_category(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("category", &id)?;
    let category = one(
        &state.db,
        "SELECT * FROM categories WHERE id = ?1",
        id,
        "category",
    )
    .await?;
    let products = rows(
        &state.db,
        "SELECT * FROM products WHERE category_id = ?1 AND deleted = 0 ORDER BY name",
        vec![id.to_string()],
    )
    .await?;
    let mut category = linked_id(category, "categories");
    category["products"] = all_linked(products, "products", "id");
    Ok(Json(category))
}

async fn rename_category(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Result<Json<NameBody>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id("category", &id)?;
    catalog::rename_category(&state.client, id, &body(request)?.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_category(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("category", &id)?;
    catalog::delete_category(&state.client, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn category_events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("category", &id)?;
    stream_events(&state.client, stream(CATEGORY, id)).await
}

// ---- products ----

#[derive(Deserialize)]
struct ProductFilter {
    category_id: Option<Uuid>,
}

async fn list_products(
    State(state): State<AppState>,
    filter: Result<Query<ProductFilter>, QueryRejection>,
) -> ApiResult {
    let products = match filter?.0.category_id {
        Some(category) => {
            rows(
                &state.db,
                "SELECT * FROM products WHERE deleted = 0 AND category_id = ?1 ORDER BY name",
                vec![category.to_string()],
            )
            .await?
        }
        None => {
            rows(
                &state.db,
                "SELECT * FROM products WHERE deleted = 0 ORDER BY name",
                vec![],
            )
            .await?
        }
    };
    Ok(Json(all_linked(products, "products", "id")))
}

async fn add_product(
    State(state): State<AppState>,
    request: Result<Json<NewProduct>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = catalog::add_product(&state.client, body(request)?).await?;
    Ok(created(json!({ "id": id }), "products"))
}

async fn get_product(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("product", &id)?;
    let product = one(
        &state.db,
        "SELECT * FROM products WHERE id = ?1",
        id,
        "product",
    )
    .await?;
    Ok(Json(linked_id(product, "products")))
}

async fn update_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Result<Json<ProductChanges>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id("product", &id)?;
    catalog::update_product(&state.client, id, body(request)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = parse_id("product", &id)?;
    catalog::delete_product(&state.client, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn product_events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("product", &id)?;
    stream_events(&state.client, stream(PRODUCT, id)).await
}

// ---- customers ----

#[derive(Deserialize)]
struct Registration {
    name: String,
    email: String,
    password: String,
}

#[derive(Deserialize)]
struct ProfileChange {
    name: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
struct Credit {
    credit_cents: i64,
}

#[derive(Deserialize)]
struct Login {
    email: String,
    password: String,
}

async fn list_customers(State(state): State<AppState>) -> ApiResult {
    let customers = rows(&state.db, "SELECT * FROM customers ORDER BY name", vec![]).await?;
    Ok(Json(all_linked(customers, "customers", "id")))
}

async fn register(
    State(state): State<AppState>,
    request: Result<Json<Registration>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request = body(request)?;
    let id = customers::register(
        &state.client,
        &request.name,
        &request.email,
        &request.password,
    )
    .await?;
    Ok(created(json!({ "id": id }), "customers"))
}

async fn login(
    State(state): State<AppState>,
    request: Result<Json<Login>, JsonRejection>,
) -> ApiResult {
    let request = body(request)?;
    let id = customers::login(&state.client, &request.email, &request.password)
        .await
        .map_err(|error| match error {
            ShopError::Invalid(message) => ApiError::new(StatusCode::UNAUTHORIZED, message),
            error => error.into(),
        })?;
    Ok(Json(linked_id(json!({ "id": id }), "customers")))
}

async fn get_customer(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("customer", &id)?;
    let customer = one(
        &state.db,
        "SELECT * FROM customers WHERE id = ?1",
        id,
        "customer",
    )
    .await?;
    let mut customer = linked_id(customer, "customers");
    customer["links"]["orders"] = json!(format!("/api/customers/{id}/orders"));
    Ok(Json(customer))
}

async fn change_profile(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Result<Json<ProfileChange>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id("customer", &id)?;
    let request = body(request)?;
    customers::change_profile(
        &state.client,
        id,
        request.name.as_deref(),
        request.password.as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_credit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    request: Result<Json<Credit>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let id = parse_id("customer", &id)?;
    customers::set_credit(&state.client, id, body(request)?.credit_cents).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn customer_orders(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("customer", &id)?;
    let orders = rows(
        &state.db,
        "SELECT * FROM orders WHERE customer_id = ?1 ORDER BY placed_ms DESC",
        vec![id.to_string()],
    )
    .await?;
    Ok(Json(all_linked(orders, "orders", "id")))
}

async fn customer_events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("customer", &id)?;
    stream_events(&state.client, stream(CUSTOMER, id)).await
}

// ---- orders ----

#[derive(Deserialize)]
struct NewOrder {
    customer_id: Uuid,
    product_id: Uuid,
    quantity: u32,
}

#[derive(Deserialize)]
struct OrderFilter {
    customer_id: Option<Uuid>,
    status: Option<String>,
}

async fn list_orders(
    State(state): State<AppState>,
    filter: Result<Query<OrderFilter>, QueryRejection>,
) -> ApiResult {
    let filter = filter?.0;
    let orders = rows(
        &state.db,
        "SELECT * FROM orders WHERE (?1 = '' OR customer_id = ?1) AND (?2 = '' OR status = ?2)
         ORDER BY placed_ms DESC",
        vec![
            filter
                .customer_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            filter.status.unwrap_or_default(),
        ],
    )
    .await?;
    Ok(Json(all_linked(orders, "orders", "id")))
}

/// Places an order after checking, in Cairn itself, that the customer and the
/// product exist (a clear 404 now rather than a rejection later).
async fn place_order(
    State(state): State<AppState>,
    request: Result<Json<NewOrder>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request = body(request)?;
    crate::validate::quantity(request.quantity)?;
    let customer =
        load::<customers::Customer>(&state.client, &stream(CUSTOMER, request.customer_id)).await?;
    if !customer.state.exists {
        return Err(ShopError::NotFound {
            what: "customer",
            id: request.customer_id.to_string(),
        }
        .into());
    }
    // From its latest snapshot: a product's stock events grow without bound.
    let product = catalog::load_product(&state.client, request.product_id).await?;
    if !product.exists || product.deleted {
        return Err(ShopError::NotFound {
            what: "product",
            id: request.product_id.to_string(),
        }
        .into());
    }
    let id = orders::place_order(
        &state.client,
        request.customer_id,
        request.product_id,
        request.quantity,
    )
    .await?;
    let order = linked_id(json!({ "id": id, "status": "placed" }), "orders");
    Ok((StatusCode::ACCEPTED, Json(order)))
}

async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("order", &id)?;
    let order = one(&state.db, "SELECT * FROM orders WHERE id = ?1", id, "order").await?;
    let history = rows(
        &state.db,
        "SELECT position, at_ms, event_type, stream, status, detail FROM order_history
         WHERE order_id = ?1 ORDER BY position",
        vec![id.to_string()],
    )
    .await?;
    let mut order = linked_id(order, "orders");
    order["history"] = Value::Array(history);
    if order["invoice_number"].is_number() {
        order["links"]["invoice"] = json!(format!("/api/invoices/{id}"));
    }
    Ok(Json(order))
}

async fn order_events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("order", &id)?;
    stream_events(&state.client, stream(ORDER, id)).await
}

// ---- accounting ----

async fn list_invoices(State(state): State<AppState>) -> ApiResult {
    let invoices = rows(&state.db, "SELECT * FROM invoices ORDER BY number", vec![]).await?;
    Ok(Json(all_linked(invoices, "invoices", "order_id")))
}

async fn get_invoice(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("order", &id)?;
    let invoice = one(
        &state.db,
        "SELECT * FROM invoices WHERE order_id = ?1",
        id,
        "invoice",
    )
    .await?;
    Ok(Json(linked(invoice, "invoices", "order_id")))
}

async fn invoice_events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id("order", &id)?;
    stream_events(&state.client, stream(INVOICE, id)).await
}

async fn revenue(State(state): State<AppState>) -> ApiResult {
    let revenue = rows(
        &state.db,
        "SELECT COALESCE(SUM(total_cents), 0) AS revenue_cents, COUNT(*) AS invoices FROM invoices",
        vec![],
    )
    .await?;
    Ok(Json(revenue.into_iter().next().unwrap_or(Value::Null)))
}

// ---- the event log ----

#[derive(Deserialize)]
struct EventsQuery {
    /// A stream; absent: the newest events of every non-system stream.
    stream: Option<String>,
    /// First revision of a stream read.
    from: Option<u64>,
    /// Most events (default 100, at most 1000).
    limit: Option<u64>,
}

async fn events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult {
    let query = query?.0;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_EVENTS_PAGE}"),
        ));
    }
    if let Some(name) = query.stream {
        if name.is_empty() || name.starts_with('$') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "stream must name a shop stream such as order-<id>; system streams ($...) are not served",
            ));
        }
        let options = ReadOptions::forwards()
            .from(ReadFrom::At(query.from.unwrap_or(0)))
            .max_count(limit);
        let events = match state.client.read_stream(name, options).await {
            Ok(events) => events.collect_all().await,
            Err(error) => Err(error),
        };
        return match events {
            Ok(events) => Ok(Json(Value::Array(events.iter().map(event_json).collect()))),
            Err(cairn_client::Error::StreamNotFound { .. }) => Ok(Json(json!([]))),
            Err(error) => Err(ShopError::from(error).into()),
        };
    }
    // Newest first; system streams are skipped, so read a little more.
    let events = state
        .client
        .read_all(ReadOptions::backwards().max_count(limit * 2))
        .await
        .map_err(ShopError::from)?
        .collect_all()
        .await
        .map_err(ShopError::from)?;
    let events: Vec<Value> = events
        .iter()
        .filter(|event| !event.stream.starts_with('$'))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(event_json)
        .collect();
    Ok(Json(Value::Array(events)))
}

/// Server-sent events: every new event of a non-system stream, as JSON. A
/// page too slow to keep up gets a `lagged` event (and should reload) rather
/// than a silent gap.
async fn feed(
    State(state): State<AppState>,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(state.feed.subscribe()).map(|item| {
        Ok(match item {
            Ok(event) => SseEvent::default().event("event").data(event.to_string()),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                SseEvent::default().event("lagged").data(missed.to_string())
            }
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ---- dashboard ----

async fn dashboard_data(State(state): State<AppState>) -> ApiResult {
    let products = rows(
        &state.db,
        "SELECT p.*, COALESCE(c.name, '') AS category FROM products p
         LEFT JOIN categories c ON c.id = p.category_id WHERE p.deleted = 0 ORDER BY p.name",
        vec![],
    )
    .await?;
    let customers = rows(&state.db, "SELECT * FROM customers ORDER BY name", vec![]).await?;
    let orders = rows(
        &state.db,
        "SELECT o.*, COALESCE(p.name, '') AS product, COALESCE(c.name, '') AS customer
         FROM orders o LEFT JOIN products p ON p.id = o.product_id
         LEFT JOIN customers c ON c.id = o.customer_id ORDER BY o.placed_ms DESC LIMIT 200",
        vec![],
    )
    .await?;
    let revenue = rows(
        &state.db,
        "SELECT COALESCE(SUM(total_cents), 0) AS revenue_cents, COUNT(*) AS invoices FROM invoices",
        vec![],
    )
    .await?;
    Ok(Json(json!({
        "products": products,
        "customers": customers,
        "orders": orders,
        "revenue": revenue.into_iter().next().unwrap_or(Value::Null),
        "live_viewers": state.feed.receiver_count(),
    })))
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
