//! The node-to-node transport over real gRPC on loopback: three openraft nodes
//! in one process, each behind its own tonic server on `127.0.0.1:0`, elect a
//! leader, replicate writes, and elect a new leader when the old one stops.
//! Then the transport's edges: an oversized or undecodable payload, a stopped
//! raft's error travelling back in the payload, and an unreachable peer.
//!
//! The storage is a small in-memory log store below and the tests' shared
//! in-memory state machine (`support`), not `openraft-memstore` 0.9: that
//! crate implements the v1 `RaftStorage` trait, which openraft's `storage-v2`
//! feature (on for the whole workspace) removes, and its type config has
//! `Node = ()`, while the transport needs `BasicNode`'s address.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
// `declare_raft_types!` names its default `SnapshotData` as a bare `Cursor`.
use std::io::Cursor;
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use cairn_cluster::network::{DEFAULT_MAX_MESSAGE_BYTES, GrpcNetworkFactory};
use cairn_proto::cluster::v1::RaftRequest;
use cairn_proto::cluster::v1::raft_client::RaftClient;
use openraft::error::{Fatal, PayloadTooLarge, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    BasicNode, CommittedLeaderId, Config, Entry, EntryPayload, LogId, OptionalSend, Raft,
    RaftLogReader, ServerState, StorageError, Vote,
};
use serde::{Deserialize, Serialize};
use support::{HANG_GUARD, Model, Served, leader_seen_by};
use tokio::net::TcpListener;

openraft::declare_raft_types!(
    /// A test configuration: each write is a number, applied in log order.
    TestConfig:
        D = u64,
        R = (),
);

type C = TestConfig;

// ---- in-memory storage ----

/// The raft log and vote, shared by the log store and its readers.
#[derive(Debug, Default)]
struct LogData {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<C>>,
}

#[derive(Debug, Clone, Default)]
struct MemLog(Arc<Mutex<LogData>>);

impl MemLog {
    fn data(&self) -> std::sync::MutexGuard<'_, LogData> {
        self.0.lock().expect("log lock")
    }
}

impl RaftLogReader<C> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        Ok(self
            .data()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<C> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let data = self.data();
        let last = data.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: data.last_purged,
            last_log_id: last.or(data.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.data().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.data().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.data().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.data().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut data = self.data();
            for entry in entries {
                data.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.data().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut data = self.data();
        data.entries = data.entries.split_off(&(log_id.index + 1));
        data.last_purged = Some(log_id);
        Ok(())
    }
}

/// The test model of the state machine: every applied write, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Writes(Vec<u64>);

impl Model for Writes {
    type Config = C;

    fn apply(&mut self, write: u64) -> std::io::Result<()> {
        self.0.push(write);
        Ok(())
    }

    fn response(&self) {}
}

type MemStateMachine = support::MemStateMachine<Writes>;

impl MemStateMachine {
    fn writes(&self) -> Vec<u64> {
        self.model().0
    }
}

// ---- nodes ----

/// One raft node and the tonic server in front of it.
struct Node {
    id: u64,
    addr: SocketAddr,
    raft: Raft<C>,
    state: MemStateMachine,
    served: Served,
}

impl Node {
    /// Starts node `id` on a fresh loopback port, its messages bounded to
    /// `max_message_bytes`.
    async fn start(id: u64, max_message_bytes: usize) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = Config {
            cluster_name: "network-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            ..Config::default()
        };
        let config = Arc::new(config.validate().expect("valid raft config"));
        let state = MemStateMachine::default();
        let raft = Raft::new(
            id,
            config,
            GrpcNetworkFactory::new(id, max_message_bytes),
            MemLog::default(),
            state.clone(),
        )
        .await
        .expect("raft starts");
        let served = Served::start(raft.clone(), max_message_bytes, listener);
        Node {
            id,
            addr,
            raft,
            state,
            served,
        }
    }

    fn basic_node(&self) -> BasicNode {
        BasicNode::new(self.addr.to_string())
    }

    /// Stops raft, then the server (whose peers then find it unreachable).
    async fn stop(self) {
        self.raft.shutdown().await.expect("raft shuts down");
        self.served.stop(HANG_GUARD).await;
    }
}

