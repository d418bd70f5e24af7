//! The `cairn.v1.Server` service: version, head, counts, uptime and limits.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::subscriptions::SubscriptionStats;

use cairn_proto::v1 as pb;
use cairn_proto::v1::server_server::Server;
use cairn_storage::{Durability, Store};
use tonic::{Request, Response, Status};

/// Answers `Server.Info`.
pub struct ServerInfoService {
    /// The store whose head and counts are reported.
    store: Store,
    /// Durability as configured (reported, not changeable at run time).
    durability: Durability,
    /// When the server started, for uptime.
    started: Instant,
    /// Subscription counters.
    subscriptions: Arc<SubscriptionStats>,
}

impl ServerInfoService {
    /// A service reporting on `store`.
    pub fn new(
        store: Store,
        durability: Durability,
        subscriptions: Arc<SubscriptionStats>,
    ) -> Self {
        Self {
            store,
            durability,
            started: Instant::now(),
            subscriptions,
        }
    }
}

#[tonic::async_trait]
impl Server for ServerInfoService {
    async fn info(&self, _request: Request<()>) -> Result<Response<pb::ServerInfo>, Status> {
        let info = self.store.info();
        let limits = self.store.limits();
        let (ring_events, ring_bytes) = self.store.live().ring_usage();
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            head_position: info.head,
            stream_count: info.stream_count,
            event_count: info.event_count,
            uptime_seconds: self.started.elapsed().as_secs(),
            max_append_bytes: limits.max_append_bytes as u64,
            max_event_bytes: limits.max_event_bytes as u64,
            max_events_per_append: limits.max_events_per_append as u64,
            max_read_page: limits.max_read_page as u64,
            active_subscriptions: self.subscriptions.active.load(Ordering::Relaxed) as u64,
            subscription_fell_behind: self.subscriptions.fell_behind.load(Ordering::Relaxed),
            live_ring_events: ring_events as u64,
            live_ring_bytes: ring_bytes as u64,
            durability: match self.durability {
                Durability::Sync => "sync".to_owned(),
                Durability::Unsynced => "unsynced".to_owned(),
            },
        }))
    }
}
