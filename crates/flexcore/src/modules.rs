//! The domain modules this binary can load, by the names the configuration uses.
//!
//! Each is one implementation of [`DomainModule`]; the server wires whatever this returns the
//! same way, whatever kind of module it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flexcore_app::module::{DomainModule, Modules};
use flexcore_app::plugin::{Plugin, PluginOperations};
use flexcore_app::store::EventStore;
use flexcore_plugin::{PAYLOAD_GUARD, PayloadGuard, PluginModule, SupervisorOptions};
use flexcore_python::{PythonConfig, PythonModule};
use flexcore_sample_users::UsersModule;

use crate::config::{PYTHON_MODULE, Settings, USERS_MODULE};

/// The loaded modules, and the handle operators steer the plugins through (when a
/// `plugins_dir` is set).
pub struct Loaded {
    /// Every module, in order.
    pub modules: Modules,
    /// The `plugins` module's plugins, for `GET /v1/plugins` and reloads.
    pub plugins: Option<Arc<dyn PluginOperations>>,
}

/// Loads the modules `settings.modules` names, in order (the Python files are imported here:
/// an import error stops the start with its traceback), then, with a `plugins_dir`, the
/// `plugins` module (its plugins are started here; one that fails is reported, not fatal).
pub async fn load(settings: &Settings, store: Arc<dyn EventStore>) -> anyhow::Result<Loaded> {
    let mut modules: Vec<Arc<dyn DomainModule>> = Vec::new();
    for name in &settings.modules {
        let module: Arc<dyn DomainModule> = match name.as_str() {
            USERS_MODULE => Arc::new(UsersModule),
            PYTHON_MODULE => Arc::new(load_python(settings, Arc::clone(&store)).await?),
            other => anyhow::bail!("there is no domain module called '{other}'"),
        };
        modules.push(module);
    }
    let mut plugins = None;
    if let Some(plugins_dir) = &settings.plugins_dir {
        let module = PluginModule::start(plugins_dir, &compiled_in, SupervisorOptions::default())
            .await
            .with_context(|| format!("cannot read the plugins folder {}", plugins_dir.display()))?;
        plugins = Some(module.operations());
        modules.push(Arc::new(module));
    }
    Ok(Loaded {
        modules: Modules::new(modules),
        plugins,
    })
}

/// The plugins compiled into this binary, by the id a manifest's `[entry] compiled_in` names.
/// Each call makes a fresh instance: two manifests may configure one plugin differently.
fn compiled_in(id: &str) -> Option<Arc<dyn Plugin>> {
    match id {
        PAYLOAD_GUARD => Some(Arc::new(PayloadGuard::new())),
        _ => None,
    }
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
