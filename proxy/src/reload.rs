//! Configuration reload: SIGHUP or `POST /admin/reload` reads the
//! configuration again, validates it (a file `gantry config check` refuses is
//! refused with the same messages), builds it next to the live one, and swaps
//! it in whole ([`crate::gateway::Live`]). Requests already running finish on
//! the configuration they started with; the old one goes when they have.
//! Until a reload succeeds the old configuration keeps serving.
//!
//! A reload changes routes, HTTP and inference pools, plugins, per-request
//! limits, trusted proxies and the admin token, and reads the TLS
//! certificates' files again (renewed certificates at the same paths). What is bound at start
//! ([`RESTART_ONLY`]: listeners, the admin address, threads, keys and their
//! store, traces, connection-level limits) is not: a file that changes any of it is
//! refused as `needs_restart`, naming what changed, and applies with a restart
//! or a binary upgrade (docs/OPERATIONS.md).

use crate::gateway::{ConfigVersion, Live, VersionParts};
use crate::metrics::{ConfigReload, Metrics};
use crate::plugins::ReloadReport;
use crate::tls::Certificates;
use gantry_config::{Config, ConfigError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::runtime::Handle;

/// Where the configuration is read from, at start and on each reload.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Names the file in messages.
    name: String,
    /// The file; `None`: the embedded default.
    path: Option<PathBuf>,
    /// Relative paths in it resolve against this directory.
    base: PathBuf,
}

impl ConfigSource {
    /// A configuration file; its relative paths resolve against its directory.
    pub fn file(path: &Path) -> ConfigSource {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        ConfigSource::file_in(path, &base)
    }

    /// A configuration file whose relative paths resolve against `base`.
    pub fn file_in(path: &Path, base: &Path) -> ConfigSource {
        ConfigSource {
            name: path.display().to_string(),
            path: Some(path.to_path_buf()),
            base: base.to_path_buf(),
        }
    }

    /// The embedded default (`gantry config default`), with its data under
    /// [`gantry_config::embedded_base`].
    pub fn embedded() -> ConfigSource {
        ConfigSource {
            name: "<embedded default>".into(),
            path: None,
            base: gantry_config::embedded_base(),
        }
    }

    /// Read and validate it: the configuration and the text's SHA-256 (hex).
    pub fn read(&self) -> Result<(Config, String), ConfigError> {
        let text = match &self.path {
            Some(path) => std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
                file: self.name.clone(),
                cause,
            })?,
            None => gantry_config::EMBEDDED_DEFAULT.to_string(),
        };
        let config = gantry_config::parse(&text, &self.name, &self.base)?;
        Ok((config, crate::tenants::digest_hex(&text)))
    }

    /// The file's name, as messages give it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether a field differs between two configurations.
type Differs = fn(&Config, &Config) -> bool;

/// What only a restart or a binary upgrade changes, by the name a refusal
/// gives it, each with its comparison: bound to sockets, threads or state
/// made at start.
pub const RESTART_ONLY: &[(&str, Differs)] = &[
    ("server.threads", |a, b| a.threads != b.threads),
    ("server.upgrade_socket", |a, b| {
        a.upgrade_socket != b.upgrade_socket
    }),
    ("server.hosts_file", |a, b| a.hosts_file != b.hosts_file),
    ("admin.address", |a, b| a.admin != b.admin),
    ("listeners", |a, b| a.listeners != b.listeners),
    ("keys", |a, b| a.keys != b.keys),
    ("key_store", |a, b| a.key_store != b.key_store),
    ("traces", |a, b| a.traces != b.traces),
    ("limits.max_connections", |a, b| {
        a.limits.max_connections != b.limits.max_connections
    }),
    ("limits.max_connections_per_client", |a, b| {
        a.limits.max_connections_per_client != b.limits.max_connections_per_client
    }),
    ("limits.max_header_bytes", |a, b| {
        a.limits.max_header_bytes != b.limits.max_header_bytes
    }),
    ("limits.head_timeout_ms", |a, b| {
        a.limits.head_timeout != b.limits.head_timeout
    }),
    ("limits.keepalive_timeout_ms", |a, b| {
        a.limits.keepalive_timeout != b.limits.keepalive_timeout
    }),
    ("limits.h2_max_concurrent_streams", |a, b| {
        a.limits.h2_max_concurrent_streams != b.limits.h2_max_concurrent_streams
    }),
    ("limits.shutdown_grace_period_ms", |a, b| {
        a.limits.shutdown_grace_period != b.limits.shutdown_grace_period
    }),
];

