//! Gantry's Wasm plugin host: unmodified proxy-wasm plugins (ABI 0.2.1, and 0.2.0
//! modules) on wasmtime, treated as untrusted code.
//!
//! Owns: the engine, each plugin's instances and health, the host side of the
//! ABI (`host/`, one file per ABI area), limits and their traps. Must never
//! import: Pingora, the gateway (`gantry`), the backend; the gateway drives it
//! through the contract below and performs its HTTP and gRPC calls
//! ([`Callouts`]).
//!
//! The gateway drives plugins through a small per-phase contract that knows
//! nothing of Pingora: [`Plugin::start_request`] gives an [`HttpContext`], whose
//! `on_request_headers`, `on_request_body`, `on_response_headers` and
//! `on_response_body` take the request's parts, let the plugin read and change
//! them, and return a [`Decision`]: continue, or answer locally.
//!
//! Limits ([`PluginLimits`], every one with a default): CPU per hook call (epoch
//! interruption, a ticker thread advances the epoch every millisecond), memory per
//! instance (`memory.grow` past it fails), bytes copied across the boundary per
//! host call, headers added per request, module size. Breaking one traps; a trap
//! discards the instance, and the caller applies the plugin's failure policy.
//!
//! Instances are compiled once ([`wasmtime::InstancePre`]), allocated from the
//! pooling allocator, and reused across requests: a request checks one out for its
//! lifetime (root context configured once per instance, one HTTP context per
//! request), so a healthy plugin costs no compilation or instantiation per request.

pub mod abi;
mod background;
mod callouts;
mod context;
mod cpu;
mod engine;
mod error;
mod hooks;
mod host;
mod limits;
mod plugin;
mod queues;
mod shared;

pub use callouts::{
    http_only, Callouts, GrpcCall, GrpcEvent, GrpcMessages, GrpcStatus, HttpOnly,
    GRPC_SEND_QUEUE_MESSAGES,
};
pub use context::{HttpContext, MAX_GRPC_STATUS_MESSAGE_BYTES};
pub use engine::{EngineCapacity, PluginEngine};
pub use error::{busy_reason, LimitTrap, PluginError};
pub use hooks::{
    Decision, HttpCall, HttpCallResponse, LocalResponse, Properties, PropertySource,
    MAX_SET_PROPERTIES, MAX_SET_PROPERTY_PATH_BYTES,
};
pub use limits::{Limit, PluginLimits, DEFAULT_CPU_PER_CALL};
pub use plugin::Plugin;

/// What happens to a request when its plugin traps or runs out of time:
/// `Closed` (the default) answers 500 naming the plugin, `Open` skips it.
pub use gantry_config::FailureMode as FailurePolicy;

pub use cpu::WALL_FACTOR;

pub use queues::SHARED_QUEUE_ENTRY_BYTES;
pub use shared::{
    Metric, MetricKind, Shared, MAX_LOG_LINE_BYTES, MAX_METRIC_NAME_BYTES, SHARED_DATA_ENTRY_BYTES,
};

use std::time::Duration;

/// How often the epoch advances: the granularity of the CPU limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Consecutive failed hook calls after which a plugin is marked unhealthy.
pub const UNHEALTHY_AFTER_FAILURES: u32 = 5;
/// First time an unhealthy plugin is left out; doubles on each relapse up to
/// [`UNHEALTHY_BACKOFF_MAX`].
pub const UNHEALTHY_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest time an unhealthy plugin is left out.
pub const UNHEALTHY_BACKOFF_MAX: Duration = Duration::from_secs(60);
