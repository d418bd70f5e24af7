//! Damage to the write-ahead log and to SST files: a torn tail left by a crash is
//! dropped (it was never acknowledged), a changed byte anywhere else stops the
//! open with `Error::Damaged` naming the file and offset, `Store::repair` keeps
//! everything before the damage and says what was lost, and a damaged SST block
//! is an error on every read that touches it, never skipped.
//!
//! The events are small and the store is never flushed, so after a clean
//! shutdown all of them are in the newest `*.log` file, not in SST files.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_storage::{
    Durability, Error, EventData, ExpectedRevision, ReadRequest, ReadSource, RecordedEvent, Store,
    StoreOptions,
};
use uuid::Uuid;

const EVENTS: u64 = 200;
const DAMAGED: u64 = 100;
const STREAM: &str = "order-1";

use cairn_storage::COLUMN_FAMILIES;

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Sync,
        ..StoreOptions::default()
    }
}

/// The marker inside event `n`'s data, found again in the raw log bytes.
fn marker(n: u64) -> String {
    format!("payload-{n:05}-")
}

fn event(n: u64, pad: usize) -> EventData {
    let noise: String = (0..pad.div_ceil(32))
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    let mut event = EventData::json("Placed", Bytes::new());
    event.data = Bytes::from(format!(
        r#"{{"marker":"{}","noise":"{}"}}"#,
        marker(n),
        &noise[..pad]
    ));
    event
}

/// Appends `EVENTS` events to `STREAM`, one append each, then shuts down
/// cleanly. Returns what was acknowledged.
fn fill(dir: &Path, pad: usize) -> Vec<RecordedEvent> {
    let store = Store::open(dir, options()).expect("open");
    for n in 0..EVENTS {
        let result = store
            .append(STREAM, ExpectedRevision::Any, vec![event(n, pad)])
            .wait()
            .expect("append");
        assert_eq!(result.positions, Some((n, n)));
    }
    let events = read_all(&store).expect("read back");
    store.shutdown();
    events
}

fn read_all(store: &Store) -> Result<Vec<RecordedEvent>, Error> {
    store
        .read(&ReadRequest::forwards(ReadSource::All, 10_000))
        .map(|page| page.events)
}

