//! The domain modules this binary can load, by the names the configuration uses.
//!
//! Each is one implementation of [`DomainModule`]; the server wires whatever this returns the
//! same way, whatever kind of module it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flexcore_app::module::{DomainModule, Modules};
use flexcore_app::store::EventStore;
use flexcore_python::{PythonConfig, PythonModule};
use flexcore_sample_users::UsersModule;

use crate::config::{PYTHON_MODULE, Settings, USERS_MODULE};

/// Loads the modules `settings.modules` names, in order (the Python files are imported here:
/// an import error stops the start with its traceback).
pub async fn load(settings: &Settings, store: Arc<dyn EventStore>) -> anyhow::Result<Modules> {
    let mut modules: Vec<Arc<dyn DomainModule>> = Vec::new();
    for name in &settings.modules {
        let module: Arc<dyn DomainModule> = match name.as_str() {
            USERS_MODULE => Arc::new(UsersModule),
            PYTHON_MODULE => Arc::new(load_python(settings, Arc::clone(&store)).await?),
            other => anyhow::bail!("there is no domain module called '{other}'"),
        };
        modules.push(module);
    }
    Ok(Modules::new(modules))
}

async fn load_python(
    settings: &Settings,
    store: Arc<dyn EventStore>,
) -> anyhow::Result<PythonModule> {
    let python = &settings.python;
    let config = PythonConfig::new(python.modules.iter().cloned())
        .with_timeout(Duration::from_millis(python.timeout_ms));
    let module = PythonModule::load(config, store)
        .await
        .context("cannot load the Python handler modules")?;
    let names = module.live().handlers();
    tracing::info!(
        files = ?python.modules,
        commands = ?names.commands,
        queries = ?names.queries,
        events = ?names.events,
        "python handlers loaded"
    );
    Ok(module)
}
