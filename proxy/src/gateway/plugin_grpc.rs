//! A plugin's `proxy_grpc_call` and `proxy_grpc_stream`: to an endpoint of an
//! HTTP pool (one of the plugin's `upstreams`) over HTTP/2, on the pool's
//! channel to that endpoint; bounded by the call's timeout (a stream's whole
//! life) and the plugin's `bytes_per_host_call` per message, counted per
//! plugin, upstream and result. What it answers is a sequence of
//! [`GrpcEvent`]s (see `gantry_plugins::Callouts`).

use super::{ConfigVersion, Gateway};
use crate::metrics::{CallResult, Metrics};
use crate::upstream::grpc::BytesCodec;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use gantry_plugins::{GrpcCall, GrpcEvent, GrpcMessages, GrpcStatus};
use http::uri::PathAndQuery;
use std::sync::Arc;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

impl Gateway {
    /// Perform a plugin's gRPC call or stream: a unary call answers its message
    /// or its failure, a stream its initial metadata, messages, trailing
    /// metadata and close. Dropping the events cancels it.
    pub(super) fn grpc_call(
        &self,
        live: &ConfigVersion,
        call: GrpcCall,
        plugin: &gantry_plugins::Plugin,
        request_id: &str,
    ) -> BoxStream<'static, GrpcEvent> {
        let count = Counted {
            metrics: self.metrics.clone(),
            plugin: plugin.name.clone(),
            upstream: call.upstream.clone(),
            request_id: request_id.to_string(),
            unary: matches!(call.messages, GrpcMessages::Unary(_)),
        };
        let events = match channel(live, &call.upstream) {
            Ok(channel) => events(channel, call),
            Err(why) => stream::iter([GrpcEvent::Close(GrpcStatus::unavailable(why))]).boxed(),
        };
        events.inspect(move |event| count.event(event)).boxed()
    }
}

/// The channel to a healthy endpoint of the pool named `upstream`.
fn channel(live: &ConfigVersion, upstream: &str) -> Result<Channel, String> {
    let pool = live
        .http_pool(upstream)
        .ok_or_else(|| format!("no HTTP pool named `{upstream}` (gRPC calls go to HTTP pools)"))?;
    if pool.config.tls {
        return Err(format!(
            "pool `{upstream}` uses TLS; plugins' gRPC calls speak cleartext HTTP/2 only"
        ));
    }
    let backend = pool
        .pick(b"", &[])
        .ok_or_else(|| format!("pool `{upstream}` has no healthy endpoint"))?;
    pool.grpc
        .get(&backend.addr.to_string(), pool.config.connect_timeout)
}

/// The events of `call` on `channel`.
fn events(channel: Channel, call: GrpcCall) -> BoxStream<'static, GrpcEvent> {
    let path = match PathAndQuery::try_from(call.path()) {
        Ok(path) => path,
        Err(e) => return closed(tonic::Status::invalid_argument(format!("path: {e}"))),
    };
    let metadata = match metadata(&call.metadata) {
        Ok(m) => m,
        Err(status) => return closed(status),
    };
    let mut grpc =
        tonic::client::Grpc::new(channel).max_decoding_message_size(call.max_message_bytes);
    let timeout = call.timeout;
    match call.messages {
        GrpcMessages::Unary(message) => {
            let answer = async move {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(message);
                *request.metadata_mut() = metadata;
                grpc.unary(request, path, BytesCodec).await
            };
            stream::once(async move {
                match tokio::time::timeout(timeout, answer).await {
                    Err(_) => GrpcEvent::Close(deadline(timeout)),
                    Ok(Ok(response)) => GrpcEvent::Message(response.into_inner()),
                    Ok(Err(status)) => GrpcEvent::Close(status_of(&status)),
                }
            })
            .boxed()
        }
        GrpcMessages::Stream(queue) => {
            let outgoing = stream::unfold(queue, |mut queue| async move {
                queue.recv().await.map(|m| (m, queue))
            });
            let opening = async move {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let mut request = tonic::Request::new(outgoing);
                *request.metadata_mut() = metadata;
                grpc.streaming(request, path, BytesCodec).await
            };
            let ends_at = tokio::time::Instant::now() + timeout;
            stream::unfold(Phase::Opening(Box::pin(opening)), move |phase| async move {
                tokio::time::timeout_at(ends_at, phase.next())
                    .await
                    .unwrap_or_else(|_| Some((GrpcEvent::Close(deadline(timeout)), Phase::Done)))
            })
            .boxed()
        }
    }
}

