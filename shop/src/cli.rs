//! The command-line client: each command is one HTTP call to the gateway; the
//! answer is printed as JSON. Owns no state and never talks to Cairn.

use reqwest::Method;
use serde_json::{Value, json};

use crate::error::{Result, ShopError};
use crate::validate::parse_price;

/// One CLI request, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path under the gateway, e.g. `/api/orders`.
    pub path: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl Request {
    fn get(path: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            path: path.into(),
            body: None,
        }
    }

    fn send(method: Method, path: impl Into<String>, body: Value) -> Self {
        Self {
            method,
            path: path.into(),
            body: Some(body),
        }
    }
}

/// `shop category add NAME`.
pub fn add_category(name: &str) -> Request {
    Request::send(Method::POST, "/api/categories", json!({ "name": name }))
}

/// `shop product add ...`: `price` is a decimal amount such as `12.50`.
pub fn add_product(
    category: &str,
    name: &str,
    price: &str,
    supplier: &str,
    stock: u32,
) -> Result<Request> {
    Ok(Request::send(
        Method::POST,
        "/api/products",
        json!({
            "category_id": category,
            "name": name,
            "price_cents": parse_price(price)?,
            "supplier": supplier,
            "stock": stock,
        }),
    ))
}

/// `shop product update ID ...`.
pub fn update_product(
    id: &str,
    name: Option<&str>,
    price: Option<&str>,
    supplier: Option<&str>,
    stock: Option<u32>,
) -> Result<Request> {
    let mut changes = serde_json::Map::new();
    if let Some(name) = name {
        changes.insert("name".into(), json!(name));
    }
    if let Some(price) = price {
        changes.insert("price_cents".into(), json!(parse_price(price)?));
    }
    if let Some(supplier) = supplier {
        changes.insert("supplier".into(), json!(supplier));
    }
    if let Some(stock) = stock {
        changes.insert("stock".into(), json!(stock));
    }
    if changes.is_empty() {
        return Err(ShopError::Invalid(
            "give at least one of --name, --price, --supplier, --stock".into(),
        ));
    }
    Ok(Request::send(
        Method::PATCH,
        format!("/api/products/{id}"),
        Value::Object(changes),
    ))
}

/// `shop customer add ...`.
pub fn add_customer(name: &str, email: &str, password: &str) -> Request {
    Request::send(
        Method::POST,
        "/api/customers",
        json!({ "name": name, "email": email, "password": password }),
    )
}

/// `shop customer credit ID AMOUNT`.
pub fn set_credit(id: &str, amount: &str) -> Result<Request> {
    Ok(Request::send(
        Method::PUT,
        format!("/api/customers/{id}/credit"),
        json!({ "credit_cents": parse_price(amount)? }),
    ))
}

/// `shop order place ...`.
pub fn place_order(customer: &str, product: &str, quantity: u32) -> Request {
    Request::send(
        Method::POST,
        "/api/orders",
        json!({ "customer_id": customer, "product_id": product, "quantity": quantity }),
    )
}

/// `shop orders [--customer ID]`.
pub fn list_orders(customer: Option<&str>) -> Request {
    match customer {
        Some(customer) => Request::get(format!("/api/customers/{customer}/orders")),
        None => Request::get("/api/orders"),
    }
}

/// `shop events [STREAM] [--limit N]`.
pub fn events(stream: Option<&str>, limit: u64) -> Request {
    match stream {
        Some(stream) => Request::get(format!("/api/events?stream={stream}&limit={limit}")),
        None => Request::get(format!("/api/events?limit={limit}")),
    }
}

/// A plain read: `shop get /api/...`.
pub fn get(path: &str) -> Request {
    Request::get(path)
}

/// Sends `request` to the gateway at `gateway` and returns the JSON answer (or
/// `null` for an empty one). An error status becomes an error carrying the
/// gateway's message.
pub async fn call(gateway: &str, request: Request) -> Result<Value> {
    let url = format!("{}{}", gateway.trim_end_matches('/'), request.path);
    let client = reqwest::Client::new();
    let mut builder = client.request(request.method, &url);
    if let Some(body) = &request.body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|error| {
        ShopError::Internal(format!("cannot reach the gateway at {gateway}: {error}"))
    })?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| ShopError::Internal(format!("reading the gateway's answer: {error}")))?;
    let value: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if status.is_success() {
        Ok(value)
    } else {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        Err(ShopError::Invalid(format!("{status}: {message}")))
    }
}
