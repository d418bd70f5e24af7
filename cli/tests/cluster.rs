//! Cluster mode with real processes (issue 17, `server/CLUSTER.md`): three
//! `cairn` daemons on loopback, eight clients appending, the leader killed
//! with SIGKILL mid-load and restarted, or cut off from both followers by a
//! fault-injecting TCP proxy on every raft link ([`Links`], the nodes'
//! `--cluster-routes`) and then healed. Every acknowledged event must be on
//! every node at its acknowledged position, and the three `$all`s must be
//! identical event for event (ids, streams, revisions, positions, types,
//! payloads, `created`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{
    Client, Error, EventData, ExpectedRevision, ReadOptions, RecordedEvent, ScavengeState,
};
use cairn_testkit::FaultProxy;
use common::{Daemon, free_port};
use tokio::sync::Mutex;
use uuid::Uuid;

const NODES: usize = 3;
const WRITERS: usize = 8;
/// How long electing a leader (or a new one) may take before the test fails.
const ELECTION_DEADLINE: Duration = Duration::from_secs(20);
/// How long an append sent to an isolated leader is given to (wrongly)
/// succeed. Not a timing assertion: it must not be acknowledged however long
/// it is given; running out of time and an error both pass.
const ISOLATED_APPEND_WAIT: Duration = Duration::from_secs(3);
/// How long a partition test's writer waits for one attempt before it
/// retries the exact append elsewhere (an isolated leader never answers).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(2);

/// Three nodes' addresses and data directories, and the daemons running.
struct Cluster {
    root: PathBuf,
    clients: Vec<String>,
    rafts: Vec<String>,
    /// Each node's KurrentDB facade.
    kurrents: Vec<String>,
    /// Each node's `--cluster-routes`, when it has one (see [`Links`]).
    routes: Vec<Option<String>>,
    /// Flags every node is started with besides the cluster's own.
    extra: Vec<String>,
    /// A secure cluster: TLS and logins on every client listener.
    secure: Option<Secure>,
    daemons: Vec<Option<Daemon>>,
}

/// What makes a [`Cluster`] secure: the certificates its client listeners
/// serve (one server certificate for all three, on loopback), and whom the
/// harness's own calls ([`Cluster::connect`]) log in as.
struct Secure {
    certs: cairn_server::dev_certs::DevCertFiles,
    login: Option<(String, String)>,
}

impl Cluster {
    fn new(root: &Path) -> Self {
        let clients = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let rafts = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let kurrents = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        Self {
            root: root.to_path_buf(),
            clients,
            rafts,
            kurrents,
            routes: vec![None; NODES],
            extra: Vec::new(),
            secure: None,
            daemons: (0..NODES).map(|_| None).collect(),
        }
    }

    /// Makes every node started from now on reach its peers' raft listeners
    /// through `links` instead of at the addresses `--cluster-peers` names.
    fn route_through(&mut self, links: &Links) {
        self.routes = (0..NODES)
            .map(|from| Some(links.routes_from(from)))
            .collect();
    }

    /// A cluster of three nodes, all started.
    fn started(root: &Path) -> Self {
        let mut cluster = Self::new(root);
        for index in 0..NODES {
            cluster.start(index);
        }
        cluster
    }

