//! The `cairn.v1.Cluster` gRPC adapter: cluster mode's admin calls
//! (`server/CLUSTER.md`, "Membership and the node-to-node service").
//!
//! This module owns three answers. `Status` comes in two shapes: a single
//! node's (not clustered; the store's head) and a cluster node's, read from
//! this node's raft metrics. The metrics are copied into a plain
//! [`RaftView`] first (`crate::cluster_metrics`, shared with `/metrics`), so
//! the conversion to the wire ([`clustered`]) is a pure function of plain
//! data, tested below without a raft. `AddNode` and `RemoveNode` hand the request
//! to [`ClusterNode::add_node`] / [`ClusterNode::remove_node`] (the rules are
//! `cairn_cluster::types::plan_add` / `plan_remove`) and map the outcome:
//! the membership to [`membership_response`], a refusal to a status in
//! exactly one function, [`membership_status`]. The access check is the
//! engine's security ([`cairn_engine::Principal::require_any`], admin only,
//! as the users and backup calls): a denied call returns before anything of
//! the cluster is read or changed. A single node refuses the membership
//! calls as FAILED_PRECONDITION (it has no raft).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::node::{ClusterNode, Peer};
use cairn_cluster::types::{Member, Members, MembershipError};
use cairn_engine::Engine;
use cairn_proto::reason;
use cairn_proto::v1 as pb;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth;
use super::status::{invalid_argument, to_status};
use crate::cluster_metrics::{RaftRole, RaftView, lag};

/// Largest request the service decodes: an `AddNodeRequest` with three
/// addresses of `cairn_cluster::types::MAX_ADDRESS_BYTES` fits with room,
/// so a longer address gets the check's own error, not tonic's.
pub const CLUSTER_REQUEST_BYTES: usize = 4096;
/// The operation named in a denied call's error.
const SEE_STATUS: &str = "see the cluster status";
/// The operation named in a denied `AddNode` or `RemoveNode`.
const CHANGE_MEMBERSHIP: &str = "change the cluster membership";
/// How long `AddNode` waits for the new learner to receive the log before
/// it answers DEADLINE_EXCEEDED (the learner stays; adding it again
/// resumes).
const CATCH_UP: Duration = Duration::from_secs(60);

/// The service.
#[derive(Clone)]
pub struct ClusterService {
    /// The engine: its security decides access, its store has the applied
    /// position.
    engine: Engine,
    /// This node's raft; `None` on a single node.
    node: Option<Arc<ClusterNode>>,
}

impl ClusterService {
    /// The service over `engine`, clustered when `node` is given.
    pub fn new(engine: Engine, node: Option<Arc<ClusterNode>>) -> Self {
        Self { engine, node }
    }

