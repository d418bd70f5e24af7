//! Cluster status (`cairn.v1.Cluster`): how the node the client talks to
//! sees the cluster — its role and term, the leader, how far its raft log
//! and store have got, and the members with each follower's lag when it
//! leads.
//!
//! ```no_run
//! use cairn_client::{Client, ClusterRole};
//!
//! # async fn demo() -> cairn_client::Result<()> {
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! let status = client.cluster_status().await?;
//! if status.role == ClusterRole::Leader {
//!     for member in &status.members {
//!         println!("node {} lags {:?} entries", member.id, member.lag);
//!     }
//! } else if let Some(leader) = &status.leader_client_address {
//!     println!("writes go to {leader}");
//! }
//! # Ok(()) }
//! ```
//!
//! The call needs the `admin` role. A single node answers too: not
//! clustered, role [`ClusterRole::SingleNode`], itself as the only member.
//! The status is the answering node's: a cluster client asks the node it
//! uses now, while membership changes ([`Client::add_cluster_node`],
//! [`Client::remove_cluster_node`]) go to the leader and are retried there
//! while the leader changes, as writes are.

use cairn_proto::v1 as pb;

use crate::leader::Resend;
use crate::{Client, Result};

/// The role a node plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// Not clustered: a single node, taking every write itself.
    SingleNode,
    /// Leads the cluster: the only node that accepts writes.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A voter campaigning to lead.
    Candidate,
    /// Receives the log without voting.
    Learner,
    /// Its raft is stopping or stopped.
    Shutdown,
    /// A role this client does not know (a newer server).
    Unknown,
}

impl ClusterRole {
    /// Lower-case name (`single-node`, `leader`, `follower`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::SingleNode => "single-node",
            ClusterRole::Leader => "leader",
            ClusterRole::Follower => "follower",
            ClusterRole::Candidate => "candidate",
            ClusterRole::Learner => "learner",
            ClusterRole::Shutdown => "shutdown",
            ClusterRole::Unknown => "unknown",
        }
    }
}

impl From<i32> for ClusterRole {
    fn from(role: i32) -> Self {
        match pb::ClusterRole::try_from(role) {
            Ok(pb::ClusterRole::SingleNode) => ClusterRole::SingleNode,
            Ok(pb::ClusterRole::Leader) => ClusterRole::Leader,
            Ok(pb::ClusterRole::Follower) => ClusterRole::Follower,
            Ok(pb::ClusterRole::Candidate) => ClusterRole::Candidate,
            Ok(pb::ClusterRole::Learner) => ClusterRole::Learner,
            Ok(pb::ClusterRole::Shutdown) => ClusterRole::Shutdown,
            Ok(pb::ClusterRole::Unspecified) | Err(_) => ClusterRole::Unknown,
        }
    }
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMemberKind {
    /// Counts towards the majority (a single node is its own only voter).
    Voter,
    /// Receives the log but does not vote.
    Learner,
    /// A kind this client does not know (a newer server).
    Unknown,
}

impl ClusterMemberKind {
    /// Lower-case name (`voter`, `learner`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterMemberKind::Voter => "voter",
            ClusterMemberKind::Learner => "learner",
            ClusterMemberKind::Unknown => "unknown",
        }
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its node id.
    pub id: u64,
    /// `host:port` of its node-to-node (raft) listener; `None` on a single
    /// node.
    pub raft_address: Option<String>,
    /// `host:port` of its client listener, when the answering node's
    /// settings name it; `None` on a single node.
    pub client_address: Option<String>,
    /// Voter or learner.
    pub kind: ClusterMemberKind,
    /// Only from a leader, for the other members: the index of the last
    /// raft log entry the leader knows the member holds (`None` also while
    /// it knows of none).
    pub matched_index: Option<u64>,
    /// Only from a leader, for the other members: raft log entries the
    /// member is behind the leader (0: caught up).
    pub lag: Option<u64>,
}

/// How the answering node sees the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Its node id (0 on a single node).
    pub node_id: u64,
    /// Whether it runs in cluster mode.
    pub clustered: bool,
    /// Its role.
    pub role: ClusterRole,
    /// Its raft term (0 on a single node).
    pub term: u64,
    /// The leader's node id, when it knows one (itself when it leads).
    pub leader_id: Option<u64>,
    /// The leader's client address (where writes go), when known.
    pub leader_client_address: Option<String>,
    /// Index of the last entry of its raft log (`None`: empty, or a single
    /// node).
    pub last_log_index: Option<u64>,
    /// Index of the last raft log entry it applied to its store.
    pub last_applied_index: Option<u64>,
    /// Its store's applied head: the position of the next event it applies
    /// (a single node: its head).
    pub applied_position: u64,
    /// The members, by id.
    pub members: Vec<ClusterMember>,
}

