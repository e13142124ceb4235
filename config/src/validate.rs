//! From [`FileConfig`] to [`Config`]: fill defaults, parse, and collect every problem.

use crate::file::*;
use crate::{
    AdminAccess, Certificate, Config, HashKey, HeaderRewrite, HealthCheck, InferencePool,
    InputLimits, Limits, Listener, PluginRef, Pool, Problem, Route, Target, Tls,
};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

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

    let l = &raw.limits;
    let limits = Limits {
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
    };

    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    let admin = raw.admin.as_ref().and_then(|a| {
        let addr = c.socket_addr("admin.address".into(), &a.address)?;
        addresses.insert(addr, "admin.address".into());
        Some(addr)
    });

    if raw.listeners.is_empty() {
        c.fail("listeners", "at least one `[[listeners]]` is required");
    }
    let mut names = HashSet::new();
    let mut listeners = Vec::new();
    for (i, ls) in raw.listeners.iter().enumerate() {
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
            .map(|t| convert_tls(&mut c, &format!("{at}.tls"), t, base));
        if let Some(address) = address {
            listeners.push(Listener {
                name: ls.name.clone(),
                address,
                h2c: ls.h2c,
                tls,
            });
        }
    }

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

    let mut names = HashSet::new();
    let mut matchers = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        c.unique(&mut names, format!("{at}.name"), "route", &r.name);
        let Some(route) = convert_route(&mut c, &at, r, &raw, limits.max_body_bytes, base) else {
            continue;
        };
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

    let mut trusted_proxies = Vec::new();
    for (k, net) in raw.server.trusted_proxies.iter().enumerate() {
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

    let mut admin_access = AdminAccess::default();
    if let Some(a) = &raw.admin {
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
        admin_access = AdminAccess {
            token: a.token.clone(),
            hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        };
    }

    if c.problems.is_empty() {
        Ok(Config {
            admin_access,
            trusted_proxies,
            threads,
            limits,
            admin,
            listeners,
            pools,
            inference_pools,
            routes,
        })
    } else {
        Err(c.problems)
    }
}

fn convert_tls(c: &mut Checker, at: &str, t: &TlsSection, base: &Path) -> Tls {
    if t.certificates.is_empty() {
        c.fail(
            format!("{at}.certificates"),
            "at least one certificate is required",
        );
    }
    let mut seen_names = HashMap::new();
    let mut certificates = Vec::new();
    for (j, cert) in t.certificates.iter().enumerate() {
        let cat = format!("{at}.certificates[{j}]");
        let cert_path = base.join(&cert.cert);
        let key_path = base.join(&cert.key);
        check_pem(c, format!("{cat}.cert"), &cert_path, PemKind::Certificate);
        check_pem(c, format!("{cat}.key"), &key_path, PemKind::PrivateKey);
        let mut server_names = Vec::new();
        for (k, name) in cert.server_names.iter().enumerate() {
            let name = name.to_ascii_lowercase();
            let path = format!("{cat}.server_names[{k}]");
            if !valid_host_pattern(&name) {
                c.fail(
                    path,
                    format!("`{name}` is not a host name or `*.domain` wildcard"),
                );
            } else if let Some(other) = seen_names.insert(name.clone(), path.clone()) {
                c.fail(path, format!("`{name}` is already served by {other}"));
            }
            server_names.push(name);
        }
        certificates.push(Certificate {
            cert: cert_path,
            key: key_path,
            server_names,
        });
    }
    Tls {
        http2: t.http2,
        certificates,
    }
}

enum PemKind {
    Certificate,
    PrivateKey,
}

