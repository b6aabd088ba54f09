//! Connection settings, the hand-written migrations and schema clean-up.
//!
//! The schema name is the one piece of configuration that has to be written into SQL text
//! (identifiers cannot be bound as parameters), so it is checked to be a plain lowercase
//! identifier first and then always double-quoted.

use std::time::Duration;

use crate::tls::Endpoint;
use crate::{PostgresConfig, PostgresError};

/// The two-int advisory lock class that serialises migrations (`FLXC`); the second int is a
/// hash of the schema name, so stores in different schemas migrate independently.
const MIGRATION_LOCK_CLASS: i32 = 0x464C_5843;

/// Checks that `name` is a plain lowercase SQL identifier that needs no escaping anywhere.
pub(crate) fn check_identifier(name: &str) -> Result<(), PostgresError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(())
    } else {
        Err(PostgresError::Config(format!(
            "schema name '{name}' must be 1 to 63 lowercase ASCII letters, digits or '_', not \
             starting with a digit"
        )))
    }
}

/// The driver configuration: the URL plus `search_path` = the schema and durable commits.
pub(crate) fn endpoint(config: &PostgresConfig) -> Result<Endpoint, PostgresError> {
    let mut endpoint = Endpoint::parse(&config.url)?;
    let pg = &mut endpoint.pg;
    let mut options = pg.get_options().unwrap_or_default().to_owned();
    // The schema is a checked identifier, so it needs no quoting or escaping here.
    // `enable_seqscan=off`: every statement of the store is meant to be an index lookup or an
    // index range scan, and each is prepared once per pooled connection. Once PostgreSQL
    // switches a prepared statement to a generic plan, a plan chosen while the tables were small
    // (a fresh store) would scan them sequentially for as long as the connection lives; with
    // sequential scans priced out, the generic plans use the indexes whatever the table size,
    // and we keep generic plans (no planning per execution).
    options.push_str(&format!(
        " -c search_path={} -c synchronous_commit=on",
        config.schema
    ));
    pg.options(options.trim_start());
    if pg.get_application_name().is_none() {
        pg.application_name("flexcore");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    Ok(endpoint)
}

/// One schema change, applied at most once per schema.
struct Migration {
    version: i32,
    name: &'static str,
    /// SQL with `{schema}` (the quoted schema name) and `{ns}` (the advisory-lock namespace)
    /// placeholders.
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "streams, events and snapshots",
        sql: r#"
CREATE SEQUENCE {schema}.events_position_seq AS bigint MINVALUE 1 START WITH 1 CACHE 1 NO CYCLE;

CREATE TABLE {schema}.streams (
    stream_id       text PRIMARY KEY,
    last_version    bigint,
    deleted         boolean NOT NULL DEFAULT false,
    truncate_before bigint NOT NULL DEFAULT 0
);

CREATE TABLE {schema}.events (
    position       bigint PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL,
    category       text NOT NULL,
    event_type     text NOT NULL,
    schema_version integer NOT NULL,
    data           jsonb NOT NULL,
    metadata       jsonb NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);

CREATE INDEX events_category_position ON {schema}.events (category, position);

-- `json`, not `jsonb`: a snapshot is an opaque document handed back exactly as it was saved.
CREATE TABLE {schema}.snapshots (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL,
    state     json NOT NULL,
    saved_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    },
    Migration {
        version: 2,
        name: "commit-order watermark: flexcore_reserve and flexcore_watermark",
        sql: r#"
-- Reserves n contiguous positions for the calling transaction and marks them in flight until
-- it ends: a transaction-level advisory lock keyed (ns << 48) | first (pg_locks shows it with
-- objsubid = 1). The session-level "gate" (ns, 0) makes taking the numbers and the mark one
-- atomic step for readers; it is held for the duration of this call only, never to commit.
CREATE FUNCTION {schema}.flexcore_reserve(n integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT AS $fn$
DECLARE
    first bigint;
BEGIN
    IF n < 1 THEN
        RAISE EXCEPTION 'flexcore_reserve: cannot reserve % positions', n;
    END IF;
    PERFORM pg_catalog.pg_advisory_lock({ns}, 0);
    first := pg_catalog.nextval('{schema}.events_position_seq');
    IF n > 1 THEN
        PERFORM pg_catalog.setval('{schema}.events_position_seq', first + n - 1);
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(({ns}::bigint << 48) | first);
    PERFORM pg_catalog.pg_advisory_unlock({ns}, 0);
    IF first + n > 281474976710656 THEN
        RAISE EXCEPTION 'flexcore_reserve: global positions exhausted (2^48)';
    END IF;
    RETURN first;
END
$fn$;

-- The highest position below which every transaction has ended: the last reserved position,
-- or one less than the first position of the oldest block still in flight. Rows at or below
-- it are final; a reader must read them in a LATER statement (a newer snapshot).
CREATE FUNCTION {schema}.flexcore_watermark() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    last      bigint;
    called    boolean;
    in_flight bigint;
BEGIN
    PERFORM pg_catalog.pg_advisory_lock_shared({ns}, 0);
    SELECT s.last_value, s.is_called INTO last, called FROM {schema}.events_position_seq s;
    SELECT min(((l.classid::bigint & 65535) << 32) | l.objid::bigint) INTO in_flight
      FROM pg_catalog.pg_locks l
     WHERE l.locktype = 'advisory'
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND l.objsubid = 1
       AND (l.classid::bigint >> 16) = {ns};
    PERFORM pg_catalog.pg_advisory_unlock_shared({ns}, 0);
    IF NOT called THEN
        last := last - 1;
    END IF;
    IF in_flight IS NULL THEN
        RETURN last;
    END IF;
    RETURN least(last, in_flight - 1);
END
$fn$;
"#,
    },
    Migration {
        version: 3,
        name: "read models: checkpoints, dead letters, projection records",
        sql: r#"
-- The position each consumer (durable subscription or projection generation) continues from.
CREATE TABLE {schema}.checkpoints (
    consumer text PRIMARY KEY,
    position bigint NOT NULL
);

-- Events a durable consumer parked: state 'failed' (with attempts and the last error) or
-- 'waiting' (behind an earlier parked event of the same stream).
CREATE TABLE {schema}.dead_letters (
    consumer        text NOT NULL,
    global_position bigint NOT NULL,
    stream_id       text NOT NULL,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    state           text NOT NULL CHECK (state IN ('failed', 'waiting')),
    attempts        bigint,
    error           text,
    parked_at       timestamptz NOT NULL,
    PRIMARY KEY (consumer, global_position)
);

-- Each projection's live and building generations (number and projection version).
CREATE TABLE {schema}.projections (
    name             text PRIMARY KEY,
    live_number      bigint,
    live_version     bigint,
    building_number  bigint,
    building_version bigint
);
"#,
    },
    Migration {
        version: 4,
        name: "gdpr: subject_keys",
        sql: r#"
-- GDPR crypto-shredding: one data key per subject, wrapped by the master key. Forgetting a
-- subject deletes its wrapped key and leaves the row as a tombstone (wrapped_key NULL), so no
-- new key is ever made for it.
CREATE TABLE {schema}.subject_keys (
    subject      text PRIMARY KEY,
    wrapped_key  bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
);
"#,
    },
];

/// Creates the schema and applies missing migrations, in one transaction under an advisory
/// lock, so that concurrent starts are safe.
pub(crate) async fn migrate(config: &PostgresConfig) -> Result<(), PostgresError> {
    let endpoint = endpoint(config)?;
    let mut client = endpoint.connect().await?;
    let schema = format!("\"{}\"", config.schema);
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK_CLASS, &name_hash(&config.schema)],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let oid: i64 = tx
        .query_one(
            "SELECT oid::bigint FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&config.schema],
        )
        .await?
        .get(0);
    let ns = lock_namespace(oid);
    for migration in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let sql = migration
            .sql
            .replace("{schema}", &schema)
            .replace("{ns}", &ns.to_string());
        tx.batch_execute(&sql).await?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            schema = %config.schema,
            version = migration.version,
            name = migration.name,
            "applied postgresql migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// The advisory-lock namespace of a schema: 15 bits (1..=32767), so that `ns << 48 | position`
/// stays a positive bigint. Advisory locks are per database, so schemas must not share one;
/// the schema's OID spreads them better than a hash of the name: schemas created around the same
/// time (e.g. by parallel tests) get nearby OIDs and therefore different namespaces.
fn lock_namespace(schema_oid: i64) -> i32 {
    i32::try_from(schema_oid.rem_euclid(32_767) + 1).expect("a value below 32768")
}

/// A stable 32-bit FNV-1a hash of a name, for the migration lock.
fn name_hash(name: &str) -> i32 {
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// Drops a store's schema and everything in it (for test clean-up). Waits at most ten seconds
/// for locks held by other sessions.
pub async fn drop_schema(url: &str, schema: &str) -> Result<(), PostgresError> {
    check_identifier(schema)?;
    let config = PostgresConfig::new(url).with_schema(schema);
    let client = endpoint(&config)?.connect().await?;
    client
        .batch_execute(&format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE;"
        ))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_fit_fifteen_bits_and_are_never_zero() {
        for oid in [0, 1, 32_766, 32_767, 32_768, 4_294_967_295] {
            let ns = lock_namespace(oid);
            assert!((1..=32_767).contains(&ns), "{oid} -> {ns}");
        }
        assert_ne!(lock_namespace(16_384), lock_namespace(16_385));
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("flexcore").is_ok());
        assert!(check_identifier("fc_test_0123abc").is_ok());
        assert!(check_identifier("_x").is_ok());
        for bad in ["", "9x", "Flex", "a.b", "a\"b", "a;b", "é"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn name_hash_is_stable() {
        assert_eq!(name_hash(""), 0x811c_9dc5_u32 as i32);
        assert_ne!(name_hash("a"), name_hash("b"));
    }
}
