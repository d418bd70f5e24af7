//! What a workload reads about the server it measures from outside the
//! server: its resident memory (`VmRSS` of `/proc/<pid>/status`), the size of
//! its data directory (the file sizes under it, summed), the free space of that
//! directory's filesystem, and from them the bytes on disk per event; and how
//! those figures are printed. `many-streams` samples them as the store grows,
//! `scale` at its checkpoints.
//!
//! A started server's pid and data directory come from its [`Session`]; with
//! `--addr` from `--server-pid` and `--data-dir`. What is not known is not
//! measured: the figure is `None` and printed `-`.
//!
//! Not in `server` (which runs the child process) nor `disk` (the disk's
//! fdatasync rate): these read any process and any directory, started here or
//! not.

use std::path::{Path, PathBuf};

use crate::server::Session;

/// Where the server's memory, size and free space are read.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// The server's process id, if known.
    pub(crate) pid: Option<u32>,
    /// The server's data directory, if known.
    pub(crate) data: Option<PathBuf>,
}

impl Probe {
    /// The probe of `session`'s server: the started server's pid and data
    /// directory, else `server_pid` and `data_dir` (`--server-pid` and
    /// `--data-dir`, given with `--addr`). Says on stderr what is unknown and
    /// what the run then goes without (`without_pid`, `without_data`).
    pub(crate) fn of(
        session: &Session,
        (server_pid, data_dir): (Option<u32>, Option<&Path>),
        (without_pid, without_data): (&str, &str),
    ) -> Self {
        let probe = Self {
            pid: session.server_pid().or(server_pid),
            data: session
                .data_dir()
                .or_else(|| data_dir.map(Path::to_path_buf)),
        };
        if probe.pid.is_none() {
            eprintln!(
                "note: the server's pid is unknown (--addr without --server-pid): {without_pid}"
            );
        }
        if probe.data.is_none() {
            eprintln!(
                "note: the data directory is unknown (--addr without --data-dir): {without_data}"
            );
        }
        probe
    }

    /// The server's memory and disk use now.
    pub(crate) fn usage(&self) -> Usage {
        Usage {
            rss: self.pid.and_then(rss_bytes),
            disk: self.disk(),
        }
    }

    /// The data directory's size now.
    pub(crate) fn disk(&self) -> Option<u64> {
        self.data.as_deref().and_then(|dir| dir_bytes(dir).ok())
    }

    /// The free space of the data directory's filesystem now.
    pub(crate) fn free(&self) -> Option<u64> {
        self.data.as_deref().and_then(free_bytes)
    }
}

/// The server's memory and disk use at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// The server's resident memory, bytes.
    pub(crate) rss: Option<u64>,
    /// The data directory's file sizes, summed.
    pub(crate) disk: Option<u64>,
}

impl Usage {
    /// Bytes on disk per event when the store holds `events` events (none
    /// for an empty store).
    pub(crate) fn bytes_per_event(self, events: u64) -> Option<f64> {
        self.disk
            .filter(|_| events > 0)
            .map(|disk| disk as f64 / events as f64)
    }
}

/// `VmRSS` of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The sizes of the files under `dir`, summed. Files that vanish while it is
/// walked (RocksDB deletes obsolete files) count as nothing.
pub(crate) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            total += dir_bytes(&entry.path()).unwrap_or(0);
        } else {
            total += metadata.len();
        }
    }
    Ok(total)
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `MiB` with one decimal, or `-`.
pub(crate) fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |bytes| format!("{:.1}", bytes as f64 / f64::from(1 << 20)),
    )
}

/// Bytes per event, whole, or `-`.
pub(crate) fn per_event(bytes: Option<f64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{b:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_and_a_directory_size() {
        assert!(rss_bytes(std::process::id()).is_some_and(|rss| rss > 0));
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("sub")).expect("sub dir");
        std::fs::write(dir.path().join("a"), [0u8; 100]).expect("write");
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).expect("write");
        assert_eq!(dir_bytes(dir.path()).expect("size"), 123);
    }

    #[test]
    fn free_space_of_a_real_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(free_bytes(dir.path()).is_some());
        assert_eq!(free_bytes(Path::new("/no/such/directory")), None);
    }
}
