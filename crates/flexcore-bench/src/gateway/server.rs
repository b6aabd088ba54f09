//! The server of the HTTP and gRPC cases: `flexcore serve`'s own `run_with`, in this process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use flexcore::cli::ServeArgs;
use flexcore::config::Settings;
use flexcore::server::{StoreLayer, run_with};
use tokio::net::TcpListener;

use super::timed_store::TimedAppends;

/// `flexcore::server::run_with` on loopback ports, over one store, its appends timed.
pub(super) struct Server {
    /// The HTTP gateway's address.
    pub(super) http: SocketAddr,
    /// The gRPC gateway's address.
    pub(super) grpc: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts the server `flexcore serve` would run with these flags (and loopback addresses)
    /// and waits until `GET /health` answers.
    ///
    /// `run` binds the gRPC address itself, so a free port is picked first (bind to port 0,
    /// note it, let it go); should another process take it meanwhile, `run` fails at once and
    /// this tries another port.
    pub(super) async fn start(serve: ServeArgs, appends: &TimedAppends) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _attempt in 0..3 {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let http = listener.local_addr()?;
            let grpc = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let settings = Settings::resolve(ServeArgs {
                http_addr: Some(http.to_string()),
                grpc_addr: Some(grpc.to_string()),
                ..serve.clone()
            })?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let appends = appends.clone();
            let layer: StoreLayer = Box::new(move |store| appends.wrap(store));
            let mut task = tokio::spawn(run_with(
                settings,
                listener,
                async {
                    let _ = stopped.await;
                },
                layer,
            ));
            match wait_ready(http, &mut task).await {
                Ok(()) => {
                    return Ok(Self {
                        http,
                        grpc,
                        stop,
                        task,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Signals shutdown and waits (bounded) for `run` to return.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .context("the server did not stop within 15 s")?
            .context("the server panicked")?
    }
}

async fn wait_ready(
    http: SocketAddr,
    task: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let probe = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if task.is_finished() {
            return match task.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("the server stopped at start")),
                Ok(Err(e)) => Err(e.context("the server failed to start")),
                Err(e) => Err(anyhow::anyhow!("the server panicked at start: {e}")),
            };
        }
        let ready = probe.get(format!("http://{http}/health")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not answer /health within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
