//! The raft type configuration of Cairn's cluster mode and the data its log
//! carries (`server/CLUSTER.md`, "What the raft log holds: commit groups").
//!
//! This module owns the vocabulary every other part of the crate speaks:
//! [`TypeConfig`] fixes openraft's generic parameters once (node ids, node
//! addresses, entry and response types, snapshot data), [`GroupEntry`] is what
//! one raft log entry replicates (one commit group of the leader's committer)
//! and [`GroupApplied`] is what applying it answers. [`Member`] is a node as
//! the membership in the log knows it: every address it serves, so that any
//! node can redirect clients to any member without its own settings naming
//! it.
//!
//! Its only logic is the membership rules, pure functions of the current
//! membership: which addresses a [`Member`] may have ([`Member::check`]) and
//! what an `AddNode` or `RemoveNode` changes or why it is refused
//! ([`plan_add`], [`plan_remove`]); [`crate::node`] carries the plan out on
//! raft. The log store ([`crate::log_store`]) persists these types, the
//! network ([`crate::network`]) ships them.

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// openraft's type configuration for Cairn: node ids are `u64`, a node
    /// is known by its [`Member`] addresses, one entry carries one
    /// [`GroupEntry`] and answers one [`GroupApplied`].
    pub TypeConfig:
        D = GroupEntry,
        R = GroupApplied,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        /// A snapshot is one file: a RocksDB checkpoint of the store packed
        /// with its manifest (`crate::snapshot`), which openraft's chunked
        /// transport reads and writes as it is.
        SnapshotData = tokio::fs::File,
);

/// One commit group of the leader's committer, as one raft log entry: the
/// store's [`cairn_storage::SealedGroup`], field for field, plus who
/// proposed it.
///
/// The batch stays opaque here: only the store decodes it
/// (`Store::apply_replicated`), so the raft layer never depends on the
/// record format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEntry {
    /// The committer's sealed RocksDB write batch (`WriteBatch::data`).
    pub group: Vec<u8>,
    /// The position of the group's first event: the applied head the entry
    /// was numbered against. A mismatch at apply is a fail-stop error.
    pub first_position: u64,
    /// How many events the group adds; the head after the entry is
    /// `first_position + events`.
    pub events: u64,
    /// The next stream id after the group.
    pub next_stream_id: u64,
    /// Every stream whose record the group writes (`SealedGroup::records`).
    pub records: Vec<String>,
    /// Streams whose state or metadata the group changes
    /// (`SealedGroup::changed_streams`).
    pub changed_streams: Vec<String>,
    /// The leader's column family numbering (`SealedGroup::cf_layout`).
    pub cf_layout: u32,
    /// The term of the leadership that numbered the group
    /// (`SealedGroup::leader_term`): an entry whose log id has another term
    /// was proposed by an earlier leadership of its node and reached the
    /// log only after a new one began; every node skips it
    /// (`crate::state_machine`).
    pub leader_term: u64,
    /// Which process proposed it, so that this process's state machine can
    /// hand the proposer's in-memory view to the store instead of reading
    /// the group back (`crate::replicator`).
    pub proposal: Proposal,
}

/// Who proposed an entry: a node, one run of its process (a random
/// incarnation, so that entries replayed after a restart are never taken
/// for the new process's own), and a sequence number within that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing node's id.
    pub node: u64,
    /// Random per process start.
    pub incarnation: u64,
    /// Counts the run's proposals from 1.
    pub sequence: u64,
}

impl GroupEntry {
    /// The entry for `group`, proposed as `proposal`.
    pub fn new(group: cairn_storage::SealedGroup, proposal: Proposal) -> Self {
        Self {
            group: group.batch,
            first_position: group.first_position,
            events: group.events,
            next_stream_id: group.next_stream_id,
            records: group.records,
            changed_streams: group.changed_streams,
            cf_layout: group.cf_layout,
            leader_term: group.leader_term,
            proposal,
        }
    }

    /// The store's view of the entry (what `Store::apply_replicated` takes).
    pub fn sealed(&self) -> cairn_storage::SealedGroup {
        cairn_storage::SealedGroup {
            batch: self.group.clone(),
            first_position: self.first_position,
            events: self.events,
            next_stream_id: self.next_stream_id,
            records: self.records.clone(),
            changed_streams: self.changed_streams.clone(),
            cf_layout: self.cf_layout,
            leader_term: self.leader_term,
        }
    }
}

