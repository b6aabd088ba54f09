//! The store's settings.

use crate::PostgresError;

/// Settings of the PostgreSQL store. `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL, e.g. `postgres://user@host:5432/db` (`postgresql://` works too). TLS
    /// comes from libpq's parameters `sslmode=require|verify-ca|verify-full`, `sslrootcert`,
    /// `sslcert` and `sslkey` (see the crate docs).
    pub url: String,
    /// The schema every table and function lives in; created if missing. A lowercase SQL
    /// identifier: ASCII letters, digits and `_`, not starting with a digit, at most 63 bytes.
    pub schema: String,
    /// The most connections the store opens (appends and reads share them). Must exceed
    /// `committers`, so that reads always find a connection.
    pub pool_size: usize,
    /// How many group-commit transactions may run at once. More committers keep writers busy
    /// while one transaction waits for its fsync; appends to the same stream still serialise on
    /// that stream's row lock.
    pub committers: usize,
    /// The most events one group commit takes (a single larger append still goes alone).
    /// `1` disables coalescing: one transaction per append.
    pub max_batch_events: usize,
}

impl PostgresConfig {
    /// The default schema name.
    pub const DEFAULT_SCHEMA: &'static str = "flexcore";

    /// Defaults for a server URL: schema `flexcore`, 16 connections, 2 committers, group commits
    /// of up to 1000 events. Two committers measured best for 16 one-event writers on 2 cores:
    /// one fills its batch while the other waits for its commit; more only shrink the batches.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: Self::DEFAULT_SCHEMA.to_owned(),
            pool_size: 16,
            committers: 2,
            max_batch_events: 1000,
        }
    }

    /// The same settings in another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    pub(crate) fn validate(&self) -> Result<(), PostgresError> {
        crate::schema::check_identifier(&self.schema)?;
        if self.committers == 0 || self.max_batch_events == 0 {
            return Err(PostgresError::Config(
                "committers and max_batch_events must be at least 1".into(),
            ));
        }
        if self.pool_size <= self.committers {
            return Err(PostgresError::Config(format!(
                "pool_size ({}) must exceed committers ({}) so that reads find a connection",
                self.pool_size, self.committers
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_password(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("committers", &self.committers)
            .field("max_batch_events", &self.max_batch_events)
            .finish()
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl Default for PostgresConfig {
    /// A local server: `postgres://postgres@127.0.0.1:5432/flexcore`.
    fn default() -> Self {
        Self::new("postgres://postgres@127.0.0.1:5432/flexcore")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = PostgresConfig::default();
        assert_eq!(config.schema, "flexcore");
        config.validate().unwrap();
    }

    #[test]
    fn debug_hides_the_password() {
        let config = PostgresConfig::new("postgres://ann:s3cret@db:5432/app");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://ann:***@db:5432/app"), "{shown}");
        assert_eq!(
            redact_password("postgres://ann@db/app"),
            "postgres://ann@db/app"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = PostgresConfig::new("postgres://localhost/db");
        for schema in ["", "Upper", "1abc", "a-b", "a b", "x\"y", &"s".repeat(64)] {
            assert!(
                base.clone().with_schema(schema).validate().is_err(),
                "{schema}"
            );
        }
        let too_few = PostgresConfig {
            pool_size: 2,
            committers: 2,
            ..base.clone()
        };
        assert!(too_few.validate().is_err());
        let no_batch = PostgresConfig {
            max_batch_events: 0,
            ..base
        };
        assert!(no_batch.validate().is_err());
    }
}
