//! 200 orders placed at once against limited stock and limited credit: no
//! oversell, no negative credit, every order ends approved or rejected, and
//! every approved order is invoiced exactly once with gap-free numbers.

mod common;

use std::collections::HashMap;

use cairn_testkit::{eventually, read_all_client};
use common::Shop;
use serde_json::{Value, json};
use shop::catalog::Product;
use shop::eventstore::load;
use shop::saga::Driver;
use shop::services::Service;

const ORDERS: usize = 200;
const STOCK: i64 = 100;
const PRICE_CENTS: i64 = 300;
const CUSTOMERS: usize = 10;
const CREDIT_CENTS: i64 = 5000;

async fn two_hundred_orders(shop: Shop) {
    let category = shop
        .create("/api/categories", json!({ "name": "Tea" }))
        .await;
    let product = shop
        .create(
            "/api/products",
            json!({ "category_id": category, "name": "Sencha", "price_cents": PRICE_CENTS,
                    "supplier": "Kyoto Leaf", "stock": STOCK }),
        )
        .await;
    let mut customers = Vec::new();
    for index in 0..CUSTOMERS {
        let customer = shop
            .create(
                "/api/customers",
                json!({ "name": format!("Customer {index}"),
                        "email": format!("c{index}@example.com"), "password": "long enough" }),
            )
            .await;
        let (status, _) = shop
            .send(
                reqwest::Method::PUT,
                &format!("/api/customers/{customer}/credit"),
                json!({ "credit_cents": CREDIT_CENTS }),
            )
            .await;
        assert!(status.is_success());
        customers.push(customer);
    }

    // All at once: 200 requests in flight through the gateway.
    let shop = std::sync::Arc::new(shop);
    let mut placing = tokio::task::JoinSet::new();
    for index in 0..ORDERS {
        let shop = shop.clone();
        let body = json!({ "customer_id": customers[index % CUSTOMERS], "product_id": product,
                           "quantity": 1 + index % 3 });
        placing.spawn(async move { shop.create("/api/orders", body).await });
    }
    let mut order_ids = Vec::new();
    while let Some(id) = placing.join_next().await {
        order_ids.push(id.expect("placing task"));
    }
    assert_eq!(order_ids.len(), ORDERS);

    // Every order ends approved (and invoiced) or rejected.
    let orders = shop
        .get_until("/api/orders", |orders| {
            let orders = orders.as_array().expect("orders");
            orders.len() == ORDERS
                && orders.iter().all(|order| {
                    order["status"] == "rejected"
                        || (order["status"] == "approved" && order["invoice_number"].is_number())
                })
        })
        .await;
    let orders = orders.as_array().expect("orders");
    let approved: Vec<&Value> = orders
        .iter()
        .filter(|o| o["status"] == "approved")
        .collect();
    assert!(
        !approved.is_empty() && approved.len() < ORDERS,
        "{} approved",
        approved.len()
    );

    // No oversell: stock never negative, and what was sold is what left stock.
    let sold: i64 = approved
        .iter()
        .map(|o| o["quantity"].as_i64().expect("quantity"))
        .sum();
    assert!(sold <= STOCK, "sold {sold} of {STOCK}");
    // An order shows as rejected before the catalog has released the stock it
    // reserved (compensation follows the rejection): wait for the stream to
    // settle, then check it exactly.
    let client = shop.cairn.client().await;
    let stream = format!("product-{product}");
    let aggregate = eventually("the product stream to settle", || async {
        let aggregate = load::<Product>(&client, &stream).await.expect("load");
        let settled = i64::from(aggregate.state.stock) == STOCK - sold
            && aggregate.state.reservations.len() == approved.len();
        settled.then_some(aggregate)
    })
    .await;
    assert_eq!(i64::from(aggregate.state.stock), STOCK - sold);
    assert_eq!(aggregate.state.reservations.len(), approved.len());
    let view = shop
        .get_until(&format!("/api/products/{product}"), |p| {
            p["stock"] == STOCK - sold
        })
        .await;
    assert_eq!(view["reserved"], sold);

    // No negative credit: each customer has exactly what their approved orders left.
    let mut spent: HashMap<&str, i64> = HashMap::new();
    for order in &approved {
        *spent
            .entry(order["customer_id"].as_str().expect("customer"))
            .or_default() += order["total_cents"].as_i64().expect("total");
    }
    for customer in &customers {
        let expected = CREDIT_CENTS - spent.get(customer.as_str()).copied().unwrap_or(0);
        assert!(expected >= 0);
        shop.get_until(&format!("/api/customers/{customer}"), |c| {
            c["credit_cents"] == expected
        })
        .await;
    }

    // One invoice per approved order, numbered 1..=n without gaps; revenue = invoices.
    let invoices = shop
        .get_until("/api/invoices", |i| {
            i.as_array().is_some_and(|i| i.len() == approved.len())
        })
        .await;
    let mut numbers: Vec<i64> = invoices
        .as_array()
        .expect("invoices")
        .iter()
        .map(|invoice| invoice["number"].as_i64().expect("number"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=approved.len() as i64).collect::<Vec<_>>());
    let revenue: i64 = approved
        .iter()
        .map(|o| o["total_cents"].as_i64().expect("total"))
        .sum();
    shop.get_until("/api/revenue", |r| r["revenue_cents"] == revenue)
        .await;

    // Each order was decided exactly once in the log.
    for id in &order_ids {
        let events = read_all_client(&client, &format!("order-{id}"))
            .await
            .expect("read");
        assert_eq!(events.len(), 2, "order {id}: {events:?}");
    }
    shop.assert_running();
    // The services' own read models agree with the gateway's.
    let sold_in_catalog =
        shop.query_service(Service::Catalog, "SELECT reserved FROM products", |row| {
            row.get::<_, i64>(0)
        });
    assert!(sold_in_catalog.is_some_and(|reserved| reserved <= sold));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_on_persistent_subscriptions_with_two_instances() {
    let mut shop = Shop::start_with(Driver::Persistent).await;
    // A second catalog and customers instance share their groups' work.
    shop.start_extra_instance(Service::Catalog);
    shop.start_extra_instance(Service::Customers);
    two_hundred_orders(shop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_orders_on_catch_up_subscriptions() {
    two_hundred_orders(Shop::start_with(Driver::CatchUp).await).await;
}
