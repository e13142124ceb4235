//! Route matching: host first (exact, then wildcard, then any), then the longest
//! path prefix on a segment boundary, then method.
//!
//! A path's candidate prefixes are few (the path itself and each cut before a
//! `/`), so the table is indexed by prefix: a request looks up each candidate
//! of a length some route has, longest first, and never scans the routes.
//! Its cost follows the path's segments, not the number of routes.

use gantry_config::Route;
use http::Method;
use std::collections::HashMap;

/// The index's hasher: a path is hashed on every request, and foldhash (seeded
/// per process) costs a fraction of SipHash on short keys. The keys are the
/// configuration's prefixes; a client's path only looks them up.
type PrefixMap = HashMap<Box<str>, Vec<usize>, foldhash::fast::RandomState>;

/// The outcome of matching a request against the route table.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    /// Index of the chosen route in the config.
    Route(usize),
    /// Some route matches host and path but none the method; these methods would.
    MethodNotAllowed(Vec<String>),
    /// No route matches host and path.
    NotFound,
}

/// The compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Route indices by exact path prefix (`/` included), in file order.
    by_prefix: PrefixMap,
    /// By length: whether some route's prefix (other than `/`) is that
    /// long, so a candidate no route can equal costs no lookup.
    prefix_lengths: Vec<bool>,
    /// The best host score any route can give (see [`host_score`]): a
    /// match with it ends the search.
    best_score: HostMatch,
}

impl Router {
    /// Compile the routes of a validated config.
    pub fn new(routes: &[Route]) -> Self {
        let mut by_prefix = PrefixMap::default();
        let mut prefix_lengths = Vec::new();
        let mut best_score = HostMatch::Any;
        for (i, r) in routes.iter().enumerate() {
            by_prefix
                .entry(r.path_prefix.as_str().into())
                .or_default()
                .push(i);
            if r.path_prefix != "/" {
                let len = r.path_prefix.len();
                if prefix_lengths.len() <= len {
                    prefix_lengths.resize(len + 1, false);
                }
                prefix_lengths[len] = true;
            }
            best_score = best_score.max(route_best_score(&r.hosts));
        }
        Router {
            routes: routes.to_vec(),
            by_prefix,
            prefix_lengths,
            best_score,
        }
    }

    /// Find the route for a request: the most specific host, then the longest
    /// prefix, then file order, among routes that accept the method. `host` may
    /// carry a port; it is ignored. No allocation unless nothing matches.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Match {
        let host = host.map(strip_port);
        let mut best: Option<(HostMatch, usize)> = None;
        let mut path_matched = false;
        for prefix in self.candidates(path) {
            let Some(indices) = self.by_prefix.get(prefix) else {
                continue;
            };
            for &i in indices {
                let r = &self.routes[i];
                let Some(score) = host_score(&r.hosts, host) else {
                    continue;
                };
                path_matched = true;
                // Candidates come longest first, so only a better host
                // replaces `best`.
                if accepts(r, method) && best.is_none_or(|(s, _)| score > s) {
                    best = Some((score, i));
                    if score == self.best_score {
                        return Match::Route(i);
                    }
                }
            }
        }
        match best {
            Some((_, i)) => Match::Route(i),
            None if !path_matched => Match::NotFound,
            None => {
                let mut allowed: Vec<String> = self
                    .candidates(path)
                    .filter_map(|prefix| self.by_prefix.get(prefix))
                    .flatten()
                    .map(|&i| &self.routes[i])
                    .filter(|r| host_score(&r.hosts, host).is_some())
                    .flat_map(|r| r.methods.iter().cloned())
                    .collect();
                allowed.sort();
                allowed.dedup();
                Match::MethodNotAllowed(allowed)
            }
        }
    }

    /// The prefixes a route may have to match `path`, longest first: the
    /// path itself, each cut just before a `/`, then `/`; only lengths some
    /// route's prefix has.
    fn candidates<'p>(&'p self, path: &'p str) -> impl Iterator<Item = &'p str> + 'p {
        let cuts = path
            .bytes()
            .enumerate()
            .skip(1)
            .filter(|&(_, b)| b == b'/')
            .map(|(at, _)| at)
            .rev();
        std::iter::once(path.len())
            .chain(cuts)
            .filter(|&len| self.prefix_lengths.get(len) == Some(&true))
            .map(move |len| &path[..len])
            .chain(std::iter::once("/"))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route at an index returned by [`Router::find`].
    pub fn route(&self, i: usize) -> &Route {
        &self.routes[i]
    }
}

