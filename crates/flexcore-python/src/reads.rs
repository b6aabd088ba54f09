//! `FlexCore.read_stream` inside a command handler: the Python thread reads the store through
//! the async runtime and waits for the answer.
//!
//! The stream ids are only known while the handler runs, so nothing can be read ahead: the
//! handler calls a Rust function that blocks the Python thread (never one of the runtime's
//! workers) on [`Handle::block_on`], with the interpreter released meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use flexcore_app::Error;
use flexcore_app::store::{EventStore, read_whole_stream};
use flexcore_domain::StreamId;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use serde_json::json;
use tokio::runtime::Handle;

/// The reads of one run of a command handler: the store and runtime it reads through, whether
/// it read anything, and the first store failure (which then answers the command, with its
/// own kind, instead of the Python exception it caused).
pub(crate) struct StreamReads {
    store: Arc<dyn EventStore>,
    runtime: Handle,
    read_any: AtomicBool,
    failure: Mutex<Option<Error>>,
}

impl StreamReads {
    /// Reads from `store` on the runtime of the calling task.
    pub(crate) fn new(store: Arc<dyn EventStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime: Handle::current(),
            read_any: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    /// Whether the handler read at least one stream.
    pub(crate) fn read_any(&self) -> bool {
        self.read_any.load(Ordering::SeqCst)
    }

    /// The store failure a read met, if any.
    pub(crate) fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut slot| slot.take())
    }

    /// The function `_run_command` hands to `FlexCore.read_stream`: `reader(stream_id)` →
    /// `{"events": [...], "version": n | null}` as JSON.
    pub(crate) fn reader<'py>(
        self: &Arc<Self>,
        py: Python<'py>,
    ) -> PyResult<Bound<'py, PyCFunction>> {
        let reads = Arc::clone(self);
        PyCFunction::new_closure(
            py,
            Some(c"read_stream"),
            None,
            move |args: &Bound<'_, PyTuple>,
                  _kwargs: Option<&Bound<'_, PyDict>>|
                  -> PyResult<String> {
                let (stream_id,): (String,) = args.extract()?;
                let stream_id = StreamId::new(stream_id).map_err(|e| {
                    PyValueError::new_err(format!("read_stream: not a stream id: {e}"))
                })?;
                reads.read_any.store(true, Ordering::SeqCst);
                let read = args.py().detach(|| {
                    reads
                        .runtime
                        .block_on(read_whole_stream(reads.store.as_ref(), &stream_id))
                });
                match read {
                    Ok((events, version)) => {
                        Ok(json!({"events": events, "version": version}).to_string())
                    }
                    Err(error) => {
                        let message = format!("cannot read stream '{stream_id}': {error}");
                        if let Ok(mut slot) = reads.failure.lock() {
                            slot.get_or_insert(error);
                        }
                        Err(PyRuntimeError::new_err(message))
                    }
                }
            },
        )
    }
}
