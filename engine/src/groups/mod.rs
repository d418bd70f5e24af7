//! Consumer groups (persistent subscriptions): server-side groups with ack,
//! retry and parking.
//!
//! - `definition`: what a group is and the JSON records that store it;
//! - `machine`: the sans-I/O state machine that makes every decision (what to
//!   deliver to whom, timeouts, retries, parking, the checkpoint), tested by
//!   property tests;
//! - `actor`: one task per group that owns the machine and carries out its
//!   effects (the source feed, consumer channels, storage writes, timers);
//! - this module: [`Groups`], the registry that creates, updates, deletes and
//!   finds groups, restores them from the store at startup, and supervises the
//!   actors (a panicking actor is restarted from its durable checkpoint).
//!
//! Groups keep their state in system streams of the same store (see
//! `definition`), so they survive restarts and are browsable with a plain Read.
//! This module must not touch RocksDB or block the runtime: storage reads run on
//! the blocking pool, writes go through the store's committer.

mod actor;
mod definition;
mod machine;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_storage::{EventData, ExpectedRevision, Store, StreamMetadata, StreamState};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

pub use actor::{ConsumerMessage, ConsumerStatus, GroupStatus, NackAction};
pub use definition::{Checkpoint, FilterSpec, GroupDefinition, GroupSettings, Strategy};

use actor::{Command, GroupActor, RunEnd};
use definition::{
    GROUPS_STREAM, GroupRecord, checkpoint_stream, parked_stream, validate_group_name,
};

use crate::WriteGate;
use crate::error::{EndReason, Error};
use crate::feeds::Feeds;

/// Commands queued per group actor (acks from consumers wait when it is full).
const COMMAND_BUFFER: usize = 1024;
/// Wait before restarting a group's failed actor (and between failed restarts).
const RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// How many groups and consumers the server takes (beyond: [`Error::LimitExceeded`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// Most groups.
    pub max_groups: usize,
    /// Most consumers connected to one group at once.
    pub max_consumers_per_group: usize,
}

impl Default for GroupLimits {
    fn default() -> Self {
        Self {
            max_groups: 1024,
            max_consumers_per_group: 256,
        }
    }
}

/// A registered group.
struct Handle {
    /// Its current definition (updates land here first).
    definition: GroupDefinition,
    /// Its actor, or why it cannot run.
    state: HandleState,
}

enum HandleState {
    /// The actor's command channel. Sends fail while a supervisor restarts a
    /// failed actor (calls then get [`Error::Internal`]).
    Running(mpsc::Sender<Command>),
    /// The group cannot run as stored (its filter does not compile); every
    /// call but delete gets [`Error::GroupBroken`] with this reason.
    Broken(String),
    /// Cluster mode: this node does not lead, so the group runs on the
    /// leader; every call gets the store's `NotLeader` (naming the leader).
    Standby,
}

/// A group's definition, live figures and parked count.
pub struct GroupReport {
    /// What the group is.
    pub definition: GroupDefinition,
    /// Its live figures (zero for a group that cannot run or is restarting).
    pub status: GroupStatus,
    /// Read from the parked stream, not from the actor: a park that just
    /// became durable can show here a moment before `status.parked_total`
    /// counts it.
    pub parked: u64,
}

/// The registry of groups.
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    feeds: Feeds,
    shutdown: watch::Receiver<bool>,
    /// Admits the registry's own writes (group records) like any client write.
    writes: WriteGate,
    limits: GroupLimits,
    /// Running groups by name. Never held across an await.
    groups: Mutex<BTreeMap<String, Handle>>,
    /// Serialises changes (create/update/delete) and their records.
    changes: tokio::sync::Mutex<()>,
}

