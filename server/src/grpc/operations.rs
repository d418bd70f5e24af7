//! The `cairn.v1.Operations` gRPC adapter: scavenge start/status/stop and
//! online backups. Takes the caller from the authentication layer, calls the
//! engine's [`Operations`], converts its answers, maps errors with
//! `status::to_status`. Every access check and rule is the engine's; the
//! conversions are used only here, so they sit at the bottom of this file.

use std::path::PathBuf;

use cairn_engine::{Engine, Operations, ScavengeState, ScavengeStatus, ScavengeTrigger};
use cairn_proto::v1 as pb;
use cairn_storage::BackupManifest;
use tonic::{Request, Response, Status};

use super::auth;
use super::status::{invalid_argument, to_status};

/// Largest request the service decodes: its largest valid request (a
/// backup directory path of at most 4 KiB) is far below it.
pub const OPERATIONS_REQUEST_BYTES: usize = 64 * 1024;
/// Longest backup directory path accepted, bytes (Linux's PATH_MAX).
const MAX_BACKUP_PATH_BYTES: usize = 4096;

/// The service.
#[derive(Clone)]
pub struct OperationsService {
    /// The engine whose operations run.
    engine: Engine,
}

impl OperationsService {
    /// The service over `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }

    fn operations(&self) -> &Operations {
        self.engine.operations()
    }
}

#[tonic::async_trait]
impl pb::operations_server::Operations for OperationsService {
    async fn start_scavenge(
        &self,
        request: Request<pb::StartScavengeRequest>,
    ) -> Result<Response<pb::ScavengeStatus>, Status> {
        let by = auth::principal(&request)?;
        let status = self
            .operations()
            .start_scavenge(&by)
            .map_err(|error| to_status(&error))?;
        Ok(Response::new(scavenge_status(status)))
    }

    async fn get_scavenge(
        &self,
        request: Request<pb::GetScavengeRequest>,
    ) -> Result<Response<pb::ScavengeStatus>, Status> {
        let by = auth::principal(&request)?;
        let status = self
            .operations()
            .scavenge_status(&by)
            .map_err(|error| to_status(&error))?;
        Ok(Response::new(scavenge_status(status)))
    }

    async fn stop_scavenge(
        &self,
        request: Request<pb::StopScavengeRequest>,
    ) -> Result<Response<pb::ScavengeStatus>, Status> {
        let by = auth::principal(&request)?;
        let status = self
            .operations()
            .stop_scavenge(&by)
            .map_err(|error| to_status(&error))?;
        Ok(Response::new(scavenge_status(status)))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        let by = auth::principal(&request)?;
        let directory = request.into_inner().directory;
        if directory.is_empty() {
            return Err(invalid_argument("name the backup directory"));
        }
        if directory.len() > MAX_BACKUP_PATH_BYTES {
            return Err(invalid_argument(format!(
                "the backup directory path is {} bytes; the limit is {MAX_BACKUP_PATH_BYTES}",
                directory.len()
            )));
        }
        if directory.contains('\0') {
            return Err(invalid_argument("the backup directory contains a NUL byte"));
        }
        let manifest = self
            .operations()
            .backup(&by, PathBuf::from(directory))
            .await
            .map_err(|error| to_status(&error))?;
        Ok(Response::new(backup_response(&manifest)))
    }
}

fn scavenge_state(state: ScavengeState) -> pb::ScavengeState {
    match state {
        ScavengeState::Idle => pb::ScavengeState::Idle,
        ScavengeState::Running => pb::ScavengeState::Running,
        ScavengeState::Stopped => pb::ScavengeState::Stopped,
        ScavengeState::Finished => pb::ScavengeState::Finished,
        ScavengeState::Failed => pb::ScavengeState::Failed,
    }
}

fn scavenge_status(status: ScavengeStatus) -> pb::ScavengeStatus {
    pb::ScavengeStatus {
        state: scavenge_state(status.state) as i32,
        run: status.run,
        scheduled: status.trigger == Some(ScavengeTrigger::Schedule),
        segments_total: status.progress.segments_total,
        segments_done: status.progress.segments_done,
        scanned: status.progress.scanned,
        removed: status.progress.removed,
        bytes_removed: status.progress.bytes_removed,
        stop_requested: status.progress.stop_requested,
        last_report: status.last_report.map(|report| pb::ScavengeReport {
            scanned: report.scanned,
            removed: report.removed,
            bytes_removed: report.bytes_removed,
            segments: report.segments,
        }),
        started_at: status.started_at.map(prost_types::Timestamp::from),
        finished_at: status.finished_at.map(prost_types::Timestamp::from),
        error: status.error.unwrap_or_default(),
    }
}

fn backup_response(manifest: &BackupManifest) -> pb::BackupResponse {
    let created =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(manifest.created_unix_ms);
    pb::BackupResponse {
        format_version: manifest.format_version,
        head_position: manifest.head,
        event_count: manifest.event_count,
        stream_count: manifest.stream_count,
        file_count: manifest.files.len() as u64,
        total_bytes: manifest.files.iter().map(|file| file.bytes).sum(),
        created_at: Some(prost_types::Timestamp::from(created)),
    }
}
