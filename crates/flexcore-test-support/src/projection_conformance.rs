//! The projection conformance suite: the sample's `users` read model end to end — queries,
//! read-your-writes, restart, blue-green rebuilds, two nodes on one store — run against every
//! backend (SQLite, PostgreSQL).
//!
//! A backend's `tests/` file calls
//! [`projection_conformance_suite!`](crate::projection_conformance_suite) with an async factory
//! returning `Option<ProjectionFixture>` (`None` skips, e.g. when PostgreSQL is down outside
//! CI). A fixture opens *nodes*: an event store and a read-model store over the same storage,
//! so a node opened after another stopped is a restart, and two open at once are two nodes.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::projection::{
    Changes, Generation, Projection, ProjectionState, Projections, ProjectionsHandle,
    ReadModelStore, SqlValue,
};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::repository::Repository;
use flexcore_app::store::{EventFilter, EventStore};
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::EventEnvelope;
use flexcore_sample_users::commands::command_handlers;
use flexcore_sample_users::read_model::{UsersProjection, query_handlers};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Opens one node's stores over the fixture's storage.
pub type OpenNode = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = (Arc<dyn EventStore>, Arc<dyn ReadModelStore>)> + Send>>
        + Send
        + Sync,
>;

/// A backend's storage for the suite, with what keeps it alive (a temp dir, a schema to drop).
pub struct ProjectionFixture {
    /// Opens a node: an event store and a read-model store over the shared storage.
    pub open: OpenNode,
    /// Whether two nodes may run at once (PostgreSQL; SQLite keeps one process per file).
    pub several_nodes: bool,
    /// Dropped after the test; cleans up.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per projection conformance test, each with a fresh fixture
/// from `$factory` (an `async fn() -> Option<ProjectionFixture>`).
#[macro_export]
macro_rules! projection_conformance_suite {
    ($factory:path) => {
        $crate::projection_conformance_suite!(@each $factory;
            users_are_queried_from_the_read_model_with_read_your_writes,
            a_restart_resumes_from_the_checkpoint_without_applying_twice,
            a_rebuild_is_blue_green_and_a_new_version_rebuilds_at_start,
            a_rebuild_that_cannot_create_its_tables_can_be_tried_again,
            two_nodes_on_one_store_never_apply_an_event_twice,
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(fixture) = $factory().await else { return };
                $crate::projection_conformance::$name(&fixture).await;
                drop(fixture);
            }
        )*
    };
}

/// One node: the sample's commands, its queries from the read model, the running projections.
struct Node {
    commands: CommandRouter,
    queries: QueryRouter,
    projections: ProjectionsHandle,
    read_models: Arc<dyn ReadModelStore>,
    stop: watch::Sender<bool>,
}

/// Starts a node with the `users` projection (or a variant of it) and [`AppliedLog`].
async fn start(fixture: &ProjectionFixture, users: Arc<dyn Projection>) -> Node {
    let (store, read_models) = (fixture.open)().await;
    let (stop, shutdown) = watch::channel(false);
    let mut projections =
        Projections::new(Arc::clone(&read_models), Arc::clone(&store) as Arc<_>).with_page_size(50);
    projections.register(users).unwrap();
    projections.register(Arc::new(AppliedLog)).unwrap();
    let projections = projections.start(shutdown).await.unwrap();
    let mut commands = CommandRouter::new();
    for (command_type, handler) in command_handlers(Repository::new(store)) {
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
        read_models,
        stop,
    }
}

impl Node {
    /// Sends a command; returns the user id and the global position of its last event.
    async fn send(&self, command_type: &str, payload: Value) -> (String, u64) {
        let command = Command {
            command_type: command_type.into(),
            payload,
        };
        let outcome = self
            .commands
            .send(&CommandContext::default(), &command)
            .await
            .unwrap();
        let id = outcome.stream_id.as_str().trim_start_matches("user-");
        (
            id.to_owned(),
            outcome.events.last().map_or(0, |e| e.global_position),
        )
    }

