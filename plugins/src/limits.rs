//! A plugin's limits ([`PluginLimits`], every one with a default from the
//! config crate) and the closed set of limits a plugin can break ([`Limit`],
//! the `limit` label of `gantry_plugin_limit_hits_total`).

use gantry_config::file::{
    DEFAULT_PLUGIN_BYTES_PER_HOST_CALL as DEFAULT_BYTES_PER_HOST_CALL,
    DEFAULT_PLUGIN_CPU_PER_CALL_MS, DEFAULT_PLUGIN_LOG_LINES_PER_SECOND,
    DEFAULT_PLUGIN_MAX_COMPILE_MS, DEFAULT_PLUGIN_MAX_HEADERS_ADDED as DEFAULT_MAX_HEADERS_ADDED,
    DEFAULT_PLUGIN_MAX_HTTP_CALLS as DEFAULT_MAX_HTTP_CALLS,
    DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS,
    DEFAULT_PLUGIN_MAX_IDLE_INSTANCES as DEFAULT_MAX_IDLE_INSTANCES,
    DEFAULT_PLUGIN_MAX_INSTANCES as DEFAULT_MAX_INSTANCES, DEFAULT_PLUGIN_MAX_METRICS,
    DEFAULT_PLUGIN_MAX_MODULE_BYTES as DEFAULT_MAX_MODULE_BYTES,
    DEFAULT_PLUGIN_MEMORY_BYTES as DEFAULT_MEMORY_BYTES, DEFAULT_PLUGIN_SHARED_DATA_BYTES,
    DEFAULT_PLUGIN_SHARED_QUEUE_BYTES,
};
use std::time::Duration;

/// CPU one hook call may use before it is interrupted.
pub const DEFAULT_CPU_PER_CALL: Duration = Duration::from_millis(DEFAULT_PLUGIN_CPU_PER_CALL_MS);

/// A limit a plugin can break (a trap, a refused host call, a refused load)
/// or a request can meet: the `limit` label of `gantry_plugin_limit_hits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `cpu_per_call_ms`: interrupted.
    Cpu,
    /// `memory_bytes`: `memory.grow` refused, then a trap.
    Memory,
    /// `bytes_per_host_call`.
    BytesPerHostCall,
    /// `max_headers_added`.
    HeadersAdded,
    /// `max_http_calls` (HTTP and gRPC calls and streams together).
    HttpCalls,
    /// [`GRPC_SEND_QUEUE_MESSAGES`](crate::GRPC_SEND_QUEUE_MESSAGES) waiting
    /// on one gRPC stream: a `proxy_grpc_send` past it traps.
    GrpcMessages,
    /// `max_instances`: all in use.
    Instances,
    /// `max_module_bytes`, on (re)load.
    ModuleBytes,
    /// `max_compile_ms`, on (re)load.
    CompileTime,
    /// `shared_data_bytes`: a `proxy_set_shared_data` refused.
    SharedDataBytes,
    /// `shared_queue_bytes`: a queue registration or enqueue refused.
    SharedQueueBytes,
    /// [`MAX_SET_PROPERTIES`](crate::MAX_SET_PROPERTIES) per request, or a
    /// path over [`MAX_SET_PROPERTY_PATH_BYTES`](crate::MAX_SET_PROPERTY_PATH_BYTES):
    /// a `proxy_set_property` refused.
    Properties,
    /// `max_metrics`: a `proxy_define_metric` refused.
    Metrics,
    /// `log_lines_per_second`: log lines dropped.
    LogLines,
    /// The route's `max_body_bytes`: a `proxy_set_buffer_bytes` refused.
    BodyBytes,
}

impl Limit {
    /// Every limit, in declaration order.
    pub const ALL: [Limit; 15] = [
        Limit::Cpu,
        Limit::Memory,
        Limit::BytesPerHostCall,
        Limit::HeadersAdded,
        Limit::HttpCalls,
        Limit::GrpcMessages,
        Limit::Instances,
        Limit::ModuleBytes,
        Limit::CompileTime,
        Limit::SharedDataBytes,
        Limit::SharedQueueBytes,
        Limit::Properties,
        Limit::Metrics,
        Limit::LogLines,
        Limit::BodyBytes,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu",
            Limit::Memory => "memory",
            Limit::BytesPerHostCall => "bytes_per_host_call",
            Limit::HeadersAdded => "headers_added",
            Limit::HttpCalls => "http_calls",
            Limit::GrpcMessages => "grpc_messages",
            Limit::Instances => "instances",
            Limit::ModuleBytes => "module_bytes",
            Limit::CompileTime => "compile_time",
            Limit::SharedDataBytes => "shared_data_bytes",
            Limit::SharedQueueBytes => "shared_queue_bytes",
            Limit::Properties => "properties",
            Limit::Metrics => "metrics",
            Limit::LogLines => "log_lines",
            Limit::BodyBytes => "body_bytes",
        }
    }
}

