//! `flexcore projections …`, `flexcore subscriptions …` and `flexcore plugins …`: operator
//! commands against a running server (its `/v1/projections`, `/v1/subscriptions` and
//! `/v1/plugins` routes). Exit codes as in [`crate::client`].

use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Client, ClientError, ClientOptions};

/// `flexcore projections …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectionsCommand {
    /// Show each projection's state, generation, position and lag.
    Status {
        /// Only this projection.
        name: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Rebuild a read model from position 0 beside the live one (blue-green) and follow it
    /// with a progress bar and an ETA until it is swapped in.
    Rebuild {
        /// The projection, e.g. users.
        name: String,
        /// Start the rebuild and return at once.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// `flexcore subscriptions …`.
#[derive(Debug, Clone, Subcommand)]
pub enum SubscriptionsCommand {
    /// Show each durable consumer's position, lag and parked events.
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Parked events of a consumer.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

/// `flexcore subscriptions dead-letters …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLettersCommand {
    /// List a consumer's parked events (failed ones, and those waiting behind them).
    List {
        /// The consumer, e.g. outbox:amqp.
        consumer: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Run the handler again on a failed event; on success the events waiting behind it are
    /// handled in order.
    Retry {
        /// The consumer.
        consumer: String,
        /// The parked event's global position.
        position: u64,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Give up on a failed event; the events waiting behind it are then handled in order.
    Skip {
        /// The consumer.
        consumer: String,
        /// The parked event's global position.
        position: u64,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// Runs `flexcore projections …`.
pub async fn projections(command: ProjectionsCommand) -> Result<(), ClientError> {
    match command {
        ProjectionsCommand::Status { name, options } => {
            let client = Client::new(&options)?;
            let path = match &name {
                Some(name) => format!("/v1/projections/{}", encode(name)),
                None => "/v1/projections".to_owned(),
            };
            let answer = client.call(client.http.get(client.url(&path))).await?;
            let all = match answer {
                Value::Array(all) => all,
                one => vec![one],
            };
            if options.json {
                for status in &all {
                    println!("{status}");
                }
                return Ok(());
            }
            println!(
                "{:<20} {:<11} {:>10} {:>12} {:>10} {:>10}",
                "PROJECTION", "STATE", "GENERATION", "POSITION", "LAG", "BUILDING"
            );
            for s in &all {
                println!(
                    "{:<20} {:<11} {:>10} {:>12} {:>10} {:>10}",
                    s["name"].as_str().unwrap_or("?"),
                    s["state"].as_str().unwrap_or("?"),
                    show(&s["live"]["number"]),
                    show(&s["position"]),
                    show(&s["lag"]),
                    match &s["building"]["number"] {
                        Value::Null => "-".to_owned(),
                        n => format!("g{n} @{}", show(&s["building_position"])),
                    },
                );
                if let Some(error) = s["error"].as_str() {
                    println!("  last error: {error}");
                }
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild {
            name,
            no_wait,
            options,
        } => {
            let client = Client::new(&options)?;
            let path = format!("/v1/projections/{}", encode(&name));
            let started = client
                .call(client.http.post(client.url(&format!("{path}/rebuild"))))
                .await?;
            let generation = started["generation"]["number"].as_u64().unwrap_or(0);
            if no_wait {
                if options.json {
                    println!("{started}");
                } else {
                    println!("rebuilding {name} as generation {generation}");
                }
                return Ok(());
            }
            let bar = ProgressBar::new(1);
            if options.json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{name} g{generation}"));
            loop {
                let status = client.call(client.http.get(client.url(&path))).await?;
                let live = status["live"]["number"].as_u64().unwrap_or(0);
                let head = status["head"].as_u64().unwrap_or(0);
                if live >= generation && status["building"].is_null() {
                    bar.set_length(head.max(1));
                    bar.set_position(head.max(1));
                    bar.finish_with_message(format!("{name} g{generation} live"));
                    if options.json {
                        println!("{status}");
                    }
                    return Ok(());
                }
                let done = status["building_position"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(1);
                bar.set_length(head.max(done).max(1));
                bar.set_position(done);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Runs `flexcore subscriptions …`.
pub async fn subscriptions(command: SubscriptionsCommand) -> Result<(), ClientError> {
    match command {
        SubscriptionsCommand::List { options } => {
            let Some(all) = list_for_table(&options, "/v1/subscriptions").await? else {
                return Ok(());
            };
            println!(
                "{:<32} {:>12} {:>10} {:>8} {:>8}",
                "CONSUMER", "POSITION", "LAG", "PARKED", "BLOCKED"
            );
            for s in &all {
                println!(
                    "{:<32} {:>12} {:>10} {:>8} {:>8}",
                    s["consumer"].as_str().unwrap_or("?"),
                    show(&s["position"]),
                    show(&s["lag"]),
                    show(&s["parked"]),
                    show(&s["blocked_streams"]),
                );
            }
            Ok(())
        }
        SubscriptionsCommand::DeadLetters(command) => dead_letters(command).await,
    }
}

async fn dead_letters(command: DeadLettersCommand) -> Result<(), ClientError> {
    let (consumer, action, options) = match command {
        DeadLettersCommand::List { consumer, options } => (consumer, None, options),
        DeadLettersCommand::Retry {
            consumer,
            position,
            options,
        } => (consumer, Some(("retry", position)), options),
        DeadLettersCommand::Skip {
            consumer,
            position,
            options,
        } => (consumer, Some(("skip", position)), options),
    };
    let client = Client::new(&options)?;
    let base = format!("/v1/subscriptions/{}/dead-letters", encode(&consumer));
    if let Some((verb, position)) = action {
        let answer = client
            .call(
                client
                    .http
                    .post(client.url(&format!("{base}/{position}/{verb}"))),
            )
            .await?;
        if options.json {
            println!("{answer}");
        } else {
            println!("ok: {verb} of position {position} for {consumer}");
        }
        return Ok(());
    }
    let letters = client.call(client.http.get(client.url(&base))).await?;
    let letters = letters.as_array().cloned().unwrap_or_default();
    if options.json {
        for letter in &letters {
            println!("{letter}");
        }
        return Ok(());
    }
    if letters.is_empty() {
        println!("{consumer} has no parked events");
    }
    for l in &letters {
        let reason = match l["reason"]["state"].as_str() {
            Some("failed") => format!(
                "FAILED x{}: {}",
                show(&l["reason"]["attempts"]),
                l["reason"]["error"].as_str().unwrap_or("")
            ),
            _ => "waiting behind an earlier event of its stream".to_owned(),
        };
        println!(
            "#{:<8} {}  {}  {}",
            show(&l["global_position"]),
            l["stream_id"].as_str().unwrap_or("?"),
            l["event_type"].as_str().unwrap_or("?"),
            reason
        );
    }
    Ok(())
}

/// `flexcore plugins …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PluginsCommand {
    /// Show each plugin's version, state, restarts, calls, p99 and last error.
    List {
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
    /// Hot-swap a plugin for its current files (a new version, a changed `[config]`): the new
    /// process takes new calls, the old one finishes its calls and stops.
    Reload {
        /// The plugin, e.g. email-enricher.
        name: String,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// Runs `flexcore plugins …`.
pub async fn plugins(command: PluginsCommand) -> Result<(), ClientError> {
    match command {
        PluginsCommand::List { options } => {
            let Some(all) = list_for_table(&options, "/v1/plugins").await? else {
                return Ok(());
            };
            println!(
                "{:<24} {:<10} {:<9} {:>8} {:>8} {:>9}  LAST ERROR",
                "PLUGIN", "VERSION", "STATE", "RESTARTS", "CALLS", "P99 MS"
            );
            for p in &all {
                println!(
                    "{:<24} {:<10} {:<9} {:>8} {:>8} {:>9}  {}",
                    show(&p["name"]),
                    show(&p["version"]),
                    show(&p["state"]),
                    show(&p["restarts"]),
                    show(&p["calls"]),
                    p["p99_ms"]
                        .as_f64()
                        .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}")),
                    show(&p["last_error"]),
                );
            }
            Ok(())
        }
        PluginsCommand::Reload { name, options } => {
            let client = Client::new(&options)?;
            let path = format!("/v1/plugins/{}/reload", encode(&name));
            let answer = client.call(client.http.post(client.url(&path))).await?;
            if options.json {
                println!("{answer}");
            } else {
                println!(
                    "reloaded {name}: version {}, {}",
                    show(&answer["version"]),
                    show(&answer["state"])
                );
            }
            Ok(())
        }
    }
}

/// The JSON list a `GET` of `path` answers, to print as a table; with `--json` it is printed
/// one element a line here, and `None` comes back.
async fn list_for_table(
    options: &ClientOptions,
    path: &str,
) -> Result<Option<Vec<Value>>, ClientError> {
    let client = Client::new(options)?;
    let all = client.call(client.http.get(client.url(path))).await?;
    let all = all.as_array().cloned().unwrap_or_default();
    if options.json {
        for element in &all {
            println!("{element}");
        }
        return Ok(None);
    }
    Ok(Some(all))
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a path segment (consumer names of group members hold `#` and `/`).
pub(crate) fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
