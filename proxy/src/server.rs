//! Assembling a Pingora server from a validated [`Config`] and running it until a
//! shutdown signal, draining in-flight requests first.

use crate::admin::AdminApp;
use crate::gateway::{ConfigVersion, Gateway, Live, VersionParts};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::process::{Drain, Finisher, Process, ShutdownTrigger, UPGRADE_WAIT};
use crate::reload::{ConfigSource, Reloader};
use crate::tenants::budget::BudgetStore;
use crate::tenants::keyring::KeyRing;
use crate::tenants::shared::SharedStore;
use crate::tenants::{Shared, Tenants};
use crate::tls::Certificates;
use anyhow::Context;
use async_trait::async_trait;
use gantry_config::{Config, KeyStore};
use gantry_telemetry::traces::Traces;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ConnectionFilter;
use pingora::server::configuration::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;
use std::sync::Arc;

/// Most threads for the background runtime: it resolves and watches inference
/// backends (health and load streams), runs HTTP pools' health checks and
/// reloads the configuration and plugins. Calls to backends
/// run on the gateway's workers, on channels they open.
const GRPC_THREADS_MAX: usize = 4;
/// Seconds Pingora waits for runtimes to stop after our own drain has finished.
const RUNTIME_SHUTDOWN_TIMEOUT_SECS: u64 = 1;

/// A gateway ready to run.
pub struct Gantry {
    server: Server,
    config: Config,
    /// Shared with the phases: draining flag and in-flight count.
    pub lifecycle: Arc<Lifecycle>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Reloads the configuration; the live one.
    pub reloader: Arc<Reloader>,
    /// Runs the gRPC connections and watch streams of the inference pools.
    grpc_runtime: tokio::runtime::Runtime,
    /// Where keys' budgets are kept, when `[key_store]` is configured.
    budgets: Option<Arc<BudgetStore>>,
    /// Where spans go, when `[traces]` is configured.
    traces: Option<Arc<Traces>>,
    /// Embedded, or a process of its own.
    process: Process,
}

impl Gantry {
    /// Read the configuration from `source` and build the gateway on it, to
    /// run inside this program ([`Process::Embedded`]); a reload reads
    /// `source` again.
    pub fn load(source: ConfigSource) -> anyhow::Result<Gantry> {
        Gantry::load_as(source, Process::Embedded)
    }

    /// [`Gantry::load`], run as `process`. With `Process::Own { take_over:
    /// true, .. }` it returns once the running gateway handed its listening
    /// sockets over.
    pub fn load_as(source: ConfigSource, process: Process) -> anyhow::Result<Gantry> {
        let (config, sha256) = source.read()?;
        Gantry::assemble(config, sha256, Some(source), process)
    }

    /// Build the gateway on a configuration already parsed (a reload builds
    /// it again, reloading its plugins' files), to run inside this program.
    pub fn build(config: Config) -> anyhow::Result<Gantry> {
        Gantry::assemble(config, String::new(), None, Process::Embedded)
    }

