//! Logging and time: `proxy_log` (rate-limited, escaped), the log level, and wall-clock time in whole milliseconds.

use super::*;

pub(super) fn proxy_log(mut c: Ctx<'_>, level: i32, ptr: i32, len: i32) -> wasmtime::Result<i32> {
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
}

pub(super) fn proxy_get_log_level(mut c: Ctx<'_>, out: i32) -> i32 {
    // Info: plugins skip formatting debug lines nobody reads.
    match write_u32(&mut c, out, 2) {
        Ok(()) => Status::Ok as i32,
        Err(s) => s as i32,
    }
}

pub(super) fn proxy_get_current_time_nanoseconds(mut c: Ctx<'_>, out: i32) -> i32 {
    // Wall-clock time is part of the ABI; nothing finer than milliseconds is
    // given, so it cannot serve as a timer for side channels.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64 * 1_000_000);
    write_u64(&mut c, out, now) as i32
}

/// Links the logging and the clock functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", proxy_log)?;
    linker.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    Ok(())
}
