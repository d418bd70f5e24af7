//! `Store::backup`, `verify_backup` and `restore` on directories: a backup
//! after a scavenge verifies and restores to the same events; damage that
//! every file crc would miss (the backup re-sealed after the change, as a
//! buggy tool or a bad disk under a rewritten manifest would leave it) is
//! still found by the record checks, naming the position; a manifest of an
//! unknown format version is refused.

use std::path::Path;

use cairn_storage::{
    COLUMN_FAMILIES, Error, EventData, ExpectedRevision, MANIFEST_FILE, ReadSource, Store,
    StoreOptions, restore, verify_backup,
};
use cairn_testkit::read_all;
use serde_json::{Value, json};

fn event(n: u64) -> EventData {
    EventData::json(
        "Placed",
        format!(r#"{{"n":{n},"pad":"{}"}}"#, "p".repeat(100)),
    )
}

/// A store with 40 events in `order-1` and 20 in `gone-1`, `gone-1` deleted
/// and scavenged; then a backup of it in `dir`.
fn backed_up(data: &Path, dir: &Path) -> Store {
    let store = Store::open(data, StoreOptions::default()).expect("open");
    for n in 0..20 {
        store
            .append("order-1", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .unwrap();
        store
            .append("gone-1", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .unwrap();
    }
    for n in 20..40 {
        store
            .append("order-1", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .unwrap();
    }
    store
        .delete("gone-1", ExpectedRevision::Any)
        .wait()
        .unwrap();
    assert_eq!(store.scavenge().unwrap().removed, 20);
    let manifest = store.backup(dir).expect("backup");
    assert_eq!(manifest.head, 60);
    assert_eq!(manifest.event_count, 40);
    store
}

/// Rewrites the manifest for the files as they are now (the manifest's own
/// layout: body with sorted keys, crc32 of its JSON text).
fn reseal(dir: &Path, adjust: impl FnOnce(&mut Value)) {
    let path = dir.join(MANIFEST_FILE);
    let old: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut body = old["manifest"].clone();
    let mut files = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != MANIFEST_FILE && !name.starts_with("LOG"))
        .collect();
    names.sort();
    for name in names {
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        files.push(json!({
            "name": name,
            "bytes": bytes.len() as u64,
            "crc32": crc32fast::hash(&bytes),
        }));
    }
    body["files"] = Value::Array(files);
    adjust(&mut body);
    let crc = crc32fast::hash(body.to_string().as_bytes());
    std::fs::write(&path, json!({"manifest": body, "crc32": crc}).to_string()).unwrap();
}

/// Opens the backup's database read-write, lets `change` edit its log, and
/// flushes (the edit lands in new SST files).
fn tamper(dir: &Path, change: impl FnOnce(&rocksdb::DB, &rocksdb::ColumnFamily)) {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&options, dir, COLUMN_FAMILIES).expect("open the backup");
    let log = db.cf_handle("log").expect("log");
    change(&db, log);
    for name in COLUMN_FAMILIES {
        db.flush_cf(db.cf_handle(name).unwrap()).unwrap();
    }
    drop(db);
}

#[test]
fn a_backup_after_a_scavenge_verifies_and_restores_the_same_events() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let store = backed_up(&work.path().join("data"), &backup);
    let original = read_all(&store, ReadSource::All);
    // Writes after the backup are not in it.
    store
        .append("order-1", ExpectedRevision::Any, vec![event(99)])
        .wait()
        .unwrap();

    let verified = verify_backup(&backup).expect("verifies");
    assert_eq!(verified.records_checked, 40);
    assert!(verified.bytes_checked > 0);

    let target = work.path().join("restored");
    let restored = restore(&backup, &target).expect("restore");
    assert_eq!(restored.manifest.head, 60);
    let reopened = Store::open(&target, StoreOptions::default()).expect("open the restore");
    assert_eq!(read_all(&reopened, ReadSource::All), original);
    assert_eq!(reopened.info().head, 60, "positions are never reused");
    let appended = reopened
        .append("order-1", ExpectedRevision::Exact(39), vec![event(40)])
        .wait()
        .unwrap();
    assert_eq!(appended.positions, Some((60, 60)));

    // A second backup into an existing directory is refused.
    assert!(matches!(
        store.backup(&backup),
        Err(Error::InvalidArgument(message)) if message.contains("already exists")
    ));
}

#[test]
fn a_changed_record_is_refused_naming_its_position_even_when_every_file_crc_matches() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let _store = backed_up(&work.path().join("data"), &backup);
    tamper(&backup, |db, log| {
        let key = 8u64.to_be_bytes();
        let mut record = db.get_cf(log, key).unwrap().expect("record 8 (order-1)");
        let at = record.len() / 2;
        record[at] ^= 0x01;
        db.put_cf(log, key, record).unwrap();
    });
    reseal(&backup, |_| {});
    let error = verify_backup(&backup).expect_err("a changed record");
    assert!(
        matches!(
            &error,
            Error::BackupInvalid {
                position: Some(8),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("at position 8"), "{error}");
    let target = work.path().join("restored");
    assert!(restore(&backup, &target).is_err());
    assert!(!target.exists(), "nothing is left of a refused restore");
}

#[test]
fn a_lost_record_is_refused_naming_its_position() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let _store = backed_up(&work.path().join("data"), &backup);
    // Position 12 is order-1's (even positions below 40 are order-1's).
    tamper(&backup, |db, log| {
        db.delete_cf(log, 12u64.to_be_bytes()).unwrap();
    });
    reseal(&backup, |_| {});
    let error = verify_backup(&backup).expect_err("a lost record");
    assert!(
        matches!(
            &error,
            Error::BackupInvalid {
                position: Some(12),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_manifest_of_another_format_version_or_head_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let _store = backed_up(&work.path().join("data"), &backup);

    reseal(&backup, |body| body["format_version"] = json!(99));
    let error = verify_backup(&backup).expect_err("format 99");
    assert!(error.to_string().contains("format version 99"), "{error}");

    reseal(&backup, |body| {
        body["format_version"] = json!(cairn_storage::FORMAT_VERSION);
        body["head"] = json!(61);
    });
    let error = verify_backup(&backup).expect_err("another head");
    assert!(error.to_string().contains("head is 60"), "{error}");

    reseal(&backup, |body| body["head"] = json!(60));
    verify_backup(&backup).expect("as made, it verifies again");
}

#[test]
fn a_record_lost_with_its_index_entry_is_refused_naming_the_stream_revision() {
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let _store = backed_up(&work.path().join("data"), &backup);
    // order-1 (stream id 1, the first stream) has revision 7 at position 14.
    tamper(&backup, |db, log| {
        db.delete_cf(log, 14u64.to_be_bytes()).unwrap();
        let index = db.cf_handle("stream_index").unwrap();
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&1u64.to_be_bytes());
        key[8..].copy_from_slice(&7u64.to_be_bytes());
        db.delete_cf(index, key).unwrap();
    });
    reseal(&backup, |body| body["event_count"] = json!(39));
    let error = verify_backup(&backup).expect_err("a lost record and entry");
    assert!(
        error
            .to_string()
            .contains("stream 'order-1': visible revision 7 is missing"),
        "{error}"
    );
}
