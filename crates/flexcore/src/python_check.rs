//! `flexcore python check <files>`: imports Python handler modules as `flexcore serve` would
//! and lists what they register, or reports the first error with its traceback — without a
//! server or a store (an in-memory store stands in).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use flexcore_app::store::InMemoryStore;
use flexcore_python::{PythonConfig, PythonModule};

/// `flexcore python …`.
#[derive(Debug, Subcommand)]
pub enum PythonCommand {
    /// Import handler modules and list the command, query and event types they register;
    /// an import error is printed with its traceback and the exit status is 1.
    Check(CheckArgs),
}

/// The modules to check.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The Python files, as `[python] modules` would name them.
    #[arg(required = true)]
    pub modules: Vec<PathBuf>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs `flexcore python …`.
pub async fn run(command: PythonCommand) -> anyhow::Result<()> {
    let PythonCommand::Check(args) = command;
    for module in &args.modules {
        anyhow::ensure!(module.is_file(), "{} is not a file", module.display());
    }
    let store = Arc::new(InMemoryStore::new());
    let module = PythonModule::load(PythonConfig::new(args.modules.iter().cloned()), store)
        .await
        .context("the Python handler modules do not load")?;
    let names = module.live().handlers();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "commands": names.commands,
                "queries": names.queries,
                "events": names.events,
            })
        );
        return Ok(());
    }
    let list = |names: &std::collections::BTreeSet<String>| {
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    println!("commands: {}", list(&names.commands));
    println!("queries:  {}", list(&names.queries));
    println!("events:   {}", list(&names.events));
    Ok(())
}