impl Groups {
    /// Restores every group from the store and starts its actor.
    pub(crate) async fn load(
        store: Store,
        feeds: Feeds,
        shutdown: watch::Receiver<bool>,
        writes: WriteGate,
        limits: GroupLimits,
    ) -> Result<Self, Error> {
        let reading = store.clone();
        let restored = tokio::task::spawn_blocking(move || restore(&reading))
            .await
            .map_err(|error| Error::Internal(error.to_string()))??;
        let groups = Self {
            inner: Arc::new(Inner {
                store,
                feeds,
                shutdown,
                writes,
                limits,
                groups: Mutex::new(BTreeMap::new()),
                changes: tokio::sync::Mutex::new(()),
            }),
        };
        // A cluster node that does not lead keeps the definitions only;
        // `lead` starts them once it does.
        let standby = groups.inner.store.write_refusal().is_some();
        for (definition, checkpoint) in restored {
            tracing::info!(group = %definition.group, stream = %crate::Escaped(&definition.stream), ?checkpoint, standby, "persistent subscription group restored");
            if standby {
                groups.lock().insert(
                    definition.group.clone(),
                    Handle {
                        definition,
                        state: HandleState::Standby,
                    },
                );
            } else {
                groups.start(definition, checkpoint)?;
            }
        }
        Ok(groups)
    }

    /// Cluster mode: this node now leads (and has applied the whole log).
    /// The registry is rebuilt from the store, which holds every group the
    /// earlier leaders created, updated or deleted, and every group starts
    /// from its durable checkpoint (at-least-once, as after a restart).
    pub(crate) async fn lead(&self) -> Result<(), Error> {
        let _change = self.inner.changes.lock().await;
        let reading = self.inner.store.clone();
        let restored = tokio::task::spawn_blocking(move || restore(&reading))
            .await
            .map_err(|error| Error::Internal(error.to_string()))??;
        let stale = std::mem::take(&mut *self.lock());
        stop_all(stale, EndReason::ShuttingDown).await;
        let count = restored.len();
        for (definition, checkpoint) in restored {
            self.start(definition, checkpoint)?;
        }
        tracing::info!(
            groups = count,
            "this node leads: persistent subscription groups started"
        );
        Ok(())
    }

    /// Cluster mode: this node stopped leading. Every running group's actor
    /// ends without writing a checkpoint (a follower cannot write; the last
    /// durable one stands) and its consumers get `NotLeader`, naming the
    /// leader, so they reconnect there.
    pub(crate) async fn follow(&self) {
        let _change = self.inner.changes.lock().await;
        let refusal = self
            .inner
            .store
            .write_refusal()
            .unwrap_or(cairn_storage::Error::NotLeader {
                leader: None,
                kurrent_leader: None,
            });
        let running = {
            let mut groups = self.lock();
            let mut running = BTreeMap::new();
            for (name, handle) in groups.iter_mut() {
                if matches!(handle.state, HandleState::Running(_)) {
                    let state = std::mem::replace(&mut handle.state, HandleState::Standby);
                    running.insert(
                        name.clone(),
                        Handle {
                            definition: handle.definition.clone(),
                            state,
                        },
                    );
                }
            }
            running
        };
        stop_all(running, EndReason::Failed(Error::Store(refusal))).await;
    }

    /// Registers a group and starts its supervised actor. A group whose
    /// stored filter no longer compiles is registered as broken: it delivers
    /// nothing (never "everything"), and says why on every call.
    fn start(
        &self,
        definition: GroupDefinition,
        checkpoint: Option<definition::Checkpoint>,
    ) -> Result<(), Error> {
        let group = definition.group.clone();
        let runnable = definition
            .source()
            .and_then(|source| definition::validate_group_source(&source))
            .map_err(|error| error.to_string())
            .and_then(|()| {
                definition
                    .filter
                    .compile()
                    .map_err(|error| format!("its filter does not compile: {error}"))
            });
        let filter = match runnable {
            Ok(filter) => filter,
            Err(reason) => {
                tracing::error!(%group, %reason, "persistent subscription group cannot run; delete and recreate it");
                self.lock().insert(
                    group,
                    Handle {
                        definition,
                        state: HandleState::Broken(reason),
                    },
                );
                return Ok(());
            }
        };
        let (commands, receiver) = mpsc::channel(COMMAND_BUFFER);
        let actor = self.actor(
            definition.clone(),
            filter.clone(),
            checkpoint,
            receiver,
            &commands,
        )?;
        self.lock().insert(
            group.clone(),
            Handle {
                definition,
                state: HandleState::Running(commands),
            },
        );
        let span = tracing::info_span!("group", %group);
        self.inner.feeds.tasks().spawn(
            self.clone()
                .supervise(group, filter, actor)
                .instrument(span),
        );
        Ok(())
    }

