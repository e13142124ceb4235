//! `[[keys]]`: tenants' API keys (as SHA-256 digests), and the routes that
//! require one.

use super::*;
use crate::{ApiKey, KeyLimits, KeyStore, OnUnreachable, RouteAuth};

pub(super) fn convert_keys(c: &mut Checker, raw: &FileConfig, routes: &[Route]) -> Vec<ApiKey> {
    let mut names = HashSet::new();
    let mut digests = HashMap::new();
    let keys: Vec<ApiKey> = raw
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let at = format!("keys[{i}]");
            c.unique(&mut names, format!("{at}.name"), "key", &k.name);
            if !valid_key_name(&k.name) {
                c.fail(
                    format!("{at}.name"),
                    format!(
                        "`{}` must be 1 to {MAX_KEY_NAME_BYTES} letters, digits, `-` or `_` (it is a metric label)",
                        k.name
                    ),
                );
            }
            let sha256 = k.sha256.as_deref().map(|hex| {
                let digest = parse_sha256(hex).unwrap_or_else(|| {
                    c.fail(
                        format!("{at}.sha256"),
                        "must be 64 hex digits, the SHA-256 of the key (`gantry keys create` prints it)",
                    );
                    [0; 32]
                });
                if let Some(other) = digests.insert(digest, at.clone()) {
                    c.fail(format!("{at}.sha256"), format!("the same key as {other}"));
                }
                digest
            });
            if sha256.is_none() && raw.key_store.is_none() {
                c.fail(
                    format!("{at}.sha256"),
                    "required unless the tenant's keys are kept in [key_store] (made with POST /admin/keys/<name>)",
                );
            }
            let routes = k
                .routes
                .iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    let path = format!("{at}.routes[{j}]");
                    let Some(index) = routes.iter().position(|r| r.name == *name) else {
                        let known = routes.iter().map(|r| r.name.clone());
                        c.fail(path, routes::unknown_name("route", name, known));
                        return None;
                    };
                    if routes[index].auth != RouteAuth::Keys {
                        c.fail(
                            path,
                            format!("route `{name}` does not ask for keys (set `auth = \"keys\"` on it)"),
                        );
                    }
                    Some(index)
                })
                .collect();
            let mut at_least_one = |field: &str, v: Option<u64>| {
                if v == Some(0) {
                    c.fail(
                        format!("{at}.{field}"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                }
                v
            };
            let limits = KeyLimits {
                requests_per_minute: at_least_one("requests_per_minute", k.requests_per_minute),
                input_tokens_per_minute: at_least_one(
                    "input_tokens_per_minute",
                    k.input_tokens_per_minute,
                ),
                output_tokens_per_minute: at_least_one(
                    "output_tokens_per_minute",
                    k.output_tokens_per_minute,
                ),
                max_concurrent: at_least_one("max_concurrent", k.max_concurrent),
                tokens_per_day: at_least_one("tokens_per_day", k.tokens_per_day),
                tokens_per_month: at_least_one("tokens_per_month", k.tokens_per_month),
            };
            ApiKey {
                name: k.name.clone(),
                sha256,
                models: k.models.clone(),
                routes,
                limits,
            }
        })
        .collect();
    if keys.is_empty() {
        for (i, r) in routes.iter().enumerate() {
            if r.auth == RouteAuth::Keys {
                c.fail(
                    format!("routes[{i}].auth"),
                    "`keys`, but no [[keys]] are defined: nobody could use this route",
                );
            }
        }
    }
    keys
}

/// `[key_store]`: exactly one of `path` and `redis`.
pub(super) fn convert_key_store(
    c: &mut Checker,
    s: &KeyStoreSection,
    base: &Path,
) -> Option<KeyStore> {
    let local_only = |c: &mut Checker, field: &str| {
        c.fail(
            format!("key_store.{field}"),
            "only with `redis` (the embedded store is this process's own)",
        )
    };
    match (&s.path, &s.redis) {
        (Some(path), None) => {
            if s.on_unreachable.is_some() {
                local_only(c, "on_unreachable");
            }
            if s.replicas.is_some() {
                local_only(c, "replicas");
            }
            Some(KeyStore::Embedded(base.join(path)))
        }
        (None, Some(url)) => {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                c.fail(
                    "key_store.redis",
                    format!("`{url}` must be a redis:// or rediss:// URL"),
                );
            }
            let on_unreachable = s.on_unreachable.unwrap_or_default();
            let replicas = match (on_unreachable, s.replicas) {
                (OnUnreachable::Local, Some(n)) if n >= 1 => n,
                (OnUnreachable::Local, _) => {
                    c.fail(
                        "key_store.replicas",
                        "with on_unreachable = \"local\", the number of replicas (at least 1): each divides the keys' limits by it while Redis is unreachable",
                    );
                    1
                }
                (OnUnreachable::Closed, Some(_)) => {
                    c.fail("key_store.replicas", "only with on_unreachable = \"local\"");
                    1
                }
                (OnUnreachable::Closed, None) => 1,
            };
            Some(KeyStore::Redis {
                url: url.clone(),
                on_unreachable,
                replicas,
            })
        }
        _ => {
            c.fail(
                "key_store",
                "set one of `path` (a file, this process) and `redis` (shared by replicas)",
            );
            None
        }
    }
}
