//! The read-model store conformance suite: the same test functions run against every
//! [`ReadModelStore`] backend (SQLite, PostgreSQL).
//!
//! A backend's `tests/` file calls
//! [`readmodel_conformance_suite!`](crate::readmodel_conformance_suite) with an async factory
//! returning `Option<ReadModelFixture>` (`None` skips, e.g. when PostgreSQL is down outside CI).
//! Every test gets a fresh store, so table and consumer names may repeat across tests.
//!
//! The SQL here is the portable dialect projections write: `$n` parameters, `BIGINT`,
//! `DOUBLE PRECISION` and `TEXT` columns, `ON CONFLICT … DO NOTHING`, `LIKE … ESCAPE '\'`,
//! `LIMIT $n OFFSET $m`. Parameters are always used where their type is clear from the
//! statement (a column, a comparison, `LIMIT`), never bare in a select list.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use flexcore_app::durable::{DeadLetter, ParkReason};
use flexcore_app::projection::{
    Generation, ProjectionRecord, ReadModelStore, SqlStatement, SqlValue,
};
use flexcore_app::{ErrorKind, Result};
use flexcore_domain::{EventId, StreamId};
use time::OffsetDateTime;

/// A read-model store under test and whatever keeps its resources alive (a temp dir, a schema
/// to drop).
pub struct ReadModelFixture {
    /// The store.
    pub store: Arc<dyn ReadModelStore>,
    /// Dropped after the test; cleans up.
    pub guard: Box<dyn Any + Send>,
}

impl ReadModelFixture {
    /// A fixture with a cleanup guard.
    pub fn with_guard(store: Arc<dyn ReadModelStore>, guard: impl Any + Send) -> Self {
        Self {
            store,
            guard: Box::new(guard),
        }
    }
}

/// Generates one `#[tokio::test]` per read-model conformance test, each with a fresh store
/// from `$factory` (an `async fn() -> Option<ReadModelFixture>`).
#[macro_export]
macro_rules! readmodel_conformance_suite {
    ($factory:path) => {
        $crate::readmodel_conformance_suite!(@each $factory;
            checkpoints_load_save_and_reset,
            checkpoints_never_move_backwards,
            commit_applies_statements_and_moves_the_checkpoint,
            a_failing_statement_applies_nothing,
            commit_is_fenced_by_the_expected_checkpoint,
            racing_commits_have_exactly_one_winner,
            values_round_trip_with_their_types,
            parameters_repeat_and_come_in_any_order,
            like_escapes_wildcards_and_limit_offset_page,
            create_tables_is_atomic_and_drop_tables_ignores_missing,
            projection_records_round_trip,
            dead_letters_are_parked_updated_listed_and_removed,
            large_batches_commit_in_one_transaction,
        );
    };
    (@each $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(fixture) = $factory().await else { return };
                $crate::readmodel_conformance::$name(::std::sync::Arc::clone(&fixture.store))
                    .await;
                drop(fixture);
            }
        )*
    };
}

fn statement(sql: &str, params: Vec<SqlValue>) -> SqlStatement {
    SqlStatement {
        sql: sql.to_owned(),
        params,
    }
}

fn text(value: &str) -> SqlValue {
    SqlValue::Text(value.to_owned())
}

async fn create(store: &dyn ReadModelStore, ddl: &[&str]) {
    store
        .create_tables(ddl.iter().map(|s| (*s).to_owned()).collect())
        .await
        .expect("create tables");
}

async fn rows(store: &dyn ReadModelStore, sql: &str, params: Vec<SqlValue>) -> Vec<Vec<SqlValue>> {
    store
        .query(sql.to_owned(), params)
        .await
        .unwrap_or_else(|e| panic!("query {sql}: {e}"))
}

async fn count(store: &dyn ReadModelStore, table: &str) -> i64 {
    let all = rows(store, &format!("SELECT COUNT(*) FROM {table}"), Vec::new()).await;
    match all.as_slice() {
        [row] => match row.as_slice() {
            [SqlValue::Integer(n)] => *n,
            other => panic!("COUNT(*) must come back as one Integer, got {other:?}"),
        },
        other => panic!("COUNT(*) must return one row, got {other:?}"),
    }
}

