//! TLS through the real client over real TLS, with certificates made in the
//! test (`cairn_server::dev_certs`): trust, plaintext and wrong-CA clients,
//! mutual TLS, bounded handshakes, and certificate reloads (file poll and
//! SIGHUP) that keep open connections.

use std::path::Path;
use std::time::Duration;

use cairn_client::{Client, Error, ExpectedRevision, SubscribeOptions, SubscriptionMessage};
use cairn_server::dev_certs::{self, DevCa};
use cairn_testkit::{TestServer, client_event, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a failing connection may take to fail: well within this.
const FAIL_FAST: Duration = Duration::from_secs(5);

/// Connects and asks for health, bounded by [`FAIL_FAST`]: the error of
/// whichever step failed, or `Ok(serving)`.
async fn health(builder: cairn_client::ClientBuilder) -> Result<bool, Error> {
    tokio::time::timeout(FAIL_FAST, async move {
        let client = builder.connect().await?;
        client.is_serving().await
    })
    .await
    .expect("a TLS failure must be an error, not a hang")
}

/// Replaces the server's certificate and key with ones signed by a new CA;
/// returns that CA's certificate (PEM).
fn rotate_to_new_ca(tls: &cairn_testkit::TestTls) -> String {
    let ca = DevCa::generate().unwrap();
    let server = ca.server(&[]).unwrap();
    // Key first, then certificate: a poll in between sees a pair that does
    // not fit, keeps the old one, and loads the new pair at the next poll.
    dev_certs::write_file(&tls.files.server_key, &server.key_pem, true).unwrap();
    dev_certs::write_file(&tls.files.server_cert, &server.cert_pem, false).unwrap();
    ca.cert_pem
}

fn ca_pem(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_client_trusting_the_ca_gets_health_and_calls_need_credentials() {
    let server = TestServer::start_secure().await;
    assert!(server.url().starts_with("https://"));
    let anonymous = server.client().await;
    assert!(
        anonymous.is_serving().await.unwrap(),
        "health needs no credentials"
    );
    match anonymous.info().await {
        Err(Error::Unauthenticated(_)) => {}
        other => panic!("a call without credentials: {other:?}"),
    }
    let wrong = server.connect_as("admin", "not the password").await;
    match wrong.info().await {
        Err(Error::Unauthenticated(message)) => {
            assert!(!message.contains("not the password"), "{message}");
        }
        other => panic!("a wrong password: {other:?}"),
    }
    // A raw tonic channel over TLS (as other tools see the server).
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn credentials_go_with_unary_and_streaming_calls_over_tls() {
    // Needs the first admin (users.rs) to log in.
    let server = TestServer::start_secure().await;
    let admin = server.admin().await;
    admin
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![client_event("Placed", "{}")],
        )
        .await
        .unwrap();
    let events = cairn_testkit::read_all_client(&admin, "order-1")
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    let mut subscription = admin
        .subscribe("$ce-order", SubscribeOptions::from_start())
        .await
        .unwrap();
    let mut saw_event = false;
    while let Some(message) = subscription.next_message().await.unwrap() {
        match message {
            SubscriptionMessage::Event(event) => {
                assert_eq!(event.stream, "order-1");
                saw_event = true;
            }
            SubscriptionMessage::CaughtUp { .. } => break,
            _ => {}
        }
    }
    assert!(saw_event);
    server.stop().await;
}

#[tokio::test]
async fn a_plaintext_client_against_a_tls_server_fails_cleanly() {
    let server = TestServer::start_secure().await;
    let plaintext = Client::builder(format!("http://{}", server.address));
    assert!(health(plaintext).await.is_err());
    // The server still serves TLS clients.
    assert!(health(server.client_builder()).await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails() {
    let server = TestServer::start_secure().await;
    let other = DevCa::generate().unwrap();
    let error = health(Client::builder(server.url()).ca_pem(other.cert_pem))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("certificate"),
        "the error names the certificate: {error}"
    );
    // No CA file: the system's CAs do not know the dev CA either.
    assert!(health(Client::builder(server.url())).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let server = TestServer::start_secure_with(|settings, tls| {
        settings.tls_client_ca_file = Some(tls.files.ca.clone());
    })
    .await;
    let tls = server.tls.as_ref().unwrap();
    let without = Client::builder(server.url()).ca_file(&tls.files.ca);
    assert!(health(without).await.is_err(), "no client certificate");

    let stranger = DevCa::generate().unwrap().client("stranger").unwrap();
    let foreign = Client::builder(server.url())
        .ca_file(&tls.files.ca)
        .identity_pem(stranger.cert_pem, stranger.key_pem);
    assert!(
        health(foreign).await.is_err(),
        "a certificate of another CA"
    );

    let with = Client::builder(server.url())
        .ca_file(&tls.files.ca)
        .identity(&tls.files.client_cert, &tls.files.client_key);
    assert!(health(with).await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_connections_and_old_ones_stay() {
    let server = TestServer::start_secure_with(|settings, _| {
        settings.tls_reload_interval_ms = 50;
    })
    .await;
    let tls = server.tls.as_ref().unwrap();
    let old_ca = ca_pem(&tls.files.ca);
    let open = server.client().await;
    assert!(open.is_serving().await.unwrap());

    let new_ca = rotate_to_new_ca(tls);
    let url = server.url();
    eventually("new connections to get the new certificate", || {
        let builder = Client::builder(url.clone()).ca_pem(new_ca.clone());
        async move { health(builder).await }
    })
    .await;
    assert!(
        health(Client::builder(url.clone()).ca_pem(old_ca))
            .await
            .is_err(),
        "the old certificate is no longer served"
    );
    // The connection opened before the reload is the same one, still working
    // (a reconnect would have needed the old CA, which no longer fits).
    assert!(open.is_serving().await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_bad_certificate_file_keeps_the_old_certificate() {
    let server = TestServer::start_secure_with(|settings, _| {
        settings.tls_reload_interval_ms = 20;
    })
    .await;
    let tls = server.tls.as_ref().unwrap();
    let old_ca = ca_pem(&tls.files.ca);
    dev_certs::write_file(
        &tls.files.server_cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
        false,
    )
    .unwrap();
    // What must not happen cannot be awaited: give the poll many rounds to
    // try the bad file, then check the old certificate is still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = server.url();
    assert!(
        health(Client::builder(url.clone()).ca_pem(old_ca))
            .await
            .unwrap()
    );
    // The poll survived the failure: a good pair is picked up.
    let new_ca = rotate_to_new_ca(tls);
    eventually("the good certificate after the bad one", || {
        let builder = Client::builder(url.clone()).ca_pem(new_ca.clone());
        async move { health(builder).await }
    })
    .await;
    server.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let server = TestServer::start_secure_with(|settings, _| {
        // No poll: only SIGHUP reloads.
        settings.tls_reload_interval_ms = 0;
    })
    .await;
    let tls = server.tls.as_ref().unwrap();
    let new_ca = rotate_to_new_ca(tls);
    let url = server.url();
    // Every server of this test process reloads its own files on SIGHUP;
    // the running server has the process's handler installed already.
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    hup();
    eventually("SIGHUP to load the new certificate", || {
        let builder = Client::builder(url.clone()).ca_pem(new_ca.clone());
        async move { health(builder).await }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_or_trickling_handshake_is_closed_and_blocks_no_one() {
    let server = TestServer::start_secure_with(|settings, _| {
        settings.connection_handshake_timeout_ms = 300;
    })
    .await;
    // Silent: nothing after the TCP connect.
    let mut silent = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    // Trickling: a TLS record header announcing a handshake, then one byte
    // every 50 ms, which keeps re-arming any per-read deadline.
    let mut trickling = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    trickling
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00])
        .await
        .unwrap();

    // Meanwhile a real client gets through at once.
    assert!(health(server.client_builder()).await.unwrap());

    let closed = tokio::time::timeout(FAIL_FAST, async {
        let mut buffer = [0u8; 64];
        loop {
            tokio::select! {
                read = trickling.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if trickling.write_all(&[0]).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a trickling handshake is closed at the handshake timeout"
    );
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(FAIL_FAST, silent.read(&mut buffer))
        .await
        .expect("a silent connection is closed at the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.stop().await;
}
