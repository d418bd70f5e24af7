//! Raft snapshots of the store on disk (`server/CLUSTER.md`, "No unbounded
//! second copy: log compaction"): how a node builds one, keeps its newest,
//! receives one from the leader and installs it, crash-safely.
//!
//! A snapshot is a backup of the store (`Store::backup`: a RocksDB
//! checkpoint, hard links on the same filesystem, and its manifest with every
//! file's size and crc32) packed into one tar file, `snapshot.tar`, beside the
//! openraft [`SnapshotMeta`] it stands for, `meta` (crc-framed). The meta is
//! read from the checkpoint itself (the applied raft state rides in the
//! store's database), never from the live store, so it always matches the
//! data even while entries keep applying. openraft's chunked transport sends
//! the tar file as it is.
//!
//! Layout under `root` (`<data>/raft/snapshots`):
//! - `snapshot-<index>-<term>-<id>/{snapshot.tar, meta}`: a complete
//!   snapshot (its `meta` is written last); only the newest is kept. A sender
//!   still reading an older, deleted one keeps its open file.
//! - `building-<id>/`: a snapshot being built; removed at the next open.
//! - `incoming.tar`: the chunks of a snapshot being received from the leader.
//! - `install/{snapshot.tar, meta}`: a received snapshot being installed.
//!   It exists from before the store's contents are touched until the install
//!   finished, so a node that crashed mid-install finishes it at its next
//!   start ([`Snapshots::resume_install`]) before raft reads the store.
//!
//! Installing verifies the snapshot the way a restore does (`verify_backup`:
//! manifest, crc of every file, every record, a gap-free log) and checks that
//! the raft state inside it is the one the meta names; a damaged snapshot is
//! refused and reported, never installed.
//!
//! This module owns the files under `root` and nothing else: the store's
//! contents change only through `Store::install_snapshot`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_storage::Store;
use openraft::{RaftTypeConfig, SnapshotMeta};

use crate::state_machine::AppliedState;
use crate::types::TypeConfig;

/// The snapshot meta of Cairn's raft.
pub type Meta = SnapshotMeta<u64, <TypeConfig as RaftTypeConfig>::Node>;

/// The file name of a snapshot's packed checkpoint.
const ARCHIVE: &str = "snapshot.tar";
/// The file name of a snapshot's meta.
const META: &str = "meta";
/// The directory name of the checkpoint inside the archive.
const DATABASE: &str = "db";
/// The directory of a snapshot being installed.
const INSTALL: &str = "install";
/// The file chunks from the leader are written to.
const INCOMING: &str = "incoming.tar";
/// The frame key of the meta file's crc.
const META_KEY: &[u8] = b"snapshot_meta";
/// Most entries an archive may hold: a checkpoint lists thousands of files.
const MAX_ARCHIVE_ENTRIES: usize = 1_000_000;

/// Why a snapshot could not be built, read or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file of the snapshot could not be read or written.
    #[error("snapshot files: {0}")]
    Io(String),
    /// The store refused (backup, verification or install).
    #[error("snapshot: {0}")]
    Store(#[from] cairn_storage::Error),
    /// The snapshot is damaged or does not match its meta.
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    /// Nothing was applied yet, so there is nothing to snapshot.
    #[error("nothing is applied yet; there is nothing to snapshot")]
    Empty,
}

fn io(what: &str, error: std::io::Error) -> SnapshotError {
    SnapshotError::Io(format!("{what}: {error}"))
}

/// The snapshots of one node, under `root`.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

