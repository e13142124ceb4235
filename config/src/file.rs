//! The configuration file format: what operators write.
//!
//! This is Gantry's stable user interface. Every struct rejects unknown fields,
//! every optional field documents its default and unit, and every default is a
//! named `DEFAULT_*` constant. The gateway never reads these types directly: they are
//! validated and converted into [`crate::Config`] first.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Largest request header block accepted from a client, in bytes (64 KiB). Larger: 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest request body accepted from a client, in bytes (10 MiB). Larger: 413.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Most client connections open at once across all listeners.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Most client connections open at once from one client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Longest a new connection may take, from accept, to send its first request's
/// whole head (or the HTTP/2 preface), in milliseconds; slower ones get 408 and
/// are closed.
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;
/// How long a client may take to send the next piece of its request, in milliseconds.
pub const DEFAULT_CLIENT_READ_TIMEOUT_MS: u64 = 60_000;
/// How long a client may take to accept the next piece of the response, in milliseconds.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT_MS: u64 = 60_000;
/// How long an idle keep-alive client connection is kept open, in milliseconds.
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 60_000;
/// Concurrent HTTP/2 streams (requests) one client connection may have open.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// How long in-flight requests get to finish after SIGTERM, in milliseconds.
pub const DEFAULT_SHUTDOWN_GRACE_PERIOD_MS: u64 = 30_000;
/// The Unix socket a binary upgrade hands the listening sockets over on.
pub const DEFAULT_UPGRADE_SOCKET: &str = "/tmp/gantry-upgrade.sock";
/// Time to establish a TCP (and TLS) connection to an upstream endpoint, in milliseconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest wait for the next bytes from an upstream endpoint, in milliseconds.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for an upstream endpoint to accept the next bytes, in milliseconds.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Extra attempts, on another endpoint, for an idempotent request whose connect failed.
pub const DEFAULT_RETRIES: u32 = 1;
/// Time between two active health checks of one endpoint, in milliseconds.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
/// Time one active health check may take, in milliseconds.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
/// Consecutive passed checks that bring an ejected endpoint back.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Consecutive failed checks that eject an endpoint.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Path requested by `kind = "http"` health checks.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Time to open the gRPC (HTTP/2) connection to an inference backend, in milliseconds.
pub const DEFAULT_INFERENCE_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest an inference request may take from arrival to its last token, in
/// milliseconds (5 minutes). Over: 504 (or an error event once streaming).
pub const DEFAULT_INFERENCE_REQUEST_TIMEOUT_MS: u64 = 300_000;
/// Extra attempts, on another backend, for an inference request that failed before
/// its first token (connection refused, backend draining or saturated).
pub const DEFAULT_INFERENCE_RETRIES: u32 = 1;
/// Requests one gateway process may have in flight to one inference pool; more
/// get 429 at once (bounds the gateway's memory and the backends' queues).
pub const DEFAULT_INFERENCE_MAX_INFLIGHT: usize = 4096;
/// Shortest `admin.token` accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// Messages one chat request to an inference pool may hold; more get a 400
/// naming `messages`.
pub const DEFAULT_INFERENCE_MAX_MESSAGES: usize = 1024;
/// Text bytes one inference request may carry in its messages, prompt or
/// embedding inputs, summed (a token id counts 4 bytes); more get a 400 naming
/// the parameter (1 MiB).
pub const DEFAULT_INFERENCE_MAX_INPUT_BYTES: usize = 1 << 20;
/// Texts one embeddings request may hold (OpenAI's limit); more get a 400
/// naming `input`.
pub const DEFAULT_INFERENCE_MAX_EMBEDDING_INPUTS: usize = 2048;
/// Default `prefix_max_extra_load`: the backend holding a prompt's prefix is
/// picked while it runs at most half its `max_running` more than the least
/// loaded backend; beyond that, load wins (a popular prefix must not pile all
/// its traffic on one backend).
pub const DEFAULT_PREFIX_MAX_EXTRA_LOAD: f64 = 0.5;
/// KV block names the gateway indexes per backend and model (from the
/// backend's `WatchKvBlocks` stream); names past it are dropped. 65,536 names
/// cover a million tokens of cached prefixes in about 1 MiB.
pub const DEFAULT_PREFIX_INDEX_MAX_BLOCKS: usize = 1 << 16;
/// CPU one plugin hook call may use before it is interrupted, in milliseconds.
pub const DEFAULT_PLUGIN_CPU_PER_CALL_MS: u64 = 5;
/// Linear memory one plugin instance may grow to, in bytes (32 MiB).
pub const DEFAULT_PLUGIN_MEMORY_BYTES: usize = 32 << 20;
/// Most linear memory one plugin instance may be allowed (`memory_bytes`, 1 GiB):
/// the plugin engine reserves address space for the largest in each instance slot.
pub const MAX_PLUGIN_MEMORY_BYTES: usize = 1 << 30;
/// Bytes one plugin host call may copy into or out of the guest (1 MiB).
pub const DEFAULT_PLUGIN_BYTES_PER_HOST_CALL: usize = 1 << 20;
/// Headers one plugin may add to one request (and to one response).
pub const DEFAULT_PLUGIN_MAX_HEADERS_ADDED: usize = 64;
/// `proxy_http_call`s one plugin may make for one request.
pub const DEFAULT_PLUGIN_MAX_HTTP_CALLS: usize = 8;
/// Most request body bytes a route with plugins reads for their body hooks (and
/// its `max_body_bytes` when the route sets none): the body is read whole before
/// the upstream is contacted, and replayed from a buffer of this size (64 KiB).
pub const MAX_PLUGIN_ROUTE_BODY_BYTES: u64 = 64 * 1024;
/// Longest a plugin module may take to compile, in milliseconds; a slower one is
/// refused (compilation runs at load and reload, never on the request path).
pub const DEFAULT_PLUGIN_MAX_COMPILE_MS: u64 = 10_000;
/// Instances of one plugin (on one route) in use at once: one per request in
/// its plugin phase. A request finding all busy gets 503 `plugin_busy` (never a
/// plugin failure, never skipped by `failure = "open"`).
pub const DEFAULT_PLUGIN_MAX_INSTANCES: usize = 64;
/// Idle instances of one plugin kept for reuse when neither `max_instances`
/// nor `max_idle_instances` is set (with `max_instances` set, that many):
/// every instance that may run at once stays warm, because building one per
/// request cost a plugin route 60 % of its throughput at 50 connections
/// (docs/BENCHMARKS.md), and under that load a warm pool held less memory
/// than the churn did. Set lower to return memory after a burst.
pub const DEFAULT_PLUGIN_MAX_IDLE_INSTANCES: usize = DEFAULT_PLUGIN_MAX_INSTANCES;
/// Most instances the plugin engine holds at once, across every plugin (the
/// pooling allocator's slots); the sum of `max_instances` must fit.
pub const MAX_PLUGIN_ENGINE_INSTANCES: usize = 1000;
/// Bytes of shared data one plugin may hold (keys and values, plus 64 bytes of
/// bookkeeping per key; 1 MiB). A write past it is refused (`BadArgument`).
pub const DEFAULT_PLUGIN_SHARED_DATA_BYTES: usize = 1 << 20;
/// Bytes one plugin's shared queues may hold (names and items, plus 64 bytes
/// of bookkeeping per queue and per item; 1 MiB). An enqueue past it is
/// refused (`BadArgument`), never waited for.
pub const DEFAULT_PLUGIN_SHARED_QUEUE_BYTES: usize = 1 << 20;
/// Metrics one plugin may define; more are refused (`BadArgument`).
pub const DEFAULT_PLUGIN_MAX_METRICS: usize = 64;
/// Log lines one plugin may write per second; more are dropped and counted.
pub const DEFAULT_PLUGIN_LOG_LINES_PER_SECOND: u32 = 100;
/// Longest wait a plugin's `proxy_http_call` may ask for, in milliseconds; a
/// longer one (or 0) gets this.
pub const DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS: u64 = 30_000;
/// Largest plugin module accepted, in bytes (16 MiB).
pub const DEFAULT_PLUGIN_MAX_MODULE_BYTES: usize = 16 << 20;
/// How often endpoint host names are resolved again, in milliseconds: a name that
/// resolves to several addresses (a Kubernetes headless Service) gives one backend
/// per address, and backends come and go with the answer.
pub const DEFAULT_RESOLVE_INTERVAL_MS: u64 = 5_000;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Process-wide settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Client-facing limits that apply to every listener.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`). Absent: no admin listener.
    pub admin: Option<AdminSection>,
    /// Where clients connect. At least one.
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    /// Groups of upstream endpoints that routes send traffic to.
    #[serde(default)]
    pub pools: Vec<PoolSection>,
    /// Groups of inference backends (`gantry backend`, gRPC `gantry.inference.v1`)
    /// that routes with `inference_pools` send OpenAI-style traffic to.
    #[serde(default)]
    pub inference_pools: Vec<InferencePoolSection>,
    /// Which requests go to which pool, tried host first, then longest path prefix.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// API keys that identify tenants on routes with `auth = "keys"`, stored as
    /// SHA-256 digests (`gantry keys create` makes a key and prints its digest).
    #[serde(default)]
    pub keys: Vec<KeySection>,
    /// Where keys' budgets (`tokens_per_day`, `tokens_per_month`) are kept.
    pub key_store: Option<KeyStoreSection>,
    /// OpenTelemetry traces (OTLP). Absent: none.
    pub traces: Option<crate::traces::TracesSection>,
}

/// `[key_store]`: where what a key has spent is kept. One of `path` (this
/// process only) and `redis` (shared by every replica). Required when a key
/// has a budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreSection {
    /// File of the embedded store (a redb database, made if absent; relative
    /// to the configuration file). Limits are this process's; budgets are
    /// written to the file every [`BUDGET_FLUSH_INTERVAL_MS`] and when the
    /// gateway stops, so a restart does not reset a day's or a month's
    /// spending.
    pub path: Option<PathBuf>,
    /// A Redis server (`redis://host:port/db`, `rediss://` for TLS) that
    /// every replica shares: each key's limits, budgets and requests in
    /// flight are counted there, atomically, once for the whole fleet.
    pub redis: Option<String>,
    /// With `redis`: what a request gets while Redis cannot be reached (a
    /// command unanswered within [`REDIS_TIMEOUT_MS`]): `closed` (default),
    /// 503; `local`, this replica's own limits, each key's divided by
    /// `replicas`.
    pub on_unreachable: Option<OnUnreachable>,
    /// With `on_unreachable = "local"`: how many replicas share the limits.
    pub replicas: Option<u32>,
}

