//! `predict-compat`: the API of this project's seed,
//! `POST /predict {"prompt": string, "max_length": int 10..=100 (default 50)}`
//! answered with `{"output": string}`. The body is validated here (400 naming the
//! field and the range), turned into a `/v1/completions` request sent with
//! `proxy_http_call` to the configured pool, and the completion's text becomes
//! `output`; the pool's own errors (429, 503, 504, ...) are passed on as they are.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "predict-compat"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/predict_compat.wasm"
//! upstreams = ["local"]
//! configuration = { upstream = "local", model = "smollm2-135m" }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only: the same module runs in Envoy
//! (with `upstream` naming an Envoy cluster).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use serde_json::{json, Value};
use std::rc::Rc;
use std::time::Duration;

/// Bounds of `max_length`, and its default (as in the seed's pydantic model).
const MAX_LENGTH_MIN: i64 = 10;
const MAX_LENGTH_MAX: i64 = 100;
const MAX_LENGTH_DEFAULT: i64 = 50;

fn default_path() -> String {
    "/v1/completions".into()
}

fn default_timeout_ms() -> u64 {
    60_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The pool that serves the completions API.
    upstream: String,
    /// The model asked for.
    model: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => {
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                let message = format!("predict-compat: bad configuration: {e}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Predict { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Predict {
    config: Rc<Config>,
}

/// A validated `/predict` request.
#[derive(Debug, PartialEq)]
struct PredictRequest {
    prompt: String,
    max_length: i64,
}

/// Why a `/predict` body was refused: the field and what is wrong.
#[derive(Debug, PartialEq)]
struct Invalid {
    param: Option<&'static str>,
    message: String,
}

fn validate(body: &[u8]) -> Result<PredictRequest, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        param: None,
        message: format!("the body is not valid JSON: {e}"),
    })?;
    let Value::Object(fields) = value else {
        return Err(Invalid {
            param: None,
            message: "the body must be a JSON object with `prompt` (and optionally `max_length`)"
                .into(),
        });
    };
    let prompt = match fields.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Invalid {
                param: Some("prompt"),
                message: "prompt must be a string".into(),
            })
        }
        None => {
            return Err(Invalid {
                param: Some("prompt"),
                message: "prompt is required".into(),
            })
        }
    };
    let max_length = match fields.get("max_length") {
        None | Some(Value::Null) => MAX_LENGTH_DEFAULT,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (MAX_LENGTH_MIN..=MAX_LENGTH_MAX).contains(&v) => v,
            Some(v) => {
                return Err(Invalid {
                    param: Some("max_length"),
                    message: format!(
                        "max_length must be between {MAX_LENGTH_MIN} and {MAX_LENGTH_MAX} (got {v})"
                    ),
                })
            }
            None => {
                return Err(Invalid {
                    param: Some("max_length"),
                    message: format!("max_length must be an integer (got {n})"),
                })
            }
        },
        Some(_) => {
            return Err(Invalid {
                param: Some("max_length"),
                message: "max_length must be an integer".into(),
            })
        }
    };
    Ok(PredictRequest { prompt, max_length })
}

fn error_body(kind: &str, param: Option<&str>, message: &str) -> Vec<u8> {
    let error =
        json!({"error": {"message": message, "type": kind, "param": param, "code": Value::Null}});
    serde_json::to_vec(&error).expect("JSON")
}

impl Predict {
    fn answer(&self, status: u32, body: &[u8]) {
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body),
        );
    }
}

impl Context for Predict {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u32>().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        match status {
            Some(200) => {
                let text = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["choices"][0]["text"].as_str().map(str::to_string));
                match text {
                    Some(output) => {
                        let out = serde_json::to_vec(&json!({ "output": output })).expect("JSON");
                        self.answer(200, &out);
                    }
                    None => self.answer(
                        502,
                        &error_body("upstream_error", None, "the completion had no text"),
                    ),
                }
            }
            // The pool's own error (limits, overload, timeouts) is the client's answer.
            Some(code) => self.answer(code, &body),
            None => self.answer(
                502,
                &error_body(
                    "upstream_error",
                    None,
                    &format!(
                        "the inference pool `{}` did not answer",
                        self.config.upstream
                    ),
                ),
            ),
        }
    }
}

impl HttpContext for Predict {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        if self.get_http_request_header(":method").as_deref() != Some("POST") {
            let body = error_body("invalid_request_error", None, "use POST /predict");
            self.send_http_response(
                405,
                vec![("content-type", "application/json"), ("allow", "POST")],
                Some(&body),
            );
            return Action::Pause;
        }
        if end_of_stream {
            self.answer(
                400,
                &error_body(
                    "invalid_request_error",
                    None,
                    "the body must be a JSON object with `prompt`",
                ),
            );
        }
        // Wait for the body.
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let request = match validate(&body) {
            Ok(r) => r,
            Err(invalid) => {
                let body = error_body("invalid_request_error", invalid.param, &invalid.message);
                self.answer(400, &body);
                return Action::Pause;
            }
        };
        let completion = json!({
            "model": self.config.model,
            "prompt": request.prompt,
            "max_tokens": request.max_length,
        });
        let completion = serde_json::to_vec(&completion).expect("JSON");
        let dispatched = self.dispatch_http_call(
            &self.config.upstream,
            vec![
                (":method", "POST"),
                (":path", &self.config.path),
                (":authority", "gantry"),
                ("content-type", "application/json"),
            ],
            Some(&completion),
            vec![],
            Duration::from_millis(self.config.timeout_ms),
        );
        if let Err(status) = dispatched {
            let message = format!("could not call `{}`: {status:?}", self.config.upstream);
            self.answer(502, &error_body("upstream_error", None, &message));
        }
        Action::Pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_length_defaults_to_50_and_is_bounded() {
        assert_eq!(
            validate(br#"{"prompt": "hi"}"#).unwrap(),
            PredictRequest {
                prompt: "hi".into(),
                max_length: 50
            }
        );
        assert_eq!(
            validate(br#"{"prompt": "hi", "max_length": 10}"#)
                .unwrap()
                .max_length,
            10
        );
        assert_eq!(
            validate(br#"{"prompt": "hi", "max_length": 100}"#)
                .unwrap()
                .max_length,
            100
        );
        for bad in ["9", "101", "-1"] {
            let e = validate(format!(r#"{{"prompt": "hi", "max_length": {bad}}}"#).as_bytes())
                .unwrap_err();
            assert_eq!(e.param, Some("max_length"));
            assert!(e.message.contains("between 10 and 100"), "{}", e.message);
        }
        let e = validate(br#"{"prompt": "hi", "max_length": 12.5}"#).unwrap_err();
        assert_eq!(e.param, Some("max_length"));
    }

    #[test]
    fn prompt_is_a_required_string() {
        assert_eq!(
            validate(br#"{"max_length": 20}"#).unwrap_err().param,
            Some("prompt")
        );
        assert_eq!(
            validate(br#"{"prompt": 3}"#).unwrap_err().param,
            Some("prompt")
        );
        assert_eq!(validate(b"[1]").unwrap_err().param, None);
        assert_eq!(validate(b"{").unwrap_err().param, None);
    }
}
