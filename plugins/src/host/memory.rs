//! Guest memory: every pointer and length a plugin passes is checked, and the
//! bytes copied across the boundary in one host call counted against
//! `bytes_per_host_call`.

use super::*;

/// A pointer and length into guest memory, as the ABI passes them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guest {
    pub ptr: i32,
    pub len: i32,
}

pub(super) fn memory(caller: &mut Ctx<'_>) -> Option<Memory> {
    caller.data().exports.memory
}
/// Copy `len` bytes at `ptr` out of the guest, or `Err(status)` (checked as
/// [`view`] checks).
pub(super) fn read(
    caller: &mut Ctx<'_>,
    ptr: i32,
    len: i32,
) -> Result<Result<Vec<u8>, Status>, wasmtime::Error> {
    Ok(view(caller, [Guest { ptr, len }])?.map(|([bytes], _)| bytes.to_vec()))
}
/// Spans of guest memory (bytes or text) next to the host state, borrowed
/// together; or the status a bad span gets; or a trap.
type Viewed<'c, S, const N: usize> =
    Result<Result<([S; N], &'c mut HostState), Status>, wasmtime::Error>;

/// The guest's bytes at each span and the host state, borrowed together:
/// nothing is copied (a header name only looked up costs no allocation).
/// `Err(status)` when a span is outside the guest's memory; a trap when one
/// is over `bytes_per_host_call`, as [`read`].
pub(super) fn view<'c, const N: usize>(
    caller: &'c mut Ctx<'_>,
    spans: [Guest; N],
) -> Viewed<'c, &'c [u8], N> {
    for span in &spans {
        check_bytes(caller, span.len as u32 as usize)?;
    }
    let Some(mem) = memory(caller) else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    let (data, state) = mem.data_and_store_mut(caller);
    let data: &'c [u8] = data;
    let mut out = [&data[..0]; N];
    for (slot, span) in out.iter_mut().zip(spans) {
        let (ptr, len) = (span.ptr as u32 as usize, span.len as u32 as usize);
        match ptr.checked_add(len).and_then(|end| data.get(ptr..end)) {
            Some(bytes) => *slot = bytes,
            None => return Ok(Err(Status::InvalidMemoryAccess)),
        }
    }
    Ok(Ok((out, state)))
}
/// [`view`] of text: `BadArgument` when a span is not UTF-8.
pub(super) fn view_str<'c, const N: usize>(
    caller: &'c mut Ctx<'_>,
    spans: [Guest; N],
) -> Viewed<'c, &'c str, N> {
    Ok(view(caller, spans)?.and_then(|(bytes, state)| {
        let mut out = [""; N];
        for (slot, b) in out.iter_mut().zip(bytes) {
            *slot = std::str::from_utf8(b).map_err(|_| Status::BadArgument)?;
        }
        Ok((out, state))
    }))
}
pub(super) fn read_str(
    caller: &mut Ctx<'_>,
    ptr: i32,
    len: i32,
) -> Result<Result<String, Status>, wasmtime::Error> {
    Ok(view_str(caller, [Guest { ptr, len }])?.map(|([text], _)| text.to_owned()))
}
/// Trap when one host call would copy more than `bytes_per_host_call`.
pub(super) fn check_bytes(caller: &Ctx<'_>, len: usize) -> Result<(), wasmtime::Error> {
    let limit = caller.data().limits.bytes_per_host_call;
    if len > limit {
        return Err(LimitTrap::error(Limit::BytesPerHostCall, format!(
            "plugin `{}` copied {len} bytes in one host call; the limit (bytes_per_host_call) is {limit}",
            caller.data().plugin
        )));
    }
    Ok(())
}
pub(super) fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<(), Status> {
    let mem = memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let at = ptr as u32 as usize;
    let slot = mem
        .data_mut(caller)
        .get_mut(at..at + 4)
        .ok_or(Status::InvalidMemoryAccess)?;
    slot.copy_from_slice(&value.to_le_bytes());
    Ok(())
}
pub(super) fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> Status {
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
pub(super) fn give(
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
