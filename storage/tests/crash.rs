//! Crash tests: a real child process appends with `Durability::Sync` and is killed
//! with SIGKILL at a random moment; the parent reopens the directory and checks
//! that every acknowledged event is there, intact, at the place it was
//! acknowledged, and that positions and revisions have no gaps; every event is
//! tagged with its batch, and the tag index after the kill finds exactly the
//! batch's events.
//!
//! The child is this same test binary, re-executed to run only `crash_child`
//! with `CAIRN_CRASH_CHILD_DIR` set (works under `cargo test` and `cargo nextest`,
//! which both run libtest binaries). Without the variable `crash_child` does
//! nothing.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_storage::{
    AppendResult, Durability, EventData, ExpectedRevision, Query, QueryItem, ReadSource,
    RecordedEvent, Store, StoreOptions,
};
use cairn_testkit::read_all;
use uuid::Uuid;

const CHILD_DIR_ENV: &str = "CAIRN_CRASH_CHILD_DIR";
const WRITERS: usize = 4;
const SHARED_STREAM: &str = "shared";
const EVENT_TYPE: &str = "Written";
/// The kill comes at a random moment in this window after the child started
/// (and never before its first acknowledgement).
const KILL_WINDOW_MS: (u64, u64) = (300, 1500);

fn sync_options() -> StoreOptions {
    StoreOptions {
        durability: Durability::Sync,
        ..StoreOptions::default()
    }
}

/// A random number below `bound`, without a dependency for it.
fn random_below(bound: u64) -> u64 {
    (Uuid::new_v4().as_u128() % u128::from(bound)) as u64
}

// ---------------------------------------------------------------------------
// The child.

/// The payload of event `index` of a batch of `size`: self-describing, so the
/// parent can check every stored byte without knowing what the child sent.
fn payload(id: Uuid, batch: Uuid, index: usize, size: usize) -> Bytes {
    let pad = id.simple().to_string().repeat(8);
    Bytes::from(format!(
        r#"{{"id":"{id}","batch":"{batch}","index":{index},"size":{size},"pad":"{pad}"}}"#
    ))
}

fn batch(size: usize) -> Vec<EventData> {
    let batch = Uuid::new_v4();
    (0..size)
        .map(|index| {
            let id = Uuid::new_v4();
            EventData {
                id,
                event_type: EVENT_TYPE.to_owned(),
                content_type: "application/json".to_owned(),
                metadata: Bytes::from(format!("m:{id}")),
                data: payload(id, batch, index, size),
                // The tag index must survive the kill like the records.
                tags: vec![format!("batch:{batch}")],
            }
        })
        .collect()
}

/// Prints one `ACK <stream> <revision> <position> <event-id>` line per event of an
/// acknowledged append, flushed before the next append starts.
fn acknowledge(stream: &str, events: &[EventData], result: &AppendResult) {
    let (first, last) = result
        .positions
        .unwrap_or_else(|| fail(&format!("{stream}: no positions in {result:?}")));
    let last_revision = result
        .current
        .revision()
        .unwrap_or_else(|| fail(&format!("{stream}: {result:?}")));
    if result.idempotent_replay || last - first + 1 != events.len() as u64 {
        fail(&format!(
            "{stream}: unexpected result {result:?} for {} events",
            events.len()
        ));
    }
    let first_revision = last_revision + 1 - events.len() as u64;
    let mut lines = String::new();
    for (index, event) in events.iter().enumerate() {
        let offset = index as u64;
        lines.push_str(&format!(
            "ACK {stream} {} {} {}\n",
            first_revision + offset,
            first + offset,
            event.id
        ));
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // The parent is gone; nothing left to report to.
        std::process::exit(0);
    }
}

/// Any failure in the child ends it at once, so the parent sees an early exit
/// instead of a child that keeps running with a dead writer.
fn fail(message: &str) -> ! {
    eprintln!("crash child: {message}");
    std::process::exit(3);
}

