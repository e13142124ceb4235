//! Shared queues (see [`crate::queues`]): register, resolve, enqueue,
//! dequeue; bounded by `shared_queue_bytes`, the plugin's own only.

use super::*;
use crate::queues::Refused;

pub(super) fn proxy_register_shared_queue(
    mut c: Ctx<'_>,
    nptr: i32,
    nlen: i32,
    token_out: i32,
) -> wasmtime::Result<i32> {
    let name = tri!(read_str(&mut c, nptr, nlen));
    let token = match c.data().shared.queues.register(&name) {
        Ok(token) => token,
        Err(refused) => return Ok(refusal(&c, refused) as i32),
    };
    c.data_mut().registered_queue = true;
    Ok(match write_u32(&mut c, token_out, token) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    } as i32)
}

/// `vm_id` names another VM's queues in Envoy; a plugin here has only its own,
/// so any `vm_id` resolves among them.
pub(super) fn proxy_resolve_shared_queue(
    mut c: Ctx<'_>,
    _vm_ptr: i32,
    _vm_len: i32,
    nptr: i32,
    nlen: i32,
    token_out: i32,
) -> wasmtime::Result<i32> {
    let name = tri!(read_str(&mut c, nptr, nlen));
    let Some(token) = c.data().shared.queues.resolve(&name) else {
        return Ok(Status::NotFound as i32);
    };
    Ok(match write_u32(&mut c, token_out, token) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    } as i32)
}

pub(super) fn proxy_enqueue_shared_queue(
    mut c: Ctx<'_>,
    token: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let item = tri!(read(&mut c, ptr, len));
    let shared = c.data().shared.clone();
    Ok(match shared.queues.enqueue(token as u32, item) {
        Ok(()) => {
            shared.wake_background();
            Status::Ok
        }
        Err(refused) => refusal(&c, refused),
    } as i32)
}

pub(super) fn proxy_dequeue_shared_queue(
    mut c: Ctx<'_>,
    token: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let item = match c.data().shared.queues.dequeue(token as u32) {
        Ok(Some(item)) => item,
        Ok(None) => return Ok(Status::Empty as i32),
        Err(refused) => return Ok(refusal(&c, refused) as i32),
    };
    Ok(give(&mut c, &item, ptr_out, size_out)? as i32)
}

/// The status a refusal answers; a full queue counts as the limit's hit.
fn refusal(c: &Ctx<'_>, refused: Refused) -> Status {
    match refused {
        Refused::NotFound => Status::NotFound,
        Refused::Full => {
            c.data().shared.hit(Limit::SharedQueueBytes);
            Status::BadArgument
        }
    }
}

/// Links the shared queue functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    Ok(())
}