/// Which of [`RESTART_ONLY`] differ between `old` and `new`.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|(_, differs)| differs(old, new))
        .map(|(name, _)| *name)
        .collect()
}

/// How a reload went: the answer of `POST /admin/reload`, and the last one in
/// `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// `ok`, `invalid`, `needs_restart` or `failed`.
    pub result: ConfigReload,
    /// The configuration serving now (the new one when `ok`).
    pub version: u64,
    /// Its text's SHA-256, hex.
    pub sha256: String,
    /// What was wrong: each problem of an invalid file, what changed that
    /// needs a restart, or why it could not be built.
    pub problems: Vec<String>,
    /// Plugins loaded again, and those whose new file did not load (their
    /// old version keeps serving).
    pub plugins: ReloadReport,
    /// When it ended, seconds since the Unix epoch.
    pub at: u64,
}

/// Reads, checks, builds and swaps in new configurations, one at a time.
pub struct Reloader {
    /// `None`: the gateway was given its configuration already parsed; a
    /// reload then builds the same one again (its plugins' files reloaded).
    source: Option<ConfigSource>,
    live: Live,
    /// Each TLS listener's certificates, by listener name: read again on
    /// every reload.
    certificates: Vec<(String, Arc<Certificates>)>,
    metrics: Arc<Metrics>,
    runtime: Handle,
    /// Held while a reload runs.
    running: Mutex<()>,
    /// The last reload's outcome.
    last: Mutex<Option<ReloadOutcome>>,
}

impl Reloader {
    /// A reloader of `live`, building new pools' tasks on `runtime`.
    pub fn new(
        source: Option<ConfigSource>,
        live: Live,
        certificates: Vec<(String, Arc<Certificates>)>,
        metrics: Arc<Metrics>,
        runtime: Handle,
    ) -> Arc<Reloader> {
        metrics.config_version.set(live.load().number as i64);
        Arc::new(Reloader {
            source,
            live,
            certificates,
            metrics,
            runtime,
            running: Mutex::new(()),
            last: Mutex::new(None),
        })
    }

    /// The live configuration.
    pub fn live(&self) -> Arc<ConfigVersion> {
        self.live.load_full()
    }

    /// The source's name (`None`: given parsed).
    pub fn source_name(&self) -> Option<&str> {
        self.source.as_ref().map(ConfigSource::name)
    }

    /// The last reload's outcome, if there was one.
    pub fn last(&self) -> Option<ReloadOutcome> {
        self.last.lock().expect("reload outcome lock").clone()
    }

    /// Reload now, blocking (run it off the async runtimes); `None` when
    /// another reload is running.
    pub fn reload(&self) -> Option<ReloadOutcome> {
        let _running = self.running.try_lock().ok()?;
        let outcome = self.reload_locked();
        self.metrics.config_reload(outcome.result);
        match outcome.result {
            ConfigReload::Ok => {
                tracing::info!(version = outcome.version, sha256 = %outcome.sha256, plugins_failed = outcome.plugins.failed.len(), "configuration reloaded")
            }
            result => {
                tracing::error!(result = result.as_str(), problems = ?outcome.problems, version = outcome.version, "configuration reload refused; the previous configuration keeps serving")
            }
        }
        *self.last.lock().expect("reload outcome lock") = Some(outcome.clone());
        Some(outcome)
    }

