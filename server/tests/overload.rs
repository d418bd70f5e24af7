//! Every write path is bounded without blocking: when `max_inflight_appends`
//! writes are in flight, any further write (append, multi-append, delete,
//! tombstone, metadata, group create/update/delete) is refused at once with
//! RESOURCE_EXHAUSTED and changes nothing; the writes in flight still succeed.
//!
//! The committer is held inside its write through the storage fault seam, so
//! "in flight" is exact, not a race against a fast disk.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cairn_client::{
    Error, EventData, ExpectedRevision, GroupOptions, GroupSettings, StreamAppend, StreamMetadata,
};
use cairn_storage::{StoreOptions, WriteFault};
use cairn_testkit::{TestServer, eventually};

/// Holds the committer inside its write while closed.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Groups that reached the committer's write.
    entered: AtomicUsize,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// What an answer must be: refused at once as overloaded.
fn assert_overloaded<T: std::fmt::Debug>(
    what: &str,
    answer: Result<Result<T, Error>, impl std::fmt::Debug>,
) {
    match answer {
        Ok(Err(Error::LimitExceeded(message))) => {
            assert!(message.contains("writes in flight"), "{what}: {message}")
        }
        Ok(other) => panic!("{what}: expected RESOURCE_EXHAUSTED, got {other:?}"),
        Err(elapsed) => panic!("{what}: stalled instead of refusing ({elapsed:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_is_bounded_and_overload_is_resource_exhausted() {
    let gate = Arc::new(Gate::default());
    let hook_gate = Arc::clone(&gate);
    let store_options = StoreOptions {
        write_fault: Some(WriteFault::new(move |_| {
            hook_gate.pass();
            None
        })),
        ..StoreOptions::default()
    };
    let server = TestServer::start_full(
        tempfile::tempdir().unwrap(),
        |settings| settings.max_inflight_appends = 1,
        store_options,
    )
    .await;
    let client = server.client().await;
    client
        .create_group("billing", "$ce-order", GroupOptions::default())
        .await
        .unwrap();

    // One append in flight, held inside the committer's write.
    gate.set_closed(true);
    let entered = gate.entered.load(Ordering::SeqCst);
    let held = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .append(
                    "order-1",
                    ExpectedRevision::NoStream,
                    vec![EventData::json_text("Placed", "{}")],
                )
                .await
        })
    };
    eventually("the first append to reach the committer", || {
        let gate = Arc::clone(&gate);
        async move { (gate.entered.load(Ordering::SeqCst) > entered).then_some(()) }
    })
    .await;

    let soon = Duration::from_secs(5);
    let event = || vec![EventData::json_text("Placed", "{}")];
    assert_overloaded(
        "append",
        tokio::time::timeout(
            soon,
            client.append("order-2", ExpectedRevision::Any, event()),
        )
        .await,
    );
    assert_overloaded(
        "append_multi",
        tokio::time::timeout(
            soon,
            client.append_multi(vec![
                StreamAppend::new("order-3", ExpectedRevision::Any, event()),
                StreamAppend::new("order-4", ExpectedRevision::Any, event()),
            ]),
        )
        .await,
    );
    assert_overloaded(
        "delete",
        tokio::time::timeout(soon, client.delete("order-1", ExpectedRevision::Any)).await,
    );
    assert_overloaded(
        "tombstone",
        tokio::time::timeout(soon, client.tombstone("order-1", ExpectedRevision::Any)).await,
    );
    let metadata = StreamMetadata {
        max_count: Some(3),
        ..StreamMetadata::default()
    };
    assert_overloaded(
        "set_stream_metadata",
        tokio::time::timeout(
            soon,
            client.set_stream_metadata("order-5", ExpectedRevision::Any, metadata),
        )
        .await,
    );
    assert_overloaded(
        "create_group",
        tokio::time::timeout(
            soon,
            client.create_group("audit", "$all", GroupOptions::default()),
        )
        .await,
    );
    let settings = GroupSettings {
        max_retries: Some(3),
        ..GroupSettings::default()
    };
    assert_overloaded(
        "update_group",
        tokio::time::timeout(soon, client.update_group("billing", settings)).await,
    );
    assert_overloaded(
        "delete_group",
        tokio::time::timeout(soon, client.delete_group("billing")).await,
    );

    // The write in flight completes; the refused ones changed nothing.
    gate.set_closed(false);
    let appended = held.await.unwrap().expect("the held append succeeds");
    assert_eq!(appended.current_revision, Some(0));
    for stream in ["order-2", "order-3", "order-4", "order-5"] {
        assert!(
            matches!(
                client.get_stream_metadata(stream).await,
                Err(Error::StreamNotFound { .. })
            ),
            "{stream} must not exist"
        );
    }
    let info = client.get_stream_metadata("order-1").await.unwrap();
    assert_eq!(
        info.last_revision,
        Some(0),
        "order-1 is neither deleted nor tombstoned"
    );
    let groups = client.list_groups().await.unwrap();
    assert_eq!(groups.len(), 1, "no group created or deleted");
    assert_eq!(groups[0].group, "billing");
    assert_eq!(
        groups[0].settings.max_retries,
        Some(10),
        "settings unchanged"
    );

    // And writes are admitted again.
    client
        .append("order-2", ExpectedRevision::NoStream, event())
        .await
        .unwrap();
    server.stop().await;
}
