//! Prometheus metrics, one registry per gateway instance (so in-process tests that
//! run several gateways never mix their counts). Served on the admin listener.
//!
//! This file defines every metric and the vocabulary of its fixed labels
//! ([`Refusal`], [`Handshake`], [`Hook`], [`HookOutcome`], [`Direction`]);
//! call sites record through typed methods ([`Metrics::refused`],
//! [`Metrics::tls_handshake`], [`Metrics::plugin_call`], [`Metrics::tokens`]),
//! the hottest counters resolved once. docs/OPERATIONS.md's metric tables are checked against
//! [`Metrics::catalog`] by a test. Labels taken from configuration (route,
//! pool, plugin, model names) are closed sets too: see the table's notes.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why work was refused: the `limit` label of `gantry_limit_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_header_bytes`.
    HeaderBytes,
    /// More header fields than Pingora parses (256, fixed).
    HeaderFields,
    /// A route's `max_body_bytes`.
    BodyBytes,
    /// `limits.max_connections`.
    Connections,
    /// `limits.max_connections_per_client`.
    ClientConnections,
    /// `limits.head_timeout_ms` (a head, or a TLS handshake).
    HeadTimeout,
    /// HTTP/2 SETTINGS or PING frames past their rate.
    H2ControlFrames,
    /// An inference pool's `max_messages`.
    Messages,
    /// An inference pool's `max_input_bytes`.
    InputBytes,
    /// An inference pool's `max_embedding_inputs`.
    EmbeddingInputs,
    /// An inference pool's `max_inflight`.
    InferenceInflight,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 11] = [
        Refusal::HeaderBytes,
        Refusal::HeaderFields,
        Refusal::BodyBytes,
        Refusal::Connections,
        Refusal::ClientConnections,
        Refusal::HeadTimeout,
        Refusal::H2ControlFrames,
        Refusal::Messages,
        Refusal::InputBytes,
        Refusal::EmbeddingInputs,
        Refusal::InferenceInflight,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::HeaderBytes => "header_bytes",
            Refusal::HeaderFields => "header_fields",
            Refusal::BodyBytes => "body_bytes",
            Refusal::Connections => "connections",
            Refusal::ClientConnections => "client_connections",
            Refusal::HeadTimeout => "head_timeout",
            Refusal::H2ControlFrames => "h2_control_frames",
            Refusal::Messages => "messages",
            Refusal::InputBytes => "input_bytes",
            Refusal::EmbeddingInputs => "embedding_inputs",
            Refusal::InferenceInflight => "inference_inflight",
        }
    }
}

/// How a TLS handshake ended: the `result` label of `gantry_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed.
    Ok,
    /// Refused or broken by the client.
    Failed,
    /// Not done by the head deadline.
    Timeout,
}

impl Handshake {
    /// Every result, in label order.
    pub const ALL: [Handshake; 3] = [Handshake::Ok, Handshake::Failed, Handshake::Timeout];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::Timeout => "timeout",
        }
    }
}

/// A plugin hook: the `hook` label of `gantry_plugin_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The request's headers and body.
    Request,
    /// The response headers.
    ResponseHeaders,
    /// The response body.
    ResponseBody,
}

impl Hook {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Request => "request",
            Hook::ResponseHeaders => "response_headers",
            Hook::ResponseBody => "response_body",
        }
    }
}

/// How a plugin hook call ended: the `outcome` label of
/// `gantry_plugin_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// Let the request or response go on.
    Continue,
    /// Answered locally.
    Respond,
    /// Held the body for more.
    Pause,
    /// Trapped, broke a limit, or misused the ABI.
    Error,
    /// Left out while unhealthy.
    Unhealthy,
    /// Every instance in use.
    Busy,
}

impl HookOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Continue => "continue",
            HookOutcome::Respond => "respond",
            HookOutcome::Pause => "pause",
            HookOutcome::Error => "error",
            HookOutcome::Unhealthy => "unhealthy",
            HookOutcome::Busy => "busy",
        }
    }
}

