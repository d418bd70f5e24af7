//! `/metrics` on the HTTP listener: after a known workload the counters hold
//! exactly what happened (appends by result, events, groups' acks and parks),
//! the histograms moved, the scrape-time figures agree with `Server.Info`, and
//! the text parses with the Prometheus project's own OpenMetrics parser
//! (Python `prometheus_client`). In secure mode the listener speaks TLS and
//! `/metrics` needs an operator: 401 with a Basic challenge without
//! credentials, 403 for a plain user.

use std::process::Stdio;
use std::time::Duration;

use cairn_client::{Error, EventData, ExpectedRevision, GroupOptions, NackAction};
use cairn_server::Listen;
use cairn_testkit::http::{HttpResponse, basic, get};
use cairn_testkit::{
    ADMIN_PASSWORD, SecureSetup, TestServer, USER_PASSWORD, eventually_within, read_all_client,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound for anything that should happen "soon".
const DEADLINE: Duration = Duration::from_secs(30);

fn with_http(settings: &mut cairn_server::Settings) {
    settings.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
}

async fn scrape(server: &TestServer, path: &str) -> HttpResponse {
    get(server, path, None).await
}

/// One sample's value: `name{labels} value` with the labels exactly as
/// written (`""` for none).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == wanted).then(|| value.parse().ok()).flatten()
        })
}

fn value(text: &str, name: &str, labels: &str) -> f64 {
    sample(text, name, labels).unwrap_or_else(|| panic!("no sample {name}{{{labels}}} in:\n{text}"))
}

