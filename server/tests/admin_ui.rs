//! The embedded admin UI and its JSON API on the HTTP listener.
//!
//! - In headless Chromium (`cairn_testkit::browser`): the page lists streams,
//!   opens a stream's events and one event's pretty-printed JSON, shows a new
//!   event live in the tail of `$all`, shows a group's parked count and
//!   replays it from a button (the count drops to 0, the consumer gets the
//!   events again); stream names are shown as text, never as markup.
//!   Screenshots are saved under the test target directory. Skipped, saying
//!   so, without `chromium` (unless `CAIRN_REQUIRE_BROWSER` is set).
//! - The API in secure mode (TLS, logins): 401 with a Basic challenge without
//!   credentials; a user without read permission on a stream gets 403 for it
//!   and never sees its events in listings, `$all` pages or the live tail; a
//!   user without the `ops` role gets 403 for groups and for the replay, and
//!   nothing is replayed; a `POST` without the CSRF header is refused.
//! - Bounds: page sizes are capped (streams and events), an events page ends
//!   at its byte budget, and large payloads are cut to what is shown.

use std::time::Duration;

use cairn_client::{
    Client, Consumer, EventData, ExpectedRevision, GroupOptions, NackAction, StreamAppend,
};
use cairn_server::Listen;
use cairn_testkit::browser::{Browser, chromium_available};
use cairn_testkit::http::{HttpIo, HttpResponse, basic, connect, get, request, send_request};
use cairn_testkit::{
    ADMIN_PASSWORD, ALICE_ONLY_ACL, SecureSetup, TestServer, USER_PASSWORD, eventually_within,
    set_acl,
};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// Generous bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(30);

fn with_http(settings: &mut cairn_server::Settings) {
    settings.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
}

// ---- HTTP: cairn_testkit::http (one request per connection, TCP or TLS) ----

/// A `POST` with the CSRF header.
async fn post(server: &TestServer, path: &str, authorization: &str) -> HttpResponse {
    request(
        server,
        "POST",
        path,
        &[("Authorization", authorization), ("X-Cairn-Request", "1")],
    )
    .await
}

/// An open `GET` whose body is read as it arrives (server-sent events).
struct Streaming {
    io: Box<dyn HttpIo>,
    received: String,
}

impl Streaming {
    async fn open(server: &TestServer, path: &str, authorization: &str) -> Self {
        let mut io = connect(server).await;
        send_request(&mut io, "GET", path, &[("Authorization", authorization)]).await;
        Self {
            io,
            received: String::new(),
        }
    }

    /// Opens `path` with extra headers (no credentials: insecure mode).
    async fn open_with(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut io = connect(server).await;
        send_request(&mut io, "GET", path, headers).await;
        Self {
            io,
            received: String::new(),
        }
    }

