//! A plugin's own metrics, at most `max_metrics`.

use super::*;

pub(super) fn proxy_define_metric(
    mut c: Ctx<'_>,
    kind: i32,
    nptr: i32,
    nlen: i32,
    id_out: i32,
) -> wasmtime::Result<i32> {
    let name = tri!(read_str(&mut c, nptr, nlen));
    let Some(id) = c.data().shared.define_metric(kind, &name) else {
        return Ok(Status::BadArgument as i32);
    };
    Ok(match write_u32(&mut c, id_out, id) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    } as i32)
}

pub(super) fn proxy_increment_metric(c: Ctx<'_>, id: i32, offset: i64) -> i32 {
    match c.data().shared.increment_metric(id as u32, offset) {
        true => Status::Ok as i32,
        false => Status::NotFound as i32,
    }
}

pub(super) fn proxy_record_metric(c: Ctx<'_>, id: i32, value: i64) -> i32 {
    match c.data().shared.record_metric(id as u32, value as u64) {
        true => Status::Ok as i32,
        false => Status::NotFound as i32,
    }
}

pub(super) fn proxy_get_metric(mut c: Ctx<'_>, id: i32, out: i32) -> i32 {
    let Some(value) = c.data().shared.metric_value(id as u32) else {
        return Status::NotFound as i32;
    };
    write_u64(&mut c, out, value) as i32
}

/// Links the metrics functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap("env", "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap("env", "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap("env", "proxy_get_metric", proxy_get_metric)?;
    Ok(())
}
