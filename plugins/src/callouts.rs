//! What a plugin asks the gateway to do outside the request: the HTTP calls
//! ([`HttpCall`](crate::HttpCall)) and the gRPC calls and streams
//! ([`GrpcCall`]) its request phase makes, performed through [`Callouts`].
//!
//! A gRPC call or stream answers with a sequence of [`GrpcEvent`]s, each handed
//! to the plugin's callback as it comes: a unary call (`proxy_grpc_call`) with
//! exactly one, its answer ([`GrpcEvent::Message`], then no close, as Envoy
//! does) or its failure ([`GrpcEvent::Close`]); a stream (`proxy_grpc_stream`)
//! with its initial metadata, its messages, its trailing metadata and its
//! close, in that order, ending at the close.

use crate::hooks::{HttpCall, HttpCallResponse};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use std::time::Duration;

/// Messages one gRPC stream may have waiting to be sent: a `proxy_grpc_send`
/// past it traps (limit `grpc_messages`).
pub const GRPC_SEND_QUEUE_MESSAGES: usize = 16;

/// A `proxy_grpc_call` or `proxy_grpc_stream` a plugin made.
#[derive(Debug)]
pub struct GrpcCall {
    /// The token the plugin got back.
    pub token: u32,
    /// The pool, by name (one of the plugin's `upstreams`).
    pub upstream: String,
    /// Fully qualified service, e.g. `envoy.service.ratelimit.v3.RateLimitService`.
    pub service: String,
    /// Method, e.g. `ShouldRateLimit`.
    pub method: String,
    /// Initial metadata (lower-case names).
    pub metadata: Vec<(String, String)>,
    /// What is sent.
    pub messages: GrpcMessages,
    /// How long the call (a unary call) or the whole stream may last.
    pub timeout: Duration,
    /// The largest message to accept (the plugin's `bytes_per_host_call`); a
    /// larger one fails the call with `OUT_OF_RANGE`.
    pub max_message_bytes: usize,
}

impl GrpcCall {
    /// The request path: `/{service}/{method}`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// What a [`GrpcCall`] sends.
#[derive(Debug)]
pub enum GrpcMessages {
    /// `proxy_grpc_call`: one message.
    Unary(Bytes),
    /// `proxy_grpc_stream`: the messages `proxy_grpc_send` queues, at most
    /// [`GRPC_SEND_QUEUE_MESSAGES`] waiting; the channel closes (the sending
    /// half of the stream ends) on `end_stream`, `proxy_grpc_close`, or the
    /// end of the request phase.
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

/// A gRPC status: a code (0 is OK; 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, ...)
/// and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    /// The gRPC status code.
    pub code: u32,
    /// Its message.
    pub message: String,
}

impl GrpcStatus {
    /// OK, with no message.
    pub fn ok() -> Self {
        GrpcStatus {
            code: 0,
            message: String::new(),
        }
    }

    /// UNAVAILABLE (14), saying why.
    pub fn unavailable(why: impl Into<String>) -> Self {
        GrpcStatus {
            code: 14,
            message: why.into(),
        }
    }
}

/// One thing a gRPC call or stream answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcEvent {
    /// The stream's initial metadata (`proxy_on_grpc_receive_initial_metadata`).
    InitialMetadata(Vec<(String, String)>),
    /// A message (`proxy_on_grpc_receive`).
    Message(Bytes),
    /// The stream's trailing metadata (`proxy_on_grpc_receive_trailing_metadata`).
    TrailingMetadata(Vec<(String, String)>),
    /// The end (`proxy_on_grpc_close`): the last event of a stream, or a
    /// unary call's failure.
    Close(GrpcStatus),
}

/// Performs a plugin's calls for its request phase. `'a`: what the calls may
/// borrow (the gateway's live configuration, the request id).
pub trait Callouts<'a>: Send {
    /// Perform an HTTP call: its answer, or `None` when it failed or timed out.
    fn http(&mut self, call: HttpCall) -> BoxFuture<'a, Option<HttpCallResponse>>;
    /// Perform a gRPC call or stream: its events, in order (see the module's
    /// documentation). Dropping the stream cancels the call.
    fn grpc(&mut self, call: GrpcCall) -> BoxStream<'a, GrpcEvent>;
}

/// [`Callouts`] that perform HTTP calls with `perform` and answer every gRPC
/// call UNAVAILABLE: for hosts (and tests) with no gRPC upstreams.
pub fn http_only<'a, F, Fut>(perform: F) -> HttpOnly<F>
where
    F: FnMut(HttpCall) -> Fut + Send,
    Fut: std::future::Future<Output = Option<HttpCallResponse>> + Send + 'a,
{
    HttpOnly(perform)
}

/// See [`http_only`].
pub struct HttpOnly<F>(F);

impl<'a, F, Fut> Callouts<'a> for HttpOnly<F>
where
    F: FnMut(HttpCall) -> Fut + Send,
    Fut: std::future::Future<Output = Option<HttpCallResponse>> + Send + 'a,
{
    fn http(&mut self, call: HttpCall) -> BoxFuture<'a, Option<HttpCallResponse>> {
        Box::pin((self.0)(call))
    }

    fn grpc(&mut self, _call: GrpcCall) -> BoxStream<'a, GrpcEvent> {
        Box::pin(futures_util::stream::iter([GrpcEvent::Close(
            GrpcStatus::unavailable("this host performs no gRPC calls"),
        )]))
    }
}
