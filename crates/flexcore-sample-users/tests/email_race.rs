//! Email uniqueness under a real race: many `create_user` commands for one address released
//! at once by a barrier, on a multi-threaded runtime, against the real SQLite and PostgreSQL
//! stores, through the retry middleware the server uses. Exactly one wins; every other one is
//! a 409; the log holds one `user.created` and one reservation claim. A check-then-append that
//! was not atomic would let several through here.

use std::sync::Arc;

use flexcore_app::command::{Command, CommandBus, CommandBusExt, CommandContext, CommandRouter};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::store::{EventFilter, EventStore, ReadAll};
use flexcore_app::{ErrorKind, Result};
use flexcore_sample_users::commands::command_handlers;
use flexcore_store_postgres::{PostgresConfig, PostgresStore, drop_schema};
use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
use flexcore_test_support::services;
use serde_json::json;
use tokio::sync::Barrier;

/// Concurrent commands per race.
const RACERS: usize = 16;

fn bus(store: Arc<dyn EventStore>) -> Arc<dyn CommandBus> {
    let mut router = CommandRouter::new();
    for (command_type, handler) in command_handlers(Repository::new(store)) {
        router.register(command_type, handler).unwrap();
    }
    Arc::new(router.with_retry(RetryPolicy::default()))
}

/// Runs one race for `email`; returns how many commands succeeded.
async fn race(store: Arc<dyn EventStore>, email: &str) -> usize {
    let bus = bus(Arc::clone(&store));
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut racers = Vec::new();
    for _ in 0..RACERS {
        let (bus, barrier) = (Arc::clone(&bus), Arc::clone(&barrier));
        let command = Command {
            command_type: "create_user".into(),
            payload: json!({ "email": email }),
        };
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            bus.send(&CommandContext::default(), &command).await
        }));
    }
    let mut winners = 0;
    for racer in racers {
        let outcome: Result<_> = racer.await.unwrap();
        match outcome {
            Ok(_) => winners += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "a loser is a 409: {e}"),
        }
    }
    winners
}

async fn count(store: &dyn EventStore, type_prefix: &str) -> usize {
    store
        .read_all(ReadAll {
            from_position: 0,
            limit: 10_000,
            filter: EventFilter {
                type_prefix: Some(type_prefix.into()),
                category: None,
            },
        })
        .await
        .unwrap()
        .events
        .len()
}

async fn one_winner_per_address(store: Arc<dyn EventStore>) {
    for round in 0..3 {
        let email = format!("race-{round}@example.com");
        assert_eq!(race(Arc::clone(&store), &email).await, 1, "{email}");
    }
    assert_eq!(count(&*store, "user.created").await, 3);
    assert_eq!(count(&*store, "email.reserved").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_email_have_one_winner_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("race.db")))
        .await
        .unwrap();
    one_winner_per_address(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_email_have_one_winner_on_postgres() {
    let Some(url) = services::postgres_url() else {
        return;
    };
    let schema = services::unique_name("fc_race");
    let config = PostgresConfig {
        pool_size: RACERS,
        committers: 4,
        ..PostgresConfig::new(url.clone()).with_schema(schema.clone())
    };
    let store = PostgresStore::connect(config).await.unwrap();
    one_winner_per_address(Arc::new(store)).await;
    drop_schema(&url, &schema).await.unwrap();
}
