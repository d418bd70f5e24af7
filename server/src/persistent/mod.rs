//! Persistent subscriptions: server-side consumer groups with ack, retry and
//! parking (`cairn.v1.PersistentSubscriptions`).
//!
//! - `definition`: what a group is and the JSON records that store it;
//! - `group`: one actor task per group, sole owner of its in-flight state;
//! - this module: [`Groups`], the registry that creates, updates, deletes and
//!   finds groups, and restores them from the store at startup;
//! - `service`: the gRPC adapter.
//!
//! Groups keep their state in system streams of the same store (see
//! `definition`), so they survive restarts and are browsable with a plain Read.
//! This module must not touch RocksDB or block the runtime: storage reads run on
//! the blocking pool, writes go through the store's committer.

mod definition;
mod group;
mod service;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cairn_storage::{EventData, ExpectedRevision, Store, StreamMetadata, StreamState};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

pub(crate) use definition::{FilterSpec, GroupDefinition, GroupSettings, Strategy};
pub(crate) use group::{ConsumerSender, GroupStatus, NackAction};
pub(crate) use service::PersistentService;

use definition::{
    GROUPS_STREAM, GroupRecord, checkpoint_stream, parked_stream, validate_group_name,
};
use group::{Command, GroupActor};

use crate::subscriptions::Feeds;

/// Commands queued per group actor (acks from consumers wait when it is full).
const COMMAND_BUFFER: usize = 1024;

/// How many groups and consumers the server takes (beyond: RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupLimits {
    /// Most groups.
    pub max_groups: usize,
    /// Most consumers connected to one group at once.
    pub max_consumers_per_group: usize,
}

/// Why a persistent-subscription call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum GroupError {
    /// No group of that name.
    #[error("persistent subscription group '{group}' does not exist")]
    NotFound {
        /// The group.
        group: String,
    },
    /// The name is taken.
    #[error(
        "persistent subscription group '{group}' already exists; delete it first or pick another name"
    )]
    Exists {
        /// The group.
        group: String,
    },
    /// Malformed request.
    #[error("{0}")]
    InvalidArgument(String),
    /// Only one replay runs at a time.
    #[error(
        "a replay of parked events of group '{group}' is in progress ({remaining} events left); try again when it is done"
    )]
    ReplayInProgress {
        /// The group.
        group: String,
        /// Replayed events not finished yet.
        remaining: u64,
    },
    /// A stored record could not be decoded.
    #[error("corrupt persistent subscription state: {0}")]
    Corrupt(String),
    /// A server limit (groups, consumers per group) is reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// A task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] cairn_storage::Error),
}

/// A running group.
struct Handle {
    definition: GroupDefinition,
    commands: mpsc::Sender<Command>,
}

/// A group's definition, live figures and parked count.
pub(crate) struct GroupReport {
    pub definition: GroupDefinition,
    pub status: GroupStatus,
    /// Read from the parked stream, not from the actor: a park that just
    /// became durable can show here a moment before `status.parked_total`
    /// counts it.
    pub parked: u64,
}