/// The newest RocksDB write-ahead log in `dir` (`NNNNNN.log`).
fn newest_wal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("read the data dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .filter_map(|path| {
            let number: u64 = path.file_stem()?.to_str()?.parse().ok()?;
            Some((number, path))
        })
        .max()
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("no *.log file in {}", dir.display()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Flips one byte inside event `n`'s payload in the newest log; returns the
/// log's name and the byte's offset.
fn flip_payload_byte(dir: &Path, n: u64) -> (String, u64) {
    let wal = newest_wal(dir);
    let mut bytes = std::fs::read(&wal).expect("read the WAL");
    let at = find(&bytes, marker(n).as_bytes())
        .unwrap_or_else(|| panic!("event {n} is not in {}: was it flushed?", wal.display()))
        + 3;
    bytes[at] ^= 0x01;
    std::fs::write(&wal, &bytes).expect("write the WAL");
    let name = wal.file_name().expect("file name").to_string_lossy();
    (name.into_owned(), at as u64)
}

/// Cuts the newest log inside its last record (event `EVENTS - 1`): a torn write.
fn tear_tail(dir: &Path) {
    let wal = newest_wal(dir);
    let bytes = std::fs::read(&wal).expect("read the WAL");
    let last = find(&bytes, marker(EVENTS - 1).as_bytes()).expect("the last event is in the WAL");
    assert!(
        find(&bytes[last + 1..], b"payload-").is_none(),
        "event {} is the last record",
        EVENTS - 1
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open the WAL");
    file.set_len(last as u64 + 4).expect("truncate the WAL");
}

fn open_error(dir: &Path) -> Error {
    match Store::open(dir, options()) {
        Ok(store) => panic!(
            "the damaged directory opened with head {}",
            store.info().head
        ),
        Err(error) => error,
    }
}

fn assert_damaged_at(error: &Error, dir: &Path, file: &str, flipped: u64) {
    let Error::Damaged {
        path,
        file: Some(found_file),
        offset: Some(offset),
        reason,
    } = error
    else {
        panic!("expected Damaged with a file and an offset, got {error:?}");
    };
    assert_eq!(path, dir);
    assert_eq!(found_file, file, "{error}");
    // The offset is that of the record holding the flipped byte: before it,
    // and within one log block (32 KiB) of it.
    assert!(
        *offset <= flipped && flipped - offset < 32 * 1024,
        "offset {offset}, flipped byte at {flipped}"
    );
    assert!(reason.contains("checksum mismatch"), "{error}");
    let message = error.to_string();
    for needle in [
        file.to_owned(),
        format!("offset {offset}"),
        "cairn repair".to_owned(),
    ] {
        assert!(message.contains(&needle), "'{needle}' in: {message}");
    }
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_stops_the_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    fill(dir.path(), 64);
    let (file, flipped) = flip_payload_byte(dir.path(), DAMAGED);

    let error = open_error(dir.path());
    assert_damaged_at(&error, dir.path(), &file, flipped);
    // The refused open changed nothing: it is refused again, the same way.
    assert_eq!(open_error(dir.path()), error);
    assert!(
        newest_wal(dir.path()).ends_with(&file),
        "the damaged log is kept"
    );
}

#[test]
fn a_torn_tail_is_dropped_and_positions_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acknowledged = fill(dir.path(), 64);
    tear_tail(dir.path());

    let store = Store::open(dir.path(), options()).expect("a torn tail does not stop the open");
    assert_eq!(store.info().head, EVENTS - 1);
    assert_eq!(
        read_all(&store),
        Ok(acknowledged[..EVENTS as usize - 1].to_vec())
    );
    let result = store
        .append(
            STREAM,
            ExpectedRevision::Exact(EVENTS - 2),
            vec![event(0, 8)],
        )
        .wait()
        .expect("append after the torn tail");
    assert_eq!(result.positions, Some((EVENTS - 1, EVENTS - 1)));
}

/// What a raw RocksDB open does with each WAL recovery mode: `Ok(head)` (the
/// stored `head` key) or `Err(message)`.
fn raw_open(dir: &Path, mode: rocksdb::DBRecoveryMode) -> Result<u64, String> {
    let mut options = rocksdb::Options::default();
    options.set_wal_recovery_mode(mode);
    let db = rocksdb::DB::open_cf(&options, dir, COLUMN_FAMILIES).map_err(|e| e.into_string())?;
    let head = db
        .get(b"head")
        .map_err(|e| e.into_string())?
        .ok_or("no head key")?;
    let head: [u8; 8] = head.try_into().map_err(|_| "head is not 8 bytes")?;
    Ok(u64::from_be_bytes(head))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Why the store opens with `TolerateCorruptedTailRecords` (FORMAT.md,
/// "Recovery"): it is the only mode that both drops a torn tail and refuses a
/// flipped byte. `PointInTime` (RocksDB's default, and what the store used
/// before) opens the flipped log with head 100, silently losing 100
/// acknowledged events.
#[test]
fn wal_recovery_modes_compared() {
    use rocksdb::DBRecoveryMode::{
        AbsoluteConsistency, PointInTime, SkipAnyCorruptedRecord, TolerateCorruptedTailRecords,
    };
    let torn = tempfile::tempdir().expect("temp dir");
    fill(torn.path(), 64);
    tear_tail(torn.path());
    let flipped = tempfile::tempdir().expect("temp dir");
    fill(flipped.path(), 64);
    flip_payload_byte(flipped.path(), DAMAGED);

    let outcome = |damaged: &Path, mode| {
        let copy = tempfile::tempdir().expect("temp dir");
        copy_dir(damaged, copy.path());
        raw_open(copy.path(), mode)
    };
    let modes = [
        ("TolerateCorruptedTailRecords", TolerateCorruptedTailRecords),
        ("AbsoluteConsistency", AbsoluteConsistency),
        ("PointInTime", PointInTime),
        ("SkipAnyCorruptedRecord", SkipAnyCorruptedRecord),
    ];
    let mut seen = Vec::new();
    for (name, mode) in modes {
        let torn = outcome(torn.path(), mode);
        let flipped = outcome(flipped.path(), mode);
        eprintln!("{name}: torn tail -> {torn:?}; flipped byte -> {flipped:?}");
        seen.push((name, torn.ok(), flipped.ok()));
    }
    let torn_head = Some(EVENTS - 1);
    assert_eq!(
        seen,
        vec![
            ("TolerateCorruptedTailRecords", torn_head, None),
            ("AbsoluteConsistency", None, None),
            ("PointInTime", torn_head, Some(DAMAGED)),
            // Skips the damaged batch and applies the later ones: a hole.
            ("SkipAnyCorruptedRecord", torn_head, Some(EVENTS)),
        ]
    );
}

#[test]
fn repair_keeps_everything_before_the_damage_and_reports_the_loss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acknowledged = fill(dir.path(), 64);
    let (file, _) = flip_payload_byte(dir.path(), DAMAGED);

    let report = Store::repair(dir.path()).expect("repair");
    assert_eq!(report.path, dir.path());
    assert!(
        matches!(&report.damage, Some(Error::Damaged { file: Some(found), .. }) if *found == file),
        "{report:?}"
    );
    assert_eq!(report.head_before, Some(EVENTS));
    assert_eq!(report.head_after, DAMAGED);
    assert_eq!(report.lost, Some(EVENTS - DAMAGED));
    let backup = report.backup.clone().expect("the damaged log is backed up");
    assert!(backup.starts_with(dir.path()), "{}", backup.display());
    let kept = std::fs::read(backup.join(&file)).expect("the damaged log in the backup");
    assert!(find(&kept, marker(EVENTS - 1).as_bytes()).is_some());

    // The directory opens; what was before the damage is intact, and new
    // appends take the lost positions (they are reported, not reserved).
    let store = Store::open(dir.path(), options()).expect("open after the repair");
    assert_eq!(store.info().head, DAMAGED);
    assert_eq!(
        read_all(&store),
        Ok(acknowledged[..DAMAGED as usize].to_vec())
    );
    let result = store
        .append(
            STREAM,
            ExpectedRevision::Exact(DAMAGED - 1),
            vec![event(0, 8)],
        )
        .wait()
        .expect("append after the repair");
    assert_eq!(result.positions, Some((DAMAGED, DAMAGED)));
    store.shutdown();
    drop(store);

    // A second repair finds nothing to do.
    let again = Store::repair(dir.path()).expect("repair again");
    assert_eq!(again.damage, None);
    assert_eq!(again.head_after, DAMAGED + 1);
    assert_eq!(again.lost, Some(0));
    assert_eq!(again.backup, None);
}

#[test]
fn repair_of_a_healthy_directory_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let acknowledged = fill(dir.path(), 64);
    let report = Store::repair(dir.path()).expect("repair");
    assert_eq!(report.damage, None);
    assert_eq!(
        (report.head_before, report.head_after, report.lost),
        (Some(EVENTS), EVENTS, Some(0))
    );
    let store = Store::open(dir.path(), options()).expect("open");
    assert_eq!(read_all(&store), Ok(acknowledged));
}

#[test]
fn repair_refuses_a_directory_in_use_and_one_that_is_not_a_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), options()).expect("open");
    assert!(
        matches!(Store::repair(dir.path()), Err(Error::InUse { .. })),
        "repair while the store is open"
    );
    // A second store in the same directory is refused the same way.
    assert!(matches!(
        Store::open(dir.path(), options()),
        Err(Error::InUse { .. })
    ));
    drop(store);

    let empty = tempfile::tempdir().expect("temp dir");
    let error = Store::repair(empty.path()).expect_err("repair of an empty directory");
    assert!(
        error.to_string().contains("not a cairn data directory"),
        "{error}"
    );
    assert!(
        !empty.path().join("CURRENT").exists(),
        "nothing was created"
    );
}

