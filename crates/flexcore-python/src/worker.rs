//! The Python thread: it owns the interpreter while it runs a handler, takes jobs from a
//! channel and replies through a oneshot; a job that outlives its timeout gets a
//! `HandlerTimeout` exception injected.

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use tokio::sync::oneshot;

use flexcore_app::{Error, Result};

use crate::failure::{Failure, RefusalKind};

/// The source of the `flexcore` Python module.
const FLEXCORE_PY: &str = include_str!("flexcore.py");

/// Loads never overlap: the `flexcore` module collects registrations in one global while
/// handler modules import. Taken before attaching to the interpreter (never while holding it).
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// What a job sees: the interpreter, the `flexcore` module and this runtime's registry.
pub(crate) struct Ctx<'py> {
    pub(crate) py: Python<'py>,
    module: Bound<'py, PyModule>,
    pub(crate) registry: Bound<'py, PyAny>,
    /// `flexcore._Refusal`, the base of the exceptions clients see (ValidationError…).
    refusal: Bound<'py, PyAny>,
    /// `flexcore._InvalidReturn`: a handler returned what the engine cannot store.
    invalid_return: Bound<'py, PyAny>,
}

impl<'py> Ctx<'py> {
    /// Classifies an exception: a refusal (`ValidationError`, `ConflictError`…), an invalid
    /// return value, or anything else, with its traceback.
    pub(crate) fn failure(&self, err: PyErr) -> Failure {
        let value = err.value(self.py);
        let text = || value.str().map(|s| s.to_string()).unwrap_or_default();
        if err.is_instance(self.py, &self.invalid_return) {
            return Failure::Invalid(text());
        }
        if err.is_instance(self.py, &self.refusal) {
            let kind = value
                .getattr("kind")
                .and_then(|k| k.extract::<String>())
                .ok()
                .and_then(|k| RefusalKind::from_name(&k))
                .unwrap_or(RefusalKind::Validation);
            let code = value
                .getattr("code")
                .and_then(|c| c.extract::<Option<String>>())
                .ok()
                .flatten()
                .filter(|c| !c.trim().is_empty());
            return Failure::Refused {
                kind,
                message: text(),
                code,
            };
        }
        let exception = err
            .get_type(self.py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "exception".into());
        let traceback = self
            .module
            .getattr("_format_exception")
            .and_then(|f| f.call1((err.value(self.py), err.traceback(self.py))))
            .and_then(|t| t.extract::<String>())
            .unwrap_or_else(|_| err.to_string());
        Failure::Exception {
            exception,
            traceback,
        }
    }

    pub(crate) fn call<A: pyo3::call::PyCallArgs<'py>>(
        &self,
        function: &str,
        args: A,
    ) -> Result<Bound<'py, PyAny>, Failure> {
        self.module
            .getattr(function)
            .and_then(|f| f.call1(args))
            .map_err(|e| self.failure(e))
    }

    pub(crate) fn to_json(&self, value: &Bound<'py, PyAny>) -> std::result::Result<String, String> {
        self.module
            .getattr("_to_json")
            .and_then(|f| f.call1((value,)))
            .and_then(|s| s.extract::<String>())
            .map_err(|e| {
                let value = e.value(self.py);
                value.str().map(|s| s.to_string()).unwrap_or_default()
            })
    }
}

type JobFn = Box<dyn for<'py> FnOnce(&Ctx<'py>) + Send>;

struct Job {
    id: u64,
    run: JobFn,
}

struct Started {
    module: Py<PyModule>,
    thread_id: u64,
    described: String,
}

/// The caller's side of the Python thread.
pub(crate) struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    timeout: Duration,
    next_id: AtomicU64,
    /// The id of the job the thread is running (0: none); written only while holding the GIL.
    current: Arc<AtomicU64>,
    /// The id of the job a timeout was injected into.
    interrupted: Arc<AtomicU64>,
    /// Shared so that a timeout thread can use it without taking the GIL to clone it here.
    module: Arc<Py<PyModule>>,
    thread_id: u64,
}

