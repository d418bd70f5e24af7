//! Cluster mode's seam in the store (`src/replication.rs`), without raft: a
//! test replicator applies every sealed group to the proposing store (with
//! its in-memory view, as the cluster crate's state machine does) and to the
//! other stores (reading the group back, as a follower does). Roles move
//! between stores by hand with `lead` and `follow`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use cairn_storage::{
    CurrentRevision, Error, EventData, ExpectedRevision, GroupEffect, Proposed, ReadRequest,
    ReadSource, RecordedEvent, Replicator, SealedGroup, Store, StoreOptions, StreamAppend,
    StreamMetadata,
};

/// Applies each group to `proposer` and then to every store in `others`.
#[derive(Default)]
struct Mirror {
    proposer: OnceLock<Store>,
    others: Mutex<Vec<Store>>,
    /// When set, the group is not replicated: the proposer lost leadership.
    refuse: AtomicBool,
    /// Counts applied entries (the opaque "raft state" stored with each).
    applied: Arc<AtomicU64>,
}

impl Replicator for Mirror {
    fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed {
        Proposed::done(self.replicate(&group, effect))
    }
}

impl Mirror {
    fn replicate(&self, group: &SealedGroup, effect: GroupEffect) -> Result<(), Error> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(Error::NotLeader {
                leader: Some("node-2:7070".into()),
                kurrent_leader: None,
            });
        }
        let entry = self.applied.fetch_add(1, Ordering::Relaxed) + 1;
        let state = entry.to_be_bytes();
        let proposer = self.proposer.get().expect("proposer attached");
        proposer.apply_replicated(group, Some(effect), &state)?;
        for other in self
            .others
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            other.apply_replicated(group, None, &state)?;
        }
        Ok(())
    }
}

fn clustered(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            clustered: true,
            ..StoreOptions::default()
        },
    )
    .expect("open clustered store")
}

/// Groups in flight at once in the pipelining tests.
const PIPELINE_DEPTH: usize = 8;

/// A clustered store that keeps up to `depth` groups in flight.
fn with_depth(dir: &std::path::Path, depth: usize) -> Store {
    Store::open(
        dir,
        StoreOptions {
            clustered: true,
            replicated_groups_in_flight: depth,
            ..StoreOptions::default()
        },
    )
    .expect("open clustered store")
}

/// A clustered store that keeps up to [`PIPELINE_DEPTH`] groups in flight.
fn pipelined(dir: &std::path::Path) -> Store {
    with_depth(dir, PIPELINE_DEPTH)
}

/// A clustered store whose groups go to its own `Mirror`.
fn with_mirror(store: &Store, applied: &Arc<AtomicU64>) -> Arc<Mirror> {
    let mirror = Arc::new(Mirror {
        applied: Arc::clone(applied),
        ..Mirror::default()
    });
    mirror.proposer.set(store.clone()).expect("set once");
    store.attach_replicator(Arc::clone(&mirror) as Arc<dyn Replicator>);
    mirror
}

/// A leading store whose groups its mirror applies to one follower.
struct Pair {
    leader: Store,
    follower: Store,
    mirror: Arc<Mirror>,
    /// Entries applied so far.
    applied: Arc<AtomicU64>,
    /// The leader's and the follower's directories.
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Pair {
    fn leading() -> Self {
        let dirs = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let leader = clustered(dirs.0.path());
        let follower = clustered(dirs.1.path());
        let applied = Arc::new(AtomicU64::new(0));
        let mirror = with_mirror(&leader, &applied);
        mirror.others.lock().expect("others").push(follower.clone());
        leader.lead(1).wait().expect("lead");
        Self {
            leader,
            follower,
            mirror,
            applied,
            dirs,
        }
    }
}

fn everything(store: &Store) -> Vec<RecordedEvent> {
    store
        .read(&ReadRequest::forwards(ReadSource::All, 10_000))
        .expect("read $all")
        .events
}

fn event(n: u64) -> EventData {
    EventData::json("Happened", format!("{{\"n\":{n}}}"))
}

#[test]
fn a_clustered_store_refuses_writes_until_it_leads_and_after_it_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = clustered(dir.path());
    let applied = Arc::new(AtomicU64::new(0));
    with_mirror(&store, &applied);