/// Parses `text` with Python `prometheus_client`'s OpenMetrics parser (the
/// Prometheus project's reference client), which rejects anything not
/// OpenMetrics; returns the metric family names it found.
async fn parse_with_prometheus_client(text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n    print(family.name)\n";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3 (install it and `pip install prometheus-client`, or run .ci/run)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the parser finished")
        .expect("python3 ran");
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the text (is prometheus-client installed? .ci/run installs it):\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn metrics_count_a_known_workload_and_parse_as_openmetrics() {
    let server = TestServer::start_with(with_http).await;
    let client = server.client().await;

    // 5 appends of 2 events, one refused for its expected revision.
    for n in 0..5u64 {
        let expected = if n == 0 {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::Exact(n * 2 - 1)
        };
        client
            .append(
                "order-1",
                expected,
                vec![
                    EventData::json_text("OrderPlaced", r#"{"n":1}"#),
                    EventData::json_text("OrderPaid", r#"{"n":2}"#),
                ],
            )
            .await
            .expect("append");
    }
    let refused = client
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![EventData::json_text("OrderPlaced", "{}")],
        )
        .await;
    assert!(
        matches!(refused, Err(Error::WrongExpectedRevision { .. })),
        "{refused:?}"
    );
    let read = read_all_client(&client, "order-1").await.expect("read");
    assert_eq!(read.len(), 10);

    // A group that acks 8 of the 10 events and parks 2.
    client
        .create_group("billing", "$ce-order", GroupOptions::default())
        .await
        .expect("create group");
    let mut consumer = client.consume("billing", "c1", 0).await.expect("consume");
    for n in 0..10 {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("consume")
            .expect("open");
        if n < 2 {
            delivery
                .nack(NackAction::Park, "metrics test")
                .await
                .expect("park");
        } else {
            delivery.ack().await.expect("ack");
        }
    }
    eventually_within(
        DEADLINE,
        "the group to count 8 acks and 2 parks",
        || async {
            let info = client.group_info("billing").await.ok()?;
            (info.parked == 2 && info.acked_total == 8).then_some(())
        },
    )
    .await;

    let response = scrape(&server, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.headers["content-type"].starts_with("application/openmetrics-text"),
        "{:?}",
        response.headers
    );
    let text = &response.body;
    assert!(text.ends_with("# EOF\n"), "{text}");

    assert_eq!(value(text, "cairn_appends_total", r#"result="ok""#), 5.0);
    assert_eq!(
        value(text, "cairn_appended_events_total", r#"result="ok""#),
        10.0
    );
    assert_eq!(
        value(
            text,
            "cairn_appends_total",
            r#"result="wrong_expected_revision""#
        ),
        1.0
    );
    assert_eq!(
        value(
            text,
            "cairn_appended_events_total",
            r#"result="wrong_expected_revision""#
        ),
        1.0
    );
    assert!(value(text, "cairn_appended_bytes_total", r#"result="ok""#) > 10.0 * 7.0);
    assert_eq!(value(text, "cairn_append_duration_seconds_count", ""), 6.0);
    assert!(value(text, "cairn_append_duration_seconds_sum", "") > 0.0);
    // Appends, the group's checkpoint and its two parked events each wrote a group.
    assert!(value(text, "cairn_commit_groups_total", "") >= 7.0);
    assert!(value(text, "cairn_wal_sync_duration_seconds_count", "") >= 7.0);
    assert!(value(text, "cairn_commit_group_events_sum", "") >= 12.0);
    assert!(value(text, "cairn_commit_group_requests_count", "") >= 7.0);

    assert_eq!(
        value(text, "cairn_group_acked_total", r#"group="billing""#),
        8.0
    );
    assert_eq!(value(text, "cairn_group_parked", r#"group="billing""#), 2.0);
    assert_eq!(
        value(
            text,
            "cairn_group_parked_events_total",
            r#"group="billing""#
        ),
        2.0
    );
    assert_eq!(
        value(text, "cairn_group_consumers", r#"group="billing""#),
        1.0
    );
    assert_eq!(
        value(text, "cairn_group_in_flight", r#"group="billing""#),
        0.0
    );
    assert_eq!(value(text, "cairn_groups", ""), 1.0);

    assert!(value(text, "cairn_reads_total", r#"kind="stream""#) >= 1.0);
    assert!(value(text, "cairn_read_events_total", r#"kind="stream""#) >= 10.0);
    assert!(
        value(text, "cairn_reads_total", r#"kind="category""#) >= 1.0,
        "the group read $ce-order"
    );

    let info = client.info().await.expect("info");
    assert!(value(text, "cairn_head_position", "") >= 10.0);
    assert!(value(text, "cairn_head_position", "") <= info.head_position as f64);
    assert!(value(text, "cairn_streams", "") >= 1.0);
    assert!(value(text, "cairn_store_disk_bytes", "") > 0.0);
    assert_eq!(
        value(text, "cairn_rocksdb_block_cache_capacity_bytes", ""),
        cairn_server::Settings::for_tests(".".into()).block_cache_bytes as f64
    );
    assert!(value(text, "cairn_rocksdb_memtables_bytes", "") > 0.0);
    assert!(value(text, "process_resident_memory_bytes", "") > 1_000_000.0);
    assert!(value(text, "process_open_fds", "") > 3.0);
    assert!(value(text, "process_cpu_seconds_total", "") > 0.0);
    assert_eq!(value(text, "cairn_build_info", r#"version="0.1.0""#), 1.0);
    // A single node has no raft: no cluster-mode figure appears.
    assert!(!text.contains("cairn_raft_"), "{text}");
    // The group's own feed counts among the open subscriptions.
    assert!(value(text, "cairn_subscriptions_active", "") >= 1.0);

    let families = parse_with_prometheus_client(text).await;
    for family in [
        "cairn_appends",
        "cairn_append_duration_seconds",
        "cairn_wal_sync_duration_seconds",
        "cairn_group_acked",
        "process_resident_memory_bytes",
    ] {
        assert!(
            families.iter().any(|name| name == family),
            "{family} not in {families:?}"
        );
    }

    // Counters only grow: one more append shows at the next scrape.
    client
        .append(
            "order-2",
            ExpectedRevision::Any,
            vec![EventData::json_text("OrderPlaced", "{}")],
        )
        .await
        .expect("append");
    let again = scrape(&server, "/metrics").await.body;
    assert_eq!(value(&again, "cairn_appends_total", r#"result="ok""#), 6.0);

    let missing = scrape(&server, "/nothing-here").await;
    assert_eq!(missing.status, 404);
    consumer.close().await.expect("close");
    server.stop().await;
}

#[tokio::test]
async fn in_secure_mode_metrics_are_served_over_tls_to_operators_only() {
    let SecureSetup { server, .. } = SecureSetup::start_with(
        |settings, _| with_http(settings),
        &[("reader", &[]), ("operator", &["ops"])],
    )
    .await;
    let http = server.http_address.expect("the HTTP listener is on");

    // Plaintext on a TLS listener gets no HTTP answer.
    let plain = tokio::net::TcpStream::connect(http).await.expect("connect");
    let mut plain = plain;
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: cairn\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("cairn_appends"));

    let anonymous = get(&server, "/metrics", None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(
        anonymous.headers["www-authenticate"].starts_with("Basic"),
        "{:?}",
        anonymous.headers
    );
    assert!(!anonymous.body.contains("cairn_appends"));

    let wrong = basic("admin", "not-the-password");
    let refused = get(&server, "/metrics", Some(&wrong)).await;
    assert_eq!(refused.status, 401);

    let reader = basic("reader", USER_PASSWORD);
    let denied = get(&server, "/metrics", Some(&reader)).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(!denied.body.contains("cairn_appends"));

    for authorization in [
        basic("operator", USER_PASSWORD),
        basic("admin", ADMIN_PASSWORD),
    ] {
        let allowed = get(&server, "/metrics", Some(&authorization)).await;
        assert_eq!(allowed.status, 200, "{}", allowed.body);
        assert!(
            allowed.body.contains("cairn_appends_total"),
            "{}",
            allowed.body
        );
    }
    server.stop().await;
}
