//! The authorization matrix over real TLS and the real client: for each role
//! and ACL case, every RPC of `cairn.v1` is allowed or denied as README's
//! "Access control" says, a denied call changes nothing, and events of a
//! stream a user may not read never reach that user through `$all`, a
//! category, a type, a subscription, a listing or a consumer group.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cairn_client::{
    AppendCondition, Client, Error, EventData, ExpectedRevision, GroupOptions, Query, QueryItem,
    ReadOptions, StreamAppend, StreamMetadata, SubscribeOptions, SubscriptionMessage,
};
use cairn_testkit::{ALICE_ONLY_ACL, SecureSetup, TestServer, USER_PASSWORD, set_acl};

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// One RPC as some user makes it.
struct Case {
    name: &'static str,
    /// The users it is allowed for (admins are always allowed).
    allowed: &'static [&'static str],
    call: for<'a> fn(&'a Client) -> Call<'a>,
}

fn event(event_type: &str) -> EventData {
    EventData::json_text(event_type.to_owned(), "{}")
}

async fn drain(client: &Client, source: &str) -> Result<Vec<String>, Error> {
    let events = client
        .read(source, ReadOptions::forwards())
        .await?
        .collect_all()
        .await?;
    Ok(events.into_iter().map(|event| event.stream).collect())
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "conditional append to private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async {
                    let query = Query::of([QueryItem::types(["Nothing"])]);
                    client
                        .append_if(
                            "private-1",
                            ExpectedRevision::Any,
                            vec![event("Secret")],
                            AppendCondition::new(query, None),
                        )
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "append to private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async {
                    client
                        .append("private-1", ExpectedRevision::Any, vec![event("Secret")])
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "append_multi to open-1 and private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async {
                    client
                        .append_multi(vec![
                            StreamAppend::new(
                                "open-1",
                                ExpectedRevision::Any,
                                vec![event("Public")],
                            ),
                            StreamAppend::new(
                                "private-1",
                                ExpectedRevision::Any,
                                vec![event("Secret")],
                            ),
                        ])
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "read private-1",
            allowed: &["alice"],
            call: |client| Box::pin(async { drain(client, "private-1").await.map(drop) }),
        },
        Case {
            name: "subscribe to private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async {
                    client
                        .subscribe("private-1", SubscribeOptions::from_start())
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "get the metadata of private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async { client.get_stream_metadata("private-1").await.map(drop) })
            },
        },
        Case {
            name: "set the metadata of private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async {
                    client
                        .set_stream_metadata(
                            "private-1",
                            ExpectedRevision::Any,
                            StreamMetadata {
                                custom_json: Some(ALICE_ONLY_ACL.into()),
                                ..StreamMetadata::default()
                            },
                        )
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "delete private-1",
            allowed: &[],
            call: |client| {
                Box::pin(async {
                    client
                        .delete("private-1", ExpectedRevision::Any)
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "tombstone private-1",
            allowed: &[],
            call: |client| {
                Box::pin(async {
                    client
                        .tombstone("private-1", ExpectedRevision::Any)
                        .await
                        .map(drop)
                })
            },
        },
        Case {
            name: "create a group",
            allowed: &["olga"],
            call: |client| {
                Box::pin(async {
                    client
                        .create_group("g-olga", "open-1", GroupOptions::default())
                        .await?;
                    client.delete_group("g-olga").await
                })
            },
        },
        Case {
            name: "delete a group",
            allowed: &["olga"],
            // A group that does not exist: the permission is checked first
            // (a denied caller learns nothing of which groups exist), and an
            // allowed one gets GROUP_NOT_FOUND without changing the fixture.
            call: |client| {
                Box::pin(async {
                    match client.delete_group("g-none").await {
                        Err(Error::GroupNotFound { .. }) => Ok(()),
                        other => other,
                    }
                })
            },
        },
        Case {
            name: "list groups",
            allowed: &["olga"],
            call: |client| Box::pin(async { client.list_groups().await.map(drop) }),
        },
        Case {
            name: "group info",
            allowed: &["olga"],
            call: |client| Box::pin(async { client.group_info("g-private").await.map(drop) }),
        },
        Case {
            name: "replay parked events",
            allowed: &["olga"],
            call: |client| {
                Box::pin(async { client.replay_parked("g-private", 10).await.map(drop) })
            },
        },
        Case {
            name: "consume a group on private-1",
            allowed: &["alice"],
            call: |client| {
                Box::pin(async { client.consume("g-private", "c", 1).await?.close().await })
            },
        },
        Case {
            name: "consume a group on $ce-private",
            allowed: &[],
            call: |client| {
                Box::pin(async { client.consume("g-index", "c", 1).await?.close().await })
            },
        },
        Case {
            name: "list users",
            allowed: &[],
            call: |client| Box::pin(async { client.list_users().await.map(drop) }),
        },
        Case {
            name: "server info",
            allowed: &["alice", "bob", "olga"],
            call: |client| Box::pin(async { client.info().await.map(drop) }),
        },
        Case {
            name: "who am I",
            allowed: &["alice", "bob", "olga"],
            call: |client| Box::pin(async { client.whoami().await.map(drop) }),
        },
    ]
}

/// What a denied call must not change: every event, every stream's
/// metadata, the groups and the users, as the admin sees them.
async fn snapshot(admin: &Client) -> String {
    let events = admin
        .read("$all", ReadOptions::forwards())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let mut lines: Vec<String> = events
        .iter()
        .map(|event| format!("{} {} {}", event.position, event.stream, event.event_type))
        .collect();
    let page = admin.list_streams("", None, 1000).await.unwrap();
    lines.extend(page.streams.iter().map(|info| format!("{info:?}")));
    let mut groups: Vec<String> = admin
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|group| group.group)
        .collect();
    groups.sort();
    lines.extend(groups);
    lines.extend(
        admin
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|user| format!("{} {:?} {}", user.user, user.roles, user.disabled)),
    );
    lines.join("\n")
}