    let refused = store
        .append("s", ExpectedRevision::Any, vec![event(0)])
        .wait();
    assert!(
        matches!(refused, Err(Error::NotLeader { leader: None, .. })),
        "{refused:?}"
    );
    store.lead(1).wait().expect("lead");
    store
        .append("s", ExpectedRevision::Any, vec![event(1)])
        .wait()
        .expect("append as leader");

    store.follow(Some("node-3:7070".into()), None);
    let refused = store
        .append("s", ExpectedRevision::Any, vec![event(2)])
        .wait();
    match refused {
        Err(Error::NotLeader { leader, .. }) => assert_eq!(leader.as_deref(), Some("node-3:7070")),
        other => panic!("a follower appended: {other:?}"),
    }
    // Nothing of the refused requests was written.
    assert_eq!(everything(&store).len(), 1);
    assert_eq!(applied.load(Ordering::Relaxed), 1);
}

#[test]
fn followers_hold_the_leaders_events_and_records_exactly() {
    let Pair {
        leader,
        follower,
        applied,
        dirs: _dirs,
        ..
    } = Pair::leading();

    // Appends, a multi-stream append, metadata, a soft delete, a tombstone.
    for n in 0..5 {
        leader
            .append(
                format!("order-{}", n % 2),
                ExpectedRevision::Any,
                vec![event(n)],
            )
            .wait()
            .expect("append");
    }
    leader
        .append_multi(vec![
            StreamAppend::new("order-0", ExpectedRevision::Exact(2), vec![event(10)]),
            StreamAppend::new("payment-1", ExpectedRevision::NoStream, vec![event(11)]),
        ])
        .wait()
        .expect("multi append");
    leader
        .set_metadata(
            "order-1",
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(1),
                ..StreamMetadata::default()
            },
        )
        .wait()
        .expect("metadata");
    leader
        .delete("payment-1", ExpectedRevision::Any)
        .wait()
        .expect("delete");
    leader
        .tombstone("order-0", ExpectedRevision::Any)
        .wait()
        .expect("tombstone");

    let written = everything(&leader);
    assert_eq!(written, everything(&follower), "$all differs");
    assert_eq!(leader.live().head(), follower.live().head());
    assert_eq!(leader.applied_head(), follower.applied_head());
    for stream in ["order-0", "order-1", "payment-1"] {
        assert_eq!(
            leader.try_stream_info(stream).expect("leader info"),
            follower.try_stream_info(stream).expect("follower info"),
            "stream {stream} differs"
        );
    }
    assert_eq!(
        leader.replicated_state().expect("state"),
        follower.replicated_state().expect("state")
    );
    assert_eq!(
        leader.replicated_state().expect("state"),
        Some(applied.load(Ordering::Relaxed).to_be_bytes().to_vec())
    );
}

#[test]
fn leadership_moves_and_numbering_continues_from_the_applied_head() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = clustered(a_dir.path());
    let b = clustered(b_dir.path());
    let applied = Arc::new(AtomicU64::new(0));
    let a_mirror = with_mirror(&a, &applied);
    a_mirror.others.lock().expect("others").push(b.clone());
    let b_mirror = with_mirror(&b, &applied);
    b_mirror.others.lock().expect("others").push(a.clone());

    a.lead(1).wait().expect("a leads");
    for n in 0..3 {
        a.append("ledger", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .expect("a appends");
    }
    a.follow(Some("b".into()), None);
    b.lead(2).wait().expect("b leads");
    // b continues the stream a wrote, at the revision a left it: its
    // counters and catalog came from what it applied.
    let result = b
        .append(
            "ledger",
            ExpectedRevision::Exact(2),
            vec![event(3), event(4)],
        )
        .wait()
        .expect("b appends");
    assert_eq!(result.current, CurrentRevision::Revision(4));
    assert_eq!(result.positions, Some((3, 4)));
    b.follow(Some("a".into()), None);
    a.lead(3).wait().expect("a leads again");
    let result = a
        .append("ledger", ExpectedRevision::Exact(4), vec![event(5)])
        .wait()
        .expect("a appends on top of b's events");
    assert_eq!(result.positions, Some((5, 5)));
    let new_stream = a
        .append("other", ExpectedRevision::NoStream, vec![event(6)])
        .wait()
        .expect("a new stream");
    assert_eq!(new_stream.positions, Some((6, 6)));

    assert_eq!(everything(&a), everything(&b));
    assert_eq!(everything(&a).len(), 7);
    assert_eq!(a.info(), b.info());
    assert_eq!(a.info().stream_count, 2);
}