/// Which way tokens went: the `direction` label of `gantry_inference_tokens_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The prompt.
    In,
    /// Generated.
    Out,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Every metric's name and variable labels, as registered.
    catalog: Vec<(String, Vec<String>)>,
    /// `gantry_limit_rejections_total`, one counter per [`Refusal`].
    refusals: Vec<prometheus::IntCounter>,
    /// `gantry_tls_handshakes_total`, one counter per [`Handshake`].
    handshakes: Vec<prometheus::IntCounter>,
    /// `gantry_requests_total{route,status}`
    pub requests: IntCounterVec,
    /// `gantry_request_duration_seconds{route}`
    pub latency: HistogramVec,
    /// `gantry_open_connections`
    pub open_connections: IntGauge,
    /// `gantry_inflight_requests`
    pub inflight_requests: IntGauge,
    /// `gantry_upstream_retries_total{pool}`
    pub upstream_retries: IntCounterVec,
    /// `gantry_upstream_endpoint_healthy{pool,endpoint}`: 1 healthy, 0 ejected.
    pub endpoint_healthy: IntGaugeVec,
    /// `gantry_inference_requests_total{model,backend,status}`; `backend` is `none`
    /// when the request was answered before one was picked.
    pub inference_requests: IntCounterVec,
    /// `gantry_inference_time_to_first_token_seconds{model,backend}`, from request
    /// arrival at the gateway.
    pub inference_ttft: HistogramVec,
    /// `gantry_inference_inter_token_seconds{model,backend}`: between two streamed deltas.
    pub inference_inter_token: HistogramVec,
    /// `gantry_inference_queue_seconds{model,backend}`: time queued at the backend.
    pub inference_queue: HistogramVec,
    /// `gantry_inference_tokens_total{model,backend,direction}`: `in` (prompt), `out`.
    pub inference_tokens: IntCounterVec,
    /// `gantry_inference_retries_total{pool}`: requests sent to a second backend
    /// after the first failed before its first token.
    pub inference_retries: IntCounterVec,
    /// `gantry_inference_backend_healthy{pool,backend}`: 1 takes traffic, 0 out.
    pub inference_backend_healthy: IntGaugeVec,
    /// `gantry_inference_backend_inflight{pool,backend}`: this gateway's requests there.
    pub inference_backend_inflight: IntGaugeVec,
    /// `gantry_inference_backend_load{pool,backend,model,measure}`: the backend's own
    /// last report (`queued`, `running`, `tokens_in_flight`).
    pub inference_backend_load: IntGaugeVec,
    /// `gantry_inference_backend_lost_total{pool,backend}`: watch streams broke.
    pub inference_backend_lost: IntCounterVec,
    /// `gantry_inference_backend_ejections_total{pool,backend}`: a failed call
    /// took the backend out of rotation (a request's own fault never does).
    pub inference_backend_ejections: IntCounterVec,
    /// `gantry_plugin_http_calls_total{plugin,upstream,result}`: plugins'
    /// `proxy_http_call`s, `ok` or `failed` (no pool, unreachable, timeout, too big).
    pub plugin_http_calls: IntCounterVec,
    /// `gantry_plugin_calls_total{route,plugin,hook,outcome}` (hooks: `request`
    /// (headers and body), `response_headers`, `response_body`): `continue`,
    /// `respond` (local response) or `error` (trap or limit).
    pub plugin_calls: IntCounterVec,
    /// `gantry_plugin_limit_hits_total{plugin,limit}`: `cpu`, `memory` (a trap
    /// after a refused `memory.grow`),
    /// `bytes_per_host_call`, `headers_added`, `http_calls`; on (re)load
    /// `module_bytes`, `compile_time`.
    pub plugin_limit_hits: IntCounterVec,
    /// `gantry_plugin_metric{route,plugin,name,kind}`: the metrics plugins define
    /// (counters, gauges; for histograms the last recorded value), set at scrape.
    pub plugin_defined: IntGaugeVec,
    /// `gantry_plugin_reloads_total{plugin,result}`: `ok` or `error` (the old
    /// version kept serving).
    pub plugin_reloads: IntCounterVec,
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

/// Creates metrics, registering each and recording its name and labels.
struct Registrar {
    registry: Registry,
    catalog: Vec<(String, Vec<String>)>,
}