/// What applying one entry answers: the head position after it.
///
/// A blank or membership entry moves no position, so it answers the head
/// unchanged; so does a skipped stale group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupApplied {
    /// The next position to assign after the entry was applied.
    pub head: u64,
    /// The entry was a group numbered in another term than the one the log
    /// holds it at ([`GroupEntry::leader_term`]), and was skipped: nothing
    /// of it was written, its proposer answers `NotLeader`.
    pub skipped: bool,
}

/// The longest address a [`Member`] may have, in bytes: a DNS name (253)
/// plus a port fits.
pub const MAX_ADDRESS_BYTES: usize = 261;

/// A node as the membership in the raft log knows it: every address it
/// serves. The leader's membership entry carries it to every node, so a
/// node redirects clients to a member its own settings do not name (one
/// added later with `AddNode`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `host:port` of its node-to-node (raft) listener.
    pub raft: String,
    /// `host:port` of its client (`cairn.v1`) listener: where writes are
    /// redirected when it leads.
    pub client: String,
    /// `host:port` of its KurrentDB facade, when it serves one: what
    /// KurrentDB clients are redirected to and what gossip lists.
    pub kurrent: Option<String>,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft {}, client {}", self.raft, self.client)?;
        if let Some(kurrent) = &self.kurrent {
            write!(f, ", kurrent {kurrent}")?;
        }
        Ok(())
    }
}

impl Member {
    /// The member at these addresses.
    pub fn new(
        raft: impl Into<String>,
        client: impl Into<String>,
        kurrent: Option<String>,
    ) -> Self {
        Self {
            raft: raft.into(),
            client: client.into(),
            kurrent,
        }
    }

    /// The `NotLeader` addresses naming this member as the leader: its
    /// client and KurrentDB addresses (an empty one is unknown).
    pub fn redirect(&self) -> (Option<String>, Option<String>) {
        let client = (!self.client.is_empty()).then(|| self.client.clone());
        (client, self.kurrent.clone())
    }

    /// Refuses addresses a membership entry must not carry: every one is
    /// `HOST:PORT` (a bracketed IPv6 host too) of at most
    /// [`MAX_ADDRESS_BYTES`], made of the characters of host names and IP
    /// addresses only, so that each forms an `http://` URI and none can
    /// break the `--cluster-peers` syntax (`/`, `,`, `=`).
    pub fn check(&self) -> Result<(), MembershipError> {
        check_address("raft", &self.raft)?;
        check_address("client", &self.client)?;
        if let Some(kurrent) = &self.kurrent {
            check_address("kurrent", kurrent)?;
        }
        Ok(())
    }
}

/// Checks one address of a [`Member`] (see [`Member::check`]).
fn check_address(which: &'static str, address: &str) -> Result<(), MembershipError> {
    let invalid = |reason: String| Err(MembershipError::InvalidAddress { which, reason });
    if address.len() > MAX_ADDRESS_BYTES {
        return invalid(format!(
            "it is {} bytes long, at most {MAX_ADDRESS_BYTES} are allowed",
            address.len()
        ));
    }
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    if let Some(bad) = address.chars().find(|c| !allowed(*c)) {
        return invalid(format!(
            "{bad:?} is not allowed; give HOST:PORT (letters, digits, '.', '-', '_', and \
             brackets around an IPv6 host)"
        ));
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return invalid(format!("{address:?} is not HOST:PORT"));
    };
    // Only a bracketed (IPv6) host may contain ':'.
    let (host, bracketed) = match host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
    {
        Some(inner) => (inner, true),
        None => (host, false),
    };
    if host.is_empty() || host.contains(['[', ']']) || (!bracketed && host.contains(':')) {
        return invalid(format!("{address:?} has no valid host; give HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(()),
        _ => invalid(format!("{address:?} has no valid port (1 to 65535)")),
    }
}

/// Why a membership change was refused or did not complete. Each message
/// says what to do; none names a file or path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Node id 0 names a single node in every status answer.
    #[error("node id 0 is reserved (a single node reports itself as 0); give an id of 1 or more")]
    InvalidNodeId,
    /// An address of the member to add is malformed or too long.
    #[error("invalid {which} address: {reason}")]
    InvalidAddress {
        /// Which address (`raft`, `client` or `kurrent`).
        which: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The id is a member already, at other addresses. openraft never
    /// replaces a member's addresses in place: remove it, then add it.
    #[error(
        "node {id} is already a member at {existing}; remove it first to give it other addresses"
    )]
    AlreadyMember {
        /// The node id.
        id: u64,
        /// The addresses the membership holds for it.
        existing: Member,
    },
    /// Another member listens on the raft address.
    #[error("raft address {raft} is already node {owner}'s; every node needs its own")]
    AddressTaken {
        /// The address.
        raft: String,
        /// The member that has it.
        owner: u64,
    },
    /// The id to remove is not a member.
    #[error("node {id} is not a member of the cluster")]
    NotMember {
        /// The node id.
        id: u64,
    },
    /// Removing the only voter would leave no one to elect a leader.
    #[error("node {id} is the last voter; a cluster cannot remove its last voter")]
    LastVoter {
        /// The node id.
        id: u64,
    },
    /// This node does not lead: membership changes go to the leader.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader's client address, when known.
        client: Option<String>,
        /// The leader's KurrentDB address, when known.
        kurrent: Option<String>,
    },
    /// A membership change is under way (raft changes one at a time).
    #[error("another membership change is in progress; run the command again once it finished")]
    InProgress,
    /// The new member did not catch up with the leader's log in time. It
    /// stays a learner; adding it again resumes.
    #[error(
        "node {id} was added as a learner but did not catch up within {waited_seconds} s; check \
         that it runs (with --cluster-join) and that the leader reaches it at {raft}, then run \
         the add again to resume"
    )]
    NotCaughtUp {
        /// The node id.
        id: u64,
        /// Its raft address.
        raft: String,
        /// How long the leader waited.
        waited_seconds: u64,
    },
    /// Raft on this node stopped (the server log has the cause).
    #[error("raft on this node has stopped; see the server log")]
    Stopped,
}

