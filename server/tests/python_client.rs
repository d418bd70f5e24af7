//! Cairn's protocol from another language: runs `tests/python/test_cairn_grpc.py`
//! (grpcio, stubs generated from `proto/cairn/v1/cairn.proto`, reflection via
//! grpcio-reflection) against an in-process server, and
//! `tests/python/test_cairn_tls.py` against a secure one (TLS and a bearer
//! token).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cairn_testkit::{SecureSetup, TestServer};

const PYTHON_PACKAGES: &str = "grpcio grpcio-tools grpcio-reflection";

/// Fails the test with what to install when python3 lacks the packages.
fn require_python_grpc() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
        .output();
    match probe {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 lacks the gRPC packages ({}); run .ci/run, or pip install {PYTHON_PACKAGES}",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!(
            "cannot run python3 ({error}); install Python 3, then pip install {PYTHON_PACKAGES}"
        ),
    }
}

/// Runs a script of tests/python with `args`; checks it passed and printed
/// `<summary_prefix>N passed, 0 failed` last.
async fn run_script(name: &str, args: &[String], summary_prefix: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name);
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Python client did not finish within 120 s")
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(summary_prefix) && summary.ends_with(" passed, 0 failed"),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_over_tls_with_a_token() {
    require_python_grpc();
    let SecureSetup { server, admin } = SecureSetup::start(&[("python", &[])]).await;
    let token = admin
        .create_token(cairn_client::NewToken::for_user("python").name("python test"))
        .await
        .expect("create a token");
    let ca = server
        .tls
        .as_ref()
        .expect("a secure server")
        .files
        .ca
        .clone();
    run_script(
        "test_cairn_tls.py",
        &[
            server.address.to_string(),
            ca.display().to_string(),
            token.secret.clone(),
        ],
        "python tls client: ",
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_talks_to_the_server() {
    require_python_grpc();
    let server = TestServer::start().await;
    run_script(
        "test_cairn_grpc.py",
        &[server.address.to_string()],
        "python client: ",
    )
    .await;
    server.stop().await;
}
