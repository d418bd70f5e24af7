//! Test-only support shared by cairn-cluster's integration tests
//! (`log_store.rs`, `network.rs`, `partition.rs`): one in-memory raft state machine, generic
//! over the test's model of its state and so over its raft type config.
//!
//! It is NOT Cairn's state machine (that is the event store). openraft needs
//! one beside a log store, so this one tracks what openraft itself asks for
//! (the applied log id, the membership, snapshots) and hands each normal
//! entry's data to a small [`Model`] that the test defines: the log store
//! tests keep a head position, the network tests the writes in order.
//! [`Served`] serves a node's `cairn.cluster.v1.Raft` service on a listener
//! until the test stops it.

use std::fmt::Debug;
use std::future::Future;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_cluster::network::RaftService;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// How long any one wait may take before a test fails as hung. A bound on a
/// hang, not a measurement: elections here take about a second.
#[allow(dead_code)]
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Waits until `raft` sees a leader other than `not`, and returns it.
#[allow(dead_code)]
pub async fn leader_seen_by<C>(raft: &openraft::Raft<C>, not: Option<u64>) -> u64
where
    C: RaftTypeConfig<NodeId = u64>,
{
    let metrics = raft
        .wait(Some(HANG_GUARD))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            format!(
                "node {} sees a leader other than {not:?}",
                raft.metrics().borrow().id
            ),
        )
        .await
        .expect("a leader within the hang guard");
    metrics.current_leader.expect("checked above")
}

/// A node's raft service, served on its listener until [`Served::stop`].
// Only the test crates with running nodes serve one.
#[allow(dead_code)]
pub struct Served {
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

#[allow(dead_code)]
impl Served {
    /// Serves `raft` on `listener`, messages bounded to `max_message_bytes`.
    pub fn start<C>(
        raft: openraft::Raft<C>,
        max_message_bytes: usize,
        listener: TcpListener,
    ) -> Self
    where
        C: RaftTypeConfig<NodeId = u64>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RaftService::new(raft, max_message_bytes).into_server();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Self { stop, server }
    }

    /// Stops the server and waits for it, at most `hang_guard`.
    pub async fn stop(self, hang_guard: Duration) {
        let _ = self.stop.send(());
        tokio::time::timeout(hang_guard, self.server)
            .await
            .expect("server stops within the hang guard")
            .expect("server task")
            .expect("server ran");
    }
}

/// Snapshot data the test state machine can fill from and read back into
/// bytes: in-memory `Cursor`s (test type configs) or a temporary file
/// (Cairn's own type config, whose snapshots are files).
pub trait SnapshotBytes: Sized + Send + 'static {
    /// Data holding `bytes`, read from the start.
    fn from_bytes(bytes: Vec<u8>) -> std::io::Result<Self>;
    /// Everything written to the data.
    fn into_bytes(self) -> impl Future<Output = std::io::Result<Vec<u8>>> + Send;
}

impl SnapshotBytes for Cursor<Vec<u8>> {
    fn from_bytes(bytes: Vec<u8>) -> std::io::Result<Self> {
        Ok(Cursor::new(bytes))
    }

    async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        Ok(self.into_inner())
    }
}

impl SnapshotBytes for tokio::fs::File {
    fn from_bytes(bytes: Vec<u8>) -> std::io::Result<Self> {
        let mut file = tempfile::tempfile()?;
        file.write_all(&bytes)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(tokio::fs::File::from_std(file))
    }

