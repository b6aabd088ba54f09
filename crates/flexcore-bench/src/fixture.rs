//! Fresh, empty stores for the cases of a bench: SQLite files in a temporary directory, or
//! schemas of one PostgreSQL database, all removed when the bench ends.
//!
//! Every bench takes its stores from [`TempStores`]: a case opens its store either directly
//! ([`TempStores::open`], with the commit tuning the case measures) or by URL
//! ([`FreshStore::url`], through `flexcore serve`'s own `open_store` or `run_with`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use flexcore::cli::ServeArgs;
use flexcore_app::durable::ConsumerStateStore;
use flexcore_app::store::EventStore;
use flexcore_store_postgres::{PostgresConfig, PostgresReadModels, PostgresStore};
use flexcore_store_sqlite::{SqliteConfig, SqliteReadModels, SqliteStore};
use serde::Serialize;

/// How a store opened directly commits concurrent appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Concurrent appends coalesced into one transaction (the default).
    GroupCommit,
    /// One transaction per append (the baseline).
    OneTxPerAppend,
}

/// The fresh stores of one bench run: `--store sqlite` (files in a temporary directory) or
/// `--store postgres://…` (one schema per store in that database).
///
/// Call [`close`](Self::close) at the end to drop the schemas; should a bench stop early
/// The HS256 secret of the bench's secured server (a bench fixture, never a deployment's).
pub const BENCH_JWT_SECRET: &str = "flexcore-bench secret, 32 bytes or more";

/// A token for the bench's secured server: subject `bench`, role `writer`, valid for a day.
pub fn bench_token() -> anyhow::Result<String> {
    Ok(flexcore_auth::mint_hs256(
        BENCH_JWT_SECRET.as_bytes(),
        "bench",
        &["writer".to_owned()],
        std::time::Duration::from_secs(24 * 3600),
        serde_json::Map::new(),
    )?)
}

/// (an error, a panic), dropping the fixture drops them too.
pub struct TempStores {
    /// Holds the SQLite files and the empty settings file; removed on drop.
    dir: tempfile::TempDir,
    /// An empty settings file, so a `./flexcore.toml` in the working directory is not read.
    settings_file: PathBuf,
    /// A settings file with authentication (JWT HS256) and one role that may `create_user`.
    secured_settings_file: PathBuf,
    postgres: Option<PostgresSchemas>,
    /// PostgreSQL only: parallel group-commit transactions of the stores opened directly.
    committers: Option<usize>,
    /// Stores handed out so far: each gets its own file or schema.
    handed_out: AtomicUsize,
}

/// The database the schemas are made in, and the schemas made so far.
struct PostgresSchemas {
    url: String,
    created: Mutex<Vec<String>>,
}

/// One store no case used before: where it lives, not yet opened.
#[derive(Debug, Clone)]
pub enum FreshStore {
    /// A SQLite file (not yet created).
    Sqlite {
        /// The file.
        path: PathBuf,
    },
    /// A PostgreSQL schema (created by the first open).
    Postgres {
        /// The database's URL, without `schema=`.
        url: String,
        /// The schema.
        schema: String,
    },
}

