//! Errors of the OpenAI-compatible API, shaped as OpenAI shapes them:
//! `{"error": {"message", "type", "param", "code"}}`. One table maps every failure,
//! including each gRPC status a backend can answer, to an HTTP status.

use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// An error, as OpenAI's API shapes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and, for a bad value, the allowed range.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code, e.g. `model_not_found`.
    pub code: Option<&'static str>,
}

/// Seconds clients are told to wait when every backend is saturated, unless the
/// backend said otherwise.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 1;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Human-readable, naming the parameter and the allowed range where one applies.
    pub message: String,
    /// OpenAI's error type.
    pub kind: &'static str,
    /// The parameter at fault.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
    /// `Retry-After` seconds (429 only).
    pub retry_after: Option<u32>,
}

/// Longest error message or `param` sent to a client, in bytes: a message that
/// quotes the client's input (a wrong-typed value, a path) is cut there, so an
/// error is never larger than a small, fixed size.
pub const MAX_ERROR_TEXT_BYTES: usize = 512;

/// `text` cut at [`MAX_ERROR_TEXT_BYTES`] on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT_BYTES {
        let mut cut = MAX_ERROR_TEXT_BYTES - "…".len();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl ApiError {
    fn new(status: u16, kind: &'static str, code: Option<&'static str>, message: String) -> Self {
        ApiError {
            status,
            message: bounded(message),
            kind,
            param: None,
            code,
            retry_after: None,
        }
    }

    /// 400: a parameter's value is not allowed.
    pub fn invalid_param(param: &str, message: String) -> Self {
        let mut e = Self::new(400, "invalid_request_error", Some("invalid_value"), message);
        e.param = Some(bounded(param.to_string()));
        e
    }

    /// 400: the body is not JSON, or a field has the wrong type.
    pub fn invalid_body(param: Option<String>, message: String) -> Self {
        let mut e = Self::new(400, "invalid_request_error", None, message);
        e.param = param.map(bounded);
        e
    }

    /// 404: no pool on this route serves the model.
    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        let mut e = Self::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            format!(
                "The model `{model}` does not exist here; available models: {}",
                available.join(", ")
            ),
        );
        e.param = Some("model".into());
        e
    }

    /// 404: no such endpoint of the API.
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Unknown request URL: {method} {path}"),
        )
    }

    /// 405: the endpoint exists with another method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{method} is not allowed on {path}; use {allowed}"),
        )
    }

    /// 415: a POST whose body is not declared `application/json`.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = match got {
            // Bounded: the header is the client's.
            Some(v) => format!("`{}`", v.chars().take(64).collect::<String>()),
            None => "none".into(),
        };
        Self::new(
            415,
            "invalid_request_error",
            Some("unsupported_media_type"),
            format!(
                "The request body must be sent with content-type: application/json (got {got})"
            ),
        )
    }

    /// 408: the request body stalled past `limits.client_read_timeout_ms`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            408,
            "invalid_request_error",
            Some("request_timeout"),
            format!(
                "The request body stalled for more than {} ms (limits.client_read_timeout_ms)",
                limit.as_millis()
            ),
        )
    }

    /// 413: the body is over the route's limit.
    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than this route's limit of {limit} bytes"),
        )
    }

    /// 429: every backend of the pool is saturated.
    pub fn saturated(pool: &str, detail: &str, retry_after: u32) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            format!("Every backend of pool `{pool}` is at capacity ({detail}); retry after {retry_after}s"),
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 429: the API key's rate limit (`rate_limit_exceeded`) or budget
    /// (`insufficient_quota`, as OpenAI answers a spent quota); see
    /// [`crate::tenants::limiter`].
    pub fn rate_limited(exceeded: crate::tenants::limiter::Exceeded) -> Self {
        let (kind, code) = match exceeded.is_quota() {
            true => ("insufficient_quota", "insufficient_quota"),
            false => ("rate_limit_error", "rate_limit_exceeded"),
        };
        let mut e = Self::new(429, kind, Some(code), exceeded.message());
        e.retry_after = Some(exceeded.retry_after_seconds());
        e
    }

    /// 503: the shared key store cannot be reached (`on_unreachable =
    /// "closed"`).
    pub fn key_store_unreachable() -> Self {
        let mut e = Self::new(
            503,
            "server_error",
            Some("key_store_unreachable"),
            "This API key's limits are counted in a store that cannot be reached now; retry shortly".into(),
        );
        e.retry_after = Some(crate::tenants::shared::UNREACHABLE_RETRY_AFTER);
        e
    }

    /// 503: the key limits prompt tokens and no backend of the pool gave
    /// the model's prompt format to count them with.
    pub fn uncountable(pool: &str) -> Self {
        let mut e = Self::new(
            503,
            "server_error",
            Some("service_unavailable"),
            format!(
                "This API key's input_tokens_per_minute needs the prompt counted, and no backend of pool `{pool}` gave the model's prompt format (GetPromptFormat) within {} s; retry shortly",
                crate::upstream::prompts::FORMAT_WAIT.as_secs()
            ),
        );
        e.retry_after = Some(DEFAULT_RETRY_AFTER_SECONDS);
        e
    }

    /// 503: no backend of the pool is healthy.
    pub fn no_backend(pool: &str) -> Self {
        Self::new(
            503,
            "server_error",
            Some("service_unavailable"),
            format!("No healthy backend in inference pool `{pool}`"),
        )
    }

    /// 504: the pool's request timeout passed.
    pub fn timeout(pool: &str, timeout: std::time::Duration) -> Self {
        Self::new(
            504,
            "server_error",
            Some("timeout"),
            format!(
                "The request took longer than inference pool `{pool}`'s request_timeout_ms ({} ms)",
                timeout.as_millis()
            ),
        )
    }

    /// 500: generation failed for this request alone (the backend reported its
    /// sequence failed); no other request was affected and retrying it elsewhere
    /// would fail the same way.
    pub fn generation_failed() -> Self {
        Self::new(
            500,
            "server_error",
            Some("generation_failed"),
            "Generation failed for this request; no other request was affected".into(),
        )
    }

    /// 502: the backend broke the protocol or failed in a way no other status
    /// covers. The client sees this fixed message; the detail goes to the log.
    pub fn upstream() -> Self {
        Self::new(
            502,
            "server_error",
            Some("upstream_error"),
            "The inference backend failed to answer; retry the request".into(),
        )
    }

    /// Map a backend's gRPC status. `prompt_param` names the request's input
    /// parameter (`messages` or `prompt`) for errors about the prompt. A request's
    /// own faults keep the backend's message (it names the field and the limit,
    /// and says nothing else); every other status gets a fixed message, and its
    /// detail is logged with `request_id`, never sent.
    pub fn from_status(
        status: &tonic::Status,
        prompt_param: &str,
        pool: &str,
        request_id: &str,
    ) -> Self {
        let message = status.message();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                let param = gantry_proto::violation::violated_field(status)
                    .and_then(|field| openai_param(&field, prompt_param));
                let mut e = Self::new(
                    400,
                    "invalid_request_error",
                    Some("invalid_value"),
                    message.to_string(),
                );
                e.param = param;
                return e;
            }
            Code::NotFound => {
                let mut e = Self::new(
                    404,
                    "invalid_request_error",
                    Some("model_not_found"),
                    "The model is not served by this pool's backend".into(),
                );
                e.param = Some("model".into());
                tracing::warn!(
                    request_id,
                    pool,
                    detail = message,
                    "a backend does not serve a model its pool lists"
                );
                return e;
            }
            _ => {}
        }
        tracing::warn!(request_id, pool, code = ?status.code(), detail = message, "inference backend error");
        match status.code() {
            Code::ResourceExhausted => {
                let retry_after = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(DEFAULT_RETRY_AFTER_SECONDS);
                Self::saturated(pool, "its queue is full", retry_after)
            }
            Code::DeadlineExceeded => Self::new(
                504,
                "server_error",
                Some("timeout"),
                "The backend did not finish the request within its deadline".into(),
            ),
            Code::Unavailable => Self::new(
                503,
                "server_error",
                Some("service_unavailable"),
                "No inference backend could take the request now; retry shortly".into(),
            ),
            _ => Self::upstream(),
        }
    }

    /// Whether a status received before the first token is worth another backend:
    /// the backend (not the request) is the problem.
    pub fn retryable(code: Code) -> bool {
        matches!(
            code,
            Code::Unavailable
                | Code::ResourceExhausted
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::Aborted
        )
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&ErrorResponse {
            error: ErrorBody {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        })
        .expect("error bodies serialize")
    }

    /// The metric label for this outcome.
    pub fn label(&self) -> &'static str {
        self.code.unwrap_or(self.kind)
    }
}

