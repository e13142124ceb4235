//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up) and
//! `/readyz` (it takes traffic: not draining, and every pool, HTTP or inference, has a
//! healthy endpoint).

use crate::gateway::Lifecycle;
use crate::metrics::Metrics;
use crate::upstream::Pool;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// Serves the admin endpoints.
pub struct AdminApp {
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Pools, for endpoint health.
    pub pools: Vec<Arc<Pool>>,
    /// Inference pools, for backend health and load.
    pub inference: Arc<crate::inference::Inference>,
    /// Draining state.
    pub lifecycle: Arc<Lifecycle>,
    /// The Wasm plugins: their metrics, and `POST /admin/reload`.
    pub plugins: Arc<crate::plugins::Plugins>,
}

impl AdminApp {
    /// Copy the metrics plugins defined (proxy_define_metric) into
    /// `gantry_plugin_metric{route,plugin,name,kind}`.
    fn refresh_plugin_metrics(&self) {
        // Only the plugins loaded now: a reloaded plugin's old series leave.
        self.metrics.plugin_defined.reset();
        for (route, plugins) in &self.plugins.by_route_name() {
            for p in plugins {
                for (limit, n) in p.shared().take_limit_hits() {
                    self.metrics
                        .plugin_limit_hits
                        .with_label_values(&[&p.name, limit])
                        .inc_by(n);
                }
                for m in p.shared().metrics() {
                    let kind = match m.kind {
                        gantry_plugins::MetricKind::Counter => "counter",
                        gantry_plugins::MetricKind::Gauge => "gauge",
                        gantry_plugins::MetricKind::Histogram => "histogram_last",
                    };
                    self.metrics
                        .plugin_defined
                        .with_label_values(&[route, &p.name, &m.name, kind])
                        .set(m.value as i64);
                }
            }
        }
    }

    /// Refresh endpoint-health gauges from the health checker's current view.
    fn refresh_health(&self) -> Vec<String> {
        let mut unavailable = Vec::new();
        for pool in &self.pools {
            let backends = pool.selector.backends();
            let mut any = false;
            for b in backends.get_backend().iter() {
                let healthy = backends.ready(b);
                any |= healthy;
                self.metrics
                    .endpoint_healthy
                    .with_label_values(&[&pool.config.name, &b.addr.to_string()])
                    .set(i64::from(healthy));
            }
            if !any {
                unavailable.push(pool.config.name.clone());
            }
        }
        for pool in self.inference.pools() {
            pool.refresh_metrics();
            if !pool.any_healthy() {
                unavailable.push(pool.config.name.clone());
            }
        }
        unavailable
    }
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                self.refresh_health();
                self.refresh_plugin_metrics();
                let inflight = self.lifecycle.inflight() as i64;
                self.metrics.inflight_requests.set(inflight);
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/admin/reload" if session.req_header().method == http::Method::POST => {
                let report = self.plugins.reload(true);
                let status = if report.failed.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let body = serde_json::to_vec(&report).expect("reports serialize");
                text(status, "application/json", body)
            }
            "/readyz" => {
                let unavailable = self.refresh_health();
                if self.lifecycle.is_draining() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"draining\n".to_vec(),
                    )
                } else if !unavailable.is_empty() {
                    let body =
                        format!("no healthy endpoint in pools: {}\n", unavailable.join(", "));
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        body.into_bytes(),
                    )
                } else {
                    text(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"admin endpoints: /metrics /healthz /readyz\n".to_vec(),
            ),
        }
    }
}
