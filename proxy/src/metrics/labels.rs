//! The vocabulary of the metrics' fixed labels: one enum per label, each value
//! written by `as_str()`. Plugin limits use [`gantry_plugins::Limit`].

/// Why work was refused: the `limit` label of `gantry_limit_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_header_bytes`.
    HeaderBytes,
    /// More header fields than Pingora parses (256, fixed).
    HeaderFields,
    /// A route's `max_body_bytes`.
    BodyBytes,
    /// `limits.max_connections`.
    Connections,
    /// `limits.max_connections_per_client`.
    ClientConnections,
    /// `limits.head_timeout_ms` (a head, or a TLS handshake).
    HeadTimeout,
    /// HTTP/2 SETTINGS or PING frames past their rate.
    H2ControlFrames,
    /// An inference pool's `max_messages`.
    Messages,
    /// An inference pool's `max_input_bytes`.
    InputBytes,
    /// An inference pool's `max_embedding_inputs`.
    EmbeddingInputs,
    /// An inference pool's `max_inflight`.
    InferenceInflight,
}

impl Refusal {
    /// Every refusal, in label order.
    pub const ALL: [Refusal; 11] = [
        Refusal::HeaderBytes,
        Refusal::HeaderFields,
        Refusal::BodyBytes,
        Refusal::Connections,
        Refusal::ClientConnections,
        Refusal::HeadTimeout,
        Refusal::H2ControlFrames,
        Refusal::Messages,
        Refusal::InputBytes,
        Refusal::EmbeddingInputs,
        Refusal::InferenceInflight,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::HeaderBytes => "header_bytes",
            Refusal::HeaderFields => "header_fields",
            Refusal::BodyBytes => "body_bytes",
            Refusal::Connections => "connections",
            Refusal::ClientConnections => "client_connections",
            Refusal::HeadTimeout => "head_timeout",
            Refusal::H2ControlFrames => "h2_control_frames",
            Refusal::Messages => "messages",
            Refusal::InputBytes => "input_bytes",
            Refusal::EmbeddingInputs => "embedding_inputs",
            Refusal::InferenceInflight => "inference_inflight",
        }
    }
}

/// Why a route with `auth = "keys"` refused a request: the `reason` label of
/// `gantry_auth_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No key.
    Missing,
    /// A key that is not configured.
    Unknown,
    /// A key not allowed on the route.
    Route,
    /// A key not allowed to use the requested model.
    Model,
}

impl Denial {
    /// Every reason, in label order.
    pub const ALL: [Denial; 4] = [
        Denial::Missing,
        Denial::Unknown,
        Denial::Route,
        Denial::Model,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Missing => "missing",
            Denial::Unknown => "unknown",
            Denial::Route => "route",
            Denial::Model => "model",
        }
    }
}

/// How a TLS handshake ended: the `result` label of `gantry_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Completed.
    Ok,
    /// Refused or broken by the client.
    Failed,
    /// Not done by the head deadline.
    Timeout,
}

impl Handshake {
    /// Every result, in label order.
    pub const ALL: [Handshake; 3] = [Handshake::Ok, Handshake::Failed, Handshake::Timeout];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::Timeout => "timeout",
        }
    }
}

/// A plugin hook: the `hook` label of `gantry_plugin_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The request's headers and body.
    Request,
    /// The response headers.
    ResponseHeaders,
    /// The response body.
    ResponseBody,
    /// A timer tick (`proxy_on_tick`), outside any request.
    Tick,
    /// A shared queue's delivery (`proxy_on_queue_ready`), outside any request.
    QueueReady,
}

impl Hook {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Request => "request",
            Hook::ResponseHeaders => "response_headers",
            Hook::ResponseBody => "response_body",
            Hook::Tick => "tick",
            Hook::QueueReady => "queue_ready",
        }
    }
}

/// How a plugin hook call ended: the `outcome` label of
/// `gantry_plugin_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOutcome {
    /// Let the request or response go on.
    Continue,
    /// Answered locally.
    Respond,
    /// Held the body for more.
    Pause,
    /// Trapped, broke a limit, or misused the ABI.
    Error,
    /// Left out while unhealthy.
    Unhealthy,
    /// Every instance in use.
    Busy,
    /// Closed the stream (`proxy_close_stream`): no answer, or no more of it.
    Close,
}

impl HookOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HookOutcome::Continue => "continue",
            HookOutcome::Respond => "respond",
            HookOutcome::Pause => "pause",
            HookOutcome::Error => "error",
            HookOutcome::Unhealthy => "unhealthy",
            HookOutcome::Busy => "busy",
            HookOutcome::Close => "close",
        }
    }
}

/// Which way tokens went: the `direction` label of `gantry_inference_tokens_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The prompt.
    In,
    /// Generated.
    Out,
    /// Prompt tokens the backend reused from its prefix cache (part of `in`).
    Cached,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Cached => "cached",
        }
    }
}

/// How a plugin's `proxy_http_call` ended: the `result` label of
/// `gantry_plugin_http_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// Answered within the limits.
    Ok,
    /// No such pool, unreachable, timed out, or the answer was too big.
    Failed,
}

impl CallResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Failed => "failed",
        }
    }
}

/// How a plugin hot reload ended: the `result` label of
/// `gantry_plugin_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The new version serves.
    Ok,
    /// Refused; the old version keeps serving.
    Error,
}

impl ReloadResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Error => "error",
        }
    }
}

/// How a configuration reload ended: the `result` label of
/// `gantry_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigReload {
    /// The new configuration serves.
    Ok,
    /// The file could not be read or is not valid; the old one keeps serving.
    Invalid,
    /// It changes what only a restart or a binary upgrade can (listeners,
    /// threads, keys…); nothing was applied.
    NeedsRestart,
    /// Valid, but could not be built (a pool's names did not resolve, a
    /// plugin did not load); the old one keeps serving.
    Failed,
}

impl ConfigReload {
    /// Every result, in label order.
    pub const ALL: [ConfigReload; 4] = [
        ConfigReload::Ok,
        ConfigReload::Invalid,
        ConfigReload::NeedsRestart,
        ConfigReload::Failed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigReload::Ok => "ok",
            ConfigReload::Invalid => "invalid",
            ConfigReload::NeedsRestart => "needs_restart",
            ConfigReload::Failed => "failed",
        }
    }
}
