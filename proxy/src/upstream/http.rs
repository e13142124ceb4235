//! Upstream pools: endpoints, the load-balancing policy, active health checks and
//! the connection settings used for every request to them.

use anyhow::Context;
use async_trait::async_trait;
use gantry_config::{HashKey, HealthCheckKind, LoadBalancing};
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use std::sync::Arc;
use tokio::runtime::Handle;

/// Bound on how many endpoints one selection visits before giving up.
const MAX_SELECT_ITERATIONS: usize = 256;

/// What every load-balancing policy offers the gateway.
pub trait Selector: Send + Sync {
    /// Pick an endpoint for `key` that `accept` (given the endpoint and its health) takes.
    fn select(&self, key: &[u8], accept: &dyn Fn(&Backend, bool) -> bool) -> Option<Backend>;
    /// The endpoints, with their health.
    fn backends(&self) -> &Backends;
}

impl<S> Selector for LoadBalancer<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    fn select(&self, key: &[u8], accept: &dyn Fn(&Backend, bool) -> bool) -> Option<Backend> {
        self.select_with(key, MAX_SELECT_ITERATIONS, accept)
    }
    fn backends(&self) -> &Backends {
        LoadBalancer::backends(self)
    }
}

/// A pool as the gateway uses it.
pub struct HttpPool {
    /// The validated settings.
    pub config: gantry_config::Pool,
    /// The policy with its endpoints.
    pub selector: Arc<dyn Selector>,
    /// SNI for upstream TLS: configured, or the first endpoint's host.
    sni: String,
    /// Its active health checks, stopped when the pool goes (a reload
    /// removed or changed it, and its last request ended).
    _health: Option<HealthChecks>,
}

/// Stops a pool's health-check task when dropped.
struct HealthChecks(tokio::sync::watch::Sender<bool>);

impl Drop for HealthChecks {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl HttpPool {
    /// Build a pool, resolving endpoint names now; its health checks, if it
    /// has any, run on `runtime` while it lives.
    pub fn build(config: &gantry_config::Pool, runtime: &Handle) -> anyhow::Result<HttpPool> {
        let (selector, health) = match config.load_balancing {
            LoadBalancing::RoundRobin => build_lb::<RoundRobin>(config, runtime)?,
            LoadBalancing::Random => build_lb::<Random>(config, runtime)?,
            LoadBalancing::ConsistentHash => build_lb::<Consistent>(config, runtime)?,
        };
        let sni = config.sni.clone().unwrap_or_else(|| {
            config
                .endpoints
                .first()
                .and_then(|e| e.rsplit_once(':'))
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default()
        });
        Ok(HttpPool {
            config: config.clone(),
            selector,
            sni,
            _health: health,
        })
    }

    /// An endpoint for a request, skipping unhealthy ones and those already tried.
    pub fn pick(&self, hash_key: &[u8], tried: &[Backend]) -> Option<Backend> {
        self.selector
            .select(hash_key, &|b, healthy| healthy && !tried.contains(b))
    }

    /// How the request is sent to `backend`: timeouts and TLS from the pool's settings.
    pub fn peer(&self, backend: &Backend) -> Box<HttpPeer> {
        let c = &self.config;
        let mut peer = HttpPeer::new(backend.addr.clone(), c.tls, self.sni.clone());
        peer.options.connection_timeout = Some(c.connect_timeout);
        peer.options.read_timeout = Some(c.read_timeout);
        peer.options.write_timeout = Some(c.write_timeout);
        Box::new(peer)
    }

    /// Which header, if any, keys consistent hashing.
    pub fn hash_header(&self) -> Option<&str> {
        match (&self.config.load_balancing, &self.config.hash_on) {
            (LoadBalancing::ConsistentHash, HashKey::Header(h)) => Some(h),
            _ => None,
        }
    }

    /// Whether this pool hashes at all.
    pub fn hashes(&self) -> bool {
        self.config.load_balancing == LoadBalancing::ConsistentHash
    }
}

fn build_lb<S>(
    config: &gantry_config::Pool,
    runtime: &Handle,
) -> anyhow::Result<(Arc<dyn Selector>, Option<HealthChecks>)>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
    S::Config: Send + Sync,
{
    let mut lb = LoadBalancer::<S>::try_from_iter(config.endpoints.iter().map(String::as_str))
        .with_context(|| {
            format!(
                "pool `{}`: cannot resolve endpoints {:?}",
                config.name, config.endpoints
            )
        })?;
    let Some(hc) = &config.health_check else {
        return Ok((Arc::new(lb), None));
    };
    let observer = Box::new(LogHealth {
        pool: config.name.clone(),
    });
    let check: Box<dyn HealthCheck + Send + Sync> = match hc.kind {
        HealthCheckKind::Tcp => {
            let mut tcp = if config.tls {
                TcpHealthCheck::new_tls(config.sni.as_deref().unwrap_or_default())
            } else {
                TcpHealthCheck::new()
            };
            tcp.consecutive_success = hc.healthy_threshold as usize;
            tcp.consecutive_failure = hc.unhealthy_threshold as usize;
            tcp.peer_template.options.connection_timeout = Some(hc.timeout);
            tcp.peer_template.options.total_connection_timeout = Some(hc.timeout);
            tcp.health_changed_callback = Some(observer);
            tcp
        }
        HealthCheckKind::Http => {
            let mut http = HttpHealthCheck::new(&hc.host, config.tls);
            http.req
                .set_uri(hc.path.parse().context("health check path")?);
            http.consecutive_success = hc.healthy_threshold as usize;
            http.consecutive_failure = hc.unhealthy_threshold as usize;
            http.peer_template.options.connection_timeout = Some(hc.timeout);
            http.peer_template.options.total_connection_timeout = Some(hc.timeout);
            http.peer_template.options.read_timeout = Some(hc.timeout);
            http.health_changed_callback = Some(observer);
            Box::new(http)
        }
    };
    lb.set_health_check(check);
    lb.health_check_frequency = Some(hc.interval);
    lb.parallel_health_check = true;
    let lb = Arc::new(lb);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = lb.clone();
    runtime.spawn(async move { task.run(stopped, None).await });
    Ok((lb, Some(HealthChecks(stop))))
}

/// Logs every ejection and re-admission.
struct LogHealth {
    pool: String,
}

#[async_trait]
impl HealthObserve for LogHealth {
    async fn observe(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(pool = %self.pool, endpoint = %target.addr, "endpoint healthy again, re-admitted");
        } else {
            tracing::warn!(pool = %self.pool, endpoint = %target.addr, "endpoint failed health checks, ejected");
        }
    }
}
