//! `cairn user`, `cairn token` and `cairn whoami`: the real binary as a
//! client of an in-process secure server (TLS, authentication on).

use std::process::{Output, Stdio};
use std::time::Duration;

use cairn_testkit::{ADMIN_PASSWORD, TestServer};
use tokio::io::AsyncWriteExt;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
/// A client command that takes longer has hung.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `cairn` with the server's address and CA, `args`, and `stdin` on
/// its standard input; no `CAIRN_*` variable is inherited.
async fn cairn(server: &TestServer, args: &[&str], stdin: &str) -> Output {
    let tls = server.tls.as_ref().expect("a secure server");
    let mut command = tokio::process::Command::new(CAIRN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAIRN_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .args(args)
        .arg("--addr")
        .arg(server.url())
        .arg("--ca-file")
        .arg(&tls.files.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cairn");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`cairn {}` hung", args.join(" ")))
        .expect("cairn output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON lines of a successful run.
fn ok(output: &Output, args: &str) -> Vec<serde_json::Value> {
    assert!(
        output.status.success(),
        "`cairn {args}` failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

/// `prefix` then `args`.
fn join<'a>(prefix: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    [prefix, args].concat()
}

/// The standard error of a failed run.
fn failed(output: &Output, args: &str) -> String {
    assert!(!output.status.success(), "`cairn {args}` succeeded");
    text(&output.stderr)
}

#[tokio::test]
async fn users_and_tokens_are_managed_from_the_command_line() {
    let server = TestServer::start_secure().await;
    let admin = ["--user", "admin", "--password", ADMIN_PASSWORD];
    let as_admin = |args: &[&'static str]| join(&admin, args);

    let me = ok(&cairn(&server, &as_admin(&["whoami"]), "").await, "whoami");
    assert_eq!(me[0]["user"], "admin");
    assert_eq!(me[0]["roles"], serde_json::json!(["admin"]));
    assert_eq!(me[0]["system"], false);

    let args = as_admin(&[
        "user",
        "add",
        "bob",
        "--role",
        "ops",
        "--full-name",
        "Bob",
        "--new-password",
        "bob password",
    ]);
    let added = ok(&cairn(&server, &args, "").await, "user add bob");
    assert_eq!(added[0]["user"], "bob");
    assert_eq!(added[0]["roles"], serde_json::json!(["ops"]));
    assert!(!text(&cairn(&server, &args, "").await.stdout).contains("bob password"));

    // A password from standard input (not a terminal: one line, no prompt).
    ok(
        &cairn(
            &server,
            &as_admin(&["user", "add", "carol"]),
            "carol password\n",
        )
        .await,
        "user add carol",
    );
    let carol = ok(
        &cairn(
            &server,
            &["whoami", "--user", "carol", "--password", "carol password"],
            "",
        )
        .await,
        "whoami as carol",
    );
    assert_eq!(carol[0]["user"], "carol");

    let bob = ["--user", "bob", "--password", "bob password"];
    let created = cairn(
        &server,
        &join(
            &bob,
            &["token", "create", "--name", "ci", "--expires-in", "30d"],
        ),
        "",
    )
    .await;
    assert!(text(&created.stderr).contains("not shown again"));
    let created = ok(&created, "token create");
    let secret = created[0]["secret"]
        .as_str()
        .expect("the secret")
        .to_owned();
    let id = created[0]["id"].as_str().expect("an id").to_owned();
    assert!(secret.starts_with("cairn_"));
    assert!(created[0]["expires"].is_u64());

    let by_token = ok(
        &cairn(&server, &["whoami", "--token", &secret], "").await,
        "whoami --token",
    );
    assert_eq!(by_token[0]["user"], "bob");
    let listed = ok(
        &cairn(&server, &join(&bob, &["token", "list"]), "").await,
        "token list",
    );
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(
        listed[0].get("secret").is_none(),
        "a list never shows secrets"
    );

    let denied = failed(
        &cairn(&server, &join(&bob, &["user", "list"]), "").await,
        "user list as bob",
    );
    assert!(denied.contains("manage users"), "{denied}");

    ok(
        &cairn(&server, &join(&bob, &["token", "revoke", &id]), "").await,
        "token revoke",
    );
    let refused = failed(
        &cairn(&server, &["whoami", "--token", &secret], "").await,
        "whoami revoked",
    );
    assert!(refused.contains("not authenticated"), "{refused}");

    // The connection's password is the current one.
    ok(
        &cairn(
            &server,
            &join(
                &bob,
                &["user", "passwd", "--new-password", "bob new password"],
            ),
            "",
        )
        .await,
        "user passwd",
    );
    let bob = ["--user", "bob", "--password", "bob new password"];
    assert_eq!(
        ok(
            &cairn(&server, &join(&bob, &["whoami"]), "").await,
            "whoami"
        )[0]["user"],
        "bob"
    );

    let users = ok(
        &cairn(&server, &as_admin(&["user", "list"]), "").await,
        "user list",
    );
    let names: Vec<&str> = users
        .iter()
        .map(|user| user["user"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "bob", "carol"]);
    ok(
        &cairn(&server, &as_admin(&["user", "disable", "bob"]), "").await,
        "user disable",
    );
    let shown = ok(
        &cairn(&server, &as_admin(&["user", "show", "bob"]), "").await,
        "user show",
    );
    assert_eq!(shown[0]["disabled"], true);
    failed(
        &cairn(&server, &join(&bob, &["whoami"]), "").await,
        "whoami disabled",
    );
    ok(
        &cairn(&server, &as_admin(&["user", "enable", "bob"]), "").await,
        "user enable",
    );
    let updated = ok(
        &cairn(
            &server,
            &as_admin(&["user", "update", "bob", "--no-roles"]),
            "",
        )
        .await,
        "user update",
    );
    assert_eq!(updated[0]["roles"], serde_json::json!([]));
    ok(
        &cairn(
            &server,
            &as_admin(&["user", "reset-password", "bob"]),
            "bob third password\n",
        )
        .await,
        "user reset-password",
    );
    let bob = ok(
        &cairn(
            &server,
            &[
                "whoami",
                "--user",
                "bob",
                "--password",
                "bob third password",
            ],
            "",
        )
        .await,
        "whoami after reset",
    );
    assert_eq!(bob[0]["roles"], serde_json::json!([]));
    ok(
        &cairn(&server, &as_admin(&["user", "delete", "carol"]), "").await,
        "user delete",
    );
    let missing = failed(
        &cairn(&server, &as_admin(&["user", "show", "carol"]), "").await,
        "user show carol",
    );
    assert!(missing.contains("carol"), "{missing}");
    server.stop().await;
}

#[tokio::test]
async fn stream_acls_are_set_from_the_command_line() {
    let server = TestServer::start_secure().await;
    let admin = ["--user", "admin", "--password", ADMIN_PASSWORD];
    let as_admin = |args: &[&'static str]| join(&admin, args);
    for user in ["dora", "eve"] {
        ok(
            &cairn(
                &server,
                &as_admin(&["user", "add", user, "--new-password", "a long password"]),
                "",
            )
            .await,
            "user add",
        );
    }
    ok(
        &cairn(
            &server,
            &as_admin(&["append", "diary-dora", "Noted", "{}"]),
            "",
        )
        .await,
        "append",
    );
    let acl = r#"{"$acl": {"$r": "dora", "$w": "dora", "$mr": "dora"}}"#;
    let set = ok(
        &cairn(
            &server,
            &join(&admin, &["metadata", "set", "diary-dora", "--custom", acl]),
            "",
        )
        .await,
        "metadata set",
    );
    assert_eq!(set[0]["metadata_revision"], 0);
    let got = ok(
        &cairn(&server, &as_admin(&["metadata", "get", "diary-dora"]), "").await,
        "metadata get",
    );
    assert_eq!(got[0]["custom"]["$acl"]["$r"], "dora");

    let dora = ["--user", "dora", "--password", "a long password"];
    let eve = ["--user", "eve", "--password", "a long password"];
    let read = ok(
        &cairn(&server, &join(&dora, &["read", "diary-dora"]), "").await,
        "read as dora",
    );
    assert_eq!(read.len(), 1);
    let denied = failed(
        &cairn(&server, &join(&eve, &["read", "diary-dora"]), "").await,
        "read as eve",
    );
    assert!(
        denied.contains("access denied")
            && denied.contains("diary-dora")
            && !denied.contains("$acl"),
        "{denied}"
    );
    let denied = failed(
        &cairn(&server, &join(&eve, &["metadata", "get", "diary-dora"]), "").await,
        "metadata get as eve",
    );
    assert!(denied.contains("read metadata"), "{denied}");
    server.stop().await;
}

#[tokio::test]
async fn events_are_appended_with_tags_and_read_back_with_them() {
    let server = TestServer::start_secure().await;
    let admin = ["--user", "admin", "--password", ADMIN_PASSWORD];
    let append = join(
        &admin,
        &[
            "append",
            "course-1",
            "CourseDefined",
            "{}",
            "--tag",
            "course:1",
            "--tag",
            "term:2026",
        ],
    );
    ok(&cairn(&server, &append, "").await, "append --tag");
    let plain = join(&admin, &["append", "course-1", "Renamed", "{}"]);
    ok(&cairn(&server, &plain, "").await, "append");
    let read = join(&admin, &["read", "course-1"]);
    let lines = ok(&cairn(&server, &read, "").await, "read");
    assert_eq!(
        lines[0]["tags"],
        serde_json::json!(["course:1", "term:2026"])
    );
    assert!(lines[1].get("tags").is_none(), "{}", lines[1]);
    let duplicate = join(
        &admin,
        &["append", "course-1", "T", "{}", "--tag", "x", "--tag", "x"],
    );
    let error = failed(
        &cairn(&server, &duplicate, "").await,
        "append --tag x --tag x",
    );
    assert!(error.contains("twice"), "{error}");
}
