//! Tenants: who a request is, from the API key it carries, and what that key
//! may use. On a route with `auth = "keys"` a request must present one of the
//! configured `[[keys]]` as `Authorization: Bearer <key>` or `x-api-key:
//! <key>`. Keys are known only by their SHA-256 digest (the key itself is in
//! no configuration, log or metric); a key's name stands for it everywhere.
//!
//! Keys are long random strings (`gantry keys create`: 256 bits), so one fast
//! hash is enough: there is nothing to brute-force that a slow hash would
//! protect, and the digest is looked up, never compared byte by byte against
//! a guess.

pub mod budget;
pub mod keyring;
pub mod limiter;
pub mod shared;

use crate::metrics::{Denial, Metrics};
use crate::own_headers::OwnHeader;
use base64::Engine;
use gantry_config::ApiKey;
use gantry_config::OnUnreachable;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};
use limiter::{Denied, Limiter, Reservation};
use pingora::http::ResponseHeader;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use shared::{SharedKey, SharedStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// The other header a key may come in (Anthropic's and many tools' choice).
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// What every key made by `gantry keys create` starts with, so a leaked one
/// is recognisable (secret scanners match on prefixes like it).
pub const KEY_PREFIX: &str = "gk-";

/// Every configured key, by digest.
pub struct Tenants {
    /// Configured keys.
    by_digest: HashMap<[u8; 32], usize>,
    /// Keys kept in the key store (see [`keyring`]), replaced whole when it
    /// changes.
    stored: RwLock<Arc<HashMap<[u8; 32], usize>>>,
    tenants: Vec<Tenant>,
}

/// One key's tenant.
pub struct Tenant {
    /// The key's name (`[[keys]].name`).
    pub name: String,
    /// Models it may use; `None`: all.
    models: Option<HashSet<String>>,
    /// Routes it may use; `None`: every route with `auth = "keys"`.
    routes: Option<HashSet<usize>>,
    /// `gantry_key_requests_total{key}`, resolved once.
    requests: IntCounter,
    /// Its rate limits and what it used of them, in this process (with a
    /// shared store: while it is unreachable, under `local`).
    pub limiter: Arc<Limiter>,
    /// Where it is counted when the store is shared.
    shared: Option<(Arc<SharedStore>, Arc<SharedKey>)>,
    /// What its requests get while the shared store is unreachable.
    on_unreachable: OnUnreachable,
}

/// The shared key store and how the fleet uses it.
pub struct Shared {
    pub store: Arc<SharedStore>,
    pub on_unreachable: OnUnreachable,
    /// Replicas that share the limits (each counts its share while the
    /// store is unreachable, under `local`).
    pub replicas: u32,
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No key in the request.
    Missing,
    /// A key that is not configured.
    Unknown,
    /// A configured key not allowed on this route.
    Route,
}

impl Refused {
    /// The `reason` label of `gantry_auth_rejections_total`.
    pub fn denial(self) -> Denial {
        match self {
            Refused::Missing => Denial::Missing,
            Refused::Unknown => Denial::Unknown,
            Refused::Route => Denial::Route,
        }
    }
}

impl Tenants {
    /// The configured keys, with their metrics resolved, counted in this
    /// process or in `shared`.
    pub fn new(keys: &[ApiKey], metrics: &Metrics, shared: Option<&Shared>) -> Tenants {
        let tenants = keys
            .iter()
            .map(|k| {
                let here = match shared {
                    Some(s) => k.limits.divided(s.replicas),
                    None => k.limits,
                };
                Tenant {
                    name: k.name.clone(),
                    models: (!k.models.is_empty()).then(|| k.models.iter().cloned().collect()),
                    routes: (!k.routes.is_empty()).then(|| k.routes.iter().copied().collect()),
                    requests: metrics.key_requests(&k.name),
                    limiter: Limiter::new(here, metrics.key_outstanding(&k.name)),
                    shared: shared
                        .map(|s| (s.store.clone(), Arc::new(SharedKey::new(&k.name, k.limits)))),
                    on_unreachable: shared.map_or(OnUnreachable::Closed, |s| s.on_unreachable),
                }
            })
            .collect();
        let by_digest = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((k.sha256?, i)))
            .collect();
        Tenants {
            by_digest,
            stored: Default::default(),
            tenants,
        }
    }

    /// The stored keys are `keys` (those of tenants not configured are left
    /// out, with a warning).
    pub fn set_stored(&self, keys: Vec<keyring::StoredKey>) {
        let map = keys
            .into_iter()
            .filter_map(|(digest, name)| match self.index_of(&name) {
                Some(i) => Some((digest, i)),
                None => {
                    tracing::warn!(tenant = %name, "a stored API key of a tenant not in [[keys]]: ignored");
                    None
                }
            })
            .collect();
        *self.stored.write().expect("stored keys lock") = Arc::new(map);
    }

    /// Honour (`Some(tenant)`) or stop honouring a stored key at once.
    pub fn change_stored(&self, digest: [u8; 32], tenant: Option<usize>) {
        let mut stored = self.stored.write().expect("stored keys lock");
        let mut map = (**stored).clone();
        match tenant {
            Some(i) => map.insert(digest, i),
            None => map.remove(&digest),
        };
        *stored = Arc::new(map);
    }

    /// The tenant named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tenants.iter().position(|t| t.name == name)
    }

    /// Configured keys: digest and tenant.
    pub fn configured(&self) -> impl Iterator<Item = (&[u8; 32], &str)> {
        self.by_digest
            .iter()
            .map(|(d, &i)| (d, self.tenants[i].name.as_str()))
    }

    /// Whether `digest` is a configured key.
    pub fn is_configured(&self, digest: &[u8; 32]) -> bool {
        self.by_digest.contains_key(digest)
    }

    /// The tenant (an index for [`Tenants::get`]) whose key the request
    /// carries, if it may use `route`.
    pub fn identify(&self, route: usize, headers: &HeaderMap) -> Result<usize, Refused> {
        let key = presented_key(headers).ok_or(Refused::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key).into();
        let i = match self.by_digest.get(&digest) {
            Some(&i) => i,
            None => *self
                .stored
                .read()
                .expect("stored keys lock")
                .get(&digest)
                .ok_or(Refused::Unknown)?,
        };
        let tenant = &self.tenants[i];
        if tenant.routes.as_ref().is_some_and(|r| !r.contains(&route)) {
            return Err(Refused::Route);
        }
        Ok(i)
    }

    /// Tenant `i` of [`Tenants::identify`].
    pub fn get(&self, i: usize) -> &Tenant {
        &self.tenants[i]
    }

    /// Every tenant, in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }
}