/// A secure server with plain users `alice` and `bob` and `olga` of `ops`,
/// streams `open-1` and `private-1` (which only `alice` may use), and groups
/// on `private-1` and `$ce-private`; with the admin's client and each user's.
async fn setup() -> (TestServer, Client, Vec<(&'static str, Client)>) {
    let SecureSetup { server, admin } =
        SecureSetup::start(&[("alice", &[]), ("bob", &[]), ("olga", &["ops"])]).await;
    admin
        .append("open-1", ExpectedRevision::NoStream, vec![event("Public")])
        .await
        .unwrap();
    admin
        .append(
            "private-1",
            ExpectedRevision::NoStream,
            vec![event("Secret")],
        )
        .await
        .unwrap();
    set_acl(&admin, "private-1", ALICE_ONLY_ACL).await;
    admin
        .create_group("g-private", "private-1", GroupOptions::default())
        .await
        .unwrap();
    admin
        .create_group("g-index", "$ce-private", GroupOptions::default())
        .await
        .unwrap();
    let mut users = Vec::new();
    for user in ["alice", "bob", "olga"] {
        users.push((user, server.connect_as(user, USER_PASSWORD).await));
    }
    (server, admin, users)
}

fn is_denied(error: &Error) -> bool {
    matches!(error, Error::PermissionDenied(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_allowed_or_denied_as_documented_and_denials_change_nothing() {
    let (server, admin, users) = setup().await;

    // Every denied case first, then check nothing changed.
    let before = snapshot(&admin).await;
    for case in cases() {
        for (user, client) in &users {
            if case.allowed.contains(user) {
                continue;
            }
            match (case.call)(client).await {
                Err(error) if is_denied(&error) => {
                    let message = error.to_string();
                    assert!(
                        !message.contains("$acl") && !message.contains("$r"),
                        "{} as {user}: the denial shows the ACL: {message}",
                        case.name
                    );
                }
                other => panic!(
                    "{} as {user}: expected PERMISSION_DENIED, got {other:?}",
                    case.name
                ),
            }
        }
    }
    assert_eq!(
        snapshot(&admin).await,
        before,
        "a denied call changed something"
    );

    // Then every allowed case, and for the admin every case.
    for case in cases() {
        for (user, client) in &users {
            if case.allowed.contains(user) {
                (case.call)(client)
                    .await
                    .unwrap_or_else(|error| panic!("{} as {user}: {error}", case.name));
            }
        }
    }
    for case in cases() {
        (case.call)(&admin)
            .await
            .unwrap_or_else(|error| panic!("{} as admin: {error}", case.name));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_unreadable_streams_never_reach_a_user() {
    let (server, admin, users) = setup().await;
    let client = |name: &str| &users.iter().find(|(user, _)| *user == name).unwrap().1;

    for source in ["$all", "$ce-private", "$et-Secret"] {
        let seen = drain(client("bob"), source).await.unwrap();
        assert!(
            !seen
                .iter()
                .any(|stream| stream == "private-1" || stream.starts_with('$')),
            "bob read {source} and saw {seen:?}"
        );
        let seen = drain(client("alice"), source).await.unwrap();
        assert!(
            seen.iter().any(|stream| stream == "private-1"),
            "alice read {source}: {seen:?}"
        );
    }
    assert_eq!(
        drain(client("olga"), "$ce-private").await.unwrap(),
        Vec::<String>::new()
    );
    // A DCB query read is an index read: filtered the same way.
    let secret = Query::of([QueryItem::types(["Secret"])]);
    let by_query = |client: &Client| {
        let secret = secret.clone();
        let client = client.clone();
        async move {
            client
                .read_query(secret, ReadOptions::forwards())
                .await
                .unwrap()
                .collect_all()
                .await
                .unwrap()
                .into_iter()
                .map(|event| event.stream)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by_query(client("bob")).await, Vec::<String>::new());
    assert!(
        by_query(client("alice"))
            .await
            .contains(&"private-1".to_owned())
    );

    let listed = |page: cairn_client::StreamPage| {
        page.streams
            .into_iter()
            .map(|info| info.stream)
            .collect::<Vec<_>>()
    };
    let bob_lists = listed(client("bob").list_streams("", None, 1000).await.unwrap());
    assert_eq!(bob_lists, ["open-1"]);
    let alice_lists = listed(client("alice").list_streams("", None, 1000).await.unwrap());
    assert_eq!(alice_lists, ["open-1", "private-1"]);

    // A subscription to `$all`: history and live events, private ones never.
    let mut subscription = client("bob")
        .subscribe("$all", SubscribeOptions::from_start())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut live_appended = false;
    while !seen.contains(&"open-2".to_owned()) {
        let message = tokio::time::timeout(Duration::from_secs(20), subscription.next_message())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("the subscription goes on");
        match message {
            SubscriptionMessage::Event(event) => seen.push(event.stream),
            SubscriptionMessage::CaughtUp { .. } if !live_appended => {
                live_appended = true;
                admin
                    .append("private-1", ExpectedRevision::Any, vec![event("Secret")])
                    .await
                    .unwrap();
                admin
                    .append("open-2", ExpectedRevision::Any, vec![event("Public")])
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["open-1", "open-2"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_valid_credentials_are_unauthenticated_and_change_nothing() {
    let (server, admin, _users) = setup().await;
    let before = snapshot(&admin).await;
    let anonymous = server.client().await;
    let wrong = server.connect_as("alice", "not the password").await;
    let unknown = server.connect_as("mallory", USER_PASSWORD).await;
    let bad_token = server.connect_with_token("cairn_not-a-token").await;
    // Each wrong credential is one failed login from this address; a few
    // stay under the rate limit (engine/tests/users.rs tests the limit).
    for client in [&wrong, &unknown, &bad_token] {
        let appended = client
            .append("open-1", ExpectedRevision::Any, vec![event("Public")])
            .await;
        assert!(
            matches!(appended, Err(Error::Unauthenticated(_))),
            "{appended:?}"
        );
        assert!(client.is_serving().await.unwrap());
    }
    // No credentials at all is not a failed login.
    for client in [&anonymous] {
        let appended = client
            .append("open-1", ExpectedRevision::Any, vec![event("Public")])
            .await;
        assert!(
            matches!(appended, Err(Error::Unauthenticated(_))),
            "{appended:?}"
        );
        let read = drain(client, "$all").await;
        assert!(matches!(read, Err(Error::Unauthenticated(_))), "{read:?}");
        let subscribed = client
            .subscribe("$all", SubscribeOptions::from_start())
            .await;
        assert!(
            matches!(subscribed, Err(Error::Unauthenticated(_))),
            "subscribe"
        );
        let info = client.info().await;
        assert!(matches!(info, Err(Error::Unauthenticated(_))), "{info:?}");
        // Health needs no credentials.
        assert!(client.is_serving().await.unwrap());
    }
    assert_eq!(snapshot(&admin).await, before);

    // A disabled user is refused, a re-enabled one served again.
    let alice = server.connect_as("alice", USER_PASSWORD).await;
    alice.info().await.unwrap();
    admin.disable_user("alice").await.unwrap();
    assert!(matches!(alice.info().await, Err(Error::Unauthenticated(_))));
    admin.enable_user("alice").await.unwrap();
    alice.info().await.unwrap();
    server.stop().await;
}
