//! What the gateway and a plugin's hooks say to each other: a hook's
//! [`Decision`], a plugin's [`LocalResponse`], and the HTTP calls a plugin
//! makes ([`HttpCall`], [`HttpCallResponse`]).

use std::time::Duration;

/// An answer a plugin gave instead of letting the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A hook's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next plugin and phase.
    Continue,
    /// Answer with this and stop the chain.
    Respond(LocalResponse),
    /// The plugin stopped iteration: in a body hook before the end of the body,
    /// buffer and call again with more; elsewhere, wait for its calls.
    Pause,
}

/// A `proxy_http_call` a plugin made. The gateway performs it and hands the
/// answer to [`HttpContext::on_request`](crate::HttpContext::on_request)'s caller-supplied function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the plugin got back.
    pub token: u32,
    /// The pool, by name (one of the plugin's `upstreams`).
    pub upstream: String,
    /// Headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// How long the plugin will wait.
    pub timeout: Duration,
    /// The most answer bytes to keep (the plugin's `bytes_per_host_call`); a
    /// longer answer fails the call.
    pub max_response_bytes: usize,
}

/// The answer to an [`HttpCall`]; `:status` is among the headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Headers, `:status` first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}
