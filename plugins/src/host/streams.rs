//! Contexts and streams: one HTTP context per instance at a time, so the effective context is always the current one (the SDK sets it before each callback); resuming a paused request.

use super::*;

pub(super) fn proxy_set_effective_context(_c: Ctx<'_>, _id: i32) -> i32 {
    Status::Ok as i32
}

pub(super) fn proxy_continue_stream(mut c: Ctx<'_>, _stream: i32) -> i32 {
    c.data_mut().http.resumed = true;
    Status::Ok as i32
}

/// `proxy_continue_request` and `proxy_continue_response` (ABI 0.2.0).
pub(super) fn proxy_continue(mut c: Ctx<'_>) -> i32 {
    c.data_mut().http.resumed = true;
    Status::Ok as i32
}

/// `proxy_close_stream`: whichever stream it names (request, response,
/// downstream, upstream), the exchange ends at once: the client gets no
/// answer (or no more of it), and an inference stream's generation is
/// cancelled.
pub(super) fn proxy_close_stream(mut c: Ctx<'_>, _stream: i32) -> i32 {
    c.data_mut().http.close_requested = true;
    Status::Ok as i32
}

/// `proxy_done`: nothing to finish.
pub(super) fn proxy_done(_c: Ctx<'_>) -> i32 {
    Status::Ok as i32
}

/// Links the stream control functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.func_wrap("env", "proxy_continue_stream", proxy_continue_stream)?;
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        linker.func_wrap("env", name, proxy_continue)?;
    }
    linker.func_wrap("env", "proxy_done", proxy_done)?;
    linker.func_wrap("env", "proxy_close_stream", proxy_close_stream)?;
    Ok(())
}
