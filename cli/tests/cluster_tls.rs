//! Mutual TLS between cluster nodes with real processes (issue 17,
//! `server/CLUSTER.md`): three `cairn` daemons on loopback whose raft
//! listeners speak only TLS and accept only peers presenting a client
//! certificate from the cluster CA (`--cluster-tls-cert-file`,
//! `--cluster-tls-key-file`, `--cluster-tls-ca-file`, certificates from
//! `cairn_server::dev_certs`). The nodes elect and replicate over it; the raft
//! listener refuses plaintext, no client certificate, a certificate of another
//! CA and a server-only certificate; a node whose certificate another CA
//! signed never joins. With `--cluster-tls-peer-name cairn-node` the nodes
//! elect and replicate as well, and the raft listener also refuses the CA's
//! client certificate (it lacks the name), logging it at warn. The client
//! listeners stay plaintext on loopback.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::{Client, ClientBuilder, Error, EventData, ExpectedRevision, ReadOptions};
use cairn_proto::cluster::v1::RaftRequest;
use cairn_proto::cluster::v1::raft_client::RaftClient;
use cairn_server::dev_certs::{self, DevCertFiles};
use common::{Daemon, free_port};
use tonic::Code;

const NODES: usize = 3;
/// How long electing a leader may take before the test fails.
const ELECTION_DEADLINE: Duration = Duration::from_secs(20);

/// Three nodes on loopback, each started with the TLS files it was given.
struct TlsCluster {
    /// Each node's `cairn.v1` listener (plaintext).
    clients: Vec<String>,
    /// Each node's raft listener (mutual TLS).
    rafts: Vec<String>,
    daemons: Vec<Daemon>,
}

impl TlsCluster {
    /// Starts node `i` (id `i + 1`) with `tls[i]`'s node certificate, key and
    /// CA as its `--cluster-tls-*`, and `extra` flags.
    fn start(root: &Path, tls: [&DevCertFiles; NODES], extra: &[&str]) -> Self {
        let clients: Vec<String> = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let rafts: Vec<String> = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = (0..NODES)
            .map(|index| format!("{}={}/{}", index + 1, rafts[index], clients[index]))
            .collect::<Vec<_>>()
            .join(",");
        let daemons = (0..NODES)
            .map(|index| {
                let node_id = (index + 1).to_string();
                let files = tls[index];
                let data = root.join(format!("node-{node_id}"));
                let mut arguments = vec![
                    "--listen",
                    &clients[index],
                    "--cluster-node-id",
                    &node_id,
                    "--cluster-listen",
                    &rafts[index],
                    "--cluster-peers",
                    &peers,
                    "--cluster-tls-cert-file",
                    path(&files.node_cert),
                    "--cluster-tls-key-file",
                    path(&files.node_key),
                    "--cluster-tls-ca-file",
                    path(&files.ca),
                ];
                arguments.extend_from_slice(extra);
                Daemon::start_with(root, &data, "human", &[], &arguments).serving()
            })
            .collect();
        Self {
            clients,
            rafts,
            daemons,
        }
    }

    fn url(&self, index: usize) -> String {
        format!("http://{}", self.clients[index])
    }

