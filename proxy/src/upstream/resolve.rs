//! Endpoint names to addresses, for HTTP and inference pools alike: resolved
//! once at start (before anything is served) and again every
//! `resolve_interval_ms`. A name answered by `server.hosts_file` is not asked
//! of DNS; a name that fails to resolve keeps the addresses it had, so a DNS
//! hiccup never empties a pool.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;

/// Resolves one pool's endpoints.
#[derive(Debug)]
pub struct EndpointResolver {
    /// `host:port` strings, as configured.
    endpoints: Vec<String>,
    /// Answers names before DNS (`/etc/hosts` format), read at each resolution.
    hosts_file: Option<PathBuf>,
    /// Each endpoint's last addresses.
    last: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl EndpointResolver {
    /// A resolver of `endpoints`, answering names from `hosts_file` first.
    pub fn new(endpoints: &[String], hosts_file: Option<PathBuf>) -> EndpointResolver {
        EndpointResolver {
            endpoints: endpoints.to_vec(),
            hosts_file,
            last: Mutex::default(),
        }
    }

    /// Whether some endpoint is a name (worth resolving again).
    pub fn has_names(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.parse::<SocketAddr>().is_err())
    }

    /// Resolve every endpoint now, blocking (at start): the addresses, and
    /// each endpoint that did not resolve with why.
    pub fn resolve_now(&self) -> (Vec<SocketAddr>, Vec<(String, std::io::Error)>) {
        use std::net::ToSocketAddrs;
        let hosts = self.hosts();
        let mut last = self.last.lock().expect("resolver lock");
        let mut failed = Vec::new();
        for e in &self.endpoints {
            let addrs = match pinned(&hosts, e) {
                Some(addrs) => Ok(addrs),
                None => e.to_socket_addrs().map(|a| a.collect()),
            };
            match addrs {
                Ok(addrs) => {
                    last.insert(e.clone(), addrs);
                }
                Err(err) => failed.push((e.clone(), err)),
            }
        }
        (sorted(last.values().flatten().copied()), failed)
    }

    /// Resolve every endpoint again; one that fails keeps its last addresses
    /// (logged).
    pub async fn resolve(&self) -> Vec<SocketAddr> {
        let hosts = self.hosts();
        let mut fresh = HashMap::with_capacity(self.endpoints.len());
        for e in &self.endpoints {
            let addrs = match pinned(&hosts, e) {
                Some(addrs) => Ok(addrs),
                None => tokio::net::lookup_host(e.as_str())
                    .await
                    .map(|a| a.collect::<Vec<_>>()),
            };
            match addrs {
                Ok(addrs) => {
                    fresh.insert(e.clone(), addrs);
                }
                Err(err) => {
                    tracing::warn!(endpoint = %e, error = %err, "cannot resolve endpoint; keeping its last addresses")
                }
            }
        }
        let mut last = self.last.lock().expect("resolver lock");
        last.extend(fresh);
        sorted(last.values().flatten().copied())
    }

    /// The hosts file's names and addresses, if there is one (unreadable:
    /// warned, and DNS answers).
    fn hosts(&self) -> Option<HashMap<String, Vec<IpAddr>>> {
        let path = self.hosts_file.as_ref()?;
        match std::fs::read_to_string(path) {
            Ok(text) => Some(parse_hosts(&text)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read server.hosts_file; asking DNS");
                None
            }
        }
    }
}

/// `endpoint`'s addresses from the hosts file, if it names its host.
fn pinned(hosts: &Option<HashMap<String, Vec<IpAddr>>>, endpoint: &str) -> Option<Vec<SocketAddr>> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let ips = hosts.as_ref()?.get(&host.to_ascii_lowercase())?;
    Some(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
}

/// `/etc/hosts` lines: an address, then names; `#` starts a comment. Lines
/// whose first field is not an address are skipped.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let ips = names.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    names
}

fn sorted(addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs.collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_file_answers_its_names_with_the_endpoints_port() {
        let hosts = Some(parse_hosts(
            "# comment\n127.0.0.2 App.test other\n127.0.0.3 app.test # two\nnot-an-ip app.test\n::1 v6.test\n",
        ));
        let app: Vec<String> = pinned(&hosts, "app.test:8080")
            .unwrap()
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(app, ["127.0.0.2:8080", "127.0.0.3:8080"]);
        assert_eq!(
            pinned(&hosts, "v6.test:1").unwrap()[0].to_string(),
            "[::1]:1"
        );
        assert_eq!(pinned(&hosts, "elsewhere.test:80"), None);
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.2 app.test\n").unwrap();
        let r = EndpointResolver::new(
            &["app.test:80".into(), "127.0.0.9:81".into()],
            Some(hosts.clone()),
        );
        assert!(r.has_names());
        let (first, failed) = r.resolve_now();
        assert_eq!((first.len(), failed.len()), (2, 0));
        // Gone from the file, and `.invalid` never resolves (RFC 6761).
        std::fs::write(&hosts, "").unwrap();
        let r2 = EndpointResolver::new(&["app.invalid:80".into()], Some(hosts.clone()));
        let (none, failed) = r2.resolve_now();
        assert!(
            none.is_empty() && failed[0].0 == "app.invalid:80",
            "{failed:?}"
        );
        std::fs::write(&hosts, "127.0.0.2 app.invalid\n").unwrap();
        assert_eq!(r2.resolve_now().0.len(), 1);
        std::fs::write(&hosts, "").unwrap();
        assert_eq!(r2.resolve().await[0].to_string(), "127.0.0.2:80");
    }
}
