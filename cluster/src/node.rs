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
//! initialises it with every configured peer as a voter; a node with raft
//! state ignores the configured peers (membership lives in the log).
//!
//! This module must not touch the event log except through the store's
//! replication API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_storage::Store;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};

use crate::log_store::RocksLogStore;
use cairn_proto::cluster::v1::raft_server::RaftServer;

use crate::network::{GrpcNetworkFactory, RaftService};
use crate::state_machine::{Proposals, RaftReplicator, StoreStateMachine};
use crate::types::TypeConfig;

/// A member of the cluster as the settings name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `host:port` of its node-to-node (raft) listener.
    pub raft: String,
    /// `host:port` of its client (`cairn.v1`) listener: where writes are
    /// redirected when it leads.
    pub client: String,
    /// `host:port` its KurrentDB facade is reached at, when it serves one:
    /// what KurrentDB clients are redirected to and what gossip lists.
    pub kurrent: Option<String>,
}

impl Peer {
    /// The `NotLeader` addresses naming this peer as the leader.
    fn redirect(&self) -> (Option<String>, Option<String>) {
        (Some(self.client.clone()), self.kurrent.clone())
    }
}

/// How to run one node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id (a key of `peers`).
    pub node_id: u64,
    /// Every member, this node included.
    pub peers: BTreeMap<u64, Peer>,
    /// Where the raft log lives (its own RocksDB).
    pub raft_dir: PathBuf,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// The election timeout's lower bound; the upper one is twice it.
    pub election_timeout: Duration,
    /// The bound on one node-to-node message.
    pub max_message_bytes: usize,
}

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
            raft_dir,
            heartbeat,
            election_timeout,
            max_message_bytes,
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
            // Snapshots are not built yet (state_machine.rs): the log is
            // kept whole, so a lagging node catches up from it.
            snapshot_policy: SnapshotPolicy::Never,
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
        let state_machine = StoreStateMachine::new(store.clone(), Arc::clone(&proposals));
        let network = GrpcNetworkFactory::new(node_id, max_message_bytes);
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|error| NodeError::Raft(error.to_string()))?;

        let peers = Arc::new(peers);
        let addresses = Arc::clone(&peers);
        store.attach_replicator(Arc::new(RaftReplicator::new(
            raft.clone(),
            tokio::runtime::Handle::current(),
            proposals,
            Arc::new(move |id| addresses.get(&id).map_or((None, None), Peer::redirect)),
        )));
        tokio::spawn(watch_role(raft.clone(), store, node_id, Arc::clone(&peers)));

        let fresh = !raft
            .is_initialized()
            .await
            .map_err(|error| NodeError::Raft(error.to_string()))?;
        if fresh && peers.keys().next() == Some(&node_id) {
            let members: BTreeMap<u64, BasicNode> = peers
                .iter()
                .map(|(id, peer)| (*id, BasicNode::new(&peer.raft)))
                .collect();
            match raft.initialize(members).await {
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

    /// The client address of node `id`, if it is a configured peer.
    pub fn client_address(&self, id: u64) -> Option<&str> {
        self.peers.get(&id).map(|peer| peer.client.as_str())
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
    // The leader the store was last told to follow.
    let mut following: Option<Option<u64>> = None;
    loop {
        let (is_leader, caught_up, term, leader) = {
            let now = metrics.borrow_and_update();
            let is_leader = now.state == ServerState::Leader && now.current_leader == Some(node_id);
            let applied = now.last_applied.map(|id| id.index);
            let caught_up = applied.is_some() && applied >= now.last_log_index;
            (is_leader, caught_up, now.current_term, now.current_leader)
        };
        if leading.is_some_and(|led| !is_leader || led != term) {
            store.follow(None, None);
            leading = None;
            following = None;
        }
        if is_leader {
            if leading.is_none() && caught_up {
                match store.lead().await {
                    Ok(()) => leading = Some(term),
                    Err(error) => tracing::error!(%error, "the store cannot start to lead"),
                }
            }
        } else if following != Some(leader) {
            let (client, kurrent) = leader
                .filter(|id| *id != node_id)
                .and_then(|id| peers.get(&id))
                .map_or((None, None), Peer::redirect);
            store.follow(client, kurrent);
            following = Some(leader);
        }
        if metrics.changed().await.is_err() {
            store.follow(None, None);
            return;
        }
    }
}