/// `None` for the empty string, which the protocol sends for "unknown".
fn address(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<pb::ClusterMember> for ClusterMember {
    fn from(member: pb::ClusterMember) -> Self {
        let kind = match pb::ClusterMemberKind::try_from(member.kind) {
            Ok(pb::ClusterMemberKind::Voter) => ClusterMemberKind::Voter,
            Ok(pb::ClusterMemberKind::Learner) => ClusterMemberKind::Learner,
            Ok(pb::ClusterMemberKind::Unspecified) | Err(_) => ClusterMemberKind::Unknown,
        };
        Self {
            id: member.id,
            raft_address: address(member.raft_address),
            client_address: address(member.client_address),
            kind,
            matched_index: member.matched_index,
            lag: member.lag,
        }
    }
}

impl From<pb::ClusterStatusResponse> for ClusterStatus {
    fn from(status: pb::ClusterStatusResponse) -> Self {
        Self {
            node_id: status.node_id,
            clustered: status.clustered,
            role: ClusterRole::from(status.role),
            term: status.term,
            leader_id: status.leader_id,
            leader_client_address: address(status.leader_client_address),
            last_log_index: status.last_log_index,
            last_applied_index: status.last_applied_index,
            applied_position: status.applied_position,
            members: status
                .members
                .into_iter()
                .map(ClusterMember::from)
                .collect(),
        }
    }
}

/// A node to add to the cluster ([`Client::add_cluster_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClusterNode {
    /// Its node id (`--cluster-node-id`); 1 or more.
    pub node_id: u64,
    /// `host:port` of its raft listener, as every member reaches it.
    pub raft_address: String,
    /// `host:port` of its client listener.
    pub client_address: String,
    /// `host:port` of its KurrentDB facade, when it serves one.
    pub kurrent_address: Option<String>,
}

impl Client {
    /// Adds a node on the leader (`admin`): a learner first, a voter once it
    /// holds the log. Answers the membership after the change; a follower
    /// answers [`crate::Error::NotLeader`].
    ///
    /// A cluster client sends it to the leader and retries it while the
    /// leader changes; adding a voter again at the same addresses changes
    /// nothing, and a learner left by an add that did not finish is
    /// resumed, so a retry answers the membership as once. Like a write,
    /// the call ends at the client's
    /// [`failover_deadline`](crate::ClientBuilder::failover_deadline) (10 s
    /// by default) with [`crate::Error::Unavailable`], while the leader waits
    /// up to a minute for a new node to catch up: give a client that adds
    /// nodes with a long log to copy a longer deadline, or add the node
    /// again to resume.
    pub async fn add_cluster_node(&self, node: NewClusterNode) -> Result<Vec<ClusterMember>> {
        let request = pb::AddNodeRequest {
            node_id: node.node_id,
            raft_address: node.raft_address,
            client_address: node.client_address,
            kurrent_address: node.kurrent_address,
        };
        let response = self
            .on_leader_of(
                &self.cluster,
                Resend::AfterUnknownOutcome,
                request,
                |mut cluster, request| async move { cluster.add_node(request).await },
            )
            .await?;
        Ok(members(response))
    }

    /// Removes a node on the leader (`admin`; not the last voter). Answers
    /// the membership after the change. A cluster client sends it to the
    /// leader and retries it while the leader changes: a retry of an
    /// attempt that was committed after all answers that the node is not a
    /// member.
    pub async fn remove_cluster_node(&self, node_id: u64) -> Result<Vec<ClusterMember>> {
        let response = self
            .on_leader_of(
                &self.cluster,
                Resend::AfterUnknownOutcome,
                pb::RemoveNodeRequest { node_id },
                |mut cluster, request| async move { cluster.remove_node(request).await },
            )
            .await?;
        Ok(members(response))
    }

    /// How the node this client talks to sees the cluster (`admin`). A
    /// single node answers that it is not clustered.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let response = self
            .cluster
            .clone()
            .status(pb::ClusterStatusRequest {})
            .await?;
        Ok(response.into_inner().into())
    }
}

/// The members of a membership answer.
fn members(response: pb::ClusterMembershipResponse) -> Vec<ClusterMember> {
    response
        .members
        .into_iter()
        .map(ClusterMember::from)
        .collect()
}
