//! Damaged data on disk: a `log` record whose bytes changed is reported as
//! `Error::Corrupt` naming its position on every read path that touches it, never
//! returned as if it were intact; and a database of another format is refused.

use std::path::Path;

use cairn_storage::{
    Durability, Error, EventData, ExpectedRevision, FORMAT_VERSION, ReadFrom, ReadRequest,
    ReadSource, RecordedEvent, Store, StoreOptions,
};

use cairn_storage::COLUMN_FAMILIES;

fn options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Unsynced,
        ..StoreOptions::default()
    }
}

/// Opens the database directly, bypassing the store.
fn raw(dir: &Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(&rocksdb::Options::default(), dir, COLUMN_FAMILIES).expect("raw open")
}

fn read(store: &Store, source: ReadSource) -> Result<Vec<RecordedEvent>, Error> {
    store
        .read(&ReadRequest::forwards(source, 100))
        .map(|page| page.events)
}

fn stream(name: &str) -> ReadSource {
    ReadSource::Stream(name.to_owned())
}

/// Positions: order-1 at 0..=2 (Placed), other-1 at 3..=4 (Noted), order-2 at 5 (Noted).
fn populate(dir: &Path) -> Vec<RecordedEvent> {
    let store = Store::open(dir, options()).expect("open");
    let placed = || EventData::json("Placed", r#"{"sku":"tea","qty":2}"#);
    let noted = || EventData::json("Noted", r#"{"note":"hello"}"#);
    store
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![placed(), placed(), placed()],
        )
        .wait()
        .expect("order-1");
    store
        .append(
            "other-1",
            ExpectedRevision::NoStream,
            vec![noted(), noted()],
        )
        .wait()
        .expect("other-1");
    store
        .append("order-2", ExpectedRevision::NoStream, vec![noted()])
        .wait()
        .expect("order-2");
    read(&store, ReadSource::All).expect("read back")
}

fn log_value(dir: &Path, position: u64) -> Vec<u8> {
    let db = raw(dir);
    let log = db.cf_handle("log").expect("log column family");
    db.get_cf(log, position.to_be_bytes())
        .expect("get")
        .expect("record present")
}

fn put_log_value(dir: &Path, position: u64, value: &[u8]) {
    let db = raw(dir);
    let log = db.cf_handle("log").expect("log column family");
    db.put_cf(log, position.to_be_bytes(), value).expect("put");
}

fn assert_corrupt_at(result: Result<Vec<RecordedEvent>, Error>, position: u64, what: &str) {
    let error = match result {
        Err(error) => error,
        Ok(events) => panic!("{what}: expected Corrupt at {position}, read {events:?}"),
    };
    let Error::Corrupt {
        column_family, key, ..
    } = &error
    else {
        panic!("{what}: expected Corrupt at {position}, got {error:?}");
    };
    assert_eq!(*column_family, "log", "{what}: {error}");
    assert_eq!(key, &position.to_string(), "{what}: {error}");
    assert!(
        error.to_string().contains(&format!("at key {position}")),
        "{what}: message '{error}'"
    );
}

/// Checks every read path with the record at position 1 (order-1 revision 1,
/// type Placed) damaged; paths that do not touch it still work.
fn check_damage_at_1(dir: &Path, intact: &[RecordedEvent], how: &str) {
    let store =
        Store::open(dir, options()).expect("a damaged record does not stop the store from opening");
    let backwards = |source: ReadSource| {
        store
            .read(&ReadRequest::backwards(source, 100))
            .map(|page| page.events)
    };
    assert_corrupt_at(
        read(&store, ReadSource::All),
        1,
        &format!("{how}: $all forwards"),
    );
    assert_corrupt_at(
        backwards(ReadSource::All),
        1,
        &format!("{how}: $all backwards"),
    );
    assert_corrupt_at(
        read(&store, stream("order-1")),
        1,
        &format!("{how}: order-1 forwards"),
    );
    assert_corrupt_at(
        backwards(stream("order-1")),
        1,
        &format!("{how}: order-1 backwards"),
    );
    assert_corrupt_at(
        read(&store, ReadSource::Category("order".into())),
        1,
        &format!("{how}: $ce-order"),
    );
    assert_corrupt_at(
        read(&store, ReadSource::EventType("Placed".into())),
        1,
        &format!("{how}: $et-Placed"),
    );

    assert_eq!(
        read(&store, stream("other-1")),
        Ok(intact[3..5].to_vec()),
        "{how}: other-1 is intact"
    );
    assert_eq!(
        read(&store, ReadSource::Category("other".into())),
        Ok(intact[3..5].to_vec()),
        "{how}"
    );
    assert_eq!(
        read(&store, ReadSource::EventType("Noted".into())),
        Ok(intact[3..].to_vec()),
        "{how}"
    );
    let after = ReadRequest::forwards(ReadSource::All, 100).from(ReadFrom::At(2));
    assert_eq!(
        store.read(&after).map(|page| page.events),
        Ok(intact[2..].to_vec()),
        "{how}: $all after it"
    );
    let after = ReadRequest::forwards(stream("order-1"), 100).from(ReadFrom::At(2));
    assert_eq!(
        store.read(&after).map(|page| page.events),
        Ok(intact[2..3].to_vec()),
        "{how}: order-1 after it"
    );
    let before = ReadRequest::backwards(ReadSource::All, 100).from(ReadFrom::At(0));
    assert_eq!(
        store.read(&before).map(|page| page.events),
        Ok(intact[..1].to_vec()),
        "{how}: $all before it"
    );

    // A scavenge must not take a damaged record for something it may skip or drop.
    assert!(
        matches!(store.scavenge(), Err(Error::Corrupt { .. })),
        "{how}: scavenge over a damaged record"
    );
}

#[test]
fn flipped_byte_in_a_log_record_is_corrupt_with_its_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let intact = populate(dir.path());
    assert_eq!(intact.len(), 6);
    let original = log_value(dir.path(), 1);

    // The version byte, the id, the stream name, the payload and the crc itself.
    for offset in [0, 12, 36, original.len() - 8, original.len() - 1] {
        let mut damaged = original.clone();
        damaged[offset] ^= 0x20;
        put_log_value(dir.path(), 1, &damaged);
        check_damage_at_1(dir.path(), &intact, &format!("byte {offset} flipped"));
    }

    // Restored, everything reads as before.
    put_log_value(dir.path(), 1, &original);
    let store = Store::open(dir.path(), options()).expect("open");
    assert_eq!(read(&store, ReadSource::All), Ok(intact));
}

