//! The admin listener: `/` (the dashboard: routes, pools and endpoints,
//! inference backends' live load; one page, no outside assets, polling
//! `/status`), `/metrics` (Prometheus), `/healthz` (the process is up),
//! `/readyz` (this gateway can take traffic: it is serving its configuration and
//! not draining), `/status` (JSON: draining, and each pool's healthy endpoints)
//! and `POST /admin/reload` (the configuration and its plugins, see
//! [`crate::reload`]; needs `Authorization: Bearer <admin.token>`).
//! With a `[key_store]`, API keys made and revoked at run time (each needs the
//! token): `POST /admin/keys/<tenant>` makes one and answers it once,
//! `GET /admin/keys` lists every key by digest, `DELETE /admin/keys/<sha256>`
//! revokes a stored one (see [`crate::tenants::keyring`]).
//!
//! Upstream health is not readiness: a pool with no healthy endpoint answers 503
//! for its routes, but does not pull every gateway replica out of its Service.
//!
//! Every request's `Host` must be an IP literal, `localhost`, or a name in
//! `admin.hosts`: a page on another origin cannot reach the admin listener by
//! DNS rebinding (403 otherwise).

mod status;

pub use status::RouteStatus;

use crate::lifecycle::Lifecycle;
use crate::metrics::{ConfigReload, Hook, HookOutcome, Metrics};
use crate::reload::Reloader;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// Serves the admin endpoints.
pub struct AdminApp {
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Draining state.
    pub lifecycle: Arc<Lifecycle>,
    /// The live configuration (routes, pools, plugins, who may use this
    /// listener), and `POST /admin/reload`.
    pub reloader: Arc<Reloader>,
    /// Run-time API keys, with a `[key_store]`.
    pub keys: Option<AdminKeys>,
}

/// What the key endpoints change.
pub struct AdminKeys {
    pub ring: crate::tenants::keyring::KeyRing,
    pub tenants: Arc<crate::tenants::Tenants>,
}

/// One pool's health, as `/status` shows it.
#[derive(Debug, serde::Serialize)]
struct PoolStatus {
    name: String,
    kind: &'static str,
    endpoints: usize,
    healthy: usize,
}

/// Whether an admin request's `Host` is one the listener answers to.
fn host_allowed(host: Option<&str>, access: &gantry_config::AdminAccess) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 without Host: no browser sends that.
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((n, port)) if !port.contains(']') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || access.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `header` is `Bearer <token>` (compared in constant time).
fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

impl AdminApp {
    /// Copy the metrics plugins defined (proxy_define_metric) into
    /// `gantry_plugin_metric{route,plugin,name,kind}`.
    fn refresh_plugin_metrics(&self) {
        // Only the plugins loaded now: a reloaded plugin's old series leave.
        self.metrics.plugins.defined.reset();
        for (route, plugins) in &self.reloader.live().plugins.by_route_name() {
            for p in plugins {
                for (limit, n) in p.shared().take_limit_hits() {
                    self.metrics.plugin_limit_hit(&p.name, limit, n);
                }
                let (ok, error) = (HookOutcome::Continue, HookOutcome::Error);
                for (hook, (ran, failed)) in [
                    (Hook::Tick, p.shared().take_ticks()),
                    (Hook::QueueReady, p.shared().take_deliveries()),
                ] {
                    self.metrics.plugin_calls(route, &p.name, hook, ok, ran);
                    self.metrics
                        .plugin_calls(route, &p.name, hook, error, failed);
                }
                for m in p.shared().metrics() {
                    let kind = match m.kind {
                        gantry_plugins::MetricKind::Counter => "counter",
                        gantry_plugins::MetricKind::Gauge => "gauge",
                        gantry_plugins::MetricKind::Histogram => "histogram_last",
                    };
                    self.metrics
                        .plugins
                        .defined
                        .with_label_values(&[route, &p.name, &m.name, kind])
                        .set(m.value as i64);
                }
            }
        }
    }

