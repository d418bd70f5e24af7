//! Users, passwords and tokens through the engine's API (no wire protocol),
//! over a real store in a temporary directory: bootstrap, logins, changes,
//! tokens, restarts, the failed-login limit, the last admin, limits, and
//! refusals that change nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_engine::security::users::{
    NewToken, NewUser, TOKEN_PREFIX, TOKENS_STREAM, USERS_STREAM, UserLimits, UserUpdate, Users,
};
use cairn_engine::{Credentials, Engine, EngineOptions, Error, Principal, Role, SecurityOptions};
use cairn_storage::{ReadRequest, ReadSource, Store, StoreOptions};
use cairn_testkit::eventually;

const ADMIN_PASSWORD: &str = "first admin password";

fn secure(
    initial_admin_password: Option<&str>,
    bootstrap_file: Option<PathBuf>,
) -> SecurityOptions {
    SecurityOptions {
        enabled: true,
        initial_admin_password: initial_admin_password.map(str::to_owned),
        bootstrap_file,
        ..SecurityOptions::default()
    }
}

async fn engine_with(dir: &Path, security: SecurityOptions) -> Engine {
    let store = Store::open(dir, StoreOptions::default()).expect("open store");
    Engine::start(
        store,
        EngineOptions {
            security,
            ..EngineOptions::default()
        },
    )
    .await
    .expect("start engine")
}

/// Closes the engine and drops it, so its store can be opened again.
async fn stop(engine: Engine) {
    engine.close().await;
}

/// A secure engine whose `admin` has [`ADMIN_PASSWORD`].
async fn secure_engine(dir: &Path) -> Engine {
    engine_with(dir, secure(Some(ADMIN_PASSWORD), None)).await
}

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

fn basic(user: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Basic {
        user: user.into(),
        password: password.into(),
    })
}

fn bearer(token: &str) -> Option<Credentials> {
    Some(Credentials::Bearer(token.into()))
}

/// Logs in from a source of its own (so the failed-login limit of one test
/// step never meets another's).
async fn login(
    engine: &Engine,
    credentials: Option<Credentials>,
    source: &str,
) -> cairn_engine::Result<Principal> {
    engine
        .security()
        .authenticate(credentials, ip(source))
        .await
}

async fn admin(engine: &Engine) -> Principal {
    login(engine, basic("admin", ADMIN_PASSWORD), "127.0.0.1")
        .await
        .expect("admin logs in")
}

fn new_user(name: &str, password: &str, roles: &[Role]) -> NewUser {
    NewUser {
        name: name.into(),
        full_name: format!("{name} example"),
        password: password.into(),
        roles: roles.to_vec(),
    }
}

fn unauthenticated(result: cairn_engine::Result<Principal>) -> String {
    match result {
        Err(Error::Unauthenticated(message)) => message,
        other => panic!("expected Unauthenticated, got {other:?}"),
    }
}

fn denied<T: std::fmt::Debug>(result: cairn_engine::Result<T>) {
    match result {
        Err(Error::PermissionDenied {
            operation,
            stream: None,
        }) => {
            assert_eq!(operation, "manage users");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}

/// The number of records in a system stream.
fn records(store: &Store, stream: &str) -> usize {
    cairn_testkit::try_read_all(
        store,
        ReadRequest::forwards(ReadSource::Stream(stream.into()), 1000),
    )
    .map(|events| events.len())
    .unwrap_or(0)
}

#[tokio::test]
async fn the_first_secure_start_creates_admin_with_the_configured_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unused-admin-password");
    let engine = engine_with(dir.path(), secure(Some(ADMIN_PASSWORD), Some(file.clone()))).await;
    let admin = admin(&engine).await;
    assert_eq!(admin.name(), "admin");
    assert!(admin.is_admin());
    assert!(
        !file.exists(),
        "no password file when the password is configured"
    );
    let users = engine.security().users().list_users(&admin).unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].roles, [Role::Admin]);
    unauthenticated(login(&engine, basic("admin", "wrong password"), "127.0.0.2").await);
    unauthenticated(login(&engine, None, "127.0.0.2").await);
    stop(engine).await;
}

