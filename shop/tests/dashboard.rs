//! The dashboard in a real browser: headless Chromium (Debian's `chromium`),
//! driven over the DevTools protocol, opens the page; a new order is placed
//! while it is open and must appear in the page's live feed (pushed by
//! server-sent events, not loaded with the page) and in its orders table. A
//! screenshot is saved under the test target directory.
//!
//! Skipped, saying so, when `chromium` is not installed (unless
//! `CAIRN_REQUIRE_BROWSER` is set). The browser is `cairn_testkit::browser`.

mod common;

use cairn_testkit::browser::{Browser, chromium_available};
use cairn_testkit::eventually;
use common::Shop;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_new_order_live() {
    if !chromium_available("the_dashboard_shows_a_new_order_live") {
        return;
    }
    let shop = Shop::start().await;
    let category = shop
        .create("/api/categories", json!({ "name": "Tea" }))
        .await;
    let product = shop
        .create(
            "/api/products",
            json!({ "category_id": category, "name": "Sencha", "price_cents": 450,
                    "supplier": "Kyoto Leaf", "stock": 10 }),
        )
        .await;
    let customer = shop
        .create(
            "/api/customers",
            json!({ "name": "Ann", "email": "ann@example.com", "password": "green tea!" }),
        )
        .await;
    let (status, _) = shop
        .send(
            reqwest::Method::PUT,
            &format!("/api/customers/{customer}/credit"),
            json!({ "credit_cents": 5000 }),
        )
        .await;
    assert!(status.is_success());

    let mut browser = Browser::launch().await;
    browser.navigate(&format!("{}/", shop.gateway)).await;
    browser
        .wait_for("document.getElementById('live').textContent", |text| {
            text.as_str() == Some("· live")
        })
        .await;
    browser
        .wait_for(
            "document.querySelector('#products tbody').textContent",
            |text| text.as_str().is_some_and(|text| text.contains("Sencha")),
        )
        .await;

    // The page is open and listening: now the order.
    let order = shop
        .create(
            "/api/orders",
            json!({ "customer_id": customer, "product_id": product, "quantity": 2 }),
        )
        .await;
    let live_feed = "Array.from(document.querySelectorAll('#feed li[data-live]'))\
                     .map(li => li.textContent).join('\\n')";
    let feed = browser
        .wait_for(live_feed, |text| {
            text.as_str()
                .is_some_and(|text| text.contains(&order) && text.contains("InvoiceIssued"))
        })
        .await;
    assert!(
        feed.as_str().expect("text").contains("OrderPlaced"),
        "{feed}"
    );
    browser
        .wait_for(
            "document.querySelector('#orders tbody').textContent",
            |text| {
                text.as_str()
                    .is_some_and(|text| text.contains(&order[..8]) && text.contains("approved"))
            },
        )
        .await;
    browser
        .wait_for("document.getElementById('revenue').textContent", |text| {
            text.as_str() == Some("9.00")
        })
        .await;

    // A picture of the page for people.
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("shop-dashboard.png");
    browser.screenshot(&path).await;
    eventually("the page to stay live", || async {
        shop.get("/api/dashboard").await.1["live_viewers"]
            .as_u64()
            .filter(|viewers| *viewers >= 1)
    })
    .await;
    browser.close();
    shop.assert_running();
}
