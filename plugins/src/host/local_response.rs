//! A plugin's own answer (`proxy_send_local_response`), framing and hop-by-hop headers dropped.

use super::*;

/// Headers a plugin's local response may not set: the gateway frames the
/// response itself, and hop-by-hop headers are the connection's.
const LOCAL_RESPONSE_DROPPED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

pub(super) fn proxy_send_local_response(
    mut c: Ctx<'_>,
    status: i32,
    Guest {
        ptr: bptr,
        len: blen,
    }: Guest,
    Guest {
        ptr: hptr,
        len: hlen,
    }: Guest,
) -> wasmtime::Result<i32> {
    let body = tri!(read(&mut c, bptr, blen));
    let encoded = tri!(read(&mut c, hptr, hlen));
    let Ok(headers) = abi::decode_map(&encoded) else {
        return Ok(Status::SerializationFailure as i32);
    };
    if !(200..=599).contains(&status) {
        return Ok(Status::BadArgument as i32);
    }
    // Framing is the gateway's: the plugin's framing and hop-by-hop
    // headers are dropped; every other header counts as one added.
    let headers: Vec<(String, String)> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| !LOCAL_RESPONSE_DROPPED.contains(&k.as_str()) && !k.starts_with(':'))
        .collect();
    for _ in &headers {
        count_added(c.data_mut())?;
    }
    c.data_mut().http.local_response = Some(LocalResponse {
        status: status as u16,
        headers,
        body,
    });
    Ok(Status::Ok as i32)
}

/// Links the local responses functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        // status, (details, body, headers: pointer and length each), gRPC
        // status. Details and the gRPC status are not used.
        |c: Ctx<'_>,
         status: i32,
         _dp: i32,
         _dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32| {
            let at = |ptr, len| Guest { ptr, len };
            proxy_send_local_response(c, status, at(bp, bl), at(hp, hl))
        },
    )?;
    Ok(())
}
