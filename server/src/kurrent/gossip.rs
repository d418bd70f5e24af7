//! `event_store.client.gossip.Gossip`: the members a KurrentDB client may
//! connect to, and which one leads.
//!
//! A single node answers one alive Leader at the advertised host and port.
//! A cluster node answers every member that has a KurrentDB address, as the
//! membership in its raft log holds it (`--cluster-peers
//! ID=RAFT/CLIENT/KURRENT` at initialisation, or `cairn cluster add
//! --kurrent`; the configured peers before this node holds a membership),
//! from its own raft metrics: the leader it knows as Leader, the others as Follower, or as
//! Unknown and not alive when this node is the leader and has not
//! replicated to them (openraft's per-follower matched log id), or when no
//! leader is known. Instance ids are fixed per member for the process
//! (derived from the node id), so a client sees the same member twice.

use std::sync::Arc;
use std::time::SystemTime;

use cairn_cluster::node::ClusterNode;
use cairn_proto::kurrent::gossip as pb;
use cairn_proto::kurrent::gossip::gossip_server::Gossip;
use cairn_proto::kurrent::shared;
use tonic::{Request, Response, Status};

use super::convert::{self, UuidForm};

/// The service: what it advertises.
pub(super) struct GossipService {
    host: String,
    port: u16,
    instance: uuid::Uuid,
    /// Cluster mode: this node's raft and the members' addresses.
    cluster: Option<Arc<ClusterNode>>,
}

impl GossipService {
    /// Advertises `(host, port)`, or the cluster's members when `cluster`
    /// is given.
    pub(super) fn new((host, port): (String, u16), cluster: Option<Arc<ClusterNode>>) -> Self {
        Self {
            host,
            port,
            instance: uuid::Uuid::new_v4(),
            cluster,
        }
    }

    /// One member at `address` (`host:port`) in `state`.
    fn member(
        instance: uuid::Uuid,
        state: pb::member_info::VNodeState,
        alive: bool,
        host: String,
        port: u16,
    ) -> pb::MemberInfo {
        pb::MemberInfo {
            instance_id: Some(convert::uuid_to_wire(instance, UuidForm::String)),
            time_stamp: convert::ticks(SystemTime::now()),
            state: state as i32,
            is_alive: alive,
            http_end_point: Some(pb::EndPoint {
                address: host,
                port: u32::from(port),
            }),
        }
    }

    /// The members as `node` sees them.
    fn cluster_members(node: &ClusterNode) -> Vec<pb::MemberInfo> {
        use pb::member_info::VNodeState;
        let members = node.members();
        let metrics = node.raft().metrics().borrow().clone();
        let leader = metrics.current_leader;
        let leading = leader == Some(node.node_id());
        members
            .iter()
            .filter_map(|(id, peer)| {
                let (host, port) = split_host_port(peer.kurrent.as_deref()?)?;
                let (state, alive) = if Some(*id) == leader {
                    (VNodeState::Leader, true)
                } else if leader.is_none() {
                    (VNodeState::Unknown, *id == node.node_id())
                } else if leading {
                    let replicated = metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(id))
                        .is_some_and(Option::is_some);
                    if replicated {
                        (VNodeState::Follower, true)
                    } else {
                        (VNodeState::Unknown, false)
                    }
                } else {
                    (VNodeState::Follower, true)
                };
                Some(Self::member(member_instance(*id), state, alive, host, port))
            })
            .collect()
    }
}

/// A member's instance id: fixed for its node id.
fn member_instance(node_id: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0x6361_6972_6e00_0000, node_id)
}

/// `host:port` (a bracketed IPv6 host too) as its parts.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _: Request<shared::Empty>) -> Result<Response<pb::ClusterInfo>, Status> {
        let members = match &self.cluster {
            Some(node) => Self::cluster_members(node),
            None => vec![Self::member(
                self.instance,
                pb::member_info::VNodeState::Leader,
                true,
                self.host.clone(),
                self.port,
            )],
        };
        Ok(Response::new(pb::ClusterInfo { members }))
    }
}
