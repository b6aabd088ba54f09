//! `flexcore serve`: open the store, load the configured domain modules, assemble the engine
//! around them (read side, buses with middleware, durable consumers), serve HTTP and gRPC.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use flexcore_app::command::{CommandBus, CommandBusExt, CommandRouter};
use flexcore_app::durable::DurableConsumer;
use flexcore_app::event_bus::EventBus;
use flexcore_app::intercept::Interceptors;
use flexcore_app::module::{ModuleContext, Modules};
use flexcore_app::query::{QueryBus, QueryBusExt, QueryRouter};
use flexcore_app::repository::{Repository, RetryPolicy};
use flexcore_app::security::Policy;
use flexcore_app::store::EventStore;
use flexcore_app::validation::PayloadSchemas;
use flexcore_http::AppState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::ServeArgs;
use crate::config::Settings;
pub use crate::store_url::{mask_password, open_store};

/// Snapshots of aggregates are taken every this many events.
const SNAPSHOT_EVERY: u64 = 100;

/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long an idempotency key's answer is remembered.
const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How many idempotency keys are remembered at most.
const IDEMPOTENCY_KEYS: usize = 100_000;

/// The repository every module's command handlers load and save aggregates through.
pub fn repository(store: Arc<dyn EventStore>) -> Repository {
    Repository::new(store).with_snapshots_every(SNAPSHOT_EVERY)
}

/// The command bus `flexcore serve` runs: `router` behind retry on conflict, the payload
/// schemas (checked once, before any attempt, on the payload the interceptors hand on), the
/// modules' command interceptors, idempotency keys (a replayed answer runs no interceptor),
/// authorization (when there is a `policy`), metrics and tracing.
pub fn command_bus(
    router: CommandRouter,
    interceptors: Interceptors,
    schemas: PayloadSchemas,
    policy: Option<Arc<Policy>>,
) -> Arc<dyn CommandBus> {
    let idempotent = router
        .with_retry(RetryPolicy::default())
        .with_schemas(schemas)
        .with_interceptors(interceptors)
        .with_idempotency(IDEMPOTENCY_TTL, IDEMPOTENCY_KEYS);
    // Authorization runs before idempotency and schemas: a replayed answer is an answer too,
    // and a caller may not probe the schemas of commands it may not send.
    match policy {
        Some(policy) => Arc::new(
            idempotent
                .with_authorization(policy)
                .with_metrics()
                .with_tracing(),
        ),
        None => Arc::new(idempotent.with_metrics().with_tracing()),
    }
}

/// The query bus `flexcore serve` runs: `router` behind the query cache (when there is one),
/// authorization (when there is a `policy`, in front of the cache) and tracing.
pub fn query_bus(
    router: QueryRouter,
    cache: Option<&crate::readside::QueryCache>,
    policy: Option<Arc<Policy>>,
) -> Arc<dyn QueryBus> {
    let cached: Arc<dyn QueryBus> = match cache {
        Some(cache) => {
            Arc::new(router.with_cache(Arc::clone(&cache.backend), Arc::clone(&cache.policy)))
        }
        None => Arc::new(router),
    };
    match policy {
        Some(policy) => Arc::new(cached.with_authorization(policy).with_tracing()),
        None => Arc::new(cached.with_tracing()),
    }
}

/// The engine assembled over a store: the gateways' state, and the background work to await
/// at shutdown.
pub struct Engine {
    /// What the HTTP gateway serves (the gRPC gateway shares its buses).
    pub state: AppState,
    /// The read side the modules declared.
    pub read_side: crate::readside::ReadSide,
    /// Durable consumers, log followers and the modules' own tasks.
    pub background: Vec<JoinHandle<()>>,
}