impl Tenant {
    /// Let a request in under the key's limits (counted in
    /// `gantry_key_requests_total`), or say which one it ran into.
    pub async fn admit(&self) -> Result<Arc<Reservation>, Denied> {
        let held = match &self.shared {
            Some((store, key)) if store.is_up() => match store.admit(key).await {
                Ok(admitted) => Ok(self.limiter.admitted_shared(store, key, admitted)),
                Err(refusal) => match Denied::from(refusal) {
                    Denied::StoreUnreachable => self.unreachable(),
                    denied => Err(denied),
                },
            },
            Some(_) => self.unreachable(),
            None => self.limiter.admit().map_err(Denied::Limit),
        }?;
        self.requests.inc();
        Ok(held)
    }

    /// The shared store is unreachable: 503, or this replica's share.
    fn unreachable(&self) -> Result<Arc<Reservation>, Denied> {
        match self.on_unreachable {
            OnUnreachable::Closed => Err(Denied::StoreUnreachable),
            OnUnreachable::Local => {
                self.limiter.unsee();
                self.limiter.admit().map_err(Denied::Limit)
            }
        }
    }

    /// Whether the key may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// The `x-ratelimit-*` headers OpenAI's clients read, for the limits the
/// key has: `-limit-`, `-remaining-` and `-reset-` of `requests` (per minute)
/// and `tokens` (generated per minute).
pub fn add_rate_headers(resp: &mut ResponseHeader, limiter: &Limiter) -> pingora::Result<()> {
    let (requests, tokens) = limiter.remaining();
    for (names, r) in [(&RATE_HEADERS[0], requests), (&RATE_HEADERS[1], tokens)] {
        let Some(r) = r else { continue };
        let [limit, remaining, reset] = names;
        resp.insert_header(limit.wire(), r.limit)?;
        resp.insert_header(remaining.wire(), r.remaining)?;
        resp.insert_header(reset.wire(), duration_text(r.reset))?;
    }
    Ok(())
}

/// `-limit-`, `-remaining-` and `-reset-` of requests, then of tokens.
const RATE_HEADERS: [[OwnHeader; 3]; 2] = [
    [
        OwnHeader::new("x-ratelimit-limit-requests"),
        OwnHeader::new("x-ratelimit-remaining-requests"),
        OwnHeader::new("x-ratelimit-reset-requests"),
    ],
    [
        OwnHeader::new("x-ratelimit-limit-tokens"),
        OwnHeader::new("x-ratelimit-remaining-tokens"),
        OwnHeader::new("x-ratelimit-reset-tokens"),
    ],
];

/// A duration as OpenAI's reset headers write it: `20ms`, `1.5s`, `1m0s`.
fn duration_text(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    match minutes {
        0 => format!("{seconds}s"),
        m => format!("{m}m{seconds}s"),
    }
}

/// The key a request presents: `Authorization: Bearer <key>` (the scheme in
/// any case), else `x-api-key`.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        let (scheme, rest) = v.split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| rest.trim_ascii())
    });
    bearer
        .or_else(|| {
            headers
                .get(API_KEY_HEADER)
                .map(|v| v.as_bytes().trim_ascii())
        })
        .filter(|k| !k.is_empty())
}

/// A new key: [`KEY_PREFIX`] and 32 random bytes, base64url.
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A key's SHA-256.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The SHA-256 of a text as 64 lower-case hex digits: a key's digest as
/// configured, and a configuration file's in `/status`.
pub fn digest_hex(key: &str) -> String {
    keyring::hex(&key_digest(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_key_comes_as_a_bearer_token_or_in_x_api_key() {
        let h = headers(&[("authorization", "bearer gk-abc ")]);
        assert_eq!(presented_key(&h), Some(&b"gk-abc"[..]));
        let h = headers(&[("x-api-key", "gk-xyz")]);
        assert_eq!(presented_key(&h), Some(&b"gk-xyz"[..]));
        let h = headers(&[("authorization", "Basic dXNlcjpwdw=="), ("x-api-key", "k")]);
        assert_eq!(presented_key(&h), Some(&b"k"[..]), "not a bearer token");
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_key(&headers(&[])), None);
    }

    #[test]
    fn reset_durations_are_written_as_openai_writes_them() {
        use std::time::Duration;
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_text(Duration::from_secs(60)), "1m0s");
        assert_eq!(duration_text(Duration::from_millis(59_999)), "59.999s");
    }

    #[test]
    fn new_keys_differ_and_their_digests_are_sha256() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(
            a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 43,
            "{a}"
        );
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
