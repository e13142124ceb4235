//! An API request's body: read (bounded in size and in time per chunk), its
//! content type checked, parsed and checked against the pool's input limits.

use super::api::*;
use super::downstream::Downstream;
use super::error::{self, ApiError};
use super::parse;
use bytes::{Bytes, BytesMut};

/// Whether a `content-type` is JSON: `application/json`, any case, parameters
/// (`; charset=utf-8`) allowed.
pub(super) fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|v| {
        let essence = v.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

/// The API's endpoints that take a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /chat/completions`
    ChatCompletions,
    /// `POST /completions`
    Completions,
    /// `POST /embeddings`
    Embeddings,
}

/// Parse and check a request body as the API does before it picks a pool:
/// JSON shape, every range, and what the body may carry under `limits`. Any
/// bytes give `Ok` or a 4xx naming what is wrong, never a panic: the fuzz
/// target `openai_request` (proxy/fuzz) holds it to that.
pub fn check_body(
    endpoint: Endpoint,
    body: &[u8],
    limits: &gantry_config::InputLimits,
) -> Result<(), ApiError> {
    let too_large = |t: TooLarge| t.error;
    match endpoint {
        Endpoint::ChatCompletions => {
            let req: ChatCompletionRequest = parse(body)?;
            req.validate()?;
            req.check_input(limits).map_err(too_large)
        }
        Endpoint::Completions => {
            let req: CompletionRequest = parse(body)?;
            req.validate()?;
            req.check_input(limits).map_err(too_large)
        }
        Endpoint::Embeddings => {
            let req: EmbeddingRequest = parse(body)?;
            req.validate()?;
            req.check_input(limits).map_err(too_large)
        }
    }
}

/// The property the `openai_request` fuzz target checks on any bytes (its first
/// byte picks the endpoint, the rest is the body): [`check_body`] does not
/// panic, and a refusal is a 4xx whose message and `param` are non-empty and
/// bounded. Panics when the property fails.
pub fn check_body_property(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let endpoint = match which % 3 {
        0 => Endpoint::ChatCompletions,
        1 => Endpoint::Completions,
        _ => Endpoint::Embeddings,
    };
    // Small limits, so the fuzzer reaches them.
    let limits = gantry_config::InputLimits {
        max_messages: 4,
        max_input_bytes: 256,
        max_embedding_inputs: 4,
    };
    if let Err(e) = check_body(endpoint, body, &limits) {
        assert!((400..500).contains(&e.status), "{e:?}");
        assert!(!e.message.is_empty(), "{e:?}");
        assert!(e.message.len() <= error::MAX_ERROR_TEXT_BYTES, "{e:?}");
        if let Some(p) = &e.param {
            assert!(
                !p.is_empty() && p.len() <= error::MAX_ERROR_TEXT_BYTES,
                "{e:?}"
            );
        }
        serde_json::from_slice::<serde_json::Value>(&e.body()).expect("error body is JSON");
    }
}

/// Read the whole body, refusing it past `limit` bytes (declared or counted).
/// Each chunk must come within `stall` (HTTP/2 bodies have no read timeout of
/// Pingora's own).
pub(super) async fn read_body(
    session: &mut dyn Downstream,
    limit: u64,
    stall: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = session.content_length();
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let mut body = BytesMut::new();
    loop {
        let Ok(read) = tokio::time::timeout(stall, session.read_body()).await else {
            session.close_after();
            return Err(ApiError::body_timeout(stall));
        };
        match read {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(ApiError::body_too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                return Err(ApiError::invalid_body(
                    None,
                    format!("could not read the request body: {e}"),
                ))
            }
        }
    }
}