/// Assembles the engine over `store` with `modules`: their read side (projections, query
/// cache), their handlers behind the server's middleware (commands checked against
/// `command_schemas`), their durable consumers and log followers; everything stops when
/// `shutdown` turns true.
pub async fn assemble(
    settings: &Settings,
    security: &crate::security::Security,
    store: Arc<dyn EventStore>,
    modules: &Modules,
    command_schemas: PayloadSchemas,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Engine> {
    let declared = modules.declare()?;
    let read_side = crate::readside::ReadSide::start(
        &settings.store_url,
        settings.cache_url.as_deref(),
        Arc::clone(&store),
        declared,
        shutdown.clone(),
    )
    .await?;
    let context = ModuleContext {
        store: Arc::clone(&store),
        repository: repository(Arc::clone(&store)),
        projections: read_side.projections.clone(),
        read_models: Arc::clone(&read_side.read_models) as Arc<_>,
        shutdown: shutdown.clone(),
    };
    let registrations = modules.register(&context).await?;
    let mut background = registrations.background;
    let mut consumers = Vec::new();
    for spec in registrations.consumers {
        let (control, task) = DurableConsumer::new(
            spec.name.clone(),
            spec.handler,
            Arc::clone(&store) as Arc<_>,
            Arc::clone(&context.read_models),
        )
        .with_options(spec.options)
        .spawn(shutdown.clone())
        .await
        .with_context(|| format!("cannot start the durable consumer '{}'", spec.name))?;
        consumers.push(control);
        background.push(task);
    }
    if !registrations.followers.is_empty() {
        let mut bus = EventBus::new();
        for (event_type, handler) in registrations.followers {
            bus.subscribe(event_type, handler);
        }
        background.push(bus.spawn(Arc::clone(&store) as Arc<_>, 0, shutdown));
    }
    let health = modules.clone();
    let handled = registrations.commands.command_types();
    for command_type in command_schemas.types() {
        if !handled.contains(&command_type) {
            tracing::warn!(
                command_type,
                handled = ?handled,
                "[schemas.commands] names a command type no loaded module handles"
            );
        }
    }
    let commands = command_bus(
        registrations.commands,
        registrations.interceptors,
        command_schemas,
        security.policy.clone(),
    );
    let state = AppState {
        async_commands: Arc::new(flexcore_app::command::AsyncCommands::new(
            Arc::clone(&commands),
            flexcore_app::command::AsyncCommands::DEFAULT_CAPACITY,
        )),
        commands,
        queries: query_bus(
            registrations.queries,
            read_side.cache.as_ref(),
            security.policy.clone(),
        ),
        gate: Arc::clone(&security.gate),
        store,
        limits: flexcore_app::RequestLimits {
            max_request_bytes: settings.max_body_bytes,
            ..Default::default()
        },
        metrics: Some(metrics_renderer()?),
        trace_parent: Some(crate::telemetry::parent_from_headers()),
        health_details: Some(Arc::new(move || health.health())),
        operations: flexcore_http::Operations {
            projections: Some(read_side.projections.clone()),
            consumers: consumers.into(),
            gdpr: None,
            plugins: None,
        },
        // `flexcore_http::serve` wires the real signal.
        shutdown: flexcore_http::never_shut_down(),
    };
    Ok(Engine {
        state,
        read_side,
        background,
    })
}

/// Installs the process-wide Prometheus recorder (once) and returns its renderer.
pub fn metrics_renderer() -> anyhow::Result<Arc<dyn Fn() -> String + Send + Sync>> {
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
    // Parsed before anything is opened: a bad broker URL or schema file fails the start and
    // writes nothing.
    let validation = crate::validation::InputValidation::compile(&settings.validation)?;
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
    crate::security::check_exposure(
        &settings.security,
        &[listener.local_addr()?, settings.grpc_addr],
    )?;
    let security = crate::security::build(&settings.security)?;
    let grpc_listener = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", settings.grpc_addr))?;
    let opened = open_store(&settings.store_url).await?;
    let gdpr =
        crate::gdpr::shredding_store(&settings.gdpr, &settings.store_url, Arc::clone(&opened))
            .await?;
    let shredded = match &gdpr {
        Some(shredding) => Arc::clone(shredding) as Arc<dyn EventStore>,
        None => opened,
    };
    // Every write path (gateways, modules, the message gateway) goes through the one guard,
    // which sees events before their personal fields are encrypted.
    let store = store_layer(validation.guard(shredded));
    let crate::modules::Loaded { modules, plugins } =
        crate::modules::load(&settings, Arc::clone(&store)).await?;
    crate::gdpr::declare_modules(gdpr.as_deref(), &modules)?;
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    // Durable consumers, the outbox relay and the inbound gateway: awaited at shutdown, so they
    // save their checkpoints and finish the messages they hold.
    let Engine {
        mut state,
        read_side,
        mut background,
    } = assemble(
        &settings,
        &security,
        Arc::clone(&store),
        &modules,
        validation.command_schemas.clone(),
        stopping_seen.clone(),
    )
    .await?;
    state.operations.gdpr = gdpr;
    state.operations.plugins = plugins;
    let tls = security.gateway_tls();
    let connection_limits = flexcore_http::ConnectionLimits {
        max_connections: settings.max_connections,
        header_read_timeout: std::time::Duration::from_millis(settings.header_read_timeout_ms),
        ..flexcore_http::ConnectionLimits::default()
    };
    let grpc_state = flexcore_grpc::GrpcState {
        commands: Arc::clone(&state.commands),
        queries: Arc::clone(&state.queries),
        store: Arc::clone(&state.store),
        limits: state.limits,
        gate: Arc::clone(&state.gate),
    };
    // The same cap and `[tls]` as HTTP; the handshake has the time HTTP gives a request head.
    let grpc_options = flexcore_grpc::GrpcServeOptions {
        max_connections: settings.max_connections,
        handshake_timeout: connection_limits.header_read_timeout,
        tls: tls.clone(),
    };
    tracing::info!(
        http = %listener.local_addr()?,
        grpc = %grpc_listener.local_addr()?,
        store = %mask_password(&settings.store_url),
        modules = ?modules.names(),
        "flexcore is listening"
    );
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
            inbound.with_gate(Arc::clone(&state.gate)),
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
            flexcore_http::serve_with(
                listener,
                state,
                connection_limits,
                tls,
                stopped(stopping_seen.clone())
            ),
            flexcore_grpc::serve_with(
                grpc_listener,
                grpc_state,
                grpc_options,
                stopped(stopping_seen.clone())
            ),
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
