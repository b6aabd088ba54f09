//! PostgreSQL read models: the shared read-model conformance suite (each test in a fresh
//! schema) and PostgreSQL's own types. (The sample's `users` projection end to end is the
//! projection conformance suite, in `projections.rs`.)

mod common;

use std::sync::Arc;

use flexcore_app::ErrorKind;
use flexcore_app::durable::CheckpointStore;
use flexcore_app::projection::{ReadModelStore, SqlStatement, SqlValue};
use flexcore_store_postgres::PostgresReadModels;
use flexcore_test_support::readmodel_conformance::ReadModelFixture;
use flexcore_test_support::readmodel_conformance_suite;

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
