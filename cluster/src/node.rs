//! One cluster node: its raft over the store, and the role it plays
//! (`server/CLUSTER.md`).
//!
//! [`ClusterNode::start`] opens the raft log (its own RocksDB under
//! `raft_dir`), builds openraft over [`RocksLogStore`], the
//! [`StoreStateMachine`] and the gRPC network, attaches the
//! [`RaftReplicator`] to the store, and starts the role watcher: the one task
//! that tells the store whether it leads. The store accepts writes only
//! after [`Store::lead`], which the watcher calls once this node is the
//! leader *and* has applied every entry up to its own term's first (blank)
//! entry, so numbering continues from an applied head that holds everything
//! committed before. On any other state it calls [`Store::follow`] with the
//! leader's client address, so writes are redirected there.
//!
//! The node with the smallest id of a fresh cluster (no vote, no log)
//! initialises it with every configured peer as a voter, unless it was
//! started to join ([`NodeOptions::join`]): such a node never initialises,
//! it waits for a leader to add it ([`ClusterNode::add_node`]). A node with
//! raft state ignores the configured peers for membership (membership lives
//! in the log). Every address of another node (redirects, status, gossip)
//! comes from the membership's [`Member`], which the leader replicated to
//! every node; the configured peers only fill in for ids the membership
//! does not hold yet.
//!
//! This module must not touch the event log except through the store's
//! replication API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::Store;
use openraft::{ChangeMembers, Config, Membership, Raft, ServerState, SnapshotPolicy};

use crate::log_store::RocksLogStore;
use cairn_proto::cluster::v1::raft_server::RaftServer;

use crate::network::{GrpcNetworkFactory, RaftService};
use crate::snapshot::Snapshots;
use crate::state_machine::{Proposals, RaftReplicator, StoreStateMachine};
use crate::types::{
    AddPlan, Member, Members, MembershipError, RemovePlan, TypeConfig, plan_add, plan_remove,
};

/// A member of the cluster as the settings name it: the same addresses as
/// the membership's [`Member`] (what `initialize` publishes).
pub type Peer = Member;

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id (a key of `peers`).
    pub node_id: u64,
    /// Every member, this node included. A joining node needs only itself.
    pub peers: BTreeMap<u64, Peer>,
    /// Started to join a running cluster: never initialise one, even with
    /// the smallest id; wait until the leader adds this node.
    pub join: bool,
    /// This node's own address (`host:port`) for reaching some peers' raft
    /// listeners, used instead of `Peer::raft` (which the membership
    /// publishes to every node); peers without a route are reached there.
    pub routes: std::collections::HashMap<u64, String>,
    /// Where the raft log lives (its own RocksDB).
    pub raft_dir: PathBuf,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// The election timeout's lower bound; the upper one is twice it.
    pub election_timeout: Duration,
    /// The bound on one node-to-node message.
    pub max_message_bytes: usize,
    /// Entries applied between two snapshots.
    pub snapshot_entries: u64,
    /// Entries the log keeps behind the newest snapshot.
    pub keep_log_entries: u64,
    /// Mutual TLS to the peers: the client side of every node-to-node
    /// channel (trusted CA, this node's certificate;
    /// [`GrpcNetworkFactory::with_tls`]). `None`: plaintext.
    pub tls: Option<rustls::ClientConfig>,
}

/// The bytes of one snapshot chunk between nodes (below the node-to-node
/// message bound).
const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// How long sending one snapshot chunk may take, ms; the last one includes
/// the follower's install.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The settings do not describe a cluster this node is part of.
    #[error("cluster settings: {0}")]
    Settings(String),
    /// The raft log could not be opened.
    #[error("cannot open the raft log: {0}")]
    Log(#[from] crate::log_store::LogStoreError),
    /// openraft refused to start.
    #[error("cannot start raft: {0}")]
    Raft(String),
    /// The snapshot directory could not be opened, or an interrupted
    /// install could not be finished.
    #[error("raft snapshots: {0}")]
    Snapshot(String),
}