#[tokio::test]
async fn the_first_secure_start_without_a_password_writes_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("secrets").join("admin-password");
    let engine = engine_with(&data, secure(None, Some(file.clone()))).await;
    let text = std::fs::read_to_string(&file).expect("the bootstrap file is written");
    let password = text.trim_end();
    assert!(password.len() >= 24, "a long random password");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let admin = login(&engine, basic("admin", password), "127.0.0.1")
        .await
        .expect("the written password works");
    assert!(admin.is_admin());
    stop(engine).await;

    // Users exist now: a restart creates nothing and writes no file.
    std::fs::remove_file(&file).unwrap();
    let engine = engine_with(&data, secure(None, Some(file.clone()))).await;
    assert!(!file.exists());
    login(&engine, basic("admin", password), "127.0.0.1")
        .await
        .expect("the password survives the restart");
    stop(engine).await;

    // Another fresh directory gets another password.
    let other = engine_with(&dir.path().join("other"), secure(None, Some(file.clone()))).await;
    let second = std::fs::read_to_string(&file).unwrap();
    assert_ne!(second.trim_end(), password);
    stop(other).await;
}

#[tokio::test]
async fn an_insecure_start_creates_no_one_but_the_system_may_manage_users() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with(dir.path(), SecurityOptions::default()).await;
    let users = engine.security().users();
    let system = Principal::system();
    assert!(users.list_users(&system).unwrap().is_empty());
    users
        .create_user(&system, new_user("alice", "alice password", &[]))
        .await
        .unwrap();
    assert_eq!(users.list_users(&system).unwrap().len(), 1);
    stop(engine).await;

    // Switching to secure mode keeps alice and still bootstraps an admin.
    let engine = secure_engine(dir.path()).await;
    let users = engine.security().users();
    let alice = users
        .authenticate(
            Credentials::Basic {
                user: "alice".into(),
                password: "alice password".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(alice.name(), "alice");
    stop(engine).await;
}

#[tokio::test]
async fn users_are_created_disabled_enabled_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    let details = users
        .create_user(
            &admin,
            new_user("alice", "alice password", &[Role::Ops, Role::Ops]),
        )
        .await
        .unwrap();
    assert_eq!(details.roles, [Role::Ops]);
    assert_eq!(details.full_name, "alice example");
    assert!(!details.disabled);
    assert!(matches!(
        users.create_user(&admin, new_user("alice", "other password", &[])).await,
        Err(Error::UserExists { user }) if user == "alice"
    ));

    let alice = login(&engine, basic("alice", "alice password"), "10.0.1.1")
        .await
        .unwrap();
    assert_eq!(alice.roles(), [Role::Ops]);
    assert!(!alice.is_admin());

    users.disable_user(&admin, "alice").await.unwrap();
    assert!(users.user_details(&admin, "alice").unwrap().disabled);
    let message =
        unauthenticated(login(&engine, basic("alice", "alice password"), "10.0.1.2").await);
    assert!(message.contains("disabled"), "{message}");
    users.disable_user(&admin, "alice").await.unwrap();

    users.enable_user(&admin, "alice").await.unwrap();
    login(&engine, basic("alice", "alice password"), "10.0.1.3")
        .await
        .unwrap();

    let updated = users
        .update_user(
            &admin,
            "alice",
            UserUpdate {
                full_name: Some("Alice A.".into()),
                roles: Some(vec![]),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.full_name.as_str(), updated.roles.len()),
        ("Alice A.", 0)
    );
    let alice = login(&engine, basic("alice", "alice password"), "10.0.1.3")
        .await
        .unwrap();
    assert!(
        alice.roles().is_empty(),
        "roles are the user's at login time"
    );

    users.delete_user(&admin, "alice").await.unwrap();
    unauthenticated(login(&engine, basic("alice", "alice password"), "10.0.1.4").await);
    assert!(matches!(
        users.user_details(&admin, "alice"),
        Err(Error::UserNotFound { user }) if user == "alice"
    ));
    assert!(matches!(
        users.delete_user(&admin, "alice").await,
        Err(Error::UserNotFound { .. })
    ));
    stop(engine).await;
}

