//! `local-ratelimit`: at most `requests_per_window` requests per `window_ms`
//! through this plugin (on one gateway); more get `429` with a JSON error
//! naming the limit. The count lives in the plugin's shared data; a timer
//! (`proxy_on_tick`, every `window_ms`) starts each new window.
//!
//! ```toml
//! [[routes.plugins]]
//! name = "local-ratelimit"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/local_ratelimit.wasm"
//! configuration = { requests_per_window = 100, window_ms = 1000 }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only: the same module runs in
//! Envoy (there each worker's VM ticks; they all reset the same count).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use serde::Deserialize;
use std::time::Duration;

/// The shared-data key of the current window's count.
const COUNT: &str = "local-ratelimit.count";
/// Tries of a compare-and-swap before a request is let through uncounted.
const CAS_TRIES: usize = 8;

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct Config {
    requests_per_window: u64,
    window_ms: u64,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match serde_json::from_slice::<Config>(&bytes) {
            Ok(c) if c.window_ms > 0 => c,
            Ok(_) => {
                proxy_wasm::hostcalls::log(
                    LogLevel::Error,
                    "local-ratelimit: window_ms must be at least 1",
                )
                .ok();
                return false;
            }
            Err(e) => {
                let message = format!("local-ratelimit: bad configuration: {e}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                return false;
            }
        };
        self.config = Some(config);
        self.set_tick_period(Duration::from_millis(config.window_ms));
        true
    }

    /// A new window: the count starts again.
    fn on_tick(&mut self) {
        self.set_shared_data(COUNT, Some(&0u64.to_le_bytes()), None)
            .ok();
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Limit {
            config: self.config?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limit {
    config: Config,
}

impl Context for Limit {}

impl Limit {
    /// Count this request in the window; `false` when the window is full.
    fn admit(&self) -> bool {
        for _ in 0..CAS_TRIES {
            let (bytes, cas) = self.get_shared_data(COUNT);
            let count = bytes
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            if count >= self.config.requests_per_window {
                return false;
            }
            let next = (count + 1).to_le_bytes();
            match self.set_shared_data(COUNT, Some(&next), cas) {
                Ok(()) => return true,
                Err(Status::CasMismatch) => continue,
                Err(_) => return true,
            }
        }
        true
    }
}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.admit() {
            return Action::Continue;
        }
        let body = format!(
            r#"{{"error": {{"message": "more than {} requests in {} ms (local-ratelimit requests_per_window)", "type": "rate_limit_error", "code": "rate_limited"}}}}"#,
            self.config.requests_per_window, self.config.window_ms
        );
        let retry = ((self.config.window_ms + 999) / 1000).to_string();
        self.send_http_response(
            429,
            vec![
                ("content-type", "application/json"),
                ("retry-after", &retry),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
