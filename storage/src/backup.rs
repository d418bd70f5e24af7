//! Online backups of a live store, their verification, and the restore of a
//! verified backup into a new data directory.
//!
//! A backup is a RocksDB checkpoint (hard links to the immutable SST files on
//! the same filesystem, copies otherwise, plus the live write-ahead log files
//! cut at a record boundary) and a manifest, [`MANIFEST_FILE`], written last.
//! Every committer group is one `WriteBatch`, a single WAL record, so the
//! checkpoint never holds half a group: opened, it is a prefix of the log that
//! ends at a commit boundary. The checkpoint is taken after reading the
//! published head, so every event acknowledged before [`Store::backup`] was
//! called is in it.
//!
//! The manifest names the format version, the backup's head, its event and
//! stream counts, when it was made, and every file with its size and crc32;
//! its own crc32 covers the rest. [`verify_backup`] checks all of it, opens the
//! copy read-only and reads every record (Cairn's record crc, RocksDB's block
//! checksums), and checks the log is gap-free below the head: every position
//! was written (the segments' `Written` counters), every position not removed by
//! a scavenge is present (`Removed` counters), every record has its stream index
//! entry and every stream's visible revisions are all there. [`restore`]
//! verifies, copies, and verifies the copy before it reports success.
//!
//! This module owns the backup layout and the manifest; it never writes to a
//! live data directory (a backup only reads the store, through a checkpoint).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamilyDescriptor, DB, DBRecoveryMode, IteratorMode, Options};
use serde_json::{Value, json};

use crate::codec::{
    self, FORMAT_VERSION, OLDEST_MIGRATED_FORMAT, SegmentCounter, StreamRecord, cf,
};
use crate::error::{Error, Result};
use crate::store::{Store, database_options, stored_head};

/// The manifest's file name inside a backup directory.
pub const MANIFEST_FILE: &str = "cairn-backup.json";
/// Version of the manifest's own layout.
const MANIFEST_VERSION: u64 = 1;
/// Largest manifest read, bytes: a backup of a large store lists thousands of
/// files at ~100 bytes each; anything larger is not a manifest.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;
/// Most files a manifest may list.
const MAX_MANIFEST_FILES: usize = 1_000_000;

/// One file of a backup, as its manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupFile {
    /// The file name (no directory).
    pub name: String,
    /// Its size, bytes.
    pub bytes: u64,
    /// crc32 (crc32fast) of its content.
    pub crc32: u32,
}

/// What a backup holds (its manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupManifest {
    /// The store's format version ([`FORMAT_VERSION`] of the build that made it).
    pub format_version: u32,
    /// The next position of the backed-up store: every event below it that a
    /// scavenge did not remove is in the backup.
    pub head: u64,
    /// Events in the backup (records present in the log).
    pub event_count: u64,
    /// Streams the backup knows, in any state.
    pub stream_count: u64,
    /// When the backup was made, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Every file of the checkpoint.
    pub files: Vec<BackupFile>,
}

/// What [`verify_backup`] or [`restore`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedBackup {
    /// The backup's manifest.
    pub manifest: BackupManifest,
    /// Records read and checked.
    pub records_checked: u64,
    /// Bytes of files whose crc was checked.
    pub bytes_checked: u64,
}

/// The invalid-backup error.
fn invalid(file: Option<&str>, position: Option<u64>, reason: impl Into<String>) -> Error {
    Error::BackupInvalid {
        file: file.map(str::to_owned),
        position,
        reason: reason.into(),
    }
}

fn io(what: &str, error: std::io::Error) -> Error {
    Error::Io(format!("{what}: {error}"))
}

