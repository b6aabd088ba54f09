//! The `user-stats` example plugin (`examples/plugins/user-stats`): a `query_handler` for
//! `email_domain`, which answers `{"params": {"email": …}}` with the address's domain and
//! whether it belongs to a free mail provider — what a sign-up screen or a report asks before
//! grouping users by company.
//!
//! The free providers come from the manifest's `[config] free_providers`; a config that is not
//! a list of strings makes the plugin `refuse`.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use flexcore_plugin_sdk::{HandlerError, Plugin};
use serde_json::{Value, json};

/// The providers used when the config names none.
const DEFAULT_FREE_PROVIDERS: [&str; 4] = ["gmail.com", "outlook.com", "yahoo.com", "proton.me"];

fn main() -> ExitCode {
    let free_providers: Arc<OnceLock<Vec<String>>> = Arc::new(OnceLock::new());
    let configured = Arc::clone(&free_providers);
    Plugin::new("user-stats", "0.1.0")
        .initialize(move |config| {
            let providers = free_providers_from(config)?;
            configured
                .set(providers)
                .map_err(|_| "initialised twice".to_owned())
        })
        .query_handler("email_domain", move |_ctx, data| {
            let providers = free_providers.get().map(Vec::as_slice).unwrap_or_default();
            email_domain(&data["params"], providers)
        })
        .run()
}

fn free_providers_from(config: &Value) -> Result<Vec<String>, String> {
    match config.get("free_providers") {
        None => Ok(DEFAULT_FREE_PROVIDERS.map(str::to_owned).to_vec()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_lowercase))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| "config.free_providers must be a list of strings".to_owned()),
        Some(_) => Err("config.free_providers must be a list of strings".to_owned()),
    }
}

/// `{"domain": …, "free_provider": …}` for `params.email`, or a validation error on `/email`.
fn email_domain(params: &Value, free_providers: &[String]) -> Result<Value, HandlerError> {
    let invalid =
        |reason: &str| HandlerError::validation("email is not an address", "/email", reason);
    let email = params
        .get("email")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("is required and must be a string"))?
        .trim();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(invalid("has no @"));
    };
    let domain = domain.to_lowercase();
    let labels_are_valid = domain.split('.').all(|label| !label.is_empty());
    if local.is_empty() || !domain.contains('.') || !labels_are_valid {
        return Err(invalid(
            "needs a name before the @ and a domain such as example.com after it",
        ));
    }
    let free_provider = free_providers.contains(&domain);
    Ok(json!({"result": {"domain": domain, "free_provider": free_provider}}))
}