#[test]
fn a_failed_replication_answers_not_leader_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = clustered(dir.path());
    let applied = Arc::new(AtomicU64::new(0));
    let mirror = with_mirror(&store, &applied);
    store.lead(1).wait().expect("lead");
    store
        .append("s", ExpectedRevision::NoStream, vec![event(0)])
        .wait()
        .expect("first append");

    mirror.refuse.store(true, Ordering::Relaxed);
    let lost = store
        .append("s", ExpectedRevision::Exact(0), vec![event(1)])
        .wait();
    match lost {
        Err(Error::NotLeader { leader, .. }) => assert_eq!(leader.as_deref(), Some("node-2:7070")),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    // The store now refuses until it leads again, and nothing is poisoned.
    let refused = store
        .append("s", ExpectedRevision::Exact(0), vec![event(2)])
        .wait();
    assert!(
        matches!(refused, Err(Error::NotLeader { .. })),
        "{refused:?}"
    );
    assert!(store.poisoned().is_none());

    mirror.refuse.store(false, Ordering::Relaxed);
    store.lead(2).wait().expect("lead again");
    // The lost group left no trace: revision 0 is still the stream's last.
    let result = store
        .append("s", ExpectedRevision::Exact(0), vec![event(3)])
        .wait()
        .expect("append after leading again");
    assert_eq!(result.positions, Some((1, 1)));
    assert_eq!(everything(&store).len(), 2);
}

#[test]
fn a_group_out_of_order_is_refused_not_applied() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let leader = clustered(leader_dir.path());
    let follower = clustered(follower_dir.path());

    /// Keeps every group it applies to the leader, for the test to replay.
    struct Recorder {
        proposer: OnceLock<Store>,
        groups: Mutex<Vec<SealedGroup>>,
    }
    impl Replicator for Recorder {
        fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed {
            let applied = self.proposer.get().expect("proposer").apply_replicated(
                &group,
                Some(effect),
                b"state",
            );
            self.groups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(group);
            Proposed::done(applied)
        }
    }
    let recorder = Arc::new(Recorder {
        proposer: OnceLock::new(),
        groups: Mutex::new(Vec::new()),
    });
    recorder.proposer.set(leader.clone()).expect("once");
    leader.attach_replicator(Arc::clone(&recorder) as Arc<dyn Replicator>);
    leader.lead(1).wait().expect("lead");
    for n in 0..2 {
        leader
            .append("s", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .expect("append");
    }
    let groups = recorder.groups.lock().expect("groups").clone();
    assert_eq!(groups.len(), 2);

    // The second group before the first: refused, nothing applied.
    let skipped = follower.apply_replicated(&groups[1], None, b"state");
    match skipped {
        Err(Error::Poisoned(message)) => {
            assert!(message.contains("starts at position 1"), "{message}");
            assert!(message.contains("applied head is 0"), "{message}");
        }
        other => panic!("an out-of-order group was applied: {other:?}"),
    }
    assert!(everything(&follower).is_empty());
    follower
        .apply_replicated(&groups[0], None, b"state")
        .expect("first group");
    // The same group twice: refused too.
    assert!(
        follower
            .apply_replicated(&groups[0], None, b"state")
            .is_err()
    );
    follower
        .apply_replicated(&groups[1], None, b"state")
        .expect("second group");
    assert_eq!(everything(&follower), everything(&leader));

    // A group from a database that numbers column families differently.
    let mut foreign = groups[1].clone();
    foreign.cf_layout ^= 1;
    foreign.first_position = follower.applied_head();
    let refused = follower.apply_replicated(&foreign, None, b"state");
    assert!(
        matches!(&refused, Err(Error::Poisoned(message)) if message.contains("column families")),
        "{refused:?}"
    );
}

