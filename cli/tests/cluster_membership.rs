//! Membership changes with real `cairn` processes (issue 17; `server/CLUSTER.md`,
//! "Membership"): a node started with `--cluster-join` never initialises a cluster of
//! its own; `cairn.v1.Cluster/AddNode` on the leader adds it to a running three-node
//! cluster, it catches up from the leader's log and serves every event written before
//! it joined; `RemoveNode` takes it out again and the cluster goes on acknowledging.
//! The refusals are checked on the same cluster: a follower answers NOT_LEADER naming
//! the leader (as writes), malformed or conflicting input is refused with a message
//! that says what is wrong, and re-adding a member at its own addresses changes
//! nothing.
//!
//! Waiting is bounded by [`DEADLINE`] (a hang guard, never a measurement).

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::{
    Client, ClusterMemberKind, ClusterRole, ClusterStatus, Error, EventData, ExpectedRevision,
    ReadOptions,
};
use cairn_proto::v1 as pb;
use cairn_proto::v1::cluster_client::ClusterClient;
use common::Daemon;
use tonic::Code;
use tonic::transport::Channel;

/// How long any wait (an election, a catch-up, a membership change) may
/// take before the test fails as hung.
const DEADLINE: Duration = Duration::from_secs(60);
/// The stream the test writes before the new node joins.
const STREAM: &str = "membership-orders";

fn address() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

/// One `cairn` node: its id, addresses and process.
struct Node {
    id: u64,
    raft: String,
    client: String,
    daemon: Option<Daemon>,
}

impl Node {
    fn new(id: u64) -> Self {
        Self {
            id,
            raft: address(),
            client: address(),
            daemon: None,
        }
    }

    /// `ID=RAFT/CLIENT`, as `--cluster-peers` lists it.
    fn peer(&self) -> String {
        format!("{}={}/{}", self.id, self.raft, self.client)
    }

    /// Starts the process with `peers`, joining when `join`.
    fn start(&mut self, root: &Path, peers: &str, join: bool) {
        self.start_with(root, peers, join, &[]);
    }

    /// [`Node::start`] with `extra` flags.
    fn start_with(&mut self, root: &Path, peers: &str, join: bool, extra: &[&str]) {
        let data = root.join(format!("node-{}", self.id));
        let id = self.id.to_string();
        let mut arguments = vec![
            "--listen",
            &self.client,
            "--cluster-node-id",
            &id,
            "--cluster-listen",
            &self.raft,
            "--cluster-peers",
            peers,
        ];
        if join {
            arguments.push("--cluster-join");
        }
        arguments.extend(extra);
        self.daemon = Some(Daemon::start_with(root, &data, "human", &[], &arguments).serving());
    }

    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn stderr(&self) -> String {
        self.daemon
            .as_ref()
            .map_or_else(String::new, |daemon| daemon.stderr())
    }

    /// The `cairn.v1.Cluster` stub of this node.
    fn admin(&self) -> ClusterClient<Channel> {
        let channel = Channel::from_shared(self.url())
            .expect("a valid URL")
            .connect_lazy();
        ClusterClient::new(channel)
    }

    /// `AddNode` of `node` at its addresses, sent to this node.
    async fn add(&self, node: &Node) -> Result<pb::ClusterMembershipResponse, tonic::Status> {
        self.add_raw(node.id, &node.raft, &node.client).await
    }

