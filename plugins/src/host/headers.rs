//! Header maps: read whole or one value, replace, add, remove; every header added counted against `max_headers_added`.

use super::*;
use crate::callouts::GrpcEvent;

/// The map a plugin asks to change, if it exists (`BadArgument`) and may be
/// changed now (`InternalFailure`): request headers only until they are sent, an
/// HTTP call's answer never. The map is marked changed.
pub(super) fn writable_map(http: &mut HttpState, kind: i32) -> Result<MapType, Status> {
    let t = MapType::from_abi(kind).ok_or(Status::BadArgument)?;
    let writable = match t {
        MapType::RequestHeaders => !http.request_headers_sent,
        MapType::HttpCallResponseHeaders
        | MapType::GrpcReceiveInitialMetadata
        | MapType::GrpcReceiveTrailingMetadata => false,
        _ => true,
    };
    if writable {
        match t {
            MapType::RequestHeaders => http.request_headers_changed = true,
            MapType::ResponseHeaders => http.response_headers_changed = true,
            _ => {}
        }
        Ok(t)
    } else {
        Err(Status::InternalFailure)
    }
}
pub(super) fn map(http: &mut HttpState, t: MapType) -> Option<&mut Vec<(String, String)>> {
    match t {
        MapType::RequestHeaders => Some(&mut http.request_headers),
        MapType::ResponseHeaders => Some(&mut http.response_headers),
        MapType::HttpCallResponseHeaders => http.call_response.as_mut().map(|r| &mut r.headers),
        MapType::GrpcReceiveInitialMetadata => match &mut http.grpc.delivering {
            Some(GrpcEvent::InitialMetadata(m)) => Some(m),
            _ => None,
        },
        MapType::GrpcReceiveTrailingMetadata => match &mut http.grpc.delivering {
            Some(GrpcEvent::TrailingMetadata(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}
/// Count a header a plugin adds; trap past `max_headers_added`.
pub(super) fn count_added(state: &mut HostState) -> Result<(), wasmtime::Error> {
    state.http.headers_added += 1;
    if state.http.headers_added > state.limits.max_headers_added {
        return Err(LimitTrap::error(
            Limit::HeadersAdded,
            format!(
                "plugin `{}` added more than {} headers to one request (max_headers_added)",
                state.plugin, state.limits.max_headers_added
            ),
        ));
    }
    Ok(())
}

/// A header's name and value as the guest passes them.
fn name_and_value(kptr: i32, klen: i32, vptr: i32, vlen: i32) -> [Guest; 2] {
    [
        Guest {
            ptr: kptr,
            len: klen,
        },
        Guest {
            ptr: vptr,
            len: vlen,
        },
    ]
}

/// Where `name` is in a map. The map's names are lower case; the guest's
/// is compared without copying it.
fn position(map: &[(String, String)], name: &str) -> Option<usize> {
    map.iter().position(|(k, _)| k.eq_ignore_ascii_case(name))
}

pub(super) fn proxy_get_header_map_pairs(
    mut c: Ctx<'_>,
    kind: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let Some(t) = MapType::from_abi(kind) else {
        return Ok(Status::BadArgument as i32);
    };
    let encoded = match map(&mut c.data_mut().http, t) {
        Some(m) => abi::encode_map(m),
        None => abi::encode_map(&[]),
    };
    Ok(give(&mut c, &encoded, ptr_out, size_out)? as i32)
}

pub(super) fn proxy_set_header_map_pairs(
    mut c: Ctx<'_>,
    kind: i32,
    ptr: i32,
    len: i32,
) -> wasmtime::Result<i32> {
    let bytes = tri!(read(&mut c, ptr, len));
    let Ok(pairs) = abi::decode_map(&bytes) else {
        return Ok(Status::SerializationFailure as i32);
    };
    let t = match writable_map(&mut c.data_mut().http, kind) {
        Ok(t) => t,
        Err(status) => return Ok(status as i32),
    };
    let before = map(&mut c.data_mut().http, t).map_or(0, |m| m.len());
    for _ in before..pairs.len() {
        count_added(c.data_mut())?;
    }
    match map(&mut c.data_mut().http, t) {
        Some(m) => {
            *m = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            Ok(Status::Ok as i32)
        }
        None => Ok(Status::BadArgument as i32),
    }
}

pub(super) fn proxy_get_header_map_value(
    mut c: Ctx<'_>,
    kind: i32,
    kptr: i32,
    klen: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let key = Guest {
        ptr: kptr,
        len: klen,
    };
    let ([key], state) = tri!(view_str(&mut c, [key]));
    let Some(t) = MapType::from_abi(kind) else {
        return Ok(Status::BadArgument as i32);
    };
    // Copied out of the map: handing it over runs the guest's allocator.
    let value = map(&mut state.http, t).and_then(|m| Some(m[position(m, key)?].1.clone()));
    match value {
        Some(v) => Ok(give(&mut c, v.as_bytes(), ptr_out, size_out)? as i32),
        None => Ok(Status::NotFound as i32),
    }
}

/// Set a header to one value: the first of that name takes the value in
/// place (its string reused), any others go; a new name is added at the end.
pub(super) fn proxy_replace_header_map_value(
    mut c: Ctx<'_>,
    kind: i32,
    kptr: i32,
    klen: i32,
    vptr: i32,
    vlen: i32,
) -> wasmtime::Result<i32> {
    let ([key, value], state) = tri!(view_str(&mut c, name_and_value(kptr, klen, vptr, vlen)));
    let t = match writable_map(&mut state.http, kind) {
        Ok(t) => t,
        Err(status) => return Ok(status as i32),
    };
    let Some(at) = map(&mut state.http, t).map(|m| position(m, key)) else {
        return Ok(Status::BadArgument as i32);
    };
    if at.is_none() {
        count_added(state)?;
    }
    let m = map(&mut state.http, t).expect("the map was found above");
    match at {
        Some(i) => {
            let v = &mut m[i].1;
            v.clear();
            v.push_str(value);
            let mut later = i + 1;
            while later < m.len() {
                match m[later].0.eq_ignore_ascii_case(key) {
                    true => drop(m.remove(later)),
                    false => later += 1,
                }
            }
        }
        None => m.push((key.to_ascii_lowercase(), value.to_owned())),
    }
    Ok(Status::Ok as i32)
}

pub(super) fn proxy_add_header_map_value(
    mut c: Ctx<'_>,
    kind: i32,
    kptr: i32,
    klen: i32,
    vptr: i32,
    vlen: i32,
) -> wasmtime::Result<i32> {
    let ([key, value], state) = tri!(view_str(&mut c, name_and_value(kptr, klen, vptr, vlen)));
    count_added(state)?;
    let t = match writable_map(&mut state.http, kind) {
        Ok(t) => t,
        Err(status) => return Ok(status as i32),
    };
    match map(&mut state.http, t) {
        Some(m) => {
            m.push((key.to_ascii_lowercase(), value.to_owned()));
            Ok(Status::Ok as i32)
        }
        None => Ok(Status::BadArgument as i32),
    }
}

pub(super) fn proxy_remove_header_map_value(
    mut c: Ctx<'_>,
    kind: i32,
    kptr: i32,
    klen: i32,
) -> wasmtime::Result<i32> {
    let key = Guest {
        ptr: kptr,
        len: klen,
    };
    let ([key], state) = tri!(view_str(&mut c, [key]));
    let t = match writable_map(&mut state.http, kind) {
        Ok(t) => t,
        Err(status) => return Ok(status as i32),
    };
    if let Some(m) = map(&mut state.http, t) {
        m.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
    }
    Ok(Status::Ok as i32)
}

/// The map's size as Envoy counts it: its names' and values' bytes.
pub(super) fn proxy_get_header_map_size(
    mut c: Ctx<'_>,
    kind: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let Some(t) = MapType::from_abi(kind) else {
        return Ok(Status::BadArgument as i32);
    };
    let Some(size) = map(&mut c.data_mut().http, t)
        .map(|m| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>())
    else {
        return Ok(Status::BadArgument as i32);
    };
    Ok(match write_u32(&mut c, size_out, size as u32) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    } as i32)
}

/// Links the header maps functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        proxy_get_header_map_size,
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    Ok(())
}