/// Largest certificate or key file read, in bytes (a chain is a few KiB).
pub const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// A TLS file must exist, be readable, and hold what it should; name the file if not.
fn check_pem(c: &mut Checker, path: String, file: &Path, kind: PemKind) {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = std::fs::File::open(file)
        .and_then(|f| f.take(MAX_PEM_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        c.fail(path, format!("cannot read `{}`: {e}", file.display()));
        return;
    }
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        c.fail(
            path,
            format!(
                "`{}` is larger than {MAX_PEM_FILE_BYTES} bytes",
                file.display()
            ),
        );
        return;
    }
    let mut reader = bytes.as_slice();
    let ok = match kind {
        PemKind::Certificate => rustls_pemfile::certs(&mut reader).any(|r| r.is_ok()),
        PemKind::PrivateKey => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if !ok {
        let what = match kind {
            PemKind::Certificate => "no PEM certificate",
            PemKind::PrivateKey => "no PEM private key",
        };
        c.fail(path, format!("`{}` holds {what}", file.display()));
    }
}

fn valid_host_pattern(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn convert_pool(c: &mut Checker, at: &str, p: &PoolSection) -> Pool {
    if p.endpoints.is_empty() {
        c.fail(
            format!("{at}.endpoints"),
            "at least one endpoint is required",
        );
    }
    let mut seen = HashSet::new();
    for (j, e) in p.endpoints.iter().enumerate() {
        let path = format!("{at}.endpoints[{j}]");
        if !valid_endpoint(e) {
            c.fail(
                path,
                format!("`{e}` is not `host:port` with a port from 1 to 65535"),
            );
        } else if !seen.insert(e.as_str()) {
            c.fail(path, format!("duplicate endpoint `{e}`"));
        }
    }
    let hash_on = match (p.hash_on, &p.hash_header) {
        (HashOn::ClientAddress, None) => HashKey::ClientAddress,
        (HashOn::ClientAddress, Some(_)) => {
            c.fail(
                format!("{at}.hash_header"),
                "only used with `hash_on = \"header\"`",
            );
            HashKey::ClientAddress
        }
        (HashOn::Header, None) => {
            c.fail(
                format!("{at}.hash_header"),
                "required when `hash_on = \"header\"`",
            );
            HashKey::ClientAddress
        }
        (HashOn::Header, Some(h)) => {
            check_header_name(c, format!("{at}.hash_header"), h);
            HashKey::Header(h.to_ascii_lowercase())
        }
    };
    if p.load_balancing != LoadBalancing::ConsistentHash && p.hash_header.is_some() {
        c.fail(
            format!("{at}.hash_header"),
            "only used with `load_balancing = \"consistent_hash\"`",
        );
    }
    let health_check = p.health_check.as_ref().map(|h| {
        let hat = format!("{at}.health_check");
        if h.kind == HealthCheckKind::Tcp && (h.path.is_some() || h.host.is_some()) {
            c.fail(
                format!("{hat}.kind"),
                "`path` and `host` need `kind = \"http\"`",
            );
        }
        let path = h.path.clone().unwrap_or_else(|| DEFAULT_HEALTH_PATH.into());
        if !path.starts_with('/') {
            c.fail(
                format!("{hat}.path"),
                format!("`{path}` must start with `/`"),
            );
        }
        let interval = c.millis(
            format!("{hat}.interval_ms"),
            h.interval_ms,
            DEFAULT_HEALTH_INTERVAL_MS,
        );
        let timeout = c.millis(
            format!("{hat}.timeout_ms"),
            h.timeout_ms,
            DEFAULT_HEALTH_TIMEOUT_MS,
        );
        HealthCheck {
            kind: h.kind,
            path,
            host: h.host.clone().unwrap_or_else(|| "localhost".into()),
            interval,
            timeout,
            healthy_threshold: c.at_least_one(
                format!("{hat}.healthy_threshold"),
                h.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: c.at_least_one(
                format!("{hat}.unhealthy_threshold"),
                h.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD,
            ),
        }
    });
    Pool {
        name: p.name.clone(),
        endpoints: p.endpoints.clone(),
        load_balancing: p.load_balancing,
        hash_on,
        connect_timeout: c.millis(
            format!("{at}.connect_timeout_ms"),
            p.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
        ),
        read_timeout: c.millis(
            format!("{at}.read_timeout_ms"),
            p.read_timeout_ms,
            DEFAULT_READ_TIMEOUT_MS,
        ),
        write_timeout: c.millis(
            format!("{at}.write_timeout_ms"),
            p.write_timeout_ms,
            DEFAULT_WRITE_TIMEOUT_MS,
        ),
        retries: p.retries.unwrap_or(DEFAULT_RETRIES),
        tls: p.tls,
        sni: p.sni.clone(),
        health_check,
    }
}

/// `host:port`, `ip:port` or `[v6]:port`.
fn valid_endpoint(e: &str) -> bool {
    if e.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = e.rsplit_once(':') else {
        return false;
    };
    matches!(port.parse::<u16>(), Ok(p) if p > 0)
        && valid_host_pattern(host)
        && !host.starts_with('*')
}

fn check_header_name(c: &mut Checker, path: String, name: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.fail(path, format!("`{name}` is not a valid HTTP header name"));
    }
}

fn convert_rewrite(c: &mut Checker, at: &str, h: &HeaderRewriteSection) -> HeaderRewrite {
    for (k, name) in h.remove.iter().enumerate() {
        check_header_name(c, format!("{at}.remove[{k}]"), name);
    }
    let mut pairs = |field: &str, map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(name, value)| {
                let path = format!("{at}.{field}.{name}");
                check_header_name(c, path.clone(), name);
                if http::HeaderValue::from_str(value).is_err() {
                    c.fail(path, "value has characters not allowed in an HTTP header");
                }
                (name.to_ascii_lowercase(), value.clone())
            })
            .collect::<Vec<_>>()
    };
    let set = pairs("set", &h.set);
    let add = pairs("add", &h.add);
    HeaderRewrite {
        remove: h.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        set,
        add,
    }
}

