//! Consumer groups through the engine's API (no wire protocol): supervision of
//! a failed actor, and groups whose stored definition cannot run.

use std::time::Duration;

use cairn_engine::groups::{ConsumerMessage, FilterSpec, GroupDefinition, GroupSettings};
use cairn_engine::{Engine, EngineOptions, Error};
use cairn_storage::{
    EventData, ExpectedRevision, ReadRequest, ReadSource, Store, StoreOptions, StreamAppend,
};
use cairn_testkit::eventually;
use tokio::sync::mpsc;

async fn engine_in(dir: &std::path::Path) -> Engine {
    let store = Store::open(dir, StoreOptions::default()).expect("open store");
    Engine::start(store, EngineOptions::default())
        .await
        .expect("start engine")
}

async fn append(engine: &Engine, stream: &str, count: usize) {
    let events = (0..count)
        .map(|n| EventData::json("Placed", format!("{{\"n\":{n}}}")))
        .collect();
    engine
        .append_multi(
            &cairn_engine::Principal::system(),
            vec![StreamAppend {
                stream: stream.into(),
                expected: ExpectedRevision::Any,
                events,
            }],
        )
        .await
        .expect("append");
}

fn definition(group: &str, stream: &str) -> GroupDefinition {
    GroupDefinition {
        group: group.into(),
        stream: stream.into(),
        filter: FilterSpec::default(),
        start_cursor: 0,
        settings: GroupSettings {
            checkpoint_after_events: 1,
            checkpoint_after_ms: 10,
            ..GroupSettings::default()
        },
    }
}

/// The next event delivered to a consumer (skipping the join message).
async fn next_event(messages: &mut mpsc::Receiver<ConsumerMessage>) -> Option<(u64, uuid::Uuid)> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), messages.recv())
            .await
            .expect("a message in time")?
        {
            ConsumerMessage::Event { event, .. } => return Some((event.position, event.id)),
            ConsumerMessage::Joined { .. } => continue,
            ConsumerMessage::End(reason) => panic!("session ended: {reason:?}"),
        }
    }
}

/// The position of the group's newest durable checkpoint, if any.
fn durable_checkpoint(store: &Store, group: &str) -> Option<u64> {
    let request =
        ReadRequest::backwards(ReadSource::Stream(format!("$sys-ps-{group}-checkpoint")), 1);
    let page = store.read(&request).ok()?;
    let event = page.events.first()?;
    let checkpoint: serde_json::Value = serde_json::from_slice(&event.data).ok()?;
    checkpoint["position"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_group_actor_is_restarted_from_its_durable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_in(dir.path()).await;
    append(&engine, "order-1", 10).await;
    engine
        .groups()
        .create(definition("billing", "$ce-order"))
        .await
        .unwrap();

    let (consumer, mut messages) = engine
        .groups()
        .join("billing", "first".into(), 0)
        .await
        .unwrap();
    let mut acked = Vec::new();
    for _ in 0..5 {
        let (position, id) = next_event(&mut messages).await.expect("an event");
        assert!(consumer.ack(vec![id]).await);
        acked.push(position);
    }
    let last_acked = *acked.last().unwrap();
    // Wait until the checkpoint over the acked prefix is durable.
    eventually("the checkpoint over the acked events to be durable", || {
        let position = durable_checkpoint(engine.store(), "billing");
        async move { (position == Some(last_acked)).then_some(()) }
    })
    .await;

    engine
        .groups()
        .crash_actor_for_tests("billing")
        .await
        .unwrap();
    // The session ends without an End message: the facade reports INTERNAL.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), messages.recv())
            .await
            .expect("the session ends in time")
        {
            None => break,
            Some(ConsumerMessage::Event { .. }) => continue,
            Some(other) => panic!("unexpected {other:?} from a crashed actor"),
        }
    }
    // Meanwhile the group answers INTERNAL, not GROUP_NOT_FOUND.
    match engine.groups().report("billing").await {
        Err(Error::Internal(message)) => assert!(message.contains("restarting"), "{message}"),
        Ok(_) => {} // already restarted: allowed, if fast
        Err(other) => panic!("a restarting group must say INTERNAL, got {other:?}"),
    }

    // Restarted: a new consumer gets every event after the durable
    // checkpoint, and none before it.
    let (consumer, mut messages) = eventually("the restarted group to take a consumer", || {
        let groups = engine.groups().clone();
        async move {
            match groups.join("billing", "second".into(), 0).await {
                Ok(joined) => Some(joined),
                Err(Error::Internal(_)) => None,
                Err(other) => panic!("joining the restarted group: {other:?}"),
            }
        }
    })
    .await;
    let mut positions = Vec::new();
    for _ in 0..5 {
        let (position, id) = next_event(&mut messages).await.expect("an event");
        assert!(
            position > last_acked,
            "redelivered {position}, before the checkpoint"
        );
        assert!(consumer.ack(vec![id]).await);
        positions.push(position);
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(
        positions.len(),
        5,
        "every unacked event once: {positions:?}"
    );
    let report = engine.groups().report("billing").await.unwrap();
    assert_eq!(report.definition.group, "billing");
    engine.close().await;
}

#[tokio::test]
async fn a_stored_group_whose_filter_does_not_compile_delivers_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = engine_in(dir.path()).await;
        append(&engine, "order-1", 3).await;
        engine.close().await;
    }
    // A definition as an older build might have stored it, with a filter this
    // build's regex engine refuses.
    {
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let broken = serde_json::json!({
            "GroupCreated": {
                "group": "audit",
                "stream": "$all",
                "filter": {
                    "stream_prefixes": [],
                    "stream_regex": "(unclosed",
                    "type_prefixes": [],
                    "type_regex": ""
                },
                "start_cursor": 0,
                "settings": serde_json::to_value(GroupSettings::default()).unwrap(),
            }
        });
        store
            .append(
                "$sys-ps-groups",
                ExpectedRevision::Any,
                vec![EventData::json("GroupCreated", broken.to_string())],
            )
            .wait()
            .unwrap();
        store.shutdown();
    }
    let engine = engine_in(dir.path()).await;
    let broken = |error: Error| match error {
        Error::GroupBroken { group, reason } => {
            assert_eq!(group, "audit");
            assert!(reason.contains("filter"), "{reason}");
        }
        other => panic!("expected GroupBroken, got {other:?}"),
    };
    broken(
        engine
            .groups()
            .join("audit", "c".into(), 0)
            .await
            .err()
            .expect("joining a broken group fails"),
    );
    broken(engine.groups().report("audit").await.err().unwrap());
    // Listed, so an operator can see it, and deletable.
    let reports = engine.groups().reports().await.unwrap();
    assert_eq!(reports.len(), 1);
    engine.groups().delete("audit").await.unwrap();
    assert!(matches!(
        engine.groups().report("audit").await,
        Err(Error::GroupNotFound { .. })
    ));
    engine.close().await;
}
