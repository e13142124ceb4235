//! One configuration as the gateway serves it ([`ConfigVersion`]): what a
//! configuration file decides for each request (routes, pools, inference
//! pools, plugins, per-request limits, trusted proxies), built once and
//! swapped whole by a reload ([`crate::reload`]). A request keeps the version
//! it started on until it ends; the next one gets the live one.

use super::plugin_chain::HotCounters;
use crate::metrics::{Metrics, RouteMetrics};
use crate::openai::Api;
use crate::plugins::{Plugins, ReloadReport};
use crate::rewrite::Rewrite;
use crate::router::Router;
use crate::upstream::HttpPool;
use gantry_config::Config;
use std::sync::Arc;
use tokio::runtime::Handle;

/// The live configuration, swapped whole on reload: a request takes it once
/// ([`arc_swap::ArcSwap::load_full`]) and keeps it.
pub type Live = Arc<arc_swap::ArcSwap<ConfigVersion>>;

/// One configuration, built.
pub struct ConfigVersion {
    /// 1 at start, one more per applied reload (`gantry_config_version`).
    pub number: u64,
    /// SHA-256 of the configuration text, in hex (empty when it was given
    /// already parsed).
    pub sha256: String,
    /// The validated configuration it was built from.
    pub config: Config,
    pub(super) router: Router,
    /// Per route, by index: (request rewrite, response rewrite).
    pub(super) rewrites: Vec<(Rewrite, Rewrite)>,
    /// HTTP pools, by config index.
    pub pools: Vec<Arc<HttpPool>>,
    /// Inference pools and the OpenAI-compatible API.
    pub api: Arc<Api>,
    /// Per route: its Wasm plugins, in order.
    pub plugins: Arc<Plugins>,
    /// Per route and plugin position: the call counters every request moves,
    /// resolved once.
    pub(super) hot: Vec<Vec<HotCounters>>,
    /// Per route, then `none` (no route matched): request metrics resolved once.
    pub(super) route_metrics: Vec<RouteMetrics>,
}

/// What every version shares.
pub struct VersionParts<'a> {
    pub metrics: &'a Arc<Metrics>,
    /// Where pools run their health checks and watchers.
    pub runtime: &'a Handle,
}

impl ConfigVersion {
    /// The HTTP pool named `name`, if there is one.
    pub fn http_pool(&self, name: &str) -> Option<&Arc<HttpPool>> {
        self.pools.iter().find(|p| p.config.name == name)
    }

    /// Build `config`'s version. With `previous` (a reload), what is
    /// configured exactly as before is kept as it is, state and all: HTTP
    /// pools (their endpoints' health), inference pools (their backends'
    /// load, their prefix index), and the plugins when every route's are the
    /// same (their files are loaded again: `plugins` reports how that went).
    /// Fails, changing nothing, when a new pool's names do not resolve or a
    /// new plugin does not load.
    pub fn build(
        number: u64,
        sha256: String,
        config: Config,
        parts: VersionParts<'_>,
        previous: Option<&ConfigVersion>,
    ) -> anyhow::Result<(ConfigVersion, ReloadReport)> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let kept = previous.and_then(|v| v.pools.iter().find(|old| old.config == *p));
            pools.push(match kept {
                Some(pool) => pool.clone(),
                None => Arc::new(HttpPool::build(
                    p,
                    config.hosts_file.clone(),
                    parts.runtime,
                )?),
            });
        }
        let kept_plugins = previous
            .map(|v| &v.plugins)
            .filter(|plugins| plugins.serve_the_same(&config));
        let (plugins, report) = match kept_plugins {
            // Plugins load last: nothing below can fail.
            Some(plugins) => (plugins.clone(), None),
            None => {
                let plugins = Plugins::load(&config, parts.metrics.clone())?;
                plugins.watch(parts.runtime);
                (plugins, Some(ReloadReport::default()))
            }
        };
        let api = Arc::new(Api::start(
            &config,
            parts.metrics.clone(),
            parts.runtime.clone(),
            previous.map(|v| &*v.api),
        ));
        let router = Router::new(&config.routes);
        let rewrites = (0..router.len())
            .map(|i| {
                let r = router.route(i);
                (
                    Rewrite::new(&r.request_headers),
                    Rewrite::new(&r.response_headers),
                )
            })
            .collect();
        let hot = HotCounters::for_routes(&router, parts.metrics);
        let route_metrics = (0..router.len())
            .map(|i| parts.metrics.route(&router.route(i).name))
            .chain([parts.metrics.route("none")])
            .collect();
        let report = report.unwrap_or_else(|| plugins.reload(true));
        Ok((
            ConfigVersion {
                number,
                sha256,
                config,
                router,
                rewrites,
                pools,
                api,
                plugins,
                hot,
                route_metrics,
            },
            report,
        ))
    }
}