fn convert_inference_pool(c: &mut Checker, at: &str, p: &InferencePoolSection) -> InferencePool {
    if p.endpoints.is_empty() {
        c.fail(
            format!("{at}.endpoints"),
            "at least one endpoint is required",
        );
    }
    for (k, e) in p.endpoints.iter().enumerate() {
        if !valid_endpoint(e) {
            c.fail(
                format!("{at}.endpoints[{k}]"),
                format!("`{e}` is not `host:port` (e.g. `127.0.0.1:50051`, `backend.svc:50051`)"),
            );
        }
    }
    if p.models.is_empty() {
        c.fail(
            format!("{at}.models"),
            "at least one model name is required",
        );
    }
    let mut seen = HashSet::new();
    for (k, m) in p.models.iter().enumerate() {
        c.unique(&mut seen, format!("{at}.models[{k}]"), "model", m);
    }
    InferencePool {
        name: p.name.clone(),
        endpoints: p.endpoints.clone(),
        models: p.models.clone(),
        connect_timeout: c.millis(
            format!("{at}.connect_timeout_ms"),
            p.connect_timeout_ms,
            DEFAULT_INFERENCE_CONNECT_TIMEOUT_MS,
        ),
        request_timeout: c.millis(
            format!("{at}.request_timeout_ms"),
            p.request_timeout_ms,
            DEFAULT_INFERENCE_REQUEST_TIMEOUT_MS,
        ),
        retries: p.retries.unwrap_or(DEFAULT_INFERENCE_RETRIES),
        max_inflight: c.at_least_one(
            format!("{at}.max_inflight"),
            p.max_inflight,
            DEFAULT_INFERENCE_MAX_INFLIGHT,
        ),
        resolve_interval: c.millis(
            format!("{at}.resolve_interval_ms"),
            p.resolve_interval_ms,
            DEFAULT_RESOLVE_INTERVAL_MS,
        ),
        input: InputLimits {
            max_messages: c.at_least_one(
                format!("{at}.max_messages"),
                p.max_messages,
                DEFAULT_INFERENCE_MAX_MESSAGES,
            ),
            max_input_bytes: c.at_least_one(
                format!("{at}.max_input_bytes"),
                p.max_input_bytes,
                DEFAULT_INFERENCE_MAX_INPUT_BYTES,
            ),
            max_embedding_inputs: c.at_least_one(
                format!("{at}.max_embedding_inputs"),
                p.max_embedding_inputs,
                DEFAULT_INFERENCE_MAX_EMBEDDING_INPUTS,
            ),
        },
    }
}

/// `no pool named `x` (defined pools: `a`, `b`)`
fn unknown_name(kind: &str, name: &str, known: impl Iterator<Item = String>) -> String {
    let known: Vec<_> = known.map(|n| format!("`{n}`")).collect();
    let known = if known.is_empty() {
        format!("no {kind}s are defined")
    } else {
        format!("defined {kind}s: {}", known.join(", "))
    };
    format!("no {kind} named `{name}` ({known})")
}