    async fn into_bytes(self) -> std::io::Result<Vec<u8>> {
        let mut file = self.into_std().await;
        file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// The part of a test state machine that differs between tests: what a
/// normal entry's data does to the state, and what each applied entry
/// answers. It is stored in snapshots, hence serde.
pub trait Model: Debug + Clone + Default + Serialize + DeserializeOwned + Send + 'static {
    /// The test's raft type config. The state machine keeps membership and
    /// snapshots for the shapes every test here uses: `u64` node ids, any
    /// node type (openraft's `BasicNode`, Cairn's `Member`), openraft's
    /// [`Entry`], snapshot data that converts to and from bytes
    /// ([`SnapshotBytes`]).
    type Config: RaftTypeConfig<NodeId = u64, Entry = Entry<Self::Config>, SnapshotData: SnapshotBytes>;

    /// Applies one normal entry's data. An error fails the apply of that
    /// entry (openraft's fail-stop), reported with the entry's log id.
    fn apply(&mut self, data: <Self::Config as RaftTypeConfig>::D) -> std::io::Result<()>;

    /// What an applied entry answers, given the state after it. Blank and
    /// membership entries answer too, with the state they left unchanged.
    fn response(&self) -> <Self::Config as RaftTypeConfig>::R;
}

/// The node type of model `M`'s raft type config.
type NodeOf<M> = <<M as Model>::Config as RaftTypeConfig>::Node;

/// A built or installed snapshot of model `M`: its meta and bytes.
type KeptSnapshot<M> = (SnapshotMeta<u64, NodeOf<M>>, Vec<u8>);

/// What the state machine holds and snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(bound = "")]
struct State<M: Model> {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, NodeOf<M>>,
    model: M,
}

#[derive(Debug, Default)]
struct Inner<M: Model> {
    state: State<M>,
    /// The last built or installed snapshot: its meta and bytes.
    current: Option<KeptSnapshot<M>>,
    /// Makes every built snapshot's id unique.
    snapshots_built: u64,
}

/// An in-memory raft state machine, for tests ONLY; clones share one state,
/// so a test can keep a clone to read what raft applied.
#[derive(Debug, Clone, Default)]
pub struct MemStateMachine<M: Model> {
    inner: Arc<Mutex<Inner<M>>>,
}

impl<M: Model> MemStateMachine<M> {
    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        self.inner.lock().expect("state machine lock")
    }

    /// A copy of the test's model as applied so far.
    // Only some of the test crates that include this module read the model.
    #[allow(dead_code)]
    pub fn model(&self) -> M {
        self.lock().state.model.clone()
    }
}

impl<M: Model> RaftSnapshotBuilder<M::Config> for MemStateMachine<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<M::Config>, StorageError<u64>> {
        let mut inner = self.lock();
        let data = postcard::to_allocvec(&inner.state)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        inner.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.state.last_applied,
            last_membership: inner.state.last_membership.clone(),
            snapshot_id: format!("snapshot-{}", inner.snapshots_built),
        };
        inner.current = Some((meta.clone(), data.clone()));
        let snapshot = SnapshotBytes::from_bytes(data)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        })
    }
}

impl<M: Model> RaftStateMachine<M::Config> for MemStateMachine<M> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, NodeOf<M>>), StorageError<u64>> {
        let inner = self.lock();
        Ok((
            inner.state.last_applied,
            inner.state.last_membership.clone(),
        ))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<<M::Config as RaftTypeConfig>::R>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<M::Config>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.lock();
        let mut replies = Vec::new();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(data) => inner
                    .state
                    .model
                    .apply(data)
                    .map_err(|error| StorageIOError::apply(entry.log_id, &error))?,
                EntryPayload::Membership(membership) => {
                    inner.state.last_membership =
                        StoredMembership::new(Some(entry.log_id), membership);
                }
            }
            replies.push(inner.state.model.response());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<<M::Config as RaftTypeConfig>::SnapshotData>, StorageError<u64>> {
        let empty = SnapshotBytes::from_bytes(Vec::new())
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        Ok(Box::new(empty))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, NodeOf<M>>,
        snapshot: Box<<M::Config as RaftTypeConfig>::SnapshotData>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot
            .into_bytes()
            .await
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let state: State<M> = postcard::from_bytes(&data)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let mut inner = self.lock();
        inner.state = state;
        inner.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<M::Config>>, StorageError<u64>> {
        let Some((meta, data)) = self.lock().current.clone() else {
            return Ok(None);
        };
        let snapshot = SnapshotBytes::from_bytes(data)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(snapshot),
        }))
    }
}
