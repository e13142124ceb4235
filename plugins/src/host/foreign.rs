//! `proxy_call_foreign_function`: a small registry of host functions beyond
//! the ABI (`constant_time_compare`, `request_info`; docs/PLUGINS.md), and
//! `proxy_get_status`.

use super::*;
use subtle::ConstantTimeEq;

/// `constant_time_compare`: the argument is a 4-byte little-endian length
/// `n`, then `n` bytes, then the other string; the answer is one byte, 1 when
/// the two are equal, 0 otherwise, in time that depends only on their
/// lengths (for comparing secrets). A malformed argument is `BadArgument`.
fn constant_time_compare(arg: &[u8]) -> Result<Vec<u8>, Status> {
    let (len, rest) = arg.split_first_chunk::<4>().ok_or(Status::BadArgument)?;
    let n = u32::from_le_bytes(*len) as usize;
    if n > rest.len() {
        return Err(Status::BadArgument);
    }
    let (a, b) = rest.split_at(n);
    Ok(vec![u8::from(bool::from(a.ct_eq(b)))])
}

/// `request_info`: the request's route and what it may ask for, as JSON:
/// `{"route", "method", "path", "id", "models"}` (`models`: what the
/// route's inference pools serve; empty on other routes, and every field
/// empty outside a request). No argument.
fn request_info(properties: Option<&crate::Properties>) -> Vec<u8> {
    let text = |key: &str| {
        properties
            .and_then(|p| p.get(key))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    };
    let models: Vec<String> = text("route.models")
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "route": text("route_name"),
        "method": text("request.method"),
        "path": text("request.path"),
        "id": text("request.id"),
        "models": models,
    }))
    .expect("JSON of strings")
}

pub(super) fn proxy_call_foreign_function(
    mut c: Ctx<'_>,
    nptr: i32,
    nlen: i32,
    aptr: i32,
    alen: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let name = tri!(read_str(&mut c, nptr, nlen));
    let arg = tri!(read(&mut c, aptr, alen));
    let answer = match name.as_str() {
        "constant_time_compare" => constant_time_compare(&arg),
        "request_info" => Ok(request_info(c.data().http.properties.as_ref())),
        _ => Err(Status::NotFound),
    };
    match answer {
        Ok(bytes) => Ok(give(&mut c, &bytes, ptr_out, size_out)? as i32),
        Err(status) => Ok(status as i32),
    }
}

/// `proxy_get_status`: in `proxy_on_grpc_close`, the gRPC status the call or
/// stream ended with; in `proxy_on_http_call_response`, 0 and an empty
/// message for an answered call, 14 (gRPC's UNAVAILABLE, as Envoy reports a
/// failed call) and `call failed or timed out` for one that got no answer;
/// 0 and empty elsewhere.
pub(super) fn proxy_get_status(
    mut c: Ctx<'_>,
    code_out: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let http = &c.data().http;
    let closed = match &http.grpc.delivering {
        Some(crate::callouts::GrpcEvent::Close(status)) => Some(status),
        _ => None,
    };
    let (code, message): (u32, Vec<u8>) = match (closed, http.call_failed) {
        (Some(status), _) => (status.code, status.message.clone().into_bytes()),
        (None, true) => (14, b"call failed or timed out".to_vec()),
        (None, false) => (0, Vec::new()),
    };
    if let Err(s) = write_u32(&mut c, code_out, code) {
        return Ok(s as i32);
    }
    Ok(give(&mut c, &message, ptr_out, size_out)? as i32)
}

/// Links the foreign function and status functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    linker.func_wrap("env", "proxy_get_status", proxy_get_status)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_answers_equal_or_not_and_refuses_a_bad_argument() {
        let arg = |a: &[u8], b: &[u8]| [&(a.len() as u32).to_le_bytes()[..], a, b].concat();
        assert_eq!(
            constant_time_compare(&arg(b"secret", b"secret")),
            Ok(vec![1])
        );
        assert_eq!(
            constant_time_compare(&arg(b"secret", b"secreT")),
            Ok(vec![0])
        );
        assert_eq!(constant_time_compare(&arg(b"", b"")), Ok(vec![1]));
        assert_eq!(constant_time_compare(&arg(b"ab", b"abc")), Ok(vec![0]));
        assert_eq!(
            constant_time_compare(b"\x09\0\0\0ab"),
            Err(Status::BadArgument)
        );
        assert_eq!(constant_time_compare(b"\x01"), Err(Status::BadArgument));
    }

    #[test]
    fn request_info_is_the_routes_json() {
        let props: crate::Properties = vec![
            ("route_name".to_string(), b"openai".to_vec()),
            ("request.method".to_string(), b"POST".to_vec()),
            ("route.models".to_string(), b"a,b".to_vec()),
        ]
        .into();
        let info: serde_json::Value = serde_json::from_slice(&request_info(Some(&props))).unwrap();
        assert_eq!(info["route"], "openai");
        assert_eq!(info["method"], "POST");
        assert_eq!(info["path"], "");
        assert_eq!(info["models"], serde_json::json!(["a", "b"]));
    }
}