fn convert_target(c: &mut Checker, at: &str, r: &RouteSection, raw: &FileConfig) -> Option<Target> {
    let set = [
        r.pool.is_some(),
        !r.inference_pools.is_empty(),
        r.serve.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        c.fail(
            at,
            "set exactly one of `pool` (proxy to an HTTP pool), `inference_pools` (the OpenAI-compatible API) and `serve` (`openapi` or `docs`)",
        );
        return None;
    }
    if let Some(name) = &r.pool {
        let pool = raw.pools.iter().position(|p| &p.name == name);
        if pool.is_none() {
            let known = raw.pools.iter().map(|p| p.name.clone());
            c.fail(format!("{at}.pool"), unknown_name("pool", name, known));
        }
        return pool.map(Target::Pool);
    }
    if let Some(b) = r.serve {
        return Some(Target::Builtin(b));
    }
    let mut pools = Vec::new();
    let mut served: HashMap<&str, &str> = HashMap::new();
    for (k, name) in r.inference_pools.iter().enumerate() {
        let path = format!("{at}.inference_pools[{k}]");
        let Some(i) = raw.inference_pools.iter().position(|p| &p.name == name) else {
            let known = raw.inference_pools.iter().map(|p| p.name.clone());
            c.fail(path, unknown_name("inference pool", name, known));
            continue;
        };
        for m in &raw.inference_pools[i].models {
            if let Some(other) = served.insert(m, name) {
                if other != name {
                    c.fail(
                        path.clone(),
                        format!("model `{m}` is served by both `{other}` and `{name}`; a request's model must pick one pool"),
                    );
                }
            }
        }
        pools.push(i);
    }
    (pools.len() == r.inference_pools.len()).then_some(Target::Inference(pools))
}