    /// Build listeners, pools, health checks and the admin listener.
    fn assemble(
        config: Config,
        sha256: String,
        source: Option<ConfigSource>,
        process: Process,
    ) -> anyhow::Result<Gantry> {
        let upgrade = matches!(
            process,
            Process::Own {
                take_over: true,
                ..
            }
        );
        if !upgrade {
            check_bindable(&config)?;
        }
        let mut conf = ServerConf {
            threads: config.threads,
            graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_TIMEOUT_SECS),
            upgrade_sock: config.upgrade_socket.display().to_string(),
            upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT.as_secs() as usize),
            ..ServerConf::default()
        };
        conf.grace_period_seconds = Some(match process {
            // Our own drain (see `Drain`) waits for in-flight requests; Pingora need not.
            Process::Embedded => 0,
            // Pingora's wait bounds the finisher's (see `Finisher`), which exits
            // as soon as nothing is in flight.
            Process::Own { .. } => config.limits.shutdown_grace_period.as_secs() + 2,
        });
        conf.upstream_keepalive_pool_size = conf.upstream_keepalive_pool_size.max(128);
        let opt = Opt {
            upgrade,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);

        let metrics = Arc::new(Metrics::new());
        let lifecycle = Arc::new(Lifecycle::default());
        let grpc_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.clamp(1, GRPC_THREADS_MAX))
            .thread_name("gantry-grpc")
            .enable_all()
            .build()
            .context("starting the gRPC runtime")?;
        let parts = VersionParts {
            metrics: &metrics,
            runtime: grpc_runtime.handle(),
        };
        let (version, _) = match ConfigVersion::build(1, sha256, config.clone(), parts, None) {
            Ok(built) => built,
            Err(e) => {
                // A plugin that did not load: callers may be async code, where
                // dropping a runtime would panic.
                grpc_runtime.shutdown_background();
                return Err(e);
            }
        };
        let live: Live = Arc::new(arc_swap::ArcSwap::from_pointee(version));
        let shared = match &config.key_store {
            Some(KeyStore::Redis {
                url,
                on_unreachable,
                replicas,
            }) => Some(Shared {
                store: SharedStore::connect(url, grpc_runtime.handle(), metrics.key_store())?,
                on_unreachable: *on_unreachable,
                replicas: *replicas,
            }),
            _ => None,
        };
        let tenants = Arc::new(Tenants::new(&config.keys, &metrics, shared.as_ref()));
        let budgets = match &config.key_store {
            Some(KeyStore::Embedded(path)) => {
                let store = BudgetStore::open(path, &tenants)?;
                store.keep(grpc_runtime.handle());
                Some(store)
            }
            _ => None,
        };
        let ring = match (&budgets, &shared) {
            (Some(store), _) => Some(KeyRing::Embedded(store.clone())),
            (_, Some(s)) => Some(KeyRing::Shared(s.store.clone())),
            _ => None,
        };
        match (&ring, &budgets) {
            // This process alone changes its file: read once, before serving.
            (Some(KeyRing::Embedded(_)), Some(store)) => tenants.set_stored(store.keys()?),
            (Some(ring), _) => ring.follow(&tenants, grpc_runtime.handle()),
            _ => {}
        }
        let admin_keys = ring.map(|ring| crate::admin::AdminKeys {
            ring,
            tenants: tenants.clone(),
        });
        let traces = match &config.traces {
            Some(t) => Some(Arc::new(
                Traces::new(t, grpc_runtime.handle(), metrics.trace_spans.clone())
                    .map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        let mut gateway = Gateway::new(live.clone(), metrics.clone(), lifecycle.clone(), tenants);
        if let (Some(traces), Some(config)) = (&traces, &config.traces) {
            gateway = gateway.with_traces(traces.clone(), config.plugin_spans);
        }
        let (app, certificates) =
            front_door(&config, &server.configuration, gateway, metrics.clone())?;
        let reloader = Reloader::new(
            source,
            live.clone(),
            certificates,
            metrics.clone(),
            grpc_runtime.handle().clone(),
        );
        let mut service = Service::new("gantry gateway".to_string(), app);
        service.set_connection_filter(Arc::new(Admission {
            max_connections: config.limits.max_connections,
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
        }));
        // Every listener accepts plain TCP; the front door terminates TLS.
        for l in &config.listeners {
            service.add_tcp(&l.address.to_string());
        }
        server.add_service(service);

        if let Some(admin) = config.admin {
            let mut admin_service = Service::new(
                "gantry admin".to_string(),
                AdminApp {
                    metrics: metrics.clone(),
                    lifecycle: lifecycle.clone(),
                    reloader: reloader.clone(),
                    keys: admin_keys,
                },
            );
            if !admin.ip().is_loopback() {
                tracing::warn!(address = %admin, "the admin listener is not on loopback: /metrics and /status are readable by anyone who can reach it; keep it on a private network");
            }
            admin_service.add_tcp(&admin.to_string());
            server.add_service(admin_service);
        }

        if upgrade {
            tracing::info!(socket = %config.upgrade_socket.display(), wait_s = UPGRADE_WAIT.as_secs(), "built: waiting for the running gateway's listening sockets (send it SIGQUIT)");
        }
        // Takes the sockets over when upgrading; built first, so the running
        // gateway serves while this one loads its plugins and pools.
        server.bootstrap();
        Ok(Gantry {
            process,
            server,
            config,
            lifecycle,
            metrics,
            reloader,
            grpc_runtime,
            budgets,
            traces,
        })
    }

    /// Run until shutdown. Blocks the calling thread; returns once every in-flight
    /// request finished or the grace period ran out (a process of its own
    /// exits then instead, see [`Gantry::run_then`]).
    pub fn run(self, trigger: ShutdownTrigger) {
        self.run_then(trigger, Box::new(|| {}));
    }

    /// [`Gantry::run`]; a process of its own runs `then` (after writing what
    /// must outlive it) just before it exits.
    pub fn run_then(self, trigger: ShutdownTrigger, then: Box<dyn FnOnce() + Send>) {
        tracing::info!(
            listeners = ?self.config.listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
            admin = ?self.config.admin.map(|a| a.to_string()),
            "gantry gateway starting"
        );
        if matches!(trigger, ShutdownTrigger::Signals) {
            self.reloader.on_hangup();
        }
        let deadline = Arc::new(std::sync::Mutex::new(None));
        if let Process::Own { .. } = self.process {
            let budgets = self.budgets.clone();
            let traces = self.traces.clone();
            Finisher {
                phases: self.server.watch_execution_phase(),
                lifecycle: self.lifecycle.clone(),
                reloader: self.reloader.clone(),
                deadline: deadline.clone(),
            }
            .start(Box::new(move || {
                keep(budgets.as_deref(), traces.as_deref());
                tracing::info!("gantry gateway stopped");
                then();
            }));
        }
        let drain = Drain {
            trigger,
            hand_over: matches!(
                self.process,
                Process::Own {
                    hand_over: true,
                    ..
                }
            ),
            lifecycle: self.lifecycle.clone(),
            reloader: self.reloader.clone(),
            deadline,
        };
        self.server.run(RunArgs {
            shutdown_signal: Box::new(drain),
        });
        // Requests have drained: what they settled is kept, their spans
        // exported (on the runtime, still running).
        keep(self.budgets.as_deref(), self.traces.as_deref());
        self.grpc_runtime.shutdown_background();
        tracing::info!("gantry gateway stopped");
    }
}

/// Keep what must outlive the process: what keys settled, written to the
/// key store, and the spans still queued, exported.
fn keep(store: Option<&BudgetStore>, traces: Option<&Traces>) {
    if let Some(store) = store {
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "cannot write keys' budgets to the key store");
        }
    }
    if let Some(traces) = traces {
        traces.flush();
    }
}