    async fn ask(&self, query_type: &str, params: Value) -> Result<Value> {
        let query = Query {
            query_type: query_type.into(),
            params,
        };
        self.queries.ask(&QueryContext::default(), &query).await
    }

    /// Creates users `from..from + count`; returns their ids and the last event's position.
    async fn create_users(&self, from: usize, count: usize) -> (Vec<String>, u64) {
        let mut ids = Vec::new();
        let mut last = 0;
        for i in from..from + count {
            let payload = json!({"email": format!("user_{i}@example.com"), "profile": {"n": i}});
            let (id, position) = self.send("create_user", payload).await;
            ids.push(id);
            last = position;
        }
        (ids, last)
    }

    /// `(rows, distinct positions)` of the live `applied` log.
    async fn applied(&self) -> (i64, i64) {
        let rows = self
            .projections
            .read_model("applied")
            .unwrap()
            .query(
                &QueryContext::default(),
                "SELECT COUNT(*), COUNT(DISTINCT position) FROM {applied}",
                Vec::new(),
            )
            .await
            .unwrap();
        (rows[0][0].as_i64().unwrap(), rows[0][1].as_i64().unwrap())
    }

    fn stop(self) {
        self.stop.send(true).unwrap();
    }
}

async fn wait_live(projections: &ProjectionsHandle, name: &str, at_least: u32) -> Generation {
    for _ in 0..1000 {
        let status = projections.status_of(name).unwrap();
        if status.state == ProjectionState::Live
            && status.live.is_some_and(|g| g.number >= at_least)
        {
            return status.live.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{name} never went live at generation {at_least}: {:?}",
        projections.status_of(name)
    );
}

/// `get_user` and `list_users` answer from the read model; `min_position` waits for the
/// read model; bad parameters are validation errors; a position far ahead times out.
pub async fn users_are_queried_from_the_read_model_with_read_your_writes(
    fixture: &ProjectionFixture,
) {
    let node = start(fixture, Arc::new(UsersProjection)).await;
    let (ids, last) = node.create_users(0, 12).await;

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
    assert_eq!(none["total"], 0, "% is literal");
    let user = node
        .ask("get_user", json!({"user_id": ids[7]}))
        .await
        .unwrap();
    assert_eq!(user["email"], "user_7@example.com");
    assert_eq!(user["version"], 0);

    let (_, moved) = node
        .send(
            "change_email",
            json!({"user_id": ids[3], "email": "New@Example.com"}),
        )
        .await;
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
        json!({"min_position": "soon"}),
    ] {
        let refused = node.ask("list_users", bad.clone()).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Validation, "{bad}");
    }
    // A position far ahead times out as unavailable instead of hanging.
    let waiting = node
        .projections
        .wait_for("users", moved + 1_000, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(waiting.kind(), ErrorKind::Unavailable);
    node.stop();
}

/// A restarted node resumes every projection from its checkpoint: no rebuild, nothing applied
/// twice, the events committed while it was down applied.
pub async fn a_restart_resumes_from_the_checkpoint_without_applying_twice(
    fixture: &ProjectionFixture,
) {
    let node = start(fixture, Arc::new(UsersProjection)).await;
    // The first generation is live before the node stops: a node stopped during its initial
    // build resumes that build at restart instead (not what this test is about).
    wait_live(&node.projections, "users", 1).await;
    let (ids, _) = node.create_users(0, 5).await;
    // Stopped right after the command: the read model may not have applied it yet.
    let (_, moved) = node
        .send(
            "change_email",
            json!({"user_id": ids[0], "email": "x@example.com"}),
        )
        .await;
    node.stop();

    let node = start(fixture, Arc::new(UsersProjection)).await;
    let status = node.projections.status_of("users").unwrap();
    assert_eq!(status.state, ProjectionState::Live, "{status:?}");
    assert_eq!(status.live.unwrap().number, 1, "no rebuild at restart");
    let (more, last) = node.create_users(5, 3).await;
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
    let page = node
        .ask("list_users", json!({"min_position": last}))
        .await
        .unwrap();
    assert_eq!(page["total"], 8);
    let user = node
        .ask("get_user", json!({"user_id": more[2]}))
        .await
        .unwrap();
    assert_eq!(user["email"], "user_7@example.com");
    node.projections
        .wait_for("applied", last, Duration::from_secs(10))
        .await
        .unwrap();
    // 8 user.created + 1 user.email_changed, each applied exactly once.
    assert_eq!(node.applied().await, (9, 9));
    node.stop();
}

