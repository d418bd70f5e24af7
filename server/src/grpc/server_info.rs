//! The `cairn.v1.Server` service: version, head, counts, uptime and limits.

use std::sync::atomic::Ordering;

use cairn_engine::Engine;
use cairn_proto::v1 as pb;
use cairn_proto::v1::server_server::Server;
use cairn_storage::Durability;
use tonic::{Request, Response, Status};

/// Answers `Server.Info`.
pub struct ServerInfoService {
    /// The engine whose store, counters and uptime are reported.
    engine: Engine,
    /// Durability as configured (reported, not changeable at run time).
    durability: Durability,
}

impl ServerInfoService {
    /// A service reporting on `engine`.
    pub fn new(engine: Engine, durability: Durability) -> Self {
        Self { engine, durability }
    }
}

#[tonic::async_trait]
impl Server for ServerInfoService {
    async fn info(&self, request: Request<()>) -> Result<Response<pb::ServerInfo>, Status> {
        // Any authenticated caller may see the server's figures.
        super::auth::principal(&request)?;
        let store = self.engine.store();
        let info = store.info();
        let limits = store.limits();
        let (ring_events, ring_bytes) = store.live().ring_usage();
        let subscriptions = self.engine.subscription_stats();
        let memory = store.memory_usage();
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            head_position: info.head,
            stream_count: info.stream_count,
            event_count: info.event_count,
            uptime_seconds: self.engine.uptime().as_secs(),
            max_append_bytes: limits.max_append_bytes as u64,
            max_event_bytes: limits.max_event_bytes as u64,
            max_events_per_append: limits.max_events_per_append as u64,
            max_read_page: limits.max_read_page as u64,
            active_subscriptions: subscriptions.active.load(Ordering::Relaxed) as u64,
            subscription_fell_behind: subscriptions.fell_behind.load(Ordering::Relaxed),
            live_ring_events: ring_events as u64,
            live_ring_bytes: ring_bytes as u64,
            buffered_bytes: self.engine.buffer_budget().in_use() as u64,
            max_buffered_bytes: self.engine.buffer_budget().capacity() as u64,
            rocksdb_block_cache_bytes: memory.block_cache_bytes,
            rocksdb_memtable_bytes: memory.memtable_bytes,
            rocksdb_table_readers_bytes: memory.table_readers_bytes,
            durability: match self.durability {
                Durability::Sync => "sync".to_owned(),
                Durability::Unsynced => "unsynced".to_owned(),
            },
        }))
    }
}