    fn actor(
        &self,
        definition: GroupDefinition,
        filter: cairn_storage::ReadFilter,
        checkpoint: Option<definition::Checkpoint>,
        receiver: mpsc::Receiver<Command>,
        commands: &mpsc::Sender<Command>,
    ) -> Result<GroupActor, Error> {
        GroupActor::new(
            definition,
            filter,
            checkpoint,
            self.inner.store.clone(),
            self.inner.feeds.clone(),
            self.inner.shutdown.clone(),
            receiver,
            commands.clone(),
        )
    }

    /// Runs a group's actor and restarts it from its durable checkpoint when
    /// it panics. Ends when the actor ends normally (group deleted, server
    /// stopping) or the group is gone. While an actor restarts, calls get
    /// [`Error::Internal`] and its consumers' calls end with INTERNAL: what
    /// they held is redelivered from the checkpoint (at-least-once).
    async fn supervise(self, group: String, filter: cairn_storage::ReadFilter, first: GroupActor) {
        let mut actor = first;
        loop {
            let span = tracing::info_span!("group", group = %group);
            let outcome = self
                .inner
                .feeds
                .tasks()
                .spawn(actor.run().instrument(span))
                .await;
            // A restart on request starts at once; after a failure (or a
            // failed restart) the actor waits first.
            let mut wait = match outcome {
                Ok(RunEnd::Finished) => return,
                Ok(RunEnd::Restart) => {
                    tracing::info!(%group, "persistent subscription group restarting on request");
                    false
                }
                Err(panic) => {
                    tracing::error!(%group, error = %panic, "persistent subscription group actor failed; restarting it from its checkpoint");
                    true
                }
            };
            loop {
                if *self.inner.shutdown.borrow() {
                    return;
                }
                if wait {
                    tokio::time::sleep(RESTART_DELAY).await;
                }
                wait = true;
                match self.restart(&group, filter.clone()).await {
                    Ok(Some(restarted)) => {
                        actor = restarted;
                        break;
                    }
                    // Deleted meanwhile.
                    Ok(None) => return,
                    Err(error) => {
                        tracing::error!(%group, %error, "cannot restart the group's actor yet; retrying");
                    }
                }
            }
        }
    }

    /// A new actor for a registered group from its durable checkpoint, with a
    /// new command channel in the registry. `None` when the group is gone.
    async fn restart(
        &self,
        group: &str,
        filter: cairn_storage::ReadFilter,
    ) -> Result<Option<GroupActor>, Error> {
        let store = self.inner.store.clone();
        let name = group.to_owned();
        let checkpoint = tokio::task::spawn_blocking(move || actor::load_checkpoint(&store, &name))
            .await
            .map_err(|error| Error::Internal(error.to_string()))??;
        let (commands, receiver) = mpsc::channel(COMMAND_BUFFER);
        let mut groups = self.lock();
        let Some(handle) = groups.get_mut(group) else {
            return Ok(None);
        };
        if matches!(handle.state, HandleState::Standby) {
            // This node stopped leading meanwhile: the group runs elsewhere.
            return Ok(None);
        }
        let actor = self.actor(
            handle.definition.clone(),
            filter,
            checkpoint,
            receiver,
            &commands,
        )?;
        handle.state = HandleState::Running(commands);
        tracing::info!(
            group,
            ?checkpoint,
            "persistent subscription group actor restarted"
        );
        Ok(Some(actor))
    }

    /// Restarts every group (KurrentDB's RestartSubsystem): each writes its
    /// checkpoint, ends its consumers (they reconnect; what they held is
    /// redelivered) and starts again from its checkpoint and stored
    /// settings. Groups that cannot run are left as they are. Returns how many
    /// were asked to restart.
    pub async fn restart_all(&self) -> usize {
        let running: Vec<mpsc::Sender<Command>> = self
            .lock()
            .values()
            .filter_map(|handle| match &handle.state {
                HandleState::Running(commands) => Some(commands.clone()),
                HandleState::Broken(_) | HandleState::Standby => None,
            })
            .collect();
        let mut asked = 0;
        for commands in running {
            if commands.send(Command::Restart).await.is_ok() {
                asked += 1;
            }
        }
        asked
    }