/// A rebuild builds generation 2 beside the live one (queries keep answering from a complete
/// model), swaps it in, and drops the retired tables; a second rebuild while one runs is a
/// conflict; a changed projection version rebuilds the same way at start.
pub async fn a_rebuild_is_blue_green_and_a_new_version_rebuilds_at_start(
    fixture: &ProjectionFixture,
) {
    let node = start(fixture, Arc::new(UsersProjection)).await;
    let (ids, last) = node.create_users(0, 30).await;
    let (_, moved) = node
        .send(
            "change_email",
            json!({"user_id": ids[3], "email": "new@example.com"}),
        )
        .await;
    node.projections
        .wait_for("users", moved, Duration::from_secs(10))
        .await
        .unwrap();

    let generation = node.projections.rebuild("users").await.unwrap();
    assert_eq!(generation.number, 2);
    if let Err(e) = node.projections.rebuild("users").await {
        // Still rebuilding; else it already swapped in and a third generation started.
        assert_eq!(e.kind(), ErrorKind::Contended, "{e}");
    }
    let mut answered_while_building = 0;
    loop {
        let status = node.projections.status_of("users").unwrap();
        let page = node
            .ask(
                "list_users",
                json!({"page_size": 500, "min_position": last}),
            )
            .await
            .unwrap();
        assert_eq!(page["total"], 30, "{status:?}");
        assert_eq!(page["users"].as_array().unwrap().len(), 30);
        if status.state == ProjectionState::Live {
            assert!(status.live.unwrap().number >= 2, "{status:?}");
            break;
        }
        answered_while_building += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("{answered_while_building} list_users answered while generation 2 was built");
    let rebuilt = wait_live(&node.projections, "users", 2).await;
    let user = node
        .ask("get_user", json!({"user_id": ids[3]}))
        .await
        .unwrap();
    assert_eq!(
        (user["email"].as_str(), user["version"].as_i64()),
        (Some("new@example.com"), Some(1))
    );
    // The retired generation's table is dropped after a grace period.
    let mut dropped = false;
    for _ in 0..100 {
        let count = node
            .read_models
            .query("SELECT COUNT(*) FROM rm_users_1".into(), Vec::new())
            .await;
        if count.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "rm_users_1 is dropped after the swap");
    node.stop();

    // A new projection version: rebuilt beside the live one at start, then swapped in.
    let node = start(fixture, Arc::new(UsersNext)).await;
    let status = node.projections.status_of("users").unwrap();
    assert!(
        status.live.is_some(),
        "the old generation keeps serving: {status:?}"
    );
    let page = node.ask("list_users", json!({})).await.unwrap();
    assert_eq!(page["total"], 30);
    let live = wait_live(&node.projections, "users", rebuilt.number + 1).await;
    assert_eq!(live.version, UsersProjection.version() + 1);
    let rows = node
        .read_models
        .query(
            format!(
                "SELECT COUNT(*), SUM(version) FROM rm_users_{}",
                live.number
            ),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![SqlValue::Integer(30), SqlValue::Integer(1)]]
    );
    node.stop();
}

