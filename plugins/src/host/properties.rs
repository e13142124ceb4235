//! Properties (`proxy_get_property`): the request's attributes and the plugin's own configuration.

use super::*;

pub(super) fn proxy_get_property(
    mut c: Ctx<'_>,
    pptr: i32,
    plen: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let path = Guest {
        ptr: pptr,
        len: plen,
    };
    let ([path], _) = tri!(view(&mut c, [path]));
    let key = property_key(path);
    let value = c
        .data()
        .http
        .properties
        .as_ref()
        .and_then(|p| p.get(&key))
        .or_else(|| (key == "plugin_name").then(|| c.data().plugin.as_bytes().to_vec()))
        .or_else(|| {
            let name = key.strip_prefix("request.headers.")?;
            c.data()
                .http
                .request_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone().into_bytes())
        });
    match value {
        Some(v) => Ok(give(&mut c, &v, ptr_out, size_out)? as i32),
        None => Ok(Status::NotFound as i32),
    }
}

/// Set a property for the rest of the request: later plugins of the chain
/// read it, and the access log shows it (`BadArgument` past
/// [`crate::MAX_SET_PROPERTIES`] or a path longer than
/// [`crate::MAX_SET_PROPERTY_PATH_BYTES`]).
pub(super) fn proxy_set_property(
    mut c: Ctx<'_>,
    pptr: i32,
    plen: i32,
    vptr: i32,
    vlen: i32,
) -> wasmtime::Result<i32> {
    let key = property_key(&tri!(read(&mut c, pptr, plen)));
    let value = tri!(read(&mut c, vptr, vlen));
    let properties = c
        .data_mut()
        .http
        .properties
        .get_or_insert_with(Default::default);
    if properties.set(key, value) {
        return Ok(Status::Ok as i32);
    }
    c.data().shared.hit(Limit::Properties);
    Ok(Status::BadArgument as i32)
}

/// A property's path as the gateway names it: the SDK joins path segments
/// with NUL (`["request", "path"]` → `request\0path`), the gateway with `.`.
fn property_key(path: &[u8]) -> String {
    path.split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

/// Links the properties functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", proxy_get_property)?;
    linker.func_wrap("env", "proxy_set_property", proxy_set_property)?;
    Ok(())
}