    fn peers(&self) -> String {
        (0..NODES)
            .map(|index| {
                format!(
                    "{}={}/{}/{}",
                    index + 1,
                    self.rafts[index],
                    self.clients[index],
                    self.kurrents[index]
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self, index: usize) {
        let data = self.root.join(format!("node-{}", index + 1));
        let node_id = (index + 1).to_string();
        let peers = self.peers();
        let mut arguments = vec![
            "--listen",
            &self.clients[index],
            "--cluster-node-id",
            &node_id,
            "--cluster-listen",
            &self.rafts[index],
            "--cluster-peers",
            &peers,
            "--kurrent-listen",
            &self.kurrents[index],
        ];
        arguments.extend(self.extra.iter().map(String::as_str));
        let tls_files;
        if let Some(secure) = &self.secure {
            tls_files = [
                secure.certs.server_cert.display().to_string(),
                secure.certs.server_key.display().to_string(),
            ];
            arguments.extend([
                "--tls-cert-file",
                &tls_files[0],
                "--tls-key-file",
                &tls_files[1],
            ]);
        }
        if let Some(routes) = &self.routes[index] {
            arguments.extend(["--cluster-routes", routes.as_str()]);
        }
        let daemon = Daemon::start_with(&self.root, &data, "human", &[], &arguments).serving();
        self.daemons[index] = Some(daemon);
    }

    fn kill_9(&mut self, index: usize) {
        if let Some(mut daemon) = self.daemons[index].take() {
            daemon.kill_9();
        }
    }

    fn url(&self, index: usize) -> String {
        let scheme = if self.secure.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.clients[index])
    }

    /// A client of node `index` alone, logged in as the harness's login in a
    /// secure cluster.
    async fn connect(&self, index: usize) -> Result<Client, Error> {
        let login = self
            .secure
            .as_ref()
            .and_then(|secure| secure.login.as_ref());
        match login {
            Some((user, password)) => self.connect_as(index, user, password).await,
            None => self.client_builder(index).connect().await,
        }
    }

    /// A client of node `index` alone logged in as `user`.
    async fn connect_as(&self, index: usize, user: &str, password: &str) -> Result<Client, Error> {
        self.client_builder(index)
            .basic(user, password)
            .connect()
            .await
    }

    /// A cluster client of every node (ClientBuilder::seeds) whose first
    /// seed is node `first`, the others following in order, logged in as the
    /// harness's login in a secure cluster; it tries other nodes for up to
    /// [`ELECTION_DEADLINE`].
    async fn connect_seeded(&self, first: usize) -> Result<Client, Error> {
        let seeds: Vec<String> = (1..NODES)
            .map(|offset| self.url((first + offset) % NODES))
            .collect();
        let builder = self
            .client_builder(first)
            .seeds(seeds)
            .failover_deadline(ELECTION_DEADLINE);
        let login = self
            .secure
            .as_ref()
            .and_then(|secure| secure.login.as_ref());
        match login {
            Some((user, password)) => builder.basic(user, password).connect().await,
            None => builder.connect().await,
        }
    }

    /// A builder for node `index`, trusting the secure cluster's CA.
    fn client_builder(&self, index: usize) -> cairn_client::ClientBuilder {
        let builder = Client::builder(self.url(index));
        match &self.secure {
            Some(secure) => builder.ca_file(&secure.certs.ca),
            None => builder,
        }
    }

    fn stderr(&self) -> String {
        self.daemons
            .iter()
            .enumerate()
            .filter_map(|(index, daemon)| {
                daemon
                    .as_ref()
                    .map(|daemon| format!("--- node {} ---\n{}", index + 1, daemon.stderr()))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A [`FaultProxy`] on every directed raft link: node i reaches node j's
/// raft listener only through proxy(i -> j) (node i's `--cluster-routes`), so
/// cutting the four proxies touching a node isolates it both ways while the
/// other two still reach each other. Client traffic is not proxied.
struct Links {
    /// proxy(i -> j) under `(i, j)`, by node index.
    proxies: BTreeMap<(usize, usize), FaultProxy>,
}

impl Links {
    /// Starts a proxy in front of each of `rafts` for every other node. Call
    /// within the runtime the proxies are to run on.
    async fn start(rafts: &[String]) -> Links {
        let mut proxies = BTreeMap::new();
        for from in 0..rafts.len() {
            for to in (0..rafts.len()).filter(|to| *to != from) {
                let target = rafts[to].parse().expect("a raft address");
                proxies.insert((from, to), FaultProxy::start(target).await);
            }
        }
        Links { proxies }
    }

    /// Node `from`'s `--cluster-routes`: every peer at its proxy.
    fn routes_from(&self, from: usize) -> String {
        self.proxies
            .iter()
            .filter(|((source, _), _)| *source == from)
            .map(|((_, to), proxy)| format!("{}={}", to + 1, proxy.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn proxy(&self, from: usize, to: usize) -> &FaultProxy {
        &self.proxies[&(from, to)]
    }

    /// Cuts both directions of every link between `node` and the others.
    fn isolate(&self, node: usize) {
        for ((from, to), proxy) in &self.proxies {
            if *from == node || *to == node {
                proxy.cut();
            }
        }
    }

    fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }
}

/// The index of the node that accepts writes, found by appending a probe
/// event to each live node until one acknowledges it. A follower's refusal
/// must be `NotLeader`.
async fn find_leader(cluster: &Cluster, live: &[usize]) -> usize {
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        for &index in live {
            let Ok(client) = cluster.connect(index).await else {
                continue;
            };
            if common::acknowledges_a_probe(&client, index).await {
                return index;
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

/// What an acknowledged append promised.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acknowledged {
    stream: String,
    revision: u64,
    position: u64,
}

/// Where the writers send appends: the current leader's client, replaced by
/// whoever finds the next leader first.
struct Target {
    urls: Vec<String>,
    live: std::sync::Mutex<Vec<usize>>,
    leader: Mutex<Option<(usize, Client)>>,
    /// How long one attempt may take before it counts as failed (outcome
    /// unknown) and is retried; `None`: as long as the node takes.
    attempt_deadline: Option<Duration>,
}

impl Target {
    /// The leader's client, looked up again when `stale` names the one that
    /// failed (or nothing is known).
    async fn leader(&self, stale: Option<usize>) -> (usize, Client) {
        let mut current = self.leader.lock().await;
        if let Some((index, client)) = current.as_ref()
            && Some(*index) != stale
        {
            return (*index, client.clone());
        }
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let live = self.live.lock().expect("live").clone();
            for index in live {
                let Ok(client) = Client::connect(self.urls[index].clone()).await else {
                    continue;
                };
                let probe = EventData::binary("Probe", &b"leader?"[..]);
                if client
                    .append("cluster-probe", ExpectedRevision::Any, vec![probe])
                    .await
                    .is_ok()
                {
                    *current = Some((index, client.clone()));
                    return (index, client);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new leader within {ELECTION_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One writer: one-event appends to its own stream until `stop` is set,
/// each retried with the same event id on whichever node leads until
/// acknowledged. Counts every acknowledgement in `acknowledged_so_far`.
async fn write(
    target: Arc<Target>,
    writer: usize,
    stop: Arc<AtomicBool>,
    acknowledged_so_far: Arc<AtomicUsize>,
) -> HashMap<Uuid, Acknowledged> {
    let mut acknowledged = HashMap::new();
    let stream = format!("writer-{writer}");
    let mut stale = None;
    for round in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let id = Uuid::new_v4();
        let event = EventData::binary("Written", format!("{writer}:{round}").into_bytes()).id(id);
        let deadline = Instant::now() + ELECTION_DEADLINE * 2;
        let result = loop {
            let (index, client) = target.leader(stale.take()).await;
            let attempt = client.append(&stream, ExpectedRevision::Any, vec![event.clone()]);
            let outcome = match target.attempt_deadline {
                Some(deadline) => tokio::time::timeout(deadline, attempt).await.ok(),
                None => Some(attempt.await),
            };
            match outcome {
                Some(Ok(result)) => break result,
                // The outcome of these is unknown (the node went away,
                // stopped leading mid-call, or did not answer in time, as
                // an isolated leader never does): retry the exact append.
                None
                | Some(Err(Error::NotLeader { .. } | Error::Unavailable(_) | Error::Connect(_))) => {
                    assert!(
                        Instant::now() < deadline,
                        "writer {writer} could not append round {round}"
                    );
                    stale = Some(index);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(Err(other)) => panic!("writer {writer} round {round}: {other}"),
            }
        };
        let (first, last) = result.positions.expect("one event written");
        assert_eq!(first, last);
        acknowledged.insert(
            id,
            Acknowledged {
                stream: stream.clone(),
                revision: result.current_revision.expect("a revision"),
                position: first,
            },
        );
        acknowledged_so_far.fetch_add(1, Ordering::Relaxed);
    }
    acknowledged
}

async fn read_everything(url: &str) -> Vec<RecordedEvent> {
    let client = Client::connect(url.to_owned()).await.expect("connect");
    client
        .read_all(ReadOptions::forwards())
        .await
        .expect("read $all")
        .collect_all()
        .await
        .expect("collect $all")
}

/// Reads every node until all hold the same number of events (followers
/// apply shortly after the leader acknowledges), then returns each `$all`.
async fn converged(cluster: &Cluster, nodes: &[usize]) -> Vec<Vec<RecordedEvent>> {
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        let mut all = Vec::new();
        for &index in nodes {
            all.push(read_everything(&cluster.url(index)).await);
        }
        if all.iter().all(|events| events.len() == all[0].len()) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge: {:?} events",
            all.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Blocks until `done` holds, within `ELECTION_DEADLINE * 2`; panics with
/// `what` otherwise.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + ELECTION_DEADLINE * 2;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts what every test ends with: the nodes' `$all`s (`everything`) are
/// identical, positions are gap-free from 0, every stream's revisions count
/// up without a gap, no event id appears twice, and every `acknowledged`
/// event is there at the stream, revision and position it was acknowledged
/// with. Returns the one `$all`.
fn assert_identical_holding_each_once<'a>(
    everything: &'a [Vec<RecordedEvent>],
    acknowledged: &HashMap<Uuid, Acknowledged>,
) -> &'a [RecordedEvent] {
    for (index, events) in everything.iter().enumerate() {
        assert_eq!(
            events,
            &everything[0],
            "node {} holds other events than node 1",
            index + 1
        );
    }
    let events = &everything[0];
    // Positions are gap-free from 0, and no event id appears twice.
    for (expected, event) in events.iter().enumerate() {
        assert_eq!(
            event.position, expected as u64,
            "a gap or a reordering in $all"
        );
    }
    // Within every stream, revisions count 0, 1, 2... in $all order: a new
    // leader numbers on top of what it applied, never on a stale record.
    let mut next_revision: HashMap<&str, u64> = HashMap::new();
    for event in events {
        let next = next_revision.entry(event.stream.as_str()).or_insert(0);
        assert_eq!(
            event.revision, *next,
            "stream {} skips or repeats a revision at position {}",
            event.stream, event.position
        );
        *next += 1;
    }
    let mut ids: Vec<Uuid> = events.iter().map(|event| event.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "an event id was written twice");
    // Every acknowledged append is there, where it was acknowledged.
    let by_id: HashMap<Uuid, &RecordedEvent> =
        events.iter().map(|event| (event.id, event)).collect();
    for (id, promised) in acknowledged {
        let event = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged event {id} ({promised:?}) is lost"));
        assert_eq!(
            (&event.stream, event.revision, event.position),
            (&promised.stream, promised.revision, promised.position),
            "event {id} is not where it was acknowledged"
        );
    }
    events
}

#[test]
fn killing_the_leader_loses_no_acknowledged_append_and_every_node_converges() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::started(root.path());
    let runtime = common::runtime();
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let first_leader = runtime.block_on(find_leader(&cluster, &all_nodes));

    // A follower refuses writes and names the leader's client address.
    let follower = (first_leader + 1) % NODES;
    let refused = runtime.block_on(async {
        let client = Client::connect(cluster.url(follower))
            .await
            .expect("connect");
        client
            .append(
                "refused",
                ExpectedRevision::Any,
                vec![EventData::binary("Refused", &b"x"[..])],
            )
            .await
    });
    match refused {
        Err(Error::NotLeader { leader, .. }) => {
            assert_eq!(
                leader.as_deref(),
                Some(cluster.clients[first_leader].as_str())
            );
        }
        other => panic!("a follower answered a write with {other:?}"),
    }

    let target = Arc::new(Target {
        urls: (0..NODES).map(|index| cluster.url(index)).collect(),
        live: std::sync::Mutex::new(all_nodes.clone()),
        leader: Mutex::new(None),
        attempt_deadline: None,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            runtime.spawn(write(
                Arc::clone(&target),
                writer,
                Arc::clone(&stop),
                Arc::clone(&counted),
            ))
        })
        .collect();

    // Let the load run, then kill the leader under it.
    std::thread::sleep(Duration::from_millis(700));
    let before_kill = counted.load(Ordering::Relaxed);
    target
        .live
        .lock()
        .expect("live")
        .retain(|index| *index != first_leader);
    let killed = Instant::now();
    cluster.kill_9(first_leader);
    let survivors: Vec<usize> = all_nodes
        .iter()
        .copied()
        .filter(|index| *index != first_leader)
        .collect();
    let second_leader = runtime.block_on(find_leader(&cluster, &survivors));
    assert_ne!(second_leader, first_leader);
    eprintln!(
        "failover: node {} -> node {} in {:?}",
        first_leader + 1,
        second_leader + 1,
        killed.elapsed()
    );

    // The writers continue on the new leader for a while.
    let at_failover = counted.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = HashMap::new();
    for writer in writers {
        acknowledged.extend(runtime.block_on(writer).expect("writer task"));
    }
    eprintln!(
        "acknowledged: {before_kill} before the kill, {} after the failover, {} in all",
        acknowledged.len() - at_failover,
        acknowledged.len()
    );
    assert!(before_kill > 0, "nothing was acknowledged before the kill");
    assert!(
        acknowledged.len() > at_failover,
        "nothing was acknowledged by the new leader"
    );

    // Read-your-writes on the follower: with `at_least` it sees every
    // acknowledged event at once, whatever its apply lag.
    let last_acknowledged = acknowledged
        .values()
        .map(|promised| promised.position)
        .max()
        .expect("something acknowledged");
    let follower = survivors
        .iter()
        .copied()
        .find(|index| *index != second_leader)
        .expect("a follower survives");
    let seen = runtime.block_on(async {
        let client = Client::connect(cluster.url(follower))
            .await
            .expect("connect");
        client
            .read_all(ReadOptions::forwards().at_least(last_acknowledged))
            .await
            .expect("read on the follower")
            .collect_all()
            .await
            .expect("collect")
    });
    let seen_ids: std::collections::HashSet<Uuid> = seen.iter().map(|event| event.id).collect();
    assert!(
        acknowledged.keys().all(|id| seen_ids.contains(id)),
        "a follower read at_least({last_acknowledged}) missed an acknowledged event"
    );

    // The killed node rejoins and catches up from the log.
    cluster.start(first_leader);
    let everything = runtime.block_on(converged(&cluster, &all_nodes));
    assert_identical_holding_each_once(&everything, &acknowledged);
    drop(cluster);
}

/// Appends one event with a fresh id to the `isolated` stream on `client` (an
/// isolated leader), recording the id in `sent`, and asserts it is not
/// acknowledged: it ends `NotLeader` / `Unavailable` or not within
/// [`ISOLATED_APPEND_WAIT`]. The id is never sent anywhere else.
async fn refused_while_isolated(client: &Client, sent: &mut Vec<Uuid>) {
    let id = Uuid::new_v4();
    sent.push(id);
    let event = EventData::binary("Isolated", id.to_string().into_bytes()).id(id);
    let outcome = tokio::time::timeout(
        ISOLATED_APPEND_WAIT,
        client.append("isolated", ExpectedRevision::Any, vec![event]),
    )
    .await;
    match outcome {
        Err(_elapsed) => {}
        Ok(Err(Error::NotLeader { .. } | Error::Unavailable(_))) => {}
        Ok(Ok(result)) => panic!("the isolated leader acknowledged {id}: {result:?}"),
        Ok(Err(other)) => panic!("the isolated leader answered {id} with {other}"),
    }
}

/// Issue 17's partition test with real processes: every raft link goes
/// through its own proxy; cutting the leader L off from both followers (both
/// directions) under load, L acknowledges nothing sent to it, the other two
/// elect a leader that acknowledges, and after healing every node holds the
/// same `$all`, with every acknowledged event once where it was acknowledged
/// and none of the events only L was sent after the cut.
#[test]
fn an_isolated_leader_stops_acknowledging_and_the_majority_goes_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let runtime = common::runtime();
    let mut cluster = Cluster::new(root.path());
    let links = runtime.block_on(Links::start(&cluster.rafts));
    cluster.route_through(&links);
    for index in 0..NODES {
        cluster.start(index);
    }
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let leader = runtime.block_on(find_leader(&cluster, &all_nodes));
    let majority: Vec<usize> = all_nodes
        .iter()
        .copied()
        .filter(|index| *index != leader)
        .collect();

    let target = Arc::new(Target {
        urls: (0..NODES).map(|index| cluster.url(index)).collect(),
        live: std::sync::Mutex::new(all_nodes.clone()),
        leader: Mutex::new(None),
        attempt_deadline: Some(ATTEMPT_DEADLINE),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            runtime.spawn(write(
                Arc::clone(&target),
                writer,
                Arc::clone(&stop),
                Arc::clone(&counted),
            ))
        })
        .collect();
    wait_until("no append acknowledged before the partition", || {
        counted.load(Ordering::Relaxed) >= 20
    });
    // The leader replicated through the proxies: the routes are what the
    // nodes use, so cutting the proxies partitions them.
    for &follower in &majority {
        let stats = links.proxy(leader, follower).stats();
        assert!(
            stats.bytes_to_target > 0,
            "nothing went from node {} to node {} through its proxy: {stats:?}",
            leader + 1,
            follower + 1
        );
    }

    // Partition L. The writers look for a leader on the majority only, and
    // move there once their attempt on L runs out of time.
    target
        .live
        .lock()
        .expect("live")
        .retain(|index| *index != leader);
    links.isolate(leader);
    let mut sent_to_isolated = Vec::new();
    let isolated = runtime
        .block_on(Client::connect(cluster.url(leader)))
        .expect("connect to the isolated leader");
    runtime.block_on(refused_while_isolated(&isolated, &mut sent_to_isolated));

    // The majority elects a leader of its own, which acknowledges.
    let new_leader = runtime.block_on(find_leader(&cluster, &majority));
    assert_ne!(new_leader, leader);
    let on_majority = Uuid::new_v4();
    let result = runtime
        .block_on(async {
            let client = Client::connect(cluster.url(new_leader)).await?;
            let event = EventData::binary("Majority", &b"after the cut"[..]).id(on_majority);
            client
                .append("majority", ExpectedRevision::Any, vec![event])
                .await
        })
        .unwrap_or_else(|error| {
            panic!(
                "the new leader, node {}, refused an append: {error}",
                new_leader + 1
            )
        });
    let (position, _) = result.positions.expect("one event written");
    let mut acknowledged = HashMap::from([(
        on_majority,
        Acknowledged {
            stream: "majority".into(),
            revision: result.current_revision.expect("a revision"),
            position,
        },
    )]);
    let at_new_leader = counted.load(Ordering::Relaxed);
    wait_until("the writers acknowledged nothing on the new leader", || {
        counted.load(Ordering::Relaxed) >= at_new_leader + 20
    });
    // While the majority goes on, L still acknowledges nothing.
    runtime.block_on(refused_while_isolated(&isolated, &mut sent_to_isolated));

    // Heal: L learns of the newer term and follows.
    links.heal();
    runtime.block_on(async {
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let status = isolated.cluster_status().await.expect("cluster status");
            if status.leader_id.is_some_and(|id| id != leader as u64 + 1) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still follows no other leader after healing: {status:#?}\nlogs:\n{}",
                leader + 1,
                cluster.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        acknowledged.extend(runtime.block_on(writer).expect("writer task"));
    }
    eprintln!(
        "partition: node {} isolated, node {} led the majority; {} acknowledged, \
         {} sent to the isolated leader",
        leader + 1,
        new_leader + 1,
        acknowledged.len(),
        sent_to_isolated.len()
    );

    let everything = runtime.block_on(converged(&cluster, &all_nodes));
    let events = assert_identical_holding_each_once(&everything, &acknowledged);
    let present: HashSet<Uuid> = events.iter().map(|event| event.id).collect();
    for id in &sent_to_isolated {
        assert!(
            !present.contains(id),
            "event {id}, sent only to the isolated leader and never acknowledged, is in $all"
        );
    }
    assert!(
        events.iter().all(|event| event.stream != "isolated"),
        "the isolated leader's stream exists"
    );
    drop(cluster);
    drop(links);
}

/// Consumer groups run on the leader only: a follower refuses a consumer
/// with `NotLeader`, and after the leader is killed the new leader starts
/// the group from its durable checkpoint (replicated like any stream) and
/// delivers everything after it.
#[test]
fn a_consumer_group_moves_to_the_new_leader_and_resumes_from_its_checkpoint() {
    use cairn_client::{GroupOptions, GroupSettings};

    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::started(root.path());
    let runtime = common::runtime();
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let leader = runtime.block_on(find_leader(&cluster, &all_nodes));
    let follower = (leader + 1) % NODES;
    const EVENTS: u64 = 200;
    let durable = runtime.block_on(async {
        let client = Client::connect(cluster.url(leader)).await.expect("connect");
        let events: Vec<EventData> = (0..EVENTS)
            .map(|n| EventData::binary("Paid", n.to_string().into_bytes()))
            .collect();
        client
            .append("pay-1", ExpectedRevision::NoStream, events)
            .await
            .expect("append");
        let options = GroupOptions {
            settings: GroupSettings {
                checkpoint_after_events: Some(10),
                ..GroupSettings::default()
            },
            ..GroupOptions::default()
        };
        client
            .create_group("payments", "pay-1", options)
            .await
            .expect("create the group on the leader");

        // A follower sends consumers to the leader.
        let on_follower = Client::connect(cluster.url(follower))
            .await
            .expect("connect");
        let refused = match on_follower.consume("payments", "elsewhere", 10).await {
            Err(error) => error,
            Ok(mut consumer) => consumer.next().await.expect_err("a follower delivered"),
        };
        match refused {
            Error::NotLeader { leader: named, .. } => {
                assert_eq!(named.as_deref(), Some(cluster.clients[leader].as_str()));
            }
            other => panic!("a follower answered a consumer with {other}"),
        }

        let mut consumer = client
            .consume("payments", "payments-1", 10)
            .await
            .expect("consume on the leader");
        for _ in 0..100 {
            let delivery = consumer.next().await.expect("next").expect("open");
            delivery.ack().await.expect("ack");
        }
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let info = client.group_info("payments").await.expect("group info");
            if let Some(revision) = info.checkpoint_revision.filter(|revision| *revision >= 50) {
                break revision;
            }
            assert!(Instant::now() < deadline, "no durable checkpoint past 50");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    cluster.kill_9(leader);
    let survivors: Vec<usize> = all_nodes
        .iter()
        .copied()
        .filter(|index| *index != leader)
        .collect();
    let new_leader = runtime.block_on(find_leader(&cluster, &survivors));
    runtime.block_on(async {
        let client = Client::connect(cluster.url(new_leader))
            .await
            .expect("connect");
        let deadline = Instant::now() + ELECTION_DEADLINE;
        let mut consumer = loop {
            match client.consume("payments", "payments-2", 10).await {
                Ok(consumer) => break consumer,
                // The group starts a moment after the node leads.
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "the new leader runs no group: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let first = consumer.next().await.expect("next").expect("open");
        assert!(
            first.event.revision <= durable + 1,
            "the group skipped events after its checkpoint {durable}: resumed at {}",
            first.event.revision
        );
        first.ack().await.expect("ack");
        let mut last = first.event.revision;
        while last < EVENTS - 1 {
            let delivery = consumer.next().await.expect("next").expect("open");
            last = last.max(delivery.event.revision);
            delivery.ack().await.expect("ack");
        }
    });
    drop(cluster);
}

/// A KurrentDB client's view of the cluster: gossip on every node names the
/// same leader at its KurrentDB address, and a write sent to a follower
/// through the KurrentDB facade is redirected there (`not-leader`), as
/// KurrentDB's own clients expect.
#[test]
fn kurrentdb_clients_find_the_leader_through_gossip_and_not_leader() {
    use cairn_proto::kurrent::gossip::gossip_client::GossipClient;
    use cairn_proto::kurrent::gossip::member_info::VNodeState;
    use cairn_proto::kurrent::shared;
    use cairn_proto::kurrent::streams as kurrent;
    use cairn_proto::kurrent::streams::streams_client::StreamsClient;

    let root = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::started(root.path());
    let runtime = common::runtime();
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let leader = runtime.block_on(find_leader(&cluster, &all_nodes));
    let (leader_host, leader_port) = cluster.kurrents[leader]
        .rsplit_once(':')
        .expect("host:port");

    runtime.block_on(async {
        for index in 0..NODES {
            let channel = tonic::transport::Channel::from_shared(format!(
                "http://{}",
                cluster.kurrents[index]
            ))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the KurrentDB facade");
            let members = GossipClient::new(channel.clone())
                .read(shared::Empty {})
                .await
                .expect("gossip")
                .into_inner()
                .members;
            assert_eq!(members.len(), NODES, "node {}: {members:?}", index + 1);
            let leaders: Vec<_> = members
                .iter()
                .filter(|member| member.state == VNodeState::Leader as i32)
                .collect();
            assert_eq!(leaders.len(), 1, "node {}: {members:?}", index + 1);
            let endpoint = leaders[0].http_end_point.as_ref().expect("endpoint");
            assert_eq!(
                (endpoint.address.as_str(), endpoint.port.to_string()),
                (leader_host, leader_port.to_owned()),
                "node {} names another leader",
                index + 1
            );

            let options = kurrent::append_req::Options {
                stream_identifier: Some(shared::StreamIdentifier {
                    stream_name: format!("kurrent-{index}").into_bytes().into(),
                }),
                expected_stream_revision: Some(
                    kurrent::append_req::options::ExpectedStreamRevision::Any(shared::Empty {}),
                ),
            };
            let event = kurrent::append_req::ProposedMessage {
                id: Some(shared::Uuid {
                    value: Some(shared::uuid::Value::String(Uuid::new_v4().to_string())),
                }),
                metadata: [
                    ("type".to_owned(), "Written".to_owned()),
                    ("content-type".to_owned(), "application/json".to_owned()),
                ]
                .into(),
                custom_metadata: Vec::new().into(),
                data: b"{}".to_vec().into(),
            };
            let requests = vec![
                kurrent::AppendReq {
                    content: Some(kurrent::append_req::Content::Options(options)),
                },
                kurrent::AppendReq {
                    content: Some(kurrent::append_req::Content::ProposedMessage(event)),
                },
            ];
            let answer = StreamsClient::new(channel)
                .append(tokio_stream::iter(requests))
                .await;
            if index == leader {
                answer.expect("the leader appends through the KurrentDB facade");
                continue;
            }
            let status = answer.expect_err("a follower must redirect");
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
            assert_eq!(status.message(), "Leader info available");
            let trailer = |key: &str| {
                status
                    .metadata()
                    .get(key)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned)
            };
            assert_eq!(trailer("exception").as_deref(), Some("not-leader"));
            assert_eq!(
                trailer("leader-endpoint-host").as_deref(),
                Some(leader_host)
            );
            assert_eq!(
                trailer("leader-endpoint-port").as_deref(),
                Some(leader_port)
            );
        }
    });

    // The official Python client, unchanged, against the same cluster.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/tests/python/test_kurrent_cluster.py");
    let mut nodes = vec![cluster.kurrents[leader].clone()];
    nodes.extend(
        (0..NODES)
            .filter(|index| *index != leader)
            .map(|index| cluster.kurrents[index].clone()),
    );
    let output = std::process::Command::new("python3")
        .arg(&script)
        .args(&nodes)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run python3 (install Python 3 and pip install kurrentdbclient; .ci/run does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("4 passed, 0 failed"),
        "the KurrentDB Python client failed against the cluster ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    drop(cluster);
}

#[test]
fn every_node_reports_the_leader_and_term_in_its_cluster_status() {
    use cairn_client::{ClusterMemberKind, ClusterRole, ClusterStatus};

    /// `url`'s cluster status once `done` holds for it (a follower learns
    /// of the leader, and of each entry, from the leader's next message),
    /// within [`ELECTION_DEADLINE`].
    async fn status_when(
        url: String,
        what: &str,
        done: impl Fn(&ClusterStatus) -> bool,
    ) -> ClusterStatus {
        let client = Client::connect(url.clone()).await.expect("connect");
        let deadline = Instant::now() + ELECTION_DEADLINE;
        loop {
            let status = client.cluster_status().await.expect("cluster status");
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{url}: {what} within {ELECTION_DEADLINE:?}: {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::new(root.path());
    for index in 0..NODES {
        cluster.start(index);
    }
    let runtime = common::runtime();
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let leader = runtime.block_on(find_leader(&cluster, &all_nodes));
    let leader_id = leader as u64 + 1;
    let leader_client = cluster.clients[leader].clone();
    let node_ids: Vec<u64> = (1..=NODES as u64).collect();

    runtime.block_on(async {
        // The leader: itself, three voters at the configured addresses, and
        // once the cluster is quiet every follower caught up (lag 0).
        let on_leader = status_when(cluster.url(leader), "the followers catching up", |status| {
            status
                .members
                .iter()
                .all(|member| member.id == leader_id || member.lag == Some(0))
        })
        .await;
        assert!(on_leader.clustered);
        assert_eq!(on_leader.role, ClusterRole::Leader);
        assert_eq!(on_leader.node_id, leader_id);
        assert_eq!(on_leader.leader_id, Some(leader_id));
        assert_eq!(
            on_leader.leader_client_address.as_deref(),
            Some(leader_client.as_str())
        );
        assert!(on_leader.term > 0);
        let ids: Vec<u64> = on_leader.members.iter().map(|member| member.id).collect();
        assert_eq!(ids, node_ids);
        for member in &on_leader.members {
            let index = member.id as usize - 1;
            assert_eq!(member.kind, ClusterMemberKind::Voter, "{member:?}");
            assert_eq!(
                member.raft_address.as_deref(),
                Some(cluster.rafts[index].as_str())
            );
            assert_eq!(
                member.client_address.as_deref(),
                Some(cluster.clients[index].as_str())
            );
            if member.id == leader_id {
                assert_eq!((member.matched_index, member.lag), (None, None));
            } else {
                assert_eq!(member.matched_index, on_leader.last_log_index, "{member:?}");
            }
        }

        // Every follower: the same term and leader, the leader's client
        // address, the same membership, no progress figures of its own, and
        // once it applied the leader's log the same applied position.
        for follower in all_nodes.iter().copied().filter(|index| *index != leader) {
            let status = status_when(
                cluster.url(follower),
                "applying the leader's log",
                |status| {
                    status.leader_id.is_some()
                        && status.last_applied_index == on_leader.last_log_index
                },
            )
            .await;
            assert_eq!(status.node_id, follower as u64 + 1);
            assert_eq!(status.role, ClusterRole::Follower);
            assert_eq!(status.term, on_leader.term);
            assert_eq!(status.leader_id, Some(leader_id));
            assert_eq!(
                status.leader_client_address.as_deref(),
                Some(leader_client.as_str())
            );
            assert_eq!(status.applied_position, on_leader.applied_position);
            let ids: Vec<u64> = status.members.iter().map(|member| member.id).collect();
            assert_eq!(ids, node_ids);
            assert!(
                status
                    .members
                    .iter()
                    .all(|member| member.kind == ClusterMemberKind::Voter
                        && member.matched_index.is_none()
                        && member.lag.is_none()),
                "{status:#?}"
            );
        }
    });
    drop(cluster);
}

#[test]
fn a_client_given_every_seed_follows_the_leader_through_a_kill_and_writes_each_append_once() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::new(root.path());
    for index in 0..NODES {
        cluster.start(index);
    }
    let runtime = common::runtime();
    let all_nodes: Vec<usize> = (0..NODES).collect();
    let first_leader = runtime.block_on(find_leader(&cluster, &all_nodes));

    // A follower is the first seed, so the first write follows a redirect.
    let seeds: Vec<String> = (1..=NODES)
        .map(|offset| cluster.url((first_leader + offset) % NODES))
        .collect();
    let client = runtime
        .block_on(
            Client::builder(seeds[0].clone())
                .seeds(seeds[1..].to_vec())
                .failover_deadline(ELECTION_DEADLINE)
                .connect(),
        )
        .expect("connect to the seeds");

    // One writer, one event per append with the exact expected revision: the
    // client's own retries must keep both the id and the expectation, or a
    // retry of a committed append fails (wrong revision, duplicate id) or
    // writes twice.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged_so_far = Arc::new(AtomicUsize::new(0));
    let writer = runtime.spawn({
        let stop = Arc::clone(&stop);
        let acknowledged_so_far = Arc::clone(&acknowledged_so_far);
        async move {
            let mut acknowledged: Vec<(Uuid, Acknowledged)> = Vec::new();
            let mut replays = 0;
            while !stop.load(Ordering::Relaxed) {
                let revision = acknowledged.len() as u64;
                let expected = match revision {
                    0 => ExpectedRevision::NoStream,
                    _ => ExpectedRevision::Exact(revision - 1),
                };
                let id = Uuid::new_v4();
                let event = EventData::binary("Followed", revision.to_be_bytes().to_vec()).id(id);
                let result = client
                    .append("followed", expected, vec![event])
                    .await
                    .unwrap_or_else(|error| panic!("append {revision} failed: {error}"));
                let (first, last) = result.positions.expect("one event written");
                assert_eq!(first, last);
                assert_eq!(result.current_revision, Some(revision));
                replays += usize::from(result.idempotent_replay);
                acknowledged.push((
                    id,
                    Acknowledged {
                        stream: "followed".into(),
                        revision,
                        position: first,
                    },
                ));
                acknowledged_so_far.fetch_add(1, Ordering::Relaxed);
            }
            (acknowledged, replays)
        }
    });

    wait_until("no append acknowledged before the kill", || {
        acknowledged_so_far.load(Ordering::Relaxed) >= 20
    });
    let before_kill = acknowledged_so_far.load(Ordering::Relaxed);
    cluster.kill_9(first_leader);
    wait_until("no append acknowledged after the kill", || {
        acknowledged_so_far.load(Ordering::Relaxed) >= before_kill + 20
    });
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, replays) = runtime.block_on(writer).expect("writer task");
    eprintln!(
        "acknowledged {} appends ({before_kill} before the kill), {replays} as idempotent replays",
        acknowledged.len()
    );

    // Every acknowledged append is in $all once, at its acknowledged
    // position and revision, and the stream holds nothing else.
    let survivors: Vec<usize> = all_nodes
        .iter()
        .copied()
        .filter(|index| *index != first_leader)
        .collect();
    let everything = runtime.block_on(converged(&cluster, &survivors));
    assert_eq!(everything[0], everything[1], "the survivors differ");
    let followed: Vec<&RecordedEvent> = everything[0]
        .iter()
        .filter(|event| event.stream == "followed")
        .collect();
    assert_eq!(
        followed.len(),
        acknowledged.len(),
        "the stream holds other events than the acknowledged ones"
    );
    for (event, (id, promised)) in followed.iter().zip(&acknowledged) {
        assert_eq!(
            (event.id, event.revision, event.position),
            (*id, promised.revision, promised.position),
            "event {id} is not (once) where it was acknowledged"
        );
    }
    drop(cluster);
}

/// A follower down while the leader's log is compacted past it (a snapshot
/// every 50 entries, 10 kept) cannot catch up from the log: restarted, it
/// must receive a snapshot (a checkpoint of the leader's store), install it,
/// then apply the log after it, and hold exactly the leader's `$all`, also
/// after one more kill -9 and restart on the installed state.
/// Also: a scavenge, after the snapshot, is refused on a follower (naming
/// the leader) and, started on the leader, removes the same records on every
/// node (its deletions are replicated entries).
#[test]
fn a_follower_back_after_the_log_was_compacted_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::new(root.path());
    cluster.extra = [
        "--cluster-snapshot-entries",
        "50",
        "--cluster-keep-log-entries",
        "10",
    ]
    .map(str::to_owned)
    .to_vec();
    for index in 0..NODES {
        cluster.start(index);
    }
    let runtime = common::runtime();
    runtime.block_on(async {
        let leader = find_leader(&cluster, &[0, 1, 2]).await;
        let away = (leader + 1) % NODES;
        cluster.kill_9(away);
        let client = Client::connect(cluster.url(leader)).await.expect("connect");
        let last = common::append_bulk(&client, common::snapshot_test_events()).await;

        cluster.start(away);
        let reader = Client::connect(cluster.url(away)).await.expect("connect");
        let caught_up = Instant::now() + ELECTION_DEADLINE * 15;
        loop {
            match reader
                .read_all(ReadOptions::forwards().at_least(last))
                .await
            {
                Ok(_) => break,
                Err(Error::Unavailable(_)) if Instant::now() < caught_up => {}
                Err(other) => panic!(
                    "the returning follower did not catch up to {last}: {other}; logs:\n{}",
                    cluster.stderr()
                ),
            }
        }
        let logs = cluster.daemons[away].as_ref().expect("running").stderr();
        assert!(
            logs.contains("raft snapshot installed"),
            "the returning follower caught up without a snapshot; its log:\n{logs}"
        );
        // The log after the snapshot applies on top of it.
        common::append_bulk(&client, 400).await;
        let all = converged(&cluster, &[0, 1, 2]).await;
        assert!(all[0].len() as u64 > last, "{} events", all[0].len());
        assert_eq!(all[0], all[1], "nodes 1 and 2 differ");
        assert_eq!(all[0], all[2], "nodes 1 and 3 differ");

        // Killed and restarted on the installed state, it comes back.
        cluster.kill_9(away);
        cluster.start(away);
        common::append_bulk(&client, 400).await;
        let all = converged(&cluster, &[0, 1, 2]).await;
        assert_eq!(all[0], all[1], "nodes 1 and 2 differ after the restart");
        assert_eq!(all[0], all[2], "nodes 1 and 3 differ after the restart");

        scavenge_removes_alike_on_every_node(&cluster).await;
    });
}

/// Deletes `bulk-0`, checks that a follower refuses a scavenge with
/// `NotLeader` naming the leader, scavenges on the leader, and waits until
/// every node counts the same events, all of `bulk-0`'s removed, with
/// identical `$all`s.
async fn scavenge_removes_alike_on_every_node(cluster: &Cluster) {
    let leader = find_leader(cluster, &[0, 1, 2]).await;
    let follower = (leader + 1) % NODES;
    let client = &Client::connect(cluster.url(leader)).await.expect("connect");
    let before = read_everything(&cluster.url(leader)).await;
    let doomed = before
        .iter()
        .filter(|event| event.stream == "bulk-0")
        .count() as u64;
    assert!(doomed > 0, "bulk-0 holds no event");
    client
        .delete("bulk-0", ExpectedRevision::Any)
        .await
        .expect("delete bulk-0");
    let on_follower = Client::connect(cluster.url(follower))
        .await
        .expect("connect to the follower");
    match on_follower.start_scavenge().await {
        Err(Error::NotLeader {
            leader: Some(named),
            ..
        }) => assert_eq!(named, cluster.clients[leader]),
        other => panic!("a follower answered a scavenge with {other:?}"),
    }
    let started = client
        .start_scavenge()
        .await
        .expect("scavenge on the leader");
    let status = until_some(
        cluster,
        "the scavenge ends",
        Duration::from_millis(100),
        || {
            let client = client.clone();
            async move {
                let status = client.scavenge_status().await.expect("scavenge status");
                (status.run == started.run && status.state != ScavengeState::Running)
                    .then_some(status)
            }
        },
    )
    .await;
    assert_eq!(status.state, ScavengeState::Finished, "{status:?}");
    assert_eq!(status.removed, doomed, "{status:?}");

    let leader_count = client.info().await.expect("leader info").event_count;
    assert_eq!(leader_count, before.len() as u64 - doomed);
    for index in 0..NODES {
        let node = Client::connect(cluster.url(index)).await.expect("connect");
        until_some(
            cluster,
            "every node counts the removal",
            Duration::from_millis(100),
            || {
                let node = node.clone();
                async move {
                    let count = node.info().await.expect("info").event_count;
                    (count == leader_count).then_some(())
                }
            },
        )
        .await;
    }
    let all = converged(cluster, &[0, 1, 2]).await;
    assert_eq!(all[0], all[1], "nodes 1 and 2 differ after the scavenge");
    assert_eq!(all[0], all[2], "nodes 1 and 3 differ after the scavenge");
    let visible: Vec<_> = before
        .into_iter()
        .filter(|event| event.stream != "bulk-0")
        .collect();
    assert_eq!(all[0], visible, "the scavenge changed what reads see");
}

/// Polls `attempt` every `every` until it returns `Some`, failing the test
/// after [`ELECTION_DEADLINE`] with `what` and the cluster's logs.
async fn until_some<T, F, Fut>(cluster: &Cluster, what: &str, every: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {ELECTION_DEADLINE:?}; logs:\n{}",
            cluster.stderr()
        );
        tokio::time::sleep(every).await;
    }
}

/// Whom node `index` says `client` is, `None` while it refuses the login.
/// Each refusal counts against the source's failed logins (five in a minute
/// block 127.0.0.1 for a while), so callers poll slowly and only where the
/// login is about to work.
async fn logged_in_as(client: &Client) -> Option<String> {
    match client.whoami().await {
        Ok(whoami) => Some(whoami.user),
        Err(Error::Unauthenticated(_)) => None,
        Err(other) => panic!("whoami: {other}"),
    }
}

/// Secure mode in cluster mode: TLS and logins on every client listener,
/// the user registry replicated through the raft log. The first leader
/// creates `admin` with a generated password in its own data directory; a
/// user created on the leader logs in on every node and a token issued on
/// the leader works on the followers; a follower refuses user changes with
/// `NotLeader`, unauthenticated calls and a user without the admin role's
/// cluster status, while a cluster client whose first seed is a follower
/// creates the user and a token through the leader (one token); after a
/// kill -9 of the leader, the user disabled through that client (which
/// fails over to the new leader) is refused on every node, the old leader
/// included once it is back.
#[test]
fn a_secure_cluster_replicates_users_and_tokens_to_every_node_through_a_failover() {
    use cairn_client::{ClusterRole, NewToken, NewUser};
    const REDIRECTED_TOKEN: &str = "issued through a follower";
    const ALICE_PASSWORD: &str = "alice's long enough password";

    let root = tempfile::tempdir().expect("tempdir");
    let certs = cairn_server::dev_certs::write(&root.path().join("certs"), &[]).expect("certs");
    let mut cluster = Cluster::new(root.path());
    cluster.secure = Some(Secure { certs, login: None });
    for index in 0..NODES {
        cluster.start(index);
    }
    let runtime = common::runtime();
    let first_leader = runtime.block_on(async {
        // The first leader writes the generated password into its own data
        // directory, then appends the admin: the node whose file logs in
        // is the one that created it.
        let (first_leader, password) = until_some(
            &cluster,
            "a generated admin password",
            Duration::from_millis(200),
            || {
                let cluster = &cluster;
                async move {
                    for index in 0..NODES {
                        let file = cluster
                            .root
                            .join(format!("node-{}", index + 1))
                            .join("initial-admin-password");
                        let Ok(password) = std::fs::read_to_string(&file) else {
                            continue;
                        };
                        let password = password.trim().to_owned();
                        let client = cluster
                            .connect_as(index, "admin", &password)
                            .await
                            .expect("connect");
                        if logged_in_as(&client).await.is_some() {
                            return Some((index, password));
                        }
                    }
                    None
                }
            },
        )
        .await;
        cluster.secure.as_mut().expect("secure").login = Some(("admin".into(), password));
        // Every follower learns of the admin from the log.
        for index in 0..NODES {
            let admin = cluster.connect(index).await.expect("connect");
            let user = until_some(
                &cluster,
                "the admin on every node",
                Duration::from_millis(300),
                || logged_in_as(&admin),
            )
            .await;
            assert_eq!(user, "admin");
        }
        first_leader
    });
    let leader = runtime.block_on(find_leader(&cluster, &[0, 1, 2]));
    assert_eq!(
        leader, first_leader,
        "the leader changed on a quiet cluster"
    );
    let followers: Vec<usize> = (0..NODES).filter(|index| *index != leader).collect();

    let (alice_token, seeded) = runtime.block_on(async {
        // Without credentials, or over plaintext, a follower serves nothing.
        let anonymous = cluster
            .client_builder(followers[0])
            .connect()
            .await
            .expect("connect");
        assert!(matches!(
            anonymous
                .read_all(ReadOptions::forwards())
                .await
                .and(Ok(())),
            Err(Error::Unauthenticated(_))
        ));
        if let Ok(plaintext) =
            Client::connect(format!("http://{}", cluster.clients[followers[0]])).await
        {
            assert!(
                plaintext.whoami().await.is_err(),
                "a TLS listener answered plaintext"
            );
        }

        // User changes go to the leader; a follower names it.
        let on_follower = cluster.connect(followers[0]).await.expect("connect");
        match on_follower
            .create_user(NewUser::new("mallory", ALICE_PASSWORD))
            .await
        {
            Err(Error::NotLeader { leader: named, .. }) => assert_eq!(
                named.as_deref(),
                Some(cluster.clients[leader].as_str()),
                "the follower named another leader"
            ),
            other => panic!("a follower created a user: {other:?}"),
        }
        // A cluster client that starts on a follower follows its NotLeader
        // to the leader, for user changes as for writes.
        let seeded = cluster
            .connect_seeded(followers[0])
            .await
            .expect("connect to the seeds");
        seeded
            .create_user(NewUser::new("alice", ALICE_PASSWORD))
            .await
            .expect("create alice through a client whose first seed is a follower");
        assert_eq!(
            seeded.cluster_status().await.expect("status").role,
            ClusterRole::Leader,
            "the client stayed on the follower"
        );
        // A token too: a follower refuses before issuing one, so following
        // its refusal issues exactly one (checked on each follower below).
        cluster
            .connect_seeded(followers[1])
            .await
            .expect("connect to the seeds")
            .create_token(NewToken::for_user("alice").name(REDIRECTED_TOKEN))
            .await
            .expect("a token for alice through a client whose first seed is a follower");
        let alice = cluster
            .connect_as(leader, "alice", ALICE_PASSWORD)
            .await
            .expect("connect");
        alice
            .append(
                "notes-alice",
                ExpectedRevision::NoStream,
                vec![EventData::binary("Noted", &b"by alice"[..])],
            )
            .await
            .expect("alice appends on the leader");
        let token = alice
            .create_token(NewToken::own().name("on every node"))
            .await
            .expect("alice's token");
        for &index in &followers {
            // The admin sees alice (and her own token) once the follower
            // caught up; only then does alice log in there, so no attempt
            // fails.
            let admin = cluster.connect(index).await.expect("connect");
            let tokens = until_some(
                &cluster,
                "alice on every node",
                Duration::from_millis(50),
                || {
                    let admin = &admin;
                    let own = &token.details.id;
                    async move {
                        let tokens = admin.list_tokens(Some("alice")).await.ok()?;
                        tokens
                            .iter()
                            .any(|listed| listed.id == *own)
                            .then_some(tokens)
                    }
                },
            )
            .await;
            let redirected = tokens
                .iter()
                .filter(|listed| listed.name == REDIRECTED_TOKEN)
                .count();
            assert_eq!(
                redirected,
                1,
                "node {}: tokens issued through a follower",
                index + 1
            );
            let alice = cluster
                .connect_as(index, "alice", ALICE_PASSWORD)
                .await
                .expect("connect");
            assert_eq!(logged_in_as(&alice).await.as_deref(), Some("alice"));
            let notes = alice
                .read_stream("notes-alice", ReadOptions::forwards())
                .await
                .expect("alice reads on a follower")
                .collect_all()
                .await
                .expect("read");
            assert_eq!(notes.len(), 1, "node {}: alice's notes", index + 1);
            let by_token = cluster
                .client_builder(index)
                .token(token.secret.clone())
                .connect()
                .await
                .expect("connect");
            assert_eq!(logged_in_as(&by_token).await.as_deref(), Some("alice"));
            assert!(
                matches!(
                    alice.cluster_status().await,
                    Err(Error::PermissionDenied(_))
                ),
                "alice (no role) saw the cluster status"
            );
            let wrong = cluster
                .connect_as(index, "alice", "not alice's password")
                .await
                .expect("connect");
            assert_eq!(
                logged_in_as(&wrong).await,
                None,
                "a wrong password logged in"
            );
        }
        (token.secret, seeded)
    });

    // The leader dies; the cluster client, still on it, disables alice
    // through the next one.
    cluster.kill_9(leader);
    runtime.block_on(async {
        seeded
            .disable_user("alice")
            .await
            .expect("disable alice through the cluster client across the failover");
        let status = seeded.cluster_status().await.expect("status");
        assert_eq!(status.role, ClusterRole::Leader, "{status:?}");
        assert!(
            followers
                .iter()
                .any(|&index| status.node_id == index as u64 + 1),
            "the client uses node {} (the killed leader is node {})",
            status.node_id,
            leader + 1
        );
    });
    cluster.start(leader);
    runtime.block_on(async {
        for index in 0..NODES {
            let admin = cluster.connect(index).await.expect("connect");
            until_some(
                &cluster,
                "alice disabled on every node",
                Duration::from_millis(100),
                || {
                    let admin = &admin;
                    async move {
                        let alice = admin.user_details("alice").await.ok()?;
                        alice.disabled.then_some(())
                    }
                },
            )
            .await;
            let alice = cluster
                .connect_as(index, "alice", ALICE_PASSWORD)
                .await
                .expect("connect");
            assert_eq!(
                logged_in_as(&alice).await,
                None,
                "node {}: disabled alice logged in",
                index + 1
            );
            let by_token = cluster
                .client_builder(index)
                .token(alice_token.clone())
                .connect()
                .await
                .expect("connect");
            assert_eq!(
                logged_in_as(&by_token).await,
                None,
                "node {}: disabled alice's token worked",
                index + 1
            );
        }
    });
    drop(cluster);
}