#[test]
fn a_follower_installs_a_snapshot_and_then_applies_the_groups_after_it() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let behind_dir = tempfile::tempdir().expect("tempdir");
    let backups = tempfile::tempdir().expect("tempdir");
    let leader = clustered(leader_dir.path());
    let behind = clustered(behind_dir.path());
    let applied = Arc::new(AtomicU64::new(0));
    let mirror = with_mirror(&leader, &applied);
    leader.lead(1).wait().expect("lead");

    // The follower has something of its own the snapshot must replace: a
    // stream the leader never had, as if from an old, truncated log.
    let stale = Arc::new(AtomicU64::new(0));
    let stale_mirror = with_mirror(&behind, &stale);
    behind.lead(1).wait().expect("lead");
    behind
        .append("stale-only", ExpectedRevision::Any, vec![event(99)])
        .wait()
        .expect("stale append");
    behind.follow(None, None);
    drop(stale_mirror);
    assert_eq!(stale.load(Ordering::Relaxed), 1);

    for n in 0..40 {
        leader
            .append(
                format!("order-{}", n % 3),
                ExpectedRevision::Any,
                vec![event(n)],
            )
            .wait()
            .expect("append");
    }
    leader
        .tombstone("order-2", ExpectedRevision::Any)
        .wait()
        .expect("tombstone");
    let snapshot = backups.path().join("snapshot");
    leader.backup(&snapshot).expect("backup");
    assert_eq!(
        cairn_storage::backup_replicated_state(&snapshot).expect("state in backup"),
        leader.replicated_state().expect("state")
    );

    // The leader refuses to install; the follower installs.
    assert!(leader.install_snapshot(&snapshot).is_err());
    let head = behind.install_snapshot(&snapshot).expect("install");
    assert_eq!(head, leader.applied_head());
    assert_eq!(behind.applied_head(), head);
    assert_eq!(behind.live().head(), head);
    assert_eq!(everything(&behind), everything(&leader));
    assert_eq!(
        behind.try_stream_info("stale-only").expect("info"),
        None,
        "the snapshot replaces what the follower had"
    );
    for stream in ["order-0", "order-1", "order-2"] {
        assert_eq!(
            leader.try_stream_info(stream).expect("leader info"),
            behind.try_stream_info(stream).expect("follower info"),
            "stream {stream} differs"
        );
    }
    assert_eq!(
        behind.replicated_state().expect("state"),
        leader.replicated_state().expect("state")
    );

    // Groups after the snapshot apply on top of it, at the applied head.
    mirror.others.lock().expect("others").push(behind.clone());
    leader
        .append("order-0", ExpectedRevision::Any, vec![event(100)])
        .wait()
        .expect("append after the snapshot");
    assert_eq!(everything(&behind), everything(&leader));
}

/// Records physically present in `store`'s log: a backup's verification
/// reads every one of them (hidden ones included).
fn records_on_disk(store: &Store, backups: &std::path::Path, name: &str) -> u64 {
    let dir = backups.join(name);
    store.backup(&dir).expect("backup");
    cairn_storage::verify_backup(&dir)
        .expect("verify backup")
        .records_checked
}

