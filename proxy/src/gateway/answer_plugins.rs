//! Plugins on the API's answer (`stream_events = true` on an OpenAI route):
//! the response headers hook, then the body hook with a whole answer at
//! once, or a stream event by event: each whole `data:` event (never a split
//! one), `data: [DONE]` with end of stream. A plugin may change an event,
//! drop it (leave it empty), or hold it to join it with the next.
//!
//! Before each batch of events the gateway sets properties the plugins read
//! (`proxy_get_property`): `response.tokens`, the completion tokens generated
//! so far, and once the backend finished `response.usage.prompt_tokens` and
//! `response.usage.completion_tokens`. A failing plugin follows its policy:
//! skipped when it fails open; failing closed, it ends a stream with an
//! error event (dropping the stream cancels the backend's work) and turns a
//! whole answer into a 500.

use super::body::client_gone;
use super::{Gateway, RequestCtx};
use crate::openai::whole::STREAM_HEADERS;
use crate::openai::{Generation, Reply, Whole};
use crate::own_headers::REQUEST_ID;
use crate::tenants::{self, limiter::Reservation};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::sync::Arc;

/// The end of one server-sent event.
const EVENT_END: &[u8] = b"\n\n";

impl Gateway {
    /// Write the API's answer through the plugins that asked to see it.
    pub(super) async fn write_reply_through_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        reply: Reply<'_>,
        held: Option<Arc<Reservation>>,
    ) -> Result<()> {
        match reply {
            Reply::Whole(whole) => {
                self.whole_through_plugins(session, ctx, route, whole, held)
                    .await
            }
            Reply::Stream(events) => {
                self.stream_through_plugins(session, ctx, route, *events, held)
                    .await
            }
        }
    }

    async fn whole_through_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        whole: Whole,
        held: Option<Arc<Reservation>>,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(whole.status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, whole.content_type)?;
        resp.insert_header(REQUEST_ID.wire(), ctx.request_id.header())?;
        if let Some(s) = whole.retry_after {
            resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
        }
        if let Some(limiter) = self.limiter(ctx) {
            tenants::add_rate_headers(&mut resp, limiter)?;
        }
        self.response_plugins(&mut resp, ctx, route)?;
        let mut body = match ctx.replace_body.take() {
            // A plugin answered in place of the API in its headers hook.
            Some(local) => Some(local),
            None => Some(whole.body),
        };
        if let Err(e) = self.response_body_plugins(&mut body, true, ctx) {
            // Closed by a plugin: no answer at all.
            let Some(err) = ctx.error.take() else {
                return Err(e);
            };
            if let Some(held) = held {
                Reservation::release(held).await;
            }
            return self.respond(session, ctx, err).await;
        }
        let body = body.unwrap_or_default();
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        if let Some(held) = held {
            Reservation::release(held).await;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }

    async fn stream_through_plugins(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: usize,
        mut events: Generation<'_>,
        held: Option<Arc<Reservation>>,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(200, Some(4))?;
        for (k, v) in STREAM_HEADERS {
            resp.insert_header(k, v)?;
        }
        resp.insert_header(REQUEST_ID.wire(), events.request_id())?;
        if let Some(limiter) = self.limiter(ctx) {
            tenants::add_rate_headers(&mut resp, limiter)?;
        }
        self.response_plugins(&mut resp, ctx, route)?;
        if let Some(local) = ctx.replace_body.take() {
            // A plugin answered in the stream's place: the generation is cancelled.
            drop(events);
            if let Some(held) = held {
                Reservation::release(held).await;
            }
            session.write_response_header(Box::new(resp), false).await?;
            return session.write_response_body(Some(local), true).await;
        }
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_err()
        {
            return Ok(());
        }
        let mut ended = false;
        loop {
            let next = tokio::select! {
                // The work first (see `write_reply`).
                biased;
                next = events.next() => next,
                _ = client_gone(session) => return Ok(()),
            };
            set_progress(ctx, &events);
            let finished = next.is_none();
            let batch = match next {
                Some(batch) => batch,
                None if ended => break,
                // Ended without `[DONE]` (after an error event): the plugins
                // still hear the end.
                None => Bytes::new(),
            };
            let (out, failed) = self.events_through_plugins(ctx, batch, &mut ended)?;
            if !out.is_empty() && session.write_response_body(Some(out), false).await.is_err() {
                // The client is gone: dropping the stream cancels it.
                return Ok(());
            }
            if failed || finished {
                break;
            }
        }
        drop(events);
        if let Some(held) = held {
            Reservation::release(held).await;
        }
        session.write_response_body(None, true).await
    }

    /// One batch of events through the plugins, event by event. `ended`
    /// turns true once `[DONE]` (or the stream's end) went through. `true`
    /// with the output when a plugin failing closed ended the stream (its
    /// output ends with an error event); an error when a plugin closed it
    /// (nothing more is written, the connection goes).
    fn events_through_plugins(
        &self,
        ctx: &mut RequestCtx,
        batch: Bytes,
        ended: &mut bool,
    ) -> Result<(Bytes, bool)> {
        let mut out = BytesMut::with_capacity(batch.len());
        let mut pieces = split_events(&batch);
        if batch.is_empty() {
            pieces.push(Bytes::new());
        }
        for event in pieces {
            let end = event.is_empty() || event.starts_with(b"data: [DONE]");
            let mut body = Some(event);
            if let Err(e) = self.response_body_plugins(&mut body, end, ctx) {
                let Some(err) = ctx.error.clone() else {
                    return Err(e);
                };
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&err.body());
                out.extend_from_slice(EVENT_END);
                *ended = true;
                return Ok((out.freeze(), true));
            }
            if let Some(b) = body {
                out.extend_from_slice(&b);
            }
            *ended |= end;
        }
        Ok((out.freeze(), false))
    }
}

/// `response.tokens`, and `response.usage.*` once known, for the plugins.
fn set_progress(ctx: &RequestCtx, events: &Generation<'_>) {
    let Some(props) = &ctx.plugin_properties else {
        return;
    };
    let number = |n: u64| n.to_string().into_bytes();
    props.set("response.tokens".into(), number(events.generated_tokens()));
    if let Some((prompt, completion)) = events.usage() {
        props.set("response.usage.prompt_tokens".into(), number(prompt.into()));
        props.set(
            "response.usage.completion_tokens".into(),
            number(completion.into()),
        );
    }
}

/// The whole events of a batch (each with its blank line), as slices of it.
fn split_events(batch: &Bytes) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut start = 0;
    while let Some(at) = batch[start..]
        .windows(EVENT_END.len())
        .position(|w| w == EVENT_END)
    {
        let end = start + at + EVENT_END.len();
        events.push(batch.slice(start..end));
        start = end;
    }
    if start < batch.len() {
        events.push(batch.slice(start..));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::split_events;
    use bytes::Bytes;

    #[test]
    fn a_batch_splits_into_whole_events() {
        let batch =
            Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\":\"x\\n\"}\n\ndata: [DONE]\n\n");
        let events = split_events(&batch);
        assert_eq!(
            events,
            [
                &b"data: {\"a\":1}\n\n"[..],
                b"data: {\"b\":\"x\\n\"}\n\n",
                b"data: [DONE]\n\n"
            ]
        );
        assert!(split_events(&Bytes::new()).is_empty());
    }
}
