//! Each validation rule, as the operator sees it: field path plus what is wrong.

use gantry_config::{parse, ConfigError, HashKey, Target, EMBEDDED_DEFAULT};
use std::path::Path;

const BASE: &str = r#"
[[listeners]]
name = "http"
address = "127.0.0.1:8080"
[[pools]]
name = "p"
endpoints = ["127.0.0.1:3000"]
[[routes]]
name = "r"
pool = "p"
"#;

fn problems(extra: &str) -> Vec<String> {
    match parse(&format!("{BASE}{extra}"), "t.toml", Path::new(".")) {
        Ok(_) => vec![],
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn assert_problem(extra: &str, expected: &str) {
    let found = problems(extra);
    assert!(
        found.iter().any(|p| p.contains(expected)),
        "expected `{expected}` in {found:#?}"
    );
}

#[test]
fn embedded_default_is_valid_with_documented_defaults() {
    let c = parse(EMBEDDED_DEFAULT, "default", Path::new("examples")).unwrap();
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.unwrap().to_string(), "127.0.0.1:9090");
    assert_eq!(
        c.limits.max_connections,
        gantry_config::file::DEFAULT_MAX_CONNECTIONS
    );
    assert_eq!(
        c.limits.client_read_timeout.as_millis() as u64,
        gantry_config::file::DEFAULT_CLIENT_READ_TIMEOUT_MS
    );
}

#[test]
fn defaults_fill_in_and_names_resolve() {
    let c = parse(BASE, "t", Path::new(".")).unwrap();
    let (pool, route) = (&c.pools[0], &c.routes[0]);
    assert_eq!(pool.retries, gantry_config::file::DEFAULT_RETRIES);
    assert_eq!(pool.hash_on, HashKey::ClientAddress);
    assert_eq!(route.target, Target::Pool(0));
    assert_eq!(route.path_prefix, "/");
    assert_eq!(
        route.max_body_bytes,
        gantry_config::file::DEFAULT_MAX_BODY_BYTES
    );
}

#[test]
fn duplicate_names() {
    assert_problem(
        "[[routes]]\nname = \"r\"\npool = \"p\"\npath_prefix = \"/x\"",
        "routes[1].name: duplicate route name `r`",
    );
    assert_problem(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8081\"",
        "listeners[1].name: duplicate listener name `http`",
    );
}

#[test]
fn addresses() {
    assert_problem(
        "[admin]\naddress = \"localhost\"",
        "admin.address: `localhost` is not an `ip:port` address",
    );
    assert_problem(
        "[[listeners]]\nname = \"b\"\naddress = \"127.0.0.1:8080\"",
        "listeners[1].address: 127.0.0.1:8080 is already used by listeners[0].address",
    );
    assert_problem(
        "[[pools]]\nname = \"q\"\nendpoints = [\"host:0\"]",
        "pools[1].endpoints[0]: `host:0` is not `host:port`",
    );
    assert!(problems(
        "[[pools]]\nname = \"q\"\nendpoints = [\"backend.internal:80\", \"[::1]:80\"]"
    )
    .is_empty());
}

#[test]
fn impossible_values() {
    assert_problem(
        "[limits]\nclient_read_timeout_ms = 0",
        "limits.client_read_timeout_ms: must be at least 1 millisecond",
    );
    assert_problem(
        "[limits]\nmax_connections = 0",
        "limits.max_connections: must be at least 1",
    );
    assert_problem(
        "[limits]\nmax_header_bytes = 10",
        "limits.max_header_bytes: 10 is below the minimum of 1024 bytes",
    );
    assert_problem(
        "[server]\nthreads = 0",
        "server.threads: must be at least 1",
    );
    assert_problem(
        "[[pools]]\nname = \"q\"\nendpoints = [\"127.0.0.1:1\"]\n[pools.health_check]\nkind = \"http\"\nhealthy_threshold = 0\ninterval_ms = 0",
        "pools[1].health_check.healthy_threshold: must be at least 1",
    );
    assert_problem(
        "[[pools]]\nname = \"q\"\nendpoints = [\"127.0.0.1:1\"]\n[pools.health_check]\nkind = \"http\"\ninterval_ms = 0",
        "pools[1].health_check.interval_ms: must be at least 1 millisecond",
    );
}

#[test]
fn grpc_health_checks() {
    let pool = "[[pools]]\nname = \"q\"\nendpoints = [\"127.0.0.1:1\"]\n";
    assert!(problems(&format!(
        "{pool}[pools.health_check]\nkind = \"grpc\"\nservice = \"svc\""
    ))
    .is_empty());
    assert_problem(
        &format!("{pool}tls = true\n[pools.health_check]\nkind = \"grpc\""),
        "pools[1].health_check.kind: `grpc` checks speak cleartext HTTP/2; this pool has `tls = true`",
    );
    assert_problem(
        &format!("{pool}[pools.health_check]\nkind = \"tcp\"\nservice = \"svc\""),
        "pools[1].health_check.service: `service` needs `kind = \"grpc\"`",
    );
    assert_problem(
        &format!("{pool}[pools.health_check]\nkind = \"grpc\"\npath = \"/h\""),
        "pools[1].health_check.kind: `path` and `host` need `kind = \"http\"`",
    );
}

#[test]
fn routes_and_headers() {
    assert_problem(
        "[[routes]]\nname = \"x\"\npool = \"nope\"",
        "routes[1].pool: no pool named `nope` (defined pools: `p`)",
    );
    assert_problem(
        "[[routes]]\nname = \"x\"\npool = \"p\"\npath_prefix = \"api\"",
        "routes[1].path_prefix: `api` must start with `/`",
    );
    assert_problem(
        "[[routes]]\nname = \"x\"\npool = \"p\"\nmethods = [\"G T\"]",
        "routes[1].methods[0]: `G T` is not an HTTP method",
    );
    assert_problem(
        "[[routes]]\nname = \"x\"\npool = \"p\"\npath_prefix = \"/a\"\nrequest_headers = { set = { \"bad header\" = \"v\" } }",
        "routes[1].request_headers.set.bad header: `bad header` is not a valid HTTP header name",
    );
    assert_problem(
        "[[routes]]\nname = \"x\"\npool = \"p\"",
        "routes[1]: matches exactly the same hosts, path prefix and methods as routes[0]",
    );
}

#[test]
fn hashing_needs_a_header_name() {
    assert_problem(
        "[[pools]]\nname = \"q\"\nendpoints = [\"127.0.0.1:1\"]\nload_balancing = \"consistent_hash\"\nhash_on = \"header\"",
        "pools[1].hash_header: required when `hash_on = \"header\"`",
    );
}

#[test]
fn unknown_fields_and_wrong_types_stop_at_the_first_with_a_path() {
    let err = parse(
        &format!("{BASE}[limits]\nmax_conections = 5\n"),
        "t.toml",
        Path::new("."),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("t.toml: limits.max_conections: unknown field"),
        "{text}"
    );
    assert!(text.contains("did you mean `max_connections`?"), "{text}");
    let err = parse(
        &format!("{BASE}[limits]\nmax_connections = \"many\"\n"),
        "t.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("limits.max_connections: invalid type"),
        "{err}"
    );
    assert!(matches!(err, ConfigError::Invalid { .. }));
}

#[test]
fn tls_files_are_named_when_missing_or_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.pem"), "not a pem").unwrap();
    let text = format!(
        "{BASE}[[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:8443\"\n[listeners.tls]\n[[listeners.tls.certificates]]\ncert = \"empty.pem\"\nkey = \"missing.key\"\n"
    );
    let err = parse(&text, "t.toml", dir.path()).unwrap_err();
    let found: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("listeners[1].tls.certificates[0].cert:")
                && p.contains("empty.pem` holds no PEM certificate")),
        "{found:#?}"
    );
    assert!(
        found.iter().any(
            |p| p.starts_with("listeners[1].tls.certificates[0].key: cannot read")
                && p.contains("missing.key")
        ),
        "{found:#?}"
    );
}

