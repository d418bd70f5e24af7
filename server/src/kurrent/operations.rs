//! `event_store.client.operations.Operations`: StartScavenge and StopScavenge
//! on Cairn's scavenge job ([`cairn_engine::Operations`]), answered as
//! KurrentDB answers them; every other method (Shutdown, MergeIndexes,
//! ResignNode, SetNodePriority, RestartPersistentSubscriptions) answers
//! UNIMPLEMENTED with a message naming it.
//!
//! This adapter owns only the wire shape: a run's KurrentDB scavenge id is
//! Cairn's run number as a decimal string (stable for the run, unique since
//! the server started). Access checks (the `ops` role with security on) and
//! the one-run-at-a-time rule are the engine's; errors go through
//! `error::to_status`. It must not start, stop or inspect a scavenge other
//! than through the engine's calls taking the caller's principal.
//!
//! KurrentDB's answers, kept here:
//! - StartScavenge while one runs is not an error: `InProgress` with the
//!   running scavenge's id.
//! - StopScavenge names the run (or `current`); it answers `Stopped` once
//!   the run has ended. An id that is not the running scavenge's (or no run)
//!   is NOT_FOUND "Scavenge id was invalid." with trailers
//!   `exception: scavenge-not-found` and `scavenge-id` (the running one's
//!   id, empty when none runs).

use std::time::Duration;

use cairn_engine::{Engine, Error, ScavengeState, ScavengeStatus};
use cairn_proto::kurrent::operations as pb;
use cairn_proto::kurrent::operations::operations_server::{Operations, OperationsServer};
use cairn_proto::kurrent::operations::scavenge_resp::ScavengeResult;
use cairn_proto::kurrent::shared;
use tonic::{Code, Request, Response, Status};

use super::error;
use crate::grpc::auth;

/// Largest request decoded: the largest valid one (a stop naming a run id
/// of a few digits) is far below it.
const OPERATIONS_REQUEST_BYTES: usize = 16 * 1024;
/// The StopScavenge id that names whichever scavenge runs.
const CURRENT: &str = "current";
/// How often a StopScavenge looks whether the run it stopped has ended (a
/// stopped run ends at its next record).
const STOP_POLL: Duration = Duration::from_millis(20);

/// The service, sized for its requests.
pub(super) fn server(engine: Engine) -> OperationsServer<OperationsService> {
    OperationsServer::new(OperationsService { engine })
        .max_decoding_message_size(OPERATIONS_REQUEST_BYTES)
}

/// The service.
pub(super) struct OperationsService {
    engine: Engine,
}

/// The KurrentDB id of run `run`.
fn scavenge_id(run: u64) -> String {
    run.to_string()
}

fn answer(run: u64, result: ScavengeResult) -> Response<pb::ScavengeResp> {
    Response::new(pb::ScavengeResp {
        scavenge_id: scavenge_id(run),
        scavenge_result: result as i32,
    })
}

/// KurrentDB's NOT_FOUND for a stop naming no running scavenge; `running`
/// is the run that is running, if any.
fn scavenge_not_found(running: Option<u64>) -> Status {
    error::with_trailers(
        Code::NotFound,
        "Scavenge id was invalid.".to_owned(),
        "scavenge-not-found",
        &[("scavenge-id", running.map(scavenge_id).unwrap_or_default())],
    )
}

/// The running run's number, if one runs.
fn running_run(status: &ScavengeStatus) -> Option<u64> {
    (status.state == ScavengeState::Running).then_some(status.run)
}

fn unimplemented(method: &str) -> Status {
    Status::unimplemented(format!(
        "Operations.{method} is not implemented by Cairn's KurrentDB facade \
         (of Operations it serves StartScavenge and StopScavenge; see the README's \"KurrentDB clients\")"
    ))
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn start_scavenge(
        &self,
        request: Request<pb::StartScavengeReq>,
    ) -> Result<Response<pb::ScavengeResp>, Status> {
        let by = auth::principal(&request)?;
        let operations = self.engine.operations();
        match operations.start_scavenge(&by) {
            Ok(status) => Ok(answer(status.run, ScavengeResult::Started)),
            Err(Error::OperationInProgress { .. }) => {
                // The caller passed the access check above; the run that
                // refused the start is the current (or, if it just ended,
                // the last) one.
                let status = operations
                    .scavenge_status(&by)
                    .map_err(|error| error::to_status("StartScavenge", &error))?;
                Ok(answer(status.run, ScavengeResult::InProgress))
            }
            Err(error) => Err(error::to_status("StartScavenge", &error)),
        }
    }

    async fn stop_scavenge(
        &self,
        request: Request<pb::StopScavengeReq>,
    ) -> Result<Response<pb::ScavengeResp>, Status> {
        let by = auth::principal(&request)?;
        let named = request
            .into_inner()
            .options
            .map(|options| options.scavenge_id)
            .unwrap_or_default();
        let operations = self.engine.operations();
        // The status call checks access first, so a caller without it learns
        // nothing about the runs.
        let status = operations
            .scavenge_status(&by)
            .map_err(|error| error::to_status("StopScavenge", &error))?;
        let Some(run) = running_run(&status) else {
            return Err(scavenge_not_found(None));
        };
        if named != CURRENT && named != scavenge_id(run) {
            return Err(scavenge_not_found(Some(run)));
        }
        // Between the status and the stop, run `run` may have ended and (by
        // the schedule or another caller) a next one begun: the stop then
        // stops that one, as a `current` stop would. Accepted: the window is
        // one lock acquisition wide and the store stays consistent either way.
        operations
            .stop_scavenge(&by)
            .map_err(|error| error::to_status("StopScavenge", &error))?;
        // KurrentDB answers once the run has ended. A stopped run ends at its
        // next record, and shutdown stops it too; a client that gives up
        // drops this call (and the wait) with it.
        loop {
            let now = operations.status();
            if running_run(&now) != Some(run) {
                return Ok(answer(run, ScavengeResult::Stopped));
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    async fn shutdown(&self, _: Request<shared::Empty>) -> Result<Response<shared::Empty>, Status> {
        Err(unimplemented("Shutdown"))
    }

    async fn merge_indexes(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        Err(unimplemented("MergeIndexes"))
    }

    async fn resign_node(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        Err(unimplemented("ResignNode"))
    }

    async fn set_node_priority(
        &self,
        _: Request<pb::SetNodePriorityReq>,
    ) -> Result<Response<shared::Empty>, Status> {
        Err(unimplemented("SetNodePriority"))
    }

    async fn restart_persistent_subscriptions(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<shared::Empty>, Status> {
        Err(unimplemented("RestartPersistentSubscriptions"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_scavenge_id_answers_as_kurrentdb_does() {
        let status = scavenge_not_found(Some(7));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "Scavenge id was invalid.");
        let trailers = status.metadata();
        assert_eq!(trailers.get("exception").unwrap(), "scavenge-not-found");
        assert_eq!(trailers.get("scavenge-id").unwrap(), "7");
        let none = scavenge_not_found(None);
        assert_eq!(none.metadata().get("scavenge-id").unwrap(), "");
    }
}
