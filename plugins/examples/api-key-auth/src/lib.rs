//! `api-key-auth`: answers `401` with a JSON error unless the request's key header
//! (default `x-api-key`) carries one of the configured keys. The key header is
//! removed before the request goes upstream.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "api-key-auth"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/api_key_auth.wasm"
//! configuration = { keys = ["k-123"], header = "x-api-key" }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only: the same module runs in Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;

fn default_header() -> String {
    "x-api-key".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    keys: Vec<String>,
    #[serde(default = "default_header")]
    header: String,
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
            Ok(c) if !c.keys.is_empty() => {
                self.config = Some(Rc::new(c));
                true
            }
            Ok(_) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, "api-key-auth: `keys` is empty").ok();
                false
            }
            Err(e) => {
                let message = format!("api-key-auth: bad configuration: {e}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Auth { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Auth {
    config: Rc<Config>,
}

impl Context for Auth {}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let header = self.config.header.clone();
        let presented = self.get_http_request_header(&header);
        if presented.is_some_and(|k| self.config.keys.iter().any(|known| *known == k)) {
            self.set_http_request_header(&header, None);
            return Action::Continue;
        }
        let body = format!(
            r#"{{"error":{{"message":"a valid API key is required in the `{header}` header","type":"authentication_error","code":"invalid_api_key"}}}}"#
        );
        self.send_http_response(
            401,
            vec![
                ("content-type", "application/json"),
                ("www-authenticate", "ApiKey"),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