/// The OpenAI parameter of a backend request field (a proto path from the
/// refusal's field violation): the table from `gantry.inference.v1` fields to
/// the API's. `prompt_param` is the request's input parameter (`messages` or
/// `prompt`) for fields that hold the prompt.
fn openai_param(field: &str, prompt_param: &str) -> Option<String> {
    let root_end = field.find(['.', '[']).unwrap_or(field.len());
    let (root, rest) = field.split_at(root_end);
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    match root {
        // `sampling.stop[2]` is the API's `stop`.
        "sampling" => Some(rest.split('[').next().unwrap_or(rest).to_string()),
        // `chat.messages[1].role` is the API's `messages[1].role`.
        "chat" if !rest.is_empty() => Some(rest.to_string()),
        "chat" | "prompt" | "token_ids" | "input" => Some(prompt_param.to_string()),
        // `inputs[3]` is the API's `input[3]`.
        "inputs" => Some(format!("input{rest}")),
        "model" => Some("model".to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_refusals_name_the_openai_parameter() {
        // (the refused field, the backend's message, the request's prompt
        // parameter, the OpenAI parameter named)
        let cases = [
            (
                Some("sampling.max_tokens"),
                "sampling.max_tokens must be between 1 and 256 for model m",
                "messages",
                Some("max_tokens"),
            ),
            (
                Some("sampling.stop[2]"),
                "sampling.stop[2] must be 1 to 64 bytes (got 70)",
                "messages",
                Some("stop"),
            ),
            (
                Some("prompt"),
                "prompt is 600 tokens; at most 511",
                "prompt",
                Some("prompt"),
            ),
            (
                Some("chat.messages[1].role"),
                "chat.messages[1].role must be one of system, user, assistant",
                "messages",
                Some("messages[1].role"),
            ),
            (
                Some("inputs[3]"),
                "inputs[3] is 600 tokens; at most 512",
                "input",
                Some("input[3]"),
            ),
            (
                Some("token_ids.ids[4]"),
                "token_ids.ids[4] = 99999 is not below the vocabulary size",
                "prompt",
                Some("prompt"),
            ),
            (
                Some("request_id"),
                "request_id is 300 bytes; at most 256",
                "messages",
                None,
            ),
            // A refusal without a field violation names no parameter, whatever
            // its text says.
            (
                None,
                "sampling.max_tokens must be between 1 and 256",
                "messages",
                None,
            ),
        ];
        for (field, message, prompt, want) in cases {
            let status = match field {
                Some(field) => gantry_proto::violation::invalid_field(field, message),
                None => tonic::Status::invalid_argument(message),
            };
            let e = ApiError::from_status(&status, prompt, "p", "r");
            assert_eq!(e.status, 400, "{message}");
            assert_eq!(e.param.as_deref(), want, "{message}");
            assert_eq!(e.message, message);
        }
    }

    #[test]
    fn saturation_keeps_the_backends_retry_after() {
        let mut s = tonic::Status::resource_exhausted("queue full");
        s.metadata_mut().insert("retry-after", "7".parse().unwrap());
        let e = ApiError::from_status(&s, "messages", "gpu", "r");
        assert_eq!((e.status, e.retry_after), (429, Some(7)));
        assert!(e.message.contains("`gpu`"), "{}", e.message);
    }

    #[test]
    fn backend_failures_reach_the_client_as_fixed_messages() {
        let detail = "candle: cuda OOM at 10.0.0.7:50051 /models/x.gguf";
        for code in [
            Code::Internal,
            Code::Unknown,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::DataLoss,
            Code::NotFound,
        ] {
            let e =
                ApiError::from_status(&tonic::Status::new(code, detail), "messages", "gpu", "r");
            let body = String::from_utf8(e.body()).unwrap();
            for leak in ["candle", "10.0.0.7", "/models", "OOM"] {
                assert!(!body.contains(leak), "{code:?}: {body}");
            }
        }
    }
}
