//! Prometheus metrics, one registry per gateway instance (so in-process tests that
//! run several gateways never mix their counts). Served on the admin listener.
//!
//! This file defines every metric and the vocabulary of its fixed labels
//! ([`Refusal`], [`Handshake`], [`Hook`], [`HookOutcome`], [`Direction`],
//! [`CallResult`], [`ReloadResult`], [`ConfigReload`] in `labels.rs`; plugin limits are
//! [`gantry_plugins::Limit`]);
//! call sites record through typed methods ([`Metrics::refused`],
//! [`Metrics::tls_handshake`], [`Metrics::plugin_call`], [`Metrics::tokens`],
//! [`Metrics::plugin_limit_hit`] and the rest),
//! the hottest counters resolved once. docs/OPERATIONS.md's metric tables are checked against
//! [`Metrics::catalog`] by a test. Labels taken from configuration (route,
//! pool, plugin, model names) are closed sets too: see the table's notes.

mod labels;
mod recent;

pub use labels::{
    CallResult, ConfigReload, Denial, Direction, Handshake, Hook, HookOutcome, Refusal,
    ReloadResult,
};
pub use recent::{FailedRequest, PluginTotals, RecentErrors, RECENT_ERRORS};

use gantry_telemetry::traces::SpanCounts;
use gantry_telemetry::{Exported, Registrar};
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    /// The registry and its catalog.
    exported: Exported,
    /// `gantry_limit_rejections_total`, one counter per [`Refusal`].
    refusals: Vec<prometheus::IntCounter>,
    /// `gantry_tls_handshakes_total`, one counter per [`Handshake`].
    handshakes: Vec<prometheus::IntCounter>,
    /// `gantry_requests_total{route,status}` (see [`RouteMetrics`])
    requests: IntCounterVec,
    /// `gantry_request_duration_seconds{route}` (see [`RouteMetrics`])
    latency: HistogramVec,
    /// `gantry_open_connections`
    pub open_connections: IntGauge,
    /// `gantry_inflight_requests`
    pub inflight_requests: IntGauge,
    /// `gantry_upstream_retries_total{pool}`
    pub upstream_retries: IntCounterVec,
    /// `gantry_upstream_endpoint_healthy{pool,endpoint}`: 1 healthy, 0 ejected.
    pub endpoint_healthy: IntGaugeVec,
    /// The OpenAI-compatible API's requests and tokens.
    pub inference: InferenceMetrics,
    /// Inference backends as the gateway sees them.
    pub backends: BackendMetrics,
    /// Wasm plugins.
    pub plugins: PluginMetrics,
    /// `gantry_key_requests_total{key}`: requests let in, by configured key name.
    key_requests: IntCounterVec,
    /// `gantry_auth_rejections_total{route,reason}`: requests refused by a route's
    /// `auth = "keys"`, by [`Denial`].
    auth_rejections: IntCounterVec,
    /// `gantry_key_rejections_total{key,limit}`: requests refused by a key's rate
    /// limits (`requests`, `output_tokens`, `concurrent`).
    key_rejections: IntCounterVec,
    /// `gantry_key_inflight_requests{key}`.
    key_inflight: IntGaugeVec,
    /// `gantry_key_reserved_tokens{key}`: output tokens reserved, not yet settled.
    key_reserved: IntGaugeVec,
    /// `gantry_key_tokens_total{key,direction}`: tokens used under a key.
    key_tokens: IntCounterVec,
    /// `gantry_key_store_up`: 1 while the shared key store (Redis) answers.
    key_store_up: IntGaugeVec,
    /// `gantry_key_store_errors_total`: its commands that failed or timed out.
    key_store_errors: IntCounterVec,
    /// `gantry_config_version`: the live configuration's number (1 at start,
    /// one more per applied reload).
    pub config_version: IntGauge,
    /// `gantry_config_reloads_total{result}`, one counter per [`ConfigReload`].
    config_reloads: Vec<IntCounter>,
    /// The last failed requests, for `/status` (not exported).
    pub recent_errors: RecentErrors,
    /// `gantry_trace_spans_total{result}`.
    pub trace_spans: gantry_telemetry::traces::SpanCounts,
}

