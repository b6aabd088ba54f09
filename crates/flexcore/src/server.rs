//! `flexcore serve`: open the store, wire the buses and the sample domain, serve HTTP.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use flexcore_app::command::{CommandBusExt, CommandRouter};
use flexcore_app::query::{QueryBusExt, QueryRouter};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::store::EventStore;
use flexcore_http::{AppState, Limits};
use flexcore_store_postgres::{PostgresConfig, PostgresStore};
use flexcore_store_sqlite::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::config::Settings;

/// Snapshots of aggregates are taken every this many events.
const SNAPSHOT_EVERY: u64 = 100;

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an idempotency key's answer is remembered.
const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How many idempotency keys are remembered at most.
const IDEMPOTENCY_KEYS: usize = 100_000;

/// Opens the event store a URL names: `sqlite://…` or `postgres://…`.
pub async fn open_store(url: &str) -> anyhow::Result<Arc<dyn EventStore>> {
    if url.starts_with("sqlite:") {
        let store = SqliteStore::open(SqliteConfig::from_url(url)?)
            .await
            .with_context(|| format!("cannot open the SQLite store {url}"))?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = PostgresStore::connect(postgres_config(url))
            .await
            .with_context(|| format!("cannot open the PostgreSQL store {}", mask_password(url)))?;
        return Ok(Arc::new(store));
    }
    anyhow::bail!("unsupported store URL '{}'", mask_password(url))
}

/// The PostgreSQL settings a `postgres://…[?schema=name]` store URL names.
pub fn postgres_config(url: &str) -> PostgresConfig {
    let (url, schema) = split_schema(url);
    let config = PostgresConfig::new(url);
    match schema {
        Some(schema) => config.with_schema(schema),
        None => config,
    }
}

/// Wires the buses, their middleware and the sample domain over a store.
pub fn app_state(store: Arc<dyn EventStore>, settings: &Settings) -> anyhow::Result<AppState> {
    app_state_with(store, settings, None)
}

/// Like [`app_state`]; with Python handler modules, they replace the sample domain.
pub fn app_state_with(
    store: Arc<dyn EventStore>,
    settings: &Settings,
    python: Option<&flexcore_python::LivePython>,
) -> anyhow::Result<AppState> {
    app_state_full(store, settings, python, None)
}

/// Like [`app_state_with`]; with a running read side, the sample domain's queries answer from
/// its read models through the query cache, and the operator routes see its projections.
pub fn app_state_full(
    store: Arc<dyn EventStore>,
    settings: &Settings,
    python: Option<&flexcore_python::LivePython>,
    read_side: Option<&crate::readside::ReadSide>,
) -> anyhow::Result<AppState> {
    let repository = Repository::new(Arc::clone(&store)).with_snapshots_every(SNAPSHOT_EVERY);
    let mut commands = CommandRouter::new();
    let mut queries = QueryRouter::new();
    if let Some(python) = python {
        crate::python::register(python, &mut commands, &mut queries)?;
    } else {
        flexcore_app::users::register_commands(&mut commands, repository)?;
        if let Some(read_side) = read_side {
            read_side.register_queries(&mut queries)?;
        }
    }
    // The cache's policy and invalidation belong to the sample's read model; Python queries
    // answer from state the cache would not see change.
    let cache = read_side
        .and_then(|r| r.cache.as_ref())
        .filter(|_| python.is_none());
    let queries: Arc<dyn flexcore_app::query::QueryBus> = match cache {
        Some(cache) => Arc::new(
            queries
                .with_cache(Arc::clone(&cache.backend), Arc::clone(&cache.policy))
                .with_tracing(),
        ),
        None => Arc::new(queries.with_tracing()),
    };
    Ok(AppState {
        commands: Arc::new(
            commands
                .with_retry(RetryPolicy::default())
                .with_idempotency(IDEMPOTENCY_TTL, IDEMPOTENCY_KEYS)
                .with_metrics()
                .with_tracing(),
        ),
        queries,
        store,
        limits: Limits {
            max_body_bytes: settings.max_body_bytes,
            ..Limits::default()
        },
        metrics: Some(metrics_renderer()?),
        trace_parent: Some(crate::telemetry::parent_from_headers()),
        health_details: python.map(crate::python::health_details),
        operations: flexcore_http::Operations {
            projections: read_side.map(|r| r.projections.clone()),
            consumers: Arc::from([]),
        },
        // `flexcore_http::serve` wires the real signal.
        shutdown: flexcore_http::never_shut_down(),
    })
}

/// Installs the process-wide Prometheus recorder (once) and returns its renderer.
fn metrics_renderer() -> anyhow::Result<Arc<dyn Fn() -> String + Send + Sync>> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if installed.is_none() {
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let sizes = [
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
        ];
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
            .set_buckets_for_metric(Matcher::Full("flexcore_append_batch_size".into()), &sizes)?
            .install_recorder()
            .context("cannot install the metrics recorder")?;
        *installed = Some(handle);
    }
    let handle = installed.clone().expect("installed above");
    Ok(Arc::new(move || handle.render()))
}

/// Wraps the event store a server opens before anything uses it (a decorator: the gateway
/// benchmark times the appends with one).
pub type StoreLayer = Box<dyn FnOnce(Arc<dyn EventStore>) -> Arc<dyn EventStore> + Send>;

/// Runs the server on an already bound listener until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(settings, listener, shutdown, Box::new(|store| store)).await
}

