//! `cairn.v1.Users` through the real client against an in-process server:
//! in insecure mode (the system may do everything) and over TLS with
//! authentication on (admins manage, users manage themselves, tokens and
//! disabled users, errors, restarts, the failed-login limit).

use std::time::Duration;

use cairn_client::{Error, NewToken, NewUser, UserUpdate};
use cairn_testkit::{ADMIN_PASSWORD, TestServer, eventually};

#[tokio::test]
async fn in_insecure_mode_the_caller_is_the_system_and_may_manage_users() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let me = client.whoami().await.unwrap();
    assert!(me.system);
    assert_eq!(me.user, "$system");

    let alice = client
        .create_user(
            NewUser::new("alice", "alice password")
                .full_name("Alice")
                .roles(["ops"]),
        )
        .await
        .unwrap();
    assert_eq!(
        (alice.user.as_str(), alice.full_name.as_str()),
        ("alice", "Alice")
    );
    assert_eq!(alice.roles, ["ops"]);
    assert!(!alice.disabled);
    assert_eq!(
        client.list_users().await.unwrap(),
        std::slice::from_ref(&alice)
    );
    assert_eq!(client.user_details("alice").await.unwrap(), alice);

    let updated = client
        .update_user(
            "alice",
            UserUpdate {
                roles: Some(vec!["admin".into(), "ops".into()]),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.roles, ["admin", "ops"]);
    assert_eq!(updated.full_name, "Alice", "an unset field is kept");
    assert!(matches!(
        client.disable_user("alice").await,
        Err(Error::InvalidArgument(message)) if message.contains("last enabled admin")
    ));
    client
        .create_user(NewUser::new("root", "root password").roles(["admin"]))
        .await
        .unwrap();
    client
        .update_user(
            "alice",
            UserUpdate {
                roles: Some(vec![]),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    client.disable_user("alice").await.unwrap();
    assert!(client.user_details("alice").await.unwrap().disabled);
    client.enable_user("alice").await.unwrap();
    client
        .reset_password("alice", "another password")
        .await
        .unwrap();
    let token = client
        .create_token(NewToken::for_user("alice").name("ci"))
        .await
        .unwrap();
    assert!(token.secret.starts_with("cairn_"));
    assert_eq!(
        client.list_tokens(None).await.unwrap(),
        std::slice::from_ref(&token.details)
    );
    client.revoke_token(&token.details.id).await.unwrap();
    client.delete_user("alice").await.unwrap();
    let left: Vec<String> = client
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|user| user.user)
        .collect();
    assert_eq!(left, ["root"]);
    server.stop().await;
}

#[tokio::test]
async fn errors_name_the_user_or_token() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client
        .create_user(NewUser::new("alice", "alice password"))
        .await
        .unwrap();
    assert_eq!(
        client
            .create_user(NewUser::new("alice", "alice password"))
            .await
            .unwrap_err(),
        Error::UserExists {
            user: "alice".into()
        }
    );
    assert_eq!(
        client.user_details("bob").await.unwrap_err(),
        Error::UserNotFound { user: "bob".into() }
    );
    assert_eq!(
        client.revoke_token("0123456789abcdef").await.unwrap_err(),
        Error::TokenNotFound {
            id: "0123456789abcdef".into()
        }
    );
    assert!(matches!(
        client
            .create_user(NewUser::new("bob", "bob password").roles(["root"]))
            .await,
        Err(Error::InvalidArgument(message)) if message.contains("root")
    ));
    assert!(matches!(
        client.create_user(NewUser::new("bob", "short")).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        client
            .create_user(NewUser::new("bob", "bob password").full_name("x".repeat(2000)))
            .await,
        Err(Error::LimitExceeded(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn admins_manage_users_and_users_manage_themselves() {
    let server = TestServer::start_secure().await;
    let admin = server.admin().await;
    let me = admin.whoami().await.unwrap();
    assert_eq!(
        (me.user.as_str(), me.roles.as_slice(), me.system),
        ("admin", &["admin".to_owned()][..], false)
    );

    let anonymous = server.client().await;
    assert!(matches!(
        anonymous.whoami().await,
        Err(Error::Unauthenticated(_))
    ));
    assert!(matches!(
        anonymous.list_users().await,
        Err(Error::Unauthenticated(_))
    ));
    let wrong = server.connect_as("admin", "not the password").await;
    assert!(matches!(
        wrong.whoami().await,
        Err(Error::Unauthenticated(_))
    ));

    admin
        .create_user(NewUser::new("alice", "alice password").roles(["ops"]))
        .await
        .unwrap();
    admin
        .create_user(NewUser::new("bob", "bob password"))
        .await
        .unwrap();
    let alice = server.connect_as("alice", "alice password").await;
    let me = alice.whoami().await.unwrap();
    assert_eq!(
        (me.user.as_str(), me.roles.as_slice()),
        ("alice", &["ops".to_owned()][..])
    );

    // Not an admin: nothing of another user, and nothing changes.
    let before = admin.list_users().await.unwrap();
    let denied = |result: Result<(), Error>| match result {
        Err(Error::PermissionDenied(message)) => {
            assert!(message.contains("manage users"), "{message}")
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    };
    denied(
        alice
            .create_user(NewUser::new("mallory", "mallory password").roles(["admin"]))
            .await
            .map(|_| ()),
    );
    denied(alice.delete_user("bob").await);
    denied(alice.disable_user("bob").await);
    denied(alice.enable_user("bob").await);
    denied(
        alice
            .update_user(
                "alice",
                UserUpdate {
                    roles: Some(vec!["admin".into()]),
                    ..UserUpdate::default()
                },
            )
            .await
            .map(|_| ()),
    );
    denied(alice.reset_password("bob", "alice's choice").await);
    denied(alice.list_users().await.map(|_| ()));
    denied(alice.user_details("bob").await.map(|_| ()));
    denied(
        alice
            .create_token(NewToken::for_user("bob"))
            .await
            .map(|_| ()),
    );
    denied(alice.list_tokens(Some("bob")).await.map(|_| ()));
    assert_eq!(admin.list_users().await.unwrap(), before);

    // Its own details, password and tokens.
    assert_eq!(alice.user_details("alice").await.unwrap().user, "alice");
    alice
        .change_password("alice", "alice password", "alice new password")
        .await
        .unwrap();
    assert!(
        matches!(alice.whoami().await, Err(Error::Unauthenticated(_))),
        "the old password is void"
    );
    let alice = server.connect_as("alice", "alice new password").await;
    let token = alice
        .create_token(NewToken::own().name("laptop"))
        .await
        .unwrap();
    assert_eq!(token.details.user, "alice");
    assert!(!format!("{token:?}").contains(&token.secret));
    assert_eq!(
        alice.list_tokens(None).await.unwrap(),
        std::slice::from_ref(&token.details)
    );

    let by_token = server.connect_with_token(&token.secret).await;
    assert_eq!(by_token.whoami().await.unwrap().user, "alice");
    admin.disable_user("alice").await.unwrap();
    assert!(
        matches!(by_token.whoami().await, Err(Error::Unauthenticated(_))),
        "a disabled user's token fails"
    );
    assert!(
        matches!(alice.whoami().await, Err(Error::Unauthenticated(_))),
        "a disabled user fails"
    );
    admin.enable_user("alice").await.unwrap();
    assert_eq!(by_token.whoami().await.unwrap().user, "alice");
    by_token.revoke_token(&token.details.id).await.unwrap();
    assert!(
        matches!(by_token.whoami().await, Err(Error::Unauthenticated(_))),
        "a revoked token fails"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_expired_token_fails_and_tokens_survive_a_restart() {
    let server = TestServer::start_secure().await;
    let admin = server.admin().await;
    admin
        .create_user(NewUser::new("svc", "service password"))
        .await
        .unwrap();
    let lasting = admin
        .create_token(NewToken::for_user("svc").name("lasting"))
        .await
        .unwrap();
    let short = admin
        .create_token(
            NewToken::for_user("svc")
                .name("short")
                .expires_in(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    assert!(short.details.expires.is_some());
    let client = server.connect_with_token(&short.secret).await;
    let error = eventually("the short token to expire", || async {
        match client.whoami().await {
            Err(error @ Error::Unauthenticated(_)) => Ok(error),
            other => Err(other),
        }
    })
    .await;
    assert!(error.to_string().contains("expired"), "{error}");

    let (data, _) = server.stop_keep_data().await;
    let server = TestServer::start_secure_in(data, |_, _| {}).await;
    let client = server.connect_with_token(&lasting.secret).await;
    assert_eq!(client.whoami().await.unwrap().user, "svc");
    let client = server.connect_as("svc", "service password").await;
    assert_eq!(client.whoami().await.unwrap().user, "svc");
    server.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_block_the_source() {
    let server = TestServer::start_secure().await;
    let wrong = server.connect_as("admin", "guess").await;
    for _ in 0..5 {
        match wrong.whoami().await {
            Err(Error::Unauthenticated(message)) => {
                assert!(message.contains("wrong user name or password"), "{message}");
            }
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }
    match server.admin().await.whoami().await {
        Err(Error::Unauthenticated(message)) => {
            assert!(message.contains("too many failed logins"), "{message}");
        }
        other => panic!("expected the source to be blocked, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn the_bootstrap_admin_password_is_the_configured_one() {
    let server = TestServer::start_secure().await;
    let admin = server.connect_as("admin", ADMIN_PASSWORD).await;
    let users = admin.list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(
        (users[0].user.as_str(), users[0].roles.as_slice()),
        ("admin", &["admin".to_owned()][..])
    );
    assert!(matches!(
        admin.disable_user("admin").await,
        Err(Error::InvalidArgument(message)) if message.contains("last enabled admin")
    ));
    server.stop().await;
}