/// A running node.
pub struct ClusterNode {
    raft: Raft<TypeConfig>,
    node_id: u64,
    peers: Arc<BTreeMap<u64, Peer>>,
    max_message_bytes: usize,
}

impl ClusterNode {
    /// Starts the node over `store` (opened with `StoreOptions::clustered`).
    /// Call from within a multi-threaded tokio runtime.
    pub async fn start(store: Store, options: NodeOptions) -> Result<Self, NodeError> {
        let NodeOptions {
            node_id,
            peers,
            join,
            routes,
            raft_dir,
            heartbeat,
            election_timeout,
            max_message_bytes,
            snapshot_entries,
            keep_log_entries,
            tls,
        } = options;
        if !peers.contains_key(&node_id) {
            return Err(NodeError::Settings(format!(
                "this node's id {node_id} is not among the peers {:?}",
                peers.keys().collect::<Vec<_>>()
            )));
        }
        let heartbeat_ms = u64::try_from(heartbeat.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let election_ms = u64::try_from(election_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(heartbeat_ms * 2);
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            // A snapshot is a checkpoint of the store (crate::snapshot):
            // cheap to take (hard links), but packing and verifying it
            // reads the whole store, so it is taken every
            // `snapshot_entries` entries, and the log keeps
            // `keep_log_entries` behind it so a briefly absent follower
            // catches up from the log, not a snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: keep_log_entries,
            // Sending a chunk, and installing at the last one, may take long:
            // the install verifies and copies the whole snapshot.
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_payload_entries: 64,
            ..Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|error| NodeError::Raft(error.to_string()))?,
        );
        let log_store = RocksLogStore::open(&raft_dir)?;
        let proposals = Proposals::new(node_id);
        let snapshots = Snapshots::open(raft_dir.join("snapshots"))
            .map_err(|error| NodeError::Snapshot(error.to_string()))?;
        // Before raft reads the store's applied state: a crash mid-install
        // left the store's contents half replaced.
        snapshots
            .resume_install(&store)
            .map_err(|error| NodeError::Snapshot(error.to_string()))?;
        let state_machine =
            StoreStateMachine::new(store.clone(), Arc::clone(&proposals), snapshots);
        let mut network = GrpcNetworkFactory::new(node_id, max_message_bytes).with_routes(routes);
        if let Some(config) = tls {
            network = network.with_tls(config);
        }
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|error| NodeError::Raft(error.to_string()))?;

        let peers = Arc::new(peers);
        let addresses = Arc::clone(&peers);
        let metrics = raft.metrics();
        store.attach_replicator(Arc::new(RaftReplicator::new(
            raft.clone(),
            tokio::runtime::Handle::current(),
            proposals,
            Arc::new(move |id| {
                let now = metrics.borrow();
                lookup(now.membership_config.membership(), &addresses, id)
                    .map_or((None, None), |member| member.redirect())
            }),
        )));
        tokio::spawn(watch_role(raft.clone(), store, node_id, Arc::clone(&peers)));