type Opening = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tonic::Response<tonic::Streaming<Bytes>>, tonic::Status>,
            > + Send,
    >,
>;

/// Where a stream is: opening, open, its trailers given, ended.
enum Phase {
    Opening(Opening),
    Open(Box<tonic::Streaming<Bytes>>),
    Closing,
    Done,
}

impl Phase {
    /// The next event, and where that leaves the stream.
    async fn next(self) -> Option<(GrpcEvent, Phase)> {
        let close = |s: tonic::Status| Some((GrpcEvent::Close(status_of(&s)), Phase::Done));
        match self {
            Phase::Opening(opening) => match opening.await {
                Ok(response) => {
                    let (metadata, body, _) = response.into_parts();
                    Some((
                        GrpcEvent::InitialMetadata(pairs(metadata)),
                        Phase::Open(Box::new(body)),
                    ))
                }
                Err(s) => close(s),
            },
            Phase::Open(mut body) => match body.message().await {
                Ok(Some(message)) => Some((GrpcEvent::Message(message), Phase::Open(body))),
                Ok(None) => match body.trailers().await {
                    Ok(trailers) => Some((
                        GrpcEvent::TrailingMetadata(trailers.map(pairs).unwrap_or_default()),
                        Phase::Closing,
                    )),
                    Err(s) => close(s),
                },
                Err(s) => close(s),
            },
            Phase::Closing => Some((GrpcEvent::Close(GrpcStatus::ok()), Phase::Done)),
            Phase::Done => None,
        }
    }
}

/// A call that ends before it starts.
fn closed(status: tonic::Status) -> BoxStream<'static, GrpcEvent> {
    stream::iter([GrpcEvent::Close(status_of(&status))]).boxed()
}

fn status_of(status: &tonic::Status) -> GrpcStatus {
    GrpcStatus {
        code: status.code() as u32,
        message: status.message().to_string(),
    }
}

fn deadline(timeout: std::time::Duration) -> GrpcStatus {
    GrpcStatus {
        code: tonic::Code::DeadlineExceeded as u32,
        message: format!("no answer within {timeout:?}"),
    }
}

/// The plugin's initial metadata as a request's (pseudo-headers left out).
fn metadata(pairs: &[(String, String)]) -> Result<MetadataMap, tonic::Status> {
    let mut headers = http::HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs.iter().filter(|(k, _)| !k.starts_with(':')) {
        let bad =
            || tonic::Status::invalid_argument(format!("metadata `{name}` is not a valid header"));
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(MetadataMap::from_headers(headers))
}

/// Metadata as the plugin reads it: (name, value), values as text.
fn pairs(metadata: MetadataMap) -> Vec<(String, String)> {
    metadata
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Counts a call when it ends, and logs its failure.
struct Counted {
    metrics: Arc<Metrics>,
    plugin: String,
    upstream: String,
    request_id: String,
    unary: bool,
}

impl Counted {
    fn event(&self, event: &GrpcEvent) {
        let result = match event {
            // A unary call's answer; a stream's messages end with its close.
            GrpcEvent::Message(_) if self.unary => CallResult::Ok,
            GrpcEvent::Close(s) if s.code == 0 => CallResult::Ok,
            GrpcEvent::Close(s) => {
                tracing::warn!(request_id = %self.request_id, plugin = %self.plugin, upstream = %self.upstream, code = s.code, error = %s.message, "plugin grpc call failed");
                CallResult::Failed
            }
            _ => return,
        };
        self.metrics
            .plugin_grpc_call(&self.plugin, &self.upstream, result);
    }
}