impl Registrar {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&mut self, c: C) -> C {
        for d in c.desc() {
            self.catalog
                .push((d.fq_name.clone(), d.variable_labels.clone()));
        }
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric registered once");
        c
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn int_gauge(&mut self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let mut r = Registrar {
            registry: Registry::new(),
            catalog: Vec::new(),
        };
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
        let refusals = Refusal::ALL
            .iter()
            .map(|why| limit_rejections.with_label_values(&[why.as_str()]))
            .collect();
        let handshakes = Handshake::ALL
            .iter()
            .map(|h| tls_handshakes.with_label_values(&[h.as_str()]))
            .collect();
        Metrics {
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
            inflight_requests: r.int_gauge("gantry_inflight_requests", "Requests being processed now"),
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
            inference_requests: r.counter(
                "gantry_inference_requests_total",
                "OpenAI-compatible API requests answered, by model, backend and HTTP status",
                &["model", "backend", "status"],
            ),
            inference_ttft: r.histogram(
                "gantry_inference_time_to_first_token_seconds",
                "Time from request arrival to the first generated token",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            inference_inter_token: r.histogram(
                "gantry_inference_inter_token_seconds",
                "Time between two streamed token deltas",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            inference_queue: r.histogram(
                "gantry_inference_queue_seconds",
                "Time a request waited in the backend's queue, as the backend reports it",
                TOKEN_BUCKETS,
                MODEL_BACKEND,
            ),
            inference_tokens: r.counter(
                "gantry_inference_tokens_total",
                "Tokens in (prompt) and out (generated), by model and backend",
                &["model", "backend", "direction"],
            ),
            inference_retries: r.counter(
                "gantry_inference_retries_total",
                "Inference requests sent to another backend after failing before the first token",
                &["pool"],
            ),
            inference_backend_healthy: r.gauge(
                "gantry_inference_backend_healthy",
                "Whether an inference backend takes traffic (1) or not (0)",
                POOL_BACKEND,
            ),
            inference_backend_inflight: r.gauge(
                "gantry_inference_backend_inflight",
                "Requests this gateway has in flight at an inference backend",
                POOL_BACKEND,
            ),
            inference_backend_load: r.gauge(
                "gantry_inference_backend_load",
                "An inference backend's last load report: queued, running, tokens_in_flight",
                &["pool", "backend", "model", "measure"],
            ),
            inference_backend_lost: r.counter(
                "gantry_inference_backend_lost_total",
                "Times an inference backend's health and load streams broke",
                POOL_BACKEND,
            ),
            inference_backend_ejections: r.counter(
                "gantry_inference_backend_ejections_total",
                "Times a failed call took an inference backend out of rotation",
                POOL_BACKEND,
            ),
            plugin_http_calls: r.counter(
                "gantry_plugin_http_calls_total",
                "HTTP calls made by Wasm plugins (proxy_http_call), by plugin, pool and result",
                &["plugin", "upstream", "result"],
            ),
            plugin_calls: r.counter(
                "gantry_plugin_calls_total",
                "Wasm plugin hook calls, by route, plugin, hook and outcome",
                &["route", "plugin", "hook", "outcome"],
            ),
            plugin_limit_hits: r.counter(
                "gantry_plugin_limit_hits_total",
                "Wasm plugin hook calls stopped by a limit",
                &["plugin", "limit"],
            ),
            plugin_defined: r.gauge(
                "gantry_plugin_metric",
                "Metrics defined by Wasm plugins (proxy_define_metric), by route, plugin, name and kind",
                &["route", "plugin", "name", "kind"],
            ),
            plugin_reloads: r.counter(
                "gantry_plugin_reloads_total",
                "Wasm plugin hot reloads, by plugin and result (ok, error)",
                &["plugin", "result"],
            ),
            refusals,
            handshakes,
            registry: r.registry,
            catalog: r.catalog,
        }
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
        self.plugin_calls
            .with_label_values(&[route, plugin, hook.as_str(), outcome.as_str()])
    }

    /// Count one plugin hook call.
    pub fn plugin_call(&self, route: &str, plugin: &str, hook: Hook, outcome: HookOutcome) {
        self.plugin_call_counter(route, plugin, hook, outcome).inc();
    }

    /// Count tokens of a model on a backend.
    pub fn tokens(&self, model: &str, backend: &str, direction: Direction, n: u64) {
        self.inference_tokens
            .with_label_values(&[model, backend, direction.as_str()])
            .inc_by(n);
    }

    /// Count a finished TLS handshake.
    pub fn tls_handshake(&self, result: Handshake) {
        self.handshakes[result as usize].inc();
    }

    /// Every metric's name and variable labels (what docs/OPERATIONS.md lists).
    pub fn catalog(&self) -> &[(String, Vec<String>)] {
        &self.catalog
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to a Vec cannot fail");
        out
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

    /// `(name, labels)` of every row of the metric tables in `doc`.
    fn documented(doc: &str) -> Vec<(String, Vec<String>)> {
        doc.lines()
            .filter_map(|line| {
                let mut cells = line.split('|').map(str::trim).skip(1);
                let name = cells.next()?.strip_prefix("`gantry_")?.strip_suffix('`')?;
                // Label names, before any parenthesised values.
                let labels = cells
                    .next()?
                    .split(" (")
                    .next()?
                    .split(',')
                    .filter_map(|l| {
                        l.trim()
                            .split(' ')
                            .next()?
                            .strip_prefix('`')?
                            .strip_suffix('`')
                    })
                    .map(str::to_string)
                    .collect();
                Some((format!("gantry_{name}"), labels))
            })
            .collect()
    }

    #[test]
    fn the_operations_docs_list_every_metric_with_its_labels() {
        let mut docs = documented(include_str!("../../docs/OPERATIONS.md"));
        docs.extend(documented(include_str!("../../docs/INFERENCE-GATEWAY.md")));
        docs.sort();
        let mut exported = Metrics::new().catalog().to_vec();
        exported.sort();
        assert_eq!(docs, exported);
    }

    #[test]
    fn typed_labels_count_under_their_names() {
        let m = Metrics::new();
        m.refused(Refusal::HeadTimeout);
        m.tls_handshake(Handshake::Timeout);
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
    }
}
