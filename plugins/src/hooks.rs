//! What the gateway and a plugin's hooks say to each other: a hook's
//! [`Decision`], a plugin's [`LocalResponse`], and the HTTP calls a plugin
//! makes ([`HttpCall`], [`HttpCallResponse`]).

use std::time::Duration;

/// An answer a plugin gave instead of letting the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// A hook's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the next plugin and phase.
    Continue,
    /// Answer with this and stop the chain.
    Respond(LocalResponse),
    /// The plugin stopped iteration: in a body hook before the end of the body,
    /// buffer and call again with more; elsewhere, wait for its calls.
    Pause,
    /// The plugin closed the stream (`proxy_close_stream`): end the exchange
    /// at once, with no answer (or no more of it).
    Close,
}

/// A `proxy_http_call` a plugin made. The gateway performs it and hands the
/// answer to [`HttpContext::on_request`](crate::HttpContext::on_request)'s caller-supplied function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token the plugin got back.
    pub token: u32,
    /// The pool, by name (one of the plugin's `upstreams`).
    pub upstream: String,
    /// Headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// How long the plugin will wait.
    pub timeout: Duration,
    /// The most answer bytes to keep (the plugin's `bytes_per_host_call`); a
    /// longer answer fails the call.
    pub max_response_bytes: usize,
}

/// The answer to an [`HttpCall`]; `:status` is among the headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Headers, `:status` first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Where `proxy_get_property` finds a request's attributes (`request.path`,
/// `source.address`, ...). Asked only when a plugin reads one, so a request
/// whose plugins read none renders none.
pub trait PropertySource: Send + Sync {
    /// The property at `path` (segments joined with `.`), if there is one.
    fn property(&self, path: &str) -> Option<std::borrow::Cow<'_, [u8]>>;
}

/// A fixed list of properties: what tests and simple hosts hand in.
impl PropertySource for Vec<(String, Vec<u8>)> {
    fn property(&self, path: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.iter()
            .find(|(k, _)| k == path)
            .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_slice()))
    }
}

/// One request's properties, shared by every plugin of its route.
#[derive(Clone)]
pub struct Properties(
    pub(crate) std::sync::Arc<dyn PropertySource>,
    /// What the request's plugins set (`proxy_set_property`), shared by every
    /// plugin of the chain and read before the source.
    pub(crate) std::sync::Arc<std::sync::Mutex<SetProperties>>,
);

/// Properties set by a request's plugins: (path, value), in the order first set.
type SetProperties = Vec<(String, Vec<u8>)>;

/// Properties one request's plugins may set, at most.
pub const MAX_SET_PROPERTIES: usize = 32;
/// Longest property path a plugin may set, in bytes.
pub const MAX_SET_PROPERTY_PATH_BYTES: usize = 256;

impl Properties {
    /// What the request's plugins set, in the order first set.
    pub fn set_by_plugins(&self) -> Vec<(String, Vec<u8>)> {
        self.1.lock().expect("properties lock").clone()
    }

    /// What a plugin of the chain set `path` to, if one did.
    pub fn set_value(&self, path: &str) -> Option<Vec<u8>> {
        let set = self.1.lock().expect("properties lock");
        set.iter().find(|(k, _)| k == path).map(|(_, v)| v.clone())
    }

    /// The property at `path`: set by a plugin of the chain, else the source's.
    pub(crate) fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.set_value(path)
            .or_else(|| self.0.property(path).map(std::borrow::Cow::into_owned))
    }

    /// Set `path` for the rest of the request (later plugins, the access
    /// log); `false` past [`MAX_SET_PROPERTIES`] or [`MAX_SET_PROPERTY_PATH_BYTES`].
    pub fn set(&self, path: String, value: Vec<u8>) -> bool {
        let mut set = self.1.lock().expect("properties lock");
        if let Some(slot) = set.iter_mut().find(|(k, _)| *k == path) {
            slot.1 = value;
            return true;
        }
        if path.is_empty()
            || path.len() > MAX_SET_PROPERTY_PATH_BYTES
            || set.len() >= MAX_SET_PROPERTIES
        {
            return false;
        }
        set.push((path, value));
        true
    }
}

impl Default for Properties {
    fn default() -> Self {
        Properties(std::sync::Arc::new(Vec::new()), Default::default())
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Properties")
    }
}

impl From<Vec<(String, Vec<u8>)>> for Properties {
    fn from(list: Vec<(String, Vec<u8>)>) -> Self {
        Properties(std::sync::Arc::new(list), Default::default())
    }
}

impl<T: PropertySource + 'static> From<std::sync::Arc<T>> for Properties {
    fn from(source: std::sync::Arc<T>) -> Self {
        Properties(source, Default::default())
    }
}
