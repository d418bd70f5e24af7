//! `event_store.client.gossip.Gossip`: a single-node cluster. Clients that
//! discover (or check the node's role) get one alive Leader member at the
//! advertised host and port, with an instance id fixed for the process.

use std::time::SystemTime;

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
}

impl GossipService {
    /// Advertises `(host, port)`.
    pub(super) fn new((host, port): (String, u16)) -> Self {
        Self {
            host,
            port,
            instance: uuid::Uuid::new_v4(),
        }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _: Request<shared::Empty>) -> Result<Response<pb::ClusterInfo>, Status> {
        let member = pb::MemberInfo {
            instance_id: Some(convert::uuid_to_wire(self.instance, UuidForm::String)),
            time_stamp: convert::ticks(SystemTime::now()),
            state: pb::member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(pb::EndPoint {
                address: self.host.clone(),
                port: u32::from(self.port),
            }),
        };
        Ok(Response::new(pb::ClusterInfo {
            members: vec![member],
        }))
    }
}
