//! The front door of every client connection, before Pingora reads a request.
//!
//! - **Per-client caps.** At most `limits.max_connections_per_client`
//!   connections from one address; more are closed at once (counted as
//!   `gantry_limit_rejections_total{limit="client_connections"}`). The total
//!   (`limits.max_connections`) is checked at accept ([`crate::server`]).
//! - **A head deadline.** A new connection has `limits.head_timeout_ms` from
//!   accept to send its first request's whole head, or the HTTP/2 preface on an
//!   h2c listener; a slower one gets `408` and is closed
//!   (`limit="head_timeout"`). Pingora's own reads have no such total deadline,
//!   and its h2c detection waits for 24 bytes with none at all.
//! - **The h2c decision.** The bytes read are handed to Pingora unchanged
//!   ([`Replay`]); its h2c probe is answered from them, so a short request that
//!   cannot be the preface (`GARBAGE\r\n\r\n`) is read as HTTP/1 at once.
//!
//! - **HTTP/2 control-frame floods.** On every HTTP/2 connection (h2c, or ALPN
//!   `h2` over TLS) the frames the client sends are counted as they are read: more
//!   than [`MAX_CONTROL_FRAMES_PER_SECOND`] SETTINGS or PING frames (not ACKs) in a
//!   second end the connection (`limit="h2_control_frames"`). The h2 stack already
//!   answers rapid resets, CONTINUATION floods and streams past the limit with
//!   GOAWAY.
//!
//! HTTP/2 over TLS has no head deadline here (its TLS handshake already
//! happened; the h2 connection has its own idle timeout).

use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS and PING frames (not ACKs) an HTTP/2 client may send in one
/// second; more end the connection. A well-behaved client sends a handful.
pub const MAX_CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// What the front door enforces.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// From accept to the end of the first head.
    pub head_timeout: Duration,
    /// Bytes of head read before handing over (Pingora refuses larger ones).
    pub max_header_bytes: usize,
    /// Connections from one address.
    pub max_connections_per_client: usize,
    /// Whether cleartext HTTP/2 with prior knowledge is accepted.
    pub h2c: bool,
}

/// Wraps the HTTP app: counts connections, enforces the caps and the head
/// deadline, then hands the connection over.
pub struct Front<A> {
    inner: Arc<A>,
    metrics: Arc<Metrics>,
    limits: FrontLimits,
    clients: Mutex<HashMap<IpAddr, usize>>,
}

impl<A> Front<A> {
    /// The front door of `inner`.
    pub fn new(inner: A, metrics: Arc<Metrics>, limits: FrontLimits) -> Self {
        Front {
            inner: Arc::new(inner),
            metrics,
            limits,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Count a connection from `ip`, unless it already has the most allowed.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot<A>> {
        let mut clients = self.clients.lock().expect("clients lock");
        let n = clients.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_client {
            drop(clients);
            self.refused("client_connections");
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            front: self.clone(),
            ip,
        })
    }

    /// A frame counter for an HTTP/2 connection (`preface`: the client's bytes
    /// start with the preface, not with a frame).
    fn flood_guard(&self, preface: bool) -> FloodGuard {
        FloodGuard {
            skip: if preface { H2_PREFACE.len() } else { 0 },
            header: Vec::with_capacity(9),
            window_started: Instant::now(),
            in_window: 0,
            tripped: self
                .metrics
                .limit_rejections
                .with_label_values(&["h2_control_frames"]),
        }
    }

    fn refused(&self, limit: &str) {
        self.metrics
            .limit_rejections
            .with_label_values(&[limit])
            .inc();
    }
}

/// One counted connection; uncounted when dropped.
struct ClientSlot<A> {
    front: Arc<Front<A>>,
    ip: IpAddr,
}

impl<A> Drop for ClientSlot<A> {
    fn drop(&mut self) {
        let mut clients = self.front.clients.lock().expect("clients lock");
        if let Some(n) = clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.ip);
            }
        }
    }
}

/// Whether `buf` holds a whole HTTP/1 head (bare LF line ends accepted, as
/// Pingora's parser accepts them).
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// What reading the head came to.
enum Head {
    /// Hand the connection over with these bytes first.
    Read(Vec<u8>),
    /// The client closed before sending anything.
    Closed,
    /// The deadline passed.
    TimedOut,
}