impl Store {
    /// Takes an online, consistent backup into `dir`, which must not exist
    /// (its parent must). Writers and readers keep running; the backup holds at
    /// least every event acknowledged before this call, and never part of a
    /// group. Returns the manifest it wrote (last, after every other file), once
    /// the backup was checked as [`verify_backup`] does.
    pub fn backup(&self, dir: impl AsRef<Path>) -> Result<BackupManifest> {
        let dir = dir.as_ref();
        if dir.exists() {
            return Err(Error::InvalidArgument(format!(
                "the backup directory {} already exists; name a new one",
                dir.display()
            )));
        }
        let shared = self.shared();
        // Everything acknowledged so far is below this head; the checkpoint
        // (taken after) holds it all.
        let acknowledged_head = shared.live.head();
        Checkpoint::new(&shared.db)?.create_checkpoint(dir)?;
        let result = finish_backup(dir, acknowledged_head);
        if result.is_err() {
            // Leave no directory that looks like a backup without a manifest.
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }
}

/// Lists the checkpoint's files, checks the database in it, and writes the
/// manifest last.
fn finish_backup(dir: &Path, acknowledged_head: u64) -> Result<BackupManifest> {
    let files = list_files(dir)?;
    let summary = check_database(dir)?;
    if summary.head < acknowledged_head {
        return Err(Error::Io(format!(
            "the checkpoint ends at position {} but events up to {acknowledged_head} were \
             acknowledged before it",
            summary.head
        )));
    }
    let manifest = BackupManifest {
        format_version: summary.format_version,
        head: summary.head,
        event_count: summary.event_count,
        stream_count: summary.stream_count,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        files,
    };
    write_manifest(dir, &manifest)?;
    tracing::info!(
        head = manifest.head,
        events = manifest.event_count,
        files = manifest.files.len(),
        "backup written"
    );
    Ok(manifest)
}

/// The checkpoint's files (every regular file but the manifest and RocksDB's
/// info logs, which a read-only open may add), by name, with size and crc.
fn list_files(dir: &Path) -> Result<Vec<BackupFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| io("cannot list the backup", error))? {
        let entry = entry.map_err(|error| io("cannot list the backup", error))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry
            .file_type()
            .map_err(|error| io("cannot list the backup", error))?
            .is_file()
            || !is_database_file(&name)
        {
            continue;
        }
        let (bytes, crc32) = file_crc(&entry.path())?;
        files.push(BackupFile { name, bytes, crc32 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Whether `name` is part of the database (not the manifest, not an info log).
fn is_database_file(name: &str) -> bool {
    name != MANIFEST_FILE && !name.starts_with("LOG") && !name.ends_with(".tmp")
}

/// Size and crc32 of a file, read in 1 MiB pieces.
fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut file = File::open(path).map_err(|error| io(&format!("cannot open {name}"), error))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|error| io(&format!("cannot read {name}"), error))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((bytes, hasher.finalize()))
}

/// The manifest as JSON, without its crc.
fn manifest_body(manifest: &BackupManifest) -> Value {
    json!({
        "manifest_version": MANIFEST_VERSION,
        "format_version": manifest.format_version,
        "head": manifest.head,
        "event_count": manifest.event_count,
        "stream_count": manifest.stream_count,
        "created_unix_ms": manifest.created_unix_ms,
        "files": manifest.files.iter().map(|file| json!({
            "name": file.name,
            "bytes": file.bytes,
            "crc32": file.crc32,
        })).collect::<Vec<_>>(),
    })
}

/// crc32 of the body's canonical JSON (serde_json orders object keys).
fn body_crc(body: &Value) -> u32 {
    crc32fast::hash(body.to_string().as_bytes())
}

/// Writes the manifest to a temporary name, syncs it, renames it into place
/// and syncs the directory: a backup without a manifest is incomplete.
fn write_manifest(dir: &Path, manifest: &BackupManifest) -> Result<()> {
    let body = manifest_body(manifest);
    let crc = body_crc(&body);
    let text = json!({ "manifest": body, "crc32": crc }).to_string();
    let temporary = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file =
        File::create(&temporary).map_err(|error| io("cannot write the manifest", error))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| io("cannot write the manifest", error))?;
    std::fs::rename(&temporary, dir.join(MANIFEST_FILE))
        .map_err(|error| io("cannot write the manifest", error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| io("cannot sync the directory", error))
}

/// Reads and checks the manifest of the backup in `dir`.
pub fn read_manifest(dir: &Path) -> Result<BackupManifest> {
    let path = dir.join(MANIFEST_FILE);
    let bad = |reason: String| invalid(Some(MANIFEST_FILE), None, reason);
    let metadata = std::fs::metadata(&path).map_err(|error| {
        bad(format!(
            "cannot read the manifest ({error}); is this a cairn backup?"
        ))
    })?;
    if metadata.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "the manifest is {} bytes, more than {MAX_MANIFEST_BYTES}",
            metadata.len()
        )));
    }
    let text = std::fs::read(&path).map_err(|error| bad(format!("cannot read it: {error}")))?;
    let value: Value = serde_json::from_slice(&text)
        .map_err(|error| bad(format!("it is not valid JSON: {error}")))?;
    let body = value
        .get("manifest")
        .ok_or_else(|| bad("it has no `manifest` object".into()))?;
    let stored_crc = value
        .get("crc32")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("it has no crc32".into()))?;
    if u64::from(body_crc(body)) != stored_crc {
        return Err(bad("its crc32 does not match its content".into()));
    }
    let number = |key: &str| {
        body.get(key)
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("`{key}` is missing or not a number")))
    };
    if number("manifest_version")? != MANIFEST_VERSION {
        return Err(bad(format!(
            "manifest version {} is not {MANIFEST_VERSION}",
            number("manifest_version")?
        )));
    }
    let listed = body
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`files` is missing".into()))?;
    if listed.len() > MAX_MANIFEST_FILES {
        return Err(bad(format!(
            "it lists {} files, more than {MAX_MANIFEST_FILES}",
            listed.len()
        )));
    }
    let mut files = Vec::with_capacity(listed.len());
    for file in listed {
        let name = file
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| {
                !name.is_empty() && !name.contains(['/', '\\']) && *name != "." && *name != ".."
            })
            .ok_or_else(|| bad("a file entry has no valid name".into()))?;
        let field = |key: &str| {
            file.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(format!("file {name}: `{key}` is missing")))
        };
        files.push(BackupFile {
            name: name.to_owned(),
            bytes: field("bytes")?,
            crc32: u32::try_from(field("crc32")?)
                .map_err(|_| bad(format!("file {name}: crc32 out of range")))?,
        });
    }
    let format_version = u32::try_from(number("format_version")?)
        .map_err(|_| bad("format_version out of range".into()))?;
    Ok(BackupManifest {
        format_version,
        head: number("head")?,
        event_count: number("event_count")?,
        stream_count: number("stream_count")?,
        created_unix_ms: number("created_unix_ms")?,
        files,
    })
}

