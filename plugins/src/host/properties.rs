//! Properties (`proxy_get_property`): the request's attributes and the plugin's own configuration.

use super::*;

pub(super) fn proxy_get_property(
    mut c: Ctx<'_>,
    pptr: i32,
    plen: i32,
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    // The SDK joins path segments with NUL: ["request", "path"] → "request\0path".
    let path = tri!(read(&mut c, pptr, plen));
    let path: Vec<&[u8]> = path.split(|b| *b == 0).filter(|p| !p.is_empty()).collect();
    let key = path
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect::<Vec<_>>()
        .join(".");
    let value = c
        .data()
        .http
        .properties
        .0
        .property(&key)
        .map(std::borrow::Cow::into_owned)
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

/// Links the properties functions of the ABI.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", proxy_get_property)?;
    Ok(())
}
