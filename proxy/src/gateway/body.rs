//! The one bounded reader of request bodies: every path that reads a body
//! (plugin routes, API routes, bodies read ahead for HTTP routes) reads it
//! here, chunk by chunk, each chunk within `limits.client_read_timeout_ms`
//! (Pingora bounds HTTP/1 body reads itself, not HTTP/2 ones) and the whole
//! within the route's limit. A stall is a 408, an oversized body a 413.

use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use pingora::proxy::Session;
use pingora::{Error, Result};
use std::time::Duration;

/// Bodies of unknown length (chunked) on routes whose limit is at most this are read
/// whole before the upstream is contacted, so an oversized one never reaches it.
/// Equal to Pingora's retry buffer, which replays the read body to the upstream.
const PREREAD_MAX_BYTES: u64 = 64 * 1024;

/// Why a request body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Over `limit` bytes, declared or counted: 413.
    TooLarge { limit: u64 },
    /// A chunk did not come within `limits.client_read_timeout_ms`: 408.
    Stalled { limit: Duration },
}

impl From<Refused> for GatewayError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::TooLarge { limit } => GatewayError::BodyTooLarge { limit },
            Refused::Stalled { limit } => GatewayError::BodyTimeout { limit },
        }
    }
}

/// What reading one request body chunk came to.
pub(super) enum Chunk {
    Data(Bytes),
    End,
    /// The body stalled past `client_read_timeout_ms`: answered 408.
    Answered,
}

impl Gateway {
    /// The next request body chunk (`None` at the end), waiting at most
    /// `client_read_timeout_ms` for it; after a stall the connection is not
    /// reused. `Err`: the body is malformed (a bad chunk size), the client's
    /// fault.
    pub(super) async fn next_body_chunk(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
    ) -> Result<std::result::Result<Option<Bytes>, Refused>> {
        let limit = ctx.live.config.limits.client_read_timeout;
        match tokio::time::timeout(limit, session.read_request_body()).await {
            Ok(read) => read.map(Ok),
            Err(_) => {
                session.set_keepalive(None);
                Ok(Err(Refused::Stalled { limit }))
            }
        }
    }

    /// Read the request body whole, refusing it past `limit` bytes (declared,
    /// before anything is read, or counted); `replay`: Pingora keeps it to
    /// replay to the upstream.
    pub(super) async fn read_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        limit: u64,
        replay: bool,
    ) -> Result<std::result::Result<Bytes, Refused>> {
        if session.as_mut().is_body_empty() {
            return Ok(Ok(Bytes::new()));
        }
        let declared = session
            .req_header()
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Ok(Err(Refused::TooLarge { limit }));
        }
        if replay {
            session.as_mut().enable_retry_buffering();
        }
        let mut body = BytesMut::new();
        loop {
            let chunk = match self.next_body_chunk(session, ctx).await? {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(refused) => return Ok(Err(refused)),
            };
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > limit {
                return Ok(Err(Refused::TooLarge { limit }));
            }
            body.extend_from_slice(&chunk);
        }
        ctx.body_preread = true;
        Ok(Ok(body.freeze()))
    }

    /// The next chunk, a stall answered 408 (see [`Gateway::next_body_chunk`]).
    pub(super) async fn body_chunk(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Chunk> {
        match self.next_body_chunk(session, ctx).await {
            Ok(Ok(Some(data))) => Ok(Chunk::Data(data)),
            Ok(Ok(None)) => Ok(Chunk::End),
            Ok(Err(refused)) => {
                self.respond(session, ctx, refused.into()).await?;
                Ok(Chunk::Answered)
            }
            // A malformed body (a bad chunk size) is the client's fault: a 400.
            Err(e) => Err(e.into_down()),
        }
    }

    /// The body limit of a request to an HTTP pool, before the upstream is
    /// contacted: a declared length over it is a 413; a body of unknown length
    /// on a route limited to at most [`PREREAD_MAX_BYTES`] is read whole now
    /// (Pingora replays it from its retry buffer), and a larger one has its
    /// first chunk read, so a malformed chunk-size line is a 400 before any
    /// upstream sees it. `true` when answered.
    pub(super) async fn check_upstream_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
    ) -> Result<bool> {
        let limit = ctx.live.router.route(route).max_body_bytes;
        let req = session.req_header();
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            let err = GatewayError::BodyTooLarge { limit };
            self.respond(session, ctx, err).await?;
            return Ok(true);
        }
        if declared.is_none() && limit <= PREREAD_MAX_BYTES && !session.as_mut().is_body_empty() {
            // Unknown length: read it all now; Pingora replays it from the retry buffer.
            session.as_mut().enable_retry_buffering();
            loop {
                let chunk = match self.body_chunk(session, ctx).await? {
                    Chunk::Data(chunk) => chunk,
                    Chunk::End => break,
                    Chunk::Answered => return Ok(true),
                };
                ctx.body_bytes += chunk.len() as u64;
                if ctx.body_bytes > limit {
                    let err = GatewayError::BodyTooLarge { limit };
                    self.respond(session, ctx, err).await?;
                    return Ok(true);
                }
            }
            ctx.body_preread = true;
        } else if declared.is_none() && !session.as_mut().is_body_empty() {
            // A chunked upload too large to read ahead: its first chunk is read
            // now (one read, at most the replay buffer's 64 KiB, counted by the
            // body filter when replayed), so a malformed first chunk-size line
            // is a 400 before any upstream is contacted.
            session.as_mut().enable_retry_buffering();
            if let Chunk::Answered = self.body_chunk(session, ctx).await? {
                return Ok(true);
            }
            if session.as_ref().retry_buffer_truncated() {
                return Err(Error::explain(
                    pingora::ErrorType::InternalError,
                    "the first body chunk did not fit the replay buffer",
                ));
            }
        }
        Ok(false)
    }
}

/// Resolves when the client has gone away (its connection closed).
pub(super) async fn client_gone(session: &mut Session) {
    let _ = session.as_mut().read_body_or_idle(true).await;
}
