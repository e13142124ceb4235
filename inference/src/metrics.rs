//! The backend's Prometheus metrics, served at `/metrics` on `backend.metrics_listen`.
//!
//! Every refusal is counted by its gRPC code (`gantry_backend_requests_total`), and
//! the queue limit — the one a healthy backend hits under load — also on its own
//! (`gantry_backend_queue_rejections_total`). Queue depth, running sequences and KV
//! cache bytes are read from the schedulers at scrape time.

use crate::scheduler::GenerateEngine;
use gantry_telemetry::{Exported, Registrar};
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGaugeVec};
use std::net::SocketAddr;
use std::sync::Arc;

/// Time-to-first-token buckets in seconds: 10 ms to 10 s.
const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Each generation model's scheduler, for the gauges.
type Loads = Arc<std::sync::Mutex<Vec<(String, GenerateEngine)>>>;

/// The backend's metrics.
#[derive(Clone)]
pub struct Metrics {
    exported: Exported,
    requests: IntCounterVec,
    queue_rejections: IntCounterVec,
    tokens: IntCounterVec,
    prompt_tokens: IntCounterVec,
    ttft: HistogramVec,
    queued: IntGaugeVec,
    running: IntGaugeVec,
    kv_bytes: IntGaugeVec,
    kv_kept_bytes: IntGaugeVec,
    loads: Loads,
    /// `gantry_backend_trace_spans_total{result}`.
    pub trace_spans: gantry_telemetry::traces::SpanCounts,
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
        let mut r = Registrar::new();
        let per_model = &["model"];
        Metrics {
            requests: r.counter(
                "gantry_backend_requests_total",
                "gRPC calls by model, method and status code (OK or the refusal's code)",
                &["model", "method", "code"],
            ),
            queue_rejections: r.counter(
                "gantry_backend_queue_rejections_total",
                "Requests refused because max_queued requests were already waiting",
                per_model,
            ),
            tokens: r.counter(
                "gantry_backend_generated_tokens_total",
                "Tokens generated",
                per_model,
            ),
            prompt_tokens: r.counter(
                "gantry_backend_prompt_tokens_total",
                "Prompt tokens of finished requests, by source: `computed` (prefilled) or `cached` (KV reused from an earlier request with the same prefix)",
                &["model", "source"],
            ),
            ttft: r.histogram(
                "gantry_backend_time_to_first_token_seconds",
                "Arrival to first generated token",
                TTFT_BUCKETS,
                per_model,
            ),
            queued: r.gauge(
                "gantry_backend_queued",
                "Requests waiting for a batch slot",
                per_model,
            ),
            running: r.gauge(
                "gantry_backend_running",
                "Sequences in the running batch",
                per_model,
            ),
            kv_bytes: r.gauge(
                "gantry_backend_kv_cache_bytes",
                "Bytes of KV cache in use",
                per_model,
            ),
            kv_kept_bytes: r.gauge(
                "gantry_backend_kv_kept_bytes",
                "Bytes of KV blocks kept for prefix reuse, no sequence using them",
                per_model,
            ),
            loads: Arc::default(),
            trace_spans: gantry_telemetry::traces::SpanCounts::register(
                &mut r,
                "gantry_backend_trace_spans_total",
            ),
            exported: r.finish(),
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

    /// Count a finished generation's prompt: computed or reused.
    pub fn prompt(&self, model: &str, prompt_tokens: usize, cached_tokens: usize) {
        self.prompt_tokens
            .with_label_values(&[model, "cached"])
            .inc_by(cached_tokens as u64);
        self.prompt_tokens
            .with_label_values(&[model, "computed"])
            .inc_by(prompt_tokens.saturating_sub(cached_tokens) as u64);
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
            self.kv_kept_bytes
                .with_label_values(&[model])
                .set(l.kv_kept_bytes as i64);
        }
        self.exported.encode()
    }

    /// Every metric's name and variable labels (what docs/INFERENCE.md lists).
    #[cfg(test)]
    fn catalog(&self) -> &[(String, Vec<String>)] {
        self.exported.catalog()
    }

    /// Serve `/metrics` on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        gantry_telemetry::serve(listener, Arc::new(move || self.render())).await
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("backend.metrics_listen {addr}: cannot bind: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_docs_list_every_metric_with_its_labels() {
        let mut docs = gantry_telemetry::documented(include_str!("../../docs/INFERENCE.md"));
        docs.sort();
        let mut exported = Metrics::new().catalog().to_vec();
        exported.sort();
        assert_eq!(docs, exported);
    }
}
