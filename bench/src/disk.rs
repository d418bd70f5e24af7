//! The physical limit of durable appends: how many `write(4 KiB) + fdatasync`
//! rounds the disk under the data directory completes per second.
//!
//! One writer that waits for each durable append cannot beat this rate; many
//! writers can, only by sharing syncs (group commit).

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::BoxError;
use crate::stats::{Latency, round, round_to};

/// Block written before each sync.
const BLOCK: usize = 4096;
/// The probe file is rewound at this size so a fast disk does not fill up.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncRate {
    /// Completed write + fdatasync rounds.
    pub(crate) syncs: u64,
    /// Wall time of the probe.
    pub(crate) seconds: f64,
    /// `syncs / seconds`.
    pub(crate) per_second: f64,
    /// Time of one round.
    pub(crate) latency: Latency,
}

impl SyncRate {
    /// The measurement as a JSON object.
    pub(crate) fn to_json(self) -> Value {
        json!({
            "syncs": self.syncs,
            "seconds": round_to(self.seconds, 3),
            "syncs_per_second": round(self.per_second),
            "latency": self.latency.to_json(),
        })
    }
}

/// Appends 4 KiB and calls `File::sync_data` (fdatasync) in a loop for
/// `duration`, in a fresh file inside `dir` that is removed afterwards.
pub(crate) fn fdatasync_rate(dir: &Path, duration: Duration) -> Result<SyncRate, BoxError> {
    let scratch = tempfile::Builder::new()
        .prefix("cairn-bench-fsync-")
        .tempdir_in(dir)?;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(scratch.path().join("probe"))?;
    let block = [b'x'; BLOCK];
    let mut latencies = Vec::new();
    let mut written = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let round_start = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(u64::try_from(round_start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        written += BLOCK as u64;
        if written >= MAX_FILE_BYTES {
            file.seek(SeekFrom::Start(0))?;
            written = 0;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let syncs = latencies.len() as u64;
    Ok(SyncRate {
        syncs,
        seconds,
        per_second: syncs as f64 / seconds,
        latency: Latency::from_nanos(latencies),
    })
}