#[tokio::test]
async fn a_new_password_voids_the_old_one_even_when_it_was_cached() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    users
        .create_user(&admin, new_user("alice", "password one", &[]))
        .await
        .unwrap();
    // Twice: the second login is served by the login cache.
    let alice = login(&engine, basic("alice", "password one"), "10.0.2.1")
        .await
        .unwrap();
    login(&engine, basic("alice", "password one"), "10.0.2.1")
        .await
        .unwrap();

    assert!(matches!(
        users
            .change_password(&alice, "alice", "not the password", "password two")
            .await,
        Err(Error::InvalidArgument(_))
    ));
    login(&engine, basic("alice", "password one"), "10.0.2.1")
        .await
        .expect("a failed change changes nothing");
    assert!(matches!(
        users
            .change_password(&alice, "alice", "password one", "short")
            .await,
        Err(Error::InvalidArgument(_))
    ));

    users
        .change_password(&alice, "alice", "password one", "password two")
        .await
        .unwrap();
    unauthenticated(login(&engine, basic("alice", "password one"), "10.0.2.2").await);
    login(&engine, basic("alice", "password two"), "10.0.2.3")
        .await
        .unwrap();

    // Another user cannot change it, even knowing it; an admin resets it.
    users
        .create_user(&admin, new_user("bob", "bob password", &[]))
        .await
        .unwrap();
    let bob = login(&engine, basic("bob", "bob password"), "10.0.2.4")
        .await
        .unwrap();
    assert!(matches!(
        users
            .change_password(&bob, "alice", "password two", "bob's choice")
            .await,
        Err(Error::PermissionDenied { .. })
    ));
    denied(users.reset_password(&bob, "alice", "bob's choice").await);
    users
        .reset_password(&admin, "alice", "password three")
        .await
        .unwrap();
    unauthenticated(login(&engine, basic("alice", "password two"), "10.0.2.5").await);
    login(&engine, basic("alice", "password three"), "10.0.2.6")
        .await
        .unwrap();
    stop(engine).await;
}