impl<A> Front<A> {
    /// Read the first head (or the h2 preface) within the deadline.
    async fn read_head(&self, stream: &mut Stream, deadline: Instant) -> Head {
        let mut buf = Vec::new();
        let mut complete = false;
        let mut chunk = [0u8; 4096];
        loop {
            // On an h2c listener, bytes that are still the start of the
            // preface may yet become it: read on.
            let could_be_h2 =
                self.limits.h2c && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf);
            let decided = (self.limits.h2c && buf.starts_with(H2_PREFACE))
                || complete
                || buf.len() > self.limits.max_header_bytes;
            if decided && !could_be_h2 {
                return Head::Read(buf);
            }
            let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await;
            match read {
                Err(_) => return Head::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Head::Closed,
                // A partial head then EOF: Pingora answers what it can.
                Ok(Ok(0)) | Ok(Err(_)) => return Head::Read(buf),
                Ok(Ok(n)) => {
                    // Only the new bytes (and the 3 before them) can complete
                    // the blank line: a trickled head is not rescanned whole.
                    let from = buf.len().saturating_sub(3);
                    buf.extend_from_slice(&chunk[..n]);
                    complete = complete || head_complete(&buf[from..]);
                }
            }
        }
    }
}

/// Whether an HTTP/1 head parses strictly (httparse, as Pingora parses it,
/// without Pingora's fallback that escapes an illegal request line).
fn head_parses(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(head), Ok(httparse::Status::Complete(_)))
}

/// Header fields in one request head (Pingora's own bound).
const MAX_HEADERS: usize = 256;

/// `err` with the gateway's JSON error body, then the connection closes.
async fn respond_error(stream: &mut Stream, err: &crate::error::GatewayError) {
    let body = err.body();
    let status = http::StatusCode::from_u16(err.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.flush().await;
    Shutdown::shutdown(&mut **stream).await;
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Front<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.metrics.open_connections.inc();
        let _open = GaugeGuard(&self.metrics.open_connections);
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let _slot = match ip {
            Some(ip) => Some(self.admit(ip)?),
            None => None,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let guarded = Replay::new(Vec::new(), stream, Some(self.flood_guard(false)));
            return self.inner.process_new(Box::new(guarded), shutdown).await;
        }
        // The deadline counts from accept (TLS handshake included).
        let since_accept = stream
            .get_timing_digest()
            .first()
            .and_then(|d| d.as_ref())
            .and_then(|d| SystemTime::now().duration_since(d.established_ts).ok())
            .unwrap_or_default();
        let deadline = Instant::now() + self.limits.head_timeout.saturating_sub(since_accept);
        match self.read_head(&mut stream, deadline).await {
            Head::Read(prefix) => {
                let h2 = self.limits.h2c && prefix.starts_with(H2_PREFACE);
                if !h2 && head_complete(&prefix) && !head_parses(&prefix) {
                    // Answered here, with the gateway's JSON error, rather than
                    // by Pingora's bare 400 (or its escaping of the target).
                    respond_error(&mut stream, &crate::error::GatewayError::BadRequest).await;
                    return None;
                }
                let guard = h2.then(|| self.flood_guard(true));
                let replay: Stream = Box::new(Replay::new(prefix, stream, guard));
                self.inner.process_new(replay, shutdown).await
            }
            Head::Closed => None,
            Head::TimedOut => {
                self.refused("head_timeout");
                let err = crate::error::GatewayError::HeadTimeout {
                    limit: self.limits.head_timeout,
                };
                respond_error(&mut stream, &err).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection whose first bytes were already read: they are read again
/// first, then the socket. Everything else is the socket's.
#[derive(Debug)]
pub struct Replay {
    prefix: Vec<u8>,
    at: usize,
    inner: Stream,
    /// On HTTP/2 connections: counts the client's control frames.
    guard: Option<FloodGuard>,
}

impl Replay {
    fn new(prefix: Vec<u8>, inner: Stream, guard: Option<FloodGuard>) -> Self {
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
struct FloodGuard {
    /// Bytes to pass over before the next frame header (preface, payloads).
    skip: usize,
    /// The frame header read so far.
    header: Vec<u8>,
    window_started: Instant,
    in_window: u32,
    tripped: prometheus::IntCounter,
}

impl FloodGuard {
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
                self.prefix = Vec::new();
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
        FloodGuard {
            skip: H2_PREFACE.len(),
            header: Vec::new(),
            window_started: Instant::now(),
            in_window: 0,
            tripped: prometheus::IntCounter::new("t", "t").unwrap(),
        }
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

    #[test]
    fn malformed_heads_do_not_parse() {
        assert!(head_parses(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_parses(b"GET / HTTP/1.1\nHost: a\n\n"));
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        ] {
            assert!(!head_parses(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn heads_are_complete_at_the_blank_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(head_complete(b"GARBAGE\r\n\r\n"));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!head_complete(b"PRI * HTTP/2.0\r\n"));
    }
}