#[test]
fn a_scavenge_on_the_leader_removes_the_same_records_on_every_follower() {
    let backups = tempfile::tempdir().expect("tempdir");
    let Pair {
        leader,
        follower,
        mirror,
        dirs,
        ..
    } = Pair::leading();

    // 3 kept, 5 in a deleted stream, 6 in a stream capped at 2: 9 hidden.
    for (stream, count) in [("keep-1", 3u64), ("gone-1", 5), ("capped-1", 6)] {
        for n in 0..count {
            leader
                .append(stream, ExpectedRevision::Any, vec![event(n)])
                .wait()
                .expect("append");
        }
    }
    leader
        .delete("gone-1", ExpectedRevision::Any)
        .wait()
        .expect("delete");
    leader
        .set_metadata(
            "capped-1",
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(2),
                ..StreamMetadata::default()
            },
        )
        .wait()
        .expect("metadata");
    let before = everything(&leader);
    let written = records_on_disk(&follower, backups.path(), "follower-before");
    assert_eq!(
        written,
        records_on_disk(&leader, backups.path(), "leader-before")
    );

    // A follower decides nothing: it answers as it does to a write.
    follower.follow(Some("leader:7070".into()), None);
    match follower.scavenge() {
        Err(Error::NotLeader { leader, .. }) => assert_eq!(leader.as_deref(), Some("leader:7070")),
        other => panic!("a follower scavenged: {other:?}"),
    }

    let report = leader.scavenge().expect("scavenge on the leader");
    assert_eq!(report.removed, 9, "{report:?}");
    // Reads did not change (the records were hidden); the disk did, alike.
    assert_eq!(everything(&leader), before);
    assert_eq!(everything(&follower), before);
    assert_eq!(leader.info(), follower.info());
    assert_eq!(leader.info().event_count, written - 9);
    assert_eq!(
        records_on_disk(&leader, backups.path(), "leader-after"),
        written - 9
    );
    assert_eq!(
        records_on_disk(&follower, backups.path(), "follower-after"),
        written - 9,
        "the follower removed the same records"
    );
    assert_eq!(
        leader.replicated_state().expect("state"),
        follower.replicated_state().expect("state")
    );
    // Each node compacts once the removals stop (here: at once).
    assert!(follower.compact_after_removals(std::time::Duration::ZERO));
    assert!(!follower.compact_after_removals(std::time::Duration::ZERO));

    // A second scavenge finds nothing; groups go on at the same head.
    assert_eq!(leader.scavenge().expect("again").removed, 0);
    leader
        .append("keep-1", ExpectedRevision::Any, vec![event(50)])
        .wait()
        .expect("append after the scavenge");
    assert_eq!(everything(&follower), everything(&leader));

    // The counters survive a restart of the follower.
    let info = follower.info();
    mirror.others.lock().expect("others").clear();
    drop(follower);
    let reopened = clustered(dirs.1.path());
    assert_eq!(reopened.info(), info);
}

#[test]
fn a_scavenge_that_loses_leadership_stops_with_not_leader_and_nodes_stay_alike() {
    let Pair {
        leader,
        follower,
        mirror,
        applied,
        dirs: _dirs,
    } = Pair::leading();
    for n in 0..4 {
        leader
            .append("gone-1", ExpectedRevision::Any, vec![event(n)])
            .wait()
            .expect("append");
    }
    leader
        .delete("gone-1", ExpectedRevision::Any)
        .wait()
        .expect("delete");
    let entries = applied.load(Ordering::Relaxed);

    mirror.refuse.store(true, Ordering::Relaxed);
    let refused = leader.scavenge();
    assert!(
        matches!(refused, Err(Error::NotLeader { .. })),
        "{refused:?}"
    );
    assert_eq!(
        applied.load(Ordering::Relaxed),
        entries,
        "nothing replicated"
    );
    assert_eq!(leader.info(), follower.info());
    assert_eq!(leader.info().event_count, 4);
}

/// One group held by [`Held`]: the group, its view until it is applied, and
/// what its outcome is released through.
type HeldProposal = (
    SealedGroup,
    Option<GroupEffect>,
    std::sync::mpsc::Sender<Result<(), Error>>,
);

/// A replicator that holds every proposal until the test releases it, as a
/// raft whose quorum has not answered yet.
#[derive(Default)]
struct Held {
    proposer: OnceLock<Store>,
    /// Proposals in order.
    proposals: Mutex<Vec<HeldProposal>>,
    /// Signalled on every proposal.
    proposed: std::sync::Condvar,
}

