//! `cairn.v1.Cluster.Status` through the real client against an in-process
//! single node: what a node that is not clustered answers, that only admins
//! may ask (a denied caller learns nothing of the cluster), and that
//! reflection describes the service. The clustered answer is tested with
//! three real processes in `cli/tests/cluster.rs`.

use cairn_client::{ClusterMemberKind, ClusterRole, Error, ExpectedRevision};
use cairn_testkit::{SecureSetup, TestServer, USER_PASSWORD, client_event};
use tonic_reflection::pb::v1;

#[tokio::test]
async fn a_single_node_answers_that_it_is_not_clustered_at_its_head() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .append(
            "order-1",
            ExpectedRevision::NoStream,
            vec![client_event("Placed", "{}"), client_event("Paid", "{}")],
        )
        .await
        .expect("append");
    client
        .append(
            "order-2",
            ExpectedRevision::NoStream,
            vec![client_event("Placed", "{}")],
        )
        .await
        .expect("append");
    let head = client.info().await.expect("info").head_position;
    assert_eq!(head, 3);

    let status = client.cluster_status().await.expect("cluster status");
    assert!(!status.clustered);
    assert_eq!(status.role, ClusterRole::SingleNode);
    assert_eq!(status.node_id, 0);
    assert_eq!(status.term, 0);
    assert_eq!(status.leader_id, None);
    assert_eq!(status.leader_client_address, None);
    assert_eq!(status.last_log_index, None);
    assert_eq!(status.last_applied_index, None);
    assert_eq!(status.applied_position, head);
    assert_eq!(status.members.len(), 1, "{:?}", status.members);
    let itself = &status.members[0];
    assert_eq!(itself.id, status.node_id);
    assert_eq!(itself.kind, ClusterMemberKind::Voter);
    assert_eq!(itself.raft_address, None);
    assert_eq!(itself.client_address, None);
    assert_eq!((itself.matched_index, itself.lag), (None, None));
    server.stop().await;
}

#[tokio::test]
async fn only_an_admin_may_see_the_cluster_status() {
    let SecureSetup { server, admin } =
        SecureSetup::start(&[("plain", &[]), ("operator", &["ops"])]).await;

    for user in ["plain", "operator"] {
        let result = server
            .connect_as(user, USER_PASSWORD)
            .await
            .cluster_status()
            .await;
        match result {
            // The message names the operation and nothing else: no role,
            // member or position.
            Err(Error::PermissionDenied(message)) => assert!(
                message.contains("see the cluster status")
                    && !message.contains("single")
                    && !message.contains("leader"),
                "{user}: {message}"
            ),
            other => panic!("{user} was answered {other:?}"),
        }
    }
    // Without credentials the call does not reach the service.
    assert!(matches!(
        server.client().await.cluster_status().await,
        Err(Error::Unauthenticated(_))
    ));

    let status = admin.cluster_status().await.expect("an admin may");
    assert_eq!(status.role, ClusterRole::SingleNode);
    assert_eq!(
        status.applied_position,
        admin.info().await.expect("info").head_position
    );
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_cluster_service() {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut reflection =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("list_services did not answer with a service list");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    assert!(names.contains(&"cairn.v1.Cluster"), "{names:?}");
    server.stop().await;
}
