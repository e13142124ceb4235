//! `add-header`: adds the headers named in its configuration to every request
//! (before the upstream sees it) and every response (before the client does).
//!
//! ```toml
//! [[routes.plugins]]
//! name = "add-header"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/add_header.wasm"
//! configuration = { request = { "x-team" = "edge" }, response = { "x-served-by" = "gantry" } }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only: the same module runs in Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: BTreeMap<String, String>,
    #[serde(default)]
    response: BTreeMap<String, String>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Rc::default() }) });
}}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            return true;
        };
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) => {
                self.config = Rc::new(c);
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    &format!("add-header: bad configuration: {e}"),
                )
                .ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    config: Rc<Config>,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for (k, v) in &self.config.request {
            self.set_http_request_header(k, Some(v));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for (k, v) in &self.config.response {
            self.set_http_response_header(k, Some(v));
        }
        Action::Continue
    }
}
