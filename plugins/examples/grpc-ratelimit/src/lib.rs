//! `grpc-ratelimit`: before a request proceeds, ask a rate-limit service over
//! gRPC, in the shape of Envoy's `envoy.service.ratelimit.v3.RateLimitService`
//! (`ShouldRateLimit`; lyft/ratelimit and its kin serve it): one descriptor
//! built from request headers, in the configured `domain`. `OVER_LIMIT`
//! answers `429`; `OK` lets the request through. When the service cannot
//! answer (down, too slow, a bad answer), `failure_mode_deny` decides: `true`
//! answers `500`, `false` (the default, as Envoy's) lets the request through.
//!
//! ```toml
//! [[pools]]
//! name = "ratelimit"
//! endpoints = ["127.0.0.1:8081"]
//!
//! [[routes.plugins]]
//! name = "grpc-ratelimit"
//! file = "plugins/examples/target/wasm32-unknown-unknown/release/grpc_ratelimit.wasm"
//! upstreams = ["ratelimit"]
//! configuration = { upstream = "ratelimit", domain = "gantry", entries = [{ key = "api_key", header = "x-api-key" }] }
//! ```
//!
//! Written with the public `proxy-wasm` SDK only (`dispatch_grpc_call`,
//! `on_grpc_call_response`): the same module runs in Envoy, where `upstream`
//! names a cluster.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use std::rc::Rc;
use std::time::Duration;

const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
const METHOD: &str = "ShouldRateLimit";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The pool (Envoy: the cluster) serving the rate-limit service.
    upstream: String,
    /// The rate-limit domain.
    domain: String,
    /// The descriptor's entries: each a key and the request header whose value
    /// it takes; a request without one of the headers is not asked about.
    entries: Vec<Entry>,
    /// How long to wait for the service. Default 100 ms.
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    /// Answer 500 when the service cannot decide (default: let the request through).
    #[serde(default)]
    failure_mode_deny: bool,
}

fn default_timeout_ms() -> u64 {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    key: String,
    header: String,
}

/// `envoy.service.ratelimit.v3.RateLimitRequest` (the fields used here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse` (its overall code).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// `Code`: 0 UNKNOWN, 1 OK, 2 OVER_LIMIT.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
}

/// `RateLimitResponse.Code.OVER_LIMIT`.
const OVER_LIMIT: i32 = 2;

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
                let message = format!("grpc-ratelimit: bad configuration: {e}");
                proxy_wasm::hostcalls::log(LogLevel::Error, &message).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Ask {
            config: self.config.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Ask {
    config: Rc<Config>,
}

impl Ask {
    /// The service could not decide.
    fn failed(&self, why: &str) {
        proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("grpc-ratelimit: {why}")).ok();
        if self.config.failure_mode_deny {
            self.send_http_response(
                500,
                vec![("content-type", "application/json")],
                Some(br#"{"error": {"message": "the rate-limit service did not answer (grpc-ratelimit failure_mode_deny)", "type": "server_error", "code": "ratelimit_unavailable"}}"#),
            );
        } else {
            self.resume_http_request();
        }
    }
}

impl Context for Ask {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, size: usize) {
        if status != 0 {
            let (_, message) = self.get_grpc_status();
            return self.failed(&format!(
                "the service answered gRPC status {status}: {}",
                message.unwrap_or_default()
            ));
        }
        let body = self
            .get_grpc_call_response_body(0, size)
            .unwrap_or_default();
        match <RateLimitResponse as prost::Message>::decode(body.as_slice()) {
            Ok(r) if r.overall_code == OVER_LIMIT => self.send_http_response(
                429,
                vec![
                    ("content-type", "application/json"),
                    ("x-envoy-ratelimited", "true"),
                ],
                Some(br#"{"error": {"message": "over the rate limit (grpc-ratelimit)", "type": "rate_limit_error", "code": "rate_limited"}}"#),
            ),
            Ok(_) => self.resume_http_request(),
            Err(e) => self.failed(&format!("an answer that does not decode: {e}")),
        }
    }
}

impl HttpContext for Ask {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let mut entries = Vec::with_capacity(self.config.entries.len());
        for e in &self.config.entries {
            let Some(value) = self.get_http_request_header(&e.header) else {
                return Action::Continue;
            };
            entries.push(DescriptorEntry {
                key: e.key.clone(),
                value,
            });
        }
        let request = RateLimitRequest {
            domain: self.config.domain.clone(),
            descriptors: vec![RateLimitDescriptor { entries }],
            hits_addend: 1,
        };
        let message = prost::Message::encode_to_vec(&request);
        match self.dispatch_grpc_call(
            &self.config.upstream,
            SERVICE,
            METHOD,
            Vec::new(),
            Some(&message),
            Duration::from_millis(self.config.timeout_ms),
        ) {
            Ok(_) => Action::Pause,
            Err(status) if self.config.failure_mode_deny => {
                self.failed(&format!("the call could not start: {status:?}"));
                Action::Pause
            }
            Err(status) => {
                let why = format!("grpc-ratelimit: the call could not start: {status:?}");
                proxy_wasm::hostcalls::log(LogLevel::Warn, &why).ok();
                Action::Continue
            }
        }
    }
}
