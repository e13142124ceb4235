//! gRPC calls and streams: `proxy_grpc_call`, `proxy_grpc_stream`,
//! `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`. Admitted like
//! HTTP calls (request phase, the plugin's `upstreams`, `max_http_calls`,
//! `max_http_call_timeout_ms`); the gateway performs them over tonic and the
//! answers come back through `proxy_on_grpc_*` (see [`crate::callouts`]).

use super::calls::{admit, call_timeout, give_token, read_call_map};
use super::*;
use crate::callouts::{GrpcCall, GrpcEvent, GrpcMessages, GRPC_SEND_QUEUE_MESSAGES};
use bytes::Bytes;
use futures_util::stream::AbortHandle;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// One request's gRPC calls and streams, and what is being delivered now.
#[derive(Debug, Default)]
pub struct GrpcState {
    /// Calls and streams made by the hook now running, for the gateway.
    pub(crate) made: Vec<GrpcCall>,
    /// Calls and streams not yet closed, by token.
    pub(crate) open: HashMap<u32, GrpcOpen>,
    /// The event being handed to a `proxy_on_grpc_*` callback: what its
    /// metadata map, `GrpcReceiveBuffer` and `proxy_get_status` read.
    pub(crate) delivering: Option<GrpcEvent>,
}

/// An open call or stream.
#[derive(Debug)]
pub(crate) struct GrpcOpen {
    /// A unary call (`proxy_grpc_call`), which ends with its answer.
    pub(crate) unary: bool,
    /// A stream's send queue, while its sending half is open.
    pub(crate) send: Option<mpsc::Sender<Bytes>>,
    /// Stops the call once the gateway has started it (`None` before).
    pub(crate) abort: Option<AbortHandle>,
}

impl GrpcState {
    /// The request phase ended: every stream's sending half closes; calls
    /// still out are dropped by the caller.
    pub(crate) fn end(&mut self) {
        // Most requests make no gRPC call: nothing to drop, no new map.
        if !(self.made.is_empty() && self.open.is_empty()) {
            *self = GrpcState::default();
        }
    }
}

/// What a new call sends: one message, with a timeout (`proxy_grpc_call`), or
/// a stream of them (`proxy_grpc_stream`, which may last the plugin's
/// `max_http_call_timeout_ms` in all).
enum Sends {
    Unary { message: Guest, timeout_ms: i32 },
    Stream,
}

/// Start a call or stream to `upstream`'s `service`/`method` with `meta` as
/// its initial metadata, admitted as every call is ([`admit`]).
fn open(
    mut c: Ctx<'_>,
    what: &str,
    [up, service, method, meta]: [Guest; 4],
    sends: Sends,
    token_out: i32,
) -> wasmtime::Result<i32> {
    let upstream = tri!(read_str(&mut c, up.ptr, up.len));
    let service = tri!(read_str(&mut c, service.ptr, service.len));
    let method = tri!(read_str(&mut c, method.ptr, method.len));
    // A path segment each: no '/' that would reach another method.
    if [&service, &method]
        .iter()
        .any(|s| s.is_empty() || s.contains('/'))
    {
        return Ok(Status::BadArgument as i32);
    }
    let metadata = tri!(read_call_map(&mut c, meta));
    let unary = match sends {
        Sends::Unary {
            message,
            timeout_ms,
        } => Some((tri!(read(&mut c, message.ptr, message.len)), timeout_ms)),
        Sends::Stream => None,
    };
    let state = c.data_mut();
    let token = tri!(admit(state, &upstream, what));
    let (messages, send, timeout) = match unary {
        Some((message, timeout_ms)) => (
            GrpcMessages::Unary(Bytes::from(message)),
            None,
            call_timeout(state, timeout_ms),
        ),
        None => {
            let (send, queue) = mpsc::channel(GRPC_SEND_QUEUE_MESSAGES);
            let life = state.limits.max_http_call_timeout;
            (GrpcMessages::Stream(queue), Some(send), life)
        }
    };
    let open = GrpcOpen {
        unary: matches!(messages, GrpcMessages::Unary(_)),
        send,
        abort: None,
    };
    state.http.grpc.made.push(GrpcCall {
        token,
        upstream,
        service,
        method,
        metadata,
        messages,
        timeout,
        max_message_bytes: state.limits.bytes_per_host_call,
    });
    state.http.grpc.open.insert(token, open);
    Ok(give_token(&mut c, token_out, token))
}

