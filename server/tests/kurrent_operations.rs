//! The KurrentDB facade's `event_store.client.operations.Operations` through
//! the generated tonic client: StartScavenge/StopScavenge drive Cairn's
//! scavenge job as KurrentDB answers them (Started, InProgress while one
//! runs, Stopped, NOT_FOUND for an id that is not the running one), the run
//! is the one `cairn.v1`'s GetScavenge shows, the other methods answer
//! UNIMPLEMENTED, and on a secure server a caller without the `ops` role is
//! denied and nothing starts.

use cairn_client::{ExpectedRevision, ScavengeState};
use cairn_proto::kurrent::operations as pb;
use cairn_proto::kurrent::operations::operations_client::OperationsClient;
use cairn_proto::kurrent::operations::scavenge_resp::ScavengeResult;
use cairn_proto::kurrent::server_features::server_features_client::ServerFeaturesClient;
use cairn_proto::kurrent::shared;
use cairn_server::Listen;
use cairn_testkit::http::basic;
use cairn_testkit::{SecureSetup, TestServer, USER_PASSWORD, client_event};
use tonic::transport::Channel;

/// Events of the deleted stream: enough that a scavenge is still running
/// over the few calls the test makes right after starting it (the cairn.v1
/// stop test relies on the same volume).
const BULK: u64 = 300_000;

/// Settings that turn the facade on at a free port.
fn kurrent_on(settings: &mut cairn_server::Settings) {
    settings.kurrent_listen = Listen::At("127.0.0.1:0".parse().unwrap());
}

async fn kurrent_channel(server: &TestServer) -> Channel {
    let address = server.kurrent_address.expect("the KurrentDB facade is on");
    Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the KurrentDB facade")
}

fn start_request() -> pb::StartScavengeReq {
    pb::StartScavengeReq {
        options: Some(pb::start_scavenge_req::Options {
            thread_count: 1,
            start_from_chunk: 0,
        }),
    }
}

fn stop_request(id: &str) -> pb::StopScavengeReq {
    pb::StopScavengeReq {
        options: Some(pb::stop_scavenge_req::Options {
            scavenge_id: id.to_owned(),
        }),
    }
}

fn result_of(response: &pb::ScavengeResp) -> (String, ScavengeResult) {
    (
        response.scavenge_id.clone(),
        ScavengeResult::try_from(response.scavenge_result).expect("a known result"),
    )
}

