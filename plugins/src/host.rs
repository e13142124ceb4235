//! The host side of the ABI: what a plugin may call (`env.proxy_*`), each one
//! checking every guest pointer and length and counting the bytes it copies.

use crate::abi::{self, BufferType, MapType, Status};
use crate::{HttpCall, HttpCallResponse, LocalResponse, PluginLimits, Shared};
use std::sync::Arc;
use wasmtime::{Caller, Linker, Memory, ResourceLimiter, StoreLimits};

/// A trap raised by the host when a plugin breaks a limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitTrap(pub String);

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
    pub(crate) response_body: Vec<u8>,
    /// What `proxy_get_property` answers; shared by every plugin on the route.
    pub(crate) properties: Arc<[(String, Vec<u8>)]>,
    pub(crate) local_response: Option<LocalResponse>,
    pub(crate) headers_added: usize,
    /// Whether `proxy_http_call` may be used now (the request phase).
    pub(crate) calls_allowed: bool,
    /// Calls made in this request (against `max_http_calls`).
    pub(crate) calls_made: usize,
    /// Calls made by the hook now running, for the gateway to perform.
    pub(crate) calls: Vec<HttpCall>,
    /// The answer being delivered to `proxy_on_http_call_response`.
    pub(crate) call_response: Option<HttpCallResponse>,
    /// The plugin asked to resume the paused request.
    pub(crate) resumed: bool,
    /// The request headers went upstream: readable, no longer writable.
    pub(crate) request_headers_sent: bool,
}

type Ctx<'a> = Caller<'a, HostState>;

fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    caller.data().exports.memory
}

/// Copy `len` bytes at `ptr` out of the guest, or `Err(status)`.
fn read(
    caller: &mut Ctx<'_>,
    ptr: i32,
    len: i32,
) -> Result<Result<Vec<u8>, Status>, wasmtime::Error> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    check_bytes(caller, len)?;
    let Some(mem) = memory(caller) else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    let data = mem.data(&caller);
    Ok(
        match ptr.checked_add(len).and_then(|end| data.get(ptr..end)) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => Err(Status::InvalidMemoryAccess),
        },
    )
}

fn read_str(
    caller: &mut Ctx<'_>,
    ptr: i32,
    len: i32,
) -> Result<Result<String, Status>, wasmtime::Error> {
    Ok(read(caller, ptr, len)?.and_then(|b| String::from_utf8(b).map_err(|_| Status::BadArgument)))
}