/// `proxy_grpc_send`: queue a message (an empty one too) on an open stream
/// (`NotFound` for a token that is no open stream, or one whose sending half
/// ended); with `end_stream`, the sending half ends after it. More than
/// [`GRPC_SEND_QUEUE_MESSAGES`] waiting traps.
fn proxy_grpc_send(
    mut c: Ctx<'_>,
    token: i32,
    message: Guest,
    end_stream: i32,
) -> wasmtime::Result<i32> {
    let message = tri!(read(&mut c, message.ptr, message.len));
    let state = c.data_mut();
    let Some(slot) = state
        .http
        .grpc
        .open
        .get_mut(&(token as u32))
        .map(|o| &mut o.send)
    else {
        return Ok(Status::NotFound as i32);
    };
    let Some(send) = slot.as_ref() else {
        return Ok(Status::NotFound as i32);
    };
    // Sent even when empty (a message whose fields are all defaults is empty),
    // as Envoy does.
    match send.try_send(Bytes::from(message)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(LimitTrap::error(
                Limit::GrpcMessages,
                format!(
                    "plugin `{}` has more than {GRPC_SEND_QUEUE_MESSAGES} messages waiting to be sent on one gRPC stream (GRPC_SEND_QUEUE_MESSAGES)",
                    state.plugin
                ),
            ))
        }
        // The stream has ended; its close is on the way to the plugin.
        Err(mpsc::error::TrySendError::Closed(_)) => return Ok(Status::NotFound as i32),
    }
    if end_stream != 0 {
        *slot = None;
    }
    Ok(Status::Ok as i32)
}

/// `proxy_grpc_cancel`: the call or stream ends at once; the plugin hears
/// nothing more of it.
fn proxy_grpc_cancel(mut c: Ctx<'_>, token: i32) -> i32 {
    let grpc = &mut c.data_mut().http.grpc;
    let token = token as u32;
    let Some(open) = grpc.open.remove(&token) else {
        return Status::NotFound as i32;
    };
    match open.abort {
        Some(abort) => abort.abort(),
        // Made by the hook now running: never started.
        None => grpc.made.retain(|call| call.token != token),
    }
    Status::Ok as i32
}

/// `proxy_grpc_close`: as Envoy does, a stream's sending half ends (its
/// answers still come), and a unary call is cancelled.
fn proxy_grpc_close(mut c: Ctx<'_>, token: i32) -> i32 {
    match c.data_mut().http.grpc.open.get_mut(&(token as u32)) {
        None => Status::NotFound as i32,
        Some(open) if open.unary => proxy_grpc_cancel(c, token),
        Some(open) => {
            open.send = None;
            Status::Ok as i32
        }
    }
}

/// Links the gRPC functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let at = |ptr, len| Guest { ptr, len };
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        // (upstream, service, method, initial metadata, message: pointer and
        // length each), timeout, token out.
        move |c: Ctx<'_>,
              up: i32,
              ul: i32,
              sp: i32,
              sl: i32,
              mp: i32,
              ml: i32,
              hp: i32,
              hl: i32,
              bp: i32,
              bl: i32,
              timeout: i32,
              out: i32| {
            let sends = Sends::Unary {
                message: at(bp, bl),
                timeout_ms: timeout,
            };
            let to = [at(up, ul), at(sp, sl), at(mp, ml), at(hp, hl)];
            open(c, "proxy_grpc_call", to, sends, out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        // (upstream, service, method, initial metadata: pointer and length
        // each), token out.
        move |c: Ctx<'_>,
              up: i32,
              ul: i32,
              sp: i32,
              sl: i32,
              mp: i32,
              ml: i32,
              hp: i32,
              hl: i32,
              out: i32| {
            let to = [at(up, ul), at(sp, sl), at(mp, ml), at(hp, hl)];
            open(c, "proxy_grpc_stream", to, Sends::Stream, out)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        move |c: Ctx<'_>, token: i32, ptr: i32, len: i32, end: i32| {
            proxy_grpc_send(c, token, at(ptr, len), end)
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", proxy_grpc_cancel)?;
    linker.func_wrap("env", "proxy_grpc_close", proxy_grpc_close)?;
    Ok(())
}
