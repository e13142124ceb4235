//! **A test and benchmark fixture**: a rate-limit service in the shape of
//! Envoy's `envoy.service.ratelimit.v3.RateLimitService` (`ShouldRateLimit`),
//! which rate-limit plugins ask over gRPC. It keeps no counts: a request is
//! `OVER_LIMIT` when one of its descriptors' entries has a value starting with
//! [`OVER_LIMIT_PREFIX`], so a test knows every decision in advance. It also
//! serves `grpc.health.v1` (SERVING), for pools' `grpc` health checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};

/// A descriptor value starting with this is over the limit.
pub const OVER_LIMIT_PREFIX: &str = "over";

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
    /// 0 UNKNOWN, 1 OK, 2 OVER_LIMIT.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
}

/// A running rate-limit service, on a runtime of its own.
pub struct RateLimitFixture {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Requests it decided.
    pub decided: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RateLimitFixture {
    /// Start on `addr` (port 0: an ephemeral one).
    pub fn start(addr: SocketAddr) -> RateLimitFixture {
        let (runtime, incoming, addr) = crate::own_runtime(addr, 1, "fixture-ratelimit");
        let decided = Arc::new(AtomicU64::new(0));
        let service = RateLimitServer(decided.clone());
        runtime.spawn(async move {
            let (health, health_service) = tonic_health::server::health_reporter();
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        RateLimitFixture {
            addr,
            decided,
            runtime: Some(runtime),
        }
    }

    /// Stop answering: every connection and task ends at once.
    pub fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RateLimitFixture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The decision for `request`.
pub fn decide(request: &RateLimitRequest) -> RateLimitResponse {
    let over = request
        .descriptors
        .iter()
        .flat_map(|d| &d.entries)
        .any(|e| e.value.starts_with(OVER_LIMIT_PREFIX));
    RateLimitResponse {
        overall_code: if over { 2 } else { 1 },
    }
}

#[derive(Clone)]
struct RateLimitServer(Arc<AtomicU64>);

impl tonic::server::NamedService for RateLimitServer {
    const NAME: &'static str = "envoy.service.ratelimit.v3.RateLimitService";
}

struct ShouldRateLimit(Arc<AtomicU64>);

impl tonic::server::UnaryService<RateLimitRequest> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<tonic::Response<RateLimitResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<RateLimitRequest>) -> Self::Future {
        self.0.fetch_add(1, Ordering::Relaxed);
        let answer = decide(request.get_ref());
        Box::pin(async move { Ok(tonic::Response::new(answer)) })
    }
}

impl<B> Service<http::Request<B>> for RateLimitServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let decided = self.0.clone();
        Box::pin(async move {
            if request.uri().path()
                != "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
            {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(ShouldRateLimit(decided), request).await)
        })
    }
}
