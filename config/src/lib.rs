//! Gantry's configuration.
//!
//! Two layers, as in River: [`file`](mod@file) is the TOML format operators write (strict, with
//! documented defaults), and [`Config`] is what the gateway uses (validated, defaults
//! filled in, addresses parsed, durations typed). [`load`] and [`parse`] go from one to
//! the other and report *every* problem at once, each with its field path.
//!
//! Owns: the configuration's format, defaults (as named constants), validation
//! and the internal form. Must never import: any other Gantry crate, Pingora,
//! wasmtime, candle or tonic — every other crate depends on it, it on none.

pub mod backend;
pub mod file;
pub mod traces;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{
    Builtin, FailureMode, HashOn, HealthCheckKind, InferenceRouting, LoadBalancing, OnUnreachable,
    RouteAuth, BUDGET_FLUSH_INTERVAL_MS, REDIS_TIMEOUT_MS,
};

/// The default configuration compiled into the binary, used by `gantry serve` without
/// `--config`. Kept as `config/examples/default.toml`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/default.toml");
/// Where the embedded default's relative file names (its plugins) resolve from,
/// inside the repository or the data home ([`embedded_base`]).
pub const EMBEDDED_DEFAULT_DIR: &str = "config/examples";
/// The environment variable naming Gantry's data home.
pub const GANTRY_HOME_ENV: &str = "GANTRY_HOME";

/// Gantry's data home, where `scripts/install.sh` puts the models and example
/// plugins the embedded defaults use: `$GANTRY_HOME`, else
/// `/usr/local/share/gantry` for root and `~/.local/share/gantry` for others.
pub fn gantry_home() -> PathBuf {
    if let Some(home) = std::env::var_os(GANTRY_HOME_ENV).filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let root = std::env::var_os("USER").is_some_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root");
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/share/gantry"),
        _ => PathBuf::from("/usr/local/share/gantry"),
    }
}

/// Where the embedded defaults' relative file names (models, plugins)
/// resolve from: `config/examples` in the current directory when it is a
/// Gantry source tree (`scripts/run.sh`) and `$GANTRY_HOME` is not set; else
/// `config/examples` under [`gantry_home`], which mirrors the tree's layout.
pub fn embedded_base() -> PathBuf {
    let in_tree = Path::new(EMBEDDED_DEFAULT_DIR).join("default.toml");
    if std::env::var_os(GANTRY_HOME_ENV).is_none() && in_tree.is_file() {
        return PathBuf::from(EMBEDDED_DEFAULT_DIR);
    }
    gantry_home().join(EMBEDDED_DEFAULT_DIR)
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `routes[2].pool`; empty for the file as a whole.
    pub path: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {cause}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", format_problems(file, problems))]
    Invalid {
        /// The file (or `<embedded default>`).
        file: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn format_problems(file: &str, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{file}: {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems found, empty for a read error.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// Read, parse and validate a configuration file. Relative TLS paths are resolved
/// against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        file: path.display().to_string(),
        cause,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &path.display().to_string(), base)
}

/// The property the `config_parse` fuzz target checks on any text: [`parse`]
/// (and [`backend::parse_backend`]) never panic, and a refusal names at least
/// one problem, each with a field path and a message. Panics when it fails.
pub fn check_parse_property(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Relative files resolve under a directory that holds none.
    let base = Path::new("/nonexistent-gantry-fuzz");
    if let Err(ConfigError::Invalid { problems, .. }) = parse(&text, "fuzz", base) {
        assert!(!problems.is_empty());
        for p in &problems {
            assert!(!p.message.is_empty(), "{p:?}");
        }
    }
    let _ = backend::parse_backend(&text, "fuzz", base);
}

/// Parse and validate configuration text. `name` labels errors; relative paths in
/// the text are resolved against `base`.
pub fn parse(text: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        file: name.to_string(),
        problems,
    };
    let raw = validate::deserialize(text).map_err(|p| invalid(vec![p]))?;
    validate::convert(raw, base).map_err(invalid)
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads per service.
    pub threads: usize,
    /// Client-facing limits.
    pub limits: Limits,
    /// Admin listener address, if any.
    pub admin: Option<SocketAddr>,
    /// Client listeners.
    pub listeners: Vec<Listener>,
    /// Upstream pools, referenced by index from routes.
    pub pools: Vec<Pool>,
    /// Inference pools, referenced by index from routes.
    pub inference_pools: Vec<InferencePool>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Where a binary upgrade hands the listening sockets over.
    pub upgrade_socket: PathBuf,
    /// Names answered before DNS for pools' endpoints (`/etc/hosts` format).
    pub hosts_file: Option<PathBuf>,
    /// Who may use the admin listener.
    pub admin_access: AdminAccess,
    /// API keys of tenants, in file order.
    pub keys: Vec<ApiKey>,
    /// Where keys' limits and budgets are counted; `None` when no
    /// `[key_store]` is configured (limits in this process; no budgets).
    pub key_store: Option<KeyStore>,
    /// Where spans are exported; `None`: no traces.
    pub traces: Option<traces::Traces>,
}

/// One tenant's API key, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The tenant's name (a metric label).
    pub name: String,
    /// SHA-256 of the configured key; `None`: its keys are all in the key
    /// store.
    pub sha256: Option<[u8; 32]>,
    /// Models it may use; empty: all.
    pub models: Vec<String>,
    /// Indexes into [`Config::routes`] it may use; empty: every route with keys.
    pub routes: Vec<usize>,
    /// Its rate limits.
    pub limits: KeyLimits,
}

