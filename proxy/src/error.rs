//! The one table from gateway errors to client responses.
//!
//! Clients get a small, stable JSON body `{"error": {"message", "type", "param",
//! "code"}}`, the same vocabulary as the OpenAI-compatible API's errors; the
//! `code` never changes meaning, the message says what limit or rule applied, and no
//! internal detail (addresses, error chains) leaks. Logs get the full story.

use pingora::{Error, ErrorSource, ErrorType};

/// Everything the gateway itself answers with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request line and headers exceed `limits.max_header_bytes`.
    #[error("request headers are {size} bytes, over the limit of {limit} bytes (limits.max_header_bytes)")]
    HeadersTooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The head has more header fields than can be parsed (Pingora's bound).
    #[error("request has more than {limit} header fields")]
    TooManyHeaders {
        /// The limit.
        limit: usize,
    },
    /// The body exceeds the route's (or the global) limit.
    #[error("request body is over the limit of {limit} bytes for this route")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// No route matches the host and path.
    #[error("no route matches this host and path")]
    NoRoute,
    /// A route matches host and path but not the method.
    #[error("method not allowed here; allowed: {}", allowed.join(", "))]
    MethodNotAllowed {
        /// Methods that would be accepted.
        allowed: Vec<String>,
    },
    /// Every endpoint of the pool is ejected by health checks (or was tried already).
    #[error("no healthy upstream endpoint is available")]
    NoHealthyEndpoint,
    /// Connecting to the upstream failed (after any retries).
    #[error("the upstream could not be reached")]
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    #[error("the upstream did not respond in time")]
    UpstreamTimeout,
    /// The upstream answered with something that is not valid HTTP, or hung up.
    #[error("the upstream sent an invalid or incomplete response")]
    BadGateway,
    /// The client sent something that is not valid HTTP.
    #[error("the request is malformed")]
    BadRequest,
    /// The path or Host cannot be normalized safely (see normalize.rs).
    #[error("{0}")]
    InvalidTarget(crate::normalize::Refused),
    /// The request's body length could be read two ways (see framing.rs).
    #[error("{0}")]
    Framing(crate::framing::Refused),
    /// The request body stalled for longer than `limits.client_read_timeout_ms`
    /// (HTTP/2 bodies have no read timeout of Pingora's own).
    #[error("the request body stalled for more than {} ms (limits.client_read_timeout_ms)", limit.as_millis())]
    BodyTimeout {
        /// The timeout.
        limit: std::time::Duration,
    },
    /// A new connection did not send its first request head in time.
    #[error("the request head did not arrive within {} ms (limits.head_timeout_ms)", limit.as_millis())]
    HeadTimeout {
        /// The deadline.
        limit: std::time::Duration,
    },
    /// A request line naming an HTTP version other than 1.0 and 1.1.
    #[error("only HTTP/1.0, HTTP/1.1 and HTTP/2 are supported")]
    HttpVersion,
    /// An HTTP/1.1 request without a `Host` header (RFC 9112 §3.2).
    #[error("an HTTP/1.1 request must carry a Host header")]
    MissingHost,
    /// A route's Wasm plugin trapped or reached a limit, and fails closed.
    #[error("plugin `{plugin}` failed")]
    PluginFailed {
        /// The plugin's name on the route.
        plugin: String,
    },
    /// Every instance of a route's plugin is serving another request (or
    /// every slot of the plugin engine is: `engine_full`).
    #[error("plugin `{plugin}` is busy: {}; retry shortly", gantry_plugins::busy_reason(*.max_instances, *.engine_full))]
    PluginBusy {
        /// The plugin's name on the route.
        plugin: String,
        /// Its `max_instances`.
        max_instances: usize,
        /// The engine's slots, not the plugin's own, ran out.
        engine_full: bool,
    },
    /// A route with `auth = "keys"` got a request without a key.
    #[error("no API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    MissingApiKey,
    /// A route with `auth = "keys"` got a key that is not configured.
    #[error("incorrect API key provided")]
    InvalidApiKey,
    /// A configured key that may not use this route (`[[keys]].routes`).
    #[error("this API key may not use route `{route}`")]
    KeyNotAllowed {
        /// The route's name.
        route: String,
    },
    /// The API key's rate limit (see [`crate::tenants::limiter`]).
    #[error("{message}")]
    RateLimited {
        /// What was exceeded, naming the limit.
        message: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// The shared key store (Redis) cannot be reached and the fleet is set
    /// to refuse rather than count alone (`on_unreachable = "closed"`).
    #[error(
        "this API key's limits are counted in a store that cannot be reached now; retry shortly"
    )]
    KeyStoreUnreachable,
    /// A bug or resource failure inside the gateway.
    #[error("internal gateway error")]
    Internal,
}

