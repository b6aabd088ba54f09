//! The aggregate repository over the in-memory store: load, decide, append, snapshots, retries.

use std::sync::Arc;

use flexcore_app::repository::Repository;
use flexcore_app::store::{EventStore, InMemoryStore, SnapshotStore};
use flexcore_domain::{EventMetadata, StreamId};
use flexcore_sample_users::domain::{Email, User, UserCommand};
use flexcore_test_support::ProbedStore;
use serde_json::Map;
use uuid::Uuid;

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

#[tokio::test]
async fn execute_loads_decides_and_appends() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let repo = Repository::new(Arc::clone(&store));
    let id = Uuid::now_v7();
    let meta = EventMetadata {
        actor: Some(flexcore_domain::Actor::subject("ann")),
        ..EventMetadata::default()
    };
    let create = UserCommand::Create {
        user_id: id,
        email: email("a@b.io"),
        profile: Map::new(),
    };
    let (state, result) = repo
        .execute::<User>(&id.to_string(), &create, &meta)
        .await
        .unwrap();
    assert_eq!(state.email, Some(email("a@b.io")));
    assert_eq!(result.current_version, Some(0));
    let err = repo
        .execute::<User>(&id.to_string(), &create, &meta)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), flexcore_app::ErrorKind::Conflict);

    let loaded = repo.load::<User>(&id.to_string()).await.unwrap();
    assert_eq!(loaded.version, Some(0));
    assert_eq!(
        loaded.stream_id,
        StreamId::new(format!("user-{id}")).unwrap()
    );
    assert_eq!(loaded.state.id, Some(id));
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_used_when_loading() {
    // Counts the events loads read, to tell a snapshot load from a full replay.
    let store = Arc::new(ProbedStore::new(Arc::new(InMemoryStore::new())));
    let repo = Repository::new(Arc::clone(&store) as Arc<dyn EventStore>).with_snapshots_every(3);
    let id = Uuid::now_v7();
    let meta = EventMetadata::default();
    repo.execute::<User>(
        &id.to_string(),
        &UserCommand::Create {
            user_id: id,
            email: email("v0@b.io"),
            profile: Map::new(),
        },
        &meta,
    )
    .await
    .unwrap();
    let stream = StreamId::new(format!("user-{id}")).unwrap();
    assert!(store.load_snapshot(&stream).await.unwrap().is_none());
    for i in 1..=4 {
        repo.execute::<User>(
            &id.to_string(),
            &UserCommand::ChangeEmail {
                email: email(&format!("v{i}@b.io")),
            },
            &meta,
        )
        .await
        .unwrap();
    }
    let snapshot = store
        .load_snapshot(&stream)
        .await
        .unwrap()
        .expect("a snapshot at version 2");
    assert_eq!(
        snapshot.version, 2,
        "taken when the stream reached 3 events"
    );
    let at_snapshot: User = snapshot.state.decode().unwrap();
    assert_eq!(at_snapshot.email, Some(email("v2@b.io")));

    let read_before = store.stream_events_read();
    let loaded = repo.load::<User>(&id.to_string()).await.unwrap();
    assert_eq!(loaded.version, Some(4));
    assert_eq!(
        loaded.state.email,
        Some(email("v4@b.io")),
        "snapshot + later events"
    );
    assert_eq!(
        store.stream_events_read() - read_before,
        2,
        "a load from the snapshot at version 2 reads only versions 3 and 4"
    );

    let without_snapshots = Repository::new(Arc::clone(&store) as Arc<dyn EventStore>);
    let read_before = store.stream_events_read();
    let replayed = without_snapshots
        .load::<User>(&id.to_string())
        .await
        .unwrap();
    assert_eq!(replayed.state.email, loaded.state.email);
    assert_eq!(
        store.stream_events_read() - read_before,
        5,
        "a full replay reads every event"
    );
}

#[tokio::test]
async fn concurrent_commands_on_one_aggregate_all_land_through_retries() {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let repo = Repository::new(Arc::clone(&store));
    let id = Uuid::now_v7();
    let meta = EventMetadata::default();
    repo.execute::<User>(
        &id.to_string(),
        &UserCommand::Create {
            user_id: id,
            email: email("c@b.io"),
            profile: Map::new(),
        },
        &meta,
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let repo = repo.clone();
        let meta = meta.clone();
        tasks.push(tokio::spawn(async move {
            repo.execute::<User>(
                &id.to_string(),
                &UserCommand::ChangeEmail {
                    email: email(&format!("c{i}@b.io")),
                },
                &meta,
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        repo.load::<User>(&id.to_string()).await.unwrap().version,
        Some(4)
    );
}
