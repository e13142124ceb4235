//! The host side of the ABI: what a plugin may call (`env.proxy_*`), each one
//! checking every guest pointer and length and counting the bytes it copies.

use crate::abi::{self, BufferType, MapType, Status};
use crate::error::LimitTrap;
use crate::limits::Limit;
use crate::{HttpCall, HttpCallResponse, LocalResponse, PluginLimits, Shared};
use std::sync::Arc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, StoreLimits};

pub(crate) use grpc::GrpcState;

/// Everything one VM's store holds for the host functions.
pub struct HostState {
    pub(crate) plugin: Arc<str>,
    pub(crate) limits: PluginLimits,
    pub(crate) store_limits: Limiter,
    pub(crate) configuration: Arc<[u8]>,
    pub(crate) shared: Arc<Shared>,
    /// The instance's memory and allocator, looked up once.
    pub(crate) exports: GuestExports,
    /// Pools the plugin may `proxy_http_call`.
    pub(crate) upstreams: Arc<[String]>,
    /// The next `proxy_http_call` token: never reused by this instance, as the
    /// SDK keeps unanswered tokens for its lifetime.
    pub(crate) next_token: u32,
    /// Per request: maps, bodies, properties, the local response.
    pub(crate) http: HttpState,
    /// The CPU clock of the hook call running now.
    pub(crate) clock: crate::cpu::CallClock,
    /// The tick period the root context asked for last (zero: stop), until
    /// the host reads it (see [`crate::background`]).
    pub(crate) tick_period: Option<std::time::Duration>,
    /// The instance registered a shared queue (its first instance then owns
    /// the plugin's queues, see [`crate::background`]).
    pub(crate) registered_queue: bool,
}

impl AsMut<crate::cpu::CallClock> for HostState {
    fn as_mut(&mut self) -> &mut crate::cpu::CallClock {
        &mut self.clock
    }
}

/// The store's limits, remembering whether a `memory.grow` was refused (a trap
/// that follows is counted as the memory limit).
pub struct Limiter {
    pub(crate) inner: StoreLimits,
    pub(crate) memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.memory_refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What host calls need from the instance itself.
#[derive(Default)]
pub struct GuestExports {
    /// Its linear memory (`memory`).
    pub(crate) memory: Option<Memory>,
    /// Its allocator: the SDK exports it as `malloc` on wasm32-unknown-unknown and
    /// as `proxy_on_memory_allocate` elsewhere; both are accepted, as Envoy does.
    pub(crate) alloc: Option<wasmtime::TypedFunc<i32, i32>>,
}

impl GuestExports {
    /// Look them up in a new instance.
    pub(crate) fn of(
        instance: &wasmtime::Instance,
        store: &mut wasmtime::Store<HostState>,
    ) -> GuestExports {
        let memory = instance.get_memory(&mut *store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut *store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut *store, "malloc"))
            .ok();
        GuestExports { memory, alloc }
    }
}

/// The request being filtered.
#[derive(Debug, Default)]
pub struct HttpState {
    pub(crate) request_headers: Vec<(String, String)>,
    pub(crate) response_headers: Vec<(String, String)>,
    pub(crate) request_body: Vec<u8>,
    /// One response chunk (or what the plugin held): shared with the gateway,
    /// copied only when the plugin changes it.
    pub(crate) response_body: bytes::Bytes,
    /// What `proxy_get_property` answers; shared by every plugin on the route.
    /// `None` outside a request (an idle instance, a root context's timer or
    /// call): a state reset to its default allocates nothing.
    pub(crate) properties: Option<crate::Properties>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) headers_added: usize,
    /// Whether a host call changed the request (response) headers during the
    /// hook now running: the gateway writes back nothing when neither did.
    pub(crate) request_headers_changed: bool,
    pub(crate) response_headers_changed: bool,
    /// Whether `proxy_http_call` may be used now (the request phase).
    pub(crate) calls_allowed: bool,
    /// Calls made in this request (against `max_http_calls`).
    pub(crate) calls_made: usize,
    /// Calls made by the hook now running, for the gateway to perform.
    pub(crate) calls: Vec<HttpCall>,
    /// The answer being delivered to `proxy_on_http_call_response`.
    pub(crate) call_response: Option<HttpCallResponse>,
    /// That call failed or timed out (no answer): `proxy_get_status` says so.
    pub(crate) call_failed: bool,
    /// The plugin asked to resume the paused request.
    pub(crate) resumed: bool,
    /// The plugin closed the stream (`proxy_close_stream`).
    pub(crate) close_requested: bool,
    /// The request headers went upstream: readable, no longer writable.
    pub(crate) request_headers_sent: bool,
    /// gRPC calls and streams.
    pub(crate) grpc: GrpcState,
}

type Ctx<'a> = Caller<'a, HostState>;

use headers::count_added;
use memory::{give, read, read_str, view, view_str, write_u32, write_u64, Guest};

/// `?` for a host function's guest-facing status: an error status is
/// returned to the plugin, a trap propagates.
macro_rules! tri {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(status) => return Ok(status as i32),
        }
    };
}

mod buffers;
mod calls;
mod foreign;
mod grpc;
mod headers;
mod local_response;
mod logging;
mod memory;
mod metrics;
mod properties;
mod queues;
mod shared_data;
mod streams;
mod timers;

/// Functions the ABI defines that this host does not implement: they return
/// `Unimplemented` (12), never succeed silently. Listed in docs/PLUGINS.md.
const UNIMPLEMENTED: &[(&str, usize)] = &[("proxy_clear_route_cache", 0)];

/// Every host function, on `linker`: the table of the ABI's imports.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    link_unimplemented(linker)?;
    logging::link(linker)?;
    buffers::link(linker)?;
    headers::link(linker)?;
    properties::link(linker)?;
    local_response::link(linker)?;
    shared_data::link(linker)?;
    metrics::link(linker)?;
    calls::link(linker)?;
    grpc::link(linker)?;
    streams::link(linker)?;
    timers::link(linker)?;
    queues::link(linker)?;
    foreign::link(linker)?;
    Ok(())
}

/// Every function of the ABI Gantry does not implement answers `Unimplemented`.
fn link_unimplemented(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    for &(name, arity) in UNIMPLEMENTED {
        let ty = wasmtime::FuncType::new(
            linker.engine(),
            std::iter::repeat_n(wasmtime::ValType::I32, arity),
            [wasmtime::ValType::I32],
        );
        linker.func_new("env", name, ty, |_caller, _args, results| {
            results[0] = wasmtime::Val::I32(Status::Unimplemented as i32);
            Ok(())
        })?;
    }
    Ok(())
}