fn with_auth<T>(message: T, authorization: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_in_progress_stop_and_not_found_answer_as_kurrentdb_does() {
    let server = TestServer::start_with(kurrent_on).await;
    let client = server.client().await;
    let mut revision = 0;
    while revision < BULK {
        let batch: Vec<_> = (revision..revision + 1000)
            .map(|n| client_event("Bulk", &format!("{{\"n\":{n}}}")))
            .collect();
        revision += 1000;
        client
            .append("bulk-1", ExpectedRevision::Any, batch)
            .await
            .unwrap();
    }
    client
        .delete("bulk-1", ExpectedRevision::Any)
        .await
        .unwrap();
    let channel = kurrent_channel(&server).await;
    let mut operations = OperationsClient::new(channel.clone());

    // No run yet: a stop names nothing.
    let none = operations
        .stop_scavenge(stop_request("current"))
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::NotFound, "{none:?}");
    assert_eq!(none.metadata().get("scavenge-id").unwrap(), "");

    let started = operations
        .start_scavenge(start_request())
        .await
        .expect("start")
        .into_inner();
    assert_eq!(
        result_of(&started),
        ("1".to_owned(), ScavengeResult::Started)
    );
    let status = client.scavenge_status().await.unwrap();
    assert_eq!((status.state, status.run), (ScavengeState::Running, 1));

    // A second start while it runs is not an error: InProgress, naming it.
    let again = operations
        .start_scavenge(start_request())
        .await
        .expect("second start")
        .into_inner();
    assert_eq!(
        result_of(&again),
        ("1".to_owned(), ScavengeResult::InProgress)
    );
    assert_eq!(client.scavenge_status().await.unwrap().run, 1, "no new run");

    // An id that is not the running one's: NOT_FOUND with KurrentDB's trailers.
    let wrong = operations
        .stop_scavenge(stop_request("not-a-run"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::NotFound, "{wrong:?}");
    assert_eq!(wrong.message(), "Scavenge id was invalid.");
    assert_eq!(
        wrong.metadata().get("exception").unwrap(),
        "scavenge-not-found"
    );
    assert_eq!(wrong.metadata().get("scavenge-id").unwrap(), "1");
    assert!(client.scavenge_status().await.unwrap().state.is_running());

    // Stopping it answers once the run has ended.
    let stopped = operations
        .stop_scavenge(stop_request(&started.scavenge_id))
        .await
        .expect("stop")
        .into_inner();
    assert_eq!(
        result_of(&stopped),
        ("1".to_owned(), ScavengeResult::Stopped)
    );
    let status = client.scavenge_status().await.unwrap();
    assert_eq!((status.state, status.run), (ScavengeState::Stopped, 1));
    let report = status.last_report.expect("a report of the stopped run");
    assert!(report.scanned < BULK, "stopped before its end: {report:?}");

    // The other methods answer UNIMPLEMENTED, naming themselves.
    let shutdown = operations.shutdown(shared::Empty {}).await.unwrap_err();
    assert_eq!(shutdown.code(), tonic::Code::Unimplemented);
    assert!(shutdown.message().contains("Shutdown"), "{shutdown:?}");
    let priority = operations
        .set_node_priority(pb::SetNodePriorityReq { priority: 1 })
        .await
        .unwrap_err();
    assert_eq!(priority.code(), tonic::Code::Unimplemented);
    assert!(
        priority.message().contains("SetNodePriority"),
        "{priority:?}"
    );

    // ServerFeatures lists exactly the two served methods of the service.
    let listed = ServerFeaturesClient::new(channel)
        .get_supported_methods(shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    let mut methods: Vec<_> = listed
        .methods
        .iter()
        .filter(|method| method.service_name == "event_store.client.operations.operations")
        .map(|method| method.method_name.as_str())
        .collect();
    methods.sort_unstable();
    assert_eq!(methods, ["startscavenge", "stopscavenge"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ops_role_a_scavenge_is_denied_and_nothing_starts() {
    let SecureSetup { server, admin } = SecureSetup::start_with(
        |settings, _| kurrent_on(settings),
        &[("plain", &[]), ("operator", &["ops"])],
    )
    .await;
    let ca = std::fs::read(&server.tls.as_ref().unwrap().files.ca).unwrap();
    let channel = cairn_testkit::tls_channel(server.kurrent_address.unwrap(), &ca, None).await;
    let mut operations = OperationsClient::new(channel);
    let plain = basic("plain", USER_PASSWORD);

    let denied = operations
        .start_scavenge(with_auth(start_request(), &plain))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.metadata().get("exception").unwrap(), "access-denied");
    let denied = operations
        .stop_scavenge(with_auth(stop_request("current"), &plain))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let anonymous = operations
        .start_scavenge(start_request())
        .await
        .unwrap_err();
    assert!(
        matches!(
            anonymous.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ),
        "{anonymous:?}"
    );
    let status = admin.scavenge_status().await.unwrap();
    assert_eq!(
        (status.state, status.run),
        (ScavengeState::Idle, 0),
        "nothing started"
    );

    // The ops role may.
    let started = operations
        .start_scavenge(with_auth(
            start_request(),
            &basic("operator", USER_PASSWORD),
        ))
        .await
        .expect("ops may scavenge")
        .into_inner();
    assert_eq!(
        result_of(&started),
        ("1".to_owned(), ScavengeResult::Started)
    );
    assert_eq!(admin.scavenge_status().await.unwrap().run, 1);
    server.stop().await;
}