fn convert_plugin(
    c: &mut Checker,
    at: &str,
    p: &PluginSection,
    raw: &FileConfig,
    base: &Path,
) -> PluginRef {
    for (k, name) in p.upstreams.iter().enumerate() {
        let known = raw
            .pools
            .iter()
            .map(|p| p.name.clone())
            .chain(raw.inference_pools.iter().map(|p| p.name.clone()));
        if !known.clone().any(|n| &n == name) {
            c.fail(
                format!("{at}.upstreams[{k}]"),
                unknown_name("pool", name, known),
            );
        }
    }
    let file = base.join(&p.file);
    match std::fs::metadata(&file) {
        Ok(m) if m.len() == 0 => {
            c.fail(format!("{at}.file"), format!("{} is empty", file.display()))
        }
        Ok(_) => {}
        Err(e) => c.fail(
            format!("{at}.file"),
            format!("cannot read {}: {e}", file.display()),
        ),
    }
    let configuration = match &p.configuration {
        None => Vec::new(),
        Some(toml::Value::String(s)) => s.clone().into_bytes(),
        Some(toml::Value::Table(t)) => {
            serde_json::to_vec(t).expect("TOML tables serialize as JSON")
        }
        Some(other) => {
            c.fail(
                format!("{at}.configuration"),
                format!(
                    "must be a string (passed as raw bytes) or a table (passed as JSON), not a {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    };
    let cpu_per_call = c.millis(
        format!("{at}.cpu_per_call_ms"),
        p.cpu_per_call_ms,
        DEFAULT_PLUGIN_CPU_PER_CALL_MS,
    );
    let memory_bytes = p.memory_bytes.unwrap_or(DEFAULT_PLUGIN_MEMORY_BYTES);
    if memory_bytes < 65536 {
        c.fail(
            format!("{at}.memory_bytes"),
            format!("{memory_bytes} is below one Wasm page (65536 bytes)"),
        );
    }
    let max_instances = c.at_least_one(
        format!("{at}.max_instances"),
        p.max_instances,
        DEFAULT_PLUGIN_MAX_INSTANCES,
    );
    if max_instances > MAX_PLUGIN_ENGINE_INSTANCES {
        c.fail(
            format!("{at}.max_instances"),
            format!("must be at most {MAX_PLUGIN_ENGINE_INSTANCES} (the plugin engine's instance slots)"),
        );
    }
    let max_idle_instances = p
        .max_idle_instances
        .unwrap_or(DEFAULT_PLUGIN_MAX_IDLE_INSTANCES)
        .min(max_instances);
    PluginRef {
        name: p.name.clone(),
        file,
        configuration,
        failure: p.failure,
        cpu_per_call,
        memory_bytes,
        bytes_per_host_call: c.at_least_one(
            format!("{at}.bytes_per_host_call"),
            p.bytes_per_host_call,
            DEFAULT_PLUGIN_BYTES_PER_HOST_CALL,
        ),
        max_headers_added: p
            .max_headers_added
            .unwrap_or(DEFAULT_PLUGIN_MAX_HEADERS_ADDED),
        max_module_bytes: c.at_least_one(
            format!("{at}.max_module_bytes"),
            p.max_module_bytes,
            DEFAULT_PLUGIN_MAX_MODULE_BYTES,
        ),
        upstreams: p.upstreams.clone(),
        max_http_calls: p.max_http_calls.unwrap_or(DEFAULT_PLUGIN_MAX_HTTP_CALLS),
        max_compile: c.millis(
            format!("{at}.max_compile_ms"),
            p.max_compile_ms,
            DEFAULT_PLUGIN_MAX_COMPILE_MS,
        ),
        max_instances,
        max_idle_instances,
        // The route's max_body_bytes, set once the route's is known.
        max_request_body_bytes: u64::MAX,
        shared_data_bytes: p
            .shared_data_bytes
            .unwrap_or(DEFAULT_PLUGIN_SHARED_DATA_BYTES),
        max_metrics: p.max_metrics.unwrap_or(DEFAULT_PLUGIN_MAX_METRICS),
        log_lines_per_second: p
            .log_lines_per_second
            .unwrap_or(DEFAULT_PLUGIN_LOG_LINES_PER_SECOND),
        max_http_call_timeout: c.millis(
            format!("{at}.max_http_call_timeout_ms"),
            p.max_http_call_timeout_ms,
            DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS,
        ),
    }
}

fn convert_route(
    c: &mut Checker,
    at: &str,
    r: &RouteSection,
    raw: &FileConfig,
    default_body: u64,
    base: &Path,
) -> Option<Route> {
    let target = convert_target(c, at, r, raw);
    let mut plugin_names = HashSet::new();
    let mut plugins = Vec::new();
    for (k, p) in r.plugins.iter().enumerate() {
        let pat = format!("{at}.plugins[{k}]");
        c.unique(&mut plugin_names, format!("{pat}.name"), "plugin", &p.name);
        plugins.push(convert_plugin(c, &pat, p, raw, base));
    }
    if !plugins.is_empty() && matches!(target, Some(Target::Builtin(_))) {
        c.fail(
            format!("{at}.plugins"),
            "plugins run on routes with a `pool` or `inference_pools`, not on `serve` routes",
        );
    }
    // A proxied route with plugins reads the body whole for their body hooks and
    // replays it to the upstream from a buffer of bounded size.
    let mut max_body_bytes = r.max_body_bytes.unwrap_or(default_body);
    if !plugins.is_empty() && matches!(target, Some(Target::Pool(_))) {
        match r.max_body_bytes {
            Some(n) if n > MAX_PLUGIN_ROUTE_BODY_BYTES => c.fail(
                format!("{at}.max_body_bytes"),
                format!("{n} is over {MAX_PLUGIN_ROUTE_BODY_BYTES}, the most a proxied route with plugins buffers for their body hooks"),
            ),
            Some(_) => {}
            None => max_body_bytes = max_body_bytes.min(MAX_PLUGIN_ROUTE_BODY_BYTES),
        }
    }
    let mut hosts = Vec::new();
    for (k, h) in r.hosts.iter().enumerate() {
        let h = h.to_ascii_lowercase();
        if !valid_host_pattern(&h) {
            c.fail(
                format!("{at}.hosts[{k}]"),
                format!("`{h}` is not a host name or `*.domain` wildcard"),
            );
        }
        hosts.push(h);
    }
    hosts.sort();
    let mut prefix = r.path_prefix.clone().unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/') {
        c.fail(
            format!("{at}.path_prefix"),
            format!("`{prefix}` must start with `/`"),
        );
    }
    while prefix.len() > 1 && prefix.ends_with('/') {
        prefix.pop();
    }
    let mut methods = Vec::new();
    for (k, m) in r.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if http::Method::from_bytes(upper.as_bytes()).is_err() || upper.is_empty() {
            c.fail(
                format!("{at}.methods[{k}]"),
                format!("`{m}` is not an HTTP method"),
            );
        }
        methods.push(upper);
    }
    methods.sort();
    methods.dedup();
    let request_headers = convert_rewrite(c, &format!("{at}.request_headers"), &r.request_headers);
    let response_headers =
        convert_rewrite(c, &format!("{at}.response_headers"), &r.response_headers);
    for p in &mut plugins {
        p.max_request_body_bytes = max_body_bytes;
    }
    Some(Route {
        name: r.name.clone(),
        target: target?,
        hosts,
        path_prefix: prefix,
        methods,
        strip_prefix: r.strip_prefix,
        max_body_bytes,
        plugins,
        request_headers,
        response_headers,
    })
}
