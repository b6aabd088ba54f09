//! The `flexcore-bench` binary: parses the command line and runs the benchmark it names.

use std::process::ExitCode;

use clap::Parser;
use flexcore_bench::Cli;

/// The allocator `flexcore` runs with, so the in-process server of the gateway bench allocates
/// as it does under `flexcore serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flexcore_bench::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
