//! The OpenAI-compatible API's request and response types.
//!
//! These types are the single source of three things: what a request may contain
//! (serde: unknown fields are ignored the way OpenAI does, wrong types are errors),
//! the ranges the gateway enforces ([`validate`](ChatCompletionRequest::validate),
//! using the `*_MIN`/`*_MAX` constants below), and the OpenAPI 3.1 document served
//! at `/openapi.json` (utoipa derives it from the same types; a unit test pins the
//! schema's limits to the constants, an end-to-end test sends each limit's edge).

use super::error::ApiError;
use gantry_config::InputLimits;

pub use gantry_proto::limits::{
    MAX_STOP_SEQUENCES as MAX_STOP, REPETITION_PENALTY_MAX, REPETITION_PENALTY_MIN,
    TEMPERATURE_GREEDY_BELOW, TEMPERATURE_MAX, TOP_P_MAX,
};
/// `n`: only one choice per request is generated.
pub const N_MAX: u32 = 1;
pub use gantry_proto::limits::MAX_STOP_BYTES;

/// A request carrying more than its pool's [`InputLimits`] allow: the 400
/// naming the parameter, and the limit's label in
/// `gantry_limit_rejections_total{limit}`.
#[derive(Debug)]
pub struct TooLarge {
    /// The answer.
    pub error: ApiError,
    /// `messages`, `input_bytes` or `embedding_inputs`.
    pub limit: crate::metrics::Refusal,
}

/// Check a summed text size against `max_input_bytes`, naming `param`.
fn check_input_bytes(param: &str, bytes: usize, limits: &InputLimits) -> Result<(), TooLarge> {
    if bytes > limits.max_input_bytes {
        return Err(TooLarge {
            error: out_of_range(
                param,
                format!(
                    "{param} holds {bytes} bytes of text; at most {} (the pool's max_input_bytes)",
                    limits.max_input_bytes
                ),
            ),
            limit: crate::metrics::Refusal::InputBytes,
        });
    }
    Ok(())
}

/// Bytes a token id counts for against `max_input_bytes`.
pub const TOKEN_ID_INPUT_BYTES: usize = 4;

/// Why a parameter is out of range, as a 400 naming it.
fn out_of_range(param: &str, message: String) -> ApiError {
    ApiError::invalid_param(param, message)
}

mod requests;
mod responses;

pub use requests::*;
pub use responses::*;
