//! From [`FileConfig`] to [`Config`]: fill defaults, parse, and collect every problem.

use crate::file::*;
use crate::{
    AdminAccess, Certificate, Config, HashKey, HeaderRewrite, HealthCheck, InferencePool,
    InputLimits, Limits, Listener, PluginRef, Pool, Problem, Route, Target, Tls,
};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod keys;
mod pools;
mod routes;
mod tls;

use keys::convert_keys;
use pools::{convert_inference_pool, convert_pool};
use routes::{check_header_name, convert_route, valid_host_pattern};
use tls::convert_tls;

/// Deserialize strictly, turning serde's first error into a [`Problem`] with the field
/// path, the line, and for an unknown field the nearest valid name.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize::<_, T>(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let mut message = inner.message().trim().to_string();
        if let Some(hint) = nearest_field_hint(&message) {
            message.push_str(&hint);
        }
        if let Some(span) = inner.span() {
            let line = text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            message = format!("{message} (line {line})");
        }
        Problem {
            path: if path == "." { String::new() } else { path },
            message,
        }
    })
}

/// serde reports ``unknown field `x`, expected one of `a`, `b` ``; name the closest.
fn nearest_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let candidates = rest.split('`').skip(1).step_by(2);
    let (best, score) = candidates
        .map(|c| (c, strsim::jaro_winkler(unknown, c)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    (score > 0.7).then(|| format!("; did you mean `{best}`?"))
}

/// The gateway's spans' default `service.name`.
const GATEWAY_SERVICE_NAME: &str = "gantry";

/// Collects problems while converting.
pub(crate) struct Checker {
    pub(crate) problems: Vec<Problem>,
}

impl Checker {
    pub(crate) fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration field that must be positive.
    pub(crate) fn millis(&mut self, path: String, value: Option<u64>, default: u64) -> Duration {
        let ms = value.unwrap_or(default);
        if ms == 0 {
            self.fail(
                path,
                "must be at least 1 millisecond (0 would fail every request)",
            );
        }
        Duration::from_millis(ms)
    }

    /// A count that must be at least 1.
    pub(crate) fn at_least_one<T: Copy + PartialOrd + From<u8>>(
        &mut self,
        path: String,
        value: Option<T>,
        default: T,
    ) -> T {
        let v = value.unwrap_or(default);
        if v < T::from(1) {
            self.fail(path, "must be at least 1");
        }
        v
    }

    pub(crate) fn socket_addr(&mut self, path: String, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(
                    path,
                    format!(
                        "`{value}` is not an `ip:port` address (e.g. `127.0.0.1:8080`, `[::]:443`)"
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn unique<'a>(
        &mut self,
        seen: &mut HashSet<&'a str>,
        path: String,
        kind: &str,
        name: &'a str,
    ) {
        if name.is_empty() {
            self.fail(path, format!("{kind} name must not be empty"));
        } else if !seen.insert(name) {
            self.fail(path, format!("duplicate {kind} name `{name}`"));
        }
    }
}

pub(crate) fn convert(raw: FileConfig, base: &Path) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    let threads = match raw.server.threads {
        Some(0) => {
            c.fail("server.threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    let limits = convert_limits(&mut c, &raw.limits);

    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    let admin = raw.admin.as_ref().and_then(|a| {
        let addr = c.socket_addr("admin.address".into(), &a.address)?;
        addresses.insert(addr, "admin.address".into());
        Some(addr)
    });

    let listeners = convert_listeners(&mut c, &raw.listeners, &mut addresses, base);

    let mut names = HashSet::new();
    let mut pools = Vec::new();
    for (i, p) in raw.pools.iter().enumerate() {
        let at = format!("pools[{i}]");
        c.unique(&mut names, format!("{at}.name"), "pool", &p.name);
        pools.push(convert_pool(&mut c, &at, p));
    }

    let mut names = HashSet::new();
    let mut inference_pools = Vec::new();
    for (i, p) in raw.inference_pools.iter().enumerate() {
        let at = format!("inference_pools[{i}]");
        c.unique(&mut names, format!("{at}.name"), "inference pool", &p.name);
        inference_pools.push(convert_inference_pool(&mut c, &at, p));
    }

    let routes = convert_routes(&mut c, &raw, limits.max_body_bytes, base);

    let trusted_proxies = convert_trusted_proxies(&mut c, &raw.server.trusted_proxies);
    let upgrade_socket = match raw.server.upgrade_socket.as_deref() {
        Some("") => {
            c.fail("server.upgrade_socket", "must be a path");
            PathBuf::new()
        }
        Some(path) => base.join(path),
        None => PathBuf::from(DEFAULT_UPGRADE_SOCKET),
    };
    let hosts_file = match raw.server.hosts_file.as_deref() {
        Some("") => {
            c.fail("server.hosts_file", "must be a path");
            None
        }
        Some(path) => {
            let path = base.join(path);
            if let Err(e) = std::fs::metadata(&path) {
                c.fail(
                    "server.hosts_file",
                    format!("cannot read {}: {e}", path.display()),
                );
            }
            Some(path)
        }
        None => None,
    };
    let admin_access = raw
        .admin
        .as_ref()
        .map(|a| convert_admin_access(&mut c, a))
        .unwrap_or_default();
    let keys = convert_keys(&mut c, &raw, &routes);
    let traces = raw.traces.as_ref().map(|t| {
        let accept = crate::traces::AcceptIncoming::TrustedProxies;
        crate::traces::convert_traces(&mut c, t, GATEWAY_SERVICE_NAME, accept)
    });
    let key_store = raw
        .key_store
        .as_ref()
        .and_then(|s| keys::convert_key_store(&mut c, s, base));
    if raw.key_store.is_none() {
        for (i, k) in keys.iter().enumerate() {
            if let Some(field) = [
                ("tokens_per_day", k.limits.tokens_per_day),
                ("tokens_per_month", k.limits.tokens_per_month),
            ]
            .iter()
            .find_map(|(f, v)| v.is_some().then_some(f))
            {
                c.fail(
                    format!("keys[{i}].{field}"),
                    "a budget must outlive the process: set [key_store].path (a file) or [key_store].redis",
                );
            }
        }
    }

    if c.problems.is_empty() {
        Ok(Config {
            traces,
            admin_access,
            trusted_proxies,
            upgrade_socket,
            hosts_file,
            threads,
            limits,
            admin,
            listeners,
            pools,
            inference_pools,
            routes,
            keys,
            key_store,
        })
    } else {
        Err(c.problems)
    }
}

/// `[limits]`, defaults filled in.
fn convert_limits(c: &mut Checker, l: &LimitsSection) -> Limits {
    Limits {
        max_header_bytes: {
            let v = l.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
            if v < 1024 {
                c.fail(
                    "limits.max_header_bytes",
                    format!("{v} is below the minimum of 1024 bytes"),
                );
            }
            v
        },
        max_body_bytes: l.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        max_connections: c.at_least_one(
            "limits.max_connections".into(),
            l.max_connections,
            DEFAULT_MAX_CONNECTIONS,
        ),
        max_connections_per_client: c.at_least_one(
            "limits.max_connections_per_client".into(),
            l.max_connections_per_client,
            DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        ),
        head_timeout: c.millis(
            "limits.head_timeout_ms".into(),
            l.head_timeout_ms,
            DEFAULT_HEAD_TIMEOUT_MS,
        ),
        client_read_timeout: c.millis(
            "limits.client_read_timeout_ms".into(),
            l.client_read_timeout_ms,
            DEFAULT_CLIENT_READ_TIMEOUT_MS,
        ),
        client_write_timeout: c.millis(
            "limits.client_write_timeout_ms".into(),
            l.client_write_timeout_ms,
            DEFAULT_CLIENT_WRITE_TIMEOUT_MS,
        ),
        keepalive_timeout: c.millis(
            "limits.keepalive_timeout_ms".into(),
            l.keepalive_timeout_ms,
            DEFAULT_KEEPALIVE_TIMEOUT_MS,
        ),
        h2_max_concurrent_streams: c.at_least_one(
            "limits.h2_max_concurrent_streams".into(),
            l.h2_max_concurrent_streams,
            DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        ),
        // Zero is allowed here: it means "drop in-flight requests at once".
        shutdown_grace_period: Duration::from_millis(
            l.shutdown_grace_period_ms
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE_PERIOD_MS),
        ),
    }
}

/// `[[listeners]]`: unique names, addresses used once (`addresses` holds the
/// ones taken already), TLS sections.
fn convert_listeners(
    c: &mut Checker,
    listeners_in: &[ListenerSection],
    addresses: &mut HashMap<SocketAddr, String>,
    base: &Path,
) -> Vec<Listener> {
    if listeners_in.is_empty() {
        c.fail("listeners", "at least one `[[listeners]]` is required");
    }
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for (i, ls) in listeners_in.iter().enumerate() {
        let at = format!("listeners[{i}]");
        c.unique(&mut names, format!("{at}.name"), "listener", &ls.name);
        let address = c.socket_addr(format!("{at}.address"), &ls.address);
        if let Some(addr) = address {
            if let Some(other) = addresses.insert(addr, format!("{at}.address")) {
                c.fail(
                    format!("{at}.address"),
                    format!("{addr} is already used by {other}"),
                );
            }
        }
        let tls = ls
            .tls
            .as_ref()
            .map(|t| convert_tls(c, &format!("{at}.tls"), t, base));
        if let Some(address) = address {
            listeners.push(Listener {
                name: ls.name.clone(),
                address,
                h2c: ls.h2c,
                tls,
            });
        }
    }
    listeners
}

/// `[[routes]]`: unique names, and no two that match exactly the same requests.
fn convert_routes(
    c: &mut Checker,
    raw: &FileConfig,
    max_body_bytes: u64,
    base: &Path,
) -> Vec<Route> {
    let mut names = HashSet::new();
    let mut matchers = HashMap::new();
    let mut routes = Vec::new();
    let mut plugin_instances = 0;
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        c.unique(&mut names, format!("{at}.name"), "route", &r.name);
        let Some(route) = convert_route(c, &at, r, raw, max_body_bytes, base) else {
            continue;
        };
        count_plugin_instances(c, &at, &route, &mut plugin_instances);
        let key = (
            route.hosts.clone(),
            route.path_prefix.clone(),
            route.methods.clone(),
        );
        if let Some(other) = matchers.insert(key, at.clone()) {
            c.fail(
                at,
                format!("matches exactly the same hosts, path prefix and methods as {other}, so it can never be chosen"),
            );
        }
        routes.push(route);
    }
    routes
}

/// Every plugin's instances fit the plugin engine's slots together (`total`
/// so far, over every route): the engine is sized from them, and a request
/// finding no slot would fail. Said once, at the plugin that goes over.
fn count_plugin_instances(c: &mut Checker, at: &str, route: &Route, total: &mut usize) {
    for (k, p) in route.plugins.iter().enumerate() {
        let before = *total;
        *total = total.saturating_add(p.max_instances);
        if before <= MAX_PLUGIN_ENGINE_INSTANCES && *total > MAX_PLUGIN_ENGINE_INSTANCES {
            c.fail(
                format!("{at}.plugins[{k}].max_instances"),
                format!("brings the plugins' max_instances to {total}, over {MAX_PLUGIN_ENGINE_INSTANCES} (the plugin engine's instance slots, shared by every plugin)"),
            );
        }
    }
}

/// `server.trusted_proxies`: networks, or single addresses.
fn convert_trusted_proxies(c: &mut Checker, networks: &[String]) -> Vec<ipnet::IpNet> {
    let mut trusted_proxies = Vec::new();
    for (k, net) in networks.iter().enumerate() {
        let parsed = net
            .parse::<ipnet::IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => trusted_proxies.push(n.trunc()),
            Err(_) => c.fail(
                format!("server.trusted_proxies[{k}]"),
                format!("`{net}` is not an address or network (e.g. `10.0.0.0/8`, `::1`)"),
            ),
        }
    }
    trusted_proxies
}

/// `[admin]`'s token and host names.
fn convert_admin_access(c: &mut Checker, a: &AdminSection) -> AdminAccess {
    if let Some(token) = &a.token {
        if token.len() < MIN_ADMIN_TOKEN_CHARS
            || token
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.fail(
                "admin.token",
                format!("must be at least {MIN_ADMIN_TOKEN_CHARS} characters, without spaces"),
            );
        }
    }
    AdminAccess {
        token: a.token.clone(),
        hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}