/// What a keyed request gets while the shared key store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnreachable {
    /// 503: no request is let in uncounted.
    #[default]
    Closed,
    /// Counted by this replica alone, against each limit divided by the
    /// number of replicas.
    Local,
}

/// Longest a request waits on the shared key store (connect or answer),
/// milliseconds, before it is treated as unreachable.
pub const REDIS_TIMEOUT_MS: u64 = 250;

/// How often budgets are written to `[key_store].path`, milliseconds: what a
/// crash (not a restart) can forget.
pub const BUDGET_FLUSH_INTERVAL_MS: u64 = 1_000;

/// `[[keys]]`: one tenant's API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// The tenant's name in metrics and access logs (never the key itself):
    /// letters, digits, `-` and `_`, at most [`MAX_KEY_NAME_BYTES`] bytes.
    pub name: String,
    /// SHA-256 of the key, 64 hex digits. The key itself is never configured.
    /// Absent: the tenant's keys are all in `[key_store]` (made with `POST
    /// /admin/keys/<name>` on the admin listener).
    pub sha256: Option<String>,
    /// Models the key may use on the OpenAI-compatible API. Empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Routes (with `auth = "keys"`) the key may use. Empty: all of them.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Requests let in per minute. Absent: no limit.
    pub requests_per_minute: Option<u64>,
    /// Prompt tokens per minute on the OpenAI-compatible API, counted when a
    /// request is let in (with the model's own tokenizer, fetched from a
    /// backend; for embeddings, a bound of one token per byte plus two per
    /// input) and settled to the backend's count. Absent: no limit.
    pub input_tokens_per_minute: Option<u64>,
    /// Tokens generated per minute on the OpenAI-compatible API. A request
    /// reserves its `max_tokens` when it is let in (the gateway sets
    /// `max_tokens` when the client does not) and gives back what it did not
    /// generate when it ends, so a minute's tokens never exceed the limit.
    /// Absent: no limit.
    pub output_tokens_per_minute: Option<u64>,
    /// Requests in flight at once. Absent: no limit.
    pub max_concurrent: Option<u64>,
    /// Tokens (prompt and generated) per UTC calendar day on the
    /// OpenAI-compatible API, reserved and settled as the per-minute limits
    /// are and kept in `[key_store]`. Absent: no budget.
    pub tokens_per_day: Option<u64>,
    /// Tokens (prompt and generated) per UTC calendar month, as
    /// `tokens_per_day`. Absent: no budget.
    pub tokens_per_month: Option<u64>,
}