/// Fail fast with a clear message when an address is taken (Pingora would retry
/// binding for a while, for graceful upgrades, and then panic).
fn check_bindable(config: &Config) -> anyhow::Result<()> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| (format!("listener `{}`", l.name), l.address));
    let admin = config.admin.map(|a| ("admin listener".to_string(), a));
    for (what, addr) in listeners.chain(admin) {
        std::net::TcpListener::bind(addr)
            .with_context(|| format!("{what}: cannot listen on {addr}"))?;
    }
    Ok(())
}

/// Accept-time admission: refuse connections over `limits.max_connections` and
/// every new connection once draining.
#[derive(Debug)]
struct Admission {
    max_connections: usize,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl ConnectionFilter for Admission {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        if self.lifecycle.is_draining() {
            return false;
        }
        if self.metrics.open_connections.get() as usize >= self.max_connections {
            self.metrics.refused(crate::metrics::Refusal::Connections);
            return false;
        }
        true
    }
}

/// The gateway's HTTP app behind its front door: Pingora's HTTP/1 and HTTP/2
/// options from the limits, and a TLS acceptor per TLS listener.
/// The TLS listeners' certificates, each one for a reload to read again.
type ListenerCertificates = Vec<(String, Arc<Certificates>)>;

fn front_door(
    config: &Config,
    server_conf: &Arc<ServerConf>,
    gateway: Gateway,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(
    crate::front::Front<pingora::proxy::HttpProxy<Gateway>>,
    ListenerCertificates,
)> {
    let mut proxy = pingora::proxy::http_proxy(server_conf, gateway);
    let mut options = HttpServerOptions::default();
    options.h2c = config.listeners.iter().any(|l| l.h2c);
    // An HTTP/2 connection with no stream open goes after this long.
    options.h2_idle_timeout = Some(config.limits.keepalive_timeout);
    proxy.server_options = Some(options);
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(config.limits.h2_max_concurrent_streams);
    h2.max_header_list_size(u32::try_from(config.limits.max_header_bytes).unwrap_or(u32::MAX));
    proxy.h2_options = Some(h2);
    let front_limits = crate::front::FrontLimits {
        head_timeout: config.limits.head_timeout,
        keepalive_timeout: config.limits.keepalive_timeout,
        max_header_bytes: config.limits.max_header_bytes,
        max_connections_per_client: config.limits.max_connections_per_client,
        h2c: config.listeners.iter().any(|l| l.h2c),
    };
    let mut app = crate::front::Front::new(proxy, metrics, front_limits);
    let mut certificates = Vec::new();
    for l in config.listeners.iter() {
        if let Some(tls) = &l.tls {
            let certs =
                Certificates::load(tls).with_context(|| format!("listener `{}`", l.name))?;
            certificates.push((l.name.clone(), certs.clone()));
            let mut settings = TlsSettings::with_callbacks(Box::new(NoCallbacks))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            settings.set_cert_resolver(certs);
            if tls.http2 {
                settings.enable_h2();
            }
            app = app.with_tls(l.address, settings.build());
        }
    }
    Ok((app, certificates))
}

/// `TlsSettings::with_callbacks` is the constructor that takes a resolver instead of
/// files; we need no handshake callbacks.
struct NoCallbacks;

#[async_trait]
impl pingora::listeners::TlsAccept for NoCallbacks {}