/// A membership as plain data: what `AddNode` and `RemoveNode` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Every node, voters and learners, with its addresses.
    pub nodes: std::collections::BTreeMap<u64, Member>,
    /// The voters among `nodes`; the others are learners.
    pub voters: std::collections::BTreeSet<u64>,
}

impl Members {
    /// The nodes and voters of `membership`.
    pub fn of(membership: &openraft::Membership<u64, Member>) -> Self {
        Self {
            nodes: membership
                .nodes()
                .map(|(id, member)| (*id, member.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
        }
    }
}

/// What an `AddNode` does, given the current membership ([`plan_add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddPlan {
    /// It is a voter at these addresses already: nothing changes.
    Unchanged,
    /// Add it as a learner (a learner at these addresses already stays
    /// one), wait until it holds the log, then make it a voter.
    Join,
}

/// What a `RemoveNode` does, given the current membership
/// ([`plan_remove`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemovePlan {
    /// It votes: a change of the voters without it.
    Voter,
    /// It is a learner: drop it from the nodes.
    Learner,
}

/// Decides an `AddNode` of `id` at `member` against `membership`: refuses
/// id 0, a malformed address, an id that is a member at other addresses,
/// and a raft address another member has.
pub fn plan_add(
    membership: &openraft::Membership<u64, Member>,
    id: u64,
    member: &Member,
) -> Result<AddPlan, MembershipError> {
    if id == 0 {
        return Err(MembershipError::InvalidNodeId);
    }
    member.check()?;
    if let Some(existing) = membership.get_node(&id) {
        if existing != member {
            return Err(MembershipError::AlreadyMember {
                id,
                existing: existing.clone(),
            });
        }
        return Ok(if membership.voter_ids().any(|voter| voter == id) {
            AddPlan::Unchanged
        } else {
            AddPlan::Join
        });
    }
    if let Some((owner, _)) = membership
        .nodes()
        .find(|(_, other)| other.raft == member.raft)
    {
        return Err(MembershipError::AddressTaken {
            raft: member.raft.clone(),
            owner: *owner,
        });
    }
    Ok(AddPlan::Join)
}

