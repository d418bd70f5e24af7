//! `cairn scavenge`, `cairn backup` (client commands: the server does the
//! work) and `cairn restore` (offline, on directories, like `cairn repair`).
//! Output is one JSON line per status or result.
//!
//! This module owns those three commands' arguments and output; it must not
//! declare connection options (they are the global `ConnectArgs`).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_client::{BackupInfo, ScavengeStatus};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::commands::ConnectArgs;

/// How often `--wait` asks the server for the scavenge's status.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// `cairn scavenge [start|status|stop] [--wait]`.
#[derive(Debug, Args)]
pub struct ScavengeArgs {
    /// What to do: start a scavenge, show its status, or stop it.
    #[arg(value_enum, default_value = "start")]
    pub action: ScavengeAction,
    /// Wait until the scavenge is no longer running, then print its final
    /// status (exits non-zero if it failed).
    #[arg(long)]
    pub wait: bool,
}

/// What `cairn scavenge` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScavengeAction {
    /// Start a scavenge (refused while one runs).
    Start,
    /// Show the scavenge job's status and progress.
    Status,
    /// Ask the running scavenge to stop.
    Stop,
}

fn seconds(time: Option<SystemTime>) -> Value {
    time.and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(Value::Null, |since| json!(since.as_secs_f64()))
}

fn status_json(status: &ScavengeStatus) -> Value {
    json!({
        "state": status.state.as_str(),
        "run": status.run,
        "scheduled": status.scheduled,
        "segments_total": status.segments_total,
        "segments_done": status.segments_done,
        "scanned": status.scanned,
        "removed": status.removed,
        "bytes_removed": status.bytes_removed,
        "stop_requested": status.stop_requested,
        "last_report": status.last_report.map(|report| json!({
            "scanned": report.scanned,
            "removed": report.removed,
            "bytes_removed": report.bytes_removed,
            "segments": report.segments,
        })),
        "started_at": seconds(status.started_at),
        "finished_at": seconds(status.finished_at),
        "error": status.error,
    })
}

/// Runs `cairn scavenge`.
pub async fn run_scavenge(
    args: ScavengeArgs,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect.client().await?;
    let mut status = match args.action {
        ScavengeAction::Start => client.start_scavenge().await?,
        ScavengeAction::Status => client.scavenge_status().await?,
        ScavengeAction::Stop => client.stop_scavenge().await?,
    };
    println!("{}", status_json(&status));
    if args.wait {
        while status.state.is_running() {
            tokio::time::sleep(WAIT_POLL).await;
            status = client.scavenge_status().await?;
        }
        println!("{}", status_json(&status));
        if let Some(error) = &status.error {
            return Err(format!("the scavenge failed: {error}").into());
        }
    }
    Ok(())
}

fn backup_json(backup: &BackupInfo, to: &str) -> Value {
    json!({
        "directory": to,
        "format_version": backup.format_version,
        "head_position": backup.head_position,
        "event_count": backup.event_count,
        "stream_count": backup.stream_count,
        "file_count": backup.file_count,
        "total_bytes": backup.total_bytes,
        "created_at": seconds(backup.created_at),
    })
}

/// Runs `cairn backup --to DIR`.
pub async fn run_backup(
    to: String,
    connect: &ConnectArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect.client().await?;
    let backup = client.backup(to.clone()).await?;
    println!("{}", backup_json(&backup, &to));
    Ok(())
}

/// Runs `cairn restore --from DIR --data DIR`: verifies the backup, copies it
/// into the new data directory, verifies the copy, and prints what it holds.
pub fn run_restore(from: &Path, data: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let restored = cairn_storage::restore(from, data)?;
    let manifest = &restored.manifest;
    println!(
        "{}",
        json!({
            "restored": data.display().to_string(),
            "from": from.display().to_string(),
            "format_version": manifest.format_version,
            "head_position": manifest.head,
            "event_count": manifest.event_count,
            "stream_count": manifest.stream_count,
            "records_checked": restored.records_checked,
            "bytes_checked": restored.bytes_checked,
        })
    );
    Ok(())
}