    async fn add_raw(
        &self,
        node_id: u64,
        raft: &str,
        client: &str,
    ) -> Result<pb::ClusterMembershipResponse, tonic::Status> {
        self.admin()
            .add_node(pb::AddNodeRequest {
                node_id,
                raft_address: raft.to_owned(),
                client_address: client.to_owned(),
                kurrent_address: None,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `RemoveNode` of `node_id`, sent to this node.
    async fn remove(&self, node_id: u64) -> Result<pb::ClusterMembershipResponse, tonic::Status> {
        self.admin()
            .remove_node(pb::RemoveNodeRequest { node_id })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// The value `probe` gives once it gives one, polling until [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the node at `url` sees the cluster, if it answers.
async fn status(url: String) -> Option<ClusterStatus> {
    Client::connect(url).await.ok()?.cluster_status().await.ok()
}

fn voters(status: &ClusterStatus) -> BTreeSet<u64> {
    status
        .members
        .iter()
        .filter(|member| member.kind == ClusterMemberKind::Voter)
        .map(|member| member.id)
        .collect()
}

fn answered_voters(answer: &pb::ClusterMembershipResponse) -> BTreeSet<u64> {
    answer
        .members
        .iter()
        .filter(|member| member.kind == pb::ClusterMemberKind::Voter as i32)
        .map(|member| member.id)
        .collect()
}

/// The index in `nodes` of the node that leads with `expected` voters.
async fn leader(nodes: &[Node], expected: &BTreeSet<u64>) -> usize {
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    eventually("a leader with the expected voters", || {
        let urls = urls.clone();
        async move {
            for (index, url) in urls.into_iter().enumerate() {
                if let Some(status) = status(url).await
                    && status.role == ClusterRole::Leader
                    && status.leader_id == Some(status.node_id)
                    && voters(&status) == *expected
                {
                    return Some(index);
                }
            }
            None
        }
    })
    .await
}

#[test]
fn a_joining_node_is_added_catches_up_and_is_removed_while_appends_go_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = common::runtime();
    let mut nodes: Vec<Node> = (1..=3).map(Node::new).collect();
    let peers = nodes.iter().map(Node::peer).collect::<Vec<_>>().join(",");
    for node in &mut nodes {
        node.start(root.path(), &peers, false);
    }
    let three: BTreeSet<u64> = [1, 2, 3].into();
    let lead = runtime.block_on(leader(&nodes, &three));
    let follower = (lead + 1) % nodes.len();

    // Events written before the new node exists.
    let written = runtime.block_on(async {
        let client = Client::connect(nodes[lead].url()).await.expect("connect");
        let mut written = Vec::new();
        let mut last_position = 0;
        for batch in 0..4 {
            let events: Vec<EventData> = (0..5)
                .map(|n| EventData::json_text("Placed", format!("{{\"order\":{}}}", batch * 5 + n)))
                .collect();
            written.extend(events.iter().map(|event| event.id));
            // Raft may report the node as leader a role poll before its store
            // takes writes (it answers NotLeader without a leader meanwhile):
            // retry the same events (same ids, so at most once) until then.
            let deadline = Instant::now() + DEADLINE;
            let result = loop {
                match client
                    .append(STREAM, ExpectedRevision::Any, events.clone())
                    .await
                {
                    Err(Error::NotLeader { leader: None, .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => break other.expect("the leader acknowledges"),
                }
            };
            last_position = result.positions.expect("events were written").1;
        }
        (written, last_position)
    });
    let (written, last_position) = written;

    // Node 4 names only itself and joins: it must not make a cluster of its
    // own (it is the only, so the smallest, id of its peers).
    let mut joining = Node::new(4);
    let own = joining.peer();
    joining.start(root.path(), &own, true);
    let alone = runtime
        .block_on(status(joining.url()))
        .expect("the joining node answers");
    assert!(alone.clustered);
    assert!(
        alone.members.is_empty() && alone.role != ClusterRole::Leader,
        "a joining node initialised a cluster: {alone:?}\n{}",
        joining.stderr()
    );

    // Refusals, before anything changes.
    runtime.block_on(async {
        let leader_client = nodes[lead].client.clone();
        for refused in [
            nodes[follower]
                .add(&joining)
                .await
                .expect_err("a follower adds nothing"),
            nodes[follower]
                .remove(2)
                .await
                .expect_err("a follower removes nothing"),
        ] {
            match Error::from(refused) {
                Error::NotLeader { leader, .. } => assert_eq!(leader, Some(leader_client.clone())),
                other => panic!("expected NotLeader naming the leader, got {other:?}"),
            }
        }
        let on_leader = &nodes[lead];
        let zero = on_leader.add_raw(0, &joining.raft, &joining.client).await;
        let zero = zero.expect_err("node id 0");
        assert_eq!(zero.code(), Code::InvalidArgument, "{zero:?}");
        assert!(zero.message().contains("node id 0"), "{zero:?}");
        let no_port = on_leader.add_raw(4, "127.0.0.1", &joining.client).await;
        let no_port = no_port.expect_err("no port");
        assert_eq!(no_port.code(), Code::InvalidArgument, "{no_port:?}");
        assert!(
            no_port.message().contains("invalid raft address"),
            "{no_port:?}"
        );
        let long = format!("{}.example:7070", "h".repeat(300));
        let too_long = on_leader.add_raw(4, &joining.raft, &long).await;
        let too_long = too_long.expect_err("too long");
        assert_eq!(too_long.code(), Code::InvalidArgument, "{too_long:?}");
        assert!(too_long.message().contains("at most 261"), "{too_long:?}");
        assert!(
            !too_long.message().contains(&long),
            "the input is not echoed"
        );
        // Node 2 at node 4's addresses: a voter's addresses are not replaced.
        let moved = on_leader.add_raw(2, &joining.raft, &joining.client).await;
        let moved = moved.expect_err("node 2 exists");
        assert_eq!(moved.code(), Code::FailedPrecondition, "{moved:?}");
        assert!(moved.message().contains("already a member"), "{moved:?}");
        let stranger = on_leader.remove(9).await.expect_err("no node 9");
        assert_eq!(stranger.code(), Code::NotFound, "{stranger:?}");
        // Node 2 again at its own addresses: nothing changes.
        let again = on_leader.add(&nodes[1]).await.expect("idempotent");
        assert_eq!(answered_voters(&again), three);
    });

    // Add node 4 through the leader: it catches up from the log, then votes.
    let added = runtime
        .block_on(nodes[lead].add(&joining))
        .unwrap_or_else(|status| panic!("add node 4: {status:?}\n{}", joining.stderr()));
    let four: BTreeSet<u64> = [1, 2, 3, 4].into();
    assert_eq!(answered_voters(&added), four);
    let row = added
        .members
        .iter()
        .find(|member| member.id == 4)
        .expect("node 4 in the answer");
    assert_eq!(
        (row.raft_address.as_str(), row.client_address.as_str()),
        (joining.raft.as_str(), joining.client.as_str())
    );
    let url = joining.url();
    let seen_by_four = runtime.block_on(eventually("node 4 sees four voters", || {
        let url = url.clone();
        let four = four.clone();
        async move { status(url).await.filter(|status| voters(status) == four) }
    }));
    // Its settings name no other node: the leader's address comes from the
    // membership it received.
    assert_eq!(
        seen_by_four.leader_client_address.as_deref(),
        Some(nodes[lead].client.as_str())
    );
    let read = runtime.block_on(async {
        let client = Client::connect(joining.url()).await.expect("connect");
        client
            .read_stream(STREAM, ReadOptions::forwards().at_least(last_position))
            .await
            .expect("read on node 4")
            .collect_all()
            .await
            .expect("collect")
    });
    let read_ids: Vec<_> = read.iter().map(|event| event.id).collect();
    assert_eq!(read_ids, written, "node 4 holds every event, in order");

    // Remove node 4: three voters again, and the leader goes on acknowledging.
    let removed = runtime
        .block_on(nodes[lead].remove(4))
        .unwrap_or_else(|status| panic!("remove node 4: {status:?}"));
    assert_eq!(answered_voters(&removed), three);
    assert!(removed.members.iter().all(|member| member.id != 4));
    let lead = runtime.block_on(leader(&nodes, &three));
    runtime.block_on(async {
        let client = Client::connect(nodes[lead].url()).await.expect("connect");
        let after = client
            .append(
                STREAM,
                ExpectedRevision::Exact(written.len() as u64 - 1),
                vec![EventData::json_text("Placed", "{\"order\":20}")],
            )
            .await
            .expect("appends go on after the removal");
        assert_eq!(after.current_revision, Some(written.len() as u64));
    });
}

/// The snapshot catch-up: a node added after many events (20,000
/// here, `CAIRN_SNAPSHOT_TEST_EVENTS=1000000` for the figure) to a
/// cluster whose log was compacted (a snapshot every 50 entries or more, 10
/// kept)
/// cannot catch up from the log: added with `cairn cluster add`, it receives
/// the leader's checkpoint, installs it, votes, and serves every event.
#[test]
fn a_node_added_after_the_log_was_compacted_joins_from_a_snapshot_through_the_cli() {
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = common::runtime();
    let events = common::snapshot_test_events();
    // About four snapshots over the run (each one reads the whole store),
    // and never fewer entries between two than the log keeps.
    let every = (events / 100 / 4).max(50).to_string();
    let compacting = [
        "--cluster-snapshot-entries",
        every.as_str(),
        "--cluster-keep-log-entries",
        "10",
    ];
    let mut nodes: Vec<Node> = (1..=3).map(Node::new).collect();
    let peers = nodes.iter().map(Node::peer).collect::<Vec<_>>().join(",");
    for node in &mut nodes {
        node.start_with(root.path(), &peers, false, &compacting);
    }
    let three: BTreeSet<u64> = [1, 2, 3].into();
    let lead = runtime.block_on(leader(&nodes, &three));
    let last = runtime.block_on(async {
        let client = Client::connect(nodes[lead].url()).await.expect("connect");
        common::append_bulk(&client, events).await
    });

    let mut joining = Node::new(4);
    let own = joining.peer();
    joining.start_with(root.path(), &own, true, &compacting);
    let added = common::cairn_command(root.path())
        .args(["cluster", "add", "--node-id", "4", "--raft"])
        .arg(&joining.raft)
        .arg("--client")
        .arg(&joining.client)
        .arg("--addr")
        .arg(nodes[lead].url())
        .output()
        .expect("run cairn cluster add");
    let printed = String::from_utf8_lossy(&added.stdout);
    assert!(
        added.status.success(),
        "cairn cluster add failed: {}\n--- node 4 ---\n{}\n--- the leader ---\n{}",
        String::from_utf8_lossy(&added.stderr),
        joining.stderr(),
        nodes[lead].stderr()
    );
    let rows: Vec<&str> = printed.lines().collect();
    assert_eq!(rows.len(), 5, "a header and four members:\n{printed}");
    assert!(
        rows.iter().any(|row| row.starts_with('4')
            && row.contains("voter")
            && row.contains(&joining.raft)),
        "node 4 votes:\n{printed}"
    );

    let read = runtime.block_on(async {
        let client = Client::connect(joining.url()).await.expect("connect");
        client
            .read_all(ReadOptions::forwards().at_least(last))
            .await
            .expect("read on node 4")
            .collect_all()
            .await
            .expect("collect")
    });
    assert_eq!(read.len() as u64, events, "node 4 serves every event");
    assert_eq!(read.last().map(|event| event.position), Some(last));
    let logs = joining.stderr();
    assert!(
        logs.contains("raft snapshot installed"),
        "node 4 caught up without a snapshot; its log:\n{logs}"
    );
}
