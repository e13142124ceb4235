//! Shared data between a plugin's instances, bounded by `shared_data_bytes`.

use super::*;

pub(super) fn proxy_get_shared_data(
    mut c: Ctx<'_>,
    kptr: i32,
    klen: i32,
    ptr_out: i32,
    size_out: i32,
    cas_out: i32,
) -> wasmtime::Result<i32> {
    let key = tri!(read_str(&mut c, kptr, klen));
    let found = c.data().shared.get(&key);
    let Some((value, cas)) = found else {
        return Ok(Status::NotFound as i32);
    };
    if let Err(s) = write_u32(&mut c, cas_out, cas) {
        return Ok(s as i32);
    }
    Ok(give(&mut c, &value, ptr_out, size_out)? as i32)
}

pub(super) fn proxy_set_shared_data(
    mut c: Ctx<'_>,
    kptr: i32,
    klen: i32,
    vptr: i32,
    vlen: i32,
    cas: i32,
) -> wasmtime::Result<i32> {
    let key = tri!(read_str(&mut c, kptr, klen));
    let value = tri!(read(&mut c, vptr, vlen));
    Ok(match c.data().shared.set(key, value, cas as u32) {
        Ok(()) => Status::Ok,
        Err(crate::shared::SetRefused::CasMismatch) => Status::CasMismatch,
        Err(crate::shared::SetRefused::Full) => Status::BadArgument,
    } as i32)
}

/// Links the shared data functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap("env", "proxy_set_shared_data", proxy_set_shared_data)?;
    Ok(())
}
