//! Operations jobs: the scavenge job runner (start, status, stop, and its
//! schedule) and online backups, with their access checks.
//!
//! This module owns the one scavenge job of the server and its totals; the
//! work itself is `cairn_storage::Store::scavenge_with` and `Store::backup`.
//! Both run on the blocking pool, on the engine's task tracker, so shutdown
//! waits for them; a running scavenge is asked to stop when shutdown begins
//! (it stops at the next record, having written what it decided). It must not
//! name a wire type nor a metrics crate: [`Operations::totals`] is the plain
//! method the metrics code reads.
//!
//! Cluster mode: a scavenge starts on the leader only (a follower answers
//! `NotLeader`, naming the leader, and skips its schedule); the store
//! replicates its deletions. Every node, the leader included, compacts once
//! replicated removals stop arriving (`compact_after_scavenges`).
//!
//! Access: starting, stopping and watching a scavenge needs `ops` or `admin`
//! (`Engine::authorize_operations(by, "scavenge")`); a backup needs `admin`
//! (it writes a directory on the server's filesystem).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use cairn_storage::{
    BackupManifest, ScavengeOutcome, ScavengeProgress, ScavengeProgressSnapshot, ScavengeReport,
    Store,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::security::{Principal, Role, Security};
use crate::{Error, Result};

/// How often a clustered node asks whether a compaction after replicated
/// removals is due.
const COMPACTION_CHECK: Duration = Duration::from_millis(500);

/// The operation named in access errors and `OperationInProgress`.
const SCAVENGE: &str = "scavenge";
/// The operation named for backups.
const BACKUP: &str = "back up the store";

/// Where a scavenge job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScavengeState {
    /// None has run since the server started.
    #[default]
    Idle,
    /// One is running.
    Running,
    /// The last one was stopped before its end (by a stop call or shutdown).
    Stopped,
    /// The last one walked the whole log.
    Finished,
    /// The last one failed (see [`ScavengeStatus::error`]).
    Failed,
}

impl ScavengeState {
    /// Lower-case name: `idle`, `running`, `stopped`, `finished`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScavengeState::Idle => "idle",
            ScavengeState::Running => "running",
            ScavengeState::Stopped => "stopped",
            ScavengeState::Finished => "finished",
            ScavengeState::Failed => "failed",
        }
    }
}

/// What started a scavenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScavengeTrigger {
    /// A `StartScavenge` call.
    Request,
    /// The `auto_scavenge_interval_ms` schedule.
    Schedule,
}

/// The scavenge job as a status call sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScavengeStatus {
    /// Where the job is.
    pub state: ScavengeState,
    /// The current (or last) run's progress.
    pub progress: ScavengeProgressSnapshot,
    /// The last ended run's report (of a stopped run: up to where it stopped).
    pub last_report: Option<ScavengeReport>,
    /// When the current (or last) run started.
    pub started_at: Option<SystemTime>,
    /// When the last run ended; `None` while one runs.
    pub finished_at: Option<SystemTime>,
    /// Why the last run failed.
    pub error: Option<String>,
    /// What started the current (or last) run.
    pub trigger: Option<ScavengeTrigger>,
    /// Runs started since the server started (a run's number).
    pub run: u64,
}

/// Totals of every scavenge since the server started, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ScavengeTotals {
    /// Runs that ended (finished, stopped or failed).
    pub runs: u64,
    /// Runs that failed.
    pub failed_runs: u64,
    /// Events removed.
    pub events_removed: u64,
    /// Record bytes removed (the space compaction gives back; SST overhead
    /// and compression make the disk figure differ).
    pub bytes_reclaimed: u64,
}

/// Backups since the server started: the one running and the last one
/// that ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupStatus {
    /// A backup is being taken now.
    pub running: bool,
    /// Backups that succeeded, and that failed, since the server started.
    pub taken: u64,
    /// See `taken`.
    pub failed: u64,
    /// The last one that ended.
    pub last: Option<LastBackup>,
}

/// How the last backup ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastBackup {
    /// When it ended.
    pub finished_at: std::time::SystemTime,
    /// Its head position and event count (`None`: it failed).
    pub head_and_events: Option<(u64, u64)>,
}

/// The job's mutable state, behind one mutex held only briefly.
#[derive(Default)]
struct Job {
    status: ScavengeStatus,
    /// The running (or last) run's counters and stop flag.
    progress: Arc<ScavengeProgress>,
    totals: ScavengeTotals,
    /// A backup is running.
    backup_running: bool,
    /// Counts and the last outcome (`backup_running` is the truth for
    /// `running`).
    backups: BackupStatus,
}

/// The scavenge job runner and backups of one engine. Cheap to clone.
#[derive(Clone)]
pub struct Operations {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    security: Arc<Security>,
    tasks: TaskTracker,
    shutdown: watch::Receiver<bool>,
    job: Mutex<Job>,
}

