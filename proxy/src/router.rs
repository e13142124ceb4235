//! Route matching: host first (exact, then wildcard, then any), then the longest
//! path prefix on a segment boundary, then method.

use gantry_config::Route;
use http::Method;

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
    /// Route indices by path prefix length (longest first), then file order: the
    /// order in which a request tries them.
    order: Vec<usize>,
}

impl Router {
    /// Compile the routes of a validated config.
    pub fn new(routes: &[Route]) -> Self {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(routes[i].path_prefix.len()));
        Router {
            routes: routes.to_vec(),
            order,
        }
    }

    /// Find the route for a request: the most specific host, then the longest
    /// prefix, then file order, among routes that accept the method. `host` may
    /// carry a port; it is ignored. One pass, no allocation unless nothing matches.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Match {
        let host = host.map(strip_port);
        let mut best: Option<(u8, usize)> = None;
        let mut path_matched = false;
        for &i in &self.order {
            let r = &self.routes[i];
            let Some(score) = host_score(&r.hosts, host) else {
                continue;
            };
            if !prefix_matches(&r.path_prefix, path) {
                continue;
            }
            path_matched = true;
            // `order` is longest prefix first, so only a better host replaces `best`.
            if accepts(r, method) && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        match best {
            Some((_, i)) => Match::Route(i),
            None if !path_matched => Match::NotFound,
            None => {
                let mut allowed: Vec<String> = self
                    .routes
                    .iter()
                    .filter(|r| {
                        host_score(&r.hosts, host).is_some() && prefix_matches(&r.path_prefix, path)
                    })
                    .flat_map(|r| r.methods.iter().cloned())
                    .collect();
                allowed.sort();
                allowed.dedup();
                Match::MethodNotAllowed(allowed)
            }
        }
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

/// 3: exact host, 2: wildcard, 1: route matches any host; `None`: no match.
/// Patterns are lower-case; the host is compared case-insensitively.
fn host_score(patterns: &[String], host: Option<&str>) -> Option<u8> {
    if patterns.is_empty() {
        return Some(1);
    }
    let host = host?;
    let mut best = None;
    for p in patterns {
        if p.eq_ignore_ascii_case(host) {
            return Some(3);
        }
        if let Some(domain) = p.strip_prefix("*.") {
            let split = host.len().saturating_sub(domain.len() + 1);
            if split > 0
                && host.as_bytes()[split] == b'.'
                && host[split + 1..].eq_ignore_ascii_case(domain)
            {
                best = Some(2);
            }
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

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
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

    #[test]
    fn strips_prefix_keeping_query() {
        assert_eq!(strip_prefix("/api", "/api/users?x=1"), "/users?x=1");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api", "/api?x=1"), "/?x=1");
        assert_eq!(strip_prefix("/", "/a"), "/a");
    }
}