/// Decides a `RemoveNode` of `id` against `membership`: refuses id 0, an id
/// that is no member, and the last voter. Removing the leader itself is
/// allowed: once the change commits it steps down and the others elect.
pub fn plan_remove(
    membership: &openraft::Membership<u64, Member>,
    id: u64,
) -> Result<RemovePlan, MembershipError> {
    if id == 0 {
        return Err(MembershipError::InvalidNodeId);
    }
    if membership.get_node(&id).is_none() {
        return Err(MembershipError::NotMember { id });
    }
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    if !voters.contains(&id) {
        return Ok(RemovePlan::Learner);
    }
    if voters.len() == 1 {
        return Err(MembershipError::LastVoter { id });
    }
    Ok(RemovePlan::Voter)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;

    use super::*;

    fn member(id: u64) -> Member {
        Member::new(
            format!("10.0.0.{id}:2115"),
            format!("10.0.0.{id}:7070"),
            None,
        )
    }

    /// Voters `voters`, plus learners `learners`, each at `member(id)`.
    fn membership(voters: &[u64], learners: &[u64]) -> Membership<u64, Member> {
        let nodes: BTreeMap<u64, Member> = voters
            .iter()
            .chain(learners)
            .map(|id| (*id, member(*id)))
            .collect();
        let voters: BTreeSet<u64> = voters.iter().copied().collect();
        Membership::new(vec![voters], nodes)
    }

    #[test]
    fn addresses_must_be_bounded_host_and_port() {
        for good in [
            "10.0.0.1:2115",
            "node-4.example.com:1",
            "[::1]:7070",
            "h_1:65535",
        ] {
            assert_eq!(check_address("raft", good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "10.0.0.1",
            ":2115",
            "h:0",
            "h:65536",
            "h:port",
            "h:2115/7070",
            "a=b:1",
            "h :1",
            "http://h:1",
            "::1:80",
            "[]:80",
        ] {
            assert!(
                matches!(
                    check_address("raft", bad),
                    Err(MembershipError::InvalidAddress { which: "raft", .. })
                ),
                "{bad:?} accepted"
            );
        }
        let long = format!("{}:1", "a".repeat(MAX_ADDRESS_BYTES));
        let error = check_address("client", &long).expect_err("too long");
        // A long input is measured, not echoed.
        assert!(!error.to_string().contains(&long), "{error}");
        assert!(error.to_string().contains("at most 261"), "{error}");
        let kurrent = Member {
            kurrent: Some("no port".into()),
            ..member(4)
        };
        assert!(matches!(
            kurrent.check(),
            Err(MembershipError::InvalidAddress {
                which: "kurrent",
                ..
            })
        ));
    }

    #[test]
    fn adding_joins_a_new_node_and_is_idempotent_for_the_same_one() {
        let three = membership(&[1, 2, 3], &[]);
        assert_eq!(plan_add(&three, 4, &member(4)), Ok(AddPlan::Join));
        // The same voter again: nothing to do.
        assert_eq!(plan_add(&three, 2, &member(2)), Ok(AddPlan::Unchanged));
        // A learner left by an add that did not finish: resume it.
        let learner = membership(&[1, 2, 3], &[4]);
        assert_eq!(plan_add(&learner, 4, &member(4)), Ok(AddPlan::Join));
    }

    #[test]
    fn adding_refuses_id_zero_other_addresses_and_a_taken_raft_address() {
        let three = membership(&[1, 2, 3], &[4]);
        assert_eq!(
            plan_add(&three, 0, &member(5)),
            Err(MembershipError::InvalidNodeId)
        );
        for id in [2, 4] {
            let moved = Member {
                client: "10.0.0.9:7070".into(),
                ..member(id)
            };
            assert_eq!(
                plan_add(&three, id, &moved),
                Err(MembershipError::AlreadyMember {
                    id,
                    existing: member(id)
                })
            );
        }
        let taken = Member {
            raft: member(3).raft,
            ..member(5)
        };
        assert_eq!(
            plan_add(&three, 5, &taken),
            Err(MembershipError::AddressTaken {
                raft: "10.0.0.3:2115".into(),
                owner: 3
            })
        );
        let bad = Member {
            client: "nowhere".into(),
            ..member(5)
        };
        assert!(matches!(
            plan_add(&three, 5, &bad),
            Err(MembershipError::InvalidAddress {
                which: "client",
                ..
            })
        ));
    }

    #[test]
    fn removing_refuses_id_zero_strangers_and_the_last_voter() {
        let cluster = membership(&[1, 2, 3], &[4]);
        assert_eq!(plan_remove(&cluster, 2), Ok(RemovePlan::Voter));
        assert_eq!(plan_remove(&cluster, 4), Ok(RemovePlan::Learner));
        assert_eq!(
            plan_remove(&cluster, 0),
            Err(MembershipError::InvalidNodeId)
        );
        assert_eq!(
            plan_remove(&cluster, 7),
            Err(MembershipError::NotMember { id: 7 })
        );
        let alone = membership(&[1], &[4]);
        assert_eq!(
            plan_remove(&alone, 1),
            Err(MembershipError::LastVoter { id: 1 })
        );
        assert_eq!(plan_remove(&alone, 4), Ok(RemovePlan::Learner));
    }

    #[test]
    fn a_member_shows_every_address_and_redirects_to_its_client_listener() {
        let with_kurrent = Member {
            kurrent: Some("10.0.0.4:2113".into()),
            ..member(4)
        };
        assert_eq!(
            with_kurrent.to_string(),
            "raft 10.0.0.4:2115, client 10.0.0.4:7070, kurrent 10.0.0.4:2113"
        );
        assert_eq!(
            with_kurrent.redirect(),
            (Some("10.0.0.4:7070".into()), Some("10.0.0.4:2113".into()))
        );
        assert_eq!(Member::default().redirect(), (None, None));
    }
}