    fn stderr(&self) -> String {
        self.daemons
            .iter()
            .enumerate()
            .map(|(index, daemon)| format!("--- node {} ---\n{}", index + 1, daemon.stderr()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// The node among `live` that accepts writes, and a client to it: a probe
/// event is appended to each until one acknowledges it.
async fn find_leader(cluster: &TlsCluster, live: &[usize]) -> (usize, Client) {
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        for &index in live {
            let Ok(client) = Client::connect(cluster.url(index)).await else {
                continue;
            };
            if common::acknowledges_a_probe(&client, index).await {
                return (index, client);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader among nodes {live:?} within {ELECTION_DEADLINE:?}; logs:\n{}",
            cluster.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends one event to `stream` on the leader and returns its position.
async fn append_one(leader: &Client, stream: &str) -> u64 {
    let event = EventData::json_text("Greeted", r#"{"over":"mutual TLS"}"#);
    let result = leader
        .append(stream, ExpectedRevision::NoStream, vec![event])
        .await
        .expect("the leader acknowledges an append");
    result.positions.expect("positions").1
}

/// Waits until node `index` holds `stream`'s one event at `position` (a
/// follower applies shortly after the leader acknowledges; `at_least` makes
/// it wait for it).
async fn assert_holds(cluster: &TlsCluster, index: usize, stream: &str, position: u64) {
    let client = Client::connect(cluster.url(index))
        .await
        .expect("connect to a node");
    let events = cairn_testkit::eventually(&format!("node {} holding {stream}", index + 1), || {
        cairn_testkit::read_all_client_with(
            &client,
            stream,
            ReadOptions::forwards().at_least(position),
        )
    })
    .await;
    let positions: Vec<u64> = events.iter().map(|event| event.position).collect();
    assert_eq!(positions, [position], "node {}: {events:?}", index + 1);
}

/// What a node logs when its raft listener refuses a handshake
/// (`cairn_server::listener`).
const REFUSAL_LOGGED: &str = "refused a node-to-node TLS handshake";

/// The lines of node `index`'s log that report a refused node-to-node
/// handshake.
fn refusals_logged(cluster: &TlsCluster, index: usize) -> Vec<String> {
    cluster.daemons[index]
        .stderr()
        .lines()
        .map(common::strip_ansi)
        .filter(|line| line.contains(REFUSAL_LOGGED))
        .collect()
}

#[test]
fn nodes_with_mutual_tls_and_a_peer_name_elect_replicate_and_refuse_the_cas_client_certificate() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = dev_certs::write(&root.path().join("certs"), &[]).expect("dev certificates");
    let cluster = TlsCluster::start(
        root.path(),
        [&certs; NODES],
        &["--cluster-tls-peer-name", dev_certs::NODE_PEER_NAME],
    );
    let ca_pem = std::fs::read(&certs.ca).expect("read the CA");
    let read = |path: &Path| std::fs::read(path).expect("read a certificate or key");
    let raft = cluster.rafts[0].clone();
    common::runtime().block_on(async {
        // The node certificates carry the peer name: the nodes take each
        // other as peers.
        let all: Vec<usize> = (0..NODES).collect();
        let (_, leader) = find_leader(&cluster, &all).await;
        let position = append_one(&leader, "greetings").await;
        for &index in &all {
            assert_holds(&cluster, index, "greetings", position).await;
        }
        for &index in &all {
            let refusals = refusals_logged(&cluster, index);
            assert!(refusals.is_empty(), "node {}: {refusals:?}", index + 1);
        }

        // The CA signed client.pem for client authentication, but it lacks
        // the name: refused in the handshake, and node 1 says so at warn
        // with the reason. A node's certificate still reaches the service.
        let https = || Client::builder(format!("https://{raft}")).ca_pem(ca_pem.clone());
        let refused = reaches_the_raft_listener(
            https().identity_pem(read(&certs.client_cert), read(&certs.client_key)),
        )
        .await;
        assert!(
            refused.is_err(),
            "the CA's client certificate got through a peer-name check"
        );
        node_certificate_reaches_the_raft_service(&raft, &ca_pem, &certs).await;
        let warned = cairn_testkit::eventually("node 1 logging the refusal", || async {
            let refusals = refusals_logged(&cluster, 0);
            refusals
                .iter()
                .find(|line| line.contains(dev_certs::CLIENT_NAME))
                .cloned()
                .ok_or(refusals)
        })
        .await;
        assert!(warned.contains("WARN"), "{warned}");
        assert!(warned.contains("peer=127.0.0.1:"), "{warned}");
        assert!(
            warned.contains(&format!(
                "certificate not valid for name \"{}\"",
                dev_certs::NODE_PEER_NAME
            )),
            "{warned}"
        );
    });
}

/// Whether a `cairn.v1` call through `builder` got through TLS and HTTP/2
/// to the raft listener at all: it serves only the raft service, so a call
/// that reached it is answered `UNIMPLEMENTED` (`Ok`); a refused handshake
/// fails the connection instead (the error it came to).
async fn reaches_the_raft_listener(builder: ClientBuilder) -> Result<(), Error> {
    let client = builder.connect().await?;
    match client.info().await {
        Err(Error::Other {
            code: Code::Unimplemented,
            ..
        }) => Ok(()),
        Err(other) => Err(other),
        Ok(info) => panic!("a raft listener answered cairn.v1 Info: {info:?}"),
    }
}

#[test]
fn the_raft_listener_takes_only_cluster_certificates_and_a_stranger_never_joins() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = dev_certs::write(&root.path().join("certs"), &[]).expect("dev certificates");
    // Another CA's certificates: node 3 is started with them (its node
    // certificate, trusting only its own CA), so neither side of any link
    // between it and the others completes a handshake.
    let stranger =
        dev_certs::write(&root.path().join("stranger"), &[]).expect("stranger certificates");
    let cluster = TlsCluster::start(root.path(), [&certs, &certs, &stranger], &[]);
    let ca_pem = std::fs::read(&certs.ca).expect("read the CA");
    let read = |path: &Path| std::fs::read(path).expect("read a certificate or key");
    let raft = cluster.rafts[0].clone();
    common::runtime().block_on(async {
        let https = || Client::builder(format!("https://{raft}")).ca_pem(ca_pem.clone());

        // A certificate the cluster CA signed for client authentication gets
        // through, to the raft service itself: an empty vote is a payload it
        // cannot decode.
        reaches_the_raft_listener(
            https().identity_pem(read(&certs.client_cert), read(&certs.client_key)),
        )
        .await
        .expect("a client certificate of the cluster CA is accepted");
        node_certificate_reaches_the_raft_service(&raft, &ca_pem, &certs).await;

        // No client certificate, one of another CA, and one the cluster CA
        // signed for servers only: refused in the handshake.
        let refusals = [
            ("no client certificate", https()),
            (
                "another CA's certificate",
                https().identity_pem(read(&stranger.node_cert), read(&stranger.node_key)),
            ),
            (
                "a server-only certificate",
                https().identity_pem(read(&certs.server_cert), read(&certs.server_key)),
            ),
        ];
        for (what, builder) in refusals {
            let refused = reaches_the_raft_listener(builder).await;
            assert!(refused.is_err(), "{what} got through");
        }

        // Plaintext HTTP/2 to the raft service: the listener expects a TLS
        // handshake, answers the client's preface with an alert and closes
        // the connection. The client sees that as a closed, cancelled or
        // malformed HTTP/2 connection, whichever comes first, but never as
        // the service's answer to the empty payload (above).
        let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{raft}"))
            .expect("endpoint")
            .connect_lazy();
        let answer = RaftClient::new(plaintext)
            .vote(RaftRequest::default())
            .await
            .expect_err("a plaintext vote");
        assert_ne!(answer.code(), Code::InvalidArgument, "{answer:?}");
        let refused = reaches_the_raft_listener(Client::builder(format!("http://{raft}"))).await;
        assert!(refused.is_err(), "a plaintext cairn.v1 call got through");

        // The two nodes of the cluster CA elect and acknowledge without the
        // stranger; it never hears of the leader nor holds the event.
        let (_, leader) = find_leader(&cluster, &[0, 1]).await;
        let position = append_one(&leader, "greetings").await;
        for index in [0, 1] {
            assert_holds(&cluster, index, "greetings", position).await;
        }
        let outsider = Client::connect(cluster.url(2))
            .await
            .expect("connect to node 3");
        let status = outsider.cluster_status().await.expect("node 3's status");
        assert_eq!(status.leader_id, None, "{status:#?}");
        assert_eq!(status.last_applied_index, None, "{status:#?}");
        assert_eq!(status.applied_position, 0, "{status:#?}");
        match cairn_testkit::read_all_client_with(&outsider, "greetings", ReadOptions::forwards())
            .await
        {
            Err(Error::StreamNotFound { .. }) => {}
            other => panic!("node 3 read the stream: {other:?}"),
        }
    });
}

/// Starts one node of a new cluster on `root/<data>` with the cluster flags
/// and `tls`, and returns its stderr once it has exited (failing if it
/// served or exited 0).
fn exits_at_start(root: &Path, data: &str, tls: &[&str]) -> String {
    let raft = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={raft}/127.0.0.1:{}", free_port());
    let mut arguments = vec![
        "--cluster-node-id",
        "1",
        "--cluster-listen",
        &raft,
        "--cluster-peers",
        &peers,
    ];
    arguments.extend_from_slice(tls);
    let data = root.join(data);
    match Daemon::start_with(root, &data, "human", &[], &arguments) {
        common::Started::Exited { status, stderr } => {
            assert!(!status.success(), "{status}");
            stderr
        }
        common::Started::Serving(daemon) => {
            panic!("served with {tls:?}; stderr:\n{}", daemon.stderr())
        }
    }
}

#[test]
fn a_node_given_only_some_of_the_cluster_tls_files_or_a_certificate_without_the_peer_name_exits_saying_so()
 {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = dev_certs::write(&root.path().join("certs"), &[]).expect("dev certificates");
    let stderr = exits_at_start(
        root.path(),
        "half",
        &["--cluster-tls-cert-file", path(&certs.node_cert)],
    );
    assert!(
        stderr.contains("missing --cluster-tls-key-file and --cluster-tls-ca-file"),
        "{stderr}"
    );
    let stderr = exits_at_start(
        root.path(),
        "no-files",
        &["--cluster-tls-peer-name", dev_certs::NODE_PEER_NAME],
    );
    assert!(
        stderr.contains(
            "--cluster-tls-peer-name needs --cluster-tls-cert-file, --cluster-tls-key-file and \
             --cluster-tls-ca-file"
        ),
        "{stderr}"
    );
    // Its own certificate must carry the name its peers will require:
    // client.pem (of the same CA) does not.
    let stderr = exits_at_start(
        root.path(),
        "unnamed",
        &[
            "--cluster-tls-cert-file",
            path(&certs.client_cert),
            "--cluster-tls-key-file",
            path(&certs.client_key),
            "--cluster-tls-ca-file",
            path(&certs.ca),
            "--cluster-tls-peer-name",
            dev_certs::NODE_PEER_NAME,
        ],
    );
    let expected = format!(
        "the cluster TLS certificate file {} is not valid for --cluster-tls-peer-name {}",
        certs.client_cert.display(),
        dev_certs::NODE_PEER_NAME
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

/// A node certificate gets through the raft listener's handshake to the
/// raft service itself: an empty vote is a payload it cannot decode.
async fn node_certificate_reaches_the_raft_service(
    raft: &str,
    ca_pem: &[u8],
    certs: &DevCertFiles,
) {
    let channel = cairn_testkit::tls_channel(
        raft.parse().expect("a raft address"),
        ca_pem,
        Some((
            &std::fs::read(&certs.node_cert).expect("read the node certificate"),
            &std::fs::read(&certs.node_key).expect("read the node key"),
        )),
    )
    .await;
    let answer = RaftClient::new(channel)
        .vote(RaftRequest::default())
        .await
        .expect_err("an empty vote");
    assert_eq!(answer.code(), Code::InvalidArgument, "{answer:?}");
}