    /// Reads until the server closes the connection; returns everything.
    async fn until_closed(&mut self) -> &str {
        tokio::time::timeout(DEADLINE, async {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                match self.io.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => self
                        .received
                        .push_str(&String::from_utf8_lossy(&buffer[..read])),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the server did not close: {}", self.received));
        &self.received
    }

    /// Reads until what arrived contains `text`; returns everything so far.
    async fn until(&mut self, text: &str) -> &str {
        tokio::time::timeout(DEADLINE, async {
            let mut buffer = vec![0u8; 16 * 1024];
            while !self.received.contains(text) {
                let read = self.io.read(&mut buffer).await.expect("read");
                assert!(read > 0, "closed before `{text}`: {}", self.received);
                self.received
                    .push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("`{text}` did not arrive: {}", self.received));
        &self.received
    }
}

// ---- helpers over the real client -------------------------------------------

/// Receives `count` deliveries; parks the first `park` of them and acks the
/// rest. Returns the parked events' ids.
async fn receive(consumer: &mut Consumer, count: usize, park: usize) -> Vec<uuid::Uuid> {
    let mut parked = Vec::new();
    for n in 0..count {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("consume")
            .expect("open");
        if n < park {
            parked.push(delivery.event.id);
            delivery
                .nack(NackAction::Park, "admin UI test")
                .await
                .expect("park");
        } else {
            delivery.ack().await.expect("ack");
        }
    }
    parked
}

async fn wait_parked(client: &Client, group: &str, parked: u64) {
    eventually_within(
        DEADLINE,
        &format!("{group} to hold {parked} parked"),
        || async {
            let info = client.group_info(group).await.ok()?;
            (info.parked == parked).then_some(())
        },
    )
    .await;
}

/// Receives until every event of `parked` came again, acking everything
/// (other events the group delivers meanwhile too).
async fn redeliveries(consumer: &mut Consumer, parked: &[uuid::Uuid]) {
    let mut again = Vec::new();
    while again.len() < parked.len() {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("a redelivery in time")
            .expect("consume")
            .expect("open");
        if parked.contains(&delivery.event.id) && !again.contains(&delivery.event.id) {
            again.push(delivery.event.id);
        }
        delivery.ack().await.expect("ack");
    }
}

// ---- the page in Chromium ----------------------------------------------------

/// `document.querySelector(selector).textContent`, `null` when absent.
fn text_of(selector: &str) -> String {
    format!("(document.querySelector({selector:?}) || {{}}).textContent")
}

fn contains(needle: &'static str) -> impl Fn(&Value) -> bool {
    move |value| value.as_str().is_some_and(|text| text.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_chromium_a_person_finds_a_stream_reads_it_tails_and_replays_parked_events() {
    if !chromium_available("admin UI in Chromium") {
        return;
    }
    let server = TestServer::start_with(with_http).await;
    let http = server.http_address.expect("the HTTP listener is on");
    let client = server.client().await;
    for n in 1..=3 {
        client
            .append(
                format!("order-{n}"),
                ExpectedRevision::Any,
                vec![
                    EventData::json_text(
                        "OrderPlaced",
                        format!(r#"{{"sku":"tea","quantity":{n}}}"#),
                    ),
                    EventData::json_text("OrderPaid", r#"{"cents":450}"#),
                ],
            )
            .await
            .expect("append");
    }
    // A stream name that is markup: the page must show it as text.
    let markup = "<img src=x id=injected>-1";
    client
        .append(
            markup,
            ExpectedRevision::Any,
            vec![EventData::json_text("Odd", "{}")],
        )
        .await
        .expect("append");
    // A group on the orders that parks 2 of its 6 events.
    client
        .create_group("billing", "$ce-order", GroupOptions::default())
        .await
        .expect("create group");
    let mut consumer = client.consume("billing", "c1", 0).await.expect("consume");
    let parked = receive(&mut consumer, 6, 2).await;
    wait_parked(&client, "billing", 2).await;

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut browser = Browser::launch().await;

    // Overview.
    browser.navigate(&format!("http://{http}/")).await;
    // 7 events appended, plus the group's own records.
    browser
        .wait_for(&text_of("#overview-head"), |value| {
            value
                .as_str()
                .and_then(|text| text.replace(',', "").parse::<u64>().ok())
                .is_some_and(|head| head >= 7)
        })
        .await;
    browser
        .wait_for(&text_of("#overview-version"), contains("0."))
        .await;
    // The live rate appears after the second poll (a number, not the dash).
    browser
        .wait_for(&text_of("#rate-events"), |value| {
            value
                .as_str()
                .is_some_and(|text| text.parse::<f64>().is_ok())
        })
        .await;
    browser.screenshot(&shots.join("admin-overview.png")).await;

    // The stream browser: list by prefix, open a stream, open an event.
    browser.evaluate("location.hash = '#/streams'; true").await;
    browser
        .wait_for(&text_of("#streams tbody"), contains("order-3"))
        .await;
    browser
        .wait_for(
            &text_of("#streams tbody"),
            contains("<img src=x id=injected>-1"),
        )
        .await;
    let injected = browser
        .evaluate("document.querySelectorAll('#injected, main img').length")
        .await;
    assert_eq!(injected, 0, "a stream name became markup");
    browser
        .evaluate(
            "document.getElementById('stream-prefix').value = 'order-';\
             document.getElementById('list-streams').click(); true",
        )
        .await;
    browser
        .wait_for(&text_of("#streams-status"), contains("3 streams shown"))
        .await;
    browser.screenshot(&shots.join("admin-streams.png")).await;
    browser
        .evaluate("document.querySelector('a[data-stream=\"order-2\"]').click(); true")
        .await;
    browser
        .wait_for(&text_of("#events tbody"), contains("OrderPlaced"))
        .await;
    browser
        .wait_for(&text_of("#events-status"), contains("2 events shown"))
        .await;
    // Newest first: OrderPaid (revision 1), then OrderPlaced (revision 0).
    browser
        .evaluate("document.querySelector('#events tbody tr[data-revision=\"0\"]').click(); true")
        .await;
    let data = browser
        .wait_for(&text_of("#event-data"), contains("\"sku\": \"tea\""))
        .await;
    assert!(
        data.as_str().expect("text").contains("\n  \"quantity\": 2"),
        "pretty-printed: {data}"
    );
    browser.screenshot(&shots.join("admin-event.png")).await;

    // The live tail of $all shows an event appended while it is open.
    browser.evaluate("location.hash = '#/tail'; true").await;
    browser
        .wait_for(&text_of("#tail-status"), |value| {
            value.as_str() == Some("live")
        })
        .await;
    client
        .append(
            "order-4",
            ExpectedRevision::Any,
            vec![EventData::json_text(
                "OrderShipped",
                r#"{"carrier":"post"}"#,
            )],
        )
        .await
        .expect("append");
    let tail = browser
        .wait_for(&text_of("#tail-events"), contains("OrderShipped"))
        .await;
    assert!(tail.as_str().expect("text").contains("order-4"), "{tail}");
    browser.screenshot(&shots.join("admin-tail.png")).await;

    // Consumer groups: the parked count, and the replay button.
    browser.evaluate("location.hash = '#/groups'; true").await;
    let parked_cell = text_of("#groups tr[data-group=\"billing\"] td.parked");
    browser
        .wait_for(&parked_cell, |value| value.as_str() == Some("2"))
        .await;
    browser.screenshot(&shots.join("admin-groups.png")).await;
    browser
        .evaluate("document.querySelector('#groups tr[data-group=\"billing\"] button.replay').click(); true")
        .await;
    browser
        .wait_for(
            &text_of("#replay-result"),
            contains("2 parked events replayed"),
        )
        .await;
    // The parked events come again (the group also delivers order-4's
    // event, which arrived meanwhile).
    redeliveries(&mut consumer, &parked).await;
    browser
        .wait_for(&parked_cell, |value| value.as_str() == Some("0"))
        .await;
    browser
        .screenshot(&shots.join("admin-groups-replayed.png"))
        .await;

    // The group's own page and the operations page.
    browser
        .evaluate("location.hash = '#/group/billing'; true")
        .await;
    browser
        .wait_for(&text_of("#consumers tbody"), contains("c1"))
        .await;
    browser
        .wait_for(&text_of("#group-parked"), |value| {
            value.as_str() == Some("0")
        })
        .await;
    // A backup taken through the RPC shows on the operations page.
    let backup_dir = tempfile::tempdir().expect("temp dir");
    let backup = backup_dir.path().join("backup");
    client
        .backup(backup.display().to_string())
        .await
        .expect("backup");
    browser
        .evaluate("location.hash = '#/operations'; true")
        .await;
    browser
        .wait_for(&text_of("#scavenge-state"), contains("idle"))
        .await;
    browser
        .wait_for(&text_of("#backups"), contains("1 taken, 0 failed"))
        .await;
    browser
        .wait_for(&text_of("#backup-running"), contains("no"))
        .await;
    browser
        .screenshot(&shots.join("admin-operations.png"))
        .await;
    let errors = browser
        .evaluate("document.getElementById('error').hidden")
        .await;
    assert_eq!(errors, true, "the page showed an error");
    browser.close();
    consumer.close().await.expect("close");
    server.stop().await;
}

// ---- the API in secure mode -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_secure_mode_the_api_checks_access_as_the_grpc_calls_do() {
    let SecureSetup { server, admin } = SecureSetup::start_with(
        |settings, _| with_http(settings),
        &[("reader", &[]), ("alice", &[]), ("operator", &["ops"])],
    )
    .await;
    let reader = basic("reader", USER_PASSWORD);
    let alice = basic("alice", USER_PASSWORD);
    let operator = basic("operator", USER_PASSWORD);
    let root = basic("admin", ADMIN_PASSWORD);
    set_acl(&admin, "private-1", ALICE_ONLY_ACL).await;
    admin
        .append(
            "private-1",
            ExpectedRevision::Any,
            vec![EventData::json_text("Secret", r#"{"code":"s3cr3t"}"#)],
        )
        .await
        .expect("append private");
    admin
        .append(
            "public-1",
            ExpectedRevision::Any,
            vec![
                EventData::json_text("Open", r#"{"n":1}"#),
                EventData::json_text("Open", r#"{"n":2}"#),
            ],
        )
        .await
        .expect("append public");
    admin
        .create_group("audit", "public-1", GroupOptions::default())
        .await
        .expect("create group");
    let mut consumer = admin.consume("audit", "c1", 0).await.expect("consume");
    let parked = receive(&mut consumer, 2, 2).await;
    wait_parked(&admin, "audit", 2).await;

    // No credentials: 401 with a Basic challenge, for the page and the API.
    for path in ["/", "/ui/app.js", "/api/overview", "/api/streams"] {
        let anonymous = get(&server, path, None).await;
        assert_eq!(anonymous.status, 401, "{path}: {}", anonymous.body);
        assert!(
            anonymous.headers["www-authenticate"].starts_with("Basic"),
            "{path}: {:?}",
            anonymous.headers
        );
    }
    let wrong = basic("reader", "not the password");
    assert_eq!(
        get(&server, "/api/overview", Some(&wrong)).await.status,
        401
    );

    // Every user sees the overview, and who they are.
    let overview = get(&server, "/api/overview", Some(&reader)).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let overview = overview.json();
    assert_eq!(overview["user"]["name"], "reader");
    assert_eq!(overview["user"]["may_operate"], false);
    assert_eq!(overview["security_enabled"], true);

    // A stream the reader may not read: 403, and nothing of it anywhere.
    let denied = get(&server, "/api/streams/private-1/events", Some(&reader)).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(!denied.body.contains("s3cr3t"), "{}", denied.body);
    let listing = get(&server, "/api/streams", Some(&reader)).await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    assert!(listing.body.contains("public-1"), "{}", listing.body);
    assert!(!listing.body.contains("private-1"), "{}", listing.body);
    let all = get(&server, "/api/streams/$all/events?limit=100", Some(&reader)).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert!(all.body.contains("public-1"), "{}", all.body);
    assert!(!all.body.contains("s3cr3t") && !all.body.contains("private-1"));
    let category = get(&server, "/api/streams/$ce-private/events", Some(&reader)).await;
    assert_eq!(category.status, 200, "{}", category.body);
    assert_eq!(category.json()["events"], serde_json::json!([]));
    // ... which alice, named in its ACL, reads.
    let allowed = get(&server, "/api/streams/private-1/events", Some(&alice)).await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert!(allowed.body.contains("s3cr3t"), "{}", allowed.body);
    let listing = get(&server, "/api/streams?prefix=priv", Some(&alice)).await;
    assert!(listing.body.contains("private-1"), "{}", listing.body);

    // The tail: denied on the stream; on $all the private event never shows,
    // though it was committed before the public one that does.
    let tail = get(&server, "/api/tail?source=private-1", Some(&reader)).await;
    assert_eq!(tail.status, 403, "{}", tail.body);
    let mut tail = Streaming::open(&server, "/api/tail?source=$all", &reader).await;
    let head = tail.until("event: caught-up").await.to_owned();
    assert!(head.contains("text/event-stream"), "{head}");
    admin
        .append(
            "private-1",
            ExpectedRevision::Any,
            vec![EventData::json_text("Secret", r#"{"code":"later-s3cr3t"}"#)],
        )
        .await
        .expect("append private");
    admin
        .append(
            "public-1",
            ExpectedRevision::Any,
            vec![EventData::json_text("Open", r#"{"n":"after"}"#)],
        )
        .await
        .expect("append public");
    let received = tail.until("after").await;
    assert!(!received.contains("later-s3cr3t"), "{received}");
    assert!(!received.contains("private-1"), "{received}");
    drop(tail);

    // Groups are for operators: 403 for others, and their replay changes nothing.
    for path in ["/api/groups", "/api/groups/audit", "/api/operations"] {
        let refused = get(&server, path, Some(&reader)).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
    }
    let refused = post(&server, "/api/groups/audit/replay-parked", &reader).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let refused = post(&server, "/api/scavenge", &reader).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Without the CSRF header even an admin's POST is refused before it acts.
    let forged = request(
        &server,
        "POST",
        "/api/groups/audit/replay-parked",
        &[("Authorization", &root)],
    )
    .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("x-cairn-request"), "{}", forged.body);
    let group = get(&server, "/api/groups/audit", Some(&operator)).await;
    assert_eq!(group.status, 200, "{}", group.body);
    let group = group.json();
    assert_eq!(group["parked"], 2, "{group}");
    assert_eq!(group["consumers"][0]["name"], "c1", "{group}");
    assert_eq!(group["settings"]["max_retries"], 10, "{group}");
    // Both parked events are still there to replay: the refused calls moved none.
    let replayed = post(&server, "/api/groups/audit/replay-parked", &operator).await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.json()["replayed"], 2);
    redeliveries(&mut consumer, &parked).await;
    wait_parked(&admin, "audit", 0).await;
    let groups = get(&server, "/api/groups", Some(&operator)).await;
    assert_eq!(groups.status, 200, "{}", groups.body);
    assert_eq!(groups.json()["groups"][0]["parked"], 0);
    let operations = get(&server, "/api/operations", Some(&operator)).await;
    assert_eq!(operations.status, 200, "{}", operations.body);
    assert_eq!(operations.json()["scavenge"]["state"], "idle");
    let missing = get(&server, "/api/groups/nope", Some(&operator)).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
    consumer.close().await.expect("close");
    server.stop().await;
}

// ---- bounds, headers, the CSRF rule ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_capped_and_large_payloads_cut() {
    let server = TestServer::start_with(with_http).await;
    let client = server.client().await;
    // 1,100 streams in one atomic append; 600 events in one stream.
    let parts: Vec<StreamAppend> = (0..1100)
        .map(|n| {
            StreamAppend::new(
                format!("many-{n:04}"),
                ExpectedRevision::Any,
                vec![EventData::json_text("Made", "{}")],
            )
        })
        .collect();
    client.append_multi(parts).await.expect("append streams");
    let events: Vec<EventData> = (0..600)
        .map(|n| EventData::json_text("Tick", format!(r#"{{"n":{n}}}"#)))
        .collect();
    client
        .append("ticks", ExpectedRevision::Any, events)
        .await
        .expect("append events");

    let listing = get(&server, "/api/streams?prefix=many-&limit=100000", None).await;
    assert_eq!(listing.status, 200, "{}", listing.body);
    let listing = listing.json();
    assert_eq!(listing["streams"].as_array().expect("streams").len(), 1000);
    assert_eq!(listing["next_after"], "many-0999");
    let rest = get(&server, "/api/streams?prefix=many-&after=many-0999", None)
        .await
        .json();
    assert_eq!(rest["streams"].as_array().expect("streams").len(), 100);
    assert_eq!(rest["streams"][0]["name"], "many-1000");
    assert!(rest["next_after"].is_null(), "{rest}");

    let page = get(&server, "/api/streams/ticks/events?limit=100000", None)
        .await
        .json();
    assert_eq!(page["events"].as_array().expect("events").len(), 500);
    assert_eq!(page["next"], 500);
    let backwards = get(
        &server,
        "/api/streams/ticks/events?direction=backwards&limit=3",
        None,
    )
    .await
    .json();
    let revisions: Vec<&Value> = backwards["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| &event["revision"])
        .collect();
    assert_eq!(revisions, [599, 598, 597]);
    assert_eq!(backwards["next"], 596);

    // Events of 600 KB: a page ends after the event that reaches 1 MiB, and
    // each shows at most 256 KiB of its data.
    let big = "x".repeat(600 * 1000);
    for _ in 0..3 {
        client
            .append(
                "big",
                ExpectedRevision::Any,
                vec![EventData::binary("Blob", big.clone().into_bytes())],
            )
            .await
            .expect("append big");
    }
    let page = get(&server, "/api/streams/big/events?limit=10", None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() < 2 * 1024 * 1024,
        "{} bytes",
        page.body.len()
    );
    let page = page.json();
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "the page stops at its byte budget");
    assert_eq!(page["next"], 2);
    let data = &events[0]["data"];
    assert_eq!(data["bytes"], 600 * 1000);
    assert_eq!(data["truncated"], true);
    assert_eq!(data["encoding"], "text");
    assert_eq!(data["text"].as_str().expect("text").len(), 256 * 1024);

    // Bad input is a 400 with a JSON reason; an unknown stream a 404.
    for path in [
        "/api/streams/ticks/events?direction=sideways",
        "/api/streams/ticks/events?from=soon",
        "/api/streams/$ce-/events",
    ] {
        let bad = get(&server, path, None).await;
        assert_eq!(bad.status, 400, "{path}: {}", bad.body);
        assert!(bad.json()["error"].is_string(), "{path}");
    }
    let long_prefix = format!("/api/streams?prefix={}", "p".repeat(2000));
    assert_eq!(get(&server, &long_prefix, None).await.status, 400);
    // Names with `/`, spaces or non-ASCII, percent-encoded as the page does.
    client
        .append(
            "tenant/ör der-1",
            ExpectedRevision::Any,
            vec![EventData::json_text("Odd", "{}")],
        )
        .await
        .expect("append");
    let odd = get(
        &server,
        "/api/streams/tenant%2F%C3%B6r%20der-1/events",
        None,
    )
    .await;
    assert_eq!(odd.status, 200, "{}", odd.body);
    assert_eq!(odd.json()["events"][0]["stream"], "tenant/ör der-1");
    let missing = get(&server, "/api/streams/nothing-here/events", None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    // The page: compiled in, with a strict CSP on it and on the API.
    let index = get(&server, "/", None).await;
    assert_eq!(index.status, 200);
    assert!(
        index.body.contains("<script src=\"/ui/app.js\""),
        "{}",
        index.body
    );
    let csp = &index.headers["content-security-policy"];
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(index.headers["x-content-type-options"], "nosniff");
    let script = get(&server, "/ui/app.js", None).await;
    assert!(script.headers["content-type"].starts_with("text/javascript"));
    assert!(
        !script.body.contains("innerHTML"),
        "the UI must not use innerHTML"
    );
    let api = get(&server, "/api/overview", None).await;
    assert!(api.headers.contains_key("content-security-policy"));
    let head = api.json()["head_position"].as_u64().expect("head");
    assert!(head >= 1100 + 600 + 4, "{head}");

    // The CSRF rule holds in insecure mode too.
    let forged = request(&server, "POST", "/api/scavenge", &[]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let started = request(
        &server,
        "POST",
        "/api/scavenge",
        &[("X-Cairn-Request", "1")],
    )
    .await;
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(started.json()["scavenge"]["run"], 1);
    server.stop().await;
}

// ---- the live tail over a cut connection and at shutdown --------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tail_resumes_after_its_last_event_and_ends_at_shutdown() {
    // The listener closes connections whose client sent nothing for the idle
    // timeout, as a tail's browser does: short here, so that it happens.
    let server = TestServer::start_with(|settings| {
        with_http(settings);
        settings.connection_idle_timeout_ms = 1000;
    })
    .await;
    let client = server.client().await;
    let append = |stream: &'static str, event_type: &'static str| {
        let client = client.clone();
        async move {
            client
                .append(
                    stream,
                    ExpectedRevision::Any,
                    vec![EventData::json_text(event_type, "{}")],
                )
                .await
                .expect("append")
                .positions
                .expect("positions")
                .0
        }
    };
    let mut tail = Streaming::open_with(&server, "/api/tail?source=$ce-order", &[]).await;
    tail.until("event: caught-up").await;
    let first = append("order-1", "First").await;
    tail.until("First").await;
    let cut = tail.until_closed().await.to_owned();
    assert!(cut.contains(&format!("id: {first}\n")), "{cut}");
    assert!(cut.contains("First"), "{cut}");
    // Committed while no tail is connected: the resumed tail must show it.
    append("other-1", "Elsewhere").await;
    append("order-2", "Second").await;
    let last = first.to_string();
    let mut resumed = Streaming::open_with(
        &server,
        "/api/tail?source=$ce-order",
        &[("Last-Event-ID", last.as_str())],
    )
    .await;
    let received = resumed.until("Second").await.to_owned();
    assert!(!received.contains("First"), "shown twice: {received}");
    assert!(!received.contains("Elsewhere"), "{received}");
    drop(resumed);

    let bad = request(
        &server,
        "GET",
        "/api/tail",
        &[("Last-Event-ID", "not a number")],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Shutdown ends an open tail with an `end` event, and the response.
    let server = TestServer::start_with(with_http).await;
    let mut tail = Streaming::open_with(&server, "/api/tail", &[]).await;
    tail.until("event: caught-up").await;
    let stopping = tokio::spawn(server.stop());
    let ended = tail.until_closed().await.to_owned();
    assert!(ended.contains("event: end"), "{ended}");
    assert!(ended.contains("shutting down"), "{ended}");
    stopping.await.expect("stop");
}
