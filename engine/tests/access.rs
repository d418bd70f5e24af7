//! Authorization through the engine's API (no wire protocol): stream ACLs in
//! metadata and the server-wide defaults decide every write, delete,
//! metadata call and read; index reads and subscriptions show only events of
//! streams the caller may read; a denied call changes nothing.

use std::time::Duration;

use cairn_engine::groups::{FilterSpec, GroupDefinition, GroupSettings};
use cairn_engine::{
    Access, Engine, EngineOptions, Error, Feed, Principal, Role, SecurityOptions, StartFrom,
    SubscribeRequest,
};
use cairn_storage::{
    EventData, ExpectedRevision, ReadFilter, ReadRequest, ReadSource, Store, StoreOptions,
    StreamAppend, StreamMetadata,
};

async fn secure_engine(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir, StoreOptions::default()).expect("open store");
    let options = EngineOptions {
        security: SecurityOptions {
            enabled: true,
            initial_admin_password: Some("correct horse battery".into()),
            bootstrap_file: Some(dir.join("initial-admin-password")),
            ..SecurityOptions::default()
        },
        ..EngineOptions::default()
    };
    Engine::start(store, options).await.expect("start engine")
}

fn alice() -> Principal {
    Principal::user("alice", [])
}

fn bob() -> Principal {
    Principal::user("bob", [])
}

fn olga() -> Principal {
    Principal::user("olga", [Role::Ops])
}

fn admin() -> Principal {
    Principal::user("root", [Role::Admin])
}

fn part(stream: &str, data: &str) -> StreamAppend {
    StreamAppend {
        stream: stream.into(),
        expected: ExpectedRevision::Any,
        events: vec![EventData::json("Noted", data.to_owned())],
    }
}