impl Operations {
    /// The runner over `store`; with `schedule`, a scavenge starts every
    /// interval (skipped when one is already running) until shutdown.
    pub(crate) fn start(
        store: Store,
        security: Arc<Security>,
        tasks: TaskTracker,
        shutdown: watch::Receiver<bool>,
        schedule: Option<Duration>,
    ) -> Self {
        let operations = Self {
            inner: Arc::new(Inner {
                store,
                security,
                tasks,
                shutdown,
                job: Mutex::new(Job::default()),
            }),
        };
        if operations.inner.store.is_clustered() {
            let compacting = operations.clone();
            operations
                .inner
                .tasks
                .spawn(async move { compacting.compact_after_scavenges().await });
        }
        if let Some(interval) = schedule.filter(|interval| !interval.is_zero()) {
            let scheduled = operations.clone();
            operations
                .inner
                .tasks
                .spawn(async move { scheduled.run_schedule(interval).await });
        }
        operations
    }

    fn job(&self) -> std::sync::MutexGuard<'_, Job> {
        self.inner
            .job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn authorize_scavenge(&self, by: &Principal) -> Result<()> {
        if !self.inner.security.enabled() {
            return Ok(());
        }
        by.require_any(&[Role::Ops], SCAVENGE)
    }

    /// Starts a scavenge. Refused with [`Error::OperationInProgress`] while
    /// one runs, and at shutdown. Returns the status right after the start.
    pub fn start_scavenge(&self, by: &Principal) -> Result<ScavengeStatus> {
        self.authorize_scavenge(by)?;
        self.launch(ScavengeTrigger::Request)
    }

    /// The scavenge job's status.
    pub fn scavenge_status(&self, by: &Principal) -> Result<ScavengeStatus> {
        self.authorize_scavenge(by)?;
        Ok(self.status())
    }

    /// Asks the running scavenge to stop (it ends at its next record, having
    /// written what it already decided). Without a running scavenge it changes
    /// nothing. Returns the status; its state becomes `stopped` once the run
    /// has ended.
    pub fn stop_scavenge(&self, by: &Principal) -> Result<ScavengeStatus> {
        self.authorize_scavenge(by)?;
        let job = self.job();
        if job.status.state == ScavengeState::Running {
            job.progress.request_stop();
            tracing::info!(run = job.status.run, "scavenge: stop requested");
        }
        drop(job);
        Ok(self.status())
    }

    /// The status without an access check (for the server's own pages).
    pub fn status(&self) -> ScavengeStatus {
        let job = self.job();
        let mut status = job.status.clone();
        status.progress = job.progress.snapshot();
        status
    }

    /// Totals of every run since the server started (for metrics; no access
    /// check, no lock held beyond a copy).
    pub fn totals(&self) -> ScavengeTotals {
        self.job().totals
    }