impl Replicator for Held {
    fn propose(&self, group: SealedGroup, effect: GroupEffect) -> Proposed {
        let (release, released) = std::sync::mpsc::channel();
        self.proposals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((group, Some(effect), release));
        self.proposed.notify_all();
        Proposed::later(move || {
            // A dropped sender: the test ended without an outcome.
            released.recv().unwrap_or(Err(Error::NotLeader {
                leader: None,
                kurrent_leader: None,
            }))
        })
    }
}

impl Held {
    fn attached(store: &Store) -> Arc<Self> {
        let held = Arc::new(Self::default());
        held.proposer.set(store.clone()).expect("once");
        store.attach_replicator(Arc::clone(&held) as Arc<dyn Replicator>);
        held
    }

    /// Waits until `count` groups were proposed.
    fn await_proposals(&self, count: usize) -> Vec<SealedGroup> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut proposals = self.proposals.lock().expect("proposals");
        while proposals.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{} of {count} groups proposed",
                proposals.len()
            );
            proposals = self
                .proposed
                .wait_timeout(proposals, left)
                .expect("proposals")
                .0;
        }
        proposals.iter().map(|(group, ..)| group.clone()).collect()
    }

    /// Applies proposal `n` to the proposer, as its state machine would
    /// once the quorum answered, and resolves it.
    fn commit(&self, n: usize) {
        let mut proposals = self.proposals.lock().expect("proposals");
        let (group, effect, release) = &mut proposals[n];
        let applied = self.proposer.get().expect("proposer").apply_replicated(
            group,
            effect.take(),
            &(n as u64).to_be_bytes(),
        );
        release.send(applied).expect("release");
    }

    /// Resolves proposal `n` with `outcome`, applying nothing.
    fn resolve(&self, n: usize, outcome: Result<(), Error>) {
        let proposals = self.proposals.lock().expect("proposals");
        proposals[n].2.send(outcome).expect("release");
    }
}

/// A ticket's answer, once it comes (from another thread, so that the test
/// can also see that it has not come yet).
fn answer_of<T: Send + 'static>(
    ticket: cairn_storage::Ticket<T>,
) -> std::sync::mpsc::Receiver<Result<T, Error>> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || send.send(ticket.wait()));
    receive
}

/// Nothing was answered within a short while (a request whose group waits
/// behind a group in flight).
fn unanswered<T: std::fmt::Debug>(answer: &std::sync::mpsc::Receiver<Result<T, Error>>) {
    match answer.recv_timeout(std::time::Duration::from_millis(100)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("answered before the groups ahead of it: {other:?}"),
    }
}

/// The answer, waited for (a test failure when none comes).
fn answered<T>(answer: &std::sync::mpsc::Receiver<Result<T, Error>>) -> Result<T, Error> {
    match answer.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(result) => result,
        Err(error) => panic!("no answer: {error}"),
    }
}

