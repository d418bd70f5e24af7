//! The `cairn.v1.Cluster` gRPC adapter: cluster mode's admin status
//! (`server/CLUSTER.md`, "Membership and the node-to-node service").
//!
//! This module owns one answer, `Status`, in two shapes: a single node's
//! (not clustered; the store's head) and a cluster node's, read from this
//! node's raft metrics. The metrics are copied into a plain [`RaftView`]
//! first, under the metrics channel's read lock and with no await, so the
//! conversion to the wire ([`clustered`]) is a pure function of plain data,
//! tested below without a raft. The access check is the engine's security
//! ([`cairn_engine::Principal::require_any`], admin only, as the users and
//! backup calls): a denied call returns before anything of the cluster is
//! read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_cluster::node::{ClusterNode, Peer};
use cairn_engine::Engine;
use cairn_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth;
use super::status::to_status;

/// Largest request the service decodes: its one request has no fields.
pub const CLUSTER_REQUEST_BYTES: usize = 1024;
/// The operation named in a denied call's error.
const SEE_STATUS: &str = "see the cluster status";

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
}

/// What the status needs of one instant of this node's raft metrics, as
/// plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RaftView {
    /// This node's id.
    node_id: u64,
    /// Its role.
    role: pb::ClusterRole,
    /// Its current term.
    term: u64,
    /// The leader it knows.
    leader: Option<u64>,
    /// Index of the last entry of its raft log.
    last_log_index: Option<u64>,
    /// Index of the last entry it applied.
    last_applied_index: Option<u64>,
    /// The membership of its log: id to raft address.
    members: BTreeMap<u64, String>,
    /// The voters among `members`; the others are learners.
    voters: BTreeSet<u64>,
    /// Only while it leads: per member (itself included, as openraft
    /// reports it), the index of the last entry known to be on it.
    matched: Option<BTreeMap<u64, Option<u64>>>,
}

impl RaftView {
    /// `node`'s metrics now. Holds the metrics channel's read lock only for
    /// the copy.
    fn of(node: &ClusterNode) -> Self {
        let metrics = node.raft().metrics();
        let now = metrics.borrow();
        // openraft's `ServerState` has five states: the four asked for
        // below and `Shutdown`.
        let role = if now.state.is_leader() {
            pb::ClusterRole::Leader
        } else if now.state.is_follower() {
            pb::ClusterRole::Follower
        } else if now.state.is_candidate() {
            pb::ClusterRole::Candidate
        } else if now.state.is_learner() {
            pb::ClusterRole::Learner
        } else {
            pb::ClusterRole::Shutdown
        };
        let membership = now.membership_config.membership();
        Self {
            node_id: node.node_id(),
            role,
            term: now.current_term,
            leader: now.current_leader,
            last_log_index: now.last_log_index,
            last_applied_index: now.last_applied.as_ref().map(|log_id| log_id.index),
            members: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
            matched: now.replication.as_ref().map(|replication| {
                replication
                    .iter()
                    .map(|(id, matched)| (*id, matched.as_ref().map(|log_id| log_id.index)))
                    .collect()
            }),
        }
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
            kind: pb::ClusterMemberKind::Voter as i32,
            matched_index: None,
            lag: None,
        }],
    }
}

/// Entries of a log whose last index is `last_log_index` that a member
/// holding up to `matched` lacks: raft indexes start at 0, so a log holds
/// `last + 1` entries and a member that matched index `m` holds `m + 1`.
fn lag(last_log_index: Option<u64>, matched: Option<u64>) -> u64 {
    let entries = last_log_index.map_or(0, |last| last + 1);
    let held = matched.map_or(0, |matched| matched + 1);
    entries.saturating_sub(held)
}

/// A cluster node's answer from its raft `view`, its configured `peers`
/// (the client addresses: raft's membership knows only raft addresses) and
/// its store's applied head.
fn clustered(
    view: &RaftView,
    peers: &BTreeMap<u64, Peer>,
    applied_position: u64,
) -> pb::ClusterStatusResponse {
    let client_address = |id: u64| {
        peers
            .get(&id)
            .map(|peer| peer.client.clone())
            .unwrap_or_default()
    };
    let members = view
        .members
        .iter()
        .map(|(&id, raft_address)| {
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
                raft_address: raft_address.clone(),
                client_address: client_address(id),
                kind: kind as i32,
                matched_index: progress.flatten(),
                lag: progress.map(|matched| lag(view.last_log_index, matched)),
            }
        })
        .collect();
    pb::ClusterStatusResponse {
        node_id: view.node_id,
        clustered: true,
        role: view.role as i32,
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
    fn view(node_id: u64, role: pb::ClusterRole) -> RaftView {
        RaftView {
            node_id,
            role,
            term: 4,
            leader: Some(1),
            last_log_index: Some(9),
            last_applied_index: Some(9),
            members: peers()
                .into_iter()
                .map(|(id, peer)| (id, peer.raft))
                .collect(),
            voters: [1, 2, 3].into(),
            matched: None,
        }
    }

    #[test]
    fn lag_counts_the_entries_a_member_lacks() {
        assert_eq!(lag(Some(9), Some(9)), 0);
        assert_eq!(lag(Some(9), Some(6)), 3);
        // Nothing matched yet: the whole log, index 0 included.
        assert_eq!(lag(Some(9), None), 10);
        assert_eq!(lag(None, None), 0);
        // A report ahead of the leader's own log (metrics are not one
        // atomic snapshot across the two) is no negative lag.
        assert_eq!(lag(Some(3), Some(5)), 0);
    }

    #[test]
    fn the_leader_reports_each_followers_progress_but_not_its_own() {
        let mut leader = view(1, pb::ClusterRole::Leader);
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
        let status = clustered(&view(2, pb::ClusterRole::Follower), &peers(), 42);
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
    fn learners_and_unknown_addresses_are_reported_as_such() {
        let mut follower = view(2, pb::ClusterRole::Follower);
        // Node 4 joined as a learner; this node's settings do not name it.
        follower.members.insert(4, "10.0.0.4:2115".into());
        // No leader known (an election is running).
        follower.leader = None;
        let status = clustered(&follower, &peers(), 0);
        let added = &status.members[3];
        assert_eq!(added.id, 4);
        assert_eq!(added.kind, pb::ClusterMemberKind::Learner as i32);
        assert_eq!(added.client_address, "");
        assert_eq!(status.leader_id, None);
        assert_eq!(status.leader_client_address, "");
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