    /// Test seam: makes a group's actor panic, to exercise supervision.
    #[doc(hidden)]
    pub async fn crash_actor_for_tests(&self, group: &str) -> Result<(), Error> {
        let commands = self.commands(group)?;
        let _ = commands.send(Command::Crash).await;
        Ok(())
    }

    /// The store the groups live in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Cluster mode: the store's `NotLeader` when this node does not lead.
    /// Groups run on the leader only, and a follower's registry may lack
    /// groups created since it started, so its answer is a redirect, never
    /// "not found".
    fn refuse_unless_leading(&self) -> Result<(), Error> {
        match self.inner.store.write_refusal() {
            Some(refusal) => Err(Error::Store(refusal)),
            None => Ok(()),
        }
    }

    fn commands(&self, group: &str) -> Result<mpsc::Sender<Command>, Error> {
        self.refuse_unless_leading()?;
        match self.lock().get(group).map(|handle| &handle.state) {
            Some(HandleState::Running(commands)) => Ok(commands.clone()),
            Some(HandleState::Standby) => {
                Err(Error::Store(self.inner.store.write_refusal().unwrap_or(
                    cairn_storage::Error::NotLeader {
                        leader: None,
                        kurrent_leader: None,
                    },
                )))
            }
            Some(HandleState::Broken(reason)) => Err(Error::GroupBroken {
                group: group.to_owned(),
                reason: reason.clone(),
            }),
            None => Err(Error::GroupNotFound {
                group: group.to_owned(),
            }),
        }
    }

    /// Why a command could not reach a group's actor: the group was deleted
    /// meanwhile, or its actor failed and is being restarted.
    fn unreachable(&self, group: &str) -> Error {
        if self.lock().contains_key(group) {
            Error::Internal(format!(
                "persistent subscription group '{group}' is restarting after a failure; retry shortly"
            ))
        } else {
            Error::GroupNotFound {
                group: group.to_owned(),
            }
        }
    }

    /// The definition of a group.
    pub fn definition(&self, group: &str) -> Result<GroupDefinition, Error> {
        self.refuse_unless_leading()?;
        self.lock()
            .get(group)
            .map(|handle| handle.definition.clone())
            .ok_or_else(|| Error::GroupNotFound {
                group: group.to_owned(),
            })
    }

    async fn record(&self, record: &GroupRecord) -> Result<(), Error> {
        let data = serde_json::to_vec(record).expect("a group record serialises");
        let event = EventData::json(record.event_type(), data);
        let _permit = self.inner.writes.enter()?;
        self.inner
            .store
            .append(GROUPS_STREAM, ExpectedRevision::Any, vec![event])
            .await?;
        Ok(())
    }