/// What [`check_database`] found in a database directory.
struct DatabaseSummary {
    format_version: u32,
    head: u64,
    event_count: u64,
    stream_count: u64,
}

/// Opens the database in `dir` read-only and checks every record: its crc,
/// its stream index entry, the segment counters (no position lost that a
/// scavenge did not remove) and every stream's visible revisions. The first
/// problem is the error, naming the position (or stream revision) concerned.
fn check_database(dir: &Path) -> Result<DatabaseSummary> {
    let options = database_options(DBRecoveryMode::TolerateCorruptedTailRecords);
    let descriptors = cf::ALL
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
    let db =
        DB::open_cf_descriptors_read_only(&options, dir, descriptors, false).map_err(|error| {
            invalid(
                None,
                None,
                format!("the database does not open: {}", error.into_string()),
            )
        })?;
    let handle = |name: &str| {
        db.cf_handle(name)
            .ok_or_else(|| invalid(None, None, format!("column family {name} is missing")))
    };
    let meta = handle(cf::META)?;
    let format_version = match db.get_cf(meta, codec::meta_key::FORMAT_VERSION)? {
        Some(value) if value.len() == 4 => {
            u32::from_be_bytes([value[0], value[1], value[2], value[3]])
        }
        _ => return Err(invalid(None, None, "the database has no format version")),
    };
    if !(OLDEST_MIGRATED_FORMAT..=FORMAT_VERSION).contains(&format_version) {
        return Err(invalid(
            None,
            None,
            format!(
                "the database has format version {format_version}; this build reads \
                 {OLDEST_MIGRATED_FORMAT}..={FORMAT_VERSION}"
            ),
        ));
    }
    let head = stored_head(&db)?;

    // Streams by id.
    let mut streams: HashMap<u64, (String, StreamRecord)> = HashMap::new();
    let mut ids_by_name: HashMap<String, u64> = HashMap::new();
    for item in db.iterator_cf(handle(cf::STREAMS)?, IteratorMode::Start) {
        let (key, value) = item?;
        let name = String::from_utf8(key.to_vec())
            .map_err(|_| invalid(None, None, "a stream name is not UTF-8"))?;
        let record = StreamRecord::decode(&name, &value)?;
        ids_by_name.insert(name.clone(), record.id);
        streams.insert(record.id, (name, record));
    }

    // Every record: crc, below the head, its stream index entry.
    let stream_index = handle(cf::STREAM_INDEX)?;
    let segment_count = head.div_ceil(codec::SEGMENT_SIZE);
    let mut present: HashMap<u64, u64> = HashMap::new();
    let mut event_count = 0u64;
    for item in db.iterator_cf(handle(cf::LOG)?, IteratorMode::Start) {
        let (key, value) = item?;
        if key.len() != 8 {
            return Err(invalid(None, None, "a log key is not 8 bytes"));
        }
        let position = codec::read_u64(&key);
        let at = |reason: String| invalid(None, Some(position), reason);
        if position >= head {
            return Err(at(format!("the record lies at or beyond the head {head}")));
        }
        let header = codec::decode_header(position, &value)
            .map_err(|error| at(format!("the record does not decode: {error}")))?;
        let stream_id = ids_by_name.get(header.stream).copied().ok_or_else(|| {
            at(format!(
                "the record's stream '{}' is not in the catalog",
                header.stream
            ))
        })?;
        match db.get_cf(
            stream_index,
            codec::stream_index_key(stream_id, header.revision),
        )? {
            Some(indexed) if indexed.len() == 8 && codec::read_u64(&indexed) == position => {}
            _ => {
                return Err(at(format!(
                    "the stream index of '{}' revision {} does not point to it",
                    header.stream, header.revision
                )));
            }
        }
        *present.entry(codec::segment_of(position)).or_default() += 1;
        event_count += 1;
    }

    // Every stream's visible revisions are indexed (a stream with max_age may
    // have lost old ones to a scavenge).
    // An index entry whose record is gone is a lost record (a scavenge
    // deletes both in one batch): that names the position.
    let log = handle(cf::LOG)?;
    // Index keys are ordered by (stream id, revision): each stream's visible
    // revisions must come as one unbroken run from its first visible one to
    // its last, checked as they stream by (memory: one counter per stream).
    let mut next_visible: HashMap<u64, u64> = HashMap::new();
    let mut index_entries = 0u64;
    for item in db.iterator_cf(stream_index, IteratorMode::Start) {
        let (key, value) = item?;
        if key.len() != 16 || value.len() != 8 {
            return Err(invalid(
                None,
                None,
                "a stream index entry is not 16 + 8 bytes",
            ));
        }
        let stream_id = codec::read_u64(&key[..8]);
        let revision = codec::read_u64(&key[8..]);
        let position = codec::read_u64(&value);
        let stream = streams
            .get(&stream_id)
            .map_or("?", |(name, _)| name.as_str());
        if db.get_pinned_cf(log, codec::log_key(position))?.is_none() {
            return Err(invalid(
                None,
                Some(position),
                format!("the record of '{stream}' revision {revision} is missing"),
            ));
        }
        index_entries += 1;
        let Some((_, record)) = streams.get(&stream_id) else {
            continue;
        };
        let first = record.first_visible_revision();
        if record.tombstoned || record.metadata.max_age.is_some() || revision < first {
            continue;
        }
        let expected = next_visible.entry(stream_id).or_insert(first);
        if revision != *expected {
            return Err(invalid(
                None,
                None,
                format!("stream '{stream}': visible revision {expected} is missing"),
            ));
        }
        *expected += 1;
    }
    if index_entries != event_count {
        return Err(invalid(
            None,
            None,
            format!("the stream index has {index_entries} entries for {event_count} records"),
        ));
    }
    for (stream_id, (name, record)) in &streams {
        if record.tombstoned || record.metadata.max_age.is_some() {
            continue;
        }
        let first = record.first_visible_revision();
        let reached = next_visible.get(stream_id).copied().unwrap_or(first);
        if reached < record.next_revision {
            return Err(invalid(
                None,
                None,
                format!("stream '{name}': visible revision {reached} is missing"),
            ));
        }
    }
    // Segments: every position below the head was written; what is missing was
    // removed by a scavenge. The counters are read first, so a damaged head
    // far beyond them costs nothing.
    let mut counters: BTreeMap<(u64, u8), u64> = BTreeMap::new();
    for item in db.iterator_cf(handle(cf::SEGMENTS)?, IteratorMode::Start) {
        let (key, value) = item?;
        if key.len() != 9 {
            return Err(invalid(None, None, "a segment counter key is not 9 bytes"));
        }
        let (events, _) = codec::decode_counts(&value)?;
        counters.insert((codec::read_u64(&key[..8]), key[8]), events);
    }
    for segment in 0..segment_count {
        let start = segment * codec::SEGMENT_SIZE;
        let end = (start + codec::SEGMENT_SIZE).min(head);
        let Some(written) = counters
            .get(&(segment, SegmentCounter::Written as u8))
            .copied()
        else {
            return Err(invalid(
                None,
                Some(start),
                format!("positions {start}..{end} below the head {head} were never written"),
            ));
        };
        let removed = counters
            .get(&(segment, SegmentCounter::Removed as u8))
            .copied()
            .unwrap_or(0);
        let found = present.get(&segment).copied().unwrap_or(0);
        if written != end - start || written.saturating_sub(removed) != found {
            return Err(invalid(
                None,
                Some(start),
                format!(
                    "positions {start}..{end}: {found} records present, but {written} were \
                     written and {removed} removed by scavenges (the segment's counters); \
                     records are missing from this range"
                ),
            ));
        }
    }

    Ok(DatabaseSummary {
        format_version,
        head,
        event_count,
        stream_count: streams.len() as u64,
    })
}