#[test]
fn truncated_or_misplaced_log_record_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let intact = populate(dir.path());
    let original = log_value(dir.path(), 1);

    put_log_value(dir.path(), 1, &original[..original.len() - 5]);
    check_damage_at_1(dir.path(), &intact, "truncated");
    put_log_value(dir.path(), 1, &[]);
    check_damage_at_1(dir.path(), &intact, "empty");
    // A valid record under the wrong key: the crc covers the position.
    let neighbour = log_value(dir.path(), 0);
    put_log_value(dir.path(), 1, &neighbour);
    check_damage_at_1(dir.path(), &intact, "record of position 0 under key 1");
}

fn open_error(dir: &Path) -> Error {
    match Store::open(dir, options()) {
        Ok(store) => panic!("{store:?} opened"),
        Err(error) => error,
    }
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let intact = populate(dir.path());
    let put_version = |value: &[u8]| {
        let db = raw(dir.path());
        db.put(b"format_version", value)
            .expect("put format_version");
    };

    put_version(&(FORMAT_VERSION + 1).to_be_bytes());
    assert_eq!(
        open_error(dir.path()),
        Error::UnsupportedFormat {
            path: dir.path().to_path_buf(),
            found: FORMAT_VERSION + 1,
            supported: FORMAT_VERSION
        }
    );
    put_version(&0u32.to_be_bytes());
    assert!(matches!(
        open_error(dir.path()),
        Error::UnsupportedFormat { found: 0, .. }
    ));
    put_version(&[0, 1]);
    assert!(
        matches!(open_error(dir.path()), Error::UnsupportedFormat { .. }),
        "a malformed version"
    );

    // The refusals changed nothing: with the right version back, all is there.
    put_version(&FORMAT_VERSION.to_be_bytes());
    let store = Store::open(dir.path(), options()).expect("open");
    assert_eq!(read(&store, ReadSource::All), Ok(intact));
}

#[test]
fn missing_format_version_in_a_non_empty_database_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    populate(dir.path());
    raw(dir.path())
        .delete(b"format_version")
        .expect("delete format_version");
    assert!(matches!(
        open_error(dir.path()),
        Error::UnsupportedFormat { found: 0, .. }
    ));

    // Some other program's RocksDB is not a Cairn database either.
    let foreign = tempfile::tempdir().expect("temp dir");
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = rocksdb::DB::open(&options, foreign.path()).expect("create foreign db");
        db.put(b"user:1", b"alice").expect("put");
    }
    assert!(matches!(
        open_error(foreign.path()),
        Error::UnsupportedFormat { found: 0, .. }
    ));
}
