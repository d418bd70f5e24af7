//! Server reflection (grpc.reflection.v1 and v1alpha, what grpcurl and other
//! tools use) and grpc.health.v1, through their own generated clients against an
//! in-process server.

use cairn_testkit::TestServer;
use prost::Message;
use prost_types::FileDescriptorProto;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

/// One request on the bidirectional v1 reflection stream; its single response.
async fn reflect_v1(
    channel: &Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection call")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    assert!(
        responses.message().await.expect("end of stream").is_none(),
        "one response per request"
    );
    response.message_response.expect("a message_response")
}

fn decode_files(files: &[Vec<u8>]) -> Vec<FileDescriptorProto> {
    files
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).expect("a FileDescriptorProto"))
        .collect()
}

const SERVICES: [&str; 3] = [
    "cairn.v1.Streams",
    "cairn.v1.Server",
    "grpc.health.v1.Health",
];

#[tokio::test]
async fn reflection_v1_lists_services_and_serves_their_files() {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let channel = server.channel().await;

    let MessageResponse::ListServicesResponse(list) =
        reflect_v1(&channel, MessageRequest::ListServices(String::new())).await
    else {
        panic!("list_services did not answer with a service list");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    for service in SERVICES {
        assert!(
            names.contains(&service),
            "{service} is not listed: {names:?}"
        );
    }

    let MessageResponse::FileDescriptorResponse(found) = reflect_v1(
        &channel,
        MessageRequest::FileContainingSymbol("cairn.v1.Streams".into()),
    )
    .await
    else {
        panic!("file_containing_symbol(cairn.v1.Streams) failed");
    };
    let files = decode_files(&found.file_descriptor_proto);
    let cairn = files
        .iter()
        .find(|file| file.package() == "cairn.v1")
        .expect("the cairn.v1 file");
    let streams = cairn
        .service
        .iter()
        .find(|service| service.name() == "Streams")
        .expect("service Streams");
    let methods: Vec<&str> = streams.method.iter().map(|method| method.name()).collect();
    for method in [
        "Append",
        "AppendMulti",
        "Read",
        "Delete",
        "Tombstone",
        "ListStreams",
    ] {
        assert!(
            methods.contains(&method),
            "Streams lacks {method}: {methods:?}"
        );
    }
    let read = streams
        .method
        .iter()
        .find(|method| method.name() == "Read")
        .expect("Read");
    assert!(read.server_streaming(), "Read is server-streaming");
    assert!(
        cairn
            .service
            .iter()
            .any(|service| service.name() == "Server"),
        "service Server in the same file"
    );
    // The file's imports are resolvable too (the server sends dependencies along
    // or on request), so a tool can build every message type.
    for dependency in &cairn.dependency {
        let sent = files.iter().any(|file| file.name() == dependency);
        if !sent {
            let MessageResponse::FileDescriptorResponse(dependency_file) =
                reflect_v1(&channel, MessageRequest::FileByFilename(dependency.clone())).await
            else {
                panic!("file_by_filename({dependency}) failed");
            };
            assert_eq!(
                decode_files(&dependency_file.file_descriptor_proto)[0].name(),
                dependency
            );
        }
    }

    let MessageResponse::FileDescriptorResponse(message) = reflect_v1(
        &channel,
        MessageRequest::FileContainingSymbol("cairn.v1.AppendRequest".into()),
    )
    .await
    else {
        panic!("file_containing_symbol(cairn.v1.AppendRequest) failed");
    };
    assert!(
        decode_files(&message.file_descriptor_proto)
            .iter()
            .any(|file| file.package() == "cairn.v1")
    );

    // The reflection spec answers an unknown symbol with an ErrorResponse in the
    // stream; tonic-reflection ends the call with the status instead. Either way
    // the caller must learn NOT_FOUND.
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "cairn.v1.NoSuchThing".into(),
        )),
    };
    let code = match client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
    {
        Err(status) => status.code(),
        Ok(response) => match response.into_inner().message().await {
            Err(status) => status.code(),
            Ok(Some(v1::ServerReflectionResponse {
                message_response: Some(MessageResponse::ErrorResponse(error)),
                ..
            })) => tonic::Code::from_i32(error.error_code),
            Ok(other) => panic!("an unknown symbol must be an error, got {other:?}"),
        },
    };
    assert_eq!(code, tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_services() {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;

    let server = TestServer::start().await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let requests = [
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "cairn.v1.Server".into(),
            )),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("call")
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) = responses
        .message()
        .await
        .expect("first response")
        .expect("some")
        .message_response
    else {
        panic!("v1alpha list_services did not answer with a service list");
    };
    let names: Vec<&str> = list
        .service
        .iter()
        .map(|service| service.name.as_str())
        .collect();
    for service in SERVICES {
        assert!(
            names.contains(&service),
            "{service} is not listed by v1alpha: {names:?}"
        );
    }
    let Some(MessageResponse::FileDescriptorResponse(found)) = responses
        .message()
        .await
        .expect("second response")
        .expect("some")
        .message_response
    else {
        panic!("v1alpha file_containing_symbol(cairn.v1.Server) failed");
    };
    let files = decode_files(&found.file_descriptor_proto);
    assert!(
        files.iter().any(|file| file.package() == "cairn.v1"
            && file.service.iter().any(|s| s.name() == "Server")),
        "cairn.v1.Server's file: {:?}",
        files.iter().map(|file| file.name()).collect::<Vec<_>>()
    );
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "cairn.v1.Streams", "cairn.v1.Server"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?}: {status}"));
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "cairn.v1.NoSuchService".into(),
        })
        .await;
    assert_eq!(
        unknown.expect_err("unknown service").code(),
        tonic::Code::NotFound
    );

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("watch message")
        .expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);
    drop(watch);
    server.stop().await;
}