impl Worker {
    /// Starts the Python thread and imports `modules` on it; the description of the handlers
    /// they registered comes back with the worker (JSON), or the import's traceback.
    pub(crate) async fn start(modules: Vec<PathBuf>, timeout: Duration) -> Result<(Self, String)> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let current = Arc::new(AtomicU64::new(0));
        let interrupted = Arc::new(AtomicU64::new(0));
        let (cur, intr) = (current.clone(), interrupted.clone());
        std::thread::Builder::new()
            .name("flexcore-python".into())
            .spawn(move || worker_main(modules, job_rx, ready_tx, cur, intr))
            .map_err(|e| Error::internal(format!("cannot start the Python thread: {e}")))?;
        let started = ready_rx
            .await
            .map_err(|_| Error::internal("the Python thread stopped while loading"))?
            .map_err(Error::internal)?;
        let worker = Self {
            jobs: Mutex::new(jobs),
            timeout,
            next_id: AtomicU64::new(0),
            current,
            interrupted,
            module: Arc::new(started.module),
            thread_id: started.thread_id,
        };
        Ok((worker, started.described))
    }

    /// Runs `job` on the Python thread; gives up (and interrupts it) after the timeout.
    pub(crate) async fn call<T, F>(&self, job: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: for<'py> FnOnce(&Ctx<'py>) -> Result<T, Failure> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply, answer) = oneshot::channel();
        let run: JobFn = Box::new(move |ctx| {
            if !reply.is_closed() {
                let _ = reply.send(job(ctx));
            }
        });
        self.jobs
            .lock()
            .map_err(|_| Failure::Stopped)?
            .send(Job { id, run })
            .map_err(|_| Failure::Stopped)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Failure::Stopped),
            Err(_) => {
                self.interrupt(id);
                Err(Failure::Timeout(self.timeout))
            }
        }
    }

    /// Raises `HandlerTimeout` in job `id` if it is still running; from a short-lived thread,
    /// since taking the GIL may wait.
    fn interrupt(&self, id: u64) {
        let module = self.module.clone();
        let (current, interrupted, thread_id) = (
            self.current.clone(),
            self.interrupted.clone(),
            self.thread_id,
        );
        let spawned = std::thread::Builder::new()
            .name("flexcore-python-timeout".into())
            .spawn(move || {
                Python::attach(|py| {
                    // Holding the GIL, the worker cannot change jobs under us.
                    if current.load(Ordering::SeqCst) != id {
                        return;
                    }
                    let module = module.bind(py);
                    let injected = module.getattr("HandlerTimeout").and_then(|exc| {
                        module
                            .getattr("_set_async_exc")
                            .and_then(|f| f.call1((thread_id, exc)))
                    });
                    match injected {
                        Ok(_) => interrupted.store(id, Ordering::SeqCst),
                        Err(e) => {
                            tracing::warn!(target: "flexcore_python", error = %e, "cannot interrupt a python handler");
                        }
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::warn!(target: "flexcore_python", error = %e, "cannot start the timeout thread");
        }
    }
}

fn worker_main(
    modules: Vec<PathBuf>,
    jobs: mpsc::Receiver<Job>,
    ready: oneshot::Sender<std::result::Result<Started, String>>,
    current: Arc<AtomicU64>,
    interrupted: Arc<AtomicU64>,
) {
    let loaded = {
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        Python::attach(|py| load(py, &modules))
    };
    let (module, registry) = match loaded {
        Ok((module, registry, started)) => {
            let _ = ready.send(Ok(started));
            (module, registry)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Ok(job) = jobs.recv() {
        Python::attach(|py| {
            let module = module.bind(py).clone();
            let ctx = Ctx {
                py,
                refusal: module
                    .getattr("_Refusal")
                    .unwrap_or_else(|_| py.None().into_bound(py)),
                invalid_return: module
                    .getattr("_InvalidReturn")
                    .unwrap_or_else(|_| py.None().into_bound(py)),
                registry: registry.bind(py).clone(),
                module,
            };
            current.store(job.id, Ordering::SeqCst);
            (job.run)(&ctx);
            current.store(0, Ordering::SeqCst);
            if interrupted.load(Ordering::SeqCst) == job.id {
                // The injected exception may still be pending: clear it (running any Python code
                // may raise it first, hence twice).
                for _ in 0..2 {
                    if let Ok(thread_id) = ctx.call("_thread_id", ()) {
                        let _ = ctx.call("_set_async_exc", (thread_id, py.None()));
                    }
                }
            }
        });
    }
}

/// Registers the `flexcore` module (once per process) and imports the handler modules.
fn load(
    py: Python<'_>,
    modules: &[PathBuf],
) -> std::result::Result<(Py<PyModule>, Py<PyAny>, Started), String> {
    let describe_err = |e: PyErr| {
        let traceback = e
            .traceback(py)
            .and_then(|t| t.format().ok())
            .unwrap_or_default();
        format!("{traceback}{e}")
    };
    let sys = py.import("sys").map_err(describe_err)?;
    let sys_modules = sys.getattr("modules").map_err(describe_err)?;
    let module = match sys_modules.get_item("flexcore") {
        Ok(existing) => existing
            .cast_into::<PyModule>()
            .map_err(|e| e.to_string())?,
        Err(_) => {
            let code = CString::new(FLEXCORE_PY).map_err(|e| e.to_string())?;
            let module = PyModule::from_code(py, &code, c"flexcore.py", c"flexcore")
                .map_err(describe_err)?;
            sys_modules
                .set_item("flexcore", &module)
                .map_err(describe_err)?;
            module
        }
    };
    let paths: Vec<String> = modules
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let paths = PyList::new(py, paths).map_err(describe_err)?;
    let registry = module
        .getattr("_load")
        .and_then(|f| f.call1((paths,)))
        .map_err(|e| {
            format!(
                "cannot load the Python handler modules: {}",
                describe_err(e)
            )
        })?;
    let described = registry
        .call_method0("describe")
        .and_then(|d| d.extract::<String>())
        .map_err(describe_err)?;
    let thread_id = module
        .getattr("_thread_id")
        .and_then(|f| f.call0())
        .and_then(|t| t.extract::<u64>())
        .map_err(describe_err)?;
    let started = Started {
        module: module.clone().unbind(),
        thread_id,
        described,
    };
    Ok((module.unbind(), registry.unbind(), started))
}
