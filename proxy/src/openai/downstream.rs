//! Who the inference handler answers: a client connection ([`Session`]), or a
//! plugin's `proxy_http_call` served in process ([`Captured`]), which gets the
//! whole answer as bytes instead of a socket.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// The request side and the response side of one API exchange.
#[async_trait]
pub trait Downstream: Send {
    /// The request method.
    fn method(&self) -> http::Method;
    /// The request path.
    fn path(&self) -> String;
    /// The declared body length, when there is one.
    fn content_length(&self) -> Option<u64>;
    /// The request's `content-type`, when it has one.
    fn content_type(&self) -> Option<String>;
    /// The next body chunk; `None` at the end.
    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>>;
    /// Send the response header.
    async fn write_header(&mut self, resp: Box<ResponseHeader>) -> pingora::Result<()>;
    /// Send body bytes; `end` finishes the response.
    async fn write_body(&mut self, data: Option<Bytes>, end: bool) -> pingora::Result<()>;
    /// Whether the response header has gone out.
    fn header_written(&self) -> bool;
    /// Resolves when the client has gone away (never for an in-process call).
    async fn gone(&mut self);
    /// This exchange's connection must not be reused.
    fn close_after(&mut self);
}

#[async_trait]
impl Downstream for Session {
    fn method(&self) -> http::Method {
        self.req_header().method.clone()
    }

    fn path(&self) -> String {
        self.req_header().uri.path().to_string()
    }

    fn content_length(&self) -> Option<u64> {
        self.req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    }

    fn content_type(&self) -> Option<String> {
        let value = self.req_header().headers.get(http::header::CONTENT_TYPE)?;
        Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
    }

    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        self.read_request_body().await
    }

    async fn write_header(&mut self, resp: Box<ResponseHeader>) -> pingora::Result<()> {
        self.write_response_header(resp, false).await
    }

    async fn write_body(&mut self, data: Option<Bytes>, end: bool) -> pingora::Result<()> {
        self.write_response_body(data, end).await
    }

    fn header_written(&self) -> bool {
        self.response_written().is_some()
    }

    async fn gone(&mut self) {
        let _ = self.as_mut().read_body_or_idle(true).await;
    }

    fn close_after(&mut self) {
        self.set_keepalive(None);
    }
}

/// A client exchange whose body was already read (by the route's plugins, which
/// may have changed it).
pub struct Prepared<'a> {
    /// The client.
    pub session: &'a mut Session,
    /// The body to hand out.
    pub body: Option<Bytes>,
    /// Its length.
    pub len: u64,
}

#[async_trait]
impl Downstream for Prepared<'_> {
    fn method(&self) -> http::Method {
        self.session.method()
    }

    fn path(&self) -> String {
        Downstream::path(&*self.session)
    }

    fn content_length(&self) -> Option<u64> {
        Some(self.len)
    }

    fn content_type(&self) -> Option<String> {
        self.session.content_type()
    }

    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        Ok(self.body.take().filter(|b| !b.is_empty()))
    }

    async fn write_header(&mut self, resp: Box<ResponseHeader>) -> pingora::Result<()> {
        self.session.write_header(resp).await
    }

    async fn write_body(&mut self, data: Option<Bytes>, end: bool) -> pingora::Result<()> {
        self.session.write_body(data, end).await
    }

    fn header_written(&self) -> bool {
        self.session.header_written()
    }

    async fn gone(&mut self) {
        self.session.gone().await
    }

    fn close_after(&mut self) {
        self.session.close_after()
    }
}

/// An in-process exchange: the request is given whole, the answer is kept.
#[derive(Debug)]
pub struct Captured {
    method: http::Method,
    path: String,
    content_type: Option<String>,
    body: Option<Bytes>,
    /// The response header, once written.
    pub header: Option<Box<ResponseHeader>>,
    /// The response body written so far.
    pub response: BytesMut,
}

impl Captured {
    /// A request with this method, path, `content-type` and body.
    pub fn new(
        method: http::Method,
        path: String,
        content_type: Option<String>,
        body: Bytes,
    ) -> Self {
        Captured {
            method,
            path,
            content_type,
            body: Some(body),
            header: None,
            response: BytesMut::new(),
        }
    }
}

#[async_trait]
impl Downstream for Captured {
    fn method(&self) -> http::Method {
        self.method.clone()
    }

    fn path(&self) -> String {
        self.path.clone()
    }

    fn content_length(&self) -> Option<u64> {
        self.body.as_ref().map(|b| b.len() as u64)
    }

    fn content_type(&self) -> Option<String> {
        self.content_type.clone()
    }

    async fn read_body(&mut self) -> pingora::Result<Option<Bytes>> {
        Ok(self.body.take().filter(|b| !b.is_empty()))
    }

    async fn write_header(&mut self, resp: Box<ResponseHeader>) -> pingora::Result<()> {
        self.header = Some(resp);
        Ok(())
    }

    async fn write_body(&mut self, data: Option<Bytes>, _end: bool) -> pingora::Result<()> {
        if let Some(d) = data {
            self.response.extend_from_slice(&d);
        }
        Ok(())
    }

    fn header_written(&self) -> bool {
        self.header.is_some()
    }

    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }

    fn close_after(&mut self) {}
}