/// An SST data block with a changed byte: reads that touch it fail (RocksDB
/// verifies block checksums), reads that do not still work, and nothing is
/// skipped silently.
#[test]
fn a_damaged_sst_block_is_an_error_on_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    // About 1 KiB of incompressible data per event: the log column family's
    // file has dozens of 4 KiB blocks.
    let acknowledged = fill(dir.path(), 1024);
    {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), COLUMN_FAMILIES)
            .expect("raw open");
        for name in COLUMN_FAMILIES {
            db.flush_cf(db.cf_handle(name).expect("column family"))
                .expect("flush");
        }
    }
    let sst = {
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), COLUMN_FAMILIES)
            .expect("raw open");
        let files: Vec<_> = db
            .live_files()
            .expect("live files")
            .into_iter()
            .filter(|file| file.column_family_name == "log")
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        dir.path().join(files[0].name.trim_start_matches('/'))
    };
    let mut bytes = std::fs::read(&sst).expect("read the SST");
    // Inside the first data block (positions 0..3 or so).
    bytes[200] ^= 0x10;
    std::fs::write(&sst, &bytes).expect("write the SST");

    let store = Store::open(dir.path(), options()).expect("open: the last block is intact");
    let is_checksum_error = |error: &Error| match error {
        Error::Io(message) => message.contains("Corruption") && message.contains("checksum"),
        Error::Corrupt { .. } => true,
        _ => false,
    };
    let all = read_all(&store).expect_err("$all from the start reads the damaged block");
    assert!(is_checksum_error(&all), "{all}");
    let stream = store
        .read(&ReadRequest::forwards(
            ReadSource::Stream(STREAM.to_owned()),
            10,
        ))
        .expect_err("the stream from its start");
    assert!(is_checksum_error(&stream), "{stream}");
    let category = store
        .read(&ReadRequest::forwards(
            ReadSource::Category("order".into()),
            10,
        ))
        .expect_err("the category from its start");
    assert!(is_checksum_error(&category), "{category}");
    assert!(
        store.scavenge().is_err(),
        "a scavenge does not skip the damaged block"
    );
    // The end of the log is intact and reads as it was.
    let tail = store
        .read(&ReadRequest::backwards(ReadSource::All, 10))
        .expect("the newest events");
    let mut expected = acknowledged[acknowledged.len() - 10..].to_vec();
    expected.reverse();
    assert_eq!(tail.events, expected);
}