        let fresh = !raft
            .is_initialized()
            .await
            .map_err(|error| NodeError::Raft(error.to_string()))?;
        if fresh && join {
            tracing::info!(
                node_id,
                "waiting to be added to the cluster (--cluster-join)"
            );
        } else if fresh && peers.keys().next() == Some(&node_id) {
            match raft.initialize(peers.as_ref().clone()).await {
                Ok(()) => tracing::info!(node_id, "initialised the cluster"),
                // Another start of this node initialised it already.
                Err(error) => tracing::debug!(%error, "cluster already initialised"),
            }
        }
        Ok(Self {
            raft,
            node_id,
            peers,
            max_message_bytes,
        })
    }

    /// The node-to-node gRPC service to serve on the cluster listener.
    pub fn raft_service(&self) -> RaftServer<RaftService<TypeConfig>> {
        RaftService::new(self.raft.clone(), self.max_message_bytes).into_server()
    }

    /// This node's raft (status, membership changes).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Every configured member, this node included.
    pub fn peers(&self) -> &BTreeMap<u64, Peer> {
        &self.peers
    }

    /// The addresses of node `id`: the membership's, else the configured
    /// peer's; `None` for an id neither names.
    pub fn member(&self, id: u64) -> Option<Member> {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        lookup(now.membership_config.membership(), &self.peers, id)
    }

    /// Every member with its addresses: the membership's nodes, voters and
    /// learners; before this node holds a membership (a fresh or joining
    /// node), the configured peers.
    pub fn members(&self) -> BTreeMap<u64, Member> {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        let membership = now.membership_config.membership();
        if membership.nodes().next().is_none() {
            return self.peers.as_ref().clone();
        }
        membership
            .nodes()
            .filter_map(|(id, _)| Some((*id, lookup(membership, &self.peers, *id)?)))
            .collect()
    }

    /// Adds node `id` at `member` (`AddNode`): on the leader, as a learner
    /// first, then, once it holds the leader's log up to the entry that
    /// added it (waiting at most `catch_up`), as a voter. Adding a voter
    /// again at the same addresses changes nothing; a learner left by an
    /// add that did not finish is resumed. Answers the membership after the
    /// change; see [`plan_add`] for what is refused.
    pub async fn add_node(
        &self,
        id: u64,
        member: Member,
        catch_up: Duration,
    ) -> Result<Members, MembershipError> {
        let current = self.leader_membership()?;
        if plan_add(&current, id, &member)? == AddPlan::Unchanged {
            return Ok(Members::of(&current));
        }
        let raft_address = member.raft.clone();
        let added = self
            .raft
            .add_learner(id, member, false)
            .await
            .map_err(|error| self.change_error(id, error))?;
        // The learner holds everything up to the entry that added it; what
        // follows it receives as a voter. Stop waiting also once this node
        // stops leading (no replication): the promotion below then answers
        // NOT_LEADER.
        let holds = added.log_id.index;
        let waited = self
            .raft
            .wait(Some(catch_up))
            .metrics(
                |now| {
                    now.replication.as_ref().is_none_or(|replication| {
                        replication
                            .get(&id)
                            .is_some_and(|matched| matched.is_some_and(|log| log.index >= holds))
                    })
                },
                "the new learner holds the log",
            )
            .await;
        match waited {
            Ok(_) => {}
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                return Err(MembershipError::NotCaughtUp {
                    id,
                    raft: raft_address,
                    waited_seconds: catch_up.as_secs(),
                });
            }
            Err(openraft::metrics::WaitError::ShuttingDown) => {
                return Err(MembershipError::Stopped);
            }
        }
        let promoted = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
            .await
            .map_err(|error| self.change_error(id, error))?;
        Ok(Members::of(
            &promoted.membership.unwrap_or_else(|| self.membership()),
        ))
    }

    /// Removes node `id` (`RemoveNode`) on the leader: a voter leaves the
    /// voters and the membership in one change, a learner the membership.
    /// The leader may remove itself: it steps down once the change commits
    /// and the remaining voters elect. Answers the membership after the
    /// change; see [`plan_remove`] for what is refused.
    pub async fn remove_node(&self, id: u64) -> Result<Members, MembershipError> {
        let current = self.leader_membership()?;
        let change = match plan_remove(&current, id)? {
            RemovePlan::Voter => ChangeMembers::RemoveVoters([id].into()),
            RemovePlan::Learner => ChangeMembers::RemoveNodes([id].into()),
        };
        let changed = self
            .raft
            .change_membership(change, false)
            .await
            .map_err(|error| self.change_error(id, error))?;
        Ok(Members::of(
            &changed.membership.unwrap_or_else(|| self.membership()),
        ))
    }

    /// The membership of this node's log now.
    fn membership(&self) -> Membership<u64, Member> {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        now.membership_config.membership().clone()
    }

    /// The membership, when this node leads; else `NotLeader` naming the
    /// leader it knows.
    fn leader_membership(&self) -> Result<Membership<u64, Member>, MembershipError> {
        let metrics = self.raft.metrics();
        let now = metrics.borrow();
        if now.state.is_leader() && now.current_leader == Some(self.node_id) {
            return Ok(now.membership_config.membership().clone());
        }
        let (client, kurrent) = now
            .current_leader
            .filter(|leader| *leader != self.node_id)
            .and_then(|leader| lookup(now.membership_config.membership(), &self.peers, leader))
            .map_or((None, None), |member| member.redirect());
        Err(MembershipError::NotLeader { client, kurrent })
    }

    /// What raft's refusal of a membership change of node `id` means to
    /// the caller.
    fn change_error(
        &self,
        id: u64,
        error: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Member>>,
    ) -> MembershipError {
        use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                let (client, kurrent) = forward
                    .leader_node
                    .or_else(|| forward.leader_id.and_then(|leader| self.member(leader)))
                    .map_or((None, None), |member| member.redirect());
                MembershipError::NotLeader { client, kurrent }
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => match change {
                ChangeMembershipError::InProgress(_) => MembershipError::InProgress,
                ChangeMembershipError::EmptyMembership(_) => MembershipError::LastVoter { id },
                // Removed by a concurrent change between the two steps.
                ChangeMembershipError::LearnerNotFound(_) => MembershipError::NotMember { id },
            },
            RaftError::Fatal(fatal) => {
                tracing::error!(%fatal, "raft stopped during a membership change");
                MembershipError::Stopped
            }
        }
    }

    /// Stops raft (the store stays open; the caller closes it).
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not stop cleanly");
        }
    }
}

