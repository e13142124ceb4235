//! BackgroundThread: `proxy_set_tick_period_milliseconds`. The period is noted in
//! the instance; the host reads it after the call that set it (see
//! [`crate::background`]).

use super::*;

pub(super) fn proxy_set_tick_period_milliseconds(mut c: Ctx<'_>, period: i32) -> i32 {
    let ms = u64::from(period as u32);
    c.data_mut().tick_period = Some(std::time::Duration::from_millis(ms));
    Status::Ok as i32
}

/// Links the timer functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    Ok(())
}
