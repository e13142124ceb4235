//! `token-meter`: counts the output tokens of every answer on an OpenAI
//! route, per API key, as the plugin counter `output_tokens.<key>`
//! (`output_tokens.anonymous` without a key), exported by the gateway as
//! `gantry_plugin_metric{name="output_tokens.<key>"}`. Needs
//! `stream_events = true`: streamed answers are counted from the usage the
//! gateway reports when the stream ends (`response.usage.completion_tokens`),
//! whole answers from their JSON `usage`.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "token-meter"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/token_meter.wasm"
//! stream_events = true
//! ```
//!
//! Written with the public `proxy-wasm` SDK only.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Meter { key: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Meter {
    /// The API key's configured name.
    key: Option<String>,
}

impl Context for Meter {}

impl Meter {
    fn text(&self, path: Vec<&str>) -> Option<String> {
        self.get_property(path)
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|s| !s.is_empty())
    }

    fn count(&self, tokens: u64) {
        let key = self.key.as_deref().unwrap_or("anonymous");
        let name = format!("output_tokens.{key}");
        if let Ok(id) = hostcalls::define_metric(MetricType::Counter, &name) {
            hostcalls::increment_metric(id, tokens as i64).ok();
        }
    }
}

impl HttpContext for Meter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.key = self.text(vec!["request", "key"]);
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Continue;
        }
        let streamed = self
            .text(vec!["response", "usage", "completion_tokens"])
            .and_then(|n| n.parse().ok());
        let tokens = streamed.or_else(|| {
            // A whole answer: its own `usage`.
            let body = self.get_http_response_body(0, size)?;
            let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
            answer["usage"]["completion_tokens"].as_u64()
        });
        if let Some(tokens) = tokens {
            self.count(tokens);
        }
        Action::Continue
    }
}