fn accepts(route: &Route, method: &Method) -> bool {
    route.methods.is_empty() || route.methods.iter().any(|m| m == method.as_str())
}

/// How specifically a route's host patterns match a request's host; a
/// better one wins over a longer path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum HostMatch {
    /// The route names no host.
    Any,
    /// A `*.domain` pattern.
    Wildcard,
    /// A host named exactly.
    Exact,
}

/// What `pattern` gives the hosts it matches.
fn pattern_kind(pattern: &str) -> HostMatch {
    if pattern.starts_with("*.") {
        HostMatch::Wildcard
    } else {
        HostMatch::Exact
    }
}

/// The best [`host_score`] a route with `patterns` can give.
fn route_best_score(patterns: &[String]) -> HostMatch {
    patterns
        .iter()
        .map(|p| pattern_kind(p))
        .max()
        .unwrap_or(HostMatch::Any)
}

/// How `patterns` match `host`; `None`: no match. Patterns are lower-case;
/// the host is compared case-insensitively.
fn host_score(patterns: &[String], host: Option<&str>) -> Option<HostMatch> {
    if patterns.is_empty() {
        return Some(HostMatch::Any);
    }
    let host = host?;
    let mut best = None;
    for p in patterns {
        match pattern_kind(p) {
            HostMatch::Exact if p.eq_ignore_ascii_case(host) => return Some(HostMatch::Exact),
            HostMatch::Wildcard => {
                let domain = &p[2..];
                let split = host.len().saturating_sub(domain.len() + 1);
                if split > 0
                    && host.as_bytes()[split] == b'.'
                    && host[split + 1..].eq_ignore_ascii_case(domain)
                {
                    best = Some(HostMatch::Wildcard);
                }
            }
            _ => {}
        }
    }
    best
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

/// The path with `prefix` removed, always starting with `/`; the query is kept.
pub fn strip_prefix(prefix: &str, path_and_query: &str) -> String {
    if prefix == "/" {
        return path_and_query.to_string();
    }
    let rest = &path_and_query[prefix.len().min(path_and_query.len())..];
    if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, hosts: &[&str], prefix: &str, methods: &[&str]) -> Route {
        Route {
            name: name.into(),
            target: gantry_config::Target::Pool(0),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            strip_prefix: false,
            max_body_bytes: 0,
            plugins: Vec::new(),
            request_headers: Default::default(),
            response_headers: Default::default(),
            auth: Default::default(),
        }
    }

    fn table() -> Router {
        Router::new(&[
            route("root", &[], "/", &[]),
            route("api", &[], "/api", &[]),
            route("api-v2-get", &[], "/api/v2", &["GET"]),
            route("admin-host", &["admin.example.com"], "/", &[]),
            route("wild", &["*.example.com"], "/", &[]),
            route("only-post", &["post.test"], "/submit", &["POST"]),
        ])
    }

    fn name(r: &Router, host: Option<&str>, path: &str, m: Method) -> String {
        match r.find(host, path, &m) {
            Match::Route(i) => r.route(i).name.clone(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let r = table();
        assert_eq!(name(&r, None, "/api", Method::GET), "api");
        assert_eq!(name(&r, None, "/api/users", Method::GET), "api");
        assert_eq!(name(&r, None, "/apix", Method::GET), "root");
        assert_eq!(name(&r, None, "/api/v2/x", Method::GET), "api-v2-get");
        // POST falls through to the shorter prefix that accepts it.
        assert_eq!(name(&r, None, "/api/v2/x", Method::POST), "api");
    }

    #[test]
    fn host_beats_path_and_exact_beats_wildcard() {
        let r = table();
        assert_eq!(
            name(&r, Some("admin.example.com:8443"), "/api", Method::GET),
            "admin-host"
        );
        assert_eq!(
            name(&r, Some("ADMIN.example.com"), "/", Method::GET),
            "admin-host"
        );
        assert_eq!(
            name(&r, Some("www.example.com"), "/api", Method::GET),
            "wild"
        );
        assert_eq!(name(&r, Some("example.com"), "/api", Method::GET), "api");
    }

    #[test]
    fn method_mismatch_is_405_with_allowed_methods() {
        let r = Router::new(&[route("only-post", &["post.test"], "/submit", &["POST"])]);
        assert_eq!(
            r.find(Some("post.test"), "/submit", &Method::GET),
            Match::MethodNotAllowed(vec!["POST".into()])
        );
        assert_eq!(
            r.find(Some("other.test"), "/submit", &Method::POST),
            Match::NotFound
        );
    }

    /// The rule the index implements, route by route: a prefix matches on
    /// a segment boundary; the best host wins, then the longest prefix,
    /// then file order.
    fn find_by_scan(routes: &[Route], host: Option<&str>, path: &str, method: &Method) -> Match {
        let prefix_matches = |prefix: &str| {
            prefix == "/"
                || (path.starts_with(prefix)
                    && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
        };
        let host = host.map(strip_port);
        let matching: Vec<usize> = (0..routes.len())
            .filter(|&i| {
                host_score(&routes[i].hosts, host).is_some()
                    && prefix_matches(&routes[i].path_prefix)
            })
            .collect();
        let best = matching
            .iter()
            .copied()
            .filter(|&i| accepts(&routes[i], method))
            .max_by_key(|&i| {
                let r = &routes[i];
                (
                    host_score(&r.hosts, host),
                    r.path_prefix.len(),
                    std::cmp::Reverse(i),
                )
            });
        match best {
            Some(i) => Match::Route(i),
            None if matching.is_empty() => Match::NotFound,
            None => {
                let mut allowed: Vec<String> = matching
                    .iter()
                    .flat_map(|&i| routes[i].methods.iter().cloned())
                    .collect();
                allowed.sort();
                allowed.dedup();
                Match::MethodNotAllowed(allowed)
            }
        }
    }

    #[test]
    fn the_prefix_index_finds_what_a_scan_of_every_route_finds() {
        use rand::prelude::*;
        let mut rng = StdRng::seed_from_u64(7);
        let segments = ["a", "b", "api", "v1", "x"];
        let hosts = ["a.test", "*.test", "b.a.test"];
        let methods = ["GET", "POST"];
        let prefix = |rng: &mut StdRng| {
            let n = rng.random_range(0..4);
            let mut p = String::new();
            for _ in 0..n {
                p.push('/');
                p.push_str(segments.choose(rng).unwrap());
            }
            if p.is_empty() {
                p.push('/');
            }
            p
        };
        for _ in 0..500 {
            let routes: Vec<Route> = (0..rng.random_range(1..12))
                .map(|i| {
                    let h: Vec<&str> = hosts
                        .iter()
                        .copied()
                        .filter(|_| rng.random_bool(0.2))
                        .collect();
                    let m: Vec<&str> = methods
                        .iter()
                        .copied()
                        .filter(|_| rng.random_bool(0.3))
                        .collect();
                    route(&format!("r{i}"), &h, &prefix(&mut rng), &m)
                })
                .collect();
            let router = Router::new(&routes);
            for _ in 0..50 {
                let mut path = prefix(&mut rng);
                if rng.random_bool(0.3) {
                    path.push('/');
                }
                if rng.random_bool(0.2) {
                    path.push_str("ix");
                }
                let host = ["a.test", "c.b.a.test", "other", "A.TEST:8080"]
                    .choose(&mut rng)
                    .copied()
                    .filter(|_| rng.random_bool(0.8));
                let method = if rng.random_bool(0.5) {
                    Method::GET
                } else {
                    Method::POST
                };
                assert_eq!(
                    router.find(host, &path, &method),
                    find_by_scan(&routes, host, &path, &method),
                    "{host:?} {method} {path} in {:?}",
                    routes
                        .iter()
                        .map(|r| (&r.hosts, &r.path_prefix, &r.methods))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn strips_prefix_keeping_query() {
        assert_eq!(strip_prefix("/api", "/api/users?x=1"), "/users?x=1");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api", "/api?x=1"), "/?x=1");
        assert_eq!(strip_prefix("/", "/a"), "/a");
    }
}
