//! WAL checkpoints off the commit path.
//!
//! SQLite checkpoints a WAL database on the connection that commits, once the WAL holds 1,000
//! pages: that commit then copies every changed page into the database file and syncs it,
//! several milliseconds during which the event store's writer takes no appends and a
//! projection applies nothing. Those stalls were most of the store's p99 append latency.
//!
//! A checkpointer thread with its own connection runs `PASSIVE` checkpoints instead. `PASSIVE`
//! never blocks the writer or the readers: it copies the frames committed so far, syncing the
//! WAL before and the database after exactly as an automatic checkpoint does, so durability is
//! unchanged, and the writer keeps committing meanwhile. The thread aims at about
//! [`TARGET_FRAMES`] new frames per checkpoint: it waits longer after a checkpoint that found
//! less and shorter after one that found more (between [`MIN_EVERY`] and [`MAX_EVERY`]). So
//! under load a checkpoint comes every quarter of SQLite's threshold, and a page changed by
//! many commits is still copied once per checkpoint rather than once per commit; when idle the
//! thread wakes once a second. SQLite's automatic checkpoint stays on as the backstop: when it
//! fires it finds almost every frame already copied, finishes the rest, and lets the next
//! commit start the WAL over, so the file stays small.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::SqliteError;

/// New WAL frames one background checkpoint aims to copy: a quarter of the 1,000 pages at which
/// SQLite checkpoints on the committing connection.
const TARGET_FRAMES: i64 = 250;

/// The shortest wait between two checkpoints.
const MIN_EVERY: Duration = Duration::from_millis(10);

/// The longest wait between two checkpoints (an idle database).
const MAX_EVERY: Duration = Duration::from_secs(1);

/// The first wait, before anything is known about the write rate.
const FIRST_WAIT: Duration = Duration::from_millis(50);

/// A running checkpointer thread; dropping it stops the thread after its current checkpoint.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to `path` (already in WAL mode) and starts checkpointing it.
    pub(crate) fn spawn(path: &Path) -> Result<Self, SqliteError> {
        let conn = Connection::open(path)?;
        // `PASSIVE` waits for no one, but opening the WAL index may meet a lock briefly.
        conn.pragma_update(None, "busy_timeout", 1000)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            // Linux keeps 15 characters of a thread name: short enough to tell apart in `top`.
            .name("sqlite-checkpt".into())
            .spawn(move || run(&conn, &path, &stopped))
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

/// Checkpoints until the owner is dropped. A failed checkpoint is logged once per run of
/// failures and retried later: the backstop keeps the WAL bounded meanwhile.
fn run(conn: &Connection, path: &Path, stopped: &mpsc::Receiver<()>) {
    let mut wait = FIRST_WAIT;
    let mut last_log = 0;
    let mut failing = false;
    loop {
        match stopped.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match checkpoint(conn) {
            // Another checkpoint (SQLite's backstop) holds the lock: it copies the frames now.
            Ok(None) => failing = false,
            Ok(Some(log)) => {
                failing = false;
                // A smaller WAL than last time was started over in between.
                let added = if log < last_log { log } else { log - last_log };
                last_log = log;
                wait = next_wait(wait, added);
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed; retrying");
                }
                wait = MAX_EVERY;
            }
        }
    }
}

/// The wait before the next checkpoint, given the last wait and the frames the WAL gained in
/// it: scaled towards [`TARGET_FRAMES`] per checkpoint, by at most half or double per step.
fn next_wait(wait: Duration, added: i64) -> Duration {
    let scale = TARGET_FRAMES as f64 / added.max(1) as f64;
    wait.mul_f64(scale.clamp(0.5, 2.0))
        .clamp(MIN_EVERY, MAX_EVERY)
}

/// One `PASSIVE` checkpoint of the main database; returns the frames in the WAL (0 when the
/// database is not in WAL mode), or `None` when another checkpoint was running.
fn checkpoint(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let (busy, log): (i64, i64) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    Ok((busy == 0).then_some(log.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_the_write_rate_within_its_bounds() {
        let wait = Duration::from_millis(100);
        // On target: unchanged.
        assert_eq!(next_wait(wait, TARGET_FRAMES), wait);
        // Twice the target: half the wait; far more: still only half per step.
        assert_eq!(
            next_wait(wait, 2 * TARGET_FRAMES),
            Duration::from_millis(50)
        );
        assert_eq!(
            next_wait(wait, 100 * TARGET_FRAMES),
            Duration::from_millis(50)
        );
        // Idle: double, up to the longest wait.
        assert_eq!(next_wait(wait, 0), Duration::from_millis(200));
        assert_eq!(next_wait(MAX_EVERY, 0), MAX_EVERY);
        // Heavy writing converges on the shortest wait.
        let mut wait = MAX_EVERY;
        for _ in 0..20 {
            wait = next_wait(wait, 10 * TARGET_FRAMES);
        }
        assert_eq!(wait, MIN_EVERY);
    }
}