    fn refuse_when_stopping(&self) -> Result<(), Error> {
        if *self.inner.shutdown.borrow() {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates and starts a group.
    pub async fn create(&self, definition: GroupDefinition) -> Result<(), Error> {
        definition.validate()?;
        self.refuse_when_stopping()?;
        let _change = self.inner.changes.lock().await;
        let running = {
            let groups = self.lock();
            if groups.contains_key(&definition.group) {
                return Err(Error::GroupExists {
                    group: definition.group,
                });
            }
            groups.len()
        };
        let max_groups = self.inner.limits.max_groups;
        if running >= max_groups {
            return Err(Error::LimitExceeded(format!(
                "the server already has {max_groups} persistent subscription groups (its max_groups); delete one first"
            )));
        }
        self.record(&GroupRecord::GroupCreated(definition.clone()))
            .await?;
        // Only the newest checkpoint matters; let the store drop the others.
        let keep_one = StreamMetadata {
            max_count: Some(1),
            ..StreamMetadata::default()
        };
        if let Err(error) = self
            .inner
            .store
            .set_metadata(
                checkpoint_stream(&definition.group),
                ExpectedRevision::Any,
                keep_one,
            )
            .await
        {
            tracing::warn!(group = %definition.group, %error, "cannot limit the checkpoint stream to one event");
        }
        tracing::info!(group = %definition.group, stream = %crate::Escaped(&definition.stream), "persistent subscription group created");
        self.start(definition, None)
    }

    /// Replaces a group's settings.
    pub async fn update(
        &self,
        group: &str,
        change: impl FnOnce(GroupSettings) -> GroupSettings,
    ) -> Result<(), Error> {
        self.refuse_when_stopping()?;
        let _change = self.inner.changes.lock().await;
        let current = self.definition(group)?;
        let settings = change(current.settings.clone());
        settings.validate()?;
        self.record(&GroupRecord::GroupUpdated {
            group: group.to_owned(),
            settings: settings.clone(),
        })
        .await?;
        let commands = {
            let mut groups = self.lock();
            let handle = groups.get_mut(group).ok_or_else(|| Error::GroupNotFound {
                group: group.to_owned(),
            })?;
            handle.definition.settings = settings.clone();
            match &handle.state {
                HandleState::Running(commands) => Some(commands.clone()),
                HandleState::Broken(_) | HandleState::Standby => None,
            }
        };
        // An actor that is restarting reads the new settings from the registry.
        if let Some(commands) = commands {
            let _ = commands.send(Command::Update { settings }).await;
        }
        Ok(())
    }

    /// Deletes a group with its checkpoint and parked events.
    pub async fn delete(&self, group: &str) -> Result<(), Error> {
        validate_group_name(group)?;
        self.refuse_when_stopping()?;
        let _change = self.inner.changes.lock().await;
        self.definition(group)?;
        self.record(&GroupRecord::GroupDeleted {
            group: group.to_owned(),
        })
        .await?;
        let handle = self.lock().remove(group);
        if let Some(Handle {
            state: HandleState::Running(commands),
            ..
        }) = handle
        {
            let reason = EndReason::GroupDeleted {
                group: group.to_owned(),
            };
            let _ = commands.send(Command::Stop { reason }).await;
        }
        for stream in [checkpoint_stream(group), parked_stream(group)] {
            match self.inner.store.delete(stream, ExpectedRevision::Any).await {
                Ok(_) | Err(cairn_storage::Error::StreamNotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        tracing::info!(group, "persistent subscription group deleted");
        Ok(())
    }

    /// Sends a group's actor a command carrying a reply channel and waits for
    /// the reply. An actor that is gone is NOT_FOUND when the group was
    /// deleted meanwhile, INTERNAL while it restarts after a failure.
    async fn ask<T>(
        &self,
        group: &str,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<(T, mpsc::Sender<Command>), Error> {
        let commands = self.commands(group)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(command(reply))
            .await
            .map_err(|_| self.unreachable(group))?;
        let answer = answer.await.map_err(|_| self.unreachable(group))?;
        Ok((answer, commands))
    }

    /// One group's report.
    pub async fn report(&self, group: &str) -> Result<GroupReport, Error> {
        let definition = self.definition(group)?;
        let (status, _) = self.ask(group, |reply| Command::Status { reply }).await?;
        Ok(GroupReport {
            parked: self.parked_count(group),
            definition,
            status,
        })
    }

    /// Every group's report, by name.
    pub async fn reports(&self) -> Result<Vec<GroupReport>, Error> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        let mut reports = Vec::with_capacity(names.len());
        for name in names {
            match self.report(&name).await {
                Ok(report) => reports.push(report),
                // Deleted meanwhile.
                Err(Error::GroupNotFound { .. }) => {}
                // Listed without live figures; its own info says why.
                Err(Error::GroupBroken { .. } | Error::Internal(_)) => {
                    if let Ok(definition) = self.definition(&name) {
                        reports.push(GroupReport {
                            parked: self.parked_count(&name),
                            definition,
                            status: GroupStatus::default(),
                        });
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(reports)
    }

    /// Parked events not replayed yet.
    fn parked_count(&self, group: &str) -> u64 {
        self.inner
            .store
            .stream_info(&parked_stream(group))
            .filter(|info| info.state == StreamState::Live)
            .and_then(|info| {
                info.last_revision
                    .map(|last| (last + 1).saturating_sub(info.first_visible_revision))
            })
            .unwrap_or(0)
    }

    /// Moves up to `max` parked events (0: as many as one call allows) back
    /// into delivery. Returns how many.
    pub async fn replay_parked(&self, group: &str, max: u64) -> Result<u64, Error> {
        let (replayed, _) = self
            .ask(group, |reply| Command::Replay { max, reply })
            .await?;
        replayed
    }

    /// Joins a consumer to a group. Returns its id and the group's command
    /// channel for its acks.
    ///
    /// `max_in_flight` 0 takes the group's limit; a larger one is capped by it.
    /// The consumer's messages arrive on the returned receiver, which has room
    /// for every in-flight event plus the join and end messages, so the group's
    /// actor never waits on a consumer.
    pub async fn join(
        &self,
        group: &str,
        name: String,
        max_in_flight: u32,
    ) -> Result<(GroupConsumer, mpsc::Receiver<ConsumerMessage>), Error> {
        self.refuse_when_stopping()?;
        let group_limit = self.definition(group)?.settings.max_in_flight_per_consumer;
        let max_in_flight = match max_in_flight {
            0 => group_limit,
            asked => asked.min(group_limit),
        };
        // Its in-flight events, `Joined` and one `End`: the actor's `End` to a
        // consumer always fits.
        let (sender, receiver) = mpsc::channel(max_in_flight as usize + 2);
        let (joined, commands) = self
            .ask(group, |reply| Command::Join {
                name,
                max_in_flight,
                max_consumers: self.inner.limits.max_consumers_per_group,
                sender,
                reply,
            })
            .await?;
        let id = joined?;
        Ok((GroupConsumer { id, commands }, receiver))
    }
}

/// A joined consumer's line to its group.
pub struct GroupConsumer {
    id: u64,
    commands: mpsc::Sender<Command>,
}

impl GroupConsumer {
    /// The consumer's id within its group.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Acks events; false when the group is gone.
    pub async fn ack(&self, ids: Vec<uuid::Uuid>) -> bool {
        self.commands.send(Command::Ack { ids }).await.is_ok()
    }

    /// Nacks events; false when the group is gone.
    pub async fn nack(&self, ids: Vec<uuid::Uuid>, action: NackAction, reason: String) -> bool {
        self.commands
            .send(Command::Nack {
                consumer: self.id,
                ids,
                action,
                reason,
            })
            .await
            .is_ok()
    }

    /// Leaves the group, ending the call with `status` if given. `graceful`:
    /// the consumer closed its side cleanly (see `Command::Leave`).
    pub async fn leave(&self, reason: Option<EndReason>, graceful: bool) {
        let _ = self
            .commands
            .send(Command::Leave {
                consumer: self.id,
                reason,
                graceful,
            })
            .await;
    }
}

/// Ends the actors of `handles`, their consumers told `reason`.
async fn stop_all(handles: BTreeMap<String, Handle>, reason: EndReason) {
    for handle in handles.into_values() {
        if let HandleState::Running(commands) = handle.state {
            let _ = commands
                .send(Command::Stop {
                    reason: reason.clone(),
                })
                .await;
        }
    }
}

/// Folds `$sys-ps-groups` into the live definitions, with their checkpoints.
fn restore(store: &Store) -> Result<Vec<(GroupDefinition, Option<definition::Checkpoint>)>, Error> {
    let mut definitions: BTreeMap<String, GroupDefinition> = BTreeMap::new();
    for event in crate::read_stream(store, GROUPS_STREAM)? {
        let record: GroupRecord = serde_json::from_slice(&event.data).map_err(|error| {
            Error::Corrupt(format!(
                "{GROUPS_STREAM} revision {}: {error}",
                event.revision
            ))
        })?;
        match record {
            GroupRecord::GroupCreated(definition) => {
                definitions.insert(definition.group.clone(), definition);
            }
            GroupRecord::GroupUpdated { group, settings } => {
                if let Some(definition) = definitions.get_mut(&group) {
                    definition.settings = settings;
                }
            }
            GroupRecord::GroupDeleted { group } => {
                definitions.remove(&group);
            }
        }
    }
    definitions
        .into_values()
        .map(|definition| {
            let checkpoint = actor::load_checkpoint(store, &definition.group)?;
            Ok((definition, checkpoint))
        })
        .collect()
}