/// A rebuild whose tables cannot be created is abandoned (the live generation stays, nothing
/// is left "being rebuilt"), and can be tried again once the cause is gone.
pub async fn a_rebuild_that_cannot_create_its_tables_can_be_tried_again(
    fixture: &ProjectionFixture,
) {
    let broken = Arc::new(AtomicBool::new(false));
    let node = start(fixture, Arc::new(BreakableSchema(broken.clone()))).await;
    // A generation is live before the rebuilds: during the initial build there is none to keep.
    wait_live(&node.projections, "users", 1).await;
    let (_, last) = node.create_users(0, 5).await;

    broken.store(true, Ordering::SeqCst);
    let failed = node.projections.rebuild("users").await.unwrap_err();
    let status = node.projections.status_of("users").unwrap();
    assert_eq!(status.state, ProjectionState::Live, "{status:?}");
    assert!(status.building.is_none(), "{status:?}");
    // Not "already being rebuilt": the failed attempt left nothing behind.
    let again = node.projections.rebuild("users").await.unwrap_err();
    assert_eq!(again.kind(), failed.kind(), "{again}");
    assert_ne!(again.kind(), ErrorKind::Contended, "{again}");

    broken.store(false, Ordering::SeqCst);
    let generation = node.projections.rebuild("users").await.unwrap();
    assert_eq!(generation.number, 2);
    wait_live(&node.projections, "users", 2).await;
    let page = node
        .ask("list_users", json!({"min_position": last}))
        .await
        .unwrap();
    assert_eq!(page["total"], 5);
    node.stop();
}

/// Two nodes on one store follow the same generations; every batch is raced, and the
/// checkpoint fence lets exactly one of them apply it. (Backends that allow one node only skip
/// this test.)
pub async fn two_nodes_on_one_store_never_apply_an_event_twice(fixture: &ProjectionFixture) {
    if !fixture.several_nodes {
        eprintln!("SKIPPED: this backend runs one node per store");
        return;
    }
    let first = start(fixture, Arc::new(UsersProjection)).await;
    wait_live(&first.projections, "applied", 1).await;
    wait_live(&first.projections, "users", 1).await;
    let second = start(fixture, Arc::new(UsersProjection)).await;
    tokio::join!(first.create_users(0, 20), second.create_users(20, 20));
    // Poll the log itself: a node that lost a race backs off and does not learn the position
    // the other node committed until it commits again, so its `wait_for` is no measure here.
    let mut applied = first.applied().await;
    for _ in 0..600 {
        if applied.0 >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        applied = first.applied().await;
    }
    assert_eq!(applied, (40, 40), "every event applied exactly once");
    let mut total = Value::Null;
    for _ in 0..600 {
        total = first.ask("list_users", json!({})).await.unwrap()["total"].clone();
        if total == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total, 40);
    first.stop();
    second.stop();
}

/// Records every user event it applies, one row per application: a second application of an
/// event shows up as a duplicate position.
struct AppliedLog;

impl Projection for AppliedLog {
    fn name(&self) -> &str {
        "applied"
    }
    fn version(&self) -> u32 {
        1
    }
    fn tables(&self) -> Vec<&'static str> {
        vec!["applied"]
    }
    fn schema(&self) -> Vec<String> {
        vec!["CREATE TABLE {applied} (position BIGINT NOT NULL, event_type TEXT NOT NULL)".into()]
    }
    fn filter(&self) -> EventFilter {
        EventFilter {
            category: Some("user".into()),
            ..EventFilter::default()
        }
    }
    fn apply(&self, event: &EventEnvelope, changes: &mut Changes) -> Result<()> {
        changes.execute(
            "INSERT INTO {applied} (position, event_type) VALUES ($1, $2)",
            vec![
                event.global_position.into(),
                event.event_type.as_str().into(),
            ],
        );
        Ok(())
    }
}

/// The users projection with the next version number.
struct UsersNext;

impl Projection for UsersNext {
    fn name(&self) -> &str {
        UsersProjection.name()
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

/// The users projection, whose table creation fails while the flag is set.
struct BreakableSchema(Arc<AtomicBool>);

impl Projection for BreakableSchema {
    fn name(&self) -> &str {
        UsersProjection.name()
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
