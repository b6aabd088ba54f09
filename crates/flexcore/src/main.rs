//! The `flexcore` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use flexcore::cli::{Cli, Command};

/// mimalloc: per-thread free lists instead of glibc's arenas; the gateways allocate per request
/// on every worker thread (`flexcore-bench gateway`: +4–7 % commands/s over HTTP and the bus).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for every TLS connection, including those drivers configure.
    flexcore_auth::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => Err(flexcore::server::serve_from_args(args).await),
            Command::Config(flexcore::cli::ConfigCommand::Show { settings, json }) => {
                Err(flexcore::config::show(settings, json))
            }
            Command::Send(args) => Ok(flexcore::client::send(args).await),
            Command::Ask(args) => Ok(flexcore::client::ask(args).await),
            Command::Stream(command) => Ok(flexcore::client::stream(command).await),
            Command::Events(command) => Ok(flexcore::client::events(command).await),
            Command::Projections(command) => Ok(flexcore::operations::projections(command).await),
            Command::Subscriptions(command) => {
                Ok(flexcore::operations::subscriptions(command).await)
            }
            Command::Plugins(command) => Ok(flexcore::operations::plugins(command).await),
            Command::Audit(args) => Ok(flexcore::audit::audit(args).await),
            Command::Token(command) => Err(flexcore::security::run_token(command)),
            Command::Gdpr(command) => Ok(flexcore::gdpr::run(command).await),
            Command::Python(command) => Err(flexcore::python_check::run(command).await),
        }
    });
    let result = match client {
        Ok(Ok(())) => return ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
        Err(result) => result,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