fn write_forever(store: &Store, writer: usize) -> ! {
    let own = format!("own-{writer}");
    // Continue where the previous (killed) child stopped, acknowledged or not.
    let mut next_revision = store
        .stream_info(&own)
        .and_then(|info| info.last_revision)
        .map_or(0, |last| last + 1);
    let mut round = 0u64;
    loop {
        round += 1;
        let size = if round.is_multiple_of(4) { 5 } else { 1 };
        let events = batch(size);
        let expected = match next_revision {
            0 => ExpectedRevision::NoStream,
            next => ExpectedRevision::Exact(next - 1),
        };
        match store.append(own.as_str(), expected, events.clone()).wait() {
            Ok(result) => acknowledge(&own, &events, &result),
            Err(error) => fail(&format!("append to {own} expecting {expected:?}: {error}")),
        }
        next_revision += size as u64;

        let events = batch(1);
        match store
            .append(SHARED_STREAM, ExpectedRevision::Any, events.clone())
            .wait()
        {
            Ok(result) => acknowledge(SHARED_STREAM, &events, &result),
            Err(error) => fail(&format!("append to {SHARED_STREAM}: {error}")),
        }
    }
}

/// The child process: appends until killed. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    std::panic::set_hook(Box::new(|info| fail(&info.to_string())));
    let store =
        Store::open(&dir, sync_options()).unwrap_or_else(|error| fail(&format!("open: {error}")));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store.clone();
            std::thread::spawn(move || {
                write_forever(&store, writer);
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
    fail("a writer stopped");
}

// ---------------------------------------------------------------------------
// The parent.

/// An acknowledgement read from the child's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    stream: String,
    revision: u64,
    position: u64,
    id: Uuid,
}

fn parse_ack(line: &str) -> Option<Ack> {
    // Only complete lines count: a line cut by the kill is not an acknowledgement.
    let line = line.strip_suffix('\n')?;
    let mut fields = line.split(' ');
    if fields.next()? != "ACK" {
        return None;
    }
    let ack = Ack {
        stream: fields.next()?.to_owned(),
        revision: fields.next()?.parse().ok()?,
        position: fields.next()?.parse().ok()?,
        id: Uuid::parse_str(fields.next()?).ok()?,
    };
    fields.next().is_none().then_some(ack)
}

