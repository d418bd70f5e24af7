//! Online backup (`Operations.Backup`, as `cairn backup` calls it) and
//! `cairn restore` as an operator meets them: a backup taken while 8 clients
//! append restores to a directory holding every event acknowledged before
//! the backup, intact, gap-free and without half a commit group, which a
//! server then opens and appends to; a corrupted backup and a non-empty
//! target are refused, naming what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{ExpectedRevision, StreamAppend};
use cairn_storage::{ReadSource, Store, StoreOptions};
use cairn_testkit::{TestServer, client_event, eventually, read_all};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const WRITERS: usize = 8;

/// `cairn` with no `CAIRN_*` variables inherited.
fn cairn(args: &[&str]) -> Output {
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
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cairn")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// `cairn restore --from FROM --data DATA`.
fn restore(from: &Path, data: &Path) -> Output {
    cairn(&[
        "restore",
        "--from",
        path_arg(from),
        "--data",
        path_arg(data),
    ])
}

fn data_of(writer: usize, n: u64) -> String {
    format!(
        r#"{{"writer":{writer},"n":{n},"pad":"{}"}}"#,
        "x".repeat(200)
    )
}

/// Copies the files of `from` into a new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("list the backup").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a file");
    }
}

/// The largest `*.sst` file of `dir`.
fn largest_sst(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("list")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".sst"))
        .max_by_key(|entry| entry.metadata().map_or(0, |metadata| metadata.len()))
        .map(|entry| entry.path())
        .expect("the backup has SST files (the checkpoint flushed the memtables)")
}

