//! An API request's body: its content type, its JSON parsed (an error names
//! the field at fault), and checked against the pool's input limits.

use super::endpoint::Endpoint;
use super::error::{self, ApiError};
use super::schema::*;

/// Parse and check a request body as the API does before it picks a pool:
/// JSON shape, every range, and what the body may carry under `limits`. Any
/// bytes give `Ok` or a 4xx naming what is wrong, never a panic: the fuzz
/// target `openai_request` (proxy/fuzz) holds it to that.
pub fn check_body(
    endpoint: Endpoint,
    body: &[u8],
    limits: &gantry_config::InputLimits,
) -> Result<(), ApiError> {
    match endpoint {
        Endpoint::ChatCompletions => checked::<ChatCompletionRequest>(body, limits).map(drop),
        Endpoint::Completions => checked::<CompletionRequest>(body, limits).map(drop),
        Endpoint::Embeddings => checked::<EmbeddingRequest>(body, limits).map(drop),
        Endpoint::ListModels | Endpoint::GetModel(_) => Ok(()),
    }
}

/// A request body of the API: parsed, then checked in one order everywhere
/// (its ranges, then what it may carry under a pool's input limits).
pub trait ApiBody: serde::de::DeserializeOwned {
    /// The model it names.
    fn model(&self) -> &str;
    /// Every parameter's range.
    fn validate(&self) -> Result<(), ApiError>;
    /// What it carries against the pool's input limits.
    fn check_input(&self, limits: &gantry_config::InputLimits) -> Result<(), TooLarge>;
}

macro_rules! api_body {
    ($($t:ty),*) => {$(
        impl ApiBody for $t {
            fn model(&self) -> &str {
                &self.model
            }
            fn validate(&self) -> Result<(), ApiError> {
                <$t>::validate(self)
            }
            fn check_input(&self, limits: &gantry_config::InputLimits) -> Result<(), TooLarge> {
                <$t>::check_input(self, limits)
            }
        }
    )*};
}
api_body!(ChatCompletionRequest, CompletionRequest, EmbeddingRequest);

/// `body` parsed as `R`, its ranges checked and its input under `limits`.
fn checked<R: ApiBody>(body: &[u8], limits: &gantry_config::InputLimits) -> Result<R, ApiError> {
    let req: R = parse(body)?;
    req.validate()?;
    req.check_input(limits).map_err(|t| t.error)?;
    Ok(req)
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

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return ApiError::invalid_body(
            None,
            format!("We could not parse the JSON body of your request: {inner}"),
        );
    }
    let text = inner.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text).to_string();
    let param = if path == "." || path == "?" {
        message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string)
    } else {
        Some(path.clone())
    };
    let message = match &param {
        Some(p) if !message.starts_with("missing field") => format!("{p}: {message}"),
        _ => message,
    };
    ApiError::invalid_body(param, message)
}

fn parse_exact<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(json_error)
}

/// Parse a request. Its sampling fields are `#[serde(flatten)]`ed, which hides the
/// path of a wrong-typed one; parsing the same body as [`Sampling`] alone (unknown
/// fields are ignored) names it.
pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_exact(body).map_err(|e| match e.param {
        Some(_) => e,
        None => match parse_exact::<Sampling>(body) {
            Err(precise) if precise.param.is_some() => precise,
            _ => e,
        },
    })
}
