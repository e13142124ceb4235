//! Bodies and call answers as buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`.

use super::*;

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
        state.shared.hit(crate::limits::Limit::BodyBytes);
        return Ok(Status::BadArgument as i32);
    }
    body.splice(start..end, data);
    Ok(Status::Ok as i32)
}

/// Links the body and call-response buffers functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    Ok(())
}
