//! `/status`: what the gateway serves and how its upstreams are, as JSON for
//! scripts and for the dashboard (`/`, [`DASHBOARD`]).

use super::AdminApp;
use gantry_config::{Config, Target};
use serde::Serialize;

/// The admin dashboard: one page, no outside assets, that polls `/status`.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// A route, as `/status` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    name: String,
    hosts: Vec<String>,
    path_prefix: String,
    /// `pool <name>`, `inference <names>`, or the built-in page.
    target: String,
    /// `none` or `keys`.
    auth: &'static str,
    plugins: Vec<String>,
}

impl RouteStatus {
    /// Every route of `config`.
    pub fn all(config: &Config) -> Vec<RouteStatus> {
        config
            .routes
            .iter()
            .map(|r| RouteStatus {
                name: r.name.clone(),
                hosts: r.hosts.clone(),
                path_prefix: r.path_prefix.clone(),
                target: match &r.target {
                    Target::Pool(i) => format!("pool {}", config.pools[*i].name),
                    Target::Inference(pools) => {
                        let names: Vec<&str> = pools
                            .iter()
                            .map(|i| config.inference_pools[*i].name.as_str())
                            .collect();
                        format!("inference {}", names.join(", "))
                    }
                    Target::Builtin(b) => format!("built-in {b:?}").to_lowercase(),
                },
                auth: match r.auth {
                    gantry_config::RouteAuth::None => "none",
                    gantry_config::RouteAuth::Keys => "keys",
                },
                plugins: r.plugins.iter().map(|p| p.name.clone()).collect(),
            })
            .collect()
    }
}

#[derive(Serialize)]
struct EndpointStatus {
    address: String,
    healthy: bool,
}

impl AdminApp {
    /// The whole status document.
    pub(super) fn status(&self) -> serde_json::Value {
        let live = self.reloader.live();
        let http_pools: Vec<_> = live
            .pools
            .iter()
            .map(|pool| {
                let backends = pool.selector.backends();
                let endpoints: Vec<EndpointStatus> = backends
                    .get_backend()
                    .iter()
                    .map(|b| EndpointStatus {
                        address: b.addr.to_string(),
                        healthy: backends.ready(b),
                    })
                    .collect();
                serde_json::json!({"name": pool.config.name, "endpoints": endpoints})
            })
            .collect();
        let inference_pools: Vec<_> = live
            .api
            .pools()
            .iter()
            .map(|pool| {
                serde_json::json!({
                    "name": pool.config.name,
                    "models": pool.config.models,
                    "backends": pool.status(),
                })
            })
            .collect();
        let plugins: Vec<_> = live
            .plugins
            .by_route_name()
            .iter()
            .flat_map(|(route, plugins)| {
                plugins.iter().map(move |p| {
                    serde_json::json!({
                        "route": route,
                        "name": p.name,
                        "abi": p.abi,
                        "healthy": !p.is_unhealthy(),
                        "instances_in_use": p.instances_in_use(),
                        "max_instances": p.limits.max_instances,
                        "totals": self.metrics.plugin_totals(route, &p.name),
                    })
                })
            })
            .collect();
        serde_json::json!({
            "draining": self.lifecycle.is_draining(),
            "in_flight": self.lifecycle.inflight(),
            "pools": self.refresh_health(),
            "config": {
                "version": live.number,
                "sha256": live.sha256,
                "source": self.reloader.source_name(),
                "last_reload": self.reloader.last(),
            },
            "routes": RouteStatus::all(&live.config),
            "http_pools": http_pools,
            "inference_pools": inference_pools,
            "plugins": plugins,
            "recent_errors": self.metrics.recent_errors.list(),
        })
    }
}
