//! Cairn's protocol from another language: runs `tests/python/test_cairn_grpc.py`
//! (grpcio, stubs generated from `proto/cairn/v1/cairn.proto`, reflection via
//! grpcio-reflection) against an in-process server.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use cairn_testkit::TestServer;

const PYTHON_PACKAGES: &str = "grpcio grpcio-tools grpcio-reflection";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_talks_to_the_server() {
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

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/test_cairn_grpc.py");
    let server = TestServer::start().await;
    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(server.address.to_string())
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
        summary.starts_with("python client: ") && summary.ends_with(" passed, 0 failed"),
        "unexpected summary {summary:?}:\n{stdout}\n{stderr}"
    );
    server.stop().await;
}