async fn set_acl(engine: &Engine, stream: &str, acl: &str) {
    engine
        .set_metadata(
            &admin(),
            stream.into(),
            ExpectedRevision::Any,
            StreamMetadata {
                custom: Some(format!(r#"{{"$acl": {acl}}}"#)),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("set the ACL");
}

fn denied(result: Result<impl std::fmt::Debug, Error>, operation: &str, stream: &str) {
    match result {
        Err(Error::PermissionDenied {
            operation: denied_operation,
            stream: denied_stream,
        }) => {
            assert_eq!(denied_operation, operation);
            assert_eq!(denied_stream.as_deref(), Some(stream));
        }
        other => panic!("expected {operation} on {stream} to be denied, got {other:?}"),
    }
}

fn count(engine: &Engine, stream: &str) -> usize {
    engine
        .store()
        .read(&ReadRequest::forwards(
            ReadSource::Stream(stream.into()),
            1000,
        ))
        .map(|page| page.events.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn stream_acls_decide_every_stream_operation_and_denials_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    engine
        .append_multi(&alice(), vec![part("diary-alice", "{}")])
        .await
        .expect("user streams are open to every user by default");
    set_acl(
        &engine,
        "diary-alice",
        r#"{"$r": "alice", "$w": ["alice"], "$d": [], "$mr": ["alice", "$ops"], "$mw": "alice"}"#,
    )
    .await;

    // bob may do nothing with it; nothing changes.
    denied(
        engine
            .append_multi(&bob(), vec![part("diary-alice", "{}")])
            .await,
        "write",
        "diary-alice",
    );
    denied(
        engine.read_access(&bob(), &ReadSource::Stream("diary-alice".into())),
        "read",
        "diary-alice",
    );
    denied(
        engine
            .delete(&bob(), "diary-alice".into(), ExpectedRevision::Any, false)
            .await,
        "delete",
        "diary-alice",
    );
    denied(
        engine
            .delete(&bob(), "diary-alice".into(), ExpectedRevision::Any, true)
            .await,
        "delete",
        "diary-alice",
    );
    denied(
        engine.stream_info(&bob(), "diary-alice"),
        "read metadata",
        "diary-alice",
    );
    denied(
        engine
            .set_metadata(
                &bob(),
                "diary-alice".into(),
                ExpectedRevision::Any,
                StreamMetadata::default(),
            )
            .await,
        "write metadata",
        "diary-alice",
    );
    // An atomic append with one forbidden part writes no part.
    denied(
        engine
            .append_multi(
                &bob(),
                vec![part("notes-bob", "{}"), part("diary-alice", "{}")],
            )
            .await,
        "write",
        "diary-alice",
    );
    assert_eq!(count(&engine, "notes-bob"), 0);
    assert_eq!(count(&engine, "diary-alice"), 1);
    assert!(
        engine
            .stream_info(&admin(), "diary-alice")
            .unwrap()
            .metadata
            .custom
            .is_some()
    );

    // alice may read and write, not delete (an empty list); ops may read metadata.
    engine
        .append_multi(&alice(), vec![part("diary-alice", "{}")])
        .await
        .expect("alice writes");
    engine
        .read_access(&alice(), &ReadSource::Stream("diary-alice".into()))
        .expect("alice reads");
    denied(
        engine
            .delete(&alice(), "diary-alice".into(), ExpectedRevision::Any, false)
            .await,
        "delete",
        "diary-alice",
    );
    engine
        .stream_info(&olga(), "diary-alice")
        .expect("ops reads metadata");
    // Admins pass every check.
    engine
        .delete(&admin(), "diary-alice".into(), ExpectedRevision::Any, false)
        .await
        .expect("admins delete");
}

#[tokio::test]
async fn system_streams_are_for_admins_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    for principal in [alice(), olga()] {
        denied(
            engine.read_access(&principal, &ReadSource::Stream("$sys-users".into())),
            "read",
            "$sys-users",
        );
        denied(
            engine.stream_info(&principal, "$sys-users"),
            "read metadata",
            "$sys-users",
        );
    }
    engine
        .read_access(&admin(), &ReadSource::Stream("$sys-users".into()))
        .expect("admins read system streams");
    assert!(
        engine
            .authorize(&admin(), Access::Write, "$anything")
            .is_ok()
    );
}

#[tokio::test]
async fn snapshot_streams_are_decided_by_their_base_streams_acl() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    engine
        .append_multi(&admin(), vec![part("diary-alice", "{}")])
        .await
        .unwrap();
    set_acl(
        &engine,
        "diary-alice",
        r#"{"$r": ["alice", "bob"], "$w": "alice", "$d": [], "$mr": [], "$mw": []}"#,
    )
    .await;
    let snapshots = "$snapshot-diary-alice";

    // Write and metadata write follow the base stream's write; a writer of
    // `diary-alice` keeps its snapshots' retention.
    engine
        .append_multi(&alice(), vec![part(snapshots, "{}")])
        .await
        .expect("a writer of the base stream writes its snapshots");
    engine
        .set_metadata(
            &alice(),
            snapshots.into(),
            ExpectedRevision::Any,
            StreamMetadata {
                max_count: Some(3),
                // Ignored: the snapshot stream's own ACL never decides.
                custom: Some(r#"{"$acl": {"$r": "$all", "$w": "$all"}}"#.into()),
                ..StreamMetadata::default()
            },
        )
        .await
        .expect("a writer of the base stream sets its snapshots' metadata");
    denied(
        engine
            .append_multi(&bob(), vec![part(snapshots, "{}")])
            .await,
        "write",
        snapshots,
    );
    denied(
        engine
            .set_metadata(
                &bob(),
                snapshots.into(),
                ExpectedRevision::Any,
                StreamMetadata::default(),
            )
            .await,
        "write metadata",
        snapshots,
    );
    // Read and metadata read follow the base stream's read, not its `$mr`.
    for reader in [alice(), bob()] {
        engine
            .read_access(&reader, &ReadSource::Stream(snapshots.into()))
            .expect("a reader of the base stream reads its snapshots");
        engine
            .stream_info(&reader, snapshots)
            .expect("a reader of the base stream reads its snapshots' metadata");
    }
    denied(
        engine.read_access(&olga(), &ReadSource::Stream(snapshots.into())),
        "read",
        snapshots,
    );
    denied(
        engine
            .append_multi(&olga(), vec![part(snapshots, "{}")])
            .await,
        "write",
        snapshots,
    );
    // Delete follows the base stream's delete (nobody here but admins).
    denied(
        engine
            .delete(&alice(), snapshots.into(), ExpectedRevision::Any, false)
            .await,
        "delete",
        snapshots,
    );
    // In `$all` a snapshot is visible exactly to the base stream's readers;
    // it is never in the base stream's category.
    let visible = |principal: &Principal, source: ReadSource| {
        let visibility = engine.read_access(principal, &source).unwrap();
        let page = engine
            .store()
            .read(&ReadRequest::forwards(source, 1000))
            .unwrap();
        page.events
            .into_iter()
            .filter(|event| visibility.admits(&event.stream))
            .map(|event| event.stream)
            .collect::<Vec<_>>()
    };
    assert_eq!(visible(&bob(), ReadSource::All), ["diary-alice", snapshots]);
    assert!(visible(&olga(), ReadSource::All).is_empty());
    assert_eq!(
        visible(&admin(), ReadSource::Category("diary".into())),
        ["diary-alice"]
    );
    // Revoking read on the base stream revokes it on the snapshots.
    set_acl(&engine, "diary-alice", r#"{"$r": "alice", "$w": "alice"}"#).await;
    denied(
        engine.read_access(&bob(), &ReadSource::Stream(snapshots.into())),
        "read",
        snapshots,
    );
    assert!(visible(&bob(), ReadSource::All).is_empty());

    // Only `$snapshot-<client stream>` is writable among `$` names.
    for reserved in [
        "$snapshot-",
        "$snapshot-$sys-users",
        "$snapshots-diary",
        "$diary",
    ] {
        assert!(
            matches!(
                engine
                    .append_multi(&admin(), vec![part(reserved, "{}")])
                    .await,
                Err(Error::Store(cairn_storage::Error::InvalidArgument(_)))
            ),
            "{reserved} must stay reserved"
        );
    }
}

#[tokio::test]
async fn index_reads_and_subscriptions_show_only_readable_streams() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    for stream in ["order-1", "order-2", "secret-1"] {
        engine
            .append_multi(&admin(), vec![part(stream, "{}")])
            .await
            .unwrap();
    }
    set_acl(&engine, "order-2", r#"{"$r": ["bob"]}"#).await;
    engine
        .append_multi(&admin(), vec![part("order-2", "{}")])
        .await
        .unwrap();

    let visible = |principal: &Principal, source: ReadSource| {
        let visibility = engine.read_access(principal, &source).unwrap();
        let page = engine
            .store()
            .read(&ReadRequest::forwards(source, 1000))
            .unwrap();
        page.events
            .into_iter()
            .filter(|event| visibility.admits(&event.stream))
            .map(|event| event.stream)
            .collect::<Vec<_>>()
    };
    // `$all` also holds system streams (the bootstrap admin's `$sys-users` record).
    let all_for_alice = visible(&alice(), ReadSource::All);
    assert_eq!(all_for_alice, ["order-1", "secret-1"]);
    assert_eq!(
        visible(&alice(), ReadSource::Category("order".into())),
        ["order-1"]
    );
    assert_eq!(
        visible(&bob(), ReadSource::Category("order".into())),
        ["order-1", "order-2", "order-2"]
    );
    assert!(
        visible(&admin(), ReadSource::All).len() > all_for_alice.len() + 2,
        "admins see everything"
    );

    // A subscription to `$all` delivers history and live events alike only
    // from readable streams.
    let mut feed = engine
        .subscribe(
            &alice(),
            SubscribeRequest {
                source: ReadSource::All,
                filter: ReadFilter::default(),
                checkpoint_interval: None,
                from: StartFrom::Start,
            },
        )
        .unwrap();
    let mut seen = Vec::new();
    let mut caught_up = false;
    while !caught_up || seen.len() < 3 {
        let item = tokio::time::timeout(Duration::from_secs(20), feed.recv())
            .await
            .expect("a feed item in time")
            .expect("the feed goes on")
            .expect("no end");
        match item {
            Feed::Event(event) => seen.push(event.stream.clone()),
            Feed::CaughtUp { .. } => {
                caught_up = true;
                engine
                    .append_multi(&admin(), vec![part("order-2", "{}"), part("order-3", "{}")])
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["order-1", "secret-1", "order-3"]);
}

#[tokio::test]
async fn consumer_groups_need_operators_readers_and_for_indexes_admins() {
    let dir = tempfile::tempdir().unwrap();
    let engine = secure_engine(dir.path()).await;
    let group = |name: &str, stream: &str| GroupDefinition {
        group: name.into(),
        stream: stream.into(),
        filter: FilterSpec::default(),
        start_cursor: 0,
        settings: GroupSettings::default(),
    };
    engine
        .groups()
        .create(group("on-stream", "order-1"))
        .await
        .unwrap();
    engine
        .groups()
        .create(group("on-index", "$ce-order"))
        .await
        .unwrap();
    for principal in [alice(), bob()] {
        assert!(matches!(
            engine.authorize_operations(&principal, "manage consumer groups"),
            Err(Error::PermissionDenied { stream: None, .. })
        ));
        assert!(matches!(
            engine.authorize_consume(&principal, "on-index"),
            Err(Error::PermissionDenied { stream: None, .. })
        ));
    }
    engine
        .authorize_operations(&olga(), "manage consumer groups")
        .unwrap();
    // An index group hands out events of every stream: admins only.
    assert!(matches!(
        engine.authorize_consume(&olga(), "on-index"),
        Err(Error::PermissionDenied { stream: None, .. })
    ));
    engine.authorize_consume(&admin(), "on-index").unwrap();
    engine.authorize_consume(&alice(), "on-stream").unwrap();
    set_acl(&engine, "order-1", r#"{"$r": "bob"}"#).await;
    denied(
        engine.authorize_consume(&alice(), "on-stream"),
        "read",
        "order-1",
    );
    engine.authorize_consume(&bob(), "on-stream").unwrap();
}

#[tokio::test]
async fn insecure_mode_allows_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let engine = Engine::start(store, EngineOptions::default())
        .await
        .unwrap();
    assert!(!engine.security().enabled());
    engine
        .append_multi(&Principal::system(), vec![part("order-1", "{}")])
        .await
        .unwrap();
    engine
        .authorize_operations(&alice(), "manage consumer groups")
        .unwrap();
    assert!(
        engine
            .read_access(&alice(), &ReadSource::All)
            .unwrap()
            .is_everything()
    );
}
