//! The backend's Prometheus metrics, served at `/metrics` on `backend.metrics_listen`.
//!
//! Every refusal is counted by its gRPC code (`gantry_backend_requests_total`), and
//! the queue limit — the one a healthy backend hits under load — also on its own
//! (`gantry_backend_queue_rejections_total`). Queue depth, running sequences and KV
//! cache bytes are read from the schedulers at scrape time.

use crate::scheduler::GenerateEngine;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// Each generation model's scheduler, for the gauges.
type Loads = Arc<std::sync::Mutex<Vec<(String, GenerateEngine)>>>;

/// The backend's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    queue_rejections: IntCounterVec,
    tokens: IntCounterVec,
    ttft: HistogramVec,
    queued: IntGaugeVec,
    running: IntGaugeVec,
    kv_bytes: IntGaugeVec,
    loads: Loads,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let requests = counter(
            "gantry_backend_requests_total",
            "gRPC calls by model, method and status code (OK or the refusal's code)",
            &["model", "method", "code"],
        );
        let queue_rejections = counter(
            "gantry_backend_queue_rejections_total",
            "Requests refused because max_queued requests were already waiting",
            &["model"],
        );
        let tokens = counter(
            "gantry_backend_generated_tokens_total",
            "Tokens generated",
            &["model"],
        );
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "gantry_backend_time_to_first_token_seconds",
                "Arrival to first generated token",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["model"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(ttft.clone()))
            .expect("unique metric");
        Metrics {
            requests,
            queue_rejections,
            tokens,
            ttft,
            queued: gauge("gantry_backend_queued", "Requests waiting for a batch slot"),
            running: gauge("gantry_backend_running", "Sequences in the running batch"),
            kv_bytes: gauge("gantry_backend_kv_cache_bytes", "Bytes of KV cache in use"),
            loads: Arc::default(),
            registry,
        }
    }

    /// Follow a model's scheduler for the gauges.
    pub fn watch(&self, model: &str, engine: GenerateEngine) {
        self.loads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((model.to_string(), engine));
    }

    /// Count one call's outcome.
    pub fn request(&self, model: &str, method: &str, code: tonic::Code) {
        let code = format!("{code:?}");
        self.requests
            .with_label_values(&[model, method, &code])
            .inc();
    }

    /// Count a queue-limit refusal.
    pub fn queue_rejection(&self, model: &str) {
        self.queue_rejections.with_label_values(&[model]).inc();
    }

    /// Count a finished generation.
    pub fn generated(&self, model: &str, tokens: usize, ttft: Option<std::time::Duration>) {
        self.tokens
            .with_label_values(&[model])
            .inc_by(tokens as u64);
        if let Some(t) = ttft {
            let h: Histogram = self.ttft.with_label_values(&[model]);
            h.observe(t.as_secs_f64());
        }
    }

    /// The text exposition, gauges refreshed.
    pub fn render(&self) -> Vec<u8> {
        for (model, engine) in self.loads.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let l = engine.load().borrow().clone();
            self.queued
                .with_label_values(&[model])
                .set(engine.queued_now() as i64);
            self.running
                .with_label_values(&[model])
                .set(l.running as i64);
            self.kv_bytes
                .with_label_values(&[model])
                .set(l.kv_cache_bytes as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }

    /// Serve `/metrics` on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move {
                            let response = if req.uri().path() == "/metrics" {
                                hyper::Response::builder()
                                    .header("content-type", "text/plain; version=0.0.4")
                                    .body(Full::new(Bytes::from(metrics.render())))
                            } else {
                                hyper::Response::builder().status(404).body(Full::new(
                                    Bytes::from_static(b"not found: try /metrics\n"),
                                ))
                            };
                            Ok::<_, std::convert::Infallible>(
                                response.expect("static response parts"),
                            )
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("backend.metrics_listen {addr}: cannot bind: {e}"))
}