/// Kills the child if the parent fails before it does.
struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one child on `dir`, kills it with SIGKILL at a random moment after its
/// first acknowledgement, and returns what it acknowledged.
fn run_child_and_kill(dir: &Path) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current test binary");
    let started = Instant::now();
    let kill_at = started
        + Duration::from_millis(
            KILL_WINDOW_MS.0 + random_below(KILL_WINDOW_MS.1 - KILL_WINDOW_MS.0),
        );
    let mut child = Killer(
        Command::new(exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut stderr = child.0.stderr.take().expect("child stderr");
    let (first_ack, first_ack_seen) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut acks = Vec::new();
        let mut line = String::new();
        while stdout.read_line(&mut line).is_ok_and(|read| read > 0) {
            if let Some(ack) = parse_ack(&line) {
                if acks.is_empty() {
                    let _ = first_ack.send(());
                }
                acks.push(ack);
            }
            line.clear();
        }
        acks
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let first = first_ack_seen.recv_timeout(Duration::from_secs(120));
    let exited = child.0.try_wait().expect("try_wait");
    if first.is_err() || exited.is_some() {
        drop(child);
        panic!(
            "the child acknowledged nothing or exited on its own ({exited:?}); stderr:\n{}",
            errors.join().unwrap_or_default()
        );
    }
    // The random moment: not a wait for anything to settle.
    std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
    if let Some(status) = child.0.try_wait().expect("try_wait") {
        panic!(
            "the child exited on its own ({status}); stderr:\n{}",
            errors.join().unwrap_or_default()
        );
    }
    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    let acks = reader.join().expect("stdout reader");
    let stderr = errors.join().unwrap_or_default();
    eprintln!(
        "child killed after {:?} with {} acknowledged events{}",
        started.elapsed(),
        acks.len(),
        if stderr.is_empty() {
            String::new()
        } else {
            format!("; stderr:\n{stderr}")
        }
    );
    assert!(!acks.is_empty());
    acks
}

/// The fields of a payload, checked against the event that carries it.
fn check_payload(event: &RecordedEvent) -> (Uuid, usize, usize) {
    let value: serde_json::Value = serde_json::from_slice(&event.data).unwrap_or_else(|error| {
        panic!(
            "payload at {} is not JSON ({error}): {:?}",
            event.position, event.data
        )
    });
    let field = |name: &str| {
        value
            .get(name)
            .unwrap_or_else(|| panic!("payload at {} lacks {name}", event.position))
    };
    let text = |name: &str| {
        field(name)
            .as_str()
            .unwrap_or_else(|| panic!("{name} at {}", event.position))
            .to_owned()
    };
    let number = |name: &str| {
        field(name)
            .as_u64()
            .unwrap_or_else(|| panic!("{name} at {}", event.position)) as usize
    };
    assert_eq!(
        text("id"),
        event.id.to_string(),
        "payload id at {}",
        event.position
    );
    assert_eq!(
        text("pad"),
        event.id.simple().to_string().repeat(8),
        "payload pad at {}",
        event.position
    );
    assert_eq!(
        event.metadata,
        Bytes::from(format!("m:{}", event.id)),
        "metadata at {}",
        event.position
    );
    assert_eq!(event.event_type, EVENT_TYPE);
    assert_eq!(event.content_type, "application/json");
    let batch = Uuid::parse_str(&text("batch")).expect("batch id");
    (batch, number("index"), number("size"))
}

/// Reopens `dir` and checks the store against everything acknowledged so far.
fn verify(dir: &Path, acks: &[Ack]) {
    let store = Store::open(dir, sync_options()).expect("reopen after the kill");
    let head = store.info().head;
    let all = read_all(&store, ReadSource::All);
    let positions: Vec<u64> = all.iter().map(|event| event.position).collect();
    assert_eq!(
        positions,
        (0..head).collect::<Vec<_>>(),
        "$all is gap-free from 0 to the head"
    );

    // Every acknowledged event, where it was acknowledged.
    for ack in acks {
        let event = all
            .get(ack.position as usize)
            .unwrap_or_else(|| panic!("acknowledged {ack:?} is lost: the head is {head}"));
        assert_eq!(
            (event.stream.as_str(), event.revision, event.id),
            (ack.stream.as_str(), ack.revision, ack.id),
            "acknowledged event at position {}",
            ack.position
        );
    }
    let ids: HashSet<Uuid> = all.iter().map(|event| event.id).collect();
    assert_eq!(ids.len(), all.len(), "an event id is stored twice");

    // Every stored event intact; batches whole (a group is all there or not at all).
    let mut batches: HashMap<Uuid, Vec<(usize, usize, &RecordedEvent)>> = HashMap::new();
    for event in &all {
        let (batch, index, size) = check_payload(event);
        batches.entry(batch).or_default().push((index, size, event));
    }
    for (batch, members) in &batches {
        // The tag index agrees with the records: a DCB query of the batch's
        // tag finds exactly its events.
        let tag = format!("batch:{batch}");
        let tagged = read_all(
            &store,
            ReadSource::Query(Query::of([QueryItem::tags([tag.clone()])])),
        );
        assert_eq!(
            tagged
                .iter()
                .map(|event| event.position)
                .collect::<Vec<_>>(),
            members
                .iter()
                .map(|(_, _, event)| event.position)
                .collect::<Vec<_>>(),
            "the tag index of batch {batch}"
        );
        assert!(
            members
                .iter()
                .all(|(_, _, event)| event.tags == [tag.clone()])
        );
        let size = members[0].1;
        assert_eq!(members.len(), size, "batch {batch} is torn: {members:?}");
        for (offset, (index, _, event)) in members.iter().enumerate() {
            assert_eq!(*index, offset, "batch {batch} out of order");
            assert_eq!(
                event.position,
                members[0].2.position + offset as u64,
                "batch {batch} not contiguous"
            );
            assert_eq!(
                event.revision,
                members[0].2.revision + offset as u64,
                "batch {batch} revisions"
            );
        }
    }

    // Every stream gap-free, and the same as its events in $all.
    let streams = store.list_streams("", None, 100).expect("list_streams");
    let mut seen = 0;
    for info in &streams {
        let events = read_all(&store, ReadSource::Stream(info.name.clone()));
        let revisions: Vec<u64> = events.iter().map(|event| event.revision).collect();
        assert_eq!(
            revisions,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "{} is gap-free",
            info.name
        );
        assert_eq!(
            info.last_revision,
            (events.len() as u64).checked_sub(1),
            "{} head",
            info.name
        );
        let in_all: Vec<&RecordedEvent> = all
            .iter()
            .filter(|event| event.stream == info.name)
            .collect();
        assert_eq!(
            events.iter().collect::<Vec<_>>(),
            in_all,
            "{} in $all",
            info.name
        );
        seen += events.len();
    }
    assert_eq!(seen, all.len(), "every event belongs to a listed stream");
    assert_eq!(
        read_all(&store, ReadSource::Category("own".into())).len(),
        all.len() - streams_len(&all, SHARED_STREAM)
    );
    eprintln!(
        "verified: head {head}, {} acknowledged, {} streams",
        acks.len(),
        streams.len()
    );
}

fn streams_len(all: &[RecordedEvent], stream: &str) -> usize {
    all.iter().filter(|event| event.stream == stream).count()
}

/// Checks that acknowledgements of different rounds never share a position or id:
/// a restart never reuses what was acknowledged before it.
fn check_unique(acks: &[Ack]) {
    let positions: HashSet<u64> = acks.iter().map(|ack| ack.position).collect();
    assert_eq!(
        positions.len(),
        acks.len(),
        "a position was acknowledged twice"
    );
    let ids: HashSet<Uuid> = acks.iter().map(|ack| ack.id).collect();
    assert_eq!(ids.len(), acks.len(), "an id was acknowledged twice");
    let slots: HashSet<(&str, u64)> = acks
        .iter()
        .map(|ack| (ack.stream.as_str(), ack.revision))
        .collect();
    assert_eq!(slots.len(), acks.len(), "a revision was acknowledged twice");
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acks = Vec::new();
    for round in 1..=3 {
        eprintln!("round {round}");
        acks.extend(run_child_and_kill(dir.path()));
        check_unique(&acks);
        verify(dir.path(), &acks);
    }
}

/// Bytes per block of a RocksDB write-ahead log.
const WAL_BLOCK: usize = 32 * 1024;

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

#[test]
fn garbage_after_the_wal_tail_is_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acks = Vec::new();
    for round in 1..=2 {
        acks.extend(run_child_and_kill(dir.path()));
        check_unique(&acks);
        let wal = newest_wal(dir.path());
        // The noise stays inside the log's current 32 KiB block: after a zeroed
        // header RocksDB skips the rest of the block, but noise in the next
        // block can look like a complete record with a wrong checksum, which no
        // reader can tell from damage, so the store refuses it (FORMAT.md,
        // "Recovery").
        let length = std::fs::metadata(&wal).expect("WAL metadata").len() as usize;
        let left_in_block = WAL_BLOCK - length % WAL_BLOCK;
        let noise = 4096.min(left_in_block.saturating_sub(7));
        let garbage: Vec<u8> = (0..256)
            .flat_map(|_| Uuid::new_v4().into_bytes())
            .take(noise)
            .collect();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&wal)
            .expect("open the WAL");
        // A torn record header (zeros), then noise: what a crash mid-write can leave.
        file.write_all(&[0u8; 7]).expect("append zeros");
        file.write_all(&garbage).expect("append garbage");
        file.sync_all().expect("sync the WAL");
        eprintln!(
            "round {round}: appended {} bytes to {}",
            garbage.len() + 7,
            wal.display()
        );
        verify(dir.path(), &acks);
    }
}