#[test]
fn groups_are_proposed_while_earlier_ones_wait_for_their_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = pipelined(dir.path());
    let held = Held::attached(&store);
    store.lead(7).wait().expect("lead");

    let first = answer_of(store.append("s", ExpectedRevision::NoStream, vec![event(0)]));
    held.await_proposals(1);
    // Numbered against the first group, which is still in flight.
    let second = answer_of(store.append("s", ExpectedRevision::Exact(0), vec![event(1)]));
    let groups = held.await_proposals(2);
    assert_eq!(
        groups
            .iter()
            .map(|group| (group.first_position, group.events, group.leader_term))
            .collect::<Vec<_>>(),
        vec![(0, 1, 7), (1, 1, 7)]
    );
    // Refused against the in-flight groups: its answer waits for them.
    let refused = answer_of(store.append("s", ExpectedRevision::Exact(0), vec![event(2)]));
    unanswered(&first);
    unanswered(&refused);

    held.commit(0);
    assert_eq!(answered(&first).expect("first").positions, Some((0, 0)));
    unanswered(&second);
    unanswered(&refused);
    held.commit(1);
    assert_eq!(answered(&second).expect("second").positions, Some((1, 1)));
    match answered(&refused) {
        Err(Error::WrongExpectedRevision { current, .. }) => {
            assert_eq!(current, CurrentRevision::Revision(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(everything(&store).len(), 2);
    assert_eq!(
        held.await_proposals(0).len(),
        2,
        "a refused group proposes nothing"
    );
}

#[test]
fn at_most_the_in_flight_bound_of_groups_wait_for_their_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = pipelined(dir.path());
    let held = Held::attached(&store);
    store.lead(1).wait().expect("lead");
    let bound = PIPELINE_DEPTH;

    let mut answers = Vec::new();
    for n in 0..bound {
        answers.push(answer_of(store.append(
            format!("s-{n}"),
            ExpectedRevision::Any,
            vec![event(n as u64)],
        )));
        held.await_proposals(n + 1);
    }
    // One more waits in the open group until a group in flight is answered.
    answers.push(answer_of(store.append(
        "late",
        ExpectedRevision::Any,
        vec![event(99)],
    )));
    unanswered(&answers[bound]);
    assert_eq!(held.await_proposals(0).len(), bound);
    held.commit(0);
    let groups = held.await_proposals(bound + 1);
    assert_eq!(groups[bound].first_position, bound as u64);
    for n in 1..=bound {
        held.commit(n);
    }
    for (n, answer) in answers.iter().enumerate() {
        assert_eq!(
            answered(answer).expect("appended").positions,
            Some((n as u64, n as u64))
        );
    }
}

#[test]
fn a_failed_group_fails_every_group_in_flight_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = pipelined(dir.path());
    let held = Held::attached(&store);
    store.lead(1).wait().expect("lead");

    let first = answer_of(store.append("s", ExpectedRevision::NoStream, vec![event(0)]));
    held.await_proposals(1);
    let second = answer_of(store.append("s", ExpectedRevision::Exact(0), vec![event(1)]));
    held.await_proposals(2);
    // Leadership is lost with both in flight. Even a success reported for
    // the second (it cannot be in the log without the first) is answered
    // as the first's failure: its checks were made against the first.
    held.resolve(
        0,
        Err(Error::NotLeader {
            leader: Some("node-2:7070".into()),
            kurrent_leader: None,
        }),
    );
    held.resolve(1, Ok(()));
    for answer in [&first, &second] {
        match answered(answer) {
            Err(Error::NotLeader { leader, .. }) => {
                assert_eq!(leader.as_deref(), Some("node-2:7070"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        store
            .append("s", ExpectedRevision::Any, vec![event(2)])
            .wait(),
        Err(Error::NotLeader { .. })
    ));

    // Leading again (a later term), numbering starts from what was applied:
    // nothing of the lost groups.
    store.lead(3).wait().expect("lead again");
    let again = answer_of(store.append("s", ExpectedRevision::NoStream, vec![event(3)]));
    let groups = held.await_proposals(3);
    assert_eq!((groups[2].first_position, groups[2].leader_term), (0, 3));
    held.commit(2);
    assert_eq!(answered(&again).expect("appended").positions, Some((0, 0)));
    assert_eq!(everything(&store).len(), 1);
}

#[test]
fn with_one_group_in_flight_the_next_waits_for_its_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = with_depth(dir.path(), 1);
    let held = Held::attached(&store);
    store.lead(1).wait().expect("lead");

    let first = answer_of(store.append("a", ExpectedRevision::Any, vec![event(0)]));
    held.await_proposals(1);
    let second = answer_of(store.append("b", ExpectedRevision::Any, vec![event(1)]));
    unanswered(&second);
    assert_eq!(
        held.await_proposals(0).len(),
        1,
        "proposed behind the first"
    );
    held.commit(0);
    assert_eq!(answered(&first).expect("first").positions, Some((0, 0)));
    held.await_proposals(2);
    held.commit(1);
    assert_eq!(answered(&second).expect("second").positions, Some((1, 1)));
}