/// Checks the files of `dir` against the manifest: present, same size, same crc.
fn check_files(dir: &Path, manifest: &BackupManifest) -> Result<u64> {
    let mut bytes_checked = 0;
    for file in &manifest.files {
        let path = dir.join(&file.name);
        if !path.is_file() {
            return Err(invalid(Some(&file.name), None, "the file is missing"));
        }
        let (bytes, crc32) = file_crc(&path)?;
        if bytes != file.bytes {
            return Err(invalid(
                Some(&file.name),
                None,
                format!(
                    "the file has {bytes} bytes, the manifest says {}",
                    file.bytes
                ),
            ));
        }
        if crc32 != file.crc32 {
            return Err(invalid(
                Some(&file.name),
                None,
                "the file's crc32 does not match the manifest (its content changed)",
            ));
        }
        bytes_checked += bytes;
    }
    Ok(bytes_checked)
}

/// Verifies the backup in `dir` without changing it (RocksDB may add an info
/// `LOG` file, which is not part of the backup): the manifest's crc and
/// version, every file's size and crc, then the database itself: it opens,
/// has a format this build reads, every record's crc holds, and the log is
/// gap-free up to the manifest's head. The error names the first bad file or
/// position.
pub fn verify_backup(dir: impl AsRef<Path>) -> Result<VerifiedBackup> {
    let dir = dir.as_ref();
    let manifest = read_manifest(dir)?;
    if manifest.format_version > FORMAT_VERSION || manifest.format_version < OLDEST_MIGRATED_FORMAT
    {
        return Err(invalid(
            Some(MANIFEST_FILE),
            None,
            format!(
                "the backup has format version {}; this build reads {OLDEST_MIGRATED_FORMAT}..={FORMAT_VERSION}",
                manifest.format_version
            ),
        ));
    }
    let bytes_checked = check_files(dir, &manifest)?;
    let summary = check_database(dir)?;
    compare(&manifest, &summary)?;
    Ok(VerifiedBackup {
        records_checked: summary.event_count,
        bytes_checked,
        manifest,
    })
}

