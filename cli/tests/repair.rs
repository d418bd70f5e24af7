//! `cairn repair` as an operator meets it: the server refuses a data directory
//! whose write-ahead log has a flipped byte and says to run `cairn repair`; the
//! repair keeps everything before the damage and prints what was lost; it
//! refuses a directory another process holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn_storage::{Durability, EventData, ExpectedRevision, Store, StoreOptions};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const EVENTS: u64 = 50;
const DAMAGED: u64 = 20;

/// `cairn` with no `CAIRN_*` variables inherited, run in `cwd`.
fn cairn(cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(CAIRN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CAIRN_") {
            command.env_remove(key);
        }
    }
    // Only the gRPC listener, on the port the test gives: the KurrentDB and
    // HTTP listeners' fixed default ports would collide between tests.
    command
        .env("CAIRN_KURRENT_LISTEN", "off")
        .env("CAIRN_HTTP_LISTEN", "off");
    command
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Sync,
        ..StoreOptions::default()
    }
}

fn marker(n: u64) -> String {
    format!("payload-{n:05}-")
}

/// `EVENTS` one-event appends, then a clean shutdown: all are in the WAL.
fn fill(dir: &Path) {
    let store = Store::open(dir, options()).expect("open");
    for n in 0..EVENTS {
        let data = format!(r#"{{"marker":"{}"}}"#, marker(n));
        store
            .append(
                "order-1",
                ExpectedRevision::Any,
                vec![EventData::json("Placed", data)],
            )
            .wait()
            .expect("append");
    }
    store.shutdown();
}

fn newest_wal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("read the data dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter_map(|path| {
            let number: u64 = path
                .extension()
                .filter(|extension| *extension == "log")
                .and_then(|_| path.file_stem()?.to_str()?.parse().ok())?;
            Some((number, path))
        })
        .max()
        .map(|(_, path)| path)
        .expect("a *.log file")
}

fn flip_payload_byte(dir: &Path, n: u64) {
    let wal = newest_wal(dir);
    let mut bytes = std::fs::read(&wal).expect("read the WAL");
    let needle = marker(n);
    let at = bytes
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
        .expect("the event is in the WAL")
        + 2;
    bytes[at] ^= 0x01;
    std::fs::write(&wal, &bytes).expect("write the WAL");
}

/// The value of the `key value` line of `stdout`.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
}

#[test]
fn the_server_refuses_a_damaged_directory_and_cairn_repair_salvages_it() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    fill(&data);
    flip_payload_byte(&data, DAMAGED);
    let data_arg = data.to_str().expect("UTF-8 path");

    // The server does not start on it, and says what to do.
    let serve = cairn(
        work.path(),
        &["--data", data_arg, "--listen", "127.0.0.1:0", "serve"],
    );
    let stderr = text(&serve.stderr);
    assert!(!serve.status.success(), "the server started: {stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(stderr.contains("cairn repair"), "{stderr}");
    assert!(stderr.contains(".log at byte offset"), "{stderr}");

    let repair = cairn(work.path(), &["repair", "--data", data_arg]);
    let stdout = text(&repair.stdout);
    assert!(
        repair.status.success(),
        "repair failed: {stdout}{}",
        text(&repair.stderr)
    );
    assert!(field(&stdout, "damage").is_some(), "{stdout}");
    assert_eq!(field(&stdout, "head_before"), Some("50"), "{stdout}");
    assert_eq!(field(&stdout, "head_after"), Some("20"), "{stdout}");
    assert_eq!(field(&stdout, "lost"), Some("30"), "{stdout}");
    let backup = PathBuf::from(field(&stdout, "backup").expect("a backup line"));
    assert!(backup.is_dir(), "{}", backup.display());

    // The directory opens with every event before the damage.
    let store = Store::open(&data, options()).expect("open after the repair");
    assert_eq!(store.info().head, DAMAGED);
    store.shutdown();
    drop(store);

    // Repairing again finds nothing to do (also through CAIRN_DATA).
    let again = Command::new(CAIRN)
        .current_dir(work.path())
        .arg("repair")
        .env("CAIRN_DATA", &data)
        .env_remove("CAIRN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run cairn");
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", text(&again.stderr));
    assert!(stdout.starts_with("nothing to repair"), "{stdout}");
    assert_eq!(field(&stdout, "lost"), Some("0"), "{stdout}");
}

#[test]
fn cairn_repair_refuses_a_directory_in_use() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    fill(&data);
    // This process holds the directory's lock, as a running server would.
    let store = Store::open(&data, options()).expect("open");
    let repair = cairn(
        work.path(),
        &["repair", "--data", data.to_str().expect("UTF-8 path")],
    );
    let stderr = text(&repair.stderr);
    assert!(!repair.status.success(), "{}", text(&repair.stdout));
    assert!(stderr.contains("in use by another process"), "{stderr}");
    drop(store);

    let missing = work.path().join("missing");
    let repair = cairn(
        work.path(),
        &["repair", "--data", missing.to_str().expect("UTF-8 path")],
    );
    assert!(!repair.status.success());
    assert!(
        text(&repair.stderr).contains("not a cairn data directory"),
        "{}",
        text(&repair.stderr)
    );
    assert!(!missing.exists(), "nothing was created");
}