impl Snapshots {
    /// The snapshots under `root`, created if missing. Removes what an
    /// interrupted build or receive left behind (an interrupted install is
    /// kept: see [`Snapshots::resume_install`]).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, SnapshotError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| io("cannot create the snapshot directory", e))?;
        for entry in std::fs::read_dir(&root).map_err(|e| io("cannot list snapshots", e))? {
            let entry = entry.map_err(|e| io("cannot list snapshots", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("building-") {
                remove_dir(&entry.path())?;
            } else if name == INCOMING {
                std::fs::remove_file(entry.path())
                    .map_err(|e| io("cannot remove a partly received snapshot", e))?;
            }
        }
        Ok(Self { root })
    }

    /// Builds a snapshot of `store` as it is now and makes it the current
    /// one. Returns its meta and the archive to send. Blocking: run it off
    /// the async runtime.
    pub fn build(&self, store: &Store) -> Result<(Meta, PathBuf), SnapshotError> {
        let building = self
            .root
            .join(format!("building-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&building).map_err(|e| io("cannot start a snapshot", e))?;
        let built = self.build_in(store, &building);
        if built.is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        built
    }

    fn build_in(&self, store: &Store, building: &Path) -> Result<(Meta, PathBuf), SnapshotError> {
        let database = building.join(DATABASE);
        store.backup(&database)?;
        let state = applied_state_in(&database)?;
        let Some(last_log_id) = state.last_applied else {
            return Err(SnapshotError::Empty);
        };
        let meta = Meta {
            last_log_id: Some(last_log_id),
            last_membership: state.membership,
            snapshot_id: format!(
                "{}-{}-{}",
                last_log_id.leader_id.term,
                last_log_id.index,
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        };
        pack(&database, &building.join(ARCHIVE))?;
        remove_dir(&database)?;
        write_meta(&building.join(META), &meta)?;
        let dir = self.promote(building, &meta)?;
        tracing::info!(snapshot = %meta.snapshot_id, "raft snapshot built");
        Ok((meta, dir.join(ARCHIVE)))
    }

    /// The newest complete snapshot: its meta and its archive.
    pub fn current(&self) -> Result<Option<(Meta, PathBuf)>, SnapshotError> {
        let Some(dir) = self.newest()? else {
            return Ok(None);
        };
        let meta = read_meta(&dir.join(META))?;
        Ok(Some((meta, dir.join(ARCHIVE))))
    }

    /// Where the chunks of a snapshot from the leader are written.
    pub fn incoming(&self) -> PathBuf {
        self.root.join(INCOMING)
    }

    /// Installs the received snapshot (`incoming`, complete and synced) into
    /// `store`: keeps it as `install/` first, so a crash from here on ends in
    /// [`Snapshots::resume_install`], then verifies, installs and keeps it as
    /// this node's current snapshot. Blocking.
    pub fn install(&self, store: &Store, meta: &Meta) -> Result<(), SnapshotError> {
        let pending = self.root.join(INSTALL);
        if pending.exists() {
            remove_dir(&pending)?;
        }
        std::fs::create_dir(&pending).map_err(|e| io("cannot start an install", e))?;
        std::fs::rename(self.incoming(), pending.join(ARCHIVE))
            .map_err(|e| io("cannot keep the received snapshot", e))?;
        write_meta(&pending.join(META), meta)?;
        sync_dir(&pending)?;
        sync_dir(&self.root)?;
        self.finish_install(store, &pending, meta)
    }

    /// Finishes an install a crash interrupted, if there is one. Call before
    /// raft reads the store (`ClusterNode::start`). An install whose meta
    /// was never written had not touched the store and is dropped.
    pub fn resume_install(&self, store: &Store) -> Result<(), SnapshotError> {
        let pending = self.root.join(INSTALL);
        if !pending.exists() {
            return Ok(());
        }
        if !pending.join(META).exists() {
            return remove_dir(&pending);
        }
        let meta = read_meta(&pending.join(META))?;
        tracing::warn!(snapshot = %meta.snapshot_id, "finishing a raft snapshot install a stop interrupted");
        self.finish_install(store, &pending, &meta)
    }

    fn finish_install(
        &self,
        store: &Store,
        pending: &Path,
        meta: &Meta,
    ) -> Result<(), SnapshotError> {
        let database = pending.join(DATABASE);
        if database.exists() {
            remove_dir(&database)?;
        }
        unpack(&pending.join(ARCHIVE), pending)?;
        let verified = cairn_storage::verify_backup(&database)?;
        let state = applied_state_in(&database)?;
        if state.last_applied != meta.last_log_id {
            return Err(SnapshotError::Damaged(format!(
                "its meta names log id {:?} but its database holds {:?}",
                meta.last_log_id, state.last_applied
            )));
        }
        let head = store.install_snapshot(&database)?;
        remove_dir(&database)?;
        self.promote(pending, meta)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            head,
            records = verified.records_checked,
            "raft snapshot installed"
        );
        Ok(())
    }

    /// Moves a complete snapshot directory into place as the current one and
    /// removes the older ones.
    fn promote(&self, from: &Path, meta: &Meta) -> Result<PathBuf, SnapshotError> {
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let dir = self.root.join(format!(
            "snapshot-{index:020}-{}",
            meta.snapshot_id.replace(['/', '.'], "_")
        ));
        if dir.exists() {
            remove_dir(&dir)?;
        }
        std::fs::rename(from, &dir).map_err(|e| io("cannot keep the snapshot", e))?;
        sync_dir(&self.root)?;
        for older in self.complete()? {
            if older != dir {
                remove_dir(&older)?;
            }
        }
        Ok(dir)
    }

    /// Every complete snapshot directory, oldest first.
    fn complete(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(|e| io("cannot list snapshots", e))? {
            let entry = entry.map_err(|e| io("cannot list snapshots", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("snapshot-") && entry.path().join(META).exists() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }

    fn newest(&self) -> Result<Option<PathBuf>, SnapshotError> {
        Ok(self.complete()?.pop())
    }
}

/// The applied raft state inside a snapshot's database.
fn applied_state_in(database: &Path) -> Result<AppliedState, SnapshotError> {
    match cairn_storage::backup_replicated_state(database)? {
        None => Err(SnapshotError::Empty),
        Some(bytes) => AppliedState::decode(&bytes).map_err(SnapshotError::Damaged),
    }
}

/// Packs the checkpoint in `database` into the tar file `archive`, synced.
fn pack(database: &Path, archive: &Path) -> Result<(), SnapshotError> {
    let file = File::create(archive).map_err(|e| io("cannot create the snapshot archive", e))?;
    let mut builder = tar::Builder::new(file);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(DATABASE, database)
        .map_err(|e| io("cannot pack the snapshot", e))?;
    let file = builder
        .into_inner()
        .map_err(|e| io("cannot pack the snapshot", e))?;
    file.sync_all()
        .map_err(|e| io("cannot sync the snapshot archive", e))
}

/// Unpacks a snapshot archive into `into` (which then holds `db/`). Only
/// the checkpoint's directory and its regular files are accepted; tar's
/// `unpack_in` refuses any path that would leave `into`.
fn unpack(archive: &Path, into: &Path) -> Result<(), SnapshotError> {
    let file = File::open(archive).map_err(|e| io("cannot open the snapshot archive", e))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| SnapshotError::Damaged(format!("the archive does not read: {e}")))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ARCHIVE_ENTRIES {
            return Err(SnapshotError::Damaged(format!(
                "the archive holds more than {MAX_ARCHIVE_ENTRIES} entries"
            )));
        }
        let mut entry = entry
            .map_err(|e| SnapshotError::Damaged(format!("an archive entry does not read: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| SnapshotError::Damaged(format!("an archive path does not read: {e}")))?
            .into_owned();
        let kind = entry.header().entry_type();
        let in_database = path
            .components()
            .next()
            .is_some_and(|first| first.as_os_str() == DATABASE)
            && path.components().count() <= 2;
        if !in_database || !(kind.is_file() || kind.is_dir()) {
            return Err(SnapshotError::Damaged(format!(
                "the archive holds an unexpected entry {path:?}"
            )));
        }
        let unpacked = entry
            .unpack_in(into)
            .map_err(|e| io("cannot unpack the snapshot", e))?;
        if !unpacked {
            return Err(SnapshotError::Damaged(format!(
                "the archive entry {path:?} points outside the snapshot"
            )));
        }
    }
    Ok(())
}

fn write_meta(path: &Path, meta: &Meta) -> Result<(), SnapshotError> {
    let framed = crate::log_store::frame(META_KEY, "snapshot meta", meta)
        .map_err(|e| SnapshotError::Io(e.to_string()))?;
    let mut file = File::create(path).map_err(|e| io("cannot write the snapshot meta", e))?;
    file.write_all(&framed)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cannot write the snapshot meta", e))
}

fn read_meta(path: &Path) -> Result<Meta, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|e| io("cannot read the snapshot meta", e))?;
    crate::log_store::unframe(META_KEY, &bytes)
        .map_err(|reason| SnapshotError::Damaged(format!("its meta: {reason}")))
}

fn remove_dir(path: &Path) -> Result<(), SnapshotError> {
    std::fs::remove_dir_all(path).map_err(|e| io("cannot remove an old snapshot", e))
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| io("cannot sync the snapshot directory", e))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use cairn_storage::{
        Error as StoreError, EventData, ExpectedRevision, GroupEffect, Proposed, ReadRequest,
        ReadSource, RecordedEvent, Replicator, SealedGroup, StoreOptions,
    };
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    /// Applies each group to its own store with an applied state naming
    /// entry 1, 2, ... of term 1, as the state machine would, and keeps a
    /// copy of each (for tests that hand them to another node's state
    /// machine).
    pub(crate) struct Apply {
        store: std::sync::OnceLock<Store>,
        entries: AtomicU64,
        groups: std::sync::Mutex<Vec<SealedGroup>>,
    }

    impl Apply {
        /// The replicator of `store`, attached.
        pub(crate) fn attached(store: &Store) -> Arc<Self> {
            let apply = Arc::new(Self {
                store: std::sync::OnceLock::new(),
                entries: AtomicU64::new(0),
                groups: std::sync::Mutex::new(Vec::new()),
            });
            apply.store.set(store.clone()).expect("once");
            store.attach_replicator(Arc::clone(&apply) as Arc<dyn Replicator>);
            apply
        }

        /// Every group applied so far, in order.
        pub(crate) fn groups(&self) -> Vec<SealedGroup> {
            self.groups.lock().expect("groups").clone()
        }

        fn apply(&self, group: &SealedGroup, effect: GroupEffect) -> Result<(), StoreError> {
            let index = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
            let state = AppliedState {
                last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
                ..AppliedState::default()
            };
            let framed = state
                .encode()
                .map_err(|error| StoreError::Io(error.to_string()))?;
            let store = self.store.get().expect("store");
            store.apply_replicated(group, Some(effect), &framed)
        }
    }

    impl Replicator for Apply {
        fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed {
            let applied = self.apply(&group, effect);
            self.groups.lock().expect("groups").push(group);
            Proposed::done(applied)
        }
    }

    /// A clustered store in `dir` (shared with the state machine's tests).
    pub(crate) fn clustered(dir: &Path) -> Store {
        Store::open(
            dir,
            StoreOptions {
                clustered: true,
                ..StoreOptions::default()
            },
        )
        .expect("open")
    }

    /// A leading store with `events` appended.
    fn leader_with(dir: &Path, events: u64) -> Store {
        let store = clustered(dir);
        Apply::attached(&store);
        store.lead(1).wait().expect("lead");
        for n in 0..events {
            store
                .append(
                    format!("order-{}", n % 4),
                    ExpectedRevision::Any,
                    vec![EventData::json("Placed", format!("{{\"n\":{n}}}"))],
                )
                .wait()
                .expect("append");
        }
        store
    }

    fn everything(store: &Store) -> Vec<RecordedEvent> {
        store
            .read(&ReadRequest::forwards(ReadSource::All, 100_000))
            .expect("read")
            .events
    }

    #[test]
    fn a_built_snapshot_installs_on_another_node_and_becomes_its_current_one() {
        let dirs = tempfile::tempdir().expect("tempdir");
        let leader = leader_with(&dirs.path().join("leader"), 30);
        let leader_snapshots = Snapshots::open(dirs.path().join("leader-snapshots")).expect("open");
        let (meta, archive) = leader_snapshots.build(&leader).expect("build");
        assert_eq!(meta.last_log_id.map(|id| id.index), Some(30));
        let (current, current_archive) = leader_snapshots.current().expect("current").expect("one");
        assert_eq!((current, &current_archive), (meta.clone(), &archive));
        // A second build replaces the first.
        let (second, _) = leader_snapshots.build(&leader).expect("build again");
        assert_ne!(second.snapshot_id, meta.snapshot_id);
        assert_eq!(leader_snapshots.complete().expect("list").len(), 1);
        let (meta, archive) = (
            second,
            leader_snapshots.current().expect("current").expect("one").1,
        );

        let follower = clustered(&dirs.path().join("follower"));
        let follower_snapshots =
            Snapshots::open(dirs.path().join("follower-snapshots")).expect("open");
        std::fs::copy(&archive, follower_snapshots.incoming()).expect("receive");
        follower_snapshots
            .install(&follower, &meta)
            .expect("install");
        assert_eq!(everything(&follower), everything(&leader));
        assert_eq!(follower.applied_head(), 30);
        assert_eq!(
            follower.replicated_state().expect("state"),
            leader.replicated_state().expect("state")
        );
        let (installed, _) = follower_snapshots
            .current()
            .expect("current")
            .expect("kept");
        assert_eq!(installed, meta);
        assert!(!follower_snapshots.root.join(INSTALL).exists());
    }

    #[test]
    fn an_install_a_crash_interrupted_is_finished_at_the_next_start() {
        let dirs = tempfile::tempdir().expect("tempdir");
        let leader = leader_with(&dirs.path().join("leader"), 12);
        let (meta, archive) = Snapshots::open(dirs.path().join("leader-snapshots"))
            .expect("open")
            .build(&leader)
            .expect("build");

        // The state `install` leaves before it touches the store.
        let follower = clustered(&dirs.path().join("follower"));
        let root = dirs.path().join("follower-snapshots");
        std::fs::create_dir_all(root.join(INSTALL)).expect("mkdir");
        std::fs::copy(&archive, root.join(INSTALL).join(ARCHIVE)).expect("copy");
        write_meta(&root.join(INSTALL).join(META), &meta).expect("meta");
        let snapshots = Snapshots::open(&root).expect("open keeps the install");
        assert!(root.join(INSTALL).exists());
        snapshots.resume_install(&follower).expect("resume");
        assert_eq!(everything(&follower), everything(&leader));
        assert!(!root.join(INSTALL).exists());
        // Nothing pending: resuming again does nothing.
        snapshots
            .resume_install(&follower)
            .expect("nothing to resume");
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_the_store_is_left_as_it_was() {
        let dirs = tempfile::tempdir().expect("tempdir");
        let leader = leader_with(&dirs.path().join("leader"), 20);
        let (meta, archive) = Snapshots::open(dirs.path().join("leader-snapshots"))
            .expect("open")
            .build(&leader)
            .expect("build");
        let follower = leader_with(&dirs.path().join("follower"), 3);
        follower.follow(None, None);
        let before = everything(&follower);
        let snapshots = Snapshots::open(dirs.path().join("follower-snapshots")).expect("open");

        // Flip one byte inside the archive's largest file.
        let mut bytes = std::fs::read(&archive).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(snapshots.incoming(), &bytes).expect("receive");
        let refused = snapshots.install(&follower, &meta).expect_err("damaged");
        assert!(
            matches!(refused, SnapshotError::Store(_) | SnapshotError::Damaged(_)),
            "{refused}"
        );
        assert_eq!(everything(&follower), before);

        // A meta that names another log id than the database holds.
        std::fs::copy(&archive, snapshots.incoming()).expect("receive");
        let mut wrong = meta.clone();
        wrong.last_log_id = Some(LogId::new(CommittedLeaderId::new(1, 1), 7));
        let refused = snapshots.install(&follower, &wrong).expect_err("mismatch");
        assert!(matches!(refused, SnapshotError::Damaged(_)), "{refused}");
        assert_eq!(everything(&follower), before);
    }
}