    fn reload_locked(&self) -> ReloadOutcome {
        let current = self.live.load_full();
        let refused = |result, problems: Vec<String>| ReloadOutcome {
            result,
            version: current.number,
            sha256: current.sha256.clone(),
            problems,
            plugins: ReloadReport::default(),
            at: crate::clock::unix_seconds(),
        };
        let read = match &self.source {
            Some(source) => source.read(),
            None => Ok((current.config.clone(), current.sha256.clone())),
        };
        let (config, sha256) = match read {
            Ok(read) => read,
            Err(e) => {
                let problems = e.to_string().lines().map(str::to_string).collect();
                return refused(ConfigReload::Invalid, problems);
            }
        };
        let changed = needs_restart(&current.config, &config);
        if !changed.is_empty() {
            let problems = changed
                .iter()
                .map(|field| format!("{field}: changed; it takes a restart or a binary upgrade (gantry … --upgrade) to apply"))
                .collect();
            return refused(ConfigReload::NeedsRestart, problems);
        }
        // Renewed certificates at the same paths: read now, in use with the rest.
        let mut renewed = Vec::with_capacity(self.certificates.len());
        for (listener, certs) in &self.certificates {
            match certs.reread() {
                Ok(resolver) => renewed.push((certs, resolver)),
                Err(e) => {
                    let problem = format!("listeners `{listener}`: {e:#}");
                    return refused(ConfigReload::Failed, vec![problem]);
                }
            }
        }
        let parts = VersionParts {
            metrics: &self.metrics,
            runtime: &self.runtime,
        };
        let number = current.number + 1;
        match ConfigVersion::build(number, sha256, config, parts, Some(&current)) {
            Err(e) => refused(ConfigReload::Failed, vec![format!("{e:#}")]),
            Ok((version, plugins)) => {
                let sha256 = version.sha256.clone();
                self.live.store(Arc::new(version));
                for (certs, resolver) in renewed {
                    certs.swap(resolver);
                }
                self.metrics.config_version.set(number as i64);
                ReloadOutcome {
                    result: ConfigReload::Ok,
                    version: number,
                    sha256,
                    problems: Vec::new(),
                    plugins,
                    at: crate::clock::unix_seconds(),
                }
            }
        }
    }

    /// Reload on every SIGHUP, on `runtime`, for as long as the process runs.
    pub fn on_hangup(self: &Arc<Self>) {
        let reloader = self.clone();
        self.runtime.spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::warn!("cannot listen for SIGHUP: reload with POST /admin/reload");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                let r = reloader.clone();
                if let Ok(None) = tokio::task::spawn_blocking(move || r.reload()).await {
                    tracing::warn!("SIGHUP: a reload is running already; this one is skipped");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[server]\nthreads = 2\n[limits]\nmax_connections = 100\nhead_timeout_ms = 1000\nmax_body_bytes = 10\n\
        [admin]\naddress = \"127.0.0.1:9090\"\n\
        [[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\
        [[pools]]\nname = \"p\"\nendpoints = [\"127.0.0.1:3000\"]\n\
        [[routes]]\nname = \"all\"\npool = \"p\"\n";

    fn parsed(text: &str) -> Config {
        gantry_config::parse(text, "t", std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn each_restart_only_field_is_named_and_nothing_else() {
        let old = parsed(BASE);
        for (from, to, named) in [
            ("threads = 2", "threads = 3", vec!["server.threads"]),
            ("127.0.0.1:9090", "127.0.0.1:9091", vec!["admin.address"]),
            ("127.0.0.1:8080", "127.0.0.1:8081", vec!["listeners"]),
            (
                "max_connections = 100",
                "max_connections = 7",
                vec!["limits.max_connections"],
            ),
            (
                "head_timeout_ms = 1000",
                "head_timeout_ms = 9",
                vec!["limits.head_timeout_ms"],
            ),
            (
                "threads = 2\n[limits]\nmax_connections = 100",
                "threads = 3\n[limits]\nmax_connections = 7",
                vec!["server.threads", "limits.max_connections"],
            ),
            (
                "[[routes]]",
                "[traces]\nendpoint = \"http://collector:4317\"\n[[routes]]",
                vec!["traces"],
            ),
            // What a reload applies: named by nothing.
            ("max_body_bytes = 10", "max_body_bytes = 11", vec![]),
            ("name = \"all\"", "name = \"every\"", vec![]),
        ] {
            assert!(BASE.contains(from), "{from}");
            let new = parsed(&BASE.replace(from, to));
            assert_eq!(needs_restart(&old, &new), named, "{from} → {to}");
        }
    }
}
