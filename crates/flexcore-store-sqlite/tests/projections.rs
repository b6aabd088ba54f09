//! The sample domain's `users` read model on SQLite: queries, read-your-writes, restart
//! without re-applying, blue-green rebuilds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::projection::{
    Changes, Projection, ProjectionState, Projections, ProjectionsHandle,
};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::repository::Repository;
use flexcore_app::store::EventFilter;
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::EventEnvelope;
use flexcore_sample_users::read_model::{UsersProjection, query_handlers};
use flexcore_store_sqlite::{SqliteConfig, SqliteError, SqliteReadModels, SqliteStore};
use serde_json::{Value, json};
use tokio::sync::watch;

struct Node {
    commands: CommandRouter,
    queries: QueryRouter,
    projections: ProjectionsHandle,
    stop: watch::Sender<bool>,
}

async fn start(dir: &std::path::Path, projection: Arc<dyn Projection>) -> Node {
    let db = dir.join("events.db");
    // The previous node's writer thread may still be closing the file.
    let mut attempts = 0;
    let store = loop {
        match SqliteStore::open(SqliteConfig::new(&db)).await {
            Ok(store) => break Arc::new(store),
            Err(SqliteError::InUse(_)) if attempts < 250 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    };
    let read_models = Arc::new(
        SqliteReadModels::open(SqliteReadModels::path_for(&db))
            .await
            .unwrap(),
    );
    let (stop, shutdown) = watch::channel(false);
    let mut projections = Projections::new(read_models, store.clone());
    projections.register(projection).unwrap();
    let projections = projections.start(shutdown).await.unwrap();
    let mut commands = CommandRouter::new();
    for (command_type, handler) in
        flexcore_sample_users::commands::command_handlers(Repository::new(store))
    {
        commands.register(command_type, handler).unwrap();
    }
    let mut queries = QueryRouter::new();
    for (query_type, handler) in query_handlers(projections.read_model("users").unwrap()) {
        queries.register(query_type, handler).unwrap();
    }
    Node {
        commands,
        queries,
        projections,
        stop,
    }
}

impl Node {
    /// Sends a command, returns the global position of its last event.
    async fn send(&self, command_type: &str, payload: Value) -> Result<u64> {
        let outcome = self
            .commands
            .send(
                &CommandContext::default(),
                &Command {
                    command_type: command_type.into(),
                    payload,
                },
            )
            .await?;
        Ok(outcome.events.last().map_or(0, |e| e.global_position))
    }

    async fn ask(&self, query_type: &str, params: Value) -> Result<Value> {
        self.queries
            .ask(
                &QueryContext::default(),
                &Query {
                    query_type: query_type.into(),
                    params,
                },
            )
            .await
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
    }
}

async fn create_users(node: &Node, count: usize) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut last = 0;
    for i in 0..count {
        let position = node
            .send(
                "create_user",
                json!({"email": format!("user_{i}@example.com"), "profile": {"n": i}}),
            )
            .await
            .unwrap();
        last = position;
        let user = node
            .ask(
                "list_users",
                json!({"page": i + 1, "page_size": 1, "min_position": position}),
            )
            .await
            .unwrap();
        ids.push(user["users"][0]["user_id"].as_str().unwrap().to_owned());
    }
    (ids, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_queried_from_the_read_model_with_read_your_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Arc::new(UsersProjection)).await;
    let (ids, last) = create_users(&node, 12).await;

    let page = node
        .ask(
            "list_users",
            json!({"page": 2, "page_size": 5, "min_position": last}),
        )
        .await
        .unwrap();
    assert_eq!(page["total"], 12);
    assert_eq!(page["users"].as_array().unwrap().len(), 5);
    assert_eq!(page["users"][0]["email"], "user_5@example.com");
    assert_eq!(page["users"][0]["profile"], json!({"n": 5}));

    // `_` and `%` are literal in email_contains, and matching ignores case.
    let filtered = node
        .ask("list_users", json!({"email_contains": "USER_1"}))
        .await
        .unwrap();
    assert_eq!(filtered["total"], 3, "user_1, user_10, user_11: {filtered}");
    let none = node
        .ask("list_users", json!({"email_contains": "%"}))
        .await
        .unwrap();
    assert_eq!(none["total"], 0);

    let moved = node
        .send(
            "change_email",
            json!({"user_id": ids[3], "email": "New@Example.com"}),
        )
        .await
        .unwrap();
    let user = node
        .ask(
            "get_user",
            json!({"user_id": ids[3], "min_position": moved}),
        )
        .await
        .unwrap();
    assert_eq!(user["email"], "new@example.com");
    assert_eq!(user["version"], 1);
    assert_eq!(user["stream_id"], format!("user-{}", ids[3]));

    let missing = node
        .ask("get_user", json!({"user_id": uuid::Uuid::now_v7()}))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    for bad in [
        json!({"page": 0}),
        json!({"page_size": 501}),
        json!({"page_size": "x"}),
        json!({"unknown": 1}),
    ] {
        let refused = node.ask("list_users", bad.clone()).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Validation, "{bad}");
    }
    // A position far ahead times out as unavailable instead of hanging.
    let waiting = node
        .projections
        .wait_for("users", last + 1_000, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(waiting.kind(), ErrorKind::Unavailable);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoint_without_applying_twice() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Arc::new(UsersProjection)).await;
    let (ids, last) = create_users(&node, 5).await;
    // Stopped right after the command: the read model may not have applied it yet.
    let moved = node
        .send(
            "change_email",
            json!({"user_id": ids[0], "email": "x@example.com"}),
        )
        .await
        .unwrap();
    node.stop().await;

    let node = start(dir.path(), Arc::new(UsersProjection)).await;
    let status = node.projections.status_of("users").unwrap();
    assert_eq!(status.state, ProjectionState::Live);
    assert_eq!(status.live.unwrap().number, 1, "no rebuild at restart");
    assert!(status.position.unwrap() > last);
    let page = node.ask("list_users", json!({})).await.unwrap();
    assert_eq!(page["total"], 5);
    let user = node
        .ask(
            "get_user",
            json!({"user_id": ids[0], "min_position": moved}),
        )
        .await
        .unwrap();
    assert_eq!(
        (user["email"].as_str(), user["version"].as_i64()),
        (Some("x@example.com"), Some(1))
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_blue_green_and_a_new_version_rebuilds_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), Arc::new(UsersProjection)).await;
    let (ids, last) = create_users(&node, 30).await;

    let generation = node.projections.rebuild("users").await.unwrap();
    assert_eq!(generation.number, 2);
    let twice = node.projections.rebuild("users").await;
    // Either still rebuilding (conflict) or already swapped in (a third generation starts).
    if let Err(e) = &twice {
        assert_eq!(e.kind(), ErrorKind::Conflict);
    }
    // Queries keep answering from a complete model during the rebuild.
    for _ in 0..20 {
        let page = node
            .ask("list_users", json!({"min_position": last}))
            .await
            .unwrap();
        assert_eq!(page["total"], 30);
    }
    let rebuilt = wait_live(&node.projections, 2).await;
    let user = node
        .ask("get_user", json!({"user_id": ids[29]}))
        .await
        .unwrap();
    assert_eq!(user["email"], "user_29@example.com");
    node.stop().await;

    // A new projection version: rebuilt beside the live one at start, then swapped in.
    let node = start(dir.path(), Arc::new(UsersNext)).await;
    let status = node.projections.status_of("users").unwrap();
    assert!(
        status.live.is_some(),
        "the old generation keeps serving: {status:?}"
    );
    let page = node.ask("list_users", json!({})).await.unwrap();
    assert_eq!(page["total"], 30);
    let live = wait_live(&node.projections, rebuilt.number + 1).await;
    assert_eq!(live.version, UsersProjection.version() + 1);
    node.stop().await;
}

