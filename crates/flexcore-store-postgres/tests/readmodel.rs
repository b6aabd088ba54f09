//! PostgreSQL read models: the shared read-model conformance suite (each test in a fresh
//! schema), PostgreSQL's own types, and the sample domain's `users` projection end to end
//! (queries, blue-green rebuild, restart, two nodes on one schema).

mod common;

use std::sync::Arc;
use std::time::Duration;

use flexcore_app::command::{Command, CommandBus, CommandContext, CommandRouter};
use flexcore_app::durable::CheckpointStore;
use flexcore_app::projection::{
    Changes, Generation, Projection, ProjectionState, Projections, ProjectionsHandle,
    ReadModelStore, SqlStatement, SqlValue,
};
use flexcore_app::query::{Query, QueryBus, QueryContext, QueryRouter};
use flexcore_app::repository::Repository;
use flexcore_app::store::EventFilter;
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::EventEnvelope;
use flexcore_sample_users::read_model::{UsersProjection, query_handlers};
use flexcore_store_postgres::{PostgresConfig, PostgresReadModels, PostgresStore};
use flexcore_test_support::readmodel_conformance::ReadModelFixture;
use flexcore_test_support::readmodel_conformance_suite;
use serde_json::{Value, json};
use tokio::sync::watch;

async fn postgres_read_models() -> Option<ReadModelFixture> {
    let (store, guard) = common::fresh_store().await?;
    let read_models = Arc::new(store.read_models());
    // The store goes first, then the schema.
    Some(ReadModelFixture::with_guard(read_models, (store, guard)))
}

readmodel_conformance_suite!(postgres_read_models);