/// Statuses most answers have: their `gantry_requests_total` series are kept
/// per route once first used, so counting them hashes no labels.
const COMMON_STATUSES: [u16; 16] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 499, 500, 502, 503, 504,
];

/// One route's request metrics, resolved once: what every finished request
/// records without building or hashing a label.
pub struct RouteMetrics {
    route: String,
    latency: Histogram,
    requests: IntCounterVec,
    /// By [`COMMON_STATUSES`] position, created on first use (a series
    /// appears only once it counts something).
    by_status: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
}

impl RouteMetrics {
    /// Count a finished request: its status (0 when no response was sent) and
    /// its duration.
    pub fn finished(&self, status: u16, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
        match COMMON_STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.by_status[i].get_or_init(|| self.series(status)).inc(),
            None => self.series(status).inc(),
        }
    }

    /// The route's `gantry_requests_total` series for `status`, looked up.
    fn series(&self, status: u16) -> IntCounter {
        self.requests
            .with_label_values(&[&self.route, &status.to_string()])
    }
}

/// The OpenAI-compatible API: `gantry_inference_*`.
pub struct InferenceMetrics {
    /// `gantry_inference_requests_total{model,backend,status}`; `backend` is `none`
    /// when the request was answered before one was picked.
    pub requests: IntCounterVec,
    /// `gantry_inference_time_to_first_token_seconds{model,backend}`, from request
    /// arrival at the gateway.
    pub ttft: HistogramVec,
    /// `gantry_inference_inter_token_seconds{model,backend}`: between two streamed deltas.
    pub inter_token: HistogramVec,
    /// `gantry_inference_queue_seconds{model,backend}`: time queued at the backend.
    pub queue: HistogramVec,
    /// `gantry_inference_tokens_total{model,backend,direction}`: `in` (prompt),
    /// `out`, `cached` (prompt tokens reused by the backend).
    tokens: IntCounterVec,
    /// `gantry_inference_retries_total{pool}`: requests sent to a second backend
    /// after the first failed before its first token.
    pub retries: IntCounterVec,
}

