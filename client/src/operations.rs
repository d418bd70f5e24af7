//! Operating the server (`cairn.v1.Operations`): scavenges (start, status,
//! stop) and online backups.
//!
//! ```no_run
//! use cairn_client::{Client, ScavengeState};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let ops = Client::connect("http://127.0.0.1:7070").await?;
//! let started = ops.start_scavenge().await?;
//! println!("scavenge run {} started", started.run);
//! let status = ops.scavenge_status().await?;
//! if status.state == ScavengeState::Running {
//!     println!("{}/{} segments", status.segments_done, status.segments_total);
//! }
//! let backup = ops.backup("/var/backups/cairn-2026-01-01").await?;
//! println!("backed up to position {}", backup.head_position);
//! # Ok(()) }
//! ```
//!
//! Scavenge calls need the `ops` or `admin` role, a backup `admin`. The backup
//! directory is on the server's filesystem: the server writes it.
//!
//! In a cluster a scavenge is started and stopped by the leader: a cluster
//! client sends [`Client::start_scavenge`] and [`Client::stop_scavenge`]
//! there and retries them while the leader changes, as writes are;
//! [`Client::scavenge_status`] and [`Client::backup`] go to the node in use.

use std::time::SystemTime;

use cairn_proto::v1 as pb;

use crate::leader::Resend;
use crate::{Client, Result};

/// Where the server's scavenge job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScavengeState {
    /// None has run since the server started.
    Idle,
    /// One is running.
    Running,
    /// The last one was stopped before its end.
    Stopped,
    /// The last one walked the whole log.
    Finished,
    /// The last one failed ([`ScavengeStatus::error`]).
    Failed,
    /// A state this client does not know (a newer server).
    Unknown,
}

impl ScavengeState {
    /// Lower-case name (`idle`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ScavengeState::Idle => "idle",
            ScavengeState::Running => "running",
            ScavengeState::Stopped => "stopped",
            ScavengeState::Finished => "finished",
            ScavengeState::Failed => "failed",
            ScavengeState::Unknown => "unknown",
        }
    }

    /// Whether a run is going on.
    pub fn is_running(self) -> bool {
        self == ScavengeState::Running
    }
}

/// Counters of one ended scavenge run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScavengeReport {
    /// Log records examined.
    pub scanned: u64,
    /// Hidden records removed.
    pub removed: u64,
    /// Record bytes removed.
    pub bytes_removed: u64,
    /// Log segments visited.
    pub segments: u64,
}

/// The server's scavenge job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScavengeStatus {
    /// Where it is.
    pub state: ScavengeState,
    /// Number of the current (or last) run; 0 = none yet.
    pub run: u64,
    /// The current (or last) run was started by the server's schedule.
    pub scheduled: bool,
    /// Segments to walk in the current (or last) run.
    pub segments_total: u64,
    /// Segments walked.
    pub segments_done: u64,
    /// Records examined.
    pub scanned: u64,
    /// Records removed.
    pub removed: u64,
    /// Record bytes removed.
    pub bytes_removed: u64,
    /// A stop was asked for.
    pub stop_requested: bool,
    /// The last ended run's report.
    pub last_report: Option<ScavengeReport>,
    /// When the current (or last) run started.
    pub started_at: Option<SystemTime>,
    /// When the last run ended (`None` while one runs).
    pub finished_at: Option<SystemTime>,
    /// Why the last run failed.
    pub error: Option<String>,
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    timestamp.and_then(|timestamp| SystemTime::try_from(timestamp).ok())
}

impl From<pb::ScavengeStatus> for ScavengeStatus {
    fn from(status: pb::ScavengeStatus) -> Self {
        let state = match pb::ScavengeState::try_from(status.state) {
            Ok(pb::ScavengeState::Idle) => ScavengeState::Idle,
            Ok(pb::ScavengeState::Running) => ScavengeState::Running,
            Ok(pb::ScavengeState::Stopped) => ScavengeState::Stopped,
            Ok(pb::ScavengeState::Finished) => ScavengeState::Finished,
            Ok(pb::ScavengeState::Failed) => ScavengeState::Failed,
            _ => ScavengeState::Unknown,
        };
        Self {
            state,
            run: status.run,
            scheduled: status.scheduled,
            segments_total: status.segments_total,
            segments_done: status.segments_done,
            scanned: status.scanned,
            removed: status.removed,
            bytes_removed: status.bytes_removed,
            stop_requested: status.stop_requested,
            last_report: status.last_report.map(|report| ScavengeReport {
                scanned: report.scanned,
                removed: report.removed,
                bytes_removed: report.bytes_removed,
                segments: report.segments,
            }),
            started_at: time(status.started_at),
            finished_at: time(status.finished_at),
            error: (!status.error.is_empty()).then_some(status.error),
        }
    }
}

/// A backup the server wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The store's format version.
    pub format_version: u32,
    /// The backup's head: the next position of the store it holds.
    pub head_position: u64,
    /// Events in it.
    pub event_count: u64,
    /// Streams in it, in any state.
    pub stream_count: u64,
    /// Files in it.
    pub file_count: u64,
    /// Their total size, bytes.
    pub total_bytes: u64,
    /// When it was made.
    pub created_at: Option<SystemTime>,
}

impl Client {
    /// Starts a scavenge on the server (`ops` or `admin`). A running one is
    /// [`crate::Error::OperationInProgress`]. A cluster client sends it to
    /// the leader and retries it while the leader changes: a retry of an
    /// attempt that started a run after all answers
    /// `OperationInProgress` while that run goes on, or starts another one
    /// (harmless: a scavenge removes only records no read shows).
    pub async fn start_scavenge(&self) -> Result<ScavengeStatus> {
        let response = self
            .on_leader_of(
                &self.operations,
                Resend::AfterUnknownOutcome,
                pb::StartScavengeRequest {},
                |mut operations, request| async move { operations.start_scavenge(request).await },
            )
            .await?;
        Ok(response.into())
    }

    /// The server's scavenge job (`ops` or `admin`).
    pub async fn scavenge_status(&self) -> Result<ScavengeStatus> {
        let response = self
            .operations
            .clone()
            .get_scavenge(pb::GetScavengeRequest {})
            .await?;
        Ok(response.into_inner().into())
    }

    /// Asks the running scavenge to stop (`ops` or `admin`); poll
    /// [`Client::scavenge_status`] until it is no longer running. A cluster
    /// client sends it to the leader and retries it while the leader
    /// changes; asking again changes nothing.
    pub async fn stop_scavenge(&self) -> Result<ScavengeStatus> {
        let response = self
            .on_leader_of(
                &self.operations,
                Resend::AfterUnknownOutcome,
                pb::StopScavengeRequest {},
                |mut operations, request| async move { operations.stop_scavenge(request).await },
            )
            .await?;
        Ok(response.into())
    }

    /// Takes an online backup into `directory` on the server's filesystem (an
    /// absolute path that does not exist yet; `admin`). Returns when the
    /// backup is written and verified.
    pub async fn backup(&self, directory: impl Into<String>) -> Result<BackupInfo> {
        let response = self
            .operations
            .clone()
            .backup(pb::BackupRequest {
                directory: directory.into(),
            })
            .await?
            .into_inner();
        Ok(BackupInfo {
            format_version: response.format_version,
            head_position: response.head_position,
            event_count: response.event_count,
            stream_count: response.stream_count,
            file_count: response.file_count,
            total_bytes: response.total_bytes,
            created_at: time(response.created_at),
        })
    }
}