/// Trap when one host call would copy more than `bytes_per_host_call`.
fn check_bytes(caller: &Ctx<'_>, len: usize) -> Result<(), wasmtime::Error> {
    let limit = caller.data().limits.bytes_per_host_call;
    if len > limit {
        return Err(wasmtime::Error::new(LimitTrap(format!(
            "plugin `{}` copied {len} bytes in one host call; the limit (bytes_per_host_call) is {limit}",
            caller.data().plugin
        ))));
    }
    Ok(())
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    let mem = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let at = ptr as u32 as usize;
    let slot = mem
        .data_mut(caller)
        .get_mut(at..at + 4)
        .ok_or(Status::InvalidMemoryAccess)?;
    slot.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> Status {
    let Some(mem) = memory(caller) else {
        return Status::InvalidMemoryAccess;
    };
    let at = ptr as u32 as usize;
    match mem.data_mut(caller).get_mut(at..at + 8) {
        Some(slot) => {
            slot.copy_from_slice(&value.to_le_bytes());
            Status::Ok
        }
        None => Status::InvalidMemoryAccess,
    }
}

/// Hand `bytes` to the guest: allocate with its `proxy_on_memory_allocate`, copy,
/// and store the pointer and size at `ptr_out` / `size_out`.
fn give(
    caller: &mut Ctx<'_>,
    bytes: &[u8],
    ptr_out: i32,
    size_out: i32,
) -> Result<Status, wasmtime::Error> {
    check_bytes(caller, bytes.len())?;
    let Some(alloc) = caller.data().exports.alloc.clone() else {
        return Ok(Status::InternalFailure);
    };
    let ptr = if bytes.is_empty() {
        0
    } else {
        alloc.call(&mut *caller, bytes.len() as i32)?
    };
    if !bytes.is_empty() {
        let Some(mem) = memory(caller) else {
            return Ok(Status::InvalidMemoryAccess);
        };
        let at = ptr as u32 as usize;
        match mem.data_mut(&mut *caller).get_mut(at..at + bytes.len()) {
            Some(dst) => dst.copy_from_slice(bytes),
            None => return Ok(Status::InvalidMemoryAccess),
        }
    }
    if let Err(s) = write_u32(caller, ptr_out, ptr as u32)
        .and_then(|()| write_u32(caller, size_out, bytes.len() as u32))
    {
        return Ok(s);
    }
    Ok(Status::Ok)
}

/// The map a plugin asks to change, if it exists (`BadArgument`) and may be
/// changed now (`InternalFailure`): request headers only until they are sent, an
/// HTTP call's answer never.
fn writable_map(http: &HttpState, kind: i32) -> Result<MapType, Status> {
    let t = MapType::from_abi(kind).ok_or(Status::BadArgument)?;
    let writable = match t {
        MapType::RequestHeaders => !http.request_headers_sent,
        MapType::HttpCallResponseHeaders => false,
        _ => true,
    };
    if writable {
        Ok(t)
    } else {
        Err(Status::InternalFailure)
    }
}

fn map(http: &mut HttpState, t: MapType) -> Option<&mut Vec<(String, String)>> {
    match t {
        MapType::RequestHeaders => Some(&mut http.request_headers),
        MapType::ResponseHeaders => Some(&mut http.response_headers),
        MapType::HttpCallResponseHeaders => http.call_response.as_mut().map(|r| &mut r.headers),
        _ => None,
    }
}

/// Headers a plugin's local response may not set: the gateway frames the
/// response itself, and hop-by-hop headers are the connection's.
const LOCAL_RESPONSE_DROPPED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Count a header a plugin adds; trap past `max_headers_added`.
fn count_added(caller: &mut Ctx<'_>) -> Result<(), wasmtime::Error> {
    let state = caller.data_mut();
    state.http.headers_added += 1;
    if state.http.headers_added > state.limits.max_headers_added {
        return Err(wasmtime::Error::new(LimitTrap(format!(
            "plugin `{}` added more than {} headers to one request (max_headers_added)",
            state.plugin, state.limits.max_headers_added
        ))));
    }
    Ok(())
}

macro_rules! tri {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(status) => return Ok(status as i32),
        }
    };
}

/// Functions the ABI defines that this host does not implement: they return
/// `Unimplemented` (12), never succeed silently. Listed in docs/PLUGINS.md.
const UNIMPLEMENTED: &[(&str, usize)] = &[
    ("proxy_set_tick_period_milliseconds", 1),
    ("proxy_set_property", 4),
    ("proxy_register_shared_queue", 3),
    ("proxy_resolve_shared_queue", 5),
    ("proxy_dequeue_shared_queue", 3),
    ("proxy_enqueue_shared_queue", 3),
    ("proxy_grpc_call", 12),
    ("proxy_grpc_stream", 9),
    ("proxy_grpc_send", 4),
    ("proxy_grpc_cancel", 1),
    ("proxy_grpc_close", 1),
    ("proxy_get_status", 3),
    ("proxy_call_foreign_function", 6),
    ("proxy_close_stream", 1),
    ("proxy_clear_route_cache", 0),
    ("proxy_get_header_map_size", 2),
];

