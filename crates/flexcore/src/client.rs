//! The same binary as a client of a running server: `send`, `ask`, `stream read`,
//! `events tail`. Output is human-readable by default and JSON with `--json`.
//!
//! Exit codes tell scripts what happened: 0 done, 1 the server refused (4xx: invalid, conflict,
//! not found), 2 a usage error (bad arguments, unreadable input), 3 the server could not be
//! reached or failed (connection refused, timeout, 5xx).

use std::io::Read;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

/// Where the server is and how to print.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// The server's HTTP address.
    #[arg(
        long,
        env = "FLEXCORE_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Print JSON (one document per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// A bearer token (sent as `Authorization: Bearer …`).
    #[arg(long, env = "FLEXCORE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed an https:// server's certificate.
    #[arg(long, env = "FLEXCORE_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for servers that require one (with --key).
    #[arg(long, env = "FLEXCORE_CERT", global = true)]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "FLEXCORE_KEY", global = true)]
    pub key: Option<std::path::PathBuf>,
}

/// `flexcore send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// The command type, e.g. create_user.
    pub command_type: String,
    /// The command as JSON, `@file` to read it from a file, or `-` for standard input.
    pub body: String,
    /// Sent as the Idempotency-Key header: retrying with the same key is safe.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub options: ClientOptions,
}

/// `flexcore ask`.
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    /// The query type, e.g. get_user.
    pub query_type: String,
    /// The parameters as JSON (`@file`, `-` for standard input); none by default.
    pub params: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub options: ClientOptions,
}

/// `flexcore stream …`.
#[derive(Debug, Clone, Subcommand)]
pub enum StreamCommand {
    /// Print the events of one stream.
    Read {
        /// The stream id, e.g. user-0192….
        stream_id: String,
        /// The first version to print.
        #[arg(long)]
        from_version: Option<u64>,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// `flexcore events …`.
#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// Print the global log from a position; with --follow, keep printing new events.
    Tail {
        /// The first position to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep waiting for new events (Ctrl-C to stop).
        #[arg(long)]
        follow: bool,
        /// Only event types starting with this.
        #[arg(long)]
        type_prefix: Option<String>,
        /// Only streams of this category.
        #[arg(long)]
        category: Option<String>,
        #[command(flatten)]
        #[allow(missing_docs)]
        options: ClientOptions,
    },
}

/// Why a client command failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad arguments or unreadable input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server refused the request (exit 1).
    #[error("{status}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's code and detail.
        detail: String,
    },
    /// The server is unreachable or failed (exit 3).
    #[error("{0}")]
    Unreachable(String),
}

impl ClientError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Refused { .. } => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) => 3,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Reads a JSON argument: inline text, `@file` or `-` (standard input).
fn json_argument(raw: &str) -> Result<Value> {
    let text = if raw == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| ClientError::Usage(format!("cannot read standard input: {e}")))?;
        text
    } else if let Some(path) = raw.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| ClientError::Usage(format!("cannot read {path}: {e}")))?
    } else {
        raw.to_owned()
    };
    serde_json::from_str(&text).map_err(|e| ClientError::Usage(format!("invalid JSON: {e}")))
}

/// An HTTP client of one server, mapping answers to [`ClientError`]s.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    base: String,
}

impl Client {
    pub(crate) fn new(options: &ClientOptions) -> Result<Self> {
        flexcore_auth::tls::install_crypto_provider();
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        if let Some(ca) = &options.ca {
            let certificate = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| ClientError::Usage(format!("--ca {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(certificate);
        }
        match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert)?;
                pem.extend(read(key)?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| ClientError::Usage(format!("--cert/--key: {e}")))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(ClientError::Usage("--cert and --key go together".into())),
        }
        if let Some(token) = &options.token {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Usage("--token is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Unreachable(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: options.server.trim_end_matches('/').to_owned(),
        })
    }

