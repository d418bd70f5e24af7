//! A network partition over real loopback gRPC (issue 17; `server/CLUSTER.md`,
//! "Tests and measurements the issue asks for": the partition test).
//!
//! Three nodes, each with the real RocksDB raft log store in its own
//! temporary directory, the tests' in-memory state machine (`support`) and a
//! tonic server on `127.0.0.1:0`. Every directed link i -> j goes through a
//! [`FaultProxy`] of its own: node i's network routes peer j to proxy(i -> j)
//! ([`GrpcNetworkFactory::with_routes`]), so cutting the four proxies between
//! the leader and the followers isolates the leader both ways while the
//! followers still reach each other.
//!
//! What it checks is safety, never timing: the isolated leader does not
//! acknowledge a write, the majority elects a new leader and acknowledges
//! one, and after healing every node holds the acknowledged entries in the
//! same order and none holds the minority's entry, in its state machine or in
//! its raft log. Waits are bounded only by a hang guard.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::log_store::RocksLogStore;
use cairn_cluster::network::{DEFAULT_MAX_MESSAGE_BYTES, GrpcNetworkFactory};
use cairn_cluster::types::{GroupApplied, GroupEntry, Member, Proposal, TypeConfig};
use cairn_testkit::proxy::FaultProxy;
use openraft::{Config, Entry, EntryPayload, LogId, Raft, RaftLogReader, RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use support::{HANG_GUARD, Model, Served, leader_seen_by};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The nodes' ids.
const IDS: [u64; 3] = [1, 2, 3];

/// How long the isolated leader's write is given to (wrongly) succeed. Not a
/// timing assertion: the write must not return `Ok` however long it is
/// given; a timeout and an error both pass.
const MINORITY_WRITE_WAIT: Duration = Duration::from_secs(3);

/// The test model of the state machine: every applied group entry, in order,
/// whatever its numbers (the test checks which entries arrive, not their
/// positions).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied(Vec<GroupEntry>);

impl Model for Applied {
    type Config = TypeConfig;

    fn apply(&mut self, entry: GroupEntry) -> std::io::Result<()> {
        self.0.push(entry);
        Ok(())
    }

    fn response(&self) -> GroupApplied {
        GroupApplied {
            head: self.0.iter().map(|entry| entry.events).sum(),
            skipped: false,
        }
    }
}

type MemStateMachine = support::MemStateMachine<Applied>;

/// A one-event group entry named `name` (its opaque bytes), numbered from
/// `first_position`.
fn group(name: &str, first_position: u64) -> GroupEntry {
    GroupEntry {
        group: name.as_bytes().to_vec(),
        first_position,
        events: 1,
        next_stream_id: 1,
        records: Vec::new(),
        changed_streams: Vec::new(),
        cf_layout: 0,
        leader_term: 1,
        proposal: Proposal {
            node: 0,
            incarnation: 0,
            sequence: first_position,
        },
    }
}

/// One raft node over RocksDB and the tonic server in front of it.
struct Node {
    id: u64,
    raft: Raft<TypeConfig>,
    /// A clone of the node's state machine, to read what raft applied.
    state: MemStateMachine,
    /// A clone of the node's log store, to read its raft log.
    log: RocksLogStore,
    served: Served,
    /// The log store's directory; declared last so it is removed after every
    /// handle on the database above is dropped.
    _dir: TempDir,
}

impl Node {
    /// Starts node `id` serving on `listener`, reaching each peer through the
    /// address `routes` gives for it.
    async fn start(id: u64, listener: TcpListener, routes: HashMap<u64, String>) -> Node {
        let config = Config {
            cluster_name: "partition-test".into(),
            // Short, to keep the test quick, with the election timeout well
            // above the heartbeat so that a loaded machine (synced RocksDB
            // writes on two cores) does not start spurious elections.
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..Config::default()
        };
        let config = Arc::new(config.validate().expect("valid raft config"));
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().to_owned();
        let log = tokio::task::spawn_blocking(move || RocksLogStore::open(path))
            .await
            .expect("open task")
            .expect("open the log store");
        let state = MemStateMachine::default();
        let network = GrpcNetworkFactory::new(id, DEFAULT_MAX_MESSAGE_BYTES).with_routes(routes);
        let raft = Raft::new(id, config, network, log.clone(), state.clone())
            .await
            .expect("raft starts");
        let served = Served::start(raft.clone(), DEFAULT_MAX_MESSAGE_BYTES, listener);
        Node {
            id,
            raft,
            state,
            log,
            served,
            _dir: dir,
        }
    }

    /// The group entries applied so far, in order.
    fn applied(&self) -> Vec<GroupEntry> {
        self.state.model().0
    }

    /// Every entry of the node's raft log (none is purged in this test).
    async fn raft_log(&self) -> Vec<Entry<TypeConfig>> {
        let mut reader = self.log.clone();
        reader
            .try_get_log_entries(..)
            .await
            .expect("read the raft log")
    }

    /// Stops the server and waits for it.
    async fn stop_server(self) {
        self.served.stop(HANG_GUARD).await;
    }
}

/// The three nodes and the six proxies between them.
struct Cluster {
    nodes: Vec<Node>,
    /// proxy(i -> j) under `(i, j)`: what node i reaches node j through.
    proxies: BTreeMap<(u64, u64), FaultProxy>,
}

impl Cluster {
    /// Binds three listeners, puts a proxy on each directed link, starts the
    /// nodes with those routes and initializes node 1 with all three as
    /// voters. The membership publishes each node's real address; no node
    /// uses it, since every peer has a route.
    async fn start() -> Cluster {
        let mut listeners = Vec::new();
        let mut addrs = BTreeMap::<u64, SocketAddr>::new();
        for id in IDS {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.insert(id, listener.local_addr().expect("local addr"));
            listeners.push((id, listener));
        }
        let mut proxies = BTreeMap::new();
        for from in IDS {
            for to in IDS.into_iter().filter(|to| *to != from) {
                proxies.insert((from, to), FaultProxy::start(addrs[&to]).await);
            }
        }
        let mut nodes = Vec::new();
        for (id, listener) in listeners {
            let routes = IDS
                .into_iter()
                .filter(|peer| *peer != id)
                .map(|peer| (peer, proxies[&(id, peer)].addr().to_string()))
                .collect();
            nodes.push(Node::start(id, listener, routes).await);
        }
        // Raft-only nodes: no client listener to publish.
        let members: BTreeMap<u64, Member> = addrs
            .iter()
            .map(|(id, addr)| (*id, Member::new(addr.to_string(), String::new(), None)))
            .collect();
        nodes[0]
            .raft
            .initialize(members)
            .await
            .expect("node 1 initializes the cluster");
        Cluster { nodes, proxies }
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .expect("a member")
    }

    /// Cuts both directions of every link between `id` and the other nodes.
    fn isolate(&self, id: u64) {
        for ((from, to), proxy) in &self.proxies {
            if *from == id || *to == id {
                proxy.cut();
            }
        }
    }

    /// Heals every link.
    fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// Shuts every raft down, then drops the proxies (closing the
    /// connections they forward) and stops the servers.
    async fn shutdown(self) {
        for node in &self.nodes {
            node.raft.shutdown().await.expect("raft shuts down");
        }
        drop(self.proxies);
        for node in self.nodes {
            node.stop_server().await;
        }
    }
}

/// Waits until `node` itself is leader.
async fn takes_office(node: &Node) {
    node.raft
        .wait(Some(HANG_GUARD))
        .state(
            ServerState::Leader,
            format!("node {} takes office", node.id),
        )
        .await
        .expect("leader within the hang guard");
}

/// Waits until `node` has applied at least up to `index`.
async fn wait_applied(node: &Node, index: u64) {
    node.raft
        .wait(Some(HANG_GUARD))
        .metrics(
            |m| m.last_applied.is_some_and(|applied| applied.index >= index),
            format!("node {} applied index {index}", node.id),
        )
        .await
        .expect("applied within the hang guard");
}

/// Waits until all three nodes report the same leader and the same last
/// applied log id, at `index` or beyond, and returns them.
async fn wait_agreed(nodes: &[Node], index: u64) -> (u64, LogId<u64>) {
    let mut watches: Vec<watch::Receiver<RaftMetrics<u64, Member>>> =
        nodes.iter().map(|node| node.raft.metrics()).collect();
    let agreed = async {
        loop {
            // Marks each value seen, so `changed` below waits for a newer one.
            let seen: Vec<(Option<u64>, Option<LogId<u64>>)> = watches
                .iter_mut()
                .map(|watch| {
                    let metrics = watch.borrow_and_update();
                    (metrics.current_leader, metrics.last_applied)
                })
                .collect();
            if let (Some(leader), Some(applied)) = seen[0]
                && applied.index >= index
                && seen.iter().all(|other| *other == seen[0])
            {
                return (leader, applied);
            }
            let [a, b, c] = &mut watches[..] else {
                panic!("three nodes");
            };
            tokio::select! {
                changed = a.changed() => changed,
                changed = b.changed() => changed,
                changed = c.changed() => changed,
            }
            .expect("every raft is running");
        }
    };
    tokio::time::timeout(HANG_GUARD, agreed)
        .await
        .expect("the nodes agree within the hang guard")
}

/// The normal entries' data of a raft log, in log order.
fn groups(log: &[Entry<TypeConfig>]) -> Vec<GroupEntry> {
    log.iter()
        .filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(group) => Some(group.clone()),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_acknowledges_nothing_and_loses_its_entry_after_healing() {
    let cluster = Cluster::start().await;

    // A leader L, and three entries every node applies.
    let leader = leader_seen_by(&cluster.nodes[0].raft, None).await;
    let leader_node = cluster.node(leader);
    takes_office(leader_node).await;
    let first: Vec<GroupEntry> = (0..3).map(|i| group(&format!("entry-{i}"), i)).collect();
    let mut last = None;
    for entry in &first {
        let response = leader_node
            .raft
            .client_write(entry.clone())
            .await
            .expect("the leader accepts a write");
        last = Some(response.log_id);
    }
    let last = last.expect("three writes");
    for node in &cluster.nodes {
        wait_applied(node, last.index).await;
        assert_eq!(node.applied(), first, "node {}", node.id);
    }
    // The writes reached the followers through the proxies: the routes are
    // what the nodes use.
    for follower in IDS.into_iter().filter(|id| *id != leader) {
        let stats = cluster.proxies[&(leader, follower)].stats();
        assert!(
            stats.bytes_to_target > 0,
            "{leader} -> {follower}: {stats:?}"
        );
    }

    // Partition L: its write X is appended to its own log only and never
    // acknowledged.
    cluster.isolate(leader);
    let x = group("minority-x", 3);
    let before = leader_node.raft.metrics().borrow().last_log_index;
    let x_index = before.expect("L's log holds the first entries") + 1;
    let outcome = tokio::time::timeout(
        MINORITY_WRITE_WAIT,
        leader_node.raft.client_write(x.clone()),
    )
    .await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "the isolated leader acknowledged {x:?}: {outcome:?}"
    );
    leader_node
        .raft
        .wait(Some(HANG_GUARD))
        .metrics(
            |m| m.last_log_index >= Some(x_index),
            "the isolated leader appends X",
        )
        .await
        .expect("X appended within the hang guard");
    let minority_log = leader_node.raft_log().await;
    assert_eq!(
        groups(&minority_log).last(),
        Some(&x),
        "X is in the isolated leader's log: {minority_log:?}"
    );

    // The majority elects L2 and acknowledges Y.
    let majority: Vec<&Node> = cluster.nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = leader_seen_by(&majority[0].raft, Some(leader)).await;
    assert_ne!(new_leader, leader);
    let new_leader_node = cluster.node(new_leader);
    takes_office(new_leader_node).await;
    let y = group("majority-y", 3);
    let y_log_id = new_leader_node
        .raft
        .client_write(y.clone())
        .await
        .expect("the new leader accepts a write")
        .log_id;
    for node in &majority {
        wait_applied(node, y_log_id.index).await;
    }

    // Heal: the old leader rejoins, its X is truncated, Y replicated.
    cluster.heal();
    let (agreed_leader, applied) = wait_agreed(&cluster.nodes, y_log_id.index).await;
    let expected: Vec<GroupEntry> = first.iter().cloned().chain([y.clone()]).collect();
    for node in &cluster.nodes {
        let applied_entries = node.applied();
        assert_eq!(
            applied_entries, expected,
            "node {} (leader {agreed_leader}, applied {applied})",
            node.id
        );
        assert!(!applied_entries.contains(&x), "node {} applied X", node.id);
    }
    let logs = {
        let mut logs = Vec::new();
        for node in &cluster.nodes {
            logs.push((node.id, node.raft_log().await));
        }
        logs
    };
    let (_, reference) = &logs[0];
    for (id, log) in &logs {
        assert_eq!(log, reference, "node {id}'s raft log differs from node 1's");
        assert_eq!(groups(log), expected, "node {id}'s raft log");
        assert!(!groups(log).contains(&x), "node {id}'s raft log holds X");
        assert!(
            log.iter().any(|entry| entry.log_id == y_log_id),
            "node {id}'s raft log holds Y at {y_log_id}"
        );
    }

    cluster.shutdown().await;
}