/// A plugin's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// CPU per hook call.
    pub cpu_per_call: Duration,
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Bytes copied per host call.
    pub bytes_per_host_call: usize,
    /// Headers added per request (and per response).
    pub max_headers_added: usize,
    /// Module size, bytes.
    pub max_module_bytes: usize,
    /// `proxy_http_call`s per request.
    pub max_http_calls: usize,
    /// Longest compilation accepted.
    pub max_compile: Duration,
    /// Instances in use at once (one per request in its plugin phase); more
    /// requests get [`PluginError::Busy`](crate::PluginError::Busy).
    pub max_instances: usize,
    /// Idle instances kept for reuse; more are dropped.
    pub max_idle_instances: usize,
    /// Shared data bytes: keys, values and [`SHARED_DATA_ENTRY_BYTES`](crate::SHARED_DATA_ENTRY_BYTES) per key.
    pub shared_data_bytes: usize,
    /// Shared queue bytes: names, items and [`SHARED_QUEUE_ENTRY_BYTES`](crate::SHARED_QUEUE_ENTRY_BYTES) per queue and item.
    pub shared_queue_bytes: usize,
    /// Metrics the plugin may define.
    pub max_metrics: usize,
    /// Log lines per second; more are dropped.
    pub log_lines_per_second: u32,
    /// Longest `proxy_http_call` timeout; longer ones (and 0) get this.
    pub max_http_call_timeout: Duration,
    /// Largest request body a plugin may make with `proxy_set_buffer_bytes`
    /// (the route's `max_body_bytes`).
    pub max_request_body_bytes: usize,
}

impl PluginLimits {
    /// The limits a route's plugin entry sets.
    pub fn from_config(p: &gantry_config::PluginRef) -> Self {
        PluginLimits {
            cpu_per_call: p.cpu_per_call,
            memory_bytes: p.memory_bytes,
            bytes_per_host_call: p.bytes_per_host_call,
            max_headers_added: p.max_headers_added,
            max_module_bytes: p.max_module_bytes,
            max_http_calls: p.max_http_calls,
            max_compile: p.max_compile,
            max_instances: p.max_instances,
            max_idle_instances: p.max_idle_instances,
            shared_data_bytes: p.shared_data_bytes,
            shared_queue_bytes: p.shared_queue_bytes,
            max_metrics: p.max_metrics,
            log_lines_per_second: p.log_lines_per_second,
            max_http_call_timeout: p.max_http_call_timeout,
            max_request_body_bytes: usize::try_from(p.max_request_body_bytes).unwrap_or(usize::MAX),
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            cpu_per_call: DEFAULT_CPU_PER_CALL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            bytes_per_host_call: DEFAULT_BYTES_PER_HOST_CALL,
            max_headers_added: DEFAULT_MAX_HEADERS_ADDED,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_http_calls: DEFAULT_MAX_HTTP_CALLS,
            max_compile: Duration::from_millis(DEFAULT_PLUGIN_MAX_COMPILE_MS),
            max_instances: DEFAULT_MAX_INSTANCES,
            max_idle_instances: DEFAULT_MAX_IDLE_INSTANCES,
            shared_data_bytes: DEFAULT_PLUGIN_SHARED_DATA_BYTES,
            shared_queue_bytes: DEFAULT_PLUGIN_SHARED_QUEUE_BYTES,
            max_metrics: DEFAULT_PLUGIN_MAX_METRICS,
            log_lines_per_second: DEFAULT_PLUGIN_LOG_LINES_PER_SECOND,
            max_http_call_timeout: Duration::from_millis(DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS),
            max_request_body_bytes: usize::MAX,
        }
    }
}
