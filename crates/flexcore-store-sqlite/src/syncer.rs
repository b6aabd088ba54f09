//! Durability, pipelined: the writer commits a batch without waiting for the disk and hands the
//! batch's answers to this thread, which flushes the WAL (`fdatasync`) and only then answers
//! and advances the durable head that readers see. While one flush runs, the writer already
//! writes the next batch, and one flush covers every batch written before it started.
//!
//! This is what `synchronous=FULL` does (write the WAL frames, then sync the WAL before the
//! commit is acknowledged), split over two threads so that the CPU work of a batch overlaps the
//! previous batch's flush.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::watch;

use crate::SqliteError;

/// Answers a request once its batch is durable; the argument is the flush error, if any.
pub(crate) type Ack = Box<dyn FnOnce(Option<&str>) + Send>;

/// One batch's answers, waiting for the flush.
pub(crate) struct Flush {
    /// The last position the batch wrote, if it wrote events.
    pub(crate) head: Option<u64>,
    /// Whether the batch changed the database at all (events, flags or snapshots).
    pub(crate) wrote: bool,
    /// The answers.
    pub(crate) acks: Vec<Ack>,
}

/// The syncer's side of the pipeline.
pub(crate) struct Syncer {
    flushes: mpsc::Receiver<Flush>,
    /// The WAL file to sync; `None` when the store runs with `synchronous=NORMAL`.
    wal: Option<PathBuf>,
    wal_file: Option<File>,
    durable: Arc<AtomicU64>,
    head_tx: watch::Sender<u64>,
    poisoned: Arc<AtomicBool>,
}

impl Syncer {
    /// Starts the syncer thread; the writer sends it one [`Flush`] per batch.
    pub(crate) fn spawn(
        wal: Option<PathBuf>,
        durable: Arc<AtomicU64>,
        head_tx: watch::Sender<u64>,
        poisoned: Arc<AtomicBool>,
    ) -> Result<mpsc::Sender<Flush>, SqliteError> {
        let (sender, flushes) = mpsc::channel();
        let syncer = Self {
            flushes,
            wal,
            wal_file: None,
            durable,
            head_tx,
            poisoned,
        };
        std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || syncer.run())
            .map_err(|e| SqliteError::Io("syncer thread".into(), e))?;
        Ok(sender)
    }

    fn run(mut self) {
        while let Ok(first) = self.flushes.recv() {
            let mut group = vec![first];
            group.extend(self.flushes.try_iter());
            let failure = if group.iter().any(|f| f.wrote) {
                self.sync().err()
            } else {
                None
            };
            match &failure {
                None => {
                    if let Some(head) = group.iter().filter_map(|f| f.head).max() {
                        self.durable.store(head, Ordering::Release);
                        self.head_tx.send_replace(head);
                    }
                }
                Some(error) => {
                    // After a failed fsync the kernel may have dropped the dirty pages: nothing
                    // written since the last good flush can be trusted. Refuse every further
                    // write; an operator restarts the store, which recovers from the WAL.
                    tracing::error!(error = %error, "fsync of the SQLite WAL failed; the store stops accepting writes");
                    self.poisoned.store(true, Ordering::Release);
                }
            }
            let failure =
                failure.map(|e| format!("the event store cannot make writes durable: {e}"));
            for flush in group {
                for ack in flush.acks {
                    ack(failure.as_deref());
                }
            }
        }
    }

    fn sync(&mut self) -> Result<(), SqliteError> {
        let Some(path) = &self.wal else {
            return Ok(());
        };
        if self.wal_file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| SqliteError::Io(path.clone(), e))?;
            self.wal_file = Some(file);
        }
        let file = self.wal_file.as_ref().expect("opened above");
        file.sync_data()
            .map_err(|e| SqliteError::Io(path.clone(), e))
    }
}
