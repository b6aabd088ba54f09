//! WAL checkpoints off the commit path.
//!
//! SQLite checkpoints a WAL database on the connection that commits, once the WAL holds 1,000
//! pages: that commit then copies every changed page into the database file and syncs it,
//! several milliseconds during which the event store's writer takes no appends and a
//! projection applies nothing. Those stalls were most of the store's p99 append latency.
//!
//! A checkpointer thread with its own connection runs a `PASSIVE` checkpoint every few tens of
//! milliseconds instead. `PASSIVE` never blocks the writer or the readers: it copies the frames
//! committed so far, syncing the WAL before and the database after exactly as an automatic
//! checkpoint does, so durability is unchanged. Each one has little to copy and to sync, and
//! the writer keeps committing meanwhile. SQLite's automatic checkpoint stays on as the
//! backstop: when it fires it finds almost every frame already copied, finishes the rest, and
//! lets the next commit start the WAL over, so the file stays small.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::SqliteError;

/// How often the checkpointer copies the WAL into the database file.
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// A running checkpointer thread; dropping it stops the thread after its current checkpoint.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to `path` (already in WAL mode) and starts checkpointing it every
    /// `every`.
    pub(crate) fn spawn(path: &Path, every: Duration) -> Result<Self, SqliteError> {
        let conn = Connection::open(path)?;
        // `PASSIVE` waits for no one, but opening the WAL index may meet a lock briefly.
        conn.pragma_update(None, "busy_timeout", 1000)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            // Linux keeps 15 characters of a thread name: short enough to tell apart in `top`.
            .name("sqlite-checkpt".into())
            .spawn(move || run(&conn, &path, &stopped, every))
            .map_err(|e| SqliteError::Io("checkpointer thread".into(), e))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Checkpoints every `every` until the owner is dropped. A failed checkpoint is logged once
/// per run of failures and retried at the next tick: the backstop keeps the WAL bounded.
fn run(conn: &Connection, path: &Path, stopped: &mpsc::Receiver<()>, every: Duration) {
    let mut failing = false;
    loop {
        match stopped.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match checkpoint(conn) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed; retrying");
            }
            Err(_) => {}
        }
    }
}

/// One `PASSIVE` checkpoint of the main database.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