const AI_POOLS: &str = r#"
[[inference_pools]]
name = "gpu"
endpoints = ["127.0.0.1:50051", "backends.example.svc:50051"]
models = ["llama", "embed"]
[[inference_pools]]
name = "cpu"
endpoints = ["127.0.0.1:50052"]
models = ["small"]
"#;

#[test]
fn inference_routes_resolve_their_pools_with_documented_defaults() {
    let text = format!("{BASE}{AI_POOLS}[[routes]]\nname = \"ai\"\npath_prefix = \"/v1\"\ninference_pools = [\"gpu\", \"cpu\"]\n[[routes]]\nname = \"doc\"\npath_prefix = \"/openapi.json\"\nserve = \"openapi\"\n");
    let c = parse(&text, "t", Path::new(".")).unwrap();
    assert_eq!(c.routes[1].target, Target::Inference(vec![0, 1]));
    assert_eq!(c.routes[2].target, Target::Builtin(Builtin::Openapi));
    let gpu = &c.inference_pools[0];
    use gantry_config::file::*;
    assert_eq!(gpu.retries, DEFAULT_INFERENCE_RETRIES);
    assert_eq!(
        gpu.request_timeout.as_millis() as u64,
        DEFAULT_INFERENCE_REQUEST_TIMEOUT_MS
    );
    assert_eq!(
        gpu.connect_timeout.as_millis() as u64,
        DEFAULT_INFERENCE_CONNECT_TIMEOUT_MS
    );
    assert_eq!(
        gpu.resolve_interval.as_millis() as u64,
        DEFAULT_RESOLVE_INTERVAL_MS
    );
    let default = parse(EMBEDDED_DEFAULT, "default", Path::new("examples")).unwrap();
    assert!(default
        .routes
        .iter()
        .any(|r| r.path_prefix == "/v1" && matches!(r.target, Target::Inference(_))));
}

