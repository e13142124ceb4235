//! Local responses: the gateway's own errors (the JSON body of
//! [`crate::error`]), a plugin's local response, and a body that replaces the
//! upstream's.

use super::{Gateway, RequestCtx};
use crate::error::GatewayError;
use crate::own_headers::REQUEST_ID;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

impl Gateway {
    /// Answer locally with the error's JSON body.
    pub(super) async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: GatewayError,
    ) -> Result<()> {
        let body = err.body();
        let mut resp = ResponseHeader::build(err.status(), Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        resp.insert_header(REQUEST_ID.wire(), ctx.request_id.header())?;
        match &err {
            GatewayError::MethodNotAllowed { allowed } => {
                resp.insert_header(http::header::ALLOW, allowed.join(", "))?;
            }
            // RFC 6750 §3: the scheme a 401 asks for.
            GatewayError::MissingApiKey | GatewayError::InvalidApiKey => {
                resp.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
            }
            GatewayError::RateLimited { retry_after, .. } => {
                resp.insert_header(http::header::RETRY_AFTER, retry_after.to_string())?;
            }
            GatewayError::KeyStoreUnreachable => {
                let wait = crate::tenants::shared::UNREACHABLE_RETRY_AFTER;
                resp.insert_header(http::header::RETRY_AFTER, wait.to_string())?;
            }
            _ => {}
        }
        ctx.give_back_key().await;
        if let Some(limiter) = self.limiter(ctx) {
            crate::tenants::add_rate_headers(&mut resp, limiter)?;
        }
        if err.status() == 413 || err.status() == 431 || self.lifecycle.closes_connections() {
            // The rest of an oversized request may still be in flight: don't reuse.
            session.set_keepalive(None);
        }
        ctx.error = Some(err);
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
    pub(super) fn replace_response_body(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<()> {
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        resp.insert_header(CONTENT_LENGTH, body.len())?;
        ctx.replace_body = Some(body);
        Ok(())
    }

    /// Send a plugin's local response.
    pub(super) async fn respond_locally(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        local: gantry_plugins::LocalResponse,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(local.status, Some(local.headers.len() + 2))?;
        for (k, v) in local.headers {
            resp.append_header(k, v)?;
        }
        resp.insert_header(CONTENT_LENGTH, local.body.len())?;
        resp.insert_header(REQUEST_ID.wire(), ctx.request_id.header())?;
        ctx.give_back_key().await;
        if let Some(limiter) = self.limiter(ctx) {
            crate::tenants::add_rate_headers(&mut resp, limiter)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(local.body)), true)
            .await?;
        Ok(())
    }
}
