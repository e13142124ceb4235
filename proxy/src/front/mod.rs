//! The front door of every client connection, before Pingora reads a request.
//!
//! - **Per-client caps.** At most `limits.max_connections_per_client`
//!   connections from one address; more are closed at once (counted as
//!   `gantry_limit_rejections_total{limit="client_connections"}`). The total
//!   (`limits.max_connections`) is checked at accept (`server.rs`, `Admission`).
//! - **Every HTTP/1 head, read and judged here** (`head.rs`): a new connection
//!   has `limits.head_timeout_ms` from accept for its first head (or the
//!   HTTP/2 preface on an h2c listener), a kept-alive one the same from the
//!   next request's first byte; a slower head gets `408` and a close
//!   (`limit="head_timeout"`). A malformed head or ambiguous framing gets the
//!   JSON error and a close, never Pingora's bare 400 or its escaping of an
//!   illegal request line. This is why the front door runs the HTTP/1
//!   keep-alive loop itself (Pingora runs it inside its `process_new`, with
//!   only per-read timeouts on later heads).
//! - **The h2c decision.** The bytes read are handed to Pingora unchanged
//!   ([`Replay`]); its h2c probe is answered from them, so a short request that
//!   cannot be the preface (`GARBAGE\r\n\r\n`) is read as HTTP/1 at once.
//! - **HTTP/2 control-frame floods.** On every HTTP/2 connection (h2c, or ALPN
//!   `h2` over TLS) the frames the client sends are counted as they are read: more
//!   than [`MAX_CONTROL_FRAMES_PER_SECOND`] SETTINGS or PING frames (not ACKs) in a
//!   second end the connection (`limit="h2_control_frames"`). The h2 stack already
//!   answers rapid resets, CONTINUATION floods and streams past the limit with
//!   GOAWAY.
//!
//! - **TLS.** The handshake is done here, not by the listener, so it is held
//!   to the per-client cap and the head deadline (from accept) like any other
//!   wait, and counted in `gantry_tls_handshakes_total{result}`. (Pingora's
//!   listener would allow 60 s, uncounted.)
//!
//! HTTP/2 over TLS has no head deadline past the handshake (the h2
//! connection has its own idle timeout).

mod head;
mod replay;

pub use replay::Replay;

use crate::error::GatewayError;
use crate::metrics::{Handshake, Metrics, Refusal};
use async_trait::async_trait;
use bytes::BytesMut;
use head::{Head, HeadRead, Wait};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use replay::FloodGuard;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// SETTINGS and PING frames (not ACKs) an HTTP/2 client may send in one
/// second; more end the connection. A well-behaved client sends a handful.
pub const MAX_CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// What the front door enforces.
#[derive(Debug, Clone, Copy)]
pub struct FrontLimits {
    /// From accept to the end of the first head; from the first byte to the
    /// end of a later one.
    pub head_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub keepalive_timeout: Duration,
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
    /// TLS listeners: their address and acceptor.
    tls: Vec<(SocketAddr, Acceptor)>,
}

