//! Route header rewrites, parsed into header names and values once at start-up so
//! applying one costs no parsing or allocation per request.

use gantry_config::HeaderRewrite;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

/// Remove, then set (replace), then add (append) — in that order.
#[derive(Debug, Default)]
pub struct Rewrite {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// The header edits both request and response headers support.
pub trait EditHeaders {
    /// Delete every value of `name`.
    fn remove(&mut self, name: &HeaderName);
    /// Replace every value of `name` with `value`.
    fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
    /// Add `value` after existing values of `name`.
    fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()>;
}

macro_rules! edit_headers {
    ($t:ty) => {
        impl EditHeaders for $t {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn set(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn add(&mut self, name: HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
        }
    };
}
edit_headers!(RequestHeader);
edit_headers!(ResponseHeader);

impl Rewrite {
    /// Parse a validated rewrite. Config validation already checked every name and
    /// value, so a failure here is a bug.
    pub fn new(rw: &HeaderRewrite) -> Self {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).expect("validated header name");
        let pair = |(n, v): &(String, String)| {
            (
                name(n),
                HeaderValue::from_str(v).expect("validated header value"),
            )
        };
        Rewrite {
            remove: rw.remove.iter().map(|n| name(n)).collect(),
            set: rw.set.iter().map(pair).collect(),
            add: rw.add.iter().map(pair).collect(),
        }
    }

    /// Apply to request or response headers.
    pub fn apply(&self, headers: &mut impl EditHeaders) -> Result<()> {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.set(name.clone(), value.clone())?;
        }
        for (name, value) in &self.add {
            headers.add(name.clone(), value.clone())?;
        }
        Ok(())
    }
}
