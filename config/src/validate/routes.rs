//! Routes: hosts, prefixes, methods, header rewrites, their target (a
//! pool, inference pools or a built-in page) and their Wasm plugins.

use super::*;

pub(super) fn valid_host_pattern(name: &str) -> bool {
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

pub(super) fn check_header_name(c: &mut Checker, path: String, name: &str) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        c.fail(path, format!("`{name}` is not a valid HTTP header name"));
    }
}

pub(super) fn convert_rewrite(
    c: &mut Checker,
    at: &str,
    h: &HeaderRewriteSection,
) -> HeaderRewrite {
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

/// `no pool named `x` (defined pools: `a`, `b`)`
pub(super) fn unknown_name(kind: &str, name: &str, known: impl Iterator<Item = String>) -> String {
    let known: Vec<_> = known.map(|n| format!("`{n}`")).collect();
    let known = if known.is_empty() {
        format!("no {kind}s are defined")
    } else {
        format!("defined {kind}s: {}", known.join(", "))
    };
    format!("no {kind} named `{name}` ({known})")
}

pub(super) fn convert_target(
    c: &mut Checker,
    at: &str,
    r: &RouteSection,
    raw: &FileConfig,
) -> Option<Target> {
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

pub(super) fn convert_plugin(
    c: &mut Checker,
    at: &str,
    p: &PluginSection,
    raw: &FileConfig,
    base: &Path,
) -> PluginRef {
    check_plugin_upstreams(c, at, &p.upstreams, raw);
    let file = base.join(&p.file);
    check_plugin_file(c, at, &file);
    let configuration = plugin_configuration(c, at, p.configuration.as_ref());
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
    if memory_bytes > MAX_PLUGIN_MEMORY_BYTES {
        c.fail(
            format!("{at}.memory_bytes"),
            format!("{memory_bytes} is over {MAX_PLUGIN_MEMORY_BYTES}, the most the plugin engine reserves for one instance"),
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
        .unwrap_or(max_instances)
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
        shared_queue_bytes: p
            .shared_queue_bytes
            .unwrap_or(DEFAULT_PLUGIN_SHARED_QUEUE_BYTES),
        stream_events: p.stream_events,
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

/// Every pool a plugin may call must exist (HTTP or inference).
fn check_plugin_upstreams(c: &mut Checker, at: &str, upstreams: &[String], raw: &FileConfig) {
    let known = raw
        .pools
        .iter()
        .map(|p| p.name.clone())
        .chain(raw.inference_pools.iter().map(|p| p.name.clone()));
    for (k, name) in upstreams.iter().enumerate() {
        if !known.clone().any(|n| &n == name) {
            c.fail(
                format!("{at}.upstreams[{k}]"),
                unknown_name("pool", name, known.clone()),
            );
        }
    }
}

/// A plugin's module must be a readable, non-empty file.
fn check_plugin_file(c: &mut Checker, at: &str, file: &Path) {
    match std::fs::metadata(file) {
        Ok(m) if m.len() == 0 => {
            c.fail(format!("{at}.file"), format!("{} is empty", file.display()))
        }
        Ok(_) => {}
        Err(e) => c.fail(
            format!("{at}.file"),
            format!(
                "cannot read {}: {e} (the example plugins: scripts/install.sh puts them in $GANTRY_HOME; scripts/build-plugins.sh builds them in the source tree)",
                file.display()
            ),
        ),
    }
}

/// A plugin's `configuration`: a string is passed as its bytes, a table as JSON.
fn plugin_configuration(c: &mut Checker, at: &str, configuration: Option<&toml::Value>) -> Vec<u8> {
    match configuration {
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
    }
}

pub(super) fn convert_route(
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
    let inference = matches!(target, Some(Target::Inference(_)));
    for (k, p) in plugins.iter_mut().enumerate() {
        p.max_request_body_bytes = max_body_bytes;
        if p.stream_events && !inference {
            c.fail(
                format!("{at}.plugins[{k}].stream_events"),
                "only on a route with `inference_pools` (an HTTP route's plugins always see the response body)",
            );
        }
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
        auth: r.auth,
    })
}