/// [`run`], with the opened event store wrapped by `store_layer` for every part of the server.
pub async fn run_with(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    store_layer: StoreLayer,
) -> anyhow::Result<()> {
    // Parsed before anything is opened: a bad broker URL fails the start and writes nothing.
    let outbox = (settings.outbox_url.as_deref())
        .map(|url| {
            flexcore_broker::OutboxConfig::from_url(url)
                .with_context(|| format!("invalid outbox_url '{}'", mask_password(url)))
        })
        .transpose()?;
    let inbound = (settings.inbound_url.as_deref())
        .map(|url| {
            flexcore_broker::InboundConfig::from_url(url)
                .with_context(|| format!("invalid inbound_url '{}'", mask_password(url)))
        })
        .transpose()?;
    let grpc_listener = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", settings.grpc_addr))?;
    let store = store_layer(open_store(&settings.store_url).await?);
    let python = crate::python::load(&settings.python, Arc::clone(&store)).await?;
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    // Durable consumers, the outbox relay and the inbound gateway: awaited at shutdown, so they
    // save their checkpoints and finish the messages they hold.
    let mut background: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let read_side = crate::readside::ReadSide::start(
        &settings.store_url,
        settings.cache_url.as_deref(),
        Arc::clone(&store),
        python.is_none(),
        stopping_seen.clone(),
    )
    .await?;
    let mut state = app_state_full(
        Arc::clone(&store),
        &settings,
        python.as_ref(),
        Some(&read_side),
    )?;
    if python.is_none() {
        let (controls, tasks): (Vec<_>, Vec<_>) = read_side
            .start_sample_consumers(Arc::clone(&store), stopping_seen.clone())
            .await?
            .into_iter()
            .unzip();
        state.operations.consumers = controls.into();
        background.extend(tasks);
    }
    let grpc_state = flexcore_grpc::GrpcState {
        commands: Arc::clone(&state.commands),
        queries: Arc::clone(&state.queries),
        store: Arc::clone(&state.store),
        limits: flexcore_grpc::Limits {
            max_message_bytes: settings.max_body_bytes,
            ..flexcore_grpc::Limits::default()
        },
    };
    tracing::warn!("authentication is OFF: every client may send any command (embedded default)");
    tracing::info!(
        http = %listener.local_addr()?,
        grpc = %grpc_listener.local_addr()?,
        store = %mask_password(&settings.store_url),
        "flexcore is listening"
    );
    if let Some(python) = &python {
        let (controls, tasks): (Vec<_>, Vec<_>) = crate::python::start(
            python,
            Arc::clone(&store),
            Arc::clone(&read_side.read_models) as Arc<_>,
            stopping_seen.clone(),
        )
        .await?
        .into_iter()
        .unzip();
        state.operations.consumers = controls.into();
        background.extend(tasks);
    }
    if let Some(outbox) = &outbox {
        tracing::info!(relay = %outbox.relay, "outbox relay publishing committed events");
        background.push(flexcore_broker::spawn_relay(
            outbox,
            Arc::clone(&store) as Arc<_>,
            Arc::clone(&read_side.read_models) as Arc<_>,
            stopping_seen.clone(),
        ));
    }
    if let (Some(inbound), Some(url)) = (inbound, &settings.inbound_url) {
        tracing::info!(url = %mask_password(url), "consuming commands from the broker");
        background.push(flexcore_broker::spawn_inbound(
            inbound,
            Arc::clone(&state.commands),
            stopping_seen.clone(),
        ));
    }
    tokio::spawn(async move {
        shutdown.await;
        let _ = stopping.send(true);
    });
    let stopped = |mut seen: tokio::sync::watch::Receiver<bool>| async move {
        let _ = seen.wait_for(|stop| *stop).await;
    };
    let servers = async {
        let (http, grpc) = tokio::join!(
            flexcore_http::serve(listener, state, stopped(stopping_seen.clone())),
            flexcore_grpc::serve(grpc_listener, grpc_state, stopped(stopping_seen.clone())),
        );
        http.context("the HTTP server failed")?;
        grpc.context("the gRPC server failed")?;
        // They saw the same shutdown signal; the grace period below bounds the wait.
        for task in background {
            let _ = task.await;
        }
        anyhow::Ok(())
    };
    // Once shutdown starts, in-flight requests and background work get `SHUTDOWN_GRACE` to
    // finish; live streams end at once. Whatever was acknowledged is already durable, so a late exit loses nothing.
    let grace = async {
        stopped(stopping_seen.clone()).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = servers => served?,
        () = grace => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "requests or background work still running after the shutdown grace period; exiting anyway"
        ),
    }
    tracing::info!("flexcore stopped");
    Ok(())
}

/// `flexcore serve`: resolve settings, start logging, bind, run until SIGINT/SIGTERM.
pub async fn serve_from_args(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    let telemetry = crate::logging::init(&settings)?;
    let listener = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http_addr))?;
    let served = run(settings, listener, shutdown_signal()).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    served
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Takes the FlexCore-specific `schema=` parameter out of a PostgreSQL URL
/// (`postgres://host/db?schema=tenant_a`); the rest goes to the driver unchanged.
pub fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut schema = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("schema=") {
            Some(value) => {
                schema = Some(value.to_owned());
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, schema)
}

/// Hides the password of a URL for logs.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_taken_out_of_postgres_urls() {
        assert_eq!(
            split_schema("postgres://h/db"),
            ("postgres://h/db".into(), None)
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=a_1"),
            ("postgres://h/db".into(), Some("a_1".into()))
        );
        assert_eq!(
            split_schema("postgres://h/db?connect_timeout=3&schema=b&sslmode=disable"),
            (
                "postgres://h/db?connect_timeout=3&sslmode=disable".into(),
                Some("b".into())
            )
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://u:secret@h/db"),
            "postgres://u:****@h/db"
        );
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_password("sqlite://./x.db"), "sqlite://./x.db");
    }
}
