//! HTTP pools and inference pools: endpoints, balancing, health checks,
//! timeouts and input limits.

use super::*;

pub(super) fn convert_pool(c: &mut Checker, at: &str, p: &PoolSection) -> Pool {
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
    let health_check = p
        .health_check
        .as_ref()
        .map(|h| convert_health_check(c, &format!("{at}.health_check"), h));
    if p.tls && p.health_check.as_ref().map(|h| h.kind) == Some(HealthCheckKind::Grpc) {
        c.fail(
            format!("{at}.health_check.kind"),
            "`grpc` checks speak cleartext HTTP/2; this pool has `tls = true`",
        );
    }
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
        resolve_interval: c.millis(
            format!("{at}.resolve_interval_ms"),
            p.resolve_interval_ms,
            DEFAULT_RESOLVE_INTERVAL_MS,
        ),
    }
}

/// A pool's `health_check`: path, interval, timeout and thresholds.
pub(super) fn convert_health_check(
    c: &mut Checker,
    hat: &str,
    h: &HealthCheckSection,
) -> HealthCheck {
    if h.kind != HealthCheckKind::Http && (h.path.is_some() || h.host.is_some()) {
        c.fail(
            format!("{hat}.kind"),
            "`path` and `host` need `kind = \"http\"`",
        );
    }
    if h.kind != HealthCheckKind::Grpc && h.service.is_some() {
        c.fail(
            format!("{hat}.service"),
            "`service` needs `kind = \"grpc\"`",
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
        service: h.service.clone().unwrap_or_default(),
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
}

/// `host:port`, `ip:port` or `[v6]:port`.
pub(super) fn valid_endpoint(e: &str) -> bool {
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

pub(super) fn convert_inference_pool(
    c: &mut Checker,
    at: &str,
    p: &InferencePoolSection,
) -> InferencePool {
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
        routing: p.routing,
        prefix_max_extra_load: match p.prefix_max_extra_load {
            Some(x) if !(x.is_finite() && x >= 0.0) => {
                c.fail(
                    format!("{at}.prefix_max_extra_load"),
                    format!("must be a number ≥ 0 (requests per max_running slot), not {x}"),
                );
                DEFAULT_PREFIX_MAX_EXTRA_LOAD
            }
            x => x.unwrap_or(DEFAULT_PREFIX_MAX_EXTRA_LOAD),
        },
        prefix_index_max_blocks: c.at_least_one(
            format!("{at}.prefix_index_max_blocks"),
            p.prefix_index_max_blocks,
            DEFAULT_PREFIX_INDEX_MAX_BLOCKS,
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
