//! The connection as Pingora reads it after the front door: the bytes the
//! front door already read come first ([`Replay`]), and on HTTP/2 connections
//! the client's frames are counted as they go by ([`FloodGuard`]).

use super::{H2_PREFACE, MAX_CONTROL_FRAMES_PER_SECOND};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose first bytes were already read: they are read again
/// first, then the socket. Everything else is the socket's.
#[derive(Debug)]
pub struct Replay {
    prefix: BytesMut,
    at: usize,
    inner: Stream,
    /// On HTTP/2 connections: counts the client's control frames.
    guard: Option<FloodGuard>,
}

impl Replay {
    pub(super) fn new(prefix: BytesMut, inner: Stream, guard: Option<FloodGuard>) -> Self {
        Replay {
            prefix,
            at: 0,
            inner,
            guard,
        }
    }
}

/// Reads HTTP/2 frame headers as the bytes go by (RFC 9113 §4.1) and counts
/// SETTINGS and PING frames that are not ACKs, per second.
#[derive(Debug)]
pub(super) struct FloodGuard {
    /// Bytes to pass over before the next frame header (preface, payloads).
    skip: usize,
    /// The frame header read so far.
    header: Vec<u8>,
    window_started: Instant,
    in_window: u32,
    tripped: prometheus::IntCounter,
}

impl FloodGuard {
    /// A counter for one connection (`preface`: the client's bytes start with
    /// the preface, not with a frame); `tripped` counts connections ended.
    pub(super) fn new(preface: bool, tripped: prometheus::IntCounter) -> Self {
        FloodGuard {
            skip: if preface { H2_PREFACE.len() } else { 0 },
            header: Vec::with_capacity(9),
            window_started: Instant::now(),
            in_window: 0,
            tripped,
        }
    }

    /// Account for `bytes` read from the client; false once the client sent
    /// too many control frames.
    fn saw(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < 9 {
                break;
            }
            let h = std::mem::take(&mut self.header);
            let length = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, ack) = (h[3], h[4] & 0x1 != 0);
            self.skip = length;
            // 0x4 SETTINGS, 0x6 PING.
            if (kind == 0x4 || kind == 0x6) && !ack && !self.count() {
                self.tripped.inc();
                return false;
            }
        }
        true
    }

    fn count(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_started) >= Duration::from_secs(1) {
            self.window_started = now;
            self.in_window = 0;
        }
        self.in_window += 1;
        self.in_window <= MAX_CONTROL_FRAMES_PER_SECOND
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = BytesMut::new();
                self.at = 0;
            }
        } else {
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        let this = &mut *self;
        if let Some(guard) = this.guard.as_mut() {
            if !guard.saw(&buf.filled()[before..]) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "HTTP/2 control-frame flood",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Replay {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Replay {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Replay {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Replay {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Replay {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Replay {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Replay {
    /// Pingora's h2c probe: answered from the bytes already read. When fewer
    /// than asked for were read, the front door already knows they are not the
    /// preface; the probe gets them followed by zeros, which is not it either.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        let have = &self.prefix[self.at..];
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        buf[n..].fill(0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> FloodGuard {
        FloodGuard::new(true, prometheus::IntCounter::new("t", "t").unwrap())
    }

    /// A frame: 9-byte header and payload.
    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn control_frames_are_counted_across_reads_and_payloads_skipped() {
        let mut g = guard();
        let mut bytes = H2_PREFACE.to_vec();
        // DATA whose payload looks like SETTINGS headers must not count.
        let fake = frame(0x4, 0, &[]).repeat(50);
        bytes.extend(frame(0x0, 0, &fake));
        for _ in 0..MAX_CONTROL_FRAMES_PER_SECOND {
            bytes.extend(frame(0x6, 0, &[0; 8]));
            bytes.extend(frame(0x6, 0x1, &[0; 8])); // ACKs are free
        }
        // Fed one byte at a time: frame headers split across reads.
        for b in &bytes {
            assert!(g.saw(std::slice::from_ref(b)));
        }
        assert!(!g.saw(&frame(0x4, 0, &[])), "one over the budget");
        assert_eq!(g.tripped.get(), 1);
    }
}
