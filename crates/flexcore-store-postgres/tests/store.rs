//! PostgreSQL-specific behaviour beyond the conformance suite: durability across restarts,
//! concurrent migrations, isolation of a bad request inside a group commit, error kinds.

mod common;

use std::sync::Arc;
use std::time::Instant;

use flexcore_app::ErrorKind;
use flexcore_app::store::{
    EventAppender, EventReader, ReadStream, Snapshot, SnapshotStore, StreamWrite,
};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_store_postgres::{PostgresConfig, PostgresError, PostgresStore};
use serde_json::json;

fn stream(id: &str) -> StreamId {
    StreamId::new(id).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent::new("t.happened", RawJson::from_value(&json!({ "n": n }))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_append_survives_a_restart() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    let store = PostgresStore::connect(config.clone()).await.unwrap();
    let s = stream("order-1");
    let written = store
        .append(
            s.clone(),
            ExpectedVersion::NoStream,
            vec![event(0), event(1), event(2)],
        )
        .await
        .unwrap();
    store
        .save_snapshot(Snapshot {
            stream_id: s.clone(),
            version: 2,
            state: RawJson::from_value(&json!({"total": 3})),
        })
        .await
        .unwrap();
    drop(store);

    let reopened = PostgresStore::connect(config).await.unwrap();
    let slice = reopened
        .read_stream(ReadStream::forward(s.clone()))
        .await
        .unwrap();
    assert_eq!(slice.current_version, Some(2));
    let read_ids: Vec<_> = slice.events.iter().map(|e| e.event_id).collect();
    let written_ids: Vec<_> = written.events.iter().map(|e| e.event_id).collect();
    assert_eq!(read_ids, written_ids);
    assert_eq!(
        *reopened.head().borrow(),
        written.last_position().unwrap(),
        "the head starts at the stored tail"
    );
    assert_eq!(
        reopened.load_snapshot(&s).await.unwrap().unwrap().version,
        2
    );
    let next = reopened
        .append(s, ExpectedVersion::Exact(2), vec![event(3)])
        .await
        .unwrap();
    assert!(next.events[0].global_position > written.last_position().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once() {
    let Some((config, guard)) = common::fresh_config() else {
        return;
    };
    let starts: Vec<_> = (0..4)
        .map(|_| tokio::spawn(PostgresStore::connect(config.clone())))
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let raw = common::raw_client(&guard).await;
    let versions: Vec<i32> = raw
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_fails_alone_inside_a_group_commit() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    // One committer, so that the concurrent requests queue up and share batches.
    let store = Arc::new(
        PostgresStore::connect(PostgresConfig {
            committers: 1,
            ..config
        })
        .await
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            // jsonb cannot hold U+0000: valid JSON that the server refuses.
            let data = if i == 20 {
                RawJson::from_string(r#"{"text":"nul \u0000 inside"}"#.into()).unwrap()
            } else {
                RawJson::from_value(&json!({ "n": i }))
            };
            let e = NewEvent::new("t.happened", data).unwrap();
            let s = stream(&format!("gc-{i}"));
            (i, store.append(s, ExpectedVersion::NoStream, vec![e]).await)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i == 20 {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
        } else {
            assert_eq!(result.unwrap().current_version, Some(0), "request {i}");
        }
    }
    let bad = store
        .read_stream(ReadStream::forward(stream("gc-20")))
        .await
        .unwrap();
    assert_eq!(bad.current_version, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_coalesces_concurrent_appends() {
    let Some((store, _guard)) = common::fresh_store().await else {
        return;
    };
    let store = Arc::new(store);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..32u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i - 1)
                };
                store
                    .append_atomic(vec![StreamWrite::new(
                        stream(&format!("tp-{t}")),
                        expected,
                        vec![event(i)],
                    )])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "800 durable appends from 32 concurrent writers in {elapsed:?} ({:.0}/s)",
        800.0 / elapsed.as_secs_f64()
    );
    let slice = store
        .read_stream(ReadStream::forward(stream("tp-7")))
        .await
        .unwrap();
    assert_eq!(slice.events.len(), 25);
    let stats = store.group_commit_stats();
    println!("group commits: {stats:?}");
    assert_eq!(stats.appends, 800, "{stats:?}");
    assert!(
        stats.largest_batch > 1 && stats.batches < 800,
        "32 concurrent writers never shared a transaction: {stats:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let config = PostgresConfig::new("postgres://postgres@127.0.0.1:1/test");
    let err = PostgresStore::connect(config).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(
        flexcore_app::Error::from(err).kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn bad_configuration_is_refused_before_connecting() {
    let bad_schema =
        PostgresConfig::new("postgres://postgres@127.0.0.1:1/test").with_schema("x; DROP TABLE y");
    assert!(matches!(
        PostgresStore::connect(bad_schema).await,
        Err(PostgresError::Config(_))
    ));
    let bad_url = PostgresConfig::new("not a url at all");
    assert!(matches!(
        PostgresStore::connect(bad_url).await,
        Err(PostgresError::Config(_))
    ));
}
