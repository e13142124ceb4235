//! Upstream pools: endpoints, the load-balancing policy, active health checks and
//! the connection settings used for every request to them.

use super::resolve::EndpointResolver;
use anyhow::Context;
use async_trait::async_trait;
use gantry_config::{HashKey, HealthCheckKind, LoadBalancing};
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{BackendIter, BackendSelection, Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
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
    /// HTTP/2 channels to its endpoints, for plugins' gRPC calls.
    pub grpc: super::grpc::GrpcChannels,
    /// Its active health checks and re-resolution, stopped when the pool goes
    /// (a reload removed or changed it, and its last request ended).
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
    /// Build a pool, resolving endpoint names now (`hosts_file` first); its
    /// health checks and the names' re-resolution, if it has either, run on
    /// `runtime` while it lives.
    pub fn build(
        config: &gantry_config::Pool,
        hosts_file: Option<PathBuf>,
        runtime: &Handle,
    ) -> anyhow::Result<HttpPool> {
        let resolver = EndpointResolver::new(&config.endpoints, hosts_file);
        let (selector, health) = match config.load_balancing {
            LoadBalancing::RoundRobin => build_lb::<RoundRobin>(config, resolver, runtime)?,
            LoadBalancing::Random => build_lb::<Random>(config, resolver, runtime)?,
            LoadBalancing::ConsistentHash => build_lb::<Consistent>(config, resolver, runtime)?,
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
            grpc: Default::default(),
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
        // A plain connection has no SNI: no name to copy per request.
        let sni = if c.tls {
            self.sni.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(backend.addr.clone(), c.tls, sni);
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

/// A pool's endpoints as Pingora's load balancer discovers them: the
/// addresses resolved at start, then resolved again at each update.
struct Resolved {
    resolver: EndpointResolver,
    /// The start's answer, handed out by the first discovery.
    first: std::sync::Mutex<Option<Vec<std::net::SocketAddr>>>,
}

#[async_trait]
impl ServiceDiscovery for Resolved {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let first = self.first.lock().expect("first answer lock").take();
        let addrs = match first {
            Some(addrs) => addrs,
            None => self.resolver.resolve().await,
        };
        let backends = addrs
            .into_iter()
            .map(|addr| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

fn build_lb<S>(
    config: &gantry_config::Pool,
    resolver: EndpointResolver,
    runtime: &Handle,
) -> anyhow::Result<(Arc<dyn Selector>, Option<HealthChecks>)>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
    S::Config: Send + Sync,
{
    use futures_util::FutureExt;
    let (first, failed) = resolver.resolve_now();
    if let Some((endpoint, e)) = failed.first() {
        anyhow::bail!(
            "pool `{}`: cannot resolve endpoint `{endpoint}`: {e}",
            config.name
        );
    }
    let names = resolver.has_names();
    let discovery = Resolved {
        resolver,
        first: std::sync::Mutex::new(Some(first)),
    };
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Box::new(discovery)));
    lb.update()
        .now_or_never()
        .expect("the first discovery answers at once")
        .map_err(|e| anyhow::anyhow!("pool `{}`: {e}", config.name))?;
    if names {
        // Names are resolved again every resolve_interval_ms (by `run` below).
        lb.update_frequency = Some(config.resolve_interval);
    }
    let Some(hc) = &config.health_check else {
        if !names {
            return Ok((Arc::new(lb), None));
        }
        return Ok(run_in_background(lb, runtime));
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
        HealthCheckKind::Grpc => Box::new(super::grpc::GrpcHealthCheck {
            service: hc.service.clone(),
            timeout: hc.timeout,
            healthy_threshold: hc.healthy_threshold as usize,
            unhealthy_threshold: hc.unhealthy_threshold as usize,
            observer,
        }),
    };
    lb.set_health_check(check);
    lb.health_check_frequency = Some(hc.interval);
    lb.parallel_health_check = true;
    Ok(run_in_background(lb, runtime))
}

/// Run `lb`'s health checks and re-resolution on `runtime` until the pool goes.
fn run_in_background<S>(
    lb: LoadBalancer<S>,
    runtime: &Handle,
) -> (Arc<dyn Selector>, Option<HealthChecks>)
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
    S::Config: Send + Sync,
{
    let lb = Arc::new(lb);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = lb.clone();
    runtime.spawn(async move { task.run(stopped, None).await });
    (lb, Some(HealthChecks(stop)))
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
