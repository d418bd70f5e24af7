//! This node's raft state as plain data, for the two places that show it:
//! the `cairn.v1.Cluster` status (`grpc/cluster.rs`) and `/metrics` (the
//! engine's [`ClusterFigures`] hook, which [`NodeFigures`] implements).
//!
//! This module owns [`RaftView`], the one copy of openraft's metrics into
//! plain data (taken under the metrics channel's read lock, with no await),
//! the lag rule ([`lag`]) both places report, and the conversion of a view to
//! the engine's [`RaftFigures`], a pure function tested below without a raft.
//! It names no wire type: the status maps [`RaftRole`] to its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_cluster::node::ClusterNode;
use cairn_cluster::types::Member;
use cairn_engine::metrics::{ClusterFigures, FollowerFigures, RaftFigures};

/// The role a node plays, as openraft's `ServerState` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RaftRole {
    /// It leads.
    Leader,
    /// A voter following a leader.
    Follower,
    /// A voter running an election.
    Candidate,
    /// A member that does not vote.
    Learner,
    /// Its raft stopped.
    Shutdown,
}

/// What the status and the metrics need of one instant of this node's raft
/// metrics, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RaftView {
    /// This node's id.
    pub(crate) node_id: u64,
    /// Its role.
    pub(crate) role: RaftRole,
    /// Its current term.
    pub(crate) term: u64,
    /// The leader it knows.
    pub(crate) leader: Option<u64>,
    /// Index of the last entry of its raft log.
    pub(crate) last_log_index: Option<u64>,
    /// Index of the last entry it applied.
    pub(crate) last_applied_index: Option<u64>,
    /// The membership of its log: id to the addresses it holds.
    pub(crate) members: BTreeMap<u64, Member>,
    /// The voters among `members`; the others are learners.
    pub(crate) voters: BTreeSet<u64>,
    /// Only while it leads: per member (itself included, as openraft
    /// reports it), the index of the last entry known to be on it.
    pub(crate) matched: Option<BTreeMap<u64, Option<u64>>>,
}

impl RaftView {
    /// `node`'s metrics now. Holds the metrics channel's read lock only for
    /// the copy.
    pub(crate) fn of(node: &ClusterNode) -> Self {
        let metrics = node.raft().metrics();
        let now = metrics.borrow();
        // openraft's `ServerState` has five states: the four asked for
        // below and `Shutdown`.
        let role = if now.state.is_leader() {
            RaftRole::Leader
        } else if now.state.is_follower() {
            RaftRole::Follower
        } else if now.state.is_candidate() {
            RaftRole::Candidate
        } else if now.state.is_learner() {
            RaftRole::Learner
        } else {
            RaftRole::Shutdown
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
                .map(|(id, member)| (*id, member.clone()))
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

    /// The figures `/metrics` shows of this view: the leader's progress is
    /// reported per node it replicates to, itself excluded (it has no lag).
    pub(crate) fn figures(&self) -> RaftFigures {
        let followers = self
            .matched
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(&id, &matched_index)| FollowerFigures {
                id,
                matched_index,
                lag_entries: lag(self.last_log_index, matched_index),
            })
            .collect();
        RaftFigures {
            node_id: self.node_id,
            is_leader: self.role == RaftRole::Leader,
            term: self.term,
            last_log_index: self.last_log_index,
            last_applied_index: self.last_applied_index,
            leader_id: self.leader,
            voters: self.voters.len() as u64,
            followers,
        }
    }
}

/// Entries of a log whose last index is `last_log_index` that a member
/// holding up to `matched` lacks: raft indexes start at 0, so a log holds
/// `last + 1` entries and a member that matched index `m` holds `m + 1`.
pub(crate) fn lag(last_log_index: Option<u64>, matched: Option<u64>) -> u64 {
    let entries = last_log_index.map_or(0, |last| last + 1);
    let held = matched.map_or(0, |matched| matched + 1);
    entries.saturating_sub(held)
}

/// The engine's raft figures hook over this node's raft: each scrape reads
/// a fresh [`RaftView`].
pub(crate) struct NodeFigures(pub(crate) Arc<ClusterNode>);

impl ClusterFigures for NodeFigures {
    fn raft_figures(&self) -> RaftFigures {
        RaftView::of(&self.0).figures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node `node_id`'s view of a three-voter cluster led by node 1 in term
    /// 4, with ten entries in its log.
    fn view(node_id: u64, role: RaftRole) -> RaftView {
        RaftView {
            node_id,
            role,
            term: 4,
            leader: Some(1),
            last_log_index: Some(9),
            last_applied_index: Some(8),
            members: (1..=3)
                .map(|id| {
                    let member = Member::new(
                        format!("10.0.0.{id}:2115"),
                        format!("10.0.0.{id}:7070"),
                        None,
                    );
                    (id, member)
                })
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
    fn the_leaders_figures_hold_each_other_nodes_progress_but_not_its_own() {
        let mut leader = view(1, RaftRole::Leader);
        // Node 4 is a learner: replicated to, not a voter.
        leader.matched = Some([(1, Some(9)), (2, Some(7)), (3, None), (4, Some(0))].into());
        let figures = leader.figures();
        assert!(figures.is_leader);
        assert_eq!(
            (figures.node_id, figures.term, figures.leader_id),
            (1, 4, Some(1))
        );
        assert_eq!(
            (figures.last_log_index, figures.last_applied_index),
            (Some(9), Some(8))
        );
        assert_eq!(figures.voters, 3);
        let rows: Vec<_> = figures
            .followers
            .iter()
            .map(|follower| (follower.id, follower.matched_index, follower.lag_entries))
            .collect();
        assert_eq!(rows, [(2, Some(7), 2), (3, None, 10), (4, Some(0), 9)]);
    }

    #[test]
    fn a_followers_figures_name_its_leader_and_hold_no_progress() {
        let mut follower = view(2, RaftRole::Follower);
        let figures = follower.figures();
        assert!(!figures.is_leader);
        assert_eq!((figures.node_id, figures.leader_id), (2, Some(1)));
        assert!(figures.followers.is_empty());
        // An election: no leader known, and a candidate does not lead.
        follower.role = RaftRole::Candidate;
        follower.leader = None;
        let figures = follower.figures();
        assert!(!figures.is_leader);
        assert_eq!(figures.leader_id, None);
    }
}
