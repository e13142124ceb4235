//! gRPC to the endpoints of an HTTP pool, for plugins' `proxy_grpc_call` and
//! `proxy_grpc_stream`: one HTTP/2 channel per endpoint, kept with the pool
//! (so a call costs a stream on a warm connection, not a handshake), a codec
//! that passes messages through as bytes (the plugin encodes them), and the
//! pool's `grpc` health check.

use bytes::{Buf, BufMut, Bytes};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Channels one pool keeps, at most: endpoints come and go with DNS, and past
/// this many the pool forgets them all and connects again on use.
pub const MAX_GRPC_CHANNELS_PER_POOL: usize = 256;

/// A pool's gRPC channels, by endpoint address; connected on first use.
#[derive(Default)]
pub struct GrpcChannels(Mutex<HashMap<String, Channel>>);

impl GrpcChannels {
    /// The channel to `addr` (`ip:port`), made on first use.
    pub fn get(&self, addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
        let mut channels = self.0.lock().expect("grpc channels lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_GRPC_CHANNELS_PER_POOL {
            channels.clear();
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("endpoint {addr}: {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Messages as bytes, both ways: what a plugin sends goes out as it wrote it,
/// what comes back reaches it unparsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `kind = "grpc"`: an endpoint is healthy when `grpc.health.v1.Health/Check`
/// for `service` answers SERVING within the timeout, on a new connection.
pub struct GrpcHealthCheck {
    /// The service asked about (empty: the server).
    pub service: String,
    /// Time one check may take, connecting included.
    pub timeout: Duration,
    /// Passes needed to re-admit.
    pub healthy_threshold: usize,
    /// Failures needed to eject.
    pub unhealthy_threshold: usize,
    /// Told of every change.
    pub observer: pingora::lb::health_check::HealthObserveCallback,
}

#[async_trait::async_trait]
impl pingora::lb::health_check::HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &pingora::lb::Backend) -> pingora::Result<()> {
        use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
        let failed = |why: String| {
            pingora::Error::explain(pingora::ErrorType::Custom("grpc health check"), why)
        };
        let ask = async {
            let channel = Endpoint::from_shared(format!("http://{}", target.addr))
                .map_err(|e| e.to_string())?
                .connect_timeout(self.timeout)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let answer = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: self.service.clone(),
                })
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
            Ok::<_, String>(answer.into_inner().status)
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Err(_) => Err(failed(format!("no answer within {:?}", self.timeout))),
            Ok(Err(why)) => Err(failed(why)),
            Ok(Ok(status)) if status == ServingStatus::Serving as i32 => Ok(()),
            Ok(Ok(status)) => Err(failed(format!("status {status}, not SERVING"))),
        }
    }

    async fn health_status_change(&self, target: &pingora::lb::Backend, healthy: bool) {
        self.observer.observe(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pool_keeps_one_channel_per_endpoint_and_at_most_the_bound() {
        let channels = GrpcChannels::default();
        let timeout = Duration::from_secs(1);
        channels.get("127.0.0.1:1", timeout).unwrap();
        channels.get("127.0.0.1:1", timeout).unwrap();
        assert_eq!(channels.0.lock().unwrap().len(), 1, "one per endpoint");
        // Endpoints that come and go with DNS: never more than the bound.
        for port in 2..(MAX_GRPC_CHANNELS_PER_POOL as u16 + 50) {
            channels.get(&format!("127.0.0.1:{port}"), timeout).unwrap();
            assert!(channels.0.lock().unwrap().len() <= MAX_GRPC_CHANNELS_PER_POOL);
        }
        assert!(channels.get("not an address", timeout).is_err());
    }
}