fn assert_fenced(result: Result<()>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Contended, "{what}: {e}"),
        Ok(()) => panic!("{what}: expected the commit to be fenced, it succeeded"),
    }
}

/// Checkpoints start absent, are saved and reset per consumer; names are stored literally.
pub async fn checkpoints_load_save_and_reset(store: Arc<dyn ReadModelStore>) {
    let names = ["projection:users:1", "mailer", "o'neil \"quoted\" ✓"];
    for name in names {
        assert_eq!(store.load_checkpoint(name).await.unwrap(), None, "{name}");
    }
    store.save_checkpoint(names[0], 0).await.unwrap();
    store.save_checkpoint(names[1], 42).await.unwrap();
    store
        .save_checkpoint(names[2], u64::from(u32::MAX) * 4)
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint(names[0]).await.unwrap(), Some(0));
    assert_eq!(store.load_checkpoint(names[1]).await.unwrap(), Some(42));
    assert_eq!(
        store.load_checkpoint(names[2]).await.unwrap(),
        Some(u64::from(u32::MAX) * 4)
    );

    store.reset_checkpoint(names[1]).await.unwrap();
    assert_eq!(store.load_checkpoint(names[1]).await.unwrap(), None);
    assert_eq!(
        store.load_checkpoint(names[0]).await.unwrap(),
        Some(0),
        "a reset touches one consumer only"
    );
    // Resetting twice, or a consumer that never saved, is fine.
    store.reset_checkpoint(names[1]).await.unwrap();
    store.reset_checkpoint("never-saved").await.unwrap();
    // After a reset the consumer starts over: a lower position is accepted again.
    store.save_checkpoint(names[1], 7).await.unwrap();
    assert_eq!(store.load_checkpoint(names[1]).await.unwrap(), Some(7));
}

/// `save_checkpoint` ignores positions below the stored one.
pub async fn checkpoints_never_move_backwards(store: Arc<dyn ReadModelStore>) {
    store.save_checkpoint("c", 10).await.unwrap();
    store.save_checkpoint("c", 3).await.unwrap();
    assert_eq!(store.load_checkpoint("c").await.unwrap(), Some(10));
    store.save_checkpoint("c", 10).await.unwrap();
    assert_eq!(store.load_checkpoint("c").await.unwrap(), Some(10));
    store.save_checkpoint("c", 11).await.unwrap();
    assert_eq!(store.load_checkpoint("c").await.unwrap(), Some(11));
    store.save_checkpoint("c", 0).await.unwrap();
    assert_eq!(store.load_checkpoint("c").await.unwrap(), Some(11));
}