/// The registry of groups.
#[derive(Clone)]
pub(crate) struct Groups {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    feeds: Feeds,
    shutdown: watch::Receiver<bool>,
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
        limits: GroupLimits,
    ) -> Result<Self, GroupError> {
        let reading = store.clone();
        let restored = tokio::task::spawn_blocking(move || restore(&reading))
            .await
            .map_err(|error| GroupError::Internal(error.to_string()))??;
        let groups = Self {
            inner: Arc::new(Inner {
                store,
                feeds,
                shutdown,
                limits,
                groups: Mutex::new(BTreeMap::new()),
                changes: tokio::sync::Mutex::new(()),
            }),
        };
        for (definition, checkpoint) in restored {
            tracing::info!(group = %definition.group, stream = %definition.stream, ?checkpoint, "persistent subscription group restored");
            groups.start(definition, checkpoint)?;
        }
        Ok(groups)
    }

    fn start(
        &self,
        definition: GroupDefinition,
        checkpoint: Option<definition::Checkpoint>,
    ) -> Result<(), GroupError> {
        let (commands, receiver) = mpsc::channel(COMMAND_BUFFER);
        let actor = GroupActor::new(
            definition.clone(),
            checkpoint,
            self.inner.store.clone(),
            self.inner.feeds.clone(),
            self.inner.shutdown.clone(),
            receiver,
            commands.clone(),
        )?;
        let span = tracing::info_span!("group", group = %definition.group);
        self.inner.feeds.tasks().spawn(actor.run().instrument(span));
        self.lock().insert(
            definition.group.clone(),
            Handle {
                definition,
                commands,
            },
        );
        Ok(())
    }

    /// The store the groups live in.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Handle>> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn commands(&self, group: &str) -> Result<mpsc::Sender<Command>, GroupError> {
        self.lock()
            .get(group)
            .map(|handle| handle.commands.clone())
            .ok_or_else(|| GroupError::NotFound {
                group: group.to_owned(),
            })
    }

    /// The definition of a group.
    pub(crate) fn definition(&self, group: &str) -> Result<GroupDefinition, GroupError> {
        self.lock()
            .get(group)
            .map(|handle| handle.definition.clone())
            .ok_or_else(|| GroupError::NotFound {
                group: group.to_owned(),
            })
    }

    async fn record(&self, record: &GroupRecord) -> Result<(), GroupError> {
        let data = serde_json::to_vec(record).expect("a group record serialises");
        let event = EventData::json(record.event_type(), data);
        self.inner
            .store
            .append(GROUPS_STREAM, ExpectedRevision::Any, vec![event])
            .await?;
        Ok(())
    }

    fn refuse_when_stopping(&self) -> Result<(), GroupError> {
        if *self.inner.shutdown.borrow() {
            Err(GroupError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Creates and starts a group.
    pub(crate) async fn create(&self, definition: GroupDefinition) -> Result<(), GroupError> {
        definition.validate()?;
        self.refuse_when_stopping()?;
        let _change = self.inner.changes.lock().await;
        let running = {
            let groups = self.lock();
            if groups.contains_key(&definition.group) {
                return Err(GroupError::Exists {
                    group: definition.group,
                });
            }
            groups.len()
        };
        let max_groups = self.inner.limits.max_groups;
        if running >= max_groups {
            return Err(GroupError::LimitExceeded(format!(
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
        tracing::info!(group = %definition.group, stream = %definition.stream, "persistent subscription group created");
        self.start(definition, None)
    }

    /// Replaces a group's settings.
    pub(crate) async fn update(
        &self,
        group: &str,
        change: impl FnOnce(GroupSettings) -> GroupSettings,
    ) -> Result<(), GroupError> {
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
            let handle = groups.get_mut(group).ok_or_else(|| GroupError::NotFound {
                group: group.to_owned(),
            })?;
            handle.definition.settings = settings.clone();
            handle.commands.clone()
        };
        let _ = commands.send(Command::Update { settings }).await;
        Ok(())
    }

    /// Deletes a group with its checkpoint and parked events.
    pub(crate) async fn delete(&self, group: &str) -> Result<(), GroupError> {
        validate_group_name(group)?;
        self.refuse_when_stopping()?;
        let _change = self.inner.changes.lock().await;
        self.definition(group)?;
        self.record(&GroupRecord::GroupDeleted {
            group: group.to_owned(),
        })
        .await?;
        let handle = self.lock().remove(group);
        if let Some(handle) = handle {
            let status = crate::status::group_status(&GroupError::NotFound {
                group: group.to_owned(),
            });
            let _ = handle.commands.send(Command::Stop { status }).await;
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
    /// the reply. An actor that is gone (group deleted meanwhile) is NOT_FOUND.
    async fn ask<T>(
        &self,
        group: &str,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<(T, mpsc::Sender<Command>), GroupError> {
        let commands = self.commands(group)?;
        let gone = || GroupError::NotFound {
            group: group.to_owned(),
        };
        let (reply, answer) = oneshot::channel();
        commands.send(command(reply)).await.map_err(|_| gone())?;
        let answer = answer.await.map_err(|_| gone())?;
        Ok((answer, commands))
    }

    /// One group's report.
    pub(crate) async fn report(&self, group: &str) -> Result<GroupReport, GroupError> {
        let definition = self.definition(group)?;
        let (status, _) = self.ask(group, |reply| Command::Status { reply }).await?;
        Ok(GroupReport {
            parked: self.parked_count(group),
            definition,
            status,
        })
    }

    /// Every group's report, by name.
    pub(crate) async fn reports(&self) -> Result<Vec<GroupReport>, GroupError> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        let mut reports = Vec::with_capacity(names.len());
        for name in names {
            match self.report(&name).await {
                Ok(report) => reports.push(report),
                // Deleted meanwhile.
                Err(GroupError::NotFound { .. }) => {}
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
    pub(crate) async fn replay_parked(&self, group: &str, max: u64) -> Result<u64, GroupError> {
        let (replayed, _) = self
            .ask(group, |reply| Command::Replay { max, reply })
            .await?;
        replayed
    }

    /// Joins a consumer to a group. Returns its id and the group's command
    /// channel for its acks.
    pub(crate) async fn join(
        &self,
        group: &str,
        name: String,
        max_in_flight: u32,
        sender: ConsumerSender,
    ) -> Result<(u64, GroupConsumer), GroupError> {
        self.refuse_when_stopping()?;
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
        Ok((id, GroupConsumer { id, commands }))
    }
}

/// A joined consumer's line to its group.
pub(crate) struct GroupConsumer {
    id: u64,
    commands: mpsc::Sender<Command>,
}

impl GroupConsumer {
    /// Acks events; false when the group is gone.
    pub(crate) async fn ack(&self, ids: Vec<uuid::Uuid>) -> bool {
        self.commands.send(Command::Ack { ids }).await.is_ok()
    }

    /// Nacks events; false when the group is gone.
    pub(crate) async fn nack(
        &self,
        ids: Vec<uuid::Uuid>,
        action: NackAction,
        reason: String,
    ) -> bool {
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
    pub(crate) async fn leave(&self, status: Option<tonic::Status>, graceful: bool) {
        let _ = self
            .commands
            .send(Command::Leave {
                consumer: self.id,
                status,
                graceful,
            })
            .await;
    }
}

/// Folds `$sys-ps-groups` into the live definitions, with their checkpoints.
fn restore(
    store: &Store,
) -> Result<Vec<(GroupDefinition, Option<definition::Checkpoint>)>, GroupError> {
    let mut definitions: BTreeMap<String, GroupDefinition> = BTreeMap::new();
    for event in group::read_stream(store, GROUPS_STREAM)? {
        let record: GroupRecord = serde_json::from_slice(&event.data).map_err(|error| {
            GroupError::Corrupt(format!(
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
            let checkpoint = group::load_checkpoint(store, &definition.group)?;
            Ok((definition, checkpoint))
        })
        .collect()
}