    /// Refresh endpoint-health gauges from the health checker's current view;
    /// each pool's health.
    fn refresh_health(&self) -> Vec<PoolStatus> {
        let live = self.reloader.live();
        let mut pools = Vec::new();
        for pool in &live.pools {
            let backends = pool.selector.backends();
            let (mut endpoints, mut healthy) = (0, 0);
            for b in backends.get_backend().iter() {
                let ready = backends.ready(b);
                endpoints += 1;
                healthy += usize::from(ready);
                self.metrics
                    .endpoint_healthy
                    .with_label_values(&[&pool.config.name, &b.addr.to_string()])
                    .set(i64::from(ready));
            }
            pools.push(PoolStatus {
                name: pool.config.name.clone(),
                kind: "http",
                endpoints,
                healthy,
            });
        }
        for pool in live.api.pools() {
            pool.refresh_metrics();
            let backends = pool.backends();
            pools.push(PoolStatus {
                name: pool.config.name.clone(),
                kind: "inference",
                endpoints: backends.len(),
                healthy: backends.iter().filter(|b| b.eligible()).count(),
            });
        }
        pools
    }

    /// The refusal, unless `authorization` carries the admin token.
    fn refuse_unless_admin(
        &self,
        authorization: Option<&str>,
        without_token: &'static [u8],
    ) -> Option<Response<Vec<u8>>> {
        let live = self.reloader.live();
        let Some(token) = &live.config.admin_access.token else {
            return Some(text(
                StatusCode::FORBIDDEN,
                "text/plain",
                without_token.to_vec(),
            ));
        };
        if !bearer_matches(authorization, token) {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                b"send Authorization: Bearer <admin.token>\n".to_vec(),
            );
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return Some(resp);
        }
        None
    }

    /// `/admin/keys[/<tenant or sha256>]`: make (POST), list (GET) or revoke
    /// (DELETE) run-time API keys, with the admin token.
    async fn keys(
        &self,
        method: &http::Method,
        rest: &str,
        authorization: Option<&str>,
    ) -> Response<Vec<u8>> {
        use crate::tenants::keyring::{hex, parse_hex};
        if let Some(refused) = self.refuse_unless_admin(
            authorization,
            b"admin.token is not set: the key endpoints need it\n",
        ) {
            return refused;
        }
        let Some(keys) = &self.keys else {
            return text(
                StatusCode::CONFLICT,
                "text/plain",
                b"no [key_store] is configured: keys are only in the configuration file\n".to_vec(),
            );
        };
        let json = |status, value: serde_json::Value| {
            text(
                status,
                "application/json",
                serde_json::to_vec_pretty(&value).expect("json"),
            )
        };
        let failed = |e: anyhow::Error| {
            tracing::warn!(error = %e, "key store operation failed");
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"the key store cannot be reached; retry shortly\n".to_vec(),
            )
        };
        match (method.as_str(), rest) {
            ("GET", "") => {
                let stored = match keys.ring.list().await {
                    Ok(s) => s,
                    Err(e) => return failed(e),
                };
                let configured = keys.tenants.configured().map(|(d, name)| {
                    serde_json::json!({"name": name, "sha256": hex(d), "source": "config"})
                });
                let stored = stored.iter().map(|(d, name)| {
                    serde_json::json!({"name": name, "sha256": hex(d), "source": "store"})
                });
                json(
                    StatusCode::OK,
                    serde_json::json!({"keys": configured.chain(stored).collect::<Vec<_>>()}),
                )
            }
            ("POST", name) => {
                let Some(tenant) = keys.tenants.index_of(name) else {
                    return text(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        format!("no tenant named `{name}` in [[keys]]: a stored key takes a configured tenant's limits\n").into_bytes(),
                    );
                };
                let key = crate::tenants::new_key();
                let digest = crate::tenants::key_digest(&key);
                if let Err(e) = keys.ring.add(digest, name).await {
                    return failed(e);
                }
                keys.tenants.change_stored(digest, Some(tenant));
                tracing::info!(tenant = name, "API key made");
                json(
                    StatusCode::CREATED,
                    serde_json::json!({"name": name, "key": key, "sha256": hex(&digest)}),
                )
            }
            ("DELETE", digest) if !digest.is_empty() => {
                let Some(digest) = parse_hex(digest) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        b"revoke a key by its sha256: 64 hex digits\n".to_vec(),
                    );
                };
                if keys.tenants.is_configured(&digest) {
                    return text(
                        StatusCode::CONFLICT,
                        "text/plain",
                        b"this key is in the configuration file: remove it there\n".to_vec(),
                    );
                }
                match keys.ring.remove(digest).await {
                    Ok(true) => {
                        keys.tenants.change_stored(digest, None);
                        tracing::info!(sha256 = %hex(&digest), "API key revoked");
                        json(StatusCode::OK, serde_json::json!({"revoked": hex(&digest)}))
                    }
                    Ok(false) => text(
                        StatusCode::NOT_FOUND,
                        "text/plain",
                        b"no stored key has this sha256\n".to_vec(),
                    ),
                    Err(e) => failed(e),
                }
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"GET /admin/keys, POST /admin/keys/<tenant>, DELETE /admin/keys/<sha256>\n"
                    .to_vec(),
            ),
        }
    }

    /// `POST /admin/reload`: with the bearer token, reload the configuration
    /// (and every plugin) off the async runtime, one reload at a time: 200
    /// when it serves (500 when a plugin's new file did not load), 400 when the
    /// file is refused (invalid, or changing what needs a restart), 500 when it
    /// could not be built; the answer is the [`crate::reload::ReloadOutcome`].
    async fn reload(&self, authorization: Option<&str>) -> Response<Vec<u8>> {
        if let Some(refused) =
            self.refuse_unless_admin(authorization, b"admin.token is not set: reload by SIGHUP\n")
        {
            return refused;
        }
        let reloader = self.reloader.clone();
        let outcome = match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => {
                return text(
                    StatusCode::CONFLICT,
                    "text/plain",
                    b"a reload is running; try again when it is done\n".to_vec(),
                )
            }
            Err(_) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    b"the reload failed; see the log\n".to_vec(),
                )
            }
        };
        let status = match outcome.result {
            ConfigReload::Ok if outcome.plugins.failed.is_empty() => StatusCode::OK,
            ConfigReload::Invalid | ConfigReload::NeedsRestart => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::to_vec_pretty(&outcome).expect("outcomes serialize");
        text(status, "application/json", body)
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
        let req = session.req_header();
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let access = &self.reloader.live().config.admin_access;
        if !host_allowed(header(http::header::HOST).as_deref(), access) {
            return text(
                StatusCode::FORBIDDEN,
                "text/plain",
                b"this Host is not an admin address (admin.hosts)\n".to_vec(),
            );
        }
        let path = req.uri.path().to_string();
        let post = req.method == http::Method::POST;
        match path.as_str() {
            "/metrics" => {
                self.refresh_health();
                self.refresh_plugin_metrics();
                let inflight = self.lifecycle.inflight() as i64;
                self.metrics.inflight_requests.set(inflight);
                text(
                    StatusCode::OK,
                    gantry_telemetry::CONTENT_TYPE,
                    self.metrics.render(),
                )
            }
            "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/admin/reload" if post => {
                self.reload(header(http::header::AUTHORIZATION).as_deref())
                    .await
            }
            p if p == "/admin/keys" || p.starts_with("/admin/keys/") => {
                let rest = p["/admin/keys".len()..].trim_start_matches('/');
                let method = req.method.clone();
                self.keys(&method, rest, header(http::header::AUTHORIZATION).as_deref())
                    .await
            }
            "/readyz" => {
                if self.lifecycle.closes_connections() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"draining\n".to_vec(),
                    )
                } else {
                    text(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                }
            }
            "/status" => {
                let body = serde_json::to_vec_pretty(&self.status()).expect("status serializes");
                text(StatusCode::OK, "application/json", body)
            }
            "/" | "/ui" => text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status::DASHBOARD.as_bytes().to_vec(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"admin endpoints: / (dashboard), /metrics /healthz /readyz /status, POST /admin/reload, /admin/keys\n"
                    .to_vec(),
            ),
        }
    }
}
