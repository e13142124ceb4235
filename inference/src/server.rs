//! The backend's lifecycle (the service is `service.rs`, model loading
//! [`crate::models`]).
//!
//! Start-up: the port is bound and `grpc.health.v1` answers NOT_SERVING at once;
//! models load and warm up in the background; then SERVING. SIGTERM (or
//! [`Backend::shutdown`]): NOT_SERVING, new requests get UNAVAILABLE,
//! running streams finish within the grace period, the rest end `cancelled`.

use crate::metrics::Metrics;
use crate::models::{load_model, Served, State};
use crate::scheduler::GenerateEngine;
use crate::service::Service;
use gantry_config::backend::BackendConfig;
use gantry_proto::v1::inference_server::InferenceServer;
use gantry_telemetry::traces::Traces;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use gantry_proto::limits::{MAX_REQUEST_ID_BYTES, MAX_STOP_BYTES, MAX_STOP_SEQUENCES};
/// Retry hint, in seconds, sent with RESOURCE_EXHAUSTED.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// Load reports go out at least this often while a model is busy.
pub const LOAD_REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// The gRPC service name, as health checks know it.
pub const SERVICE_NAME: &str = "gantry.inference.v1.Inference";

/// Set the health of the whole server (`""`) and of the Inference service.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// A running backend.
pub struct Backend {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The bound `/metrics` address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    state: Arc<State>,
    shutdown: Arc<Notify>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    grace: Duration,
    loaded: tokio::task::JoinHandle<anyhow::Result<()>>,
    traces: Option<Arc<Traces>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("addr", &self.addr).finish()
    }
}

impl Backend {
    /// Bind, start serving health (NOT_SERVING), and load the models in the
    /// background; health turns SERVING once every model is warm.
    pub async fn start(config: BackendConfig) -> anyhow::Result<Backend> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("backend.listen {}: cannot bind: {e}", config.listen))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            models: OnceLock::new(),
            draining: AtomicBool::new(false),
            load_changed: Notify::new(),
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        let shutdown = Arc::new(Notify::new());
        let metrics = Metrics::new();
        let metrics_addr = match config.metrics_listen {
            Some(addr) => {
                let listener = crate::metrics::bind(addr).await?;
                let bound = listener.local_addr()?;
                tokio::spawn(metrics.clone().serve(listener));
                Some(bound)
            }
            None => None,
        };
        let traces = match &config.traces {
            Some(t) => Some(Arc::new(
                Traces::new(
                    t,
                    &tokio::runtime::Handle::current(),
                    metrics.trace_spans.clone(),
                )
                .map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        let service = Service {
            state: state.clone(),
            metrics: metrics.clone(),
            traces: traces.clone(),
        };
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                // Adaptive HTTP/2 flow control: a large prompt arrives at link
                // speed instead of one 64 KiB window per round trip.
                .http2_adaptive_window(Some(true))
                .add_service(health_service)
                .add_service(InferenceServer::new(service))
                .serve_with_incoming_shutdown(
                    // TCP_NODELAY: every token is a small write; with Nagle's
                    // algorithm each one after the first waits for the client's
                    // delayed ACK (~40 ms on Linux).
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move { stop.notified().await },
                )
                .await
                .map_err(anyhow::Error::from)
        });
        let loading = state.clone();
        let models = config.models.clone();
        let loaded = tokio::spawn(async move {
            let built = tokio::task::spawn_blocking(move || {
                models
                    .iter()
                    .map(|m| {
                        load_model(m)
                            .map(|model| (m.name.clone(), model))
                            .map_err(|e| {
                                anyhow::anyhow!("model {} ({}): {e:#}", m.name, m.path.display())
                            })
                    })
                    .collect::<anyhow::Result<BTreeMap<_, _>>>()
            })
            .await??;
            for (name, model) in &built {
                if let Served::Generate { engine, .. } = &model.served {
                    metrics.watch(name, engine.clone());
                }
            }
            let _ = loading.models.set(built);
            if !loading.draining.load(Ordering::Acquire) {
                set_health(&health, tonic_health::ServingStatus::Serving).await;
            }
            // Hold the reporter to flip to NOT_SERVING on drain.
            loading.load_changed.notified().await;
            loop {
                if loading.draining.load(Ordering::Acquire) {
                    set_health(&health, tonic_health::ServingStatus::NotServing).await;
                    return Ok(());
                }
                loading.load_changed.notified().await;
            }
        });
        Ok(Backend {
            addr,
            metrics_addr,
            state,
            shutdown,
            server,
            grace: config.grace_period,
            loaded,
            traces,
        })
    }

    /// Wait until every model is loaded and warm (or loading failed).
    pub async fn ready(&self) -> anyhow::Result<()> {
        loop {
            if self.state.models.get().is_some() {
                return Ok(());
            }
            if self.loaded.is_finished() {
                anyhow::bail!("model loading failed; see the log");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drain and stop: NOT_SERVING, refuse new requests, let running streams
    /// finish within the grace period, cancel what is left, stop the server.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.draining.store(true, Ordering::Release);
        self.state.load_changed.notify_waiters();
        let deadline = Instant::now() + self.grace;
        if let Some(models) = self.state.models.get() {
            let engines: Vec<&GenerateEngine> = models
                .values()
                .filter_map(|m| match &m.served {
                    Served::Generate { engine, .. } => Some(engine),
                    Served::Embed { .. } => None,
                })
                .collect();
            let idle = |e: &&GenerateEngine| e.is_idle();
            while Instant::now() < deadline && !engines.iter().all(idle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for e in &engines {
                e.abort_all();
            }
            // Give the streams a moment to deliver their final message.
            let flush = Instant::now() + Duration::from_millis(500);
            while Instant::now() < flush && !engines.iter().all(idle) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.shutdown.notify_one();
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!(target: "gantry::backend", "server did not stop within 5 s"),
        }
        self.loaded.abort();
        if let Some(traces) = self.traces {
            // The provider waits for its export thread: not on a runtime thread.
            tokio::task::spawn_blocking(move || traces.flush()).await?;
        }
        Ok(())
    }
}