/// The digest a `[[keys]].sha256` spells: 64 hex digits.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |d: u8| (d as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Longest `[[keys]].name`: it is a metric label.
pub const MAX_KEY_NAME_BYTES: usize = 64;

/// Whether `name` may name a key: 1 to [`MAX_KEY_NAME_BYTES`] letters, digits,
/// `-` or `_`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEY_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    /// Anyone.
    #[default]
    None,
    /// Requests carrying one of the `[[keys]]` (`Authorization: Bearer …` or
    /// `x-api-key: …`); others get 401, a key not allowed here 403.
    Keys,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads serving traffic. Default: the number of CPUs.
    pub threads: Option<usize>,
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`, or single addresses) of proxies
    /// in front of Gantry whose forwarding headers are believed. From any other
    /// peer, `X-Forwarded-For` is replaced by the peer's address and `Forwarded`,
    /// `X-Real-IP`, `X-Forwarded-Host`, `X-Forwarded-Port`, `True-Client-IP` and
    /// `X-Client-IP` are removed. Default: none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The Unix socket on which a binary upgrade hands the listening sockets
    /// from the running gateway to the one started with `--upgrade` (both
    /// read it from the same file). Default [`DEFAULT_UPGRADE_SOCKET`]; give
    /// each gateway on one machine its own.
    pub upgrade_socket: Option<String>,
    /// A file in the `/etc/hosts` format (`ADDRESS NAME...` per line, `#`
    /// comments) whose names answer pools' endpoint names before DNS, read again
    /// at each resolution: names pinned at the edge without touching the
    /// machine's resolver. Default: none.
    pub hosts_file: Option<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Bytes of request line and headers, summed. Default [`DEFAULT_MAX_HEADER_BYTES`].
    pub max_header_bytes: Option<usize>,
    /// Bytes of request body, unless a route sets its own. Default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: Option<u64>,
    /// Client connections open at once. Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: Option<usize>,
    /// Client connections open at once from one address. Default
    /// [`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`].
    pub max_connections_per_client: Option<usize>,
    /// Milliseconds. Default [`DEFAULT_HEAD_TIMEOUT_MS`].
    pub head_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_CLIENT_READ_TIMEOUT_MS`].
    pub client_read_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_CLIENT_WRITE_TIMEOUT_MS`].
    pub client_write_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_KEEPALIVE_TIMEOUT_MS`].
    pub keepalive_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_SHUTDOWN_GRACE_PERIOD_MS`].
    pub shutdown_grace_period_ms: Option<u64>,
    /// Streams per HTTP/2 connection, advertised in SETTINGS; more are refused
    /// with `REFUSED_STREAM`. Default [`DEFAULT_H2_MAX_CONCURRENT_STREAMS`].
    pub h2_max_concurrent_streams: Option<u32>,
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// `ip:port` of the admin listener, e.g. `127.0.0.1:9090`. Keep it off public interfaces.
    pub address: String,
    /// Bearer token that state-changing admin endpoints (`POST /admin/reload`)
    /// require. Absent: those endpoints answer 403 (reload by SIGHUP or file
    /// change still works). At least 16 characters.
    pub token: Option<String>,
    /// Host names (besides IP literals and `localhost`) the admin listener
    /// answers to; any other `Host` gets 403, so a DNS-rebinding page cannot
    /// reach it. Default: none.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// `[[listeners]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to listen on, e.g. `0.0.0.0:443`.
    pub address: String,
    /// Accept HTTP/2 over cleartext (prior knowledge) as well as HTTP/1.1. Default: false.
    #[serde(default)]
    pub h2c: bool,
    /// Terminate TLS on this listener. Absent: plain TCP.
    pub tls: Option<TlsSection>,
}

