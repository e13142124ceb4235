//! `proxy_http_call`: an HTTP call to one of the plugin's upstreams, bounded in number (`max_http_calls`) and time (`max_http_call_timeout_ms`).

use super::*;

pub(super) fn proxy_http_call(
    mut c: Ctx<'_>,
    Guest {
        ptr: uptr,
        len: ulen,
    }: Guest,
    Guest {
        ptr: hptr,
        len: hlen,
    }: Guest,
    Guest {
        ptr: bptr,
        len: blen,
    }: Guest,
    timeout_ms: i32,
    token_out: i32,
) -> wasmtime::Result<i32> {
    let upstream = tri!(read_str(&mut c, uptr, ulen));
    let headers = tri!(read_call_map(
        &mut c,
        Guest {
            ptr: hptr,
            len: hlen
        }
    ));
    let body = tri!(read(&mut c, bptr, blen));
    let state = c.data_mut();
    let token = tri!(admit(state, &upstream, "proxy_http_call"));
    let timeout = call_timeout(state, timeout_ms);
    state.http.calls.push(HttpCall {
        token,
        upstream,
        headers,
        body,
        timeout,
        max_response_bytes: state.limits.bytes_per_host_call,
    });
    Ok(give_token(&mut c, token_out, token))
}

/// The headers (or gRPC metadata) a call sends, decoded, names lower-cased;
/// `SerializationFailure` when the map does not decode.
pub(super) fn read_call_map(
    c: &mut Ctx<'_>,
    at: Guest,
) -> wasmtime::Result<Result<Vec<(String, String)>, Status>> {
    Ok(read(c, at.ptr, at.len)?.and_then(|encoded| {
        abi::decode_map(&encoded)
            .map(|pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect()
            })
            .map_err(|_| Status::SerializationFailure)
    }))
}

/// Write a new call's token where the plugin asked: the call's status.
pub(super) fn give_token(c: &mut Ctx<'_>, token_out: i32, token: u32) -> i32 {
    let status = match write_u32(c, token_out, token) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    };
    status as i32
}

/// Whether a call to `upstream` may start now, and its token: only in the
/// request phase (`InternalFailure` elsewhere), only to one of the plugin's
/// `upstreams` (`BadArgument`), and at most `max_http_calls` per request, HTTP
/// and gRPC calls and streams together (a trap past it).
pub(super) fn admit(
    state: &mut HostState,
    upstream: &str,
    what: &str,
) -> wasmtime::Result<Result<u32, Status>> {
    if !state.http.calls_allowed {
        // Only the request phase can wait for an answer.
        return Ok(Err(Status::InternalFailure));
    }
    if !state.upstreams.iter().any(|u| u == upstream) {
        tracing::warn!(target: "gantry::plugin", plugin = %state.plugin, upstream, "{what} to a pool not in the plugin's `upstreams`");
        return Ok(Err(Status::BadArgument));
    }
    state.http.calls_made += 1;
    if state.http.calls_made > state.limits.max_http_calls {
        return Err(LimitTrap::error(
            Limit::HttpCalls,
            format!(
                "plugin `{}` made more than {} calls (HTTP and gRPC) for one request (max_http_calls)",
                state.plugin, state.limits.max_http_calls
            ),
        ));
    }
    let token = state.next_token;
    state.next_token = state.next_token.wrapping_add(1).max(1);
    Ok(Ok(token))
}

/// The time a call may take: what the plugin asked for, except that 0 (no
/// timeout) and anything longer get the plugin's `max_http_call_timeout_ms`.
pub(super) fn call_timeout(state: &HostState, timeout_ms: i32) -> std::time::Duration {
    match std::time::Duration::from_millis(u64::from(timeout_ms as u32)) {
        t if t.is_zero() || t > state.limits.max_http_call_timeout => {
            state.limits.max_http_call_timeout
        }
        t => t,
    }
}

/// Links the HTTP calls functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        // (upstream, headers, body, trailers: pointer and length each),
        // timeout, token out. Trailers are not sent.
        |c: Ctx<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         timeout: i32,
         out: i32| {
            let at = |ptr, len| Guest { ptr, len };
            proxy_http_call(c, at(up, ul), at(hp, hl), at(bp, bl), timeout, out)
        },
    )?;
    Ok(())
}
