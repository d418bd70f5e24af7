//! `event_store.client.server_features.ServerFeatures`: exactly the methods
//! this facade implements, named as KurrentDB names them (lower-case method
//! and fully qualified service names), so clients pick what exists (e.g.
//! BatchAppend) and avoid what does not (persistent subscriptions).

use cairn_proto::kurrent::server_features as pb;
use cairn_proto::kurrent::server_features::server_features_server::ServerFeatures;
use cairn_proto::kurrent::shared;
use tonic::{Request, Response, Status};

/// The KurrentDB server version reported: one whose client contract this
/// facade serves (BatchAppend with a deadline duration; not the 25.x
/// multi-stream append, which it does not implement).
pub(super) const REPORTED_VERSION: &str = "24.10.0";

/// `(service, method, features)` of every implemented method.
pub(super) const IMPLEMENTED: [(&str, &str, &[&str]); 17] = [
    (
        "event_store.client.streams.streams",
        "read",
        &["position", "events"],
    ),
    ("event_store.client.streams.streams", "append", &[]),
    (
        "event_store.client.streams.streams",
        "batchappend",
        &["deadline_duration"],
    ),
    ("event_store.client.streams.streams", "delete", &[]),
    ("event_store.client.streams.streams", "tombstone", &[]),
    ("event_store.client.gossip.gossip", "read", &[]),
    (
        "event_store.client.server_features.serverfeatures",
        "getsupportedmethods",
        &[],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "create",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "update",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "delete",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "read",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "getinfo",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "replayparked",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "list",
        &["stream", "all"],
    ),
    (
        "event_store.client.persistent_subscriptions.persistentsubscriptions",
        "restartsubsystem",
        &[],
    ),
    (
        "event_store.client.operations.operations",
        "startscavenge",
        &[],
    ),
    (
        "event_store.client.operations.operations",
        "stopscavenge",
        &[],
    ),
];

/// The service.
pub(super) struct FeaturesService;

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _: Request<shared::Empty>,
    ) -> Result<Response<pb::SupportedMethods>, Status> {
        let methods = IMPLEMENTED
            .iter()
            .map(|(service, method, features)| pb::SupportedMethod {
                method_name: (*method).to_owned(),
                service_name: (*service).to_owned(),
                features: features
                    .iter()
                    .map(|feature| (*feature).to_owned())
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::SupportedMethods {
            methods,
            event_store_server_version: REPORTED_VERSION.to_owned(),
        }))
    }
}