/// One key's rate limits; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests let in per minute.
    pub requests_per_minute: Option<u64>,
    /// Prompt tokens per minute (reserved by count or bound, settled to usage).
    pub input_tokens_per_minute: Option<u64>,
    /// Tokens generated per minute (reserved by `max_tokens`, settled to usage).
    pub output_tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u64>,
    /// Tokens (prompt and generated) per UTC calendar day.
    pub tokens_per_day: Option<u64>,
    /// Tokens (prompt and generated) per UTC calendar month.
    pub tokens_per_month: Option<u64>,
}

impl KeyLimits {
    /// Whether the key has a day or month budget.
    pub fn has_budget(&self) -> bool {
        self.tokens_per_day.is_some() || self.tokens_per_month.is_some()
    }

    /// Each limit divided among `replicas` (at least 1 each).
    pub fn divided(&self, replicas: u32) -> KeyLimits {
        let share = |v: Option<u64>| v.map(|v| (v / u64::from(replicas.max(1))).max(1));
        KeyLimits {
            requests_per_minute: share(self.requests_per_minute),
            input_tokens_per_minute: share(self.input_tokens_per_minute),
            output_tokens_per_minute: share(self.output_tokens_per_minute),
            max_concurrent: share(self.max_concurrent),
            tokens_per_day: share(self.tokens_per_day),
            tokens_per_month: share(self.tokens_per_month),
        }
    }
}

/// Where keys' limits and budgets are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    /// In this process; budgets kept in a redb file at this path.
    Embedded(PathBuf),
    /// In a Redis server shared by every replica.
    Redis {
        /// `redis://…` or `rediss://…`.
        url: String,
        /// While it cannot be reached.
        on_unreachable: OnUnreachable,
        /// Replicas sharing the limits (with `OnUnreachable::Local`; else 1).
        replicas: u32,
    },
}

/// Who may use the admin listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// Bearer token for state-changing endpoints; none disables them.
    pub token: Option<String>,
    /// Host names accepted besides IP literals and `localhost` (lower case).
    pub hosts: Vec<String>,
}

/// Client-facing limits (see [`file::LimitsSection`] for defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Request line plus headers, bytes.
    pub max_header_bytes: usize,
    /// Request body, bytes (routes may override).
    pub max_body_bytes: u64,
    /// Open client connections.
    pub max_connections: usize,
    /// Client read timeout.
    pub client_read_timeout: Duration,
    /// Client write timeout.
    pub client_write_timeout: Duration,
    /// Idle keep-alive timeout.
    pub keepalive_timeout: Duration,
    /// Time in-flight requests get after SIGTERM.
    pub shutdown_grace_period: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Open client connections from one address.
    pub max_connections_per_client: usize,
    /// From accept to the end of the first request's head.
    pub head_timeout: Duration,
}

/// A client listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Name for logs and metrics.
    pub name: String,
    /// Bound address.
    pub address: SocketAddr,
    /// Cleartext HTTP/2 accepted.
    pub h2c: bool,
    /// TLS termination, if any.
    pub tls: Option<Tls>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Offer `h2` in ALPN.
    pub http2: bool,
    /// Certificates; SNI picks among them.
    pub certificates: Vec<Certificate>,
}

/// A certificate and key, both as absolute (or base-relative) paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Certificate {
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// Lower-cased server names; empty for the default certificate.
    pub server_names: Vec<String>,
}

/// An upstream pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// `host:port` strings, syntax checked.
    pub endpoints: Vec<String>,
    /// Selection policy.
    pub load_balancing: LoadBalancing,
    /// Hash key source for `consistent_hash`.
    pub hash_on: HashKey,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream read timeout.
    pub read_timeout: Duration,
    /// Upstream write timeout.
    pub write_timeout: Duration,
    /// Retries of idempotent requests on connect failure.
    pub retries: u32,
    /// Upstream TLS.
    pub tls: bool,
    /// Upstream SNI.
    pub sni: Option<String>,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// Re-resolution period of endpoint host names.
    pub resolve_interval: Duration,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP.
    ClientAddress,
    /// A request header (lower-cased name), falling back to the client IP.
    Header(String),
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: HealthCheckKind,
    /// HTTP path.
    pub path: String,
    /// HTTP Host header.
    pub host: String,
    /// The gRPC service asked about (`kind = "grpc"`; empty: the server).
    pub service: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes needed to re-admit.
    pub healthy_threshold: u32,
    /// Failures needed to eject.
    pub unhealthy_threshold: u32,
}