impl TempStores {
    /// The stores of `--store`: `sqlite` or a `postgres://` URL without `schema=` (the fixture
    /// names its own schemas).
    pub fn new(spec: &str) -> anyhow::Result<Self> {
        let postgres = match spec {
            "sqlite" => None,
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                anyhow::ensure!(
                    flexcore_app::service_url::ServiceUrl::parse(url)?
                        .take("schema")
                        .is_none(),
                    "the bench picks its own schemas: leave schema= out of the URL"
                );
                Some(PostgresSchemas {
                    url: url.to_owned(),
                    created: Mutex::default(),
                })
            }
            other => {
                anyhow::bail!("unknown bench store '{other}': use sqlite or a postgres:// URL")
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("flexcore-bench-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let settings_file = dir.path().join("flexcore.toml");
        std::fs::write(&settings_file, "").context("cannot write the bench's settings file")?;
        let secured_settings_file = dir.path().join("flexcore-secured.toml");
        std::fs::write(
            &secured_settings_file,
            format!(
                "[auth]\njwt_hs256_secret = \"{BENCH_JWT_SECRET}\"\n\n\
                 [roles.writer]\ncommands = [\"create_user\"]\nstreams_append = [\"user-*\"]\n"
            ),
        )
        .context("cannot write the bench's secured settings file")?;
        Ok(Self {
            dir,
            settings_file,
            secured_settings_file,
            postgres,
            committers: None,
            handed_out: AtomicUsize::new(0),
        })
    }

    /// Sets PostgreSQL's parallel group-commit transactions for [`open`](Self::open).
    pub fn with_committers(mut self, committers: Option<usize>) -> Self {
        self.committers = committers;
        self
    }

    /// `sqlite` or `postgres`, as the reports name the backend.
    pub fn backend_name(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The temporary directory, removed with the fixture (for other files a bench needs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A store no case used before; a PostgreSQL schema is remembered to be dropped.
    pub fn fresh(&self) -> FreshStore {
        let n = self.handed_out.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.postgres {
            None => FreshStore::Sqlite {
                path: self.dir.path().join(format!("store-{n}.db")),
            },
            Some(pg) => {
                let schema = format!("fc_bench_{}_{n}", std::process::id());
                pg.created
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(schema.clone());
                FreshStore::Postgres {
                    url: pg.url.clone(),
                    schema,
                }
            }
        }
    }

    /// Opens `store` directly with this commit mode, for `writers` concurrent writers (one
    /// transaction per append gives each writer its own PostgreSQL transaction in parallel).
    pub async fn open(
        &self,
        store: &FreshStore,
        mode: CommitMode,
        writers: usize,
    ) -> anyhow::Result<Arc<dyn EventStore>> {
        match store {
            FreshStore::Sqlite { path } => {
                let mut config = SqliteConfig::new(path);
                if mode == CommitMode::OneTxPerAppend {
                    config.group_commit = false;
                }
                Ok(Arc::new(SqliteStore::open(config).await?))
            }
            FreshStore::Postgres { url, schema } => {
                let mut config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
                if let Some(committers) = self.committers {
                    config.committers = committers;
                    config.pool_size = config.pool_size.max(committers + 4);
                }
                if mode == CommitMode::OneTxPerAppend {
                    // Every writer gets its own transaction, in parallel: the classic baseline.
                    config.max_batch_events = 1;
                    config.committers = writers.max(1);
                    config.pool_size = writers.max(1) + 4;
                }
                Ok(Arc::new(PostgresStore::connect(config).await?))
            }
        }
    }

    /// The flags `flexcore serve` would take to serve `store` with no configuration file.
    pub fn serve_args(&self, store: &FreshStore) -> ServeArgs {
        ServeArgs {
            config: Some(self.settings_file.clone()),
            store_url: Some(store.url()),
            ..ServeArgs::default()
        }
    }

    /// [`serve_args`](Self::serve_args) with authentication on: tokens signed with
    /// [`BENCH_JWT_SECRET`], and a `writer` role that may send `create_user`.
    pub fn secured_serve_args(&self, store: &FreshStore) -> ServeArgs {
        ServeArgs {
            config: Some(self.secured_settings_file.clone()),
            ..self.serve_args(store)
        }
    }

    /// Drops the PostgreSQL schemas handed out (the directory goes with the fixture).
    pub async fn close(self) {
        if let Some(pg) = &self.postgres {
            drop_schemas(&pg.url, take(&pg.created)).await;
        }
    }
}

impl Drop for TempStores {
    /// The backstop of [`close`](Self::close): a bench that stopped early still leaves no
    /// schema behind. Its own runtime on its own thread, as `drop` may run inside a runtime.
    fn drop(&mut self) {
        let Some(pg) = &self.postgres else { return };
        let schemas = take(&pg.created);
        if schemas.is_empty() {
            return;
        }
        let url = pg.url.clone();
        let dropping =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(drop_schemas(&url, schemas)),
                    Err(e) => eprintln!("cannot drop the bench schemas {schemas:?}: {e}"),
                }
            });
        let _ = dropping.join();
    }
}

fn take(schemas: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *schemas.lock().unwrap_or_else(|p| p.into_inner()))
}

async fn drop_schemas(url: &str, schemas: Vec<String>) {
    for schema in schemas {
        if let Err(e) = flexcore_store_postgres::drop_schema(url, &schema).await {
            eprintln!("cannot drop bench schema {schema}: {e}");
        }
    }
}

impl FreshStore {
    /// The store URL `flexcore serve` would open this store from (`--store-url`).
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { path } => format!("sqlite://{}", path.display()),
            Self::Postgres { url, schema } => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}schema={schema}")
            }
        }
    }

    /// The read-model store beside this store, where the server keeps consumer checkpoints.
    pub async fn open_read_models(&self) -> anyhow::Result<Arc<dyn ConsumerStateStore>> {
        Ok(match self {
            Self::Sqlite { path } => {
                Arc::new(SqliteReadModels::open(SqliteReadModels::path_for(path)).await?)
            }
            Self::Postgres { url, schema } => Arc::new(
                PostgresReadModels::connect(
                    PostgresConfig::new(url.clone()).with_schema(schema.clone()),
                )
                .await?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_handed_out_is_a_new_one() {
        let stores = TempStores::new("sqlite").unwrap();
        let (a, b) = (stores.fresh(), stores.fresh());
        assert_ne!(a.url(), b.url());
        assert!(a.url().starts_with("sqlite://"), "{}", a.url());
        assert!(a.url().contains(&stores.dir().display().to_string()));
        let dir = stores.dir().to_owned();
        drop(stores);
        assert!(!dir.exists(), "the directory goes with the fixture");
    }

    #[test]
    fn postgres_stores_are_schemas_the_fixture_names() {
        let stores = TempStores::new("postgres://u@h/db?sslmode=disable").unwrap();
        let FreshStore::Postgres { schema, .. } = stores.fresh() else {
            panic!("a schema")
        };
        assert!(schema.starts_with("fc_bench_"), "{schema}");
        assert!(
            stores
                .fresh()
                .url()
                .contains("?sslmode=disable&schema=fc_bench_")
        );
        // Nothing was created on this unreachable server: forget the names, drop nothing.
        if let Some(pg) = &stores.postgres {
            take(&pg.created);
        }
    }

    #[test]
    fn the_fixture_picks_the_schema_and_the_backend() {
        let error = TempStores::new("postgres://u@h/db?schema=mine")
            .err()
            .unwrap();
        assert!(error.to_string().contains("schema="), "{error}");
        let error = TempStores::new("mysql://u@h/db").err().unwrap();
        assert!(error.to_string().contains("unknown bench store"), "{error}");
    }
}