#[tokio::test]
async fn tokens_authenticate_as_their_user_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    users
        .create_user(&admin, new_user("alice", "alice password", &[]))
        .await
        .unwrap();
    let alice = login(&engine, basic("alice", "alice password"), "10.0.3.1")
        .await
        .unwrap();
    let issued = users
        .create_token(
            &alice,
            NewToken {
                name: "billing service".into(),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    assert!(issued.token.starts_with(TOKEN_PREFIX));
    assert!(
        !format!("{issued:?}").contains(&issued.token),
        "Debug hides the secret"
    );
    assert_eq!(issued.details.user, "alice");
    assert_eq!(issued.details.expires, None);

    let principal = login(&engine, bearer(&issued.token), "10.0.3.2")
        .await
        .unwrap();
    assert_eq!(principal.name(), "alice");
    assert!(principal.roles().is_empty());

    // Roles come from the user at the time of use.
    users
        .update_user(
            &admin,
            "alice",
            UserUpdate {
                roles: Some(vec![Role::Ops]),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    let principal = login(&engine, bearer(&issued.token), "10.0.3.2")
        .await
        .unwrap();
    assert_eq!(principal.roles(), [Role::Ops]);

    let listed = users.list_tokens(&alice, None).unwrap();
    assert_eq!(listed, std::slice::from_ref(&issued.details));
    assert_eq!(users.list_tokens(&admin, Some("alice")).unwrap(), listed);
    assert_eq!(
        users.list_tokens(&admin, None).unwrap(),
        listed,
        "an admin sees every token"
    );

    // A mistyped or made-up token fails the same way.
    unauthenticated(login(&engine, bearer(&format!("{}x", issued.token)), "10.0.3.3").await);
    unauthenticated(login(&engine, bearer("not-a-token"), "10.0.3.3").await);

    users
        .revoke_token(&alice, &issued.details.id)
        .await
        .unwrap();
    let message = unauthenticated(login(&engine, bearer(&issued.token), "10.0.3.4").await);
    assert!(message.contains("revoked"), "{message}");
    assert!(users.list_tokens(&alice, None).unwrap().is_empty());
    assert!(matches!(
        users.revoke_token(&alice, &issued.details.id).await,
        Err(Error::TokenNotFound { id }) if id == issued.details.id
    ));
    stop(engine).await;
}

#[tokio::test]
async fn an_expired_token_fails() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    let issued = users
        .create_token(
            &admin,
            NewToken {
                name: "short".into(),
                expires_in: Some(Duration::from_secs(3)),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    let expires = issued.details.expires.expect("an expiry");
    assert!(expires > issued.details.created);
    login(&engine, bearer(&issued.token), "10.0.4.1")
        .await
        .expect("valid before it expires");
    let message = eventually("the token to expire", || async {
        match login(&engine, bearer(&issued.token), "10.0.4.2").await {
            Err(Error::Unauthenticated(message)) => Ok(message),
            other => Err(other),
        }
    })
    .await;
    assert!(message.contains("expired"), "{message}");
    assert!(users.list_tokens(&admin, None).unwrap()[0].expired);
    assert!(matches!(
        users
            .create_token(
                &admin,
                NewToken {
                    expires_in: Some(Duration::ZERO),
                    ..NewToken::default()
                },
            )
            .await,
        Err(Error::InvalidArgument(_))
    ));
    stop(engine).await;
}

#[tokio::test]
async fn a_disabled_or_deleted_users_token_fails() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    users
        .create_user(&admin, new_user("svc", "service password", &[]))
        .await
        .unwrap();
    let issued = users
        .create_token(
            &admin,
            NewToken {
                user: Some("svc".into()),
                name: "issued by an admin".into(),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        login(&engine, bearer(&issued.token), "10.0.5.1")
            .await
            .unwrap()
            .name(),
        "svc"
    );

    users.disable_user(&admin, "svc").await.unwrap();
    let message = unauthenticated(login(&engine, bearer(&issued.token), "10.0.5.2").await);
    assert!(message.contains("disabled"), "{message}");
    users.enable_user(&admin, "svc").await.unwrap();
    login(&engine, bearer(&issued.token), "10.0.5.3")
        .await
        .unwrap();

    // A new user of the same name does not inherit the old one's tokens.
    users.delete_user(&admin, "svc").await.unwrap();
    users
        .create_user(&admin, new_user("svc", "service password", &[]))
        .await
        .unwrap();
    unauthenticated(login(&engine, bearer(&issued.token), "10.0.5.4").await);
    assert!(users.list_tokens(&admin, Some("svc")).unwrap().is_empty());
    stop(engine).await;
}

#[tokio::test]
async fn users_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin_principal = admin(&engine).await;
    let users = engine.security().users();
    for (name, roles) in [
        ("alice", vec![Role::Ops]),
        ("bob", vec![]),
        ("carol", vec![]),
    ] {
        users
            .create_user(
                &admin_principal,
                new_user(name, &format!("{name} password"), &roles),
            )
            .await
            .unwrap();
    }
    users.disable_user(&admin_principal, "bob").await.unwrap();
    users.delete_user(&admin_principal, "carol").await.unwrap();
    users
        .reset_password(&admin_principal, "alice", "alice second password")
        .await
        .unwrap();
    let kept = users
        .create_token(
            &admin_principal,
            NewToken {
                user: Some("alice".into()),
                name: "kept".into(),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    let revoked = users
        .create_token(
            &admin_principal,
            NewToken {
                user: Some("alice".into()),
                name: "revoked".into(),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    users
        .revoke_token(&admin_principal, &revoked.details.id)
        .await
        .unwrap();
    let before = users.list_users(&admin_principal).unwrap();
    stop(engine).await;

    let engine = secure_engine(dir.path()).await;
    let admin_principal = admin(&engine).await;
    let users = engine.security().users();
    assert_eq!(users.list_users(&admin_principal).unwrap(), before);
    let alice = login(&engine, basic("alice", "alice second password"), "10.0.6.1")
        .await
        .unwrap();
    assert_eq!(alice.roles(), [Role::Ops]);
    unauthenticated(login(&engine, basic("alice", "alice password"), "10.0.6.2").await);
    unauthenticated(login(&engine, basic("bob", "bob password"), "10.0.6.3").await);
    unauthenticated(login(&engine, basic("carol", "carol password"), "10.0.6.4").await);
    assert_eq!(
        login(&engine, bearer(&kept.token), "10.0.6.5")
            .await
            .unwrap()
            .name(),
        "alice"
    );
    unauthenticated(login(&engine, bearer(&revoked.token), "10.0.6.6").await);
    assert_eq!(
        users.list_tokens(&admin_principal, None).unwrap(),
        [kept.details]
    );
    stop(engine).await;

    // The records are JSON with a version, and hold no secret.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let page = store
        .read(&ReadRequest::forwards(
            ReadSource::Stream(TOKENS_STREAM.into()),
            100,
        ))
        .unwrap();
    for event in &page.events {
        let text = String::from_utf8(event.data.to_vec()).unwrap();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(record["version"], 1);
        assert!(!text.contains(&kept.token) && !text.contains(&revoked.token));
    }
    let page = store
        .read(&ReadRequest::forwards(
            ReadSource::Stream(USERS_STREAM.into()),
            100,
        ))
        .unwrap();
    assert_eq!(page.events[0].event_type, "UserCreated");
    for event in &page.events {
        let text = String::from_utf8(event.data.to_vec()).unwrap();
        assert!(!text.contains("password\""), "{text}");
        assert!(!text.contains(ADMIN_PASSWORD) && !text.contains("alice second password"));
    }
    let acl = store
        .stream_info(USERS_STREAM)
        .unwrap()
        .metadata
        .custom
        .unwrap();
    assert!(acl.contains("$acl"), "{acl}");
    store.shutdown();
}

#[tokio::test]
async fn repeated_failures_block_that_source_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    engine
        .security()
        .users()
        .create_user(&admin, new_user("alice", "alice password", &[]))
        .await
        .unwrap();
    for _ in 0..5 {
        let message = unauthenticated(login(&engine, basic("alice", "guess"), "10.0.7.1").await);
        assert_eq!(message, "wrong user name or password");
    }
    let message =
        unauthenticated(login(&engine, basic("alice", "alice password"), "10.0.7.1").await);
    assert!(message.starts_with("too many failed logins"), "{message}");
    assert!(message.contains("wait"), "{message}");
    let message = unauthenticated(login(&engine, bearer("cairn_whatever"), "10.0.7.1").await);
    assert!(message.starts_with("too many failed logins"), "{message}");

    login(&engine, basic("alice", "alice password"), "10.0.7.2")
        .await
        .expect("another source is not blocked");
    // An unknown user counts like a wrong password and answers the same.
    let message = unauthenticated(login(&engine, basic("nobody", "guess"), "10.0.7.3").await);
    assert_eq!(message, "wrong user name or password");
    stop(engine).await;
}

#[tokio::test]
async fn the_last_enabled_admin_stays() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    let last = |result: cairn_engine::Result<()>| match result {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("last enabled admin"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    last(users.disable_user(&admin, "admin").await);
    last(users.delete_user(&admin, "admin").await);
    last(
        users
            .update_user(
                &admin,
                "admin",
                UserUpdate {
                    roles: Some(vec![Role::Ops]),
                    ..UserUpdate::default()
                },
            )
            .await
            .map(|_| ()),
    );
    login(&engine, basic("admin", ADMIN_PASSWORD), "127.0.0.1")
        .await
        .unwrap();

    // A disabled second admin does not count; an enabled one does.
    users
        .create_user(&admin, new_user("root", "root password", &[Role::Admin]))
        .await
        .unwrap();
    users.disable_user(&admin, "root").await.unwrap();
    last(users.disable_user(&admin, "admin").await);
    users.enable_user(&admin, "root").await.unwrap();
    users.disable_user(&admin, "admin").await.unwrap();
    let root = login(&engine, basic("root", "root password"), "10.0.8.1")
        .await
        .unwrap();
    last(users.delete_user(&root, "root").await);
    users.delete_user(&root, "admin").await.unwrap();
    stop(engine).await;
}

#[tokio::test]
async fn limits_are_enforced_in_bytes_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let limits = UserLimits {
        max_users: 2,
        max_tokens_per_user: 2,
        ..UserLimits::default()
    };
    let users = Users::open(&store, &secure(Some(ADMIN_PASSWORD), None), limits)
        .await
        .unwrap();
    let system = Principal::system();
    let limit = |result: cairn_engine::Result<()>| {
        assert!(matches!(result, Err(Error::LimitExceeded(_))), "{result:?}");
    };
    let mut long_name = new_user("alice", "alice password", &[]);
    long_name.full_name = "n".repeat(1025);
    limit(users.create_user(&system, long_name).await.map(|_| ()));
    limit(
        users
            .create_user(&system, new_user("alice", &"p".repeat(1025), &[]))
            .await
            .map(|_| ()),
    );
    users
        .create_user(&system, new_user("alice", &"p".repeat(1024), &[]))
        .await
        .expect("a 1 KiB password is fine");
    assert!(matches!(
        users
            .create_user(&system, new_user(&"u".repeat(129), "password", &[]))
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        users
            .create_user(&system, new_user("$ops", "password", &[]))
            .await,
        Err(Error::InvalidArgument(_))
    ));
    // admin and alice: the user limit is reached.
    limit(
        users
            .create_user(&system, new_user("bob", "bob password", &[]))
            .await
            .map(|_| ()),
    );
    let token = |name: &str| NewToken {
        user: Some("alice".into()),
        name: name.into(),
        ..NewToken::default()
    };
    limit(
        users
            .create_token(&system, token(&"t".repeat(257)))
            .await
            .map(|_| ()),
    );
    users.create_token(&system, token("one")).await.unwrap();
    let second = users.create_token(&system, token("two")).await.unwrap();
    limit(
        users
            .create_token(&system, token("three"))
            .await
            .map(|_| ()),
    );
    users
        .revoke_token(&system, &second.details.id)
        .await
        .unwrap();
    users
        .create_token(&system, token("three"))
        .await
        .expect("room again");
    users.delete_user(&system, "alice").await.unwrap();
    users
        .create_user(&system, new_user("bob", "bob password", &[]))
        .await
        .expect("room again");
    store.shutdown();
}

#[tokio::test]
async fn a_non_admin_manages_nothing_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let admin = admin(&engine).await;
    let users = engine.security().users();
    for name in ["alice", "bob"] {
        users
            .create_user(
                &admin,
                new_user(name, &format!("{name} password"), &[Role::Ops]),
            )
            .await
            .unwrap();
    }
    let bobs = users
        .create_token(
            &admin,
            NewToken {
                user: Some("bob".into()),
                ..NewToken::default()
            },
        )
        .await
        .unwrap();
    let alice = login(&engine, basic("alice", "alice password"), "10.0.9.1")
        .await
        .unwrap();
    let before = (
        users.list_users(&admin).unwrap(),
        users.list_tokens(&admin, None).unwrap(),
    );
    let written = (
        records(engine.store(), USERS_STREAM),
        records(engine.store(), TOKENS_STREAM),
    );

    denied(
        users
            .create_user(
                &alice,
                new_user("mallory", "mallory password", &[Role::Admin]),
            )
            .await,
    );
    denied(users.delete_user(&alice, "bob").await);
    denied(users.disable_user(&alice, "bob").await);
    denied(users.enable_user(&alice, "bob").await);
    denied(
        users
            .update_user(
                &alice,
                "alice",
                UserUpdate {
                    roles: Some(vec![Role::Admin]),
                    ..UserUpdate::default()
                },
            )
            .await,
    );
    denied(
        users
            .reset_password(&alice, "bob", "new bob password")
            .await,
    );
    denied(users.list_users(&alice));
    denied(users.user_details(&alice, "bob"));
    denied(
        users
            .create_token(
                &alice,
                NewToken {
                    user: Some("bob".into()),
                    ..NewToken::default()
                },
            )
            .await,
    );
    denied(users.list_tokens(&alice, Some("bob")));
    denied(users.revoke_token(&alice, &bobs.details.id).await);

    // What a user may do for itself.
    assert_eq!(users.user_details(&alice, "alice").unwrap().name, "alice");
    assert!(
        users.list_tokens(&alice, None).unwrap().is_empty(),
        "only its own tokens"
    );

    assert_eq!(
        (
            users.list_users(&admin).unwrap(),
            users.list_tokens(&admin, None).unwrap()
        ),
        before
    );
    assert_eq!(
        (
            records(engine.store(), USERS_STREAM),
            records(engine.store(), TOKENS_STREAM)
        ),
        written,
        "nothing was written"
    );
    login(&engine, bearer(&bobs.token), "10.0.9.2")
        .await
        .expect("bob's token still works");
    stop(engine).await;
}