/// `[listeners.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Offer HTTP/2 through ALPN (preferred over HTTP/1.1). Default: true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Certificates, chosen by SNI. The first one without `server_names` is the default
    /// for clients that send no (or an unknown) server name.
    pub certificates: Vec<CertificateSection>,
}

fn default_true() -> bool {
    true
}

/// `[[listeners.tls.certificates]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    /// PEM file with the certificate chain, leaf first.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Server names this certificate answers for: exact (`api.example.com`) or one
    /// leading wildcard label (`*.example.com`). Empty: the default certificate.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `[[pools]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Unique name that routes refer to.
    pub name: String,
    /// `host:port` of each endpoint. A host name that resolves to several
    /// addresses gives one endpoint per address; names are resolved at start-up
    /// and again every `resolve_interval_ms` (a name that fails to resolve keeps
    /// its last addresses).
    pub endpoints: Vec<String>,
    /// How an endpoint is picked. Default: `round_robin`.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// What `consistent_hash` hashes. Default: `client_address`.
    #[serde(default)]
    pub hash_on: HashOn,
    /// The header hashed when `hash_on = "header"`.
    pub hash_header: Option<String>,
    /// Milliseconds. Default [`DEFAULT_CONNECT_TIMEOUT_MS`].
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_READ_TIMEOUT_MS`].
    pub read_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_WRITE_TIMEOUT_MS`].
    pub write_timeout_ms: Option<u64>,
    /// Retries on another endpoint when connecting fails, for idempotent methods
    /// (GET, HEAD, OPTIONS, PUT, DELETE, TRACE). Default [`DEFAULT_RETRIES`].
    pub retries: Option<u32>,
    /// Connect to endpoints over TLS. Default: false.
    #[serde(default)]
    pub tls: bool,
    /// SNI (and certificate name) for upstream TLS. Default: the endpoint's host.
    pub sni: Option<String>,
    /// Active health checking. Absent: every endpoint is always considered healthy.
    pub health_check: Option<HealthCheckSection>,
    /// Milliseconds. Default [`DEFAULT_RESOLVE_INTERVAL_MS`].
    pub resolve_interval_ms: Option<u64>,
}

