//! `flexcore audit <stream>`: who changed a stream, when, and with which event: the `actor`
//! every event carries makes the event log the audit trail of accepted changes (denied attempts
//! are logged on the `flexcore::audit` target instead).

use clap::Args;
use serde_json::Value;

use crate::client::{Client, ClientError, ClientOptions};

/// How many events one page asks for.
const PAGE: u64 = 1000;

/// `flexcore audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// The stream, e.g. user-0192….
    pub stream_id: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub options: ClientOptions,
}

/// One change: the line `flexcore audit` prints for an event.
fn change(event: &Value) -> Value {
    let actor = &event["metadata"]["actor"];
    serde_json::json!({
        "stream_version": event["stream_version"],
        "recorded_at": event["recorded_at"],
        "event_type": event["event_type"],
        "actor": actor.get("sub").or(actor.as_str().map(|_| actor)).cloned().unwrap_or(Value::Null),
        "roles": actor.get("roles").cloned().unwrap_or(Value::Null),
        "correlation_id": event["metadata"]["correlation_id"],
    })
}

/// Lists every change of a stream, oldest first (all pages).
pub async fn audit(args: AuditArgs) -> Result<(), ClientError> {
    let client = Client::new(&args.options)?;
    let mut url = reqwest::Url::parse(&client.url(""))
        .map_err(|e| ClientError::Usage(format!("invalid --server: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| ClientError::Usage("invalid --server".into()))?
        .extend(["v1", "streams", &args.stream_id]);
    let mut from = 0u64;
    loop {
        let query = [
            ("from_version", from.to_string()),
            ("limit", PAGE.to_string()),
        ];
        let page = client
            .call(client.http.get(url.clone()).query(&query))
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            let change = change(event);
            if args.options.json {
                println!("{change}");
            } else {
                println!(
                    "v{:<6} {}  {:<24} by {} {}",
                    change["stream_version"],
                    change["recorded_at"].as_str().unwrap_or("?"),
                    change["event_type"].as_str().unwrap_or("?"),
                    change["actor"].as_str().unwrap_or("(anonymous)"),
                    change["roles"],
                );
            }
        }
        let last = events.last().and_then(|e| e["stream_version"].as_u64());
        match last {
            Some(version) if (events.len() as u64) == PAGE => from = version + 1,
            _ => return Ok(()),
        }
    }
}