impl InferenceMetrics {
    fn register(r: &mut Registrar) -> Self {
        InferenceMetrics {
            requests: r.counter(
                "gantry_inference_requests_total",
                "OpenAI-compatible API requests answered, by model, backend and HTTP status",
                &["model", "backend", "status"],
            ),
            ttft: r.histogram(
                "gantry_inference_time_to_first_token_seconds",
                "Time from request arrival to the first generated token",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            inter_token: r.histogram(
                "gantry_inference_inter_token_seconds",
                "Time between two streamed token deltas",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            queue: r.histogram(
                "gantry_inference_queue_seconds",
                "Time a request waited in the backend's queue, as the backend reports it",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            tokens: r.counter(
                "gantry_inference_tokens_total",
                "Tokens in (prompt) and out (generated), by model and backend",
                &["model", "backend", "direction"],
            ),
            retries: r.counter(
                "gantry_inference_retries_total",
                "Inference requests sent to another backend after failing before the first token",
                &["pool"],
            ),
        }
    }
}

/// Inference backends: `gantry_inference_backend_*`, labelled by pool and backend.
pub struct BackendMetrics {
    /// `gantry_inference_backend_healthy{pool,backend}`: 1 takes traffic, 0 out.
    pub healthy: IntGaugeVec,
    /// `gantry_inference_backend_inflight{pool,backend}`: this gateway's requests there.
    pub inflight: IntGaugeVec,
    /// `gantry_inference_backend_load{pool,backend,model,measure}`: the backend's own
    /// last report (`queued`, `running`, `tokens_in_flight`).
    pub load: IntGaugeVec,
    /// `gantry_inference_backend_lost_total{pool,backend}`: watch streams broke.
    pub lost: IntCounterVec,
    /// `gantry_inference_backend_ejections_total{pool,backend}`: a failed call
    /// took the backend out of rotation (a request's own fault never does).
    pub ejections: IntCounterVec,
    /// `gantry_inference_backend_prefix_blocks{pool,backend,model}`: KV block
    /// names indexed for the backend (from its `WatchKvBlocks` stream).
    pub prefix_blocks: IntGaugeVec,
    /// `gantry_inference_prefix_index_problems_total{pool,backend,problem}`:
    /// updates not applied in full, by [`crate::upstream::prefix_index::IndexProblem`].
    pub prefix_index_problems: IntCounterVec,
    /// `gantry_inference_picks_total{pool,reason}`: backends picked, by why:
    /// `load`, `prefix` (it held the prompt's longest prefix), `imbalance` (the
    /// prefix holder was too busy; picked by load), `plugin` (a route's plugin
    /// asked for it).
    pub picks: IntCounterVec,
    /// `gantry_inference_prefix_blocks_total{pool,result}`: a prefix-routed
    /// prompt's reusable KV blocks, `matched` at the picked backend or `missed`.
    pub prefix_blocks_total: IntCounterVec,
}

impl BackendMetrics {
    fn register(r: &mut Registrar) -> Self {
        BackendMetrics {
            healthy: r.gauge(
                "gantry_inference_backend_healthy",
                "Whether an inference backend takes traffic (1) or not (0)",
                POOL_BACKEND,
            ),
            inflight: r.gauge(
                "gantry_inference_backend_inflight",
                "Requests this gateway has in flight at an inference backend",
                POOL_BACKEND,
            ),
            load: r.gauge(
                "gantry_inference_backend_load",
                "An inference backend's last load report: queued, running, tokens_in_flight",
                &["pool", "backend", "model", "measure"],
            ),
            lost: r.counter(
                "gantry_inference_backend_lost_total",
                "Times an inference backend's health and load streams broke",
                POOL_BACKEND,
            ),
            ejections: r.counter(
                "gantry_inference_backend_ejections_total",
                "Times a failed call took an inference backend out of rotation",
                POOL_BACKEND,
            ),
            prefix_blocks: r.gauge(
                "gantry_inference_backend_prefix_blocks",
                "KV block names indexed for an inference backend, per model",
                &["pool", "backend", "model"],
            ),
            picks: r.counter(
                "gantry_inference_picks_total",
                "Inference backends picked, by reason: load, prefix, imbalance or plugin",
                &["pool", "reason"],
            ),
            prefix_blocks_total: r.counter(
                "gantry_inference_prefix_blocks_total",
                "Reusable KV blocks of prefix-routed prompts: matched at the picked backend, or missed",
                &["pool", "result"],
            ),
            prefix_index_problems: r.counter(
                "gantry_inference_prefix_index_problems_total",
                "KV block updates not applied in full: gap (changes missed; resubscribed) or over_limit (names past prefix_index_max_blocks dropped)",
                &["pool", "backend", "problem"],
            ),
        }
    }
}

/// Wasm plugins: `gantry_plugin_*`.
pub struct PluginMetrics {
    /// `gantry_plugin_http_calls_total{plugin,upstream,result}`: plugins'
    /// `proxy_http_call`s, by [`CallResult`].
    http_calls: IntCounterVec,
    /// `gantry_plugin_grpc_calls_total{plugin,upstream,result}`: plugins' gRPC
    /// calls and streams, by [`CallResult`].
    grpc_calls: IntCounterVec,
    /// `gantry_plugin_calls_total{route,plugin,hook,outcome}`, by [`Hook`] and
    /// [`HookOutcome`].
    calls: IntCounterVec,
    /// `gantry_plugin_limit_hits_total{plugin,limit}`, by
    /// [`gantry_plugins::Limit`].
    limit_hits: IntCounterVec,
    /// `gantry_plugin_metric{route,plugin,name,kind}`: the metrics plugins define
    /// (counters, gauges; for histograms the last recorded value), set at scrape.
    pub defined: IntGaugeVec,
    /// `gantry_plugin_reloads_total{plugin,result}`, by [`ReloadResult`].
    reloads: IntCounterVec,
}

impl PluginMetrics {
    fn register(r: &mut Registrar) -> Self {
        PluginMetrics {
            http_calls: r.counter(
                "gantry_plugin_http_calls_total",
                "HTTP calls made by Wasm plugins (proxy_http_call), by plugin, pool and result",
                &["plugin", "upstream", "result"],
            ),
            grpc_calls: r.counter(
                "gantry_plugin_grpc_calls_total",
                "gRPC calls and streams made by Wasm plugins (proxy_grpc_call, proxy_grpc_stream), by plugin, pool and result",
                &["plugin", "upstream", "result"],
            ),
            calls: r.counter(
                "gantry_plugin_calls_total",
                "Wasm plugin hook calls, by route, plugin, hook and outcome",
                &["route", "plugin", "hook", "outcome"],
            ),
            limit_hits: r.counter(
                "gantry_plugin_limit_hits_total",
                "Wasm plugin hook calls stopped by a limit",
                &["plugin", "limit"],
            ),
            defined: r.gauge(
                "gantry_plugin_metric",
                "Metrics defined by Wasm plugins (proxy_define_metric), by route, plugin, name and kind",
                &["route", "plugin", "name", "kind"],
            ),
            reloads: r.counter(
                "gantry_plugin_reloads_total",
                "Wasm plugin hot reloads, by plugin and result (ok, error)",
                &["plugin", "result"],
            ),
        }
    }
}

/// Time-to-first-token and per-token buckets in seconds: 0.1 ms to 30 s.
const TOKEN_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Labels of per-model metrics.
const MODEL_BACKEND: &[&str] = &["model", "backend"];
/// Labels of per-backend metrics.
const POOL_BACKEND: &[&str] = &["pool", "backend"];

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut r = Registrar::new();
        let limit_rejections = r.counter(
            "gantry_limit_rejections_total",
            "Requests or connections refused because a configured limit was reached",
            &["limit"],
        );
        let tls_handshakes = r.counter(
            "gantry_tls_handshakes_total",
            "TLS handshakes on the gateway's listeners, by result (ok, failed, timeout)",
            &["result"],
        );
        Metrics {
            refusals: Refusal::ALL
                .iter()
                .map(|why| limit_rejections.with_label_values(&[why.as_str()]))
                .collect(),
            handshakes: Handshake::ALL
                .iter()
                .map(|h| tls_handshakes.with_label_values(&[h.as_str()]))
                .collect(),
            requests: r.counter(
                "gantry_requests_total",
                "Requests answered, by route and status",
                &["route", "status"],
            ),
            latency: r.histogram(
                "gantry_request_duration_seconds",
                "Time from request headers received to response finished, by route",
                LATENCY_BUCKETS,
                &["route"],
            ),
            open_connections: r.int_gauge("gantry_open_connections", "Client connections open now"),
            inflight_requests: r
                .int_gauge("gantry_inflight_requests", "Requests being processed now"),
            upstream_retries: r.counter(
                "gantry_upstream_retries_total",
                "Requests retried on another endpoint after a connect failure",
                &["pool"],
            ),
            endpoint_healthy: r.gauge(
                "gantry_upstream_endpoint_healthy",
                "Whether an upstream endpoint receives traffic (1) or is ejected (0)",
                &["pool", "endpoint"],
            ),
            inference: InferenceMetrics::register(&mut r),
            backends: BackendMetrics::register(&mut r),
            plugins: PluginMetrics::register(&mut r),
            key_requests: r.counter(
                "gantry_key_requests_total",
                "Requests let in on routes with auth = keys, by the key's configured name",
                &["key"],
            ),
            auth_rejections: r.counter(
                "gantry_auth_rejections_total",
                "Requests refused on routes with auth = keys, by route and reason (missing, unknown, route, model)",
                &["route", "reason"],
            ),
            key_rejections: r.counter(
                "gantry_key_rejections_total",
                "Requests refused by an API key's rate limits, by key name and limit (requests, output_tokens, concurrent)",
                &["key", "limit"],
            ),
            key_inflight: r.gauge(
                "gantry_key_inflight_requests",
                "Requests in flight under an API key, by key name",
                &["key"],
            ),
            key_reserved: r.gauge(
                "gantry_key_reserved_tokens",
                "Output tokens reserved under an API key and not yet settled, by key name",
                &["key"],
            ),
            key_tokens: r.counter(
                "gantry_key_tokens_total",
                "Tokens used under an API key as its requests settle, by key name and direction (input: prompt, output: generated)",
                &["key", "direction"],
            ),
            key_store_up: r.gauge(
                "gantry_key_store_up",
                "1 while the shared key store (Redis) answers, 0 while it is unreachable",
                &[],
            ),
            key_store_errors: r.counter(
                "gantry_key_store_errors_total",
                "Commands to the shared key store (Redis) that failed or timed out",
                &[],
            ),
            config_version: r.int_gauge(
                "gantry_config_version",
                "The live configuration: 1 at start, one more per applied reload",
            ),
            config_reloads: {
                let reloads = r.counter(
                    "gantry_config_reloads_total",
                    "Configuration reloads (SIGHUP, POST /admin/reload), by result: ok, invalid, needs_restart, failed",
                    &["result"],
                );
                ConfigReload::ALL
                    .iter()
                    .map(|r| reloads.with_label_values(&[r.as_str()]))
                    .collect()
            },
            recent_errors: RecentErrors::default(),
            trace_spans: SpanCounts::register(&mut r, "gantry_trace_spans_total"),
            exported: r.finish(),
        }
    }

    /// The request metrics of a route (or of `none`, for requests no route
    /// matched), resolved once.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            latency: self.latency.with_label_values(&[route]),
            requests: self.requests.clone(),
            by_status: Default::default(),
        }
    }

    /// A configured key's `gantry_key_requests_total` series, resolved once.
    pub fn key_requests(&self, key: &str) -> IntCounter {
        self.key_requests.with_label_values(&[key])
    }

    /// A configured key's outstanding-work gauges, resolved once.
    pub fn key_outstanding(&self, key: &str) -> crate::tenants::limiter::Outstanding {
        crate::tenants::limiter::Outstanding {
            requests: self.key_inflight.with_label_values(&[key]),
            tokens: self.key_reserved.with_label_values(&[key]),
            used: ["input", "output"].map(|d| self.key_tokens.with_label_values(&[key, d])),
        }
    }

    /// The shared key store's gauges, resolved once.
    pub fn key_store(&self) -> crate::tenants::shared::StoreMetrics {
        crate::tenants::shared::StoreMetrics {
            up: self.key_store_up.with_label_values(&[]),
            errors: self.key_store_errors.with_label_values(&[]),
        }
    }

    /// Count a request refused by a key's rate limit (`limit`: `requests`,
    /// `output_tokens`, `concurrent`).
    pub fn key_rejected(&self, key: &str, limit: &str) {
        self.key_rejections.with_label_values(&[key, limit]).inc();
    }

    /// Count a request refused by a route's `auth = "keys"`.
    pub fn auth_rejected(&self, route: &str, why: Denial) {
        self.auth_rejections
            .with_label_values(&[route, why.as_str()])
            .inc();
    }

    /// Count work refused by a limit.
    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].inc();
    }

    /// The counter of one refusal, for a hot loop that counts it itself.
    pub fn refusal_counter(&self, why: Refusal) -> prometheus::IntCounter {
        self.refusals[why as usize].clone()
    }

    /// The counter of one plugin hook outcome on one route, for a caller that
    /// resolves it once.
    pub fn plugin_call_counter(
        &self,
        route: &str,
        plugin: &str,
        hook: Hook,
        outcome: HookOutcome,
    ) -> prometheus::IntCounter {
        self.plugins
            .calls
            .with_label_values(&[route, plugin, hook.as_str(), outcome.as_str()])
    }

    /// Count one plugin hook call.
    pub fn plugin_call(&self, route: &str, plugin: &str, hook: Hook, outcome: HookOutcome) {
        self.plugin_call_counter(route, plugin, hook, outcome).inc();
    }

    /// Count `n` calls of a plugin's hook that ran outside requests (ticks).
    pub fn plugin_calls(
        &self,
        route: &str,
        plugin: &str,
        hook: Hook,
        outcome: HookOutcome,
        n: u64,
    ) {
        if n > 0 {
            self.plugin_call_counter(route, plugin, hook, outcome)
                .inc_by(n);
        }
    }

    /// Count tokens of a model on a backend.
    pub fn tokens(&self, model: &str, backend: &str, direction: Direction, n: u64) {
        self.inference
            .tokens
            .with_label_values(&[model, backend, direction.as_str()])
            .inc_by(n);
    }

    /// Count a plugin's `proxy_http_call` to `upstream`.
    pub fn plugin_http_call(&self, plugin: &str, upstream: &str, result: CallResult) {
        self.plugins
            .http_calls
            .with_label_values(&[plugin, upstream, result.as_str()])
            .inc();
    }

    /// Count a plugin's gRPC call or stream: `ok` when it ended with status OK.
    pub fn plugin_grpc_call(&self, plugin: &str, upstream: &str, result: CallResult) {
        self.plugins
            .grpc_calls
            .with_label_values(&[plugin, upstream, result.as_str()])
            .inc();
    }

    /// Count `n` times a plugin met a limit.
    pub fn plugin_limit_hit(&self, plugin: &str, limit: gantry_plugins::Limit, n: u64) {
        self.plugins
            .limit_hits
            .with_label_values(&[plugin, limit.as_str()])
            .inc_by(n);
    }

    /// A plugin's calls on `route`, its failures there, and its limit hits.
    pub fn plugin_totals(&self, route: &str, plugin: &str) -> PluginTotals {
        let here = [("route", route), ("plugin", plugin)];
        PluginTotals {
            calls: recent::sum(&self.plugins.calls, &here, None),
            failed: recent::sum(
                &self.plugins.calls,
                &here,
                Some(&[
                    HookOutcome::Error.as_str(),
                    HookOutcome::Unhealthy.as_str(),
                    HookOutcome::Busy.as_str(),
                ]),
            ),
            limit_hits: recent::sum(&self.plugins.limit_hits, &[("plugin", plugin)], None),
        }
    }

    /// Count a configuration reload.
    pub fn config_reload(&self, result: ConfigReload) {
        self.config_reloads[result as usize].inc();
    }

    /// Count a plugin hot reload.
    pub fn plugin_reload(&self, plugin: &str, result: ReloadResult) {
        self.plugins
            .reloads
            .with_label_values(&[plugin, result.as_str()])
            .inc();
    }

    /// Count a finished TLS handshake.
    pub fn tls_handshake(&self, result: Handshake) {
        self.handshakes[result as usize].inc();
    }

    /// Every metric's name and variable labels (what docs/OPERATIONS.md lists).
    pub fn catalog(&self) -> &[(String, Vec<String>)] {
        self.exported.catalog()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.exported.encode()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operations_docs_list_every_metric_with_its_labels() {
        let mut docs = gantry_telemetry::documented(include_str!("../../../docs/OPERATIONS.md"));
        docs.extend(gantry_telemetry::documented(include_str!(
            "../../../docs/INFERENCE-GATEWAY.md"
        )));
        docs.sort();
        let mut exported = Metrics::new().catalog().to_vec();
        exported.sort();
        assert_eq!(docs, exported);
    }

    /// The documentation row of `metric`.
    fn doc_row(metric: &str) -> String {
        let docs = [
            include_str!("../../../docs/OPERATIONS.md"),
            include_str!("../../../docs/INFERENCE-GATEWAY.md"),
        ];
        let cell = format!("| `{metric}` |");
        docs.iter()
            .flat_map(|d| d.lines())
            .find(|l| l.starts_with(&cell))
            .unwrap_or_else(|| panic!("{metric} has no row"))
            .to_string()
    }

    #[test]
    fn every_fixed_label_value_is_documented_in_its_metric_row() {
        let closed: [(&str, Vec<&str>); 8] = [
            (
                "gantry_limit_rejections_total",
                Refusal::ALL.iter().map(|r| r.as_str()).collect(),
            ),
            (
                "gantry_tls_handshakes_total",
                Handshake::ALL.iter().map(|h| h.as_str()).collect(),
            ),
            (
                "gantry_plugin_calls_total",
                [
                    Hook::Request,
                    Hook::ResponseHeaders,
                    Hook::ResponseBody,
                    Hook::Tick,
                    Hook::QueueReady,
                ]
                .iter()
                .map(|h| h.as_str())
                .collect(),
            ),
            (
                "gantry_plugin_calls_total",
                [
                    HookOutcome::Continue,
                    HookOutcome::Respond,
                    HookOutcome::Pause,
                    HookOutcome::Error,
                    HookOutcome::Unhealthy,
                    HookOutcome::Busy,
                    HookOutcome::Close,
                ]
                .iter()
                .map(|o| o.as_str())
                .collect(),
            ),
            (
                "gantry_plugin_limit_hits_total",
                gantry_plugins::Limit::ALL
                    .iter()
                    .map(|l| l.as_str())
                    .collect(),
            ),
            (
                "gantry_inference_tokens_total",
                [Direction::In, Direction::Out]
                    .iter()
                    .map(|d| d.as_str())
                    .collect(),
            ),
            (
                "gantry_plugin_http_calls_total",
                [CallResult::Ok, CallResult::Failed]
                    .iter()
                    .map(|r| r.as_str())
                    .collect(),
            ),
            (
                "gantry_plugin_reloads_total",
                [ReloadResult::Ok, ReloadResult::Error]
                    .iter()
                    .map(|r| r.as_str())
                    .collect(),
            ),
        ];
        for (metric, values) in closed {
            let row = doc_row(metric);
            for v in values {
                assert!(
                    row.contains(&format!("`{v}`")),
                    "{metric}: `{v}` undocumented in {row}"
                );
            }
        }
    }

    #[test]
    fn a_route_counts_its_requests_by_status_and_shows_only_statuses_it_answered() {
        let m = Metrics::new();
        let api = m.route("api");
        for status in [200, 200, 418, 0] {
            api.finished(status, Duration::from_millis(3));
        }
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "gantry_requests_total{route=\"api\",status=\"200\"} 2",
            "gantry_requests_total{route=\"api\",status=\"418\"} 1",
            "gantry_requests_total{route=\"api\",status=\"0\"} 1",
            "gantry_request_duration_seconds_count{route=\"api\"} 4",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        assert!(!text.contains("status=\"404\""), "{text}");
    }

    #[test]
    fn typed_labels_count_under_their_names() {
        let m = Metrics::new();
        m.refused(Refusal::HeadTimeout);
        m.tls_handshake(Handshake::Timeout);
        m.plugin_limit_hit("p", gantry_plugins::Limit::CompileTime, 2);
        m.plugin_reload("p", ReloadResult::Error);
        m.plugin_http_call("p", "pool", CallResult::Failed);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("gantry_limit_rejections_total{limit=\"head_timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gantry_tls_handshakes_total{result=\"timeout\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gantry_limit_rejections_total{limit=\"body_bytes\"} 0"),
            "{text}"
        );
        for line in [
            "gantry_plugin_limit_hits_total{limit=\"compile_time\",plugin=\"p\"} 2",
            "gantry_plugin_reloads_total{plugin=\"p\",result=\"error\"} 1",
            "gantry_plugin_http_calls_total{plugin=\"p\",result=\"failed\",upstream=\"pool\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