    /// Marks the job running and spawns the run.
    fn launch(&self, trigger: ScavengeTrigger) -> Result<ScavengeStatus> {
        if *self.inner.shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        // Cluster mode: only the leader scavenges; its decisions are
        // replicated to every node (`cairn_storage`'s scavenge module). A
        // follower answers as it does to a write, naming the leader.
        if self.inner.store.is_clustered()
            && let Some(refusal) = self.inner.store.write_refusal()
        {
            return Err(refusal.into());
        }
        let progress = Arc::new(ScavengeProgress::new());
        let run = {
            let mut job = self.job();
            if job.status.state == ScavengeState::Running {
                return Err(Error::OperationInProgress {
                    operation: SCAVENGE.into(),
                });
            }
            job.progress = Arc::clone(&progress);
            let run = job.status.run + 1;
            job.status = ScavengeStatus {
                state: ScavengeState::Running,
                progress: ScavengeProgressSnapshot::default(),
                last_report: job.status.last_report,
                started_at: Some(SystemTime::now()),
                finished_at: None,
                error: None,
                trigger: Some(trigger),
                run,
            };
            run
        };
        tracing::info!(run, ?trigger, "scavenge started");
        let store = self.inner.store.clone();
        let work_progress = Arc::clone(&progress);
        let work = self
            .inner
            .tasks
            .spawn_blocking(move || store.scavenge_with(&work_progress));
        let operations = self.clone();
        let mut shutdown = self.inner.shutdown.clone();
        self.inner.tasks.spawn(async move {
            tokio::pin!(work);
            let ended = tokio::select! {
                joined = &mut work => Some(joined),
                () = async {
                    let _ = shutdown.wait_for(|stopping| *stopping).await;
                } => None,
            };
            let joined = match ended {
                Some(joined) => joined,
                None => {
                    progress.request_stop();
                    work.await
                }
            };
            let outcome = match joined {
                Ok(Ok(outcome)) => Ok(outcome),
                // RocksDB's I/O messages name server paths: the log has them.
                Ok(Err(cairn_storage::Error::Io(error))) => {
                    tracing::error!(run, %error, "scavenge: storage I/O error");
                    Err("a storage I/O error occurred (the server log has the details)".into())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(error) => Err(format!("the scavenge task failed: {error}")),
            };
            operations.finish(run, outcome);
        });
        Ok(self.status())
    }

    /// Records the end of run `run`.
    fn finish(&self, run: u64, outcome: std::result::Result<ScavengeOutcome, String>) {
        let mut job = self.job();
        if job.status.run != run {
            return;
        }
        job.status.finished_at = Some(SystemTime::now());
        job.totals.runs += 1;
        match outcome {
            Ok(outcome) => {
                job.status.state = if outcome.stopped {
                    ScavengeState::Stopped
                } else {
                    ScavengeState::Finished
                };
                job.status.last_report = Some(outcome.report);
                job.totals.events_removed += outcome.report.removed;
                job.totals.bytes_reclaimed += outcome.report.bytes_removed;
                tracing::info!(
                    run,
                    state = job.status.state.as_str(),
                    scanned = outcome.report.scanned,
                    removed = outcome.report.removed,
                    bytes_removed = outcome.report.bytes_removed,
                    segments = outcome.report.segments,
                    "scavenge ended"
                );
            }
            Err(error) => {
                tracing::error!(run, %error, "scavenge failed");
                job.status.state = ScavengeState::Failed;
                job.status.error = Some(error);
                job.totals.failed_runs += 1;
            }
        }
    }

    /// Cluster mode: until shutdown, compacts this node's store once a
    /// scavenge's replicated removals were applied here and none came for
    /// [`cairn_storage::REMOVALS_QUIET`] (the store decides; this only asks
    /// every so often, off the async threads).
    async fn compact_after_scavenges(self) {
        let mut shutdown = self.inner.shutdown.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(COMPACTION_CHECK) => {}
                _ = shutdown.wait_for(|stopping| *stopping) => return,
            }
            let store = self.inner.store.clone();
            let compacted = tokio::task::spawn_blocking(move || {
                store.compact_after_removals(cairn_storage::REMOVALS_QUIET)
            })
            .await;
            if let Err(error) = compacted {
                tracing::error!(%error, "the compaction after a scavenge failed");
            }
        }
    }

    /// Starts a scavenge every `interval` until shutdown; a tick that finds
    /// one running skips.
    async fn run_schedule(self, interval: Duration) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once: the first scheduled run comes one
        // interval after the start.
        ticks.tick().await;
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = shutdown.wait_for(|stopping| *stopping) => true,
            };
            if stopping {
                return;
            }
            match self.launch(ScavengeTrigger::Schedule) {
                Ok(_) => {}
                Err(Error::OperationInProgress { .. }) => {
                    tracing::debug!("scheduled scavenge skipped: one is running");
                }
                Err(Error::ShuttingDown) => return,
                // A cluster's followers leave the schedule to the leader.
                Err(Error::Store(cairn_storage::Error::NotLeader { .. })) => {
                    tracing::debug!("scheduled scavenge skipped: this node does not lead");
                }
                Err(error) => tracing::warn!(%error, "scheduled scavenge not started"),
            }
        }
    }

    /// Backups since the server started (operators: `ops` or `admin`).
    pub fn backup_status(&self, by: &Principal) -> Result<BackupStatus> {
        if self.inner.security.enabled() {
            by.require_any(&[Role::Ops], "see the backup status")?;
        }
        let job = self.job();
        Ok(BackupStatus {
            running: job.backup_running,
            ..job.backups.clone()
        })
    }

    /// Takes an online backup into `dir` on the server's filesystem (an
    /// absolute path that does not exist yet; its parent must). Needs `admin`.
    /// One backup at a time ([`Error::OperationInProgress`]).
    pub async fn backup(&self, by: &Principal, dir: PathBuf) -> Result<BackupManifest> {
        if self.inner.security.enabled() {
            by.require_any(&[], BACKUP)?;
        }
        if !dir.is_absolute() {
            return Err(Error::InvalidArgument(
                "the backup directory must be an absolute path on the server".into(),
            ));
        }
        if *self.inner.shutdown.borrow() {
            return Err(Error::ShuttingDown);
        }
        {
            let mut job = self.job();
            if job.backup_running {
                return Err(Error::OperationInProgress {
                    operation: "backup".into(),
                });
            }
            job.backup_running = true;
        }
        // Cleared when this call ends, also when its caller goes away.
        let _running = BackupRunning(self);
        let store = self.inner.store.clone();
        let task = self.inner.tasks.spawn_blocking(move || store.backup(&dir));
        let result = task
            .await
            .map_err(|error| Error::Internal(format!("the backup task failed: {error}")))
            .and_then(|outcome| outcome.map_err(Error::from));
        {
            let mut job = self.job();
            let backups = &mut job.backups;
            match &result {
                Ok(_) => backups.taken += 1,
                Err(_) => backups.failed += 1,
            }
            backups.last = Some(LastBackup {
                finished_at: std::time::SystemTime::now(),
                head_and_events: result
                    .as_ref()
                    .ok()
                    .map(|manifest| (manifest.head, manifest.event_count)),
            });
        }
        let manifest = result?;
        tracing::info!(
            head = manifest.head,
            events = manifest.event_count,
            "backup taken"
        );
        Ok(manifest)
    }
}

/// Clears `Job::backup_running` when dropped.
struct BackupRunning<'a>(&'a Operations);

impl Drop for BackupRunning<'_> {
    fn drop(&mut self) {
        self.0.job().backup_running = false;
    }
}