fn flip_byte(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).expect("read");
    bytes[at] ^= 0x20;
    std::fs::write(file, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_acknowledged_event_and_the_store_opens() {
    let server = TestServer::start().await;
    // Per writer: how many of its two-stream appends were acknowledged.
    let acknowledged = Arc::new(Mutex::new(vec![0u64; WRITERS]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = server.client().await;
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                // One atomic append to two streams: a half-written group
                // would show as one stream longer than the other.
                let parts = ["a", "b"]
                    .into_iter()
                    .map(|side| {
                        StreamAppend::new(
                            format!("w{writer}-{side}"),
                            ExpectedRevision::Any,
                            vec![client_event("Written", &data_of(writer, n))],
                        )
                    })
                    .collect();
                client.append_multi(parts).await.expect("append");
                n += 1;
                acknowledged.lock().unwrap()[writer] = n;
            }
        }));
    }
    eventually("every writer appended 50 times", || async {
        acknowledged
            .lock()
            .unwrap()
            .iter()
            .all(|count| *count >= 50)
            .then_some(())
    })
    .await;

    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backup");
    let before_backup = acknowledged.lock().unwrap().clone();
    let client = server.client().await;
    let backup = client
        .backup(path_arg(&backup_dir))
        .await
        .expect("the backup");
    // Writers keep going a little after the backup.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Release);
    for writer in writers {
        writer.await.expect("writer");
    }
    let after_backup = acknowledged.lock().unwrap().clone();
    println!(
        "backup at head {} of {} events in {} files ({} bytes); acknowledged before: {:?}, \
         at the end: {:?}",
        backup.head_position,
        backup.event_count,
        backup.file_count,
        backup.total_bytes,
        before_backup,
        after_backup
    );
    server.stop().await;

    // Restore with the CLI into a new directory.
    let restored = tempfile::tempdir().unwrap();
    let output = restore(&backup_dir, restored.path());
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "restore failed: {stdout}{}",
        text(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(line["head_position"], backup.head_position);
    assert_eq!(line["event_count"], backup.event_count);
    assert_eq!(line["records_checked"], backup.event_count);

    // Every event acknowledged before the backup is there, intact; the log is
    // gap-free; no group is cut in half.
    let store = Store::open(restored.path(), StoreOptions::default()).expect("open the restore");
    let info = store.info();
    assert_eq!(info.head, backup.head_position);
    let all = read_all(&store, ReadSource::All);
    let positions: Vec<u64> = all.iter().map(|event| event.position).collect();
    assert_eq!(
        positions,
        (0..info.head).collect::<Vec<_>>(),
        "the restored log is gap-free up to its head"
    );
    let mut streams: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for event in &all {
        streams
            .entry(event.stream.clone())
            .or_default()
            .push((event.revision, event.data.to_vec()));
    }
    for (writer, acknowledged) in before_backup.iter().enumerate() {
        let a = &streams[&format!("w{writer}-a")];
        let b = &streams[&format!("w{writer}-b")];
        assert_eq!(a.len(), b.len(), "writer {writer}: a group was cut in half");
        assert!(
            a.len() as u64 >= *acknowledged,
            "writer {writer}: {} events restored, {acknowledged} acknowledged before the backup",
            a.len()
        );
        assert!(a.len() as u64 <= after_backup[writer] + 1);
        for side in [a, b] {
            for (n, (revision, data)) in side.iter().enumerate() {
                assert_eq!(*revision, n as u64);
                assert_eq!(
                    data,
                    data_of(writer, n as u64).as_bytes(),
                    "writer {writer} n {n}"
                );
            }
        }
    }
    store.shutdown();
    drop(store);

    // A server opens the restored directory and accepts appends.
    let server = TestServer::start_in(restored, |_| {}).await;
    let client = server.client().await;
    let appended = client
        .append(
            "after-restore",
            ExpectedRevision::NoStream,
            vec![client_event("Restored", "{}")],
        )
        .await
        .expect("an append after the restore");
    assert_eq!(appended.positions, Some((info.head, info.head)));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_backup_and_a_non_empty_target_are_refused() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for n in 0..400u64 {
        client
            .append(
                format!("order-{}", n % 20),
                ExpectedRevision::Any,
                vec![client_event("Placed", &data_of(0, n))],
            )
            .await
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let backup_dir = work.path().join("backup");
    client.backup(path_arg(&backup_dir)).await.expect("backup");
    server.stop().await;

    // A flipped byte in an SST file: refused, naming the file.
    let sst_copy = work.path().join("sst-copy");
    copy_dir(&backup_dir, &sst_copy);
    let sst = largest_sst(&sst_copy);
    let size = std::fs::metadata(&sst).unwrap().len() as usize;
    flip_byte(&sst, size / 3);
    let target = work.path().join("from-bad-sst");
    let output = restore(&sst_copy, &target);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "a corrupt backup was restored");
    let name = sst.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        stderr.contains(&format!("file {name}")),
        "the error names {name}: {stderr}"
    );
    assert!(stderr.contains("not valid"), "{stderr}");
    assert!(!target.exists(), "nothing is left of a refused restore");

    // A flipped byte in the manifest: refused, naming it.
    let manifest_copy = work.path().join("manifest-copy");
    copy_dir(&backup_dir, &manifest_copy);
    let manifest = manifest_copy.join(cairn_storage::MANIFEST_FILE);
    let text_of_manifest = std::fs::read_to_string(&manifest).unwrap();
    let head_at = text_of_manifest.find("\"head\":").expect("a head field") + 7;
    flip_byte(&manifest, head_at);
    let output = restore(&manifest_copy, &work.path().join("from-bad-manifest"));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(cairn_storage::MANIFEST_FILE),
        "the error names the manifest: {stderr}"
    );

    // A missing file: refused, naming it.
    let missing_copy = work.path().join("missing-copy");
    copy_dir(&backup_dir, &missing_copy);
    let missing = largest_sst(&missing_copy);
    std::fs::remove_file(&missing).unwrap();
    let output = restore(&missing_copy, &work.path().join("from-missing"));
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&missing.file_name().unwrap().to_string_lossy().into_owned()),
        "{stderr}"
    );

    // A non-empty target: refused, and left as it was.
    let occupied = work.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    let output = restore(&backup_dir, &occupied);
    let stderr = text(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("not empty"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&occupied)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(left, ["keep.txt"]);

    // The intact backup restores, and holds all 400 events.
    let good = work.path().join("good");
    let output = restore(&backup_dir, &good);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let store = Store::open(&good, StoreOptions::default()).unwrap();
    assert_eq!(store.info().event_count, 400);
    store.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_scavenge_and_cairn_backup_reach_the_server() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "gone-1",
            ExpectedRevision::Any,
            (0..5).map(|n| client_event("E", &data_of(1, n))).collect(),
        )
        .await
        .unwrap();
    client
        .delete("gone-1", ExpectedRevision::Any)
        .await
        .unwrap();
    let url = server.url();
    let run = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--addr".to_owned(), url.clone()];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            cairn(&refs)
        })
    };

    let output = run(vec!["scavenge".into(), "--wait".into()]).await.unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a final status")).unwrap();
    assert_eq!(last["state"], "finished", "{stdout}");
    assert_eq!(last["last_report"]["removed"], 5, "{stdout}");

    let output = run(vec!["scavenge".into(), "status".into()]).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(text(&output.stdout).trim()).unwrap();
    assert_eq!(status["run"], 1);

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("b");
    let output = run(vec![
        "backup".into(),
        "--to".into(),
        path_arg(&dir).to_owned(),
    ])
    .await
    .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    let backup: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(backup["head_position"], 5, "{stdout}");
    assert_eq!(
        backup["event_count"], 0,
        "the scavenged events are not in it"
    );
    assert!(dir.join(cairn_storage::MANIFEST_FILE).is_file());

    // A relative directory is refused by the server (it would land in the
    // server's working directory).
    let output = run(vec!["backup".into(), "--to".into(), "relative".into()])
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("absolute"),
        "{}",
        text(&output.stderr)
    );
    server.stop().await;
}