/// The database must be what the manifest says.
fn compare(manifest: &BackupManifest, summary: &DatabaseSummary) -> Result<()> {
    let mismatch = |what: &str, found: u64, listed: u64| {
        invalid(
            None,
            None,
            format!("the database's {what} is {found}, the manifest says {listed}"),
        )
    };
    if summary.head != manifest.head {
        return Err(mismatch("head", summary.head, manifest.head));
    }
    if summary.event_count != manifest.event_count {
        return Err(mismatch(
            "event count",
            summary.event_count,
            manifest.event_count,
        ));
    }
    if summary.format_version != manifest.format_version {
        return Err(mismatch(
            "format version",
            u64::from(summary.format_version),
            u64::from(manifest.format_version),
        ));
    }
    Ok(())
}

/// Restores the backup in `from` into the data directory `data_dir`, which
/// must not exist or be empty. Verifies the backup first ([`verify_backup`]),
/// copies its files, syncs them, and verifies the copy the same way before it
/// returns; on any failure it removes what it copied. The restored directory
/// opens with [`Store::open`] at the manifest's head. Run it with no server
/// using `data_dir`.
pub fn restore(from: impl AsRef<Path>, data_dir: impl AsRef<Path>) -> Result<VerifiedBackup> {
    let (from, data_dir) = (from.as_ref(), data_dir.as_ref());
    if data_dir.exists() {
        let mut entries = std::fs::read_dir(data_dir)
            .map_err(|error| io("cannot read the target directory", error))?;
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "the target {} is not empty; restore only into a new or empty directory",
                data_dir.display()
            )));
        }
    }
    let verified = verify_backup(from)?;
    let created = !data_dir.exists();
    std::fs::create_dir_all(data_dir)
        .map_err(|error| io("cannot create the target directory", error))?;
    let copied = copy_files(from, data_dir, &verified.manifest);
    let result = copied.and_then(|()| {
        check_files(data_dir, &verified.manifest)?;
        let summary = check_database(data_dir)?;
        compare(&verified.manifest, &summary)
    });
    if let Err(error) = result {
        remove_restored(data_dir, &verified.manifest, created);
        return Err(error);
    }
    tracing::info!(
        head = verified.manifest.head,
        events = verified.manifest.event_count,
        "backup restored"
    );
    Ok(verified)
}

fn copy_files(from: &Path, to: &Path, manifest: &BackupManifest) -> Result<()> {
    for file in &manifest.files {
        let target = to.join(&file.name);
        std::fs::copy(from.join(&file.name), &target)
            .and_then(|_| File::open(&target)?.sync_all())
            .map_err(|error| io(&format!("cannot copy {}", file.name), error))?;
    }
    sync_dir(to)
}

/// Removes a failed restore's files (and the directory if the restore made it).
fn remove_restored(data_dir: &Path, manifest: &BackupManifest, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(data_dir);
        return;
    }
    for file in &manifest.files {
        let _ = std::fs::remove_file(data_dir.join(&file.name));
    }
    // Files RocksDB's read-only open may have added.
    if let Ok(entries) = std::fs::read_dir(data_dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("LOG") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