async fn wait_live(
    projections: &ProjectionsHandle,
    at_least: u32,
) -> flexcore_app::projection::Generation {
    for _ in 0..500 {
        let status = projections.status_of("users").unwrap();
        if status.state == ProjectionState::Live && status.live.unwrap().number >= at_least {
            return status.live.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rebuild never swapped in");
}

/// The users projection with the next version number.
struct UsersNext;

impl Projection for UsersNext {
    fn name(&self) -> &str {
        "users"
    }
    fn version(&self) -> u32 {
        UsersProjection.version() + 1
    }
    fn tables(&self) -> Vec<&'static str> {
        UsersProjection.tables()
    }
    fn schema(&self) -> Vec<String> {
        UsersProjection.schema()
    }
    fn filter(&self) -> EventFilter {
        UsersProjection.filter()
    }
    fn apply(&self, event: &EventEnvelope, changes: &mut Changes) -> Result<()> {
        UsersProjection.apply(event, changes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_that_cannot_create_its_tables_can_be_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let broken = Arc::new(AtomicBool::new(false));
    let node = start(dir.path(), Arc::new(BreakableSchema(broken.clone()))).await;
    let (_, last) = create_users(&node, 5).await;

    broken.store(true, Ordering::SeqCst);
    let failed = node.projections.rebuild("users").await.unwrap_err();
    let status = node.projections.status_of("users").unwrap();
    assert_eq!(status.state, ProjectionState::Live, "{status:?}");
    assert!(status.building.is_none(), "{status:?}");
    // Not "already being rebuilt": the failed attempt left nothing behind.
    let again = node.projections.rebuild("users").await.unwrap_err();
    assert_eq!(again.kind(), failed.kind(), "{again}");
    assert_ne!(again.kind(), ErrorKind::Conflict, "{again}");

    broken.store(false, Ordering::SeqCst);
    let generation = node.projections.rebuild("users").await.unwrap();
    assert_eq!(generation.number, 2);
    wait_live(&node.projections, 2).await;
    let page = node
        .ask("list_users", json!({"min_position": last}))
        .await
        .unwrap();
    assert_eq!(page["total"], 5);
    node.stop().await;
}

/// The users projection, whose table creation fails while the flag is set.
struct BreakableSchema(Arc<AtomicBool>);

impl Projection for BreakableSchema {
    fn name(&self) -> &str {
        "users"
    }
    fn version(&self) -> u32 {
        UsersProjection.version()
    }
    fn tables(&self) -> Vec<&'static str> {
        UsersProjection.tables()
    }
    fn schema(&self) -> Vec<String> {
        if self.0.load(Ordering::SeqCst) {
            vec!["CREATE TABLE {users} (".into()]
        } else {
            UsersProjection.schema()
        }
    }
    fn filter(&self) -> EventFilter {
        UsersProjection.filter()
    }
    fn apply(&self, event: &EventEnvelope, changes: &mut Changes) -> Result<()> {
        UsersProjection.apply(event, changes)
    }
}
