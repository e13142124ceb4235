//! What one request carries through the phases ([`RequestCtx`]), and its id.

use crate::error::GatewayError;
use crate::lifecycle::{Lifecycle, RequestInFlight};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::Error;
use std::sync::Arc;
use std::time::Instant;

/// Request id header, read from the client when valid and generated otherwise.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Per-request state carried through the phases.
pub struct RequestCtx {
    /// The configuration it is served on, from start to end (a reload
    /// while it runs changes only what later requests get).
    pub(super) live: Arc<super::ConfigVersion>,
    pub(super) started: Instant,
    pub(super) request_id: String,
    pub(super) route: Option<usize>,
    /// The tenant whose API key let the request in (see [`crate::tenants`]).
    pub(super) tenant: Option<usize>,
    /// Its hold on the key's limits, released as its answer's last bytes are
    /// handed to the client ([`Self::release_key`]), or when it ends.
    pub(super) reservation: Option<Arc<crate::tenants::limiter::Reservation>>,
    pub(super) tried: Vec<Backend>,
    pub(super) error: Option<GatewayError>,
    pub(super) body_bytes: u64,
    /// The whole body was read (and counted) in `request_filter`.
    pub(super) body_preread: bool,
    /// The inference backend that answered (OpenAI-compatible API routes).
    pub(super) inference: Option<crate::openai::Outcome>,
    /// HTTP contexts of the route's plugins that let the request through, for the
    /// response phase.
    pub(super) plugin_contexts: Vec<(usize, gantry_plugins::HttpContext)>,
    /// A body that replaces the upstream's (a plugin answered in the response phase).
    pub(super) replace_body: Option<Bytes>,
    /// The request body as the route's plugins left it, sent upstream instead of
    /// the client's (which was read whole for them).
    pub(super) request_body: Option<Bytes>,
    /// Per plugin context: response body it paused on (held until it continues).
    pub(super) response_held: Vec<Vec<u8>>,
    /// What its route's plugins read and set (`proxy_set_property`; the
    /// access log shows what they set).
    pub(super) plugin_properties: Option<gantry_plugins::Properties>,
    /// Its server span, when traced (see `request_span.rs`).
    pub(super) span: Option<gantry_telemetry::traces::Span>,
    _in_flight: RequestInFlight,
}

impl RequestCtx {
    /// A new request's state on `live`, counted in flight in `lifecycle`
    /// while it lives.
    pub(super) fn new(lifecycle: &Arc<Lifecycle>, live: Arc<super::ConfigVersion>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            request_id: String::new(),
            route: None,
            tenant: None,
            reservation: None,
            tried: Vec::new(),
            error: None,
            body_bytes: 0,
            body_preread: false,
            inference: None,
            plugin_contexts: Vec::new(),
            replace_body: None,
            request_body: None,
            response_held: Vec::new(),
            span: None,
            plugin_properties: None,
            _in_flight: lifecycle.track(),
        }
    }

    /// Give back the request's hold on its key's limits (its concurrency
    /// slot, its unused tokens): called just before the answer's last bytes
    /// are written, so a client that waits for each answer before it asks
    /// again never finds its own last request still counted.
    pub(super) fn release_key(&mut self) -> Option<Arc<crate::tenants::limiter::Reservation>> {
        self.reservation.take()
    }

    /// [`Self::release_key`], waiting until a shared key store has it.
    pub(super) async fn give_back_key(&mut self) {
        if let Some(held) = self.release_key() {
            crate::tenants::limiter::Reservation::release(held).await;
        }
    }

    /// The request id: the client's when it is a valid one, else a new one.
    pub(super) fn take_request_id(&mut self, req: &RequestHeader) {
        self.request_id = match req.headers.get(&REQUEST_ID) {
            Some(v) if valid_request_id(v) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => uuid::Uuid::new_v4().simple().to_string(),
        };
    }

    /// Record `err` as this request's outcome and turn it into a phase error.
    pub(super) fn fail(&mut self, err: GatewayError) -> Box<Error> {
        let e = err.clone().into_pingora();
        self.error = Some(err);
        e
    }
}

pub(super) fn request_header_bytes(req: &RequestHeader) -> usize {
    // method SP uri SP version CRLF, then `name: value CRLF` per header.
    let uri = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + uri + 12;
    line + req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(|c| c.is_ascii_graphic())
}