fn statement(sql: &str, params: Vec<SqlValue>) -> SqlStatement {
    SqlStatement {
        sql: sql.to_owned(),
        params,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_types_convert_by_parameter_and_column_type() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    // A pool of its own, migrating the schema itself.
    let models = PostgresReadModels::connect(config.clone()).await.unwrap();
    assert_eq!(models.schema(), config.schema);
    models
        .create_tables(vec![
            "CREATE DOMAIN rm_email AS text CHECK (VALUE LIKE '%@%')".into(),
            "CREATE TABLE rm_types_1 (
                small INT2, medium INT4, big INT8, amount NUMERIC(30, 4), ratio REAL,
                flag BOOL, doc JSONB, plain JSON, id UUID, at TIMESTAMPTZ, short VARCHAR(10),
                email rm_email
            )"
            .into(),
        ])
        .await
        .unwrap();
    let id = "0190a6f1-7b3c-7d2e-8f00-0123456789ab";
    models
        .commit(
            "types",
            None,
            1,
            vec![statement(
                "INSERT INTO rm_types_1
                 (small, medium, big, amount, ratio, flag, doc, plain, id, at, short, email)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                vec![
                    SqlValue::Integer(-7),
                    SqlValue::Integer(70_000),
                    SqlValue::Integer(i64::MIN),
                    SqlValue::Real(12_345.678_9),
                    SqlValue::Integer(2),
                    SqlValue::Integer(1),
                    SqlValue::Text(r#"{"b": [1, 2], "a": "x"}"#.into()),
                    SqlValue::Text(r#"{"kept":  "as is"}"#.into()),
                    SqlValue::Text(id.into()),
                    SqlValue::Text("2024-05-06T07:08:09.123456Z".into()),
                    SqlValue::Text("ten chars!".into()),
                    SqlValue::Text("ann@example.com".into()),
                ],
            )],
        )
        .await
        .unwrap();
    let rows = models
        .query("SELECT * FROM rm_types_1".into(), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![
            SqlValue::Integer(-7),
            SqlValue::Integer(70_000),
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(12_345.678_9),
            SqlValue::Real(2.0),
            SqlValue::Integer(1),
            SqlValue::Text(r#"{"a": "x", "b": [1, 2]}"#.into()),
            SqlValue::Text(r#"{"kept":  "as is"}"#.into()),
            SqlValue::Text(id.into()),
            SqlValue::Text("2024-05-06T07:08:09.123456Z".into()),
            SqlValue::Text("ten chars!".into()),
            SqlValue::Text("ann@example.com".into()),
        ]]
    );

    // Aggregates: SUM of integers is an integer (numeric without fractional digits), AVG a real.
    let aggregates = models
        .query(
            "SELECT SUM(big + 1), AVG(medium), SUM(amount), COUNT(*) FROM rm_types_1 \
             WHERE flag = $1 AND amount > $2 AND id = $3 AND medium = $4"
                .into(),
            vec![
                SqlValue::Integer(1),
                SqlValue::Integer(10),
                SqlValue::Text(id.into()),
                SqlValue::Integer(70_000),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        aggregates,
        vec![vec![
            SqlValue::Integer(i64::MIN + 1),
            SqlValue::Real(70_000.0),
            SqlValue::Real(12_345.678_9),
            SqlValue::Integer(1),
        ]]
    );
    // information_schema names are a domain over varchar.
    let tables = models
        .query(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name LIKE $2"
                .into(),
            vec![
                SqlValue::Text(config.schema.clone()),
                SqlValue::Text("rm\\_%".into()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(tables, vec![vec![SqlValue::Text("rm_types_1".into())]]);

    // Mismatches fail with a message naming the value and the type, and apply nothing.
    for (sql, params, expected) in [
        (
            "INSERT INTO rm_types_1 (medium) VALUES ($1)",
            vec![SqlValue::Text("12".into())],
            "cannot bind text to a parameter of type int4",
        ),
        (
            "INSERT INTO rm_types_1 (medium) VALUES ($1)",
            vec![SqlValue::Integer(1 << 40)],
            "does not fit a parameter of type int4",
        ),
        (
            "INSERT INTO rm_types_1 (big) VALUES ($1)",
            vec![SqlValue::Real(1.5)],
            "cannot bind a real to a parameter of type int8",
        ),
        (
            "INSERT INTO rm_types_1 (id) VALUES ($1)",
            vec![SqlValue::Text("not-a-uuid".into())],
            "cannot bind 'not-a-uuid' to a uuid parameter",
        ),
        (
            "INSERT INTO rm_types_1 (email) VALUES ($1)",
            vec![SqlValue::Text("no at sign".into())],
            "rm_email",
        ),
    ] {
        let error = models
            .commit("types", Some(1), 2, vec![statement(sql, params)])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal, "{error}");
        assert!(error.to_string().contains(expected), "{error}");
    }
    assert_eq!(models.load_checkpoint("types").await.unwrap(), Some(1));
    let error = models
        .query("SELECT now()::date FROM rm_types_1".into(), Vec::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cast it"), "{error}");
}

/// Counts every user event it applies, one row per application: a second application of an
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

struct Node {
    commands: CommandRouter,
    queries: QueryRouter,
    projections: ProjectionsHandle,
    read_models: PostgresReadModels,
    stop: watch::Sender<bool>,
}

async fn start(config: &PostgresConfig) -> Node {
    let store = Arc::new(PostgresStore::connect(config.clone()).await.unwrap());
    let read_models = store.read_models();
    let (stop, shutdown) = watch::channel(false);
    let mut projections =
        Projections::new(Arc::new(read_models.clone()), store.clone()).with_page_size(50);
    projections.register(Arc::new(UsersProjection)).unwrap();
    projections.register(Arc::new(AppliedLog)).unwrap();
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
        read_models,
        stop,
    }
}

impl Node {
    /// Sends a command; returns the user id and the global position of its last event.
    async fn send(&self, command_type: &str, payload: Value) -> (String, u64) {
        let outcome = self
            .commands
            .send(
                &CommandContext::default(),
                &Command {
                    command_type: command_type.into(),
                    payload,
                },
            )
            .await
            .unwrap();
        let id = outcome
            .stream_id
            .as_str()
            .trim_start_matches("user-")
            .to_owned();
        (id, outcome.events.last().map_or(0, |e| e.global_position))
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

    async fn create_users(&self, from: usize, count: usize) -> (Vec<String>, u64) {
        let mut ids = Vec::new();
        let mut last = 0;
        for i in from..from + count {
            let (id, position) = self
                .send(
                    "create_user",
                    json!({"email": format!("user_{i}@example.com"), "profile": {"n": i}}),
                )
                .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_read_model_answers_rebuilds_blue_green_and_resumes_after_a_restart() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    let node = start(&config).await;
    let (ids, last) = node.create_users(0, 30).await;
    node.projections
        .wait_for("users", last, Duration::from_secs(10))
        .await
        .unwrap();

    // get_user and list_users from the read model.
    let page = node
        .ask("list_users", json!({"page": 2, "page_size": 5}))
        .await
        .unwrap();
    assert_eq!(page["total"], 30);
    assert_eq!(page["users"].as_array().unwrap().len(), 5);
    assert_eq!(page["users"][0]["email"], "user_5@example.com");
    assert_eq!(page["users"][0]["profile"], json!({"n": 5}));
    let filtered = node
        .ask("list_users", json!({"email_contains": "USER_1"}))
        .await
        .unwrap();
    assert_eq!(filtered["total"], 11, "user_1 and user_10..19: {filtered}");
    let literal = node
        .ask("list_users", json!({"email_contains": "%"}))
        .await
        .unwrap();
    assert_eq!(literal["total"], 0, "% is literal");
    let user = node
        .ask("get_user", json!({"user_id": ids[7]}))
        .await
        .unwrap();
    assert_eq!(user["email"], "user_7@example.com");
    assert_eq!(user["version"], 0);

    // Read-your-writes through min_position.
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
    let missing = node
        .ask("get_user", json!({"user_id": uuid::Uuid::now_v7()}))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // A blue-green rebuild: queries keep answering from the complete live model meanwhile.
    let before = node.projections.status_of("users").unwrap();
    assert_eq!(before.live.unwrap().number, 1);
    let generation = node.projections.rebuild("users").await.unwrap();
    assert_eq!(generation.number, 2);
    let mut answered_while_building = 0;
    loop {
        let status = node.projections.status_of("users").unwrap();
        let page = node
            .ask("list_users", json!({"page_size": 500}))
            .await
            .unwrap();
        assert_eq!(page["total"], 30, "{status:?}");
        assert_eq!(page["users"].as_array().unwrap().len(), 30);
        if status.state == ProjectionState::Live {
            assert_eq!(status.live.unwrap().number, 2);
            break;
        }
        answered_while_building += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!("{answered_while_building} list_users answered while generation 2 was built");
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
        if node
            .read_models
            .query("SELECT COUNT(*) FROM rm_users_1".into(), Vec::new())
            .await
            .is_err()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "rm_users_1 is dropped after the swap");

    // Restart: resumes from the checkpoints, applies nothing twice, does not rebuild.
    let (more, last) = node.create_users(30, 5).await;
    node.stop();
    let node = start(&config).await;
    let status = node.projections.status_of("users").unwrap();
    assert_eq!(status.state, ProjectionState::Live);
    assert_eq!(status.live.unwrap().number, 2, "no rebuild at restart");
    node.projections
        .wait_for("users", last, Duration::from_secs(10))
        .await
        .unwrap();
    node.projections
        .wait_for("applied", last, Duration::from_secs(10))
        .await
        .unwrap();
    let page = node.ask("list_users", json!({})).await.unwrap();
    assert_eq!(page["total"], 35);
    let user = node
        .ask("get_user", json!({"user_id": more[4]}))
        .await
        .unwrap();
    assert_eq!(user["email"], "user_34@example.com");
    // 35 user.created + 1 user.email_changed, each applied exactly once.
    assert_eq!(node.applied().await, (36, 36));
    let rows = node
        .read_models
        .query(
            "SELECT COUNT(*), SUM(version) FROM rm_users_2".into(),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![vec![SqlValue::Integer(35), SqlValue::Integer(1)]]
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_schema_never_apply_an_event_twice() {
    let Some((config, _guard)) = common::fresh_config() else {
        return;
    };
    let first = start(&config).await;
    wait_live(&first.projections, "applied", 1).await;
    wait_live(&first.projections, "users", 1).await;
    // The second node finds both projections live and follows the same generations: every
    // batch is raced, and the checkpoint fence lets exactly one node apply it.
    let second = start(&config).await;
    let a = {
        let first = &first;
        async move { first.create_users(0, 20).await }
    };
    let b = {
        let second = &second;
        async move { second.create_users(20, 20).await }
    };
    tokio::join!(a, b);
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
    // The users projection is raced the same way; it catches up on its own schedule.
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