#[test]
fn inference_pool_and_route_problems() {
    let route = |fields: &str| {
        format!("{AI_POOLS}[[routes]]\nname = \"ai\"\npath_prefix = \"/v1\"\n{fields}\n")
    };
    assert_problem(
        &route("pool = \"p\"\ninference_pools = [\"gpu\"]"),
        "routes[1]: set exactly one of `pool`",
    );
    assert_problem(&route(""), "routes[1]: set exactly one of `pool`");
    assert_problem(
        &route("inference_pools = [\"tpu\"]"),
        "routes[1].inference_pools[0]: no inference pool named `tpu` (defined inference pools: `gpu`, `cpu`)",
    );
    let twice = "[[inference_pools]]\nname = \"gpu2\"\nendpoints = [\"127.0.0.1:1\"]\nmodels = [\"llama\"]\n";
    assert_problem(
        &format!("{twice}{}", route("inference_pools = [\"gpu\", \"gpu2\"]")),
        "model `llama` is served by both `gpu` and `gpu2`",
    );
    let bad_pool = "[[inference_pools]]\nname = \"x\"\nendpoints = [\"nope\"]\nmodels = []\nrequest_timeout_ms = 0\n";
    assert_problem(
        bad_pool,
        "inference_pools[0].endpoints[0]: `nope` is not `host:port`",
    );
    assert_problem(
        bad_pool,
        "inference_pools[0].models: at least one model name is required",
    );
    assert_problem(
        bad_pool,
        "inference_pools[0].request_timeout_ms: must be at least 1 millisecond",
    );
    assert_problem(
        "[[inference_pools]]\nname = \"x\"\nendpoints = [\"127.0.0.1:1\"]\nmodels = [\"a\"]\nmodel = \"a\"\n",
        "did you mean `models`?",
    );
}