/// A pool of inference backends.
#[derive(Debug, Clone, PartialEq)]
pub struct InferencePool {
    /// Unique name.
    pub name: String,
    /// `host:port` strings, syntax checked.
    pub endpoints: Vec<String>,
    /// Models served.
    pub models: Vec<String>,
    /// gRPC connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// Retries before the first token.
    pub retries: u32,
    /// Requests in flight at once; more get 429.
    pub max_inflight: usize,
    /// Re-resolution period of endpoint host names.
    pub resolve_interval: Duration,
    /// What one request may ask the gateway to hold.
    pub input: InputLimits,
    /// KV block names indexed per backend and model.
    pub prefix_index_max_blocks: usize,
    /// How a generation request's backend is picked.
    pub routing: InferenceRouting,
    /// With prefix routing: extra load (requests per slot) the prefix holder may carry.
    pub prefix_max_extra_load: f64,
}

/// What one inference request may carry, checked by the gateway before any
/// backend is contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Messages per chat request.
    pub max_messages: usize,
    /// Text bytes of messages, prompt or embedding inputs, summed (4 per token id).
    pub max_input_bytes: usize,
    /// Texts per embeddings request.
    pub max_embedding_inputs: usize,
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Proxied to an HTTP pool (index into [`Config::pools`]).
    Pool(usize),
    /// The OpenAI-compatible API over these inference pools (indexes into
    /// [`Config::inference_pools`]); no model is served by two of them.
    Inference(Vec<usize>),
    /// Answered by the gateway.
    Builtin(Builtin),
}

/// A route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// Where requests go.
    pub target: Target,
    /// Lower-cased host patterns; empty matches any host.
    pub hosts: Vec<String>,
    /// Path prefix, starting with `/`, without trailing `/` unless it is `/`.
    pub path_prefix: String,
    /// Upper-case methods; empty matches any.
    pub methods: Vec<String>,
    /// Strip the prefix before forwarding.
    pub strip_prefix: bool,
    /// Body limit in bytes.
    pub max_body_bytes: u64,
    /// Wasm plugins, in order.
    pub plugins: Vec<PluginRef>,
    /// Request header rewrite.
    pub request_headers: HeaderRewrite,
    /// Response header rewrite.
    pub response_headers: HeaderRewrite,
    /// Who may use it.
    pub auth: RouteAuth,
}

/// A plugin on a route, validated (the file exists and is not empty).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginRef {
    /// Name, unique on the route.
    pub name: String,
    /// The `.wasm` file.
    pub file: PathBuf,
    /// Bytes for `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// Failure policy.
    pub failure: FailureMode,
    /// CPU per hook call.
    pub cpu_per_call: Duration,
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Bytes copied per host call.
    pub bytes_per_host_call: usize,
    /// Headers added per request or response.
    pub max_headers_added: usize,
    /// Module size limit, bytes.
    pub max_module_bytes: usize,
    /// Pools the plugin may call with `proxy_http_call`, by name.
    pub upstreams: Vec<String>,
    /// `proxy_http_call`s per request.
    pub max_http_calls: usize,
    /// Longest compilation accepted.
    pub max_compile: Duration,
    /// Instances in use at once.
    pub max_instances: usize,
    /// Idle instances kept for reuse.
    pub max_idle_instances: usize,
    /// Shared data bytes (keys, values, 64 per key).
    pub shared_data_bytes: usize,
    /// Shared queue bytes (names, items, 64 per queue and per item).
    pub shared_queue_bytes: usize,
    /// It sees the API's answer, event by event (inference routes).
    pub stream_events: bool,
    /// Metrics the plugin may define.
    pub max_metrics: usize,
    /// Log lines per second.
    pub log_lines_per_second: u32,
    /// Longest `proxy_http_call` timeout.
    pub max_http_call_timeout: Duration,
    /// The route's `max_body_bytes`: the largest request body the plugin may
    /// make with `proxy_set_buffer_bytes`.
    pub max_request_body_bytes: u64,
}

/// A validated header rewrite: names lower-cased, values checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderRewrite {
    /// Names to remove.
    pub remove: Vec<String>,
    /// Name/value pairs to set.
    pub set: Vec<(String, String)>,
    /// Name/value pairs to append.
    pub add: Vec<(String, String)>,
}

impl HeaderRewrite {
    /// Whether the rewrite does nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}