/// Every host function, on `linker`.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
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

    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let message = tri!(read(&mut c, ptr, len));
            if !c.data().shared.log_allowed() {
                return Ok(Status::Ok as i32);
            }
            let message = crate::shared::log_line(&message);
            let plugin = c.data().plugin.clone();
            match level {
                0 => tracing::trace!(target: "gantry::plugin", plugin = %plugin, "{message}"),
                1 => tracing::debug!(target: "gantry::plugin", plugin = %plugin, "{message}"),
                2 => tracing::info!(target: "gantry::plugin", plugin = %plugin, "{message}"),
                3 => tracing::warn!(target: "gantry::plugin", plugin = %plugin, "{message}"),
                _ => tracing::error!(target: "gantry::plugin", plugin = %plugin, "{message}"),
            }
            Ok(Status::Ok as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, out: i32| -> i32 {
            // Info: plugins skip formatting debug lines nobody reads.
            match write_u32(&mut c, out, 2) {
                Ok(()) => Status::Ok as i32,
                Err(s) => s as i32,
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, out: i32| -> i32 {
            // Wall-clock time is part of the ABI; nothing finer than milliseconds is
            // given, so it cannot serve as a timer for side channels.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64 * 1_000_000);
            write_u64(&mut c, out, now) as i32
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>,
         kind: i32,
         start: i32,
         max: i32,
         ptr_out: i32,
         size_out: i32|
         -> wasmtime::Result<i32> {
            let Some(kind) = BufferType::from_abi(kind) else {
                return Ok(Status::BadArgument as i32);
            };
            let state = c.data();
            let whole: &[u8] = match kind {
                BufferType::RequestBody => &state.http.request_body,
                BufferType::ResponseBody => &state.http.response_body,
                BufferType::PluginConfiguration => &state.configuration,
                BufferType::VmConfiguration => &[],
                BufferType::HttpCallResponseBody => match &state.http.call_response {
                    Some(r) => &r.body,
                    None => return Ok(Status::NotFound as i32),
                },
            };
            let start = (start as u32 as usize).min(whole.len());
            let end = start.saturating_add(max as u32 as usize).min(whole.len());
            let bytes = whole[start..end].to_vec();
            if bytes.is_empty() {
                return Ok(Status::NotFound as i32);
            }
            Ok(give(&mut c, &bytes, ptr_out, size_out)? as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>,
         kind: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<i32> {
            let data = tri!(read(&mut c, ptr, len));
            let state = c.data_mut();
            let (body, max) = match BufferType::from_abi(kind) {
                Some(BufferType::RequestBody) => (
                    &mut state.http.request_body,
                    state.limits.max_request_body_bytes,
                ),
                // One response chunk (or the held ones) at a time.
                Some(BufferType::ResponseBody) => (
                    &mut state.http.response_body,
                    state.limits.bytes_per_host_call,
                ),
                _ => return Ok(Status::BadArgument as i32),
            };
            // Replace `size` bytes at `start` (the SDK's set_*_body(start, size, data)).
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            if body.len() - (end - start) + data.len() > max {
                state.shared.hit(crate::shared::HostLimit::BodyBytes);
                return Ok(Status::BadArgument as i32);
            }
            body.splice(start..end, data);
            Ok(Status::Ok as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, kind: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
            let Some(t) = MapType::from_abi(kind) else {
                return Ok(Status::BadArgument as i32);
            };
            let encoded = match map(&mut c.data_mut().http, t) {
                Some(m) => abi::encode_map(m),
                None => abi::encode_map(&[]),
            };
            Ok(give(&mut c, &encoded, ptr_out, size_out)? as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, kind: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let bytes = tri!(read(&mut c, ptr, len));
            let Ok(pairs) = abi::decode_map(&bytes) else {
                return Ok(Status::SerializationFailure as i32);
            };
            let t = match writable_map(&c.data().http, kind) {
                Ok(t) => t,
                Err(status) => return Ok(status as i32),
            };
            let before = map(&mut c.data_mut().http, t).map_or(0, |m| m.len());
            for _ in before..pairs.len() {
                count_added(&mut c)?;
            }
            match map(&mut c.data_mut().http, t) {
                Some(m) => {
                    *m = pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::BadArgument as i32),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>,
         kind: i32,
         kptr: i32,
         klen: i32,
         ptr_out: i32,
         size_out: i32|
         -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen)).to_ascii_lowercase();
            let Some(t) = MapType::from_abi(kind) else {
                return Ok(Status::BadArgument as i32);
            };
            let value = map(&mut c.data_mut().http, t)
                .and_then(|m| m.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()));
            match value {
                Some(v) => Ok(give(&mut c, v.as_bytes(), ptr_out, size_out)? as i32),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>,
         kind: i32,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32|
         -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen)).to_ascii_lowercase();
            let value = tri!(read_str(&mut c, vptr, vlen));
            let t = match writable_map(&c.data().http, kind) {
                Ok(t) => t,
                Err(status) => return Ok(status as i32),
            };
            let exists =
                map(&mut c.data_mut().http, t).is_some_and(|m| m.iter().any(|(k, _)| *k == key));
            if !exists {
                count_added(&mut c)?;
            }
            let Some(m) = map(&mut c.data_mut().http, t) else {
                return Ok(Status::BadArgument as i32);
            };
            m.retain(|(k, _)| *k != key);
            m.push((key, value));
            Ok(Status::Ok as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>,
         kind: i32,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32|
         -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen)).to_ascii_lowercase();
            let value = tri!(read_str(&mut c, vptr, vlen));
            count_added(&mut c)?;
            let t = match writable_map(&c.data().http, kind) {
                Ok(t) => t,
                Err(status) => return Ok(status as i32),
            };
            match map(&mut c.data_mut().http, t) {
                Some(m) => {
                    m.push((key, value));
                    Ok(Status::Ok as i32)
                }
                None => Ok(Status::BadArgument as i32),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, kind: i32, kptr: i32, klen: i32| -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen)).to_ascii_lowercase();
            let t = match writable_map(&c.data().http, kind) {
                Ok(t) => t,
                Err(status) => return Ok(status as i32),
            };
            if let Some(m) = map(&mut c.data_mut().http, t) {
                m.retain(|(k, _)| *k != key);
            }
            Ok(Status::Ok as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>,
         pptr: i32,
         plen: i32,
         ptr_out: i32,
         size_out: i32|
         -> wasmtime::Result<i32> {
            // The SDK joins path segments with NUL: ["request", "path"] → "request\0path".
            let path = tri!(read(&mut c, pptr, plen));
            let path: Vec<&[u8]> = path.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
            let key = path
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(".");
            let value = c
                .data()
                .http
                .properties
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| (key == "plugin_name").then(|| c.data().plugin.as_bytes().to_vec()))
                .or_else(|| {
                    let name = key.strip_prefix("request.headers.")?;
                    c.data()
                        .http
                        .request_headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone().into_bytes())
                });
            match value {
                Some(v) => Ok(give(&mut c, &v, ptr_out, size_out)? as i32),
                None => Ok(Status::NotFound as i32),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         status: i32,
         _dptr: i32,
         _dlen: i32,
         bptr: i32,
         blen: i32,
         hptr: i32,
         hlen: i32,
         _grpc: i32|
         -> wasmtime::Result<i32> {
            let body = tri!(read(&mut c, bptr, blen));
            let encoded = tri!(read(&mut c, hptr, hlen));
            let Ok(headers) = abi::decode_map(&encoded) else {
                return Ok(Status::SerializationFailure as i32);
            };
            if !(200..=599).contains(&status) {
                return Ok(Status::BadArgument as i32);
            }
            // Framing is the gateway's: the plugin's framing and hop-by-hop
            // headers are dropped; every other header counts as one added.
            let headers: Vec<(String, String)> = headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| {
                    !LOCAL_RESPONSE_DROPPED.contains(&k.as_str()) && !k.starts_with(':')
                })
                .collect();
            for _ in &headers {
                count_added(&mut c)?;
            }
            c.data_mut().http.local_response = Some(LocalResponse {
                status: status as u16,
                headers,
                body,
            });
            Ok(Status::Ok as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>,
         kptr: i32,
         klen: i32,
         ptr_out: i32,
         size_out: i32,
         cas_out: i32|
         -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen));
            let found = c.data().shared.get(&key);
            let Some((value, cas)) = found else {
                return Ok(Status::NotFound as i32);
            };
            if let Err(s) = write_u32(&mut c, cas_out, cas) {
                return Ok(s as i32);
            }
            Ok(give(&mut c, &value, ptr_out, size_out)? as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>,
         kptr: i32,
         klen: i32,
         vptr: i32,
         vlen: i32,
         cas: i32|
         -> wasmtime::Result<i32> {
            let key = tri!(read_str(&mut c, kptr, klen));
            let value = tri!(read(&mut c, vptr, vlen));
            Ok(match c.data().shared.set(key, value, cas as u32) {
                Ok(()) => Status::Ok,
                Err(crate::shared::SetRefused::CasMismatch) => Status::CasMismatch,
                Err(crate::shared::SetRefused::Full) => Status::BadArgument,
            } as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, nptr: i32, nlen: i32, id_out: i32| -> wasmtime::Result<i32> {
            let name = tri!(read_str(&mut c, nptr, nlen));
            let Some(id) = c.data().shared.define_metric(kind, &name) else {
                return Ok(Status::BadArgument as i32);
            };
            Ok(match write_u32(&mut c, id_out, id) {
                Ok(()) => Status::Ok,
                Err(s) => s,
            } as i32)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, offset: i64| -> i32 {
            match c.data().shared.increment_metric(id as u32, offset) {
                true => Status::Ok as i32,
                false => Status::NotFound as i32,
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Ctx<'_>, id: i32, value: i64| -> i32 {
            match c.data().shared.record_metric(id as u32, value as u64) {
                true => Status::Ok as i32,
                false => Status::NotFound as i32,
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, out: i32| -> i32 {
            let Some(value) = c.data().shared.metric_value(id as u32) else {
                return Status::NotFound as i32;
            };
            write_u64(&mut c, out, value) as i32
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         uptr: i32,
         ulen: i32,
         hptr: i32,
         hlen: i32,
         bptr: i32,
         blen: i32,
         _tptr: i32,
         _tlen: i32,
         timeout_ms: i32,
         token_out: i32|
         -> wasmtime::Result<i32> {
            let upstream = tri!(read_str(&mut c, uptr, ulen));
            let encoded = tri!(read(&mut c, hptr, hlen));
            let body = tri!(read(&mut c, bptr, blen));
            let Ok(headers) = abi::decode_map(&encoded) else {
                return Ok(Status::SerializationFailure as i32);
            };
            let state = c.data_mut();
            if !state.http.calls_allowed {
                // Only the request phase can wait for an answer.
                return Ok(Status::InternalFailure as i32);
            }
            if !state.upstreams.contains(&upstream) {
                tracing::warn!(target: "gantry::plugin", plugin = %state.plugin, upstream, "proxy_http_call to a pool not in the plugin's `upstreams`");
                return Ok(Status::BadArgument as i32);
            }
            state.http.calls_made += 1;
            if state.http.calls_made > state.limits.max_http_calls {
                return Err(wasmtime::Error::new(LimitTrap(format!(
                    "plugin `{}` made more than {} proxy_http_calls for one request (max_http_calls)",
                    state.plugin, state.limits.max_http_calls
                ))));
            }
            let token = state.next_token;
            state.next_token = state.next_token.wrapping_add(1).max(1);
            state.http.calls.push(HttpCall {
                token,
                upstream,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body,
                // 0 (no timeout) and anything longer get the plugin's maximum.
                timeout: match std::time::Duration::from_millis(u64::from(timeout_ms as u32)) {
                    t if t.is_zero() || t > state.limits.max_http_call_timeout => {
                        state.limits.max_http_call_timeout
                    }
                    t => t,
                },
                max_response_bytes: state.limits.bytes_per_host_call,
            });
            Ok(match write_u32(&mut c, token_out, token) {
                Ok(()) => Status::Ok,
                Err(s) => s,
            } as i32)
        },
    )?;

    // One HTTP context per instance at a time: the effective context is always
    // the current one (the SDK sets it before each callback).
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_c: Ctx<'_>, _id: i32| -> i32 { Status::Ok as i32 },
    )?;

    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, _stream: i32| -> i32 {
            c.data_mut().http.resumed = true;
            Status::Ok as i32
        },
    )?;
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        linker.func_wrap("env", name, |mut c: Ctx<'_>| -> i32 {
            c.data_mut().http.resumed = true;
            Status::Ok as i32
        })?;
    }

    linker.func_wrap("env", "proxy_done", |_c: Ctx<'_>| -> i32 {
        Status::Ok as i32
    })?;
    Ok(())
}
