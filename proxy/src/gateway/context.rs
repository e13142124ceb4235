//! What one request carries through the phases ([`RequestCtx`]), and its id.

use crate::error::GatewayError;
use crate::lifecycle::{Lifecycle, RequestInFlight};
use crate::own_headers::REQUEST_ID;
use bytes::Bytes;
use http::header::HeaderValue;
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::Error;
use std::sync::Arc;
use std::time::Instant;

/// Longest client-supplied request id kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id, held as the header value it is sent as (upstream and to
/// the client): a client's valid id shares the request head's bytes, a new
/// one is written once; each header carrying it is a reference, not a copy.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's `X-Request-Id` when it is a valid one (1 to
    /// [`MAX_REQUEST_ID_LEN`] visible ASCII characters), else a new one.
    pub fn of(req: &RequestHeader) -> Self {
        match req.headers.get(&REQUEST_ID.name) {
            Some(v) if valid_request_id(v) => RequestId(v.clone()),
            _ => Self::generate(),
        }
    }

    /// A new id: a random UUID as 32 lowercase hex digits, in one allocation
    /// that every header carrying it shares.
    pub fn generate() -> Self {
        let mut text = [0u8; uuid::fmt::Simple::LENGTH];
        uuid::Uuid::new_v4().simple().encode_lower(&mut text);
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(text));
        RequestId(value.expect("hex digits are a valid header value"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever held (see `of` and `generate`).
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value (a reference to the same bytes).
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    /// No id yet (before the request's head is read).
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Per-request state carried through the phases.
pub struct RequestCtx {
    /// The configuration it is served on, from start to end (a reload
    /// while it runs changes only what later requests get).
    pub(super) live: Arc<super::ConfigVersion>,
    pub(super) started: Instant,
    pub(super) request_id: RequestId,
    pub(super) route: Option<usize>,
    /// The tenant whose API key let the request in (see [`crate::tenants`]).
    pub(super) tenant: Option<usize>,
    /// Its hold on the key's limits, released as its answer's last bytes are
    /// handed to the client ([`Self::release_key`]), or when it ends.
    pub(super) reservation: Option<Arc<crate::tenants::limiter::Reservation>>,
    /// Endpoints tried, in order (one, unless a connection failed and was
    /// retried: held inline, no allocation per request).
    pub(super) tried: smallvec::SmallVec<[Backend; 1]>,
    pub(super) error: Option<GatewayError>,
    pub(super) body_bytes: u64,
    /// The whole body was read (and counted) in `request_filter`.
    pub(super) body_preread: bool,
    /// The inference backend that answered (OpenAI-compatible API routes).
    pub(super) inference: Option<crate::openai::Outcome>,
    /// HTTP contexts of the route's plugins that let the request through, for the
    /// response phase (a route's first two held inline: no allocation per request).
    pub(super) plugin_contexts: smallvec::SmallVec<[(usize, gantry_plugins::HttpContext); 2]>,
    /// A body that replaces the upstream's (a plugin answered in the response phase).
    pub(super) replace_body: Option<Bytes>,
    /// The request body as the route's plugins left it, sent upstream instead of
    /// the client's (which was read whole for them).
    pub(super) request_body: Option<Bytes>,
    /// Per plugin context: response body it paused on (held until it continues);
    /// empty until a plugin pauses.
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
            request_id: RequestId::default(),
            route: None,
            tenant: None,
            reservation: None,
            tried: smallvec::SmallVec::new(),
            error: None,
            body_bytes: 0,
            body_preread: false,
            inference: None,
            plugin_contexts: smallvec::SmallVec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(REQUEST_ID.wire(), HeaderValue::from_bytes(id).unwrap())
            .unwrap();
        req
    }

    #[test]
    fn a_valid_client_id_is_kept_and_any_other_replaced_by_32_hex_digits() {
        let kept = RequestId::of(&with_id(b"abc-123"));
        assert_eq!(kept.as_str(), "abc-123");
        assert_eq!(kept.header(), "abc-123");
        let longest = "x".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(
            RequestId::of(&with_id(longest.as_bytes())).as_str(),
            longest
        );
        let too_long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let none = RequestHeader::build("GET", b"/", None).unwrap();
        for replaced in [
            RequestId::of(&with_id(too_long.as_bytes())),
            RequestId::of(&with_id(b"has space")),
            RequestId::of(&with_id(b"")),
            RequestId::of(&none),
        ] {
            assert_eq!(replaced.len(), 32, "{replaced}");
            assert!(replaced
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