/// Waits until `node` has applied exactly `log_id`.
async fn wait_applied(node: &Node, log_id: LogId<u64>) {
    node.raft
        .wait(Some(HANG_GUARD))
        .metrics(
            |m| m.last_applied == Some(log_id),
            format!("node {} applied {log_id}", node.id),
        )
        .await
        .expect("applied within the hang guard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_grpc_and_survive_losing_the_leader() {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(id, DEFAULT_MAX_MESSAGE_BYTES).await);
    }
    let members: BTreeMap<u64, BasicNode> = nodes.iter().map(|n| (n.id, n.basic_node())).collect();
    nodes[0]
        .raft
        .initialize(members)
        .await
        .expect("node 1 initializes the cluster");

    let leader = leader_seen_by(&nodes[0].raft, None).await;
    let leader_node = nodes
        .iter()
        .find(|n| n.id == leader)
        .expect("leader is a member");
    let mut last = None;
    for write in 1..=5u64 {
        let response = leader_node
            .raft
            .client_write(write)
            .await
            .expect("the leader accepts a write");
        last = Some(response.log_id);
    }
    let last = last.expect("five writes");
    for node in &nodes {
        wait_applied(node, last).await;
        assert_eq!(node.state.writes(), vec![1, 2, 3, 4, 5], "node {}", node.id);
    }

    let position = nodes.iter().position(|n| n.id == leader).expect("leader");
    nodes.remove(position).stop().await;

    let new_leader = leader_seen_by(&nodes[0].raft, Some(leader)).await;
    let survivors: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
    assert!(
        survivors.contains(&new_leader),
        "{new_leader} not in {survivors:?}"
    );
    let new_leader_node = nodes.iter().find(|n| n.id == new_leader).expect("survivor");
    new_leader_node
        .raft
        .wait(Some(HANG_GUARD))
        .state(ServerState::Leader, "the new leader takes office")
        .await
        .expect("leader within the hang guard");
    let response = new_leader_node
        .raft
        .client_write(6)
        .await
        .expect("the new leader accepts a write");
    for node in &nodes {
        wait_applied(node, response.log_id).await;
        assert_eq!(
            node.state.writes(),
            vec![1, 2, 3, 4, 5, 6],
            "node {}",
            node.id
        );
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_payload_over_the_bound_or_undecodable_is_refused() {
    let max = 1024;
    let node = Node::start(1, max).await;
    let mut client = RaftClient::connect(format!("http://{}", node.addr))
        .await
        .expect("connect");

    let too_large = RaftRequest {
        payload: vec![0; max + 1].into(),
    };
    let status = client
        .append_entries(too_large)
        .await
        .expect_err("a payload over the bound is refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    let garbage = RaftRequest {
        payload: vec![0xff; 16].into(),
    };
    let status = client
        .vote(garbage)
        .await
        .expect_err("an undecodable payload is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("could not decode"), "{status:?}");
    node.stop().await;
}

fn rpc_option() -> RPCOption {
    RPCOption::new(HANG_GUARD)
}

#[tokio::test]
async fn a_stopped_raft_answers_with_its_own_fatal_error() {
    let node = Node::start(2, DEFAULT_MAX_MESSAGE_BYTES).await;
    node.raft.shutdown().await.expect("raft shuts down");
    let mut factory = GrpcNetworkFactory::new(1, DEFAULT_MAX_MESSAGE_BYTES);
    let mut connection =
        RaftNetworkFactory::<C>::new_client(&mut factory, 2, &node.basic_node()).await;
    let vote = VoteRequest::new(Vote::new(1, 1), None);
    let error = RaftNetwork::<C>::vote(&mut connection, vote, rpc_option())
        .await
        .expect_err("a stopped raft refuses");
    match error {
        RPCError::RemoteError(remote) => {
            assert_eq!(remote.target, 2);
            assert!(
                matches!(remote.source, RaftError::Fatal(Fatal::Stopped)),
                "{:?}",
                remote.source
            );
        }
        other => panic!("expected the remote raft's error, got {other:?}"),
    }
    node.served.stop(HANG_GUARD).await;
}

#[tokio::test]
async fn a_peer_that_is_not_listening_is_unreachable() {
    // A port that was just free: bound, then released.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let mut factory = GrpcNetworkFactory::new(1, DEFAULT_MAX_MESSAGE_BYTES);
    let mut connection =
        RaftNetworkFactory::<C>::new_client(&mut factory, 2, &BasicNode::new(addr.to_string()))
            .await;
    let vote = VoteRequest::new(Vote::new(1, 1), None);
    let error = RaftNetwork::<C>::vote(&mut connection, vote, rpc_option())
        .await
        .expect_err("nobody answers");
    assert!(matches!(error, RPCError::Unreachable(_)), "{error:?}");
}

#[tokio::test]
async fn entries_over_the_bound_come_back_as_payload_too_large_with_half_as_many() {
    // Refused before anything is sent, so no peer needs to listen.
    let mut factory = GrpcNetworkFactory::new(1, 48);
    let mut connection =
        RaftNetworkFactory::<C>::new_client(&mut factory, 2, &BasicNode::new("127.0.0.1:9")).await;
    let entries = (1..=8)
        .map(|index| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(u64::MAX),
        })
        .collect();
    let request = AppendEntriesRequest::<C> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        entries,
        leader_commit: None,
    };
    let error = RaftNetwork::<C>::append_entries(&mut connection, request, rpc_option())
        .await
        .expect_err("eight entries do not fit in 48 bytes");
    match error {
        RPCError::PayloadTooLarge(too_large) => {
            assert_eq!(too_large, PayloadTooLarge::new_entries_hint(4));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}
