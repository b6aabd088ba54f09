//! FlexCore's embedded default event store: SQLite in WAL mode.
//!
//! * **One writer thread** owns the only write connection. Appends queue up while it commits;
//!   it then takes everything queued (up to a limit) and writes it in one transaction and one
//!   fsync — group commit — while the shared planner gives every request its own expectation
//!   check and its own result.
//! * **Durable by default**: an append is acknowledged only after the WAL is flushed to disk
//!   (`fdatasync`), exactly what `synchronous=FULL` guarantees — but pipelined: a syncer thread
//!   flushes batch N while the writer already writes batch N+1, and readers see only flushed
//!   events. An acknowledged append survives a crash or power loss.
//! * **Readers** use a small pool of read-only connections on blocking threads; WAL lets them
//!   read while the writer writes. Positions are assigned by the single writer in commit order,
//!   so the global log has no commit-order race here.
//! * **Checkpoints off the commit path**: a checkpointer thread copies the WAL into the database
//!   file as it grows (about every 250 pages), so the writer no longer stops for SQLite's own
//!   checkpoint of 1,000 pages (the read-model database does the same).
//! * One process per database file, enforced by an exclusive lock on `<file>.lock`.
//! * **GDPR key table** (`subject_keys`): the wrapped per-subject data keys of crypto-shredding,
//!   written on a connection of their own ([`SqliteKeyTable`]), rarely (a subject's first
//!   personal event, a `forget`).

mod checkpointer;
mod error;
mod keys;
mod reader;
mod readmodel;
mod schema;
mod syncer;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use flexcore_app::store::plan::{GroupCommitCounters, GroupCommitStats};
use flexcore_app::store::{
    AllSlice, AppendResult, EventAppender, EventReader, ReadAll, ReadStream, Snapshot,
    SnapshotStore, StreamAdmin, StreamSlice, StreamWrite,
};
use flexcore_domain::{ExpectedVersion, StreamId};
use tokio::sync::{mpsc, oneshot, watch};

pub use error::SqliteError;
pub use keys::SqliteKeyTable;
pub use readmodel::SqliteReadModels;

use reader::ReaderPool;
use writer::{Job, Writer, WriterSetup};

/// How durable a commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged append survives power loss (the default).
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, not a power loss.
    Normal,
}

/// Settings of the SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; its directory is created if missing.
    pub path: PathBuf,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// The most events one group commit takes (a single larger append still goes alone).
    pub max_batch_events: usize,
    /// Coalesce concurrent appends into one transaction and flush the WAL of batch N while
    /// batch N+1 is written (the default). `false` is the classic baseline: one transaction and
    /// one fsync per append, in turn.
    pub group_commit: bool,
    /// Read connections.
    pub readers: usize,
}

impl SqliteConfig {
    /// Defaults for a database file: durable, pipelined group commit up to 4096 events, 4
    /// readers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::Full,
            max_batch_events: 4096,
            group_commit: true,
            readers: 4,
        }
    }

    /// Parses `sqlite://path/to/file.db` (also `sqlite:path`), as in `FLEXCORE_STORE_URL`.
    pub fn from_url(url: &str) -> Result<Self, SqliteError> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| SqliteError::Config(format!("'{url}' is not a sqlite:// URL")))?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(SqliteError::Config(format!("'{url}' names no file")));
        }
        Ok(Self::new(path))
    }
}

