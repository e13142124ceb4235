//! Bodies and call answers as buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`.

use super::*;
use crate::callouts::GrpcEvent;

pub(super) fn proxy_get_buffer_bytes(
    mut c: Ctx<'_>,
    kind: i32,
    start: i32,
    max: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let Some(kind) = BufferType::from_abi(kind) else {
        return Ok(Status::BadArgument as i32);
    };
    let state = c.data();
    let whole: &[u8] = match kind {
        BufferType::RequestBody => &state.http.request_body,
        BufferType::ResponseBody => &state.http.response_body[..],
        BufferType::PluginConfiguration => &state.configuration,
        BufferType::VmConfiguration => &[],
        BufferType::HttpCallResponseBody => match &state.http.call_response {
            Some(r) => &r.body,
            None => return Ok(Status::NotFound as i32),
        },
        BufferType::GrpcReceiveBuffer => match &state.http.grpc.delivering {
            Some(GrpcEvent::Message(m)) => m,
            _ => return Ok(Status::NotFound as i32),
        },
    };
    let start = (start as u32 as usize).min(whole.len());
    let end = start.saturating_add(max as u32 as usize).min(whole.len());
    let bytes = whole[start..end].to_vec();
    if bytes.is_empty() {
        return Ok(Status::NotFound as i32);
    }
    Ok(give(&mut c, &bytes, ptr_out, size_out)? as i32)
}

pub(super) fn proxy_set_buffer_bytes(
    mut c: Ctx<'_>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let data = tri!(read(&mut c, ptr, len));
    let state = c.data_mut();
    let fits = match BufferType::from_abi(kind) {
        Some(BufferType::RequestBody) => splice(
            &mut state.http.request_body,
            start,
            size,
            &data,
            state.limits.max_request_body_bytes,
        ),
        // One response chunk (or the held ones) at a time.
        Some(BufferType::ResponseBody) => splice(
            &mut state.http.response_body,
            start,
            size,
            &data,
            state.limits.bytes_per_host_call,
        ),
        _ => return Ok(Status::BadArgument as i32),
    };
    if !fits {
        state.shared.hit(crate::limits::Limit::BodyBytes);
        return Ok(Status::BadArgument as i32);
    }
    Ok(Status::Ok as i32)
}

/// Replace `size` bytes at `start` with `data` (the SDK's
/// `set_*_body(start, size, data)`), unless the body would exceed `max`.
fn splice<B>(body: &mut B, start: i32, size: i32, data: &[u8], max: usize) -> bool
where
    B: Default + From<Vec<u8>>,
    Vec<u8>: From<B>,
    B: AsRef<[u8]>,
{
    let len = body.as_ref().len();
    let start = (start as u32 as usize).min(len);
    let end = start.saturating_add(size as u32 as usize).min(len);
    if len - (end - start) + data.len() > max {
        return false;
    }
    // A shared chunk is copied here, the first time the plugin changes it.
    let mut bytes = Vec::from(std::mem::take(body));
    bytes.splice(start..end, data.iter().copied());
    *body = B::from(bytes);
    true
}

/// Links the body and call-response buffers functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    Ok(())
}
