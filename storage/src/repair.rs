//! `Store::repair`: the salvage path for a data directory that `Store::open`
//! refuses with `Error::Damaged`.
//!
//! A normal open recovers the write-ahead log with RocksDB's
//! `TolerateCorruptedTailRecords` mode and refuses any damage but a torn tail.
//! The repair recovers with `PointInTime` instead: it replays the log up to the
//! first damaged record and drops the rest, which keeps every event before the
//! damage and leaves a consistent database (a prefix of the committed groups).
//! The events after the damage are lost; their positions are handed out again.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{Cache, DBRecoveryMode, FlushOptions};

use crate::codec::cf;
use crate::damage;
use crate::error::{Error, Result};
use crate::store::{Store, database_options, open_database, stored_head};

/// What [`Store::repair`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// The data directory.
    pub path: PathBuf,
    /// Why a normal open refused the directory ([`Error::Damaged`]); `None` when
    /// it opens as it is (then the repair changed nothing).
    pub damage: Option<Error>,
    /// The head before the damage: the highest head an intact group in the log
    /// wrote, read from the log files past the damaged records (exact when the
    /// newest group is intact). `None` when no intact group wrote one.
    pub head_before: Option<u64>,
    /// The head after the repair: every position below it is as it was.
    pub head_after: u64,
    /// Positions lost (`head_before - head_after`), when `head_before` is known.
    /// Those events are gone, and their positions will be assigned to new
    /// events; readers that saw them must start again from `head_after`.
    pub lost: Option<u64>,
    /// Where the damaged write-ahead log files were copied before the repair
    /// (a folder inside the data directory), for forensics; `None` when nothing
    /// was repaired. The store never reads it; delete it when done.
    pub backup: Option<PathBuf>,
}

impl Store {
    /// Repairs a data directory that [`Store::open`] refuses with
    /// [`Error::Damaged`]: recovers the write-ahead log up to its first damaged
    /// record (RocksDB's point-in-time recovery), keeping every event before the
    /// damage, and reports the head before and after. It writes nothing else:
    /// no event, no index entry, no counter. A directory that opens as it is
    /// is left unchanged.
    ///
    /// Run it with no other process using the directory: a held lock is
    /// [`Error::InUse`]. A directory without a database is refused, never
    /// created. Damage outside the log (an SST file) is not repaired: the
    /// recovery fails and the error says why.
    pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
        let path = path.as_ref().to_path_buf();
        if !path.join("CURRENT").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a cairn data directory (it has no RocksDB CURRENT file)",
                path.display()
            )));
        }
        let cache = Cache::new_lru_cache(8 << 20);
        let open = |mode| {
            let mut options = database_options(mode);
            options.create_if_missing(false);
            options.create_missing_column_families(false);
            open_database(&path, &options, &cache)
        };

        // As a normal open sees it (this open takes the directory's lock).
        let damage = match open(DBRecoveryMode::TolerateCorruptedTailRecords) {
            Ok(db) => {
                let head = stored_head(&db)?;
                tracing::info!(path = %path.display(), head, "repair: nothing to repair");
                return Ok(RepairReport {
                    path,
                    damage: None,
                    head_before: Some(head),
                    head_after: head,
                    lost: Some(0),
                    backup: None,
                });
            }
            Err(damage @ Error::Damaged { .. }) => damage,
            Err(other) => return Err(other),
        };
        tracing::warn!(error = %damage, "repair: the data directory is damaged");

        let head_before = damage::highest_logged_head(&path).unwrap_or_else(|error| {
            tracing::warn!(%error, "repair: cannot read the log past the damage");
            None
        });
        let backup = back_up_wal(&path)?;

        let recovered = open(DBRecoveryMode::PointInTime).map_err(|error| {
            Error::Io(format!(
                "the repair could not recover {} to the point before the damage: {error}; \
                 restore the directory from a backup",
                path.display()
            ))
        })?;
        // The recovered memtables go to SST files, so that the damaged log is
        // no longer needed and a normal open does not meet it again.
        let handles: Vec<_> = cf::ALL
            .iter()
            .filter_map(|name| recovered.cf_handle(name))
            .collect();
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        recovered.flush_cfs_opt(&handles, &flush)?;
        drop(handles);
        drop(recovered);

        // The result must open as a normal open would.
        let db = open(DBRecoveryMode::TolerateCorruptedTailRecords).map_err(|error| {
            Error::Io(format!(
                "after the repair {} still does not open: {error}; restore it from a backup",
                path.display()
            ))
        })?;
        let head_after = stored_head(&db)?;
        drop(db);
        // No intact group after the damage wrote a head: what is lost is unknown.
        let head_before = head_before.map(|before| before.max(head_after));
        let lost = head_before.map(|before| before - head_after);
        tracing::warn!(
            path = %path.display(),
            ?head_before,
            head_after,
            ?lost,
            backup = %backup.display(),
            "repair: recovered up to the damage"
        );
        Ok(RepairReport {
            path,
            damage: Some(damage),
            head_before,
            head_after,
            lost,
            backup: Some(backup),
        })
    }
}

/// Copies the write-ahead log files into a new folder `damaged-wal-<seconds>`
/// of the data directory.
fn back_up_wal(path: &Path) -> Result<PathBuf> {
    let io = |what: &str, error: std::io::Error| {
        Error::Io(format!(
            "the repair could not {what} (nothing was repaired): {error}"
        ))
    };
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut backup = path.join(format!("damaged-wal-{seconds}"));
    let mut suffix = 1;
    while backup.exists() {
        backup = path.join(format!("damaged-wal-{seconds}-{suffix}"));
        suffix += 1;
    }
    std::fs::create_dir(&backup).map_err(|error| io("create the backup folder", error))?;
    let files = damage::wal_files(path).map_err(|error| io("list the log files", error))?;
    for file in files {
        if let Some(name) = file.file_name() {
            std::fs::copy(&file, backup.join(name))
                .map_err(|error| io("back up the log files", error))?;
        }
    }
    Ok(backup)
}