/// Endpoint selection policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Ketama consistent hashing of the `hash_on` key: the same key sticks to the same
    /// endpoint, and only ~1/N of keys move when an endpoint comes or goes.
    ConsistentHash,
}

/// How an inference pool picks a backend for a generation request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceRouting {
    /// The less loaded of two random backends (power of two choices).
    #[default]
    Load,
    /// The backend holding the longest prefix of the prompt's KV blocks, unless
    /// it is busier than the least loaded by more than `prefix_max_extra_load`;
    /// by load when none holds any.
    Prefix,
}

/// The key hashed by `consistent_hash`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// The client's IP address.
    #[default]
    ClientAddress,
    /// The value of `hash_header` (requests without it fall back to the client address).
    Header,
}

/// `[pools.health_check]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `tcp`: the endpoint accepts a connection. `http`: `GET path` answers 200.
    /// `grpc`: `grpc.health.v1.Health/Check` answers SERVING (cleartext HTTP/2).
    pub kind: HealthCheckKind,
    /// The service asked about for `kind = "grpc"`. Default: `""` (the server
    /// as a whole).
    pub service: Option<String>,
    /// Path for `kind = "http"`. Default [`DEFAULT_HEALTH_PATH`].
    pub path: Option<String>,
    /// Host header for `kind = "http"`. Default: `localhost`.
    pub host: Option<String>,
    /// Milliseconds. Default [`DEFAULT_HEALTH_INTERVAL_MS`].
    pub interval_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_HEALTH_TIMEOUT_MS`].
    pub timeout_ms: Option<u64>,
    /// Default [`DEFAULT_HEALTHY_THRESHOLD`].
    pub healthy_threshold: Option<u32>,
    /// Default [`DEFAULT_UNHEALTHY_THRESHOLD`].
    pub unhealthy_threshold: Option<u32>,
}

/// Health check probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connection can be established.
    Tcp,
    /// An HTTP GET answers 200.
    Http,
    /// gRPC's health service answers SERVING (`grpc.health.v1.Health/Check`).
    Grpc,
}

/// `[[inference_pools]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferencePoolSection {
    /// Unique name that routes refer to.
    pub name: String,
    /// `host:port` of each backend's gRPC listener. A host name that resolves to
    /// several addresses gives one backend per address (re-resolved every
    /// `resolve_interval_ms`).
    pub endpoints: Vec<String>,
    /// Model names this pool serves; a request's `model` picks the pool.
    pub models: Vec<String>,
    /// Milliseconds. Default [`DEFAULT_INFERENCE_CONNECT_TIMEOUT_MS`].
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds. Default [`DEFAULT_INFERENCE_REQUEST_TIMEOUT_MS`].
    pub request_timeout_ms: Option<u64>,
    /// Default [`DEFAULT_INFERENCE_RETRIES`].
    pub retries: Option<u32>,
    /// Requests in flight to this pool at once. Default [`DEFAULT_INFERENCE_MAX_INFLIGHT`].
    pub max_inflight: Option<usize>,
    /// Milliseconds. Default [`DEFAULT_RESOLVE_INTERVAL_MS`].
    pub resolve_interval_ms: Option<u64>,
    /// Messages per chat request. Default [`DEFAULT_INFERENCE_MAX_MESSAGES`].
    pub max_messages: Option<usize>,
    /// Text bytes per request (messages, prompt or embedding inputs, summed).
    /// Default [`DEFAULT_INFERENCE_MAX_INPUT_BYTES`].
    pub max_input_bytes: Option<usize>,
    /// Texts per embeddings request. Default [`DEFAULT_INFERENCE_MAX_EMBEDDING_INPUTS`].
    pub max_embedding_inputs: Option<usize>,
    /// KV block names indexed per backend and model, for prefix-aware picks.
    /// Default [`DEFAULT_PREFIX_INDEX_MAX_BLOCKS`].
    pub prefix_index_max_blocks: Option<usize>,
    /// `load` (default) or `prefix`.
    #[serde(default)]
    pub routing: InferenceRouting,
    /// With `routing = "prefix"`: how much busier (in requests per `max_running`
    /// slot) the backend holding the prompt's prefix may be than the least
    /// loaded one and still be picked. Default [`DEFAULT_PREFIX_MAX_EXTRA_LOAD`].
    pub prefix_max_extra_load: Option<f64>,
}

/// What a route serves besides proxying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// The OpenAPI 3.1 document of the OpenAI-compatible API, as JSON.
    Openapi,
    /// An HTML page rendering that document (it loads `/openapi.json`).
    Docs,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// The HTTP pool requests are proxied to. Exactly one of `pool`,
    /// `inference_pools` and `serve` is set.
    pub pool: Option<String>,
    /// Serve the OpenAI-compatible API under `path_prefix` (e.g. `/v1`), sending
    /// each request to the listed inference pool that serves its `model`.
    #[serde(default)]
    pub inference_pools: Vec<String>,
    /// Answer from the gateway itself: `openapi` or `docs`.
    pub serve: Option<Builtin>,
    /// Host names matched (exact or `*.example.com`, port ignored). Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix matched on segment boundaries (`/api` matches `/api` and `/api/x`,
    /// not `/apix`). Default: `/`.
    pub path_prefix: Option<String>,
    /// Methods matched. Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Remove `path_prefix` from the path before forwarding. Default: false.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Body limit for this route in bytes. Default: `limits.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Wasm plugins (proxy-wasm ABI), run in order on this route's requests and
    /// responses. A local response from one stops the chain.
    #[serde(default)]
    pub plugins: Vec<PluginSection>,
    /// Changes to the request before it goes upstream.
    #[serde(default)]
    pub request_headers: HeaderRewriteSection,
    /// Changes to the response before it goes to the client.
    #[serde(default)]
    pub response_headers: HeaderRewriteSection,
    /// `none` (default) or `keys`: requests need an API key from `[[keys]]`,
    /// which is removed before the request goes upstream.
    #[serde(default)]
    pub auth: RouteAuth,
}

