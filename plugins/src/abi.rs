//! The proxy-wasm ABI's numbers and its header-map encoding (ABI 0.2.1; 0.2.0
//! modules are accepted too). Decoding never trusts the guest: every length is
//! checked against the bytes actually there.

/// Result codes returned by host functions (`WasmResult` in the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The thing asked for does not exist.
    NotFound = 1,
    /// An argument is invalid (unknown map or buffer type, bad UTF-8, ...).
    BadArgument = 2,
    /// A header map could not be decoded.
    SerializationFailure = 3,
    /// A pointer and length do not lie inside the guest's memory.
    InvalidMemoryAccess = 6,
    /// Nothing to return.
    Empty = 7,
    /// Shared data compare-and-swap lost.
    CasMismatch = 8,
    /// The call is not allowed in this context (e.g. headers after they were sent).
    InternalFailure = 10,
    /// The ABI defines it; this host does not implement it (see docs/PLUGINS.md).
    Unimplemented = 12,
}

/// Header maps a plugin can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    /// Request headers, including `:method`, `:path`, `:authority`, `:scheme`.
    RequestHeaders,
    /// Request trailers (always empty here).
    RequestTrailers,
    /// Response headers, including `:status`.
    ResponseHeaders,
    /// Response trailers (always empty here).
    ResponseTrailers,
    /// Initial metadata of a gRPC stream, in `proxy_on_grpc_receive_initial_metadata`.
    GrpcReceiveInitialMetadata,
    /// Trailing metadata of a gRPC stream, in `proxy_on_grpc_receive_trailing_metadata`.
    GrpcReceiveTrailingMetadata,
    /// Headers of an `proxy_http_call` answer.
    HttpCallResponseHeaders,
}

impl MapType {
    /// From the ABI's number.
    pub fn from_abi(n: i32) -> Option<MapType> {
        Some(match n {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcReceiveInitialMetadata,
            5 => MapType::GrpcReceiveTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            _ => return None,
        })
    }
}

/// Byte buffers a plugin can read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferType {
    /// The request body seen so far.
    RequestBody,
    /// The response body seen so far.
    ResponseBody,
    /// The body of an `proxy_http_call` answer.
    HttpCallResponseBody,
    /// A gRPC message, in `proxy_on_grpc_receive`.
    GrpcReceiveBuffer,
    /// The VM configuration (empty here).
    VmConfiguration,
    /// The plugin's configuration from the route.
    PluginConfiguration,
}

impl BufferType {
    /// From the ABI's number.
    pub fn from_abi(n: i32) -> Option<BufferType> {
        Some(match n {
            0 => BufferType::RequestBody,
            1 => BufferType::ResponseBody,
            4 => BufferType::HttpCallResponseBody,
            5 => BufferType::GrpcReceiveBuffer,
            6 => BufferType::VmConfiguration,
            7 => BufferType::PluginConfiguration,
            _ => return None,
        })
    }
}

/// What a hook returns: go on, or stop here until the plugin resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Continue with the next plugin / phase.
    Continue,
    /// Stop iteration (the plugin will answer or resume later).
    Pause,
}

impl Action {
    /// From the ABI's number; anything but 1 continues.
    pub fn from_abi(n: i32) -> Action {
        if n == 1 {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

/// Why a header map could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Shorter than its own counts say.
    #[error("header map is truncated: needs {needed} bytes, has {have}")]
    Truncated {
        /// Bytes the counts require.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// A name or value is not UTF-8.
    #[error("header map entry {0} is not UTF-8")]
    NotUtf8(usize),
    /// A name or value is not followed by its NUL byte.
    #[error("header map entry {0} is not NUL-terminated")]
    MissingNul(usize),
}

/// Encode pairs as the ABI's map: `u32 count`, then `u32 name_len, u32 value_len`
/// per pair, then each name and value followed by a NUL byte (little endian).
pub fn encode_map(pairs: &[(String, String)]) -> Vec<u8> {
    let size = 4
        + pairs.len() * 8
        + pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Decode the ABI's map encoding, checking every count and length against the
/// bytes present (an empty slice is an empty map).
pub fn decode_map(bytes: &[u8]) -> Result<Vec<(String, String)>, MapError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let truncated = |needed: usize| MapError::Truncated {
        needed,
        have: bytes.len(),
    };
    let count = u32_at(bytes, 0).ok_or_else(|| truncated(4))?;
    let sizes_end = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .ok_or_else(|| truncated(usize::MAX))?;
    if sizes_end > bytes.len() {
        return Err(truncated(sizes_end));
    }
    let mut pairs = Vec::with_capacity(count);
    let mut at = sizes_end;
    for i in 0..count {
        let (klen, vlen) = (
            u32_at(bytes, 4 + i * 8).expect("checked above"),
            u32_at(bytes, 8 + i * 8).expect("checked above"),
        );
        let mut take = |len: usize| -> Result<String, MapError> {
            let end = at
                .checked_add(len)
                .filter(|e| *e < bytes.len())
                .ok_or_else(|| truncated(at.saturating_add(len).saturating_add(1)))?;
            if bytes[end] != 0 {
                return Err(MapError::MissingNul(i));
            }
            let s = std::str::from_utf8(&bytes[at..end]).map_err(|_| MapError::NotUtf8(i))?;
            at = end + 1;
            Ok(s.to_string())
        };
        let k = take(klen)?;
        let v = take(vlen)?;
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// The fuzz property: decoding arbitrary bytes never panics, and a decoded map
/// encodes and decodes back to itself. Panics when the property fails.
pub fn check_map_round_trip(data: &[u8]) {
    if let Ok(pairs) = decode_map(data) {
        let again = decode_map(&encode_map(&pairs)).expect("an encoded map decodes");
        assert_eq!(again, pairs, "round trip changed the map");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let pairs = vec![
            (":path".to_string(), "/a?b".to_string()),
            ("x-empty".to_string(), String::new()),
        ];
        assert_eq!(decode_map(&encode_map(&pairs)).unwrap(), pairs);
        assert_eq!(decode_map(&[]).unwrap(), vec![]);
    }

    #[test]
    fn lying_lengths_are_rejected_not_trusted() {
        let mut m = encode_map(&[("a".into(), "b".into())]);
        m[4] = 200; // name length 200 with 6 bytes of data
        assert!(matches!(decode_map(&m), Err(MapError::Truncated { .. })));
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode_map(&huge), Err(MapError::Truncated { .. })));
        let mut no_nul = encode_map(&[("a".into(), "b".into())]);
        let n = no_nul.len();
        no_nul[n - 1] = b'x';
        assert_eq!(decode_map(&no_nul), Err(MapError::MissingNul(0)));
    }
}