impl GatewayError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Framing(f) => f.status(),
            GatewayError::BadRequest
            | GatewayError::InvalidTarget(_)
            | GatewayError::MissingHost => 400,
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => 401,
            GatewayError::KeyNotAllowed { .. } => 403,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::NoRoute => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::HeadTimeout { .. } | GatewayError::BodyTimeout { .. } => 408,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders { .. } => 431,
            GatewayError::Internal | GatewayError::PluginFailed { .. } => 500,
            GatewayError::UpstreamUnreachable | GatewayError::BadGateway => 502,
            GatewayError::NoHealthyEndpoint
            | GatewayError::PluginBusy { .. }
            | GatewayError::KeyStoreUnreachable => 503,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::HttpVersion => 505,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders { .. } => {
                "headers_too_large"
            }
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NoRoute => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::NoHealthyEndpoint => "no_healthy_upstream",
            GatewayError::UpstreamUnreachable => "upstream_unreachable",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::BadGateway => "bad_gateway",
            GatewayError::BadRequest => "bad_request",
            GatewayError::InvalidTarget(crate::normalize::Refused::BadHost) => "invalid_host",
            GatewayError::InvalidTarget(crate::normalize::Refused::Unrepresentable) => {
                "bad_request"
            }
            GatewayError::InvalidTarget(_) => "invalid_path",
            GatewayError::MissingHost => "missing_host",
            GatewayError::HttpVersion => "http_version_not_supported",
            GatewayError::HeadTimeout { .. } | GatewayError::BodyTimeout { .. } => {
                "request_timeout"
            }
            GatewayError::Framing(crate::framing::Refused::UnsupportedTransferEncoding) => {
                "unsupported_transfer_encoding"
            }
            GatewayError::Framing(_) => "bad_framing",
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => "invalid_api_key",
            GatewayError::KeyNotAllowed { .. } => "key_not_allowed",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
            GatewayError::Internal => "internal_error",
            GatewayError::PluginFailed { .. } => "plugin_failed",
            GatewayError::PluginBusy { .. } => "plugin_busy",
            GatewayError::KeyStoreUnreachable => "key_store_unreachable",
        }
    }

    /// Error family, as in OpenAI error bodies: `invalid_request_error` (the
    /// client's fault) or `server_error`.
    pub fn kind(&self) -> &'static str {
        if self.status() < 500 {
            "invalid_request_error"
        } else {
            "server_error"
        }
    }

    /// The `gantry_limit_rejections_total` label when a configured limit refused
    /// the request.
    pub fn limit(&self) -> Option<crate::metrics::Refusal> {
        use crate::metrics::Refusal;
        match self {
            GatewayError::HeadersTooLarge { .. } => Some(Refusal::HeaderBytes),
            GatewayError::TooManyHeaders { .. } => Some(Refusal::HeaderFields),
            GatewayError::HeadTimeout { .. } => Some(Refusal::HeadTimeout),
            GatewayError::BodyTooLarge { .. } => Some(Refusal::BodyBytes),
            _ => None,
        }
    }

    /// Whether the client, not the gateway or upstream, is at fault.
    pub fn is_client_error(&self) -> bool {
        self.status() < 500
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "error": {"message": self.to_string(), "type": self.kind(), "param": null, "code": self.code()}
        }))
        .expect("serializing a JSON value cannot fail")
    }

    /// Classify a Pingora error that no phase of ours recorded.
    pub fn from_pingora(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        Some(match (e.esource(), e.etype()) {
            (
                ErrorSource::Upstream,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | SocketError
                | TLSHandshakeFailure | TLSHandshakeTimedout | BindError | ConnectProxyFailure,
            ) => GatewayError::UpstreamUnreachable,
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => GatewayError::UpstreamTimeout,
            (ErrorSource::Upstream, _) => GatewayError::BadGateway,
            // The client went away or stalled: nobody to answer.
            (
                ErrorSource::Downstream,
                ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
            ) => return None,
            (ErrorSource::Downstream, _) => GatewayError::BadRequest,
            (ErrorSource::Internal | ErrorSource::Unset, _) => GatewayError::Internal,
        })
    }

    /// A Pingora error carrying this error's status, for returning from a phase.
    pub fn into_pingora(self) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(self.status()), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_small_stable_json() {
        let e = GatewayError::HeadersTooLarge {
            size: 70000,
            limit: 65536,
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "headers_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("65536"));
        assert_eq!(e.status(), 431);
    }

    #[test]
    fn upstream_timeouts_map_to_504_and_connect_failures_to_502() {
        let t = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(
            GatewayError::from_pingora(&t),
            Some(GatewayError::UpstreamTimeout)
        );
        let c = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(GatewayError::from_pingora(&c).unwrap().status(), 502);
        let gone = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(GatewayError::from_pingora(&gone), None);
    }
}