/// The SQLite event store. Cheap to share behind an `Arc`; dropping the last handle stops the
/// writer thread after it finishes what is queued.
pub struct SqliteStore {
    jobs: mpsc::UnboundedSender<Job>,
    readers: Arc<ReaderPool>,
    head: Arc<AtomicU64>,
    head_watch: watch::Receiver<u64>,
    path: PathBuf,
    group_commits: Arc<GroupCommitCounters>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub async fn open(config: SqliteConfig) -> Result<Self, SqliteError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| SqliteError::Config(format!("opening the store panicked: {e}")))?
    }

    fn open_blocking(config: SqliteConfig) -> Result<Self, SqliteError> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| SqliteError::Io(dir.to_path_buf(), e))?;
        }
        let lock = schema::lock_file(&config.path)?;
        let sqlite_syncs = config.synchronous == Synchronous::Full && !config.group_commit;
        let conn = schema::open_writer(&config.path, sqlite_syncs)?;
        schema::migrate(&conn)?;
        let head_value = schema::head_position(&conn)?;
        let head = Arc::new(AtomicU64::new(head_value));
        let (head_tx, head_watch) = watch::channel(head_value);
        let readers = Arc::new(ReaderPool::open(
            &config.path,
            config.readers.max(1),
            Arc::clone(&head),
        )?);
        let (jobs, queue) = mpsc::unbounded_channel();
        let wal = (config.synchronous == Synchronous::Full && config.group_commit).then(|| {
            let mut name = config.path.as_os_str().to_owned();
            name.push("-wal");
            PathBuf::from(name)
        });
        let checkpointer = checkpointer::Checkpointer::spawn(&config.path)?;
        let group_commits = Arc::new(GroupCommitCounters::default());
        Writer::spawn(
            conn,
            WriterSetup {
                checkpointer,
                lock,
                queue,
                head: head_value,
                durable: Arc::clone(&head),
                head_tx,
                wal,
                max_batch_events: if config.group_commit {
                    config.max_batch_events.max(1)
                } else {
                    1
                },
                group_commits: Arc::clone(&group_commits),
            },
        )?;
        Ok(Self {
            jobs,
            readers,
            head,
            head_watch,
            path: config.path,
            group_commits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GDPR key table of this database, on a connection of its own (see
    /// [`SqliteKeyTable`]).
    pub async fn key_table(&self) -> Result<SqliteKeyTable, SqliteError> {
        SqliteKeyTable::open(&self.path).await
    }

    /// How the appends were grouped into transactions so far.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.group_commits.stats()
    }

    /// The last durable global position (what readers see).
    pub fn head_position(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<T>) -> Job,
    ) -> flexcore_app::Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .map_err(|_| SqliteError::WriterGone)?;
        Ok(answer.await.map_err(|_| SqliteError::WriterGone)?)
    }
}

#[async_trait]
impl EventAppender for SqliteStore {
    async fn append_atomic(&self, writes: Vec<StreamWrite>) -> flexcore_app::Result<AppendResult> {
        let span = tracing::debug_span!(
            "store.append",
            backend = "sqlite",
            stream_id = %writes.first().map_or("", |w| w.stream_id.as_str()),
            streams = writes.len(),
        );
        let job = self.submit(|reply| Job::Append { writes, reply });
        tracing::Instrument::instrument(job, span).await?
    }
}

#[async_trait]
impl EventReader for SqliteStore {
    async fn read_stream(&self, request: ReadStream) -> flexcore_app::Result<StreamSlice> {
        Ok(self.readers.run(move |r| r.read_stream(&request)).await?)
    }

    async fn read_all(&self, request: ReadAll) -> flexcore_app::Result<AllSlice> {
        Ok(self.readers.run(move |r| r.read_all(&request)).await?)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.head_watch.clone()
    }

    async fn ping(&self) -> flexcore_app::Result<()> {
        Ok(self.readers.run(|r| r.ping()).await?)
    }
}

#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> flexcore_app::Result<()> {
        self.submit(|reply| Job::SaveSnapshot { snapshot, reply })
            .await?
    }

    async fn load_snapshot(&self, stream_id: &StreamId) -> flexcore_app::Result<Option<Snapshot>> {
        let stream_id = stream_id.clone();
        Ok(self
            .readers
            .run(move |r| r.load_snapshot(&stream_id))
            .await?)
    }
}

#[async_trait]
impl StreamAdmin for SqliteStore {
    async fn delete_stream(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
    ) -> flexcore_app::Result<()> {
        let stream_id = stream_id.clone();
        self.submit(|reply| Job::Delete {
            stream_id,
            expected,
            reply,
        })
        .await?
    }

    async fn truncate_before(
        &self,
        stream_id: &StreamId,
        version: u64,
    ) -> flexcore_app::Result<()> {
        let stream_id = stream_id.clone();
        self.submit(|reply| Job::Truncate {
            stream_id,
            version,
            reply,
        })
        .await?
    }
}
