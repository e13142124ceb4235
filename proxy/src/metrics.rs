//! Prometheus metrics, one registry per gateway instance (so in-process tests that
//! run several gateways never mix their counts). Served on the admin listener.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `gantry_requests_total{route,status}`
    pub requests: IntCounterVec,
    /// `gantry_request_duration_seconds{route}`
    pub latency: HistogramVec,
    /// `gantry_open_connections`
    pub open_connections: IntGauge,
    /// `gantry_inflight_requests`
    pub inflight_requests: IntGauge,
    /// `gantry_limit_rejections_total{limit}`: requests or connections refused by a limit.
    pub limit_rejections: IntCounterVec,
    /// `gantry_upstream_retries_total{pool}`
    pub upstream_retries: IntCounterVec,
    /// `gantry_upstream_endpoint_healthy{pool,endpoint}`: 1 healthy, 0 ejected.
    pub endpoint_healthy: IntGaugeVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "gantry_requests_total",
                "Requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "gantry_request_duration_seconds",
                "Time from request headers received to response finished, by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let open_connections =
            IntGauge::new("gantry_open_connections", "Client connections open now")
                .expect("valid metric");
        let inflight_requests =
            IntGauge::new("gantry_inflight_requests", "Requests being processed now")
                .expect("valid metric");
        let limit_rejections = IntCounterVec::new(
            Opts::new(
                "gantry_limit_rejections_total",
                "Requests or connections refused because a configured limit was reached",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "gantry_upstream_retries_total",
                "Requests retried on another endpoint after a connect failure",
            ),
            &["pool"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "gantry_upstream_endpoint_healthy",
                "Whether an upstream endpoint receives traffic (1) or is ejected (0)",
            ),
            &["pool", "endpoint"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(open_connections.clone()),
            Box::new(inflight_requests.clone()),
            Box::new(limit_rejections.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(endpoint_healthy.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            latency,
            open_connections,
            inflight_requests,
            limit_rejections,
            upstream_retries,
            endpoint_healthy,
        }
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