    /// The caller's admin check for a membership change, then this node's
    /// raft (a single node has none).
    fn changer<T>(&self, request: &Request<T>) -> Result<&ClusterNode, Status> {
        let by = auth::principal(request)?;
        by.require_any(&[], CHANGE_MEMBERSHIP)
            .map_err(|error| to_status(&error))?;
        self.node.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this node is not clustered; membership changes need cluster mode \
                 (--cluster-node-id, --cluster-listen, --cluster-peers)",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let by = auth::principal(&request)?;
        by.require_any(&[], SEE_STATUS)
            .map_err(|error| to_status(&error))?;
        let store = self.engine.store();
        let status = match &self.node {
            None => single_node(store.info().head),
            Some(node) => clustered(&RaftView::of(node), node.peers(), store.applied_head()),
        };
        Ok(Response::new(status))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterMembershipResponse>, Status> {
        let node = self.changer(&request)?;
        let pb::AddNodeRequest {
            node_id,
            raft_address,
            client_address,
            kurrent_address,
        } = request.into_inner();
        let member = Member::new(raft_address, client_address, kurrent_address);
        tracing::info!(node_id, %member, "adding a cluster node");
        let membership = node
            .add_node(node_id, member, CATCH_UP)
            .await
            .map_err(|error| membership_status(&error))?;
        Ok(Response::new(membership_response(&membership)))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterMembershipResponse>, Status> {
        let node = self.changer(&request)?;
        let node_id = request.into_inner().node_id;
        tracing::info!(node_id, "removing a cluster node");
        let membership = node
            .remove_node(node_id)
            .await
            .map_err(|error| membership_status(&error))?;
        Ok(Response::new(membership_response(&membership)))
    }
}

/// The one mapping of a refused or failed membership change to a status.
/// A refusal that a client can act on by reason carries `ErrorInfo` (the
/// same as writes for NOT_LEADER); the messages are the error's own words,
/// which name no path.
fn membership_status(error: &MembershipError) -> Status {
    let with_reason = |code: Code, reason: &str| {
        Status::with_error_details(
            code,
            error.to_string(),
            ErrorDetails::with_error_info(reason, reason::ERROR_DOMAIN, HashMap::new()),
        )
    };
    match error {
        MembershipError::InvalidNodeId | MembershipError::InvalidAddress { .. } => {
            invalid_argument(error.to_string())
        }
        MembershipError::AlreadyMember { .. }
        | MembershipError::AddressTaken { .. }
        | MembershipError::LastVoter { .. } => Status::failed_precondition(error.to_string()),
        MembershipError::NotMember { .. } => Status::not_found(error.to_string()),
        MembershipError::NotLeader { client, kurrent } => to_status(&cairn_engine::Error::Store(
            cairn_storage::Error::NotLeader {
                leader: client.clone(),
                kurrent_leader: kurrent.clone(),
            },
        )),
        MembershipError::InProgress => with_reason(Code::Aborted, reason::OPERATION_IN_PROGRESS),
        MembershipError::NotCaughtUp { .. } => {
            with_reason(Code::DeadlineExceeded, reason::DEADLINE_EXCEEDED)
        }
        // Raft stopped: nothing more of the cause reaches the client (the
        // server log has it).
        _ => with_reason(Code::Unavailable, reason::STORE_STOPPED),
    }
}

/// The membership after a change, as the wire has it: every node with its
/// addresses, voter or learner.
fn membership_response(membership: &Members) -> pb::ClusterMembershipResponse {
    pb::ClusterMembershipResponse {
        members: membership
            .nodes
            .iter()
            .map(|(&id, member)| {
                let kind = if membership.voters.contains(&id) {
                    pb::ClusterMemberKind::Voter
                } else {
                    pb::ClusterMemberKind::Learner
                };
                pb::ClusterMember {
                    id,
                    raft_address: member.raft.clone(),
                    client_address: member.client.clone(),
                    kurrent_address: member.kurrent.clone().unwrap_or_default(),
                    kind: kind as i32,
                    matched_index: None,
                    lag: None,
                }
            })
            .collect(),
    }
}

/// The wire's name of a raft role.
fn wire_role(role: RaftRole) -> pb::ClusterRole {
    match role {
        RaftRole::Leader => pb::ClusterRole::Leader,
        RaftRole::Follower => pb::ClusterRole::Follower,
        RaftRole::Candidate => pb::ClusterRole::Candidate,
        RaftRole::Learner => pb::ClusterRole::Learner,
        RaftRole::Shutdown => pb::ClusterRole::Shutdown,
    }
}

/// A single node's answer (`ClusterStatusResponse`'s documentation):
/// `head` is the store's next position.
fn single_node(head: u64) -> pb::ClusterStatusResponse {
    pb::ClusterStatusResponse {
        node_id: 0,
        clustered: false,
        role: pb::ClusterRole::SingleNode as i32,
        term: 0,
        leader_id: None,
        leader_client_address: String::new(),
        last_log_index: None,
        last_applied_index: None,
        applied_position: head,
        members: vec![pb::ClusterMember {
            id: 0,
            raft_address: String::new(),
            client_address: String::new(),
            kurrent_address: String::new(),
            kind: pb::ClusterMemberKind::Voter as i32,
            matched_index: None,
            lag: None,
        }],
    }
}

/// A cluster node's answer from its raft `view`, its configured `peers`
/// and its store's applied head. Every address is the membership's (the
/// same on every node); the configured peers fill in only for an id the
/// membership does not hold with a client address (the leader of a node
/// that has not received the membership yet).
fn clustered(
    view: &RaftView,
    peers: &BTreeMap<u64, Peer>,
    applied_position: u64,
) -> pb::ClusterStatusResponse {
    let addresses = |id: u64| {
        view.members
            .get(&id)
            .filter(|member| !member.client.is_empty())
            .or_else(|| peers.get(&id))
    };
    let client_address = |id: u64| {
        addresses(id)
            .map(|member| member.client.clone())
            .unwrap_or_default()
    };
    let members = view
        .members
        .iter()
        .map(|(&id, member)| {
            // Progress is the leader's knowledge of the others; its own row
            // has none.
            let progress = view
                .matched
                .as_ref()
                .filter(|_| id != view.node_id)
                .map(|matched| matched.get(&id).copied().flatten());
            let kind = if view.voters.contains(&id) {
                pb::ClusterMemberKind::Voter
            } else {
                pb::ClusterMemberKind::Learner
            };
            pb::ClusterMember {
                id,
                raft_address: member.raft.clone(),
                client_address: client_address(id),
                kurrent_address: addresses(id)
                    .and_then(|member| member.kurrent.clone())
                    .unwrap_or_default(),
                kind: kind as i32,
                matched_index: progress.flatten(),
                lag: progress.map(|matched| lag(view.last_log_index, matched)),
            }
        })
        .collect();
    pb::ClusterStatusResponse {
        node_id: view.node_id,
        clustered: true,
        role: wire_role(view.role) as i32,
        term: view.term,
        leader_id: view.leader,
        leader_client_address: view.leader.map(client_address).unwrap_or_default(),
        last_log_index: view.last_log_index,
        last_applied_index: view.last_applied_index,
        applied_position,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<u64, Peer> {
        (1..=3)
            .map(|id| {
                (
                    id,
                    Peer {
                        raft: format!("10.0.0.{id}:2115"),
                        client: format!("10.0.0.{id}:7070"),
                        kurrent: None,
                    },
                )
            })
            .collect()
    }

    /// Node `node_id`'s view of a three-voter cluster led by node 1 in term
    /// 4, with ten entries in its log.
    fn view(node_id: u64, role: RaftRole) -> RaftView {
        RaftView {
            node_id,
            role,
            term: 4,
            leader: Some(1),
            last_log_index: Some(9),
            last_applied_index: Some(9),
            members: peers(),
            voters: [1, 2, 3].into(),
            matched: None,
        }
    }

    #[test]
    fn each_raft_role_has_its_wire_role() {
        let roles = [
            (RaftRole::Leader, pb::ClusterRole::Leader),
            (RaftRole::Follower, pb::ClusterRole::Follower),
            (RaftRole::Candidate, pb::ClusterRole::Candidate),
            (RaftRole::Learner, pb::ClusterRole::Learner),
            (RaftRole::Shutdown, pb::ClusterRole::Shutdown),
        ];
        for (role, wire) in roles {
            assert_eq!(wire_role(role), wire, "{role:?}");
        }
    }

    #[test]
    fn the_leader_reports_each_followers_progress_but_not_its_own() {
        let mut leader = view(1, RaftRole::Leader);
        leader.matched = Some([(1, Some(9)), (2, Some(7)), (3, None)].into());
        let status = clustered(&leader, &peers(), 42);
        assert!(status.clustered);
        assert_eq!(status.role, pb::ClusterRole::Leader as i32);
        assert_eq!(status.leader_id, Some(1));
        assert_eq!(status.leader_client_address, "10.0.0.1:7070");
        assert_eq!(status.applied_position, 42);
        let rows: Vec<_> = status
            .members
            .iter()
            .map(|member| (member.id, member.matched_index, member.lag))
            .collect();
        assert_eq!(
            rows,
            [(1, None, None), (2, Some(7), Some(2)), (3, None, Some(10))]
        );
        assert!(
            status
                .members
                .iter()
                .all(|member| member.kind == pb::ClusterMemberKind::Voter as i32)
        );
        assert_eq!(status.members[1].raft_address, "10.0.0.2:2115");
        assert_eq!(status.members[1].client_address, "10.0.0.2:7070");
    }

    #[test]
    fn a_follower_names_the_leader_and_reports_no_progress() {
        let status = clustered(&view(2, RaftRole::Follower), &peers(), 42);
        assert_eq!(status.node_id, 2);
        assert_eq!(status.role, pb::ClusterRole::Follower as i32);
        assert_eq!(status.term, 4);
        assert_eq!(status.leader_client_address, "10.0.0.1:7070");
        assert!(
            status
                .members
                .iter()
                .all(|member| member.matched_index.is_none() && member.lag.is_none())
        );
    }

    #[test]
    fn an_added_learner_is_reported_with_the_addresses_the_membership_holds() {
        let mut follower = view(2, RaftRole::Follower);
        // Node 4 joined as a learner; this node's settings do not name it.
        follower.members.insert(
            4,
            Member::new(
                "10.0.0.4:2115",
                "10.0.0.4:7070",
                Some("10.0.0.4:2113".into()),
            ),
        );
        // No leader known (an election is running).
        follower.leader = None;
        let status = clustered(&follower, &peers(), 0);
        let added = &status.members[3];
        assert_eq!(added.id, 4);
        assert_eq!(added.kind, pb::ClusterMemberKind::Learner as i32);
        assert_eq!(added.raft_address, "10.0.0.4:2115");
        assert_eq!(added.client_address, "10.0.0.4:7070");
        assert_eq!(added.kurrent_address, "10.0.0.4:2113");
        assert_eq!(status.leader_id, None);
        assert_eq!(status.leader_client_address, "");
    }

    #[test]
    fn the_membership_wins_over_the_settings_which_fill_in_only_what_it_lacks() {
        let mut joined = view(4, RaftRole::Follower);
        // The leader moved its client listener since this node's settings
        // were written; node 3's entry has no client address.
        joined.members.get_mut(&1).expect("node 1").client = "10.0.1.1:7070".into();
        joined.members.get_mut(&3).expect("node 3").client = String::new();
        let status = clustered(&joined, &peers(), 0);
        assert_eq!(status.leader_client_address, "10.0.1.1:7070");
        assert_eq!(status.members[0].client_address, "10.0.1.1:7070");
        assert_eq!(status.members[2].client_address, "10.0.0.3:7070");
        // A joining node that holds no membership yet knows its leader's
        // address only if its settings name it.
        let mut joining = view(4, RaftRole::Learner);
        joining.members.clear();
        joining.voters.clear();
        let status = clustered(&joining, &peers(), 0);
        assert!(status.members.is_empty());
        assert_eq!(status.leader_client_address, "10.0.0.1:7070");
        let status = clustered(&joining, &BTreeMap::new(), 0);
        assert_eq!(status.leader_client_address, "");
    }

    fn reason_of(status: &Status) -> Option<String> {
        status.get_details_error_info().map(|info| info.reason)
    }

    #[test]
    fn each_membership_refusal_maps_to_its_status() {
        let cases = [
            (
                MembershipError::InvalidNodeId,
                Code::InvalidArgument,
                Some(reason::INVALID_ARGUMENT),
            ),
            (
                MembershipError::InvalidAddress {
                    which: "raft",
                    reason: "no port".into(),
                },
                Code::InvalidArgument,
                Some(reason::INVALID_ARGUMENT),
            ),
            (
                MembershipError::AlreadyMember {
                    id: 2,
                    existing: Member::new("10.0.0.2:2115", "10.0.0.2:7070", None),
                },
                Code::FailedPrecondition,
                None,
            ),
            (
                MembershipError::AddressTaken {
                    raft: "10.0.0.2:2115".into(),
                    owner: 2,
                },
                Code::FailedPrecondition,
                None,
            ),
            (
                MembershipError::LastVoter { id: 1 },
                Code::FailedPrecondition,
                None,
            ),
            (MembershipError::NotMember { id: 9 }, Code::NotFound, None),
            (
                MembershipError::InProgress,
                Code::Aborted,
                Some(reason::OPERATION_IN_PROGRESS),
            ),
            (
                MembershipError::NotCaughtUp {
                    id: 4,
                    raft: "10.0.0.4:2115".into(),
                    waited_seconds: 60,
                },
                Code::DeadlineExceeded,
                Some(reason::DEADLINE_EXCEEDED),
            ),
            (
                MembershipError::Stopped,
                Code::Unavailable,
                Some(reason::STORE_STOPPED),
            ),
        ];
        for (error, code, reason) in cases {
            let status = membership_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
            assert_eq!(reason_of(&status).as_deref(), reason, "{error}");
        }
    }

    #[test]
    fn not_leader_is_answered_as_writes_are_with_the_leaders_address() {
        let status = membership_status(&MembershipError::NotLeader {
            client: Some("10.0.0.1:7070".into()),
            kurrent: None,
        });
        assert_eq!(status.code(), Code::Unavailable);
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, reason::NOT_LEADER);
        assert_eq!(info.metadata["leader"], "10.0.0.1:7070");
        let unknown = membership_status(&MembershipError::NotLeader {
            client: None,
            kurrent: None,
        });
        assert_eq!(reason_of(&unknown).as_deref(), Some(reason::NOT_LEADER));
    }

    #[test]
    fn the_membership_answer_lists_every_node_with_its_kind() {
        let mut members = Members {
            nodes: peers(),
            voters: [1, 2].into(),
        };
        members.nodes.get_mut(&3).expect("node 3").kurrent = Some("10.0.0.3:2113".into());
        let answer = membership_response(&members);
        let rows: Vec<_> = answer
            .members
            .iter()
            .map(|member| (member.id, member.kind, member.kurrent_address.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                (1, pb::ClusterMemberKind::Voter as i32, ""),
                (2, pb::ClusterMemberKind::Voter as i32, ""),
                (3, pb::ClusterMemberKind::Learner as i32, "10.0.0.3:2113"),
            ]
        );
        assert_eq!(answer.members[2].client_address, "10.0.0.3:7070");
    }

    #[test]
    fn a_single_node_is_its_own_only_voter_at_its_head() {
        let status = single_node(17);
        assert!(!status.clustered);
        assert_eq!(status.role, pb::ClusterRole::SingleNode as i32);
        assert_eq!(status.applied_position, 17);
        assert_eq!(status.members.len(), 1);
        assert_eq!(status.members[0].kind, pb::ClusterMemberKind::Voter as i32);
    }
}