impl<A: HttpServerApp + Send + Sync + 'static> Front<A> {
    /// The front door of `inner`.
    pub fn new(inner: A, metrics: Arc<Metrics>, limits: FrontLimits) -> Self {
        Front {
            inner: Arc::new(inner),
            metrics,
            limits,
            clients: Mutex::new(HashMap::new()),
            tls: Vec::new(),
        }
    }

    /// Terminate TLS with `acceptor` on connections to the listener at `addr`.
    /// The handshake is the front door's, so it counts against the client's
    /// connections and the head deadline, and is counted in
    /// `gantry_tls_handshakes_total`.
    pub fn with_tls(mut self, addr: SocketAddr, acceptor: Acceptor) -> Self {
        self.tls.push((addr, acceptor));
        self
    }

    /// The acceptor of the TLS listener `stream` arrived on, if it did.
    fn acceptor_for(&self, stream: &Stream) -> Option<&Acceptor> {
        if self.tls.is_empty() {
            return None;
        }
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())?;
        self.tls
            .iter()
            .find(|(addr, _)| {
                *addr == local || addr.port() == local.port() && addr.ip().is_unspecified()
            })
            .map(|(_, acceptor)| acceptor)
    }

    /// The TLS handshake, by the head deadline.
    async fn handshake(
        &self,
        acceptor: &Acceptor,
        stream: Stream,
        deadline: Instant,
    ) -> Option<Stream> {
        let plain = Replay::new(BytesMut::new(), stream, None);
        let result = tokio::time::timeout_at(deadline.into(), acceptor.tls_handshake(plain)).await;
        let outcome = match result {
            Ok(Ok(tls)) => {
                self.metrics.tls_handshake(Handshake::Ok);
                return Some(Box::new(tls));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                Handshake::Failed
            }
            Err(_) => {
                self.metrics.refused(Refusal::HeadTimeout);
                Handshake::Timeout
            }
        };
        self.metrics.tls_handshake(outcome);
        None
    }

    /// Count a connection from `ip`, unless it already has the most allowed.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot<A>> {
        let mut clients = self.clients.lock().expect("clients lock");
        let n = clients.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_client {
            drop(clients);
            self.metrics.refused(Refusal::ClientConnections);
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
        let tripped = self.metrics.refusal_counter(Refusal::H2ControlFrames);
        FloodGuard::new(preface, tripped)
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

impl<A: HttpServerApp + Send + Sync + 'static> Front<A> {
    /// How heads are read; `first`: a connection's first read, which on an
    /// h2c listener may be the HTTP/2 preface.
    fn head_read(&self, first: bool) -> HeadRead {
        HeadRead {
            head_timeout: self.limits.head_timeout,
            max_header_bytes: self.limits.max_header_bytes,
            h2c: first && self.limits.h2c,
        }
    }

    /// Serve an HTTP/1 connection whose first head was read: each request is
    /// judged, handed to the app, and the next head read under its own
    /// deadline, until the app or the client ends the connection.
    async fn serve_http1(
        self: &Arc<Self>,
        mut stream: Stream,
        mut head: BytesMut,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
        shutdown: &ShutdownWatch,
    ) {
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            if let Err(err) = head::judge(&head) {
                self.refuse(&mut stream, &err).await;
                return;
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    // As Pingora starts a connection: the app sets its own
                    // keep-alive per request.
                    let draining = *shutdown.borrow();
                    session.set_keepalive((!draining).then_some(60));
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            session.set_pipelined_prefix(head);
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let next;
            (stream, next) = reused.consume();
            settings = next;
            let idle_until = Instant::now() + self.limits.keepalive_timeout;
            head = match head::read_head(
                &mut stream,
                self.head_read(false),
                Wait::Idle(idle_until),
                timer.as_mut(),
                shutdown,
            )
            .await
            {
                Head::Read(bytes) => bytes,
                Head::Closed => return,
                refused => {
                    self.refuse_head(&mut stream, refused).await;
                    return;
                }
            };
        }
    }

    /// Answer a head that timed out or grew too large, then close.
    async fn refuse_head(&self, stream: &mut Stream, head: Head) {
        let err = match head {
            Head::TimedOut => GatewayError::HeadTimeout {
                limit: self.limits.head_timeout,
            },
            Head::TooLarge(size) => GatewayError::HeadersTooLarge {
                size,
                limit: self.limits.max_header_bytes,
            },
            Head::Read(_) | Head::Closed => return,
        };
        self.refuse(stream, &err).await;
    }

    /// Answer `err` (counted when a limit refused the head), then close.
    async fn refuse(&self, stream: &mut Stream, err: &GatewayError) {
        if let Some(limit) = err.limit() {
            self.metrics.refused(limit);
        }
        head::respond_error(stream, err).await;
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Front<A> {
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
        // The deadline counts from accept, the TLS handshake included.
        let since_accept = stream
            .get_timing_digest()
            .first()
            .and_then(|d| d.as_ref())
            .and_then(|d| SystemTime::now().duration_since(d.established_ts).ok())
            .unwrap_or_default();
        let deadline = Instant::now() + self.limits.head_timeout.saturating_sub(since_accept);
        if let Some(acceptor) = self.acceptor_for(&stream) {
            stream = self.handshake(acceptor, stream, deadline).await?;
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let guarded = Replay::new(BytesMut::new(), stream, Some(self.flood_guard(false)));
            return ServerApp::process_new(&self.inner, Box::new(guarded), shutdown).await;
        }
        // The connection's one timer, for every head it sends.
        let timer = tokio::time::sleep_until(deadline.into());
        tokio::pin!(timer);
        match head::read_head(
            &mut stream,
            self.head_read(true),
            Wait::Until(deadline),
            timer.as_mut(),
            shutdown,
        )
        .await
        {
            Head::Read(prefix) if self.limits.h2c && prefix.starts_with(H2_PREFACE) => {
                // Pingora's h2c probe is answered from the bytes read.
                let guard = Some(self.flood_guard(true));
                let replay: Stream = Box::new(Replay::new(prefix, stream, guard));
                ServerApp::process_new(&self.inner, replay, shutdown).await
            }
            Head::Read(prefix) => {
                self.serve_http1(stream, prefix, timer, shutdown).await;
                None
            }
            refused => {
                self.refuse_head(&mut stream, refused).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await
    }
}

struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