const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn keys_resolve_their_routes_and_keep_only_the_digest() {
    let text = format!(
        "{}\nauth = \"keys\"\n[[keys]]\nname = \"team-a\"\nsha256 = \"{DIGEST}\"\nmodels = [\"m\"]\nroutes = [\"r\"]\n",
        BASE.trim_end()
    );
    let c = parse(&text, "t", Path::new(".")).unwrap();
    assert_eq!(c.routes[0].auth, gantry_config::RouteAuth::Keys);
    let k = &c.keys[0];
    assert_eq!((k.name.as_str(), k.routes.as_slice()), ("team-a", &[0][..]));
    assert_eq!(k.sha256.unwrap()[..3], [0xba, 0x78, 0x16]);
    assert_eq!(k.models, ["m"]);
    assert_eq!(
        k.limits,
        gantry_config::KeyLimits::default(),
        "no limits unless set"
    );
}

#[test]
fn key_problems_name_the_field() {
    assert_problem(
        "auth = \"keys\"\n",
        "routes[0].auth: `keys`, but no [[keys]] are defined",
    );
    let key = |name: &str, sha: &str, extra: &str| {
        format!("[[keys]]\nname = \"{name}\"\nsha256 = \"{sha}\"\n{extra}\n")
    };
    assert_problem(
        &key("a b", DIGEST, ""),
        "keys[0].name: `a b` must be 1 to 64 letters, digits, `-` or `_`",
    );
    assert_problem(
        &key("a", "not-hex", ""),
        "keys[0].sha256: must be 64 hex digits",
    );
    assert_problem(
        &(key("a", DIGEST, "") + &key("b", DIGEST, "")),
        "keys[1].sha256: the same key as keys[0]",
    );
    assert_problem(
        &key("a", DIGEST, "routes = [\"nope\"]"),
        "keys[0].routes[0]: no route named `nope`",
    );
    assert_problem(
        &key("a", DIGEST, "routes = [\"r\"]"),
        "keys[0].routes[0]: route `r` does not ask for keys",
    );
    assert_problem(
        &key("a", DIGEST, "max_concurrent = 0"),
        "keys[0].max_concurrent: must be at least 1 (leave it out for no limit)",
    );
    assert_problem(
        "[[keys]]\nname = \"a\"\n",
        "keys[0].sha256: required unless the tenant's keys are kept in [key_store]",
    );
    assert_problem(
        &key("a", DIGEST, "tokens_per_month = 1000"),
        "keys[0].tokens_per_month: a budget must outlive the process: set [key_store].path (a file) or [key_store].redis",
    );
    assert_problem(
        &format!(
            "[key_store]\npath = \"b.redb\"\n{}",
            key("a", DIGEST, "tokens_per_day = 0")
        ),
        "keys[0].tokens_per_day: must be at least 1",
    );
}

#[test]
fn budgets_are_kept_in_the_key_store_relative_to_the_config() {
    let text = format!(
        "[key_store]\npath = \"state/budgets.redb\"\n[[keys]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\ntokens_per_day = 10\ntokens_per_month = 200\n{}",
        BASE.trim_end()
    );
    let c = parse(&text, "t", Path::new("/etc/gantry")).unwrap();
    assert_eq!(
        c.key_store,
        Some(gantry_config::KeyStore::Embedded(
            "/etc/gantry/state/budgets.redb".into()
        ))
    );
    let limits = c.keys[0].limits;
    assert_eq!(
        (limits.tokens_per_day, limits.tokens_per_month),
        (Some(10), Some(200))
    );
    assert!(limits.has_budget());
}

