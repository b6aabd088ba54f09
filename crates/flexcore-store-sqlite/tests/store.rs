//! SQLite specifics: reopening, the process lock, the commit modes, URLs.

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::store::{
    EventAppender, EventFilter, EventReader, ReadAll, ReadStream, StreamAdmin,
};
use flexcore_domain::{ExpectedVersion, NewEvent, RawJson, StreamId};
use flexcore_store_sqlite::{SqliteConfig, SqliteError, SqliteStore, Synchronous};
use flexcore_test_support::file_reaches_len;
use serde_json::json;

fn event(n: u64) -> NewEvent {
    NewEvent::new("t.happened", RawJson::from_value(&json!({ "n": n }))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_reopen_and_positions_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/events.db");
    let store = Arc::new(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let s = StreamId::new(format!("s-{i}")).unwrap();
            store
                .append(s, ExpectedVersion::NoStream, vec![event(i)])
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let deleted = StreamId::new("s-0").unwrap();
    store
        .delete_stream(&deleted, ExpectedVersion::Exact(0))
        .await
        .unwrap();
    assert_eq!(store.head_position(), 50);
    drop(store);

    // The writer thread releases the process lock once it has drained its queue.
    let mut reopened = None;
    for _ in 0..100 {
        match SqliteStore::open(SqliteConfig::new(&path)).await {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(SqliteError::InUse(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let store = reopened.expect("the store reopens");
    assert_eq!(store.head_position(), 50);
    let all = store
        .read_all(ReadAll {
            from_position: 0,
            limit: 100,
            filter: EventFilter::default(),
        })
        .await
        .unwrap();
    assert_eq!(all.events.len(), 50);
    assert_eq!(all.next_position, 51);
    let gone = store
        .read_stream(ReadStream::forward(deleted.clone()))
        .await
        .unwrap();
    assert_eq!(gone.current_version, None, "the delete survived too");
    let next = store
        .append(
            StreamId::new("s-new").unwrap(),
            ExpectedVersion::NoStream,
            vec![event(99)],
        )
        .await
        .unwrap();
    assert_eq!(next.events[0].global_position, 51);
}

#[tokio::test]
async fn one_process_per_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let _first = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    match SqliteStore::open(SqliteConfig::new(&path)).await {
        Err(SqliteError::InUse(p)) => assert_eq!(p, path),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a second store opened the same file"),
    }
}

#[tokio::test]
async fn every_commit_mode_appends_and_reads_back() {
    for (group_commit, synchronous) in [
        (true, Synchronous::Full),
        (false, Synchronous::Full),
        (true, Synchronous::Normal),
        (false, Synchronous::Normal),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = SqliteConfig::new(dir.path().join("events.db"));
        config.group_commit = group_commit;
        config.synchronous = synchronous;
        let store = Arc::new(SqliteStore::open(config).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..20u64 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store
                    .append(
                        StreamId::new("one").unwrap(),
                        ExpectedVersion::Any,
                        vec![event(i), event(i)],
                    )
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let slice = store
            .read_stream(ReadStream::forward(StreamId::new("one").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            slice.current_version,
            Some(39),
            "{group_commit} {synchronous:?}"
        );
        let versions: Vec<u64> = slice.events.iter().map(|e| e.stream_version).collect();
        assert_eq!(versions, (0..40).collect::<Vec<_>>());
    }
}

/// 32 writers, each appending 25 events one by one to its own stream with exact expectations.
async fn append_from_32_writers(store: &Arc<SqliteStore>) {
    let mut tasks = Vec::new();
    for writer in 0..32u64 {
        let store = Arc::clone(store);
        tasks.push(tokio::spawn(async move {
            let stream_id = StreamId::new(format!("w-{writer}")).unwrap();
            for i in 0..25u64 {
                let expected = match i {
                    0 => ExpectedVersion::NoStream,
                    _ => ExpectedVersion::Exact(i - 1),
                };
                store
                    .append(stream_id.clone(), expected, vec![event(i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_coalesces_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(SqliteConfig::new(dir.path().join("events.db")))
            .await
            .unwrap(),
    );
    append_from_32_writers(&store).await;
    let stats = store.group_commit_stats();
    println!("group commits: {stats:?}");
    assert_eq!(stats.appends, 800, "{stats:?}");
    assert!(
        stats.largest_batch > 1 && stats.batches < 800,
        "32 concurrent writers never shared a transaction: {stats:?}"
    );

    // The counter tells the modes apart: without group commit every append is alone.
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("events.db"));
    config.group_commit = false;
    let alone = Arc::new(SqliteStore::open(config).await.unwrap());
    append_from_32_writers(&alone).await;
    let stats = alone.group_commit_stats();
    assert_eq!((stats.batches, stats.largest_batch), (800, 1), "{stats:?}");
}

#[test]
fn store_urls_are_parsed() {
    assert_eq!(
        SqliteConfig::from_url("sqlite://./data/x.db").unwrap().path,
        std::path::Path::new("./data/x.db")
    );
    assert_eq!(
        SqliteConfig::from_url("sqlite:/tmp/y.db?mode=rwc")
            .unwrap()
            .path,
        std::path::Path::new("/tmp/y.db")
    );
    assert!(SqliteConfig::from_url("sqlite://").is_err());
    assert!(SqliteConfig::from_url("postgres://x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_are_checkpointed_into_the_database_file_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // About 400 KB of events: a tenth of the WAL that SQLite's own checkpoint waits for
    // (1,000 pages), so only the background checkpointer moves them into the main file.
    let body = "x".repeat(4_000);
    for n in 0..100u64 {
        let event = NewEvent::new(
            "t.happened",
            RawJson::from_value(&json!({ "n": n, "body": body })),
        )
        .unwrap();
        let stream = StreamId::new(format!("big-{n}")).unwrap();
        store
            .append(stream, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
    }
    // The main file alone, without its WAL.
    if let Err(len) = file_reaches_len(&path, before + 300_000).await {
        panic!("the main file stayed at {len} bytes (was {before})");
    }
    // The store keeps reading and writing normally meanwhile.
    let read = store
        .read_stream(ReadStream::forward(StreamId::new("big-99").unwrap()))
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
}