/// A commit runs its statements and moves the checkpoint; the checkpoint is the one
/// `load_checkpoint` and `save_checkpoint` see.
pub async fn commit_applies_statements_and_moves_the_checkpoint(store: Arc<dyn ReadModelStore>) {
    create(
        &*store,
        &["CREATE TABLE rm_items_1 (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"],
    )
    .await;
    let insert = "INSERT INTO rm_items_1 (id, name) VALUES ($1, $2)";
    store
        .commit(
            "projection:items:1",
            None,
            3,
            vec![
                statement(insert, vec![SqlValue::Integer(1), text("one")]),
                statement(insert, vec![SqlValue::Integer(2), text("two")]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("projection:items:1").await.unwrap(),
        Some(3)
    );
    assert_eq!(count(&*store, "rm_items_1").await, 2);

    // A commit with no statements only moves the checkpoint (a batch of filtered-out events).
    store
        .commit("projection:items:1", Some(3), 9, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint("projection:items:1").await.unwrap(),
        Some(9)
    );

    // Statements see the effects of earlier statements of the same batch.
    store
        .commit(
            "projection:items:1",
            Some(9),
            12,
            vec![
                statement(insert, vec![SqlValue::Integer(3), text("three")]),
                statement(
                    "UPDATE rm_items_1 SET name = $2 WHERE id = $1",
                    vec![SqlValue::Integer(3), text("drei")],
                ),
                statement(
                    "DELETE FROM rm_items_1 WHERE id = $1",
                    vec![SqlValue::Integer(1)],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(
            &*store,
            "SELECT id, name FROM rm_items_1 ORDER BY id",
            Vec::new()
        )
        .await,
        vec![
            vec![SqlValue::Integer(2), text("two")],
            vec![SqlValue::Integer(3), text("drei")],
        ]
    );

    // A checkpoint saved by `save_checkpoint` fences commits like any other.
    store.save_checkpoint("other", 5).await.unwrap();
    store.commit("other", Some(5), 6, Vec::new()).await.unwrap();
    assert_eq!(store.load_checkpoint("other").await.unwrap(), Some(6));
}

/// When one statement of a batch fails, the statements before it are rolled back and the
/// checkpoint stays where it was; the error is not a conflict (nobody else moved it).
pub async fn a_failing_statement_applies_nothing(store: Arc<dyn ReadModelStore>) {
    create(
        &*store,
        &["CREATE TABLE rm_items_1 (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"],
    )
    .await;
    let insert = "INSERT INTO rm_items_1 (id, name) VALUES ($1, $2)";
    store
        .commit(
            "p",
            None,
            1,
            vec![statement(insert, vec![SqlValue::Integer(1), text("one")])],
        )
        .await
        .unwrap();

    for failing in [
        // A constraint violation (duplicate primary key) after good statements.
        statement(insert, vec![SqlValue::Integer(1), text("again")]),
        // A NOT NULL violation.
        statement(insert, vec![SqlValue::Integer(9), SqlValue::Null]),
        // A table that does not exist.
        statement(
            "INSERT INTO rm_missing_1 (id) VALUES ($1)",
            vec![SqlValue::Integer(1)],
        ),
        // Not SQL.
        statement("INSERT INTO rm_items_1 VALUES VALUES", Vec::new()),
        // Fewer parameters than the statement has, and more (PostgreSQL refuses both; so
        // must every backend, or a projection tested on one fails on the other).
        statement(insert, vec![SqlValue::Integer(3)]),
        statement(
            insert,
            vec![SqlValue::Integer(3), text("three"), text("extra")],
        ),
    ] {
        let sql = failing.sql.clone();
        let result = store
            .commit(
                "p",
                Some(1),
                5,
                vec![
                    statement(insert, vec![SqlValue::Integer(2), text("two")]),
                    statement(
                        "UPDATE rm_items_1 SET name = $1 WHERE id = $2",
                        vec![text("changed"), SqlValue::Integer(1)],
                    ),
                    failing,
                ],
            )
            .await;
        let error = result.expect_err(&format!("the batch ending with `{sql}` must fail"));
        assert_ne!(error.kind(), ErrorKind::Contended, "{sql}: {error}");
        assert_eq!(store.load_checkpoint("p").await.unwrap(), Some(1), "{sql}");
        assert_eq!(
            rows(
                &*store,
                "SELECT id, name FROM rm_items_1 ORDER BY id",
                Vec::new()
            )
            .await,
            vec![vec![SqlValue::Integer(1), text("one")]],
            "{sql}: nothing of the failed batch is applied"
        );
    }

    // The store is still usable: the same batch without the failing statement commits.
    store
        .commit(
            "p",
            Some(1),
            5,
            vec![statement(insert, vec![SqlValue::Integer(2), text("two")])],
        )
        .await
        .unwrap();
    assert_eq!(count(&*store, "rm_items_1").await, 2);
}

/// A commit whose `from` is not the stored checkpoint applies nothing and is contended.
pub async fn commit_is_fenced_by_the_expected_checkpoint(store: Arc<dyn ReadModelStore>) {
    create(&*store, &["CREATE TABLE rm_log_1 (n BIGINT NOT NULL)"]).await;
    let insert = |n: i64| statement("INSERT INTO rm_log_1 (n) VALUES ($1)", vec![n.into()]);

    // No checkpoint yet: `Some(_)` is wrong.
    assert_fenced(
        store.commit("p", Some(0), 4, vec![insert(1)]).await,
        "from Some(0) without a checkpoint",
    );
    assert_eq!(store.load_checkpoint("p").await.unwrap(), None);
    assert_eq!(count(&*store, "rm_log_1").await, 0);

    store.commit("p", None, 5, vec![insert(1)]).await.unwrap();

    // A checkpoint exists: `None` is wrong, and so is any other position.
    assert_fenced(
        store.commit("p", None, 7, vec![insert(2)]).await,
        "from None with a checkpoint",
    );
    for wrong in [0, 4, 6, 100] {
        assert_fenced(
            store.commit("p", Some(wrong), 7, vec![insert(2)]).await,
            &format!("from Some({wrong}) when the checkpoint is 5"),
        );
    }
    assert_eq!(store.load_checkpoint("p").await.unwrap(), Some(5));
    assert_eq!(count(&*store, "rm_log_1").await, 1);

    // The checkpoint of another consumer is not this one's.
    store.commit("q", None, 100, Vec::new()).await.unwrap();
    assert_fenced(
        store.commit("p", Some(100), 101, vec![insert(3)]).await,
        "another consumer's position",
    );

    store
        .commit("p", Some(5), 7, vec![insert(2)])
        .await
        .unwrap();
    assert_eq!(store.load_checkpoint("p").await.unwrap(), Some(7));
    assert_eq!(count(&*store, "rm_log_1").await, 2);

    // After a reset the next commit starts from `None` again.
    store.reset_checkpoint("p").await.unwrap();
    assert_fenced(
        store.commit("p", Some(7), 8, vec![insert(3)]).await,
        "from the old position after a reset",
    );
    store.commit("p", None, 2, vec![insert(3)]).await.unwrap();
    assert_eq!(store.load_checkpoint("p").await.unwrap(), Some(2));
    assert_eq!(count(&*store, "rm_log_1").await, 3);
}

/// Runners racing from the same checkpoint: exactly one commit wins, the others conflict and
/// apply nothing, both for the first commit (`None`) and for a later one.
pub async fn racing_commits_have_exactly_one_winner(store: Arc<dyn ReadModelStore>) {
    const RACERS: i64 = 8;
    create(&*store, &["CREATE TABLE rm_race_1 (n BIGINT PRIMARY KEY)"]).await;
    let mut from = None;
    for round in 0..3_i64 {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
        let tasks: Vec<_> = (0..RACERS)
            .map(|racer| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                let n = round * 100 + racer;
                let to = u64::try_from(1000 * (round + 1) + racer).unwrap();
                tokio::spawn(async move {
                    let insert = statement("INSERT INTO rm_race_1 (n) VALUES ($1)", vec![n.into()]);
                    // A second statement widens the window between the fence and the commit.
                    let touch =
                        statement("UPDATE rm_race_1 SET n = n WHERE n = $1", vec![n.into()]);
                    barrier.wait().await;
                    (
                        to,
                        store.commit("race", from, to, vec![insert, touch]).await,
                    )
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (to, result) = task.await.unwrap();
            match result {
                Ok(()) => winners.push(to),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Contended, "round {round}: {e}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        assert_eq!(
            store.load_checkpoint("race").await.unwrap(),
            Some(winners[0])
        );
        assert_eq!(
            count(&*store, "rm_race_1").await,
            round + 1,
            "round {round}: only the winner's statements are applied"
        );
        from = Some(winners[0]);
    }
}

/// Values come back with the type they were stored with: `NULL`, 64-bit integers (the
/// extremes too), doubles, text with quotes and non-ASCII characters; `COUNT(*)` and `BIGINT`
/// columns are integers, `DOUBLE PRECISION` columns reals (an integer stored in one too),
/// `TEXT` columns text.
pub async fn values_round_trip_with_their_types(store: Arc<dyn ReadModelStore>) {
    create(
        &*store,
        &["CREATE TABLE rm_values_1 (
            id BIGINT PRIMARY KEY,
            i BIGINT,
            r DOUBLE PRECISION,
            t TEXT
        )"],
    )
    .await;
    let tricky = "O'Brien said \"hi\"; -- not a comment \\ back\\slash, tab\t, newline\n, \
                  日本語, emoji 🎉, accents éàü, $1 ?1 :x @y";
    let expected = vec![
        vec![
            SqlValue::Integer(1),
            SqlValue::Null,
            SqlValue::Null,
            SqlValue::Null,
        ],
        vec![
            SqlValue::Integer(2),
            SqlValue::Integer(i64::MAX),
            SqlValue::Real(1.5),
            text(tricky),
        ],
        vec![
            SqlValue::Integer(3),
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(-2.5e-300),
            text(""),
        ],
        vec![
            SqlValue::Integer(4),
            SqlValue::Integer(-1),
            SqlValue::Real(1e300),
            text("0"),
        ],
        vec![
            SqlValue::Integer(5),
            SqlValue::Integer(9_007_199_254_740_993), // not representable as a double
            SqlValue::Real(0.1),
            text("42"),
        ],
    ];
    let inserts = expected
        .iter()
        .map(|row| {
            statement(
                "INSERT INTO rm_values_1 (id, i, r, t) VALUES ($1, $2, $3, $4)",
                row.clone(),
            )
        })
        .collect();
    store.commit("values", None, 1, inserts).await.unwrap();

    let all = rows(
        &*store,
        "SELECT id, i, r, t FROM rm_values_1 ORDER BY id",
        Vec::new(),
    )
    .await;
    assert_eq!(all, expected);
    assert_eq!(count(&*store, "rm_values_1").await, 5);

    // Integers and text bound as parameters compare exactly.
    for (param, id) in [
        (SqlValue::Integer(i64::MAX), 2),
        (SqlValue::Integer(i64::MIN), 3),
        (SqlValue::Integer(9_007_199_254_740_993), 5),
    ] {
        assert_eq!(
            rows(
                &*store,
                "SELECT id FROM rm_values_1 WHERE i = $1",
                vec![param]
            )
            .await,
            vec![vec![SqlValue::Integer(id)]]
        );
    }
    assert_eq!(
        rows(
            &*store,
            "SELECT id FROM rm_values_1 WHERE t = $1",
            vec![text(tricky)]
        )
        .await,
        vec![vec![SqlValue::Integer(2)]]
    );
    assert_eq!(
        rows(
            &*store,
            "SELECT COUNT(*) FROM rm_values_1 WHERE i IS NULL AND r IS NULL",
            Vec::new()
        )
        .await,
        vec![vec![SqlValue::Integer(1)]]
    );
    assert_eq!(
        rows(
            &*store,
            "SELECT id FROM rm_values_1 WHERE r > $1 ORDER BY id",
            vec![SqlValue::Real(1.0)]
        )
        .await,
        vec![vec![SqlValue::Integer(2)], vec![SqlValue::Integer(4)]]
    );
    assert!(
        rows(
            &*store,
            "SELECT id FROM rm_values_1 WHERE id = $1",
            vec![SqlValue::Integer(99)]
        )
        .await
        .is_empty(),
        "no row, no error"
    );

    // NULL is bound to any column; an integer into a DOUBLE PRECISION column reads back real.
    store
        .commit(
            "values",
            Some(1),
            2,
            vec![statement(
                "UPDATE rm_values_1 SET t = $1, i = $2, r = $3 WHERE id = $4",
                vec![
                    SqlValue::Null,
                    SqlValue::Null,
                    SqlValue::Integer(3),
                    SqlValue::Integer(4),
                ],
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(
            &*store,
            "SELECT i, r, t FROM rm_values_1 WHERE id = $1",
            vec![4_i64.into()]
        )
        .await,
        vec![vec![SqlValue::Null, SqlValue::Real(3.0), SqlValue::Null]]
    );
}

/// `$n` may appear several times and in any order; `$10` is not `$1` followed by `0`.
pub async fn parameters_repeat_and_come_in_any_order(store: Arc<dyn ReadModelStore>) {
    create(
        &*store,
        &[
            "CREATE TABLE rm_params_1 (a TEXT, b BIGINT, c TEXT)",
            "CREATE TABLE rm_wide_1 (
                c1 BIGINT, c2 BIGINT, c3 BIGINT, c4 BIGINT, c5 BIGINT, c6 BIGINT,
                c7 BIGINT, c8 BIGINT, c9 BIGINT, c10 TEXT, c11 TEXT, c12 TEXT
            )",
        ],
    )
    .await;
    let wide: Vec<SqlValue> = (1..=9_i64)
        .map(SqlValue::Integer)
        .chain([text("ten"), text("eleven"), text("twelve")])
        .collect();
    store
        .commit(
            "params",
            None,
            1,
            vec![
                statement(
                    "INSERT INTO rm_params_1 (a, b, c) VALUES ($2, $1, $2)",
                    vec![SqlValue::Integer(7), text("x")],
                ),
                statement(
                    "INSERT INTO rm_params_1 (c, b, a) VALUES ($3, $2, $1)",
                    vec![text("a2"), SqlValue::Integer(8), text("c2")],
                ),
                statement(
                    "INSERT INTO rm_wide_1 (c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2, c1)
                     VALUES ($12, $11, $10, $9, $8, $7, $6, $5, $4, $3, $2, $1)",
                    wide.clone(),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(
            &*store,
            "SELECT a, b, c FROM rm_params_1 WHERE c = $2 AND b = $1 AND a = $2",
            vec![SqlValue::Integer(7), text("x")]
        )
        .await,
        vec![vec![text("x"), SqlValue::Integer(7), text("x")]]
    );
    assert_eq!(
        rows(
            &*store,
            "SELECT a, b, c FROM rm_params_1 WHERE b = $2 OR (a = $1 AND c = $1) ORDER BY b",
            vec![text("x"), SqlValue::Integer(8)]
        )
        .await,
        vec![
            vec![text("x"), SqlValue::Integer(7), text("x")],
            vec![text("a2"), SqlValue::Integer(8), text("c2")],
        ]
    );
    assert_eq!(
        rows(
            &*store,
            "SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 FROM rm_wide_1
             WHERE c10 = $10 AND c1 = $1 AND c2 = $2 AND c3 = $3 AND c4 = $4 AND c5 = $5
               AND c6 = $6 AND c7 = $7 AND c8 = $8 AND c9 = $9 AND c11 = $11 AND c12 = $12",
            wide.clone()
        )
        .await,
        vec![wide]
    );
}

/// `LIKE … ESCAPE '\'` matches `_`, `%` and `\` literally when escaped; `LIMIT $n OFFSET $m`
/// pages.
pub async fn like_escapes_wildcards_and_limit_offset_page(store: Arc<dyn ReadModelStore>) {
    create(&*store, &["CREATE TABLE rm_like_1 (email TEXT NOT NULL)"]).await;
    let emails = [
        "a_b@x.io",
        "axb@x.io",
        "100%@x.io",
        "1000@x.io",
        "back\\slash@x.io",
        "backxslash@x.io",
    ];
    store
        .commit(
            "like",
            None,
            1,
            emails
                .iter()
                .map(|e| statement("INSERT INTO rm_like_1 (email) VALUES ($1)", vec![text(e)]))
                .collect(),
        )
        .await
        .unwrap();
    let matching = |pattern: &'static str| {
        let store = Arc::clone(&store);
        async move {
            rows(
                &*store,
                "SELECT email FROM rm_like_1 WHERE email LIKE $1 ESCAPE '\\' ORDER BY email",
                vec![text(pattern)],
            )
            .await
            .into_iter()
            .map(|row| row[0].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(matching("%a\\_b%").await, ["a_b@x.io"]);
    assert_eq!(matching("%a_b%").await, ["a_b@x.io", "axb@x.io"]);
    assert_eq!(matching("100\\%%").await, ["100%@x.io"]);
    assert_eq!(matching("100%").await, ["100%@x.io", "1000@x.io"]);
    assert_eq!(matching("%k\\\\s%").await, ["back\\slash@x.io"]);
    assert!(matching("%\\%\\%%").await.is_empty());

    let page = |limit: i64, offset: i64| {
        let store = Arc::clone(&store);
        async move {
            rows(
                &*store,
                "SELECT email FROM rm_like_1 WHERE email LIKE $1 ESCAPE '\\'
                 ORDER BY email LIMIT $2 OFFSET $3",
                vec![text("%@x.io"), limit.into(), offset.into()],
            )
            .await
            .into_iter()
            .map(|row| row[0].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(2, 0).await, ["100%@x.io", "1000@x.io"]);
    assert_eq!(page(2, 2).await, ["a_b@x.io", "axb@x.io"]);
    assert_eq!(page(10, 5).await, ["backxslash@x.io"]);
    assert!(page(10, 6).await.is_empty());
}

/// `create_tables` runs its statements in one transaction; `drop_tables` drops what exists and
/// ignores the rest; a table dropped and re-created with other columns is queried afresh.
pub async fn create_tables_is_atomic_and_drop_tables_ignores_missing(
    store: Arc<dyn ReadModelStore>,
) {
    create(
        &*store,
        &[
            "CREATE TABLE rm_a_1 (x BIGINT NOT NULL)",
            "CREATE INDEX rm_a_1_by_x ON rm_a_1 (x)",
        ],
    )
    .await;
    store
        .commit(
            "a",
            None,
            1,
            vec![statement(
                "INSERT INTO rm_a_1 (x) VALUES ($1)",
                vec![5_i64.into()],
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&*store, "SELECT * FROM rm_a_1", Vec::new()).await,
        vec![vec![SqlValue::Integer(5)]]
    );

    // The second statement fails (the table exists): the first is rolled back.
    let failed = store
        .create_tables(vec![
            "CREATE TABLE rm_b_1 (x BIGINT)".into(),
            "CREATE TABLE rm_a_1 (x BIGINT)".into(),
        ])
        .await;
    assert!(failed.is_err(), "creating an existing table fails");
    assert!(
        store
            .query("SELECT COUNT(*) FROM rm_b_1".into(), Vec::new())
            .await
            .is_err(),
        "rm_b_1 was rolled back with the failed batch"
    );

    store
        .drop_tables(vec!["rm_a_1".into(), "rm_missing_1".into()])
        .await
        .unwrap();
    assert!(
        store
            .query("SELECT COUNT(*) FROM rm_a_1".into(), Vec::new())
            .await
            .is_err(),
        "rm_a_1 is dropped"
    );
    store
        .drop_tables(vec!["rm_a_1".into(), "rm_b_1".into()])
        .await
        .unwrap();
    store.drop_tables(Vec::new()).await.unwrap();
    store.create_tables(Vec::new()).await.unwrap();

    // Same name, other columns (and its index name is free again).
    create(
        &*store,
        &[
            "CREATE TABLE rm_a_1 (y TEXT NOT NULL, z BIGINT)",
            "CREATE INDEX rm_a_1_by_x ON rm_a_1 (y)",
        ],
    )
    .await;
    store
        .commit(
            "a",
            Some(1),
            2,
            vec![statement(
                "INSERT INTO rm_a_1 (y, z) VALUES ($1, $2)",
                vec![text("new"), SqlValue::Null],
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        rows(&*store, "SELECT * FROM rm_a_1", Vec::new()).await,
        vec![vec![text("new"), SqlValue::Null]]
    );
}

/// Projection records are saved (insert or replace by name) and loaded back.
pub async fn projection_records_round_trip(store: Arc<dyn ReadModelStore>) {
    assert!(store.load_projections().await.unwrap().is_empty());
    let building = ProjectionRecord {
        name: "users".into(),
        live: None,
        building: Some(Generation {
            number: 1,
            version: 3,
        }),
    };
    store.save_projection(&building).await.unwrap();
    assert_eq!(store.load_projections().await.unwrap(), vec![building]);

    let live = ProjectionRecord {
        name: "users".into(),
        live: Some(Generation {
            number: 1,
            version: 3,
        }),
        building: None,
    };
    let rebuilding = ProjectionRecord {
        name: "orders".into(),
        live: Some(Generation {
            number: 4,
            version: 1,
        }),
        building: Some(Generation {
            number: u32::MAX,
            version: u32::MAX,
        }),
    };
    store.save_projection(&live).await.unwrap();
    store.save_projection(&rebuilding).await.unwrap();
    let mut all = store.load_projections().await.unwrap();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(all, vec![rebuilding, live]);
}

fn letter(consumer: &str, position: u64, reason: ParkReason) -> DeadLetter {
    // Millisecond precision: every backend keeps at least that much.
    let now = OffsetDateTime::now_utc();
    let parked_at = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap();
    DeadLetter {
        consumer: consumer.to_owned(),
        global_position: position,
        stream_id: StreamId::new(format!("order-{position}")).unwrap(),
        event_id: EventId::new(),
        event_type: "order.placed".into(),
        reason,
        parked_at,
    }
}

fn failed(attempts: u32, error: &str) -> ParkReason {
    ParkReason::Failed {
        attempts,
        error: error.to_owned(),
    }
}

/// Dead letters are kept per consumer in position order, re-parking updates a letter, and
/// removal reports whether there was one.
pub async fn dead_letters_are_parked_updated_listed_and_removed(store: Arc<dyn ReadModelStore>) {
    assert!(store.dead_letters("mailer").await.unwrap().is_empty());
    store.park(&[]).await.unwrap();

    let nine = letter("mailer", 9, ParkReason::Waiting);
    let two = letter("mailer", 2, failed(5, "smtp: 'connection refused' — 日本"));
    let five = letter("mailer", 5, ParkReason::Waiting);
    store
        .park(&[nine.clone(), two.clone(), five.clone()])
        .await
        .unwrap();
    // Another consumer may park the same position.
    let other = letter("indexer", 5, failed(1, "boom"));
    store.park(std::slice::from_ref(&other)).await.unwrap();

    assert_eq!(
        store.dead_letters("mailer").await.unwrap(),
        vec![two.clone(), five.clone(), nine.clone()]
    );
    assert_eq!(
        store.dead_letters("indexer").await.unwrap(),
        vec![other.clone()]
    );

    // Parking again at the same position updates the letter (waiting → failed).
    let five_failed = DeadLetter {
        reason: failed(3, "timeout"),
        ..letter("mailer", 5, ParkReason::Waiting)
    };
    store
        .park(std::slice::from_ref(&five_failed))
        .await
        .unwrap();
    assert_eq!(
        store.dead_letters("mailer").await.unwrap(),
        vec![two.clone(), five_failed.clone(), nine.clone()]
    );

    assert!(store.remove_dead_letter("mailer", 2).await.unwrap());
    assert!(!store.remove_dead_letter("mailer", 2).await.unwrap());
    assert!(!store.remove_dead_letter("nobody", 5).await.unwrap());
    assert!(!store.remove_dead_letter("mailer", 6).await.unwrap());
    assert_eq!(
        store.dead_letters("mailer").await.unwrap(),
        vec![five_failed.clone(), nine]
    );
    assert_eq!(
        store.dead_letters("indexer").await.unwrap(),
        vec![other],
        "consumers are isolated"
    );

    // A large position and a large attempt count survive.
    let far = letter("mailer", u64::from(u32::MAX) * 1000, failed(u32::MAX, ""));
    store.park(std::slice::from_ref(&far)).await.unwrap();
    assert_eq!(
        store.dead_letters("mailer").await.unwrap().last(),
        Some(&far)
    );
}

/// A batch of a few thousand statements (a page of events) commits in one transaction,
/// within a few seconds even on a small machine.
pub async fn large_batches_commit_in_one_transaction(store: Arc<dyn ReadModelStore>) {
    create(
        &*store,
        &["CREATE TABLE rm_bulk_1 (
            id BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            version BIGINT NOT NULL
        )"],
    )
    .await;
    let mut statements = Vec::new();
    for id in 0..1500_i64 {
        statements.push(statement(
            "INSERT INTO rm_bulk_1 (id, name, version) VALUES ($1, $2, 0)
             ON CONFLICT (id) DO NOTHING",
            vec![id.into(), text(&format!("item {id}"))],
        ));
        if id % 3 == 0 {
            statements.push(statement(
                "UPDATE rm_bulk_1 SET version = version + 1, name = $2 WHERE id = $1",
                vec![id.into(), text(&format!("item {id} v1"))],
            ));
        }
    }
    let started = Instant::now();
    store
        .commit("bulk", None, 2000, statements.clone())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "committed {} statements in {} ms",
        statements.len(),
        elapsed.as_millis()
    );
    assert_eq!(count(&*store, "rm_bulk_1").await, 1500);
    assert_eq!(
        rows(
            &*store,
            "SELECT COUNT(*) FROM rm_bulk_1 WHERE version = $1",
            vec![1_i64.into()]
        )
        .await,
        vec![vec![SqlValue::Integer(500)]]
    );
    // Replaying the same batch from a stale position is fenced off entirely.
    assert_fenced(
        store.commit("bulk", None, 2000, statements).await,
        "replaying a committed batch",
    );
    assert_eq!(
        rows(
            &*store,
            "SELECT COUNT(*) FROM rm_bulk_1 WHERE version = $1",
            vec![2_i64.into()]
        )
        .await,
        vec![vec![SqlValue::Integer(0)]]
    );
}
