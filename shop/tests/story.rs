//! The issue's end-to-end story, played through the gateway against a real
//! Cairn server and the four services, once as is and once with the orders
//! service killed and restarted in the middle; plus the API's answers to bad
//! input.

mod common;

use cairn_client::Client;
use cairn_testkit::{eventually, read_all_client};
use common::Shop;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shop::saga::Driver;
use shop::services::Service;

async fn events_of(client: &Client, stream: &str) -> Vec<String> {
    read_all_client(client, stream)
        .await
        .expect("read")
        .into_iter()
        .map(|event| event.event_type)
        .collect()
}

/// Plays the story. With `crash_orders`, the orders service is killed right
/// after the second order is placed, and restarted once the other services
/// have done their part.
async fn play_story(shop: &mut Shop, crash_orders: bool) {
    // A manager adds a category and a product, then fixes its price.
    let category = shop
        .create("/api/categories", json!({ "name": "Tea" }))
        .await;
    let product = shop
        .create(
            "/api/products",
            json!({ "category_id": category, "name": "Sencha", "price_cents": 400,
                    "supplier": "Kyoto Leaf", "stock": 10 }),
        )
        .await;
    let (status, _) = shop
        .send(
            Method::PATCH,
            &format!("/api/products/{product}"),
            json!({ "price_cents": 500 }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A customer registers and a manager gives them credit.
    let customer = shop
        .create(
            "/api/customers",
            json!({ "name": "Ann", "email": "ann@example.com", "password": "green tea!" }),
        )
        .await;
    let (status, _) = shop
        .send(
            Method::PUT,
            &format!("/api/customers/{customer}/credit"),
            json!({ "credit_cents": 2000 }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // First order: approved, stock and credit reduced, invoice issued.
    let order = |quantity: u32| json!({ "customer_id": customer, "product_id": product, "quantity": quantity });
    let (status, first) = shop.post("/api/orders", order(3)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();
    let settled = shop.settled_order(&first).await;
    assert_eq!(settled["status"], "approved", "{settled}");
    assert_eq!(settled["total_cents"], 1500);
    assert_eq!(settled["unit_price_cents"], 500, "the fixed price applies");
    shop.get_until(&format!("/api/products/{product}"), |p| p["stock"] == 7)
        .await;
    shop.get_until(&format!("/api/customers/{customer}"), |c| {
        c["credit_cents"] == 500
    })
    .await;
    let invoice = shop
        .get_until(&format!("/api/invoices/{first}"), |_| true)
        .await;
    assert_eq!(invoice["total_cents"], 1500);
    assert_eq!(invoice["number"], 1);

    // Second order, beyond the credit: rejected, stock released.
    let (status, second) = shop.post("/api/orders", order(2)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let second = second["id"].as_str().expect("id").to_owned();
    if crash_orders {
        shop.kill_service(Service::Orders).await;
        // Catalog and customers go on: the refusal is in the log, undecided.
        shop.get_until(&format!("/api/orders/{second}"), |o| {
            o["status"] == "credit refused"
        })
        .await;
        shop.start_service(Service::Orders);
    }
    let settled = shop.settled_order(&second).await;
    assert_eq!(settled["status"], "rejected", "{settled}");
    let reason = settled["reason"].as_str().expect("reason");
    assert!(reason.contains("credit"), "{reason}");
    shop.get_until(&format!("/api/products/{product}"), |p| {
        p["stock"] == 7 && p["reserved"] == 3
    })
    .await;
    let history: Vec<String> = shop
        .get_until(&format!("/api/orders/{second}"), |o| {
            o["history"].as_array().is_some_and(|h| h.len() == 5)
        })
        .await["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|step| step["event_type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        history,
        [
            "OrderPlaced",
            "StockReserved",
            "CreditRefused",
            "OrderRejected",
            "StockReleased"
        ]
    );

    // Credit raised; the re-order is approved.
    let (status, _) = shop
        .send(
            Method::PUT,
            &format!("/api/customers/{customer}/credit"),
            json!({ "credit_cents": 3000 }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let third = shop.create("/api/orders", order(2)).await;
    let settled = shop.settled_order(&third).await;
    assert_eq!(settled["status"], "approved", "{settled}");
    assert_eq!(settled["invoice_number"], 2);

    // Every read model converges to the same state.
    let product_view = shop
        .get_until(&format!("/api/products/{product}"), |p| p["stock"] == 5)
        .await;
    assert_eq!(product_view["reserved"], 5);
    shop.get_until(&format!("/api/customers/{customer}"), |c| {
        c["credit_cents"] == 2000
    })
    .await;
    let revenue = shop.get_until("/api/revenue", |r| r["invoices"] == 2).await;
    assert_eq!(revenue["revenue_cents"], 2500);
    let invoices = shop.get("/api/invoices").await.1;
    let invoiced: i64 = invoices
        .as_array()
        .expect("invoices")
        .iter()
        .map(|invoice| invoice["total_cents"].as_i64().expect("total"))
        .sum();
    assert_eq!(
        invoiced,
        revenue["revenue_cents"].as_i64().expect("revenue")
    );
    let statuses = shop
        .get(&format!("/api/customers/{customer}/orders"))
        .await
        .1;
    let mut statuses: Vec<&str> = statuses
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["status"].as_str().expect("status"))
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["approved", "approved", "rejected"]);

    let stock = |row: &rusqlite::Row<'_>| row.get::<_, i64>(0);
    eventually("the catalog's read model", || async {
        (shop.query_service(Service::Catalog, "SELECT stock FROM products", stock) == Some(5))
            .then_some(())
    })
    .await;
    eventually("the customers' read model", || async {
        (shop.query_service(
            Service::Customers,
            "SELECT credit_cents FROM customers",
            stock,
        ) == Some(2000))
        .then_some(())
    })
    .await;
    eventually("the orders' read model", || async {
        let approved =
            "SELECT COUNT(*) FROM orders WHERE status = 'approved' AND invoice_number IS NOT NULL";
        (shop.query_service(Service::Orders, approved, stock) == Some(2)).then_some(())
    })
    .await;
    eventually("the accounting read model", || async {
        (shop.query_service(
            Service::Accounting,
            "SELECT SUM(total_cents) FROM invoices",
            stock,
        ) == Some(2500))
        .then_some(())
    })
    .await;

    // The log itself: each order decided exactly once, each reservation once.
    let client = shop.cairn.client().await;
    assert_eq!(
        events_of(&client, &format!("order-{first}")).await,
        ["OrderPlaced", "OrderApproved"]
    );
    assert_eq!(
        events_of(&client, &format!("order-{second}")).await,
        ["OrderPlaced", "OrderRejected"]
    );
    assert_eq!(
        events_of(&client, &format!("order-{third}")).await,
        ["OrderPlaced", "OrderApproved"]
    );
    assert_eq!(events_of(&client, "invoicenumbers").await.len(), 2);
    let product_events = events_of(&client, &format!("product-{product}")).await;
    let count = |kind: &str| product_events.iter().filter(|t| *t == kind).count();
    assert_eq!((count("StockReserved"), count("StockReleased")), (3, 1));

    // Every resource links to its event history.
    let (status, order_events) = shop.get(&format!("/api/orders/{second}/events")).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = order_events
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderRejected"]);
    let (_, product_history) = shop.get(&format!("/api/products/{product}/events")).await;
    assert_eq!(product_history[1]["type"], "PriceChanged");
    shop.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_story_of_the_issue_plays_out() {
    let mut shop = Shop::start().await;
    play_story(&mut shop, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_story_plays_out_with_the_saga_on_catch_up_subscriptions() {
    let mut shop = Shop::start_with(Driver::CatchUp).await;
    play_story(&mut shop, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_story_survives_the_orders_service_restarting_midway_on_catch_up() {
    let mut shop = Shop::start_with(Driver::CatchUp).await;
    play_story(&mut shop, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_story_survives_the_orders_service_restarting_midway() {
    let mut shop = Shop::start().await;
    play_story(&mut shop, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_4xx_answers() {
    let shop = Shop::start().await;
    let error = |answer: &Value| answer["error"].as_str().unwrap_or("").to_owned();

    let (status, answer) = shop
        .post("/api/categories", json!({ "title": "Tea" }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error(&answer).contains("name"), "{answer}");
    let (status, answer) = shop.post("/api/categories", json!({ "name": "  " })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("must not be empty"), "{answer}");
    let category = shop
        .create("/api/categories", json!({ "name": "Tea" }))
        .await;

    let product = |price: i64| {
        json!({ "category_id": category, "name": "Sencha", "price_cents": price,
                "supplier": "Kyoto Leaf", "stock": 10 })
    };
    let (status, answer) = shop.post("/api/products", product(-1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("price"), "{answer}");
    let (status, answer) = shop
        .post(
            "/api/products",
            json!({ "category_id": uuid::Uuid::new_v4(), "name": "x", "price_cents": 1,
                    "supplier": "y", "stock": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let product = shop.create("/api/products", product(450)).await;
    let (status, answer) = shop
        .send(
            Method::PATCH,
            &format!("/api/products/{product}"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("nothing to change"), "{answer}");

    let (status, answer) = shop.get("/api/products/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("not a product id"), "{answer}");
    let (status, _) = shop
        .get(&format!("/api/products/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = shop.get("/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let customer = |email: &str, password: &str| json!({ "name": "Ann", "email": email, "password": password });
    let (status, answer) = shop
        .post("/api/customers", customer("ann", "long enough"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("email"), "{answer}");
    let (status, answer) = shop
        .post("/api/customers", customer("ann@example.com", "short"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("password"), "{answer}");
    let ann = shop
        .create("/api/customers", customer("ann@example.com", "long enough"))
        .await;
    let (status, answer) = shop
        .post("/api/customers", customer("ANN@example.com", "long enough"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error(&answer).contains("already registered"), "{answer}");
    let (status, _) = shop
        .send(
            Method::PUT,
            &format!("/api/customers/{ann}/credit"),
            json!({ "credit_cents": -5 }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = shop
        .post(
            "/api/login",
            json!({ "email": "ann@example.com", "password": "wrong password" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = shop
        .post(
            "/api/login",
            json!({ "email": "Ann@Example.com", "password": "long enough" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["id"], ann.as_str());

    let order = |product: &str, quantity: i64| json!({ "customer_id": ann, "product_id": product, "quantity": quantity });
    let (status, answer) = shop.post("/api/orders", order(&product, 0)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error(&answer).contains("quantity"), "{answer}");
    let (status, _) = shop.post("/api/orders", order(&product, -1)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, answer) = shop
        .post("/api/orders", order(&uuid::Uuid::new_v4().to_string(), 1))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error(&answer).contains("product"), "{answer}");

    let (status, _) = shop.get("/api/events?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = shop.get("/api/events?stream=$all").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = shop.get("/api/events?limit=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    shop.assert_running();
}

/// "An email address is registered once" holds among racing registrations:
/// the rule is a DCB condition on the registrations' email tag (no claim
/// stream), so of eight concurrent sign-ups with one address (in any case)
/// exactly one succeeds and the others get 409, and login finds that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_registrations_of_one_email_register_it_once() {
    let shop = Shop::start().await;
    let emails = [
        "bea@example.com",
        "Bea@example.com",
        "BEA@example.com",
        "bea@Example.com",
        "bea@EXAMPLE.com",
        "bEa@example.com",
        "beA@example.com",
        " bea@example.com",
    ];
    let (a, b, c, d, e, f, g, h) = tokio::join!(
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[0], "password": "password 0" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[1], "password": "password 1" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[2], "password": "password 2" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[3], "password": "password 3" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[4], "password": "password 4" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[5], "password": "password 5" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[6], "password": "password 6" })
        ),
        shop.post(
            "/api/customers",
            json!({ "name": "Bea", "email": emails[7], "password": "password 7" })
        ),
    );
    let answers = [a, b, c, d, e, f, g, h];
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, (status, _))| status.is_success())
        .map(|(index, _)| index)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for (status, answer) in &answers {
        if !status.is_success() {
            assert_eq!(*status, StatusCode::CONFLICT, "{answer}");
        }
    }
    let winner = winners[0];
    let id = answers[winner].1["id"].as_str().expect("id").to_owned();
    let (status, answer) = shop
        .post(
            "/api/login",
            json!({ "email": "bea@example.com", "password": format!("password {winner}") }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["id"], id.as_str());
    // No claim stream: the address lives only in the registration's tag.
    let client = shop.cairn.client().await;
    let registered = client
        .read_query(
            cairn_client::Query::of([cairn_client::QueryItem::types(["CustomerRegistered"])]),
            cairn_client::ReadOptions::forwards(),
        )
        .await
        .expect("query read")
        .collect_all()
        .await
        .expect("events");
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].stream, format!("customer-{id}"));
    assert_eq!(registered[0].tags.len(), 1);
    assert!(registered[0].tags[0].starts_with("email:"));
    shop.assert_running();
}