/// Tells the store whether it leads, from raft's metrics, until raft stops.
///
/// The store leads for one term at a time: a leader of term T lifts the
/// store's refusal once it applied its log (its blank entry of T included);
/// any other state, or the same node leading a later term (metrics may skip
/// the states in between), makes the store follow first, so nothing prepared
/// in an old term is numbered on top of an unapplied log.
async fn watch_role(
    raft: Raft<TypeConfig>,
    store: Store,
    node_id: u64,
    peers: Arc<BTreeMap<u64, Peer>>,
) {
    let mut metrics = raft.metrics();
    // The term the store leads in, when it does.
    let mut leading: Option<u64> = None;
    // The leader addresses the store was last told to follow. Compared as
    // addresses, not as a leader id: a joining node learns of the leader
    // before the membership entry that names its addresses.
    let mut following: Option<(Option<String>, Option<String>)> = None;
    loop {
        let (is_leader, caught_up, term, redirect) = {
            let now = metrics.borrow_and_update();
            let is_leader = now.state == ServerState::Leader && now.current_leader == Some(node_id);
            let applied = now.last_applied.map(|id| id.index);
            let caught_up = applied.is_some() && applied >= now.last_log_index;
            let redirect = now
                .current_leader
                .filter(|id| *id != node_id)
                .and_then(|id| lookup(now.membership_config.membership(), &peers, id))
                .map_or((None, None), |member| member.redirect());
            (is_leader, caught_up, now.current_term, redirect)
        };
        if leading.is_some_and(|led| !is_leader || led != term) {
            store.follow(None, None);
            leading = None;
            following = None;
        }
        if is_leader {
            if leading.is_none() && caught_up {
                match store.lead(term).await {
                    Ok(()) => leading = Some(term),
                    Err(error) => tracing::error!(%error, "the store cannot start to lead"),
                }
            }
        } else if following.as_ref() != Some(&redirect) {
            let (client, kurrent) = redirect.clone();
            store.follow(client, kurrent);
            following = Some(redirect);
        }
        if metrics.changed().await.is_err() {
            store.follow(None, None);
            return;
        }
    }
}

/// The addresses of node `id`: the membership's (what `initialize` or
/// `AddNode` wrote, the same on every node), else the configured peer's (a
/// node that does not hold the membership yet). A membership node without a
/// client address (none Cairn writes) falls back to the settings too.
fn lookup(
    membership: &Membership<u64, Member>,
    peers: &BTreeMap<u64, Peer>,
    id: u64,
) -> Option<Member> {
    membership
        .get_node(&id)
        .filter(|member| !member.client.is_empty())
        .or_else(|| peers.get(&id))
        .cloned()
}