#[test]
fn the_shared_key_store_is_redis_with_a_stated_behaviour_when_unreachable() {
    let store = |body: &str| format!("\n[key_store]\n{body}\n");
    let full = |body: &str| format!("{BASE}{}", store(body));
    let c = parse(
        &full("redis = \"redis://10.0.0.5:6379/2\""),
        "t",
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        c.key_store,
        Some(gantry_config::KeyStore::Redis {
            url: "redis://10.0.0.5:6379/2".into(),
            on_unreachable: gantry_config::OnUnreachable::Closed,
            replicas: 1,
        }),
        "closed unless said otherwise"
    );
    let c = parse(
        &full("redis = \"redis://r:6379\"\non_unreachable = \"local\"\nreplicas = 3"),
        "t",
        Path::new("."),
    )
    .unwrap();
    assert!(matches!(
        c.key_store,
        Some(gantry_config::KeyStore::Redis { replicas: 3, .. })
    ));
    assert_problem(
        &store("redis = \"redis://r\"\non_unreachable = \"local\""),
        "key_store.replicas: with on_unreachable = \"local\", the number of replicas",
    );
    assert_problem(
        &store("path = \"a.redb\"\nredis = \"redis://r\""),
        "key_store: set one of `path` (a file, this process) and `redis`",
    );
    assert_problem(
        &store("redis = \"http://r\""),
        "key_store.redis: `http://r` must be a redis:// or rediss:// URL",
    );
    assert_problem(
        &store("path = \"a.redb\"\nreplicas = 2"),
        "key_store.replicas: only with `redis`",
    );
    assert_problem(
        &store("redis = \"redis://r\"\non_unreachable = \"open\""),
        "on_unreachable",
    );
}

#[test]
fn traces_defaults_and_each_limit_named() {
    use gantry_config::traces::{AcceptIncoming, OtlpProtocol};
    let c = parse(
        &format!("{BASE}[traces]\nendpoint = \"http://collector:4317\"\n"),
        "t",
        Path::new("."),
    )
    .unwrap();
    let t = c.traces.expect("traced");
    assert_eq!(t.protocol, OtlpProtocol::Grpc);
    assert_eq!(t.accept_incoming, AcceptIncoming::TrustedProxies);
    assert_eq!(t.service_name, "gantry");
    assert_eq!(
        t.queue_spans,
        gantry_config::traces::DEFAULT_TRACES_QUEUE_SPANS
    );
    assert!(parse(BASE, "t", Path::new(".")).unwrap().traces.is_none());

    let traces = |lines: &str| format!("[traces]\nendpoint = \"http://c:4317\"\n{lines}\n");
    assert_problem(
        "[traces]\nendpoint = \"https://c:4317\"\n",
        "traces.endpoint: `https://c:4317` is not an http:// URL",
    );
    assert_problem(
        &traces("sampling_ratio = 1.5"),
        "traces.sampling_ratio: must be between 0 and 1",
    );
    assert_problem(
        &traces("queue_spans = 10\nbatch_spans = 11"),
        "traces.batch_spans: must be at most queue_spans (10)",
    );
    assert_problem(
        &traces("queue_spans = 2000000"),
        "traces.queue_spans: must be at most 1048576",
    );
    assert_problem(
        &traces("queue_spans = 0"),
        "traces.queue_spans: must be at least 1",
    );
    assert_problem(
        &traces("headers = { \"bad header\" = \"x\" }"),
        "traces.headers: `bad header` is not a header name",
    );
    assert_problem(&traces("sample = 1.0"), "did you mean `sampling_ratio`?");
}

#[test]
fn the_backend_has_no_trusted_proxies_to_trace_from() {
    let text = format!(
        "{}\n[traces]\nendpoint = \"http://c:4317\"\naccept_incoming = \"trusted_proxies\"\n",
        gantry_config::backend::EMBEDDED_BACKEND_DEFAULT
    );
    let err = gantry_config::backend::parse_backend(&text, "b", Path::new("examples"))
        .expect_err("refused");
    let found: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    assert!(
        found
            .iter()
            .any(|p| p.starts_with("traces.accept_incoming: the backend has no trusted proxies")),
        "{found:#?}"
    );
}