/// `[[routes.plugins]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// Name in logs, metrics and error messages; unique on the route.
    pub name: String,
    /// The `.wasm` file (relative to the configuration file's directory).
    pub file: String,
    /// Handed to the plugin's `proxy_on_configure`: a string as its raw bytes, a
    /// table as JSON. Absent: empty.
    pub configuration: Option<toml::Value>,
    /// What a trap or a reached limit does. Default: `closed`.
    #[serde(default)]
    pub failure: FailureMode,
    /// Milliseconds. Default [`DEFAULT_PLUGIN_CPU_PER_CALL_MS`].
    pub cpu_per_call_ms: Option<u64>,
    /// Bytes. Default [`DEFAULT_PLUGIN_MEMORY_BYTES`].
    pub memory_bytes: Option<usize>,
    /// Bytes. Default [`DEFAULT_PLUGIN_BYTES_PER_HOST_CALL`].
    pub bytes_per_host_call: Option<usize>,
    /// Default [`DEFAULT_PLUGIN_MAX_HEADERS_ADDED`].
    pub max_headers_added: Option<usize>,
    /// Bytes. Default [`DEFAULT_PLUGIN_MAX_MODULE_BYTES`].
    pub max_module_bytes: Option<usize>,
    /// Pools (`[[pools]]` or `[[inference_pools]]`, by name) the plugin may
    /// `proxy_http_call` (and, `[[pools]]` only, `proxy_grpc_call` /
    /// `proxy_grpc_stream`). Default: none.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Calls per request: HTTP calls, gRPC calls and gRPC streams together.
    /// Default [`DEFAULT_PLUGIN_MAX_HTTP_CALLS`].
    pub max_http_calls: Option<usize>,
    /// Milliseconds. Default [`DEFAULT_PLUGIN_MAX_COMPILE_MS`].
    pub max_compile_ms: Option<u64>,
    /// Instances in use at once. Default [`DEFAULT_PLUGIN_MAX_INSTANCES`].
    pub max_instances: Option<usize>,
    /// Idle instances kept. Default: `max_instances` (see
    /// [`DEFAULT_PLUGIN_MAX_IDLE_INSTANCES`]); at most `max_instances`.
    pub max_idle_instances: Option<usize>,
    /// Bytes. Default [`DEFAULT_PLUGIN_SHARED_DATA_BYTES`].
    pub shared_data_bytes: Option<usize>,
    /// Bytes. Default [`DEFAULT_PLUGIN_SHARED_QUEUE_BYTES`].
    pub shared_queue_bytes: Option<usize>,
    /// On a route with `inference_pools`: the plugin also sees the answer,
    /// its response headers and body hooks called with the whole answer, or
    /// with each server-sent event of a stream (its instance is held for the
    /// stream). Default false: only the request.
    #[serde(default)]
    pub stream_events: bool,
    /// Default [`DEFAULT_PLUGIN_MAX_METRICS`].
    pub max_metrics: Option<usize>,
    /// Default [`DEFAULT_PLUGIN_LOG_LINES_PER_SECOND`].
    pub log_lines_per_second: Option<u32>,
    /// Longest HTTP or gRPC call, and a gRPC stream's whole life; milliseconds.
    /// Default [`DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS`].
    pub max_http_call_timeout_ms: Option<u64>,
}

/// A plugin's failure policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Answer 500 with a JSON error naming the plugin.
    #[default]
    Closed,
    /// Skip the plugin and go on.
    Open,
}

/// `[routes.request_headers]` / `[routes.response_headers]`: applied remove, then set, then add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRewriteSection {
    /// Header names to delete.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Headers to set, replacing any existing value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}