    /// The server's URL of `path` (which starts with `/`).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let text = self.call_text(request).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends a request and returns a successful answer's body as text (e.g. JSON lines).
    pub(crate) async fn call_text(&self, request: reqwest::RequestBuilder) -> Result<String> {
        let response = request.send().await.map_err(|e| {
            ClientError::Unreachable(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            ClientError::Unreachable(format!("the answer of {} broke off: {e}", self.base))
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let detail = format!(
            "{} ({})",
            body["detail"].as_str().unwrap_or("no detail"),
            body["code"].as_str().unwrap_or("unknown")
        );
        if status.is_server_error() {
            return Err(ClientError::Unreachable(format!(
                "server error {status}: {detail}"
            )));
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            detail,
        })
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

fn describe_event(event: &Value) -> String {
    format!(
        "#{:<8} {}@{}  {}  {}",
        event["global_position"],
        event["stream_id"].as_str().unwrap_or("?"),
        event["stream_version"],
        event["event_type"].as_str().unwrap_or("?"),
        event["data"]
    )
}

/// `flexcore send`.
pub async fn send(args: SendArgs) -> Result<()> {
    let body = json_argument(&args.body)?;
    let client = Client::new(&args.options)?;
    let mut request = client
        .http
        .post(format!("{}/v1/commands/{}", client.base, args.command_type))
        .json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let outcome = client.call(request).await?;
    if args.options.json {
        print_json(&outcome);
        return Ok(());
    }
    let events = outcome["events"].as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        println!(
            "ok: {} unchanged at version {}",
            outcome["stream_id"].as_str().unwrap_or("?"),
            outcome["version"]
        );
    }
    for event in events {
        println!(
            "ok: {} {}@{} (position {})",
            event["event_type"].as_str().unwrap_or("?"),
            outcome["stream_id"].as_str().unwrap_or("?"),
            event["stream_version"],
            event["global_position"]
        );
    }
    Ok(())
}

/// `flexcore ask`.
pub async fn ask(args: AskArgs) -> Result<()> {
    let params = match &args.params {
        Some(raw) => json_argument(raw)?,
        None => Value::Object(Default::default()),
    };
    let client = Client::new(&args.options)?;
    let answer = client
        .call(
            client
                .http
                .post(format!("{}/v1/queries/{}", client.base, args.query_type))
                .json(&params),
        )
        .await?;
    if args.options.json {
        print_json(&answer);
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_else(|_| answer.to_string())
        );
    }
    Ok(())
}

/// `flexcore stream read`.
pub async fn stream(command: StreamCommand) -> Result<()> {
    let StreamCommand::Read {
        stream_id,
        from_version,
        limit,
        backward,
        options,
    } = command;
    let client = Client::new(&options)?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(v) = from_version {
        query.push(("from_version", v.to_string()));
    }
    if backward {
        query.push(("direction", "backward".to_owned()));
    }
    let mut url = reqwest::Url::parse(&client.base)
        .map_err(|e| ClientError::Usage(format!("invalid --server: {e}")))?;
    url.path_segments_mut()
        .map_err(|_| ClientError::Usage("invalid --server".into()))?
        .extend(["v1", "streams", &stream_id]);
    let slice = client.call(client.http.get(url).query(&query)).await?;
    if options.json {
        print_json(&slice);
        return Ok(());
    }
    println!(
        "{} at version {}",
        slice["stream_id"].as_str().unwrap_or("?"),
        slice["version"]
    );
    for event in slice["events"].as_array().into_iter().flatten() {
        println!("{}", describe_event(event));
    }
    Ok(())
}

/// `flexcore events tail`.
pub async fn events(command: EventsCommand) -> Result<()> {
    let EventsCommand::Tail {
        from,
        follow,
        type_prefix,
        category,
        options,
    } = command;
    let client = Client::new(&options)?;
    let mut position = from;
    loop {
        let mut query = vec![
            ("from_position", position.to_string()),
            ("limit", "1000".to_owned()),
        ];
        if let Some(p) = &type_prefix {
            query.push(("type_prefix", p.clone()));
        }
        if let Some(c) = &category {
            query.push(("category", c.clone()));
        }
        let page = client
            .call(
                client
                    .http
                    .get(format!("{}/v1/events", client.base))
                    .query(&query),
            )
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            if options.json {
                print_json(event);
            } else {
                println!("{}", describe_event(event));
            }
        }
        position = page["next_position"]
            .as_u64()
            .unwrap_or(position)
            .max(position);
        if events.is_empty() {
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
